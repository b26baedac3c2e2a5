//! Changing an existing qcow2 image's format options in place (`qemu-img amend`): lazy
//! refcounts on or off, and the compat level up (0.10 to 1.1) or down (1.1 to 0.10).
//!
//! Going up rewrites the header as version 3 and the snapshot table with the extra data
//! version 3 requires. Going down first writes every zero cluster of the active image out
//! as zeros (version 2 has no zero flag), then rewrites the header as version 2; it is
//! refused for what version 2 cannot hold (other refcount widths, extended L2, zstd,
//! persistent bitmaps) and, in this implementation, for images with internal snapshots,
//! whose tables may hold zero clusters too. Each step ends flushed, and the header
//! switches in one write.

use super::header::{self, Header, NewHeader, COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT};
use super::Qcow2;
use crate::fileio::write_meta;
use crate::{BlockDevice, Error, Result};

/// What `amend` changes (None: keep).
#[derive(Debug, Clone, Default)]
pub struct AmendOptions {
    /// `compat`: 2 for "0.10", 3 for "1.1".
    pub version: Option<u32>,
    /// `lazy_refcounts`.
    pub lazy_refcounts: Option<bool>,
}

fn refuse<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Unsupported(msg.into()))
}

impl Qcow2 {
    /// Change the image's options as `o` says (see the module docs).
    pub fn amend(&mut self, o: &AmendOptions) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("image is open read-only".into()));
        }
        if self.h.incompatible_features & INCOMPAT_CORRUPT != 0 {
            return Err(Error::Corrupt(
                "image is marked corrupt; repair it (check -r all) before amending".into(),
            ));
        }
        let from = self.h.version;
        let to = o.version.unwrap_or(from);
        if !(2..=3).contains(&to) {
            return Err(Error::InvalidArgument("compat must be 0.10 or 1.1".into()));
        }
        let lazy = o
            .lazy_refcounts
            .unwrap_or(self.h.lazy_refcounts() && to == 3);
        if lazy && to < 3 {
            return Err(Error::InvalidArgument(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)".into(),
            ));
        }
        if to < from {
            self.check_downgrade()?;
            self.expand_zero_clusters()?;
        }
        // Everything written so far, and every refcount, is on disk.
        self.flush()?;
        if self.dirty_marked == Some(true) {
            self.set_dirty_bit(false)?;
        }
        self.dirty_marked = None;
        if to == from {
            if lazy != self.h.lazy_refcounts() && to == 3 {
                let mut compat = self.h.compatible_features & !COMPAT_LAZY_REFCOUNTS;
                if lazy {
                    compat |= COMPAT_LAZY_REFCOUNTS;
                }
                write_meta(&self.file, &compat.to_be_bytes(), 80)?;
                self.sync_rb()?;
                self.h.compatible_features = compat;
            }
            return Ok(());
        }
        if to > from && !self.snapshots.is_empty() {
            // Version 3 snapshot entries carry at least the disk size as extra data;
            // rewriting the table writes it (as QEMU does when upgrading).
            self.write_snapshot_table(self.snapshots.clone())?;
        }
        self.rewrite_header(to, lazy)
    }

    /// What a version 2 image cannot hold, refused before anything changes.
    fn check_downgrade(&self) -> Result<()> {
        let h = &self.h;
        if h.refcount_bits() != 16 {
            return refuse(format!(
                "Cannot downgrade an image with refcount_bits={} (version 2 has 16-bit refcounts only); convert it with -o compat=0.10",
                h.refcount_bits()
            ));
        }
        if h.extended_l2() {
            return refuse("Cannot downgrade an image with extended L2 entries");
        }
        if h.compression != header::Compression::Zlib {
            return refuse("Cannot downgrade an image whose compression type is not zlib");
        }
        if h.autoclear_features != 0 {
            return refuse("Cannot downgrade an image with persistent bitmaps");
        }
        if !self.snapshots.is_empty() {
            return refuse(
                "Cannot downgrade an image with internal snapshots (convert it with -o compat=0.10)",
            );
        }
        Ok(())
    }

    /// Write every zero cluster of the active image out as real zeros, so that no L2
    /// entry keeps the zero flag.
    fn expand_zero_clusters(&mut self) -> Result<()> {
        let size = self.size();
        let cs = self.cluster_size;
        let zeros = vec![0u8; cs as usize];
        let mut off = 0;
        while off < size {
            let st = self.block_status(off, (size - off).min(cs * 64))?;
            let n = st.len.clamp(1, size - off);
            if st.allocated && st.zero && !st.data {
                let mut at = off;
                while at < off + n {
                    let len = (off + n - at).min(cs - at % cs);
                    self.write_at(&zeros[..len as usize], at)?;
                    at += len;
                }
            }
            off += n;
        }
        Ok(())
    }

    /// Write the header as version `to` with lazy refcounts `lazy`, every other field
    /// kept, in one write, flushed.
    fn rewrite_header(&mut self, to: u32, lazy: bool) -> Result<()> {
        let h = &self.h;
        let mut new = header::build(&NewHeader {
            version: to,
            cluster_bits: h.cluster_bits,
            size: h.size,
            refcount_order: h.refcount_order,
            lazy_refcounts: lazy,
            extended_l2: h.extended_l2(),
            compression: h.compression,
            backing_file: h.backing_file.as_deref(),
            backing_format: h.backing_format.as_deref(),
            l1: (h.l1_size, h.l1_table_offset),
            reftable: (h.refcount_table_offset, h.refcount_table_clusters),
        })?;
        new[60..64].copy_from_slice(&h.nb_snapshots.to_be_bytes());
        new[64..72].copy_from_slice(&h.snapshots_offset.to_be_bytes());
        let parsed = Header::parse(&new)?;
        if parsed.version != to
            || parsed.l1_table_offset != h.l1_table_offset
            || parsed.nb_snapshots != h.nb_snapshots
            || parsed.backing_file != h.backing_file
        {
            return Err(Error::Invalid("rebuilt header does not round-trip".into()));
        }
        write_meta(&self.file, &new, 0)?;
        self.sync_rb()?;
        self.h = parsed;
        Ok(())
    }
}
