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
    /// Undo [`attach_irqfd`](PciHost::attach_irqfd); writes to `fd` then just accumulate.
    fn detach_irqfd(&self, fd: &EventFd, gsi: u32) -> io::Result<()>;
}
