//! Counting VM exits: every vCPU keeps its own [`ExitStats`] (no locking on the hot path)
//! and the VM adds them up when it stops, for `--trace-exits` and the benchmarks.

use std::collections::BTreeMap;
use std::fmt::Write;

/// How many distinct unknown accesses are remembered.
pub const UNKNOWN_LOG_LIMIT: usize = 16;

/// What kind of access reached no device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Port read.
    PortIn,
    /// Port write.
    PortOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::PortIn => "port in",
            Access::PortOut => "port out",
            Access::MmioRead => "mmio read",
            Access::MmioWrite => "mmio write",
        }
    }
}

/// Exit counts of one vCPU, or of a whole VM once merged.
#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    /// Exits by reason name.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Accesses no device claimed.
    pub unknown_total: u64,
    /// The first distinct unknown accesses: (kind, address, size) and how often.
    pub unknown_first: Vec<((Access, u64, usize), u64)>,
}

impl ExitStats {
    /// Count one exit.
    pub fn count(&mut self, reason: &'static str) {
        *self.by_reason.entry(reason).or_insert(0) += 1;
    }

    /// Record an access no device claimed.
    pub fn unknown(&mut self, access: Access, addr: u64, size: usize) {
        self.unknown_total += 1;
        let key = (access, addr, size);
        if let Some(e) = self.unknown_first.iter_mut().find(|(k, _)| *k == key) {
            e.1 += 1;
        } else if self.unknown_first.len() < UNKNOWN_LOG_LIMIT {
            self.unknown_first.push((key, 1));
        }
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// Add another vCPU's counts.
    pub fn merge(&mut self, other: &ExitStats) {
        for (k, v) in &other.by_reason {
            *self.by_reason.entry(k).or_insert(0) += v;
        }
        self.unknown_total += other.unknown_total;
        for (key, n) in &other.unknown_first {
            if let Some(e) = self.unknown_first.iter_mut().find(|(k, _)| k == key) {
                e.1 += n;
            } else if self.unknown_first.len() < UNKNOWN_LOG_LIMIT {
                self.unknown_first.push((*key, *n));
            }
        }
    }

    /// The `--trace-exits` report.
    pub fn report(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "--- VM exits: {} ---", self.total());
        for (k, v) in &self.by_reason {
            let _ = writeln!(o, "  {k:<12} {v}");
        }
        let _ = writeln!(o, "  unknown accesses: {}", self.unknown_total);
        for ((access, addr, size), n) in &self.unknown_first {
            let _ = writeln!(o, "    {:<10} {addr:#x} size {size} x{n}", access.name());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_limits_the_log() {
        let mut a = ExitStats::default();
        for port in 0..40u64 {
            a.count("io_out");
            a.unknown(Access::PortOut, port, 1);
        }
        a.unknown(Access::PortOut, 3, 1);
        let mut b = ExitStats::default();
        b.count("hlt");
        b.unknown(Access::MmioRead, 0xd000_0000, 4);
        a.merge(&b);
        assert_eq!(a.total(), 41);
        assert_eq!(a.unknown_total, 42);
        assert_eq!(a.unknown_first.len(), UNKNOWN_LOG_LIMIT);
        assert_eq!(a.unknown_first[3].1, 2);
        assert!(a.report().contains("port out   0x3 size 1 x2"));
    }
}
