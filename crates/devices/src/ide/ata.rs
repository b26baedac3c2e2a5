//! The ATA hard disk: IDENTIFY DEVICE, PIO reads and writes (LBA28, LBA48 and CHS
//! addressing, single-sector and MULTIPLE blocks), DMA reads and writes (LBA28 and
//! LBA48, run by the bus master in `dma`, only on a channel that has one), verify,
//! flush, and the housekeeping commands drivers send (SET FEATURES, SET MULTIPLE MODE,
//! power management, ...). Anything unknown aborts.

use super::channel::{
    Geometry, IdeChannel, InNext, Kind, OutNext, Xfer, ABRT, DRDY, DRQ, DSC, IDNF, MAX_MULTIPLE,
    SECTOR, UNC,
};
use super::dma::DmaOp;

/// How a command addressed its sectors (errors report the failing sector the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Addr {
    Chs,
    Lba28,
    Lba48,
}

/// A multi-sector transfer in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    /// The next sector to move.
    pub(super) lba: u64,
    /// Sectors still to move (including the current block for writes).
    pub(super) left: u32,
    /// Sectors per DRQ block (1, or the multiple count).
    pub(super) per: u32,
    pub(super) addr: Addr,
}

/// Largest LBA28 capacity (IDENTIFY words 60-61).
const LBA28_MAX: u64 = 0x0fff_ffff;
/// Largest LBA48 capacity (words 100-103).
const LBA48_MAX: u64 = (1 << 48) - 1;

/// Model string of the disk.
pub(super) const DISK_MODEL: &str = "KILN HARDDISK";
/// Firmware revision (8 characters at most).
pub(super) const FIRMWARE: &str = "0.1";

impl IdeChannel {
    /// Execute ATA command `cmd` on the disk at position `u`.
    pub(super) fn disk_command(&mut self, u: usize, cmd: u8) {
        match cmd {
            0xec => {
                let id = self.identify_disk(u);
                self.start_in(u, &id, InNext::AtaDone);
            }
            0x20 | 0x21 => self.disk_read(u, false, false),
            0x24 => self.disk_read(u, true, false),
            0xc4 => self.disk_read(u, false, true),
            0x29 => self.disk_read(u, true, true),
            0x30 | 0x31 => self.disk_write(u, false, false),
            0x34 => self.disk_write(u, true, false),
            0xc5 => self.disk_write(u, false, true),
            0x39 => self.disk_write(u, true, true),
            // READ DMA (with and without retries), READ DMA EXT, WRITE DMA (EXT).
            0xc8 | 0xc9 if self.dma_capable() => self.disk_dma(u, false, false),
            0x25 if self.dma_capable() => self.disk_dma(u, true, false),
            0xca | 0xcb if self.dma_capable() => self.disk_dma(u, false, true),
            0x35 if self.dma_capable() => self.disk_dma(u, true, true),
            0x40 | 0x41 => self.disk_verify(u, false),
            0x42 => self.disk_verify(u, true),
            0xc6 => self.set_multiple(u),
            0xe7 | 0xea => self.flush(u),
            0xef => self.set_features(u, Kind::Disk),
            0x91 => self.init_params(u),
            0xe5 => {
                self.drive(u).tf.nsector = 0xff; // active or idle
                self.complete(u);
            }
            // STANDBY/IDLE IMMEDIATE, STANDBY, IDLE, SLEEP and their ATA-1 opcodes;
            // RECALIBRATE; SEEK.
            0xe0..=0xe3 | 0xe6 | 0x94..=0x99 | 0x10..=0x1f | 0x70..=0x7f => self.complete(u),
            0x90 => self.diagnostic(),
            // DMA without a bus master, queued DMA, NOP, DEVICE RESET, PACKET, IDENTIFY
            // PACKET DEVICE and everything else.
            _ => self.fail(u, ABRT),
        }
    }

    /// SET FEATURES: transfer modes (PIO; multiword DMA 0-2 and Ultra DMA 0-5 with a bus
    /// master), write cache, look-ahead and revert-to-defaults are accepted; the rest
    /// aborts.
    pub(super) fn set_features(&mut self, u: usize, kind: Kind) {
        let dma = self.dma_capable();
        let d = self.drive(u);
        let (sub, arg) = (d.tf.feature, d.tf.nsector);
        let ok = match sub {
            // Set transfer mode: PIO default (with or without IORDY) or PIO 0-4, and the
            // DMA modes IDENTIFY advertises.
            0x03 => {
                let ok = matches!(arg, 0x00 | 0x01 | 0x08..=0x0c)
                    || (dma && matches!(arg, 0x20..=0x22 | 0x40..=0x45));
                if let Some(dev) = d.dev.as_mut().filter(|_| ok) {
                    dev.xfer_mode = arg;
                }
                ok
            }
            0x02 | 0x82 if kind == Kind::Disk => {
                if let Some(dev) = d.dev.as_mut() {
                    dev.write_cache = sub == 0x02;
                }
                true
            }
            0x55 | 0xaa | 0x66 | 0xcc => true,
            _ => false,
        };
        if ok {
            self.complete(u);
        } else {
            self.fail(u, ABRT);
        }
    }

    fn set_multiple(&mut self, u: usize) {
        let d = self.drive(u);
        let n = d.tf.nsector;
        if n > MAX_MULTIPLE || !(n == 0 || n.is_power_of_two()) {
            return self.fail(u, ABRT);
        }
        if let Some(dev) = d.dev.as_mut() {
            dev.multiple = n;
        }
        self.complete(u);
    }

    /// INITIALIZE DEVICE PARAMETERS: the CHS translation to use from now on.
    fn init_params(&mut self, u: usize) {
        let heads = (self.select & 0x0f) + 1;
        let d = self.drive(u);
        let sectors = d.tf.nsector;
        let Some(dev) = d.dev.as_mut() else { return };
        if sectors == 0 {
            return self.fail(u, ABRT);
        }
        dev.geometry = Geometry::with(dev.sectors(), heads, sectors, u16::MAX);
        self.complete(u);
    }

    fn flush(&mut self, u: usize) {
        self.m.flushes += 1;
        let Some(dev) = self.drive(u).dev.as_mut() else {
            return;
        };
        if dev.image.flush().is_err() {
            self.m.io_errors += 1;
            return self.fail(u, ABRT);
        }
        self.complete(u);
    }

    /// The sectors a read/write/verify command asks for, or the error to fail it with.
    fn request(&self, u: usize, lba48: bool) -> Result<(u64, u32, Addr), u8> {
        let d = &self.drives[u & 1];
        let Some(dev) = d.dev.as_ref() else {
            return Err(ABRT);
        };
        let tf = &d.tf;
        let (lba, count, addr) = if lba48 {
            let lba = u64::from_le_bytes([
                tf.sector,
                tf.lcyl,
                tf.hcyl,
                tf.hob_sector,
                tf.hob_lcyl,
                tf.hob_hcyl,
                0,
                0,
            ]);
            let count = u32::from(u16::from_le_bytes([tf.nsector, tf.hob_nsector]));
            (lba, if count == 0 { 65536 } else { count }, Addr::Lba48)
        } else {
            let count = if tf.nsector == 0 {
                256
            } else {
                u32::from(tf.nsector)
            };
            if self.select & 0x40 != 0 {
                let lba = u64::from_le_bytes([
                    tf.sector,
                    tf.lcyl,
                    tf.hcyl,
                    self.select & 0x0f,
                    0,
                    0,
                    0,
                    0,
                ]);
                (lba, count, Addr::Lba28)
            } else {
                let g = dev.geometry;
                let cyl = u64::from(u16::from_le_bytes([tf.lcyl, tf.hcyl]));
                let head = self.select & 0x0f;
                let sector = tf.sector;
                if sector == 0 || sector > g.sectors || head >= g.heads {
                    return Err(IDNF | ABRT);
                }
                let lba = (cyl * u64::from(g.heads) + u64::from(head)) * u64::from(g.sectors)
                    + u64::from(sector - 1);
                (lba, count, Addr::Chs)
            }
        };
        match lba.checked_add(u64::from(count)) {
            Some(end) if end <= dev.sectors() => Ok((lba, count, addr)),
            _ => Err(IDNF | ABRT),
        }
    }

    /// Put `lba` into the address registers the way `addr` reads them (error reporting).
    pub(super) fn set_address(&mut self, u: usize, lba: u64, addr: Addr) {
        let geometry = self.drives[u & 1].dev.as_ref().map(|d| d.geometry);
        let b = lba.to_le_bytes();
        let mut select = self.select;
        let tf = &mut self.drive(u).tf;
        match addr {
            Addr::Lba48 => {
                [tf.sector, tf.lcyl, tf.hcyl] = [b[0], b[1], b[2]];
                [tf.hob_sector, tf.hob_lcyl, tf.hob_hcyl] = [b[3], b[4], b[5]];
            }
            Addr::Lba28 => {
                [tf.sector, tf.lcyl, tf.hcyl] = [b[0], b[1], b[2]];
                select = (select & 0xf0) | (b[3] & 0x0f);
            }
            Addr::Chs => {
                let Some(g) = geometry else { return };
                let spt = u64::from(g.sectors);
                let heads = u64::from(g.heads);
                let cyl = (lba / spt / heads).min(0xffff) as u16;
                tf.sector = (lba % spt + 1) as u8;
                [tf.lcyl, tf.hcyl] = cyl.to_le_bytes();
                select = (select & 0xf0) | ((lba / spt % heads) as u8 & 0x0f);
            }
        }
        self.select = select;
    }

    fn per_block(&mut self, u: usize, multiple: bool) -> Option<u32> {
        if !multiple {
            return Some(1);
        }
        match self.drive(u).dev.as_ref().map(|d| d.multiple) {
            Some(m) if m > 0 => Some(u32::from(m)),
            _ => {
                self.fail(u, ABRT);
                None
            }
        }
    }

    fn disk_read(&mut self, u: usize, lba48: bool, multiple: bool) {
        let Some(per) = self.per_block(u, multiple) else {
            return;
        };
        match self.request(u, lba48) {
            Err(e) => self.fail(u, e),
            Ok((lba, left, addr)) => self.read_block(
                u,
                Run {
                    lba,
                    left,
                    per,
                    addr,
                },
            ),
        }
    }

    /// Read the next DRQ block of `run` from the image and offer it to the guest.
    pub(super) fn read_block(&mut self, u: usize, run: Run) {
        let n = run.left.min(run.per);
        if n == 0 {
            return self.complete(u);
        }
        let len = n as usize * SECTOR as usize;
        let d = self.drive(u);
        let Some(dev) = d.dev.as_mut() else { return };
        let mut block = std::mem::take(&mut d.buf);
        block.clear();
        block.resize(len, 0);
        let res = dev.image.read_at(&mut block, run.lba * SECTOR);
        if res.is_err() {
            self.drive(u).buf = block;
            self.m.io_errors += 1;
            self.set_address(u, run.lba, run.addr);
            return self.fail(u, UNC);
        }
        self.m.sectors_read += u64::from(n);
        let next = if run.left == n {
            InNext::AtaDone
        } else {
            InNext::AtaRead(Run {
                lba: run.lba + u64::from(n),
                left: run.left - n,
                ..run
            })
        };
        let d = self.drive(u);
        d.buf = block;
        d.pos = 0;
        d.xfer = Xfer::In(next);
        d.status = DRDY | DSC | DRQ;
        self.set_irq(true);
    }

    fn disk_write(&mut self, u: usize, lba48: bool, multiple: bool) {
        let Some(per) = self.per_block(u, multiple) else {
            return;
        };
        let (lba, left, addr) = match self.request(u, lba48) {
            Ok(r) => r,
            Err(e) => return self.fail(u, e),
        };
        if self
            .drive(u)
            .dev
            .as_ref()
            .is_none_or(|d| d.image.read_only())
        {
            self.m.read_only_rejects += 1;
            return self.fail(u, ABRT);
        }
        let run = Run {
            lba,
            left,
            per,
            addr,
        };
        // The first block is requested without an interrupt.
        let len = left.min(per) as usize * SECTOR as usize;
        self.start_out(u, len, OutNext::AtaWrite(run), false);
    }

    /// The guest filled a DRQ block of `run`: write it, then ask for the next or finish.
    pub(super) fn write_block_done(&mut self, u: usize, run: Run) {
        let d = self.drive(u);
        let Some(dev) = d.dev.as_mut() else { return };
        let n = (d.buf.len() as u64 / SECTOR) as u32;
        if dev.image.write_at(&d.buf, run.lba * SECTOR).is_err() {
            self.m.io_errors += 1;
            self.set_address(u, run.lba, run.addr);
            return self.fail(u, ABRT);
        }
        self.m.sectors_written += u64::from(n);
        let left = run.left.saturating_sub(n);
        if left == 0 {
            return self.write_finished(u);
        }
        let next = Run {
            lba: run.lba + u64::from(n),
            left,
            ..run
        };
        let len = left.min(run.per) as usize * SECTOR as usize;
        self.start_out(u, len, OutNext::AtaWrite(next), true);
    }

    /// All sectors of a write are in the image: complete (flushing first with the write
    /// cache disabled, as a write is then durable when it completes).
    pub(super) fn write_finished(&mut self, u: usize) {
        let flushed = match self.drive(u).dev.as_mut() {
            Some(dev) if !dev.write_cache => Some(dev.image.flush()),
            _ => None,
        };
        if let Some(res) = flushed {
            self.m.flushes += 1;
            if res.is_err() {
                self.m.io_errors += 1;
                return self.fail(u, ABRT);
            }
        }
        self.complete(u)
    }

    /// READ DMA / WRITE DMA (`write`), LBA28 or LBA48: check the request as the PIO
    /// commands do, then wait for the bus master.
    fn disk_dma(&mut self, u: usize, lba48: bool, write: bool) {
        let (lba, left, addr) = match self.request(u, lba48) {
            Ok(r) => r,
            Err(e) => return self.fail(u, e),
        };
        let read_only = self
            .drive(u)
            .dev
            .as_ref()
            .is_none_or(|d| d.image.read_only());
        if write && read_only {
            self.m.read_only_rejects += 1;
            return self.fail(u, ABRT);
        }
        let run = Run {
            lba,
            left,
            per: left,
            addr,
        };
        self.start_dma(
            u,
            if write {
                DmaOp::AtaWrite(run)
            } else {
                DmaOp::AtaRead(run)
            },
        );
    }

    /// A DMA command's image I/O failed at sector `lba`: report it there and fail as the
    /// PIO command would (UNC for reads, ABRT for writes).
    pub(super) fn dma_io_failed(&mut self, u: usize, lba: u64, run: Run, write: bool) {
        self.set_address(u, lba, run.addr);
        self.fail(u, if write { ABRT } else { UNC });
    }

    fn disk_verify(&mut self, u: usize, lba48: bool) {
        match self.request(u, lba48) {
            Ok(_) => self.complete(u),
            Err(e) => self.fail(u, e),
        }
    }

    /// IDENTIFY DEVICE data of the disk at `u`.
    fn identify_disk(&self, u: usize) -> [u8; 512] {
        let mut w = [0u16; 256];
        let Some(dev) = self.drives[u & 1].dev.as_ref() else {
            return [0; 512];
        };
        let total = dev.sectors();
        let chs = Geometry::default_for(total);
        let cur = dev.geometry;
        w[0] = 0x0040; // fixed device, not removable
        w[1] = chs.cylinders;
        w[3] = u16::from(chs.heads);
        w[6] = u16::from(chs.sectors);
        put_string(&mut w[10..20], &dev.serial);
        put_string(&mut w[23..27], FIRMWARE);
        put_string(&mut w[27..47], DISK_MODEL);
        w[47] = 0x8000 | u16::from(MAX_MULTIPLE);
        w[49] = (1 << 11) | (1 << 10) | (1 << 9); // IORDY, IORDY can be disabled, LBA
        w[50] = 0x4000;
        w[51] = 0x0200; // PIO timing mode 2 (obsolete field)
        w[53] = 0x0003; // words 54-58 and 64-70 valid
        self.dma_words(&mut w, dev.xfer_mode);
        w[54] = cur.cylinders;
        w[55] = u16::from(cur.heads);
        w[56] = u16::from(cur.sectors);
        let cur_cap = cur.capacity().min(u64::from(u32::MAX)) as u32;
        [w[57], w[58]] = [cur_cap as u16, (cur_cap >> 16) as u16];
        if dev.multiple > 0 {
            w[59] = 0x0100 | u16::from(dev.multiple);
        }
        let lba28 = total.min(LBA28_MAX) as u32;
        [w[60], w[61]] = [lba28 as u16, (lba28 >> 16) as u16];
        w[64] = 0x0003; // PIO modes 3 and 4
        w[65..=68].fill(120); // cycle times (ns)
        w[80] = 0x00f0; // ATA/ATAPI-4 to -7
        w[82] = (1 << 5) | (1 << 3); // write cache, power management
        w[83] = 0x4000 | (1 << 13) | (1 << 12) | (1 << 10); // FLUSH EXT, FLUSH, LBA48
        w[84] = 0x4000;
        w[85] = (u16::from(dev.write_cache) << 5) | (1 << 3);
        w[86] = (1 << 13) | (1 << 12) | (1 << 10);
        w[87] = 0x4000;
        let lba48 = total.min(LBA48_MAX);
        for (i, word) in w[100..104].iter_mut().enumerate() {
            *word = (lba48 >> (16 * i)) as u16;
        }
        to_bytes_with_checksum(&w)
    }
}

impl IdeChannel {
    /// The DMA words of IDENTIFY (PACKET) DEVICE, on a channel with a bus master: DMA
    /// supported (word 49), word 88 valid (53), multiword DMA 0-2 (63) and Ultra DMA 0-5
    /// (88) supported, with `mode` (SET FEATURES 03h encoding) marked selected.
    pub(super) fn dma_words(&self, w: &mut [u16; 256], mode: u8) {
        if !self.dma_capable() {
            return;
        }
        let n = mode & 0x07;
        w[49] |= 1 << 8;
        w[53] |= 1 << 2;
        w[63] = 0x0007;
        w[88] = 0x003f;
        match mode & 0xf8 {
            0x20 if n <= 2 => w[63] |= 0x100 << n,
            0x40 if n <= 5 => w[88] |= 0x100 << n,
            _ => {}
        }
    }
}

/// Store an ATA string: two characters per word, the first in the high byte, padded with
/// spaces.
pub(super) fn put_string(words: &mut [u16], s: &str) {
    let b = s.as_bytes();
    for (i, w) in words.iter_mut().enumerate() {
        let hi = b.get(2 * i).copied().unwrap_or(b' ');
        let lo = b.get(2 * i + 1).copied().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// IDENTIFY words as little-endian bytes, with the integrity word (signature A5h and a
/// checksum making all 512 bytes sum to zero) in word 255.
pub(super) fn to_bytes_with_checksum(w: &[u16; 256]) -> [u8; 512] {
    let mut out = [0u8; 512];
    for (chunk, word) in out.chunks_exact_mut(2).zip(w.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out[510] = 0xa5;
    let sum = out[..511].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    out[511] = sum.wrapping_neg();
    out
}
