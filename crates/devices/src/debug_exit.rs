//! QEMU's `isa-debug-exit` device: a write of V ends the VM with status `(V << 1) | 1`.
//!
//! Test guests use it to report a result through the exit status. Writes of 1, 2 or 4
//! bytes are accepted; the status is truncated to 8 bits as a process exit status is.

use crate::bus::{BusDevice, DeviceAction};

/// The conventional port.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;

/// The debug-exit device.
#[derive(Debug, Default)]
pub struct DebugExit;

/// The exit status for a written value.
pub fn status_for(value: u32) -> u8 {
    ((value << 1) | 1) as u8
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        Some(DeviceAction::Exit(status_for(u32::from_le_bytes(v))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_matches_qemu() {
        assert_eq!(status_for(0), 1);
        assert_eq!(status_for(0x10), 0x21);
        assert_eq!(status_for(0x80), 1, "wraps like an 8-bit exit status");
        let mut d = DebugExit;
        assert_eq!(d.write(0, &[0x21, 0, 0, 0]), Some(DeviceAction::Exit(0x43)));
        assert_eq!(d.write(0, &[3, 0]), Some(DeviceAction::Exit(7)));
    }
}
