//! qcow2 writes, zeroing and discards for images with extended L2 entries (128-bit
//! entries: the usual descriptor plus a bitmap of 32 subclusters, bits 0-31 "allocated
//! here", bits 32-63 "reads as zeros"), in the crash-safe order of the [`super`] docs.
//!
//! - A write to a cluster that owns a host cluster (COPIED) writes in place; subclusters
//!   the write only partly covers and that were not allocated are first filled with what
//!   they read as before (backing file or zeros), and then marked allocated.
//! - A write to an unallocated cluster allocates a host cluster but writes (and marks)
//!   only the subclusters it touches: the others keep reading from the backing file or
//!   as zeros.
//! - A write to a compressed cluster (or a shared one) copies the whole cluster to a new
//!   host cluster and drops the old references afterwards.
//! - Zeroing sets the zero bits of whole subclusters (a whole cluster drops its host
//!   cluster, like QEMU); partial subclusters get written zeros.

use super::{Mapping, Qcow2, L2_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::fileio::{read_full, write_full};
use crate::{Error, Result};
use std::collections::BTreeMap;

/// Bitmap of a cluster that reads as zeros everywhere.
const ALL_ZERO: u64 = 0xffff_ffff << 32;
/// Allocation bits of all 32 subclusters.
const ALL_ALLOC: u64 = 0xffff_ffff;

/// Allocation bits for subclusters `a..b`.
fn alloc_bits(a: u64, b: u64) -> u64 {
    if b <= a {
        return 0;
    }
    let n = b - a;
    let ones = if n >= 32 { ALL_ALLOC } else { (1u64 << n) - 1 };
    ones << a
}

/// One guest cluster touched by a write.
struct Job {
    /// Guest offset of the cluster.
    guest: u64,
    /// Byte range of the write inside the cluster.
    lo: usize,
    hi: usize,
    /// Where the bytes start in the caller's buffer.
    src: usize,
    /// The L2 entry before the write (descriptor, bitmap).
    entry: u64,
    bitmap: u64,
}

impl Job {
    fn host(&self) -> u64 {
        self.entry & L2_OFFSET_MASK
    }

    fn compressed(&self) -> bool {
        self.entry & OFLAG_COMPRESSED != 0
    }

    /// Whether the write can go to the existing host cluster.
    fn in_place(&self) -> bool {
        !self.compressed() && self.host() != 0 && self.entry & OFLAG_COPIED != 0
    }
}

impl Qcow2 {
    /// The raw extended L2 entry of `guest`'s cluster, (0, 0) without an L2 table.
    fn ext_entry(&mut self, guest: u64) -> Result<(u64, u64)> {
        let (e, b) = self.l2_entry(guest)?.unwrap_or((0, 0));
        if e & OFLAG_COMPRESSED == 0 {
            let host = e & L2_OFFSET_MASK;
            if !host.is_multiple_of(self.cluster_size) {
                return Err(Error::Corrupt(format!(
                    "cluster offset {host:#x} for guest offset {guest:#x} is not cluster aligned"
                )));
            }
            if b & ALL_ALLOC & (b >> 32) != 0 {
                return Err(Error::Corrupt(format!(
                    "a subcluster of guest cluster {guest:#x} is both allocated and zero"
                )));
            }
            if host == 0 && b & ALL_ALLOC != 0 {
                return Err(Error::Corrupt(format!(
                    "guest cluster {guest:#x} has allocated subclusters but no host cluster"
                )));
            }
        }
        Ok((e, b))
    }

    /// Set the extended L2 entry of `guest`'s cluster in the table at `l2off` (memory
    /// only), remembering the changed words.
    fn set_ext_entry(
        &mut self,
        dirty: &mut BTreeMap<u64, (usize, usize)>,
        l2off: u64,
        guest: u64,
        entry: u64,
        bitmap: u64,
    ) -> Result<()> {
        let (_, i2) = self.indices(guest);
        let t = self.l2_table(l2off)?;
        t[2 * i2] = entry;
        t[2 * i2 + 1] = bitmap;
        let d = dirty.entry(l2off).or_insert((2 * i2, 2 * i2 + 1));
        d.0 = d.0.min(2 * i2);
        d.1 = d.1.max(2 * i2 + 1);
        self.l2_dirty(l2off, 2 * i2, 2 * i2 + 1);
        Ok(())
    }

    /// The changed word ranges of L2 tables are marked dirty in the cache already and
    /// written back at the next flush (see `meta_cache`).
    fn flush_ext_dirty(&mut self, _dirty: BTreeMap<u64, (usize, usize)>) -> Result<()> {
        Ok(())
    }

    /// What subcluster `sc` of the cluster in `job` read as before: fill `out` (one
    /// subcluster) from the old host cluster, zeros, or the backing file.
    fn old_subcluster(&mut self, job: &Job, sc: u64, out: &mut [u8]) -> Result<()> {
        let scs = self.cluster_size / 32;
        if job.bitmap >> sc & 1 != 0 {
            read_full(&self.file, out, job.host() + sc * scs)
        } else if job.bitmap >> (32 + sc) & 1 != 0 {
            out.fill(0);
            Ok(())
        } else {
            self.read_backing(out, job.guest + sc * scs)
        }
    }

    /// Write guest data at `offset` into an extended-L2 image (range checked).
    pub(super) fn write_guest_extl2(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let cs = self.cluster_size;
        let scs = cs / 32;
        let mut jobs = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let g = offset + done as u64;
            let lo = (g % cs) as usize;
            let len = (cs as usize - lo).min(buf.len() - done);
            let guest = g - lo as u64;
            let (entry, bitmap) = self.ext_entry(guest)?;
            jobs.push(Job {
                guest,
                lo,
                hi: lo + len,
                src: done,
                entry,
                bitmap,
            });
            done += len;
        }
        self.zcache = None;
        for j in jobs.iter().filter(|j| j.in_place()) {
            if !self.within_file(j.host())? {
                self.mark_corrupt();
                return Err(Error::Corrupt(format!(
                    "data cluster for guest offset {:#x} lies beyond the end of the file; image marked corrupt",
                    j.guest
                )));
            }
        }
        // 1. L2 tables and new host clusters (refcounts flushed before any reference).
        let mut l2offs = Vec::with_capacity(jobs.len());
        for j in &jobs {
            let (i1, _) = self.indices(j.guest);
            l2offs.push(self.ensure_l2(i1)?);
        }
        let nalloc = jobs.iter().filter(|j| !j.in_place()).count() as u64;
        let first = if nalloc > 0 {
            let c = self.alloc_clusters(nalloc, &[])?;
            self.check_overlap(c * cs, nalloc * cs)?;
            c
        } else {
            0
        };
        // 2. The data: only the touched subclusters, or whole clusters when copying.
        let mut news = Vec::with_capacity(jobs.len());
        let mut k = 0u64;
        for j in &jobs {
            let s0 = j.lo as u64 / scs;
            let s1 = (j.hi as u64).div_ceil(scs);
            let (host, mut bitmap, whole) = if j.in_place() {
                (j.host(), j.bitmap, false)
            } else {
                k += 1;
                let h = (first + k - 1) * cs;
                if j.compressed() {
                    (h, ALL_ALLOC, true)
                } else if j.host() != 0 {
                    (h, j.bitmap, true)
                } else {
                    (h, j.bitmap, false)
                }
            };
            let (a, b) = if whole { (0, 32) } else { (s0, s1) };
            let mut data = vec![0u8; ((b - a) * scs) as usize];
            if whole {
                if let Mapping::Compressed { offset, size } = self.compressed_mapping(j.entry) {
                    let d = self.decompress(offset, size)?;
                    data.copy_from_slice(d);
                } else {
                    read_full(&self.file, &mut data, j.host())?;
                }
            } else {
                // Only partly written edge subclusters need their old contents.
                for sc in [s0, s1 - 1] {
                    let start = (sc * scs) as usize;
                    let covered = j.lo <= start && j.hi >= start + scs as usize;
                    if !covered {
                        let at = ((sc - a) * scs) as usize;
                        let mut old = vec![0u8; scs as usize];
                        self.old_subcluster(j, sc, &mut old)?;
                        data[at..at + scs as usize].copy_from_slice(&old);
                    }
                }
            }
            let at = j.lo - (a * scs) as usize;
            data[at..at + (j.hi - j.lo)].copy_from_slice(&buf[j.src..j.src + j.hi - j.lo]);
            // Bytes past the end of the disk stay zero.
            let past_end = self.h.size.saturating_sub(j.guest + a * scs);
            if past_end < data.len() as u64 {
                data[past_end as usize..].fill(0);
            }
            let touched = alloc_bits(s0, s1);
            bitmap = (bitmap | touched) & !(touched << 32);
            self.check_overlap(host + a * scs, data.len() as u64)?;
            write_full(&self.file, &data, host + a * scs)?;
            news.push((host, bitmap));
        }
        // 3. The references, then the old clusters' refcounts.
        let mut dirty = BTreeMap::new();
        let mut frees = Vec::new();
        for (idx, j) in jobs.iter().enumerate() {
            let (host, bitmap) = news[idx];
            if j.in_place() {
                if bitmap != j.bitmap {
                    self.set_ext_entry(&mut dirty, l2offs[idx], j.guest, j.entry, bitmap)?;
                }
                continue;
            }
            self.set_ext_entry(
                &mut dirty,
                l2offs[idx],
                j.guest,
                host | OFLAG_COPIED,
                bitmap,
            )?;
            if j.compressed() {
                frees.push(self.compressed_mapping(j.entry));
            } else if j.host() != 0 {
                frees.push(Mapping::Zero { host: j.host() });
            }
        }
        self.flush_ext_dirty(dirty)?;
        self.free_old(&frees)
    }

    /// The extent of the compressed cluster an L2 descriptor `e` points to.
    fn compressed_mapping(&self, e: u64) -> Mapping {
        let shift = 62 - (self.h.cluster_bits - 8);
        let mask = (1u64 << (self.h.cluster_bits - 8)) - 1;
        let offset = e & ((1u64 << shift) - 1);
        let sectors = ((e >> shift) & mask) + 1;
        Mapping::Compressed {
            offset,
            size: sectors * 512 - (offset & 511),
        }
    }

    /// Make `len` bytes at `offset` read as zeros in an extended-L2 image (range
    /// checked): zero bits for whole subclusters, written zeros for the rest.
    pub(super) fn zero_guest_extl2(&mut self, offset: u64, len: u64) -> Result<()> {
        let cs = self.cluster_size;
        let scs = cs / 32;
        let end = offset + len;
        let disk_end = self.h.size;
        let has_backing = self.backing.is_some() || self.h.backing_file.is_some();
        let mut g = offset;
        let mut dirty = BTreeMap::new();
        let mut frees = Vec::new();
        let mut partial = Vec::new();
        while g < end {
            let guest = g - g % cs;
            let lo = g - guest;
            let hi = (end - guest).min(cs);
            g = guest + hi;
            // Whole subclusters; the disk's last one counts as whole if the range ends there.
            let sa = lo.div_ceil(scs);
            let sb = if guest + hi == disk_end {
                hi.div_ceil(scs)
            } else {
                hi / scs
            };
            if sa >= sb {
                partial.push((guest + lo, hi - lo));
                continue;
            }
            if lo < sa * scs {
                partial.push((guest + lo, sa * scs - lo));
            }
            if sb * scs < hi {
                partial.push((guest + sb * scs, hi - sb * scs));
            }
            let (entry, bitmap) = self.ext_entry(guest)?;
            if entry == 0 && bitmap & ALL_ZERO == 0 && !has_backing {
                // Unallocated without a backing file: already reads as zeros.
                continue;
            }
            let (i1, _) = self.indices(guest);
            if sa == 0 && sb == 32 {
                if entry == 0 && bitmap == ALL_ZERO {
                    continue;
                }
                let l2off = self.ensure_l2(i1)?;
                self.set_ext_entry(&mut dirty, l2off, guest, 0, ALL_ZERO)?;
                if entry & OFLAG_COMPRESSED != 0 {
                    frees.push(self.compressed_mapping(entry));
                } else if entry & L2_OFFSET_MASK != 0 {
                    frees.push(Mapping::Zero {
                        host: entry & L2_OFFSET_MASK,
                    });
                }
                continue;
            }
            if entry & OFLAG_COMPRESSED != 0 {
                // A compressed cluster has no subclusters: write the zeros (copy-on-write).
                partial.push((guest + sa * scs, ((sb * scs).min(hi)) - sa * scs));
                continue;
            }
            let bits = alloc_bits(sa, sb);
            let new = (bitmap & !bits) | (bits << 32);
            if new != bitmap {
                let l2off = self.ensure_l2(i1)?;
                self.set_ext_entry(&mut dirty, l2off, guest, entry, new)?;
            }
        }
        self.zcache = None;
        self.flush_ext_dirty(dirty)?;
        self.free_old(&frees)?;
        for (at, n) in partial {
            let zeros = vec![0u8; n as usize];
            self.write_guest_extl2(&zeros, at)?;
        }
        Ok(())
    }
}
