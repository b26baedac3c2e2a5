//! The VM's IDE controller: which image sits at which of the four IDE positions, the
//! images opened through the `block` crate, both channels' ports on the port bus, their
//! ISA interrupts (14 and 15) as KVM irqfds, and the PIIX IDE function on PCI. Built only
//! when the configuration has an IDE disk or a CD-ROM, so other guests see no controller.
//!
//! The bus-master (DMA) registers live behind the PCI function's BAR 4, an I/O BAR the
//! firmware places: the function tells this module where, and the registers are moved on
//! the port bus accordingly (through a weak reference: the bus holds the PCI devices).
//!
//! Positions follow QEMU: 0 primary master, 1 primary slave, 2 secondary master,
//! 3 secondary slave; the CD-ROM takes 2; disks without an index take the free
//! positions in order.

use crate::config::{DiskBus, VmConfig};
use crate::error::{kvm_err, os_err, Result, VmmError};
use crate::memory::GuestMem;
use crate::resources::Resources;
use kiln_devices::bus::Bus;
use kiln_devices::ide::{
    BusMasterIde, IdeChannel, IdeCommandBlock, IdeControlBlock, IdeIrq, IdeMedia, PiixIde,
    BUS_MASTER_PORTS, COMMAND_PORTS, CONTROL_PORTS, PRIMARY_COMMAND, PRIMARY_CONTROL, PRIMARY_IRQ,
    SECONDARY_COMMAND, SECONDARY_CONTROL, SECONDARY_IRQ,
};
use kiln_devices::pci::PciRoot;
use kvm_ioctls::VmFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Positions on the controller.
pub const POSITIONS: usize = 4;
/// The CD-ROM's position (secondary master).
pub const CDROM_POSITION: usize = 2;
/// Where an ISO 9660 image has its volume descriptor signature "CD001".
const ISO_SIGNATURE_AT: u64 = 0x8001;

/// The controller's channels, for metrics.
#[derive(Default)]
pub struct IdeDevices {
    /// Primary and secondary channel (empty when the VM has no IDE controller).
    pub channels: Vec<Arc<Mutex<IdeChannel>>>,
}

/// Which configured item goes where: `Some(Ok(disk index))` or `Some(Err(()))` for the
/// CD-ROM.
fn positions(config: &VmConfig) -> Result<[Option<std::result::Result<usize, ()>>; POSITIONS]> {
    let mut at: [Option<std::result::Result<usize, ()>>; POSITIONS] = [None; POSITIONS];
    if config.cdrom.is_some() {
        at[CDROM_POSITION] = Some(Err(()));
    }
    let ide: Vec<(usize, Option<u8>)> = config
        .disks
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d.bus {
            DiskBus::Ide { index } => Some((i, index)),
            DiskBus::Virtio => None,
        })
        .collect();
    for &(i, index) in &ide {
        if let Some(index) = index {
            let slot = at.get_mut(usize::from(index)).ok_or_else(|| {
                VmmError::Config(format!(
                    "IDE index {index} does not exist (0-3: primary master/slave, secondary master/slave)"
                ))
            })?;
            if slot.is_some() {
                return Err(VmmError::Config(format!(
                    "two IDE devices at index {index}{}",
                    if usize::from(index) == CDROM_POSITION && config.cdrom.is_some() {
                        " (the CD-ROM's place)"
                    } else {
                        ""
                    }
                )));
            }
            *slot = Some(Ok(i));
        }
    }
    for &(i, index) in &ide {
        if index.is_none() {
            let slot = at.iter_mut().find(|s| s.is_none()).ok_or_else(|| {
                VmmError::Config("more than four IDE devices (disks and CD-ROM)".into())
            })?;
            *slot = Some(Ok(i));
        }
    }
    Ok(at)
}

/// Open the CD-ROM image and check that it is an ISO 9660 image.
fn open_cdrom(path: &Path) -> Result<Box<dyn kiln_block::BlockDevice>> {
    let opts = kiln_block::OpenOptions {
        read_only: true,
        format: None,
        no_backing: false,
        share: kiln_block::Share::Readers,
    };
    let mut image =
        kiln_block::open(path, &opts).map_err(|e| VmmError::Config(format!("--cdrom: {e}")))?;
    let mut sig = [0u8; 5];
    let is_iso = image.size() >= ISO_SIGNATURE_AT + 5
        && image.read_at(&mut sig, ISO_SIGNATURE_AT).is_ok()
        && &sig == b"CD001";
    if !is_iso {
        return Err(VmmError::Config(format!(
            "--cdrom {}: not an ISO 9660 image (no CD001 volume descriptor at byte 32769)",
            path.display()
        )));
    }
    Ok(image)
}

fn irq(vm_fd: &VmFd, gsi: u32) -> Result<IdeIrq> {
    let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(os_err("eventfd"))?;
    vm_fd
        .register_irqfd(&evt, gsi)
        .map_err(kvm_err("KVM_IRQFD"))?;
    Ok(IdeIrq(Some(evt)))
}

impl IdeDevices {
    /// Build the controller `config` asks for (or nothing): images opened, ports on `pio`,
    /// interrupts on `vm_fd`, the PCI function on `root`.
    pub fn build(
        config: &VmConfig,
        vm_fd: &VmFd,
        pio: &Arc<Bus>,
        res: &mut Resources,
        root: &PciRoot,
        memory: &GuestMem,
    ) -> Result<IdeDevices> {
        let at = positions(config)?;
        if at.iter().all(Option::is_none) {
            return Ok(IdeDevices::default());
        }
        let mut media: Vec<Option<IdeMedia>> = Vec::with_capacity(POSITIONS);
        for item in at {
            media.push(match item {
                None => None,
                Some(Err(())) => {
                    let path = config.cdrom.as_deref().unwrap_or(Path::new(""));
                    Some(IdeMedia::Cdrom(open_cdrom(path)?))
                }
                Some(Ok(i)) => {
                    let d = &config.disks[i];
                    let opts = kiln_block::OpenOptions {
                        read_only: d.read_only,
                        format: d.format,
                        no_backing: false,
                        share: kiln_block::Share::Readers,
                    };
                    let mut image = kiln_block::open(&d.path, &opts)
                        .map_err(|e| VmmError::Config(format!("disk: {e}")))?;
                    if let Some(bytes) = d.l2_cache_size {
                        image
                            .set_l2_cache_size(bytes)
                            .map_err(|e| VmmError::Config(format!("disk: {e}")))?;
                    }
                    Some(IdeMedia::Disk(image))
                }
            });
        }
        let mut it = media.into_iter();
        let mut next = || it.next().flatten();
        let mut me = IdeDevices::default();
        let channels = [
            (
                "ide0-cmd",
                PRIMARY_COMMAND,
                "ide0-ctl",
                PRIMARY_CONTROL,
                PRIMARY_IRQ,
            ),
            (
                "ide1-cmd",
                SECONDARY_COMMAND,
                "ide1-ctl",
                SECONDARY_CONTROL,
                SECONDARY_IRQ,
            ),
        ];
        for (cmd_name, command, ctl_name, control, gsi) in channels {
            let (master, slave) = (next(), next());
            let channel = Arc::new(Mutex::new(IdeChannel::new(master, slave, irq(vm_fd, gsi)?)));
            res.reserve_ports(cmd_name, command, COMMAND_PORTS)?;
            // The data register takes `rep insw`/`rep outsw` strings whole.
            pio.insert_stream(
                cmd_name,
                command,
                COMMAND_PORTS,
                Arc::new(Mutex::new(IdeCommandBlock(channel.clone()))),
            )
            .map_err(|e| VmmError::Config(e.to_string()))?;
            res.reserve_ports(ctl_name, control, CONTROL_PORTS)?;
            pio.insert(
                ctl_name,
                control,
                CONTROL_PORTS,
                Arc::new(Mutex::new(IdeControlBlock(channel.clone()))),
            )
            .map_err(|e| VmmError::Config(e.to_string()))?;
            me.channels.push(channel);
        }
        let bus_master = Arc::new(Mutex::new(BusMasterIde::new(
            me.channels[0].clone(),
            me.channels[1].clone(),
            memory.clone(),
        )));
        let bus = Arc::downgrade(pio);
        let mut placed: Option<u16> = None;
        let map = move |base: Option<u16>| {
            let Some(bus) = bus.upgrade() else { return };
            if let Some(old) = placed.take() {
                bus.remove(u64::from(old));
            }
            if let Some(b) = base {
                // A guest placing BAR 4 over another device's ports gets no DMA engine.
                if bus
                    .insert(
                        "ide-busmaster",
                        u64::from(b),
                        BUS_MASTER_PORTS,
                        bus_master.clone(),
                    )
                    .is_ok()
                {
                    placed = Some(b);
                }
            }
        };
        root.add(Arc::new(Mutex::new(PiixIde::with_bus_master(Box::new(
            map,
        )))))
        .ok_or_else(|| VmmError::Config("no free PCI slot for the IDE controller".into()))?;
        Ok(me)
    }

    /// Each channel's counters.
    pub fn metrics(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        self.channels
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("ide{i}"), kiln_devices::bus::lock(c).metrics()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, GuestConfig};

    fn disk(index: Option<u8>) -> DiskConfig {
        DiskConfig {
            path: "d.img".into(),
            format: None,
            read_only: false,
            serial: None,
            bus: DiskBus::Ide { index },
            l2_cache_size: None,
        }
    }

    fn config(disks: Vec<DiskConfig>, cdrom: bool) -> VmConfig {
        let mut c = VmConfig::new(GuestConfig::Firmware(crate::FirmwareConfig::new("b")));
        c.disks = disks;
        c.cdrom = cdrom.then(|| "cd.iso".into());
        c
    }

    #[test]
    fn positions_follow_qemu() {
        let at = positions(&config(vec![disk(None), disk(None)], true)).unwrap();
        assert_eq!(at, [Some(Ok(0)), Some(Ok(1)), Some(Err(())), None]);
        let at = positions(&config(vec![disk(Some(3)), disk(None)], false)).unwrap();
        assert_eq!(at, [Some(Ok(1)), None, None, Some(Ok(0))]);
        let e = positions(&config(vec![disk(Some(2))], true)).unwrap_err();
        assert!(e.to_string().contains("the CD-ROM's place"), "{e}");
        let e = positions(&config(vec![disk(Some(4))], false)).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = positions(&config(vec![disk(None); 4], true)).unwrap_err();
        assert!(e.to_string().contains("more than four"), "{e}");
        let mut virtio = disk(None);
        virtio.bus = DiskBus::Virtio;
        assert_eq!(positions(&config(vec![virtio], false)).unwrap(), [None; 4]);
    }

    #[test]
    fn a_cdrom_must_be_an_iso() {
        let dir = std::env::temp_dir().join(format!("kiln-cd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.iso");
        std::fs::write(&p, vec![0u8; 64 << 10]).unwrap();
        let e = open_cdrom(&p).err().unwrap().to_string();
        assert!(e.contains("not an ISO 9660 image"), "{e}");
        let mut iso = vec![0u8; 64 << 10];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        std::fs::write(&p, iso).unwrap();
        assert!(open_cdrom(&p).is_ok());
        let e = open_cdrom(&dir.join("missing.iso"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--cdrom"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
