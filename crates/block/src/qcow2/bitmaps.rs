//! QEMU's persistent dirty bitmaps, read only as far as Kiln needs them: the directory
//! (names, granularity, flags: `info` shows them as qemu-img does) and where the bitmap
//! tables are (`check` counts their clusters). Kiln never changes a bitmap; a read-write
//! open clears the autoclear bits instead (see `header_update`), after which QEMU stops
//! trusting them. The directory is read only while the image says the bitmaps are
//! consistent, and within bounds a hostile image cannot stretch. Also QEMU's guess that
//! an image's metadata was preallocated, which decides whether its block status looks
//! for holes of the file (`map` and `measure` follow it).

use super::header::AUTOCLEAR_BITMAPS;
use super::Qcow2;
use crate::fileio::{file_len, read_full};
use crate::{Error, Result};

/// Largest bitmap directory read.
const MAX_DIRECTORY: u64 = 64 << 20;

/// One bitmap of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// Its name.
    pub name: String,
    /// Bytes of guest data one bit stands for.
    pub granularity: u64,
    /// Bit 0: in use (not saved cleanly); bit 1: auto (tracks writes).
    pub flags: u32,
    /// Where its bitmap table is, and its entries.
    pub table: (u64, u64),
}

impl Bitmap {
    /// The flags by qemu-img's names.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.flags & 1 != 0 {
            v.push("in-use");
        }
        if self.flags & 2 != 0 {
            v.push("auto");
        }
        v
    }
}

impl Qcow2 {
    /// The bitmaps, if the image has them and says they are consistent (else none).
    pub fn bitmaps(&self) -> Result<Vec<Bitmap>> {
        let Some((nb, size, off)) = self.h.bitmaps else {
            return Ok(Vec::new());
        };
        if self.h.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
            return Ok(Vec::new());
        }
        let flen = file_len(&self.file)?;
        if size > MAX_DIRECTORY || off.saturating_add(size) > flen {
            return Err(Error::Corrupt(
                "the bitmap directory is too large or beyond the end of the file".into(),
            ));
        }
        let mut dir = vec![0u8; size as usize];
        read_full(&self.file, &mut dir, off)?;
        let be32 = |at: usize| u32::from_be_bytes(dir[at..at + 4].try_into().unwrap());
        let mut out = Vec::new();
        let mut at = 0usize;
        for i in 0..nb {
            let bad = || Error::Corrupt(format!("bitmap directory entry {i} is invalid"));
            if at + 24 > dir.len() {
                return Err(bad());
            }
            let table_off = u64::from_be_bytes(dir[at..at + 8].try_into().unwrap());
            let table_size = u64::from(be32(at + 8));
            let flags = be32(at + 12);
            let gran_bits = u32::from(dir[at + 17]);
            let name_size = usize::from(u16::from_be_bytes([dir[at + 18], dir[at + 19]]));
            let extra = be32(at + 20) as usize;
            let name_at = at + 24 + extra;
            if gran_bits > 63 || name_at + name_size > dir.len() {
                return Err(bad());
            }
            out.push(Bitmap {
                name: String::from_utf8_lossy(&dir[name_at..name_at + name_size]).into_owned(),
                granularity: 1 << gran_bits,
                flags,
                table: (table_off, table_size),
            });
            at = (name_at + name_size).div_ceil(8) * 8;
        }
        Ok(out)
    }
}

impl Qcow2 {
    /// QEMU's guess (`qcow2_detect_metadata_preallocation`) that clusters were allocated
    /// ahead of their data: at least max(10/9, +2) as many clusters have a refcount as
    /// the file has clusters' worth of blocks on disk. QEMU then asks the file whether
    /// allocated data lies in holes (reading as zeros) when it reports block status;
    /// `map` and `measure` follow it to report what qemu-img reports.
    pub fn looks_metadata_preallocated(&mut self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let cs = self.cluster_size;
        let meta = self.file.metadata().map_err(|e| Error::io("stat", e))?;
        let real = meta.blocks() * 512 / cs;
        let threshold = (real * 10 / 9).max(real + 2);
        let end = file_len(&self.file)?.div_ceil(cs);
        let mut counted = 0;
        for c in 0..end {
            if counted >= threshold {
                break;
            }
            if self.refcount(c)? != 0 {
                counted += 1;
            }
        }
        Ok(counted >= threshold)
    }
}
