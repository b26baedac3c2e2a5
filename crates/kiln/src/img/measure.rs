//! `kiln img measure`: how large a new image would be, for a given size or holding a
//! given image's data, as `qemu-img measure` reports it (`required size`: what writing
//! the data needs; `fully allocated size`: with every cluster allocated). The formulas are
//! QEMU's ([`kiln_block::qcow2::measure`]), so the figures equal qemu-img's.

use super::create::apply_options;
use super::{open_image, parse_size};
use kiln_block::qcow2::measure::fully_allocated_size;
use kiln_block::qcow2::{CreateOptions, Prealloc, Qcow2};
use kiln_block::{chain_status, BlockDevice, Format, Share};
use serde::Serialize;
use std::path::Path;

/// The limit QEMU puts on an L1 table (32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;

/// The arguments of `kiln img measure`.
pub(super) struct MeasureArgs<'a> {
    pub size: Option<&'a str>,
    pub out_format: &'a str,
    pub options: &'a [String],
    pub format: Option<&'a str>,
    pub output: &'a str,
    pub share: Share,
    pub file: Option<&'a Path>,
}

/// qemu-img's JSON keys, in its order.
#[derive(Serialize)]
struct Measure {
    #[serde(skip_serializing_if = "Option::is_none")]
    bitmaps: Option<u64>,
    required: u64,
    #[serde(rename = "fully-allocated")]
    fully_allocated: u64,
}

/// `kiln img measure`.
pub(super) fn measure(a: MeasureArgs<'_>) -> Result<u8, String> {
    if a.output != "human" && a.output != "json" {
        return Err(format!(
            "--output must be human or json, not '{}'",
            a.output
        ));
    }
    let size_opt = match (a.size, a.file) {
        (Some(_), Some(_)) => {
            return Err("--size N cannot be used together with a filename.".into())
        }
        (None, None) => return Err("Either --size N or one filename must be specified.".into()),
        (Some(s), None) => Some(parse_size(s)?),
        (None, Some(_)) => None,
    };
    let out_format = Format::from_name(a.out_format).map_err(|e| e.to_string())?;
    let mut opts = CreateOptions::default();
    apply_options(out_format, a.options, &mut opts)?;
    let m = match out_format {
        Format::Raw => {
            let size = match (size_opt, a.file) {
                (Some(s), _) => s,
                (None, Some(f)) => open_image(f, a.format, true, a.share)?.size(),
                (None, None) => unreachable!("checked above"),
            };
            let required = size.next_multiple_of(512);
            Measure {
                bitmaps: None,
                required,
                fully_allocated: required,
            }
        }
        Format::Qcow2 => measure_qcow2(&opts, size_opt, &a)?,
        Format::Qcow => return Err("Format driver 'qcow' does not support size measurement".into()),
    };
    if a.output == "json" {
        let s = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
        println!("{s}");
    } else {
        println!("required size: {}", m.required);
        println!("fully allocated size: {}", m.fully_allocated);
        if let Some(b) = m.bitmaps {
            println!("bitmaps size: {b}");
        }
    }
    Ok(0)
}

fn measure_qcow2(
    opts: &CreateOptions,
    size_opt: Option<u64>,
    a: &MeasureArgs<'_>,
) -> Result<Measure, String> {
    let probe = CreateOptions {
        size: 0,
        ..opts.clone()
    };
    probe.validate().map_err(|e| e.to_string())?;
    let cs = opts.cluster_size;
    let l2_entry = if opts.extended_l2 { 16 } else { 8 };
    // As qemu-img, the size limit is checked on --size (a source's size is not).
    let asked = size_opt.unwrap_or(0).next_multiple_of(cs);
    if (asked / cs).div_ceil(cs / l2_entry) * 8 > MAX_L1_BYTES {
        return Err("The image size is too large (try using a larger cluster size)".into());
    }
    let (virtual_size, mut required, bitmaps) = match (size_opt, a.file) {
        (Some(_), _) => (asked, 0, None),
        (None, Some(f)) => {
            let mut src = open_image(f, a.format, true, a.share)?;
            let virtual_size = src.size().next_multiple_of(cs);
            // A qcow2 source once more as itself, for QEMU's preallocation guess and for
            // its bitmaps.
            let mut qcow2 = match src.format() {
                Format::Qcow2 => {
                    Some(Qcow2::open_shared(f, true, a.share).map_err(|e| e.to_string())?)
                }
                _ => None,
            };
            // The new image's backing file may share nothing with the source: count
            // every cluster. Else the clusters holding data anywhere in the chain.
            let required = if opts.backing_file.is_some() {
                virtual_size
            } else {
                // A qcow2 source's clusters can hold holes of its file. QEMU counts those
                // as zeros when it guesses the image was preallocated; so does Kiln.
                let preallocated = match qcow2.as_mut() {
                    Some(q) => q.looks_metadata_preallocated().map_err(|e| e.to_string())?,
                    None => false,
                };
                let mut host = match preallocated {
                    true => Some(
                        kiln_block::raw::RawFile::open_shared(f, true, Share::Force)
                            .map_err(|e| e.to_string())?,
                    ),
                    false => None,
                };
                data_clusters(src.as_mut(), host.as_mut(), cs)? * cs
            };
            // Only a qcow2 v3 source can carry persistent bitmaps.
            let bitmaps = match qcow2.as_ref().filter(|_| opts.version >= 3) {
                Some(q) => source_bitmaps_size(q, cs)?,
                None => None,
            };
            (virtual_size, required, bitmaps)
        }
        (None, None) => unreachable!("checked by the caller"),
    };
    if matches!(opts.preallocation, Prealloc::Full | Prealloc::Falloc) {
        required = virtual_size;
    }
    let fully_allocated =
        fully_allocated_size(virtual_size, cs, opts.refcount_bits, opts.extended_l2);
    Ok(Measure {
        bitmaps,
        required: fully_allocated - virtual_size + required,
        fully_allocated,
    })
}

/// How many `cs`-byte clusters of `src` hold data anywhere in its chain (zeros do not
/// count). With `host`, the file of a qcow2 `src`: where the top image's data lies in a
/// hole of that file, it reads as zeros and does not count either.
fn data_clusters(
    src: &mut dyn BlockDevice,
    mut host: Option<&mut kiln_block::raw::RawFile>,
    cs: u64,
) -> Result<u64, String> {
    let size = src.size();
    let (mut off, mut count, mut counted_to) = (0u64, 0u64, 0u64);
    let mut count_range = |from: u64, len: u64| {
        let first = (from / cs).max(counted_to);
        let end = (from + len).div_ceil(cs);
        count += end.saturating_sub(first);
        counted_to = counted_to.max(end);
    };
    while off < size {
        let (depth, st) = chain_status(src, off, size - off).map_err(|e| e.to_string())?;
        let n = st.len.clamp(1, size - off);
        if st.data && !st.zero {
            match (host.as_deref_mut(), st.offset.filter(|_| depth == 0)) {
                (Some(file), Some(at)) => {
                    let mut done = 0;
                    while done < n {
                        let (kind, len) = file
                            .extent(at + done, n - done)
                            .map_err(|e| e.to_string())?;
                        let len = len.clamp(1, n - done);
                        if kind != kiln_block::Extent::Zero {
                            count_range(off + done, len);
                        }
                        done += len;
                    }
                }
                _ => count_range(off, n),
            }
        }
        off += n;
    }
    Ok(count)
}

/// Bytes the persistent bitmaps of the qcow2 image `img` would take in an image of
/// `cs`-byte clusters, as QEMU counts them (each bitmap whole, its table, the directory);
/// None unless the source is version 3.
fn source_bitmaps_size(img: &Qcow2, cs: u64) -> Result<Option<u64>, String> {
    if img.header().version < 3 {
        return Ok(None);
    }
    let (mut total, mut dir) = (0, 0);
    for b in img.bitmaps().map_err(|e| e.to_string())? {
        let bytes = img.size().div_ceil(b.granularity).div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        total += clusters * cs + (clusters * 8).next_multiple_of(cs);
        dir += (24 + b.name.len() as u64).next_multiple_of(8);
    }
    Ok(Some(total + dir.next_multiple_of(cs)))
}
