//! How often the rig's own faults hit a guest: the raw-disk workload of tests/virtio.rs
//! (a 2-vCPU Linux guest streaming 20 MiB through virtio-blk, 16 writers at once, then
//! reading it all back) run alternately by Kiln and by QEMU (`-M pc`, virtio-blk-pci)
//! in the same L1, with a tally of the runs whose guest did not finish. A measurement of
//! the rig, not a test of Kiln, so it is ignored by default:
//! `RIG_FAULT_RUNS=10 RIG_FAULT_CPUS=2 cargo test -p kiln --test rig_faults -- --ignored --nocapture`.
//! README.md ("The Linux test rig") has what it found.

mod common;
use common::which;
use kiln_testrig::artifacts::VIRTIO_BLK_MODULES;
use kiln_testrig::initramfs::guest_initramfs;
use kiln_testrig::{Artifacts, Batch, Host, RunSpec};

/// The guest's init, as in tests/virtio.rs.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod /m/$m.ko || echo "insmod-failed=$m"; done
n=0; while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
for d in /sys/bus/virtio/devices/*; do
    echo "virtio=$(basename $d) device=$(cat $d/device) driver=$(basename $(readlink $d/driver)) features=$(cat $d/features)"
done
mode=$(sed -n 's/.*kiln\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ "$mode" = console ]; then
    echo "hvc=$(cat /sys/class/tty/hvc0/dev)"
    # One open for both: closing the tty would flush input that already arrived.
    exec 3<>/dev/hvc0
    # No tty echo: it would interleave with this script's COM1 output on Kiln's stdout.
    stty -echo <&3
    echo "hello-from-hvc0" >&3
    read -t 60 line <&3
    echo "got=$line"
    poweroff -f
fi
if [ "$mode" = root ]; then
    root=$(sed -n 's/.*root=\([^ ]*\).*/\1/p' /proc/cmdline)
    mkdir -p /newroot
    mount -t ext4 "$root" /newroot || echo "mount-failed=$root"
    exec switch_root /newroot /sbin/kiln-init
fi
echo "serial=$(cat /sys/block/vda/serial)"
echo "sectors=$(cat /sys/block/vda/size)"
echo "vdb-ro=$(cat /sys/block/vdb/ro)"
echo "head-md5=$(dd if=/dev/vda bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
yes kiln-virtio-blk | head -c 4194304 > /tmp/p
dd if=/tmp/p of=/dev/vda bs=1M seek=8 conv=fsync 2>/dev/null && echo "stream-written"
i=0
while [ $i -lt 16 ]; do
    (yes "chunk-$i" | head -c 1048576 | dd of=/dev/vda bs=64k seek=$((256 + i * 16)) conv=fsync 2>/dev/null) &
    i=$((i + 1))
done
wait
echo 3 > /proc/sys/vm/drop_caches
i=0
while [ $i -lt 16 ]; do
    a=$(dd if=/dev/vda bs=64k skip=$((256 + i * 16)) count=16 2>/dev/null | md5sum | cut -d' ' -f1)
    b=$(yes "chunk-$i" | head -c 1048576 | md5sum | cut -d' ' -f1)
    [ "$a" = "$b" ] && echo "readback-$i=ok" || echo "readback-$i=BAD"
    i=$((i + 1))
done
if dd if=/tmp/p of=/dev/vdb bs=4k count=1 conv=fsync 2>/dev/null; then echo vdb-write=accepted; else echo vdb-write=refused; fi
echo "hwrng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "random=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
sync
poweroff -f
"#;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

#[test]
#[ignore = "a measurement of the rig: run it by name"]
fn guest_fault_rate_kiln_vs_qemu() {
    let host = Host::detect().unwrap_or_else(|e| panic!("no real KVM: {e}"));
    let art = Artifacts::get().unwrap_or_else(|e| panic!("guest artifacts: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut tree = guest_initramfs(&art.busybox, Some(INIT)).unwrap();
    let mut names = Vec::new();
    let rng = art
        .virtio_modules
        .iter()
        .find(|m| m.ends_with("virtio-rng.ko"))
        .expect("virtio-rng.ko");
    for m in art.virtio_modules[..VIRTIO_BLK_MODULES].iter().chain([rng]) {
        let name = m.file_stem().unwrap().to_string_lossy().into_owned();
        tree.file(&format!("/m/{name}.ko"), 0o644, m.as_path());
        names.push(name);
    }
    tree.file("/modules", 0o644, names.join(" "));
    let initrd = tree.to_bytes().unwrap();
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
