//! `kiln img rebase`: point an overlay at another backing file. Safe mode first copies
//! into the overlay every cluster it does not allocate whose content differs between the
//! old and the new backing chain; `-u` only rewrites the header.

use super::parse_format;
use super::IO_CHUNK;
use kiln_block::qcow2::Qcow2;
use kiln_block::{chain_status, open_qcow2_rw, resolve_backing, BlockDevice, Format, OpenOptions};
use std::path::Path;

/// `kiln img rebase [-f fmt] [-u] -b BACKING [-F fmt] FILE`.
pub(super) fn rebase(
    format: Option<&str>,
    unsafe_mode: bool,
    backing: &str,
    backing_format: Option<&str>,
    file: &Path,
) -> Result<u8, String> {
    let fail = |why: &str| format!("Could not change the backing file to '{backing}': {why}");
    if !backing.is_empty() && backing_format.is_none() {
        return Err(fail("backing format must be specified"));
    }
    if let Some(f) = backing_format {
        Format::from_name(f).map_err(|e| e.to_string())?;
    }
    let fmt = match parse_format(format)? {
        Some(f) => f,
        None => kiln_block::probe(file).map_err(|e| e.to_string())?,
    };
    if fmt != Format::Qcow2 {
        return Err(fail("Operation not supported"));
    }
    let name = (!backing.is_empty()).then_some(backing);
    if unsafe_mode {
        let mut img = Qcow2::open(file, false).map_err(|e| e.to_string())?;
        img.set_backing_file(name, backing_format)
            .map_err(|e| fail(&e.to_string()))?;
        return Ok(0);
    }
    let mut img = open_qcow2_rw(file).map_err(|e| e.to_string())?;
    let mut new: Option<Box<dyn BlockDevice>> = match name {
        None => None,
        Some(n) => {
            let opts = OpenOptions {
                read_only: true,
                format: parse_format(backing_format)?,
                no_backing: false,
                share: kiln_block::Share::Readers,
            };
            let p = resolve_backing(file, n);
            Some(
                kiln_block::open(&p, &opts)
                    .map_err(|e| format!("Could not open new backing file '{n}': {e}"))?,
            )
        }
    };
    copy_differences(&mut img, new.as_deref_mut())?;
    drop(new);
    img.flush().map_err(|e| e.to_string())?;
    img.set_backing_file(name, backing_format)
        .map_err(|e| fail(&e.to_string()))?;
    Ok(0)
}

/// Read `buf.len()` bytes at `off` of an optional device, zeros past its end.
fn read_or_zero(
    dev: Option<&mut (dyn BlockDevice + 'static)>,
    buf: &mut [u8],
    off: u64,
) -> Result<(), String> {
    buf.fill(0);
    let Some(d) = dev else { return Ok(()) };
    let n = d.size().saturating_sub(off).min(buf.len() as u64) as usize;
    if n > 0 {
        d.read_at(&mut buf[..n], off).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the range at `off` reads as zeros in `dev` (None: no device; past its end:
/// zeros), and for how many bytes (at most `len`) that holds.
fn zero_run(dev: Option<&mut dyn BlockDevice>, off: u64, len: u64) -> Result<(bool, u64), String> {
    let Some(d) = dev else { return Ok((true, len)) };
    let size = d.size();
    if off >= size {
        return Ok((true, len));
    }
    let (_, st) = chain_status(d, off, len.min(size - off)).map_err(|e| e.to_string())?;
    Ok((st.zero, st.len.max(1)))
}

/// Copy into `img` the clusters it does not allocate whose old content (through its
/// current backing chain) differs from `new`'s. Ranges both chains know to be zeros are
/// skipped without reading.
fn copy_differences(
    img: &mut Qcow2,
    mut new: Option<&mut (dyn BlockDevice + 'static)>,
) -> Result<(), String> {
    let size = img.size();
    let mut bufs = (Vec::new(), Vec::new());
    let mut off = 0;
    while off < size {
        let st = img
            .block_status(off, size - off)
            .map_err(|e| e.to_string())?;
        let len = st.len.max(1);
        if !st.allocated {
            let end = off + len;
            let mut p = off;
            while p < end {
                let (zo, lo) = zero_run(img.backing_mut(), p, end - p)?;
                let (zn, ln) = match new.as_deref_mut() {
                    Some(d) => zero_run(Some(d), p, end - p)?,
                    None => (true, end - p),
                };
                let n = lo.min(ln);
                if !(zo && zn) {
                    copy_range(img, new.as_deref_mut(), p, n, &mut bufs)?;
                }
                p += n;
            }
        }
        off += len;
    }
    Ok(())
}

/// Copy the old content of `len` bytes at `off` into `img` wherever it differs from
/// `new`'s, cluster by cluster (aligned to the image's clusters).
fn copy_range(
    img: &mut Qcow2,
    mut new: Option<&mut (dyn BlockDevice + 'static)>,
    off: u64,
    len: u64,
    (old_buf, new_buf): &mut (Vec<u8>, Vec<u8>),
) -> Result<(), String> {
    let cs = img.header().cluster_size();
    let mut done = 0;
    while done < len {
        let n = IO_CHUNK.min(len - done);
        old_buf.resize(n as usize, 0);
        new_buf.resize(n as usize, 0);
        let at = off + done;
        img.read_at(old_buf, at).map_err(|e| e.to_string())?;
        read_or_zero(new.as_deref_mut(), new_buf, at)?;
        let mut p = 0u64;
        while p < n {
            let g = at + p;
            let q = n.min(p + cs - g % cs);
            let (s, e) = (p as usize, q as usize);
            if old_buf[s..e] != new_buf[s..e] {
                img.write_at(&old_buf[s..e], g).map_err(|e| e.to_string())?;
            }
            p = q;
        }
        done += n;
    }
    Ok(())
}
