//! `kiln img convert -B BACKING -F FMT`: the output is a new qcow2 overlay of BACKING
//! holding only what the source's top image holds, as qemu-img does. BACKING is expected
//! to read like the source's own backing chain (the user's promise, as with qemu-img).
//!
//! Ranges the source's top image allocates are copied (data, or zeros as zero clusters, so
//! they hide the backing file); ranges it leaves to its backing file are left unallocated.
//! A source without a backing file reads as zeros where it allocates nothing, and those
//! zeros are written too, except past the end of BACKING where the overlay reads zeros
//! anyway.

use super::create::{for_data_runs, Progress};
use kiln_block::{chain_status, BlockDevice};

/// Bytes looked at per step; steps end at multiples of it, so that zero ranges split
/// between steps stay whole clusters (up to 2 MiB).
const STEP: u64 = 2 << 20;
/// Zero runs shorter than this inside data are written as data.
const ZERO_GRAIN: usize = 64 << 10;

/// Copy what `src`'s top image holds into `dst` (an overlay of a backing file of
/// `backing_size` bytes).
pub(super) fn copy_top_layer(
    src: &mut dyn BlockDevice,
    dst: &mut dyn BlockDevice,
    backing_size: u64,
    progress: bool,
) -> Result<(), String> {
    let size = src.size();
    let mut progress = Progress::new(progress, size);
    let mut buf = vec![0u8; STEP as usize];
    let mut off = 0;
    while off < size {
        let (depth, st) = chain_status(src, off, (size - off).min(STEP - off % STEP))
            .map_err(|e| e.to_string())?;
        let n = st.len.clamp(1, size - off);
        let in_top = depth == 0 && (st.allocated || st.zero);
        if in_top && st.zero && !st.data {
            zeros(dst, off, n, backing_size)?;
        } else if in_top {
            let b = &mut buf[..n as usize];
            src.read_at(b, off).map_err(|e| e.to_string())?;
            let mut at = 0usize;
            for_data_runs(b, ZERO_GRAIN, |r| {
                if r.start > at {
                    zeros(dst, off + at as u64, (r.start - at) as u64, backing_size)?;
                }
                at = r.end;
                dst.write_at(&b[r.clone()], off + r.start as u64)
                    .map_err(|e| e.to_string())
            })?;
            if (at as u64) < n {
                zeros(dst, off + at as u64, n - at as u64, backing_size)?;
            }
        }
        off += n;
        progress.at(off);
    }
    progress.finish();
    dst.flush().map_err(|e| e.to_string())
}

/// Make `len` bytes at `off` read as zeros in the overlay; past the backing file's end
/// they already do.
fn zeros(dst: &mut dyn BlockDevice, off: u64, len: u64, backing_size: u64) -> Result<(), String> {
    let end = (off + len).min(backing_size.max(off));
    if end > off {
        dst.write_zeroes(off, end - off)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
