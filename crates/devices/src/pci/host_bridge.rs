//! The host bridge at 00:00.0, compatible with Intel's 440FX (8086:1237), the chipset
//! SeaBIOS and every PC guest know. It holds the PAM registers (0x59-0x5f) that map the
//! legacy ROM area 0xC0000-0xFFFFF as ROM, read-only RAM or RAM; the VMM acts on their
//! changes through a [`PamHook`] (BIOS shadowing). Its subsystem IDs are QEMU's
//! (1af4:1100), which is how SeaBIOS recognises a machine whose fw_cfg it may use.

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
/// Subsystem vendor: Red Hat (QEMU's virtual machines).
pub const SUBSYSTEM_VENDOR_QEMU: u16 = 0x1af4;
/// Subsystem: "QEMU virtual machine".
pub const SUBSYSTEM_QEMU_VM: u16 = 0x1100;

/// Called with the PAM registers after a guest write changed any of them.
pub type PamHook = Box<dyn FnMut(&[u8; PAM_COUNT]) + Send>;

/// The host bridge.
pub struct HostBridge {
    /// Its configuration space.
    pub config: ConfigSpace,
    pam_hook: Option<PamHook>,
}

impl std::fmt::Debug for HostBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBridge")
            .field("pam", &self.pam())
            .field("pam_hook", &self.pam_hook.is_some())
            .finish()
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        let mut config = ConfigSpace::new(VENDOR_INTEL, DEVICE_I440FX, CLASS_HOST_BRIDGE, 0x02);
        config.make_writable(PAM0..PAM0 + PAM_COUNT);
        config.bytes[SMRAM] = 0x02;
        config.bytes[super::config_space::reg::SUBSYSTEM_VENDOR_ID..][..2]
            .copy_from_slice(&SUBSYSTEM_VENDOR_QEMU.to_le_bytes());
        config.bytes[super::config_space::reg::SUBSYSTEM_ID..][..2]
            .copy_from_slice(&SUBSYSTEM_QEMU_VM.to_le_bytes());
        HostBridge {
            config,
            pam_hook: None,
        }
    }
}

impl HostBridge {
    /// The PAM registers as the guest last wrote them.
    pub fn pam(&self) -> [u8; PAM_COUNT] {
        let mut p = [0u8; PAM_COUNT];
        p.copy_from_slice(&self.config.bytes[PAM0..PAM0 + PAM_COUNT]);
        p
    }

    /// Have `hook` called whenever a guest write changes the PAM registers.
    pub fn set_pam_hook(&mut self, hook: PamHook) {
        self.pam_hook = Some(hook);
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let before = self.pam();
        self.config.write(offset, data);
        let after = self.pam();
        if after != before {
            if let Some(hook) = self.pam_hook.as_mut() {
                hook(&after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn pam_changes_reach_the_hook_once_each() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hb = HostBridge::default();
        let log = seen.clone();
        hb.set_pam_hook(Box::new(move |p| log.lock().unwrap().push(*p)));
        hb.config_write(PAM0, &[0x30]);
        hb.config_write(PAM0, &[0x30]); // no change
        hb.config_write(0x04, &[0x06]); // the command register: not PAM
        hb.config_write(PAM0 + 1, &[0x33, 0x33]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0][0], 0x30);
        assert_eq!(seen[1][..3], [0x30, 0x33, 0x33]);
    }

    #[test]
    fn reads_as_qemus_i440fx() {
        let mut hb = HostBridge::default();
        let mut d = [0u8; 4];
        hb.config_read(0x2c, &mut d);
        assert_eq!(d, [0xf4, 0x1a, 0x00, 0x11]);
    }
}
