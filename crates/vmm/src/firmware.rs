//! Firmware boot: a BIOS image (SeaBIOS by default) entered at the reset vector, and the
//! platform pieces a PC BIOS relies on that only this boot mode has.
//!
//! - The ROM ([`BiosRom`]): the file, checked and copied into a private mapping, mapped
//!   read-only just below 4 GiB; its last 128 KiB also appear at 0xE0000-0xFFFFF while
//!   the PAM registers say "ROM" there.
//! - The legacy window ([`LegacyWindow`]): 0xC0000-0xFFFFF in thirteen PAM segments
//!   (twelve of 16 KiB, then 64 KiB at 0xF0000). A guest write to the host bridge's PAM
//!   registers remaps the changed segments as RAM, read-only RAM or ROM by swapping their
//!   KVM memory slots; accesses that still exit (reads of unmapped segments, writes to
//!   read-only ones) reach the window on the MMIO bus, which drops them or, in the
//!   write-only mode, stores them into the RAM underneath.
//! - fw_cfg's contents ([`fw_cfg_items`]): the e820 map, CPU count, RAM size, no boot
//!   menu, no reboot loop when nothing boots, `etc/sercon-port` so SeaBIOS's and the
//!   boot loader's screen text reach COM1, and the ACPI tables with their loader
//!   (`kiln_arch::acpi_loader`) unless ACPI is off.
//!
//! The vCPUs start from KVM's reset state (CS base 0xFFFF0000, IP 0xFFF0), the state
//! hardware leaves them in; nothing is loaded into RAM.

use crate::error::{Result, VmmError};
use crate::loader::{io_reason, read_file};
use crate::memory::{GuestMem, MemorySlots, Slot};
use kiln_arch::MemoryLayout;
use kiln_devices::bus::{BusDevice, DeviceAction};
use kiln_devices::fw_cfg::{keys, FwCfgBuilder};
use kiln_devices::pci::host_bridge::PAM_COUNT;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// The BIOS `kiln run` uses when none is given (Debian's `seabios` package).
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// The legacy ROM window the PAM registers control.
pub const LEGACY_WINDOW: Range<u64> = 0xC_0000..0x10_0000;
/// Where the ROM's last 128 KiB appear below 1 MiB.
pub const LOW_ROM_BASE: u64 = 0xE_0000;
/// Bytes of the ROM mirrored below 1 MiB.
pub const LOW_ROM_SIZE: u64 = 128 << 10;
/// Smallest and largest BIOS images accepted (QEMU's rule: a multiple of 64 KiB).
pub const BIOS_SIZES: Range<u64> = LOW_ROM_SIZE..(16 << 20) + 1;
/// KVM's identity-map page for firmware guests (QEMU's place: reserved in the e820 map,
/// out of the way of BIOS images up to 16 MiB).
pub const FIRMWARE_IDENTITY_MAP_ADDR: u64 = 0xFEFF_C000;
/// KVM's TSS pages for firmware guests, right after the identity map.
pub const FIRMWARE_TSS_ADDR: u64 = 0xFEFF_D000;
/// The reserved range around both.
pub const FIRMWARE_KVM_PAGES: Range<u64> = 0xFEFF_C000..0xFF00_0000;
/// The serial port SeaBIOS prints its screen text to.
pub const SERCON_PORT: u16 = 0x3f8;

/// A BIOS image, mapped privately; guest writes never reach the file.
pub struct BiosRom {
    region: MmapRegion<()>,
    size: u64,
}

impl BiosRom {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<BiosRom> {
        let data = read_file(path)?;
        let size = data.len() as u64;
        let bad = |reason: String| VmmError::Kernel {
            path: path.display().to_string(),
            reason,
        };
        if !BIOS_SIZES.contains(&size) || !size.is_multiple_of(64 << 10) {
            return Err(bad(format!(
                "a BIOS image must be a multiple of 64 KiB between 128 KiB and 16 MiB; this one is {size} bytes"
            )));
        }
        let region = MmapRegion::<()>::new(size as usize).map_err(|e| {
            VmmError::Memory(format!("cannot map the BIOS image: {}", io_reason_mmap(&e)))
        })?;
        let slice = vm_memory::VolatileMemory::as_volatile_slice(&region);
        slice.copy_from(&data[..]);
        Ok(BiosRom { region, size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Guest-physical address of the high copy (it ends at 4 GiB).
    pub fn high_base(&self) -> u64 {
        (1u64 << 32) - self.size
    }

    fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    /// Map the high copy into the VM (read-only when KVM can).
    pub fn map_high(&self, slots: &mut MemorySlots, readonly: bool) -> Result<u32> {
        slots.add(Slot {
            gpa: self.high_base(),
            size: self.size,
            host_addr: self.host_addr(),
            readonly,
        })
    }
}

fn io_reason_mmap(e: &vm_memory::mmap::MmapRegionError) -> String {
    match e {
        vm_memory::mmap::MmapRegionError::Mmap(io) => io_reason(io),
        other => other.to_string(),
    }
}

/// Number of PAM segments.
const SEGMENTS: usize = 13;

/// Segment `i`'s guest-physical range.
fn segment(i: usize) -> Range<u64> {
    if i < 12 {
        let start = LEGACY_WINDOW.start + i as u64 * 0x4000;
        start..start + 0x4000
    } else {
        0xF_0000..0x10_0000
    }
}

/// Segment `i`'s two-bit mode in the PAM registers: bit 0 reads RAM, bit 1 writes RAM.
fn segment_mode(pam: &[u8; PAM_COUNT], i: usize) -> u8 {
    if i < 12 {
        (pam[1 + i / 2] >> (4 * (i % 2))) & 3
    } else {
        (pam[0] >> 4) & 3
    }
}

const READ_RAM: u8 = 1;
const WRITE_RAM: u8 = 2;

/// The legacy ROM window 0xC0000-0xFFFFF under PAM control.
pub struct LegacyWindow {
    slots: Arc<Mutex<MemorySlots>>,
    mem: GuestMem,
    ram_host: u64,
    rom_low_host: u64,
    readonly_ok: bool,
    modes: [u8; SEGMENTS],
    slot_ids: [Option<u32>; SEGMENTS],
    /// Slot changes made for PAM writes.
    pub remaps: u64,
}

impl LegacyWindow {
    /// The window over `mem` (whose RAM covers 0xC0000-0xFFFFF) with `rom`'s last 128 KiB
    /// as the low ROM, mapped as at reset: ROM at 0xE0000-0xFFFFF, nothing below.
    /// `readonly_ok` says whether KVM has read-only slots (without them, ROM and
    /// read-only RAM are mapped writable: a guest could change its copy of the BIOS).
    pub fn new(
        slots: Arc<Mutex<MemorySlots>>,
        mem: GuestMem,
        rom: &BiosRom,
        readonly_ok: bool,
    ) -> Result<LegacyWindow> {
        let ram_host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| VmmError::Memory(format!("guest RAM has no host mapping: {e}")))?
            as u64;
        if mem
            .get_host_address(GuestAddress(LEGACY_WINDOW.end))
            .is_err()
        {
            return Err(VmmError::Config(
                "a firmware guest needs more than 1 MiB of memory".into(),
            ));
        }
        let mut w = LegacyWindow {
            slots,
            mem,
            ram_host,
            rom_low_host: rom.host_addr() + rom.size - LOW_ROM_SIZE,
            readonly_ok,
            modes: [0; SEGMENTS],
            slot_ids: [None; SEGMENTS],
            remaps: 0,
        };
        for i in 0..SEGMENTS {
            w.map_segment(i)?;
        }
        Ok(w)
    }

    fn map_segment(&mut self, i: usize) -> Result<()> {
        let mut slots = kiln_devices::bus::lock(&self.slots);
        if let Some(id) = self.slot_ids[i].take() {
            slots.remove(id)?;
        }
        let r = segment(i);
        let mode = self.modes[i];
        let slot = if mode & READ_RAM != 0 {
            Some(Slot {
                gpa: r.start,
                size: r.end - r.start,
                host_addr: self.ram_host + r.start,
                readonly: mode & WRITE_RAM == 0 && self.readonly_ok,
            })
        } else if r.start >= LOW_ROM_BASE {
            Some(Slot {
                gpa: r.start,
                size: r.end - r.start,
                host_addr: self.rom_low_host + (r.start - LOW_ROM_BASE),
                readonly: self.readonly_ok,
            })
        } else {
            None
        };
        if let Some(slot) = slot {
            self.slot_ids[i] = Some(slots.add(slot)?);
        }
        Ok(())
    }

    /// Apply the PAM registers the guest wrote. A slot that cannot be changed leaves the
    /// segment unmapped (its accesses then exit to the window), never half-mapped.
    pub fn apply(&mut self, pam: &[u8; PAM_COUNT]) {
        for i in 0..SEGMENTS {
            let mode = segment_mode(pam, i);
            if mode != self.modes[i] {
                self.modes[i] = mode;
                self.remaps += 1;
                if self.map_segment(i).is_err() {
                    self.slot_ids[i] = None;
                }
            }
        }
    }

    fn segment_of(addr: u64) -> Option<usize> {
        (0..SEGMENTS).find(|&i| segment(i).contains(&addr))
    }
}

impl BusDevice for LegacyWindow {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Only unmapped segments (no RAM, no ROM) exit on reads: open bus.
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let addr = LEGACY_WINDOW.start + offset;
        if let Some(i) = Self::segment_of(addr) {
            // Write-only mode: writes land in the RAM under the ROM (BIOS shadowing).
            if self.modes[i] & WRITE_RAM != 0 && addr + data.len() as u64 <= segment(i).end {
                let _ = self.mem.write_slice(data, GuestAddress(addr));
            }
        }
        None
    }
}

/// One e820 entry as fw_cfg's `etc/e820` carries it (20 bytes, little-endian).
fn e820_entry(out: &mut Vec<u8>, base: u64, len: u64, kind: u32) {
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
}

/// The `etc/e820` file: RAM below and above 4 GiB, and KVM's pages reserved (SeaBIOS
/// adds its own reservations for the legacy areas).
pub fn e820_file(layout: &MemoryLayout) -> Vec<u8> {
    let mut out = Vec::new();
    e820_entry(
        &mut out,
        FIRMWARE_KVM_PAGES.start,
        FIRMWARE_KVM_PAGES.end - FIRMWARE_KVM_PAGES.start,
        2,
    );
    for r in layout.ram_ranges() {
        e820_entry(&mut out, r.start, r.end - r.start, 1);
    }
    out
}

/// Where SeaBIOS places 32-bit PCI BARs on an i440FX machine (from 2 GiB, or from 3 GiB
/// when low RAM is larger, up to the IOAPIC): the window the DSDT announces.
pub fn pci_mem32_window(layout: &MemoryLayout) -> Range<u64> {
    let start = if layout.low_ram_size() <= 0x8000_0000 {
        0x8000_0000
    } else {
        0xC000_0000
    };
    start..kiln_arch::layout::IOAPIC_ADDR
}

/// fw_cfg's items and files for a firmware guest with `cpus` vCPUs; with `acpi`, the
/// ACPI tables and the loader that installs them.
pub fn fw_cfg_items(
    layout: &MemoryLayout,
    cpus: u16,
    acpi: Option<kiln_arch::acpi_loader::LoaderFiles>,
) -> FwCfgBuilder {
    let mut b = FwCfgBuilder::new();
    let put = |b: &mut FwCfgBuilder, key: u16, data: Vec<u8>| {
        b.item(key, data).expect("a fixed, non-reserved fw_cfg key");
    };
    put(&mut b, keys::NB_CPUS, cpus.to_le_bytes().to_vec());
    put(&mut b, keys::MAX_CPUS, cpus.to_le_bytes().to_vec());
    put(
        &mut b,
        keys::RAM_SIZE,
        layout.ram_size.to_le_bytes().to_vec(),
    );
    put(&mut b, keys::NOGRAPHIC, 1u16.to_le_bytes().to_vec());
    put(&mut b, keys::BOOT_MENU, 0u16.to_le_bytes().to_vec());
    // With no bootable device SeaBIOS waits for ever (QEMU's choice) instead of
    // rebooting every 60 s: a restart loop helps nobody.
    b.file("etc/e820", e820_file(layout))
        .and_then(|b| b.file("etc/sercon-port", SERCON_PORT.to_le_bytes().to_vec()))
        .and_then(|b| b.file("etc/boot-fail-wait", u32::MAX.to_le_bytes().to_vec()))
        .expect("fixed, distinct fw_cfg file names");
    if let Some(files) = acpi {
        use kiln_arch::acpi_loader::{LOADER_FILE, RSDP_FILE, TABLES_FILE};
        b.file(RSDP_FILE, files.rsdp)
            .and_then(|b| b.file(TABLES_FILE, files.tables))
            .and_then(|b| b.file(LOADER_FILE, files.loader))
            .expect("fixed, distinct fw_cfg file names");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pam_nibbles_map_to_segments() {
        let mut pam = [0u8; PAM_COUNT];
        pam[0] = 0x30;
        pam[1] = 0x31;
        pam[6] = 0x20;
        assert_eq!(segment_mode(&pam, 12), 3, "PAM0 high nibble: 0xF0000");
        assert_eq!(segment_mode(&pam, 0), 1, "PAM1 low nibble: 0xC0000");
        assert_eq!(segment_mode(&pam, 1), 3, "PAM1 high nibble: 0xC4000");
        assert_eq!(segment_mode(&pam, 11), 2, "PAM6 high nibble: 0xEC000");
        assert_eq!(segment(0), 0xC_0000..0xC_4000);
        assert_eq!(segment(11), 0xE_C000..0xF_0000);
        assert_eq!(segment(12), 0xF_0000..0x10_0000);
        assert_eq!(LegacyWindow::segment_of(0xE_FFFF), Some(11));
        assert_eq!(LegacyWindow::segment_of(0x10_0000), None);
    }

    #[test]
    fn e820_lists_ram_and_kvm_pages() {
        let l = MemoryLayout::new(384 << 20);
        let f = e820_file(&l);
        assert_eq!(f.len(), 40);
        let le64 = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
        assert_eq!(le64(0), 0xFEFF_C000);
        assert_eq!(le64(20), 0);
        assert_eq!(le64(28), 384 << 20);
        assert_eq!(u32::from_le_bytes(f[36..40].try_into().unwrap()), 1);
    }

    #[test]
    fn bad_bios_sizes_are_refused() {
        let dir = std::env::temp_dir().join(format!("kiln-bios-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for size in [0usize, 4096, 64 << 10, (128 << 10) + 512, 32 << 20] {
            let p = dir.join("bios.bin");
            std::fs::write(&p, vec![0u8; size]).unwrap();
            let e = BiosRom::load(&p).err().expect("refused").to_string();
            assert!(e.contains("multiple of 64 KiB"), "{size}: {e}");
        }
        let p = dir.join("bios.bin");
        std::fs::write(&p, vec![0x90u8; 256 << 10]).unwrap();
        let rom = BiosRom::load(&p).unwrap();
        assert_eq!(rom.high_base(), 0xFFFC_0000);
        let e = BiosRom::load(&dir.join("missing.bin")).err().unwrap();
        assert!(e.to_string().contains("No such file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
