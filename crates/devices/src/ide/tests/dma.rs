//! Bus-master DMA driven as Linux's `ata_piix` (libata-sff BMDMA) drives it, over real
//! guest memory (`GuestMemoryMmap`, 16 MiB) and raw image files: IDENTIFY and SET
//! FEATURES, READ/WRITE DMA (EXT) through multi-entry PRD tables, ATAPI data-in by DMA,
//! and the bus-master status bits and interrupts around them.

use super::errors::metric;
use super::*;
use crate::ide::{BusMasterIde, BUS_MASTER_PORTS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size.
pub(super) const MEM: usize = 16 << 20;
/// Where the tests put PRD tables.
pub(super) const TABLE: u32 = 0x1000;
/// Bus-master status bits.
pub(super) const ACTIVE: u8 = 0x01;
pub(super) const BMERR: u8 = 0x02;
pub(super) const INTR: u8 = 0x04;

/// A channel (the primary) with a bus master over it and guest memory; the secondary
/// channel is empty.
pub(super) struct DmaRig {
    pub(super) r: Rig,
    pub(super) bm: BusMasterIde,
    pub(super) mem: GuestMemoryMmap,
}

/// What a DMA command ended with, as the guest's interrupt handler sees it.
#[derive(Debug, Default)]
pub(super) struct Done {
    /// Bus-master status when the handler looked (before stopping the engine).
    pub(super) bm: u8,
    /// ATA status and error registers.
    pub(super) status: u8,
    pub(super) error: u8,
    /// Interrupt reason (sector count register).
    pub(super) reason: u8,
    pub(super) irqs: u64,
}

impl DmaRig {
    pub(super) fn new(master: Option<Spec>, slave: Option<Spec>) -> DmaRig {
        let r = Rig::new(master, slave);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let other = Arc::new(Mutex::new(IdeChannel::new(None, None, IdeIrq(None))));
        let bm = BusMasterIde::new(r.ch.clone(), other, mem.clone());
        DmaRig { r, bm, mem }
    }

    pub(super) fn bm_out(&mut self, reg: u64, v: u8) {
        self.bm.write(reg, &[v]);
    }

    pub(super) fn bm_in(&mut self, reg: u64) -> u8 {
        let mut b = [0u8];
        self.bm.read(reg, &mut b);
        b[0]
    }

    pub(super) fn bm_status(&mut self) -> u8 {
        self.bm_in(2)
    }

    /// Write a PRD table at `at` of (address, bytes) entries (65536 bytes as count 0),
    /// with the end bit on the last.
    pub(super) fn prd_table(&self, at: u32, entries: &[(u32, u32)]) {
        for (i, &(addr, len)) in entries.iter().enumerate() {
            let mut e = [0u8; 8];
            e[..4].copy_from_slice(&addr.to_le_bytes());
            e[4..6].copy_from_slice(&(len as u16).to_le_bytes());
            if i + 1 == entries.len() {
                e[7] = 0x80;
            }
            let where_ = u64::from(at) + 8 * i as u64;
            self.mem.write_slice(&e, GuestAddress(where_)).unwrap();
        }
    }

    /// As `ata_bmdma_setup`: the table address, the direction, the start bit clear.
    pub(super) fn setup(&mut self, table: u32, to_memory: bool) {
        self.bm.write(4, &table.to_le_bytes());
        let cmd = self.bm_in(0) & !0x09;
        self.bm_out(0, cmd | if to_memory { 0x08 } else { 0 });
    }

    /// The PRD table address register.
    pub(super) fn prd_register(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.bm.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    /// As `ata_bmdma_start`.
    pub(super) fn start(&mut self) {
        let c = self.bm_in(0);
        self.bm_out(0, c | 0x01);
    }

    /// As libata's interrupt handler for a DMA command: bus-master status, stop the
    /// engine, ATA status, then clear the bus-master interrupt and error bits by writing
    /// the status back.
    pub(super) fn finish(&mut self) -> Done {
        let irqs = self.r.irqs();
        let bm = self.bm_status();
        let c = self.bm_in(0);
        self.bm_out(0, c & !0x01);
        let status = self.r.status();
        let s = self.bm_status();
        self.bm_out(2, s);
        Done {
            bm,
            status,
            error: self.r.inb(1),
            reason: self.r.inb(2),
            irqs,
        }
    }

    /// Run ATA DMA command `cmd` (LBA48 for 25h/35h) over the PRD table `entries`.
    pub(super) fn ata_dma(
        &mut self,
        cmd: u8,
        lba: u64,
        count: u16,
        entries: &[(u32, u32)],
    ) -> Done {
        self.r.irqs();
        self.prd_table(TABLE, entries);
        self.setup(TABLE, matches!(cmd, 0xc8 | 0x25));
        if matches!(cmd, 0x25 | 0x35) {
            self.r.lba48(cmd, lba, count);
        } else {
            self.r.lba28(cmd, lba as u32, count as u8);
        }
        self.start();
        self.finish()
    }

    /// Issue PACKET with the DMA bit and send `cdb` (the packet phase is PIO).
    pub(super) fn send_packet_dma(&mut self, cdb: &[u8]) {
        self.r.outb(1, 0x01);
        self.r.outb(4, 0);
        self.r.outb(5, 0);
        self.r.outb(7, 0xa0);
        assert_eq!(self.r.status() & (BSY | DRQ), DRQ, "packet phase");
        assert_eq!(self.r.inb(2) & 3, 1, "CoD=1 IO=0 for the packet");
        let mut p = [0u8; 12];
        p[..cdb.len()].copy_from_slice(cdb);
        self.r.write_data(&p);
    }

    /// Run packet command `cdb` with its data going by DMA over `entries`.
    pub(super) fn packet_dma(&mut self, cdb: &[u8], entries: &[(u32, u32)]) -> Done {
        self.r.irqs();
        self.prd_table(TABLE, entries);
        self.setup(TABLE, true);
        self.send_packet_dma(cdb);
        self.start();
        self.finish()
    }

    pub(super) fn fill(&self, at: u64, len: usize, v: u8) {
        self.mem
            .write_slice(&vec![v; len], GuestAddress(at))
            .unwrap();
    }

    pub(super) fn read_mem(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }

    pub(super) fn write_mem(&self, at: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
    }

    /// The bytes of the regions `entries` describe, in order.
    pub(super) fn regions(&self, entries: &[(u32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, len) in entries {
            out.extend(self.read_mem(u64::from(addr), len as usize));
        }
        out
    }

    pub(super) fn metric(&self, name: &str) -> u64 {
        metric(&self.r, name)
    }
}

/// PRD entries of mixed sizes (64 KiB ones, odd-sized even ones, tiny ones) adding up to
/// `total` (even) bytes, in regions from `base` on with a 4 KiB gap after each.
pub(super) fn scattered(total: u32, base: u32) -> Vec<(u32, u32)> {
    const SIZES: [u32; 7] = [0x10000, 512, 4096, 1536, 2, 30_000, 0x10000];
    let (mut at, mut left, mut out) = (base, total, Vec::new());
    for &size in SIZES.iter().cycle() {
        if left == 0 {
            break;
        }
        let n = size.min(left);
        out.push((at, n));
        at += n + 0x1000;
        left -= n;
    }
    out
}

fn words(b: &[u8]) -> Vec<u16> {
    b.chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn identify_advertises_dma_only_with_a_bus_master() {
    let mut pio = Rig::new(
        Some(Spec::Disk(pattern(1 << 20))),
        Some(Spec::Cd(pattern(8192))),
    );
    assert!(!pio.ch.lock().unwrap().dma_capable());
    for (unit, cmd) in [(0u8, 0xecu8), (1, 0xa1)] {
        pio.select(unit);
        let w = pio.identify(cmd);
        assert_eq!((w[49] & 0x100, w[53] & 4, w[63], w[88]), (0, 0, 0, 0));
    }
    let mut d = DmaRig::new(
        Some(Spec::Disk(pattern(1 << 20))),
        Some(Spec::Cd(pattern(8192))),
    );
    assert!(d.r.ch.lock().unwrap().dma_capable());
    for (unit, cmd) in [(0u8, 0xecu8), (1, 0xa1)] {
        d.r.select(unit);
        let w = d.r.identify(cmd);
        assert_ne!(w[49] & 0x100, 0, "DMA supported");
        assert_eq!(w[53] & 0x04, 0x04, "word 88 valid");
        assert_eq!(w[63], 0x0007, "MWDMA 0-2, none selected");
        assert_eq!(w[88], 0x203f, "UDMA 0-5, mode 5 selected after power-on");
        // SET FEATURES selects the mode IDENTIFY shows.
        for (mode, w63, w88) in [
            (0x22u8, 0x0407u16, 0x003fu16),
            (0x20, 0x0107, 0x003f),
            (0x40, 0x0007, 0x013f),
            (0x44, 0x0007, 0x103f),
            (0x0c, 0x0007, 0x003f),
            (0x45, 0x0007, 0x203f),
        ] {
            d.r.outb(1, 0x03);
            d.r.outb(2, mode);
            d.r.outb(7, 0xef);
            assert_eq!(d.r.status(), 0x50, "SET FEATURES mode {mode:#x}");
            let mut b = Vec::new();
            d.r.outb(7, cmd);
            b.extend(d.r.read_data(512));
            let w = words(&b);
            assert_eq!((w[63], w[88]), (w63, w88), "mode {mode:#x}");
            assert_eq!(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0, "checksum");
        }
        // Modes it does not have abort and change nothing.
        for mode in [0x23u8, 0x46, 0x47, 0x10, 0x60] {
            d.r.outb(1, 0x03);
            d.r.outb(2, mode);
            d.r.outb(7, 0xef);
            assert_eq!((d.r.status(), d.r.inb(1)), (0x41, 0x04), "mode {mode:#x}");
        }
        let w = d.r.identify(cmd);
        assert_eq!((w[63], w[88]), (0x0007, 0x203f));
    }
    d.r.outb(1, 0x03);
    d.r.outb(2, 0x21);
    d.r.outb(7, 0xef);
    d.r.ch.lock().unwrap().reset();
    d.r.select(1);
    let w = d.r.identify(0xa1);
    assert_eq!(
        (w[63], w[88]),
        (0x0007, 0x203f),
        "power-on mode after reset"
    );
    // Without a bus master the DMA modes stay rejected.
    pio.select(0);
    pio.outb(1, 0x03);
    pio.outb(2, 0x45);
    pio.outb(7, 0xef);
    assert_eq!((pio.status(), pio.inb(1)), (0x41, 0x04));
}

#[test]
fn read_dma_ext_scatters_into_a_multi_entry_prd_table() {
    let disk = pattern(2 << 20);
    let mut d = DmaRig::new(Some(Spec::Disk(disk.clone())), None);
    let total = 800 * 512; // 400 KiB
    let entries = scattered(total, 0x10_0000);
    assert!(entries.len() > 10);
    let span = entries.last().map(|&(a, l)| a + l + 0x1000).unwrap() - 0x10_0000;
    d.fill(0x10_0000, span as usize, 0xcc);
    let done = d.ata_dma(0x25, 300, 800, &entries);
    assert_eq!(done.irqs, 1, "one interrupt at completion");
    assert_eq!(done.bm, INTR, "interrupt set, active clear, no error");
    assert_eq!(done.status, 0x50, "DRDY DSC, no DRQ, no ERR");
    assert!(
        d.regions(&entries) == disk[300 * 512..300 * 512 + total as usize],
        "data differs"
    );
    // The gaps between the regions are untouched.
    for w in entries.windows(2) {
        let (a, l) = w[0];
        assert_eq!(d.read_mem(u64::from(a + l), 0x1000), vec![0xcc; 0x1000]);
    }
    assert_eq!(d.bm_status(), 0, "interrupt cleared by writing it back");
    assert_eq!(d.bm_in(0), 0x08, "stopped, direction kept");
    assert_eq!(d.prd_register(), TABLE, "the table address reads back");
    assert_eq!(d.r.irqs(), 0);
    assert_eq!(d.metric("dma_transfers"), 1);
    assert_eq!(d.metric("dma_bytes"), u64::from(total));
    assert_eq!(d.metric("sectors_read"), 800);
    assert_eq!(d.metric("dma_errors"), 0);
    // READ DMA (LBA28), 256 sectors (count 0) in two 64 KiB entries (count 0 each).
    let entries: Vec<(u32, u32)> = (0..2)
        .map(|i| (0x40_0000 + i * 0x2_0000, 0x10000))
        .collect();
    let done = d.ata_dma(0xc8, 7, 0, &entries);
    assert_eq!((done.irqs, done.bm, done.status), (1, INTR, 0x50));
    assert!(
        d.regions(&entries) == disk[7 * 512..(7 + 256) * 512],
        "data differs"
    );
}

#[test]
fn the_start_bit_may_come_before_the_command() {
    let disk = pattern(1 << 20);
    let mut d = DmaRig::new(Some(Spec::Disk(disk.clone())), None);
    let entries = [(0x20_0000, 4096), (0x30_0000, 4096)];
    d.prd_table(TABLE, &entries);
    d.setup(TABLE, true);
    d.start();
    assert_eq!(d.bm_status(), ACTIVE, "active with no command yet");
    assert_eq!(d.r.irqs(), 0);
    d.r.lba28(0xc8, 40, 16);
    let done = d.finish();
    assert_eq!((done.irqs, done.bm, done.status), (1, INTR, 0x50));
    assert!(
        d.regions(&entries) == disk[40 * 512..56 * 512],
        "data differs"
    );
    // A command with the start bit clear waits, showing DRQ, and moves nothing.
    d.fill(0x20_0000, 4096, 0);
    d.setup(TABLE, true);
    d.r.lba28(0xc8, 0, 16);
    assert_eq!(d.r.irqs(), 0);
    assert_eq!(
        d.r.status(),
        0x58,
        "DRDY DSC DRQ while waiting for the engine"
    );
    assert_eq!(d.r.read_data(4), [0; 4], "nothing on the data register");
    assert_eq!(d.bm_status(), 0);
    assert_eq!(d.read_mem(0x20_0000, 16), [0; 16]);
    // Toggling start off does nothing; on runs it.
    d.bm_out(0, 0x08);
    assert_eq!(d.r.irqs(), 0);
    d.start();
    let done = d.finish();
    assert_eq!((done.irqs, done.bm, done.status), (1, INTR, 0x50));
    assert!(d.regions(&entries) == disk[..16 * 512], "data differs");
    // A start bit left set from the last command does not run the next one: it needs
    // a new start.
    d.start();
    assert_eq!(d.bm_status(), ACTIVE);
    d.r.lba28(0xc8, 100, 16);
    assert_eq!(d.finish().status, 0x50);
    d.start();
    assert_eq!(d.bm_status(), ACTIVE);
    d.r.lba28(0xc8, 200, 16);
    d.r.irqs();
    assert_eq!(d.bm_status() & ACTIVE, 0, "used up");
    d.r.lba28(0xc8, 300, 16);
    assert_eq!(d.r.status(), 0x58, "waits for a new start");
    d.bm_out(0, 0x08);
    d.start();
    assert_eq!(d.finish().status, 0x50);
    assert!(
        d.regions(&entries) == disk[300 * 512..316 * 512],
        "data differs"
    );
    assert_eq!(d.metric("dma_transfers"), 5);
}

#[test]
fn write_dma_and_write_dma_ext_reach_the_disk() {
    let disk = pattern(1 << 20);
    let mut d = DmaRig::new(Some(Spec::Disk(disk.clone())), None);
    let data: Vec<u8> = (0..64 * 512).map(|i| (i * 7 + 3) as u8).collect();
    let entries = scattered(64 * 512, 0x50_0000);
    let mut at = 0;
    for &(a, l) in &entries {
        d.write_mem(u64::from(a), &data[at..at + l as usize]);
        at += l as usize;
    }
    let done = d.ata_dma(0xca, 10, 64, &entries);
    assert_eq!((done.irqs, done.bm, done.status), (1, INTR, 0x50));
    assert!(
        d.r.file_bytes(0, 10 * 512, data.len()) == data,
        "data differs"
    );
    assert!(d.r.file_bytes(0, 0, 10 * 512) == disk[..10 * 512]);
    assert!(d.r.file_bytes(0, 74 * 512, 512) == disk[74 * 512..75 * 512]);
    // LBA48 high in the disk, one region.
    d.write_mem(0x60_0000, &data[..8192]);
    let done = d.ata_dma(0x35, 2000, 16, &[(0x60_0000, 8192)]);
    assert_eq!((done.irqs, done.bm, done.status), (1, INTR, 0x50));
    assert!(
        d.r.file_bytes(0, 2000 * 512, 8192) == data[..8192],
        "data differs"
    );
    assert_eq!(d.metric("sectors_written"), 80);
    assert_eq!(d.metric("dma_bytes"), 80 * 512);
    // With the write cache off, the write is flushed before it completes.
    d.r.outb(1, 0x82);
    d.r.outb(7, 0xef);
    let flushes = d.metric("flushes");
    let done = d.ata_dma(0xca, 0, 1, &[(0x60_0000, 512)]);
    assert_eq!(done.status, 0x50);
    assert_eq!(d.metric("flushes"), flushes + 1);
    assert_eq!(d.r.file_len(0), disk.len() as u64);
}

/// 300 blocks, the ISO.
fn iso() -> Vec<u8> {
    pattern(300 * 2048)
}

#[test]
fn atapi_read_10_by_dma() {
    let cd = iso();
    let mut d = DmaRig::new(None, Some(Spec::Cd(cd.clone())));
    d.r.select(1);
    let entries = scattered(40 * 2048, 0x20_0000);
    let done = d.packet_dma(&[0x28, 0, 0, 0, 0, 16, 0, 0, 40], &entries);
    assert_eq!(done.irqs, 1, "one interrupt: completion");
    assert_eq!(done.bm, INTR);
    assert_eq!(done.status, 0x50);
    assert_eq!(done.reason & 3, 3, "CoD=1 IO=1 at completion");
    assert!(
        d.regions(&entries) == cd[16 * 2048..56 * 2048],
        "data differs"
    );
    assert_eq!(d.metric("cd_bytes_read"), 40 * 2048);
    assert_eq!(d.metric("dma_bytes"), 40 * 2048);
    // READ(12) of the last blocks and READ CD with user data.
    let done = d.packet_dma(
        &[0xa8, 0, 0, 0, 1, 0x22, 0, 0, 0, 10],
        &[(0x30_0000, 20480)],
    );
    assert_eq!((done.bm, done.status), (INTR, 0x50));
    assert!(
        d.read_mem(0x30_0000, 20480) == cd[290 * 2048..],
        "data differs"
    );
    let done = d.packet_dma(&[0xbe, 0, 0, 0, 0, 5, 0, 0, 2, 0x10], &[(0x30_0000, 4096)]);
    assert_eq!((done.bm, done.status), (INTR, 0x50));
    assert!(
        d.read_mem(0x30_0000, 4096) == cd[5 * 2048..7 * 2048],
        "data differs"
    );
    assert_eq!(
        d.r.file_bytes(1, 0, cd.len()),
        cd,
        "the CD is never written"
    );
}

#[test]
fn atapi_data_in_commands_by_dma() {
    let mut d = DmaRig::new(Some(Spec::Cd(iso())), None);
    // INQUIRY into an exact table: used up, active clear.
    d.fill(0x10_0000, 256, 0xcc);
    let done = d.packet_dma(&[0x12, 0, 0, 0, 36], &[(0x10_0000, 36)]);
    assert_eq!(
        (done.irqs, done.bm, done.status, done.reason & 3),
        (1, INTR, 0x50, 3)
    );
    let inq = d.read_mem(0x10_0000, 36);
    assert_eq!(inq[0], 0x05);
    assert_eq!(&inq[8..12], b"KILN");
    assert_eq!(d.read_mem(0x10_0000 + 36, 4), [0xcc; 4]);
    // The same from PIO, byte for byte.
    let p = d.r.packet(&[0x12, 0, 0, 0, 36], 0xfffe);
    assert_eq!(p.data, inq);
    // A table longer than the reply: the command completes, the engine stays active
    // until stopped.
    d.r.irqs();
    d.prd_table(TABLE, &[(0x11_0000, 256), (0x12_0000, 256)]);
    d.setup(TABLE, true);
    d.send_packet_dma(&[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 255]);
    d.start();
    let done = d.finish();
    assert_eq!(done.bm, INTR | ACTIVE, "longer table: still active");
    assert_eq!((done.status, done.reason & 3), (0x50, 3));
    assert_eq!(d.bm_status(), 0, "stop cleared active");
    let p = d.r.packet(&[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(d.read_mem(0x11_0000, p.data.len()), p.data);
    // READ CAPACITY, REQUEST SENSE after a failure, commands without data.
    let done = d.packet_dma(&[0x25], &[(0x13_0000, 8)]);
    assert_eq!((done.bm, done.status), (INTR, 0x50));
    assert_eq!(d.read_mem(0x13_0000, 8), [0, 0, 0x01, 0x2b, 0, 0, 8, 0]);
    let done = d.packet_dma(&[0x28, 0, 0, 0, 0x10, 0, 0, 0, 1], &[(0x13_0000, 2048)]);
    assert_eq!(
        (done.status, done.error >> 4),
        (0x41, 0x05),
        "LBA out of range"
    );
    assert_eq!(done.bm, INTR | ACTIVE, "nothing ran: no bus-master error");
    let done = d.packet_dma(&[0x03, 0, 0, 0, 18], &[(0x14_0000, 18)]);
    assert_eq!(done.status, 0x50);
    let s = d.read_mem(0x14_0000, 18);
    assert_eq!((s[0], s[2], s[12]), (0x70, 0x05, 0x21));
    let done = d.packet_dma(&[0x00], &[(0x14_0000, 18)]);
    assert_eq!((done.irqs, done.status, done.reason & 3), (1, 0x50, 3));
    assert_eq!(done.bm, INTR | ACTIVE, "no data moved; the table is unused");
    assert_eq!(d.metric("dma_transfers"), 4);
}

#[test]
fn pio_keeps_working_next_to_dma() {
    let disk = pattern(1 << 20);
    let mut d = DmaRig::new(Some(Spec::Disk(disk.clone())), Some(Spec::Cd(iso())));
    let done = d.ata_dma(0xc8, 0, 8, &[(0x10_0000, 4096)]);
    assert_eq!(done.status, 0x50);
    d.r.irqs();
    d.r.lba28(0x20, 3, 2);
    assert!(d.r.pio_in(1024, 512) == disk[3 * 512..5 * 512]);
    assert_eq!(d.bm_status(), INTR, "PIO interrupts latch the bit too");
    assert_eq!(d.bm_status() & (BMERR | ACTIVE), 0);
    d.bm_out(2, INTR);
    // With nIEN set the completion raises no interrupt and latches nothing; clearing
    // nIEN lets the pending one through.
    d.r.control(0x02);
    d.prd_table(TABLE, &[(0x10_0000, 4096)]);
    d.setup(TABLE, true);
    d.r.lba28(0xc8, 8, 8);
    d.start();
    assert_eq!(d.r.irqs(), 0);
    assert_eq!(d.bm_status(), 0, "done, used up, no interrupt");
    assert_eq!(d.r.alt_status(), 0x50);
    d.r.control(0x00);
    assert_eq!(d.r.irqs(), 1);
    assert_eq!(d.bm_status(), INTR);
    assert!(d.read_mem(0x10_0000, 4096) == disk[8 * 512..16 * 512]);
    // The CD by PIO, then by DMA.
    d.r.select(1);
    let p = d.r.packet(&[0x28, 0, 0, 0, 0, 3, 0, 0, 1], 0xfffe);
    assert!(p.data == iso()[3 * 2048..4 * 2048]);
    let done = d.packet_dma(&[0x28, 0, 0, 0, 0, 3, 0, 0, 1], &[(0x10_0000, 2048)]);
    assert_eq!(done.status, 0x50);
    assert!(d.read_mem(0x10_0000, 2048) == p.data);
    let m = d.r.ch.lock().unwrap().metrics();
    for k in ["dma_transfers", "dma_bytes", "dma_errors"] {
        assert!(m.iter().any(|&(n, _)| n == k), "{k} in the metrics");
    }
    assert_eq!(BUS_MASTER_PORTS, 16);
}
