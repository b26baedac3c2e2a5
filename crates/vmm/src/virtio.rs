//! The VM's virtio devices: each configured disk becomes a virtio-blk device, each network
//! a virtio-net device on its TAP, `rng` a virtio-rng device, `virtio_console` a virtio
//! console and `vsock` a virtio-vsock device on a host Unix socket, each behind the modern PCI transport with a BAR from the 32-bit MMIO hole, one
//! MSI GSI per vector and INTA on its slot's `_PRT` GSI. [`VirtioDevices`] stops their
//! threads before guest memory goes away.

use crate::config::VmConfig;
use crate::error::{Result, VmmError};
use crate::memory::GuestMem;
use crate::pci_host::VmPciHost;
use crate::resources::Resources;
use kiln_devices::bus::{lock, Bus};
use kiln_devices::pci::{PciHost, PciRoot};
use kiln_virtio::blk::VirtioBlk;
use kiln_virtio::console::{ConsoleInput, VirtioConsole};
use kiln_virtio::net::{Tap, VirtioNet};
use kiln_virtio::pci::{VirtioPciDevice, BAR_SIZE};
use kiln_virtio::rng::VirtioRng;
use kiln_virtio::vsock::VirtioVsock;
use kiln_virtio::VirtioDevice;
use kvm_ioctls::VmFd;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// The VM's virtio devices.
#[derive(Default)]
pub struct VirtioDevices {
    devices: Vec<Arc<Mutex<VirtioPciDevice>>>,
    /// Where input for the virtio console goes, when there is one.
    pub console_input: Option<ConsoleInput>,
}

impl VirtioDevices {
    /// Create the devices `config` asks for and put them on `root`; a virtio console
    /// (when `config` asks for one) writes to `console_out`.
    pub fn build(
        config: &VmConfig,
        console_out: Option<Box<dyn Write + Send>>,
        memory: &GuestMem,
        vm_fd: &Arc<VmFd>,
        mmio: &Arc<Bus>,
        root: &PciRoot,
        res: &mut Resources,
    ) -> Result<Self> {
        let mut me = VirtioDevices::default();
        if !config.wants_virtio() {
            return Ok(me);
        }
        let host: Arc<dyn PciHost> = Arc::new(VmPciHost::new(vm_fd.clone(), mmio.clone()));
        for d in config
            .disks
            .iter()
            .filter(|d| d.bus == crate::config::DiskBus::Virtio)
        {
            let opts = kiln_block::OpenOptions {
                read_only: d.read_only,
                format: d.format,
                no_backing: false,
                share: kiln_block::Share::Readers,
            };
            let mut disk = kiln_block::open(&d.path, &opts)
                .map_err(|e| VmmError::Config(format!("disk: {e}")))?;
            if let Some(bytes) = d.l2_cache_size {
                disk.set_l2_cache_size(bytes)
                    .map_err(|e| VmmError::Config(format!("disk: {e}")))?;
            }
            me.add(
                Box::new(VirtioBlk::new(disk, d.serial.clone())),
                memory,
                &host,
                root,
                res,
            )?;
        }
        for n in &config.nets {
            let net = Tap::open_or_create(&n.tap)
                .and_then(|tap| VirtioNet::new(tap, n.mac))
                .map_err(|e| VmmError::Config(format!("network: {e}")))?;
            me.add(Box::new(net), memory, &host, root, res)?;
        }
        if config.rng {
            let rng = VirtioRng::new()
                .map_err(|e| VmmError::Config(format!("virtio-rng: /dev/urandom: {e}")))?;
            me.add(Box::new(rng), memory, &host, root, res)?;
        }
        if let Some(v) = &config.vsock {
            let vsock = VirtioVsock::new(u64::from(v.cid), &v.uds_path)
                .map_err(|e| VmmError::Config(e.to_string()))?;
            me.add(Box::new(vsock), memory, &host, root, res)?;
        }
        if let Some(out) = console_out {
            let (console, input) = VirtioConsole::new(out)
                .map_err(|e| VmmError::Config(format!("virtio-console: {e}")))?;
            me.add(Box::new(console), memory, &host, root, res)?;
            me.console_input = Some(input);
        }
        Ok(me)
    }

    fn add(
        &mut self,
        device: Box<dyn VirtioDevice>,
        memory: &GuestMem,
        host: &Arc<dyn PciHost>,
        root: &PciRoot,
        res: &mut Resources,
    ) -> Result<()> {
        let name = device.name();
        let vectors = device.queue_max_sizes().len() + 1;
        let gsis = (0..vectors)
            .map(|_| res.allocate_msi_gsi(name))
            .collect::<Result<Vec<_>>>()?;
        let bar = res.allocate_mmio(name, BAR_SIZE, BAR_SIZE, true)?;
        let dev = VirtioPciDevice::new(device, memory.clone(), host.clone(), &gsis, bar.start())
            .map_err(|e| VmmError::Config(format!("{name}: {e}")))?;
        let slot = root
            .add(dev.clone())
            .ok_or_else(|| VmmError::Config(format!("{name}: the PCI bus is full")))?;
        lock(&dev)
            .set_intx(kiln_arch::acpi::pci_intx_gsi(slot as u8, 0))
            .map_err(|e| VmmError::Config(format!("{name}: INTx irqfd: {e}")))?;
        self.devices.push(dev);
        Ok(())
    }

    /// Stop every device's threads; returns each device's name and counters.
    pub fn shutdown(&mut self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        let mut metrics = Vec::new();
        for (i, d) in self.devices.drain(..).enumerate() {
            let mut d = lock(&d);
            d.shutdown();
            metrics.push((format!("{}#{i}", d.name()), d.counters()));
        }
        metrics
    }
}

impl Drop for VirtioDevices {
    fn drop(&mut self) {
        self.shutdown();
    }
}
