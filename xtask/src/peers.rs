//! The two peers (Kiln and QEMU), their exact command lines for the tiny
//! guest, one validated run of either (plain or under strace), and reading
//! the time to the first `KVM_RUN` out of a strace log.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::sys::{self, Exit, Outcome};

/// Longest a single run may take before it is killed and counted invalid.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Guest RAM given to both peers.
const MEMORY: &str = "128M";

/// The QEMU machine: microvm with every optional device it would otherwise
/// add switched off (the tiny guest needs none of them; this is QEMU's
/// leanest configuration, so the comparison is conservative).
const QEMU_MACHINE: &str = "microvm,x-option-roms=off,rtc=off,isa-serial=off,pit=off,pic=off,\
                            acpi=off,pcie=off,ioapic2=off,auto-kernel-cmdline=off";

/// The strace options used to time the first `KVM_RUN` (log file and
/// command follow).
const STRACE: [&str; 5] = ["-f", "--seccomp-bpf", "-ttt", "-e", "trace=execve,ioctl"];

/// A virtual machine monitor under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// target/x86_64-unknown-linux-gnu/release/kiln.
    Kiln,
    /// qemu-system-x86_64 -M microvm.
    Qemu,
}

impl Peer {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Kiln => "Kiln",
            Peer::Qemu => "QEMU",
        }
    }
}

/// How to run a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Just the peer, for wall time and peak RSS.
    Plain,
    /// The peer with Kiln's `--report-memory` (QEMU: same as `Plain`).
    ReportMemory,
    /// Under strace, for the time to the first `KVM_RUN`.
    Strace,
}

/// Paths shared by every run.
pub struct Env {
    /// The Kiln release binary.
    pub kiln: PathBuf,
    /// The tiny guest image.
    pub tiny: PathBuf,
    /// Scratch directory for stdout/stderr and strace logs.
    pub dir: PathBuf,
}

/// One valid run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Measured from outside.
    pub outcome: Outcome,
    /// Strace runs: first execve to first `KVM_RUN`.
    pub first_run: Option<Duration>,
    /// `--report-memory` runs: Kiln's own (peak RSS KiB, guest resident KiB).
    pub self_report: Option<(u64, u64)>,
}

/// The program and arguments of `peer` running the tiny guest.
pub fn argv(env: &Env, peer: Peer, mode: Mode) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    match peer {
        Peer::Kiln => {
            let mut load = env.tiny.clone().into_os_string();
            load.push(format!("@{:#x}", kiln_guests::TINY_LOAD_ADDR));
            v.push(env.kiln.clone().into_os_string());
            v.extend(["run".into(), "--load".into(), load]);
            v.extend([
                "--entry".into(),
                format!("{:#x}", kiln_guests::TINY_ENTRY).into(),
            ]);
            v.extend(["-m".into(), MEMORY.into()]);
            if mode == Mode::ReportMemory {
                v.push("--report-memory".into());
            }
        }
        Peer::Qemu => {
            for a in [
                "qemu-system-x86_64",
                "-M",
                QEMU_MACHINE,
                "-accel",
                "kvm",
                "-cpu",
                "host,-arch-capabilities",
                "-m",
                MEMORY,
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-bios",
            ] {
                v.push(a.into());
            }
            v.push(env.tiny.clone().into_os_string());
            v.extend([
                "-device".into(),
                "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            ]);
        }
    }
    v
}

/// The strace prefix used in [`Mode::Strace`] runs, with its log file.
pub fn strace_prefix(log: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["strace".into()];
    v.extend(STRACE.iter().map(OsString::from));
    v.extend(["-o".into(), log.as_os_str().to_owned()]);
    v
}

/// A command line as one shell-like string (for reports).
pub fn display(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `peer` once. `Ok(Err(reason))` is a run that completed but is not
/// valid (wrong exit status, unexpected stderr, no `KVM_RUN` in the trace).
pub fn run_once(env: &Env, peer: Peer, mode: Mode) -> Result<Result<Sample, String>> {
    let tag = peer.name().to_lowercase();
    let out_path = env.dir.join(format!("{tag}.stdout"));
    let err_path = env.dir.join(format!("{tag}.stderr"));
    let log_path = env.dir.join(format!("{tag}.strace"));
    let mut args = argv(env, peer, mode);
    if mode == Mode::Strace {
        let mut full = strace_prefix(&log_path);
        full.append(&mut args);
        args = full;
    }
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).context("creating the stdout file")?)
        .stderr(File::create(&err_path).context("creating the stderr file")?);
    let outcome = sys::run_measured(&mut cmd, RUN_TIMEOUT)?;
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let stdout_len = fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);

    if outcome.exit != Exit::Code(1) {
        return Ok(Err(format!(
            "exit {:?} (expected status 1); stderr: {}",
            outcome.exit,
            stderr.trim()
        )));
    }
    if stdout_len != 0 {
        return Ok(Err(format!(
            "{stdout_len} bytes on stdout from a silent guest"
        )));
    }
    let mut self_report = None;
    if peer == Peer::Kiln && mode == Mode::ReportMemory {
        match parse_memory_report(&stderr) {
            Some(r) => self_report = Some(r),
            None => {
                return Ok(Err(format!(
                    "stderr is not one kiln-memory line: {stderr:?}"
                )))
            }
        }
    } else if !stderr.is_empty() {
        return Ok(Err(format!("unexpected stderr: {}", stderr.trim())));
    }
    let mut first_run = None;
    if mode == Mode::Strace {
        let log = fs::read_to_string(&log_path).context("reading the strace log")?;
        match first_kvm_run(&log) {
            Some(d) => first_run = Some(d),
            None => return Ok(Err("no execve/KVM_RUN pair in the strace log".into())),
        }
    }
    Ok(Ok(Sample {
        outcome,
        first_run,
        self_report,
    }))
}

/// Parse `kiln-memory: peak_rss_kib=N guest_resident_kib=M` (the only line).
fn parse_memory_report(stderr: &str) -> Option<(u64, u64)> {
    let mut lines = stderr.lines();
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let rest = line.strip_prefix("kiln-memory: ")?;
    let mut peak = None;
    let mut guest = None;
    for field in rest.split_whitespace() {
        let (k, v) = field.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "peak_rss_kib" => peak = Some(v),
            "guest_resident_kib" => guest = Some(v),
            _ => {}
        }
    }
    Some((peak?, guest?))
}

/// From a `strace -f -ttt` log: the time from the first `execve` to the
/// first ioctl that is a `KVM_RUN` (its start; it may be `<unfinished ...>`).
pub fn first_kvm_run(log: &str) -> Option<Duration> {
    let mut start = None;
    for line in log.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        // With -f, lines start with the pid; the timestamp follows.
        let ts = if first.contains('.') {
            first
        } else {
            fields.next().unwrap_or_default()
        };
        let Some(t) = parse_micros(ts) else { continue };
        if start.is_none() && line.contains(" execve(") {
            start = Some(t);
        } else if let Some(s) = start {
            if line.contains(" ioctl(") && line.contains(", KVM_RUN") {
                return Some(Duration::from_micros(t.checked_sub(s)?));
            }
        }
    }
    None
}

/// `SECONDS.MICROS` (strace -ttt) to microseconds, without float rounding.
fn parse_micros(ts: &str) -> Option<u64> {
    let (s, us) = ts.split_once('.')?;
    if us.len() != 6 {
        return None;
    }
    Some(s.parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_log() {
        let log = "\
100 1795609711.613829 execve(\"/k\", [\"/k\"], 0x7ffc /* 20 vars */) = 0
100 1795609711.616286 ioctl(3, KVM_CREATE_VM, 0) = 4
101 1795609711.618558 ioctl(6, KVM_RUN <unfinished ...>
101 1795609711.618900 <... ioctl resumed>, 0) = 0
";
        assert_eq!(first_kvm_run(log), Some(Duration::from_micros(4729)));
        assert_eq!(
            first_kvm_run("100 1.000000 ioctl(6, KVM_RUN, 0) = 0\n"),
            None
        );
    }

    #[test]
    fn memory_line() {
        let s = "kiln-memory: peak_rss_kib=2596 guest_resident_kib=68\n";
        assert_eq!(parse_memory_report(s), Some((2596, 68)));
        assert_eq!(parse_memory_report("kiln: error\n"), None);
        assert_eq!(parse_memory_report(&format!("{s}kiln: x\n")), None);
    }
}
