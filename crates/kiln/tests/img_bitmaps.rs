//! Persistent dirty bitmaps (which Kiln does not keep) stay honest: a qcow2 image with
//! bitmaps made by `qemu-img bitmap` keeps them through Kiln's read-only uses and through
//! `check -r` (which changes no data), and `check` counts their clusters as in use, as
//! qemu-img does; Kiln's first read-write open for data clears the autoclear bits, as
//! the qcow2 spec asks of writers that do not know them, so QEMU no longer trusts a
//! bitmap that misses Kiln's writes.

mod common;

use common::{qemu_create, qemu_io, qemu_ok, run, Scratch};
use std::process::Command;

fn autoclear(img: &str) -> u64 {
    let b = std::fs::read(img).unwrap();
    u64::from_be_bytes(b[88..96].try_into().unwrap())
}

#[test]
fn a_write_clears_the_autoclear_bits_so_qemu_drops_stale_bitmaps() {
    let s = Scratch::new();
    let img = s.dir.path().join("bm.qcow2").to_str().unwrap().to_string();
    qemu_create("qcow2", &[], &img, "1M");
    qemu_ok("qemu-img", &["bitmap", "--add", &img, "b0"]);
    assert_eq!(autoclear(&img), 1, "qemu-img sets the bitmaps bit");

    // Reading changes nothing: the bitmap still stands.
    run(&["img", "info", &img]).expect_code(0);
    run(&["img", "read", &img, "0", "512"]).expect_code(0);
    run(&["img", "check", "-U", &img]).no_panic();
    assert_eq!(autoclear(&img), 1);
    let info = Command::new("qemu-img")
        .args(["info", &img])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("name: b0"));
    assert!(
        info.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );

    // A write: the bit goes first, and QEMU says the bitmaps are no longer consistent.
    run(&[
        "img",
        "write",
        &img,
        "0",
        "--pattern",
        "7",
        "--length",
        "4k",
    ])
    .expect_code(0);
    assert_eq!(autoclear(&img), 0);
    let info = Command::new("qemu-img")
        .args(["info", &img])
        .output()
        .unwrap();
    let warn = String::from_utf8_lossy(&info.stderr);
    assert!(
        warn.contains("all bitmaps are now considered inconsistent"),
        "{warn}"
    );
    // The bitmap's clusters are now leaks to QEMU too; repairing them loses no data.
    qemu_ok("qemu-img", &["check", "-r", "leaks", &img]);
    qemu_ok("qemu-io", &["-f", "qcow2", "-c", "read -P 7 0 4k", &img]);
}

/// `kiln img check` and `info` on an image whose bitmaps hold data clusters say what
/// qemu-img says (human and JSON), and `check -r leaks` changes nothing.
#[test]
fn check_and_info_see_the_bitmaps_as_qemu_img_does() {
    let s = Scratch::new();
    let img = s.dir.path().join("bm.qcow2").to_str().unwrap().to_string();
    qemu_create("qcow2", &[], &img, "4M");
    qemu_ok("qemu-img", &["bitmap", "--add", &img, "b0"]);
    qemu_ok(
        "qemu-img",
        &["bitmap", "--add", "--granularity", "512", &img, "b1"],
    );
    qemu_io(
        "qcow2",
        &img,
        &["write 0 64k", "write 100k 300k", "write -c 2M 64k"],
    );
    let human = run(&["img", "check", &img]);
    human.expect_code(0);
    assert_eq!(human.stdout, qemu_ok("qemu-img", &["check", &img]));
    let ours: serde_json::Value =
        serde_json::from_str(&run(&["img", "check", "--output", "json", &img]).stdout).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&qemu_ok("qemu-img", &["check", "--output", "json", &img])).unwrap();
    assert_eq!(ours, theirs);
    // info lists the bitmaps as qemu-img does.
    let info = run(&["img", "info", &img]);
    assert_eq!(info.stdout, qemu_ok("qemu-img", &["info", &img]));
    assert!(info.stdout.contains("name: b1"), "{}", info.stdout);
    let ours: serde_json::Value =
        serde_json::from_str(&run(&["img", "info", "--output", "json", &img]).stdout).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&qemu_ok("qemu-img", &["info", "--output", "json", &img])).unwrap();
    assert_eq!(ours, theirs);
    let before = std::fs::read(&img).unwrap();
    run(&["img", "check", "-r", "leaks", &img]).expect_code(0);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "check -r changed the image"
    );
    assert_eq!(autoclear(&img), 1);
}

/// A hostile bitmap directory entry (a table of 2^32 entries in a huge sparse file) is an
/// error in the check's report, not an allocation of 32 GiB or a panic.
#[test]
fn a_hostile_bitmap_table_is_reported_not_read() {
    let s = Scratch::new();
    let img = s.dir.path().join("bad.qcow2").to_str().unwrap().to_string();
    qemu_create("qcow2", &[], &img, "1M");
    qemu_ok("qemu-img", &["bitmap", "--add", &img, "b0"]);
    let mut b = std::fs::read(&img).unwrap();
    let ext = (112..4096)
        .step_by(8)
        .find(|&i| b[i..i + 4] == 0x2385_2875u32.to_be_bytes())
        .expect("the bitmaps extension");
    let dir = u64::from_be_bytes(b[ext + 24..ext + 32].try_into().unwrap()) as usize;
    b[dir + 8..dir + 12].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(&img, &b).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(40 << 30).unwrap();
    drop(f);
    let r = run(&["img", "check", &img]);
    r.no_panic();
    assert_eq!(r.code(), 1, "{r:#?}");
    assert!(
        r.stderr.contains("bitmap tables add up to more than"),
        "{r:#?}"
    );
}
