//! `kiln img convert -c`: copying a device into a fresh qcow2 image as compressed
//! clusters (qemu-img's behaviour: all-zero clusters stay unallocated, every other
//! cluster is written compressed, or plain when it does not compress).

use kiln_block::qcow2::Qcow2;
use kiln_block::{BlockDevice, Extent};
use std::io::Write;
use std::path::Path;

/// Bytes read from the source per step (rounded up to whole clusters).
const CHUNK: u64 = 2 << 20;

/// Copy all of `src` into the new, empty qcow2 image at `dst` with compressed clusters.
pub(super) fn copy_compressed(
    src: &mut dyn BlockDevice,
    dst: &Path,
    progress: bool,
) -> Result<u8, String> {
    let mut out = Qcow2::open(dst, false).map_err(|e| e.to_string())?;
    let cs = out.header().cluster_size();
    let size = src.size();
    let chunk = CHUNK.div_ceil(cs) * cs;
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0u64;
    let mut last_pct = u64::MAX;
    while off < size {
        let n = (size - off).min(chunk);
        let (kind, zn) = src.extent(off, n).map_err(|e| e.to_string())?;
        if kind == Extent::Zero && zn >= n {
            off += n;
            continue;
        }
        let b = &mut buf[..n as usize];
        src.read_at(b, off).map_err(|e| e.to_string())?;
        // Runs of clusters holding something other than zeros.
        let mut i = 0usize;
        while i < b.len() {
            let end = |j: usize| (j + cs as usize).min(b.len());
            if b[i..end(i)].iter().all(|&x| x == 0) {
                i = end(i);
                continue;
            }
            let start = i;
            while i < b.len() && !b[i..end(i)].iter().all(|&x| x == 0) {
                i = end(i);
            }
            out.write_compressed(off + start as u64, &b[start..i])
                .map_err(|e| e.to_string())?;
        }
        off += n;
        if progress {
            let pct = off * 10000 / size.max(1);
            if pct != last_pct {
                last_pct = pct;
                eprint!("    ({}.{:02}/100%)\r", pct / 100, pct % 100);
                let _ = std::io::stderr().flush();
            }
        }
    }
    if progress {
        eprintln!("    (100.00/100%)");
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(0)
}
