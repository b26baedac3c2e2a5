//! `kiln img`: the disk-image tool (create, info, check, convert, read, write), in the
//! spirit of `qemu-img` and with its option names, on the `kiln-block` crate.
//!
//! Exit statuses: 0 success, 1 error (one line on stderr), and for `check` 2 (corruptions)
//! or 3 (leaked clusters only), as qemu-img.

mod check;
mod compress;
mod create;
mod info;
mod rw;

use clap::Subcommand;
use kiln_block::{BlockDevice, Format, OpenOptions};
use std::path::{Path, PathBuf};

/// `kiln img` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImgCommand {
    /// Create an image: `create [-f raw|qcow2] [-o opts] [-b backing [-F fmt]] FILE [SIZE]`.
    ///
    /// qcow2 options (-o, comma-separated): cluster_size, compat (0.10 or 1.1),
    /// lazy_refcounts (on/off), refcount_bits, extended_l2, compression_type (zlib,
    /// zstd), preallocation (off). SIZE takes k, M, G, T suffixes; with a backing file it
    /// defaults to the backing file's size.
    Create {
        /// Image format (default raw).
        #[arg(short = 'f', default_value = "raw")]
        format: String,
        /// Format options, `name=value,...` (may be repeated).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Backing file (stored as given; relative names are relative to FILE's directory).
        #[arg(short = 'b')]
        backing: Option<String>,
        /// Backing file format.
        #[arg(short = 'F')]
        backing_format: Option<String>,
        /// The image to create.
        file: PathBuf,
        /// Virtual size.
        size: Option<String>,
    },
    /// Show information about an image.
    Info {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format: human or json.
        #[arg(long, default_value = "human")]
        output: String,
        /// The image.
        file: PathBuf,
    },
    /// Check a qcow2 image's metadata (exit 2: corruptions, 3: leaked clusters).
    Check {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format: human or json.
        #[arg(long, default_value = "human")]
        output: String,
        /// The image.
        file: PathBuf,
    },
    /// Copy an image into a new one, possibly of another format (zeros stay sparse).
    Convert {
        /// Source format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format (default raw).
        #[arg(short = 'O', default_value = "raw")]
        out_format: String,
        /// Output format options, as for create.
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Compress the output (qcow2: compressed clusters, -o compression_type=zlib|zstd).
        #[arg(short = 'c')]
        compress: bool,
        /// Show progress on stderr.
        #[arg(short = 'p')]
        progress: bool,
        /// Source image.
        src: PathBuf,
        /// Output image (created or overwritten).
        dst: PathBuf,
    },
    /// Write LENGTH bytes of the guest view at OFFSET to stdout.
    Read {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// The image.
        file: PathBuf,
        /// Guest offset (k/M/G suffixes, 0x hex).
        offset: String,
        /// Bytes to read.
        length: String,
    },
    /// Write to an image at OFFSET: a byte pattern, zeros, or a file's contents.
    Write {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Fill with this byte (needs --length).
        #[arg(long, value_parser = parse_byte, conflicts_with_all = ["from", "zero"])]
        pattern: Option<u8>,
        /// Make the range read as zeros without writing data where possible (needs --length).
        #[arg(long, conflicts_with = "from")]
        zero: bool,
        /// Bytes to write with --pattern or --zero.
        #[arg(long)]
        length: Option<String>,
        /// Write this file's contents.
        #[arg(long)]
        from: Option<PathBuf>,
        /// The image.
        file: PathBuf,
        /// Guest offset.
        offset: String,
    },
}

/// Run an image subcommand; returns the exit status, or a one-line error.
pub fn execute(cmd: ImgCommand) -> Result<u8, String> {
    match cmd {
        ImgCommand::Create {
            format,
            options,
            backing,
            backing_format,
            file,
            size,
        } => create::create(
            &format,
            &options,
            backing,
            backing_format,
            &file,
            size.as_deref(),
        ),
        ImgCommand::Info {
            format,
            output,
            file,
        } => info::info(format.as_deref(), &output, &file),
        ImgCommand::Check {
            format,
            output,
            file,
        } => check::check(format.as_deref(), &output, &file),
        ImgCommand::Convert {
            format,
            out_format,
            options,
            compress,
            progress,
            src,
            dst,
        } => create::convert(create::ConvertArgs {
            format: format.as_deref(),
            out_format: &out_format,
            options: &options,
            compress,
            progress,
            src: &src,
            dst: &dst,
        }),
        ImgCommand::Read {
            format,
            file,
            offset,
            length,
        } => rw::read(format.as_deref(), &file, &offset, &length),
        ImgCommand::Write {
            format,
            pattern,
            zero,
            length,
            from,
            file,
            offset,
        } => rw::write(rw::WriteArgs {
            format: format.as_deref(),
            pattern,
            zero,
            length: length.as_deref(),
            from: from.as_deref(),
            file: &file,
            offset: &offset,
        }),
    }
}

fn parse_byte(s: &str) -> Result<u8, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.ok()
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| format!("'{s}' is not a byte value (0-255 or 0x00-0xff)"))
}

/// Parse a size or offset: a number (decimal or 0x hex) with an optional binary suffix
/// (k/K, M, G, T, P, E; a trailing B is allowed).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size '{s}' (use e.g. 4096, 64k, 10M, 2G)");
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).map_err(|_| bad());
    }
    let t = t
        .strip_suffix(['b', 'B'])
        .filter(|x| !x.is_empty())
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parse an optional format name.
fn parse_format(f: Option<&str>) -> Result<Option<Format>, String> {
    f.map(Format::from_name)
        .transpose()
        .map_err(|e| e.to_string())
}

/// Open an image (with its backing chain) for the tool.
fn open_image(
    path: &Path,
    format: Option<&str>,
    read_only: bool,
) -> Result<Box<dyn BlockDevice>, String> {
    let opts = OpenOptions {
        read_only,
        format: parse_format(format)?,
        no_backing: false,
    };
    kiln_block::open(path, &opts).map_err(|e| e.to_string())
}
