//! qcow2 internal snapshots against qemu-img 10: snapshots qemu-img makes list and apply
//! in Kiln as in qemu-img; snapshots Kiln makes (with writes in between, across cluster
//! sizes, refcount widths and both versions) pass `qemu-img check`, list in qemu-img and
//! apply there to the expected bytes; hostile snapshot tables give clear errors.

mod support;

use kiln_block::qcow2::{self, CreateOptions, Qcow2};
use kiln_block::BlockDevice;
use std::path::Path;
use support::*;

/// Random writes (some zeroing, some partial clusters) mirrored into `shadow`.
fn scribble(dev: &mut dyn BlockDevice, shadow: &mut [u8], seed: u64, n: usize, cs: u64) {
    let mut r = Rng(seed);
    let size = shadow.len() as u64;
    for i in 0..n {
        let len = 1 + r.below(if i % 3 == 0 { 3 * cs } else { cs / 2 + 100 });
        let len = len.min(size / 2);
        let off = r.below(size - len);
        let (o, l) = (off as usize, len as usize);
        if i % 5 == 4 {
            dev.write_zeroes(off, len).unwrap();
            shadow[o..o + l].fill(0);
        } else {
            let b = r.bytes(l);
            dev.write_at(&b, off).unwrap();
            shadow[o..o + l].copy_from_slice(&b);
        }
    }
    dev.flush().unwrap();
}

fn kiln_check(img: &Path, what: &str) {
    let r = qcow2::check::check(img).unwrap();
    assert_eq!(
        (r.corruptions, r.leaks),
        (0, 0),
        "{what}: kiln check: {:?}",
        r.messages
    );
}

/// Both checkers find the image clean.
fn both_clean(img: &Path, what: &str) {
    assert_eq!(qemu_check(img), 0, "{what}: qemu-img check");
    kiln_check(img, what);
}

/// The tags `qemu-img snapshot -l` lists.
fn qemu_tags(img: &Path) -> Vec<String> {
    let out = qemu("qemu-img", &["snapshot", "-l", s(img)]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

/// What qemu-img sees after applying snapshot `tag` to a copy of `img`.
fn qemu_view_of(dir: &Path, img: &Path, tag: &str) -> Vec<u8> {
    let copy = dir.join("qemu-apply.qcow2");
    std::fs::copy(img, &copy).unwrap();
    qemu("qemu-img", &["snapshot", "-a", tag, s(&copy)]);
    let v = qemu_raw(dir, &copy);
    std::fs::remove_file(copy).unwrap();
    v
}

fn rw(img: &Path) -> Qcow2 {
    Qcow2::open(img, false).unwrap_or_else(|e| panic!("open {}: {e}", img.display()))
}

#[test]
fn snapshots_made_by_qemu_img_list_read_and_apply_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (cs, compat) in [("64k", "1.1"), ("4k", "0.10"), ("512", "1.1")] {
        let img = d.join("q.qcow2");
        qemu_create(&img, &format!("cluster_size={cs},compat={compat}"), "3M");
        qemu("qemu-io", &["-c", "write -P 0x11 0 700k", s(&img)]);
        qemu("qemu-img", &["snapshot", "-c", "one", s(&img)]);
        qemu(
            "qemu-io",
            &[
                "-c",
                "write -P 0x22 100k 300k",
                "-c",
                "write -z 500k 64k",
                "-c",
                "write -c -P 0x44 2M 64k",
                s(&img),
            ],
        );
        qemu("qemu-img", &["snapshot", "-c", "two words", s(&img)]);
        qemu("qemu-io", &["-c", "write -P 0x33 1M 200k", s(&img)]);
        let active = qemu_raw(d, &img);
        let want_one = qemu_view_of(d, &img, "one");
        let want_two = qemu_view_of(d, &img, "2");
        {
            let mut ro = Qcow2::open(&img, true).unwrap();
            let names: Vec<(&str, &str)> = ro
                .snapshots()
                .iter()
                .map(|s| (s.id.as_str(), s.name.as_str()))
                .collect();
            assert_eq!(names, [("1", "one"), ("2", "two words")], "{cs}");
            for sn in ro.snapshots() {
                assert_eq!(sn.disk_size, 3 << 20);
                assert_eq!(sn.vm_state_size, 0);
                assert_eq!(sn.icount, Some(0));
            }
            assert_same(&read_all(&mut ro), &active, "active layer");
            assert_eq!(ro.find_snapshot("2"), Some(1));
            assert_eq!(ro.find_snapshot("two words"), Some(1));
            assert_eq!(ro.find_snapshot("three"), None);
        }
        let mut img_rw = rw(&img);
        img_rw.snapshot_apply(0).unwrap();
        assert_same(&read_all(&mut img_rw), &want_one, "kiln apply one");
        drop(img_rw);
        both_clean(&img, "after kiln apply");
        assert_same(&qemu_raw(d, &img), &want_one, "qemu view after kiln apply");
        // The other snapshot is untouched.
        assert_same(&qemu_view_of(d, &img, "two words"), &want_two, "two kept");
        let mut img_rw = rw(&img);
        let i = img_rw.find_snapshot("two words").unwrap();
        img_rw.snapshot_apply(i).unwrap();
        assert_same(&read_all(&mut img_rw), &want_two, "kiln apply two");
        drop(img_rw);
        both_clean(&img, "after second apply");
        std::fs::remove_file(&img).unwrap();
    }
}

/// Kiln creates, applies and deletes snapshots with writes in between; qemu-img agrees
/// at every step.
fn kiln_snapshot_round(dir: &Path, cluster_size: u64, version: u32, refcount_bits: u32) {
    let what = format!("cs={cluster_size} v{version} refcount_bits={refcount_bits}");
    let img = dir.join("k.qcow2");
    let size: u64 = if cluster_size >= 1 << 20 {
        16 << 20
    } else {
        4 << 20
    };
    qcow2::create(
        &img,
        &CreateOptions {
            size,
            cluster_size,
            version,
            refcount_bits,
            ..Default::default()
        },
    )
    .unwrap();
    let mut shadow = vec![0u8; size as usize];
    let mut dev = rw(&img);
    scribble(&mut dev, &mut shadow, 1 + cluster_size, 20, cluster_size);
    let view1 = shadow.clone();
    dev.snapshot_create("s1").unwrap();
    assert_same(
        &read_all(&mut dev),
        &view1,
        &format!("{what}: after create"),
    );
    scribble(&mut dev, &mut shadow, 2 + cluster_size, 20, cluster_size);
    let view2 = shadow.clone();
    dev.snapshot_create("s2").unwrap();
    scribble(&mut dev, &mut shadow, 3 + cluster_size, 20, cluster_size);
    assert_same(&read_all(&mut dev), &shadow, &format!("{what}: active"));
    drop(dev);
    both_clean(&img, &format!("{what}: two snapshots and writes"));
    assert_eq!(qemu_tags(&img), ["s1", "s2"], "{what}");
    assert_same(
        &qemu_raw(dir, &img),
        &shadow,
        &format!("{what}: qemu active"),
    );
    assert_same(
        &qemu_view_of(dir, &img, "s1"),
        &view1,
        &format!("{what}: qemu s1"),
    );
    assert_same(
        &qemu_view_of(dir, &img, "s2"),
        &view2,
        &format!("{what}: qemu s2"),
    );

    // Apply s1 in Kiln, write over it, and the snapshots keep their contents.
    let mut dev = rw(&img);
    let i = dev.find_snapshot("s1").unwrap();
    dev.snapshot_apply(i).unwrap();
    assert_same(
        &read_all(&mut dev),
        &view1,
        &format!("{what}: kiln apply s1"),
    );
    shadow.copy_from_slice(&view1);
    scribble(&mut dev, &mut shadow, 4 + cluster_size, 20, cluster_size);
    drop(dev);
    both_clean(&img, &format!("{what}: writes after apply"));
    assert_same(
        &qemu_raw(dir, &img),
        &shadow,
        &format!("{what}: qemu after apply"),
    );
    assert_same(
        &qemu_view_of(dir, &img, "s1"),
        &view1,
        &format!("{what}: s1 kept"),
    );
    assert_same(
        &qemu_view_of(dir, &img, "s2"),
        &view2,
        &format!("{what}: s2 kept"),
    );

    // Delete s1 (restoring COPIED flags), then s2; writes go on working.
    let mut dev = rw(&img);
    dev.snapshot_delete(0).unwrap();
    drop(dev);
    both_clean(&img, &format!("{what}: after deleting s1"));
    assert_eq!(qemu_tags(&img), ["s2"], "{what}");
    assert_same(
        &qemu_view_of(dir, &img, "s2"),
        &view2,
        &format!("{what}: s2 left"),
    );
    let mut dev = rw(&img);
    dev.snapshot_delete(0).unwrap();
    scribble(&mut dev, &mut shadow, 5 + cluster_size, 10, cluster_size);
    assert!(dev.snapshots().is_empty());
    drop(dev);
    both_clean(&img, &format!("{what}: after deleting s2"));
    assert!(qemu_tags(&img).is_empty(), "{what}");
    assert_same(&qemu_raw(dir, &img), &shadow, &format!("{what}: final"));

    // A snapshot qemu-img makes on top of Kiln's work, applied by Kiln.
    qemu("qemu-img", &["snapshot", "-c", "q", s(&img)]);
    let mut dev = rw(&img);
    let before = shadow.clone();
    scribble(&mut dev, &mut shadow, 6 + cluster_size, 10, cluster_size);
    dev.snapshot_apply(0).unwrap();
    assert_same(
        &read_all(&mut dev),
        &before,
        &format!("{what}: apply qemu's"),
    );
    drop(dev);
    both_clean(&img, &format!("{what}: apply of qemu's snapshot"));
    std::fs::remove_file(&img).unwrap();
}

#[test]
fn kiln_snapshots_pass_qemu_img_across_cluster_sizes_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    for (cs, version, rb) in [
        (65536, 3, 16),
        (512, 3, 16),
        (512, 2, 16),
        (4096, 3, 64),
        (2 << 20, 3, 16),
        (65536, 2, 16),
        (1024, 3, 8),
    ] {
        kiln_snapshot_round(dir.path(), cs, version, rb);
    }
}

#[test]
fn one_bit_refcounts_refuse_to_share_clusters_without_damage() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r1.qcow2");
    let opts = CreateOptions {
        size: 1 << 20,
        refcount_bits: 1,
        ..Default::default()
    };
    qcow2::create(&img, &opts).unwrap();
    // An empty image shares nothing: qemu-img allows that snapshot too.
    let mut dev = rw(&img);
    dev.snapshot_create("empty").unwrap();
    let mut shadow = vec![0u8; 1 << 20];
    scribble(&mut dev, &mut shadow, 9, 10, 65536);
    let e = dev.snapshot_create("full").unwrap_err().to_string();
    assert!(e.contains("refcount"), "{e}");
    assert_eq!(dev.snapshots().len(), 1);
    assert_same(&read_all(&mut dev), &shadow, "data after refusal");
    drop(dev);
    both_clean(&img, "refcount_bits=1 after refusal");
    assert_eq!(qemu_tags(&img), ["empty"]);
    let mut dev = rw(&img);
    dev.snapshot_apply(0).unwrap();
    assert_same(&read_all(&mut dev), &vec![0u8; 1 << 20], "empty applied");
    dev.snapshot_delete(0).unwrap();
    drop(dev);
    both_clean(&img, "refcount_bits=1 after delete");
}

#[test]
fn applying_restores_the_snapshot_disk_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("grow.qcow2");
    qemu("qemu-img", &["create", "-f", "qcow2", s(&img), "1M"]);
    qemu("qemu-io", &["-c", "write -P 7 0 1M", s(&img)]);
    let mut dev = rw(&img);
    dev.snapshot_create("small").unwrap();
    drop(dev);
    qemu("qemu-img", &["resize", s(&img), "3G"]);
    qemu("qemu-io", &["-c", "write -P 8 2G 64k", s(&img)]);
    let mut dev = rw(&img);
    assert_eq!(dev.size(), 3 << 30);
    dev.snapshot_apply(0).unwrap();
    assert_eq!(dev.size(), 1 << 20);
    assert_same(&read_all(&mut dev), &vec![7u8; 1 << 20], "small again");
    drop(dev);
    both_clean(&img, "after size change");
    assert_same(&qemu_raw(d, &img), &vec![7u8; 1 << 20], "qemu view");
}

/// Patch big-endian `bytes` into the file at `at`.
fn poke(path: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::read(path).unwrap();
    f[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, f).unwrap();
}

fn be64_at(path: &Path, at: usize) -> u64 {
    let f = std::fs::read(path).unwrap();
    u64::from_be_bytes(f[at..at + 8].try_into().unwrap())
}

#[test]
fn hostile_snapshot_tables_give_clear_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.qcow2");
    qemu("qemu-img", &["create", "-f", "qcow2", s(&good), "1M"]);
    qemu("qemu-io", &["-c", "write -P 1 0 128k", s(&good)]);
    qemu("qemu-img", &["snapshot", "-c", "a", s(&good)]);
    let table = be64_at(&good, 64);
    let flen = std::fs::metadata(&good).unwrap().len();
    let bad = dir.path().join("bad.qcow2");
    // (what, header/table patch, error for any open, error for read-write only)
    let cases: Vec<(&str, u64, Vec<u8>, &str, bool)> = vec![
        (
            "count huge",
            60,
            65536u32.to_be_bytes().to_vec(),
            "beyond the end",
            false,
        ),
        (
            "count absurd",
            60,
            u32::MAX.to_be_bytes().to_vec(),
            "too many snapshots",
            false,
        ),
        (
            "offset past EOF",
            64,
            (flen * 4)
                .div_ceil(65536)
                .wrapping_mul(65536)
                .to_be_bytes()
                .to_vec(),
            "beyond the end",
            false,
        ),
        (
            "offset absurd",
            64,
            (!0xffffu64).to_be_bytes().to_vec(),
            "beyond the end",
            false,
        ),
        (
            "extra data huge",
            table + 36,
            0x7fff_ffffu32.to_be_bytes().to_vec(),
            "extra metadata",
            false,
        ),
        (
            "name past EOF",
            table + 14,
            0xffffu16.to_be_bytes().to_vec(),
            "beyond the end",
            false,
        ),
        (
            "L1 size absurd",
            table + 8,
            u32::MAX.to_be_bytes().to_vec(),
            "too large",
            true,
        ),
        (
            "L1 past EOF",
            table,
            (flen.div_ceil(65536) * 65536 * 16).to_be_bytes().to_vec(),
            "beyond the end",
            true,
        ),
        (
            "L1 unaligned",
            table,
            0x1234u64.to_be_bytes().to_vec(),
            "not cluster aligned",
            true,
        ),
    ];
    for (what, at, bytes, needle, rw_only) in cases {
        std::fs::copy(&good, &bad).unwrap();
        poke(&bad, at, &bytes);
        let ro = Qcow2::open(&bad, true);
        if rw_only {
            let mut ro = ro.unwrap_or_else(|e| panic!("{what}: read-only open: {e}"));
            assert_eq!(ro.snapshots().len(), 1, "{what}");
            read_all(&mut ro);
            drop(ro);
        } else {
            let e = ro.unwrap_err().to_string();
            assert!(e.contains(needle), "{what}: {e}");
            assert!(!e.contains('\n'), "{what}: one line: {e}");
        }
        let e = Qcow2::open(&bad, false).unwrap_err().to_string();
        assert!(e.contains(needle), "{what}: {e}");
    }
}

#[test]
fn copied_flag_mismatches_are_reported_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.qcow2");
    qemu("qemu-img", &["create", "-f", "qcow2", s(&img), "1M"]);
    qemu("qemu-io", &["-c", "write -P 3 0 100k", s(&img)]);
    rw(&img).snapshot_create("a").unwrap();
    both_clean(&img, "fresh snapshot");
    // Set COPIED on the shared L2 table's L1 entry and its first data entry.
    let l1 = be64_at(&img, 40);
    let l1e = be64_at(&img, l1 as usize);
    poke(&img, l1, &(l1e | 1 << 63).to_be_bytes());
    let l2 = l1e & 0x00ff_ffff_ffff_fe00;
    let l2e = be64_at(&img, l2 as usize);
    poke(&img, l2, &(l2e | 1 << 63).to_be_bytes());
    let out = support::run_qemu("qemu-img", &["check", s(&img)]);
    assert_eq!(out.status.code(), Some(2));
    let theirs: Vec<String> = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let r = qcow2::check::check(&img).unwrap();
    assert_eq!(r.corruptions, 2);
    assert_eq!(r.messages, theirs);
}

#[test]
fn empty_and_extended_l2_images_take_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("zero.qcow2");
    qemu("qemu-img", &["create", "-f", "qcow2", s(&img), "0"]);
    let mut dev = rw(&img);
    dev.snapshot_create("a").unwrap();
    dev.snapshot_create("b").unwrap();
    dev.snapshot_apply(0).unwrap();
    dev.snapshot_delete(1).unwrap();
    drop(dev);
    both_clean(&img, "zero-size image");
    assert_eq!(qemu_tags(&img), ["a"]);

    let img = d.join("ext.qcow2");
    qemu_create(&img, "extended_l2=on", "4M");
    qemu(
        "qemu-io",
        &[
            "-c",
            "write -P 3 0 100k",
            "-c",
            "write -c -P 4 1M 64k",
            s(&img),
        ],
    );
    let first = qemu_raw(d, &img);
    rw(&img).snapshot_create("a").unwrap();
    qemu("qemu-io", &["-c", "write -P 5 10k 10k", s(&img)]);
    both_clean(&img, "extended L2 with a snapshot");
    assert_same(&qemu_view_of(d, &img, "a"), &first, "extended L2 snapshot");
    let mut dev = rw(&img);
    dev.snapshot_apply(0).unwrap();
    assert_same(&read_all(&mut dev), &first, "extended L2 applied");
    dev.snapshot_delete(0).unwrap();
    drop(dev);
    both_clean(&img, "extended L2 after delete");
}

#[test]
fn hostile_snapshot_trees_are_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.qcow2");
    qemu("qemu-img", &["create", "-f", "qcow2", s(&good), "1M"]);
    qemu("qemu-io", &["-c", "write -P 1 0 128k", s(&good)]);
    qemu("qemu-img", &["snapshot", "-c", "a", s(&good)]);
    let table = be64_at(&good, 64);
    let sl1 = be64_at(&good, table as usize);
    let l2 = be64_at(&good, sl1 as usize) & 0x00ff_ffff_ffff_fe00;
    let far = 1u64 << 40;
    let bad = dir.path().join("bad.qcow2");
    for (what, at, value) in [
        ("L2 table past EOF", sl1, far | 1 << 63),
        ("L2 table unaligned", sl1, 0x10200),
        ("data cluster past EOF", l2, far | 1 << 63),
    ] {
        std::fs::copy(&good, &bad).unwrap();
        // Damage the snapshot's tree: its L1 table, or the L2 table it shares.
        poke(&bad, at, &value.to_be_bytes());
        let before = std::fs::read(&bad).unwrap();
        let mut dev = rw(&bad);
        let e = dev.snapshot_apply(0).unwrap_err().to_string();
        assert!(
            e.contains("beyond the end") || e.contains("unaligned"),
            "{what}: {e}"
        );
        let e = dev.snapshot_delete(0).unwrap_err().to_string();
        assert!(!e.is_empty());
        drop(dev);
        assert!(
            std::fs::read(&bad).unwrap() == before,
            "{what}: image changed"
        );
    }
}
