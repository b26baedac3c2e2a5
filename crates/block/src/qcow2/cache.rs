//! A small write-back table cache (L2 tables, refcount blocks) keyed by host offset,
//! evicting clean tables first-in first-out. Dirty tables (changed in memory, not yet
//! written) are never evicted: the owner writes them out (see [`super::meta_cache`]) and
//! flushes before the number of dirty tables reaches the capacity, so the cache stays
//! bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A cheap hasher for the caches' host-offset keys (looked up on every guest I/O). The
/// maps hold a bounded number of tables, so crafted offsets that collide cost little.
#[derive(Default)]
pub(crate) struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        // splitmix64's finalizer: every key bit reaches the low and the high bits.
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type OffsetMap<V> = HashMap<u64, V, BuildHasherDefault<OffsetHasher>>;

/// Cached tables by host offset.
pub(crate) struct Cache<T> {
    map: OffsetMap<T>,
    order: VecDeque<u64>,
    capacity: usize,
    /// Dirty tables: the first and last changed unit (entry or byte, as the owner uses it).
    dirty: OffsetMap<(usize, usize)>,
}

impl<T> Cache<T> {
    /// A cache holding at most `capacity` clean tables.
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            map: OffsetMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            dirty: OffsetMap::default(),
        }
    }

    pub(crate) fn contains(&self, off: u64) -> bool {
        self.map.contains_key(&off)
    }

    pub(crate) fn get_mut(&mut self, off: u64) -> Option<&mut T> {
        self.map.get_mut(&off)
    }

    pub(crate) fn get(&self, off: u64) -> Option<&T> {
        self.map.get(&off)
    }

    /// Forget every clean table (dirty ones stay until written out).
    pub(crate) fn clear(&mut self) {
        let dirty = &self.dirty;
        self.map.retain(|k, _| dirty.contains_key(k));
        self.order.retain(|k| dirty.contains_key(k));
    }

    /// Forget the table at `off` (its cluster was freed), dirty or not.
    pub(crate) fn remove(&mut self, off: u64) {
        if self.map.remove(&off).is_some() {
            self.order.retain(|&k| k != off);
        }
        self.dirty.remove(&off);
    }

    /// The most tables kept before clean ones are evicted.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Units `lo..=hi` of the (cached) table at `off` changed in memory.
    pub(crate) fn mark_dirty(&mut self, off: u64, lo: usize, hi: usize) {
        debug_assert!(self.map.contains_key(&off));
        let d = self.dirty.entry(off).or_insert((lo, hi));
        d.0 = d.0.min(lo);
        d.1 = d.1.max(hi);
    }

    /// How many tables are dirty.
    pub(crate) fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// The dirty tables and their changed ranges, by offset (still marked dirty).
    pub(crate) fn dirty_ranges(&self) -> Vec<(u64, (usize, usize))> {
        let mut v: Vec<_> = self.dirty.iter().map(|(&k, &r)| (k, r)).collect();
        v.sort_unstable();
        v
    }

    /// The table at `off` is on disk as cached.
    pub(crate) fn mark_clean(&mut self, off: u64) {
        self.dirty.remove(&off);
    }

    /// Insert (or replace) the table at `off`; evicts the oldest clean tables beyond
    /// the capacity.
    pub(crate) fn insert(&mut self, off: u64, t: T) {
        if self.map.insert(off, t).is_none() {
            self.order.push_back(off);
            let mut tries = self.order.len();
            while self.order.len() > self.capacity && tries > 0 {
                tries -= 1;
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if self.dirty.contains_key(&old) || old == off {
                    self.order.push_back(old);
                } else {
                    self.map.remove(&old);
                }
            }
        }
    }
}
