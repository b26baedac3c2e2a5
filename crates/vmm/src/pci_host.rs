//! [`VmPciHost`]: the VMM's side of PCI devices' resources ([`PciHost`]) over KVM: BARs on
//! the MMIO bus, ioeventfds, irqfds and MSI routes (through the one [`GsiRouting`]).

use crate::interrupts::GsiRouting;
use kiln_devices::bus::{lock, Bus, SharedDevice};
use kiln_devices::pci::PciHost;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::io;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// PCI device resources of one VM.
pub struct VmPciHost {
    vm_fd: Arc<VmFd>,
    mmio: Arc<Bus>,
    routing: Mutex<GsiRouting>,
}

impl VmPciHost {
    /// Resources on `vm_fd` with BARs on `mmio`.
    pub fn new(vm_fd: Arc<VmFd>, mmio: Arc<Bus>) -> Self {
        let routing = Mutex::new(GsiRouting::new(vm_fd.clone()));
        VmPciHost {
            vm_fd,
            mmio,
            routing,
        }
    }
}

fn os(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl PciHost for VmPciHost {
    fn map_bar(
        &self,
        name: &'static str,
        addr: u64,
        len: u64,
        device: SharedDevice,
    ) -> io::Result<()> {
        self.mmio
            .insert(name, addr, len, device)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn unmap_bar(&self, addr: u64) {
        self.mmio.remove(addr);
    }

    fn add_ioevent(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        self.vm_fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(os)
    }

    fn remove_ioevent(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        self.vm_fd
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(os)
    }

    fn set_msi_route(&self, gsi: u32, addr: u64, data: u32) -> io::Result<()> {
        lock(&self.routing).set_msi(gsi, addr, data)
    }

    fn attach_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.vm_fd.register_irqfd(fd, gsi).map_err(os)
    }

    fn detach_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()> {
        self.vm_fd.unregister_irqfd(fd, gsi).map_err(os)
    }
}
