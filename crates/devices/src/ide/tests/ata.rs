//! ATA disk behaviour: signatures, IDENTIFY, reads and writes in every addressing mode,
//! errors, interrupts.

use super::*;

const MIB: usize = 1 << 20;

fn disk_rig(len: usize) -> (Rig, Vec<u8>) {
    let data = pattern(len);
    (Rig::new(Some(Spec::Disk(data.clone())), None), data)
}

#[test]
fn signatures_after_srst_for_disk_and_cd() {
    let mut r = Rig::new(
        Some(Spec::Disk(pattern(MIB))),
        Some(Spec::Cd(pattern(8192))),
    );
    r.outb(2, 0x55);
    r.outb(5, 0x77);
    r.control(0x04);
    assert_eq!(r.alt_status() & BSY, BSY, "BSY while SRST is held");
    r.outb(7, 0xec);
    assert_eq!(
        r.status() & (BSY | DRQ),
        BSY,
        "commands are ignored in reset"
    );
    r.control(0x00);
    assert_eq!(r.inb(6) & 0x10, 0, "device 0 selected after reset");
    assert_eq!(r.signature(), [1, 1, 0x00, 0x00]);
    assert_eq!(r.inb(1), 0x01, "diagnostics passed");
    assert_eq!(r.status(), 0x50);
    r.select(1);
    assert_eq!(r.signature(), [1, 1, 0x14, 0xeb]);
    assert_eq!(r.inb(1), 0x01);
    assert_eq!(
        r.status(),
        0x00,
        "a packet device does not set DRDY after reset"
    );
    assert_eq!(r.irqs(), 0, "reset raises no interrupt");
}

#[test]
fn missing_devices_read_as_the_spec_and_qemu_say() {
    let mut r = Rig::new(Some(Spec::Disk(pattern(MIB))), None);
    r.select(1);
    assert_eq!(r.status(), 0, "missing slave: status 0");
    assert_eq!(r.alt_status(), 0);
    assert_eq!(r.inb(1), 0);
    r.outb(2, 0x55);
    r.outb(3, 0xaa);
    assert_eq!([r.inb(2), r.inb(3)], [0x55, 0xaa], "registers still latch");
    r.outb(7, 0xec);
    assert_eq!(r.status(), 0, "commands to a missing device are ignored");
    assert_eq!(r.irqs(), 0);
    r.srst();
    r.select(1);
    assert_eq!(r.signature(), [1, 1, 0xff, 0xff]);

    let mut empty = Rig::new(None, None);
    for off in 0..8 {
        assert_eq!(empty.inb(off), 0xff, "empty channel register {off}");
    }
    assert_eq!(empty.alt_status(), 0xff);
    assert_eq!(empty.read_data_width(4, 4), [0xff; 4]);
    empty.outb(7, 0xec);
    assert_eq!(empty.irqs(), 0);
}

#[test]
fn identify_device_words() {
    let (mut r, _) = disk_rig(10 * MIB);
    let raw = {
        r.outb(7, 0xec);
        assert_eq!(r.irqs(), 1);
        assert_eq!(r.status(), 0x58);
        r.read_data(512)
    };
    let w: Vec<u16> = raw
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let sectors = (10 * MIB / 512) as u32;
    assert_eq!(w[0], 0x0040);
    assert_eq!((w[1], w[3], w[6]), ((sectors / (16 * 63)) as u16, 16, 63));
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, sectors);
    let lba48 = w[100..104]
        .iter()
        .enumerate()
        .fold(0u64, |a, (i, &x)| a | u64::from(x) << (16 * i));
    assert_eq!(lba48, u64::from(sectors));
    assert_eq!(
        &raw[54..58],
        b"IKNL",
        "ATA strings are byte-swapped per word"
    );
    assert_eq!(ata_string(&w[27..47]), "KILN HARDDISK");
    assert!(ata_string(&w[10..20]).starts_with("KILN"));
    assert_eq!(w[47], 0x8010);
    assert_eq!(w[59], 0x0110, "multiple setting valid, 16");
    assert_eq!(w[49] & (1 << 8), 0, "no DMA");
    assert_ne!(w[49] & (1 << 9), 0, "LBA");
    assert_eq!((w[63], w[88]), (0, 0));
    assert_eq!(w[64], 0x0003);
    assert_ne!(w[83] & (1 << 10), 0, "LBA48");
    assert_ne!(w[83] & (1 << 12), 0, "FLUSH CACHE");
    assert_ne!(w[82] & (1 << 5), 0, "write cache");
    assert_eq!(raw[510], 0xa5);
    assert_eq!(
        raw.iter().fold(0u8, |a, &b| a.wrapping_add(b)),
        0,
        "checksum"
    );
    assert_eq!(r.status(), 0x50);
    assert_eq!(r.irqs(), 0, "no interrupt at the end of a data-in command");
}

#[test]
fn data_register_is_a_byte_stream_of_any_width() {
    let (mut r, _) = disk_rig(MIB);
    let mut reads = Vec::new();
    for width in [1, 2, 4, 6, 512] {
        r.outb(7, 0xec);
        reads.push(r.read_data_width(512, width));
        assert_eq!(r.status() & DRQ, 0, "width {width}");
    }
    assert!(reads.windows(2).all(|p| p[0] == p[1]));
    // Writes too: one sector as single bytes.
    let data = pattern(512).iter().map(|b| b ^ 0x5a).collect::<Vec<_>>();
    r.lba28(0x30, 3, 1);
    for b in &data {
        r.cmd.write(0, std::slice::from_ref(b));
    }
    assert_eq!(r.status(), 0x50);
    assert!(
        r.file_bytes(0, 3 * 512, 512) == data,
        "data differs: r.file_bytes(0, 3 * 512, 512)"
    );
}

#[test]
fn lba28_read_and_write_against_the_file() {
    let (mut r, data) = disk_rig(MIB);
    r.irqs();
    r.lba28(0x20, 5, 3);
    let got = r.pio_in(3 * 512, 512);
    assert!(got == data[5 * 512..8 * 512], "data differs: got");

    let new: Vec<u8> = pattern(2 * 512).iter().map(|b| !b).collect();
    r.lba28(0x30, 7, 2);
    r.pio_out(&new, 512);
    assert!(
        r.file_bytes(0, 7 * 512, 1024) == new,
        "data differs: r.file_bytes(0, 7 * 512, 1024)"
    );
    assert_eq!(
        r.file_bytes(0, 6 * 512, 512),
        data[6 * 512..7 * 512],
        "neighbour kept"
    );
    assert!(
        r.file_bytes(0, 9 * 512, 512) == data[9 * 512..10 * 512],
        "data differs: r.file_bytes(0, 9 * 512, 512)"
    );

    // Sector count 0 means 256.
    r.lba28(0x20, 0, 0);
    let all = r.pio_in(256 * 512, 512);
    assert!(
        all == r.file_bytes(0, 0, 256 * 512),
        "256 sectors as in the file"
    );
    assert!(
        all[7 * 512..9 * 512] == new[..],
        "including the ones just written"
    );
    let m = r.ch.lock().unwrap().metrics();
    let get = |n: &str| m.iter().find(|(k, _)| *k == n).unwrap().1;
    assert_eq!(get("sectors_read"), 259);
    assert_eq!(get("sectors_written"), 2);
    assert_eq!(get("errors"), 0);
}

#[test]
fn lba48_read_write_and_hob_readback() {
    // A sparse image larger than LBA28 can reach.
    let sectors: u64 = (1 << 28) + 64;
    let mut r = Rig::new(Some(Spec::SparseDisk(sectors * 512)), None);
    let w = r.identify(0xec);
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 0x0fff_ffff);
    assert_eq!(u64::from(w[100]) | u64::from(w[101]) << 16, sectors);
    let lba = (1u64 << 28) + 10;
    let data = pattern(3 * 512);
    r.irqs();
    r.lba48(0x34, lba, 3);
    r.pio_out(&data, 512);
    assert!(
        r.file_bytes(0, lba * 512, 3 * 512) == data,
        "data differs: r.file_bytes(0, lba * 512, 3 * 512)"
    );
    r.lba48(0x24, lba + 1, 2);
    assert!(
        r.pio_in(1024, 512) == data[512..],
        "data differs: r.pio_in(1024, 512)"
    );

    r.lba48(0x24, 0x0123_4567_89ab, 0);
    assert_eq!(r.status() & ERR, ERR, "far out of range");
    r.lba48(0x42, 0x0012_3456_789a, 0x1234);
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x14), "verify out of range");
    r.control(0x80);
    assert_eq!(
        [r.inb(2), r.inb(3), r.inb(4), r.inb(5)],
        [0x12, 0x34, 0x12, 0x00]
    );
    r.control(0x00);
    assert_eq!(
        [r.inb(2), r.inb(3), r.inb(4), r.inb(5)],
        [0x34, 0x9a, 0x78, 0x56]
    );
    r.lba48(0x42, lba, 64 - 10);
    assert_eq!(r.status(), 0x50, "verify up to the last sector");
    r.control(0x80);
    r.outb(1, 0);
    assert_eq!(r.inb(2), 54, "a register write clears HOB");
}

#[test]
fn read_and_write_multiple() {
    let (mut r, data) = disk_rig(MIB);
    r.outb(2, 4);
    r.outb(7, 0xc6);
    assert_eq!(r.status(), 0x50);
    assert_eq!(r.identify(0xec)[59], 0x0104);
    r.irqs();
    r.lba28(0xc4, 20, 10);
    assert!(
        r.pio_in(10 * 512, 4 * 512) == data[20 * 512..30 * 512],
        "data differs: r.pio_in(10 * 512, 4 * 512)"
    );

    let new: Vec<u8> = pattern(6 * 512).iter().map(|b| b.wrapping_add(1)).collect();
    r.lba48(0x39, 40, 6);
    r.pio_out(&new, 4 * 512);
    assert!(
        r.file_bytes(0, 40 * 512, 6 * 512) == new,
        "data differs: r.file_bytes(0, 40 * 512, 6 * 512)"
    );
    r.lba48(0x29, 40, 6);
    assert!(
        r.pio_in(6 * 512, 4 * 512) == new,
        "data differs: r.pio_in(6 * 512, 4 * 512)"
    );

    for bad in [3u8, 32] {
        r.outb(2, bad);
        r.outb(7, 0xc6);
        assert_eq!((r.status(), r.inb(1)), (0x41, 0x04), "multiple {bad}");
    }
    r.outb(2, 0);
    r.outb(7, 0xc6);
    assert_eq!(r.status(), 0x50);
    r.lba28(0xc4, 0, 1);
    assert_eq!(
        (r.status(), r.inb(1)),
        (0x41, 0x04),
        "READ MULTIPLE with multiple disabled"
    );
}

#[test]
fn chs_read_and_initialize_device_parameters() {
    let (mut r, data) = disk_rig(4 * MIB);
    // Cylinder 1, head 2, sector 3 with 16 heads and 63 sectors per track.
    let lba = (16 + 2) * 63 + 2;
    r.outb(2, 2);
    r.outb(3, 3);
    r.outb(4, 1);
    r.outb(5, 0);
    r.outb(6, 0xa2);
    r.irqs();
    r.outb(7, 0x20);
    assert!(
        r.pio_in(1024, 512) == data[lba * 512..(lba + 2) * 512],
        "data differs: r.pio_in(1024, 512)"
    );

    // Sector 0 and sector 64 of 63 are not found.
    for sector in [0u8, 64] {
        r.outb(3, sector);
        r.outb(6, 0xa0);
        r.outb(7, 0x20);
        assert_eq!((r.status(), r.inb(1)), (0x41, 0x14), "sector {sector}");
    }
    // Switch to 8 heads x 32 sectors and read C/H/S 2/5/7.
    r.outb(2, 32);
    r.outb(6, 0xa0 | 7);
    r.outb(7, 0x91);
    assert_eq!(r.status(), 0x50);
    let w = r.identify(0xec);
    assert_eq!((w[55], w[56]), (8, 32));
    assert_eq!((w[3], w[6]), (16, 63), "default geometry words unchanged");
    let lba = (2 * 8 + 5) * 32 + 6;
    r.outb(2, 1);
    r.outb(3, 7);
    r.outb(4, 2);
    r.outb(5, 0);
    r.outb(6, 0xa5);
    r.irqs();
    r.outb(7, 0x20);
    assert!(
        r.pio_in(512, 512) == data[lba * 512..(lba + 1) * 512],
        "data differs: r.pio_in(512, 512)"
    );
    r.outb(3, 1);
    r.outb(6, 0xa8);
    r.outb(7, 0x20);
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x14), "head 8 of 8");
}

#[test]
fn out_of_range_lba_fails_with_idnf() {
    let (mut r, _) = disk_rig(MIB);
    let sectors = (MIB / 512) as u32;
    r.irqs();
    for (lba, count) in [(sectors, 1u8), (sectors - 1, 2), (0x0fff_ffff, 1)] {
        r.irqs();
        r.lba28(0x20, lba, count);
        assert_eq!(r.irqs(), 1);
        assert_eq!(
            (r.status(), r.inb(1)),
            (0x41, 0x14),
            "lba {lba} count {count}"
        );
        assert_eq!(r.read_data(4), [0; 4], "no data");
        r.lba28(0x30, lba, count);
        assert_eq!(r.status(), 0x41);
        r.lba28(0x40, lba, count);
        assert_eq!(r.status(), 0x41);
    }
    r.lba28(0x20, sectors - 1, 1);
    assert_eq!(r.status() & (ERR | DRQ), DRQ, "the last sector is fine");
}

#[test]
fn writes_to_a_read_only_image_abort() {
    let data = pattern(MIB);
    let mut r = Rig::new(Some(Spec::ReadOnlyDisk(data.clone())), None);
    for cmd in [0x30u8, 0xc5] {
        r.lba28(cmd, 2, 1);
        assert_eq!((r.status(), r.inb(1)), (0x41, 0x04));
        r.write_data(&[0xee; 512]);
    }
    r.lba48(0x34, 2, 1);
    assert_eq!(r.status(), 0x41);
    assert!(
        r.file_bytes(0, 0, MIB) == data,
        "data differs: r.file_bytes(0, 0, MIB)"
    );
    let m = r.ch.lock().unwrap().metrics();
    assert!(m.contains(&("read_only_rejects", 3)));
    r.lba28(0x20, 2, 1);
    assert!(r.read_data(512) == data[1024..1536], "reads still work");
}

#[test]
fn nien_masks_the_interrupt_and_a_status_read_clears_it() {
    let (mut r, _) = disk_rig(MIB);
    r.irqs();
    r.outb(7, 0xe7);
    assert_eq!(r.irqs(), 1);
    assert!(r.ch.lock().unwrap().irq_pending());
    assert_eq!(r.alt_status(), 0x50);
    assert!(
        r.ch.lock().unwrap().irq_pending(),
        "alternate status leaves it"
    );
    assert_eq!(r.status(), 0x50);
    assert!(!r.ch.lock().unwrap().irq_pending(), "status read clears it");

    r.control(0x02);
    r.outb(7, 0xe7);
    r.outb(7, 0xe5);
    assert_eq!(r.irqs(), 0, "nIEN masks");
    assert_eq!(r.inb(2), 0xff, "CHECK POWER MODE: active");
    r.status();
    r.control(0x00);
    assert_eq!(r.irqs(), 0, "nothing pending any more");
    r.control(0x02);
    r.outb(7, 0xe7);
    r.control(0x00);
    assert_eq!(r.irqs(), 1, "unmasking a pending interrupt raises it");
    r.outb(7, 0xe7);
    assert_eq!(
        r.irqs(),
        1,
        "a command write clears the old condition first"
    );
    r.status();
}

#[test]
fn housekeeping_commands() {
    let (mut r, _) = disk_rig(MIB);
    for (feature, count) in [
        (0x03u8, 0x0cu8),
        (0x03, 0x00),
        (0x02, 0),
        (0x82, 0),
        (0xaa, 0),
    ] {
        r.outb(1, feature);
        r.outb(2, count);
        r.outb(7, 0xef);
        assert_eq!(r.status(), 0x50, "SET FEATURES {feature:#x}/{count:#x}");
    }
    let w = r.identify(0xec);
    assert_eq!(w[85] & (1 << 5), 0, "write cache disabled");
    for (feature, count) in [(0x03u8, 0x45u8), (0x03, 0x22), (0x05, 0), (0x77, 0)] {
        r.outb(1, feature);
        r.outb(2, count);
        r.outb(7, 0xef);
        assert_eq!(
            (r.status(), r.inb(1)),
            (0x41, 0x04),
            "SET FEATURES {feature:#x}"
        );
    }
    // Write-through with the cache off still completes.
    r.irqs();
    r.lba28(0x30, 0, 1);
    r.pio_out(&[7; 512], 512);
    for cmd in [
        0xe7u8, 0xea, 0xe0, 0xe1, 0xe2, 0xe3, 0x94, 0x99, 0x10, 0x1f, 0x70,
    ] {
        r.outb(7, cmd);
        assert_eq!(r.status(), 0x50, "command {cmd:#x}");
    }
    for cmd in [0xc8u8, 0xca, 0x25, 0x35, 0x00, 0x08, 0xa0, 0xa1, 0xb0, 0xff] {
        r.outb(7, cmd);
        assert_eq!(
            (r.status(), r.inb(1)),
            (0x41, 0x04),
            "command {cmd:#x} aborts"
        );
    }
    r.outb(4, 0x99);
    r.irqs();
    r.outb(7, 0x90);
    assert_eq!(r.irqs(), 1);
    assert_eq!((r.status(), r.inb(1)), (0x50, 0x01), "diagnostic");
    assert_eq!(r.signature(), [1, 1, 0, 0]);
    let m = r.ch.lock().unwrap().metrics();
    assert!(m.iter().any(|&(k, v)| k == "flushes" && v >= 3));
}

#[test]
fn hardware_reset_restores_power_on_settings() {
    let (mut r, _) = disk_rig(MIB);
    r.outb(2, 2);
    r.outb(7, 0xc6);
    r.outb(1, 0x82);
    r.outb(7, 0xef);
    r.outb(2, 17);
    r.outb(6, 0xa3);
    r.outb(7, 0x91);
    r.control(0x02);
    r.lba28(0x20, 0, 4);
    assert_eq!(r.status() & DRQ, DRQ);
    r.ch.lock().unwrap().reset();
    assert_eq!(r.status(), 0x50);
    assert_eq!(r.signature(), [1, 1, 0, 0]);
    assert_eq!(r.read_data(2), [0, 0], "the transfer is gone");
    r.irqs();
    let w = r.identify(0xec);
    assert_eq!(r.irqs(), 1, "nIEN cleared by the reset");
    assert_eq!(w[59], 0x0110);
    assert_ne!(w[85] & (1 << 5), 0, "write cache on");
    assert_eq!((w[54], w[55], w[56]), (w[1], 16, 63));
}
