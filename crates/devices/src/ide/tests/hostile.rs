//! A hostile guest: stray and out-of-order accesses, huge counts, random packets and a
//! randomized storm of register accesses. Nothing may panic, hang, grow a buffer past one
//! DRQ block or touch bytes outside the image, and the devices must stay usable.

use super::*;

/// xorshift64: deterministic and dependency-free.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(super) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// No DRQ block buffer may exceed 64 KiB (allowing for Vec growth).
pub(super) fn assert_bounded(r: &Rig) {
    let ch = r.ch.lock().unwrap();
    for d in &ch.drives {
        assert!(d.buf.len() <= 0x10000, "DRQ block of {} bytes", d.buf.len());
        assert!(
            d.buf.capacity() <= 0x20000,
            "buffer of {} bytes",
            d.buf.capacity()
        );
    }
}

/// After whatever happened, a reset and IDENTIFY (PACKET) DEVICE work on `unit`.
pub(super) fn assert_usable(r: &mut Rig, unit: u8, packet: bool) {
    r.control(0);
    r.srst();
    r.select(unit);
    let w = r.identify(if packet { 0xa1 } else { 0xec });
    assert_eq!(w[0], if packet { 0x85c0 } else { 0x0040 });
    assert_eq!(r.status() & (DRQ | ERR), 0);
}

#[test]
fn stray_data_accesses_do_nothing() {
    let data = pattern(64 * 1024);
    let mut r = Rig::new(
        Some(Spec::Disk(data.clone())),
        Some(Spec::Cd(pattern(8192))),
    );
    for unit in [0, 1] {
        r.select(unit);
        assert_eq!(
            r.read_data_width(1000, 4),
            vec![0; 1000],
            "no transfer reads 0"
        );
        r.write_data(&[0xee; 4096]);
        r.cmd.write(0, &[0xee; 3]);
    }
    assert!(
        r.file_bytes(0, 0, data.len()) == data,
        "data differs: r.file_bytes(0, 0, data.len())"
    );
    assert_eq!(r.irqs(), 0);
    // Reading the last byte of IDENTIFY with a wide access leaves the rest 0.
    r.select(0);
    r.outb(7, 0xec);
    r.read_data(510);
    let mut b = [0xaa_u8; 8];
    r.cmd.read(0, &mut b);
    assert_eq!(&b[2..], [0; 6]);
    assert_eq!(r.status() & DRQ, 0);
    // Wide accesses to the 8-bit registers hit the register at the offset.
    let mut w = [0u8; 4];
    r.cmd.read(7, &mut w);
    assert_eq!(w, [0x50, 0, 0, 0]);
    r.cmd.write(2, &[0x12, 0x34, 0x56, 0x78]);
    assert_eq!(
        [r.inb(2), r.inb(3)],
        [0x12, 0x01],
        "sector number untouched"
    );
    r.cmd.read(9, &mut w);
    r.cmd.write(9, &[1, 2]);
    r.ctl.write(1, &[0x04]);
    r.ctl.write(0, &[]);
    r.cmd.write(7, &[]);
    r.cmd.read(3, &mut []);
    assert_usable(&mut r, 0, false);
    assert_usable(&mut r, 1, true);
}

#[test]
fn a_new_command_during_drq_abandons_the_transfer() {
    let data = pattern(64 * 1024);
    let mut r = Rig::new(
        Some(Spec::Disk(data.clone())),
        Some(Spec::Cd(pattern(8192))),
    );
    r.lba28(0x20, 0, 10);
    r.read_data(100);
    let w = r.identify(0xec);
    assert_eq!(w[0], 0x0040);
    // A write abandoned half-way: the completed block is written, the partial one not.
    r.lba28(0x30, 4, 3);
    r.write_data(&[0xee; 700]);
    r.lba28(0x20, 4, 2);
    let got = r.read_data(1024);
    assert!(got[..512] == [0xee; 512] && got[512..] == data[5 * 512..6 * 512]);
    assert!(r.file_bytes(0, 0, data.len())[5 * 512..] == data[5 * 512..]);
    // A packet cut short by another command.
    r.select(1);
    r.outb(7, 0xa0);
    r.write_data(&[0x28, 0, 0, 0]);
    assert_eq!(r.identify(0xa1)[0], 0x85c0);
    // A data phase cut short by SRST.
    let limit = 512u16;
    r.outb(4, limit as u8);
    r.outb(5, (limit >> 8) as u8);
    r.outb(7, 0xa0);
    r.write_data(&[0x28, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
    assert_eq!(r.status() & DRQ, DRQ);
    r.read_data(300);
    r.srst();
    r.select(1);
    assert_eq!(r.status() & DRQ, 0);
    assert_eq!(r.read_data(2), [0, 0]);
    let m = r.ch.lock().unwrap().metrics();
    assert!(m.iter().any(|&(k, v)| k == "abandoned_transfers" && v >= 4));
    assert_usable(&mut r, 0, false);
}

#[test]
fn huge_counts_are_served_one_block_at_a_time() {
    let mut r = Rig::new(
        Some(Spec::SparseDisk((1 << 28) * 512)),
        Some(Spec::SparseCd(1 << 30)),
    );
    // 65536 sectors (count 0) with the largest multiple.
    r.outb(2, 16);
    r.outb(7, 0xc6);
    r.lba48(0x29, 1000, 0);
    for _ in 0..50 {
        assert_eq!(r.status() & (DRQ | ERR), DRQ);
        assert_eq!(r.read_data(16 * 512), vec![0; 16 * 512]);
        assert_bounded(&r);
    }
    // Every sector of LBA28 at once, and the same for writes.
    r.lba28(0x30, 0, 0);
    r.write_data(&[1; 512 * 3]);
    assert_bounded(&r);
    assert_eq!(r.file_len(0), (1 << 28) * 512);
    // READ(12) of every block of a 1 GiB disc.
    r.select(1);
    r.outb(4, 0xff);
    r.outb(5, 0xff);
    r.outb(7, 0xa0);
    r.write_data(&[0xa8, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0]);
    for _ in 0..20 {
        assert_eq!(r.status() & (DRQ | ERR), DRQ);
        assert_eq!([r.inb(4), r.inb(5)], [0xfe, 0xff]);
        r.read_data(0xfffe);
        assert_bounded(&r);
    }
    assert_usable(&mut r, 1, true);
    assert_usable(&mut r, 0, false);
}

/// Run whatever data phase the device is in, reading at most `max` bytes (then giving up).
pub(super) fn drain(r: &mut Rig, max: usize) {
    let mut moved = 0;
    while r.status() & DRQ != 0 && moved < max {
        if r.inb(2) & 0x03 == 0x01 {
            r.write_data(&[0; 12]); // a packet phase: an all-zero packet
            moved += 12;
            continue;
        }
        let n = usize::from(u16::from_le_bytes([r.inb(4), r.inb(5)])).clamp(2, 0x10000);
        r.read_data(n);
        moved += n;
        assert_bounded(r);
    }
}

#[test]
fn random_packets_never_wedge_the_cd() {
    let mut r = Rig::new(Some(Spec::Cd(pattern(300 * 2048))), None);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    const OPS: [u8; 24] = [
        0x00, 0x03, 0x12, 0x1a, 0x5a, 0x1b, 0x1e, 0x25, 0x28, 0xa8, 0xbe, 0x2b, 0x43, 0x46, 0x4a,
        0x51, 0xbd, 0xbb, 0x42, 0x2a, 0xaa, 0x04, 0x55, 0xff,
    ];
    for _ in 0..3000 {
        let mut cdb = [0u8; 12];
        for b in &mut cdb {
            *b = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                _ => rng.byte(),
            };
        }
        if rng.below(4) != 0 {
            cdb[0] = OPS[rng.below(OPS.len() as u64) as usize];
        }
        let limit = match rng.below(5) {
            0 => 0,
            1 => 1,
            2 => 0xffff,
            _ => rng.next() as u16,
        };
        r.outb(1, rng.byte() & 0xfe);
        r.outb(4, limit as u8);
        r.outb(5, (limit >> 8) as u8);
        r.outb(7, 0xa0);
        r.write_data(&cdb);
        drain(&mut r, 1 << 20);
        if r.status() & DRQ != 0 {
            r.srst(); // gave up on a very long read
        }
        let st = r.status();
        assert_eq!(st & 0x80, 0);
        if st & ERR != 0 {
            assert_ne!(r.inb(1) >> 4, 0, "a sense key for every failure");
        }
    }
    let p = r.packet(&[0x25], 0xfffe);
    assert_eq!(p.data, [0, 0, 0x01, 0x2b, 0, 0, 8, 0]);
    assert_usable(&mut r, 0, true);
}

#[test]
fn randomized_register_storm() {
    let disk = pattern(256 * 1024);
    let mut r = Rig::new(
        Some(Spec::Disk(disk.clone())),
        Some(Spec::Cd(pattern(64 * 2048))),
    );
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    const CMDS: [u8; 30] = [
        0xec, 0xa1, 0xa0, 0x20, 0x24, 0x29, 0xc4, 0x30, 0x34, 0x39, 0xc5, 0xc6, 0x40, 0x42, 0xe7,
        0xea, 0xef, 0x91, 0xe5, 0xe0, 0x90, 0x08, 0x10, 0x70, 0xc8, 0x25, 0x00, 0xff, 0x94, 0xe6,
    ];
    for i in 0..20_000u32 {
        let width = [1usize, 2, 4][rng.below(3) as usize];
        match rng.below(16) {
            0..=3 => {
                let mut b = vec![0u8; width * (1 + rng.below(64) as usize)];
                r.cmd.read(0, &mut b);
            }
            4..=5 => {
                let b: Vec<u8> = (0..width * (1 + rng.below(64) as usize))
                    .map(|_| rng.byte())
                    .collect();
                r.cmd.write(0, &b);
            }
            6..=8 => {
                let off = 1 + rng.below(6);
                let b: Vec<u8> = (0..width).map(|_| rng.byte()).collect();
                r.cmd.write(off, &b);
            }
            9 => {
                let cmd = if rng.below(4) == 0 {
                    rng.byte()
                } else {
                    CMDS[rng.below(CMDS.len() as u64) as usize]
                };
                r.outb(7, cmd);
            }
            10..=11 => {
                let mut b = vec![0u8; width];
                r.cmd.read(1 + rng.below(7), &mut b);
            }
            12 => {
                // Mostly leave SRST alone, sometimes pulse it or hold it.
                let v = rng.byte() & !(if rng.below(4) == 0 { 0 } else { 0x04 });
                r.control(v);
            }
            13 => {
                r.alt_status();
            }
            _ => drain(&mut r, 64 * 1024),
        }
        if i % 1000 == 0 {
            assert_bounded(&r);
        }
    }
    assert_bounded(&r);
    assert_eq!(
        r.file_len(0),
        disk.len() as u64,
        "nothing written outside the image"
    );
    assert_eq!(r.file_len(1), 64 * 2048, "the CD is never written");
    assert!(
        r.file_bytes(1, 0, 64 * 2048) == pattern(64 * 2048),
        "data differs: r.file_bytes(1, 0, 64 * 2048)"
    );
    assert_usable(&mut r, 0, false);
    assert_usable(&mut r, 1, true);
    let m = r.ch.lock().unwrap().metrics();
    assert!(m.iter().any(|&(k, v)| k == "commands" && v > 500), "{m:?}");
}
