//! The `kiln img` command line: the subcommands and their options (clap), with qemu-img's
//! option names, and the qemu-img options Kiln accepts without their changing its result
//! ([`Compat`]). `super::execute` runs them.

use clap::Subcommand;
use std::path::PathBuf;

/// Options qemu-img takes on many subcommands that do not change what Kiln produces,
/// accepted so that pasted qemu-img command lines work.
#[derive(clap::Args, Debug, Default)]
pub struct Compat {
    /// Quiet: print nothing on success (errors still go to stderr).
    #[arg(short = 'q')]
    pub(super) quiet: bool,
    /// Cache mode of the image written (none, writeback, writethrough, directsync,
    /// unsafe): accepted; Kiln writes through the page cache and flushes before it exits.
    #[arg(short = 't', value_name = "CACHE")]
    pub(super) cache: Option<String>,
    /// Cache mode of the images read: accepted, as -t.
    #[arg(short = 'T', value_name = "SRC_CACHE")]
    pub(super) src_cache: Option<String>,
    /// Show progress on stderr (convert draws qemu-img's progress line; the others
    /// accept -p and finish without one).
    #[arg(short = 'p')]
    pub(super) progress: bool,
}

impl Compat {
    /// Check the cache mode names; with -q, send stdout to /dev/null.
    pub(super) fn apply(&self) -> Result<(), String> {
        for c in [&self.cache, &self.src_cache].into_iter().flatten() {
            check_cache_mode(c)?;
        }
        if self.quiet {
            silence_stdout()?;
        }
        Ok(())
    }
}

/// Accept the cache modes qemu-img knows.
fn check_cache_mode(c: &str) -> Result<(), String> {
    match c {
        "none" | "writeback" | "writethrough" | "directsync" | "unsafe" | "off" => Ok(()),
        _ => Err(format!("Invalid cache option: {c}")),
    }
}

/// `-q`: what the command would print on success goes to /dev/null.
fn silence_stdout() -> Result<(), String> {
    use std::os::unix::io::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    // SAFETY: dup2 takes two descriptors this process owns (/dev/null, open above, and
    // standard output) and atomically makes descriptor 1 refer to /dev/null.
    let r = unsafe { libc::dup2(null.as_raw_fd(), 1) };
    if r < 0 {
        return Err(format!("-q: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `kiln img` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImgCommand {
    /// Create an image.
    ///
    /// `create [-f raw|qcow2] [-o opts] [-b backing [-F fmt]] [-u] FILE [SIZE]`.
    ///
    /// qcow2 options (-o, comma-separated): cluster_size, compat (0.10 or 1.1),
    /// lazy_refcounts (on/off), refcount_bits, extended_l2, compression_type (zlib,
    /// zstd), preallocation (off, metadata, falloc, full). SIZE takes k, M, G, T suffixes; with a backing file it
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
        /// Unsafe: do not open the backing file (SIZE must be given).
        #[arg(short = 'u')]
        unsafe_backing: bool,
        #[command(flatten)]
        compat: Compat,
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
        /// Show every image of the backing chain, the image first.
        #[arg(long = "backing-chain")]
        backing_chain: bool,
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// The image.
        file: PathBuf,
    },
    /// Check a qcow2 image's metadata (exit 2: corruptions, 3: leaked clusters).
    Check {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Repair: `leaks` (leaked clusters only) or `all` (also corruptions).
        #[arg(short = 'r')]
        repair: Option<String>,
        /// Output format: human or json.
        #[arg(long, default_value = "human")]
        output: String,
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        #[command(flatten)]
        compat: Compat,
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
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// Make the output an overlay of this backing file (qcow2, with -F), holding only
        /// what the source's top image holds.
        #[arg(short = 'B', value_name = "BACKING_FILE")]
        backing: Option<String>,
        /// Format of the -B backing file.
        #[arg(short = 'F', value_name = "BACKING_FMT")]
        backing_format: Option<String>,
        /// Write into the existing output image instead of creating it (implied when the
        /// output is a block device); it must be at least as large as the source.
        #[arg(short = 'n')]
        no_create: bool,
        /// Copy this internal snapshot (ID or name) of the qcow2 source.
        #[arg(
            short = 's',
            value_name = "SNAPSHOT",
            conflicts_with = "snapshot_param"
        )]
        snapshot: Option<String>,
        /// Copy an internal snapshot: `snapshot.id=ID`, `snapshot.name=NAME` or ID_OR_NAME.
        #[arg(short = 'l', value_name = "SNAPSHOT_PARAM")]
        snapshot_param: Option<String>,
        #[command(flatten)]
        compat: Compat,
        /// Out-of-order writes (accepted; Kiln writes in order).
        #[arg(short = 'W')]
        out_of_order: bool,
        /// Parallel requests, 1-16 (accepted; Kiln reads ahead on one thread).
        #[arg(short = 'm', value_name = "N")]
        parallel: Option<u32>,
        /// Copy offloading (accepted; Kiln copies through memory).
        #[arg(short = 'C')]
        copy_offload: bool,
        /// Bytes of zeros a run must have to stay sparse in the output (a multiple of
        /// 512; 0: allocate everything). Default 64k.
        #[arg(short = 'S', value_name = "SPARSE_SIZE")]
        sparse_size: Option<String>,
        /// With -n: the existing output already reads as zeros (zeros are not written).
        #[arg(long = "target-is-zero", requires = "no_create")]
        target_is_zero: bool,
        /// Source image.
        src: PathBuf,
        /// Output image (created or overwritten).
        dst: PathBuf,
    },
    /// Time COUNT reads (or writes with -w) of BUFFER_SIZE bytes, as `qemu-img bench`.
    ///
    /// The offset starts at -o and advances by -S (default: the buffer size), wrapping at
    /// the end of the image. Requests run one at a time (-d is accepted and reported).
    Bench {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Cache mode: writeback (default), writethrough (flush after every write) or unsafe.
        #[arg(short = 't', long = "cache", default_value = "writeback")]
        cache: String,
        /// Number of requests.
        #[arg(short = 'c', long = "count", default_value_t = 75000)]
        count: u64,
        /// Requests in parallel (accepted for compatibility; Kiln runs them in turn).
        #[arg(short = 'd', long = "depth", default_value_t = 64)]
        depth: u64,
        /// Offset of the first request.
        #[arg(short = 'o', long = "offset", default_value = "0")]
        offset: String,
        /// Bytes per request.
        #[arg(short = 's', long = "buffer-size", default_value = "4k")]
        buffer_size: String,
        /// Offset increment between requests (default: the buffer size).
        #[arg(short = 'S', long = "step-size")]
        step: Option<String>,
        /// Write instead of read.
        #[arg(short = 'w', long = "write")]
        write: bool,
        /// Byte written by -w (default 0xa5).
        #[arg(long, value_parser = parse_byte, default_value = "0xa5")]
        pattern: u8,
        /// Flush after every INTERVAL writes.
        #[arg(long = "flush-interval")]
        flush_interval: Option<u64>,
        /// Print nothing.
        #[arg(short = 'q', long = "quiet")]
        quiet: bool,
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// The image.
        file: PathBuf,
    },
    /// Write LENGTH bytes of the guest view at OFFSET to stdout.
    Read {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// The image.
        file: PathBuf,
        /// Guest offset (k/M/G suffixes, 0x hex).
        offset: String,
        /// Bytes to read.
        length: String,
    },
    /// List, create, apply or delete qcow2 internal snapshots.
    ///
    /// `snapshot [-l | -c NAME | -a NAME | -d NAME] [-f fmt] FILE`.
    ///
    /// -a takes an ID or a name (IDs first, as qemu-img); -d a name, or an ID when no
    /// name matches. Listing is the default.
    Snapshot {
        /// List the snapshots (the default).
        #[arg(short = 'l', long = "list", conflicts_with_all = ["create", "apply", "delete"])]
        list: bool,
        /// Create a snapshot with this name.
        #[arg(short = 'c', long = "create", value_name = "SNAPSHOT", conflicts_with_all = ["apply", "delete"])]
        create: Option<String>,
        /// Revert the disk to this snapshot (ID or name).
        #[arg(
            short = 'a',
            long = "apply",
            value_name = "SNAPSHOT",
            conflicts_with = "delete"
        )]
        apply: Option<String>,
        /// Delete this snapshot (name or ID).
        #[arg(short = 'd', long = "delete", value_name = "SNAPSHOT")]
        delete: Option<String>,
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format for the list: human or json.
        #[arg(long, default_value = "human")]
        output: String,
        /// Quiet (accepted for qemu-img compatibility; success prints nothing anyway).
        #[arg(short = 'q')]
        quiet: bool,
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// The image.
        file: PathBuf,
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
    /// Change an image's virtual size.
    ///
    /// `resize [-f fmt] [--shrink] FILE [+|-]SIZE`.
    Resize {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Allow making the image smaller (data past the new end is lost).
        #[arg(long)]
        shrink: bool,
        #[command(flatten)]
        compat: Compat,
        /// The image.
        file: PathBuf,
        /// New size, or +SIZE / -SIZE relative to the current one.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// How large a new image would be, as `qemu-img measure`.
    ///
    /// `measure [-O fmt] [-o opts] (--size N | [-f fmt] FILE)`: for --size bytes, or
    /// holding FILE's data.
    Measure {
        /// The size of the new image (k/M/G/T suffixes).
        #[arg(long)]
        size: Option<String>,
        /// The new image's format (default raw).
        #[arg(short = 'O', default_value = "raw")]
        out_format: String,
        /// The new image's options, as for create.
        #[arg(short = 'o')]
        options: Vec<String>,
        /// FILE's format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format: human or json.
        #[arg(long, default_value = "human")]
        output: String,
        /// Force share: read FILE even while another process writes it.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// The image whose data the new image would hold.
        file: Option<PathBuf>,
    },
    /// Copy part of an image into a new one, as `qemu-img dd`.
    ///
    /// `dd [-f fmt] [-O fmt] [bs=SIZE] [count=N] [skip=N] if=INPUT of=OUTPUT`; bs
    /// defaults to 512. As qemu-img, count includes the skipped blocks: the output is
    /// count - skip blocks long (or the rest of the input, if shorter).
    Dd {
        /// Input format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format (default raw).
        #[arg(short = 'O', default_value = "raw")]
        out_format: String,
        /// Force share: read the input even while another process writes it.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// dd operands: if=, of=, bs=, count=, skip=.
        #[arg(required = true)]
        operands: Vec<String>,
    },
    /// Change a qcow2 image's options in place, as `qemu-img amend`.
    ///
    /// `amend [-f qcow2] -o compat=0.10|1.1,lazy_refcounts=on|off,size=SIZE FILE`.
    Amend {
        /// Image format (default: probe; only qcow2 can be amended).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Options to change, `name=value,...` (may be repeated).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Quiet (accepted for qemu-img compatibility; success prints nothing anyway).
        #[arg(short = 'q')]
        quiet: bool,
        /// The image.
        file: PathBuf,
    },
    /// Show where an image's data lives, as `qemu-img map` (depth: backing chain level).
    Map {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Output format: human or json.
        #[arg(long, default_value = "human")]
        output: String,
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        /// The image.
        file: PathBuf,
    },
    /// Compare two images' contents (exit 0 identical, 1 different, 2 error).
    Compare {
        /// Format of the first image (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Format of the second image (default: probe).
        #[arg(short = 'F')]
        format2: Option<String>,
        /// Strict: sizes and allocation must match too.
        #[arg(short = 's')]
        strict: bool,
        /// Force share: open the image even while another process writes it (what is read
        /// may then be inconsistent); read-only uses only.
        #[arg(short = 'U', long = "force-share")]
        force_share: bool,
        #[command(flatten)]
        compat: Compat,
        /// First image.
        file1: PathBuf,
        /// Second image.
        file2: PathBuf,
    },
    /// Write an overlay's data into its backing file, then empty the overlay.
    Commit {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Commit into this image of the backing chain (implies -d).
        #[arg(short = 'b')]
        base: Option<String>,
        /// Keep the overlay's data (do not empty it).
        #[arg(short = 'd')]
        drop: bool,
        #[command(flatten)]
        compat: Compat,
        /// The overlay.
        file: PathBuf,
    },
    /// Change an image's backing file, copying what differs unless -u.
    Rebase {
        /// Image format (default: probe).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Unsafe: only rewrite the backing file name and format.
        #[arg(short = 'u')]
        unsafe_mode: bool,
        /// New backing file ("" for none), relative to FILE's directory.
        #[arg(short = 'b', required = true)]
        backing: String,
        /// New backing file's format.
        #[arg(short = 'F')]
        backing_format: Option<String>,
        #[command(flatten)]
        compat: Compat,
        /// The image.
        file: PathBuf,
    },
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
