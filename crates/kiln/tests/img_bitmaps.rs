//! Persistent dirty bitmaps (which Kiln does not keep) stay honest: a qcow2 image with a
//! bitmap made by `qemu-img bitmap` keeps it through Kiln's read-only uses, and Kiln's
//! first read-write open clears the autoclear bits, as the qcow2 spec asks of writers
//! that do not know them, so QEMU no longer trusts a bitmap that misses Kiln's writes.

mod common;

use common::{qemu_create, qemu_ok, run, Scratch};
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
