//! QEMU's pvpanic ISA device (port 0x505, ACPI id QEMU0001): a guest kernel writes bit 0
//! when it panics, so Kiln can exit with the panic status instead of guessing from a reset.

use crate::bus::{BusDevice, DeviceAction};

/// The port.
pub const PVPANIC_PORT: u64 = 0x505;
/// Event bit: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1;
/// Event bit: a crash kernel was loaded (reported, not acted on).
pub const PVPANIC_CRASH_LOADED: u8 = 2;

/// The pvpanic device.
#[derive(Debug, Default)]
pub struct PvPanic {
    /// Events the guest reported.
    pub events: u8,
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED; // supported events
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let v = *data.first()?;
        self.events |= v;
        (v & PVPANIC_PANICKED != 0).then_some(DeviceAction::Panic)
    }
}
