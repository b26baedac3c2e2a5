//! Bad Linux input: a truncated bzImage, an initrd larger than guest memory and a command
//! line longer than the kernel allows each give one clear line and status 1, before any
//! guest code runs (so these run on any KVM, the rig is not needed).

mod common;
use common::*;
use kiln_testrig::Artifacts;

fn kernel() -> Vec<u8> {
    let art = Artifacts::get().unwrap_or_else(|e| panic!("guest artifacts: {e}"));
    std::fs::read(art.bzimage).unwrap()
}

#[test]
fn truncated_bzimage() {
    require_kvm();
    let s = Scratch::new();
    let k = kernel();
    let cut = s.file("bzImage.part", &k[..k.len() / 2]);
    run(&["run", "--kernel", &cut]).expect_error("truncated bzImage");
}

#[test]
fn initrd_larger_than_guest_memory() {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("bzImage", &kernel());
    let initrd = s.dir.path().join("big.img");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    run(&[
        "run",
        "--kernel",
        &k,
        "--initrd",
        initrd.to_str().unwrap(),
        "-m",
        "64M",
    ])
    .expect_error("does not fit in guest memory");
}

#[test]
fn command_line_longer_than_the_kernel_allows() {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("bzImage", &kernel());
    let long = "x".repeat(3000);
    run(&["run", "--kernel", &k, "--cmdline", &long])
        .expect_error("the kernel command line is 3000 bytes; this kernel accepts at most 2047");
}

#[test]
fn modules_are_for_multiboot_kernels_only() {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("bzImage", &kernel());
    let m = s.file("m", b"x");
    run(&["run", "--kernel", &k, "--module", &m]).expect_error("is for multiboot kernels");
}

#[test]
fn disks_that_cannot_be_used() {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("bzImage", &kernel());
    run(&[
        "run",
        "--kernel",
        &k,
        "--disk",
        "path=/nonexistent/disk.img",
    ])
    .expect_error("disk: /nonexistent/disk.img: No such file");
    // A qcow2 header with nothing behind it.
    let mut bad = b"QFI\xfb\0\0\0\x03".to_vec();
    bad.resize(512, 0xff);
    let q = s.file("bad.qcow2", &bad);
    run(&["run", "--kernel", &k, "--disk", &format!("path={q}")])
        .expect_error(&format!("disk: {q}"));
    // A raw file announced as qcow2 is refused.
    let raw = s.file("raw.img", &[0u8; 4096]);
    run(&[
        "run",
        "--kernel",
        &k,
        "--disk",
        &format!("path={raw},format=qcow2"),
    ])
    .expect_error(&format!("disk: {raw}: not a qcow2 image"));
    // Usage errors are one line from the argument parser.
    run(&["run", "--kernel", &k, "--disk", "path=x,bogus=1"]).expect_error("unknown disk option");
    let out = run(&["run", "--disk", &format!("path={raw}")]);
    out.expect_code(1);
    assert!(out.stderr.contains("--kernel"), "{out:#?}");
}

#[test]
fn networks_that_cannot_be_used() {
    require_kvm();
    let s = Scratch::new();
    let k = s.file("bzImage", &kernel());
    // An existing interface that is not a TAP.
    run(&["run", "--kernel", &k, "--net", "tap=lo"]).expect_error("network: ");
    // Names the kernel would refuse, and bad MACs, are usage errors.
    run(&["run", "--kernel", &k, "--net", "tap=has/slash"]).expect_code(1);
    let bad_mac = run(&[
        "run",
        "--kernel",
        &k,
        "--net",
        "tap=kt0,mac=01:02:03:04:05:06",
    ]);
    bad_mac.expect_code(1);
    assert!(bad_mac.stderr.contains("multicast"), "{bad_mac:#?}");
}
