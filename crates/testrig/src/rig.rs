//! Running batches of `kiln` invocations on a real KVM.
//!
//! [`Host::detect`] decides where: [`Host::Direct`] when this machine has hardware
//! virtualization (vmx or svm) and /dev/kvm, else [`Host::Rig`]: QEMU 10 boots "L1" (a
//! Debian kernel that loads kvm-amd on a TCG-emulated AMD-V CPU with nested paging) and
//! Kiln runs there (see the private `l1` module). A batch is booted into one L1, because
//! every L1 boot costs seconds.
//!
//! A [`RunSpec`] is one invocation: Kiln's arguments, the files they refer to as
//! `{file:NAME}` (and `{kiln}`, the kiln binary where the run happens, for shell
//! scripts), standard input and a timeout. Each produces a [`RunResult`]. A run may
//! name another program than Kiln ([`RunSpec::program`], e.g. a peer VMM for a
//! benchmark); [`Batch::carry_program`] and [`Batch::carry_file`] bring such programs
//! (with their shared libraries) and their data files into L1 at their host paths.

use crate::initramfs::Source;
use crate::{artifacts_dir, err, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where Kiln's real-KVM runs happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// This machine has hardware virtualization and /dev/kvm: run Kiln here.
    Direct,
    /// Boot L1 with this QEMU (10 or later) and run Kiln inside it.
    Rig {
        /// The qemu-system-x86_64 binary.
        qemu: PathBuf,
    },
}

impl Host {
    /// Direct when /proc/cpuinfo has vmx or svm and /dev/kvm exists, else the rig (which
    /// needs qemu-system-x86_64 10). `KILN_TESTRIG_HOST=direct|rig` forces a choice.
    /// Never "skip": when neither works, this fails with what to install.
    pub fn detect() -> Result<Host> {
        match std::env::var("KILN_TESTRIG_HOST").as_deref() {
            Ok("direct") => return Ok(Host::Direct),
            Ok("rig") => return Self::rig(),
            Ok(other) => return Err(err!("KILN_TESTRIG_HOST={other}: want 'direct' or 'rig'")),
            Err(_) => {}
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw_virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hw_virt && Path::new("/dev/kvm").exists() {
            return Ok(Host::Direct);
        }
        Self::rig()
    }

    fn rig() -> Result<Host> {
        let qemu = PathBuf::from("qemu-system-x86_64");
        let fix = "run `bash scripts/setup.sh test` (installs qemu-system-x86 10 from bookworm-backports)";
        let out = Command::new(&qemu).arg("--version").output().map_err(|e| {
            err!(
                "no hardware virtualization here, and the rig's {} cannot run ({e}): {fix}",
                qemu.display()
            )
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = text
            .split("version ")
            .nth(1)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.trim().parse::<u32>().ok());
        match major {
            Some(m) if m >= 10 => Ok(Host::Rig { qemu }),
            _ => Err(err!(
                "the rig needs qemu-system-x86_64 10 or later, found {:?}: {fix}",
                text.lines().next().unwrap_or("")
            )),
        }
    }

    /// Whether runs go through L1.
    pub fn is_rig(&self) -> bool {
        matches!(self, Host::Rig { .. })
    }
}

/// One `kiln` invocation.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Unique name within the batch.
    pub name: String,
    /// Kiln's arguments; `{file:NAME}` anywhere in one is replaced by the path of file
    /// NAME where the run happens.
    pub args: Vec<String>,
    /// Files the run needs, by name.
    pub files: Vec<(String, Source)>,
    /// Standard input (else /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// Kill the run (SIGKILL) after this long.
    pub timeout_secs: u64,
    /// Run this program instead of the batch's kiln binary.
    pub(crate) program: Option<PathBuf>,
}

impl RunSpec {
    /// A run with these arguments, no files, no input and a 120 s timeout.
    pub fn new<S: Into<String>>(name: &str, args: impl IntoIterator<Item = S>) -> Self {
        RunSpec {
            name: name.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            files: Vec::new(),
            stdin: None,
            timeout_secs: 120,
            program: None,
        }
    }

    /// Run `path` instead of the batch's kiln binary. The path must exist where the run
    /// happens: on a direct host as it is, in L1 through [`Batch::carry_program`] (or
    /// busybox's applets, e.g. `/bin/sh`, which L1 always has).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Carry a file, referred to in the arguments as `{file:NAME}`.
    pub fn file(mut self, name: &str, source: impl Into<Source>) -> Self {
        self.files.push((name.to_string(), source.into()));
        self
    }

    /// Feed these bytes to standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Set the timeout.
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// The arguments with each `{file:NAME}` replaced by `path_of(NAME)`.
    pub(crate) fn resolve_args(
        &self,
        path_of: impl Fn(usize) -> String,
        kiln: &str,
    ) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            let arg = arg.replace("{kiln}", kiln);
            let mut s = String::new();
            let mut rest = arg.as_str();
            while let Some(at) = rest.find("{file:") {
                s.push_str(&rest[..at]);
                let after = &rest[at + 6..];
                let end = after
                    .find('}')
                    .ok_or_else(|| err!("run {}: unclosed {{file: in {arg:?}", self.name))?;
                let name = &after[..end];
                let i = self
                    .files
                    .iter()
                    .position(|(n, _)| n == name)
                    .ok_or_else(|| err!("run {}: {arg:?} names no file {name:?}", self.name))?;
                s.push_str(&path_of(i));
                rest = &after[end + 1..];
            }
            s.push_str(rest);
            out.push(s);
        }
        Ok(out)
    }

    fn check(&self) -> Result<()> {
        for (i, (n, _)) in self.files.iter().enumerate() {
            if n.is_empty() || n.contains(['/', '}']) || self.files[..i].iter().any(|(m, _)| m == n)
            {
                return Err(err!("run {}: bad or duplicate file name {n:?}", self.name));
            }
        }
        Ok(())
    }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// The run's name.
    pub name: String,
    /// The exit status as a shell reports it (128+N after signal N); `None` when the run
    /// timed out and was killed.
    pub status: Option<i32>,
    /// Everything Kiln wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything Kiln wrote to stderr.
    pub stderr: Vec<u8>,
    /// Wall time of the run where it ran (in L1: 10 ms resolution, from /proc/uptime).
    pub seconds: f64,
    /// Rig only: L1 kernel messages logged during the run.
    pub l1_kernel_log: String,
}

impl RunResult {
    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Whether Kiln ended this run because its guest triple-faulted (exit status 2, "guest
    /// reset by a triple fault"). In the rig a 2-vCPU Linux guest sometimes does that for
    /// no reason of its own, QEMU's guests too (README.md, "The Linux test rig");
    /// [`Batch::execute_rerunning_rig_triple_faults`] reruns the batch once then.
    pub fn guest_triple_faulted(&self) -> bool {
        self.status == Some(2) && self.stderr_text().contains("guest reset by a triple fault")
    }
}

/// What a batch did.
#[derive(Debug, Clone)]
pub struct BatchResult {
    /// One result per run, in the batch's order.
    pub runs: Vec<RunResult>,
    /// Rig only: L1's whole serial console (also kept in
    /// `target/kiln-artifacts/rig-last-console.log`).
    pub l1_console: Option<String>,
    /// Rig only: wall time from starting QEMU to the first run starting.
    pub boot_seconds: Option<f64>,
    /// Wall time of the whole batch (preparation, boot, runs).
    pub total_seconds: f64,
}

impl BatchResult {
    /// The result of the run called `name` (panics if there is none: a test bug).
    pub fn run(&self, name: &str) -> &RunResult {
        self.runs
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no run named {name:?} in the batch"))
    }
}

/// A host file the batch brings into L1 at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carried {
    /// The path, on the host and in L1.
    pub(crate) path: PathBuf,
    /// An executable: its `ldd` libraries come too, and it is made executable.
    pub(crate) program: bool,
}

/// A callback told about each run as it ends: its name, status (as in
/// [`RunResult::status`]) and seconds.
type RunEnd = dyn Fn(&str, Option<i32>, f64) + Send + Sync;

/// [`Batch::on_run_end`]'s callback.
#[derive(Clone)]
pub(crate) struct Progress(pub(crate) Arc<RunEnd>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// A list of runs of one `kiln` binary (and, optionally, other programs), executed
/// together.
#[derive(Debug, Clone)]
pub struct Batch {
    pub(crate) kiln: PathBuf,
    pub(crate) runs: Vec<RunSpec>,
    pub(crate) timeout_secs: Option<u64>,
    pub(crate) carried: Vec<Carried>,
    pub(crate) progress: Option<Progress>,
}

impl Batch {
    /// An empty batch for this kiln binary (tests pass `env!("CARGO_BIN_EXE_kiln")`).
    pub fn new(kiln: impl Into<PathBuf>) -> Self {
        Batch {
            kiln: kiln.into(),
            runs: Vec::new(),
            timeout_secs: None,
            carried: Vec::new(),
            progress: None,
        }
    }

    /// Call `f(name, status, seconds)` as each run ends, while the batch goes on (long
    /// batches, e.g. benchmarks, use it to show progress). In the rig the status and
    /// time come from L1's console line for the run, as in its [`RunResult`].
    pub fn on_run_end(
        mut self,
        f: impl Fn(&str, Option<i32>, f64) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(Progress(Arc::new(f)));
        self
    }

    /// Bring the host program at `path` (absolute) into L1 at the same path, with the
    /// shared libraries `ldd` lists for it, for runs that name it in
    /// [`RunSpec::program`]. A direct host already has it; there this only checks that
    /// it exists.
    pub fn carry_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.carried.push(Carried {
            path: path.into(),
            program: true,
        });
        self
    }

    /// Bring the host file at `path` (absolute; symlinks followed) into L1 at the same
    /// path, e.g. a firmware image a carried program opens. A direct host already has
    /// it; there this only checks that it exists.
    pub fn carry_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.carried.push(Carried {
            path: path.into(),
            program: false,
        });
        self
    }

    /// Add a run.
    pub fn run(mut self, spec: RunSpec) -> Self {
        self.runs.push(spec);
        self
    }

    /// Kill the whole batch (QEMU included) after this long. Default: 180 s for booting
    /// plus each run's timeout plus 10 s per run.
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }

    /// The batch-level deadline.
    pub(crate) fn deadline(&self) -> Duration {
        let default = 180 + self.runs.iter().map(|r| r.timeout_secs + 10).sum::<u64>();
        Duration::from_secs(self.timeout_secs.unwrap_or(default))
    }

    /// Run every spec on `host`; fails (with L1's console tail in the rig) when the batch
    /// cannot run or does not finish, not when a run exits non-zero.
    pub fn execute(&self, host: &Host) -> Result<BatchResult> {
        if self.runs.is_empty() {
            return Err(err!("empty batch"));
        }
        for (i, r) in self.runs.iter().enumerate() {
            r.check()?;
            if r.name.is_empty() || self.runs[..i].iter().any(|o| o.name == r.name) {
                return Err(err!("bad or duplicate run name {:?}", r.name));
            }
        }
        if !self.kiln.is_file() {
            return Err(err!("kiln binary {} does not exist", self.kiln.display()));
        }
        for c in &self.carried {
            if !c.path.is_absolute() || !c.path.is_file() {
                return Err(err!(
                    "carried file {} is not an absolute path to a file",
                    c.path.display()
                ));
            }
        }
        match host {
            Host::Direct => self.execute_direct(),
            Host::Rig { qemu } => crate::l1::execute(self, qemu),
        }
    }

    /// [`execute`](Self::execute), and in the rig once more when a run ended in a guest
    /// triple fault ([`RunResult::guest_triple_faulted`]) that the test did not provoke:
    /// the runs named in `deliberate` are expected to triple-fault. Under nested TCG a
    /// multi-vCPU Linux guest sometimes resets for no reason of its own, QEMU's guests too
    /// (README.md, "The Linux test rig"); the rerun is announced on stderr, and a fault
    /// that comes back is the test's to report.
    pub fn execute_rerunning_rig_triple_faults(
        &self,
        host: &Host,
        deliberate: &[&str],
    ) -> Result<BatchResult> {
        let result = self.execute(host)?;
        if !host.is_rig() {
            return Ok(result);
        }
        let faulted = result
            .runs
            .iter()
            .find(|r| r.guest_triple_faulted() && !deliberate.contains(&r.name.as_str()));
        match faulted {
            Some(r) => {
                eprintln!(
                    "{}: the guest reset by a triple fault (the rig's nested-TCG fault); running the batch again",
                    r.name
                );
                self.execute(host)
            }
            None => Ok(result),
        }
    }

    fn execute_direct(&self) -> Result<BatchResult> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let started = Instant::now();
        let dir = artifacts_dir().join(format!(
            "direct-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let result = self
            .runs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let program = spec.program.as_ref().unwrap_or(&self.kiln);
                let r = run_direct(program, &self.kiln, spec, &dir, i)?;
                if let Some(p) = &self.progress {
                    (p.0)(&r.name, r.status, r.seconds);
                }
                Ok(r)
            })
            .collect::<Result<Vec<_>>>();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(BatchResult {
            runs: result?,
            l1_console: None,
            boot_seconds: None,
            total_seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Run one spec on this machine with `program` (kiln, or the spec's own program).
fn run_direct(
    program: &Path,
    kiln: &Path,
    spec: &RunSpec,
    dir: &Path,
    index: usize,
) -> Result<RunResult> {
    let mut paths = Vec::new();
    for (name, source) in &spec.files {
        paths.push(match source {
            Source::Path(p) => {
                std::path::absolute(p).ctx(|| format!("resolving {}", p.display()))?
            }
            Source::Bytes(b) => {
                let p = dir.join(format!("{index}-{name}"));
                std::fs::write(&p, b).ctx(|| format!("writing {}", p.display()))?;
                p
            }
        });
    }
    let args = spec.resolve_args(
        |i| paths[i].to_string_lossy().into_owned(),
        &kiln.to_string_lossy(),
    )?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(&args)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("run {}: starting {}", spec.name, program.display()))?;
    let feeder = child.stdin.take().map(|mut w| {
        let input = spec.stdin.clone().unwrap_or_default();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        })
    });
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = started + Duration::from_secs(spec.timeout_secs);
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .ctx(|| format!("run {}: waiting", spec.name))?
        {
            break s;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ctx(|| format!("run {}: waiting", spec.name))?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(f) = feeder {
        let _ = f.join();
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(RunResult {
        name: spec.name.clone(),
        status: match (timed_out, status.code(), status.signal()) {
            (true, _, _) => None,
            (_, Some(c), _) => Some(c),
            (_, None, sig) => Some(128 + sig.unwrap_or(0)),
        },
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        seconds,
        l1_kernel_log: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_file_placeholders() {
        let spec = RunSpec::new(
            "r",
            [
                "run",
                "--load",
                "{file:code}@0xf0000",
                "{file:a}{file:code}",
            ],
        )
        .file("code", "bytes")
        .file("a", PathBuf::from("/x"));
        let args = spec.resolve_args(|i| format!("/p{i}"), "/k").unwrap();
        assert_eq!(args, ["run", "--load", "/p0@0xf0000", "/p1/p0"]);
        let bad = RunSpec::new("r", ["{file:nope}"]).resolve_args(|_| String::new(), "/k");
        assert!(bad.unwrap_err().0.contains("nope"));
        assert!(RunSpec::new("r", ["{file:x"])
            .file("x", "")
            .resolve_args(|_| String::new(), "/k")
            .is_err());
        let sh = RunSpec::new("r", ["-c", "{kiln} img read {file:x} 0 1 | md5sum"])
            .file("x", "")
            .resolve_args(|_| "/f".into(), "/rig/bin/kiln")
            .unwrap();
        assert_eq!(sh[1], "/rig/bin/kiln img read /f 0 1 | md5sum");
        assert!(RunSpec::new("r", ["a"]).file("a/b", "").check().is_err());
    }

    #[test]
    fn direct_runs_collect_status_output_input_and_timeouts() {
        let sh = PathBuf::from("/bin/sh");
        let batch = Batch::new(&sh)
            .run(
                RunSpec::new(
                    "echo",
                    ["-c", "cat; echo err >&2; cat \"$0\"; exit 3", "{file:f}"],
                )
                .file("f", "file-bytes")
                .stdin("in|"),
            )
            .run(RunSpec::new("slow", ["-c", "exec sleep 5"]).timeout_secs(1))
            .run(RunSpec::new("killed", ["-c", "kill -9 $$"]));
        let r = batch.execute(&Host::Direct).unwrap();
        let echo = r.run("echo");
        assert_eq!(
            (
                echo.status,
                echo.stdout_text().as_str(),
                echo.stderr_text().as_str()
            ),
            (Some(3), "in|file-bytes", "err\n")
        );
        assert_eq!(r.run("slow").status, None);
        assert!(r.run("slow").seconds < 4.0);
        assert_eq!(r.run("killed").status, Some(137));
        let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = ended.clone();
        let other = Batch::new("/bin/true")
            .carry_program("/bin/sh")
            .run(RunSpec::new("other", ["-c", "echo other; exit 5"]).program(&sh))
            .on_run_end(move |name, status, _| log.lock().unwrap().push((name.to_string(), status)))
            .execute(&Host::Direct)
            .unwrap();
        assert_eq!(other.run("other").stdout_text(), "other\n");
        assert_eq!(*ended.lock().unwrap(), [("other".to_string(), Some(5))]);
        let missing = Batch::new(&sh)
            .carry_file("/nonexistent/firmware.bin")
            .run(RunSpec::new("m", ["-c", ":"]));
        assert!(missing
            .execute(&Host::Direct)
            .unwrap_err()
            .0
            .contains("/nonexistent/firmware.bin"));
        let dup = Batch::new(&sh)
            .run(RunSpec::new("a", ["x"]))
            .run(RunSpec::new("a", ["y"]));
        assert!(dup.execute(&Host::Direct).is_err());
    }
}
