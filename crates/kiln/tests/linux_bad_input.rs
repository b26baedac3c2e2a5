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
