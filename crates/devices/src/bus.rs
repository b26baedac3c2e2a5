//! An address-range bus: port I/O and MMIO accesses are routed to the device whose range
//! holds the access's first address (a 4-byte `out` to a 1-port device reaches it, as on
//! a real ISA bus and in QEMU; the device decides what the width means). Ranges never overlap; an access nobody claims is reported to the
//! caller, which decides what the guest sees (all-ones for reads).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// What a device asks of the VMM after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    /// Stop the VM; the process exits with this status.
    Exit(u8),
    /// The guest asked for a reset.
    Reset,
    /// The guest asked to power off.
    Poweroff,
    /// The guest reported a kernel panic.
    Panic,
}

/// A device on a bus. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write; the device may ask the VMM to act on it.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction>;
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors registering devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or overlaps another device's.
    #[error("bus range {base:#x}+{len:#x} for {name} overlaps {other} or is empty")]
    Overlap {
        /// The new device.
        name: &'static str,
        /// The device already there.
        other: &'static str,
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
}

/// Access counters of one bus entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessCounts {
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
}

struct Entry {
    len: u64,
    /// The device takes a whole string access (`rep insw`) as one byte stream.
    stream: bool,
    name: &'static str,
    device: SharedDevice,
    counts: Mutex<AccessCounts>,
}

/// A bus of non-overlapping ranges. Devices may be added and removed while vCPUs use the
/// bus (a PCI BAR moves); an access holds the bus's lock only to find its device, never
/// while the device runs, so a device may change the bus from inside an access.
#[derive(Default)]
pub struct Bus {
    entries: RwLock<BTreeMap<u64, Arc<Entry>>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` at `base..base+len`.
    pub fn insert(
        &self,
        name: &'static str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        self.insert_entry(name, base, len, device, false)
    }

    /// Put `device` at `base..base+len`, taking string accesses (`rep insw` and friends,
    /// every element in one slice) in one call: for data registers that are byte streams,
    /// such as IDE's, where element-by-element delivery costs a lock per byte.
    pub fn insert_stream(
        &self,
        name: &'static str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        self.insert_entry(name, base, len, device, true)
    }

    fn insert_entry(
        &self,
        name: &'static str,
        base: u64,
        len: u64,
        device: SharedDevice,
        stream: bool,
    ) -> Result<(), BusError> {
        let overlap = |other: &'static str| BusError::Overlap {
            name,
            other,
            base,
            len,
        };
        if len == 0 || base.checked_add(len).is_none() {
            return Err(overlap("nothing (empty or wrapping range)"));
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some((b, e)) = entries.range(..base + len).next_back() {
            if b + e.len > base {
                return Err(overlap(e.name));
            }
        }
        entries.insert(
            base,
            Arc::new(Entry {
                len,
                stream,
                name,
                device,
                counts: Mutex::new(AccessCounts::default()),
            }),
        );
        Ok(())
    }

    /// Take the device at exactly `base` off the bus; `false` if none starts there.
    pub fn remove(&self, base: u64) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.remove(&base).is_some()
    }

    fn find(&self, addr: u64) -> Option<(u64, Arc<Entry>)> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let (base, e) = entries.range(..=addr).next_back()?;
        (addr < base + e.len).then(|| (*base, e.clone()))
    }

    /// Route a read. Returns `false` (leaving `data` untouched) when no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((base, e)) = self.find(addr) else {
            return false;
        };
        lock(&e.counts).reads += 1;
        lock(&e.device).read(addr - base, data);
        true
    }

    /// Route a write. `None` when no device claims it; `Some(action)` otherwise.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<Option<DeviceAction>> {
        let (base, e) = self.find(addr)?;
        lock(&e.counts).writes += 1;
        let action = lock(&e.device).write(addr - base, data);
        Some(action)
    }

    /// Route a string read (`data` holds every element) in one call if the device at
    /// `addr` takes streams; `false` (nothing done) otherwise.
    pub fn read_stream(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, e)) if e.stream => {
                lock(&e.counts).reads += 1;
                lock(&e.device).read(addr - base, data);
                true
            }
            _ => false,
        }
    }

    /// Route a string write in one call if the device at `addr` takes streams; `None`
    /// (nothing done) otherwise.
    pub fn write_stream(&self, addr: u64, data: &[u8]) -> Option<Option<DeviceAction>> {
        match self.find(addr) {
            Some((base, e)) if e.stream => {
                lock(&e.counts).writes += 1;
                Some(lock(&e.device).write(addr - base, data))
            }
            _ => None,
        }
    }

    /// Per-device access counts, in address order.
    pub fn counts(&self) -> Vec<(&'static str, u64, AccessCounts)> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut v = Vec::with_capacity(entries.len());
        for (b, e) in entries.iter() {
            let counts = *lock(&e.counts);
            v.push((e.name, *b, counts));
        }
        v
    }
}

/// Lock a mutex, recovering the data if a panicking thread poisoned it (device state stays
/// usable; a poisoned device must not take the whole VMM down).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceAction> {
            self.0 = data[0];
            None
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let bus = Bus::new();
        bus.insert("a", 0x10, 8, Arc::new(Mutex::new(Echo(1))))
            .unwrap();
        bus.insert("b", 0x18, 8, Arc::new(Mutex::new(Echo(0x40))))
            .unwrap();
        assert!(bus
            .insert("c", 0x14, 2, Arc::new(Mutex::new(Echo(0))))
            .is_err());
        assert!(bus
            .insert("d", 0x0c, 8, Arc::new(Mutex::new(Echo(0))))
            .is_err());
        assert!(bus
            .insert("e", u64::MAX, 2, Arc::new(Mutex::new(Echo(0))))
            .is_err());
        let mut d = [0u8; 1];
        assert!(bus.read(0x12, &mut d));
        assert_eq!(d[0], 3);
        assert!(bus.read(0x18, &mut d));
        assert_eq!(d[0], 0x40);
        let mut wide = [0u8; 4];
        assert!(bus.read(0x17, &mut wide), "routed by its first address");
        let mut long = [0u8; 16];
        assert!(!bus.read_stream(0x10, &mut long), "not a stream device");
        assert_eq!(bus.write_stream(0x10, &long), None);
        bus.insert_stream("s", 0x800, 8, Arc::new(Mutex::new(Echo(7))))
            .unwrap();
        assert!(bus.read_stream(0x800, &mut long));
        assert_eq!(long, [7; 16], "one call for the whole string");
        assert_eq!(bus.write_stream(0x801, &[9; 16]), Some(None));
        assert_eq!(wide, [8; 4]);
        assert!(!bus.read(0x20, &mut d));
        assert!(!bus.read(u64::MAX, &mut wide));
        assert_eq!(bus.write(0x10, &[7]), Some(None));
        assert_eq!(bus.write(0x30, &[7]), None);
        assert!(bus.remove(0x18) && !bus.remove(0x18));
        assert!(!bus.read(0x18, &mut d), "removed");
        bus.insert("b", 0x40, 8, Arc::new(Mutex::new(Echo(0x40))))
            .unwrap();
        assert!(bus.read(0x41, &mut d));
        assert_eq!(
            bus.counts()[0].2,
            AccessCounts {
                reads: 2,
                writes: 1
            }
        );
    }
}
