//! `cargo xtask bench io [--runs N] [--kiln PATH]`: virtio-blk and virtio-net throughput
//! seen by a Linux guest, Kiln vs `qemu-system-x86_64 -M q35` with `virtio-blk-pci` /
//! `virtio-net-pci`, on the same raw image and TAP set-up in the same real-KVM host (the rig's L1, or this machine with hardware virtualization).
//!
//! Each run boots Debian's cloud kernel with an initramfs that loads the virtio modules
//! and times, with /proc/uptime (10 ms), a 128 MiB sequential write (`dd ... conv=fsync`)
//! and, after dropping the page cache, a 128 MiB sequential read of /dev/vda, then
//! reports the seconds and powers off. The peers alternate within one batch. Both VMMs use
//! the host page cache (Kiln's default; QEMU's cache=writeback default).
//!
//! Network runs (`kiln.net` on the command line) give each VMM a virtio-net device on TAP
//! `kb0` (created by the VMM); a shell wrapper (`NET_HOST`) configures the TAP's host side
//! and serves 64 MiB with busybox httpd, and the guest times `wget` of it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_testrig::artifacts::VIRTIO_BLK_MODULES;
use kiln_testrig::initramfs::guest_initramfs;
use kiln_testrig::{Artifacts, Batch, Host, RunSpec};

use crate::report::{self, Row, Section, Target};

/// The guest: load virtio, time the writes and reads, report, power off.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in $(cat /modules); do insmod /m/$m.ko; done
t() { read u _ < /proc/uptime; echo $u; }
if grep -q kiln.net /proc/cmdline; then
    n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
    ip link set eth0 up
    ip addr add 10.0.3.15/24 dev eth0
    n=0; until ping -c 1 -W 1 10.0.3.1 > /dev/null 2>&1 || [ $n -ge 20 ]; do n=$((n+1)); done
    a=$(t); s=$(wget -q -O - http://10.0.3.1:8080/blob | wc -c); b=$(t)
    echo "KILN-NET bytes=$s get=$a:$b"
    poweroff -f
fi
n=0; while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
a=$(t); dd if=/dev/zero of=/dev/vda bs=1M count=128 conv=fsync 2>/dev/null; b=$(t)
echo 3 > /proc/sys/vm/drop_caches
c=$(t); dd if=/dev/vda of=/dev/null bs=1M count=128 2>/dev/null; d=$(t)
echo "KILN-IO write=$a:$b read=$c:$d"
poweroff -f
"#;

const CMDLINE: &str = "console=ttyS0 quiet";
const NET_CMDLINE: &str = "console=ttyS0 quiet kiln.net";
/// Bytes the network runs download.
const NET_BYTES: u64 = 64 << 20;
const MEMORY: &str = "512M";
const DISK: &str = "/tmp/kiln-bench-io.img";
/// QEMU's firmware for q35 with -kernel.
const QEMU_FILES: [&str; 3] = [
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/seabios/bios-256k.bin",
];

/// The host side of a network run, where the run happens: Kiln or QEMU (`$@`) in the
/// background, its TAP configured once it exists, busybox httpd serving 64 MiB.
const NET_HOST: &str = r#"
dir=/tmp/kiln-bench-net-$$
mkdir -p $dir/www
bb=$dir/busybox
cp {file:busybox} $bb && chmod 755 $bb
dd if=/dev/zero of=$dir/www/blob bs=1M count=64 2>/dev/null
"$@" &
k=$!
n=0; while [ ! -e /sys/class/net/kb0 ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done
$bb ip addr add 10.0.3.1/24 dev kb0
$bb ip link set kb0 up
$bb httpd -f -p 10.0.3.1:8080 -h $dir/www &
h=$!
wait $k
st=$?
kill $h
rm -rf $dir
exit $st
"#;

/// Kiln's command line: the benchmark disk, or (`net`) a virtio-net on TAP kb0.
fn kiln_argv(kiln: &str, net: bool) -> Vec<String> {
    let mut v: Vec<String> = [kiln, "run", "--kernel", "{file:kernel}", "--initrd"]
        .map(String::from)
        .to_vec();
    v.extend(["{file:initrd}", "-m", MEMORY, "--cpus", "1"].map(String::from));
    if net {
        v.extend(["--net", "tap=kb0", "--cmdline", NET_CMDLINE].map(String::from));
    } else {
        let disk = format!("path={DISK},format=raw");
        v.extend(["--disk".into(), disk, "--cmdline".into(), CMDLINE.into()]);
    }
    v
}

/// QEMU's: q35 with virtio-blk-pci on the disk, or (`net`) virtio-net-pci on TAP kb0.
fn qemu_argv(qemu: &str, net: bool) -> Vec<String> {
    let mut v = crate::linux::qemu_direct_boot(qemu, "q35", MEMORY);
    v.extend(["-initrd", "{file:initrd}", "-append"].map(String::from));
    if net {
        v.extend(
            [
                NET_CMDLINE,
                "-netdev",
                "tap,id=n0,ifname=kb0,script=no,downscript=no",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]
            .map(String::from),
        );
    } else {
        let drive = format!("file={DISK},format=raw,if=none,id=d0");
        v.extend([
            CMDLINE.into(),
            "-drive".into(),
            drive,
            "-device".into(),
            "virtio-blk-pci,drive=d0".into(),
        ]);
    }
    v
}

/// Seconds for a `KEY=a:b` span on the line starting with `tag`.
fn span(out: &str, tag: &str, key: &str) -> Option<f64> {
    let line = out.lines().find_map(|l| l.trim().strip_prefix(tag))?;
    let v = line.split_whitespace().find_map(|w| w.strip_prefix(key))?;
    let (a, b) = v.split_once(':')?;
    Some(b.parse::<f64>().ok()? - a.parse::<f64>().ok()?)
}

/// Seconds for the write and the read from a run's `KILN-IO` line.
fn parse(out: &str) -> Option<(f64, f64)> {
    Some((
        span(out, "KILN-IO ", "write=")?,
        span(out, "KILN-IO ", "read=")?,
    ))
}

/// Seconds for the 64 MiB download from a run's `KILN-NET` line (all bytes arrived).
fn parse_net(out: &str) -> Option<f64> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("KILN-NET "))?;
    let bytes: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))?
        .parse()
        .ok()?;
    (bytes == NET_BYTES).then(|| span(out, "KILN-NET ", "get="))?
}

/// Run the benchmark and print its Markdown section.
pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let (mut runs, mut kiln_arg) = (5usize, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs needs a number")?.parse()?,
            "--kiln" => kiln_arg = Some(it.next().context("--kiln needs a path")?.clone()),
            other => bail!("unknown option '{other}' for bench io"),
        }
    }
    let host = Host::detect().map_err(|e| anyhow::anyhow!("{e}"))?;
    let qemu = crate::linux::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed: run `bash scripts/setup.sh bench`")?;
    let kiln = match kiln_arg {
        Some(k) => std::path::absolute(k).context("resolving --kiln")?,
        None => crate::build_kiln(root)?,
    };
    let arts = Artifacts::get().map_err(|e| anyhow::anyhow!("guest artifacts: {e}"))?;
    let mut tree = guest_initramfs(&arts.busybox, Some(INIT))
        .map_err(|e| anyhow::anyhow!("building the initramfs: {e}"))?;
    let mut names = Vec::new();
    let net_modules = arts.virtio_modules.iter().filter(|m| {
        let stem = m.file_stem().unwrap_or_default();
        stem == "failover" || stem == "net_failover" || stem == "virtio_net"
    });
    for m in arts.virtio_modules[..VIRTIO_BLK_MODULES]
        .iter()
        .chain(net_modules)
    {
        let name = m
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        tree.file(&format!("/m/{name}.ko"), 0o644, m.as_path());
        names.push(name);
    }
    tree.file("/modules", 0o644, names.join(" "));
    let initrd = tree
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("building the initramfs: {e}"))?;
    let kiln_at = if host.is_rig() {
        "/rig/bin/kiln".to_string()
    } else {
        kiln.to_string_lossy().into_owned()
    };
    let qemu_at = qemu.to_string_lossy().into_owned();
    let mut batch = Batch::new(&kiln).carry_program(&qemu);
    for f in QEMU_FILES {
        if !Path::new(f).is_file() {
            bail!("{f} is missing (Debian packages qemu-system-x86 and seabios have it)");
        }
        batch = batch.carry_file(f);
    }
    batch = batch.run(
        RunSpec::new(
            "make-disk",
            [
                "-c",
                &format!("rm -f {DISK} && dd if=/dev/zero of={DISK} bs=1M count=0 seek=192"),
            ],
        )
        .program("/bin/sh"),
    );
    let peers = [
        (
            "kiln",
            kiln_argv(&kiln_at, false),
            kiln_argv(&kiln_at, true),
        ),
        (
            "qemu",
            qemu_argv(&qemu_at, false),
            qemu_argv(&qemu_at, true),
        ),
    ];
    for r in 0..=runs {
        for (peer, disk, net) in &peers {
            let round = if r == 0 {
                "warm-up".to_string()
            } else {
                r.to_string()
            };
            batch = batch.run(
                RunSpec::new(&format!("{round}-{peer}"), disk[1..].iter().cloned())
                    .program(&disk[0])
                    .file("kernel", arts.bzimage.as_path())
                    .file("initrd", initrd.clone())
                    .timeout_secs(400),
            );
            let mut args = vec!["-c".to_string(), NET_HOST.to_string(), "sh".to_string()];
            args.extend(net.iter().cloned());
            batch = batch.run(
                RunSpec::new(&format!("{round}-{peer}-net"), args)
                    .program("/bin/sh")
                    .file("busybox", arts.busybox.as_path())
                    .file("kernel", arts.bzimage.as_path())
                    .file("initrd", initrd.clone())
                    .timeout_secs(400),
            );
        }
    }
    batch = batch
        .run(RunSpec::new("remove-disk", ["-c", &format!("rm -f {DISK}")]).program("/bin/sh"))
        .on_run_end(|name, status, secs| {
            eprintln!("[io] {name}: status {status:?} in {secs:.1} s")
        });
    eprintln!("[io] 1 warm-up + {runs} rounds of Kiln and QEMU q35, virtio-blk, 128 MiB each way");
    let result = batch
        .execute(&host)
        .map_err(|e| anyhow::anyhow!("the benchmark batch failed: {e}"))?;
    let (mut write, mut read) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut get = [Vec::new(), Vec::new()];
    let mut notes = Vec::new();
    for r in &result.runs {
        let Some((round, peer)) = r.name.split_once('-') else {
            continue;
        };
        let (peer, net) = match peer.strip_suffix("-net") {
            Some(p) => (p, true),
            None => (peer, false),
        };
        let i = match peer {
            "kiln" => 0,
            "qemu" => 1,
            _ => continue,
        };
        if net {
            match parse_net(&r.stdout_text()) {
                Some(g) if round != "warm" && r.status == Some(0) => get[i].push(g),
                Some(_) => {}
                None => notes.push(format!("{}: no result (status {:?})", r.name, r.status)),
            }
            continue;
        }
        match parse(&r.stdout_text()) {
            Some((w, rd)) if round != "warm" && r.status == Some(0) => {
                write[i].push(w);
                read[i].push(rd);
            }
            Some(_) => {}
            None => notes.push(format!("{}: no result (status {:?})", r.name, r.status)),
        }
    }
    for (i, p) in ["Kiln", "QEMU"].iter().enumerate() {
        if write[i].len() * 2 < runs {
            bail!(
                "{p}: only {} of {runs} runs gave results: {notes:?}",
                write[i].len()
            );
        }
    }
    let median = |v: &[f64]| report::stats(v).map_or(f64::NAN, |s| s.median);
    let mbps = |v: &[f64]| v.iter().map(|s| 128.0 / s).collect::<Vec<_>>();
    let ratio_w = median(&write[0]) / median(&write[1]);
    let ratio_r = median(&read[0]) / median(&read[1]);
    let ratio_g = median(&get[0]) / median(&get[1]);
    let net_mbps = |v: &[f64]| median(&v.iter().map(|s| 64.0 / s).collect::<Vec<_>>());
    notes.push(format!(
        "TCP over TAP, L1 -> guest (wget of 64 MiB from busybox httpd), MiB/s: Kiln {:.1} vs QEMU {:.1} \
         ({} and {} valid runs); the issue asks for guest -> L1, not measured yet",
        net_mbps(&get[0]),
        net_mbps(&get[1]),
        get[0].len(),
        get[1].len()
    ));
    notes.push(format!(
        "throughput medians (MiB/s): write Kiln {:.1} vs QEMU {:.1}, read Kiln {:.1} vs QEMU {:.1}",
        median(&mbps(&write[0])),
        median(&mbps(&write[1])),
        median(&mbps(&read[0])),
        median(&mbps(&read[1]))
    ));
    notes.push(format!(
        "host: {}; L1 boot {:.0} s, whole batch {:.0} s",
        if host.is_rig() {
            "the rig's L1 (QEMU TCG, nested AMD-V)"
        } else {
            "this machine"
        },
        result.boot_seconds.unwrap_or(0.0),
        result.total_seconds
    ));
    let section = Section {
        title: "virtio-blk and virtio-net in a Linux guest (seconds; lower is better)".into(),
        runs: format!(
            "{} valid runs per peer after 1 warm-up",
            write[0].len().min(write[1].len())
        ),
        commands: vec![
            ("Kiln".into(), kiln_argv("kiln", false).join(" ")),
            (
                "QEMU".into(),
                qemu_argv("qemu-system-x86_64", false).join(" "),
            ),
            (
                "Kiln, network runs".into(),
                kiln_argv("kiln", true).join(" "),
            ),
            (
                "QEMU, network runs".into(),
                qemu_argv("qemu-system-x86_64", true).join(" "),
            ),
        ],
        rows: vec![
            Row {
                label: "dd write 128 MiB + fsync (s)".into(),
                kiln: write[0].clone(),
                qemu: write[1].clone(),
            },
            Row {
                label: "dd read 128 MiB, cold cache (s)".into(),
                kiln: read[0].clone(),
                qemu: read[1].clone(),
            },
            Row {
                label: "virtio-net: wget 64 MiB from L1 over TAP (s)".into(),
                kiln: get[0].clone(),
                qemu: get[1].clone(),
            },
        ],
        targets: vec![
            Target {
                text: format!("Kiln >= QEMU on write throughput (time ratio {ratio_w:.2} <= 1)"),
                met: ratio_w <= 1.0,
            },
            Target {
                text: format!("Kiln >= QEMU on read throughput (time ratio {ratio_r:.2} <= 1)"),
                met: ratio_r <= 1.0,
            },
            Target {
                text: format!(
                    "Kiln >= QEMU on TCP throughput L1 -> guest (time ratio {ratio_g:.2} <= 1)"
                ),
                met: ratio_g <= 1.0,
            },
        ],
        notes,
    };
    print!(
        "{}",
        report::markdown(&report::Machine::detect(root), &[section])
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_guest_line() {
        let out = "noise\nKILN-IO write=5.10:7.35 read=7.40:8.00\r\n";
        let (w, r) = super::parse(out).unwrap();
        assert!((w - 2.25).abs() < 1e-9 && (r - 0.6).abs() < 1e-9);
        assert!(super::parse("KILN-IO write=1").is_none());
        let net = format!("KILN-NET bytes={} get=10.00:14.50", 64 << 20);
        assert_eq!(super::parse_net(&net), Some(4.5));
        assert_eq!(
            super::parse_net("KILN-NET bytes=5 get=1:2"),
            None,
            "short download"
        );
    }
}
