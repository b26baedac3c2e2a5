//! `kiln img create -o preallocation=...` against qemu-img: metadata, falloc and full on
//! qcow2 (several cluster sizes, extended L2, 1-bit refcounts) are check-clean, map as
//! fully allocated, take the space their mode promises and keep working for writes; raw
//! takes falloc and full; bad combinations fail with one line.

mod common;

use common::{run, Scratch};
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn qemu_img(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img is needed for these tests: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Bytes the file occupies on disk.
fn allocated(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn qcow2_preallocation_modes_are_clean_allocated_and_writable() {
    let s = Scratch::new();
    let size = 5u64 << 20;
    for mode in ["metadata", "falloc", "full"] {
        for extra in [
            "",
            ",cluster_size=4k",
            ",extended_l2=on",
            ",cluster_size=512,refcount_bits=1",
        ] {
            let img = s.dir.path().join(format!("p-{mode}{extra}.qcow2"));
            let p = img.to_str().unwrap();
            let opt = format!("preallocation={mode}{extra}");
            run(&["img", "create", "-f", "qcow2", "-o", &opt, p, "5M"]).expect_code(0);
            assert_eq!(qemu_img(&["check", p]).0, 0, "{opt}: qemu-img check");
            // Every guest byte maps to a host cluster of this image.
            let (code, map) = qemu_img(&["map", "--output", "json", p]);
            assert_eq!(code, 0);
            let map: serde_json::Value = serde_json::from_str(&map).unwrap();
            let mut covered = 0;
            for e in map.as_array().unwrap() {
                assert_eq!(e["data"], true, "{opt}: unallocated range {e}");
                assert!(e["offset"].is_u64(), "{opt}: no host offset in {e}");
                covered += e["length"].as_u64().unwrap();
            }
            assert_eq!(covered, size, "{opt}: map covers the disk");
            if mode != "metadata" {
                assert!(
                    allocated(p) >= size,
                    "{opt}: {} bytes on disk",
                    allocated(p)
                );
            }
            // Reads as zeros, and writes land in place (no new clusters).
            let len_before = std::fs::metadata(&img).unwrap().len();
            run(&[
                "img",
                "write",
                p,
                "1000",
                "--pattern",
                "0x5a",
                "--length",
                "70000",
            ])
            .expect_code(0);
            assert_eq!(qemu_img(&["check", p]).0, 0, "{opt}: check after a write");
            assert_eq!(
                std::fs::metadata(&img).unwrap().len(),
                len_before,
                "{opt}: file grew"
            );
            let r = run(&["img", "read", p, "0", "80000"]);
            r.expect_code(0);
            let mut want = vec![0u8; 80000];
            want[1000..71000].fill(0x5a);
            assert!(r.stdout.as_bytes() == want.as_slice(), "{opt}: data");
        }
    }
}

#[test]
fn raw_preallocation_and_bad_combinations() {
    let s = Scratch::new();
    for mode in ["falloc", "full"] {
        let img = s.dir.path().join(format!("{mode}.raw"));
        let p = img.to_str().unwrap();
        run(&[
            "img",
            "create",
            "-o",
            &format!("preallocation={mode}"),
            p,
            "3M",
        ])
        .expect_code(0);
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 3 << 20);
        assert!(
            allocated(p) >= 3 << 20,
            "{mode}: {} bytes on disk",
            allocated(p)
        );
    }
    let p = s.dir.path().join("x.img");
    let p = p.to_str().unwrap();
    run(&["img", "create", "-o", "preallocation=metadata", p, "1M"]).expect_error("for qcow2");
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-o",
        "preallocation=sometimes",
        p,
        "1M",
    ])
    .expect_error("invalid preallocation mode");
    let base = s.dir.path().join("base.qcow2");
    let b = base.to_str().unwrap();
    run(&["img", "create", "-f", "qcow2", b, "1M"]).expect_code(0);
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-o",
        "preallocation=full",
        "-b",
        b,
        "-F",
        "qcow2",
        p,
    ])
    .expect_error("backing file and preallocation");
}
