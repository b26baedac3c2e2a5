//! Well-formed requests against raw and qcow2 images: data round trips through odd
//! descriptor layouts and indirect tables, requests larger than the bounce buffer, flush,
//! GET_ID, DISCARD and WRITE_ZEROES, read-only disks, counters.

use super::*;
use crate::blk::MAX_BOUNCE;
use crate::VirtioDevice;
use std::os::unix::fs::FileExt;

const DISK: u64 = 8 << 20;

fn round_trip(img: &Image) {
    let mem = memory();
    let dev = device(img);
    let mut drv = Driver::new(&mem, 256);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));

    // 3 sectors at sector 7 in buffers of 100, 1000 and 436 bytes.
    let data = pattern(1536, 1);
    let (wh, wst) = drv.write_req(7, &data, &[100, 1000]);
    // Read back through 511 + 1 + 1024 byte buffers.
    let (rh, bufs, rst) = drv.read_req(7, &[511, 1, 1024]);
    let out = p.process_queue(&mem, &mut q);
    assert_eq!(out.completed, 2);
    assert!(out.notify && !out.broken && !out.more);
    assert_eq!(drv.byte(wst.addr), OK);
    assert_eq!(drv.byte(rst.addr), OK);
    assert_eq!(drv.used(0), (u32::from(wh), 1));
    assert_eq!(drv.used(1), (u32::from(rh), 1536 + 1));
    assert_eq!(drv.read(&bufs), data);

    // Unwritten sectors read as zeros.
    let (_, bufs, st) = drv.read_req(0, &[512 * 7]);
    p.process_queue(&mem, &mut q);
    assert_eq!(drv.byte(st.addr), OK);
    assert!(drv.read(&bufs).iter().all(|&b| b == 0));

    // The last sector of the disk.
    let last = DISK / 512 - 1;
    let (_, st) = drv.write_req(last, &pattern(512, 9), &[]);
    let (_, bufs, rst) = drv.read_req(last, &[512]);
    p.process_queue(&mem, &mut q);
    assert_eq!((drv.byte(st.addr), drv.byte(rst.addr)), (OK, OK));
    assert_eq!(drv.read(&bufs), pattern(512, 9));
}

#[test]
fn raw_write_then_read_back() {
    let img = raw_image(DISK);
    round_trip(&img);
    // The data really is in the file, at sector 7.
    let f = std::fs::File::open(&img.path).unwrap();
    let mut b = vec![0u8; 1536];
    f.read_exact_at(&mut b, 7 * 512).unwrap();
    assert_eq!(b, pattern(1536, 1));
}

#[test]
fn qcow2_write_then_read_back() {
    let img = qcow2_image(DISK);
    round_trip(&img);
    // And it persists: a fresh open of the image sees it.
    let mut disk = open(&img, true);
    let mut b = vec![0u8; 1536];
    disk.read_at(&mut b, 7 * 512).unwrap();
    assert_eq!(b, pattern(1536, 1));
}

#[test]
fn requests_larger_than_the_bounce_buffer() {
    for img in [raw_image(DISK), qcow2_image(DISK)] {
        let mem = memory();
        let dev = device(&img);
        let mut drv = Driver::new(&mem, 256);
        let mut q = drv.queue(true);
        let mut p = dev.queue_processor(all_features(&dev));
        let len = 2 * MAX_BOUNCE + 3 * 512;
        let data = pattern(len, 3);
        // Uneven pieces that straddle the 1 MiB steps.
        let (_, st) = drv.write_req(1, &data, &[MAX_BOUNCE - 7, 1 << 19, 13]);
        let (_, bufs, rst) = drv.read_req(
            1,
            &[77, (MAX_BOUNCE + 1000) as u32, (MAX_BOUNCE + 459) as u32],
        );
        assert_eq!(p.process_queue(&mem, &mut q).completed, 2);
        assert_eq!((drv.byte(st.addr), drv.byte(rst.addr)), (OK, OK));
        let got = drv.read(&bufs);
        assert_eq!(got.len(), len);
        assert!(got == data, "data differs after a multi-step round trip");
        assert_eq!(drv.last_used().1, len as u32 + 1);
    }
}

#[test]
fn indirect_descriptors() {
    let img = qcow2_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 16);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));
    let data = pattern(4096, 5);
    let mut descs = vec![drv.header(T_OUT, 64)];
    // 40 descriptors: more than the queue has entries.
    for c in data.chunks(103) {
        descs.push(drv.payload(c));
    }
    let st = drv.status();
    descs.push(st);
    drv.indirect_chain(&descs);
    let h = drv.header(T_IN, 64);
    let bufs = [drv.buffer(4000), drv.buffer(96)];
    let rst = drv.status();
    let rh = drv.indirect_chain(&[h, bufs[0], bufs[1], rst]);
    assert_eq!(p.process_queue(&mem, &mut q).completed, 2);
    assert_eq!((drv.byte(st.addr), drv.byte(rst.addr)), (OK, OK));
    assert_eq!(drv.read(&bufs), data);
    assert_eq!(drv.last_used(), (u32::from(rh), 4097));
}

#[test]
fn flush_and_get_id() {
    let img = raw_image(DISK);
    let mem = memory();
    let dev = VirtioBlk::new(
        open(&img, false),
        Some("kiln-serial-0123456789-long".into()),
    );
    let mut drv = Driver::new(&mem, 256);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));
    let (_, fst) = drv.bare_req(T_FLUSH, 0);
    let h = drv.header(T_GET_ID, 0);
    let id = drv.buffer(20);
    let st = drv.status();
    drv.chain(&[h, id, st]);
    p.process_queue(&mem, &mut q);
    assert_eq!(drv.byte(fst.addr), OK);
    assert_eq!(drv.used(0).1, 1);
    assert_eq!(drv.byte(st.addr), OK);
    assert_eq!(drv.read(&[id]), b"kiln-serial-01234567");
    assert_eq!(drv.last_used().1, 21);

    // A short serial is zero padded; a short buffer gets what fits.
    drop((p, dev)); // a writer has the image to itself
    let dev = VirtioBlk::new(open(&img, false), Some("abc".into()));
    let mut p = dev.queue_processor(all_features(&dev));
    let h = drv.header(T_GET_ID, 0);
    let id = drv.buffer(20);
    let st = drv.status();
    drv.chain(&[h, id, st]);
    let h = drv.header(T_GET_ID, 0);
    let short = drv.buffer(2);
    let st2 = drv.status();
    drv.chain(&[h, short, st2]);
    p.process_queue(&mem, &mut q);
    let mut want = [0u8; 20];
    want[..3].copy_from_slice(b"abc");
    assert_eq!(drv.read(&[id]), want);
    assert_eq!(drv.read(&[short]), b"ab");
    assert_eq!((drv.byte(st.addr), drv.byte(st2.addr)), (OK, OK));
    assert_eq!(drv.last_used().1, 3);
}

fn discard_and_zeroes(img: &Image) {
    let mem = memory();
    let dev = device(img);
    let mut drv = Driver::new(&mem, 256);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));
    // 1 MiB of data from sector 0 (qcow2: spans 16 clusters).
    let data = pattern(1 << 20, 7);
    drv.write_req(0, &data, &[]);
    let (_, d1) = drv.dwz_req(T_DISCARD, 128, 256, 0);
    let (_, z1) = drv.dwz_req(T_WRITE_ZEROES, 512, 3, 0);
    let (_, z2) = drv.dwz_req(T_WRITE_ZEROES, 1000, 24, 1);
    let (_, z3) = drv.dwz_req(T_WRITE_ZEROES, 2000, 0, 0);
    let (_, bufs, rst) = drv.read_req(0, &[1 << 20]);
    assert_eq!(p.process_queue(&mem, &mut q).completed, 6);
    for st in [d1, z1, z2, z3, rst] {
        assert_eq!(drv.byte(st.addr), OK);
    }
    let mut want = data.clone();
    for (s, n) in [(128, 256), (512, 3), (1000, 24)] {
        want[s * 512..(s + n) * 512].fill(0);
    }
    assert!(
        drv.read(&bufs) == want,
        "discarded/zeroed ranges must read as zeros"
    );
}

#[test]
fn raw_discard_and_write_zeroes_read_back_as_zeros() {
    discard_and_zeroes(&raw_image(DISK));
}

#[test]
fn qcow2_discard_and_write_zeroes_read_back_as_zeros() {
    discard_and_zeroes(&qcow2_image(DISK));
}

#[test]
fn read_only_disk_refuses_writes() {
    let img = raw_image(DISK);
    let before = pattern(DISK as usize, 11);
    std::fs::write(&img.path, &before).unwrap();
    let mem = memory();
    let dev = VirtioBlk::new(open(&img, true), None);
    assert!(dev.read_only());
    let features = dev.features();
    let mut drv = Driver::new(&mem, 256);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(features);
    let (_, w) = drv.write_req(0, &[0u8; 4096], &[]);
    let (_, d) = drv.dwz_req(T_DISCARD, 0, 8, 0);
    let (_, z) = drv.dwz_req(T_WRITE_ZEROES, 0, 8, 0);
    let (_, f) = drv.bare_req(T_FLUSH, 0);
    let (_, bufs, r) = drv.read_req(1, &[512]);
    p.process_queue(&mem, &mut q);
    assert_eq!(drv.byte(w.addr), IOERR);
    // Not offered, so not negotiated: unsupported.
    assert_eq!((drv.byte(d.addr), drv.byte(z.addr)), (UNSUPP, UNSUPP));
    assert_eq!((drv.byte(f.addr), drv.byte(r.addr)), (OK, OK));
    assert_eq!(drv.read(&bufs), &before[512..1024]);
    // Even a driver that claims the features gets IOERR.
    let mut p = dev.queue_processor(u64::MAX);
    let (_, d) = drv.dwz_req(T_DISCARD, 0, 8, 0);
    let (_, z) = drv.dwz_req(T_WRITE_ZEROES, 0, 8, 1);
    p.process_queue(&mem, &mut q);
    assert_eq!((drv.byte(d.addr), drv.byte(z.addr)), (IOERR, IOERR));
    assert!(
        std::fs::read(&img.path).unwrap() == before,
        "read-only image changed"
    );
}

#[test]
fn counters_count() {
    let img = raw_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 256);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));
    drv.write_req(0, &pattern(2048, 1), &[]);
    drv.read_req(0, &[1024]);
    drv.read_req(DISK / 512, &[512]); // beyond the end: IOERR
    drv.bare_req(T_FLUSH, 0);
    drv.bare_req(T_GET_ID, 0);
    drv.bare_req(99, 0); // UNSUPP, not an error
    p.process_queue(&mem, &mut q);
    let c: std::collections::HashMap<_, _> = dev.counters().into_iter().collect();
    assert_eq!(c["read_requests"], 2);
    assert_eq!(c["write_requests"], 1);
    assert_eq!(c["flush_requests"], 1);
    assert_eq!(c["other_requests"], 2);
    assert_eq!(c["bytes_read"], 1024);
    assert_eq!(c["bytes_written"], 2048);
    assert_eq!(c["errors"], 1);
}

#[test]
fn block_layer_errors_are_ioerr() {
    // A raw image whose descriptor is read-only although the disk claims to be writable:
    // every write reaches the kernel and fails there (EBADF).
    let img = raw_image(DISK);
    let fd = std::fs::File::open(&img.path).unwrap();
    let disk = kiln_block::raw::RawFile::from_file(fd, false).unwrap();
    let dev = VirtioBlk::new(Box::new(disk), None);
    assert!(!dev.read_only());
    let mem = memory();
    let mut drv = Driver::new(&mem, 256);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));
    let (_, w) = drv.write_req(0, &pattern(1024, 1), &[]);
    let (_, z) = drv.dwz_req(T_WRITE_ZEROES, 0, 8, 0);
    let (_, d) = drv.dwz_req(T_DISCARD, 0, 8, 0);
    let (_, bufs, r) = drv.read_req(0, &[1024]);
    assert_eq!(p.process_queue(&mem, &mut q).completed, 4);
    assert_eq!(
        (drv.byte(w.addr), drv.byte(z.addr), drv.byte(d.addr)),
        (IOERR, IOERR, IOERR)
    );
    assert_eq!(drv.byte(r.addr), OK);
    assert_eq!(drv.read(&bufs), vec![0u8; 1024]);
    let c: std::collections::HashMap<_, _> = dev.counters().into_iter().collect();
    assert_eq!((c["errors"], c["bytes_written"]), (3, 0));

    // A qcow2 image whose L2 entry for cluster 0 points at an unaligned host offset.
    let img = qcow2_image(DISK);
    let mut disk = open(&img, false);
    disk.write_at(&pattern(4096, 2), 0).unwrap();
    disk.flush().unwrap();
    drop(disk);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img.path)
        .unwrap();
    let be64 = |off: u64| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, off).unwrap();
        u64::from_be_bytes(b)
    };
    let l1 = be64(40);
    let l2 = be64(l1) & 0x00ff_ffff_ffff_fe00;
    let host = be64(l2) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(host, 0);
    f.write_all_at(&((1u64 << 63) | (host + 512)).to_be_bytes(), l2)
        .unwrap();
    drop(f);
    let dev = VirtioBlk::new(open(&img, true), None);
    let mut p = dev.queue_processor(all_features(&dev));
    let (_, _, bad) = drv.read_req(0, &[4096]);
    let (_, bufs, good) = drv.read_req(128, &[512]);
    assert_eq!(p.process_queue(&mem, &mut q).completed, 2);
    assert_eq!(drv.byte(bad.addr), IOERR);
    assert_eq!(drv.byte(good.addr), OK);
    assert_eq!(drv.read(&bufs), vec![0u8; 512]);
    assert_eq!(dev.counters().last(), Some(&("errors", 1)));
}
