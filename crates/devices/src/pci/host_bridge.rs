//! The host bridge at 00:00.0, compatible with Intel's 440FX (8086:1237), the chipset
//! SeaBIOS and every PC guest know. It holds the PAM registers (0x59-0x5f) that map the
//! legacy ROM area 0xC0000-0xFFFFF as ROM, read-only RAM or RAM; the VMM acts on their
//! changes (BIOS shadowing comes with BIOS boot).

use super::config_space::ConfigSpace;
use super::root::PciDevice;

/// Intel's vendor ID.
pub const VENDOR_INTEL: u16 = 0x8086;
/// 82441FX PMC (the 440FX host bridge).
pub const DEVICE_I440FX: u16 = 0x1237;
/// Class: bridge, host bridge.
pub const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;
/// First PAM register.
pub const PAM0: usize = 0x59;
/// PAM registers (PAM0-PAM6).
pub const PAM_COUNT: usize = 7;
/// SMRAM control register.
pub const SMRAM: usize = 0x72;

/// The host bridge.
#[derive(Clone, Debug)]
pub struct HostBridge {
    /// Its configuration space.
    pub config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        let mut config = ConfigSpace::new(VENDOR_INTEL, DEVICE_I440FX, CLASS_HOST_BRIDGE, 0x02);
        config.make_writable(PAM0..PAM0 + PAM_COUNT);
        config.bytes[SMRAM] = 0x02;
        HostBridge { config }
    }
}

impl HostBridge {
    /// The PAM registers as the guest last wrote them.
    pub fn pam(&self) -> [u8; PAM_COUNT] {
        let mut p = [0u8; PAM_COUNT];
        p.copy_from_slice(&self.config.bytes[PAM0..PAM0 + PAM_COUNT]);
        p
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
}
