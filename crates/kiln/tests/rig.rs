//! Kiln on a real KVM through the test rig: directly on a host with hardware
//! virtualization, else inside L1 (QEMU TCG with AMD-V and nested paging, Debian's
//! kvm-amd). Proves the rig end to end with the built-in demo guest.

use kiln_testrig::{Batch, Host, RunSpec};

#[test]
fn demo_guest_runs_on_a_real_kvm() {
    let host = Host::detect().unwrap_or_else(|e| panic!("no real KVM for this test: {e}"));
    let batch = Batch::new(env!("CARGO_BIN_EXE_kiln"))
        .run(RunSpec::new("demo", ["run"]).timeout_secs(120))
        .run(RunSpec::new("dump-regs", ["run", "-m", "64M", "--dump-regs"]).timeout_secs(120));
    let result = batch
        .execute(&host)
        .unwrap_or_else(|e| panic!("rig batch failed: {e}"));
    eprintln!(
        "rig: host {host:?}, L1 boot to first run {:?} s, batch {:.1} s, runs {:?}",
        result.boot_seconds,
        result.total_seconds,
        result
            .runs
            .iter()
            .map(|r| (&r.name, r.seconds))
            .collect::<Vec<_>>()
    );
    for r in &result.runs {
        assert_eq!(r.status, Some(0), "run {} did not exit 0: {r:#?}", r.name);
        assert!(
            r.stdout_text().contains("Kiln demo guest: done, halting"),
            "run {}: no demo output: {r:#?}",
            r.name
        );
    }
    let dump = result.run("dump-regs");
    assert!(dump.stdout_text().contains("memory: 64 MiB"), "{dump:#?}");
    assert!(
        dump.stderr_text().contains("EFER="),
        "no register dump: {dump:#?}"
    );
    if host.is_rig() {
        let console = result.l1_console.as_deref().unwrap_or_default();
        assert!(
            console.contains("Nested Paging enabled"),
            "L1's kvm-amd did not report nested paging:\n{console}"
        );
    }
}
