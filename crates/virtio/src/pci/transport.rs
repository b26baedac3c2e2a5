//! [`VirtioPciDevice`]: one virtio device on the PCI bus.
//!
//! BAR 0 layout (offsets): 0x0000 common configuration, 0x1000 ISR status, 0x2000 device
//! configuration, 0x3000 queue notify registers (4 bytes per queue), 0x4000 MSI-X table,
//! 0x5000 MSI-X PBA. Drivers that leave MSI-X off get INTA (GSI from the `_PRT`) with
//! the ISR register. The BAR follows the guest: when the guest moves it or turns memory
//! decoding off and on, the MMIO range and the notify ioeventfds move with it.

use super::common_cfg::{status, CommonConfig, Effect, NO_VECTOR};
use crate::device::{Activation, ActiveQueue, GuestMemory, Interrupt, NeedsReset, VirtioDevice};
use kiln_devices::bus::{BusDevice, DeviceAction};
use kiln_devices::pci::config_space::{reg, ConfigSpace};
use kiln_devices::pci::msix::Msix;
use kiln_devices::pci::{PciDevice, PciHost};
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
const REGION: u64 = 0x1000;

/// virtio's PCI vendor ID.
const VENDOR_VIRTIO: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device ID.
const DEVICE_ID_BASE: u16 = 0x1040;
/// VIRTIO_F_VERSION_1.
const F_VERSION_1: u64 = 1 << 32;

/// virtio PCI capability types.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

/// An interrupt nobody listens to (a queue with VIRTIO_MSI_NO_VECTOR).
struct NoInterrupt;
impl Interrupt for NoInterrupt {
    fn trigger(&self) {}
}

/// ISR bit for a used-buffer notification.
const ISR_QUEUE: u8 = 1;
/// ISR bit for a configuration change.
const ISR_CONFIG: u8 = 2;

/// The INTx line: set the ISR bit, then pulse the GSI through its irqfd. The driver's
/// handler reads (and so clears) the ISR to see why; a pulse also suits the line being
/// shared with other devices, each of which has its own ISR.
struct IntxInterrupt {
    isr: Arc<AtomicU8>,
    bit: u8,
    fd: EventFd,
}

impl Interrupt for IntxInterrupt {
    fn trigger(&self) {
        self.isr.fetch_or(self.bit, Ordering::SeqCst);
        let _ = self.fd.write(1);
    }
}

/// A virtio device behind the modern PCI transport.
pub struct VirtioPciDevice {
    name: &'static str,
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    common: CommonConfig,
    msix: Msix,
    mem: GuestMemory,
    host: Arc<dyn PciHost>,
    kicks: Vec<EventFd>,
    bar_mapped: Option<u64>,
    me: Weak<Mutex<VirtioPciDevice>>,
    needs_reset: NeedsReset,
    activated: bool,
    /// The ISR status register (INTx only).
    isr: Arc<AtomicU8>,
    /// The INTx line: its GSI and irqfd.
    intx: Option<(u32, EventFd)>,
    /// Activations the device refused.
    pub activation_errors: u64,
}

/// The PCI class for a virtio device type.
fn class_for(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00, // network controller
        2 => 0x01_80_00, // mass storage, other
        3 => 0x07_80_00, // communication, other
        _ => 0xff_00_00,
    }
}

impl VirtioPciDevice {
    /// Put `device` behind a transport whose BAR starts at `bar_addr` (a multiple of
    /// [`BAR_SIZE`]); `gsis` gives one MSI-X vector each (at least one per queue plus one
    /// for configuration changes is best; Linux shares vectors when there are fewer).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        host: Arc<dyn PciHost>,
        gsis: &[u32],
        bar_addr: u64,
    ) -> io::Result<Arc<Mutex<VirtioPciDevice>>> {
        let device_type = device.device_type();
        let name = device.name();
        let mut config = ConfigSpace::new(
            VENDOR_VIRTIO,
            DEVICE_ID_BASE + device_type as u16,
            class_for(device_type),
            1,
        );
        config.set16(reg::SUBSYSTEM_VENDOR_ID, VENDOR_VIRTIO);
        config.set16(reg::SUBSYSTEM_ID, 0x40);
        config.add_mem_bar64(0, BAR_SIZE, bar_addr);
        // Firmware would leave memory decoding on; so does Kiln for direct boot.
        config.bytes[reg::COMMAND] |= kiln_devices::pci::config_space::COMMAND_MEMORY as u8;
        for (kind, offset, len) in [
            (CAP_COMMON, COMMON, REGION),
            (CAP_ISR, ISR, REGION),
            (CAP_DEVICE, DEVICE_CFG, REGION),
        ] {
            config.add_capability(&virtio_cap(kind, offset, len, None), &[0; 16]);
        }
        let queues = device.queue_max_sizes();
        let notify_len = (queues.len() as u64 * NOTIFY_MULTIPLIER as u64).max(4);
        config.add_capability(
            &virtio_cap(CAP_NOTIFY, NOTIFY, notify_len, Some(NOTIFY_MULTIPLIER)),
            &[0; 20],
        );
        let mut msix = Msix::new(gsis, host.clone())?;
        msix.add_capability(&mut config, 0, MSIX_TABLE as u32, MSIX_PBA as u32);
        let kicks = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        let common = CommonConfig::new(device.features() | F_VERSION_1, &queues);
        let dev = Arc::new(Mutex::new(VirtioPciDevice {
            name,
            config,
            device,
            common,
            msix,
            mem,
            host,
            kicks,
            bar_mapped: None,
            me: Weak::new(),
            needs_reset: NeedsReset::new(),
            activated: false,
            isr: Arc::new(AtomicU8::new(0)),
            intx: None,
            activation_errors: 0,
        }));
        {
            let mut d = kiln_devices::bus::lock(&dev);
            d.me = Arc::downgrade(&dev);
            d.update_bar_mapping();
            if d.bar_mapped.is_none() {
                return Err(io::Error::other(format!(
                    "{name}: cannot map BAR 0 at {bar_addr:#x}"
                )));
            }
        }
        Ok(dev)
    }

    /// The device model's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where BAR 0 is mapped now (`None` while the guest has it disabled).
    pub fn bar_address(&self) -> Option<u64> {
        self.bar_mapped
    }

    /// The device model's counters.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = self.device.counters();
        c.push(("msix_errors", self.msix.errors));
        c.push(("activation_errors", self.activation_errors));
        c
    }

    /// Stop the device (join its threads) and detach everything from the VM. Call before
    /// guest memory goes away.
    pub fn shutdown(&mut self) {
        self.device.reset();
        self.activated = false;
        self.msix.reset();
        self.unmap_bar();
        if let Some((gsi, fd)) = self.intx.take() {
            let _ = self.host.detach_irqfd(&fd, gsi);
        }
    }

    /// Map or unmap BAR 0 to match the command register and the BAR's address.
    fn update_bar_mapping(&mut self) {
        let addr = self.config.bar64_address(0);
        let want =
            (self.config.memory_enabled() && addr != 0 && addr.checked_add(BAR_SIZE).is_some())
                .then_some(addr);
        if want == self.bar_mapped {
            return;
        }
        self.unmap_bar();
        let (Some(addr), Some(me)) = (want, self.me.upgrade()) else {
            return;
        };
        if self.host.map_bar(self.name, addr, BAR_SIZE, me).is_err() {
            return; // overlaps something: the BAR stays dark, as on a bus conflict
        }
        self.bar_mapped = Some(addr);
        for (q, kick) in self.kicks.iter().enumerate() {
            let at = addr + NOTIFY + q as u64 * NOTIFY_MULTIPLIER as u64;
            // Without the ioeventfd, notify writes still reach `write` below.
            let _ = self.host.add_ioevent(kick, at);
        }
    }

    fn unmap_bar(&mut self) {
        if let Some(old) = self.bar_mapped.take() {
            for (q, kick) in self.kicks.iter().enumerate() {
                let at = old + NOTIFY + q as u64 * NOTIFY_MULTIPLIER as u64;
                let _ = self.host.remove_ioevent(kick, at);
            }
            self.host.unmap_bar(old);
        }
    }

    /// How a queue (`isr_bit` 1) or configuration change (`isr_bit` 2) interrupts: its
    /// MSI-X vector while MSI-X is enabled, else the INTx line with the ISR bit.
    fn interrupt_for(&self, vector: u16, isr_bit: u8) -> Arc<dyn Interrupt> {
        if !self.msix.enabled() {
            return match self.intx.as_ref().and_then(|(_, fd)| fd.try_clone().ok()) {
                Some(fd) => Arc::new(IntxInterrupt {
                    isr: self.isr.clone(),
                    bit: isr_bit,
                    fd,
                }),
                None => Arc::new(NoInterrupt),
            };
        }
        match (vector != NO_VECTOR)
            .then(|| self.msix.vector_eventfd(vector))
            .flatten()
        {
            Some(fd) => Arc::new(fd),
            None => Arc::new(NoInterrupt),
        }
    }

    /// Wire interrupt pin INTA to `gsi` (the `_PRT` entry for this device's slot), for
    /// drivers that do not enable MSI-X.
    pub fn set_intx(&mut self, gsi: u32) -> io::Result<()> {
        let fd = EventFd::new(EFD_NONBLOCK)?;
        let isr = self.isr.clone();
        self.host.attach_level_irqfd(
            &fd,
            gsi,
            Arc::new(move || isr.load(Ordering::SeqCst) != 0),
        )?;
        self.config.bytes[reg::INTERRUPT_PIN] = 1;
        self.config.bytes[reg::INTERRUPT_LINE] = gsi as u8;
        self.intx = Some((gsi, fd));
        Ok(())
    }

    fn reset_device(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.common.reset();
        self.needs_reset = NeedsReset::new();
        self.isr.store(0, Ordering::SeqCst);
        for k in &self.kicks {
            let _ = k.read();
        }
    }

    fn activate(&mut self) {
        match self.build_activation() {
            Ok(a) => match self.device.activate(a) {
                Ok(()) => self.activated = true,
                Err(_) => self.fail_activation(),
            },
            Err(()) => self.fail_activation(),
        }
    }

    fn fail_activation(&mut self) {
        self.activation_errors += 1;
        self.needs_reset.set();
    }

    fn build_activation(&self) -> Result<Activation, ()> {
        let mut queues = Vec::new();
        for (i, regs) in self.common.queues.iter().enumerate() {
            if !regs.enabled {
                queues.push(None);
                continue;
            }
            let mut queue = Queue::new(regs.max_size).map_err(|_| ())?;
            queue.set_size(regs.size);
            queue.set_desc_table_address(Some(regs.desc as u32), Some((regs.desc >> 32) as u32));
            queue
                .set_avail_ring_address(Some(regs.driver as u32), Some((regs.driver >> 32) as u32));
            queue.set_used_ring_address(Some(regs.device as u32), Some((regs.device >> 32) as u32));
            queue.set_ready(true);
            if !queue.is_valid(&self.mem) {
                return Err(());
            }
            queues.push(Some(ActiveQueue {
                queue,
                kick: self.kicks[i].try_clone().map_err(|_| ())?,
                interrupt: self.interrupt_for(regs.vector, ISR_QUEUE),
            }));
        }
        Ok(Activation {
            mem: self.mem.clone(),
            acked_features: self.common.driver_features,
            queues,
            config_interrupt: self.interrupt_for(self.common.config_vector, ISR_CONFIG),
            needs_reset: self.needs_reset.clone(),
        })
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            Effect::None => {}
            Effect::Reset => self.reset_device(),
            Effect::FeaturesOk => {
                let offered = self.common.device_features;
                let asked = self.common.driver_features;
                if asked & !offered != 0 || asked & F_VERSION_1 == 0 {
                    self.common.refuse_features();
                }
            }
            Effect::DriverOk => {
                if !self.activated {
                    self.activate();
                }
            }
        }
    }
}

/// A virtio vendor capability (virtio 1.2 §4.1.4): 16 bytes, 20 for the notify one.
fn virtio_cap(kind: u8, offset: u64, length: u64, multiplier: Option<u32>) -> Vec<u8> {
    let len = if multiplier.is_some() { 20 } else { 16 };
    let mut c = vec![0x09, 0, len, kind, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(m) = multiplier {
        c.extend_from_slice(&m.to_le_bytes());
    }
    c
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        if self.msix.covers(offset, data.len()) {
            self.msix.control_written(&self.config);
        }
        let touches =
            |start: usize, len: usize| offset < start + len && start < offset + data.len();
        if touches(reg::COMMAND, 2) || touches(reg::BAR0, 8) {
            self.update_bar_mapping();
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            COMMON..ISR => {
                let status_read =
                    offset == super::common_cfg::off::DEVICE_STATUS && data.len() == 1;
                self.common.read(offset, data, self.msix.len());
                if status_read && self.needs_reset.is_set() {
                    data[0] |= status::NEEDS_RESET;
                }
            }
            // Reading the ISR clears it (and so acknowledges the INTx interrupt).
            ISR => data[0] = self.isr.swap(0, Ordering::SeqCst),
            DEVICE_CFG..NOTIFY => self.device.read_config(offset - DEVICE_CFG, data),
            NOTIFY..MSIX_TABLE => {}
            MSIX_TABLE..MSIX_PBA => self.msix.table_read(offset - MSIX_TABLE, data),
            MSIX_PBA..BAR_SIZE => self.msix.pba_read(offset - MSIX_PBA, data),
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        match offset {
            COMMON..ISR => self.common_write(offset, data),
            DEVICE_CFG..NOTIFY => self.device.write_config(offset - DEVICE_CFG, data),
            NOTIFY..MSIX_TABLE => {
                // Reached only when the ioeventfd is not installed.
                let q = ((offset - NOTIFY) / NOTIFY_MULTIPLIER as u64) as usize;
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
            }
            MSIX_TABLE..MSIX_PBA => self.msix.table_write(offset - MSIX_TABLE, data),
            _ => {}
        }
        None
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.device.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::common_cfg::off;
    use crate::rng::VirtioRng;
    use kiln_devices::pci::host::RecordingHost;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn cfg_read(d: &mut VirtioPciDevice, off: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        d.config_read(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn bar_read(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn capabilities_bar_moves_and_intx() {
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let host = Arc::new(RecordingHost::default());
        let dev = VirtioPciDevice::new(
            Box::new(VirtioRng::new().unwrap()),
            mem.clone(),
            host.clone(),
            &[24, 25],
            0xc000_0000,
        )
        .unwrap();
        let mut d = kiln_devices::bus::lock(&dev);
        assert_eq!(host.take(), ["map 0xc0000000+0x8000", "ioevent 0xc0003000"]);
        assert_eq!(cfg_read(&mut d, 0, 4), 0x1044_1af4, "virtio-rng, modern");
        // The capability list: common, ISR, device, notify (virtio vendor caps), MSI-X.
        let mut kinds = Vec::new();
        let mut at = cfg_read(&mut d, reg::CAPABILITIES, 1) as usize;
        while at != 0 {
            let id = cfg_read(&mut d, at, 1);
            kinds.push(if id == 9 {
                (9, cfg_read(&mut d, at + 3, 1), cfg_read(&mut d, at + 8, 4))
            } else {
                (id, 0, 0)
            });
            at = cfg_read(&mut d, at + 1, 1) as usize;
        }
        assert_eq!(
            kinds,
            [
                (9, 1, 0),
                (9, 3, 0x1000),
                (9, 4, 0x2000),
                (9, 2, 0x3000),
                (0x11, 0, 0)
            ]
        );

        // The guest turns decoding off, moves the BAR, turns it on: everything follows.
        d.config_write(reg::COMMAND, &[0, 0]);
        assert_eq!(host.take(), ["-ioevent 0xc0003000", "unmap 0xc0000000"]);
        d.config_write(reg::BAR0, &0xd000_8000u32.to_le_bytes());
        d.config_write(reg::BAR0 + 4, &0u32.to_le_bytes());
        assert!(host.take().is_empty(), "nothing while decoding is off");
        d.config_write(reg::COMMAND, &[2, 0]);
        assert_eq!(host.take(), ["map 0xd0008000+0x8000", "ioevent 0xd000b000"]);
        assert_eq!(d.bar_address(), Some(0xd000_8000));

        // Without MSI-X the device interrupts through INTA and the ISR.
        d.set_intx(17).unwrap();
        assert_eq!(host.take(), ["attach 17"]);
        assert_eq!(cfg_read(&mut d, reg::INTERRUPT_PIN, 1), 1);
        assert_eq!(cfg_read(&mut d, reg::INTERRUPT_LINE, 1), 17);
        let mock = MockSplitQueue::new(&mem, 16);
        let w = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        mock.build_multiple_desc_chains(&[RawDescriptor::from(Descriptor::new(
            0x8_0000, 64, w, 0,
        ))])
        .unwrap();
        d.write(off::DEVICE_STATUS, &[3]);
        d.write(off::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        d.write(off::DRIVER_FEATURE, &1u32.to_le_bytes());
        d.write(off::DEVICE_STATUS, &[0xb]);
        assert_eq!(
            bar_read(&mut d, off::DEVICE_STATUS, 1),
            0xb,
            "features accepted"
        );
        d.write(off::QUEUE_SIZE, &16u16.to_le_bytes());
        d.write(off::QUEUE_DESC, &mock.desc_table_addr().0.to_le_bytes());
        d.write(off::QUEUE_DRIVER, &mock.avail_addr().0.to_le_bytes());
        d.write(off::QUEUE_DEVICE, &0x9_0000u64.to_le_bytes());
        d.write(off::QUEUE_ENABLE, &1u16.to_le_bytes());
        d.write(off::DEVICE_STATUS, &[0xf]);
        assert_eq!(bar_read(&mut d, off::DEVICE_STATUS, 1), 0xf, "activated");
        // The worker serves the chain posted before DRIVER_OK, then raises INTx.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut isr = 0;
        while isr == 0 && std::time::Instant::now() < deadline {
            isr = bar_read(&mut d, ISR, 1);
            std::thread::yield_now();
        }
        assert_eq!(isr, 1, "queue interrupt bit");
        assert_eq!(bar_read(&mut d, ISR, 1), 0, "reading cleared it");
        // A reset (status 0) stops the device; shutdown detaches everything.
        d.write(off::DEVICE_STATUS, &[0]);
        assert_eq!(bar_read(&mut d, off::DEVICE_STATUS, 1), 0);
        d.shutdown();
        assert_eq!(
            host.take(),
            ["-ioevent 0xd000b000", "unmap 0xd0008000", "detach 17"]
        );
    }
}
