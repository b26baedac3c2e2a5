//! Tests of the IDE controller, driving a channel through its ports exactly as a guest
//! driver would, over real `kiln_block` raw images in temporary files.

mod ata;
mod atapi;
mod dma;
mod dma_hostile;
mod errors;
mod hostile;
mod pci;

use super::{IdeChannel, IdeCommandBlock, IdeControlBlock, IdeIrq, IdeMedia};
use crate::bus::BusDevice;
use kiln_block::{open, Format, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tempfile::NamedTempFile;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub(super) const BSY: u8 = 0x80;
pub(super) const DRQ: u8 = 0x08;
pub(super) const ERR: u8 = 0x01;

/// What to put on a position.
pub(super) enum Spec {
    Disk(Vec<u8>),
    ReadOnlyDisk(Vec<u8>),
    /// A disk image of this many bytes, sparse (zeros).
    SparseDisk(u64),
    Cd(Vec<u8>),
    /// A CD image of this many bytes, sparse (zeros).
    SparseCd(u64),
    /// Any media (no file behind it).
    Media(IdeMedia),
}

/// Bytes that differ per sector and per offset, so misplaced data shows.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i / 512) as u32)
                .wrapping_mul(37)
                .wrapping_add(i as u32 % 251) as u8
        })
        .collect()
}

fn temp_image(bytes: &[u8], sparse: u64) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    if sparse > 0 {
        f.as_file().set_len(sparse).unwrap();
    }
    f.flush().unwrap();
    f
}

fn open_raw(f: &NamedTempFile, read_only: bool) -> Box<dyn kiln_block::BlockDevice> {
    let opts = OpenOptions {
        read_only,
        format: Some(Format::Raw),
        no_backing: true,
        share: kiln_block::Share::Readers,
    };
    open(f.path(), &opts).unwrap()
}

/// A channel on its ports, with the images it uses and its interrupt eventfd.
pub(super) struct Rig {
    pub(super) ch: Arc<Mutex<IdeChannel>>,
    cmd: IdeCommandBlock,
    ctl: IdeControlBlock,
    irq: EventFd,
    /// The image files of master and slave.
    pub(super) files: [Option<NamedTempFile>; 2],
}

impl Rig {
    pub(super) fn new(master: Option<Spec>, slave: Option<Spec>) -> Rig {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut files = [None, None];
        let mut media = [None, None];
        for (i, spec) in [master, slave].into_iter().enumerate() {
            let Some(spec) = spec else { continue };
            if let Spec::Media(m) = spec {
                media[i] = Some(m);
                continue;
            }
            let (f, m) = match spec {
                Spec::Media(_) => unreachable!(),
                Spec::Disk(b) => {
                    let f = temp_image(&b, 0);
                    let m = IdeMedia::Disk(open_raw(&f, false));
                    (f, m)
                }
                Spec::ReadOnlyDisk(b) => {
                    let f = temp_image(&b, 0);
                    let m = IdeMedia::Disk(open_raw(&f, true));
                    (f, m)
                }
                Spec::SparseDisk(len) => {
                    let f = temp_image(&[], len);
                    let m = IdeMedia::Disk(open_raw(&f, false));
                    (f, m)
                }
                Spec::SparseCd(len) => {
                    let f = temp_image(&[], len);
                    let m = IdeMedia::Cdrom(open_raw(&f, true));
                    (f, m)
                }
                Spec::Cd(b) => {
                    let f = temp_image(&b, 0);
                    let m = IdeMedia::Cdrom(open_raw(&f, true));
                    (f, m)
                }
            };
            files[i] = Some(f);
            media[i] = Some(m);
        }
        let [m, s] = media;
        let ch = Arc::new(Mutex::new(IdeChannel::new(
            m,
            s,
            IdeIrq(Some(irq.try_clone().unwrap())),
        )));
        Rig {
            cmd: IdeCommandBlock(ch.clone()),
            ctl: IdeControlBlock(ch.clone()),
            ch,
            irq,
            files,
        }
    }

    pub(super) fn outb(&mut self, off: u64, v: u8) {
        self.cmd.write(off, &[v]);
    }

    pub(super) fn inb(&mut self, off: u64) -> u8 {
        let mut b = [0u8];
        self.cmd.read(off, &mut b);
        b[0]
    }

    pub(super) fn status(&mut self) -> u8 {
        self.inb(7)
    }

    pub(super) fn alt_status(&mut self) -> u8 {
        let mut b = [0u8];
        self.ctl.read(0, &mut b);
        b[0]
    }

    pub(super) fn control(&mut self, v: u8) {
        self.ctl.write(0, &[v]);
    }

    /// Interrupt edges since the last call.
    pub(super) fn irqs(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    /// Read `n` bytes from the data register in accesses of `width` bytes (the last one
    /// padded, as a driver reading an odd count does).
    pub(super) fn read_data_width(&mut self, n: usize, width: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + width);
        while out.len() < n {
            let mut b = vec![0u8; width];
            self.cmd.read(0, &mut b);
            out.extend_from_slice(&b);
        }
        out.truncate(n);
        out
    }

    pub(super) fn read_data(&mut self, n: usize) -> Vec<u8> {
        self.read_data_width(n, 2)
    }

    pub(super) fn write_data(&mut self, data: &[u8]) {
        for c in data.chunks(2) {
            self.cmd.write(0, c);
        }
    }

    /// Pulse SRST.
    pub(super) fn srst(&mut self) {
        self.control(0x04);
        self.control(0x00);
    }

    pub(super) fn select(&mut self, unit: u8) {
        self.outb(6, 0xa0 | (unit << 4));
    }

    /// The signature registers: sector count, LBA low, mid, high.
    pub(super) fn signature(&mut self) -> [u8; 4] {
        [self.inb(2), self.inb(3), self.inb(4), self.inb(5)]
    }

    /// Run a PIO data-in command whose data is one 512-byte block (IDENTIFY).
    pub(super) fn identify(&mut self, cmd: u8) -> Vec<u16> {
        self.outb(7, cmd);
        let st = self.status();
        assert_eq!(st & (BSY | DRQ | ERR), DRQ, "status {st:#x} after IDENTIFY");
        let b = self.read_data(512);
        assert_eq!(self.status() & DRQ, 0);
        b.chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// Load an LBA28 request into the task file and issue `cmd`.
    pub(super) fn lba28(&mut self, cmd: u8, lba: u32, count: u8) {
        self.outb(2, count);
        self.outb(3, lba as u8);
        self.outb(4, (lba >> 8) as u8);
        self.outb(5, (lba >> 16) as u8);
        self.outb(6, 0xe0 | ((lba >> 24) as u8 & 0x0f));
        self.outb(7, cmd);
    }

    /// Load an LBA48 request (HOB bytes first) and issue `cmd`.
    pub(super) fn lba48(&mut self, cmd: u8, lba: u64, count: u16) {
        let l = lba.to_le_bytes();
        let c = count.to_le_bytes();
        for (reg, (hi, lo)) in [
            (2, (c[1], c[0])),
            (3, (l[3], l[0])),
            (4, (l[4], l[1])),
            (5, (l[5], l[2])),
        ] {
            self.outb(reg, hi);
            self.outb(reg, lo);
        }
        self.outb(6, 0x40);
        self.outb(7, cmd);
    }

    /// Read the data of a PIO data-in command of `blocks` DRQ blocks of `per` bytes (the
    /// last may be shorter: `total` bytes in all), acknowledging each interrupt.
    pub(super) fn pio_in(&mut self, total: usize, per: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < total {
            assert_eq!(self.irqs(), 1, "one interrupt per DRQ block");
            let st = self.status();
            assert_eq!(st & (BSY | DRQ | ERR), DRQ, "status {st:#x}");
            let n = per.min(total - out.len());
            out.extend(self.read_data(n));
        }
        assert_eq!(self.irqs(), 0, "no interrupt after the last data-in block");
        let st = self.status();
        assert_eq!(st & (BSY | DRQ | ERR), 0, "status {st:#x} at the end");
        out
    }

    /// Write `data` for a PIO data-out command in blocks of `per` bytes, checking the
    /// protocol (no interrupt before the first block; one after each block).
    pub(super) fn pio_out(&mut self, data: &[u8], per: usize) {
        assert_eq!(
            self.irqs(),
            0,
            "no interrupt before the first data-out block"
        );
        for c in data.chunks(per) {
            let st = self.status();
            assert_eq!(st & (BSY | DRQ | ERR), DRQ, "status {st:#x}");
            self.write_data(c);
            assert_eq!(self.irqs(), 1, "one interrupt per written block");
        }
        let st = self.status();
        assert_eq!(st & (BSY | DRQ | ERR), 0, "status {st:#x} at the end");
    }

    /// The bytes of the image file of position `unit`.
    pub(super) fn file_bytes(&self, unit: usize, off: u64, len: usize) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(self.files[unit].as_ref().unwrap().path()).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut b = vec![0u8; len];
        f.read_exact(&mut b).unwrap();
        b
    }

    pub(super) fn file_len(&self, unit: usize) -> u64 {
        std::fs::metadata(self.files[unit].as_ref().unwrap().path())
            .unwrap()
            .len()
    }

    /// Run an ATAPI packet command with byte count limit `limit`, reading every DRQ
    /// block. Returns the data, the size of each block, the final status and the
    /// interrupts seen. Checks the interrupt reason of each phase.
    pub(super) fn packet(&mut self, cdb: &[u8], limit: u16) -> Packet {
        self.irqs();
        self.outb(1, 0);
        self.outb(4, limit as u8);
        self.outb(5, (limit >> 8) as u8);
        self.outb(7, 0xa0);
        let st = self.status();
        assert_eq!(st & (BSY | DRQ), DRQ, "packet phase status {st:#x}");
        assert_eq!(self.inb(2) & 3, 1, "CoD=1 IO=0 for the packet");
        assert_eq!(self.irqs(), 0, "no interrupt before the packet");
        let mut p = [0u8; 12];
        p[..cdb.len()].copy_from_slice(cdb);
        self.write_data(&p);
        let mut r = Packet::default();
        for _ in 0..100_000 {
            r.irqs += self.irqs();
            let st = self.status();
            if st & DRQ == 0 {
                assert_eq!(self.inb(2) & 3, 3, "CoD=1 IO=1 at completion");
                r.status = st;
                r.error = self.inb(1);
                return r;
            }
            assert_eq!(self.inb(2) & 3, 2, "IO=1 CoD=0 for data");
            let n = usize::from(u16::from_le_bytes([self.inb(4), self.inb(5)]));
            r.blocks.push(n);
            let d = self.read_data(n);
            r.data.extend(d);
        }
        panic!("packet never completed");
    }
}

/// The outcome of [`Rig::packet`].
#[derive(Debug, Default)]
pub(super) struct Packet {
    pub(super) data: Vec<u8>,
    pub(super) blocks: Vec<usize>,
    pub(super) status: u8,
    pub(super) error: u8,
    pub(super) irqs: u64,
}

/// Decode an ATA string (two characters per word, first in the high byte).
pub(super) fn ata_string(words: &[u16]) -> String {
    let b: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    String::from_utf8_lossy(&b).trim_end().to_string()
}
