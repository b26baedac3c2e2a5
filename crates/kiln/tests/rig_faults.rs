//! How often the rig's own faults hit a guest: the raw-disk workload of tests/virtio.rs
//! (a 2-vCPU Linux guest streaming 20 MiB through virtio-blk, 16 writers at once, then
//! reading it all back) run alternately by Kiln and by QEMU (`-M pc`, virtio-blk-pci)
//! in the same L1, with a tally of the runs whose guest did not finish. A measurement of
//! the rig, not a test of Kiln, so it is ignored by default:
//! `RIG_FAULT_RUNS=10 RIG_FAULT_CPUS=2 cargo test -p kiln --test rig_faults -- --ignored --nocapture`.
//! README.md ("The Linux test rig") has what it found.

mod common;
use common::{virtio_guest, which};
use kiln_testrig::{Artifacts, Batch, Host, RunSpec};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

#[test]
#[ignore = "a measurement of the rig: run it by name"]
fn guest_fault_rate_kiln_vs_qemu() {
    let host = Host::detect().unwrap_or_else(|e| panic!("no real KVM: {e}"));
    let art = Artifacts::get().unwrap_or_else(|e| panic!("guest artifacts: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = virtio_guest::initramfs(&art, &["virtio-rng.ko"]);
    let data = dir.path().join("data.img");
    std::fs::write(&data, vec![7u8; 32 << 20]).unwrap();
    let ro = dir.path().join("ro.img");
    std::fs::write(&ro, vec![1u8; 1 << 20]).unwrap();

    let runs: usize = env_or("RIG_FAULT_RUNS", "5")
        .parse()
        .expect("RIG_FAULT_RUNS");
    let cpus = env_or("RIG_FAULT_CPUS", "2");
    let cmdline = "console=ttyS0 quiet panic=-1 kiln.mode=raw";
    let qemu = which("qemu-system-x86_64");
    let q = qemu.display().to_string();
    let mut batch = Batch::new(env!("CARGO_BIN_EXE_kiln")).carry_program(&qemu);
    for f in [
        "/usr/share/qemu/linuxboot_dma.bin",
        "/usr/share/qemu/kvmvapic.bin",
        "/usr/share/seabios/bios-256k.bin",
    ] {
        batch = batch.carry_file(f);
    }
    let files = |spec: RunSpec| {
        spec.file("bz", art.bzimage.as_path())
            .file("initrd", initrd.clone())
            .file("data", data.as_path())
            .file("ro", ro.as_path())
            .timeout_secs(180)
    };
    for i in 0..runs {
        let kiln = [
            "run",
            "--kernel",
            "{file:bz}",
            "--initrd",
            "{file:initrd}",
            "-m",
            "256M",
            "--cpus",
            &cpus,
            "--disk",
            "path={file:data}",
            "--disk",
            "path={file:ro},format=raw,readonly=on",
            "--rng",
            "--cmdline",
            cmdline,
        ];
        batch = batch.run(files(RunSpec::new(&format!("kiln-{i}"), kiln)));
        let qemu_args = [
            "-M",
            "pc",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256M",
            "-smp",
            &cpus,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            "{file:bz}",
            "-initrd",
            "{file:initrd}",
            "-append",
            cmdline,
            "-drive",
            "file={file:data},format=raw,if=virtio",
            "-drive",
            "file={file:ro},format=raw,if=virtio,readonly=on",
            "-device",
            "virtio-rng-pci",
        ];
        batch = batch.run(files(
            RunSpec::new(&format!("qemu-{i}"), qemu_args).program(&q),
        ));
    }
    let result = batch.execute(&host).unwrap_or_else(|e| panic!("{e}"));
    let mut failed = [0usize; 2];
    for r in &result.runs {
        let out = r.stdout_text();
        // The guest's last line before it powers off.
        let finished = out.contains("random=");
        let last = out.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        println!(
            "{:8} status {:?} in {:5.1} s, finished: {finished}, last line: {last:?} {}",
            r.name,
            r.status,
            r.seconds,
            r.stderr_text()
                .lines()
                .find(|l| l.starts_with("kiln:"))
                .unwrap_or("")
        );
        if !finished {
            failed[usize::from(r.name.starts_with("qemu"))] += 1;
        }
    }
    println!(
        "guests that did not finish, {cpus} vCPU(s): Kiln {} of {runs}, QEMU {} of {runs}",
        failed[0], failed[1]
    );
}
