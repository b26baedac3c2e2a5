//! Unmapping qcow2 guest clusters (they become unallocated again, reading from the
//! backing file): used by shrinking and by emptying an overlay after `commit`.
//! Order: L2 entries and L1 entries are cleared and flushed first, refcounts drop after.

use super::{Qcow2, L1_OFFSET_MASK, L2_OFFSET_MASK, OFLAG_COMPRESSED};
use crate::fileio::{punch_hole, write_meta};
use crate::{Error, Result};

impl Qcow2 {
    fn check_unmappable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("image is open read-only".into()));
        }
        if self.h.incompatible_features & super::header::INCOMPAT_CORRUPT != 0 {
            return Err(Error::Corrupt(
                "image is marked corrupt; writes are refused".into(),
            ));
        }
        Ok(())
    }

    /// Host clusters an L2 entry holds a reference to.
    fn entry_clusters(&self, e: u64, out: &mut Vec<u64>) {
        let cs = self.cluster_size;
        if e & OFLAG_COMPRESSED != 0 {
            let shift = 62 - (self.h.cluster_bits - 8);
            let mask = (1u64 << (self.h.cluster_bits - 8)) - 1;
            let offset = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & mask) + 1;
            let start = offset & !511;
            out.extend(start / cs..=(start + sectors * 512 - 1) / cs);
            return;
        }
        let host = e & L2_OFFSET_MASK;
        if host != 0 {
            out.push(host / cs);
        }
    }

    /// Make guest clusters `first..end` (cluster indices) unallocated, freeing what they
    /// (and L2 tables that become unused) referenced.
    pub(crate) fn unmap_clusters(&mut self, first: u64, end: u64) -> Result<()> {
        self.check_unmappable()?;
        if first >= end || self.l1.is_empty() {
            return Ok(());
        }
        // Eager from here: the metadata on disk must be complete first.
        self.flush_meta()?;
        self.zcache = None;
        let cs = self.cluster_size;
        let l2e = self.h.l2_entries();
        // Words per L2 entry: extended L2 entries carry a subcluster bitmap word.
        let stride = if self.h.extended_l2() { 2 } else { 1 };
        let mut frees = Vec::new();
        let mut cleared_l1 = Vec::new();
        let last_i1 = ((end - 1) / l2e).min(self.l1.len().saturating_sub(1) as u64);
        for i1 in first / l2e..=last_i1 {
            let l2off = self.l1[i1 as usize] & L1_OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            let base = i1 * l2e;
            let lo = (first.max(base) - base) as usize;
            let hi = (end.min(base + l2e) - base) as usize;
            if lo == 0 && hi == l2e as usize {
                // The whole table goes: the L1 entry is cleared and the table loses this
                // L1's reference, as does every cluster it points to. A table shared with
                // a snapshot stays as it is for the snapshot (its refcount stays >= 1).
                let table = self.l2_table(l2off)?.clone();
                for j in 0..hi {
                    self.entry_clusters(table[j * stride], &mut frees);
                }
                cleared_l1.push(i1 as usize);
                frees.push(l2off / cs);
                continue;
            }
            // Part of the table: a table shared with a snapshot is copied first (the
            // copy is on disk and in the L1 before this returns).
            let l2off = self.own_l2(i1 as usize)?;
            let mut table = self.l2_table(l2off)?.clone();
            for j in lo..hi {
                self.entry_clusters(table[j * stride], &mut frees);
                table[j * stride..(j + 1) * stride].fill(0);
            }
            let words = &table[lo * stride..hi * stride];
            let bytes: Vec<u8> = words.iter().flat_map(|e| e.to_be_bytes()).collect();
            write_meta(&self.file, &bytes, l2off + (lo * stride * 8) as u64)?;
            *self.l2_table(l2off)? = table;
        }
        for &i1 in &cleared_l1 {
            write_meta(
                &self.file,
                &0u64.to_be_bytes(),
                self.h.l1_table_offset + 8 * i1 as u64,
            )?;
            self.l1[i1] = 0;
        }
        if frees.is_empty() {
            return Ok(());
        }
        // The references are gone on disk before any refcount drops.
        self.sync_rb()?;
        for c in frees {
            // A reference to a free cluster (a corrupt image) is simply gone now.
            if self.refcount(c)? == 0 {
                continue;
            }
            self.update_refcount(c, -1, &[])?;
            if self.refcount(c)? == 0 {
                self.meta.remove(&c);
                self.l2_cache.remove(c * cs);
                punch_hole(&self.file, c * cs, cs)?;
            }
        }
        self.sync_rb()
    }

    /// Make every guest cluster unallocated (what `qemu-img commit` leaves in the overlay).
    pub fn make_empty(&mut self) -> Result<()> {
        let clusters = self.h.size.div_ceil(self.cluster_size);
        self.unmap_clusters(0, clusters)
    }
}
