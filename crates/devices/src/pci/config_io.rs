//! PCI configuration mechanism #1: CONFIG_ADDRESS at 0xcf8 (32-bit: enable, bus, device,
//! function, register) and CONFIG_DATA at 0xcfc-0xcff. Byte 0xcf9 is the PIIX reset
//! control register: setting bit 2 (with bit 1 for a hard reset) resets the machine, which
//! is Linux's `reboot=pci`.

use super::root::PciRoot;
use crate::bus::{BusDevice, DeviceAction};
use std::sync::Arc;

/// The first port (CONFIG_ADDRESS).
pub const CONFIG_IO_PORT: u64 = 0xcf8;
/// Ports decoded: 0xcf8-0xcff.
pub const CONFIG_IO_PORTS: u64 = 8;
const RESET_CONTROL: u64 = 1; // 0xcf9
const DATA: u64 = 4; // 0xcfc

/// The configuration ports in front of the root bus.
pub struct PciConfigIo {
    /// CONFIG_ADDRESS as last written.
    pub address: u32,
    /// The reset control register.
    pub reset_control: u8,
    root: Arc<PciRoot>,
}

impl PciConfigIo {
    /// Ports for `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        PciConfigIo {
            address: 0,
            reset_control: 0,
            root,
        }
    }

    /// (slot, function, register offset) the address selects, if enabled and on bus 0.
    fn target(&self, data_offset: u64) -> Option<(usize, usize, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let slot = ((a >> 11) & 0x1f) as usize;
        let func = ((a >> 8) & 0x7) as usize;
        let reg = (a & 0xfc) as usize + data_offset as usize;
        Some((slot, func, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            RESET_CONTROL if data.len() == 1 => data[0] = self.reset_control,
            DATA..=7 => {
                if let Some((slot, func, reg)) = self.target(offset - DATA) {
                    self.root.config_read(slot, func, reg, data);
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            RESET_CONTROL if data.len() == 1 => {
                self.reset_control = data[0] & 0x0e;
                if data[0] & 0x04 != 0 {
                    return Some(DeviceAction::Reset);
                }
            }
            DATA..=7 => {
                if let Some((slot, func, reg)) = self.target(offset - DATA) {
                    self.root.config_write(slot, func, reg, data);
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_read32(io: &mut PciConfigIo, slot: u32, reg: u32) -> u32 {
        io.write(0, &(0x8000_0000 | (slot << 11) | reg).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(DATA, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn finds_the_host_bridge_and_nothing_else() {
        let root = Arc::new(PciRoot::new());
        let mut io = PciConfigIo::new(root.clone());
        assert_eq!(cfg_read32(&mut io, 0, 0), 0x1237_8086);
        assert_eq!(
            cfg_read32(&mut io, 0, 8) >> 8,
            0x06_00_00,
            "class: host bridge"
        );
        assert_eq!(cfg_read32(&mut io, 1, 0), 0xffff_ffff, "empty slot");
        // Disabled address: all-ones.
        io.write(0, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(DATA, &mut d);
        assert_eq!(d, [0xff; 4]);
        // The address register reads back.
        io.write(0, &0x8000_0058u32.to_le_bytes());
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0058);
        // A byte write to PAM1 (0x5a) through 0xcfe lands in the host bridge.
        io.write(DATA + 2, &[0x33]);
        assert_eq!(root.host_bridge.lock().unwrap().pam()[1], 0x33);
    }

    #[test]
    fn reset_control_resets() {
        let mut io = PciConfigIo::new(Arc::new(PciRoot::new()));
        assert_eq!(io.write(RESET_CONTROL, &[0x02]), None);
        assert_eq!(io.write(RESET_CONTROL, &[0x06]), Some(DeviceAction::Reset));
    }
}
