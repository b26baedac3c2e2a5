//! The ATAPI CD-ROM: detection, IDENTIFY PACKET, the packet protocol and the SCSI/MMC
//! commands, data checked against the ISO file.

use super::*;

/// 50 blocks and a 100-byte tail that is not a whole block.
fn iso() -> Vec<u8> {
    pattern(50 * 2048 + 100)
}

fn cd_rig() -> (Rig, Vec<u8>) {
    let data = iso();
    let mut r = Rig::new(Some(Spec::Cd(data.clone())), None);
    r.srst();
    (r, data)
}

fn sense(r: &mut Rig) -> (u8, u8) {
    let p = r.packet(&[0x03, 0, 0, 0, 18], 0xfffe);
    assert_eq!(p.status & ERR, 0);
    assert_eq!(p.data.len(), 18);
    assert_eq!(p.data[0], 0x70);
    (p.data[2] & 0x0f, p.data[12])
}

/// Run `cdb` expecting CHECK CONDITION with this sense key and ASC.
fn check(r: &mut Rig, cdb: &[u8], key: u8, asc: u8) {
    let p = r.packet(cdb, 0xfffe);
    assert_eq!(p.status, 0x41, "CHECK CONDITION for {cdb:02x?}");
    assert_eq!(p.error >> 4, key, "sense key in the error register");
    assert!(p.data.is_empty());
    assert_eq!(sense(r), (key, asc), "sense of {cdb:02x?}");
}

#[test]
fn identify_device_aborts_with_the_atapi_signature() {
    let (mut r, _) = cd_rig();
    r.outb(4, 0);
    r.outb(5, 0);
    r.irqs();
    r.outb(7, 0xec);
    assert_eq!(r.irqs(), 1);
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x04));
    assert_eq!((r.inb(4), r.inb(5)), (0x14, 0xeb));
    assert_eq!(r.read_data(2), [0, 0], "no data");
}

#[test]
fn identify_packet_device() {
    let (mut r, _) = cd_rig();
    let w = r.identify(0xa1);
    assert_eq!(w[0], 0x85c0);
    assert_eq!(ata_string(&w[27..47]), "KILN DVD-ROM");
    assert_ne!(w[49] & (1 << 9), 0, "LBA");
    assert_eq!(w[49] & (1 << 8), 0, "no DMA");
    assert_eq!(w[64], 3);
    assert_eq!(w[255] & 0xff, 0xa5);
    // DEVICE RESET: no interrupt, signature back.
    r.outb(4, 0x33);
    r.irqs();
    r.outb(7, 0x08);
    assert_eq!(r.irqs(), 0);
    assert_eq!(r.status(), 0x00);
    assert_eq!(r.signature(), [1, 1, 0x14, 0xeb]);
}

#[test]
fn inquiry_honours_the_allocation_length() {
    let (mut r, _) = cd_rig();
    let p = r.packet(&[0x12, 0, 0, 0, 96], 0xfffe);
    assert_eq!(p.status, 0x50);
    assert_eq!(p.irqs, 2, "one for the data block, one for completion");
    assert_eq!(p.data.len(), 36);
    assert_eq!(p.data[0], 0x05, "CD/DVD");
    assert_eq!(p.data[1], 0x80, "removable");
    assert_eq!(&p.data[8..16], b"KILN    ");
    assert_eq!(&p.data[16..32], b"DVD-ROM         ");
    let p = r.packet(&[0x12, 0, 0, 0, 5], 0xfffe);
    assert_eq!(p.data.len(), 5);
    let p = r.packet(&[0x12, 0, 0, 0, 0], 0xfffe);
    assert_eq!(
        (p.data.len(), p.status, p.irqs),
        (0, 0x50, 1),
        "no data phase"
    );
    let p = r.packet(&[0x12, 1, 0, 0, 255], 0xfffe);
    assert_eq!(p.data, [0x05, 0, 0, 1, 0], "VPD page list");
    check(&mut r, &[0x12, 1, 0x80, 0, 255], 0x05, 0x24);
    check(&mut r, &[0x12, 0, 0x83, 0, 255], 0x05, 0x24);
}

#[test]
fn read_capacity_ignores_a_partial_block() {
    let (mut r, _) = cd_rig();
    let p = r.packet(&[0x25], 0xfffe);
    assert_eq!(p.data, [0, 0, 0, 49, 0, 0, 0x08, 0]);
}

#[test]
fn read10_in_several_drq_blocks() {
    let (mut r, iso) = cd_rig();
    let p = r.packet(&[0x28, 0, 0, 0, 0, 3, 0, 0, 5], 4096);
    assert_eq!(p.status, 0x50);
    assert_eq!(p.blocks, [4096, 4096, 2048]);
    assert_eq!(p.irqs, 4);
    assert!(p.data == iso[3 * 2048..8 * 2048], "data differs: p.data");
    // An odd limit is rounded down to even for all but the last block.
    let p = r.packet(&[0x28, 0, 0, 0, 0, 10, 0, 0, 2], 1001);
    assert_eq!(p.blocks, [1000, 1000, 1000, 1000, 96]);
    assert!(p.data == iso[10 * 2048..12 * 2048], "data differs: p.data");
    // 0 and FFFFh mean FFFEh.
    for limit in [0u16, 0xffff] {
        let p = r.packet(&[0x28, 0, 0, 0, 0, 0, 0, 0, 40], limit);
        assert_eq!(p.blocks, [0xfffe, 40 * 2048 - 0xfffe]);
        assert!(p.data == iso[..40 * 2048], "data differs: p.data");
    }
    // A limit of 1 still makes progress.
    let p = r.packet(&[0x28, 0, 0, 0, 0, 49, 0, 0, 1], 1);
    assert_eq!(p.blocks.len(), 1024);
    assert!(p.data == iso[49 * 2048..50 * 2048], "data differs: p.data");
    // READ(12) and READ CD (user data) read the same.
    let p = r.packet(&[0xa8, 0, 0, 0, 0, 7, 0, 0, 0, 2], 0xfffe);
    assert!(p.data == iso[7 * 2048..9 * 2048], "data differs: p.data");
    let p = r.packet(&[0xbe, 0, 0, 0, 0, 7, 0, 0, 2, 0x10, 0, 0], 0xfffe);
    assert!(p.data == iso[7 * 2048..9 * 2048], "data differs: p.data");
    check(
        &mut r,
        &[0xbe, 0, 0, 0, 0, 7, 0, 0, 2, 0xf8, 0, 0],
        0x05,
        0x24,
    );
    check(
        &mut r,
        &[0xbe, 1 << 2, 0, 0, 0, 7, 0, 0, 2, 0x10, 0, 0],
        0x05,
        0x24,
    );
    let p = r.packet(&[0x28, 0, 0, 0, 0, 49, 0, 0, 0], 0xfffe);
    assert_eq!((p.status, p.data.len()), (0x50, 0), "zero blocks");
    let m = r.ch.lock().unwrap().metrics();
    assert!(m.iter().any(|&(k, v)| k == "cd_bytes_read" && v > 100_000));
}

#[test]
fn lba_out_of_range_and_writes() {
    let (mut r, _) = cd_rig();
    check(&mut r, &[0x28, 0, 0, 0, 0, 49, 0, 0, 2], 0x05, 0x21);
    check(
        &mut r,
        &[0x28, 0, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff],
        0x05,
        0x21,
    );
    check(
        &mut r,
        &[0xa8, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        0x05,
        0x21,
    );
    check(&mut r, &[0x2b, 0, 0, 0, 0, 50], 0x05, 0x21);
    let p = r.packet(&[0x2b, 0, 0, 0, 0, 49], 0xfffe);
    assert_eq!(p.status, 0x50);
    check(&mut r, &[0x2a, 0, 0, 0, 0, 1, 0, 0, 1], 0x07, 0x27);
    check(&mut r, &[0xaa, 0, 0, 0, 0, 1, 0, 0, 0, 1], 0x07, 0x27);
}

#[test]
fn request_sense_after_an_illegal_command() {
    let (mut r, _) = cd_rig();
    let p = r.packet(&[0xff], 0xfffe);
    assert_eq!((p.status, p.error, p.irqs), (0x41, 0x50, 1));
    let p = r.packet(&[0x03, 0, 0, 0, 252], 0xfffe);
    assert_eq!(p.data.len(), 18);
    assert_eq!(
        (p.data[2], p.data[7], p.data[12], p.data[13]),
        (0x05, 10, 0x20, 0)
    );
    assert_eq!(sense(&mut r), (0, 0), "REQUEST SENSE clears it");
    check(&mut r, &[0x5a, 0, 0x05, 0, 0, 0, 0, 0, 255], 0x05, 0x24);
    let p = r.packet(&[0x00], 0xfffe);
    assert_eq!(p.status, 0x50, "TEST UNIT READY");
    let p = r.packet(&[0x03, 0, 0, 0, 8], 0xfffe);
    assert_eq!(p.data.len(), 8, "allocation length");
}

#[test]
fn read_toc_formats() {
    let (mut r, _) = cd_rig();
    let p = r.packet(&[0x43, 0, 0, 0, 0, 0, 0, 0, 100], 0xfffe);
    assert_eq!(
        p.data,
        [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0, 0, 50]
    );
    let p = r.packet(&[0x43, 2, 0, 0, 0, 0, 0, 0, 100], 0xfffe);
    assert_eq!(&p.data[8..12], [0, 0, 2, 0], "track 1 at 00:02:00");
    assert_eq!(&p.data[16..20], [0, 0, 2, 50], "lead-out at 00:02:50");
    let p = r.packet(&[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 100], 0xfffe);
    assert_eq!(p.data.len(), 12, "lead-out only");
    check(&mut r, &[0x43, 0, 0, 0, 0, 0, 5, 0, 100], 0x05, 0x24);
    // Multisession info, by byte 2 and by the old byte-9 encoding.
    let s = [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0];
    let p = r.packet(&[0x43, 0, 1, 0, 0, 0, 0, 0, 12], 0xfffe);
    assert_eq!(p.data, s);
    let p = r.packet(&[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0x40], 0xfffe);
    assert_eq!(p.data, s);
    let p = r.packet(&[0x43, 0, 0, 0, 0, 0, 0, 0, 4], 0xfffe);
    assert_eq!(p.data, [0, 18, 1, 1], "allocation length");
}

#[test]
fn mmc_information_commands() {
    let (mut r, _) = cd_rig();
    for page in [0x01u8, 0x2a, 0x3f] {
        let p = r.packet(&[0x5a, 0, page, 0, 0, 0, 0, 0, 255], 0xfffe);
        assert_eq!(p.status, 0x50);
        let len = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
        assert_eq!(len + 2, p.data.len(), "mode data length");
        assert_eq!(p.data[8] & 0x3f, if page == 0x3f { 0x01 } else { page });
        let p6 = r.packet(&[0x1a, 0, page, 0, 255], 0xfffe);
        assert_eq!(usize::from(p6.data[0]) + 1, p6.data.len());
        assert_eq!(p6.data[4..], p.data[8..]);
    }
    check(
        &mut r,
        &[0x5a, 0, 0xc0 | 0x2a, 0, 0, 0, 0, 0, 255],
        0x05,
        0x39,
    );

    let p = r.packet(&[0x46, 0, 0, 0, 0, 0, 0, 0x01, 0], 0xfffe);
    assert_eq!(&p.data[6..8], [0x00, 0x08], "a small image is a CD-ROM");
    let len = u32::from_be_bytes([p.data[0], p.data[1], p.data[2], p.data[3]]);
    assert_eq!(len as usize + 4, p.data.len());
    assert_eq!(&p.data[8..10], [0, 0], "profile list first");
    let p = r.packet(&[0x46, 2, 0, 1, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(&p.data[8..10], [0, 1], "RT=2: just the core feature");
    assert_eq!(p.data.len(), 8 + 12);
    let p = r.packet(&[0x46, 0, 0, 0, 0, 0, 0, 0, 8], 0xfffe);
    assert_eq!(p.data.len(), 8);

    let p = r.packet(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe);
    assert_eq!(p.data, [0, 6, 0x04, 0x10, 0, 0x02, 0, 0]);
    check(&mut r, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8], 0x05, 0x24);
    let p = r.packet(&[0x51, 0, 0, 0, 0, 0, 0, 0, 34], 0xfffe);
    assert_eq!((p.data.len(), p.data[2] & 3), (34, 2), "complete disc");
    let p = r.packet(&[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8], 0xfffe);
    assert_eq!(p.data, [0; 8]);
    for cdb in [
        &[0x1b, 0, 0, 0, 2][..],
        &[0x1e, 0, 0, 0, 1],
        &[0xbb, 0, 0xff, 0xff],
    ] {
        assert_eq!(r.packet(cdb, 0xfffe).status, 0x50, "{cdb:02x?}");
    }
    let p = r.packet(&[0x42, 0, 0x40, 1, 0, 0, 0, 0, 16], 0xfffe);
    assert_eq!(p.data.len(), 16);
}

#[test]
fn a_big_image_is_a_dvd_and_an_empty_one_has_no_disc() {
    let mut dvd = Rig::new(Some(Spec::SparseCd(1 << 30)), None);
    let p = dvd.packet(&[0x46, 0, 0, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(&p.data[6..8], [0x00, 0x10]);

    let mut empty = Rig::new(Some(Spec::Cd(vec![0; 100])), None);
    check(&mut empty, &[0x00], 0x02, 0x3a);
    check(&mut empty, &[0x25], 0x02, 0x3a);
    check(&mut empty, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1], 0x02, 0x3a);
    let p = empty.packet(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe);
    assert_eq!(p.data[5], 0, "no medium present");
    let p = empty.packet(&[0x12, 0, 0, 0, 36], 0xfffe);
    assert_eq!(p.data.len(), 36, "INQUIRY works without a disc");
}

#[test]
fn packet_with_dma_requested_aborts() {
    let (mut r, _) = cd_rig();
    r.outb(1, 0x01);
    r.outb(7, 0xa0);
    assert_eq!((r.status(), r.inb(1)), (0x41, 0x04));
    assert_eq!(r.read_data(2), [0, 0]);
    let p = r.packet(&[0x00], 0xfffe);
    assert_eq!(p.status, 0x50, "usable afterwards");
}
