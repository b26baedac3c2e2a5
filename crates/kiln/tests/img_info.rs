//! `kiln img info --output json` against qemu-img's on images with every feature the block
//! layer reads: extended L2, zstd and 1-bit refcounts, internal snapshots, preallocation
//! (qemu-img's and Kiln's), Kiln's compressed output, a backing chain, legacy qcow, the
//! dirty and corrupt bits, and `--backing-chain`. Every key qemu-img prints (the file
//! node under the image, `children`, included) with equal values, and the same human
//! layout line for line.

mod common;

use common::{run, Scratch};
use std::process::Command;

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} is needed for these tests: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_bit_79(path: &str, bit: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[79] |= bit;
    std::fs::write(path, b).unwrap();
}

#[test]
fn info_json_equals_qemu_img_for_every_feature() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(p("src.raw"), &data).unwrap();
    let q = |args: &[&str]| tool("qemu-img", args);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        &p("extl2.qcow2"),
        "10M",
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd,refcount_bits=1,cluster_size=4k",
        &p("zstd.qcow2"),
        "10M",
    ]);
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -c 0 4k", &p("zstd.qcow2")],
    );
    q(&["create", "-q", "-f", "qcow2", &p("snap.qcow2"), "10M"]);
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write 0 1M", &p("snap.qcow2")],
    );
    q(&["snapshot", "-c", "first", &p("snap.qcow2")]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        &p("prealloc.qcow2"),
        "10M",
    ]);
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-o",
        "preallocation=full",
        &p("kprealloc.qcow2"),
        "10M",
    ])
    .expect_code(0);
    run(&[
        "img",
        "convert",
        "-c",
        "-O",
        "qcow2",
        &p("src.raw"),
        &p("compressed.qcow2"),
    ])
    .expect_code(0);
    q(&["convert", "-O", "qcow", &p("src.raw"), &p("legacy.qcow")]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "compressed.qcow2",
        "-F",
        "qcow2",
        &p("overlay.qcow2"),
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &p("dirty.qcow2"),
        "1M",
    ]);
    set_bit_79(&p("dirty.qcow2"), 1);
    q(&["create", "-q", "-f", "qcow2", &p("corrupt.qcow2"), "1M"]);
    set_bit_79(&p("corrupt.qcow2"), 2);
    for img in [
        "extl2.qcow2",
        "zstd.qcow2",
        "snap.qcow2",
        "prealloc.qcow2",
        "kprealloc.qcow2",
        "compressed.qcow2",
        "legacy.qcow",
        "overlay.qcow2",
        "dirty.qcow2",
        "corrupt.qcow2",
    ] {
        let r = run(&["img", "info", "--output", "json", &p(img)]);
        r.expect_code(0);
        let ours: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_str(&q(&["info", "--output", "json", &p(img)])).unwrap();
        assert_eq!(ours, theirs, "info --output json for {img}");
        // The human layout too, line for line (the file node's section included).
        let human = run(&["img", "info", &p(img)]);
        assert_eq!(human.stdout, q(&["info", &p(img)]), "info for {img}");
    }
}

/// `--backing-chain`: every image of a three-level chain (qcow2 over qcow2 over raw), in
/// order, equal to qemu-img's JSON array; the human blocks in order; a chain whose
/// backing file is missing, or that loops, fails with one line.
#[test]
fn info_backing_chain_equals_qemu_img() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    let q = |args: &[&str]| tool("qemu-img", args);
    q(&["create", "-q", "-f", "raw", &p("base.raw"), "2M"]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &p("mid.qcow2"),
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &p("top.qcow2"),
    ]);
    let r = run(&[
        "img",
        "info",
        "--backing-chain",
        "--output",
        "json",
        &p("top.qcow2"),
    ]);
    r.expect_code(0);
    let ours: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&q(&[
        "info",
        "--backing-chain",
        "--output",
        "json",
        &p("top.qcow2"),
    ]))
    .unwrap();
    assert_eq!(ours.as_array().unwrap().len(), 3);
    assert_eq!(ours, theirs, "info --backing-chain --output json");

    let r = run(&["img", "info", "--backing-chain", &p("top.qcow2")]);
    r.expect_code(0);
    let images: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("image: "))
        .collect();
    assert_eq!(images, [p("top.qcow2"), p("mid.qcow2"), p("base.raw")]);
    assert!(r.stdout.contains("\n\nimage: "), "{}", r.stdout);

    std::fs::remove_file(p("base.raw")).unwrap();
    run(&["img", "info", "--backing-chain", &p("top.qcow2")]).expect_error("base.raw");
    // A loop: mid's backing file is top.
    q(&[
        "rebase",
        "-u",
        "-b",
        "top.qcow2",
        "-F",
        "qcow2",
        &p("mid.qcow2"),
    ]);
    run(&["img", "info", "--backing-chain", &p("top.qcow2")])
        .expect_error("creates an infinite loop");
}
