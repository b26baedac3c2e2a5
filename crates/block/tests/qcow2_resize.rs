//! Resizing qcow2 images, emptying overlays and rewriting backing file names with Kiln,
//! cross-checked with qemu-img: results pass `qemu-img check`, `qemu-img info` shows the
//! new size or backing file, and the data equals what qemu-img's own resize produces.

mod support;

use kiln_block::qcow2::{self, CreateOptions, Qcow2};
use kiln_block::{open_qcow2_rw, BlockDevice, Error};
use std::path::Path;
use support::*;

/// Run `f`, retrying while the image is locked: another test's child process may hold a
/// copy of a just-closed image's descriptor (and so its lock) between fork and exec.
fn retry<T>(f: impl Fn() -> kiln_block::Result<T>) -> T {
    for _ in 0..200 {
        match f() {
            Err(Error::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
            r => return r.unwrap(),
        }
    }
    panic!("image stayed locked");
}

fn ropen(path: &Path, read_only: bool) -> Box<dyn BlockDevice> {
    retry(|| {
        kiln_block::open(
            path,
            &kiln_block::OpenOptions {
                read_only,
                ..Default::default()
            },
        )
    })
}

fn info_json(img: &Path) -> String {
    let out = qemu("qemu-img", &["info", "--output=json", s(img)]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_same(a: &Path, b: &Path) {
    qemu("qemu-img", &["compare", s(a), s(b)]);
}

fn create(path: &Path, size: u64, cluster_size: u64, backing: Option<&str>) {
    qcow2::create(
        path,
        &CreateOptions {
            size,
            cluster_size,
            backing_file: backing.map(str::to_owned),
            backing_format: backing.map(|_| "qcow2".to_owned()),
            ..Default::default()
        },
    )
    .unwrap();
}

fn kiln_check_clean(img: &Path, what: &str) {
    assert_eq!(qemu_check(img), 0, "{what}: qemu-img check");
    let r = retry(|| qcow2::check::check(img));
    assert_eq!((r.corruptions, r.leaks), (0, 0), "{what}: {:?}", r.messages);
}

#[test]
fn grow_across_l1_growth_with_512_byte_clusters_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("a.qcow2");
    // 512 B clusters: one L2 table maps 32 KiB, one L1 cluster holds 64 entries (2 MiB).
    create(&img, 1 << 20, 512, None);
    let old = data(7, 1 << 20);
    {
        let mut q = ropen(&img, false);
        q.write_at(&old, 0).unwrap();
        q.flush().unwrap();
    }
    let before = std::fs::read(&img).unwrap();
    let l1_before = retry(|| Qcow2::open(&img, true)).header().l1_table_offset;
    let copy = d.join("q.qcow2");
    std::fs::write(&copy, &before).unwrap();
    let new_size = 10 << 20;
    let mut q = retry(|| open_qcow2_rw(&img));
    q.resize(new_size, false).unwrap();
    assert_eq!(q.size(), new_size);
    let h = q.header().clone();
    assert_eq!(h.l1_size, 320);
    assert_ne!(h.l1_table_offset, l1_before, "the L1 table moved");
    // Write past the old end too.
    let tail = data(8, 300_000);
    q.write_at(&tail, 9 << 20).unwrap();
    q.flush().unwrap();
    drop(q);
    kiln_check_clean(&img, "grown");
    assert!(info_json(&img).contains(&format!("\"virtual-size\": {new_size}")));
    qemu("qemu-img", &["resize", s(&copy), &new_size.to_string()]);
    qemu(
        "qemu-io",
        &["-c", &format!("write -P 0 {} 300000", 9 << 20), s(&copy)],
    );
    let mut want = qemu_raw(d, &copy);
    want[9 << 20..(9 << 20) + tail.len()].copy_from_slice(&tail);
    let got = read_all(ropen(&img, true).as_mut());
    assert_same(&got, &want, "grown image");
    assert_same(&got[..1 << 20], &old, "old data");
}

#[test]
fn shrink_needs_permission_and_drops_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("a.qcow2");
    create(&img, 4 << 20, 65536, None);
    let old = data(9, 4 << 20);
    {
        let mut q = ropen(&img, false);
        q.write_at(&old, 0).unwrap();
        q.flush().unwrap();
    }
    let copy = d.join("q.qcow2");
    std::fs::copy(&img, &copy).unwrap();
    let mut q = retry(|| open_qcow2_rw(&img));
    match q.resize(1 << 20, false) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("--shrink"), "{m}"),
        other => panic!("shrink without permission: {other:?}"),
    }
    // Not cluster aligned: the rest of the last cluster must read as zeros later.
    let small = (1 << 20) + 1536;
    let len_before = std::fs::metadata(&img).unwrap().len();
    q.resize(small, true).unwrap();
    drop(q);
    let len_after = std::fs::metadata(&img).unwrap().len();
    assert!(
        len_after < len_before / 2,
        "file cut: {len_before} -> {len_after}"
    );
    kiln_check_clean(&img, "shrunk");
    assert!(info_json(&img).contains(&format!("\"virtual-size\": {small}")));
    qemu(
        "qemu-img",
        &["resize", "--shrink", s(&copy), &small.to_string()],
    );
    qemu_same(&img, &copy);
    let got = read_all(ropen(&img, true).as_mut());
    assert_same(&got, &old[..small as usize], "shrunk data");
    // Grow back: the dropped part reads as zeros.
    let mut q = retry(|| open_qcow2_rw(&img));
    q.resize(4 << 20, false).unwrap();
    drop(q);
    kiln_check_clean(&img, "regrown");
    let got = read_all(ropen(&img, true).as_mut());
    assert_same(&got[..small as usize], &old[..small as usize], "kept data");
    assert!(
        got[small as usize..].iter().all(|&b| b == 0),
        "tail is zeros"
    );
}

#[test]
fn growing_an_overlay_hides_the_longer_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    create(&base, 2 << 20, 65536, None);
    {
        let mut b = ropen(&base, false);
        b.write_at(&data(3, 2 << 20), 0).unwrap();
        b.flush().unwrap();
    }
    let ov = d.join("ov.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            s(&ov),
            "1M",
        ],
    );
    let copy = d.join("ov2.qcow2");
    std::fs::copy(&ov, &copy).unwrap();
    let mut q = retry(|| open_qcow2_rw(&ov));
    q.resize(3 << 20, false).unwrap();
    drop(q);
    kiln_check_clean(&ov, "grown overlay");
    qemu("qemu-img", &["resize", s(&copy), "3M"]);
    qemu_same(&ov, &copy);
    let got = read_all(ropen(&ov, true).as_mut());
    assert!(got[1 << 20..].iter().all(|&b| b == 0));
}

#[test]
fn shrinking_keeps_the_snapshots_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.qcow2");
    create(&img, 4 << 20, 65536, None);
    qemu("qemu-io", &["-c", "write -P 7 0 4M", s(&img)]);
    qemu("qemu-img", &["snapshot", "-c", "s1", s(&img)]);
    let mut q = retry(|| Qcow2::open(&img, false));
    // Mid-cluster: the tail of the last cluster is zeroed in a private copy of it.
    q.resize((1 << 20) + 512, true).unwrap();
    assert_eq!(q.size(), (1 << 20) + 512);
    drop(q);
    kiln_check_clean(&img, "shrunk with a snapshot");
    let got = read_all(ropen(&img, true).as_mut());
    assert!(got.iter().all(|&b| b == 7));
    // The snapshot still holds all of its 4 MiB.
    qemu("qemu-img", &["snapshot", "-a", "s1", s(&img)]);
    kiln_check_clean(&img, "snapshot applied");
    let got = read_all(ropen(&img, true).as_mut());
    assert_eq!(got.len(), 4 << 20);
    assert!(got.iter().all(|&b| b == 7));
}

#[test]
fn make_empty_leaves_a_clean_empty_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    create(&base, 8 << 20, 512, None);
    let ov = d.join("ov.qcow2");
    create(&ov, 8 << 20, 512, Some("base.qcow2"));
    {
        let mut q = ropen(&ov, false);
        q.write_at(&data(4, 3 << 20), 1 << 20).unwrap();
        q.write_zeroes(5 << 20, 1 << 20).unwrap();
        q.flush().unwrap();
    }
    let mut q = retry(|| Qcow2::open(&ov, false));
    q.make_empty().unwrap();
    drop(q);
    kiln_check_clean(&ov, "emptied");
    let out = qemu("qemu-img", &["map", "--output=json", s(&ov)]);
    let map = String::from_utf8_lossy(&out.stdout);
    assert!(!map.contains("\"depth\": 0"), "nothing allocated: {map}");
}

#[test]
fn backing_file_rewrite_keeps_other_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for cluster in [512u64, 65536] {
        let a = d.join("a.qcow2");
        let b = d.join("b.qcow2");
        create(&a, 1 << 20, cluster, None);
        create(&b, 1 << 20, cluster, None);
        let ov = d.join("ov.qcow2");
        create(&ov, 1 << 20, cluster, Some("a.qcow2"));
        let mut q = retry(|| Qcow2::open(&ov, false));
        q.set_backing_file(Some("b.qcow2"), Some("qcow2")).unwrap();
        drop(q);
        kiln_check_clean(&ov, "rebased");
        let h = retry(|| Qcow2::open(&ov, true)).header().clone();
        assert_eq!(h.backing_file.as_deref(), Some("b.qcow2"));
        assert_eq!(
            h.feature_names.is_empty(),
            cluster <= 4096,
            "the feature-name table is kept"
        );
        let info = info_json(&ov);
        assert!(info.contains("\"backing-filename\": \"b.qcow2\""), "{info}");
        assert!(
            info.contains("\"backing-filename-format\": \"qcow2\""),
            "{info}"
        );
        let mut q = retry(|| Qcow2::open(&ov, false));
        q.set_backing_file(None, None).unwrap();
        drop(q);
        let info = info_json(&ov);
        assert!(!info.contains("backing-filename"), "{info}");
        // A name too long for cluster 0 is refused and changes nothing.
        let mut q = retry(|| Qcow2::open(&ov, false));
        let long = "x".repeat(1000);
        let r = q.set_backing_file(Some(&long), Some("qcow2"));
        assert_eq!(r.is_err(), cluster == 512, "{r:?}");
        q.set_backing_file(None, None).unwrap();
        drop(q);
        kiln_check_clean(&ov, "after refused rewrite");
        let st = run_qemu("qemu-img", &["info", s(&ov)]);
        assert!(st.status.success());
    }
}
