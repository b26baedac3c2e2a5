//! `kiln img`: the disk-image tool (create, info, check, convert, bench, read, write,
//! snapshot, resize, amend, map, measure, dd, compare, commit, rebase), in the spirit of
//! `qemu-img` and with its option names, on the `kiln-block` crate. This file runs the
//! subcommands that `command` declares; each lives in its own module.
//!
//! Exit statuses: 0 success, 1 error (one line on stderr), and for `check` 2 (corruptions)
//! or 3 (leaked clusters only), as qemu-img; `compare` exits 0 (identical), 1 (different)
//! or 2 (error).

mod amend;
mod bench;
mod check;
mod command;
mod commit;
mod compare;
mod compress;
mod convert_backing;
mod create;
mod dd;
mod info;
mod map;
mod measure;
mod rebase;
mod resize;
mod rw;
mod snapshot;

pub use command::ImgCommand;
use kiln_block::{BlockDevice, Format, OpenOptions, Share};
use std::path::Path;

/// Bytes the copying commands (commit, compare, rebase, read, write) move per step: one
/// buffer of this size at most. Convert and preallocation use 2 MiB steps of their own.
const IO_CHUNK: u64 = 1 << 20;

/// Run an image subcommand; returns the exit status, or a one-line error.
pub fn execute(cmd: ImgCommand) -> Result<u8, String> {
    // A reader that goes away (`kiln img map big.qcow2 | head`) ends the command quietly,
    // as it ends qemu-img, instead of failing a print with a panic.
    // SAFETY: signal() only resets this process's disposition of SIGPIPE to the default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match cmd {
        ImgCommand::Create {
            format,
            options,
            backing,
            backing_format,
            unsafe_backing,
            compat,
            file,
            size,
        } => {
            compat.apply()?;
            create::create(create::CreateArgs {
                format: &format,
                options: &options,
                backing,
                backing_format,
                unsafe_backing,
                file: &file,
                size: size.as_deref(),
            })
        }
        ImgCommand::Info {
            format,
            output,
            backing_chain,
            force_share,
            file,
        } => info::info(
            format.as_deref(),
            &output,
            &file,
            backing_chain,
            share(force_share),
        ),
        ImgCommand::Check {
            format,
            repair,
            output,
            force_share,
            compat,
            file,
        } => compat.apply().and_then(|()| {
            check::check(
                format.as_deref(),
                repair.as_deref(),
                &output,
                &file,
                share(force_share),
            )
        }),
        ImgCommand::Convert {
            format,
            out_format,
            options,
            compress,
            force_share,
            backing,
            backing_format,
            no_create,
            snapshot,
            snapshot_param,
            compat,
            out_of_order: _,
            parallel,
            copy_offload: _,
            sparse_size,
            target_is_zero,
            src,
            dst,
        } => {
            compat.apply()?;
            if parallel.is_some_and(|m| !(1..=16).contains(&m)) {
                return Err("-m: the number of parallel requests must be 1 to 16".into());
            }
            let sparse = match sparse_size.as_deref().map(parse_size).transpose()? {
                Some(n) if !n.is_multiple_of(512) || n > 16 << 20 => {
                    return Err(format!(
                        "Invalid buffer size for sparse output specified: {n} (multiples of 512 up to 16M)"
                    ))
                }
                other => other,
            };
            let snapshot = match (snapshot, snapshot_param) {
                (Some(s), _) => Some(s),
                (None, Some(p)) => Some(snapshot_from_param(&p)?),
                (None, None) => None,
            };
            create::convert(create::ConvertArgs {
                format: format.as_deref(),
                out_format: &out_format,
                options: &options,
                compress,
                progress: compat.progress && !compat.quiet,
                share: share(force_share),
                backing: backing.as_deref(),
                backing_format: backing_format.as_deref(),
                no_create,
                snapshot: snapshot.as_deref(),
                sparse,
                target_is_zero,
                src: &src,
                dst: &dst,
            })
        }
        ImgCommand::Bench {
            format,
            cache,
            count,
            depth,
            offset,
            buffer_size,
            step,
            write,
            pattern,
            flush_interval,
            quiet,
            force_share,
            file,
        } => bench::bench(bench::BenchArgs {
            format: format.as_deref(),
            cache: &cache,
            count,
            depth,
            offset: &offset,
            buffer_size: &buffer_size,
            step: step.as_deref(),
            write,
            pattern,
            flush_interval,
            quiet,
            share: share(force_share),
            file: &file,
        }),
        ImgCommand::Snapshot {
            list: _,
            create,
            apply,
            delete,
            format,
            output,
            quiet: _,
            force_share,
            file,
        } => {
            let op = match (&create, &apply, &delete) {
                (Some(n), _, _) => snapshot::Op::Create(n),
                (_, Some(n), _) => snapshot::Op::Apply(n),
                (_, _, Some(n)) => snapshot::Op::Delete(n),
                _ => snapshot::Op::List,
            };
            snapshot::snapshot(op, format.as_deref(), &output, &file, share(force_share))
        }
        ImgCommand::Read {
            format,
            force_share,
            file,
            offset,
            length,
        } => rw::read(
            format.as_deref(),
            &file,
            &offset,
            &length,
            share(force_share),
        ),
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
        ImgCommand::Resize {
            format,
            shrink,
            compat,
            file,
            size,
        } => {
            compat.apply()?;
            resize::resize(format.as_deref(), shrink, &file, &size)
        }
        ImgCommand::Measure {
            size,
            out_format,
            options,
            format,
            output,
            force_share,
            file,
        } => measure::measure(measure::MeasureArgs {
            size: size.as_deref(),
            out_format: &out_format,
            options: &options,
            format: format.as_deref(),
            output: &output,
            share: share(force_share),
            file: file.as_deref(),
        }),
        ImgCommand::Dd {
            format,
            out_format,
            force_share,
            operands,
        } => dd::dd(dd::DdArgs {
            format: format.as_deref(),
            out_format: &out_format,
            share: share(force_share),
            operands: &operands,
        }),
        ImgCommand::Amend {
            format,
            options,
            quiet: _,
            file,
        } => amend::amend(format.as_deref(), &options, &file),
        ImgCommand::Map {
            format,
            output,
            force_share,
            file,
        } => map::map(format.as_deref(), &output, &file, share(force_share)),
        ImgCommand::Compare {
            format,
            format2,
            strict,
            force_share,
            compat,
            file1,
            file2,
        } => compat.apply().map(|()| {
            compare::compare(
                format.as_deref(),
                format2.as_deref(),
                strict,
                &file1,
                &file2,
                share(force_share),
            )
        }),
        ImgCommand::Commit {
            format,
            base,
            drop,
            compat,
            file,
        } => {
            compat.apply()?;
            commit::commit(format.as_deref(), base.as_deref(), drop, &file)
        }
        ImgCommand::Rebase {
            format,
            unsafe_mode,
            backing,
            backing_format,
            compat,
            file,
        } => {
            compat.apply()?;
            rebase::rebase(
                format.as_deref(),
                unsafe_mode,
                &backing,
                backing_format.as_deref(),
                &file,
            )
        }
    }
}

/// The snapshot a `-l` parameter names: `snapshot.id=ID`, `snapshot.name=NAME` (either,
/// or both naming the same one) or a plain ID or name.
fn snapshot_from_param(p: &str) -> Result<String, String> {
    if !p.contains('=') {
        return Ok(p.to_string());
    }
    let (mut id, mut name) = (None, None);
    for kv in p.split(',') {
        match kv.split_once('=') {
            Some(("snapshot.id", v)) => id = Some(v),
            Some(("snapshot.name", v)) => name = Some(v),
            _ => return Err(format!("Invalid snapshot parameter '{kv}'")),
        }
    }
    match (id, name) {
        (Some(i), Some(n)) if i != n => Err(format!(
            "snapshot.id={i} and snapshot.name={n}: give one of them"
        )),
        (Some(v), _) | (_, Some(v)) => Ok(v.to_string()),
        (None, None) => Err(format!("Invalid snapshot parameter '{p}'")),
    }
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

/// What `-U` (`--force-share`) asks of other users of the image.
fn share(force: bool) -> Share {
    if force {
        Share::Force
    } else {
        Share::Readers
    }
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
    share: Share,
) -> Result<Box<dyn BlockDevice>, String> {
    let opts = OpenOptions {
        read_only,
        format: parse_format(format)?,
        no_backing: false,
        share,
    };
    kiln_block::open(path, &opts).map_err(|e| e.to_string())
}
