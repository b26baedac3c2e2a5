//! What a PCI device asks of the VMM: putting a BAR on the MMIO bus where the guest placed
//! it, ioeventfds on doorbell registers, and MSI routes with their irqfds. Device code
//! calls this trait; the VMM implements it over KVM, so no ioctl appears in device code.

use crate::bus::SharedDevice;
use std::io;
use vmm_sys_util::eventfd::EventFd;

/// The VMM side of a PCI device's resources.
pub trait PciHost: Send + Sync {
    /// Route MMIO accesses to `addr..addr+len` to `device` (offsets relative to `addr`).
    /// Fails when the range overlaps something already there; the BAR then stays unmapped.
    fn map_bar(
        &self,
        name: &'static str,
        addr: u64,
        len: u64,
        device: SharedDevice,
    ) -> io::Result<()>;
    /// Stop routing the range that starts at `addr`.
    fn unmap_bar(&self, addr: u64);
    /// Have KVM signal `fd` on any guest write to MMIO address `addr` without an exit to
    /// user space.
    fn add_ioevent(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
    /// Undo [`add_ioevent`](PciHost::add_ioevent).
    fn remove_ioevent(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
    /// Route `gsi` to the MSI message (`addr`, `data`).
    fn set_msi_route(&self, gsi: u32, addr: u64, data: u32) -> io::Result<()>;
    /// Inject `gsi` whenever `fd` is written (KVM irqfd). KVM injects at once if `fd` is
    /// already signalled, so a pending MSI-X vector fires when it is unmasked.
    fn attach_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Undo [`attach_irqfd`](PciHost::attach_irqfd) (or
    /// [`attach_level_irqfd`](PciHost::attach_level_irqfd)); writes to `fd` then just
    /// accumulate.
    fn detach_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
    /// Drive the level-triggered line `gsi` (PCI INTx) from `fd`: a write asserts the line
    /// until the guest's end of interrupt; then, while `level()` still says the device
    /// wants attention, the line is asserted again. Without this, an interrupt raised
    /// while the guest is still handling the previous one is a pulse the interrupt
    /// controller drops. The default is a plain irqfd (enough for hosts without EOI).
    fn attach_level_irqfd(&self, fd: &EventFd, gsi: u32, level: LevelFn) -> io::Result<()> {
        let _ = level;
        self.attach_irqfd(fd, gsi)
    }
}

/// Whether a level-triggered interrupt line should be asserted (see
/// [`PciHost::attach_level_irqfd`]).
pub type LevelFn = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// A [`PciHost`] that grants everything and records each request as a line of text
/// ("map 0xc0000000+0x8000", "ioevent 0x...", "route 24 0xfee00000 0x41", "attach 24",
/// ...), for testing devices' resource handling without KVM.
#[derive(Default)]
pub struct RecordingHost(std::sync::Mutex<Vec<String>>);

impl RecordingHost {
    /// The requests since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *crate::bus::lock(&self.0))
    }

    fn push(&self, line: String) {
        crate::bus::lock(&self.0).push(line);
    }
}

impl PciHost for RecordingHost {
    fn map_bar(&self, _: &'static str, a: u64, l: u64, _: SharedDevice) -> io::Result<()> {
        self.push(format!("map {a:#x}+{l:#x}"));
        Ok(())
    }
    fn unmap_bar(&self, a: u64) {
        self.push(format!("unmap {a:#x}"));
    }
    fn add_ioevent(&self, _: &EventFd, a: u64) -> io::Result<()> {
        self.push(format!("ioevent {a:#x}"));
        Ok(())
    }
    fn remove_ioevent(&self, _: &EventFd, a: u64) -> io::Result<()> {
        self.push(format!("-ioevent {a:#x}"));
        Ok(())
    }
    fn set_msi_route(&self, gsi: u32, addr: u64, data: u32) -> io::Result<()> {
        self.push(format!("route {gsi} {addr:#x} {data:#x}"));
        Ok(())
    }
    fn attach_irqfd(&self, _: &EventFd, gsi: u32) -> io::Result<()> {
        self.push(format!("attach {gsi}"));
        Ok(())
    }
    fn detach_irqfd(&self, _: &EventFd, gsi: u32) -> io::Result<()> {
        self.push(format!("detach {gsi}"));
        Ok(())
    }
}
