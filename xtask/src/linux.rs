//! `cargo xtask bench linux`: Debian's cloud kernel booted to a userspace marker and to
//! power-off, Kiln vs `qemu-system-x86_64 -M microvm` (also `microvm,rtc=on`) and
//! `-M q35`, all in the same real-KVM host: the rig's L1 (see `kiln_testrig::rig`), or
//! this machine when it has hardware virtualization.
//!
//! The peers run alternately in one batch (one L1 boot). Around every peer run a small
//! shell script (`TRACE`) arms and reads the host kernel's tracing, so every peer is
//! timed the same way from outside, in microseconds on one clock: its `execve`
//! (`sched_process_exec`), its first VM entry (`kvm_entry`, i.e. the first `KVM_RUN`),
//! the guest's marker write to 0xfebff000 (`kvm_mmio`) and the VMM's exit
//! (`sched_process_exit`). The first round is a warm-up that is not timed but counts VM
//! exits by reason with in-kernel histograms (`kvm_exit`, `kvm_userspace_exit`,
//! `kvm_pio`). Rendering is in `linux_report`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_testrig::initramfs::guest_initramfs;
use kiln_testrig::{Artifacts, Batch, BatchResult, Host, RunSpec};

use crate::linux_report;
use crate::linux_trace::{parse_hists, parse_trace, Counts, TRACE};

/// The guest's /init: mark userspace, report the guest's uptime, power off.
pub const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
devmem 0xfebff000 8 1
echo "KILN-BENCH-UPTIME $(cat /proc/uptime)"
poweroff -f
"#;

/// The guest's command line (quiet: every console byte is a VM exit).
pub const CMDLINE: &str = "console=ttyS0 quiet";
/// Guest RAM for every peer.
pub const MEMORY: &str = "256M";

/// The firmware files QEMU opens for these machines (found with strace).
const QEMU_FILES: [&str; 4] = [
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/seabios/bios-microvm.bin",
    "/usr/share/seabios/bios-256k.bin",
];

/// A VMM under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// `kiln run`.
    Kiln,
    /// `qemu-system-x86_64 -M microvm` (under KVM it has no RTC: `rtc=auto` means off).
    Microvm,
    /// `qemu-system-x86_64 -M microvm,rtc=on`: the same with the CMOS RTC, whose absence
    /// makes this kernel poll ports 0x70/0x71 tens of thousands of times.
    MicrovmRtc,
    /// `qemu-system-x86_64 -M q35`.
    Q35,
}

/// Every peer, in the order they run in each round.
pub const PEERS: [Peer; 4] = [Peer::Kiln, Peer::Microvm, Peer::MicrovmRtc, Peer::Q35];

impl Peer {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Kiln => "Kiln",
            Peer::Microvm => "QEMU microvm",
            Peer::MicrovmRtc => "QEMU microvm,rtc=on",
            Peer::Q35 => "QEMU q35",
        }
    }

    /// Short name for table headers.
    pub fn short(self) -> &'static str {
        match self {
            Peer::Kiln => "Kiln",
            Peer::Microvm => "microvm",
            Peer::MicrovmRtc => "microvm,rtc=on",
            Peer::Q35 => "q35",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Peer::Kiln => "kiln",
            Peer::Microvm => "microvm",
            Peer::MicrovmRtc => "microvm-rtc",
            Peer::Q35 => "q35",
        }
    }

    /// The peer's arguments (program first), with `{file:kernel}` and `{file:initrd}`.
    pub fn argv(self, kiln: &str, qemu: &str, count_exits: bool) -> Vec<String> {
        let mut v: Vec<String> = match self {
            Peer::Kiln => [kiln, "run", "--kernel", "{file:kernel}"]
                .map(String::from)
                .to_vec(),
            Peer::Microvm | Peer::MicrovmRtc | Peer::Q35 => {
                qemu_direct_boot(qemu, self.short(), MEMORY)
            }
        };
        let rest: &[&str] = match self {
            Peer::Kiln => &["--initrd", "{file:initrd}", "-m", MEMORY, "--cpus", "1"],
            _ => &["-initrd", "{file:initrd}", "-append", CMDLINE],
        };
        v.extend(rest.iter().map(|s| s.to_string()));
        if self == Peer::Kiln {
            v.extend(["--cmdline".into(), CMDLINE.into(), "--boot-timer".into()]);
            if count_exits {
                v.push("--trace-exits".into());
            }
        }
        v
    }
}

/// QEMU with KVM, one vCPU, `memory`, no default devices or display, the console on
/// stdio, no reboot, and `{file:kernel}` booted directly; the caller adds the initrd,
/// command line and devices.
pub fn qemu_direct_boot(qemu: &str, machine: &str, memory: &str) -> Vec<String> {
    [
        qemu,
        "-M",
        machine,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        memory,
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        "{file:kernel}",
    ]
    .map(String::from)
    .to_vec()
}

/// One timed peer run, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// execve -> first VM entry (host-side start-up).
    pub start_to_kvm_run: f64,
    /// First VM entry -> the guest's marker write.
    pub kvm_run_to_marker: f64,
    /// execve -> marker.
    pub start_to_marker: f64,
    /// execve -> the VMM process's exit.
    pub start_to_exit: f64,
    /// The guest's own uptime right after the marker.
    pub guest_uptime: f64,
    /// Wall time of the run as L1's shell saw it (10 ms resolution).
    pub wall: f64,
    /// Kiln's own boot timer: its start -> marker.
    pub kiln_timer: Option<f64>,
}

/// Everything measured, per peer.
#[derive(Default)]
pub struct Results {
    /// Valid timed runs.
    pub samples: BTreeMap<Peer, Vec<Sample>>,
    /// Reasons for invalid timed runs.
    pub invalid: BTreeMap<Peer, Vec<String>>,
    /// Exit counts from the warm-up run (absent if that run failed).
    pub counts: BTreeMap<Peer, Counts>,
    /// Warm-up problems.
    pub notes: Vec<String>,
}

/// Parse `[--runs N] [--kiln PATH]`.
fn parse(args: &[String]) -> Result<(usize, Option<PathBuf>)> {
    let (mut runs, mut kiln) = (10, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runs" => runs = value()?.parse().context("--runs takes a number")?,
            "--kiln" => kiln = Some(PathBuf::from(value()?)),
            other => bail!(
                "unknown argument '{other}' for bench linux\n\n{}",
                crate::USAGE
            ),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok((runs, kiln))
}

/// Find `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Run the benchmark and print the Markdown report on stdout.
pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let (runs, kiln_arg) = parse(args)?;
    let host = Host::detect().map_err(|e| anyhow::anyhow!("{e}"))?;
    let qemu = which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed: run `bash scripts/setup.sh bench`")?;
    let kiln = match kiln_arg {
        Some(k) => std::path::absolute(&k).context("resolving --kiln")?,
        None => crate::build_kiln(root)?,
    };
    let arts = Artifacts::get().map_err(|e| anyhow::anyhow!("guest artifacts: {e}"))?;
    let initrd = guest_initramfs(&arts.busybox, Some(INIT))
        .and_then(|t| t.to_bytes())
        .map_err(|e| anyhow::anyhow!("building the initramfs: {e}"))?;
    let machine = crate::report::Machine::detect(root);
    // In L1, Kiln is /rig/bin/kiln; a direct host runs it where it is.
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
    let trace = |name: String, what: &str| {
        RunSpec::new(&name, ["{file:trace}", what])
            .program("/bin/sh")
            .file("trace", TRACE)
            .timeout_secs(60)
    };
    let rounds: Vec<String> = std::iter::once("warm-up".to_string())
        .chain((1..=runs).map(|i| i.to_string()))
        .collect();
    for (r, round) in rounds.iter().enumerate() {
        for peer in PEERS {
            let id = format!("{round}-{}", peer.tag());
            let argv = peer.argv(&kiln_at, &qemu_at, r == 0);
            let spec = RunSpec::new(&id, argv[1..].iter().cloned())
                .program(&argv[0])
                .file("kernel", arts.bzimage.as_path())
                .file("initrd", initrd.clone())
                .timeout_secs(if peer == Peer::Kiln { 180 } else { 300 });
            if r == 0 {
                batch = batch.run(trace(format!("trace:count-arm:{id}"), "count-arm"));
            }
            batch = batch
                .run(trace(format!("trace:arm:{id}"), "arm"))
                .run(spec)
                .run(trace(format!("trace:read:{id}"), "read"));
            if r == 0 {
                batch = batch.run(trace(format!("trace:count-read:{id}"), "count-read"));
            }
        }
    }
    let names: Vec<&str> = PEERS.iter().map(|p| p.name()).collect();
    eprintln!(
        "[linux] {} rounds (1 warm-up counting exits + {runs} timed) of {} on {}; \
         ~1 min per round in the rig",
        rounds.len(),
        names.join(", "),
        if host.is_rig() {
            "the rig's L1"
        } else {
            "this host"
        },
    );
    let batch = batch.on_run_end(|name, status, secs| {
        if !name.starts_with("trace:") {
            eprintln!("[linux] {name}: status {status:?} in {secs:.2} s");
        } else if status != Some(0) {
            eprintln!("[linux] {name} FAILED: status {status:?}");
        }
    });
    let result = batch
        .execute(&host)
        .map_err(|e| anyhow::anyhow!("the benchmark batch failed: {e}"))?;
    let results = collect(&result, &rounds, &kiln_at, &qemu_at);
    for peer in PEERS {
        let n = results.samples.get(&peer).map_or(0, Vec::len);
        if n * 2 < runs {
            let why = results.invalid.get(&peer).and_then(|v| v.first());
            bail!(
                "{}: only {n} of {runs} runs were valid; first problem: {}",
                peer.name(),
                why.map_or("none", String::as_str)
            );
        }
    }
    let env = linux_report::Env {
        machine,
        host_is_rig: host.is_rig(),
        boot_seconds: result.boot_seconds,
        total_seconds: result.total_seconds,
        l1_console: result.l1_console.unwrap_or_default(),
        kernel: arts.kernel_package.clone(),
        initrd_bytes: initrd.len(),
        runs,
    };
    print!("{}", linux_report::markdown(&env, &results));
    Ok(())
}

/// Turn the batch's runs into samples and counts.
fn collect(result: &BatchResult, rounds: &[String], kiln: &str, qemu: &str) -> Results {
    let mut out = Results::default();
    for (r, round) in rounds.iter().enumerate() {
        for peer in PEERS {
            let id = format!("{round}-{}", peer.tag());
            let program = if peer == Peer::Kiln { kiln } else { qemu };
            let sample = measure(result, &id, program);
            if r == 0 {
                let counts = sample.and_then(|_| counts(result, &id));
                match counts {
                    Ok(c) => {
                        out.counts.insert(peer, c);
                    }
                    Err(e) => out.notes.push(format!("{}: warm-up run: {e}", peer.name())),
                }
                continue;
            }
            match sample {
                Ok(s) => out.samples.entry(peer).or_default().push(s),
                Err(e) => {
                    eprintln!("[linux] {id}: invalid: {e}");
                    out.invalid.entry(peer).or_default().push(e);
                }
            }
        }
    }
    out
}

/// One peer run's sample, or why it is invalid.
fn measure(result: &BatchResult, id: &str, program: &str) -> Result<Sample, String> {
    let run = result
        .runs
        .iter()
        .find(|r| r.name == id)
        .ok_or("no such run")?;
    let out = run.stdout_text();
    let err = run.stderr_text();
    if run.status != Some(0) {
        return Err(format!("status {:?}; stderr: {}", run.status, err.trim()));
    }
    let uptime = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("KILN-BENCH-UPTIME "))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .ok_or("the guest printed no uptime")?;
    let trace = result
        .runs
        .iter()
        .find(|r| r.name == format!("trace:read:{id}"))
        .filter(|r| r.status == Some(0))
        .ok_or("reading the trace failed")?;
    let base = Path::new(program).file_name().unwrap_or_default();
    let t = parse_trace(&trace.stdout_text(), &base.to_string_lossy())?;
    let kiln_timer = err
        .lines()
        .find_map(|l| l.strip_prefix("kiln: boot timer: guest marker 0x01 at "))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms / 1e3);
    Ok(Sample {
        start_to_kvm_run: t.entry - t.exec,
        kvm_run_to_marker: t.marker - t.entry,
        start_to_marker: t.marker - t.exec,
        start_to_exit: t.exit - t.exec,
        guest_uptime: uptime,
        wall: run.seconds,
        kiln_timer,
    })
}

/// The exit counts of one warm-up run.
fn counts(result: &BatchResult, id: &str) -> Result<Counts, String> {
    let hist = result
        .runs
        .iter()
        .find(|r| r.name == format!("trace:count-read:{id}"))
        .filter(|r| r.status == Some(0))
        .ok_or("reading the exit histograms failed")?;
    let mut c = parse_hists(&hist.stdout_text());
    if c.hardware.is_empty() {
        return Err("empty kvm_exit histogram".into());
    }
    if let Some(run) = result.runs.iter().find(|r| r.name == id) {
        c.kiln_total = run
            .stderr_text()
            .lines()
            .find_map(|l| l.strip_prefix("--- VM exits: "))
            .and_then(|v| v.trim_end_matches(" ---").parse().ok());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_commands() {
        let k = Peer::Kiln.argv("/k", "/q", true).join(" ");
        assert_eq!(
            k,
            "/k run --kernel {file:kernel} --initrd {file:initrd} -m 256M --cpus 1 \
             --cmdline console=ttyS0 quiet --boot-timer --trace-exits"
        );
        let q = Peer::Q35.argv("/k", "/q", false).join(" ");
        assert!(
            q.starts_with("/q -M q35 -accel kvm -cpu host -m 256M -smp 1"),
            "{q}"
        );
        assert!(q.ends_with("-append console=ttyS0 quiet"), "{q}");
    }
}
