//! `kiln img check` (exit 0 clean, 2 corruptions, 3 leaks, as qemu-img) and bad input
//! for every `kiln img` subcommand: one `kiln:` line, status 1, never a panic.

mod common;

use common::{poke_refcount, qemu_img_status as qemu_img, run, Scratch};

#[test]
fn img_check_exit_statuses_agree_with_qemu_img() {
    let s = Scratch::new();
    let img = s.dir.path().join("c.qcow2").to_str().unwrap().to_string();
    run(&["img", "create", "-f", "qcow2", &img, "4M"]).expect_code(0);
    run(&[
        "img",
        "write",
        &img,
        "100k",
        "--pattern",
        "7",
        "--length",
        "200k",
    ])
    .expect_code(0);
    let r = run(&["img", "check", &img]);
    r.expect_code(0);
    assert!(
        r.stdout.contains("No errors were found on the image."),
        "{}",
        r.stdout
    );
    assert_eq!(qemu_img(&["check", &img]), 0);
    // A leak: a refcount for a cluster nothing uses (guest cluster 2 was at host
    // cluster 6; zeroing freed it).
    run(&["img", "write", &img, "128k", "--zero", "--length", "64k"]).expect_code(0);
    assert_eq!(qemu_img(&["check", &img]), 0);
    poke_refcount(&img, 6, 1);
    let r = run(&["img", "check", &img]);
    r.expect_code(3);
    assert!(
        r.stdout.contains("1 leaked clusters were found"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("Leaked cluster 6 refcount=1 reference=0"),
        "{}",
        r.stderr
    );
    assert_eq!(qemu_img(&["check", &img]), 3);
    // A corruption: the L1 table's refcount (cluster 3) dropped to zero.
    poke_refcount(&img, 6, 0);
    poke_refcount(&img, 3, 0);
    let r = run(&["img", "check", "--output", "json", &img]);
    r.expect_code(2);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["corruptions"], 1);
    assert_eq!(qemu_img(&["check", &img]), 2);
}

#[test]
fn img_bad_input_is_one_line_and_status_1() {
    let s = Scratch::new();
    let d = s.dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let missing = p("missing.qcow2");
    let mut garbage = b"QFI\xfb\0\0\0\x03".to_vec();
    garbage.resize(200, 0xff);
    let garbage = s.file("garbage.qcow2", &garbage);
    let raw = s.file("small.raw", &[0u8; 4096]);
    let good = p("good.qcow2");
    let x = p("x");
    let n = p("n.qcow2");
    run(&["img", "create", "-f", "qcow2", &good, "1M"]).expect_code(0);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["img", "info", &missing], "No such file"),
        (vec!["img", "info", &garbage], "cluster size"),
        (vec!["img", "check", &missing], "No such file"),
        (vec!["img", "check", &raw], "does not support checks"),
        (
            vec!["img", "convert", "-O", "qcow2", &missing, &x],
            "No such file",
        ),
        (
            vec!["img", "convert", "-O", "vmdk", &raw, &x],
            "unknown image format",
        ),
        (
            vec!["img", "create", "-f", "qcow2", &n],
            "size must be given",
        ),
        (
            vec!["img", "create", "-f", "qcow2", &n, "1000"],
            "multiple of 512",
        ),
        (
            vec!["img", "create", "-f", "qcow2", &n, "12Q"],
            "invalid size",
        ),
        (
            vec![
                "img",
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=3k",
                &n,
                "1M",
            ],
            "cluster size",
        ),
        (
            vec!["img", "create", "-f", "qcow2", "-o", "bogus=1", &n, "1M"],
            "invalid parameter",
        ),
        (
            vec!["img", "create", "-f", "qcow2", "-b", "nope.qcow2", &n],
            "could not open backing file",
        ),
        (vec!["img", "read", &good, "1M", "1"], "beyond the end"),
        (
            vec![
                "img",
                "write",
                &good,
                "1048000",
                "--pattern",
                "1",
                "--length",
                "1000",
            ],
            "beyond the end",
        ),
        (
            vec![
                "img",
                "write",
                &good,
                "0",
                "--pattern",
                "300",
                "--length",
                "1",
            ],
            "byte value",
        ),
        (vec!["img", "write", &good, "0"], "say what to write"),
        (
            vec!["img", "write", &raw, "0", "--from", &missing],
            "No such file",
        ),
    ];
    for (args, needle) in cases {
        run(&args).expect_error(needle);
    }
    assert_eq!(qemu_img(&["check", &good]), 0);
}
