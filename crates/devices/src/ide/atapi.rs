//! The ATAPI CD/DVD-ROM: the ATA commands a packet device answers (IDENTIFY PACKET
//! DEVICE, PACKET, DEVICE RESET, ...), the packet protocol (command packet, data phases
//! split by the byte count limit, completion with interrupt reason), and the SCSI/MMC
//! commands Linux's `sr_mod`, isofs and SeaBIOS send, over a read-only image of
//! 2048-byte blocks. Failures are CHECK CONDITION with sense data for REQUEST SENSE.
//!
//! On a channel with a bus master, PACKET with the DMA feature bit sends the command's
//! data-in (whatever the PIO path would offer in DRQ blocks: READ data, INQUIRY, MODE
//! SENSE, ...) through the bus master instead; the packet itself is still written by PIO.

use super::ata::{put_string, to_bytes_with_checksum, FIRMWARE};
use super::channel::{Device, IdeChannel, InNext, Kind, OutNext, Xfer, ABRT, DRDY, DRQ, DSC, ERR};
use super::dma::DmaOp;

/// SCSI sense data of a failed packet command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sense {
    pub(super) key: u8,
    pub(super) asc: u8,
    pub(super) ascq: u8,
}

impl Sense {
    /// No sense: the last command succeeded.
    pub(super) const NONE: Sense = Sense::new(0, 0);

    const fn new(key: u8, asc: u8) -> Sense {
        Sense { key, asc, ascq: 0 }
    }
}

/// Sense keys.
const NOT_READY: u8 = 0x02;
const MEDIUM_ERROR: u8 = 0x03;
const ILLEGAL_REQUEST: u8 = 0x05;
const DATA_PROTECT: u8 = 0x07;
const ABORTED_COMMAND: u8 = 0x0b;

const INVALID_OPCODE: Sense = Sense::new(ILLEGAL_REQUEST, 0x20);
const LBA_OUT_OF_RANGE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21);
const INVALID_FIELD: Sense = Sense::new(ILLEGAL_REQUEST, 0x24);
const SAVING_UNSUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x39);
/// A DMA transfer could not reach guest memory (or the PRD table was too short).
const DATA_PHASE_ERROR: Sense = Sense::new(ABORTED_COMMAND, 0x4b);
const WRITE_PROTECTED: Sense = Sense::new(DATA_PROTECT, 0x27);
const NO_MEDIUM: Sense = Sense::new(NOT_READY, 0x3a);
const READ_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x11);

/// A CD block.
pub(super) const CD_BLOCK: u64 = 2048;
/// Blocks of an 80-minute CD; larger media are reported as DVDs (as QEMU does).
const CD_MAX_BLOCKS: u64 = 80 * 60 * 75;
/// MMC profiles.
const PROFILE_CDROM: u16 = 0x0008;
const PROFILE_DVDROM: u16 = 0x0010;

/// Model string of the CD-ROM.
pub(super) const CD_MODEL: &str = "KILN DVD-ROM";

/// Interrupt reason (sector count register): command/data.
const IR_COD: u8 = 0x01;
/// Interrupt reason: direction is to the host.
const IR_IO: u8 = 0x02;

/// Where the bytes of an ATAPI data phase come from.
#[derive(Debug)]
pub(super) enum AtapiSrc {
    /// The image, from this byte offset on.
    Image { offset: u64 },
    /// A reply built in memory (at most a few hundred bytes), from `at` on.
    Memory { data: Vec<u8>, at: usize },
}

/// What a packet command produced.
#[derive(Debug)]
enum Reply {
    None,
    Data(Vec<u8>),
    Image { offset: u64, len: u64 },
}

impl IdeChannel {
    /// Execute ATA command `cmd` on the packet device at position `u`.
    pub(super) fn cd_command(&mut self, u: usize, cmd: u8) {
        match cmd {
            0xa0 => self.packet_command(u),
            0xa1 => {
                let id = self.identify_packet(u);
                self.start_in(u, &id, InNext::AtaDone);
            }
            // DEVICE RESET: no interrupt, DRDY stays clear.
            0x08 => self.drive(u).soft_reset(),
            // IDENTIFY DEVICE and the reads abort with the signature loaded: that is how
            // drivers tell a packet device.
            0xec | 0x20 | 0x21 | 0x24 | 0x29 | 0xc4 => {
                self.drive(u).set_signature();
                self.fail(u, ABRT);
            }
            0xef => self.set_features(u, Kind::Cdrom),
            0xe5 => {
                self.drive(u).tf.nsector = 0xff;
                self.complete(u);
            }
            0xe0..=0xe3 | 0xe6 | 0x94..=0x99 => self.complete(u),
            0x90 => self.diagnostic(),
            _ => self.fail(u, ABRT),
        }
    }

    /// PACKET: ask for the 12-byte command packet (no interrupt). The DMA feature bit
    /// aborts without a bus master.
    fn packet_command(&mut self, u: usize) {
        let dma_capable = self.dma_capable();
        let d = self.drive(u);
        let dma = d.tf.feature & 0x01 != 0;
        if dma && !dma_capable {
            return self.fail(u, ABRT);
        }
        let limit = u16::from_le_bytes([d.tf.lcyl, d.tf.hcyl]);
        d.tf.nsector = IR_COD;
        self.start_out(u, 12, OutNext::Packet { limit, dma }, false);
    }

    /// The guest wrote the command packet: run it, its data going by DMA if `dma`.
    pub(super) fn exec_packet(&mut self, u: usize, limit: u16, dma: bool) {
        self.m.packets += 1;
        let d = self.drive(u);
        let mut cdb = [0u8; 12];
        if let Some(p) = d.buf.get(..12) {
            cdb.copy_from_slice(p);
        }
        let Some(dev) = d.dev.as_mut() else { return };
        let res = scsi(dev, &cdb);
        if res.is_ok() {
            dev.sense = Sense::NONE;
        }
        match res {
            Err(sense) => self.atapi_check(u, sense),
            Ok(Reply::None) => self.atapi_ok(u),
            Ok(Reply::Data(data)) if !data.is_empty() => {
                let left = data.len() as u64;
                let src = AtapiSrc::Memory { data, at: 0 };
                if dma {
                    self.atapi_dma(u, src, left);
                } else {
                    self.atapi_block(u, src, left, limit);
                }
            }
            Ok(Reply::Image { offset, len }) if len > 0 => {
                let src = AtapiSrc::Image { offset };
                if dma {
                    self.atapi_dma(u, src, len);
                } else {
                    self.atapi_block(u, src, len, limit);
                }
            }
            Ok(_) => self.atapi_ok(u),
        }
    }

    /// Offer the next DRQ block of a data phase (`left` > 0 bytes to go).
    pub(super) fn atapi_block(&mut self, u: usize, mut src: AtapiSrc, left: u64, limit: u16) {
        let len = block_len(left, limit);
        let d = self.drive(u);
        let Some(dev) = d.dev.as_mut() else { return };
        d.buf.clear();
        d.buf.resize(len, 0);
        let ok = match &mut src {
            AtapiSrc::Image { offset } => {
                let ok = dev.image.read_at(&mut d.buf, *offset).is_ok();
                *offset += len as u64;
                ok
            }
            AtapiSrc::Memory { data, at } => {
                if let Some(part) = data.get(*at..).and_then(|rest| rest.get(..len)) {
                    d.buf.copy_from_slice(part);
                }
                *at += len;
                true
            }
        };
        if !ok {
            self.m.io_errors += 1;
            return self.atapi_check(u, READ_ERROR);
        }
        if matches!(src, AtapiSrc::Image { .. }) {
            self.m.cd_bytes_read += len as u64;
        }
        let d = self.drive(u);
        [d.tf.lcyl, d.tf.hcyl] = (len as u16).to_le_bytes();
        d.tf.nsector = IR_IO;
        d.pos = 0;
        d.xfer = Xfer::In(InNext::Atapi {
            src,
            left: left - len as u64,
            limit,
        });
        d.status = DRDY | DSC | DRQ;
        self.set_irq(true);
    }

    /// Hand a data phase of `len` (> 0) bytes to the bus master.
    fn atapi_dma(&mut self, u: usize, src: AtapiSrc, len: u64) {
        self.drive(u).tf.nsector = IR_IO;
        self.start_dma(u, DmaOp::AtapiIn { src, len });
    }

    /// A DMA data phase could not reach guest memory: CHECK CONDITION, ABORTED COMMAND.
    pub(super) fn atapi_dma_failed(&mut self, u: usize) {
        self.atapi_check(u, DATA_PHASE_ERROR);
    }

    /// A DMA data phase could not read the image: CHECK CONDITION, MEDIUM ERROR.
    pub(super) fn atapi_read_failed(&mut self, u: usize) {
        self.atapi_check(u, READ_ERROR);
    }

    /// Packet command completed: status, interrupt reason "command complete", interrupt.
    pub(super) fn atapi_ok(&mut self, u: usize) {
        let d = self.drive(u);
        d.abandon();
        d.error = 0;
        d.tf.nsector = IR_IO | IR_COD;
        d.status = DRDY | DSC;
        self.set_irq(true);
    }

    /// Packet command failed: CHECK CONDITION with `sense`.
    fn atapi_check(&mut self, u: usize, sense: Sense) {
        let d = self.drive(u);
        d.abandon();
        if let Some(dev) = d.dev.as_mut() {
            dev.sense = sense;
        }
        d.error = sense.key << 4;
        d.tf.nsector = IR_IO | IR_COD;
        d.status = DRDY | ERR;
        self.m.errors += 1;
        self.set_irq(true);
    }

    /// IDENTIFY PACKET DEVICE data of the CD at `u`.
    fn identify_packet(&self, u: usize) -> [u8; 512] {
        let mut w = [0u16; 256];
        let Some(dev) = self.drives[u & 1].dev.as_ref() else {
            return [0; 512];
        };
        // ATAPI, CD-ROM, removable, DRQ within 50 us, 12-byte packets.
        w[0] = 0x85c0;
        put_string(&mut w[10..20], &dev.serial);
        put_string(&mut w[23..27], FIRMWARE);
        put_string(&mut w[27..47], CD_MODEL);
        w[49] = (1 << 11) | (1 << 10) | (1 << 9); // IORDY, IORDY can be disabled, LBA
        w[50] = 0x4000;
        w[51] = 0x0200;
        w[53] = 0x0002; // words 64-70 valid
        self.dma_words(&mut w, dev.xfer_mode);
        w[64] = 0x0003; // PIO modes 3 and 4
        w[65..=68].fill(120);
        w[80] = 0x00f0;
        w[82] = (1 << 9) | (1 << 4); // DEVICE RESET, PACKET feature set
        w[83] = 0x4000;
        w[84] = 0x4000;
        w[85] = (1 << 9) | (1 << 4);
        w[87] = 0x4000;
        to_bytes_with_checksum(&w)
    }
}

/// The length of the next DRQ block: what is left if it fits the byte count limit (0 and
/// FFFFh mean FFFEh), else the limit rounded down to even (at least 2).
fn block_len(left: u64, limit: u16) -> usize {
    let lim = u64::from(match limit {
        0 | 0xffff => 0xfffe,
        l => l,
    });
    (if left <= lim { left } else { (lim & !1).max(2) }) as usize
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([
        b.get(i).copied().unwrap_or(0),
        b.get(i + 1).copied().unwrap_or(0),
    ])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from(be16(b, i)) << 16 | u32::from(be16(b, i + 2))
}

/// A reply cut to the host's allocation length.
fn reply(mut v: Vec<u8>, alloc: usize) -> Result<Reply, Sense> {
    v.truncate(alloc);
    Ok(Reply::Data(v))
}

/// Blocks on the disc, or NOT READY if there is none.
fn medium(dev: &Device) -> Result<u64, Sense> {
    match dev.image.size() / CD_BLOCK {
        0 => Err(NO_MEDIUM),
        n => Ok(n),
    }
}

/// Run one SCSI/MMC command.
fn scsi(dev: &mut Device, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    match cdb[0] {
        0x00 => medium(dev).map(|_| Reply::None), // TEST UNIT READY
        0x03 => {
            // REQUEST SENSE: fixed format; reading it clears it.
            let s = std::mem::replace(&mut dev.sense, Sense::NONE);
            let mut v = vec![0u8; 18];
            v[0] = 0x70;
            v[2] = s.key;
            v[7] = 10;
            v[12] = s.asc;
            v[13] = s.ascq;
            reply(v, usize::from(cdb[4]))
        }
        0x12 => inquiry(cdb),
        0x1a => mode_sense(cdb, false),
        0x5a => mode_sense(cdb, true),
        // START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, SET CD SPEED.
        0x1b | 0x1e | 0xbb => Ok(Reply::None),
        0x25 => {
            let blocks = medium(dev)?;
            let last = (blocks - 1).min(u64::from(u32::MAX)) as u32;
            let mut v = last.to_be_bytes().to_vec();
            v.extend_from_slice(&(CD_BLOCK as u32).to_be_bytes());
            Ok(Reply::Data(v))
        }
        0x28 => read(dev, be32(cdb, 2), u32::from(be16(cdb, 7))),
        0xa8 => read(dev, be32(cdb, 2), be32(cdb, 6)),
        0xbe => read_cd(dev, cdb),
        0x2b => {
            let blocks = medium(dev)?;
            if u64::from(be32(cdb, 2)) >= blocks {
                return Err(LBA_OUT_OF_RANGE);
            }
            Ok(Reply::None)
        }
        0x43 => read_toc(dev, cdb),
        0x42 => read_subchannel(dev, cdb),
        0x46 => get_configuration(dev, cdb),
        0x4a => {
            // GET EVENT STATUS NOTIFICATION: polled only; media class: no change.
            if cdb[1] & 0x01 == 0 {
                return Err(INVALID_FIELD);
            }
            let v = if cdb[4] & 0x10 != 0 {
                let present = u8::from(medium(dev).is_ok()) << 1;
                vec![0, 6, 0x04, 0x10, 0, present, 0, 0]
            } else {
                vec![0, 2, 0x80, 0x10]
            };
            reply(v, usize::from(be16(cdb, 7)))
        }
        0x51 => {
            // READ DISC INFORMATION: one complete session with one track.
            if cdb[1] & 0x07 != 0 {
                return Err(INVALID_FIELD);
            }
            medium(dev)?;
            let mut v = vec![0u8; 34];
            v[1] = 32;
            v[2] = 0x0e; // last session complete, disc complete
            v[3..7].copy_from_slice(&[1, 1, 1, 1]);
            v[16..24].fill(0xff);
            reply(v, usize::from(be16(cdb, 7)))
        }
        0xbd => {
            // MECHANISM STATUS: no changer, idle, door closed.
            reply(vec![0u8; 8], usize::from(be16(cdb, 8)))
        }
        // WRITE(6), WRITE(10), WRITE(12), WRITE AND VERIFY(10), FORMAT UNIT.
        0x0a | 0x2a | 0xaa | 0x2e | 0x04 => Err(WRITE_PROTECTED),
        _ => Err(INVALID_OPCODE),
    }
}

fn inquiry(cdb: &[u8; 12]) -> Result<Reply, Sense> {
    let alloc = usize::from(be16(cdb, 3));
    if cdb[1] & 0x01 != 0 {
        // Vital product data: only the list of supported pages.
        return match cdb[2] {
            0x00 => reply(vec![0x05, 0x00, 0x00, 0x01, 0x00], alloc),
            _ => Err(INVALID_FIELD),
        };
    }
    if cdb[2] != 0 {
        return Err(INVALID_FIELD);
    }
    let mut v = vec![0u8; 36];
    v[0] = 0x05; // CD/DVD device
    v[1] = 0x80; // removable
    v[2] = 0x05; // SPC-3
    v[3] = 0x02; // response data format
    v[4] = 31;
    pad(&mut v[8..16], "KILN");
    pad(&mut v[16..32], "DVD-ROM");
    pad(&mut v[32..36], FIRMWARE);
    reply(v, alloc)
}

fn pad(dst: &mut [u8], s: &str) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}

fn mode_sense(cdb: &[u8; 12], ten: bool) -> Result<Reply, Sense> {
    let control = cdb[2] >> 6;
    if control == 3 {
        return Err(SAVING_UNSUPPORTED);
    }
    if cdb[3] != 0 {
        return Err(INVALID_FIELD); // subpages
    }
    let changeable = control == 1;
    let mut pages = Vec::new();
    match cdb[2] & 0x3f {
        0x01 => error_recovery_page(&mut pages, changeable),
        0x2a => capabilities_page(&mut pages, changeable),
        0x3f => {
            error_recovery_page(&mut pages, changeable);
            capabilities_page(&mut pages, changeable);
        }
        _ => return Err(INVALID_FIELD),
    }
    let (mut v, alloc) = if ten {
        (vec![0u8; 8], usize::from(be16(cdb, 7)))
    } else {
        (vec![0u8; 4], usize::from(cdb[4]))
    };
    v.extend_from_slice(&pages);
    if ten {
        let len = (v.len() - 2) as u16;
        v[..2].copy_from_slice(&len.to_be_bytes());
    } else {
        v[0] = (v.len() - 1) as u8;
    }
    reply(v, alloc)
}

fn error_recovery_page(out: &mut Vec<u8>, changeable: bool) {
    let retries = if changeable { 0 } else { 5 };
    out.extend_from_slice(&[0x01, 0x06, 0x00, retries, 0, 0, 0, 0]);
}

/// The CD/DVD capabilities and mechanical status page (2Ah).
fn capabilities_page(out: &mut Vec<u8>, changeable: bool) {
    let mut p = [0u8; 20];
    p[0] = 0x2a;
    p[1] = 18;
    if !changeable {
        p[2] = 0x08; // reads DVD-ROM (and CD-ROM)
        p[4] = 0x40; // multi-session
        p[6] = 0x29; // tray, eject, lock
        p[8..10].copy_from_slice(&706u16.to_be_bytes()); // 4x, KB/s
        p[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer, KiB
        p[14..16].copy_from_slice(&706u16.to_be_bytes());
    }
    out.extend_from_slice(&p);
}

fn read(dev: &Device, lba: u32, count: u32) -> Result<Reply, Sense> {
    let blocks = medium(dev)?;
    if u64::from(lba) + u64::from(count) > blocks {
        return Err(LBA_OUT_OF_RANGE);
    }
    Ok(Reply::Image {
        offset: u64::from(lba) * CD_BLOCK,
        len: u64::from(count) * CD_BLOCK,
    })
}

/// READ CD: user data of mode-1 (or any-type) sectors only.
fn read_cd(dev: &Device, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    let sector_type = (cdb[1] >> 2) & 0x07;
    let lba = be32(cdb, 2);
    let count = u32::from_be_bytes([0, cdb[6], cdb[7], cdb[8]]);
    if !matches!(sector_type, 0 | 2) || cdb[10] & 0x07 != 0 {
        return Err(INVALID_FIELD);
    }
    match cdb[9] {
        0x10 => read(dev, lba, count),
        0x00 => read(dev, lba, count).map(|_| Reply::None),
        _ => Err(INVALID_FIELD),
    }
}

/// An address for the TOC: an LBA, or minutes/seconds/frames (with the 2 s pregap).
fn toc_addr(lba: u64, msf: bool) -> [u8; 4] {
    if !msf {
        return (lba.min(u64::from(u32::MAX)) as u32).to_be_bytes();
    }
    let f = (lba + 150).min(255 * 4500 + 59 * 75 + 74);
    [0, (f / 4500) as u8, (f / 75 % 60) as u8, (f % 75) as u8]
}

fn read_toc(dev: &Device, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    let blocks = medium(dev)?;
    let msf = cdb[1] & 0x02 != 0;
    // The format is in byte 2; old drivers (and Linux's sr_cd_check) use byte 9's top bits.
    let format = match cdb[2] & 0x0f {
        0 => cdb[9] >> 6,
        f => f,
    };
    let alloc = usize::from(be16(cdb, 7));
    let track = |v: &mut Vec<u8>, number: u8, lba: u64| {
        v.extend_from_slice(&[0, 0x14, number, 0]); // ADR 1, data track
        v.extend_from_slice(&toc_addr(lba, msf));
    };
    let mut v = vec![0, 0, 1, 1]; // first and last track (or session)
    match format {
        0 => {
            let start = cdb[6];
            if start <= 1 {
                track(&mut v, 1, 0);
            } else if start != 0xaa {
                return Err(INVALID_FIELD);
            }
            track(&mut v, 0xaa, blocks);
        }
        1 => track(&mut v, 1, 0), // multisession: the first track of the last session
        _ => return Err(INVALID_FIELD),
    }
    let len = (v.len() - 2) as u16;
    v[..2].copy_from_slice(&len.to_be_bytes());
    reply(v, alloc)
}

fn read_subchannel(dev: &Device, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    medium(dev)?;
    let alloc = usize::from(be16(cdb, 7));
    // Audio status 15h: no current audio status to return.
    if cdb[2] & 0x40 == 0 {
        return reply(vec![0, 0x15, 0, 0], alloc);
    }
    match cdb[3] {
        0x01 => {
            let mut v = vec![0, 0x15, 0, 12, 0x01, 0x14, 1, 1];
            let a = toc_addr(0, cdb[1] & 0x02 != 0);
            v.extend_from_slice(&a);
            v.extend_from_slice(&[0; 4]);
            reply(v, alloc)
        }
        _ => Err(INVALID_FIELD),
    }
}

fn get_configuration(dev: &Device, cdb: &[u8; 12]) -> Result<Reply, Sense> {
    let rt = cdb[1] & 0x03;
    if rt == 3 {
        return Err(INVALID_FIELD);
    }
    let start = be16(cdb, 2);
    let alloc = usize::from(be16(cdb, 7));
    let blocks = medium(dev).unwrap_or(0);
    let profile = match blocks {
        0 => 0,
        b if b > CD_MAX_BLOCKS => PROFILE_DVDROM,
        _ => PROFILE_CDROM,
    };
    let is = |p: u16| u8::from(profile == p);
    let mut features: Vec<(u16, bool, Vec<u8>)> = vec![
        // Profile list.
        (
            0x0000,
            true,
            vec![
                0,
                0,
                0x03,
                8,
                0,
                0x10,
                is(PROFILE_DVDROM),
                0,
                0,
                0x08,
                is(PROFILE_CDROM),
                0,
            ],
        ),
        // Core: ATAPI interface, device busy events.
        (0x0001, true, vec![0, 1, 0x07, 8, 0, 0, 0, 2, 1, 0, 0, 0]),
        // Removable medium: tray, eject, lock.
        (0x0003, true, vec![0, 3, 0x03, 4, 0x29, 0, 0, 0]),
    ];
    let blocking: u16 = if profile == PROFILE_DVDROM { 16 } else { 1 };
    let mut random = vec![0, 0x10, u8::from(profile != 0), 8];
    random.extend_from_slice(&(CD_BLOCK as u32).to_be_bytes());
    random.extend_from_slice(&blocking.to_be_bytes());
    random.extend_from_slice(&[0, 0]);
    features.push((0x0010, profile != 0, random));

    let mut v = vec![0u8; 8];
    v[6..8].copy_from_slice(&profile.to_be_bytes());
    for (code, current, desc) in &features {
        let wanted = match rt {
            0 => *code >= start,
            1 => *code >= start && *current,
            _ => *code == start,
        };
        if wanted {
            v.extend_from_slice(desc);
        }
    }
    let len = (v.len() - 4) as u32;
    v[..4].copy_from_slice(&len.to_be_bytes());
    reply(v, alloc)
}
