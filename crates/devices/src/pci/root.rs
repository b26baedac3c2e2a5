//! The root PCI bus (bus 0): up to 32 slots of single-function devices. Slot 0 is the host
//! bridge. Absent devices read as all-ones, as on real hardware.

use super::host_bridge::HostBridge;
use std::sync::{Arc, Mutex};

/// A device on the PCI bus, seen through its configuration space.
pub trait PciDevice: Send {
    /// A guest read of configuration space.
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// A guest write to configuration space.
    fn config_write(&mut self, offset: usize, data: &[u8]);
}

/// Slots on the root bus.
pub const SLOTS: usize = 32;

/// Bus 0.
pub struct PciRoot {
    slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>>,
    /// The host bridge (also in slot 0), for the VMM to read PAM changes.
    pub host_bridge: Arc<Mutex<HostBridge>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A root bus with the host bridge in slot 0.
    pub fn new() -> Self {
        let host_bridge = Arc::new(Mutex::new(HostBridge::default()));
        let mut slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>> = vec![None; SLOTS];
        slots[0] = Some(host_bridge.clone());
        PciRoot { slots, host_bridge }
    }

    /// Put a device in the first free slot; returns the slot, or `None` if the bus is full.
    pub fn add(&mut self, dev: Arc<Mutex<dyn PciDevice>>) -> Option<usize> {
        let slot = self.slots.iter().position(Option::is_none)?;
        self.slots[slot] = Some(dev);
        Some(slot)
    }

    /// Configuration read of bus 0, `slot`, function `func`.
    pub fn config_read(&self, slot: usize, func: usize, offset: usize, data: &mut [u8]) {
        match self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .filter(|_| func == 0)
        {
            Some(dev) => crate::bus::lock(dev).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write of bus 0, `slot`, function `func`.
    pub fn config_write(&self, slot: usize, func: usize, offset: usize, data: &[u8]) {
        if let Some(dev) = self
            .slots
            .get(slot)
            .and_then(|s| s.as_ref())
            .filter(|_| func == 0)
        {
            crate::bus::lock(dev).config_write(offset, data);
        }
    }
}
