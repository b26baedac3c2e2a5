//! A type-0 PCI configuration space: 256 bytes of registers with a per-byte write mask, so
//! read-only fields (IDs, class code) stay as the device set them whatever the guest writes.

/// Offsets of standard header fields.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status register (16 bits).
    pub const STATUS: usize = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION: usize = 0x08;
    /// Class code: programming interface, subclass, class (24 bits).
    pub const CLASS: usize = 0x09;
    /// Header type (8 bits).
    pub const HEADER_TYPE: usize = 0x0e;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Interrupt line (8 bits, guest scratch).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (8 bits).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// A configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    /// Register contents.
    pub bytes: [u8; 256],
    /// Bits the guest may change.
    pub writable: [u8; 256],
}

impl ConfigSpace {
    /// A type-0 header with the given IDs and class (class << 16 | subclass << 8 | prog-if).
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            writable: [0; 256],
        };
        c.set16(reg::VENDOR_ID, vendor);
        c.set16(reg::DEVICE_ID, device);
        c.bytes[reg::REVISION] = revision;
        c.bytes[reg::CLASS] = class as u8;
        c.bytes[reg::CLASS + 1] = (class >> 8) as u8;
        c.bytes[reg::CLASS + 2] = (class >> 16) as u8;
        // Command: I/O, memory, bus master, INTx disable are the guest's.
        c.writable[reg::COMMAND] = 0x07;
        c.writable[reg::COMMAND + 1] = 0x04;
        c.writable[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    /// Set a 16-bit field (device side, ignores the mask).
    pub fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Let the guest write the bytes `range` fully.
    pub fn make_writable(&mut self, range: std::ops::Range<usize>) {
        for b in &mut self.writable[range] {
            *b = 0xff;
        }
    }

    /// A guest read of `data.len()` bytes at `off` (bytes past 256 read as all-ones).
    pub fn read(&self, off: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.bytes.get(off + i).copied().unwrap_or(0xff);
        }
    }

    /// A guest write; only writable bits change.
    pub fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(m) = self.writable.get(off + i).copied() else {
                return;
            };
            let b = &mut self.bytes[off + i];
            *b = (*b & !m) | (v & m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_only_and_command_is_writable() {
        let mut c = ConfigSpace::new(0x8086, 0x1237, 0x06_00_00, 2);
        c.write(0, &[0xff; 4]);
        let mut d = [0u8; 4];
        c.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1237_8086);
        c.write(reg::COMMAND, &[0xff, 0xff]);
        c.read(reg::COMMAND, &mut d[..2]);
        assert_eq!(u16::from_le_bytes([d[0], d[1]]), 0x0407);
        c.read(254, &mut d);
        assert_eq!(d, [0, 0, 0xff, 0xff]);
    }
}
