//! `kiln img create` and `kiln img convert`: new images from options (qemu-img's `-o`
//! names) and copies between formats that keep zeros sparse.

use super::{open_image, parse_format, parse_size};
use kiln_block::qcow2::{self, Compression, CreateOptions, Prealloc};
use kiln_block::raw::RawFile;
use kiln_block::Share;
use kiln_block::{BlockDevice, Extent, Format, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

/// An on/off option value (qemu-img also takes true/false and yes/no).
pub(super) fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!(
            "parameter '{name}' expects 'on' or 'off', not '{v}'"
        )),
    }
}

/// A qcow2 `compat` level: the header version it stands for.
pub(super) fn parse_compat(v: &str) -> Result<u32, String> {
    match v {
        "0.10" | "v2" => Ok(2),
        "1.1" | "v3" => Ok(3),
        _ => Err(format!("invalid compat level '{v}' (0.10 or 1.1)")),
    }
}

/// Apply `-o name=value,...` options to `opts` (and the backing fields).
pub(super) fn apply_options(
    format: Format,
    options: &[String],
    opts: &mut CreateOptions,
) -> Result<(), String> {
    for item in options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("invalid option '{item}' (expected name=value)"))?;
        match (format, k) {
            (_, "preallocation") => {
                opts.preallocation = Prealloc::from_name(v).map_err(|e| e.to_string())?
            }
            (_, "size") => opts.size = parse_size(v)?,
            (Format::Qcow2, "cluster_size") => opts.cluster_size = parse_size(v)?,
            (Format::Qcow2, "compat") => opts.version = parse_compat(v)?,
            (Format::Qcow2, "lazy_refcounts") => opts.lazy_refcounts = parse_bool(k, v)?,
            (Format::Qcow2, "extended_l2") => opts.extended_l2 = parse_bool(k, v)?,
            (Format::Qcow2, "refcount_bits") => {
                opts.refcount_bits = v
                    .parse()
                    .map_err(|_| format!("invalid refcount_bits '{v}'"))?
            }
            (Format::Qcow2, "compression_type") => {
                opts.compression = match v {
                    "zlib" => Compression::Zlib,
                    "zstd" => Compression::Zstd,
                    _ => return Err(format!("invalid compression_type '{v}' (zlib or zstd)")),
                }
            }
            (Format::Qcow2, "backing_file") => opts.backing_file = Some(v.to_string()),
            (Format::Qcow2, "backing_fmt") => opts.backing_format = Some(v.to_string()),
            _ => return Err(format!("invalid parameter '{k}' for format {format}")),
        }
    }
    Ok(())
}

/// The arguments of `kiln img create`.
pub(super) struct CreateArgs<'a> {
    pub format: &'a str,
    pub options: &'a [String],
    pub backing: Option<String>,
    pub backing_format: Option<String>,
    /// `-u`: do not open the backing file.
    pub unsafe_backing: bool,
    pub file: &'a Path,
    pub size: Option<&'a str>,
}

/// `kiln img create`.
pub(super) fn create(a: CreateArgs<'_>) -> Result<u8, String> {
    let CreateArgs {
        format,
        options,
        backing,
        backing_format,
        unsafe_backing,
        file,
        size,
    } = a;
    let format = Format::from_name(format).map_err(|e| e.to_string())?;
    let mut opts = CreateOptions {
        size: u64::MAX,
        ..Default::default()
    };
    apply_options(format, options, &mut opts)?;
    if backing.is_some() {
        opts.backing_file = backing;
    }
    if backing_format.is_some() {
        opts.backing_format = backing_format;
    }
    if let Some(s) = size {
        opts.size = parse_size(s)?;
    }
    if opts.backing_file.is_some() && format == Format::Raw {
        return Err("raw images cannot have a backing file".into());
    }
    if unsafe_backing && opts.backing_file.is_some() && opts.size == u64::MAX {
        return Err("image size must be given with -u (the backing file is not opened)".into());
    }
    if let Some(name) = opts.backing_file.clone().filter(|_| !unsafe_backing) {
        // The backing file must open; its size is the default size.
        let bpath = kiln_block::resolve_backing(file, &name);
        let bfmt = parse_format(opts.backing_format.as_deref())?;
        let bopts = OpenOptions {
            read_only: true,
            format: bfmt,
            no_backing: false,
            share: kiln_block::Share::Readers,
        };
        let b = kiln_block::open(&bpath, &bopts)
            .map_err(|e| format!("could not open backing file: {e}"))?;
        if opts.backing_format.is_none() {
            opts.backing_format = Some(b.format().name().to_string());
        }
        if opts.size == u64::MAX {
            opts.size = b.size();
        }
    }
    if opts.size == u64::MAX {
        return Err("image size must be given".into());
    }
    if opts.backing_file.is_some() && opts.preallocation != Prealloc::Off {
        return Err("backing file and preallocation cannot be used at the same time".into());
    }
    if format != Format::Qcow {
        println!("{}", formatting_line(file, format, &opts, options));
    }
    match format {
        Format::Raw => RawFile::create_preallocated(file, opts.size, opts.preallocation),
        Format::Qcow2 => qcow2::create(file, &opts),
        Format::Qcow => return Err(read_only_format()),
    }
    .map_err(|e| e.to_string())?;
    Ok(0)
}

/// qemu-img create's "Formatting" line: the format's options in qemu-img's order, those
/// it prints only when given (compat, preallocation) only when given.
fn formatting_line(file: &Path, format: Format, opts: &CreateOptions, given: &[String]) -> String {
    let given: Vec<(&str, &str)> = given
        .iter()
        .flat_map(|o| o.split(','))
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let given_value = |k: &str| given.iter().rev().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let onoff = |b: bool| if b { "on" } else { "off" };
    let mut line = format!("Formatting '{}', fmt={}", file.display(), format.name());
    if format == Format::Raw {
        line += &format!(" size={}", opts.size);
        if let Some(p) = given_value("preallocation") {
            line += &format!(" preallocation={p}");
        }
        return line;
    }
    line += &format!(
        " cluster_size={} extended_l2={}",
        opts.cluster_size,
        onoff(opts.extended_l2)
    );
    if let Some(p) = given_value("preallocation") {
        line += &format!(" preallocation={p}");
    }
    line += &format!(
        " compression_type={} size={}",
        opts.compression.name(),
        opts.size
    );
    if let Some(c) = given_value("compat") {
        line += &format!(" compat={c}");
    }
    if let Some(b) = &opts.backing_file {
        line += &format!(" backing_file={b}");
    }
    if let Some(f) = &opts.backing_format {
        line += &format!(" backing_fmt={f}");
    }
    line += &format!(
        " lazy_refcounts={} refcount_bits={}",
        onoff(opts.lazy_refcounts),
        opts.refcount_bits
    );
    line
}

/// The refusal for creating legacy qcow images.
fn read_only_format() -> String {
    "the qcow format (version 1) is supported read-only: create qcow2 images instead".into()
}

/// Arguments of `kiln img convert`.
pub(super) struct ConvertArgs<'a> {
    pub format: Option<&'a str>,
    pub out_format: &'a str,
    pub options: &'a [String],
    pub compress: bool,
    pub progress: bool,
    pub share: Share,
    /// `-B`: make the output an overlay of this file, holding only the source's top image.
    pub backing: Option<&'a str>,
    /// `-F`: the format of `backing`.
    pub backing_format: Option<&'a str>,
    /// `-n`: write into the existing `dst` (implied for a block device).
    pub no_create: bool,
    /// `-s`/`-l`: copy this internal snapshot (ID or name) of a qcow2 source.
    pub snapshot: Option<&'a str>,
    /// `-S`: zero runs at least this long stay sparse (None: the default; 0: none do).
    pub sparse: Option<u64>,
    /// `--target-is-zero` (with -n): the existing output reads as zeros already.
    pub target_is_zero: bool,
    pub src: &'a Path,
    pub dst: &'a Path,
}

/// Granularity at which zero runs are skipped in the output (-S changes it).
const ZERO_GRAIN: usize = 64 << 10;
/// Bytes copied per step.
const CHUNK: u64 = 2 << 20;

/// `kiln img convert`.
pub(super) fn convert(a: ConvertArgs<'_>) -> Result<u8, String> {
    let out_format = Format::from_name(a.out_format).map_err(|e| e.to_string())?;
    if a.compress && out_format != Format::Qcow2 {
        return Err(format!(
            "compression (-c) is not supported for the {out_format} format"
        ));
    }
    let mut src = match a.snapshot {
        Some(snap) => {
            let fmt = match a.format {
                Some(f) => Format::from_name(f).map_err(|e| e.to_string())?,
                None => kiln_block::probe(a.src).map_err(|e| e.to_string())?,
            };
            if fmt != Format::Qcow2 {
                return Err(format!(
                    "{}: only qcow2 images have internal snapshots (this one is {fmt})",
                    a.src.display()
                ));
            }
            kiln_block::open_snapshot(a.src, snap, a.share).map_err(|e| e.to_string())?
        }
        None => open_image(a.src, a.format, true, a.share)?,
    };
    let size = src.size();
    let mut opts = CreateOptions::default();
    apply_options(out_format, a.options, &mut opts)?;
    if let Some(b) = a.backing {
        opts.backing_file = Some(b.to_string());
    }
    if let Some(f) = a.backing_format {
        opts.backing_format = Some(f.to_string());
    }
    if opts.backing_file.is_some() && out_format != Format::Qcow2 {
        return Err(format!(
            "Backing file not supported for file format '{out_format}'"
        ));
    }
    let backing_size = match &opts.backing_file {
        Some(b) => Some(output_backing(a.dst, b, &opts, a.compress)?),
        None => None,
    };
    // A block device (an LVM volume, a partition) is written where it is, as with -n.
    let existing = a.no_create || is_block_device(a.dst);
    if existing && (a.compress || backing_size.is_some() || !a.options.is_empty()) {
        return Err("-n (or a block device as the output) cannot be used with -c, -B or -o".into());
    }
    match out_format {
        _ if existing => Ok(()),
        Format::Raw => RawFile::create(a.dst, size),
        Format::Qcow2 => {
            opts.size = size.div_ceil(512) * 512;
            qcow2::create(a.dst, &opts)
        }
        Format::Qcow => return Err(read_only_format()),
    }
    .map_err(|e| e.to_string())?;
    if a.compress {
        return super::compress::copy_compressed(src.as_mut(), a.dst, a.progress);
    }
    let dopts = OpenOptions {
        read_only: false,
        format: Some(out_format),
        no_backing: true,
        share: kiln_block::Share::Readers,
    };
    let mut dst = kiln_block::open(a.dst, &dopts).map_err(|e| e.to_string())?;
    if dst.size() < size {
        return Err(format!(
            "{}: output file is smaller than input file ({} < {size} bytes)",
            a.dst.display(),
            dst.size()
        ));
    }
    if let Some(backing_size) = backing_size {
        return super::convert_backing::copy_top_layer(
            src.as_mut(),
            dst.as_mut(),
            backing_size,
            a.progress,
        )
        .map(|()| 0);
    }
    // A reader thread fills chunks while this one writes the previous ones: the copy into
    // the page cache on each side is most of a convert's time, and runs on both cores.
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<Chunk, String>>(PIPELINE);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..PIPELINE + 1 {
        let _ = empty_tx.send(vec![0u8; CHUNK as usize]);
    }
    // -S: zero runs shorter than `grain` are written as data; -S 0 writes everything.
    let full = a.sparse == Some(0);
    let grain = a
        .sparse
        .filter(|&g| g > 0)
        .map_or(ZERO_GRAIN, |g| g as usize);
    let reader = std::thread::spawn(move || {
        let mut off = 0u64;
        while off < size {
            let chunk = (|| {
                let (kind, n) = src
                    .extent(off, (size - off).min(CHUNK))
                    .map_err(|e| e.to_string())?;
                let n = n.max(1);
                let data = if kind == Extent::Zero && !full {
                    None
                } else {
                    let mut buf = empty_rx.recv().map_err(|_| "convert stopped".to_string())?;
                    src.read_at(&mut buf[..n as usize], off)
                        .map_err(|e| e.to_string())?;
                    // The zero test here, not in the writer: writing is the slower half.
                    let mut runs = Vec::new();
                    if full {
                        runs.push(0..n as usize);
                    } else {
                        for_data_runs(&buf[..n as usize], grain, |r| {
                            runs.push(r);
                            Ok(())
                        })?;
                    }
                    Some((buf, runs))
                };
                Ok(Chunk { off, len: n, data })
            })();
            let stop = chunk.is_err();
            if let Ok(c) = &chunk {
                off += c.len;
            }
            if full_tx.send(chunk).is_err() || stop {
                return;
            }
        }
    });
    let mut progress = Progress::new(a.progress, size);
    let mut done = 0u64;
    let result = (|| {
        while done < size {
            let c = full_rx
                .recv()
                .map_err(|_| "the reader stopped".to_string())??;
            // A new image reads zeros where nothing is written; an existing one (-n)
            // gets its zeros written, unless it is known to read as zeros.
            let write_zeros = existing && !a.target_is_zero;
            let zeros = |dst: &mut dyn BlockDevice, off: u64, len: u64| match write_zeros && len > 0
            {
                true => dst.write_zeroes(off, len).map_err(|e| e.to_string()),
                false => Ok(()),
            };
            match c.data {
                Some((buf, runs)) => {
                    let mut at = 0u64;
                    for r in runs {
                        zeros(dst.as_mut(), c.off + at, r.start as u64 - at)?;
                        dst.write_at(&buf[r.clone()], c.off + r.start as u64)
                            .map_err(|e| e.to_string())?;
                        at = r.end as u64;
                    }
                    zeros(dst.as_mut(), c.off + at, c.len - at)?;
                    let _ = empty_tx.send(buf);
                }
                None => zeros(dst.as_mut(), c.off, c.len)?,
            }
            done = c.off + c.len;
            progress.at(done);
        }
        Ok::<(), String>(())
    })();
    drop(full_rx);
    drop(empty_tx);
    let _ = reader.join();
    result?;
    progress.finish();
    dst.flush().map_err(|e| e.to_string())?;
    Ok(0)
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Check the backing file `name` asked of convert's output `dst` (qcow2 only, with its
/// format named, not with -c) and return its size.
fn output_backing(
    dst: &Path,
    name: &str,
    opts: &CreateOptions,
    compress: bool,
) -> Result<u64, String> {
    let Some(fmt) = &opts.backing_format else {
        return Err("Use of backing file requires explicit backing format (-F)".into());
    };
    if compress {
        return Err("compression (-c) with a backing file (-B) is not supported".into());
    }
    let bopts = OpenOptions {
        read_only: true,
        format: Some(Format::from_name(fmt).map_err(|e| e.to_string())?),
        no_backing: false,
        share: Share::Readers,
    };
    let path = kiln_block::resolve_backing(dst, name);
    let b = kiln_block::open(&path, &bopts)
        .map_err(|e| format!("Could not open backing file '{name}': {e}"))?;
    Ok(b.size())
}

/// qemu-img's `-p` progress line on stderr: the percentage done, redrawn when it changes.
pub(super) struct Progress {
    on: bool,
    size: u64,
    last: u64,
}

impl Progress {
    /// A progress line for `size` bytes, shown only when `on`.
    pub(super) fn new(on: bool, size: u64) -> Progress {
        Progress {
            on,
            size,
            last: u64::MAX,
        }
    }

    /// `done` bytes are done.
    pub(super) fn at(&mut self, done: u64) {
        let pct = done * 10000 / self.size.max(1);
        if self.on && pct != self.last {
            self.last = pct;
            eprint!("    ({}.{:02}/100%)\r", pct / 100, pct % 100);
            let _ = std::io::stderr().flush();
        }
    }

    /// The whole job is done.
    pub(super) fn finish(&self) {
        if self.on {
            eprintln!("    (100.00/100%)");
        }
    }
}

/// Chunks read ahead of the writer.
const PIPELINE: usize = 2;

/// One chunk of the source: where, how long, and its bytes with the ranges of them that
/// hold data (None: it all reads as zeros).
struct Chunk {
    off: u64,
    len: u64,
    data: Option<(Vec<u8>, Vec<std::ops::Range<usize>>)>,
}

/// Whether `b` is all zeros: 64-byte blocks OR-folded (the compiler vectorizes the fold),
/// stopping at the first block with data.
pub(super) fn is_zero(b: &[u8]) -> bool {
    let blocks = b.chunks_exact(64);
    let rest = blocks.remainder();
    blocks
        .into_iter()
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && rest.iter().all(|&x| x == 0)
}

/// Call `f` with each run of `b` that holds data, in pieces of `grain` bytes (a piece of
/// only zeros ends a run); the runs in between read as zeros and can stay unwritten.
pub(super) fn for_data_runs(
    b: &[u8],
    grain: usize,
    mut f: impl FnMut(std::ops::Range<usize>) -> Result<(), String>,
) -> Result<(), String> {
    let zero = |j: usize| is_zero(&b[j..(j + grain).min(b.len())]);
    let mut i = 0;
    while i < b.len() {
        if zero(i) {
            i += grain;
            continue;
        }
        let start = i;
        while i < b.len() && !zero(i) {
            i += grain;
        }
        f(start..i.min(b.len()))?;
    }
    Ok(())
}
