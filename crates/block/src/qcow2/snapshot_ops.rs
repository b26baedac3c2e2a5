//! qcow2 internal snapshot operations: create, apply (revert) and delete, plus the
//! copy-on-write of shared L2 tables that writes to images with snapshots need.
//!
//! Refcounts count paths: every L1 table (the active one and each snapshot's) adds one
//! to each L2 table it points to and one to every cluster those L2 tables point to. The
//! COPIED flag (refcount exactly 1) is kept on the active tables only. Order, as in QEMU:
//! refcount increments are flushed before anything new points at the clusters; the
//! header switches to new tables in one write; references are dropped (and flushed)
//! before the refcounts fall, and COPIED is set again only once refcounts of 1 are on disk.

use super::header::{size_to_l1, MAX_L1_BYTES};
use super::snapshot::{Snapshot, MAX_SNAPSHOTS};
use super::{read_be64s, Qcow2, L1_OFFSET_MASK, L2_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::fileio::{file_len, read_full, write_meta};
use crate::{Error, Result};
use std::collections::HashMap;

fn entries_bytes(t: &[u64]) -> Vec<u8> {
    t.iter().flat_map(|e| e.to_be_bytes()).collect()
}

impl Qcow2 {
    fn check_snapshot_writable(&self, what: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "cannot {what} a snapshot: the image is open read-only"
            )));
        }
        if self.h.incompatible_features & super::header::INCOMPAT_CORRUPT != 0 {
            return Err(Error::Corrupt(
                "image is marked corrupt; snapshots cannot be changed".into(),
            ));
        }
        Ok(())
    }

    /// The clusters one L2 table points to (data, preallocated zero and compressed
    /// clusters), one element per reference. Hostile entries give errors.
    fn l2_refs(&mut self, l2off: u64, flen: u64) -> Result<Vec<u64>> {
        let cs = self.cluster_size;
        let step = if self.h.extended_l2() { 2 } else { 1 };
        let cbits = self.h.cluster_bits;
        let t = self.l2_table(l2off)?.clone();
        let mut refs = Vec::new();
        for j in (0..t.len()).step_by(step) {
            let e = t[j];
            if e & OFLAG_COMPRESSED != 0 {
                let shift = 62 - (cbits - 8);
                let offset = e & ((1u64 << shift) - 1);
                let sectors = ((e >> shift) & ((1u64 << (cbits - 8)) - 1)) + 1;
                let end = (offset & !511) + sectors * 512;
                if offset >= flen {
                    return Err(Error::Corrupt(format!(
                        "compressed cluster at {offset:#x} (L2 table {l2off:#x}) lies beyond the end of the file"
                    )));
                }
                refs.extend(offset / cs..=(end - 1) / cs);
                continue;
            }
            let host = e & L2_OFFSET_MASK;
            if host == 0 {
                continue;
            }
            if !host.is_multiple_of(cs) || host >= flen {
                return Err(Error::Corrupt(format!(
                    "cluster offset {host:#x} in L2 table {l2off:#x} is unaligned or beyond the end of the file"
                )));
            }
            refs.push(host / cs);
        }
        Ok(refs)
    }

    /// Add `delta` (+1 or -1) to the refcount of everything the L1 table `l1` references.
    /// With `dry_run`, only check that no refcount would overflow or drop below zero (and
    /// that the tables are sane), changing nothing.
    fn update_tree(&mut self, l1: &[u64], delta: i64, dry_run: bool) -> Result<()> {
        let cs = self.cluster_size;
        let flen = file_len(&self.file)?;
        let max = match self.h.refcount_bits() {
            64 => u64::MAX,
            b => (1u64 << b) - 1,
        };
        let mut tables: HashMap<u64, u64> = HashMap::new();
        for &e in l1 {
            let off = e & L1_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) || off >= flen {
                return Err(Error::Corrupt(format!(
                    "L2 table offset {off:#x} is unaligned or beyond the end of the file"
                )));
            }
            *tables.entry(off / cs).or_insert(0) += 1;
        }
        let check = |q: &mut Qcow2, c: u64, n: u64| -> Result<()> {
            let rc = q.refcount(c)?;
            let ok = if delta > 0 {
                rc.checked_add(n).is_some_and(|v| v <= max)
            } else {
                rc >= n
            };
            if ok {
                return Ok(());
            }
            Err(if delta > 0 {
                Error::Unsupported(format!(
                    "the refcount of cluster {c} would exceed {max} (refcount_bits={}); no more snapshots fit",
                    q.h.refcount_bits()
                ))
            } else {
                Error::Corrupt(format!(
                    "the refcount of cluster {c} ({rc}) is lower than its references"
                ))
            })
        };
        for &e in l1 {
            let off = e & L1_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let refs = self.l2_refs(off, flen)?;
            if dry_run {
                let mut counts: HashMap<u64, u64> = HashMap::new();
                for c in refs {
                    *counts.entry(c).or_insert(0) += 1;
                }
                for (c, n) in counts {
                    let n = n + tables.get(&c).copied().unwrap_or(0);
                    check(self, c, n)?;
                }
            } else {
                for c in refs {
                    self.update_refcount(c, delta, &[])?;
                }
            }
        }
        for (c, n) in tables {
            if dry_run {
                check(self, c, n)?;
            } else {
                for _ in 0..n {
                    self.update_refcount(c, delta, &[])?;
                }
            }
        }
        Ok(())
    }

    /// Punch out the clusters the L1 table `l1` referenced that are now free.
    fn punch_freed(&mut self, l1: &[u64]) -> Result<()> {
        let cs = self.cluster_size;
        let flen = file_len(&self.file)?;
        for &e in l1 {
            let off = e & L1_OFFSET_MASK;
            if off == 0 || off >= flen {
                continue;
            }
            let mut refs = self.l2_refs(off, flen)?;
            refs.push(off / cs);
            refs.sort_unstable();
            refs.dedup();
            for c in refs {
                if self.refcount(c)? == 0 {
                    self.meta.remove(&c);
                    crate::fileio::punch_hole(&self.file, c * cs, cs)?;
                }
            }
        }
        Ok(())
    }

    /// Make the COPIED flags of the tree under `l1` match the refcounts (set exactly
    /// where the refcount is 1), writing changed L2 entries through. Returns whether an
    /// L1 entry changed (the caller writes the L1 table).
    fn sync_copied_flags(&mut self, l1: &mut [u64]) -> Result<bool> {
        let cs = self.cluster_size;
        let step = if self.h.extended_l2() { 2 } else { 1 };
        let mut l1_changed = false;
        for l1e in l1.iter_mut() {
            let off = *l1e & L1_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let mut t = self.l2_table(off)?.clone();
            let mut changed = false;
            for j in (0..t.len()).step_by(step) {
                let e = t[j];
                let host = e & L2_OFFSET_MASK;
                let want = if e & OFLAG_COMPRESSED != 0 || host == 0 {
                    false
                } else {
                    self.refcount(host / cs)? == 1
                };
                let ne = if want {
                    e | OFLAG_COPIED
                } else {
                    e & !OFLAG_COPIED
                };
                if ne != e {
                    t[j] = ne;
                    changed = true;
                }
            }
            if changed {
                self.check_overlap_l2(off)?;
                write_meta(&self.file, &entries_bytes(&t), off)?;
                *self.l2_table(off)? = t;
            }
            let want = self.refcount(off / cs)? == 1;
            let ne = if want {
                *l1e | OFLAG_COPIED
            } else {
                *l1e & !OFLAG_COPIED
            };
            if ne != *l1e {
                *l1e = ne;
                l1_changed = true;
            }
        }
        Ok(l1_changed)
    }

    /// An L2 table about to be rewritten in place must not overlap other metadata.
    fn check_overlap_l2(&mut self, off: u64) -> Result<()> {
        let cs = self.cluster_size;
        let was = self.meta.remove(&(off / cs));
        let r = self.check_overlap(off, cs);
        if was {
            self.meta.insert(off / cs);
        }
        r
    }

    /// Fix the COPIED flags of the active tables and write the changed L1 table through.
    fn fix_active_copied(&mut self) -> Result<()> {
        let mut l1 = std::mem::take(&mut self.l1);
        let r = self.sync_copied_flags(&mut l1);
        let changed = matches!(r, Ok(true));
        self.l1 = l1;
        r?;
        if changed {
            write_meta(&self.file, &entries_bytes(&self.l1), self.h.l1_table_offset)?;
        }
        Ok(())
    }

    /// Read and check a snapshot's L1 table.
    pub(super) fn snapshot_l1(&mut self, sn: &Snapshot) -> Result<Vec<u64>> {
        let flen = file_len(&self.file)?;
        sn.validate_l1(self.cluster_size, flen)?;
        let mut buf = vec![0u8; sn.l1_size as usize * 8];
        read_full(&self.file, &mut buf, sn.l1_table_offset)?;
        Ok(read_be64s(&buf))
    }

    /// Rebuild the set of known metadata clusters: the active L2 tables and the refcount
    /// blocks.
    fn rebuild_meta(&mut self) {
        let cs = self.cluster_size;
        self.meta = self
            .l1
            .iter()
            .map(|e| e & L1_OFFSET_MASK)
            .chain(self.reftable.iter().map(|e| e & !0x1ff))
            .filter(|&o| o != 0)
            .map(|o| o / cs)
            .collect();
    }

    /// Allocate clusters for and write an L1 table; returns its offset (0 when empty).
    fn write_new_l1(&mut self, l1: &[u64]) -> Result<u64> {
        if l1.is_empty() {
            return Ok(0);
        }
        let cs = self.cluster_size;
        let bytes = l1.len() as u64 * 8;
        let n = bytes.div_ceil(cs);
        let c = self.alloc_clusters(n, &[])?;
        self.check_overlap(c * cs, n * cs)?;
        let mut buf = entries_bytes(l1);
        buf.resize((n * cs) as usize, 0);
        write_meta(&self.file, &buf, c * cs)?;
        Ok(c * cs)
    }

    /// Create an internal snapshot of the current disk state named `name`; returns it.
    pub fn snapshot_create(&mut self, name: &str) -> Result<Snapshot> {
        self.check_snapshot_writable("create")?;
        self.flush_meta()?;
        if self.snapshots.len() >= MAX_SNAPSHOTS {
            return Err(Error::Unsupported(format!(
                "the image already has the maximum of {MAX_SNAPSHOTS} snapshots"
            )));
        }
        if name.len() > usize::from(u16::MAX) {
            return Err(Error::InvalidArgument("snapshot name is too long".into()));
        }
        let id = self.next_snapshot_id();
        if self.snapshots.iter().any(|s| s.id == id) {
            return Err(Error::Unsupported(format!(
                "snapshot ID {id} already exists"
            )));
        }
        let l1 = self.l1.clone();
        // Nothing changes unless every refcount can take one more reference.
        self.update_tree(&l1, 1, true)?;
        let l1_off = self.write_new_l1(&l1)?;
        self.update_tree(&l1, 1, false)?;
        self.sync_rb()?;
        // Everything the active tables reference is shared now: clear COPIED before the
        // snapshot exists, so no write can land in place on a shared cluster.
        self.fix_active_copied()?;
        self.sync_rb()?;
        let sn = Snapshot::new(id, name, (l1_off, l1.len() as u32), self.h.size);
        let mut snaps = self.snapshots.clone();
        snaps.push(sn.clone());
        self.write_snapshot_table(snaps)?;
        Ok(sn)
    }

    /// The checks and write-out before applying or deleting snapshot `idx`: the snapshot
    /// and its L1 table.
    fn begin_snapshot_op(&mut self, what: &str, idx: usize) -> Result<(Snapshot, Vec<u64>)> {
        self.check_snapshot_writable(what)?;
        self.flush_meta()?;
        let sn = self
            .snapshots
            .get(idx)
            .cloned()
            .ok_or_else(|| Error::InvalidArgument("snapshot not found".into()))?;
        let sn_l1 = self.snapshot_l1(&sn)?;
        Ok((sn, sn_l1))
    }

    /// Revert the disk to snapshot `idx` (see [`Qcow2::find_snapshot`]): the active L1
    /// table becomes a copy of the snapshot's, and the disk size the snapshot's.
    pub fn snapshot_apply(&mut self, idx: usize) -> Result<()> {
        let (sn, sn_l1) = self.begin_snapshot_op("apply", idx)?;
        if sn.disk_size > 1 << 61 || !sn.disk_size.is_multiple_of(512) {
            return Err(Error::Invalid(format!(
                "snapshot '{}' has an invalid disk size {}",
                sn.name, sn.disk_size
            )));
        }
        let need = size_to_l1(sn.disk_size, self.h.cluster_bits, self.h.l2_entries());
        let new_size = need.max(u64::from(sn.l1_size));
        if new_size * 8 > MAX_L1_BYTES {
            return Err(Error::Invalid(format!(
                "snapshot '{}' needs an L1 table that is too large",
                sn.name
            )));
        }
        self.update_tree(&sn_l1, 1, true)?;
        let mut new_l1 = sn_l1.clone();
        new_l1.resize(new_size as usize, 0);
        for e in new_l1.iter_mut() {
            *e &= !OFLAG_COPIED;
        }
        self.update_tree(&sn_l1, 1, false)?;
        self.sync_rb()?;
        // Everything is shared with the snapshot now: no COPIED flags anywhere in the new
        // active tree before the header points to it.
        self.sync_copied_flags(&mut new_l1)?;
        let new_off = self.write_new_l1(&new_l1)?;
        self.sync_rb()?;
        // Header bytes 24..48: size, crypt_method (0), l1_size, l1_table_offset.
        let mut hdr = [0u8; 24];
        hdr[..8].copy_from_slice(&sn.disk_size.to_be_bytes());
        hdr[12..16].copy_from_slice(&(new_size as u32).to_be_bytes());
        hdr[16..24].copy_from_slice(&new_off.to_be_bytes());
        write_meta(&self.file, &hdr, 24)?;
        self.sync_rb()?;
        let old_l1 = std::mem::replace(&mut self.l1, new_l1);
        let (old_off, old_size) = (self.h.l1_table_offset, u64::from(self.h.l1_size) * 8);
        self.h.size = sn.disk_size;
        self.h.l1_size = new_size as u32;
        self.h.l1_table_offset = new_off;
        self.zcache = None;
        self.rebuild_meta();
        // The old active tree is unreferenced now.
        self.update_tree(&old_l1, -1, false)?;
        if old_off != 0 {
            self.free_range(old_off, old_size)?;
        }
        self.punch_freed(&old_l1)?;
        self.l2_cache.clear();
        self.sync_rb()?;
        self.fix_active_copied()?;
        self.sync_rb()
    }

    /// Delete snapshot `idx`: remove it from the table, then drop its references.
    pub fn snapshot_delete(&mut self, idx: usize) -> Result<()> {
        let (sn, sn_l1) = self.begin_snapshot_op("delete", idx)?;
        self.update_tree(&sn_l1, -1, true)?;
        let mut snaps = self.snapshots.clone();
        snaps.remove(idx);
        self.write_snapshot_table(snaps)?;
        // Unreferenced now: drop its refcounts and its L1 table.
        self.update_tree(&sn_l1, -1, false)?;
        self.free_range(sn.l1_table_offset, u64::from(sn.l1_size) * 8)?;
        self.punch_freed(&sn_l1)?;
        self.l2_cache.clear();
        // COPIED may be set only once refcounts of 1 are on disk.
        self.sync_rb()?;
        self.fix_active_copied()?;
        self.sync_rb()
    }

    /// Before entries of the L2 table for L1 index `i1` change: if the table is shared
    /// with a snapshot (no COPIED flag), give the active L1 a private copy of it. The copy
    /// is on disk before the L1 entry points to it; the old table's refcount drops after.
    /// Returns the table's (possibly new) offset, 0 when there is none.
    pub(crate) fn own_l2(&mut self, i1: usize) -> Result<u64> {
        let e = self.l1[i1];
        let off = e & L1_OFFSET_MASK;
        if off == 0 || e & OFLAG_COPIED != 0 {
            return Ok(off);
        }
        let cs = self.cluster_size;
        let l1_at = self.h.l1_table_offset + 8 * i1 as u64;
        if self.refcount(off / cs)? == 1 {
            // Only the active L1 uses it (and that is on disk): claim it.
            self.sync_rb()?;
            let ne = e | OFLAG_COPIED;
            write_meta(&self.file, &ne.to_be_bytes(), l1_at)?;
            self.l1[i1] = ne;
            return Ok(off);
        }
        let table = self.l2_table(off)?.clone();
        let c = self.alloc_clusters(1, &[])?;
        self.check_overlap(c * cs, cs)?;
        write_meta(&self.file, &entries_bytes(&table), c * cs)?;
        self.sync_rb()?;
        let ne = (c * cs) | OFLAG_COPIED;
        write_meta(&self.file, &ne.to_be_bytes(), l1_at)?;
        self.sync_rb()?;
        self.l1[i1] = ne;
        self.meta.insert(c);
        self.l2_cache.insert(c * cs, table);
        // The old table stays referenced by a snapshot (refcount >= 1).
        self.update_refcount(off / cs, -1, &[])?;
        Ok(c * cs)
    }
}
