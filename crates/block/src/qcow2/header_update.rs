//! Changing an existing qcow2 image's header in place: the backing file name and format
//! (`rebase`), for which the header cluster is rebuilt from its current bytes (header
//! fields and every other extension kept), checked to fit in cluster 0, and written in
//! one write, then flushed; and the autoclear feature bits, cleared before a read-write
//! open can change anything.

use super::header::{Header, EXT_BACKING_FORMAT};
use super::Qcow2;
use crate::fileio::{read_full, write_meta};
use crate::{Error, Result};

/// The header cluster `cluster0` (of an image with header `h`) with the backing file name
/// and format replaced (None: removed).
pub fn with_backing(
    cluster0: &[u8],
    h: &Header,
    name: Option<&str>,
    format: Option<&str>,
) -> Result<Vec<u8>> {
    let cs = h.cluster_size() as usize;
    let hl = h.header_length as usize;
    if cluster0.len() < cs || hl > cs {
        return Err(Error::Invalid("short header cluster".into()));
    }
    let mut b = cluster0[..hl].to_vec();
    let ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(8) * 8, 0);
    };
    if let Some(f) = format {
        ext(&mut b, EXT_BACKING_FORMAT, f.as_bytes());
    }
    // Keep every other extension, in order.
    let end = if h.backing_file_offset != 0 {
        (h.backing_file_offset as usize).min(cs)
    } else {
        cs
    };
    let mut at = hl;
    while at + 8 <= end {
        let ty = u32::from_be_bytes(cluster0[at..at + 4].try_into().unwrap());
        let len = u32::from_be_bytes(cluster0[at + 4..at + 8].try_into().unwrap()) as usize;
        if ty == 0 {
            break;
        }
        if len > end - at - 8 {
            return Err(Error::Invalid(
                "header extension exceeds the header cluster".into(),
            ));
        }
        if ty != EXT_BACKING_FORMAT {
            ext(&mut b, ty, &cluster0[at + 8..at + 8 + len]);
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    b.extend_from_slice(&[0u8; 8]);
    let (off, len) = match name {
        Some(n) if !n.is_empty() => {
            if n.len() > 1023 {
                return Err(Error::InvalidArgument("backing file name too long".into()));
            }
            let off = b.len() as u64;
            b.extend_from_slice(n.as_bytes());
            (off, n.len() as u32)
        }
        _ => (0, 0),
    };
    b[8..16].copy_from_slice(&off.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    if b.len() > cs {
        return Err(Error::InvalidArgument(format!(
            "header and extensions ({} bytes) do not fit in a {cs}-byte cluster",
            b.len()
        )));
    }
    b.resize(cs, 0);
    Ok(b)
}

impl Qcow2 {
    /// Point the image at another backing file (None or "": none) with format `format`,
    /// rewriting the header cluster in one write and flushing. The attached backing device
    /// (if any) is dropped: reopen the image to read through the new chain.
    pub fn set_backing_file(&mut self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("image is open read-only".into()));
        }
        let name = name.filter(|n| !n.is_empty());
        let format = if name.is_some() { format } else { None };
        let mut cluster0 = vec![0u8; self.cluster_size as usize];
        read_full(&self.file, &mut cluster0, 0)?;
        let new = with_backing(&cluster0, &self.h, name, format)?;
        // Make sure it parses as what we mean before it replaces the old one.
        let parsed = Header::parse(&new)?;
        if parsed.backing_file.as_deref() != name || parsed.backing_format.as_deref() != format {
            return Err(Error::Invalid("rebuilt header does not round-trip".into()));
        }
        self.flush_meta()?;
        write_meta(&self.file, &new, 0)?;
        self.sync_rb()?;
        self.h = parsed;
        self.backing = None;
        Ok(())
    }
}

impl Qcow2 {
    /// Clear the autoclear feature bits (v3), flushed, before this read-write open changes
    /// anything. The spec asks this of every writer that does not know the features they
    /// stand for, and Kiln knows none: the bitmaps bit, for one, tells QEMU that its
    /// persistent dirty bitmaps are consistent with the data, which stops being true
    /// once Kiln writes. QEMU then treats the bitmaps as inconsistent, as it should.
    pub(crate) fn clear_autoclear(&mut self) -> Result<()> {
        if self.h.version < 3 || self.h.autoclear_features == 0 {
            return Ok(());
        }
        write_meta(&self.file, &0u64.to_be_bytes(), 88)?;
        self.sync_rb()?;
        self.h.autoclear_features = 0;
        Ok(())
    }
}
