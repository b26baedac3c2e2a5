//! Raw-binary guests in real, protected and long mode: each sums a table that the test
//! loads at a second address, prints the sum and halts; the test checks the serial
//! output, the exit status and the register dump.

mod common;
use common::*;
use kiln_guests::{table_bytes, RAW_LOAD_ADDR, RAW_TABLE_ADDR};

fn run_raw(mode: &str, image: &[u8], values: &[u32], extra: &[&str]) -> (Run, u32) {
    require_kvm();
    let s = Scratch::new();
    let code = s.file("code.bin", image);
    let table = s.file("table.bin", &table_bytes(values));
    let load_code = format!("{code}@{RAW_LOAD_ADDR:#x}");
    let load_table = format!("{table}@{RAW_TABLE_ADDR:#x}");
    let mut args = vec![
        "run",
        "--load",
        &load_code,
        "--load",
        &load_table,
        "--mode",
        mode,
        "--dump-regs",
    ];
    args.extend_from_slice(extra);
    let sum = values.iter().fold(0u32, |a, v| a.wrapping_add(*v));
    (run(&args), sum)
}

fn check(mode: &str, r: &Run, values: &[u32], sum: u32) {
    r.expect_code(0);
    assert_eq!(
        r.stdout,
        format!("kiln raw {mode}: count={} sum={sum:#010x}\n", values.len())
    );
    assert_eq!(r.reg("RAX") & 0xffff_ffff, sum as u64, "RAX holds the sum");
    assert_eq!(
        r.reg("RCX") & 0xffff_ffff,
        values.len() as u64,
        "RCX holds the count"
    );
    assert_eq!(r.reg("RBX"), 0x1800, "RBX still points at the boot info");
}

const VALUES: &[u32] = &[7, 0x8000_0000, 0x8000_0001, 12345, 0xdead_beef, 1, 2, 3];

#[test]
fn real_mode_guest_sums_a_table() {
    let (r, sum) = run_raw("real", kiln_guests::RAW_REAL, VALUES, &[]);
    check("real", &r, VALUES, sum);
    assert_eq!(r.reg("CR0") & 1, 0, "CR0.PE clear in real mode");
    assert!(
        r.stderr.contains("CS =f000 base=00000000000f0000"),
        "{r:#?}"
    );
    assert_eq!(r.reg("EFER") & 0x400, 0);
}

#[test]
fn protected_mode_guest_sums_a_table() {
    let (r, sum) = run_raw(
        "protected",
        kiln_guests::RAW_PROTECTED,
        VALUES,
        &["-m", "32M"],
    );
    check("protected", &r, VALUES, sum);
    let cr0 = r.reg("CR0");
    assert_eq!(cr0 & 1, 1, "CR0.PE set");
    assert_eq!(cr0 >> 31, 0, "CR0.PG clear");
    assert!(
        r.stderr
            .contains("CS =0010 base=0000000000000000 limit=ffffffff"),
        "{r:#?}"
    );
    assert_eq!(r.reg("EFER") & 0x400, 0, "EFER.LMA clear");
}

#[test]
fn long_mode_guest_sums_a_table() {
    let values: Vec<u32> = (1..=1000).map(|i| i * 7919).collect();
    let (r, sum) = run_raw("long", kiln_guests::RAW_LONG, &values, &["-m", "5G"]);
    check("long", &r, &values, sum);
    let cr0 = r.reg("CR0");
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "CR0.PE and CR0.PG set");
    assert_eq!(r.reg("EFER") & 0x500, 0x500, "EFER.LME and LMA set");
    assert_eq!(r.reg("CR3"), 0x9000);
    assert!(r.stderr.contains("CS =0008"), "{r:#?}");
}

#[test]
fn empty_table_sums_to_zero_and_entry_can_be_explicit() {
    let (r, _) = run_raw(
        "protected",
        kiln_guests::RAW_PROTECTED,
        &[],
        &["--entry", "0xf0000"],
    );
    check("protected", &r, &[], 0);
}

#[test]
fn without_dump_regs_only_the_guest_output_is_printed() {
    require_kvm();
    let s = Scratch::new();
    let code = s.file("code.bin", kiln_guests::RAW_PROTECTED);
    let table = s.file("t.bin", &table_bytes(&[5]));
    let r = run(&[
        "run",
        "--load",
        &format!("{code}@0xf0000"),
        "--load",
        &format!("{table}@0x100000"),
        "--mode",
        "protected",
    ]);
    r.expect_code(0);
    assert_eq!(r.stdout, "kiln raw protected: count=1 sum=0x00000005\n");
    assert_eq!(r.stderr, "");
}

#[test]
fn triple_fault_exits_6_with_a_register_dump() {
    require_kvm();
    let s = Scratch::new();
    // ud2 with an empty IDT: #UD cannot be delivered, so the CPU shuts down.
    let code = s.file("ud2.bin", &[0x0f, 0x0b]);
    let r = run(&[
        "run",
        "--load",
        &format!("{code}@0x100000"),
        "--mode",
        "protected",
    ]);
    r.expect_code(6);
    assert!(r.stderr.contains("kiln: guest triple-faulted"), "{r:#?}");
    assert!(
        r.stderr.contains("RIP="),
        "dump printed without --dump-regs: {r:#?}"
    );
}

#[test]
fn debug_exit_port_sets_the_status() {
    require_kvm();
    let s = Scratch::new();
    // mov al, 0x2a; out 0xf4, al  -> status (0x2a << 1) | 1 = 0x55
    let code = s.file("exit.bin", &[0xb0, 0x2a, 0xe6, 0xf4, 0xf4]);
    run(&["run", "--load", &format!("{code}@0x7c00")]).expect_code(0x55);
    // mov eax, 0x7f; out 0xf4, eax (4-byte write) -> 0xff
    let code = s.file("exit4.bin", &[0xb8, 0x7f, 0, 0, 0, 0xe7, 0xf4, 0xf4]);
    run(&[
        "run",
        "--load",
        &format!("{code}@0x100000"),
        "--mode",
        "protected",
    ])
    .expect_code(0xff);
}
