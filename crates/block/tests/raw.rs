//! Raw image files: reads and writes at offsets, range checks, and zeroing that punches
//! holes (the file stays the same size and reads back zeros).

use kiln_block::raw::RawFile;
use kiln_block::{BlockDevice, Error, Extent};
use std::os::unix::fs::MetadataExt;

#[test]
fn raw_files_read_write_and_punch_holes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.raw");
    RawFile::create(&p, 4 << 20).unwrap();
    let mut d = RawFile::open(&p, false).unwrap();
    assert_eq!(d.size(), 4 << 20);
    assert_eq!(d.extent(0, 4 << 20).unwrap(), (Extent::Zero, 4 << 20));
    d.write_at(&vec![0x5a; 2 << 20], 1 << 20).unwrap();
    d.flush().unwrap();
    let blocks = std::fs::metadata(&p).unwrap().blocks();
    assert_eq!(d.extent(1 << 20, 1 << 20).unwrap().0, Extent::Data);
    d.write_zeroes(1 << 20, 1 << 20).unwrap();
    d.discard(3 << 20, 4096).unwrap();
    let mut buf = vec![1u8; 4 << 20];
    d.read_at(&mut buf, 0).unwrap();
    assert!(buf[..(2 << 20)].iter().all(|&b| b == 0));
    assert!(buf[2 << 20..3 << 20].iter().all(|&b| b == 0x5a));
    assert!(
        std::fs::metadata(&p).unwrap().blocks() < blocks,
        "no hole was punched"
    );
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 << 20);
    assert!(matches!(
        d.write_at(&[0; 2], (4 << 20) - 1),
        Err(Error::OutOfRange { .. })
    ));
    // While a writer has the image, nobody else may open it; afterwards readers share it.
    let e = RawFile::open(&p, true).unwrap_err();
    assert!(matches!(e, Error::Locked(_)), "{e}");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(d);
    let mut ro = RawFile::open(&p, true).unwrap();
    let _ro2 = RawFile::open(&p, true).unwrap();
    assert!(matches!(RawFile::open(&p, false), Err(Error::Locked(_))));
    assert!(matches!(ro.write_at(&[0], 0), Err(Error::ReadOnly(_))));
}

/// The extents of `d` walked in `chunk`-byte steps, merged: (kind, start, end).
fn walk(d: &mut RawFile, chunk: u64) -> Vec<(Extent, u64, u64)> {
    let mut v: Vec<(Extent, u64, u64)> = Vec::new();
    let mut off = 0;
    while off < d.size() {
        let (kind, n) = d.extent(off, chunk.min(d.size() - off)).unwrap();
        assert!(n > 0 && n <= chunk, "extent length {n} at {off}");
        match v.last_mut() {
            Some(last) if last.0 == kind && last.2 == off => last.2 = off + n,
            _ => v.push((kind, off, off + n)),
        }
        off += n;
    }
    v
}

#[test]
fn extents_stay_true_while_the_file_changes() {
    // Extents come from lseek and the last region found is cached: walking chunk by
    // chunk gives the same map as asking once, and writes, zeroing and resizing are
    // seen at once.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.raw");
    RawFile::create(&p, 8 << 20).unwrap();
    let mut d = RawFile::open(&p, false).unwrap();
    const MIB: u64 = 1 << 20;
    d.write_at(&vec![7; 2 << 20], 2 << 20).unwrap();
    assert_eq!(
        walk(&mut d, 64 << 10),
        [
            (Extent::Zero, 0, 2 * MIB),
            (Extent::Data, 2 * MIB, 4 * MIB),
            (Extent::Zero, 4 * MIB, 8 * MIB)
        ]
    );
    // Inside the cached hole: a write there is data at once.
    assert_eq!(d.extent(6 * MIB, MIB).unwrap(), (Extent::Zero, MIB));
    d.write_at(&vec![9; 1 << 20], 6 << 20).unwrap();
    assert_eq!(d.extent(6 * MIB, MIB).unwrap(), (Extent::Data, MIB));
    // Inside the cached data: zeroing punches a hole that shows at once.
    assert_eq!(d.extent(2 * MIB, MIB).unwrap().0, Extent::Data);
    d.write_zeroes(2 * MIB, MIB).unwrap();
    assert_eq!(d.extent(2 * MIB, MIB).unwrap(), (Extent::Zero, MIB));
    assert_eq!(
        walk(&mut d, 3 << 19),
        [
            (Extent::Zero, 0, 3 * MIB),
            (Extent::Data, 3 * MIB, 4 * MIB),
            (Extent::Zero, 4 * MIB, 6 * MIB),
            (Extent::Data, 6 * MIB, 7 * MIB),
            (Extent::Zero, 7 * MIB, 8 * MIB)
        ]
    );
    // Shrinking and growing: the new tail is a hole.
    assert_eq!(d.extent(6 * MIB, MIB).unwrap().0, Extent::Data);
    d.resize(6 * MIB + 4096).unwrap();
    d.resize(8 * MIB).unwrap();
    assert_eq!(d.extent(6 * MIB + 8192, 4096).unwrap().0, Extent::Zero);
}
