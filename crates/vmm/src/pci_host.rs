//! [`VmPciHost`]: the VMM's side of PCI devices' resources ([`PciHost`]) over KVM: BARs on
//! the MMIO bus, ioeventfds, irqfds and MSI routes (through the one [`GsiRouting`]), and
//! level-triggered INTx lines: an irqfd with KVM's resample eventfd, and one small thread
//! per line that re-asserts it after the guest's EOI while the device still wants
//! attention.

use crate::interrupts::GsiRouting;
use kiln_devices::bus::{lock, Bus, SharedDevice};
use kiln_devices::pci::host::LevelFn;
use kiln_devices::pci::PciHost;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

/// PCI device resources of one VM.
pub struct VmPciHost {
    vm_fd: Arc<VmFd>,
    mmio: Arc<Bus>,
    routing: Mutex<GsiRouting>,
    level_lines: Mutex<Vec<LevelLine>>,
}

/// A level-triggered line's re-assert thread, keyed by the raw irqfd it serves.
struct LevelLine {
    irqfd: i32,
    resample: EventFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LevelLine {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread's blocking read; a full counter already means "wake".
        let _ = self.resample.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VmPciHost {
    fn drop(&mut self) {
        for mut line in lock(&self.level_lines).drain(..) {
            line.stop();
        }
    }
}

impl VmPciHost {
    /// Resources on `vm_fd` with BARs on `mmio`.
    pub fn new(vm_fd: Arc<VmFd>, mmio: Arc<Bus>) -> Self {
        let routing = Mutex::new(GsiRouting::new(vm_fd.clone()));
        VmPciHost {
            vm_fd,
            mmio,
            routing,
            level_lines: Mutex::new(Vec::new()),
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
        let r = self.vm_fd.unregister_irqfd(fd, gsi).map_err(os);
        let mut lines = lock(&self.level_lines);
        if let Some(i) = lines.iter().position(|l| l.irqfd == fd.as_raw_fd()) {
            lines.remove(i).stop();
        }
        r
    }

    fn attach_level_irqfd(&self, fd: &EventFd, gsi: u32, level: LevelFn) -> io::Result<()> {
        // Blocking: the thread sleeps in read() until KVM signals an EOI (or stop).
        let resample = EventFd::new(0)?;
        self.vm_fd
            .register_irqfd_with_resample(fd, &resample, gsi)
            .map_err(os)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (wait, assert, quit) = (resample.try_clone()?, fd.try_clone()?, stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("intx-{gsi}"))
            .spawn(move || {
                while wait.read().is_ok() && !quit.load(Ordering::SeqCst) {
                    if level() {
                        // The device still wants attention after the guest's EOI.
                        let _ = assert.write(1);
                    }
                }
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let _ = self.vm_fd.unregister_irqfd(fd, gsi);
                return Err(e);
            }
        };
        lock(&self.level_lines).push(LevelLine {
            irqfd: fd.as_raw_fd(),
            resample,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }
}
