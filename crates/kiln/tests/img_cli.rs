//! `kiln img` against the real qemu-img: create (byte-identical), info (qemu-img's JSON),
//! convert both ways (sparse output), and dd-style read/write.

mod common;

use common::{kiln_bin, run, Scratch};
use std::process::Command;

/// Run a QEMU tool and insist it succeeds (fails loudly when it is not installed).
fn qemu(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} is needed for these tests (apt-get install qemu-utils): {e}")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Zero runs so images have holes.
            if (i >> 16) % 3 == 1 {
                0
            } else {
                x as u8
            }
        })
        .collect()
}

#[test]
fn img_create_is_byte_identical_to_qemu_img() {
    let s = Scratch::new();
    let d = s.dir.path();
    for (fmt, opts, size) in [
        ("qcow2", "", "10M"),
        ("qcow2", "compat=0.10", "1G"),
        (
            "qcow2",
            "cluster_size=512,refcount_bits=1,lazy_refcounts=on",
            "10M",
        ),
        ("qcow2", "cluster_size=2M,refcount_bits=64", "3G"),
        ("raw", "", "5M"),
    ] {
        let k = d.join("k.img");
        let q = d.join("q.img");
        let mut args = vec!["img", "create", "-f", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([k.to_str().unwrap(), size]);
        run(&args).expect_code(0);
        args[0] = "create";
        args.remove(1);
        *args.iter_mut().rev().nth(1).unwrap() = q.to_str().unwrap();
        qemu("qemu-img", &args);
        assert!(
            std::fs::read(&k).unwrap() == std::fs::read(&q).unwrap(),
            "{fmt} -o '{opts}' differs"
        );
    }
    // With a backing file; the size comes from it.
    let base = s.file("base.raw", &[0u8; 1 << 20]);
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        d.join("k.qcow2").to_str().unwrap(),
    ])
    .expect_code(0);
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            d.join("q.qcow2").to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(d.join("k.qcow2")).unwrap() == std::fs::read(d.join("q.qcow2")).unwrap());
    let _ = base;
}

#[test]
fn img_info_json_has_qemu_img_keys_and_values() {
    let s = Scratch::new();
    let d = s.dir.path();
    s.file("base.raw", &[0u8; 1 << 20]);
    let top = d.join("top.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k,lazy_refcounts=on",
            "-b",
            "base.raw",
            "-F",
            "raw",
            top.to_str().unwrap(),
        ],
    );
    let v2 = d.join("v2.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            v2.to_str().unwrap(),
            "3M",
        ],
    );
    let raw = s.file("disk.raw", &[1u8; 8192]);
    for img in [top.to_str().unwrap(), v2.to_str().unwrap(), &raw] {
        let r = run(&["img", "info", "--output", "json", img]);
        r.expect_code(0);
        let ours: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_str(&qemu("qemu-img", &["info", "--output", "json", img])).unwrap();
        assert_eq!(ours, theirs, "info --output json for {img}");
    }
    let r = run(&["img", "info", top.to_str().unwrap()]);
    r.expect_code(0);
    for line in [
        "file format: qcow2",
        "virtual size: 1 MiB (1048576 bytes)",
        "cluster_size: 4096",
        "backing file format: raw",
        "lazy refcounts: true",
    ] {
        assert!(r.stdout.contains(line), "want '{line}' in {}", r.stdout);
    }
}

#[test]
fn img_convert_round_trips_with_qemu_img_and_keeps_zeros_sparse() {
    let s = Scratch::new();
    let d = s.dir.path();
    let data = pseudo_random(3 << 20, 42);
    let src = s.file("src.raw", &data);
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    // raw -> qcow2 by Kiln, checked and compared by qemu-img.
    for cs in ["512", "64k", "2M"] {
        let r = run(&[
            "img",
            "convert",
            "-p",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            &src,
            &p("k.qcow2"),
        ]);
        r.expect_code(0);
        assert!(r.stderr.contains("100.00/100%"), "{}", r.stderr);
        qemu("qemu-img", &["check", &p("k.qcow2")]);
        qemu(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qcow2", &src, &p("k.qcow2")],
        );
    }
    // qemu-img's qcow2 (plain and compressed) -> raw by Kiln.
    qemu(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &src, &p("q.qcow2")],
    );
    qemu(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &src,
            &p("qc.qcow2"),
        ],
    );
    for img in ["q.qcow2", "qc.qcow2"] {
        run(&["img", "convert", "-O", "raw", &p(img), &p("out.raw")]).expect_code(0);
        assert!(std::fs::read(p("out.raw")).unwrap() == data, "{img}");
    }
    // An all-zero 64 MiB disk converts to a sparse file.
    run(&["img", "create", "-f", "qcow2", &p("empty.qcow2"), "64M"]).expect_code(0);
    run(&[
        "img",
        "convert",
        "-O",
        "raw",
        &p("empty.qcow2"),
        &p("empty.raw"),
    ])
    .expect_code(0);
    let m = std::fs::metadata(p("empty.raw")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&m) * 512 < 1 << 20,
        "output not sparse"
    );
}

#[test]
fn img_read_and_write_at_offsets_match_qemu_io() {
    let s = Scratch::new();
    let d = s.dir.path();
    let base_data = pseudo_random(2 << 20, 7);
    let base = s.file("base.raw", &base_data);
    let top = d.join("top.qcow2").to_str().unwrap().to_string();
    let want = d.join("want.raw").to_str().unwrap().to_string();
    std::fs::write(&want, &base_data).unwrap();
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &top,
    ])
    .expect_code(0);
    let patch = s.file("patch.bin", &pseudo_random(10_000, 9)[..]);
    run(&[
        "img",
        "write",
        &top,
        "0x1ff0",
        "--pattern",
        "0xab",
        "--length",
        "9000",
    ])
    .expect_code(0);
    run(&["img", "write", &top, "1M", "--from", &patch]).expect_code(0);
    run(&["img", "write", &top, "300k", "--zero", "--length", "100k"]).expect_code(0);
    qemu(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0x1ff0 9000",
            "-c",
            "write -z 300k 100k",
            &want,
        ],
    );
    let mut w = std::fs::read(&want).unwrap();
    w[1 << 20..(1 << 20) + 10_000].copy_from_slice(&std::fs::read(&patch).unwrap());
    std::fs::write(&want, &w).unwrap();
    qemu("qemu-img", &["check", &top]);
    qemu(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", &want, &top],
    );
    assert!(
        std::fs::read(&base).unwrap() == base_data,
        "backing file changed"
    );
    let out = Command::new(kiln_bin())
        .args(["img", "read", &top, "0x1fe0", "64k"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout == w[0x1fe0..0x1fe0 + 65536], "img read differs");
}

/// qemu-img's other spellings work as pasted: -q silences what succeeds (errors still
/// print), cache modes and parallelism options are accepted and checked, `create -u`
/// records a backing file without opening it, and `convert -S` sets how long a run of
/// zeros must be to stay sparse (`-S 0`: everything allocated, as qemu-img's file).
#[test]
fn qemu_img_option_spellings_are_accepted() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    let src = p("src.raw");
    qemu("qemu-img", &["create", "-q", "-f", "raw", &src, "4M"]);
    qemu(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 4k",
            "-c",
            "write -P 2 1M 4k",
            &src,
        ],
    );
    let img = p("q.qcow2");
    for args in [
        vec!["create", "-q", "-f", "qcow2", &img, "4M"],
        vec!["check", "-q", &img],
        vec!["resize", "-q", &img, "8M"],
        vec!["compare", "-q", "-T", "none", &src, &src],
        vec![
            "convert",
            "-q",
            "-p",
            "-t",
            "none",
            "-T",
            "writeback",
            "-W",
            "-m",
            "8",
            "-C",
            "-O",
            "qcow2",
            &src,
            &p("c.qcow2"),
        ],
    ] {
        let mut a = vec!["img"];
        a.extend(&args);
        let r = run(&a);
        r.expect_code(0);
        assert_eq!(r.stdout, "", "{args:?} with -q printed");
        assert_eq!(r.stderr, "", "{args:?} with -q printed");
    }
    assert!(qemu("qemu-img", &["compare", &src, &p("c.qcow2")]).contains("identical"));
    // Failures still say why.
    run(&["img", "check", "-q", &p("missing.qcow2")]).expect_error("missing.qcow2");
    run(&[
        "img",
        "convert",
        "-t",
        "bogus",
        "-O",
        "raw",
        &src,
        &p("x.raw"),
    ])
    .expect_error("Invalid cache option: bogus");
    run(&["img", "convert", "-m", "20", "-O", "raw", &src, &p("x.raw")])
        .expect_error("parallel requests");
    run(&[
        "img",
        "convert",
        "-S",
        "1000",
        "-O",
        "raw",
        &src,
        &p("x.raw"),
    ])
    .expect_error("sparse output");

    // -S 0: the output is fully allocated, the same file size as qemu-img's.
    run(&[
        "img",
        "convert",
        "-S",
        "0",
        "-O",
        "qcow2",
        &src,
        &p("full.qcow2"),
    ])
    .expect_code(0);
    qemu(
        "qemu-img",
        &["convert", "-S", "0", "-O", "qcow2", &src, &p("qfull.qcow2")],
    );
    let len = |f: &str| std::fs::metadata(p(f)).unwrap().len();
    assert_eq!(len("full.qcow2"), len("qfull.qcow2"));
    let map = qemu("qemu-img", &["map", "--output", "json", &p("full.qcow2")]);
    assert!(!map.contains("\"data\": false"), "{map}");

    // create -u: the backing file is not opened, so it need not exist yet.
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "later.qcow2",
        "-F",
        "qcow2",
        &p("u.qcow2"),
        "1M",
    ])
    .expect_code(0);
    let info = qemu(
        "qemu-img",
        &["info", "-U", "--output", "json", &p("u.qcow2")],
    );
    assert!(
        info.contains("\"backing-filename\": \"later.qcow2\""),
        "{info}"
    );
    run(&[
        "img",
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "later.qcow2",
        "-F",
        "qcow2",
        &p("v.qcow2"),
    ])
    .expect_error("size must be given with -u");
}

/// A reader that goes away (`kiln img read ... | head -c 10`) ends the command by
/// SIGPIPE, as it ends qemu-img, with nothing on stderr: no panic.
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let s = Scratch::new();
    let img = s.file("big.raw", &vec![7u8; 8 << 20]);
    let mut child = Command::new(kiln_bin())
        .args(["img", "read", &img, "0", "8M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut ten = [0u8; 10];
    out.read_exact(&mut ten).unwrap();
    assert_eq!(ten, [7u8; 10]);
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}: {err}");
    assert_eq!(err, "");
}

/// `create` prints qemu-img's "Formatting" line, options in its order (compat and
/// preallocation only when given).
#[test]
fn create_prints_qemu_imgs_formatting_line() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &p("base.qcow2"), "1M"],
    );
    let cases: [&[&str]; 6] = [
        &["-f", "raw"],
        &["-f", "raw", "-o", "preallocation=falloc"],
        &["-f", "qcow2"],
        &["-f", "qcow2", "-o", "cluster_size=4k,compat=0.10"],
        &["-f", "qcow2", "-o", "extended_l2=on,compression_type=zstd,lazy_refcounts=on,refcount_bits=8,preallocation=metadata"],
        &["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"],
    ];
    for (i, opts) in cases.iter().enumerate() {
        let (k, q) = (p(&format!("k{i}")), p(&format!("q{i}")));
        let mut ka = vec!["img", "create"];
        ka.extend(opts.iter());
        ka.extend([k.as_str(), "1M"]);
        let ours = run(&ka);
        ours.expect_code(0);
        let mut qa = vec!["create"];
        qa.extend(opts.iter());
        qa.extend([q.as_str(), "1M"]);
        let theirs = qemu("qemu-img", &qa).replace(&q, &k);
        assert_eq!(ours.stdout, theirs, "{opts:?}");
    }
}
