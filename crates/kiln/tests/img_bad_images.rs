//! Damaged and hostile images through the `kiln img` commands: truncated files, tables
//! past the end of the file or absurdly large, unaligned tables and clusters, L2 entries
//! pointing past the end of the file or into metadata, backing chains that loop, run
//! 1000 deep or name a missing file, unknown incompatible features and encryption. Each
//! is refused with one clear line and exit status 1 (never a panic, a hang or an
//! allocation of the absurd size), and nothing is written to an image that is refused.

mod common;

use common::{run, Scratch};
use std::process::Command;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img is needed for these tests: {e}"));
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(args: &[&str]) {
    let out = Command::new("qemu-io")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("qemu-io is needed for these tests: {e}"));
    assert!(out.status.success(), "qemu-io {args:?}");
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A 1 MiB qcow2 image with 4 KiB clusters and data in its first two clusters.
fn good_image(s: &Scratch) -> Vec<u8> {
    let p = s.dir.path().join("good.qcow2");
    let p = p.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        p,
        "1M",
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x33 0 8k", p]);
    std::fs::read(p).unwrap()
}

/// Offset of the first L2 entry (the L2 table of L1 entry 0).
fn first_l2_entry(img: &[u8]) -> usize {
    let l1 = be64(img, 40) as usize;
    (be64(img, l1) & 0x00ff_ffff_ffff_fe00) as usize
}

#[test]
fn damaged_images_are_refused_with_one_line() {
    let s = Scratch::new();
    let good = good_image(&s);
    type Patch = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Patch, &str)> = vec![
        ("truncated-header", |b| b.truncate(50), "qcow2"),
        (
            "truncated-before-l1",
            |b| b.truncate(6000),
            "beyond the end of the file",
        ),
        (
            "l1-past-eof",
            |b| put64(b, 40, 1 << 40),
            "beyond the end of the file",
        ),
        (
            "reftable-past-eof",
            |b| put64(b, 48, 1 << 40),
            "beyond the end of the file",
        ),
        ("l1-absurd", |b| put32(b, 36, u32::MAX), "too large"),
        (
            "reftable-absurd",
            |b| put32(b, 56, 0x00ff_ffff),
            "too large",
        ),
        (
            "l1-unaligned",
            |b| {
                let v = be64(b, 40) + 8;
                put64(b, 40, v);
            },
            "aligned",
        ),
        (
            "l2-entry-past-eof",
            |b| {
                let at = first_l2_entry(b);
                put64(b, at, (1 << 40) | (1 << 63));
            },
            "beyond the end of the file",
        ),
        (
            "l2-entry-unaligned",
            |b| {
                let at = first_l2_entry(b);
                let v = be64(b, at) + 512;
                put64(b, at, v);
            },
            "aligned",
        ),
        (
            "unknown-incompatible-bit",
            |b| b[72..80].copy_from_slice(&(1u64 << 20).to_be_bytes()),
            "unsupported qcow2 feature",
        ),
        ("bad-cluster-bits", |b| put32(b, 20, 40), "cluster"),
        (
            "snapshot-table-past-eof",
            |b| {
                put32(b, 60, 3);
                put64(b, 64, 1 << 40);
            },
            "snapshot",
        ),
    ];
    for (name, patch, needle) in cases {
        let mut bytes = good.clone();
        patch(&mut bytes);
        let path = s.dir.path().join(format!("{name}.qcow2"));
        std::fs::write(&path, &bytes).unwrap();
        let p = path.to_str().unwrap();
        let out = s.dir.path().join(format!("{name}.raw"));
        for args in [
            vec!["img", "read", p, "0", "8192"],
            vec!["img", "convert", "-O", "raw", p, out.to_str().unwrap()],
            vec!["img", "write", p, "0", "--pattern", "1", "--length", "512"],
        ] {
            let r = run(&args);
            assert_eq!(r.code(), 1, "{name}: {args:?} must fail: {r:#?}");
            r.expect_error(needle);
        }
        // A refused image is left exactly as it was, apart from the corrupt bit.
        let mut after = std::fs::read(&path).unwrap();
        // Marking the image corrupt (incompatible bit 1) is allowed, as QEMU does.
        if after.len() > 79 {
            after[79] = (after[79] & !2) | (bytes[79] & 2);
        }
        let first_diff = after.iter().zip(&bytes).position(|(a, b)| a != b);
        assert!(
            after.len() == bytes.len() && first_diff.is_none(),
            "{name}: image changed (length {} -> {}, first difference at {first_diff:?})",
            bytes.len(),
            after.len()
        );
    }
}

#[test]
fn a_cluster_mapped_onto_metadata_is_never_written() {
    let s = Scratch::new();
    let mut bytes = good_image(&s);
    // Guest cluster 0 points at the L1 table's cluster, as if it were data.
    let l1 = be64(&bytes, 40);
    let at = first_l2_entry(&bytes);
    put64(&mut bytes, at, l1 | (1 << 63));
    let path = s.dir.path().join("onto-l1.qcow2");
    std::fs::write(&path, &bytes).unwrap();
    let p = path.to_str().unwrap();
    run(&["img", "write", p, "0", "--pattern", "1", "--length", "512"])
        .expect_error("would overwrite metadata");
    let after = std::fs::read(&path).unwrap();
    // The L1 table is intact; the image is now marked corrupt (incompatible bit 1), so
    // read-write opens are refused from now on.
    assert_eq!(
        after[l1 as usize..l1 as usize + 8],
        bytes[l1 as usize..l1 as usize + 8]
    );
    assert_eq!(after[79] & 2, 2, "corrupt bit set");
    run(&[
        "img",
        "write",
        p,
        "4096",
        "--pattern",
        "1",
        "--length",
        "512",
    ])
    .expect_error("corrupt");
}

#[test]
fn bad_backing_chains_are_refused_with_one_line() {
    let s = Scratch::new();
    let d = s.dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    // A missing backing file.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "nowhere.qcow2",
        "-F",
        "qcow2",
        &p("orphan.qcow2"),
        "1M",
    ]);
    run(&["img", "read", &p("orphan.qcow2"), "0", "512"])
        .expect_error("could not open backing file");
    // A loop: a -> b -> a.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        &p("a.qcow2"),
        "1M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        &p("b.qcow2"),
        "1M",
    ]);
    run(&["img", "read", &p("a.qcow2"), "0", "512"]).expect_error("loop");
    run(&["img", "info", "--output", "json", &p("a.qcow2")]).no_panic();
    // 1000 deep: d0999 -> d0998 -> ... -> d0000 (small clusters keep the files tiny).
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        &p("d0000.qcow2"),
        "1M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        "-u",
        "-b",
        "dXXXX.qcow2",
        "-F",
        "qcow2",
        &p("template.qcow2"),
        "1M",
    ]);
    let template = std::fs::read(p("template.qcow2")).unwrap();
    let at = template
        .windows(11)
        .position(|w| w == b"dXXXX.qcow2")
        .unwrap();
    for i in 1..1000 {
        let mut b = template.clone();
        b[at..at + 11].copy_from_slice(format!("d{:04}.qcow2", i - 1).as_bytes());
        std::fs::write(p(&format!("d{i:04}.qcow2")), b).unwrap();
    }
    run(&["img", "read", &p("d0999.qcow2"), "0", "512"]).expect_error("deeper than");
    run(&[
        "img",
        "convert",
        "-O",
        "raw",
        &p("d0999.qcow2"),
        &p("out.raw"),
    ])
    .expect_error("deeper than");
}

#[test]
fn encrypted_images_are_refused_with_one_line() {
    let s = Scratch::new();
    let p = s.dir.path().join("enc.qcow2");
    let p = p.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=kiln",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        p,
        "1M",
    ]);
    run(&["img", "read", p, "0", "512"]).expect_error("encrypt");
    run(&["img", "info", p]).expect_error("encrypt");
}

#[test]
fn a_probed_raw_image_never_gets_another_formats_signature() {
    let s = Scratch::new();
    let raw = s.file("disk.img", &[0u8; 65536]);
    let header = s.file("hdr", b"QFI\xfb\0\0\0\x03");
    // Probed as raw: the write that would turn it into a qcow2 image is refused, also
    // when it only completes the signature.
    run(&["img", "write", &raw, "0", "--from", &header]).expect_error("signature");
    let tail = s.file("tail", b"\xfb");
    run(&["img", "write", &raw, "0", "--from", &s.file("q", b"QFI")]).expect_code(0);
    run(&["img", "write", &raw, "3", "--from", &tail]).expect_error("signature");
    assert_eq!(&std::fs::read(&raw).unwrap()[..4], b"QFI\0");
    // Elsewhere, or with the format named, the bytes are just data.
    run(&["img", "write", &raw, "512", "--from", &header]).expect_code(0);
    run(&["img", "write", "-f", "raw", &raw, "0", "--from", &header]).expect_code(0);
    assert_eq!(&std::fs::read(&raw).unwrap()[..4], b"QFI\xfb");
}
