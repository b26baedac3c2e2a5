//! The guest-physical memory map, one definition for every kind of guest.
//!
//! ```text
//! 0x0000_0000 ─┬─ RAM (low)                        real-mode IVT/BDA, free for the guest
//! 0x0000_1000  │  Kiln boot area (4 KiB):          GDT at 0x1000, boot-info block at 0x1800
//! 0x0000_2000  │  initial stack (grows down from 0x8000)
//! 0x0000_9000  │  long mode: page tables (PML4 0x9000, PDPT 0xA000, PDs from 0xB000);
//!              │  multiboot: the multiboot info, memory map, module list and strings
//! 0x000A_0000  │  (legacy VGA/ROM window: reported reserved in memory maps, backed by RAM)
//! 0x0010_0000  │  1 MiB: kernels and raw images usually start here
//!       ...    │
//! low_ram_end ─┘  = min(RAM, 3 GiB)
//! 0xC000_0000 ─┬─ 32-bit MMIO hole: device windows (allocated by the VMM)
//! 0xFEC0_0000  │  IOAPIC, 0xFEE0_0000 LAPIC, 0xFFFB_C000 KVM identity map + TSS pages
//! 0x1_0000_0000┴─ RAM (high): whatever did not fit below 3 GiB
//! above high RAM: 64-bit MMIO window
//! ```
//!
//! Raw guests get one RAM region from 0 to `low_ram_end` (their code may live anywhere
//! outside Kiln's areas, including 0xA0000-0xFFFFF), plus high RAM when `-m` exceeds 3 GiB.

use std::ops::Range;

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// Kiln's GDT (in every mode that needs one).
pub const GDT_ADDR: u64 = 0x1000;
/// The Kiln boot-info block handed to raw guests in EBX/RBX.
pub const BOOT_INFO_ADDR: u64 = 0x1800;
/// Kiln's boot area, present in every mode; loads may not overlap it.
pub const BOOT_AREA: Range<u64> = 0x1000..0x2000;
/// Initial stack pointer for raw guests (the stack grows down from here).
pub const STACK_TOP: u64 = 0x8000;
/// Long mode: the PML4 page.
pub const PML4_ADDR: u64 = 0x9000;
/// Long mode: the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xA000;
/// Long mode: the first page directory (one 4 KiB page per GiB mapped).
pub const PD_ADDR: u64 = 0xB000;
/// Where the page directories must end: the top of conventional memory.
pub const PD_LIMIT: u64 = 0x9_FC00;
/// Multiboot: the information structure and everything it points to.
pub const MULTIBOOT_INFO_AREA: Range<u64> = 0x9000..0x9_FC00;
/// Start of the legacy window reported reserved in memory maps (EBDA, VGA, ROMs).
pub const LEGACY_HOLE: Range<u64> = 0x9_FC00..0x10_0000;

/// Low RAM never extends past this (the 32-bit hole starts here).
pub const LOW_RAM_MAX: u64 = 0xC000_0000;
/// The 32-bit MMIO hole.
pub const MMIO32_HOLE: Range<u64> = 0xC000_0000..0x1_0000_0000;
/// The part of the 32-bit hole free for device windows.
pub const MMIO32_DEVICES: Range<u64> = 0xC000_0000..0xFEC0_0000;
/// IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
/// Local APIC registers.
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;
/// KVM's identity-map page (VMX real-mode support), one page.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;
/// KVM's TSS area (VMX real-mode support), three pages.
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;
/// High RAM starts at 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Size of the 64-bit MMIO window placed above high RAM.
pub const MMIO64_SIZE: u64 = 64 * GIB;

/// Where guest RAM lives for a given RAM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Total guest RAM in bytes.
    pub ram_size: u64,
}

/// The kinds of range in a guest memory map (the e820 / multiboot `type` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Usable RAM (type 1).
    Ram = 1,
    /// Reserved (type 2).
    Reserved = 2,
}

/// One range of a memory map reported to a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Start address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the range is.
    pub kind: MapKind,
}

impl MemoryLayout {
    /// A layout for `ram_size` bytes of RAM.
    pub fn new(ram_size: u64) -> Self {
        MemoryLayout { ram_size }
    }

    /// RAM below 4 GiB, in bytes (ends where the 32-bit hole starts at most).
    pub fn low_ram_size(&self) -> u64 {
        self.ram_size.min(LOW_RAM_MAX)
    }

    /// RAM above 4 GiB, in bytes.
    pub fn high_ram_size(&self) -> u64 {
        self.ram_size - self.low_ram_size()
    }

    /// The guest-physical RAM ranges, in address order.
    pub fn ram_ranges(&self) -> Vec<Range<u64>> {
        let mut v = Vec::with_capacity(2);
        v.push(0..self.low_ram_size());
        if self.high_ram_size() > 0 {
            v.push(HIGH_RAM_START..HIGH_RAM_START + self.high_ram_size());
        }
        v
    }

    /// One past the highest RAM address.
    pub fn ram_end(&self) -> u64 {
        self.ram_ranges().last().map_or(0, |r| r.end)
    }

    /// The 64-bit MMIO window above RAM.
    pub fn mmio64(&self) -> Range<u64> {
        let start = self.ram_end().max(HIGH_RAM_START).next_multiple_of(GIB);
        start..start + MMIO64_SIZE
    }

    /// Whether `range` lies wholly inside guest RAM.
    pub fn contains_ram(&self, range: &Range<u64>) -> bool {
        self.ram_ranges()
            .iter()
            .any(|r| r.start <= range.start && range.end <= r.end)
    }

    /// The memory map reported to guests (multiboot, later e820): usable RAM with the
    /// legacy window below 1 MiB marked reserved.
    pub fn memory_map(&self) -> Vec<MapEntry> {
        let low = self.low_ram_size();
        let mut map = Vec::new();
        let conventional = low.min(LEGACY_HOLE.start);
        map.push(MapEntry {
            base: 0,
            len: conventional,
            kind: MapKind::Ram,
        });
        if low > LEGACY_HOLE.start {
            map.push(MapEntry {
                base: LEGACY_HOLE.start,
                len: LEGACY_HOLE.end - LEGACY_HOLE.start,
                kind: MapKind::Reserved,
            });
        }
        if low > LEGACY_HOLE.end {
            map.push(MapEntry {
                base: LEGACY_HOLE.end,
                len: low - LEGACY_HOLE.end,
                kind: MapKind::Ram,
            });
        }
        if self.high_ram_size() > 0 {
            map.push(MapEntry {
                base: HIGH_RAM_START,
                len: self.high_ram_size(),
                kind: MapKind::Ram,
            });
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_low_range() {
        let l = MemoryLayout::new(64 * MIB);
        assert_eq!(l.ram_ranges().len(), 1);
        assert_eq!(l.ram_ranges()[0], 0..64 * MIB);
        assert_eq!(l.high_ram_size(), 0);
        assert_eq!(l.ram_end(), 64 * MIB);
        assert_eq!(l.mmio64().start, 4 * GIB);
    }

    #[test]
    fn large_guest_splits_at_the_hole() {
        let l = MemoryLayout::new(5 * GIB);
        assert_eq!(
            l.ram_ranges(),
            [0..3 * GIB, 4 * GIB..6 * GIB],
            "3 GiB low, the rest above 4 GiB"
        );
        assert!(l.contains_ram(&(0x10_0000..0x20_0000)));
        assert!(!l.contains_ram(&(3 * GIB - 1..3 * GIB + 1)));
        assert!(l.contains_ram(&(5 * GIB..5 * GIB + 8)));
    }

    #[test]
    fn memory_map_reserves_legacy_window() {
        let l = MemoryLayout::new(16 * MIB);
        let m = l.memory_map();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].base, m[0].len), (0, 0x9_FC00));
        assert_eq!(m[1].kind, MapKind::Reserved);
        assert_eq!((m[2].base, m[2].len), (MIB, 15 * MIB));
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == MapKind::Ram)
            .map(|e| e.len)
            .sum();
        assert_eq!(ram, 16 * MIB - (MIB - 0x9_FC00));
    }
}
