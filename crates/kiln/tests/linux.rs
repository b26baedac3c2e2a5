//! Linux guests on a real KVM (directly with hardware virtualization, else in the rig):
//! Debian's kernel boots to userspace from its bzImage and from its vmlinux (PVH), with
//! the command line and the initrd intact, the vCPUs and memory asked for, and `poweroff`
//! ending Kiln with status 0. All runs share one L1 boot.

use kiln_testrig::initramfs::guest_initramfs;
use kiln_testrig::{Artifacts, Batch, Host, RunResult, RunSpec};

/// The guest's init: report what the tests check, then power off.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo KILN-L2-USERSPACE-UP
echo "cmdline=$(cat /proc/cmdline)"
echo "payload=$(sha256sum /payload | cut -d' ' -f1)"
echo "nproc=$(nproc)"
grep -q -w tsc_deadline_timer /proc/cpuinfo && echo tsc-deadline=yes || echo tsc-deadline=no
echo "pci=$(cat /sys/bus/pci/devices/0000:00:00.0/vendor 2>&1):$(cat /sys/bus/pci/devices/0000:00:00.0/device 2>&1)"
echo "memtotal_kb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
echo "epoch=$(date +%s)"
echo KILN-L2-DONE
sleep 0.3
poweroff -f
"#;

fn payload() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    kiln_testrig::digest_hex("sha256sum", data)
}

fn field<'a>(r: &'a RunResult, out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{}: no {key}= line in:\n{out}\n{}", r.name, r.stderr_text()))
}

#[test]
fn debian_kernel_boots_to_userspace_from_bzimage_and_vmlinux() {
    let host = Host::detect().unwrap_or_else(|e| panic!("no real KVM for this test: {e}"));
    let art = Artifacts::get().unwrap_or_else(|e| panic!("guest artifacts: {e}"));
    let data = payload();
    let mut tree = guest_initramfs(&art.busybox, Some(INIT)).unwrap();
    tree.file("/payload", 0o644, data.clone());
    let initrd = tree.to_bytes().unwrap();
    let cmdline = "console=ttyS0 panic=-1 quiet kiln.test=hello-from-the-host";
    let run = |name: &str, kernel: &str, cpus: &str, mem: &str| {
        RunSpec::new(
            name,
            [
                "run",
                "--kernel",
                kernel,
                "--initrd",
                "{file:initrd}",
                "-m",
                mem,
                "--cpus",
                cpus,
                "--cmdline",
                cmdline,
            ],
        )
        .file("bzimage", art.bzimage.as_path())
        .file("vmlinux", art.vmlinux.as_path())
        .file("initrd", initrd.clone())
        .timeout_secs(120)
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let result = Batch::new(env!("CARGO_BIN_EXE_kiln"))
        .run(run("bzimage", "{file:bzimage}", "2", "256M"))
        .run(run("pvh", "{file:vmlinux}", "1", "192M"))
        // A 2-vCPU guest: the rig's triple fault reruns the batch once.
        .execute_rerunning_rig_triple_faults(&host, &[])
        .unwrap_or_else(|e| panic!("rig batch failed: {e}"));
    let finished = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let want_sum = sha256_hex(&data);
    for (name, cpus, mem_mib) in [("bzimage", 2, 256u64), ("pvh", 1, 192)] {
        let r = result.run(name);
        let out = r.stdout_text();
        eprintln!("{name}: status {:?} in {:.1} s", r.status, r.seconds);
        assert!(
            out.contains("KILN-L2-USERSPACE-UP"),
            "{name} never reached userspace:\n{out}\n{}",
            r.stderr_text()
        );
        assert!(
            out.contains("KILN-L2-DONE"),
            "{name}: init did not finish:\n{out}"
        );
        assert_eq!(
            r.status,
            Some(0),
            "{name}: poweroff must end Kiln with 0:\n{}",
            r.stderr_text()
        );
        assert_eq!(field(r, &out, "cmdline"), cmdline, "{name}: command line");
        assert_eq!(
            field(r, &out, "payload"),
            want_sum,
            "{name}: initrd contents"
        );
        assert_eq!(field(r, &out, "nproc"), cpus.to_string(), "{name}: vCPUs");
        // KVM's LAPIC emulates it; Kiln must say so in CPUID (Linux then skips
        // calibrating its LAPIC timer against the PIT).
        assert_eq!(
            field(r, &out, "tsc-deadline"),
            "yes",
            "{name}: TSC-deadline timer"
        );
        assert_eq!(
            field(r, &out, "pci"),
            "0x8086:0x1237",
            "{name}: the host bridge on bus 0"
        );
        let mem_kb: u64 = field(r, &out, "memtotal_kb").parse().unwrap();
        assert!(
            mem_kb * 1024 >= mem_mib * (1 << 20) * 3 / 4,
            "{name}: MemTotal {mem_kb} kB for {mem_mib} MiB"
        );
        assert!(
            mem_kb * 1024 <= mem_mib * (1 << 20),
            "{name}: MemTotal above -m"
        );
        let epoch: i64 = field(r, &out, "epoch").parse().unwrap();
        assert!(
            started - 5 <= epoch && epoch <= finished + 5,
            "{name}: guest clock {epoch} outside the run's window {started}..{finished}"
        );
    }
}
