//! The PCI function of the controller: an Intel 82371SB PIIX3 IDE (8086:7010) with both
//! channels in ISA compatibility mode (the legacy ports and IRQs 14/15, which the VMM
//! wires outside PCI) and no bus-master DMA: BAR 4 is absent, so Linux's `ata_piix`
//! reports "BAR4 is zero, falling back to PIO". The IDE timing registers exist so drivers
//! and firmware can program them; they change nothing here.

use crate::pci::config_space::{reg, ConfigSpace};
use crate::pci::host_bridge::{SUBSYSTEM_QEMU_VM, SUBSYSTEM_VENDOR_QEMU, VENDOR_INTEL};
use crate::pci::PciDevice;

/// 82371SB PIIX3 IDE.
pub const DEVICE_PIIX3_IDE: u16 = 0x7010;
/// Class: mass storage, IDE, prog-if 80h (bus-master capable as on the real part and in
/// QEMU; both channels in compatibility mode, not switchable).
pub const CLASS_IDE_COMPAT_BUSMASTER: u32 = 0x01_01_80;
/// Reset value of IDETIM (0x40 primary, 0x42 secondary): IDE decode enabled.
pub const IDETIM_DEFAULT: u16 = 0x8000;
/// Primary channel IDETIM register.
const IDETIM_PRIMARY: usize = 0x40;
/// Secondary channel IDETIM register.
const IDETIM_SECONDARY: usize = 0x42;
/// Slave IDE timing register.
const SIDETIM: usize = 0x44;
/// Status: fast back-to-back capable, medium DEVSEL timing (the real part's value).
const STATUS_PIIX: u16 = 0x0280;

/// The PIIX3 IDE PCI function.
#[derive(Debug, Clone)]
pub struct PiixIde {
    /// Its configuration space.
    pub config: ConfigSpace,
}

impl Default for PiixIde {
    fn default() -> Self {
        Self::new()
    }
}

impl PiixIde {
    /// The function as after reset: IDE decode enabled on both channels, BARs 0-5 zero.
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(
            VENDOR_INTEL,
            DEVICE_PIIX3_IDE,
            CLASS_IDE_COMPAT_BUSMASTER,
            0,
        );
        config.set16(reg::STATUS, STATUS_PIIX);
        config.set16(reg::SUBSYSTEM_VENDOR_ID, SUBSYSTEM_VENDOR_QEMU);
        config.set16(reg::SUBSYSTEM_ID, SUBSYSTEM_QEMU_VM);
        config.set16(IDETIM_PRIMARY, IDETIM_DEFAULT);
        config.set16(IDETIM_SECONDARY, IDETIM_DEFAULT);
        config.make_writable(IDETIM_PRIMARY..SIDETIM + 1);
        PiixIde { config }
    }

    /// IDETIM of `channel` (0 primary, 1 secondary) as the guest last wrote it.
    pub fn idetim(&self, channel: usize) -> u16 {
        let off = if channel == 0 {
            IDETIM_PRIMARY
        } else {
            IDETIM_SECONDARY
        };
        u16::from_le_bytes([self.config.bytes[off], self.config.bytes[off + 1]])
    }
}

impl PciDevice for PiixIde {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
}
