//! The start-up and memory benchmarks: run the peers alternately (Kiln,
//! QEMU, Kiln, QEMU, ...), discard the warm-up runs, and turn the samples
//! into report sections with their targets.

use std::path::Path;

use anyhow::{bail, Result};

use crate::peers::{self, Env, Mode, Peer, Sample};
use crate::report::{stats, Row, Section, Target};

/// Start-up target: Kiln's median at most this fraction of QEMU's.
const STARTUP_RATIO_TARGET: f64 = 0.5;
/// Start-up target: Kiln's median below this, in ms.
const STARTUP_MS_TARGET: f64 = 20.0;
/// Memory target: Kiln's VMM memory at most this, in KiB (2.5 MiB).
const MEMORY_KIB_TARGET: f64 = 2560.0;

/// How many runs to make.
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    /// Measured runs per peer and mode.
    pub measured: usize,
    /// Runs per peer and mode made first and discarded.
    pub warmup: usize,
}

/// Valid samples and the reasons for invalid runs, for one peer and mode.
#[derive(Default)]
struct Series {
    samples: Vec<Sample>,
    invalid: Vec<String>,
}

impl Series {
    fn values(&self, f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
        self.samples.iter().filter_map(f).collect()
    }
}

/// Run each (peer, mode) of `plan` in turn, `warmup + measured` times.
fn collect(env: &Env, runs: Runs, plan: &[(Peer, Mode)], what: &str) -> Result<Vec<Series>> {
    let mut out: Vec<Series> = plan.iter().map(|_| Series::default()).collect();
    let total = runs.warmup + runs.measured;
    for i in 0..total {
        let warm = i < runs.warmup;
        let mut line = if warm {
            format!("[{what}] warm-up {}/{}:", i + 1, runs.warmup)
        } else {
            format!("[{what}] run {}/{}:", i + 1 - runs.warmup, runs.measured)
        };
        for (&(peer, mode), series) in plan.iter().zip(out.iter_mut()) {
            let tag = match mode {
                Mode::Strace => format!("{} (strace)", peer.name()),
                _ => peer.name().to_owned(),
            };
            match peers::run_once(env, peer, mode)? {
                Ok(s) => {
                    let ms = s.first_run.unwrap_or(s.outcome.wall).as_secs_f64() * 1e3;
                    line.push_str(&format!(" {tag} {ms:.1} ms;"));
                    if !warm {
                        series.samples.push(s);
                    }
                }
                Err(reason) => {
                    line.push_str(&format!(" {tag} INVALID;"));
                    eprintln!("{tag}: invalid run: {reason}");
                    if !warm {
                        series.invalid.push(reason);
                    }
                }
            }
        }
        eprintln!("{line}");
    }
    for (&(peer, _), series) in plan.iter().zip(&out) {
        if series.samples.len() * 2 < runs.measured.max(1) {
            bail!(
                "{}: only {} of {} runs were valid; first problem: {}",
                peer.name(),
                series.samples.len(),
                runs.measured,
                series.invalid.first().map(String::as_str).unwrap_or("none")
            );
        }
    }
    Ok(out)
}

fn runs_text(runs: Runs, series: &[Series]) -> String {
    let valid: Vec<String> = series.iter().map(|s| s.samples.len().to_string()).collect();
    format!(
        "{} measured runs per peer and mode after {} discarded warm-ups, peers alternated; valid: {}.",
        runs.measured,
        runs.warmup,
        valid.join("/")
    )
}

fn invalid_notes(plan: &[(Peer, Mode)], series: &[Series], notes: &mut Vec<String>) {
    for (&(peer, mode), s) in plan.iter().zip(series) {
        if let Some(first) = s.invalid.first() {
            notes.push(format!(
                "{} {:?}: {} invalid runs left out (first: {first})",
                peer.name(),
                mode,
                s.invalid.len()
            ));
        }
    }
}

/// A note on the ru_maxrss floor (see `sys::Outcome::floor_kib`).
fn floor_note(series: &[Series]) -> String {
    let all = || {
        series
            .iter()
            .flat_map(|s| s.samples.iter().map(|x| x.outcome))
    };
    let floor = all().map(|o| o.floor_kib).max().unwrap_or(0);
    let lowest = all().map(|o| o.maxrss_kib).min().unwrap_or(0);
    let verdict = if lowest > floor {
        format!("below every ru_maxrss here (lowest {lowest} KiB), so they are the peers' own")
    } else {
        format!("NOT below every ru_maxrss here (lowest {lowest} KiB): those are floors, not peaks")
    };
    format!(
        "ru_maxrss cannot be lower than the spawning process's RSS (the kernel carries it across \
         exec); xtask's VmHWM at spawn was at most {floor} KiB, {verdict}."
    )
}

fn median(v: &[f64]) -> f64 {
    stats(v).map(|s| s.median).unwrap_or(f64::NAN)
}

/// Wall time to exit and to the first `KVM_RUN` (under strace).
pub fn startup(env: &Env, runs: Runs, tiny_name: &Path) -> Result<Section> {
    let plan = [
        (Peer::Kiln, Mode::Plain),
        (Peer::Qemu, Mode::Plain),
        (Peer::Kiln, Mode::Strace),
        (Peer::Qemu, Mode::Strace),
    ];
    let s = collect(env, runs, &plan, "startup")?;
    let wall = |x: &Sample| Some(x.outcome.wall.as_secs_f64() * 1e3);
    let first = |x: &Sample| x.first_run.map(|d| d.as_secs_f64() * 1e3);
    let rss = |x: &Sample| Some(x.outcome.maxrss_kib as f64);
    let rows = vec![
        Row {
            label: "process start -> guest exit (ms)".into(),
            kiln: s[0].values(wall),
            qemu: s[1].values(wall),
        },
        Row {
            label: "first execve -> first KVM_RUN, under strace (ms)".into(),
            kiln: s[2].values(first),
            qemu: s[3].values(first),
        },
        Row {
            label: "process start -> guest exit, under strace (ms)".into(),
            kiln: s[2].values(wall),
            qemu: s[3].values(wall),
        },
        Row {
            label: "peak RSS, wait4 ru_maxrss (KiB)".into(),
            kiln: s[0].values(rss),
            qemu: s[1].values(rss),
        },
    ];
    let (k, q) = (median(&rows[0].kiln), median(&rows[0].qemu));
    let targets = vec![
        Target {
            text: format!(
                "Kiln's median start -> exit <= {STARTUP_RATIO_TARGET}x QEMU's in the same run: \
                 {k:.2} ms vs {q:.2} ms = {:.2}x",
                k / q
            ),
            met: k <= STARTUP_RATIO_TARGET * q,
        },
        Target {
            text: format!("Kiln's median start -> exit < {STARTUP_MS_TARGET} ms: {k:.2} ms"),
            met: k < STARTUP_MS_TARGET,
        },
    ];
    let mut notes = vec![
        "Wall time runs from just before xtask spawns the peer to the reaping wait4 (stdin \
         /dev/null, stdout and stderr to files); a run counts only with exit status 1, empty \
         stdout and empty stderr."
            .into(),
        "Time to first KVM_RUN: strace's timestamp of the first KVM_RUN ioctl minus that of the \
         first execve. strace (seccomp-bpf, stopping only on execve and ioctl) slows both peers; \
         the third row shows by how much overall."
            .into(),
    ];
    notes.push(floor_note(&s[..2]));
    invalid_notes(&plan, &s, &mut notes);
    let strace_cmd = peers::display(&peers::strace_prefix(Path::new("FILE")));
    let k_cmd = peers::display(&peers::argv(env, Peer::Kiln, Mode::Plain));
    let q_cmd = peers::display(&peers::argv(env, Peer::Qemu, Mode::Plain));
    Ok(Section {
        title: "Start-up: tiny guest, process start to exit".into(),
        runs: runs_text(runs, &s),
        commands: vec![
            ("Kiln".into(), shorten(&k_cmd, env, tiny_name)),
            ("QEMU".into(), shorten(&q_cmd, env, tiny_name)),
            ("first KVM_RUN (either command after it)".into(), strace_cmd),
        ],
        rows,
        targets,
        notes,
    })
}

/// Peak RSS minus guest pages (Kiln), peak RSS (QEMU).
pub fn memory(env: &Env, runs: Runs, tiny_name: &Path) -> Result<Section> {
    let plan = [(Peer::Kiln, Mode::ReportMemory), (Peer::Qemu, Mode::Plain)];
    let s = collect(env, runs, &plan, "memory")?;
    let own = |f: fn((u64, u64)) -> u64| move |x: &Sample| x.self_report.map(|r| f(r) as f64);
    let rss = |x: &Sample| Some(x.outcome.maxrss_kib as f64);
    let vmm = s[0].values(own(|(peak, guest)| peak.saturating_sub(guest)));
    let rows = vec![
        Row {
            label: "VMM memory (KiB): Kiln peak RSS - guest resident; QEMU peak RSS incl. guest"
                .into(),
            kiln: vmm.clone(),
            qemu: s[1].values(rss),
        },
        Row {
            label: "peak RSS from outside, wait4 ru_maxrss (KiB)".into(),
            kiln: s[0].values(rss),
            qemu: s[1].values(rss),
        },
        Row {
            label: "Kiln's own peak RSS, VmHWM (KiB)".into(),
            kiln: s[0].values(own(|(peak, _)| peak)),
            qemu: Vec::new(),
        },
        Row {
            label: "Kiln's guest RAM resident at exit (KiB)".into(),
            kiln: s[0].values(own(|(_, guest)| guest)),
            qemu: Vec::new(),
        },
    ];
    let m = median(&vmm);
    let over = if m > MEMORY_KIB_TARGET {
        format!(" ({:.0} KiB over)", m - MEMORY_KIB_TARGET)
    } else {
        String::new()
    };
    let targets = vec![Target {
        text: format!(
            "Kiln's median VMM memory <= 2.5 MiB ({MEMORY_KIB_TARGET:.0} KiB): {m:.0} KiB = \
             {:.2} MiB{over}",
            m / 1024.0
        ),
        met: m <= MEMORY_KIB_TARGET,
    }];
    let mut notes = vec![
        "Kiln reports with its hidden --report-memory flag: peak RSS (VmHWM) and the guest RAM \
         pages resident at exit (smaps); VMM memory is the difference."
            .into(),
        "QEMU's figure is its whole peak RSS, including its guest RAM and BIOS/ROM pages (for \
         this guest the 64 KiB BIOS image, held as a ROM blob and as the mapped BIOS region), so \
         the comparison is conservative for QEMU."
            .into(),
        floor_note(&s),
    ];
    invalid_notes(&plan, &s, &mut notes);
    let k_cmd = peers::display(&peers::argv(env, Peer::Kiln, Mode::ReportMemory));
    let q_cmd = peers::display(&peers::argv(env, Peer::Qemu, Mode::Plain));
    Ok(Section {
        title: "VMM memory: tiny guest".into(),
        runs: runs_text(runs, &s),
        commands: vec![
            ("Kiln".into(), shorten(&k_cmd, env, tiny_name)),
            ("QEMU".into(), shorten(&q_cmd, env, tiny_name)),
        ],
        rows,
        targets,
        notes,
    })
}

/// Replace the scratch path of the guest image by `tiny_name` and the Kiln
/// binary's absolute path by `target/x86_64-unknown-linux-gnu/release/kiln`, for the report.
fn shorten(cmd: &str, env: &Env, tiny_name: &Path) -> String {
    cmd.replace(
        &*env.kiln.to_string_lossy(),
        "target/x86_64-unknown-linux-gnu/release/kiln",
    )
    .replace(&*env.tiny.to_string_lossy(), &tiny_name.to_string_lossy())
}
