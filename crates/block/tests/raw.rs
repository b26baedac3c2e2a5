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
