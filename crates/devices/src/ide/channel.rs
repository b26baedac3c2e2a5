//! One IDE channel: the task-file registers of its two positions (writes reach both,
//! reads come from the selected one), device selection, the device control register
//! (nIEN, SRST, HOB), the interrupt line, and the PIO data stream that moves one DRQ block
//! at a time between the guest and a device. Command execution lives in `ata` (disks)
//! and `atapi` (the CD-ROM); this module only routes to them and runs their transfers.
//! DMA transfers wait here for the bus-master engine (`dma`) that runs them.

use super::atapi::{AtapiSrc, Sense};
use super::dma::{BusMaster, DmaOp};
use super::{IdeIrq, IdeMedia};
use kiln_block::BlockDevice;
use std::sync::atomic::{AtomicU32, Ordering};

/// Status: busy.
pub(super) const BSY: u8 = 0x80;
/// Status: device ready.
pub(super) const DRDY: u8 = 0x40;
/// Status: seek complete (ATA) / service (ATAPI); set whenever a disk is idle.
pub(super) const DSC: u8 = 0x10;
/// Status: data request.
pub(super) const DRQ: u8 = 0x08;
/// Status: error (CHECK for packet devices).
pub(super) const ERR: u8 = 0x01;

/// Error register: command aborted.
pub(super) const ABRT: u8 = 0x04;
/// Error register: sector not found (address out of range).
pub(super) const IDNF: u8 = 0x10;
/// Error register: uncorrectable data error.
pub(super) const UNC: u8 = 0x40;

/// Device control: interrupts disabled.
pub(super) const CTL_NIEN: u8 = 0x02;
/// Device control: software reset.
pub(super) const CTL_SRST: u8 = 0x04;
/// Device control: read the previous ("high order byte") register contents.
pub(super) const CTL_HOB: u8 = 0x80;

/// An ATA sector.
pub(super) const SECTOR: u64 = 512;
/// Largest READ/WRITE MULTIPLE block, in sectors (IDENTIFY word 47).
pub(super) const MAX_MULTIPLE: u8 = 16;
/// The transfer mode after power-on (SET FEATURES 03h encoding): Ultra DMA mode 5, as
/// QEMU's drives report it. Only shown when the channel has a bus-master engine.
pub(super) const XFER_MODE_DEFAULT: u8 = 0x45;

/// Task-file registers as one device holds them, with the previous value of each for
/// LBA48 ("HOB").
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TaskFile {
    pub(super) feature: u8,
    pub(super) hob_feature: u8,
    pub(super) nsector: u8,
    pub(super) hob_nsector: u8,
    pub(super) sector: u8,
    pub(super) hob_sector: u8,
    pub(super) lcyl: u8,
    pub(super) hob_lcyl: u8,
    pub(super) hcyl: u8,
    pub(super) hob_hcyl: u8,
}

/// What kind of device sits on a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Disk,
    Cdrom,
}

/// A CHS translation (always at least 1 head and 1 sector per track).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) cylinders: u16,
    pub(super) heads: u8,
    pub(super) sectors: u8,
}

impl Geometry {
    /// 16 heads, 63 sectors, as many cylinders as fit (at most 16383).
    pub(super) fn default_for(total_sectors: u64) -> Self {
        Self::with(total_sectors, 16, 63, 16383)
    }

    /// `heads` x `sectors` with as many cylinders as fit, at most `max_cyl`.
    pub(super) fn with(total_sectors: u64, heads: u8, sectors: u8, max_cyl: u16) -> Self {
        let heads = heads.max(1);
        let sectors = sectors.max(1);
        let per_cyl = u64::from(heads) * u64::from(sectors);
        let cylinders = (total_sectors / per_cyl).min(u64::from(max_cyl)) as u16;
        Geometry {
            cylinders,
            heads,
            sectors,
        }
    }

    /// Sectors addressable through this geometry.
    pub(super) fn capacity(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }
}

/// A device on a position.
#[derive(Debug)]
pub(super) struct Device {
    pub(super) kind: Kind,
    pub(super) image: Box<dyn BlockDevice>,
    pub(super) serial: String,
    /// READ/WRITE MULTIPLE block size in sectors; 0 = disabled.
    pub(super) multiple: u8,
    /// The current CHS translation (INITIALIZE DEVICE PARAMETERS changes it).
    pub(super) geometry: Geometry,
    pub(super) write_cache: bool,
    /// ATAPI sense data of the last command.
    pub(super) sense: Sense,
    /// The transfer mode SET FEATURES 03h selected (its sector count value: 00h/01h PIO
    /// default, 08h|n PIO n, 20h|n multiword DMA n, 40h|n Ultra DMA n).
    pub(super) xfer_mode: u8,
}

impl Device {
    fn new(media: IdeMedia) -> Self {
        static SERIALS: AtomicU32 = AtomicU32::new(1);
        let serial = format!("KILN{:08}", SERIALS.fetch_add(1, Ordering::Relaxed));
        let (kind, image) = match media {
            IdeMedia::Disk(i) => (Kind::Disk, i),
            IdeMedia::Cdrom(i) => (Kind::Cdrom, i),
        };
        let image: Box<dyn BlockDevice> = Box::new(super::readahead::ReadAhead::new(image));
        let mut d = Device {
            kind,
            image,
            serial,
            multiple: 0,
            geometry: Geometry::default_for(0),
            write_cache: true,
            sense: Sense::NONE,
            xfer_mode: XFER_MODE_DEFAULT,
        };
        d.power_on_defaults();
        d
    }

    /// Settings as after power-on.
    pub(super) fn power_on_defaults(&mut self) {
        self.multiple = MAX_MULTIPLE;
        self.geometry = Geometry::default_for(self.sectors());
        self.write_cache = true;
        self.sense = Sense::NONE;
        self.xfer_mode = XFER_MODE_DEFAULT;
    }

    /// 512-byte sectors of a disk.
    pub(super) fn sectors(&self) -> u64 {
        self.image.size() / SECTOR
    }
}

/// What happens when the guest has read the current DRQ block.
#[derive(Debug)]
pub(super) enum InNext {
    /// The last block of an ATA data-in command: go idle, no interrupt.
    AtaDone,
    /// More sectors of an ATA read.
    AtaRead(super::ata::Run),
    /// An ATAPI data phase: `left` more bytes from `src`, then completion.
    Atapi {
        src: AtapiSrc,
        left: u64,
        limit: u16,
    },
}

/// What happens when the guest has written the current DRQ block.
#[derive(Debug)]
pub(super) enum OutNext {
    /// The block holds sectors of an ATA write.
    AtaWrite(super::ata::Run),
    /// The block is an ATAPI command packet; `limit` is the byte count limit, `dma`
    /// whether the data phase goes through the bus master.
    Packet { limit: u16, dma: bool },
}

/// The transfer a device is in.
#[derive(Debug, Default)]
pub(super) enum Xfer {
    #[default]
    None,
    In(InNext),
    Out(OutNext),
    /// A DMA command waiting for the bus master's start bit.
    Dma(DmaOp),
}

/// One position of the channel. A missing device still holds registers (writes reach
/// both positions), but reads of its status and error registers give 0.
#[derive(Debug, Default)]
pub(super) struct Drive {
    pub(super) dev: Option<Device>,
    pub(super) tf: TaskFile,
    pub(super) status: u8,
    pub(super) error: u8,
    /// The current DRQ block (at most 64 KiB) and the guest's position in it.
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) xfer: Xfer,
}

impl Drive {
    fn kind(&self) -> Option<Kind> {
        self.dev.as_ref().map(|d| d.kind)
    }

    /// Drop any transfer in progress.
    pub(super) fn abandon(&mut self) -> bool {
        let was = !matches!(self.xfer, Xfer::None);
        self.xfer = Xfer::None;
        self.buf.clear();
        self.pos = 0;
        self.status &= !DRQ;
        was
    }

    /// Load the reset signature into the registers.
    pub(super) fn set_signature(&mut self) {
        self.tf.nsector = 1;
        self.tf.sector = 1;
        let (mid, high) = match self.kind() {
            Some(Kind::Disk) => (0x00, 0x00),
            Some(Kind::Cdrom) => (0x14, 0xeb),
            None => (0xff, 0xff),
        };
        self.tf.lcyl = mid;
        self.tf.hcyl = high;
    }

    /// Reset as SRST, EXECUTE DEVICE DIAGNOSTIC and DEVICE RESET do: signature, error 01h
    /// (diagnostics passed), idle status (a packet device does not set DRDY).
    pub(super) fn soft_reset(&mut self) {
        self.abandon();
        self.set_signature();
        self.error = if self.dev.is_some() { 0x01 } else { 0 };
        self.status = match self.kind() {
            Some(Kind::Disk) => DRDY | DSC,
            _ => 0,
        };
        if let Some(d) = self.dev.as_mut() {
            d.sense = Sense::NONE;
        }
    }
}

/// Counters for reports.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Metrics {
    pub(super) commands: u64,
    pub(super) packets: u64,
    pub(super) sectors_read: u64,
    pub(super) sectors_written: u64,
    pub(super) cd_bytes_read: u64,
    pub(super) flushes: u64,
    pub(super) errors: u64,
    pub(super) io_errors: u64,
    pub(super) read_only_rejects: u64,
    pub(super) abandoned: u64,
    pub(super) resets: u64,
    pub(super) irqs: u64,
    pub(super) irq_failures: u64,
    pub(super) dma_transfers: u64,
    pub(super) dma_bytes: u64,
    pub(super) dma_errors: u64,
}

/// One IDE channel (primary: ports 0x1f0-0x1f7 + 0x3f6, IRQ 14; secondary: 0x170-0x177 +
/// 0x376, IRQ 15) with a master and a slave position. Put it on the port bus through
/// [`IdeCommandBlock`](super::IdeCommandBlock) and [`IdeControlBlock`](super::IdeControlBlock).
///
/// Every command runs to completion inside the port access that starts it, so the guest
/// never sees BSY except while it holds SRST.
///
/// Interrupts: the devices' INTRQ condition is raised at the start of each data-in DRQ
/// block, after each data-out block, and at command completion (not at the end of an ATA
/// data-in command, as the protocol says); a status register read (not the alternate
/// status) or a command write clears it. The line is INTRQ masked by nIEN, and
/// [`IdeIrq::trigger`](super::IdeIrq::trigger) is called when the line rises, as an
/// edge-triggered ISA line sees it: a second block raised before the guest read the
/// status makes no new edge, and clearing nIEN while a condition is pending does.
///
/// A new command while a transfer is in progress abandons the transfer (data-out blocks
/// already completed stay written) and runs. Commands to an absent position, and
/// commands while SRST is held, are ignored.
///
/// DMA: once a [`BusMasterIde`](super::BusMasterIde) is built over the channel, its
/// devices advertise DMA and accept the DMA commands; such a command waits (status DRDY
/// DRQ, nothing on the data register) until the bus master is started too, then the
/// whole transfer runs inside that port access and completes like a PIO command (the
/// interrupt also latches the bus master's interrupt bit).
#[derive(Debug)]
pub struct IdeChannel {
    pub(super) drives: [Drive; 2],
    /// The device/head register (shared: it selects the device).
    pub(super) select: u8,
    /// The device control register as last written.
    pub(super) control: u8,
    irq: IdeIrq,
    /// The devices' INTRQ condition (cleared by a status read or a command write).
    irq_pending: bool,
    /// Whether the line is asserted now (pending and not masked by nIEN); an edge is
    /// signalled when it goes up.
    line: bool,
    /// The bus-master DMA engine, if the controller has one.
    pub(super) bm: Option<BusMaster>,
    pub(super) m: Metrics,
}

impl IdeChannel {
    /// A channel with devices on its master and slave positions (either may be empty),
    /// signalling its interrupt through `irq`.
    pub fn new(master: Option<IdeMedia>, slave: Option<IdeMedia>, irq: IdeIrq) -> Self {
        let mut ch = IdeChannel {
            drives: [
                Drive {
                    dev: master.map(Device::new),
                    ..Drive::default()
                },
                Drive {
                    dev: slave.map(Device::new),
                    ..Drive::default()
                },
            ],
            select: 0xa0,
            control: 0,
            irq,
            irq_pending: false,
            line: false,
            bm: None,
            m: Metrics::default(),
        };
        ch.reset();
        ch
    }

    /// Hardware reset (the VMM's system reset): both devices return to their power-on
    /// settings and signatures, device 0 is selected, interrupts are enabled and none is
    /// pending, the bus-master registers (if any) are cleared. The images are untouched.
    pub fn reset(&mut self) {
        for d in &mut self.drives {
            if let Some(dev) = d.dev.as_mut() {
                dev.power_on_defaults();
            }
            d.tf = TaskFile::default();
            d.soft_reset();
        }
        self.select = 0xa0;
        self.control = 0;
        self.irq_pending = false;
        self.line = false;
        if let Some(bm) = self.bm.as_mut() {
            bm.reset();
        }
    }

    /// Counters for `--trace-exits` style reports, as (name, value) pairs.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let m = &self.m;
        vec![
            ("commands", m.commands),
            ("atapi_packets", m.packets),
            ("sectors_read", m.sectors_read),
            ("sectors_written", m.sectors_written),
            ("cd_bytes_read", m.cd_bytes_read),
            ("flushes", m.flushes),
            ("errors", m.errors),
            ("io_errors", m.io_errors),
            ("read_only_rejects", m.read_only_rejects),
            ("abandoned_transfers", m.abandoned),
            ("resets", m.resets),
            ("irqs", m.irqs),
            ("irq_failures", m.irq_failures),
            ("dma_transfers", m.dma_transfers),
            ("dma_bytes", m.dma_bytes),
            ("dma_errors", m.dma_errors),
        ]
    }

    /// Whether an interrupt is pending (raised and not yet acknowledged by a status read).
    pub fn irq_pending(&self) -> bool {
        self.irq_pending
    }

    fn empty(&self) -> bool {
        self.drives.iter().all(|d| d.dev.is_none())
    }

    /// The selected position (0 = master, 1 = slave).
    pub(super) fn selected(&self) -> usize {
        usize::from((self.select >> 4) & 1)
    }

    pub(super) fn drive(&mut self, u: usize) -> &mut Drive {
        &mut self.drives[u & 1]
    }

    fn shown_status(&self) -> u8 {
        if self.empty() {
            return 0xff;
        }
        let d = &self.drives[self.selected()];
        if d.dev.is_none() {
            0
        } else {
            d.status
        }
    }

    /// The alternate status register: the status, leaving the interrupt pending.
    pub(super) fn alt_status(&self) -> u8 {
        self.shown_status()
    }

    /// A read of command block register `reg` (1-7).
    pub(super) fn read_register(&mut self, reg: u64) -> u8 {
        if self.empty() {
            return 0xff;
        }
        let hob = self.control & CTL_HOB != 0;
        let d = &self.drives[self.selected()];
        let tf = &d.tf;
        let pick = |low: u8, high: u8| if hob { high } else { low };
        match reg {
            1 if d.dev.is_none() => 0,
            1 => d.error,
            2 => pick(tf.nsector, tf.hob_nsector),
            3 => pick(tf.sector, tf.hob_sector),
            4 => pick(tf.lcyl, tf.hob_lcyl),
            5 => pick(tf.hcyl, tf.hob_hcyl),
            6 => self.select,
            7 => {
                let s = self.shown_status();
                self.set_irq(false);
                s
            }
            _ => 0xff,
        }
    }

    /// A write of command block register `reg` (1-7).
    pub(super) fn write_register(&mut self, reg: u64, v: u8) {
        // Any write to the command block clears HOB.
        self.control &= !CTL_HOB;
        let shift = |low: &mut u8, high: &mut u8| {
            *high = *low;
            *low = v;
        };
        for d in &mut self.drives {
            let tf = &mut d.tf;
            match reg {
                1 => shift(&mut tf.feature, &mut tf.hob_feature),
                2 => shift(&mut tf.nsector, &mut tf.hob_nsector),
                3 => shift(&mut tf.sector, &mut tf.hob_sector),
                4 => shift(&mut tf.lcyl, &mut tf.hob_lcyl),
                5 => shift(&mut tf.hcyl, &mut tf.hob_hcyl),
                _ => {}
            }
        }
        match reg {
            6 => self.select = v | 0xa0,
            7 => self.command(v),
            _ => {}
        }
    }

    /// A write of the device control register.
    pub(super) fn write_control(&mut self, v: u8) {
        let old = self.control;
        self.control = v;
        if old & CTL_SRST == 0 && v & CTL_SRST != 0 {
            self.m.resets += 1;
            for d in &mut self.drives {
                if d.abandon() {
                    self.m.abandoned += 1;
                }
                d.status = if d.dev.is_some() { BSY | DSC } else { 0 };
            }
            self.irq_pending = false;
        } else if old & CTL_SRST != 0 && v & CTL_SRST == 0 {
            for d in &mut self.drives {
                d.soft_reset();
            }
            self.select = 0xa0;
        }
        self.update_line();
    }

    fn command(&mut self, cmd: u8) {
        let u = self.selected();
        let d = self.drive(u);
        let Some(kind) = d.kind() else {
            return; // commands to a missing device go nowhere
        };
        if d.status & BSY != 0 {
            return; // held in reset
        }
        if d.abandon() {
            self.m.abandoned += 1;
        }
        self.set_irq(false);
        self.m.commands += 1;
        match kind {
            Kind::Disk => self.disk_command(u, cmd),
            Kind::Cdrom => self.cd_command(u, cmd),
        }
    }

    /// Raise (or drop) the devices' interrupt condition. A raise that reaches the line
    /// (nIEN clear) sets the bus master's interrupt bit, even if the line was already up.
    pub(super) fn set_irq(&mut self, pending: bool) {
        self.irq_pending = pending;
        if pending && self.control & CTL_NIEN == 0 {
            self.bm_interrupt();
        }
        self.update_line();
    }

    fn update_line(&mut self) {
        let level = self.irq_pending && self.control & CTL_NIEN == 0;
        if level && !self.line {
            self.bm_interrupt();
            self.m.irqs += 1;
            if self.irq.trigger().is_err() {
                self.m.irq_failures += 1;
            }
        }
        self.line = level;
    }

    /// Finish a command successfully: idle status, interrupt.
    pub(super) fn complete(&mut self, u: usize) {
        let d = self.drive(u);
        d.abandon();
        d.status = DRDY | DSC;
        self.set_irq(true);
    }

    /// Fail a command with `error` in the error register: ERR status, interrupt.
    pub(super) fn fail(&mut self, u: usize, error: u8) {
        let d = self.drive(u);
        d.abandon();
        d.error = error;
        d.status = DRDY | ERR;
        self.m.errors += 1;
        self.set_irq(true);
    }

    /// Offer `data` (non-empty, at most 64 KiB) to the guest as a DRQ block and interrupt.
    pub(super) fn start_in(&mut self, u: usize, data: &[u8], next: InNext) {
        let d = self.drive(u);
        d.buf.clear();
        d.buf.extend_from_slice(data);
        d.pos = 0;
        d.xfer = Xfer::In(next);
        d.status = DRDY | DSC | DRQ;
        self.set_irq(true);
    }

    /// Ask the guest for a DRQ block of `len` bytes (non-zero, at most 64 KiB).
    pub(super) fn start_out(&mut self, u: usize, len: usize, next: OutNext, irq: bool) {
        let d = self.drive(u);
        d.buf.clear();
        d.buf.resize(len, 0);
        d.pos = 0;
        d.xfer = Xfer::Out(next);
        d.status = DRDY | DSC | DRQ;
        if irq {
            self.set_irq(true);
        }
    }

    /// A read of the data register: `out.len()` bytes of the stream. Bytes past the end
    /// of the data (or with no transfer) read 0; an empty channel reads all-ones.
    pub(super) fn data_read(&mut self, out: &mut [u8]) {
        if self.empty() {
            out.fill(0xff);
            return;
        }
        let u = self.selected();
        let mut done = 0;
        let mut stalls = 0;
        while done < out.len() && stalls < 2 {
            let d = self.drive(u);
            if d.status & DRQ == 0 || !matches!(d.xfer, Xfer::In(_)) {
                break;
            }
            let src = d.buf.get(d.pos..).unwrap_or(&[]);
            let dst = out.get_mut(done..).unwrap_or(&mut []);
            let n = src.len().min(dst.len());
            if let (Some(dst), Some(src)) = (dst.get_mut(..n), src.get(..n)) {
                dst.copy_from_slice(src);
            }
            d.pos += n;
            done += n;
            stalls = if n == 0 { stalls + 1 } else { 0 };
            if d.pos >= d.buf.len() {
                self.in_block_done(u);
            }
        }
        if let Some(rest) = out.get_mut(done..) {
            rest.fill(0);
        }
    }

    /// A write of the data register: `data` continues the stream; bytes with no transfer
    /// to take them are dropped.
    pub(super) fn data_write(&mut self, data: &[u8]) {
        if self.empty() {
            return;
        }
        let u = self.selected();
        let mut done = 0;
        let mut stalls = 0;
        while done < data.len() && stalls < 2 {
            let d = self.drive(u);
            if d.status & DRQ == 0 || !matches!(d.xfer, Xfer::Out(_)) {
                break;
            }
            let src = data.get(done..).unwrap_or(&[]);
            let pos = d.pos;
            let dst = d.buf.get_mut(pos..).unwrap_or(&mut []);
            let n = src.len().min(dst.len());
            if let (Some(dst), Some(src)) = (dst.get_mut(..n), src.get(..n)) {
                dst.copy_from_slice(src);
            }
            d.pos += n;
            done += n;
            stalls = if n == 0 { stalls + 1 } else { 0 };
            if d.pos >= d.buf.len() {
                self.out_block_done(u);
            }
        }
    }

    fn in_block_done(&mut self, u: usize) {
        let d = self.drive(u);
        let xfer = std::mem::take(&mut d.xfer);
        d.buf.clear();
        d.pos = 0;
        d.status &= !DRQ;
        match xfer {
            Xfer::In(InNext::AtaDone) => d.status = DRDY | DSC,
            Xfer::In(InNext::AtaRead(run)) => self.read_block(u, run),
            Xfer::In(InNext::Atapi { src, left, limit }) => {
                if left == 0 {
                    self.atapi_ok(u);
                } else {
                    self.atapi_block(u, src, left, limit);
                }
            }
            Xfer::None | Xfer::Out(_) | Xfer::Dma(_) => {}
        }
    }

    fn out_block_done(&mut self, u: usize) {
        let d = self.drive(u);
        let xfer = std::mem::take(&mut d.xfer);
        d.status &= !DRQ;
        match xfer {
            Xfer::Out(OutNext::AtaWrite(run)) => self.write_block_done(u, run),
            Xfer::Out(OutNext::Packet { limit, dma }) => self.exec_packet(u, limit, dma),
            Xfer::None | Xfer::In(_) | Xfer::Dma(_) => {}
        }
        let d = self.drive(u);
        if matches!(d.xfer, Xfer::None) {
            d.buf.clear();
            d.pos = 0;
        }
    }

    /// EXECUTE DEVICE DIAGNOSTIC: both devices reset to their signatures; interrupt.
    pub(super) fn diagnostic(&mut self) {
        for d in &mut self.drives {
            if d.dev.is_some() {
                d.soft_reset();
            }
        }
        self.set_irq(true);
    }
}
