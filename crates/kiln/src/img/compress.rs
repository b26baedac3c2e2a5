//! `kiln img convert -c`: copying a device into a fresh qcow2 image as compressed
//! clusters (qemu-img's behaviour: all-zero clusters stay unallocated, every other
//! cluster is written compressed, or plain when it does not compress).

use super::create::{for_data_runs, Progress};
use kiln_block::qcow2::Qcow2;
use kiln_block::{BlockDevice, Extent};
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
    let mut bar = Progress::new(progress, size);
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
        for_data_runs(b, cs as usize, |r| {
            out.write_compressed(off + r.start as u64, &b[r])
                .map_err(|e| e.to_string())
        })?;
        off += n;
        bar.at(off);
    }
    bar.finish();
    out.flush().map_err(|e| e.to_string())?;
    Ok(0)
}
