//! The boot timer (`--boot-timer`), in the spirit of Firecracker's boot timer and Cloud
//! Hypervisor's port-0x80 codes: a guest writes any byte to [`BOOT_TIMER_ADDR`] (MMIO)
//! when it reaches a point worth timing, and Kiln logs the time since its own process
//! started. MMIO rather than a port so Linux user space can reach it without
//! `/dev/port` (which Debian's cloud kernel lacks): `busybox devmem 0xfebff000 8 1`.

use crate::bus::{BusDevice, DeviceAction};
use std::time::Instant;

/// The guest-physical address the guest writes to (the last page below the IOAPIC).
pub const BOOT_TIMER_ADDR: u64 = 0xFEBF_F000;
/// Bytes the device decodes.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// The boot timer.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    /// Markers seen: (value, milliseconds since start).
    pub marks: Vec<(u8, f64)>,
}

impl BootTimer {
    /// A timer counting from `start` (the process start).
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            marks: Vec::new(),
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let value = data.first().copied().unwrap_or(0);
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.marks.push((value, ms));
        eprintln!("kiln: boot timer: guest marker {value:#04x} at {ms:.1} ms after start");
        None
    }
}
