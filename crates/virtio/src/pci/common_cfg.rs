//! The registers of the virtio PCI common configuration structure (virtio 1.2 §4.1.4.3):
//! feature negotiation, device status and per-queue setup, as the driver programs them.
//! Acting on them (activation, reset, interrupts) is the transport's job.

/// Register offsets.
pub mod off {
    /// device_feature_select (u32).
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// device_feature (u32, read-only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// driver_feature_select (u32).
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// driver_feature (u32).
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// config_msix_vector (u16).
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// num_queues (u16, read-only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// device_status (u8).
    pub const DEVICE_STATUS: u64 = 0x14;
    /// config_generation (u8, read-only).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// queue_select (u16).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// queue_size (u16).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// queue_msix_vector (u16).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// queue_enable (u16).
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// queue_notify_off (u16, read-only).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// queue_desc (u64).
    pub const QUEUE_DESC: u64 = 0x20;
    /// queue_driver: the available ring (u64).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// queue_device: the used ring (u64).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// End of the structure as Kiln implements it.
    pub const END: u64 = 0x38;
}

/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Device status bits.
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u8 = 1;
    /// DRIVER.
    pub const DRIVER: u8 = 2;
    /// DRIVER_OK: the device may process queues.
    pub const DRIVER_OK: u8 = 4;
    /// FEATURES_OK: the device accepted the driver's features.
    pub const FEATURES_OK: u8 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const NEEDS_RESET: u8 = 0x40;
    /// FAILED.
    pub const FAILED: u8 = 0x80;
}

/// One queue as the driver set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRegs {
    /// The largest size the device allows.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// The MSI-X vector for used-buffer notifications.
    pub vector: u16,
    /// Whether the driver enabled the queue.
    pub enabled: bool,
    /// Descriptor table, available ring, used ring addresses.
    pub desc: u64,
    /// Available ring.
    pub driver: u64,
    /// Used ring.
    pub device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What a register write asks the transport to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register change.
    None,
    /// The driver wrote 0 to device_status: reset the device.
    Reset,
    /// The driver set FEATURES_OK: check the features.
    FeaturesOk,
    /// The driver set DRIVER_OK: start the device.
    DriverOk,
}

/// The common configuration registers.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    /// Features the device offers.
    pub device_features: u64,
    /// Features the driver wrote.
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    /// The configuration-change MSI-X vector.
    pub config_vector: u16,
    /// device_status.
    pub status: u8,
    queue_select: u16,
    /// The queues.
    pub queues: Vec<QueueRegs>,
}

fn set_half(v: &mut u64, high: bool, data: u32) {
    *v = if high {
        (*v & 0xffff_ffff) | (data as u64) << 32
    } else {
        (*v & !0xffff_ffff) | data as u64
    };
}

impl CommonConfig {
    /// Registers for a device offering `device_features` with queues of these max sizes.
    pub fn new(device_features: u64, queue_max_sizes: &[u16]) -> Self {
        CommonConfig {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|&m| QueueRegs::new(m)).collect(),
        }
    }

    /// Back to the state after reset (the offered features stay).
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = CommonConfig::new(self.device_features, &sizes);
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(self.queue_select as usize)
    }

    /// A driver read; `vectors` is how many MSI-X vectors the device has (a vector the
    /// device cannot use reads back as [`NO_VECTOR`]).
    pub fn read(&self, offset: u64, data: &mut [u8], vectors: usize) -> u64 {
        let q = self.selected();
        let vector = |v: u16| if (v as usize) < vectors { v } else { NO_VECTOR } as u64;
        let value: u64 = match offset {
            off::DEVICE_FEATURE_SELECT => self.device_feature_select as u64,
            off::DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            off::DRIVER_FEATURE_SELECT => self.driver_feature_select as u64,
            off::DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            off::CONFIG_MSIX_VECTOR => vector(self.config_vector),
            off::NUM_QUEUES => self.queues.len() as u64,
            off::DEVICE_STATUS => self.status as u64,
            off::CONFIG_GENERATION => 0,
            off::QUEUE_SELECT => self.queue_select as u64,
            off::QUEUE_SIZE => q.map_or(0, |q| q.size as u64),
            off::QUEUE_MSIX_VECTOR => q.map_or(NO_VECTOR as u64, |q| vector(q.vector)),
            off::QUEUE_ENABLE => q.map_or(0, |q| q.enabled as u64),
            off::QUEUE_NOTIFY_OFF => self.queue_select as u64,
            off::QUEUE_DESC => q.map_or(0, |q| q.desc),
            0x24 => q.map_or(0, |q| q.desc >> 32),
            off::QUEUE_DRIVER => q.map_or(0, |q| q.driver),
            0x2c => q.map_or(0, |q| q.driver >> 32),
            off::QUEUE_DEVICE => q.map_or(0, |q| q.device),
            0x34 => q.map_or(0, |q| q.device >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(i).copied().unwrap_or(0);
        }
        value
    }

    /// A driver write. Queue registers change only while the queue is disabled and the
    /// device not yet started; features only before FEATURES_OK.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effect {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        let started = self.status & status::DRIVER_OK != 0;
        let select = self.queue_select as usize;
        let q = match self.queues.get_mut(select) {
            Some(q) if !q.enabled && !started => Some(q),
            _ => None,
        };
        match (offset, n) {
            (off::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (off::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (off::DRIVER_FEATURE, 4) if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => set_half(&mut self.driver_features, false, v as u32),
                    1 => set_half(&mut self.driver_features, true, v as u32),
                    _ => {}
                }
            }
            (off::CONFIG_MSIX_VECTOR, 2) => self.config_vector = v as u16,
            (off::DEVICE_STATUS, 1) => return self.write_status(v as u8),
            (off::QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (off::QUEUE_SIZE, 2) => {
                if let Some(q) = q {
                    q.size = v as u16;
                }
            }
            (off::QUEUE_MSIX_VECTOR, 2) => {
                if let Some(q) = self.queues.get_mut(select) {
                    q.vector = v as u16;
                }
            }
            (off::QUEUE_ENABLE, 2) => {
                if let Some(q) = q {
                    q.enabled = v == 1;
                }
            }
            (off::QUEUE_DESC..=0x37, 4 | 8) if offset.is_multiple_of(4) => {
                if let Some(q) = q {
                    let field = match offset & !7 {
                        off::QUEUE_DESC => &mut q.desc,
                        off::QUEUE_DRIVER => &mut q.driver,
                        _ => &mut q.device,
                    };
                    if n == 8 {
                        *field = v;
                    } else {
                        set_half(field, offset % 8 == 4, v as u32);
                    }
                }
            }
            _ => {}
        }
        Effect::None
    }

    fn write_status(&mut self, new: u8) -> Effect {
        if new == 0 {
            return Effect::Reset;
        }
        let old = self.status;
        // Bits only go from 0 to 1 until reset.
        self.status = old | new;
        let set = self.status & !old;
        if set & status::FEATURES_OK != 0 {
            Effect::FeaturesOk
        } else if set & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            Effect::DriverOk
        } else {
            Effect::None
        }
    }

    /// Take back FEATURES_OK (the driver asked for features the device does not offer).
    pub fn refuse_features(&mut self) {
        self.status &= !status::FEATURES_OK;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &CommonConfig, off: u64, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        c.read(off, &mut d, 2)
    }

    #[test]
    fn negotiates_and_sets_up_a_queue() {
        let mut c = CommonConfig::new(1 << 32 | 1 << 9, &[256]);
        c.write(off::DEVICE_FEATURE_SELECT, &1u32.to_le_bytes());
        assert_eq!(read(&c, off::DEVICE_FEATURE, 4), 1);
        c.write(off::DEVICE_FEATURE_SELECT, &0u32.to_le_bytes());
        assert_eq!(read(&c, off::DEVICE_FEATURE, 4), 1 << 9);
        assert_eq!(c.write(off::DEVICE_STATUS, &[1]), Effect::None);
        c.write(off::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        c.write(off::DRIVER_FEATURE, &1u32.to_le_bytes());
        assert_eq!(c.driver_features, 1 << 32);
        assert_eq!(c.write(off::DEVICE_STATUS, &[3 | 8]), Effect::FeaturesOk);
        c.write(off::DRIVER_FEATURE, &0u32.to_le_bytes());
        assert_eq!(
            c.driver_features,
            1 << 32,
            "features frozen after FEATURES_OK"
        );
        assert_eq!(read(&c, off::NUM_QUEUES, 2), 1);
        assert_eq!(read(&c, off::QUEUE_SIZE, 2), 256);
        c.write(off::QUEUE_SIZE, &128u16.to_le_bytes());
        c.write(off::QUEUE_MSIX_VECTOR, &1u16.to_le_bytes());
        assert_eq!(read(&c, off::QUEUE_MSIX_VECTOR, 2), 1);
        c.write(off::QUEUE_MSIX_VECTOR, &5u16.to_le_bytes());
        assert_eq!(read(&c, off::QUEUE_MSIX_VECTOR, 2), NO_VECTOR as u64);
        c.write(off::QUEUE_DESC, &0x1000u32.to_le_bytes());
        c.write(off::QUEUE_DESC + 4, &0x2u32.to_le_bytes());
        c.write(off::QUEUE_DRIVER, &0x3000u64.to_le_bytes());
        c.write(off::QUEUE_DEVICE, &0x4000u32.to_le_bytes());
        c.write(off::QUEUE_ENABLE, &1u16.to_le_bytes());
        c.write(off::QUEUE_DESC, &0u32.to_le_bytes());
        let q = &c.queues[0];
        assert_eq!(
            (q.size, q.desc, q.driver, q.device, q.enabled),
            (128, 0x2_0000_1000, 0x3000, 0x4000, true)
        );
        assert_eq!(c.write(off::DEVICE_STATUS, &[0xf]), Effect::DriverOk);
        // A queue that does not exist reads as absent.
        c.write(off::QUEUE_SELECT, &7u16.to_le_bytes());
        assert_eq!(read(&c, off::QUEUE_SIZE, 2), 0);
        c.write(off::QUEUE_ENABLE, &1u16.to_le_bytes());
        assert_eq!(c.write(off::DEVICE_STATUS, &[0]), Effect::Reset);
        c.reset();
        assert_eq!(
            (c.status, c.queues[0].enabled, c.queues[0].size),
            (0, false, 256)
        );
    }

    #[test]
    fn driver_ok_needs_features_ok() {
        let mut c = CommonConfig::new(1 << 32, &[8]);
        assert_eq!(c.write(off::DEVICE_STATUS, &[7]), Effect::None);
        assert_eq!(c.write(off::DEVICE_STATUS, &[0xf]), Effect::FeaturesOk);
        c.refuse_features();
        assert_eq!(read(&c, off::DEVICE_STATUS, 1), 7);
    }
}
