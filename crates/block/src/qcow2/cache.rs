//! A small write-through table cache (L2 tables, refcount blocks) keyed by host offset,
//! evicting first-in first-out. Write-through means eviction never writes anything.

use std::collections::{HashMap, VecDeque};

/// Cached tables by host offset.
pub(crate) struct Cache<T> {
    map: HashMap<u64, T>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl<T> Cache<T> {
    /// A cache holding at most `capacity` tables.
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn contains(&self, off: u64) -> bool {
        self.map.contains_key(&off)
    }

    pub(crate) fn get_mut(&mut self, off: u64) -> Option<&mut T> {
        self.map.get_mut(&off)
    }

    /// Forget every table.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Insert (or replace) the table at `off`.
    pub(crate) fn insert(&mut self, off: u64, t: T) {
        if self.map.insert(off, t).is_none() {
            self.order.push_back(off);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}
