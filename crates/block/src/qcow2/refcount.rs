//! qcow2 refcounts: reading and updating entries of 1 to 64 bits, finding free clusters,
//! creating refcount blocks and growing the refcount table (write the new table elsewhere,
//! flush, then switch the header to it, then free the old one).

use super::Qcow2;
use crate::fileio::{file_len, read_full, sync, write_meta};
use crate::{Error, Result};
use std::ops::Range;

/// Read entry `i` of a refcount block with `order` (log2 bits per entry).
pub(crate) fn get_entry(block: &[u8], order: u32, i: u64) -> u64 {
    let i = i as usize;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            u64::from(block[i / per_byte] >> shift) & ((1u64 << bits) - 1)
        }
        3 => u64::from(block[i]),
        4 => u64::from(u16::from_be_bytes([block[2 * i], block[2 * i + 1]])),
        5 => u64::from(u32::from_be_bytes(
            block[4 * i..4 * i + 4].try_into().unwrap(),
        )),
        _ => u64::from_be_bytes(block[8 * i..8 * i + 8].try_into().unwrap()),
    }
}

/// Set entry `i`; returns the byte range of the block that changed.
pub(crate) fn set_entry(block: &mut [u8], order: u32, i: u64, v: u64) -> Range<usize> {
    let i = i as usize;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let b = &mut block[i / per_byte];
            *b = (*b & !mask) | (((v as u8) << shift) & mask);
            i / per_byte..i / per_byte + 1
        }
        3 => {
            block[i] = v as u8;
            i..i + 1
        }
        4 => {
            block[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes());
            2 * i..2 * i + 2
        }
        5 => {
            block[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes());
            4 * i..4 * i + 4
        }
        _ => {
            block[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes());
            8 * i..8 * i + 8
        }
    }
}

fn in_any(c: u64, ranges: &[Range<u64>]) -> bool {
    ranges.iter().any(|r| r.contains(&c))
}

impl Qcow2 {
    /// Refcount entries per refcount block.
    pub(crate) fn refblock_entries(&self) -> u64 {
        self.cluster_size * 8 / u64::from(self.h.refcount_bits())
    }

    pub(crate) fn max_refcount(&self) -> u64 {
        match self.h.refcount_bits() {
            64 => u64::MAX,
            b => (1u64 << b) - 1,
        }
    }

    /// Load the refcount block at `off` through the cache.
    fn refblock(&mut self, off: u64) -> Result<&mut Vec<u8>> {
        if !self.refblock_cache.contains(off) {
            self.before_load(false)?;
            let mut buf = vec![0u8; self.cluster_size as usize];
            read_full(&self.file, &mut buf, off)?;
            self.refblock_cache.insert(off, buf);
        }
        Ok(self.refblock_cache.get_mut(off).expect("just inserted"))
    }

    /// The refcount of host cluster `cluster` (index, not offset).
    pub(crate) fn refcount(&mut self, cluster: u64) -> Result<u64> {
        let epb = self.refblock_entries();
        let t = (cluster / epb) as usize;
        let Some(&e) = self.reftable.get(t) else {
            return Ok(0);
        };
        let off = e & !0x1ff;
        if off == 0 {
            return Ok(0);
        }
        let order = self.h.refcount_order;
        let b = self.refblock(off)?;
        Ok(get_entry(b, order, cluster % epb))
    }

    /// Add `delta` to the refcount of `cluster`, in the cached block (written back, see
    /// [`super::meta_cache`]); a decrement only once the references' removal is durable. `busy` are clusters being allocated that a new refcount block must
    /// not be placed on.
    pub(crate) fn update_refcount(
        &mut self,
        cluster: u64,
        delta: i64,
        busy: &[Range<u64>],
    ) -> Result<()> {
        let epb = self.refblock_entries();
        let t = cluster / epb;
        let off = self.ensure_refblock(t, busy)?;
        let order = self.h.refcount_order;
        let max = self.max_refcount();
        let cs = self.cluster_size;
        let b = self.refblock(off)?;
        let old = get_entry(b, order, cluster % epb);
        let new = if delta >= 0 {
            old.checked_add(delta as u64)
                .filter(|&n| n <= max)
                .ok_or_else(|| {
                    Error::Corrupt(format!("refcount of cluster {cluster} would overflow"))
                })?
        } else {
            old.checked_sub(delta.unsigned_abs()).ok_or_else(|| {
                Error::Corrupt(format!(
                    "refcount of host cluster {:#x} would drop below zero",
                    cluster * cs
                ))
            })?
        };
        let r = set_entry(b, order, cluster % epb, new);
        self.refblock_dirty(off, r.start, r.end);
        if new == 0 && cluster < self.free_hint {
            self.free_hint = cluster;
        }
        if delta < 0 && self.zfree != 0 && cluster == self.zfree / cs {
            // The partly filled cluster for compressed data lost a user: start afresh.
            self.zfree = 0;
        }
        Ok(())
    }

    /// Find `n` contiguous free clusters (refcount 0, not busy, not metadata we know of).
    fn find_free(&mut self, n: u64, busy: &[Range<u64>]) -> Result<u64> {
        let mut start = self.free_hint.max(1);
        let mut c = start;
        while c < start + n {
            if self.refcount(c)? != 0 || in_any(c, busy) || self.meta.contains(&c) {
                start = c + 1;
            }
            c += 1;
        }
        Ok(start)
    }

    /// Allocate `n` contiguous clusters (refcount 1 in the cached blocks, written back);
    /// returns the first cluster index.
    pub(crate) fn alloc_clusters(&mut self, n: u64, busy: &[Range<u64>]) -> Result<u64> {
        let start = self.find_free(n, busy)?;
        let mut busy2 = busy.to_vec();
        busy2.push(start..start + n);
        for c in start..start + n {
            self.update_refcount(c, 1, &busy2)?;
        }
        self.free_hint = start + n;
        Ok(start)
    }

    /// The offset of refcount block `t`, creating it (and growing the table) if needed.
    fn ensure_refblock(&mut self, t: u64, busy: &[Range<u64>]) -> Result<u64> {
        if t as usize >= self.reftable.len() {
            self.grow_reftable(t, busy)?;
        }
        let e = self.reftable[t as usize] & !0x1ff;
        if e != 0 {
            return Ok(e);
        }
        let epb = self.refblock_entries();
        let cs = self.cluster_size;
        let loc = self.find_free(1, busy)?;
        let mut block = vec![0u8; cs as usize];
        if loc / epb == t {
            set_entry(&mut block, self.h.refcount_order, loc % epb, 1);
        } else {
            let mut busy2 = busy.to_vec();
            busy2.push(loc..loc + 1);
            self.update_refcount(loc, 1, &busy2)?;
        }
        // The block (and its own refcount) must be on disk before the table points to it.
        write_meta(&self.file, &block, loc * cs)?;
        self.sync_rb()?;
        let off = loc * cs;
        write_meta(
            &self.file,
            &off.to_be_bytes(),
            self.h.refcount_table_offset + 8 * t,
        )?;
        sync(&self.file)?;
        self.reftable[t as usize] = off;
        self.meta.insert(loc);
        self.refblock_cache.insert(off, block);
        Ok(off)
    }

    /// Grow the refcount table to cover block index `t`: new refcount blocks and the new
    /// table go to a fresh area past everything in use, describing themselves; the
    /// header switches to the new table only once it is on disk.
    fn grow_reftable(&mut self, t: u64, busy: &[Range<u64>]) -> Result<()> {
        let cs = self.cluster_size;
        let epb = self.refblock_entries();
        let old_entries = self.reftable.len() as u64;
        let mut area = (file_len(&self.file)?.div_ceil(cs)).max(old_entries * epb);
        for r in busy {
            area = area.max(r.end);
        }
        // Iterate to a fixed point: the table must cover its own area and its blocks.
        let mut table_clusters = (u64::from(self.h.refcount_table_clusters) * 2).max(1);
        let (nblocks, entries) = loop {
            let mut nblocks = 0;
            loop {
                let end = area + nblocks + table_clusters;
                let need = (end - 1) / epb - area / epb + 1;
                if need == nblocks {
                    break;
                }
                nblocks = need;
            }
            let end = area + nblocks + table_clusters;
            let needed_entries = (t + 1).max(end.div_ceil(epb));
            let need_tc = (needed_entries * 8).div_ceil(cs);
            if need_tc <= table_clusters {
                break (nblocks, table_clusters * cs / 8);
            }
            table_clusters = need_tc;
        };
        if table_clusters * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::Unsupported(
                "refcount table would exceed 8 MiB".into(),
            ));
        }
        let order = self.h.refcount_order;
        let first_block = area / epb;
        let area_end = area + nblocks + table_clusters;
        let mut table = self.reftable.clone();
        table.resize(entries as usize, 0);
        for k in 0..nblocks {
            let bi = first_block + k;
            let mut block = vec![0u8; cs as usize];
            for c in (bi * epb).max(area)..((bi + 1) * epb).min(area_end) {
                set_entry(&mut block, order, c % epb, 1);
            }
            let loc = area + k;
            write_meta(&self.file, &block, loc * cs)?;
            table[bi as usize] = loc * cs;
            self.refblock_cache.insert(loc * cs, block);
            self.meta.insert(loc);
        }
        let toff = (area + nblocks) * cs;
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        write_meta(&self.file, &bytes, toff)?;
        self.sync_rb()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&toff.to_be_bytes());
        hdr[8..].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        write_meta(&self.file, &hdr, 48)?;
        sync(&self.file)?;
        let old_off = self.h.refcount_table_offset;
        let old_clusters = u64::from(self.h.refcount_table_clusters);
        self.h.refcount_table_offset = toff;
        self.h.refcount_table_clusters = table_clusters as u32;
        self.reftable = table;
        for c in old_off / cs..old_off / cs + old_clusters {
            self.update_refcount(c, -1, busy)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{get_entry, set_entry};

    #[test]
    fn entries_of_every_width_round_trip_without_touching_neighbours() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut block = vec![0u8; 512];
            let n = 512 * 8 / u64::from(bits);
            for i in 0..n {
                set_entry(&mut block, order, i, (i * 0x9e37_79b9) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&block, order, i),
                    (i * 0x9e37_79b9) & max,
                    "order {order} entry {i}"
                );
            }
        }
        // Sub-byte entries are packed from the least significant bit, as QEMU does.
        let mut b = vec![0u8; 1];
        set_entry(&mut b, 0, 0, 1);
        set_entry(&mut b, 0, 3, 1);
        assert_eq!(b[0], 0b1001);
        let mut b = vec![0u8; 1];
        set_entry(&mut b, 2, 1, 0xa);
        assert_eq!(b[0], 0xa0);
    }
}
