//! The built-in demo guest: `kiln run` with no guest arguments.

mod common;
use common::*;

fn host_vendor() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .expect("vendor_id in /proc/cpuinfo")
}

#[test]
fn demo_guest_walks_through_the_cpu_modes() {
    require_kvm();
    let r = run(&["run", "-m", "256M"]);
    r.expect_code(0);
    let want = format!(
        "Kiln demo guest: hello from 16-bit real mode\n  CPU vendor: {}\n  memory: 256 MiB (from Kiln's boot info at 0x1800)\n  entering 32-bit protected mode\n  now in 32-bit protected mode\n  entering 64-bit long mode\n  now in 64-bit long mode\nKiln demo guest: done, halting\n",
        host_vendor()
    );
    assert_eq!(r.stdout, want);
    assert_eq!(r.stderr, "");
}

#[test]
fn demo_guest_reports_default_memory_and_ends_in_long_mode() {
    require_kvm();
    let r = run(&["run", "--dump-regs"]);
    r.expect_code(0);
    assert!(r.stdout.contains("memory: 128 MiB"), "{r:#?}");
    assert_eq!(
        r.reg("EFER") & 0x400,
        0x400,
        "the demo switched to long mode itself"
    );
}
