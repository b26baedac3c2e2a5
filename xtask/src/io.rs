//! `cargo xtask bench io [--runs N] [--kiln PATH]`: virtio-blk and virtio-net performance
//! seen by a Linux guest, Kiln vs `qemu-system-x86_64 -M q35` with `virtio-blk-pci` /
//! `virtio-net-pci`, on the same raw image and TAP set-up in the same real-KVM host (the
//! rig's L1, or this machine with hardware virtualization).
//!
//! Each disk run boots Debian's cloud kernel with an initramfs that loads the virtio
//! modules and times a 128 MiB sequential write (`dd ... conv=fsync`), after dropping the
//! page cache a 128 MiB sequential read of /dev/vda, and 4 KiB random reads (O_DIRECT,
//! queue depth 1, `io_bench` from kiln-testrig's progs) with KVM's exit counters read
//! around them; network runs (`kiln.net` on the command line) give each VMM a virtio-net
//! device on TAP `kb0` and time a 64 MiB download from busybox httpd on L1 and a 64 MiB
//! upload to L1. The peers alternate within one batch. Both VMMs use the host page cache
//! (Kiln's default; QEMU's cache=writeback default). The scripts and their parsing are in
//! [`crate::io_scripts`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_testrig::artifacts::VIRTIO_BLK_MODULES;
use kiln_testrig::initramfs::guest_initramfs;
use kiln_testrig::progs::{self, Prog};
use kiln_testrig::{Artifacts, Batch, Host, RunSpec};

use crate::io_scripts::{self, DiskRun, HOST, RAND_READS};
use crate::report::{self, Row, Section, Target};

const CMDLINE: &str = "console=ttyS0 quiet";
const NET_CMDLINE: &str = "console=ttyS0 quiet kiln.net";
const MEMORY: &str = "512M";
const DISK: &str = "/tmp/kiln-bench-io.img";
/// QEMU's firmware for q35 with -kernel.
const QEMU_FILES: [&str; 3] = [
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/seabios/bios-256k.bin",
];

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
    let io_bench = progs::build(Prog::IoBench).map_err(|e| anyhow::anyhow!("io_bench: {e}"))?;
    let initrd = initramfs(&arts, &io_bench)?;
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
            [kiln_argv(&kiln_at, false), kiln_argv(&kiln_at, true)],
        ),
        (
            "qemu",
            [qemu_argv(&qemu_at, false), qemu_argv(&qemu_at, true)],
        ),
    ];
    for r in 0..=runs {
        for (peer, argvs) in &peers {
            let round = if r == 0 {
                "warm".to_string()
            } else {
                r.to_string()
            };
            for (mode, argv) in ["disk", "net"].into_iter().zip(argvs) {
                let mut args = ["-c", HOST, "sh", mode].map(String::from).to_vec();
                args.extend(argv.iter().cloned());
                batch = batch.run(
                    RunSpec::new(&format!("{round}-{peer}-{mode}"), args)
                        .program("/bin/sh")
                        .file("busybox", arts.busybox.as_path())
                        .file("io_bench", io_bench.as_path())
                        .file("kernel", arts.bzimage.as_path())
                        .file("initrd", initrd.clone())
                        .timeout_secs(400),
                );
            }
        }
    }
    batch = batch
        .run(RunSpec::new("remove-disk", ["-c", &format!("rm -f {DISK}")]).program("/bin/sh"))
        .on_run_end(|name, status, secs| {
            eprintln!("[io] {name}: status {status:?} in {secs:.1} s")
        });
    eprintln!("[io] 1 warm-up + {runs} rounds of Kiln and QEMU q35: virtio-blk and virtio-net");
    let result = batch
        .execute(&host)
        .map_err(|e| anyhow::anyhow!("the benchmark batch failed: {e}"))?;
    let mut m = [Measured::default(), Measured::default()];
    let mut notes = Vec::new();
    for r in &result.runs {
        let mut parts = r.name.splitn(3, '-');
        let (Some(round), Some(peer), Some(mode)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let i = match peer {
            "kiln" => 0,
            "qemu" => 1,
            _ => continue,
        };
        let out = r.stdout_text();
        let counted = round != "warm" && r.status == Some(0);
        let parsed = if mode == "net" {
            io_scripts::parse_net(&out).map(|n| counted.then(|| m[i].add_net(n)))
        } else {
            io_scripts::parse_disk(&out).map(|d| counted.then(|| m[i].add_disk(d)))
        };
        if parsed.is_none() {
            notes.push(format!("{}: no result (status {:?})", r.name, r.status));
        }
    }
    for (i, p) in ["Kiln", "QEMU"].iter().enumerate() {
        if m[i].write.len() * 2 < runs {
            bail!(
                "{p}: only {} of {runs} runs gave results: {notes:?}",
                m[i].write.len()
            );
        }
    }
    print!(
        "{}",
        report::markdown(
            &report::Machine::detect(root),
            &[section(&m, runs, &result, host.is_rig(), notes)]
        )
    );
    Ok(())
}

/// The guest's initramfs: busybox, the init script, io_bench, the virtio modules.
fn initramfs(arts: &Artifacts, io_bench: &Path) -> Result<Vec<u8>> {
    let init = io_scripts::init();
    let mut tree = guest_initramfs(&arts.busybox, Some(&init))
        .map_err(|e| anyhow::anyhow!("building the initramfs: {e}"))?;
    tree.file("/io_bench", 0o755, io_bench);
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
    tree.to_bytes()
        .map_err(|e| anyhow::anyhow!("building the initramfs: {e}"))
}

/// One peer's samples.
#[derive(Default)]
struct Measured {
    write: Vec<f64>,
    read: Vec<f64>,
    /// Seconds for RAND_READS random reads.
    rand: Vec<f64>,
    exits: Vec<f64>,
    user_exits: Vec<f64>,
    get: Vec<f64>,
    put: Vec<f64>,
}

impl Measured {
    fn add_disk(&mut self, d: DiskRun) {
        self.write.push(d.write);
        self.read.push(d.read);
        self.rand
            .extend(d.rand_iops.map(|iops| f64::from(RAND_READS) / iops));
        self.exits.extend(d.exits_per_read);
        self.user_exits.extend(d.user_exits_per_read);
    }

    fn add_net(&mut self, (get, put): (f64, Option<f64>)) {
        self.get.push(get);
        self.put.extend(put);
    }
}

/// The report: rows, targets and notes.
fn section(
    m: &[Measured; 2],
    runs: usize,
    result: &kiln_testrig::BatchResult,
    rig: bool,
    mut notes: Vec<String>,
) -> Section {
    let median = |v: &[f64]| report::stats(v).map_or(f64::NAN, |s| s.median);
    let ratio = |f: fn(&Measured) -> &Vec<f64>| median(f(&m[0])) / median(f(&m[1]));
    let per_s = |v: &[f64], amount: f64| median(&v.iter().map(|s| amount / s).collect::<Vec<_>>());
    notes.push(format!(
        "throughput medians: write Kiln {:.1} vs QEMU {:.1} MiB/s, read Kiln {:.1} vs QEMU {:.1} MiB/s, \
         4 KiB random reads Kiln {:.0} vs QEMU {:.0} IOPS, TCP L1 -> guest Kiln {:.1} vs QEMU {:.1} MiB/s, \
         TCP guest -> L1 Kiln {:.1} vs QEMU {:.1} MiB/s",
        per_s(&m[0].write, 128.0),
        per_s(&m[1].write, 128.0),
        per_s(&m[0].read, 128.0),
        per_s(&m[1].read, 128.0),
        per_s(&m[0].rand, f64::from(RAND_READS)),
        per_s(&m[1].rand, f64::from(RAND_READS)),
        per_s(&m[0].get, 64.0),
        per_s(&m[1].get, 64.0),
        per_s(&m[0].put, 64.0),
        per_s(&m[1].put, 64.0),
    ));
    notes.push(format!(
        "exits per random read: KVM's per-VM counters from L1's debugfs, read when the guest \
         announces the start and the end of the {RAND_READS} reads (each mark is followed by 1 s \
         of idle guest, whose few exits are included); 'to the VMM' counts io_exits + mmio_exits, \
         the exits user space handles (both VMMs take queue notifications through an ioeventfd \
         inside KVM)"
    ));
    notes.push(format!(
        "host: {}; L1 boot {:.0} s, whole batch {:.0} s",
        if rig {
            "the rig's L1 (QEMU TCG, nested AMD-V)"
        } else {
            "this machine"
        },
        result.boot_seconds.unwrap_or(0.0),
        result.total_seconds
    ));
    let row = |label: &str, f: fn(&Measured) -> &Vec<f64>| Row {
        label: label.into(),
        kiln: f(&m[0]).clone(),
        qemu: f(&m[1]).clone(),
    };
    let time_target = |what: &str, r: f64| Target {
        text: format!("Kiln >= QEMU on {what} (time ratio {r:.2} <= 1)"),
        met: r <= 1.0,
    };
    let (ek, eq) = (median(&m[0].exits), median(&m[1].exits));
    Section {
        title: "virtio-blk and virtio-net in a Linux guest (lower is better)".into(),
        runs: format!(
            "{} valid disk runs per peer after 1 warm-up ({runs} rounds)",
            m[0].write.len().min(m[1].write.len())
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
            row("dd write 128 MiB + fsync (s)", |m| &m.write),
            row("dd read 128 MiB, cold cache (s)", |m| &m.read),
            row(
                &format!("{RAND_READS} random 4 KiB reads, O_DIRECT, QD1 (s)"),
                |m| &m.rand,
            ),
            row("KVM exits per random read", |m| &m.exits),
            row("exits to the VMM per random read", |m| &m.user_exits),
            row("virtio-net: wget 64 MiB from L1 over TAP (s)", |m| &m.get),
            row("virtio-net: TCP upload 64 MiB to L1 over TAP (s)", |m| {
                &m.put
            }),
        ],
        targets: vec![
            time_target("write throughput", ratio(|m| &m.write)),
            time_target("read throughput", ratio(|m| &m.read)),
            time_target("4 KiB random reads", ratio(|m| &m.rand)),
            time_target("TCP throughput guest -> L1", ratio(|m| &m.put)),
            time_target("TCP throughput L1 -> guest", ratio(|m| &m.get)),
            Target {
                text: format!("VM exits per I/O lower than QEMU's ({ek:.2} vs {eq:.2})"),
                met: ek < eq,
            },
        ],
        notes,
    }
}
