//! Write-back qcow2 metadata: owns when changed L2 tables, refcount blocks and new L1
//! entries reach the disk, and when freed clusters' refcounts drop.
//!
//! Between flushes the changes live in the table caches ([`super::cache`]) and nothing is
//! promised about them; [`Qcow2::flush_meta`] writes them out in QEMU's safe order, so
//! that every state a crash can leave is consistent except for leaked clusters:
//!
//! 1. dirty refcount blocks (increments: a refcount on disk before any reference; the
//!    decrements there were applied only after their references' removal was durable)
//!    and whole new L2 tables (nothing on disk points to them yet), then `fdatasync` —
//!    which also makes the guest data written so far durable;
//! 2. the changed ranges of the other L2 tables and the L1 entries of new L2 tables
//!    (whose contents are durable now), then `fdatasync`;
//! 3. only now the deferred refcount decrements of clusters whose references were
//!    removed (freeing, punching out those that reach zero), written, then `fdatasync`.
//!
//! A flush with no dirty metadata is a single `fdatasync`. Writing dirty refcount blocks
//! is safe at any time, so the eager operations (snapshots, resize, repair) first flush
//! everything and then use [`Qcow2::sync_rb`] where they used to `fdatasync`.
//! Eviction: before a table is loaded into a cache whose dirty tables reach its
//! capacity, everything is flushed (see [`Qcow2::before_load`]).

use super::{Qcow2, L1_OFFSET_MASK};
use crate::fileio::{file_len, punch_hole, sync, write_meta};
use crate::Result;
use std::collections::BTreeMap;

/// Test hook (crash tests only): `KILN_BLOCK_CACHE_TABLES=N` caps each table cache at N
/// tables (at least 2), so that eviction write-outs happen in small test images.
pub(crate) fn cache_tables_override() -> Option<usize> {
    static N: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("KILN_BLOCK_CACHE_TABLES")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map(|n| n.max(2))
    })
}

/// Deferred frees at most before a flush is forced.
const MAX_DEFERRED_FREES: usize = 1 << 16;

/// Write-back state beyond the dirty marks in the caches.
#[derive(Default)]
pub(crate) struct WriteBack {
    /// New L2 tables (by offset) whose L1 entry (index) is not on disk yet.
    new_l2: BTreeMap<u64, usize>,
    /// Host clusters losing one reference each once the removal is durable.
    frees: Vec<u64>,
    /// A flush is writing out (no nested flush from cache loads).
    flushing: bool,
    /// File length seen last (grows only; refreshed when a check needs more).
    file_end: u64,
}

impl Qcow2 {
    /// Whether any metadata change waits to be written out.
    pub(crate) fn meta_dirty(&self) -> bool {
        self.l2_cache.dirty_count() > 0
            || self.refblock_cache.dirty_count() > 0
            || !self.wb.new_l2.is_empty()
            || !self.wb.frees.is_empty()
    }

    /// Entries `lo..=hi` (u64 words) of the cached L2 table at `off` changed in memory.
    pub(crate) fn l2_dirty(&mut self, off: u64, lo: usize, hi: usize) {
        self.l2_cache.mark_dirty(off, lo, hi);
    }

    /// Bytes `lo..hi` of the cached refcount block at `off` changed in memory.
    pub(crate) fn refblock_dirty(&mut self, off: u64, lo: usize, hi: usize) {
        self.refblock_cache.mark_dirty(off, lo, hi - 1);
    }

    /// Link the freshly allocated (refcount already raised) cluster at `off` as the empty
    /// L2 table of L1 index `i1`, in memory; the table and then the L1 entry reach the
    /// disk at the next flush.
    pub(crate) fn add_new_l2(&mut self, i1: usize, off: u64) {
        let cs = self.cluster_size;
        let words = cs as usize / 8;
        self.l2_cache.insert(off, vec![0u64; words]);
        self.l2_cache.mark_dirty(off, 0, words - 1);
        self.wb.new_l2.insert(off, i1);
        self.l1[i1] = off | super::OFLAG_COPIED;
        self.meta.insert(off / cs);
    }

    /// Drop one reference to each of `clusters` once the removal of those references
    /// is durable (at the next flush).
    pub(crate) fn defer_free(&mut self, clusters: &[u64]) -> Result<()> {
        self.wb.frees.extend_from_slice(clusters);
        if self.wb.frees.len() > MAX_DEFERRED_FREES {
            self.flush_meta()?;
        }
        Ok(())
    }

    /// Before loading a table into `l2` (or the refcount block cache): if its dirty
    /// tables fill it, write everything out so clean tables can be evicted.
    pub(crate) fn before_load(&mut self, l2: bool) -> Result<()> {
        let c = if l2 {
            (self.l2_cache.dirty_count(), self.l2_cache.capacity())
        } else {
            (
                self.refblock_cache.dirty_count(),
                self.refblock_cache.capacity(),
            )
        };
        if c.0 >= c.1 && !self.wb.flushing {
            self.flush_meta()?;
        }
        Ok(())
    }

    /// Whether host offset `host` lies before the end of the file (stats the file only
    /// when the length seen last does not already say so).
    pub(crate) fn within_file(&mut self, host: u64) -> Result<bool> {
        if host < self.wb.file_end {
            return Ok(true);
        }
        self.wb.file_end = file_len(&self.file)?;
        Ok(host < self.wb.file_end)
    }

    /// Forget the file length seen last (the file shrank).
    pub(crate) fn file_shrank(&mut self) {
        self.wb.file_end = 0;
    }

    /// Write the dirty refcount blocks (always safe: see the module docs).
    fn write_refblocks(&mut self) -> Result<()> {
        for (off, (lo, hi)) in self.refblock_cache.dirty_ranges() {
            let b = self
                .refblock_cache
                .get(off)
                .expect("dirty blocks stay cached");
            write_meta(&self.file, &b[lo..=hi], off + lo as u64)?;
            self.refblock_cache.mark_clean(off);
        }
        Ok(())
    }

    /// Write the dirty refcount blocks, then `fdatasync` (where eager code used to sync).
    pub(crate) fn sync_rb(&mut self) -> Result<()> {
        self.write_refblocks()?;
        sync(&self.file)
    }

    /// Write every metadata change out in the safe order (see the module docs), leaving
    /// the image consistent and everything written so far durable.
    pub(crate) fn flush_meta(&mut self) -> Result<()> {
        if self.read_only || self.wb.flushing {
            return Ok(());
        }
        if self.h.incompatible_features & super::header::INCOMPAT_CORRUPT != 0 {
            // Nothing more goes to a corrupt image's metadata.
            return sync(&self.file);
        }
        self.wb.flushing = true;
        let r = self.flush_inner();
        self.wb.flushing = false;
        r
    }

    fn flush_inner(&mut self) -> Result<()> {
        // 1. Refcount blocks and new L2 tables.
        self.write_refblocks()?;
        let news: Vec<u64> = self.wb.new_l2.keys().copied().collect();
        for off in &news {
            let t = self.l2_cache.get(*off).expect("new tables stay cached");
            let bytes: Vec<u8> = t.iter().flat_map(|e| e.to_be_bytes()).collect();
            write_meta(&self.file, &bytes, *off)?;
            self.l2_cache.mark_clean(*off);
        }
        sync(&self.file)?;
        // 2. Changed entries of the other L2 tables, and L1 entries of the new ones.
        let dirty = self.l2_cache.dirty_ranges();
        if !dirty.is_empty() || !news.is_empty() {
            for (off, (lo, hi)) in dirty {
                let t = self.l2_cache.get(off).expect("dirty tables stay cached");
                let bytes: Vec<u8> = t[lo..=hi].iter().flat_map(|e| e.to_be_bytes()).collect();
                write_meta(&self.file, &bytes, off + lo as u64 * 8)?;
                self.l2_cache.mark_clean(off);
            }
            let l1s: Vec<usize> = self.wb.new_l2.values().copied().collect();
            for i1 in l1s {
                let e = self.l1[i1];
                debug_assert!(self.wb.new_l2.contains_key(&(e & L1_OFFSET_MASK)));
                write_meta(
                    &self.file,
                    &e.to_be_bytes(),
                    self.h.l1_table_offset + 8 * i1 as u64,
                )?;
            }
            self.wb.new_l2.clear();
            sync(&self.file)?;
        }
        // 3. Deferred frees: their references' removal is durable now.
        if self.wb.frees.is_empty() {
            return Ok(());
        }
        let frees = std::mem::take(&mut self.wb.frees);
        let cs = self.cluster_size;
        for c in frees {
            if self.refblock_cache.dirty_count() >= self.refblock_cache.capacity() {
                // Keep the cache bounded: written blocks can be evicted.
                self.write_refblocks()?;
            }
            self.update_refcount(c, -1, &[])?;
            if self.refcount(c)? == 0 {
                self.meta.remove(&c);
                punch_hole(&self.file, c * cs, cs)?;
            }
        }
        self.write_refblocks()?;
        sync(&self.file)
    }
}
