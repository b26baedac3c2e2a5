//! Bus-master DMA against a hostile or broken guest: PRD tables and regions outside
//! memory, short and endless tables, bad requests, image errors, odd register accesses,
//! and a randomized storm mixing DMA and PIO. Nothing may panic, hang or touch bytes
//! outside guest memory or the image, failures must show in the bus-master and ATA
//! status, and the devices must stay usable.

use super::dma::{scattered, DmaRig, ACTIVE, BMERR, INTR, MEM, TABLE};
use super::errors::flaky;
use super::hostile::{assert_bounded, assert_usable, drain, Rng};
use super::*;

fn disk_rig() -> (DmaRig, Vec<u8>) {
    let disk = pattern(1 << 20);
    (
        DmaRig::new(
            Some(Spec::Disk(disk.clone())),
            Some(Spec::Cd(pattern(64 * 2048))),
        ),
        disk,
    )
}

#[test]
fn a_prd_table_outside_memory_fails_with_the_error_bit() {
    let (mut d, disk) = disk_rig();
    for table in [MEM as u32, 0xffff_fff8, MEM as u32 - 4] {
        d.r.irqs();
        d.setup(table, true);
        assert_eq!(d.prd_register(), table & !3);
        d.r.lba28(0xc8, 0, 1);
        d.start();
        let done = d.finish();
        assert_eq!(done.irqs, 1, "the failure interrupts");
        assert_eq!(done.bm, BMERR | INTR, "error, interrupt, not active");
        assert_eq!((done.status, done.error), (0x41, 0x04), "ERR, ABRT");
        assert_eq!(
            d.bm_status(),
            0,
            "error and interrupt cleared by writing 1s"
        );
    }
    assert_eq!(d.metric("dma_errors"), 3);
    assert_eq!(d.metric("dma_transfers"), 3);
    assert_eq!(d.metric("errors"), 3);
    // Usable afterwards.
    let done = d.ata_dma(0xc8, 2, 1, &[(0x1_0000, 512)]);
    assert_eq!((done.bm, done.status), (INTR, 0x50));
    assert!(d.read_mem(0x1_0000, 512) == disk[1024..1536]);
}

#[test]
fn regions_outside_memory_fail_and_stop_at_its_end() {
    let (mut d, disk) = disk_rig();
    // Entirely outside.
    let done = d.ata_dma(0xc8, 0, 8, &[(0xfff0_0000, 4096)]);
    assert_eq!(
        (done.bm, done.status, done.error),
        (BMERR | INTR, 0x41, 0x04)
    );
    // Straddling the end: what fits may land, nothing past it.
    let end = MEM as u32;
    d.fill(u64::from(end) - 4096, 4096, 0);
    let done = d.ata_dma(0xc8, 0, 16, &[(end - 2048, 8192)]);
    assert_eq!(
        (done.bm, done.status, done.error),
        (BMERR | INTR, 0x41, 0x04)
    );
    // A good region, then a bad one: the write stops without writing the bad chunk.
    d.write_mem(0x10_0000, &[0xee; 4096]);
    let done = d.ata_dma(0xca, 0, 16, &[(0x10_0000, 4096), (0xffff_0000, 4096)]);
    assert_eq!(
        (done.bm, done.status, done.error),
        (BMERR | INTR, 0x41, 0x04)
    );
    assert!(
        d.r.file_bytes(0, 0, 8192) == disk[..8192],
        "nothing written"
    );
    // Odd addresses and counts lose their low bit.
    d.fill(0x20_0000, 16, 0xcc);
    let done = d.ata_dma(0xc8, 5, 1, &[(0x20_0001, 511), (0x30_0000, 2)]);
    assert_eq!((done.bm, done.status), (INTR, 0x50));
    assert!(d.read_mem(0x20_0000, 510) == disk[5 * 512..5 * 512 + 510]);
    assert!(d.read_mem(0x30_0000, 2) == disk[6 * 512 - 2..6 * 512]);
    assert_eq!(d.metric("dma_errors"), 3);
}

#[test]
fn short_tables_fail_long_tables_leave_the_engine_active() {
    let (mut d, disk) = disk_rig();
    d.fill(0x10_0000, 8192, 0xcc);
    let done = d.ata_dma(0xc8, 0, 8, &[(0x10_0000, 2048), (0x11_0000, 1024)]);
    assert_eq!(
        (done.bm, done.status, done.error),
        (BMERR | INTR, 0x41, 0x04)
    );
    // Writes: the gathered data never reaches the disk.
    let done = d.ata_dma(0xca, 0, 8, &[(0x10_0000, 4094)]);
    assert_eq!(
        (done.bm, done.status, done.error),
        (BMERR | INTR, 0x41, 0x04)
    );
    assert!(
        d.r.file_bytes(0, 0, 4096) == disk[..4096],
        "nothing written"
    );
    // Longer: completes, data right, active until stopped.
    let done = d.ata_dma(0xc8, 0, 8, &[(0x10_0000, 0), (0x20_0000, 4096)]);
    assert_eq!((done.bm, done.status), (INTR | ACTIVE, 0x50));
    assert!(d.read_mem(0x10_0000, 4096) == disk[..4096]);
    assert_eq!(d.bm_status(), 0);
    // ATAPI: a short table is CHECK CONDITION, ABORTED COMMAND / data phase error.
    d.r.select(1);
    let done = d.packet_dma(&[0x28, 0, 0, 0, 0, 0, 0, 0, 2], &[(0x10_0000, 2048)]);
    assert_eq!(
        (done.bm, done.status, done.error >> 4),
        (BMERR | INTR, 0x41, 0x0b)
    );
    assert_eq!(done.reason & 3, 3);
    let p = d.r.packet(&[0x03, 0, 0, 0, 18], 0xfffe);
    assert_eq!((p.data[2], p.data[12]), (0x0b, 0x4b));
    assert_usable(&mut d.r, 1, true);
    assert_usable(&mut d.r, 0, false);
}

#[test]
fn bad_requests_fail_before_the_engine_runs() {
    let (mut d, _) = disk_rig();
    // LBA out of range: IDNF at once; the interrupt latches, the engine moves nothing.
    d.fill(0x10_0000, 512, 0xcc);
    let done = d.ata_dma(0x25, (1 << 20) / 512, 1, &[(0x10_0000, 512)]);
    assert_eq!((done.irqs, done.status, done.error), (1, 0x41, 0x14));
    assert_eq!(done.bm, INTR | ACTIVE, "started with nothing to do");
    assert_eq!(d.read_mem(0x10_0000, 512), vec![0xcc; 512]);
    assert_eq!(d.metric("dma_transfers"), 0);
    // A read-only image rejects WRITE DMA.
    let mut ro = DmaRig::new(Some(Spec::ReadOnlyDisk(pattern(64 * 1024))), None);
    let done = ro.ata_dma(0xca, 0, 1, &[(0x10_0000, 512)]);
    assert_eq!((done.status, done.error), (0x41, 0x04));
    assert_eq!(ro.metric("read_only_rejects"), 1);
    assert!(ro.r.file_bytes(0, 0, 64 * 1024) == pattern(64 * 1024));
    // Image errors fail as PIO does, with no bus-master error.
    let mut bad = DmaRig::new(
        Some(Spec::Media(IdeMedia::Disk(flaky(
            64 * 512,
            10 * 512,
            false,
        )))),
        None,
    );
    let done = bad.ata_dma(0xc8, 8, 4, &[(0x10_0000, 2048)]);
    assert_eq!(
        (done.bm, done.status, done.error),
        (INTR, 0x41, 0x40),
        "UNC"
    );
    assert_eq!(bad.r.inb(3), 8, "reported at the chunk that failed");
    let done = bad.ata_dma(0xca, 9, 2, &[(0x10_0000, 1024)]);
    assert_eq!((done.bm, done.status, done.error), (INTR, 0x41, 0x04));
    assert_eq!((bad.metric("io_errors"), bad.metric("dma_errors")), (2, 0));
}

#[test]
fn endless_tables_are_bounded() {
    let (mut d, _) = disk_rig();
    // 8192 two-byte entries and no end bit: 16 KiB, less than the 32 KiB asked for.
    let mut table = Vec::new();
    for i in 0..9000u32 {
        table.extend_from_slice(&(0x40_0000 + 2 * i).to_le_bytes());
        table.extend_from_slice(&[2, 0, 0, 0]);
    }
    d.write_mem(0x10_0000, &table);
    d.r.irqs();
    d.setup(0x10_0000, true);
    d.r.lba28(0xc8, 0, 64);
    d.start();
    let done = d.finish();
    assert_eq!((done.bm, done.status), (BMERR | INTR, 0x41));
    // An all-zero table: every entry is 64 KiB at address 0, no end: a 32 MiB read
    // into the same 64 KiB succeeds and leaves the engine active.
    let mut big = DmaRig::new(Some(Spec::SparseDisk(64 << 20)), None);
    big.r.irqs();
    big.setup(0x20_0000, true);
    big.r.lba48(0x25, 0, 0);
    big.start();
    let done = big.finish();
    assert_eq!((done.bm, done.status), (INTR | ACTIVE, 0x50));
    assert_eq!(big.metric("dma_bytes"), 32 << 20);
    assert_usable(&mut big.r, 0, false);
}

#[test]
fn the_direction_bit_is_not_checked() {
    let (mut d, _) = disk_rig();
    d.write_mem(0x10_0000, &[0x5a; 512]);
    d.prd_table(TABLE, &[(0x10_0000, 512)]);
    d.setup(TABLE, true); // "write to memory", but the command writes the disk
    d.r.lba28(0xca, 3, 1);
    d.start();
    let done = d.finish();
    assert_eq!((done.bm, done.status), (INTR, 0x50));
    assert_eq!(d.r.file_bytes(0, 3 * 512, 512), vec![0x5a; 512]);
    assert_eq!(d.bm_in(0), 0x08, "the bit reads back");
}

#[test]
fn odd_register_accesses() {
    let (mut d, _) = disk_rig();
    // Whole dwords: command, reserved, status, reserved; the PRD address dword aligned.
    d.bm.write(4, &0x1234_5677u32.to_le_bytes());
    let mut b = [0u8; 4];
    d.bm.read(4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1234_5674);
    d.bm.write(0, &[0xff, 0xff, 0xff, 0xff]);
    d.bm.read(0, &mut b);
    assert_eq!(
        b,
        [0x09, 0, ACTIVE | 0x60, 0],
        "start, direction; capable bits"
    );
    d.bm.write(2, &[0x9f]);
    assert_eq!(d.bm_status(), ACTIVE, "active and simplex are read-only");
    // Crossing into the secondary channel's registers and past the end.
    d.bm.write(6, &[0, 0, 0x01, 0, 0x60]);
    assert_eq!([d.bm_in(8), d.bm_in(10)], [0x01, ACTIVE | 0x60]);
    assert_eq!(d.bm_in(0) & 1, 1, "primary untouched");
    let mut wide = [0u8; 8];
    d.bm.read(12, &mut wide);
    assert_eq!(&wide[4..], [0xff; 4], "past the 16 ports");
    d.bm.write(15, &[1, 2, 3, 4]);
    d.bm.write(u64::MAX, &[1, 2]);
    d.bm.read(u64::MAX - 1, &mut wide);
    d.bm.write(0, &[]);
    d.bm.read(0, &mut []);
    d.bm.write(1, &[0xff]);
    d.bm.write(3, &[0xff]);
    assert_eq!([d.bm_in(1), d.bm_in(3)], [0, 0]);
    // A hardware reset clears them.
    d.r.ch.lock().unwrap().reset();
    d.bm.read(0, &mut wide);
    assert_eq!(wide, [0; 8]);
    assert_usable(&mut d.r, 0, false);
}

/// PRD tables the storm points at: good ones, a short one, one outside memory, one
/// without an end bit, and tiny entries.
fn storm_tables(d: &DmaRig) -> Vec<u32> {
    let good = scattered(256 * 1024, 0x40_0000);
    d.prd_table(0x1000, &good);
    d.prd_table(0x2000, &[(0x80_0000, 512)]);
    d.prd_table(0x3000, &[(0xfff0_0000, 4096)]);
    let mut endless = Vec::new();
    for i in 0..200u32 {
        endless.extend_from_slice(&(0x90_0000 + 0x100 * i).to_le_bytes());
        endless.extend_from_slice(&[0x00, 0x01, 0, 0]);
    }
    d.write_mem(0x4000, &endless);
    d.prd_table(
        0x6000,
        &[(0xa0_0000, 2), (0xa0_1000, 4), (MEM as u32 - 16, 64)],
    );
    vec![0x1000, 0x2000, 0x3000, 0x4000, 0x6000, MEM as u32 - 8, 0]
}

#[test]
fn randomized_storm_mixing_dma_and_pio() {
    let disk = pattern(512 * 1024);
    let cd = pattern(64 * 2048);
    let mut d = DmaRig::new(Some(Spec::Disk(disk.clone())), Some(Spec::Cd(cd.clone())));
    let tables = storm_tables(&d);
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    const CMDS: [u8; 20] = [
        0xc8, 0x25, 0xca, 0x35, 0xc9, 0xcb, 0xa0, 0xa0, 0xa1, 0xec, 0x20, 0x30, 0xef, 0x90, 0x08,
        0xe7, 0x24, 0x34, 0x00, 0xff,
    ];
    for i in 0..30_000u32 {
        let width = [1usize, 2, 4][rng.below(3) as usize];
        match rng.below(21) {
            0..=2 => {
                let reg = rng.below(18);
                let v = match rng.below(3) {
                    0 => [0x00, 0x01, 0x08, 0x09][rng.below(4) as usize],
                    _ => rng.byte(),
                };
                d.bm.write(reg, &vec![v; width]);
            }
            3 => {
                let t = tables[rng.below(tables.len() as u64) as usize];
                d.bm.write(4 + 8 * rng.below(2), &t.to_le_bytes());
            }
            4 => {
                let mut b = vec![0u8; width];
                d.bm.read(rng.below(18), &mut b);
            }
            5 => {
                let s = d.bm_status();
                d.bm_out(2, s);
            }
            6..=7 => {
                // A task file for a small request, then a command.
                d.r.outb(1, rng.byte() & 0x03);
                d.r.outb(2, rng.below(40) as u8);
                d.r.outb(3, rng.byte());
                d.r.outb(4, if rng.below(2) == 0 { 0 } else { rng.byte() });
                d.r.outb(5, 0);
                d.r.outb(6, 0xe0 | (rng.byte() & 0x10));
                let cmd = if rng.below(5) == 0 {
                    rng.byte()
                } else {
                    CMDS[rng.below(CMDS.len() as u64) as usize]
                };
                d.r.outb(7, cmd);
            }
            8 => {
                // A packet: mostly reads and data-in commands.
                let mut cdb = [0u8; 12];
                cdb[0] = [0x28, 0xa8, 0x12, 0x5a, 0x03, 0x25, 0x43, 0x46, 0xbe, 0x00]
                    [rng.below(10) as usize];
                for b in &mut cdb[1..] {
                    *b = if rng.below(3) == 0 { rng.byte() } else { 0 };
                }
                cdb[8] = rng.below(20) as u8;
                d.r.write_data(&cdb);
            }
            9..=10 => {
                let mut b = vec![0u8; width * (1 + rng.below(64) as usize)];
                d.r.cmd.read(0, &mut b);
            }
            11 => {
                let b: Vec<u8> = (0..width * (1 + rng.below(64) as usize))
                    .map(|_| rng.byte())
                    .collect();
                d.r.cmd.write(0, &b);
            }
            12..=13 => {
                let mut b = vec![0u8; width];
                d.r.cmd.read(1 + rng.below(7), &mut b);
            }
            14 => {
                let v = rng.byte() & !(if rng.below(4) == 0 { 0 } else { 0x04 });
                d.r.control(v);
            }
            15 => d.r.select(rng.below(2) as u8),
            17..=18 => {
                // Most of a driver's DMA sequence, in either order, stopped or not.
                let t = tables[rng.below(tables.len() as u64) as usize];
                d.bm.write(4, &t.to_le_bytes());
                d.bm_out(0, rng.byte() & 0x08);
                let early = rng.below(2) == 0;
                if early {
                    d.start();
                }
                d.r.outb(1, rng.byte() & 0x01);
                d.r.outb(2, 1 + rng.below(64) as u8);
                d.r.outb(3, rng.byte());
                d.r.outb(4, 0);
                d.r.outb(5, 0);
                d.r.outb(6, 0xe0 | (rng.byte() & 0x10));
                d.r.outb(7, [0xc8, 0xca, 0x25, 0x35, 0xa0][rng.below(5) as usize]);
                if !early && rng.below(4) != 0 {
                    d.start();
                }
            }
            16 => {
                d.r.alt_status();
            }
            _ => drain(&mut d.r, 64 * 1024),
        }
        if i % 1000 == 0 {
            assert_bounded(&d.r);
        }
    }
    assert_bounded(&d.r);
    assert_eq!(
        d.r.file_len(0),
        disk.len() as u64,
        "nothing written outside the image"
    );
    assert!(
        d.r.file_bytes(1, 0, cd.len()) == cd,
        "the CD is never written"
    );
    let m = d.r.ch.lock().unwrap().metrics();
    let get = |k: &str| m.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
    assert!(get("dma_transfers") > 300, "{m:?}");
    assert!(get("dma_errors") > 10, "{m:?}");
    assert!(get("dma_transfers") > get("dma_errors"), "{m:?}");
    // Everything still works: PIO IDENTIFY, then a clean DMA read.
    d.bm_out(0, 0);
    d.bm_out(2, 0x06);
    assert_usable(&mut d.r, 1, true);
    assert_usable(&mut d.r, 0, false);
    let data = d.r.file_bytes(0, 0, 8192);
    let done = d.ata_dma(0xc8, 0, 16, &[(0x10_0000, 8192)]);
    assert_eq!((done.bm, done.status), (INTR, 0x50));
    assert!(d.read_mem(0x10_0000, 8192) == data);
}
