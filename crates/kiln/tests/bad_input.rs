//! Bad input: one clear line naming the problem, exit status 1, never a panic.

mod common;
use common::*;

#[test]
fn missing_load_file() {
    run(&["run", "--load", "/nonexistent/guest.bin@0x100000"])
        .expect_error("cannot read /nonexistent/guest.bin: No such file or directory");
}

#[test]
fn missing_kernel_file() {
    run(&["run", "--kernel", "/nonexistent/kernel"])
        .expect_error("cannot read /nonexistent/kernel: No such file or directory");
}

#[test]
fn missing_module_file() {
    let s = Scratch::new();
    let k = s.file("k", kiln_guests::MULTIBOOT_ELF);
    run(&["run", "--kernel", &k, "--module", "/nonexistent/mod"])
        .expect_error("cannot read /nonexistent/mod");
}

#[test]
fn load_outside_guest_memory() {
    let s = Scratch::new();
    let f = s.file("g.bin", &[0xf4; 4096]);
    run(&["run", "-m", "16M", "--load", &format!("{f}@0x1000000")])
        .expect_error("is outside guest memory (RAM is 0x0-0x1000000)");
    run(&["run", "-m", "16M", "--load", &format!("{f}@0xfff800")])
        .expect_error("is outside guest memory");
    run(&["run", "--load", &format!("{f}@0xffffffffffffff00")])
        .expect_error("is outside guest memory");
}

#[test]
fn overlapping_loads() {
    let s = Scratch::new();
    let a = s.file("a.bin", &[0xf4; 4096]);
    let b = s.file("b.bin", &[0xf4; 16]);
    run(&[
        "run",
        "--load",
        &format!("{a}@0x100000"),
        "--load",
        &format!("{b}@0x100ff0"),
    ])
    .expect_error(&format!("{b}@0x100ff0 overlaps {a}@0x100000"));
}

#[test]
fn load_over_kilns_boot_area_or_page_tables() {
    let s = Scratch::new();
    let f = s.file("g.bin", &[0xf4; 16]);
    run(&["run", "--load", &format!("{f}@0x1800")]).expect_error("overlaps Kiln's boot area");
    run(&["run", "--load", &format!("{f}@0x9000"), "--mode", "long"])
        .expect_error("overlaps Kiln's page tables");
}

#[test]
fn real_mode_entry_above_1mib() {
    let s = Scratch::new();
    let f = s.file("g.bin", &[0xf4; 16]);
    run(&["run", "--load", &format!("{f}@0x200000")])
        .expect_error("real-mode entry 0x200000 is not below 1 MiB");
}

#[test]
fn kernel_that_is_no_kernel() {
    let s = Scratch::new();
    let junk: Vec<u8> = (0..20000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let f = s.file("junk", &junk);
    run(&["run", "--kernel", &f])
        .expect_error("not a kernel Kiln recognises (no bzImage header, no multiboot header");
    let empty = s.file("empty", b"");
    run(&["run", "--kernel", &empty]).expect_error("not a kernel Kiln recognises");
}

#[test]
fn zero_memory() {
    run(&["run", "-m", "0"]).expect_error("guest memory size must be greater than 0");
    run(&["run", "-m", "0G"]).expect_error("greater than 0");
}

#[test]
fn unparsable_memory_and_addresses() {
    run(&["run", "-m", "lots"]).expect_error("'lots' is not a memory size");
    run(&["run", "--load", "x@0xzz"]).expect_error("is not an address");
    run(&["run", "--load", "nofile"]).expect_error("'nofile' is not FILE@ADDR");
    run(&["run", "--mode", "long"]).expect_error("--load");
    run(&["run", "--bogus"]).expect_error("--bogus");
}

#[test]
fn memory_larger_than_the_host_can_map() {
    require_kvm();
    // Beyond the guest's physical address width.
    run(&["run", "-m", "100000T"]).expect_error("physical address space");
    // Far more than any test machine has (and than KVM's slot bookkeeping could hold).
    run(&["run", "-m", "60T"]).expect_error("60 TiB of guest memory is more than this host has");
}

#[test]
fn help_and_version_exit_0() {
    let r = run(&["run", "--help"]);
    r.expect_code(0);
    assert!(r.stdout.contains("Exit status:"), "{r:#?}");
    assert!(r.stdout.contains("--load <FILE@ADDR>"));
    run(&["--version"]).expect_code(0);
}
