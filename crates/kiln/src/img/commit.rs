//! `kiln img commit`: write what an overlay (and the images between it and the base)
//! allocates into the base image — data as data, zero clusters as zeros — then, unless
//! -d (or -b), empty the overlay as qemu-img does.

use super::parse_format;
use super::IO_CHUNK;
use kiln_block::qcow2::Qcow2;
use kiln_block::{backing_chain, chain_status, BlockDevice, ChainLink, Format, OpenOptions};
use std::path::Path;

/// The images `chain[..k]` stacked (top first, writable only if `top_rw`), without the
/// images from `k` on.
fn open_above(chain: &[ChainLink], k: usize, top_rw: bool) -> Result<Qcow2, String> {
    let mut below: Option<Qcow2> = None;
    for i in (0..k).rev() {
        let l = &chain[i];
        let mut q = Qcow2::open(&l.path, !(i == 0 && top_rw)).map_err(|e| e.to_string())?;
        if let Some(b) = below.take() {
            q.set_backing(Box::new(b));
        }
        below = Some(q);
    }
    below.ok_or_else(|| "Image does not have a backing file".to_string())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// `kiln img commit [-f fmt] [-b base] [-d] FILE`.
pub(super) fn commit(
    format: Option<&str>,
    base: Option<&str>,
    drop: bool,
    file: &Path,
) -> Result<u8, String> {
    let fmt = parse_format(format)?;
    let chain = backing_chain(file, fmt).map_err(|e| e.to_string())?;
    if chain.len() < 2 {
        return Err("Image does not have a backing file".into());
    }
    let k = match base {
        None => 1,
        Some(b) => chain
            .iter()
            .skip(1)
            .position(|l| same_file(&l.path, Path::new(b)) || l.path == Path::new(b))
            .map(|i| i + 1)
            .ok_or_else(|| {
                format!(
                    "Did not find '{b}' in the backing chain of '{}'",
                    file.display()
                )
            })?,
    };
    // Committing into a deeper base leaves the images in between invalid to empty.
    let keep = drop || base.is_some();
    if !keep && chain[0].format != Format::Qcow2 {
        return Err("Image does not have a backing file".into());
    }
    let mut top = open_above(&chain, k, !keep)?;
    let size = top.size();
    let base_link = &chain[k];
    let base_size = {
        let opts = OpenOptions {
            read_only: true,
            format: Some(base_link.format),
            no_backing: true,
            share: kiln_block::Share::Readers,
        };
        kiln_block::open(&base_link.path, &opts)
            .map_err(|e| e.to_string())?
            .size()
    };
    if base_size < size {
        kiln_block::resize_image(&base_link.path, base_link.format, size, false)
            .map_err(|e| e.to_string())?;
    }
    let opts = OpenOptions {
        read_only: false,
        format: Some(base_link.format),
        no_backing: false,
        share: kiln_block::Share::Readers,
    };
    let mut dst = kiln_block::open(&base_link.path, &opts).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut off = 0;
    while off < size {
        let (depth, st) = chain_status(&mut top, off, size - off).map_err(|e| e.to_string())?;
        let len = st.len.max(1);
        if (depth as usize) < k && st.allocated {
            if st.zero {
                dst.write_zeroes(off, len).map_err(|e| e.to_string())?;
            } else {
                let mut done = 0;
                while done < len {
                    let n = IO_CHUNK.min(len - done);
                    buf.resize(n as usize, 0);
                    top.read_at(&mut buf, off + done)
                        .map_err(|e| e.to_string())?;
                    dst.write_at(&buf, off + done).map_err(|e| e.to_string())?;
                    done += n;
                }
            }
        }
        off += len;
    }
    dst.flush().map_err(|e| e.to_string())?;
    std::mem::drop(dst);
    if !keep {
        top.make_empty().map_err(|e| e.to_string())?;
        top.flush().map_err(|e| e.to_string())?;
    }
    println!("Image committed.");
    Ok(0)
}
