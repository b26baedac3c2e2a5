//! Image locks between opens of one image (in this process they conflict exactly as
//! between processes): a writer keeps out every other user, readers share, and
//! `Share::Force` reads past a writer but cannot write. The lock bytes are QEMU's, so
//! qemu-img sees them too.

mod support;

use kiln_block::qcow2::Qcow2;
use kiln_block::raw::RawFile;
use kiln_block::{BlockDevice, Error, Share};
use support::*;

#[test]
fn a_writer_keeps_others_out_and_force_share_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("l.qcow2");
    qemu_create(&img, "cluster_size=65536", "1M");

    let writer = Qcow2::open(&img, false).unwrap();
    let Err(e) = Qcow2::open(&img, true) else {
        panic!("a reader beside a writer")
    };
    assert!(matches!(e, Error::Locked(_)), "{e}");
    assert!(
        e.to_string()
            .contains(r#"failed to get shared "write" lock"#),
        "{e}"
    );
    let Err(e) = Qcow2::open(&img, false) else {
        panic!("a second writer")
    };
    assert!(
        e.to_string().contains(r#"failed to get "write" lock"#),
        "{e}"
    );
    // qemu-img sees the same locks.
    let out = run_qemu("qemu-img", &["info", s(&img)]);
    assert!(!out.status.success(), "qemu-img info beside Kiln's writer");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lock"));

    let forced = Qcow2::open_shared(&img, true, Share::Force).unwrap();
    assert_eq!(forced.size(), 1 << 20);
    let Err(e) = Qcow2::open_shared(&img, false, Share::Force) else {
        panic!("force-share for writing")
    };
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    drop((writer, forced));

    // Readers share; a writer then waits for them all.
    let r1 = Qcow2::open(&img, true).unwrap();
    let r2 = RawFile::open(&img, true).unwrap();
    assert!(matches!(Qcow2::open(&img, false), Err(Error::Locked(_))));
    drop((r1, r2));
    Qcow2::open(&img, false).unwrap();
    assert_eq!(qemu_check(&img), 0);
}
