//! Repairing qcow2 metadata: refcounts rebuilt from the references that [`super::check`]
//! counts (leaks and too-low refcounts), OFLAG_COPIED flags, and the dirty bit of lazy
//! refcounts.
//!
//! Lazy refcounts: Kiln always updates refcounts fully, in the crash-safe order. On an
//! image with `lazy_refcounts=on` it sets the dirty bit (flushed) before its first change
//! and clears it again when the image is closed cleanly (dropped after every write
//! succeeded), so an image left dirty by a crash (ours or QEMU's, which does skip refcount
//! updates) is repaired by the next read-write open: refcounts are rebuilt from the
//! metadata, then the dirty bit is cleared. A read-only open of a dirty image works as
//! before (refcounts are not needed for reading).
//!
//! Repair order: raise refcounts that are too low (flushed) before lowering those that
//! are too high, so a crash during a repair leaves at worst leaks; new refcount blocks
//! are never placed on referenced clusters.

use super::check::{check_counted, CheckReport};
use super::header::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::{Qcow2, L1_OFFSET_MASK, L2_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::fileio::{read_full, write_meta};
use crate::{Error, Result};
use std::ops::Range;
use std::path::Path;

/// What `check -r` may fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    /// Only leaked clusters (refcounts higher than the references).
    Leaks,
    /// Leaks and corruptions: refcounts lower than the references, OFLAG_COPIED flags.
    All,
}

/// The outcome of [`repair`].
#[derive(Debug, Default, Clone)]
pub struct RepairReport {
    /// The check before repairing.
    pub before: CheckReport,
    /// Leaked clusters fixed.
    pub leaks_fixed: u64,
    /// Corruptions fixed.
    pub corruptions_fixed: u64,
    /// One `Repairing ...` line per fix, in qemu-img's wording.
    pub messages: Vec<String>,
    /// The check after repairing.
    pub after: CheckReport,
    /// `-r leaks` found a referenced cluster whose refcount is 0: only rebuilding the
    /// refcounts (`-r all`) can fix that, so nothing was changed (qemu-img then fails the
    /// check with "need to rebuild refcount structures").
    pub needs_rebuild: bool,
}

/// Check the qcow2 image at `path` and repair what `mode` allows (qemu-img check -r).
/// A dirty image is opened without its automatic repair, so the report shows what it had.
pub fn repair(path: &Path, mode: RepairMode) -> Result<RepairReport> {
    let ctx = path.display().to_string();
    // The write lock first: from here on nobody else changes the image, and the check
    // before the repair may share it with this process's own writer.
    let file = crate::fileio::open_image(path, false, crate::Share::default())
        .map_err(|e| e.context(&ctx))?;
    let before = super::check::check_shared(path, crate::Share::Force)?;
    let inner = || -> Result<RepairReport> {
        let mut img = Qcow2::from_file_no_repair(file, path)?;
        let mut rep = RepairReport {
            before,
            ..Default::default()
        };
        img.fix_refcounts(mode, &mut rep)?;
        if rep.needs_rebuild {
            rep.after = rep.before.clone();
            return Ok(rep);
        }
        rep.after = super::check::check_image(&mut img)?;
        // With everything fixed, the dirty and corrupt bits go (as qemu-img's -r all).
        if mode == RepairMode::All && rep.after.corruptions == 0 {
            let bits = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;
            if img.h.incompatible_features & bits != 0 {
                img.h.incompatible_features &= !INCOMPAT_CORRUPT;
                img.set_dirty_bit(false)?;
            }
        }
        Ok(rep)
    };
    inner().map_err(|e| e.context(&ctx))
}

/// Coalesce sorted cluster indices into ranges.
fn ranges(sorted: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &c in sorted {
        match out.last_mut() {
            Some(r) if r.end == c => r.end = c + 1,
            _ => out.push(c..c + 1),
        }
    }
    out
}

impl Qcow2 {
    /// Set or clear the dirty bit on disk (v3 only), flushed.
    pub(crate) fn set_dirty_bit(&mut self, dirty: bool) -> Result<()> {
        if self.h.version < 3 {
            return Ok(());
        }
        // Clearing the bit promises every refcount is on disk: write everything out.
        self.flush_meta()?;
        if dirty {
            self.h.incompatible_features |= INCOMPAT_DIRTY;
        } else {
            self.h.incompatible_features &= !INCOMPAT_DIRTY;
        }
        let v = self.h.incompatible_features.to_be_bytes();
        write_meta(&self.file, &v, 72)?;
        self.sync_rb()
    }

    /// Repair a dirty image on read-write open: rebuild the refcounts, fix OFLAG_COPIED,
    /// then clear the dirty bit.
    pub(crate) fn repair_dirty(&mut self) -> Result<()> {
        let mut rep = RepairReport::default();
        self.fix_refcounts(RepairMode::All, &mut rep)?;
        let after = super::check::check_image(self)?;
        if after.corruptions > 0 {
            return Err(Error::Corrupt(format!(
                "image is dirty and its repair left {} errors; see `kiln img check`",
                after.corruptions
            )));
        }
        self.set_dirty_bit(false)
    }

    /// Make every refcount match the references counted from the metadata (only the too
    /// high ones with [`RepairMode::Leaks`]).
    fn fix_refcounts(&mut self, mode: RepairMode, rep: &mut RepairReport) -> Result<()> {
        self.flush_meta()?;
        let (_, refs) = check_counted(self)?;
        let cs = self.cluster_size;
        let flen = crate::fileio::file_len(&self.file)?;
        let file_clusters = flen.div_ceil(cs);
        let epb = self.refblock_entries();
        // Every cluster either side knows about: referenced ones, and those counted.
        let mut clusters: Vec<u64> = refs.keys().copied().collect();
        for (t, &e) in self.reftable.clone().iter().enumerate() {
            if e & !0x1ff == 0 {
                continue;
            }
            let first = t as u64 * epb;
            for c in first..(first + epb).min(file_clusters) {
                if !refs.contains_key(&c) && self.refcount(c)? != 0 {
                    clusters.push(c);
                }
            }
        }
        clusters.sort_unstable();
        clusters.dedup();
        let mut raise = Vec::new();
        let mut lower = Vec::new();
        for &c in clusters.iter().filter(|&&c| c < file_clusters) {
            let want = refs.get(&c).copied().unwrap_or(0);
            let have = self.refcount(c)?;
            if have == 0 && want > 0 && mode == RepairMode::Leaks {
                // Nothing has changed yet: leave the image as it is (see `needs_rebuild`).
                rep.needs_rebuild = true;
                return Ok(());
            }
            if have < want && mode == RepairMode::All {
                raise.push((c, have, want));
            } else if have > want {
                lower.push((c, have, want));
            }
        }
        // Referenced clusters whose refcount block does not exist yet: a new block must
        // not land on them.
        let has_block = |img: &Qcow2, c: u64| {
            img.reftable
                .get((c / epb) as usize)
                .is_some_and(|e| e & !0x1ff != 0)
        };
        let mut homeless: Vec<u64> = refs
            .keys()
            .copied()
            .filter(|&c| !has_block(self, c))
            .collect();
        homeless.sort_unstable();
        let busy = ranges(&homeless);
        // Clusters in existing blocks first, so new blocks see them as used.
        raise.sort_by_key(|&(c, _, _)| (!has_block(self, c), c));
        for &(c, have, want) in &raise {
            rep.messages.push(format!(
                "Repairing cluster {c} refcount={have} reference={want}"
            ));
            let now = self.refcount(c)?;
            if now < want {
                self.update_refcount(c, (want - now) as i64, &busy)?;
            }
            rep.corruptions_fixed += 1;
        }
        self.sync_rb()?;
        for &(c, have, want) in &lower {
            rep.messages.push(format!(
                "Repairing cluster {c} refcount={have} reference={want}"
            ));
            let now = self.refcount(c)?;
            if now > want {
                self.update_refcount(c, -((now - want) as i64), &[])?;
            }
            rep.leaks_fixed += 1;
        }
        self.sync_rb()?;
        if mode == RepairMode::All {
            let n = self.fix_copied(rep)?;
            rep.corruptions_fixed += n;
        }
        Ok(())
    }

    /// Set OFLAG_COPIED exactly on the active L1/L2 entries whose cluster has refcount 1.
    fn fix_copied(&mut self, rep: &mut RepairReport) -> Result<u64> {
        if self.h.extended_l2() {
            return Ok(0);
        }
        let cs = self.cluster_size;
        let flen = crate::fileio::file_len(&self.file)?;
        let mut fixed = 0;
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let l2off = l1e & L1_OFFSET_MASK;
            if l2off == 0 || !l2off.is_multiple_of(cs) || l2off >= flen {
                continue;
            }
            let want = self.refcount(l2off / cs)? == 1;
            if (l1e & OFLAG_COPIED != 0) != want {
                let e = if want {
                    l1e | OFLAG_COPIED
                } else {
                    l1e & !OFLAG_COPIED
                };
                rep.messages.push(format!(
                    "Repairing OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x}"
                ));
                write_meta(
                    &self.file,
                    &e.to_be_bytes(),
                    self.h.l1_table_offset + 8 * i as u64,
                )?;
                self.l1[i] = e;
                fixed += 1;
            }
            let mut buf = vec![0u8; cs as usize];
            read_full(&self.file, &mut buf, l2off)?;
            let t = super::read_be64s(&buf);
            for (j, &e) in t.iter().enumerate() {
                let host = e & L2_OFFSET_MASK;
                if e & OFLAG_COMPRESSED != 0 || host == 0 || !host.is_multiple_of(cs) {
                    continue;
                }
                let rc = self.refcount(host / cs)?;
                let want = rc == 1;
                if (e & OFLAG_COPIED != 0) == want {
                    continue;
                }
                let ne = if want {
                    e | OFLAG_COPIED
                } else {
                    e & !OFLAG_COPIED
                };
                rep.messages.push(format!(
                    "Repairing OFLAG_COPIED data cluster: l2_entry={e:x} refcount={rc}"
                ));
                write_meta(&self.file, &ne.to_be_bytes(), l2off + 8 * j as u64)?;
                if let Some(ct) = self.l2_cache.get_mut(l2off) {
                    ct[j] = ne;
                }
                fixed += 1;
            }
        }
        self.sync_rb()?;
        Ok(fixed)
    }

    /// Before the first change to an image with lazy refcounts: set the dirty bit.
    pub(crate) fn before_change(&mut self) -> Result<()> {
        let corrupt = self.h.incompatible_features & INCOMPAT_CORRUPT != 0;
        if self.dirty_marked.is_none() && !self.read_only && !corrupt && self.h.lazy_refcounts() {
            self.set_dirty_bit(true)?;
            self.dirty_marked = Some(true);
        }
        Ok(())
    }

    /// After a change: a failed one leaves the dirty bit set at close (repaired on the
    /// next read-write open).
    pub(crate) fn after_change<T>(&mut self, r: &Result<T>) {
        if r.is_err() && self.dirty_marked.is_some() {
            self.dirty_marked = Some(false);
        }
    }
}

impl Drop for Qcow2 {
    /// A clean close of an image we marked dirty: every refcount is up to date (all
    /// changes succeeded), so clear the dirty bit.
    fn drop(&mut self) {
        // Best effort: write the cached metadata out (in the safe order).
        if self.meta_dirty() {
            let _ = self.flush_meta();
        }
        if self.dirty_marked == Some(true) {
            let _ = self.set_dirty_bit(false);
        }
    }
}
