//! `kiln img check -r leaks|all`: repairs with qemu-img's report ("The following
//! inconsistencies were found and repaired") and exit statuses that describe the image
//! after the repair; the repaired images pass `qemu-img check`.

mod common;

use common::{poke_refcount, qemu_img_status as qemu_img, run, Scratch};

#[test]
fn img_check_r_repairs_leaks_and_corruptions_like_qemu_img() {
    let s = Scratch::new();
    let img = s.dir.path().join("r.qcow2").to_str().unwrap().to_string();
    run(&["img", "create", "-f", "qcow2", &img, "4M"]).expect_code(0);
    run(&[
        "img",
        "write",
        &img,
        "0",
        "--pattern",
        "9",
        "--length",
        "200k",
    ])
    .expect_code(0);
    // Two leaked clusters past the data (the file grows to hold them).
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(12 * 65536).unwrap();
    drop(f);
    poke_refcount(&img, 10, 1);
    poke_refcount(&img, 11, 2);
    assert_eq!(qemu_img(&["check", &img]), 3);
    let r = run(&["img", "check", "-r", "leaks", &img]);
    r.expect_code(0);
    assert!(
        r.stdout.contains(
            "The following inconsistencies were found and repaired:\n\n    2 leaked clusters\n    0 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on the image."
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("Repairing cluster 11 refcount=2 reference=0"),
        "{}",
        r.stderr
    );
    assert_eq!(qemu_img(&["check", &img]), 0);
    // A clean image: nothing to repair, plain report.
    let r = run(&["img", "check", "-r", "all", &img]);
    r.expect_code(0);
    assert!(!r.stdout.contains("repaired"), "{}", r.stdout);
    // A corruption (a data cluster's refcount lost) and a leak: `leaks` cannot fix a
    // refcount of 0 without rebuilding the refcounts, so, like qemu-img, the check fails
    // (exit 1) and changes nothing, not even the leak; `all` repairs both.
    poke_refcount(&img, 4, 0);
    poke_refcount(&img, 10, 1);
    assert_eq!(qemu_img(&["check", &img]), 2);
    let copy = s.dir.path().join("q.qcow2").to_str().unwrap().to_string();
    std::fs::copy(&img, &copy).unwrap();
    assert_eq!(qemu_img(&["check", "-r", "leaks", &copy]), 1);
    let before = std::fs::read(&img).unwrap();
    let r = run(&["img", "check", "-r", "leaks", &img]);
    r.expect_code(1);
    assert!(
        r.stderr
            .contains("ERROR need to rebuild refcount structures"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Check failed"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "-r leaks changed the image"
    );
    let r = run(&["img", "check", "-r", "all", &img]);
    r.expect_code(0);
    assert!(
        r.stdout
            .contains("1 leaked clusters\n    1 corruptions\n\nDouble checking"),
        "{}",
        r.stdout
    );
    assert_eq!(qemu_img(&["check", &img]), 0);
    let r = run(&["img", "check", "-r", "everything", &img]);
    r.expect_code(1);
    r.no_panic();
}
