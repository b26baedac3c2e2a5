//! `kiln img convert` into overlays and existing images, and from internal snapshots:
//! - `-B BACKING -F FMT`: the output is an overlay of BACKING holding only what the
//!   source's top image holds. Each case runs qemu-img's own `convert -B` on the same
//!   source: both outputs read the same as the source (`qemu-img compare`), pass
//!   `qemu-img check`, and have the same allocation map (what is in the overlay, what is
//!   left to the backing file, what reads as zeros).
//! - `-n`, and a block device (a loop device here) as the output: the source is written
//!   over what the output held, zeros included, and the rest of it is left alone.

mod common;

use common::{qemu_create, qemu_io, qemu_ok, run, Scratch};
use std::process::Command;

/// `qemu-img map`, without host offsets: (start, length, depth, zero, data).
fn layout(img: &str) -> Vec<(u64, u64, u64, bool, bool)> {
    let v: serde_json::Value =
        serde_json::from_str(&qemu_ok("qemu-img", &["map", "--output", "json", img])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["depth"].as_u64().unwrap(),
                e["zero"].as_bool().unwrap(),
                e["data"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn convert_onto_a_backing_file_matches_qemu_img() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    qemu_create("qcow2", &[], &p("base.qcow2"), "4M");
    qemu_io("qcow2", &p("base.qcow2"), &["write -P 0xaa 0 4M"]);
    qemu_ok(
        "qemu-img",
        &["convert", "-O", "raw", &p("base.qcow2"), &p("base.raw")],
    );
    // An overlay with data, a zeroed range over the base's data, and a partial cluster.
    qemu_create(
        "qcow2",
        &["-b", "base.qcow2", "-F", "qcow2"],
        &p("top.qcow2"),
        "",
    );
    qemu_io(
        "qcow2",
        &p("top.qcow2"),
        &[
            "write -P 0xbb 1M 64k",
            "write -z 2M 128k",
            "write -P 0xcc 3M 4k",
        ],
    );
    // A qcow2 without a backing file (reads zeros where it holds nothing), larger than the
    // new backing file, and a sparse raw file with data in its first and 25th blocks.
    qemu_create("qcow2", &[], &p("solo.qcow2"), "6M");
    qemu_io("qcow2", &p("solo.qcow2"), &["write -P 0x11 64k 64k"]);
    qemu_create("raw", &[], &p("solo.raw"), "3M");
    qemu_io("raw", &p("solo.raw"), &["write -P 0x22 100000 5"]);

    for src in ["top.qcow2", "solo.qcow2", "solo.raw"] {
        let (ours, theirs) = (p(&format!("k-{src}.qcow2")), p(&format!("q-{src}.qcow2")));
        let convert = ["convert", "-O", "qcow2", "-B", "base.raw", "-F", "raw"];
        let src = p(src);
        run(&[&["img"][..], &convert, &[&src, &ours]].concat()).expect_code(0);
        qemu_ok("qemu-img", &[&convert[..], &[&src, &theirs]].concat());
        let info = qemu_ok("qemu-img", &["info", &ours]);
        assert!(info.contains("backing file: base.raw"), "{src}: {info}");
        assert!(info.contains("backing file format: raw"), "{src}: {info}");
        qemu_ok("qemu-img", &["check", &ours]);
        assert!(qemu_ok("qemu-img", &["compare", &src, &ours]).contains("identical"));
        assert_eq!(layout(&ours), layout(&theirs), "{src}: allocation map");
    }
    // The overlay holds only the top image's clusters.
    let top = layout(&p("k-top.qcow2.qcow2"));
    assert_eq!(top.iter().filter(|e| e.2 == 0).count(), 3, "{top:?}");

    // Bad requests: one line each, nothing created.
    let out = p("x.qcow2");
    let src = p("top.qcow2");
    for (args, msg) in [
        (
            vec!["-O", "raw", "-B", "base.raw", "-F", "raw"],
            "Backing file not supported for file format 'raw'",
        ),
        (
            vec!["-O", "qcow2", "-B", "base.raw"],
            "requires explicit backing format",
        ),
        (
            vec!["-O", "qcow2", "-B", "missing.raw", "-F", "raw"],
            "Could not open backing file 'missing.raw'",
        ),
        (
            vec!["-c", "-O", "qcow2", "-B", "base.raw", "-F", "raw"],
            "not supported",
        ),
    ] {
        let mut a = vec!["img", "convert"];
        a.extend(args);
        a.extend([src.as_str(), out.as_str()]);
        run(&a).expect_error(msg);
        assert!(!std::path::Path::new(&out).exists());
    }
}

/// A loop device over `file`, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &str) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show", file])
            .output()
            .expect("losetup (util-linux) is needed for the block-device test");
        assert!(
            out.status.success(),
            "this test needs a loop device (root and /dev/loop-control): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn convert_n_and_block_devices_overwrite_in_place() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    // The source: 4 MiB, data in its first 64 KiB and at 3 MiB, zeros elsewhere.
    qemu_create("qcow2", &[], &p("src.qcow2"), "4M");
    qemu_io(
        "qcow2",
        &p("src.qcow2"),
        &["write -P 0x33 0 64k", "write -P 0x34 3M 4k"],
    );
    qemu_ok(
        "qemu-img",
        &["convert", "-O", "raw", &p("src.qcow2"), &p("want.raw")],
    );
    let want = std::fs::read(p("want.raw")).unwrap();
    let garbage = vec![0xffu8; 8 << 20];

    // -n into an existing raw file and into an existing qcow2 full of data.
    std::fs::write(p("old.raw"), &garbage).unwrap();
    run(&[
        "img",
        "convert",
        "-n",
        "-O",
        "raw",
        &p("src.qcow2"),
        &p("old.raw"),
    ])
    .expect_code(0);
    let got = std::fs::read(p("old.raw")).unwrap();
    assert_eq!(got.len(), 8 << 20, "-n keeps the output's size");
    assert!(
        got[..4 << 20] == want[..],
        "the source's bytes, zeros included"
    );
    assert!(
        got[4 << 20..].iter().all(|&b| b == 0xff),
        "the rest is left alone"
    );
    qemu_create("qcow2", &[], &p("old.qcow2"), "4M");
    qemu_io("qcow2", &p("old.qcow2"), &["write -P 0x44 0 4M"]);
    run(&[
        "img",
        "convert",
        "-n",
        "-O",
        "qcow2",
        &p("src.qcow2"),
        &p("old.qcow2"),
    ])
    .expect_code(0);
    assert!(
        qemu_ok("qemu-img", &["compare", &p("src.qcow2"), &p("old.qcow2")]).contains("identical")
    );
    qemu_ok("qemu-img", &["check", &p("old.qcow2")]);

    // A block device: written in place without -n; Kiln sees its size.
    std::fs::write(p("disk"), &garbage).unwrap();
    let dev = Loop::new(&p("disk"));
    let info = run(&["img", "info", "--output", "json", &dev.0]);
    info.expect_code(0);
    assert!(
        info.stdout.contains("\"virtual-size\": 8388608"),
        "{info:#?}"
    );
    run(&["img", "convert", "-O", "raw", &p("src.qcow2"), &dev.0]).expect_code(0);
    let out = Command::new("qemu-img")
        .args([
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            &p("src.qcow2"),
            &dev.0,
        ])
        .output()
        .unwrap();
    // Equal over the source's 4 MiB; the device's other 4 MiB still hold 0xff.
    let verdict = String::from_utf8_lossy(&out.stdout);
    assert!(
        verdict.contains("Content mismatch at offset 4194304!"),
        "{verdict}"
    );
    drop(dev);
    let got = std::fs::read(p("disk")).unwrap();
    assert!(got[..4 << 20] == want[..]);

    // Too small, missing, or with options that need a new image: one line, no change.
    qemu_create("raw", &[], &p("small.raw"), "1M");
    run(&[
        "img",
        "convert",
        "-n",
        "-O",
        "raw",
        &p("src.qcow2"),
        &p("small.raw"),
    ])
    .expect_error("output file is smaller than input file");
    run(&[
        "img",
        "convert",
        "-n",
        "-O",
        "raw",
        &p("src.qcow2"),
        &p("none.raw"),
    ])
    .expect_error("none.raw");
    run(&[
        "img",
        "convert",
        "-n",
        "-c",
        "-O",
        "qcow2",
        &p("src.qcow2"),
        &p("old.qcow2"),
    ])
    .expect_error("cannot be used with -c, -B or -o");
    assert_eq!(std::fs::metadata(p("small.raw")).unwrap().len(), 1 << 20);
}

/// `convert -s NAME` and `-l snapshot.id=ID|snapshot.name=NAME`: the disk as it was when
/// the snapshot was taken (the image has grown and changed since), byte for byte what
/// qemu-img's `convert -l` gives; a missing snapshot or a raw source is one line.
#[test]
fn convert_from_an_internal_snapshot_equals_qemu_img() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    let img = p("snap.qcow2");
    qemu_create("qcow2", &[], &img, "2M");
    qemu_io("qcow2", &img, &["write -P 1 0 64k"]);
    qemu_ok("qemu-img", &["snapshot", "-c", "first", &img]);
    qemu_ok("qemu-img", &["resize", "-q", &img, "4M"]);
    qemu_io("qcow2", &img, &["write -P 2 0 64k", "write -P 3 3M 64k"]);
    qemu_ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=first",
            "-O",
            "raw",
            &img,
            &p("want.raw"),
        ],
    );
    let want = std::fs::read(p("want.raw")).unwrap();
    assert!(
        want[..65536].iter().all(|&b| b == 1),
        "qemu-img's view of the snapshot"
    );
    for sel in [
        vec!["-s", "first"],
        vec!["-l", "snapshot.id=1"],
        vec!["-l", "snapshot.name=first"],
        vec!["-l", "first"],
    ] {
        let out = p("got.raw");
        let _ = std::fs::remove_file(&out);
        let mut args = vec!["img", "convert"];
        args.extend(&sel);
        args.extend(["-O", "raw", img.as_str(), out.as_str()]);
        run(&args).expect_code(0);
        assert!(std::fs::read(&out).unwrap() == want, "{sel:?}");
    }
    // Into qcow2 too, and the image itself is untouched (its current data).
    run(&[
        "img",
        "convert",
        "-s",
        "first",
        "-O",
        "qcow2",
        &img,
        &p("got.qcow2"),
    ])
    .expect_code(0);
    assert!(
        qemu_ok("qemu-img", &["compare", &p("got.qcow2"), &p("want.raw")]).contains("identical")
    );
    qemu_io("qcow2", &img, &["read -P 2 0 64k"]);

    run(&[
        "img",
        "convert",
        "-s",
        "nope",
        "-O",
        "raw",
        &img,
        &p("x.raw"),
    ])
    .expect_error("Can't find snapshot 'nope'");
    run(&[
        "img",
        "convert",
        "-s",
        "first",
        "-O",
        "raw",
        &p("want.raw"),
        &p("x.raw"),
    ])
    .expect_error("only qcow2 images have internal snapshots");
    run(&[
        "img",
        "convert",
        "-l",
        "snapshot.foo=1",
        "-O",
        "raw",
        &img,
        &p("x.raw"),
    ])
    .expect_error("Invalid snapshot parameter");
    assert!(!std::path::Path::new(&p("x.raw")).exists());
}
