//! The rig's L1: an initramfs holding busybox, the KVM modules, the kiln binary with
//! its shared libraries, the batch's carried programs (with theirs) and files, and
//! every run's files; an `/init` that loads kvm-amd and runs the batch; QEMU (TCG, AMD-V
//! with nested paging) to boot it; and the parser that turns L1's serial console back
//! into [`RunResult`]s.
//!
//! Console protocol (one line each, `<i>` is the run's index): `KILN-RIG-KVM-READY`
//! (or `KILN-RIG-NO-KVM` then a dmesg tail), then per run `KILN-RIG-BEGIN <i>`,
//! `KILN-RIG-STATUS <i> <status> <timed-out 0|1> <uptime before> <uptime after>`,
//! `KILN-RIG-STDOUT <i> <bytes>` + base64 lines + `KILN-RIG-STDOUT-END <i>`, the same for
//! STDERR, `KILN-RIG-KMSG <i> <line>` for kernel messages, `KILN-RIG-END <i>`; finally
//! `KILN-RIG-DONE`. A run whose process survives SIGKILL (stuck in L1's kernel) adds a
//! STUCK block (its threads' kernel stacks) and `KILN-RIG-WEDGED <i>`, and L1 powers off. Base64 and byte counts let binary output survive the serial line.

use crate::artifacts::Artifacts;
use crate::initramfs::{add_busybox, Initramfs, Source};
use crate::rig::{Batch, BatchResult, RunResult};
use crate::{artifacts_dir, err, tail, Context, Error, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One L1 at a time: each wants both of this machine's cores.
static ONE_L1: Mutex<()> = Mutex::new(());

/// Lines of L1's console quoted in errors.
const TAIL_LINES: usize = 60;

/// Words that start the error of a batch whose L1 wedged (see [`execute`]).
const WEDGED: &str = "L1 wedged:";
/// Words in the error of a batch whose L1 stopped (reset, powered off or hung) early.
const L1_STOPPED: &str = "L1 stopped before finishing the batch";
/// Seconds past a run's timeout after which its missing status means L1 hung.
const OVERDUE_SLACK_SECS: u64 = 90;
/// Seconds between L1's heartbeats (a line on its second serial port).
const HEARTBEAT_SECS: u64 = 10;
/// Seconds without a heartbeat after which L1 counts as hung (its userspace got no time
/// in six beats: both vCPUs are stuck, as seen in the rig while QEMU's guest ran).
const HEARTBEAT_SILENCE_SECS: u64 = 60;

/// Boot L1 with `qemu`, run the batch in it, and collect the results.
///
/// Faults of the rig itself (QEMU's TCG emulation of AMD-V, which a user's hardware KVM
/// does not run) end a batch early now and then: a run whose process SIGKILL cannot end
/// because its vCPU thread spins inside L1's KVM (soft-lockup warnings), L1 resetting or
/// panicking in the middle of a run (its kernel's page-fault handler recursing during
/// KVM_RUN), and L1 going silent with both its vCPUs idle. A Kiln process cannot cause
/// any of these without a bug in L1's kernel or in QEMU, so the whole batch is then run
/// again in a fresh L1, up to [`L1_ATTEMPTS`] boots in all; what happened (the stuck
/// threads' kernel stacks, L1's console tail, QEMU's own log) is printed on stderr each
/// time, and the last failure fails the batch. L1 beats every [`HEARTBEAT_SECS`] on its
/// second serial port; a run during which it stops beating for
/// [`HEARTBEAT_SILENCE_SECS`] means L1 hung, found in a minute rather than at the run's
/// timeout.
pub(crate) fn execute(batch: &Batch, qemu: &Path) -> Result<BatchResult> {
    let _one = ONE_L1.lock().unwrap_or_else(|e| e.into_inner());
    let mut attempt = 1;
    loop {
        match execute_once(batch, qemu) {
            Err(e)
                if attempt < L1_ATTEMPTS && (e.0.contains(WEDGED) || e.0.contains(L1_STOPPED)) =>
            {
                eprintln!(
                    "rig: {e}\nrig: L1 boot {attempt} of {L1_ATTEMPTS} failed; running the whole \
                     batch again in a fresh L1"
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// L1 boots a batch may take when the rig itself fails (see [`execute`]).
const L1_ATTEMPTS: u32 = 3;

/// One L1 boot for the batch.
fn execute_once(batch: &Batch, qemu: &Path) -> Result<BatchResult> {
    let started = Instant::now();
    let arts = Artifacts::get()?;
    let (mut tree, args) = build_tree(batch, &arts)?;
    tree.file("/init", 0o755, init_script(batch, &args));
    let initrd = artifacts_dir().join(format!("rig-l1-{}.cpio", std::process::id()));
    tree.write_file(&initrd)?;
    let booted = boot(qemu, &arts, &initrd, started + batch.deadline(), batch);
    let _ = std::fs::remove_file(&initrd);
    let (console, boot_seconds, problem) = booted?;
    let log = artifacts_dir().join("rig-last-console.log");
    let _ = std::fs::write(&log, &console);
    let fail = |what: String| {
        err!(
            "rig: {what}\n--- last {TAIL_LINES} lines of L1's console (all of it: {}) ---\n{}",
            log.display(),
            tail(&console, TAIL_LINES)
        )
    };
    if let Some(p) = problem {
        return Err(fail(p));
    }
    if console.contains("KILN-RIG-NO-KVM") {
        return Err(fail(
            "L1 has no /dev/kvm after loading irqbypass, kvm and kvm-amd".into(),
        ));
    }
    let runs = parse_console(&console, batch).map_err(|e| fail(e.0))?;
    Ok(BatchResult {
        runs,
        l1_console: Some(console),
        boot_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

/// L1's file tree (without /init) and each run's arguments as L1 sees them.
fn build_tree(batch: &Batch, arts: &Artifacts) -> Result<(Initramfs, Vec<Vec<String>>)> {
    let mut tree = Initramfs::with_console();
    add_busybox(&mut tree, &arts.busybox)?;
    for d in ["/proc", "/sys", "/tmp", "/var/tmp", "/rig/out"] {
        tree.dir(d, 0o755);
    }
    for m in &arts.modules {
        let name = m.file_name().unwrap_or_default().to_string_lossy();
        tree.file(&format!("/rig/modules/{name}"), 0o644, m.as_path());
    }
    tree.file("/rig/bin/kiln", 0o755, batch.kiln.as_path());
    for lib in shared_libraries(&batch.kiln)? {
        let at = lib.to_string_lossy().into_owned();
        tree.file(&at, 0o755, lib.as_path());
    }
    for c in &batch.carried {
        let at = c.path.to_string_lossy().into_owned();
        let real = c
            .path
            .canonicalize()
            .ctx(|| format!("carried file {}", c.path.display()))?;
        tree.file(&at, if c.program { 0o755 } else { 0o644 }, real.as_path());
        if c.program {
            for lib in shared_libraries(&c.path)? {
                let at = lib.to_string_lossy().into_owned();
                tree.file(&at, 0o755, lib.as_path());
            }
        }
    }
    // Host files are copied once however many runs use them.
    let mut host_files: HashMap<std::path::PathBuf, String> = HashMap::new();
    let mut all_args = Vec::new();
    for (i, spec) in batch.runs.iter().enumerate() {
        let mut paths = Vec::new();
        for (name, source) in &spec.files {
            let at = match source {
                Source::Bytes(b) => {
                    let at = format!("/rig/runs/{i}/{name}");
                    tree.file(&at, 0o644, b.clone());
                    at
                }
                Source::Path(p) => {
                    let real = p
                        .canonicalize()
                        .ctx(|| format!("run {}: file {}", spec.name, p.display()))?;
                    let n = host_files.len();
                    host_files
                        .entry(real.clone())
                        .or_insert_with(|| {
                            let base = real.file_name().unwrap_or_default().to_string_lossy();
                            let at = format!("/rig/files/{n}/{base}");
                            tree.file(&at, 0o644, real.as_path());
                            at
                        })
                        .clone()
                }
            };
            paths.push(at);
        }
        if let Some(input) = &spec.stdin {
            tree.file(&format!("/rig/stdin/{i}"), 0o644, input.clone());
        }
        all_args.push(spec.resolve_args(|k| paths[k].clone(), "/rig/bin/kiln")?);
    }
    Ok((tree, all_args))
}

/// The libraries `ldd` lists for `binary`, dynamic loader included (none if static).
fn shared_libraries(binary: &Path) -> Result<Vec<std::path::PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .ctx(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Ok(Vec::new()); // "not a dynamic executable"
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(err!("ldd {}: {line}", binary.display()));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(path.into());
        }
    }
    Ok(libs)
}

/// Quote `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// L1's /init: load KVM, run each spec with a watchdog, report on the console, power off.
fn init_script(batch: &Batch, args: &[Vec<String>]) -> String {
    let mut s = r#"#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
read up _ < /proc/uptime
echo "KILN-RIG-INIT $up"
for m in irqbypass kvm kvm-amd tun; do
    insmod /rig/modules/$m.ko || echo "KILN-RIG-INSMOD-FAILED $m"
done
if [ ! -c /dev/kvm ]; then
    echo KILN-RIG-NO-KVM
    dmesg | tail -n 40
    poweroff -f
fi
dmesg -c | grep -i -e kvm -e svm -e 'nested paging' | sed 's/^/KILN-RIG-DMESG /'
echo 1 > /proc/sys/kernel/printk
read up _ < /proc/uptime
echo "KILN-RIG-KVM-READY $up"
# L1's pulse, on its second serial port (apart from the console, whose base64 dumps a
# line could cut in two): while it beats, L1 runs; when it stops, L1 hung.
( while :; do echo beat > /dev/ttyS1; sleep {heartbeat}; done ) &
dump() {
    n=$(wc -c < "$3")
    echo "KILN-RIG-$2 $1 $n"
    base64 "$3"
    echo "KILN-RIG-$2-END $1"
}
# A run that SIGKILL cannot end is stuck in L1's kernel: report where, and end the batch
# (a wedged CPU makes the later runs' results meaningless).
trap : USR1
stuck() {
    for t in /proc/$2/task/*; do
        echo "== thread $(cat $t/comm) state $(sed -n 's/^State:[[:space:]]*//p' $t/status)"
        cat $t/stack
    done > /rig/out/$1.stack 2>&1
    echo l > /proc/sysrq-trigger
    sleep 1
    echo "KILN-RIG-STATUS $1 137 1 $t0 $t1"
    dump $1 STDOUT /rig/out/$1.out
    dump $1 STDERR /rig/out/$1.err
    dump $1 STUCK /rig/out/$1.stack
    dmesg -c | sed "s/^/KILN-RIG-KMSG $1 /"
    echo "KILN-RIG-END $1"
    echo "KILN-RIG-WEDGED $1"
    poweroff -f
}
"#
    .replace("{heartbeat}", &HEARTBEAT_SECS.to_string());
    for (i, (spec, argv)) in batch.runs.iter().zip(args).enumerate() {
        let argv: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        let stdin = match spec.stdin {
            Some(_) => format!("/rig/stdin/{i}"),
            None => "/dev/null".into(),
        };
        s.push_str(&format!(
            r#"
echo "KILN-RIG-BEGIN {i}"
rm -f /rig/out/timedout /rig/out/stuck
read t0 _ < /proc/uptime
{program} {argv} < {stdin} > /rig/out/{i}.out 2> /rig/out/{i}.err &
pid=$!
( sleep {timeout}; kill -0 $pid 2>/dev/null && {{ : > /rig/out/timedout; kill -TERM $pid; sleep 5; kill -9 $pid 2>/dev/null; }}
  sleep 20; kill -0 $pid 2>/dev/null && {{ : > /rig/out/stuck; kill -USR1 $$; }} ) &
dog=$!
wait $pid
st=$?
read t1 _ < /proc/uptime
to=0; [ -e /rig/out/timedout ] && to=1
if [ -e /rig/out/stuck ]; then stuck {i} $pid; fi
kill $dog 2>/dev/null
echo "KILN-RIG-STATUS {i} $st $to $t0 $t1"
dump {i} STDOUT /rig/out/{i}.out
dump {i} STDERR /rig/out/{i}.err
dmesg -c | sed 's/^/KILN-RIG-KMSG {i} /'
echo "KILN-RIG-END {i}"
"#,
            argv = argv.join(" "),
            program = match &spec.program {
                Some(p) => quote(&p.to_string_lossy()),
                None => "/rig/bin/kiln".into(),
            },
            timeout = spec.timeout_secs,
        ));
    }
    s.push_str("\necho KILN-RIG-DONE\npoweroff -f\n");
    s
}

/// Boot L1 and collect its console until QEMU exits or `deadline` passes: (console,
/// host seconds from start to the first run, a problem if L1 did not finish cleanly).
fn boot(
    qemu: &Path,
    arts: &Artifacts,
    initrd: &Path,
    deadline: Instant,
    batch: &Batch,
) -> Result<(String, Option<f64>, Option<String>)> {
    let qemu_log = artifacts_dir().join("rig-last-qemu.log");
    let _ = std::fs::remove_file(&qemu_log);
    let heartbeat = artifacts_dir().join("rig-heartbeat.log");
    let _ = std::fs::remove_file(&heartbeat);
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "EPYC,+svm,+npt",
        "-m",
        "3072",
    ])
    .args([
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    // L1's heartbeat (see the init script) arrives on its second serial port, here.
    .arg("-serial")
    .arg(format!("file:{}", heartbeat.display()))
    .arg("-kernel")
    .arg(&arts.bzimage)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=1 quiet"])
    // Why L1 stopped, in QEMU's words: CPU resets with the state before them (a triple
    // fault of L1 says "Triple fault"), the cause of the shutdown request, and what the
    // guest did that QEMU calls invalid or does not implement.
    .args([
        "-d",
        "cpu_reset,guest_errors,unimp,trace:qemu_system_shutdown_request",
        "-D",
    ])
    .arg(&qemu_log)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().ctx(|| format!("starting {}", qemu.display()))?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    std::thread::spawn(move || loop {
        let mut line = Vec::new();
        match stdout.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errs = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let mut console = String::new();
    let mut boot_seconds = None;
    let mut problem = None;
    // The console as it arrives, for watching a long batch (`tail -f`).
    let mut live = std::fs::File::create(artifacts_dir().join("rig-live-console.log")).ok();
    // The run under way and when its status is overdue: L1's own watchdog reports a run
    // within its timeout plus ~30 s, so silence well past that means L1 itself hung (seen
    // in the rig: both L1 vCPUs idle, no timer firing) and waiting longer is pointless.
    let mut overdue: Option<(usize, Instant)> = None;
    // The heartbeat file's length and when it last grew (None before the first beat).
    let mut beat: Option<(u64, Instant)> = None;
    let silence = Duration::from_secs(HEARTBEAT_SILENCE_SECS);
    loop {
        let len = std::fs::metadata(&heartbeat).map_or(0, |m| m.len());
        if len > beat.map_or(0, |b| b.0) {
            beat = Some((len, Instant::now()));
        }
        if let (Some((i, _)), Some((_, at))) = (overdue, beat) {
            if at.elapsed() > silence {
                let _ = child.kill();
                problem = Some(format!(
                    "{L1_STOPPED}: L1 went silent, no heartbeat for {HEARTBEAT_SILENCE_SECS} s \
                     during run {:?}; killed QEMU",
                    batch.runs[i].name
                ));
                break;
            }
        }
        let until = overdue.map_or(deadline, |(_, t)| t.min(deadline));
        // Wake at least every 5 s to look at the heartbeat.
        let left = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(5));
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = String::from_utf8_lossy(&line).replace('\r', "");
                if let Some(f) = live.as_mut() {
                    let _ = std::io::Write::write_all(f, line.as_bytes());
                }
                if let Some(i) = line
                    .trim()
                    .strip_prefix("KILN-RIG-BEGIN ")
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    boot_seconds.get_or_insert(started.elapsed().as_secs_f64());
                    let secs = batch.runs.get(i).map_or(0, |r| r.timeout_secs) + OVERDUE_SLACK_SECS;
                    overdue = Some((i, Instant::now() + Duration::from_secs(secs)));
                }
                if let Some((i, status, secs)) = status_line(&line) {
                    overdue = None;
                    if let (Some(p), Some(spec)) = (&batch.progress, batch.runs.get(i)) {
                        (p.0)(&spec.name, status, secs);
                    }
                }
                console.push_str(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < until => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                problem = Some(match overdue {
                    Some((i, t)) if t <= Instant::now() => format!(
                        "{L1_STOPPED}: L1 went silent, run {:?} had no status {} s after it \
                         began (its timeout: {} s); killed QEMU",
                        batch.runs[i].name,
                        batch.runs[i].timeout_secs + OVERDUE_SLACK_SECS,
                        batch.runs[i].timeout_secs
                    ),
                    _ => format!(
                        "batch timed out after {:.0} s; killed QEMU",
                        started.elapsed().as_secs_f64()
                    ),
                });
                break;
            }
        }
    }
    let status = child.wait().ctx(|| "waiting for QEMU".to_string())?;
    let qemu_stderr = errs.join().unwrap_or_default();
    if problem.is_none() && !console.contains("KILN-RIG-DONE") {
        problem = Some(format!(
            "{L1_STOPPED} (QEMU {status}; QEMU stderr: {})",
            qemu_stderr.trim()
        ));
    }
    if let Some(p) = problem.as_mut().filter(|p| p.starts_with(L1_STOPPED)) {
        p.push_str(&format!(
            "\n--- what QEMU logged (all of it: {}) ---\n{}",
            qemu_log.display(),
            qemu_log_summary(&std::fs::read_to_string(&qemu_log).unwrap_or_default())
        ));
    }
    Ok((console, boot_seconds, problem))
}

/// QEMU's `-d` log without its register dumps: the CPU resets, a triple fault, the
/// guest's errors, and the shutdown request with its cause spelled out.
fn qemu_log_summary(log: &str) -> String {
    let is_dump = |l: &str| {
        l.split_once('=').is_some_and(|(name, _)| {
            let name = name.trim();
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
    };
    let kept: Vec<String> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_dump(l))
        .map(|l| {
            let cause = l
                .strip_prefix("qemu_system_shutdown_request reason=")
                .and_then(|r| r.trim().parse::<u32>().ok())
                .map(|r| match r {
                    6 => " (the guest powered off)",
                    7 => " (the guest reset: a reboot or a triple fault)",
                    8 => " (the guest panicked)",
                    _ => "",
                });
            format!("{l}{}", cause.unwrap_or(""))
        })
        .collect();
    tail(&kept.join("\n"), 20)
}

/// A `KILN-RIG-STATUS` line as (run index, status, seconds); status `None` when the
/// run timed out.
fn status_line(line: &str) -> Option<(usize, Option<i32>, f64)> {
    let rest = line.trim().strip_prefix("KILN-RIG-STATUS ")?;
    let v: Vec<&str> = rest.split_whitespace().collect();
    let num = |k: usize| v.get(k).and_then(|x| x.parse::<f64>().ok());
    let (i, st, to, t0, t1) = (v.first()?.parse().ok()?, num(1)?, num(2)?, num(3)?, num(4)?);
    let status = (to == 0.0).then_some(st as i32);
    Some((i, status, ((t1 - t0) * 100.0).round() / 100.0))
}

/// Turn L1's console into one result per run.
fn parse_console(console: &str, batch: &Batch) -> Result<Vec<RunResult>> {
    let mut runs: Vec<Option<RunResult>> = vec![None; batch.runs.len()];
    let mut lines = console.lines();
    let index = |s: Option<&str>| -> Result<usize> {
        s.and_then(|s| s.parse::<usize>().ok())
            .filter(|i| *i < batch.runs.len())
            .ok_or_else(|| err!("bad run index in the console protocol"))
    };
    let mut current: Option<usize> = None;
    let mut stacks = String::new();
    while let Some(line) = lines.next() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("KILN-RIG-BEGIN") => {
                let i = index(words.next())?;
                runs[i] = Some(RunResult {
                    name: batch.runs[i].name.clone(),
                    status: None,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    seconds: 0.0,
                    l1_kernel_log: String::new(),
                });
                current = Some(i);
            }
            Some(
                tag @ ("KILN-RIG-STATUS" | "KILN-RIG-STDOUT" | "KILN-RIG-STDERR" | "KILN-RIG-STUCK"
                | "KILN-RIG-KMSG"),
            ) => {
                let i = index(words.next())?;
                let run = runs[i]
                    .as_mut()
                    .filter(|_| current == Some(i))
                    .ok_or_else(|| err!("{tag} for run {i} outside that run"))?;
                let rest: Vec<&str> = words.collect();
                match tag {
                    "KILN-RIG-STATUS" => {
                        let (_, status, seconds) =
                            status_line(line).ok_or_else(|| err!("bad status line {line:?}"))?;
                        run.status = status;
                        run.seconds = seconds;
                    }
                    "KILN-RIG-KMSG" => {
                        run.l1_kernel_log.push_str(&rest.join(" "));
                        run.l1_kernel_log.push('\n');
                    }
                    _ => {
                        let len: usize = rest
                            .first()
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| err!("bad line {line:?}"))?;
                        let end = format!("{tag}-END {i}");
                        let mut text = String::new();
                        for l in lines.by_ref() {
                            if l.trim() == end {
                                break;
                            }
                            text.push_str(l.trim());
                        }
                        let bytes = base64_decode(&text).map_err(|e| err!("run {i} {tag}: {e}"))?;
                        if bytes.len() != len {
                            return Err(err!(
                                "run {i} {tag}: decoded {} bytes, L1 said {len} (console garbled?)",
                                bytes.len()
                            ));
                        }
                        match tag {
                            "KILN-RIG-STDOUT" => run.stdout = bytes,
                            "KILN-RIG-STDERR" => run.stderr = bytes,
                            _ => stacks = String::from_utf8_lossy(&bytes).into_owned(),
                        }
                    }
                }
            }
            Some("KILN-RIG-END") => current = None,
            Some("KILN-RIG-WEDGED") => {
                let i = index(words.next())?;
                let run = runs[i].as_ref().map(|r| r.l1_kernel_log.as_str());
                return Err(err!(
                    "{WEDGED} run {:?} could not be killed: its process is stuck in L1's kernel, so the \
                     batch stopped there. Its threads' kernel stacks:\n{stacks}\nL1's kernel log:\n{}",
                    batch.runs[i].name,
                    run.unwrap_or("")
                ));
            }
            _ => {}
        }
    }
    runs.into_iter()
        .zip(&batch.runs)
        .map(|(r, spec)| r.ok_or_else(|| err!("run {:?} never started in L1", spec.name)))
        .collect()
}

/// Decode standard base64 (padding optional, whitespace ignored).
fn base64_decode(text: &str) -> std::result::Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\t' | b'\n' => continue,
            _ => return Err(err!("not base64: {:?}", c as char)),
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rig::RunSpec;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("aGVsbG8K").unwrap(), b"hello\n");
        assert_eq!(base64_decode("AP8=\n").unwrap(), [0, 255]);
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a*b").is_err());
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn parses_the_console_protocol() {
        let batch = Batch::new("/bin/true")
            .run(RunSpec::new("a", ["x"]))
            .run(RunSpec::new("b", ["y"]));
        let console = "noise\r\nKILN-RIG-KVM-READY 3.1\nKILN-RIG-BEGIN 0\nKILN-RIG-STATUS 0 0 0 3.50 4.75\n\
            KILN-RIG-STDOUT 0 6\naGVsbG8K\nKILN-RIG-STDOUT-END 0\nKILN-RIG-STDERR 0 0\n\nKILN-RIG-STDERR-END 0\n\
            KILN-RIG-KMSG 0 kvm: something\nKILN-RIG-END 0\nKILN-RIG-BEGIN 1\nKILN-RIG-STATUS 1 137 1 5 65\n\
            KILN-RIG-STDOUT 1 0\nKILN-RIG-STDOUT-END 1\nKILN-RIG-STDERR 1 2\nAP8=\nKILN-RIG-STDERR-END 1\nKILN-RIG-END 1\nKILN-RIG-DONE\n";
        let r = parse_console(console, &batch).unwrap();
        assert_eq!(
            (r[0].name.as_str(), r[0].status, r[0].seconds),
            ("a", Some(0), 1.25)
        );
        assert_eq!(r[0].stdout, b"hello\n");
        assert_eq!(r[0].l1_kernel_log, "kvm: something\n");
        assert_eq!(
            (r[1].status, r[1].stderr.as_slice()),
            (None, &[0u8, 255][..])
        );
        assert_eq!(
            status_line("KILN-RIG-STATUS 1 137 1 5 65.5\r"),
            Some((1, None, 60.5))
        );
        assert_eq!(status_line("KILN-RIG-STATUS 1 x"), None);
        let short = console.replace("KILN-RIG-STDOUT 0 6", "KILN-RIG-STDOUT 0 7");
        assert!(parse_console(&short, &batch)
            .unwrap_err()
            .0
            .contains("garbled"));
        let wedged = console.replace(
            "KILN-RIG-END 1\nKILN-RIG-DONE\n",
            "KILN-RIG-STUCK 1 7\nPT0gdmNwdQ==\nKILN-RIG-STUCK-END 1\nKILN-RIG-KMSG 1 soft lockup\n\
             KILN-RIG-END 1\nKILN-RIG-WEDGED 1\n",
        );
        let e = parse_console(&wedged, &batch).unwrap_err().0;
        assert!(
            e.contains("\"b\" could not be killed")
                && e.contains("== vcpu")
                && e.contains("soft lockup"),
            "{e}"
        );
        let missing = &console[..console.find("KILN-RIG-BEGIN 1").unwrap()];
        assert!(parse_console(missing, &batch)
            .unwrap_err()
            .0
            .contains("\"b\" never started"));
    }

    #[test]
    fn summarises_the_qemu_log() {
        let log = "CPU Reset (CPU 0)\nCR0=00000000 CR2=00000000\nES =0000 00000000 0000ffff 00009300\n\
            XMM00=0000000000000000 0000000000000000\nTriple fault\nqemu_system_shutdown_request reason=7\n";
        assert_eq!(
            qemu_log_summary(log),
            "CPU Reset (CPU 0)\nTriple fault\n\
             qemu_system_shutdown_request reason=7 (the guest reset: a reboot or a triple fault)"
        );
    }

    #[test]
    fn lists_the_dynamic_loader() {
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }
}
