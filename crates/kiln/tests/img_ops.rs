//! `kiln img resize|map|compare|commit|rebase` against the real qemu-img on the same
//! inputs: the same JSON maps, the same compare verdicts and exit statuses, and resize,
//! commit and rebase results whose contents equal what qemu-img's own commands produce.

mod common;

use common::{kiln, wait, Run};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Run kiln in `dir`.
fn k(dir: &Path, args: &[&str]) -> Run {
    let mut c = kiln(args);
    c.current_dir(dir);
    wait(c.spawn().expect("spawn kiln"), Duration::from_secs(120))
}

/// Run a QEMU tool in `dir`: (status, stdout, stderr). Fails loudly when it is missing.
fn q(dir: &Path, tool: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is needed for these tests (apt-get install qemu-utils): {e}")
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a QEMU tool in `dir` and insist it succeeds; returns stdout.
fn qok(dir: &Path, tool: &str, args: &[&str]) -> String {
    let (code, out, err) = q(dir, tool, args);
    assert_eq!(code, 0, "{tool} {args:?}: {out}{err}");
    out
}

fn check_clean(dir: &Path, img: &str) {
    let (code, out, err) = q(dir, "qemu-img", &["check", img]);
    assert_eq!(code, 0, "qemu-img check {img}: {out}{err}");
}

fn same(dir: &Path, a: &str, b: &str) {
    let (code, out, err) = q(dir, "qemu-img", &["compare", a, b]);
    assert_eq!(code, 0, "qemu-img compare {a} {b}: {out}{err}");
}

fn virtual_size(dir: &Path, img: &str) -> u64 {
    let out = qok(dir, "qemu-img", &["info", "--output=json", img]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// base.qcow2 (512 B clusters: data, zero clusters with and without host clusters) <-
/// mid.qcow2 <- top.qcow2 (64 KiB clusters), c.qcow2 (compressed copy of base), r.raw
/// (sparse raw) and e.raw (empty raw).
fn fixtures(d: &Path) {
    qok(
        d,
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "base.qcow2",
            "1M",
        ],
    );
    qok(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 1 0 4k",
            "-c",
            "write -z 8k 4k",
            "-c",
            "write -P 3 100k 1k",
            "-c",
            "write -P 4 200k 8k",
            "-c",
            "write -z 201k 2k",
            "-c",
            "write -P 6 900k 124k",
            "base.qcow2",
        ],
    );
    qok(
        d,
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    qok(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 5 2k 1k",
            "-c",
            "write -z 100k 512",
            "-c",
            "write -P 8 300k 64k",
            "mid.qcow2",
        ],
    );
    qok(
        d,
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qok(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 7 3k 512",
            "-c",
            "write -z 256k 64k",
            "top.qcow2",
        ],
    );
    qok(
        d,
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", "base.qcow2", "c.qcow2"],
    );
    let mut raw = vec![0u8; 1 << 20];
    raw[200_000..200_003].copy_from_slice(b"abc");
    raw[700_000..720_000].fill(9);
    std::fs::write(d.join("r.raw"), &raw).unwrap();
    qok(
        d,
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", "r.raw", "r2.raw"],
    );
    std::fs::rename(d.join("r2.raw"), d.join("r.raw")).unwrap();
    std::fs::write(d.join("e.raw"), b"").unwrap();
    qok(
        d,
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "x.qcow2",
            "4M",
        ],
    );
    qok(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 2 4k 8k",
            "-c",
            "write -z 64k 2k",
            "-c",
            "write -P 3 1M 70k",
            "x.qcow2",
        ],
    );
    qok(
        d,
        "qemu-img",
        &["create", "-f", "qcow2", "huge.qcow2", "16T"],
    );
    qok(d, "qemu-io", &["-c", "write -P 1 8T 64k", "huge.qcow2"]);
}

#[test]
fn map_json_and_human_equal_qemu_img_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixtures(d);
    // Clusters QEMU wrote only in part leave holes in the file. Where QEMU guesses the
    // image was preallocated (here: the bitmaps' clusters tip its count), those holes
    // read as zeros ("zero": true, "data": true); elsewhere it does not look.
    for (img, bitmaps) in [("holes.qcow2", false), ("holes-bm.qcow2", true)] {
        qok(d, "qemu-img", &["create", "-f", "qcow2", img, "1M"]);
        if bitmaps {
            qok(d, "qemu-img", &["bitmap", "--add", img, "b0"]);
            qok(
                d,
                "qemu-img",
                &["bitmap", "--add", "--granularity", "512", img, "b1"],
            );
            qok(d, "qemu-io", &["-f", "qcow2", "-c", "write 0 64k", img]);
        }
        qok(d, "qemu-io", &["-f", "qcow2", "-c", "write 100k 300k", img]);
    }
    let split = qok(d, "qemu-img", &["map", "--output=json", "holes-bm.qcow2"]);
    assert!(split.contains("\"zero\": true, \"data\": true"), "{split}");
    for (img, fmt) in [
        ("holes.qcow2", "qcow2"),
        ("holes-bm.qcow2", "qcow2"),
        ("r.raw", "raw"),
        ("e.raw", "raw"),
        ("base.qcow2", "qcow2"),
        ("mid.qcow2", "qcow2"),
        ("top.qcow2", "qcow2"),
        ("c.qcow2", "qcow2"),
        ("x.qcow2", "qcow2"),
        ("huge.qcow2", "qcow2"),
    ] {
        let want = qok(d, "qemu-img", &["map", "-f", fmt, "--output=json", img]);
        let got = k(d, &["img", "map", "-f", fmt, "--output", "json", img]);
        got.expect_code(0);
        let w: serde_json::Value = serde_json::from_str(&want).unwrap();
        let g: serde_json::Value = serde_json::from_str(&got.stdout)
            .unwrap_or_else(|e| panic!("{img}: kiln's map is not JSON ({e}): {}", got.stdout));
        assert_eq!(
            g, w,
            "{img}: kiln map\n{}\nqemu-img map\n{want}",
            got.stdout
        );
        let (code, want, _) = q(d, "qemu-img", &["map", "-f", fmt, img]);
        let got = k(d, &["img", "map", "-f", fmt, img]);
        assert_eq!(got.code(), code, "{img}: human map status: {got:?}");
        assert_eq!(got.stdout, want, "{img}: human map");
    }
    k(d, &["img", "map", "missing.qcow2"]).expect_error("missing.qcow2");
    k(d, &["img", "map", "--output", "xml", "base.qcow2"]).expect_error("--output");
}

#[test]
fn compare_verdicts_and_statuses_equal_qemu_img_compare() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixtures(d);
    qok(d, "qemu-img", &["create", "-f", "qcow2", "big.qcow2", "2M"]);
    qok(
        d,
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "top.qcow2",
            "flat.qcow2",
        ],
    );
    qok(
        d,
        "qemu-img",
        &["resize", "-f", "qcow2", "flat.qcow2", "3M"],
    );
    qok(
        d,
        "qemu-img",
        &["convert", "-O", "qcow2", "top.qcow2", "flat2.qcow2"],
    );
    qok(
        d,
        "qemu-img",
        &["resize", "-f", "qcow2", "flat2.qcow2", "3M"],
    );
    qok(d, "qemu-io", &["-c", "write -P 9 2500k 1", "flat2.qcow2"]);
    let cases: &[&[&str]] = &[
        &["base.qcow2", "c.qcow2"],
        &["base.qcow2", "top.qcow2"],
        &["top.qcow2", "mid.qcow2"],
        &["base.qcow2", "big.qcow2"],
        &["-s", "base.qcow2", "big.qcow2"],
        &["top.qcow2", "flat.qcow2"],
        &["flat.qcow2", "top.qcow2"],
        &["top.qcow2", "flat2.qcow2"],
        &["-s", "top.qcow2", "top.qcow2"],
        &["-s", "base.qcow2", "c.qcow2"],
        &["-s", "-f", "raw", "-F", "qcow2", "r.raw", "big.qcow2"],
        &["-s", "-f", "raw", "-F", "raw", "r.raw", "r.raw"],
        &["-f", "raw", "-F", "raw", "r.raw", "r.raw"],
        &["-f", "raw", "-F", "qcow2", "r.raw", "base.qcow2"],
        &["-f", "raw", "-F", "raw", "e.raw", "r.raw"],
    ];
    for c in cases {
        let mut qa = vec!["compare"];
        qa.extend_from_slice(c);
        let (code, want, _) = q(d, "qemu-img", &qa);
        let mut ka = vec!["img", "compare"];
        ka.extend_from_slice(c);
        let got = k(d, &ka);
        got.no_panic();
        assert_eq!(got.code(), code, "{c:?}: kiln {got:?} qemu-img: {want}");
        assert_eq!(got.stdout, want, "{c:?}");
    }
    // Errors: status 2 and one line.
    let got = k(d, &["img", "compare", "missing.qcow2", "base.qcow2"]);
    assert_eq!(got.code(), 2, "{got:?}");
    assert_eq!(got.stderr.lines().count(), 1, "{got:?}");
    let (code, _, _) = q(d, "qemu-img", &["compare", "missing.qcow2", "base.qcow2"]);
    assert_eq!(code, 2);
}

#[test]
fn resize_matches_qemu_img_resize() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixtures(d);
    // (format, image, size argument, --shrink) applied in turn to a kiln and a qemu copy.
    let steps: &[(&str, &str, &str, bool)] = &[
        ("qcow2", "base.qcow2", "40M", false),
        ("qcow2", "base.qcow2", "-39M", true),
        ("qcow2", "base.qcow2", "+4k", false),
        ("qcow2", "base.qcow2", "512k", true),
        ("qcow2", "top.qcow2", "+1M", false),
        ("raw", "r.raw", "3M", false),
        ("raw", "r.raw", "700001", true),
    ];
    std::fs::create_dir(d.join("q")).unwrap();
    for f in ["base.qcow2", "mid.qcow2", "top.qcow2", "r.raw"] {
        std::fs::copy(d.join(f), d.join("q").join(f)).unwrap();
    }
    let qd = d.join("q");
    for &(fmt, img, size, shrink) in steps {
        let mut args = vec!["img", "resize", "-f", fmt];
        if shrink {
            args.push("--shrink");
        }
        args.extend([img, size]);
        let got = k(d, &args);
        got.expect_code(0);
        assert_eq!(got.stdout, "Image resized.\n");
        let mut qa = vec!["resize", "-f", fmt];
        if shrink {
            qa.push("--shrink");
        }
        qa.extend([img, "--", size]);
        qok(&qd, "qemu-img", &qa);
        assert_eq!(virtual_size(d, img), virtual_size(&qd, img), "{img} {size}");
        if fmt == "qcow2" {
            check_clean(d, img);
        }
        let other = qd.join(img);
        let (code, out, err) = q(
            d,
            "qemu-img",
            &[
                "compare",
                "-f",
                fmt,
                "-F",
                fmt,
                img,
                other.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{img} after {size}: {out}{err}");
    }
    // Bad input: one line, status 1.
    k(d, &["img", "resize", "base.qcow2", "1k"]).expect_error("--shrink");
    k(d, &["img", "resize", "base.qcow2", "abc"]).expect_error("abc");
    k(d, &["img", "resize", "base.qcow2", "-2G"]).expect_error("positive");
    k(d, &["img", "resize", "base.qcow2", "+1000"]).expect_error("multiple of 512");
    k(d, &["img", "resize", "missing.qcow2", "1M"]).expect_error("missing.qcow2");
    // A v3 image with a snapshot shrinks (the snapshot keeps its size and data), as
    // with qemu-img; applying the snapshot brings both back.
    for dir in [d, qd.as_path()] {
        qok(dir, "qemu-img", &["snapshot", "-c", "s1", "base.qcow2"]);
    }
    k(d, &["img", "resize", "--shrink", "base.qcow2", "64k"]).expect_code(0);
    qok(
        &qd,
        "qemu-img",
        &["resize", "--shrink", "base.qcow2", "64k"],
    );
    let other = qd.join("base.qcow2");
    for step in ["shrunk", "snapshot applied"] {
        check_clean(d, "base.qcow2");
        assert_eq!(
            virtual_size(d, "base.qcow2"),
            virtual_size(&qd, "base.qcow2")
        );
        same(d, "base.qcow2", other.to_str().unwrap());
        if step == "shrunk" {
            k(d, &["img", "snapshot", "-a", "s1", "base.qcow2"]).expect_code(0);
            qok(&qd, "qemu-img", &["snapshot", "-a", "s1", "base.qcow2"]);
        }
    }
    assert_eq!(virtual_size(d, "base.qcow2"), 512 * 1024);
}

/// Copy `files` from `d` into a new subdirectory `name`.
fn clone_into(d: &Path, name: &str, files: &[&str]) -> std::path::PathBuf {
    let sub = d.join(name);
    std::fs::create_dir(&sub).unwrap();
    for f in files {
        std::fs::copy(d.join(f), sub.join(f)).unwrap();
    }
    sub
}

/// QEMU tool runs (tool, arguments) that prepare a case.
type Prep<'a> = &'a [(&'a str, &'a [&'a str])];

#[test]
fn commit_matches_qemu_img_commit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixtures(d);
    let files = ["base.qcow2", "mid.qcow2", "top.qcow2"];
    // The top image with an internal snapshot (its L2 tables shared with it), and a top
    // image with extended L2 entries (subclusters), each made the same way in both copies.
    let snapshot: Prep = &[("qemu-img", &["snapshot", "-c", "s1", "top.qcow2"])];
    let extended: Prep = &[
        (
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "extended_l2=on",
                "-b",
                "mid.qcow2",
                "-F",
                "qcow2",
                "top.qcow2",
            ],
        ),
        (
            "qemu-io",
            &[
                "-c",
                "write -P 7 3k 5k",
                "-c",
                "write -z 256k 64k",
                "-c",
                "write -P 9 520k 2k",
                "top.qcow2",
            ],
        ),
    ];
    // Plain commit (overlay emptied), -d, -b into the bottom of the chain, then plain
    // commits of the two variants.
    let cases: &[(&[&str], Prep)] = &[
        (&["top.qcow2"], &[]),
        (&["-d", "top.qcow2"], &[]),
        (&["-b", "base.qcow2", "top.qcow2"], &[]),
        (&["top.qcow2"], snapshot),
        (&["top.qcow2"], extended),
    ];
    for (i, (c, prep)) in cases.iter().enumerate() {
        let kd = clone_into(d, &format!("k{i}"), &files);
        let qd = clone_into(d, &format!("q{i}"), &files);
        for (tool, args) in prep.iter() {
            qok(&kd, tool, args);
            qok(&qd, tool, args);
        }
        let before = clone_into(&kd, &format!("b{i}"), &files);
        let mut ka = vec!["img", "commit"];
        ka.extend_from_slice(c);
        let got = k(&kd, &ka);
        got.expect_code(0);
        assert_eq!(got.stdout, "Image committed.\n");
        let mut qa = vec!["commit"];
        qa.extend_from_slice(c);
        qok(&qd, "qemu-img", &qa);
        for f in files {
            check_clean(&kd, f);
            let other = qd.join(f);
            let (code, out, err) = q(&kd, "qemu-img", &["compare", f, other.to_str().unwrap()]);
            assert_eq!(code, 0, "{c:?}: {f} differs from qemu-img's: {out}{err}");
        }
        // The top image's view never changes.
        let other = before.join("top.qcow2");
        same(&kd, "top.qcow2", other.to_str().unwrap());
        if c.len() == 1 {
            let m = k(&kd, &["img", "map", "--output", "json", "top.qcow2"]);
            assert!(!m.stdout.contains("\"depth\": 0"), "emptied: {}", m.stdout);
        }
        if !prep.is_empty() && prep[0].1[0] == "snapshot" {
            // The snapshot kept its own clusters: applied, it shows what it showed.
            k(&kd, &["img", "snapshot", "-a", "s1", "top.qcow2"]).expect_code(0);
            check_clean(&kd, "top.qcow2");
            same(&kd, "top.qcow2", other.to_str().unwrap());
            let m = k(&kd, &["img", "map", "--output", "json", "top.qcow2"]);
            assert!(m.stdout.contains("\"depth\": 0"), "snapshot: {}", m.stdout);
        }
    }
    k(d, &["img", "commit", "base.qcow2"]).expect_error("does not have a backing file");
    k(d, &["img", "commit", "missing.qcow2"]).expect_error("missing.qcow2");
    k(d, &["img", "commit", "-b", "c.qcow2", "top.qcow2"]).expect_error("c.qcow2");
}

#[test]
fn rebase_matches_qemu_img_rebase() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fixtures(d);
    let files = ["base.qcow2", "mid.qcow2", "top.qcow2", "c.qcow2"];
    let cases: &[&[&str]] = &[
        &["-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
        &["-b", "c.qcow2", "-F", "qcow2", "top.qcow2"],
        &["-b", "", "top.qcow2"],
        &["-b", "", "mid.qcow2"],
        &["-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
    ];
    for (i, c) in cases.iter().enumerate() {
        let kd = clone_into(d, &format!("k{i}"), &files);
        let qd = clone_into(d, &format!("q{i}"), &files);
        let mut ka = vec!["img", "rebase"];
        ka.extend_from_slice(c);
        k(&kd, &ka).expect_code(0);
        let mut qa = vec!["rebase"];
        qa.extend_from_slice(c);
        qok(&qd, "qemu-img", &qa);
        for f in files {
            check_clean(&kd, f);
            let other = qd.join(f);
            let (code, out, err) = q(&kd, "qemu-img", &["compare", f, other.to_str().unwrap()]);
            assert_eq!(code, 0, "{c:?}: {f} differs from qemu-img's: {out}{err}");
        }
        let info = |dir: &Path| {
            let out = qok(
                dir,
                "qemu-img",
                &["info", "--output=json", "-U", c[c.len() - 1]],
            );
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            (
                v["backing-filename"].clone(),
                v["backing-filename-format"].clone(),
            )
        };
        assert_eq!(info(&kd), info(&qd), "{c:?}");
        if !c.contains(&"-u") {
            // Safe mode keeps the image's view.
            let name = c[c.len() - 1];
            let other = d.join(name);
            same(&kd, name, other.to_str().unwrap());
        }
    }
    // A huge sparse chain: only what the old chain stores is read and copied.
    qok(
        d,
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "huge.qcow2",
            "-F",
            "qcow2",
            "hov.qcow2",
        ],
    );
    k(d, &["img", "rebase", "-b", "", "hov.qcow2"]).expect_code(0);
    check_clean(d, "hov.qcow2");
    same(d, "hov.qcow2", "huge.qcow2");
    let m = k(d, &["img", "map", "--output", "json", "hov.qcow2"]);
    assert!(
        m.stdout.contains("\"depth\": 0, \"present\": true"),
        "{}",
        m.stdout
    );
    k(d, &["img", "rebase", "-b", "base.qcow2", "top.qcow2"])
        .expect_error("backing format must be specified");
    k(
        d,
        &[
            "img",
            "rebase",
            "-b",
            "missing.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    )
    .expect_error("missing.qcow2");
    k(d, &["img", "rebase", "-b", "", "-f", "raw", "r.raw"]).expect_error("not supported");
}
