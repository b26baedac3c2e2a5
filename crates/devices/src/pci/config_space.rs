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
    /// First base address register (six 32-bit registers).
    pub const BAR0: usize = 0x10;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES: usize = 0x34;
}

/// Command register: memory space decoding enabled.
pub const COMMAND_MEMORY: u16 = 0x2;
/// Status register: the device has a capabilities list.
pub const STATUS_CAPABILITIES: u16 = 0x10;
/// Where the first capability goes (after the type-0 header).
const FIRST_CAPABILITY: usize = 0x40;

/// A configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    /// Register contents.
    pub bytes: [u8; 256],
    /// Bits the guest may change.
    pub writable: [u8; 256],
    /// (offset, length) of each capability added.
    cap_lens: Vec<(usize, usize)>,
}

impl ConfigSpace {
    /// A type-0 header with the given IDs and class (class << 16 | subclass << 8 | prog-if).
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            writable: [0; 256],
            cap_lens: Vec::new(),
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

    /// Declare BAR `index` (0-4; it uses `index` and `index + 1`) a 64-bit memory BAR of
    /// `size` bytes (a power of two, at least 16) at `addr`. The write mask makes sizing work
    /// as on hardware: after the guest writes all-ones, the BAR reads back `!(size - 1)` plus
    /// its type bits.
    pub fn add_mem_bar64(&mut self, index: usize, size: u64, addr: u64) {
        assert!(index < 5 && size.is_power_of_two() && size >= 16 && addr.is_multiple_of(size));
        let off = reg::BAR0 + 4 * index;
        let mask = !(size - 1);
        let flags = 0b100; // memory, 64-bit, not prefetchable
        self.bytes[off..off + 8].copy_from_slice(&(addr | flags).to_le_bytes());
        self.writable[off..off + 8].copy_from_slice(&mask.to_le_bytes());
        self.writable[off] &= 0xf0;
    }

    /// The guest-physical address BAR `index` (a 64-bit memory BAR) holds now.
    pub fn bar64_address(&self, index: usize) -> u64 {
        let off = reg::BAR0 + 4 * index;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[off..off + 8]);
        u64::from_le_bytes(b) & !0xf
    }

    /// Whether the guest enabled memory decoding in the command register.
    pub fn memory_enabled(&self) -> bool {
        u16::from_le_bytes([self.bytes[reg::COMMAND], self.bytes[reg::COMMAND + 1]])
            & COMMAND_MEMORY
            != 0
    }

    /// Append a capability: `body` starts with the capability ID and a placeholder for
    /// the next pointer (which this fills in); `writable` is the mask for the bytes of
    /// `body` the guest may change. Returns the capability's offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        assert_eq!(body.len(), writable.len());
        // Walk the list to its end.
        let mut at = reg::CAPABILITIES;
        let mut free = FIRST_CAPABILITY;
        while self.bytes[at] != 0 {
            let cap = self.bytes[at] as usize;
            free = free.max((cap + self.cap_len(cap)).next_multiple_of(4));
            at = cap + 1;
        }
        assert!(free + body.len() <= 256, "configuration space full");
        self.bytes[free..free + body.len()].copy_from_slice(body);
        self.bytes[free + 1] = 0;
        self.writable[free..free + body.len()].copy_from_slice(writable);
        self.writable[free + 1] = 0;
        self.bytes[at] = free as u8;
        self.cap_lens.push((free, body.len()));
        let status = u16::from_le_bytes([self.bytes[reg::STATUS], self.bytes[reg::STATUS + 1]]);
        self.set16(reg::STATUS, status | STATUS_CAPABILITIES);
        free
    }

    fn cap_len(&self, at: usize) -> usize {
        self.cap_lens
            .iter()
            .find(|(o, _)| *o == at)
            .map_or(2, |(_, l)| *l)
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

    #[test]
    fn a_64_bit_bar_sizes_and_moves() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 0x01_80_00, 1);
        c.add_mem_bar64(0, 0x8000, 0xc000_8000);
        assert_eq!(c.bar64_address(0), 0xc000_8000);
        let mut d = [0u8; 4];
        c.read(reg::BAR0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xc000_8004);
        c.write(reg::BAR0, &[0xff; 4]);
        c.write(reg::BAR0 + 4, &[0xff; 4]);
        c.read(reg::BAR0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_8004, "size probe");
        c.read(reg::BAR0 + 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
        c.write(reg::BAR0, &0xd000_0000u32.to_le_bytes());
        c.write(reg::BAR0 + 4, &1u32.to_le_bytes());
        assert_eq!(c.bar64_address(0), 0x1_d000_0000);
        assert!(!c.memory_enabled());
        c.write(reg::COMMAND, &[0x02, 0]);
        assert!(c.memory_enabled());
    }

    #[test]
    fn capabilities_chain() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, 0x01_80_00, 1);
        let a = c.add_capability(&[0x09, 0xaa, 3, 7, 7], &[0, 0, 0, 0, 0xff]);
        let b = c.add_capability(&[0x11, 0, 1, 2], &[0; 4]);
        assert_eq!((a, b), (0x40, 0x48));
        assert_eq!(c.bytes[reg::CAPABILITIES], 0x40);
        assert_eq!(c.bytes[0x41], 0x48, "next pointer filled in");
        assert_eq!(c.bytes[0x49], 0, "end of list");
        assert_eq!(c.bytes[reg::STATUS] & 0x10, 0x10);
        c.write(0x44, &[9]);
        c.write(0x41, &[0]);
        assert_eq!((c.bytes[0x44], c.bytes[0x41]), (9, 0x48));
    }
}
