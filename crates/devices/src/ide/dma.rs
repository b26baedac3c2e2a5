//! Bus-master IDE DMA as on the PIIX ("BMIDE"): per channel a command register (start
//! bit, direction), a status register (active, error, interrupt, drive-capable bits) and
//! the address of a Physical Region Descriptor table in guest memory, reached through
//! BAR 4 of the PCI function ([`BusMasterIde`]); and the engine that moves a DMA
//! command's data between a device's image and the memory the PRD table describes.
//!
//! The flow Linux's `ata_piix`/libata-sff use: write the PRD table address, set the
//! direction, issue the command (READ/WRITE DMA (EXT), or PACKET with the DMA feature
//! bit), set the start bit, wait for the interrupt, read the bus-master status (interrupt
//! set, active clear), clear the start bit, write the status back to clear interrupt and
//! error, read the ATA status. The start bit may also come before the command: the
//! transfer runs when both a DMA command is waiting on a device of the channel and the
//! engine is active (start bit set), inside whichever port access came second, from
//! start to end, 64 KiB at a time (as PIO runs image I/O on the vCPU thread too).
//!
//! Choices where hardware or QEMU leave room:
//! - The direction bit is kept for the guest to read back but not checked: the command
//!   decides which way data moves (as in QEMU).
//! - The PRD table is walked from its start for each command, at most 8192 entries; a
//!   table ending before the command's data (or hitting the entry limit), and a table or
//!   region outside guest memory, end the transfer with the bus-master error bit, the
//!   active bit cleared and the command failing (ATA ABRT, ATAPI CHECK CONDITION with
//!   ABORTED COMMAND); data already moved stays moved. A table longer than the data is
//!   fine: the command completes and the active bit stays set (as on the PIIX and in
//!   QEMU) until the guest clears the start bit.
//! - Image I/O errors fail the command as PIO does (UNC/ABRT, MEDIUM ERROR) without the
//!   bus-master error bit (that bit is for the memory side).
//! - The PCI command register's bus-master enable bit is not checked.

use super::ata::Run;
use super::atapi::AtapiSrc;
use super::channel::{Device, IdeChannel, Metrics, Xfer, ABRT, DRDY, DRQ, DSC, SECTOR};
use super::BUS_MASTER_PORTS;
use crate::bus::{lock, BusDevice, DeviceAction};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Command register: start (1) / stop (0) the bus master.
const CMD_START: u8 = 0x01;
/// Command register: direction, 1 = the engine writes memory (a device read).
const CMD_TO_MEMORY: u8 = 0x08;
/// Status: the engine is active.
pub(super) const BM_ACTIVE: u8 = 0x01;
/// Status: a memory access failed (write 1 to clear).
pub(super) const BM_ERROR: u8 = 0x02;
/// Status: the channel raised its interrupt (write 1 to clear).
pub(super) const BM_INTERRUPT: u8 = 0x04;
/// Status: drive 0 and drive 1 DMA capable (firmware scratch bits).
const BM_DRIVES_CAPABLE: u8 = 0x60;
/// PRD entry flags: last entry of the table.
const PRD_EOT: u16 = 0x8000;
/// The most PRD entries one transfer walks (a table without an end bit stops here).
pub(super) const MAX_PRD_ENTRIES: u64 = 8192;
/// Bytes moved between an image and guest memory at once.
const CHUNK: usize = 64 * 1024;

/// The bus-master registers of one channel and the memory it reaches.
#[derive(Debug)]
pub(super) struct BusMaster {
    mem: GuestMemoryMmap,
    pub(super) cmd: u8,
    pub(super) status: u8,
    /// PRD table address (dword aligned).
    pub(super) prd: u32,
}

impl BusMaster {
    fn new(mem: GuestMemoryMmap) -> Self {
        BusMaster {
            mem,
            cmd: 0,
            status: 0,
            prd: 0,
        }
    }

    /// Registers as after reset.
    pub(super) fn reset(&mut self) {
        self.cmd = 0;
        self.status = 0;
        self.prd = 0;
    }
}

/// A DMA command waiting for the engine.
#[derive(Debug)]
pub(super) enum DmaOp {
    /// READ DMA (EXT): sectors from the image to memory.
    AtaRead(Run),
    /// WRITE DMA (EXT): sectors from memory to the image.
    AtaWrite(Run),
    /// The data-in phase of a packet command issued with the DMA bit: `len` bytes.
    AtapiIn { src: AtapiSrc, len: u64 },
}

/// Why a transfer stopped early.
#[derive(Debug)]
enum Fail {
    /// The PRD table or a region it points at is outside guest memory, or the table
    /// ended (or hit the entry limit) before the data did.
    Memory,
    /// The image failed at this sector (ATA) or byte offset (ATAPI).
    Image(u64),
}

/// A walk over a PRD table.
struct Prd<'a> {
    mem: &'a GuestMemoryMmap,
    table: u64,
    /// Entries read so far.
    entries: u64,
    /// Where the current entry continues and how many of its bytes are left.
    addr: u64,
    left: usize,
    /// Whether the current entry is the last one.
    last: bool,
}

impl<'a> Prd<'a> {
    fn new(mem: &'a GuestMemoryMmap, table: u32) -> Self {
        Prd {
            mem,
            table: u64::from(table),
            entries: 0,
            addr: 0,
            left: 0,
            last: false,
        }
    }

    /// The next stretch of guest memory, 1 to `max` bytes (`max` > 0).
    fn next(&mut self, max: usize) -> Result<(GuestAddress, usize), Fail> {
        if self.left == 0 {
            if self.last || self.entries >= MAX_PRD_ENTRIES {
                return Err(Fail::Memory);
            }
            let mut e = [0u8; 8];
            let at = self.table + 8 * self.entries;
            self.mem
                .read_slice(&mut e, GuestAddress(at))
                .map_err(|_| Fail::Memory)?;
            self.entries += 1;
            // Bit 0 of the address and of the count are ignored; a count of 0 is 64 KiB.
            self.addr = u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & !1);
            let count = u16::from_le_bytes([e[4], e[5]]) & !1;
            self.left = if count == 0 {
                0x1_0000
            } else {
                usize::from(count)
            };
            self.last = u16::from_le_bytes([e[6], e[7]]) & PRD_EOT != 0;
        }
        let n = self.left.min(max).max(1);
        let at = GuestAddress(self.addr);
        self.addr += n as u64;
        self.left -= n.min(self.left);
        Ok((at, n))
    }

    /// Copy `data` into the memory the table describes, continuing where it left off.
    fn scatter(&mut self, data: &[u8]) -> Result<(), Fail> {
        let mut done = 0;
        while done < data.len() {
            let (at, n) = self.next(data.len() - done)?;
            let part = data.get(done..done + n).ok_or(Fail::Memory)?;
            self.mem.write_slice(part, at).map_err(|_| Fail::Memory)?;
            done += n;
        }
        Ok(())
    }

    /// Fill `data` from the memory the table describes, continuing where it left off.
    fn gather(&mut self, data: &mut [u8]) -> Result<(), Fail> {
        let mut done = 0;
        while done < data.len() {
            let (at, n) = self.next(data.len() - done)?;
            let part = data.get_mut(done..done + n).ok_or(Fail::Memory)?;
            self.mem.read_slice(part, at).map_err(|_| Fail::Memory)?;
            done += n;
        }
        Ok(())
    }

    /// Whether the table is used up to its last byte.
    fn exhausted(&self) -> bool {
        self.last && self.left == 0
    }
}

/// Move the data of `op` between `dev`'s image and guest memory through the PRD table at
/// `table`. Returns whether the table was used up exactly.
fn transfer(
    dev: &mut Device,
    mem: &GuestMemoryMmap,
    table: u32,
    op: &DmaOp,
    m: &mut Metrics,
) -> Result<bool, Fail> {
    let mut prd = Prd::new(mem, table);
    let mut buf = Vec::new();
    match op {
        DmaOp::AtaRead(run) | DmaOp::AtaWrite(run) => {
            let write = matches!(op, DmaOp::AtaWrite(_));
            let (mut lba, mut left) = (run.lba, u64::from(run.left));
            while left > 0 {
                let n = left.min(CHUNK as u64 / SECTOR);
                buf.resize((n * SECTOR) as usize, 0);
                if write {
                    prd.gather(&mut buf)?;
                    m.dma_bytes += buf.len() as u64;
                    dev.image
                        .write_at(&buf, lba * SECTOR)
                        .map_err(|_| Fail::Image(lba))?;
                    m.sectors_written += n;
                } else {
                    dev.image
                        .read_at(&mut buf, lba * SECTOR)
                        .map_err(|_| Fail::Image(lba))?;
                    m.sectors_read += n;
                    prd.scatter(&buf)?;
                    m.dma_bytes += buf.len() as u64;
                }
                lba += n;
                left -= n;
            }
        }
        DmaOp::AtapiIn {
            src: AtapiSrc::Image { offset },
            len,
        } => {
            let (mut offset, mut left) = (*offset, *len);
            while left > 0 {
                let n = left.min(CHUNK as u64);
                buf.resize(n as usize, 0);
                dev.image
                    .read_at(&mut buf, offset)
                    .map_err(|_| Fail::Image(offset))?;
                m.cd_bytes_read += n;
                prd.scatter(&buf)?;
                m.dma_bytes += n;
                offset += n;
                left -= n;
            }
        }
        DmaOp::AtapiIn {
            src: AtapiSrc::Memory { data, at },
            len,
        } => {
            let rest = data.get(*at..).unwrap_or(&[]);
            let part = rest.get(..*len as usize).unwrap_or(rest);
            prd.scatter(part)?;
            m.dma_bytes += part.len() as u64;
        }
    }
    Ok(prd.exhausted())
}

impl IdeChannel {
    /// Give the channel a bus-master engine reaching `mem`: from now on its devices
    /// advertise DMA and accept DMA commands.
    fn attach_bus_master(&mut self, mem: GuestMemoryMmap) {
        self.bm = Some(BusMaster::new(mem));
    }

    /// Whether the channel has a bus-master DMA engine (a [`BusMasterIde`] was built
    /// over it), so its devices offer DMA.
    pub fn dma_capable(&self) -> bool {
        self.bm.is_some()
    }

    /// The device raised its interrupt: latch it in the bus-master status.
    pub(super) fn bm_interrupt(&mut self) {
        if let Some(bm) = self.bm.as_mut() {
            bm.status |= BM_INTERRUPT;
        }
    }

    /// A read of bus-master register byte `reg` (0-7) of this channel.
    fn bm_read(&self, reg: u64) -> u8 {
        let Some(bm) = self.bm.as_ref() else {
            return 0xff;
        };
        match reg {
            0 => bm.cmd,
            2 => bm.status,
            4..=7 => bm
                .prd
                .to_le_bytes()
                .get((reg - 4) as usize)
                .copied()
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// A write of bus-master register byte `reg` (0-7) of this channel.
    fn bm_write(&mut self, reg: u64, v: u8) {
        let Some(bm) = self.bm.as_mut() else {
            return;
        };
        match reg {
            0 => {
                let old = bm.cmd;
                bm.cmd = v & (CMD_START | CMD_TO_MEMORY);
                if old & CMD_START == 0 && v & CMD_START != 0 {
                    bm.status |= BM_ACTIVE;
                    self.try_dma();
                } else if old & CMD_START != 0 && v & CMD_START == 0 {
                    // Stopping: nothing is in flight (transfers run whole), so this only
                    // ends the active state; a waiting command waits for the next start.
                    bm.status &= !BM_ACTIVE;
                }
            }
            2 => {
                let keep = bm.status & BM_ACTIVE;
                let latched = bm.status & !v & (BM_ERROR | BM_INTERRUPT);
                bm.status = keep | latched | (v & BM_DRIVES_CAPABLE);
            }
            4..=7 => {
                let mut b = bm.prd.to_le_bytes();
                if let Some(byte) = b.get_mut((reg - 4) as usize) {
                    *byte = v;
                }
                bm.prd = u32::from_le_bytes(b) & !0x3;
            }
            _ => {}
        }
    }

    /// Queue DMA command `op` on the device at `u` and run it if the engine is active.
    /// The device shows DRDY DRQ while it waits.
    pub(super) fn start_dma(&mut self, u: usize, op: DmaOp) {
        let d = self.drive(u);
        d.buf.clear();
        d.pos = 0;
        d.xfer = Xfer::Dma(op);
        d.status = DRDY | DSC | DRQ;
        self.try_dma();
    }

    /// Run a waiting DMA command (the selected device's first) if the engine is active.
    fn try_dma(&mut self) {
        let Some(bm) = self.bm.as_ref() else { return };
        if bm.cmd & CMD_START == 0 || bm.status & BM_ACTIVE == 0 {
            return;
        }
        let sel = self.selected();
        let Some(u) = [sel, sel ^ 1]
            .into_iter()
            .find(|&u| matches!(self.drives[u & 1].xfer, Xfer::Dma(_)))
        else {
            return;
        };
        if let Xfer::Dma(op) = std::mem::take(&mut self.drive(u).xfer) {
            self.run_dma(u, op);
        }
    }

    /// Run `op` on the device at `u` to completion or failure.
    fn run_dma(&mut self, u: usize, op: DmaOp) {
        self.m.dma_transfers += 1;
        let (Some(bm), Some(dev)) = (self.bm.as_ref(), self.drives[u & 1].dev.as_mut()) else {
            return;
        };
        let res = transfer(dev, &bm.mem, bm.prd, &op, &mut self.m);
        let used_up = matches!(res, Ok(true));
        if let Some(bm) = self.bm.as_mut() {
            if res.is_err() || used_up {
                bm.status &= !BM_ACTIVE;
            }
            if matches!(res, Err(Fail::Memory)) {
                bm.status |= BM_ERROR;
            }
        }
        match (res, op) {
            (Ok(_), DmaOp::AtaRead(_)) => self.complete(u),
            (Ok(_), DmaOp::AtaWrite(_)) => self.write_finished(u),
            (Ok(_), DmaOp::AtapiIn { .. }) => self.atapi_ok(u),
            (Err(Fail::Memory), op) => {
                self.m.dma_errors += 1;
                match op {
                    DmaOp::AtapiIn { .. } => self.atapi_dma_failed(u),
                    DmaOp::AtaRead(_) | DmaOp::AtaWrite(_) => self.fail(u, ABRT),
                }
            }
            (Err(Fail::Image(at)), op) => {
                self.m.io_errors += 1;
                match op {
                    DmaOp::AtapiIn { .. } => self.atapi_read_failed(u),
                    DmaOp::AtaRead(run) => self.dma_io_failed(u, at, run, false),
                    DmaOp::AtaWrite(run) => self.dma_io_failed(u, at, run, true),
                }
            }
        }
    }
}

/// The bus-master registers of both channels: 16 I/O ports (0-7 primary, 8-15
/// secondary: +0 command (bit 0 start/stop, bit 3 direction: 1 = write to memory, i.e. a
/// device read), +2 status (bit 0 active, bit 1 error (write 1 to clear), bit 2 interrupt
/// (write 1 to clear), bits 5/6 drive 0/1 DMA capable (guest-writable)), +4..+7 PRD table
/// address, dword-aligned, 32-bit). Implements [`BusDevice`] (offsets 0..16, any width:
/// each byte reaches its register; reserved bytes read 0).
///
/// Put it on the port bus at BAR 4's base for [`BUS_MASTER_PORTS`] ports, where
/// [`PiixIde::with_bus_master`](super::PiixIde::with_bus_master) says.
#[derive(Debug)]
pub struct BusMasterIde {
    channels: [Arc<Mutex<IdeChannel>>; 2],
}

impl BusMasterIde {
    /// The bus master over `primary` and `secondary`, moving data to and from `mem`.
    /// Building it makes both channels' devices advertise and accept DMA.
    pub fn new(
        primary: Arc<Mutex<IdeChannel>>,
        secondary: Arc<Mutex<IdeChannel>>,
        mem: GuestMemoryMmap,
    ) -> Self {
        lock(&primary).attach_bus_master(mem.clone());
        lock(&secondary).attach_bus_master(mem);
        BusMasterIde {
            channels: [primary, secondary],
        }
    }

    /// The channel whose registers hold byte `at`, and the register byte (0-7).
    fn channel(&self, at: u64) -> Option<(&Arc<Mutex<IdeChannel>>, u64)> {
        if at >= BUS_MASTER_PORTS {
            return None;
        }
        let ch = self.channels.get(usize::from(at >= 8))?;
        Some((ch, at & 7))
    }
}

impl BusDevice for BusMasterIde {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match self.channel(offset.saturating_add(i as u64)) {
                Some((ch, reg)) => lock(ch).bm_read(reg),
                None => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceAction> {
        for (i, &b) in data.iter().enumerate() {
            if let Some((ch, reg)) = self.channel(offset.saturating_add(i as u64)) {
                lock(ch).bm_write(reg, b);
            }
        }
        None
    }
}
