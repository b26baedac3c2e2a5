//! Resizing qcow2 images (`qemu-img resize`).
//!
//! Growing: when the L1 table must grow, the bigger table is written elsewhere (its
//! clusters allocated, refcounts on disk, first), flushed, and the header switches to it
//! (size, L1 size and offset in one write), flushed; only then are the old L1 clusters
//! freed. Newly visible bytes that a longer backing file would show are zeroed.
//!
//! Shrinking (only when asked to): the tail of a partial last cluster is zeroed, the
//! clusters past the new end are unmapped (references dropped before refcounts), then the
//! header gets the new size. The L1 table keeps its size (its tail is all zeros then);
//! free clusters at the end of the file are cut off. Internal snapshots keep their own
//! size and clusters (tables they share are copied before they change), as in QEMU.

use super::header::size_to_l1;
use super::{Qcow2, L1_OFFSET_MASK};
use crate::fileio::{file_len, write_meta};
use crate::{Error, Result};

impl Qcow2 {
    /// Change the virtual size to `size` bytes (a multiple of 512). Shrinking needs
    /// `allow_shrink`.
    pub fn resize(&mut self, size: u64, allow_shrink: bool) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("image is open read-only".into()));
        }
        if self.h.incompatible_features & super::header::INCOMPAT_CORRUPT != 0 {
            return Err(Error::Corrupt(
                "image is marked corrupt; writes are refused".into(),
            ));
        }
        if !size.is_multiple_of(512) {
            return Err(Error::InvalidArgument(
                "The new size must be a multiple of 512".into(),
            ));
        }
        if size > 1 << 61 {
            return Err(Error::InvalidArgument(format!("new size {size} too large")));
        }
        if self.h.nb_snapshots > 0 && self.h.version < 3 {
            return Err(Error::Unsupported(
                "Can't resize a v2 image which has snapshots".into(),
            ));
        }
        // Eager from here: the metadata on disk must be complete first.
        self.flush_meta()?;
        let old = self.h.size;
        if size < old {
            if !allow_shrink {
                return Err(Error::InvalidArgument(
                    "Use the --shrink option to perform a shrink operation.".into(),
                ));
            }
            return self.shrink(size);
        }
        if size > old {
            self.grow(size)?;
        }
        Ok(())
    }

    fn grow(&mut self, size: u64) -> Result<()> {
        let cs = self.cluster_size;
        let old = self.h.size;
        let need = size_to_l1(size, self.h.cluster_bits, self.h.l2_entries());
        if need * 8 > super::header::MAX_L1_BYTES {
            return Err(Error::InvalidArgument(format!(
                "new size {size} needs an L1 table larger than {} bytes",
                super::header::MAX_L1_BYTES
            )));
        }
        let mut hdr = [0u8; 24];
        hdr[..8].copy_from_slice(&size.to_be_bytes());
        if need > u64::from(self.h.l1_size) {
            // Write the bigger table elsewhere, then switch the header to it.
            let bytes = need * 8;
            let clusters = bytes.div_ceil(cs);
            let start = self.alloc_clusters(clusters, &[])?;
            let off = start * cs;
            self.check_overlap(off, clusters * cs)?;
            self.sync_rb()?;
            let mut table = vec![0u8; (clusters * cs) as usize];
            for (i, e) in self.l1.iter().enumerate() {
                table[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            write_meta(&self.file, &table, off)?;
            self.sync_rb()?;
            hdr[12..16].copy_from_slice(&(need as u32).to_be_bytes());
            hdr[16..24].copy_from_slice(&off.to_be_bytes());
            write_meta(&self.file, &hdr, 24)?;
            self.sync_rb()?;
            let old_off = self.h.l1_table_offset;
            let old_clusters = (u64::from(self.h.l1_size) * 8).div_ceil(cs);
            self.h.l1_table_offset = off;
            self.h.l1_size = need as u32;
            self.h.size = size;
            self.l1.resize(need as usize, 0);
            if old_off != 0 {
                for c in old_off / cs..old_off / cs + old_clusters {
                    self.update_refcount(c, -1, &[])?;
                }
                self.sync_rb()?;
            }
        } else {
            write_meta(&self.file, &hdr[..8], 24)?;
            self.sync_rb()?;
            self.h.size = size;
        }
        // Bytes a longer backing file holds past the old end must not become visible.
        let bsize = self.backing.as_ref().map_or(0, |b| b.size());
        if bsize > old {
            let end = bsize.min(size);
            self.zero_guest(old, end - old)?;
            self.sync_rb()?;
        }
        Ok(())
    }

    fn shrink(&mut self, size: u64) -> Result<()> {
        let cs = self.cluster_size;
        let first = size.div_ceil(cs);
        let end = self.h.size.div_ceil(cs);
        // The part of the last cluster past the new end must read as zeros if the image
        // grows again.
        let tail_end = (first * cs).min(self.h.size);
        if tail_end > size {
            let (i1, _) = self.indices(size);
            if self.l1.get(i1).is_some_and(|e| e & L1_OFFSET_MASK != 0) {
                self.zero_guest(size, tail_end - size)?;
            }
        }
        self.unmap_clusters(first, end)?;
        write_meta(&self.file, &size.to_be_bytes(), 24)?;
        self.sync_rb()?;
        self.h.size = size;
        // Like qemu, give back the free clusters at the end of the file.
        let flen = file_len(&self.file)?;
        let mut last = flen.div_ceil(cs);
        while last > 1 && self.refcount(last - 1)? == 0 {
            last -= 1;
        }
        if last * cs < flen {
            self.file
                .set_len(last * cs)
                .map_err(|e| Error::io("truncate", e))?;
            self.file_shrank();
        }
        Ok(())
    }
}
