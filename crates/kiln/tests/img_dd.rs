//! `kiln img dd` against `qemu-img dd` with the same operands: the same output files (raw
//! byte for byte; qcow2 by `qemu-img compare`, as Kiln leaves zeros unallocated, and clean
//! by `qemu-img check`), qemu-img's quirk included (count counts the skipped blocks), and
//! bad operands refused with one line and no output file.

mod common;

use common::{qemu_create, qemu_io, qemu_ok, run, Scratch};

#[test]
fn dd_makes_the_files_qemu_img_dd_makes() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    qemu_create("raw", &[], &p("in.raw"), "3M");
    qemu_io(
        "raw",
        &p("in.raw"),
        &["write -P 1 100000 5", "write -P 2 1M 200k"],
    );
    qemu_create("qcow2", &[], &p("in.qcow2"), "8M");
    qemu_io(
        "qcow2",
        &p("in.qcow2"),
        &["write -P 3 64k 192k", "write -P 4 7M 4k"],
    );
    let cases: [(&[&str], &str, &str); 6] = [
        (
            &["-f", "qcow2", "bs=64k", "count=3", "skip=1"],
            "in.qcow2",
            "raw",
        ),
        (&["bs=64k", "count=500", "skip=2"], "in.qcow2", "raw"),
        (&["-O", "qcow2", "bs=1M"], "in.raw", "qcow2"),
        (&["bs=3", "count=1000", "skip=7"], "in.raw", "raw"),
        (&["bs=1k", "count=0"], "in.raw", "raw"),
        (&[], "in.qcow2", "raw"),
    ];
    for (i, (ops, input, fmt)) in cases.iter().enumerate() {
        let (ours, theirs) = (p(&format!("k{i}.{fmt}")), p(&format!("q{i}.{fmt}")));
        let (if_, of_k, of_q) = (
            format!("if={}", p(input)),
            format!("of={ours}"),
            format!("of={theirs}"),
        );
        let mut args = vec!["img", "dd"];
        args.extend(ops.iter());
        args.extend([if_.as_str(), of_k.as_str()]);
        run(&args).expect_code(0);
        let mut qargs = vec!["dd"];
        qargs.extend(ops.iter());
        qargs.extend([if_.as_str(), of_q.as_str()]);
        qemu_ok("qemu-img", &qargs);
        if *fmt == "raw" {
            assert!(
                std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
                "case {i} {ops:?}: the outputs differ"
            );
        } else {
            qemu_ok("qemu-img", &["compare", &ours, &theirs]);
            qemu_ok("qemu-img", &["check", &ours]);
        }
    }
    let out = p("bad.raw");
    let of = format!("of={out}");
    let if_ = format!("if={}", p("in.raw"));
    for (ops, msg) in [
        (
            vec![if_.as_str()],
            "Must specify both input and output files",
        ),
        (
            vec![if_.as_str(), of.as_str(), "conv=notrunc"],
            "unrecognized operand conv",
        ),
        (
            vec![if_.as_str(), of.as_str(), "bs=0"],
            "invalid buffer size",
        ),
        (
            vec![if_.as_str(), of.as_str(), "skip=100000"],
            "cannot skip to specified offset",
        ),
    ] {
        let mut args = vec!["img", "dd"];
        args.extend(ops);
        run(&args).expect_error(msg);
        assert!(!std::path::Path::new(&out).exists(), "{msg}");
    }
}
