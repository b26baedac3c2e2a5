//! qcow2 writes: in-place writes to owned clusters, allocating writes (copy-on-write of
//! partial clusters from the backing file, compressed or zero clusters), zeroing and
//! discarding. Guest data goes to the file at once; metadata changes (refcounts, L2
//! entries, new L2 tables) stay in the caches and the frees are deferred, written back
//! in QEMU's crash-safe order at the next flush (see `meta_cache`).

use super::{Mapping, Qcow2, L1_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO};
use crate::fileio::{read_full, write_full};
use crate::{Error, Result};

/// One guest cluster touched by a write.
struct Piece {
    /// Guest offset of the cluster start.
    guest: u64,
    /// Offset of the piece inside the cluster.
    in_cluster: usize,
    /// Where the piece's bytes start in the caller's buffer.
    src: usize,
    /// Length of the piece.
    len: usize,
    /// The cluster's mapping before the write.
    old: Mapping,
}

impl Qcow2 {
    pub(super) fn check_writable(&self) -> Result<()> {
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

    /// Refuse (and mark the image corrupt) if `len` bytes at host offset `host` overlap
    /// the header, the L1 table, the refcount table, an L2 table or a refcount block.
    pub(crate) fn check_overlap(&mut self, host: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size;
        let end = host + len;
        let hits = |start: u64, size: u64| size > 0 && host < start + size && start < end;
        let mut bad = hits(0, cs)
            || hits(self.h.l1_table_offset, u64::from(self.h.l1_size) * 8)
            || hits(
                self.h.refcount_table_offset,
                u64::from(self.h.refcount_table_clusters) * cs,
            )
            || self.overlaps_snapshot_meta(host, end);
        if !bad {
            bad = (host / cs..end.div_ceil(cs)).any(|c| self.meta.contains(&c));
        }
        if bad {
            self.mark_corrupt();
            return Err(Error::Corrupt(format!(
                "write of {len} bytes at host offset {host:#x} would overwrite metadata; image marked corrupt"
            )));
        }
        Ok(())
    }

    /// Write guest data at `offset` (range already checked).
    pub(crate) fn write_guest(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        if self.h.extended_l2() {
            return self.write_guest_extl2(buf, offset);
        }
        let cs = self.cluster_size;
        // Fast path: a write inside one cluster we own is a plain write in place.
        let in_cluster = offset % cs;
        if in_cluster + buf.len() as u64 <= cs {
            if let (Mapping::Data { host, copied: true }, _) = self.lookup(offset)? {
                if self.l1[self.indices(offset).0] & OFLAG_COPIED != 0 {
                    return self.write_in_place(buf, offset - in_cluster, host + in_cluster);
                }
            }
        }
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let g = offset + done as u64;
            let in_cluster = (g % cs) as usize;
            let len = (cs as usize - in_cluster).min(buf.len() - done);
            let (mut old, _) = self.lookup(g)?;
            // A cluster in an L2 table shared with a snapshot is never written in place.
            if let Mapping::Data { host, copied: true } = old {
                if self.l1[self.indices(g).0] & OFLAG_COPIED == 0 {
                    old = Mapping::Data {
                        host,
                        copied: false,
                    };
                }
            }
            pieces.push(Piece {
                guest: g - in_cluster as u64,
                in_cluster,
                src: done,
                len,
                old,
            });
            done += len;
        }
        // Writes in place to clusters we own: no metadata changes at all.
        let (in_place, alloc): (Vec<Piece>, Vec<Piece>) = pieces
            .into_iter()
            .partition(|p| matches!(p.old, Mapping::Data { copied: true, .. }));
        for p in &in_place {
            let Mapping::Data { host, .. } = p.old else {
                unreachable!()
            };
            let at = host + p.in_cluster as u64;
            self.write_in_place(&buf[p.src..p.src + p.len], p.guest, at)?;
        }
        if alloc.is_empty() {
            return Ok(());
        }
        self.zcache = None;
        // L2 tables shared with snapshots get private copies before entries change.
        let mut shared: Vec<usize> = alloc.iter().map(|p| self.indices(p.guest).0).collect();
        shared.dedup();
        for i1 in shared {
            self.own_l2(i1)?;
        }

        // Refcounts for the new data clusters and new L2 tables, the data, then the
        // entries: all in memory but the data; the metadata is written back at the next
        // flush in the safe order (see `meta_cache`).
        let mut new_l2: Vec<usize> = alloc
            .iter()
            .map(|p| self.indices(p.guest).0)
            .filter(|&i| self.l1[i] & L1_OFFSET_MASK == 0)
            .collect();
        new_l2.dedup();
        // L2 tables first, then data, as QEMU allocates them.
        let n = alloc.len() as u64;
        let nl2 = new_l2.len() as u64;
        let l2_start = if nl2 == 0 {
            0
        } else {
            self.alloc_clusters(nl2, &[])?
        };
        let l2_range = l2_start..l2_start + nl2;
        let data_start = self.alloc_clusters(n, std::slice::from_ref(&l2_range))?;
        self.check_overlap(data_start * cs, n * cs)?;
        for k in 0..new_l2.len() as u64 {
            self.check_overlap((l2_start + k) * cs, cs)?;
        }
        // The data, with the untouched parts of each cluster copied from where they came
        // from.
        let mut data = vec![0u8; (n * cs) as usize];
        for (k, p) in alloc.iter().enumerate() {
            let c = &mut data[k * cs as usize..(k + 1) * cs as usize];
            if p.len < cs as usize {
                self.read_old(p.old, p.guest, c)?;
            }
            c[p.in_cluster..p.in_cluster + p.len].copy_from_slice(&buf[p.src..p.src + p.len]);
            let past_end = self.h.size.saturating_sub(p.guest);
            if past_end < cs {
                c[past_end as usize..].fill(0);
            }
        }
        write_full(&self.file, &data, data_start * cs)?;
        drop(data);
        for (k, &i1) in new_l2.iter().enumerate() {
            self.add_new_l2(i1, (l2_start + k as u64) * cs);
        }
        // The L2 entries (in memory, marked dirty).
        let mut frees = Vec::new();
        for (k, p) in alloc.iter().enumerate() {
            let (i1, i2) = self.indices(p.guest);
            let l2off = self.l1[i1] & L1_OFFSET_MASK;
            let host = (data_start + k as u64) * cs;
            self.l2_table(l2off)?[i2] = host | OFLAG_COPIED;
            self.l2_dirty(l2off, i2, i2);
            frees.push(p.old);
        }
        self.free_old(&frees)
    }

    /// Write `data` in place at host offset `at`, inside the data cluster we own for
    /// guest cluster `guest` (no metadata changes).
    fn write_in_place(&mut self, data: &[u8], guest: u64, at: u64) -> Result<()> {
        if !self.within_file(at - at % self.cluster_size)? {
            self.mark_corrupt();
            return Err(Error::Corrupt(format!(
                "data cluster for guest offset {guest:#x} lies beyond the end of the file; image marked corrupt"
            )));
        }
        self.check_overlap(at, data.len() as u64)?;
        write_full(&self.file, data, at)
    }

    /// Fill `c` (one cluster) with what guest cluster `guest` held before, per `old`.
    fn read_old(&mut self, old: Mapping, guest: u64, c: &mut [u8]) -> Result<()> {
        match old {
            Mapping::Unallocated => self.read_backing(c, guest),
            Mapping::Zero { .. } => {
                c.fill(0);
                Ok(())
            }
            Mapping::Data { host, .. } => read_full(&self.file, c, host),
            Mapping::Compressed { offset, size } => {
                let d = self.decompress(offset, size)?;
                c.copy_from_slice(d);
                Ok(())
            }
        }
    }

    /// Drop the references the old mappings held, once the new references are durable
    /// (deferred to the next flush).
    pub(super) fn free_old(&mut self, olds: &[Mapping]) -> Result<()> {
        let cs = self.cluster_size;
        let mut clusters = Vec::new();
        for m in olds {
            match *m {
                Mapping::Zero { host } if host != 0 => clusters.push(host / cs),
                Mapping::Data { host, .. } => clusters.push(host / cs),
                Mapping::Compressed { offset, size } => {
                    clusters.extend(offset / cs..=(offset + size - 1) / cs)
                }
                _ => {}
            }
        }
        self.defer_free(&clusters)
    }

    /// Give guest L1 index `i1` an (empty) L2 table if it has none; returns its offset.
    pub(super) fn ensure_l2(&mut self, i1: usize) -> Result<u64> {
        let cur = self.own_l2(i1)?;
        if cur != 0 {
            return Ok(cur);
        }
        // A new dirty table: write out first if the dirty ones fill the cache (zeroing a
        // huge range would otherwise pile them up).
        self.before_load(true)?;
        let cs = self.cluster_size;
        let c = self.alloc_clusters(1, &[])?;
        self.check_overlap(c * cs, cs)?;
        self.add_new_l2(i1, c * cs);
        Ok(c * cs)
    }

    /// Make `len` bytes at `offset` read as zeros, deallocating whole clusters.
    pub(crate) fn zero_guest(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        if self.h.extended_l2() {
            return self.zero_guest_extl2(offset, len);
        }
        let cs = self.cluster_size;
        let end = offset + len;
        // Whole clusters; the last cluster of the disk counts as whole if it ends there.
        let a = offset.div_ceil(cs) * cs;
        let b = if end == self.h.size {
            end.div_ceil(cs) * cs
        } else {
            end / cs * cs
        };
        let has_backing = self.backing.is_some() || self.h.backing_file.is_some();
        if a >= b || (has_backing && self.h.version < 3) {
            return self.write_zero_bytes(offset, len);
        }
        self.write_zero_bytes(offset, a - offset)?;
        self.write_zero_bytes(b.min(end), end - b.min(end))?;
        self.zcache = None;
        let new_entry = if has_backing { OFLAG_ZERO } else { 0 };
        let mut frees = Vec::new();
        let mut g = a;
        while g < b {
            let (i1, i2) = self.indices(g);
            let (old, _) = self.lookup(g)?;
            let already = match old {
                Mapping::Zero { host: 0 } => true,
                Mapping::Unallocated => !has_backing,
                _ => false,
            };
            if !already {
                let l2off = self.ensure_l2(i1)?;
                self.l2_table(l2off)?[i2] = new_entry;
                self.l2_dirty(l2off, i2, i2);
                frees.push(old);
            }
            g += cs;
        }
        self.free_old(&frees)
    }

    fn write_zero_bytes(&mut self, offset: u64, len: u64) -> Result<()> {
        let chunk = 1u64 << 20;
        let zeros = vec![0u8; chunk.min(len) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = chunk.min(offset + len - at);
            self.write_guest(&zeros[..n as usize], at)?;
            at += n;
        }
        Ok(())
    }
}
