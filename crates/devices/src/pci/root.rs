//! The root PCI bus (bus 0): up to 32 slots of single-function devices. Slot 0 is the host
//! bridge. Absent devices read as all-ones, as on real hardware.

use super::host_bridge::HostBridge;
use std::sync::{Arc, Mutex, RwLock};

/// A device on the PCI bus, seen through its configuration space.
pub trait PciDevice: Send {
    /// A guest read of configuration space.
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// A guest write to configuration space.
    fn config_write(&mut self, offset: usize, data: &[u8]);
}

/// A device in a slot.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Slots on the root bus.
pub const SLOTS: usize = 32;

/// Bus 0.
pub struct PciRoot {
    slots: RwLock<Vec<Option<SharedPciDevice>>>,
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
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; SLOTS];
        slots[0] = Some(host_bridge.clone());
        PciRoot {
            slots: RwLock::new(slots),
            host_bridge,
        }
    }

    /// Put a device in the first free slot; returns the slot, or `None` if the bus is full.
    pub fn add(&self, dev: SharedPciDevice) -> Option<usize> {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let slot = slots.iter().position(Option::is_none)?;
        slots[slot] = Some(dev);
        Some(slot)
    }

    fn device(&self, slot: usize, func: usize) -> Option<SharedPciDevice> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(slot)?.as_ref().filter(|_| func == 0).cloned()
    }

    /// Configuration read of bus 0, `slot`, function `func`.
    pub fn config_read(&self, slot: usize, func: usize, offset: usize, data: &mut [u8]) {
        match self.device(slot, func) {
            Some(dev) => crate::bus::lock(&dev).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write of bus 0, `slot`, function `func`.
    pub fn config_write(&self, slot: usize, func: usize, offset: usize, data: &[u8]) {
        if let Some(dev) = self.device(slot, func) {
            crate::bus::lock(&dev).config_write(offset, data);
        }
    }
}
