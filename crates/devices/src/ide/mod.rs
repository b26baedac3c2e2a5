//! An IDE controller compatible with Intel's PIIX3 (82371SB) in ISA compatibility mode:
//! two channels of legacy ports and edge-triggered ISA interrupts, each with a master and
//! a slave position holding an ATA hard disk or an ATAPI CD/DVD-ROM, moving data by PIO
//! and, when the VMM adds the bus-master function ([`BusMasterIde`] behind the PCI
//! function's BAR 4, [`PiixIde::with_bus_master`]), by bus-master DMA straight between
//! the images and guest memory. Without it the PCI function has no BAR 4 and the devices
//! advertise no DMA, so guests use PIO.
//!
//! Hand-written for Kiln: no maintained Rust crate emulates PIIX IDE or ATAPI for a VMM
//! (rust-vmm has none, and the emulators that do are C: QEMU, Bochs, SeaBIOS's driver on
//! the other side). The behaviour follows the ATA/ATAPI-6 and MMC specifications as
//! SeaBIOS and Linux (libata's `ata_piix`/`ata_generic` SFF PIO paths, `sr_mod`, isofs)
//! use them.
//!
//! Layout: [`channel`](IdeChannel) owns the registers, the state machine and the PIO data
//! stream; `ata` the disk commands; `atapi` the packet protocol and SCSI/MMC commands;
//! `dma` the bus-master registers and the PRD-table engine ([`BusMasterIde`]); `pci` the
//! PCI function ([`PiixIde`]). [`IdeCommandBlock`] and [`IdeControlBlock`] put a shared
//! channel on the port bus.
//!
//! The guest is hostile: every register access, command, packet and byte count is
//! checked; a bad request fails with ATA error status or ATAPI CHECK CONDITION and the
//! device stays usable. Buffers are bounded (one DRQ block, at most 64 KiB, read from the
//! image when the guest gets to it; DMA moves at most 64 KiB at a time and walks at most
//! 8192 PRD entries per transfer). Guest memory is reached only through `vm_memory`.

mod ata;
mod atapi;
mod channel;
mod dma;
mod pci;
mod readahead;
#[cfg(test)]
mod tests;

pub use channel::IdeChannel;
pub use dma::BusMasterIde;
pub use pci::{
    BusMasterMap, PiixIde, CLASS_IDE_COMPAT_BUSMASTER, DEVICE_PIIX3_IDE, IDETIM_DEFAULT,
};

use crate::bus::{lock, BusDevice, DeviceAction};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// First port of the primary channel's command block (8 ports).
pub const PRIMARY_COMMAND: u64 = 0x1f0;
/// The primary channel's control block port (alternate status / device control).
pub const PRIMARY_CONTROL: u64 = 0x3f6;
/// The primary channel's ISA interrupt.
pub const PRIMARY_IRQ: u32 = 14;
/// First port of the secondary channel's command block (8 ports).
pub const SECONDARY_COMMAND: u64 = 0x170;
/// The secondary channel's control block port.
pub const SECONDARY_CONTROL: u64 = 0x376;
/// The secondary channel's ISA interrupt.
pub const SECONDARY_IRQ: u32 = 15;
/// Ports in a command block.
pub const COMMAND_PORTS: u64 = 8;
/// Ports in a control block.
pub const CONTROL_PORTS: u64 = 1;
/// Ports of the bus-master registers (BAR 4): 8 per channel, primary first.
pub const BUS_MASTER_PORTS: u64 = 16;

/// What hangs on an IDE position.
#[derive(Debug)]
pub enum IdeMedia {
    /// An ATA hard disk of 512-byte sectors (the image's size rounded down).
    Disk(Box<dyn kiln_block::BlockDevice>),
    /// An ATAPI CD/DVD-ROM of 2048-byte blocks (the image's size rounded down), always
    /// read-only. An image of less than one block is a drive with no disc in it.
    Cdrom(Box<dyn kiln_block::BlockDevice>),
}

/// An edge-triggered ISA interrupt line: [`trigger`](IdeIrq::trigger) writes 1 to the
/// eventfd (if any), which the VMM registered as a KVM irqfd.
#[derive(Debug)]
pub struct IdeIrq(pub Option<EventFd>);

impl IdeIrq {
    /// Signal one interrupt edge.
    pub fn trigger(&self) -> std::io::Result<()> {
        match &self.0 {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

/// The command block of a channel on the port bus (8 ports at 0x1f0 or 0x170): offset 0 is
/// the data register, a byte stream of any access width; offsets 1-7 are 8-bit registers
/// (a wider access reaches the register at its first byte; the other bytes read 0).
pub struct IdeCommandBlock(pub Arc<Mutex<IdeChannel>>);

impl BusDevice for IdeCommandBlock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut ch = lock(&self.0);
        if offset == 0 {
            ch.data_read(data);
            return;
        }
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = ch.read_register(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        let mut ch = lock(&self.0);
        if offset == 0 {
            ch.data_write(data);
        } else if let Some(&b) = data.first() {
            ch.write_register(offset, b);
        }
        None
    }
}

/// The control block of a channel on the port bus (1 port at 0x3f6 or 0x376): reads give
/// the alternate status (which leaves a pending interrupt alone), writes the device
/// control register (nIEN, SRST, HOB).
pub struct IdeControlBlock(pub Arc<Mutex<IdeChannel>>);

impl BusDevice for IdeControlBlock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let ch = lock(&self.0);
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = if offset == 0 { ch.alt_status() } else { 0xff };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        if offset == 0 {
            if let Some(&b) = data.first() {
                lock(&self.0).write_control(b);
            }
        }
        None
    }
}
