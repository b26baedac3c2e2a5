//! `kiln img amend` cross-checked with qemu-img: a compat=1.1 overlay with lazy refcounts
//! and zero clusters over a backing file goes down to 0.10 and back up with its data
//! unchanged and `qemu-img check` clean; a 0.10 image with an internal snapshot goes up
//! and the snapshot still applies; lazy refcounts toggle; what Kiln cannot amend is
//! refused with one line and the image left byte for byte as it was.

mod common;

use common::{qemu_create, qemu_io, qemu_ok, run, Scratch};
use std::process::Command;

fn check_clean(img: &str) {
    let out = qemu_ok("qemu-img", &["check", img]);
    assert!(out.contains("No errors were found on the image."), "{out}");
}

fn guest_view(img: &str, raw: &str) -> Vec<u8> {
    qemu_ok("qemu-img", &["convert", "-O", "raw", img, raw]);
    std::fs::read(raw).unwrap()
}

#[test]
fn amend_changes_compat_and_lazy_refcounts_keeping_the_data() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    qemu_create("qcow2", &[], &p("base.qcow2"), "4M");
    qemu_io("qcow2", &p("base.qcow2"), &["write -P 0xaa 0 4M"]);
    let img = p("top.qcow2");
    qemu_create(
        "qcow2",
        &["-b", "base.qcow2", "-F", "qcow2", "-o", "lazy_refcounts=on"],
        &img,
        "",
    );
    qemu_io(
        "qcow2",
        &img,
        &["write -z 64k 128k", "write -P 0xbb 1M 4k", "write -z 2M 4k"],
    );
    let before = guest_view(&img, &p("before.raw"));

    run(&["img", "amend", "-o", "compat=0.10", &img]).expect_code(0);
    let info = qemu_ok("qemu-img", &["info", &img]);
    assert!(info.contains("compat: 0.10"), "{info}");
    check_clean(&img);
    assert!(
        guest_view(&img, &p("v2.raw")) == before,
        "downgrade changed the data"
    );
    // No zero flags are left: version 2 has none (the zeroed ranges are data now).
    let map = qemu_ok("qemu-img", &["map", "--output", "json", &img]);
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    for e in map.as_array().unwrap() {
        assert!(
            !(e["depth"] == 0 && e["zero"] == true),
            "a zero cluster survived the downgrade: {e}"
        );
    }

    run(&["img", "amend", "-o", "compat=1.1,lazy_refcounts=on", &img]).expect_code(0);
    let info = qemu_ok("qemu-img", &["info", &img]);
    assert!(
        info.contains("compat: 1.1") && info.contains("lazy refcounts: true"),
        "{info}"
    );
    check_clean(&img);
    assert!(
        guest_view(&img, &p("v3.raw")) == before,
        "upgrade changed the data"
    );
    run(&["img", "amend", "-o", "lazy_refcounts=off", &img]).expect_code(0);
    assert!(qemu_ok("qemu-img", &["info", &img]).contains("lazy refcounts: false"));
    check_clean(&img);

    // A 0.10 image with a snapshot goes up; the snapshot keeps its data and applies.
    let old = p("old.qcow2");
    qemu_create("qcow2", &["-o", "compat=0.10"], &old, "2M");
    qemu_io("qcow2", &old, &["write -P 1 0 64k"]);
    qemu_ok("qemu-img", &["snapshot", "-c", "s1", &old]);
    qemu_io("qcow2", &old, &["write -P 2 0 64k"]);
    run(&["img", "amend", "-o", "compat=1.1", &old]).expect_code(0);
    assert!(qemu_ok("qemu-img", &["info", &old]).contains("compat: 1.1"));
    check_clean(&old);
    qemu_ok("qemu-img", &["snapshot", "-a", "s1", &old]);
    qemu_io("qcow2", &old, &["read -P 1 0 64k"]);
    run(&["img", "amend", "-o", "size=4M", &old]).expect_code(0);
    assert!(qemu_ok("qemu-img", &["info", &old]).contains("virtual size: 4 MiB"));

    // Refusals: one line each, nothing changed.
    let raw = p("disk.raw");
    qemu_create("raw", &[], &raw, "1M");
    let bytes = std::fs::read(&old).unwrap();
    for (args, msg) in [
        (vec!["-o", "compat=0.10", &old], "internal snapshots"),
        (vec!["-o", "refcount_bits=8", &old], "refcount_bits"),
        (
            vec!["-o", "cluster_size=4k", &old],
            "only supported for image creation",
        ),
        (vec!["-o", "backing_file=x", &old], "rebase"),
        (
            vec!["-o", "compat=0.10,lazy_refcounts=on", &old],
            "Lazy refcounts only",
        ),
        (vec!["-o", "bogus=1", &old], "Invalid parameter 'bogus'"),
        (vec![&old], "Must specify options (-o)"),
        (
            vec!["-o", "compat=0.10", &raw],
            "does not support option amendment",
        ),
    ] {
        let mut a = vec!["img", "amend"];
        a.extend(args);
        run(&a).expect_error(msg);
        assert!(
            std::fs::read(&old).unwrap() == bytes,
            "{msg}: the image changed"
        );
    }
}

/// `kiln img amend` killed (SIGKILL, through kiln-block's test hook) before each of its
/// metadata writes in turn, going down (zero clusters written out) and going up (a
/// snapshot table rewritten): after every kill `qemu-img check` finds no corruption
/// (leaks allowed) and the image reads as before; the last run finishes the change.
#[test]
fn amend_survives_sigkill_at_every_metadata_write() {
    let s = Scratch::new();
    let p = |n: &str| s.dir.path().join(n).to_str().unwrap().to_string();
    qemu_create("qcow2", &[], &p("base.qcow2"), "4M");
    qemu_io("qcow2", &p("base.qcow2"), &["write -P 0xaa 0 4M"]);
    let down = p("down.qcow2");
    qemu_create("qcow2", &["-b", "base.qcow2", "-F", "qcow2"], &down, "");
    qemu_io(
        "qcow2",
        &down,
        &[
            "write -z 64k 128k",
            "write -P 0xbb 1M 4k",
            "write -z 2M 4k",
            "write -z 3M 64k",
        ],
    );
    let up = p("up.qcow2");
    qemu_create("qcow2", &["-o", "compat=0.10"], &up, "2M");
    qemu_io("qcow2", &up, &["write -P 1 0 64k"]);
    qemu_ok("qemu-img", &["snapshot", "-c", "s1", &up]);
    qemu_io("qcow2", &up, &["write -P 2 0 64k"]);

    for (orig, compat) in [(down, "0.10"), (up, "1.1")] {
        let want = guest_view(&orig, &p("want.raw"));
        let work = p("work.qcow2");
        let mut finished = false;
        for n in 1..200 {
            std::fs::copy(&orig, &work).unwrap();
            let status = common::kiln(&["img", "amend", "-o", &format!("compat={compat}"), &work])
                .env("KILN_BLOCK_KILL_AT_META_WRITE", n.to_string())
                .status()
                .unwrap();
            let out = Command::new("qemu-img")
                .args(["check", &work])
                .output()
                .unwrap();
            assert!(
                matches!(out.status.code(), Some(0 | 3)),
                "compat={compat}, killed at metadata write {n}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(
                guest_view(&work, &p("got.raw")) == want,
                "compat={compat}, killed at metadata write {n}: the data changed"
            );
            if status.success() {
                assert!(n > 1, "amend wrote no metadata");
                eprintln!(
                    "compat={compat}: killed at each of {} metadata writes",
                    n - 1
                );
                let info = qemu_ok("qemu-img", &["info", &work]);
                assert!(info.contains(&format!("compat: {compat}")), "{info}");
                finished = true;
                break;
            }
        }
        assert!(finished, "compat={compat}: amend never finished");
    }
}
