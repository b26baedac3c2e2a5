//! `kiln img measure` against `qemu-img measure` on the same inputs: for sizes alone and
//! for source images (sparse raw, qcow2 with extended L2 and zeroed ranges, an overlay
//! over it, qcow2 with persistent bitmaps and partly written clusters), with qcow2
//! options (cluster sizes, refcount widths, compat, extended L2, preallocation, a
//! backing file) and raw output, the human lines and the JSON are equal; bad requests
//! fail as qemu-img's do. And an image Kiln converts fits in `required`.

mod common;

use common::{qemu_create, qemu_io, qemu_ok, run, Scratch};
use std::process::Command;

fn qemu(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed for these tests: {e}"))
}

#[test]
fn measure_equals_qemu_img_measure() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    qemu_create("raw", &[], &p("sparse.raw"), "3M");
    qemu_io(
        "raw",
        &p("sparse.raw"),
        &["write -P 1 100000 5", "write -P 2 1M 200k"],
    );
    qemu_create("qcow2", &["-o", "extended_l2=on"], &p("extl2.qcow2"), "8M");
    qemu_io(
        "qcow2",
        &p("extl2.qcow2"),
        &["write -P 3 40k 4k", "write -z 1M 1M", "write -P 4 5M 100k"],
    );
    qemu_create(
        "qcow2",
        &["-b", "extl2.qcow2", "-F", "qcow2"],
        &p("overlay.qcow2"),
        "",
    );
    qemu_io("qcow2", &p("overlay.qcow2"), &["write -P 5 7M 64k"]);
    // Persistent bitmaps, and clusters only partly written (the rest a hole in the file).
    let bm = p("bitmaps.qcow2");
    qemu_create("qcow2", &[], &bm, "1M");
    qemu_ok("qemu-img", &["bitmap", "--add", &bm, "b0"]);
    qemu_ok(
        "qemu-img",
        &["bitmap", "--add", "--granularity", "512", &bm, "b1"],
    );
    qemu_io("qcow2", &bm, &["write 0 64k", "write 100k 300k"]);
    let (raw, ext, ov) = (p("sparse.raw"), p("extl2.qcow2"), p("overlay.qcow2"));
    let cases: Vec<Vec<&str>> = vec![
        vec!["--size", "10G", "-O", "qcow2"],
        vec!["--size", "1000", "-O", "qcow2"],
        vec!["--size", "1000"],
        vec!["--size", "1G", "-O", "qcow2", "-o", "preallocation=full"],
        vec!["--size", "1G", "-O", "qcow2", "-o", "extended_l2=on"],
        vec![
            "--size",
            "100G",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k,refcount_bits=1",
        ],
        vec!["--size", "1G", "-O", "qcow2", "-o", "compat=0.10"],
        vec!["-O", "qcow2", &raw],
        vec!["-O", "qcow2", "-o", "cluster_size=4k", &raw],
        vec!["-O", "qcow2", "-o", "preallocation=falloc", &raw],
        vec!["-O", "raw", &ext],
        vec!["-O", "qcow2", &ext],
        vec!["-O", "qcow2", "-o", "cluster_size=512", &ext],
        vec!["-O", "qcow2", &ov],
        vec!["-O", "qcow2", "-o", "cluster_size=2M", &ov],
        vec!["-O", "qcow2", "-o", "compat=0.10", &ov],
        vec!["-O", "qcow2", "-o", "backing_file=x", &ov],
        vec!["-O", "qcow2", &bm],
        vec!["-O", "qcow2", "-o", "cluster_size=4k", &bm],
        vec!["-O", "qcow2", "-o", "compat=0.10", &bm],
        // Refused: too large for 512-byte clusters, both a size and a file, neither.
        vec!["--size", "100T", "-O", "qcow2", "-o", "cluster_size=512"],
        vec!["--size", "1G", &raw],
        vec![],
    ];
    for case in cases {
        let mut args = vec!["img", "measure"];
        args.extend(&case);
        let ours = run(&args);
        let theirs = qemu("qemu-img", &args[1..]);
        assert_eq!(
            ours.status.code(),
            theirs.status.code(),
            "{case:?}: {ours:#?}"
        );
        if theirs.status.success() {
            assert_eq!(
                ours.stdout,
                String::from_utf8_lossy(&theirs.stdout),
                "{case:?}"
            );
            args.extend(["--output", "json"]);
            let ours: serde_json::Value = serde_json::from_str(&run(&args).stdout).unwrap();
            let theirs: serde_json::Value =
                serde_json::from_slice(&qemu("qemu-img", &args[1..]).stdout).unwrap();
            assert_eq!(ours, theirs, "{case:?} (json)");
        } else {
            let want = String::from_utf8_lossy(&theirs.stderr).replace("qemu-img: ", "");
            ours.expect_error(want.trim());
        }
    }

    // What Kiln writes for the overlay's data fits in what measure says it needs.
    let m = run(&["img", "measure", "-O", "qcow2", "--output", "json", &ov]);
    let required = serde_json::from_str::<serde_json::Value>(&m.stdout).unwrap()["required"]
        .as_u64()
        .unwrap();
    run(&["img", "convert", "-O", "qcow2", &ov, &p("copy.qcow2")]).expect_code(0);
    let written = std::fs::metadata(p("copy.qcow2")).unwrap().len();
    assert!(written <= required, "{written} > {required}");
}
