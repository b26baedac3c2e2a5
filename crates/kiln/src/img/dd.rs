//! `kiln img dd`: `qemu-img dd`'s copy of part of an image into a new one, with dd's
//! operands (`if=`, `of=`, `bs=`, `count=`, `skip=`) and qemu-img's sizing: the output
//! holds the input from `skip` blocks on, and is `count` blocks long *minus* the skipped
//! blocks (qemu-img counts the skipped blocks in `count`; Kiln does the same so that
//! scripts get the same files).

use super::{open_image, parse_size, IO_CHUNK};
use kiln_block::qcow2::{self, CreateOptions};
use kiln_block::raw::RawFile;
use kiln_block::{BlockDevice, Extent, Format, OpenOptions, Share};
use std::path::Path;

/// The arguments of `kiln img dd`.
pub(super) struct DdArgs<'a> {
    pub format: Option<&'a str>,
    pub out_format: &'a str,
    pub share: Share,
    pub operands: &'a [String],
}

/// `kiln img dd`.
pub(super) fn dd(a: DdArgs<'_>) -> Result<u8, String> {
    let (mut input, mut output) = (None, None);
    let (mut bs, mut count, mut skip) = (512u64, None, 0u64);
    for op in a.operands {
        let (k, v) = op
            .split_once('=')
            .ok_or_else(|| format!("unrecognized operand {op}"))?;
        match k {
            "if" => input = Some(v),
            "of" => output = Some(v),
            "bs" => {
                bs = parse_size(v)
                    .ok()
                    .filter(|&b| b > 0 && b <= i32::MAX as u64)
                    .ok_or_else(|| format!("invalid buffer size for dd: {v}"))?
            }
            "count" => count = Some(parse_size(v)?),
            "skip" => skip = parse_size(v)?,
            _ => return Err(format!("unrecognized operand {k}")),
        }
    }
    let (Some(input), Some(output)) = (input, output) else {
        return Err("Must specify both input and output files".into());
    };
    let out_format = Format::from_name(a.out_format).map_err(|e| e.to_string())?;
    let mut src = open_image(Path::new(input), a.format, true, a.share)?;
    let in_size = src.size();
    let start = skip
        .checked_mul(bs)
        .filter(|&s| s <= in_size)
        .ok_or_else(|| format!("{input}: cannot skip to specified offset"))?;
    let end = match count {
        Some(c) => c.saturating_mul(bs).min(in_size),
        None => in_size,
    };
    let size = end.saturating_sub(start);
    let dst_path = Path::new(output);
    match out_format {
        // Whole sectors, as qemu-img makes them (the tail reads as zeros).
        Format::Raw => RawFile::create(dst_path, size.next_multiple_of(512)),
        Format::Qcow2 => qcow2::create(
            dst_path,
            &CreateOptions {
                size: size.next_multiple_of(512),
                ..CreateOptions::default()
            },
        ),
        Format::Qcow => return Err(format!("Format driver '{out_format}' is read-only")),
    }
    .map_err(|e| e.to_string())?;
    let mut dst = kiln_block::open(
        dst_path,
        &OpenOptions {
            read_only: false,
            format: Some(out_format),
            no_backing: true,
            share: Share::Readers,
        },
    )
    .map_err(|e| e.to_string())?;
    copy(src.as_mut(), dst.as_mut(), start, size)?;
    dst.flush().map_err(|e| e.to_string())?;
    Ok(0)
}

/// Copy `len` bytes of `src` from `from` to the start of the new (all-zero) `dst`,
/// leaving what reads as zeros unwritten.
fn copy(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    from: u64,
    len: u64,
) -> Result<(), String> {
    let mut buf = vec![0u8; IO_CHUNK.min(len.max(1)) as usize];
    let mut done = 0;
    while done < len {
        let (kind, n) = src
            .extent(from + done, (len - done).min(IO_CHUNK))
            .map_err(|e| e.to_string())?;
        let n = n.clamp(1, len - done);
        if kind != Extent::Zero {
            let b = &mut buf[..n as usize];
            src.read_at(b, from + done).map_err(|e| e.to_string())?;
            if !super::create::is_zero(b) {
                dst.write_at(b, done).map_err(|e| e.to_string())?;
            }
        }
        done += n;
    }
    Ok(())
}
