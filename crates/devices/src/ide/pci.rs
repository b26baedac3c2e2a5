//! The PCI function of the controller: an Intel 82371SB PIIX3 IDE (8086:7010) with both
//! channels in ISA compatibility mode (the legacy ports and IRQs 14/15, which the VMM
//! wires outside PCI). Built with [`PiixIde::new`] it has no bus-master DMA: BAR 4 is
//! absent, so Linux's `ata_piix` reports "BAR4 is zero, falling back to PIO". Built with
//! [`PiixIde::with_bus_master`] BAR 4 is an I/O BAR of [`BUS_MASTER_PORTS`] ports for the
//! bus-master registers ([`BusMasterIde`](super::BusMasterIde)), and the VMM is told
//! through a hook where the guest puts it. The IDE timing registers exist so drivers and
//! firmware can program them; they change nothing here.

use super::BUS_MASTER_PORTS;
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
/// Slave IDE timing register (8 bits).
const SIDETIM: usize = 0x44;
/// Ultra DMA control register (8 bits; on later PIIX parts, written by `ata_piix`).
const UDMACTL: usize = 0x48;
/// Ultra DMA timing register (16 bits).
const UDMATIM: usize = 0x4a;
/// Status: fast back-to-back capable, medium DEVSEL timing (the real part's value).
const STATUS_PIIX: u16 = 0x0280;
/// BAR 4: the bus-master interface base address.
const BAR4: usize = reg::BAR0 + 4 * 4;
/// Command register: I/O space decoding enabled.
const COMMAND_IO: u8 = 0x01;

/// What the VMM is told when BAR 4 moves: `Some(port base)` or `None` (unmapped).
pub type BusMasterMap = Box<dyn FnMut(Option<u16>) + Send>;

/// The PIIX3 IDE PCI function.
pub struct PiixIde {
    /// Its configuration space.
    pub config: ConfigSpace,
    /// The BAR 4 hook, for a function with bus-master DMA.
    map: Option<BusMasterMap>,
    /// Where BAR 4 was last reported to be.
    mapped: Option<u16>,
}

impl std::fmt::Debug for PiixIde {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiixIde")
            .field("config", &self.config)
            .field("bus_master", &self.map.is_some())
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl Default for PiixIde {
    fn default() -> Self {
        Self::new()
    }
}

impl PiixIde {
    /// The function as after reset: IDE decode enabled on both channels, BARs 0-5 zero,
    /// no bus-master DMA (PIO only).
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
        config.make_writable(UDMACTL..UDMACTL + 1);
        config.make_writable(UDMATIM..UDMATIM + 2);
        PiixIde {
            config,
            map: None,
            mapped: None,
        }
    }

    /// The PCI function with BAR 4 (an I/O BAR of 16 ports) for the bus-master registers.
    /// `map` is called with `Some(port base)` whenever the guest places BAR 4 at an
    /// address (non-zero, the 16 ports below 64 KiB, and with I/O space decoding enabled
    /// in the command register: bit 0) and with `None` when it moves away or disables
    /// decoding, so the VMM can (re)insert the [`BusMasterIde`](super::BusMasterIde) on
    /// its port bus. Calls happen only on changes; a move from one base to another is
    /// `None` then `Some(new base)`. They come from inside the configuration write (so
    /// with this function's lock held by whoever called it).
    pub fn with_bus_master(map: BusMasterMap) -> Self {
        let mut d = Self::new();
        // An I/O BAR: bit 0 hard-wired to 1, the size bits read back 0 after all-ones.
        let mask = !(BUS_MASTER_PORTS as u32 - 1) & !0x3;
        d.config.bytes[BAR4..BAR4 + 4].copy_from_slice(&1u32.to_le_bytes());
        d.config.writable[BAR4..BAR4 + 4].copy_from_slice(&mask.to_le_bytes());
        d.map = Some(map);
        d
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

    /// Where the bus-master registers are decoded now: BAR 4's port base if the function
    /// has bus-master DMA, I/O decoding is on and the BAR holds a usable port address.
    pub fn bus_master_base(&self) -> Option<u16> {
        self.map.as_ref()?;
        if self.config.bytes[reg::COMMAND] & COMMAND_IO == 0 {
            return None;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.config.bytes[BAR4..BAR4 + 4]);
        let base = u32::from_le_bytes(b) & !0x3;
        // The whole block must fit in the 64 KiB I/O space (a BAR being sized holds
        // all-ones and is not an address).
        if base == 0 || u64::from(base) + BUS_MASTER_PORTS > 0x1_0000 {
            return None;
        }
        u16::try_from(base).ok()
    }

    /// Tell the VMM if BAR 4's decoding changed; a move is reported as `None` (away
    /// from the old base) followed by `Some(new base)`.
    fn update_mapping(&mut self) {
        let now = self.bus_master_base();
        if now == self.mapped {
            return;
        }
        let was = std::mem::replace(&mut self.mapped, now);
        if let Some(map) = self.map.as_mut() {
            if was.is_some() && now.is_some() {
                map(None);
            }
            map(now);
        }
    }
}

impl PciDevice for PiixIde {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let touches = |start: usize, len: usize| {
            offset < start + len && start < offset.saturating_add(data.len())
        };
        if touches(reg::COMMAND, 1) || touches(BAR4, 4) {
            self.update_mapping();
        }
    }
}
