//! Lazy refcounts, dirty images and refcount repair, cross-checked with qemu-img: a dirty
//! image QEMU left behind (killed with lazy refcounts on) is repaired by Kiln's read-write
//! open; Kiln marks lazy-refcount images dirty while it writes and clean on close;
//! `repair` fixes leaks (and with `All` corruptions) to a clean `qemu-img check`.

mod support;

use kiln_block::qcow2::repair::{repair, RepairMode};
use kiln_block::qcow2::Qcow2;
use kiln_block::BlockDevice;
use std::path::Path;
use std::process::Command;
use support::{open, qemu, qemu_check, qemu_create, qemu_raw, read_all, s};

fn dirty(path: &Path) -> bool {
    let f = std::fs::read(path).unwrap();
    f[79] & 1 != 0
}

/// qemu-io writes with lazy refcounts, then kills itself before refcounts are written.
fn qemu_dirty_image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("lazy.qcow2");
    qemu_create(&img, "lazy_refcounts=on", "8M");
    let st = Command::new("qemu-io")
        .args([
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "write -P 0x33 3M 100k",
            "-c",
            "sigraise 9",
            s(&img),
        ])
        .output()
        .expect("qemu-io is needed for these tests");
    assert!(!st.status.success(), "qemu-io should have been killed");
    assert!(dirty(&img), "the kill should leave the image dirty");
    assert_eq!(qemu_check(&img), 2, "refcounts were never written");
    img
}

fn want_view() -> Vec<u8> {
    let mut v = vec![0u8; 8 << 20];
    v[..1 << 20].fill(0x5a);
    v[3 << 20..(3 << 20) + 102_400].fill(0x33);
    v
}

#[test]
fn a_dirty_image_left_by_qemu_is_repaired_on_read_write_open() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_dirty_image(dir.path());
    // Read-only opens still work, and do not repair.
    let mut ro = open(&img, true);
    support::assert_same(&read_all(ro.as_mut()), &want_view(), "read-only dirty");
    drop(ro);
    assert!(dirty(&img));
    // Read-write open repairs and clears the dirty bit.
    let mut rw = open(&img, false);
    assert!(!dirty(&img));
    support::assert_same(&read_all(rw.as_mut()), &want_view(), "after repair");
    drop(rw);
    assert_eq!(qemu_check(&img), 0);
    support::assert_same(&qemu_raw(dir.path(), &img), &want_view(), "qemu view");
}

#[test]
fn check_repair_all_fixes_a_dirty_image_and_leaks_mode_leaves_corruptions() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_dirty_image(dir.path());
    let rep = repair(&img, RepairMode::Leaks).unwrap();
    assert!(rep.before.corruptions > 0);
    assert_eq!(rep.corruptions_fixed, 0);
    assert!(
        rep.after.corruptions > 0,
        "leaks mode must not touch corruptions"
    );
    assert!(dirty(&img));
    let rep = repair(&img, RepairMode::All).unwrap();
    assert!(rep.corruptions_fixed > 0);
    assert_eq!(
        rep.after.corruptions + rep.after.leaks,
        0,
        "{:?}",
        rep.after.messages
    );
    assert!(!dirty(&img));
    assert_eq!(qemu_check(&img), 0);
    support::assert_same(&qemu_raw(dir.path(), &img), &want_view(), "qemu view");
}

/// Set the 16-bit refcount of cluster `c` in the first refcount block (64 KiB clusters).
fn poke_refcount(path: &Path, c: usize, v: u16) {
    let mut f = std::fs::read(path).unwrap();
    let at = 2 * 65536 + 2 * c;
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    std::fs::write(path, f).unwrap();
}

#[test]
fn hand_made_dirty_image_with_bad_refcounts_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("h.qcow2");
    qemu_create(&img, "lazy_refcounts=on", "8M");
    qemu("qemu-io", &["-c", "write -P 0x11 0 256k", s(&img)]);
    // Leaks past the data (the file grows to hold them) and a lost refcount.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(12 * 65536).unwrap();
    drop(f);
    poke_refcount(&img, 10, 1);
    poke_refcount(&img, 11, 3);
    poke_refcount(&img, 6, 0);
    let mut b = std::fs::read(&img).unwrap();
    b[79] |= 1;
    std::fs::write(&img, b).unwrap();
    assert_eq!(qemu_check(&img), 2);
    let dev = open(&img, false);
    drop(dev);
    assert!(!dirty(&img));
    assert_eq!(qemu_check(&img), 0);
    let mut want = vec![0u8; 8 << 20];
    want[..256 << 10].fill(0x11);
    support::assert_same(&qemu_raw(dir.path(), &img), &want, "qemu view");
}

#[test]
fn kiln_marks_lazy_refcount_images_dirty_while_writing_and_clean_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("k.qcow2");
    qemu_create(&img, "lazy_refcounts=on", "8M");
    let mut q = Qcow2::open(&img, false).unwrap();
    assert!(!dirty(&img), "opening alone changes nothing");
    q.write_at(&[7u8; 70000], 1000).unwrap();
    assert!(dirty(&img), "dirty while written");
    q.flush().unwrap();
    drop(q);
    assert!(!dirty(&img), "clean after close");
    assert_eq!(qemu_check(&img), 0);
    // Without lazy refcounts the bit is never set.
    let img2 = dir.path().join("k2.qcow2");
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", s(&img2), "8M"]);
    let mut q = Qcow2::open(&img2, false).unwrap();
    q.write_at(&[7u8; 70000], 1000).unwrap();
    assert!(!dirty(&img2));
}

#[test]
fn repair_leaks_gives_a_clean_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("l.qcow2");
    qemu("qemu-img", &["create", "-q", "-f", "qcow2", s(&img), "8M"]);
    qemu("qemu-io", &["-c", "write -P 0x22 64k 200k", s(&img)]);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(12 * 65536).unwrap();
    drop(f);
    poke_refcount(&img, 10, 2);
    poke_refcount(&img, 11, 1);
    assert_eq!(qemu_check(&img), 3);
    let rep = repair(&img, RepairMode::Leaks).unwrap();
    assert_eq!(rep.leaks_fixed, 2, "{:?}", rep.messages);
    assert_eq!(rep.after.leaks + rep.after.corruptions, 0);
    assert_eq!(qemu_check(&img), 0);
    // A too-low refcount is a corruption: only `All` fixes it, OFLAG_COPIED included.
    poke_refcount(&img, 5, 0);
    assert_eq!(qemu_check(&img), 2);
    let rep = repair(&img, RepairMode::All).unwrap();
    assert!(rep.corruptions_fixed >= 1);
    assert_eq!(qemu_check(&img), 0);
    let mut want = vec![0u8; 8 << 20];
    want[64 << 10..(64 << 10) + 200 * 1024].fill(0x22);
    support::assert_same(&qemu_raw(dir.path(), &img), &want, "qemu view");
    // An image marked corrupt: `Leaks` keeps the mark, `All` clears it once clean.
    let mut b = std::fs::read(&img).unwrap();
    b[79] |= 2;
    std::fs::write(&img, b).unwrap();
    assert!(Qcow2::open(&img, false).is_err());
    repair(&img, RepairMode::Leaks).unwrap();
    assert!(Qcow2::open(&img, false).is_err());
    repair(&img, RepairMode::All).unwrap();
    assert_eq!(std::fs::read(&img).unwrap()[79] & 3, 0);
    drop(Qcow2::open(&img, false).unwrap());
    assert_eq!(qemu_check(&img), 0);
}

#[test]
fn repair_creates_missing_refcount_blocks_away_from_referenced_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("m.qcow2");
    // 512-byte clusters, 16-bit refcounts: a refcount block covers 256 clusters.
    qemu_create(&img, "cluster_size=512", "8M");
    qemu("qemu-io", &["-c", "write -P 0x44 0 400k", s(&img)]);
    assert_eq!(qemu_check(&img), 0);
    // Lose the refcount table's second entry (clusters 256..511, all referenced data).
    let mut b = std::fs::read(&img).unwrap();
    let rt = u64::from_be_bytes(b[48..56].try_into().unwrap()) as usize;
    assert_ne!(
        b[rt + 8..rt + 16],
        [0u8; 8],
        "the image should need a second block"
    );
    b[rt + 8..rt + 16].fill(0);
    b[79] |= 1;
    std::fs::write(&img, b).unwrap();
    assert_eq!(qemu_check(&img), 2);
    drop(open(&img, false));
    assert!(!dirty(&img));
    assert_eq!(qemu_check(&img), 0);
    let mut want = vec![0u8; 8 << 20];
    want[..400 << 10].fill(0x44);
    support::assert_same(&qemu_raw(dir.path(), &img), &want, "qemu view");
}
