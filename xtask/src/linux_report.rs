//! The Linux boot benchmark's report: the timing table with its target, and the VM
//! exits by reason, as Markdown (see `linux` for what is measured and how).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::linux::{Peer, Results, Sample, CMDLINE, MEMORY, PEERS};
use crate::linux_trace::Counts;
use crate::report::{load_average, stats, Machine};

/// Target: Kiln's median start -> exit at most this fraction of QEMU microvm's.
const TARGET_RATIO: f64 = 0.15;

/// Where and how the benchmark ran.
pub struct Env {
    /// This machine.
    pub machine: Machine,
    /// Whether the peers ran in the rig's L1.
    pub host_is_rig: bool,
    /// Rig: host seconds from starting L1 to its first run.
    pub boot_seconds: Option<f64>,
    /// The whole batch, in host seconds.
    pub total_seconds: f64,
    /// L1's console (for its kernel and KVM lines).
    pub l1_console: String,
    /// The guest kernel's package and version.
    pub kernel: (String, String),
    /// The guest initramfs's size.
    pub initrd_bytes: usize,
    /// Timed runs per peer.
    pub runs: usize,
}

/// The SVM exit code names (kvm_exit's exit_reason on AMD), as the kernel prints them.
fn svm_exit_name(code: u64) -> String {
    let named = match code {
        0x60 => "intr",
        0x61 => "nmi",
        0x62 => "smi",
        0x63 => "init",
        0x64 => "vintr",
        0x65 => "cr0_sel_write",
        0x6e => "rdtsc",
        0x6f => "rdpmc",
        0x70 => "pushf",
        0x71 => "popf",
        0x72 => "cpuid",
        0x73 => "rsm",
        0x74 => "iret",
        0x76 => "invd",
        0x77 => "pause",
        0x78 => "hlt",
        0x79 => "invlpg",
        0x7b => "io",
        0x7c => "msr",
        0x7d => "task_switch",
        0x7f => "shutdown",
        0x81 => "vmmcall",
        0x87 => "rdtscp",
        0x89 => "wbinvd",
        0x8a => "monitor",
        0x8b => "mwait",
        0x8d => "xsetbv",
        0x400 => "npf",
        _ => "",
    };
    match code {
        _ if !named.is_empty() => named.to_string(),
        0x00..=0x0f => format!("read_cr{code}"),
        0x10..=0x1f => format!("write_cr{}", code - 0x10),
        0x20..=0x2f => format!("read_dr{}", code - 0x20),
        0x30..=0x3f => format!("write_dr{}", code - 0x30),
        0x40..=0x5f => format!("exception {}", code - 0x40),
        _ => format!("{code:#x}"),
    }
}

/// KVM_EXIT_* names (kvm_userspace_exit's reason).
fn kvm_exit_name(reason: u64) -> String {
    match reason {
        0 => "unknown".into(),
        1 => "exception".into(),
        2 => "io".into(),
        3 => "hypercall".into(),
        5 => "hlt".into(),
        6 => "mmio".into(),
        7 => "irq_window_open".into(),
        8 => "shutdown".into(),
        10 => "intr".into(),
        12 => "tpr_access".into(),
        17 => "internal_error".into(),
        24 => "system_event".into(),
        n => format!("{n}"),
    }
}

fn median(v: &[f64]) -> Option<f64> {
    stats(v).map(|s| s.median)
}

/// The timing table's header.
fn timing_header(o: &mut String) {
    let peers: Vec<String> = PEERS.iter().map(|p| p.short().to_string()).collect();
    let ratios: Vec<String> = PEERS[1..]
        .iter()
        .map(|p| format!("Kiln/{}", p.short()))
        .collect();
    let _ = writeln!(
        o,
        "| measure (s): median (p10-p90) | {} | {} |",
        peers.join(" | "),
        ratios.join(" | ")
    );
    let _ = writeln!(o, "|---|{}", "--:|".repeat(2 * PEERS.len() - 1));
}

/// One table row: a measure taken from each peer's samples.
fn timing_row(o: &mut String, label: &str, r: &Results, f: impl Fn(&Sample) -> Option<f64>) {
    let series: Vec<Vec<f64>> = PEERS
        .iter()
        .map(|p| {
            r.samples
                .get(p)
                .into_iter()
                .flatten()
                .filter_map(&f)
                .collect()
        })
        .collect();
    let _ = write!(o, "| {label} |");
    for s in &series {
        match stats(s) {
            Some(st) => {
                let _ = write!(o, " {:.2} ({:.2}-{:.2}) |", st.median, st.p10, st.p90);
            }
            None => o.push_str(" - |"),
        }
    }
    let k = median(&series[0]);
    for other in &series[1..] {
        let ratio = match (k, median(other)) {
            (Some(k), Some(q)) if q > 0.0 => format!("{:.2}", k / q),
            _ => "-".into(),
        };
        let _ = write!(o, " {ratio} |");
    }
    o.push('\n');
}

fn exits_row(
    o: &mut String,
    label: &str,
    counts: &BTreeMap<Peer, Counts>,
    f: impl Fn(&Counts) -> Option<u64>,
) {
    let _ = write!(o, "| {label} |");
    for p in PEERS {
        let v = counts.get(&p).and_then(&f);
        let _ = write!(o, " {} |", v.map_or("-".into(), |v| v.to_string()));
    }
    o.push('\n');
}

/// The exits table: hardware exits, then exits to the VMM, by reason.
fn exits(o: &mut String, counts: &BTreeMap<Peer, Counts>) {
    let names: Vec<&str> = PEERS.iter().map(|p| p.short()).collect();
    let _ = writeln!(
        o,
        "| VM exits in one boot (warm-up run) | {} |",
        names.join(" | ")
    );
    let _ = writeln!(o, "|---|{}", "--:|".repeat(PEERS.len()));
    let order = |pick: fn(&Counts) -> &BTreeMap<u64, u64>| {
        let mut all: BTreeMap<u64, u64> = BTreeMap::new();
        for c in counts.values() {
            for (k, v) in pick(c) {
                let e = all.entry(*k).or_default();
                *e = (*e).max(*v);
            }
        }
        let mut keys: Vec<(u64, u64)> = all.into_iter().collect();
        keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        keys.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
    };
    exits_row(o, "**all exits to L1's KVM** (kvm_exit)", counts, |c| {
        Some(c.hardware.values().sum())
    });
    for code in order(|c| &c.hardware) {
        let label = format!("&nbsp;&nbsp;{} ({code:#x})", svm_exit_name(code));
        exits_row(o, &label, counts, |c| {
            Some(c.hardware.get(&code).copied().unwrap_or(0))
        });
    }
    exits_row(
        o,
        "**exits to the VMM** (kvm_userspace_exit)",
        counts,
        |c| Some(c.userspace.values().sum()),
    );
    for reason in order(|c| &c.userspace) {
        let label = format!("&nbsp;&nbsp;{}", kvm_exit_name(reason));
        exits_row(o, &label, counts, |c| {
            Some(c.userspace.get(&reason).copied().unwrap_or(0))
        });
    }
    exits_row(o, "Kiln's own count (`--trace-exits`)", counts, |c| {
        c.kiln_total
    });
    let _ = write!(o, "| busiest ports (kvm_pio, in-kernel and VMM) |");
    for p in PEERS {
        let mut ports: Vec<(&(u64, u64), &u64)> = counts
            .get(&p)
            .map(|c| c.pio.iter().collect())
            .unwrap_or_default();
        ports.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = ports
            .iter()
            .take(3)
            .map(|((port, rw), n)| format!("{port:#x} {} {n}", if *rw == 1 { "out" } else { "in" }))
            .collect();
        let _ = write!(o, " {} |", top.join(", "));
    }
    o.push('\n');
}

/// The whole report section.
pub fn markdown(env: &Env, r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Machine:\n");
    for (k, v) in &env.machine.facts {
        if *k != "strace" {
            let _ = writeln!(o, "- {k}: {v}");
        }
    }
    if env.host_is_rig {
        let l1_kvm = env
            .l1_console
            .lines()
            .find(|l| l.contains("Nested Paging"))
            .map(|l| l.trim_start_matches("KILN-RIG-DMESG ").trim().to_string())
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            o,
            "- real KVM host: the rig's L1 (QEMU TCG, `-cpu EPYC,+svm,+npt`, 2 vCPUs, 3 GiB; \
             {} {} with kvm-amd: \"{l1_kvm}\"); L1 booted to its first run in {:.0} s, the \
             whole batch took {:.0} s",
            env.kernel.0,
            env.kernel.1,
            env.boot_seconds.unwrap_or(f64::NAN),
            env.total_seconds
        );
    }
    let _ = writeln!(
        o,
        "- guest: {} {} bzImage, a {} KiB busybox initramfs, `{CMDLINE}`, {MEMORY}, 1 vCPU",
        env.kernel.0,
        env.kernel.1,
        env.initrd_bytes / 1024
    );
    let _ = writeln!(o, "- load average at the end: {}\n", load_average());
    let _ = writeln!(
        o,
        "Commands (`{{file:...}}` stand for the kernel and initramfs):\n\n```sh"
    );
    for p in PEERS {
        let argv = p.argv("kiln", "qemu-system-x86_64", false);
        let shown: Vec<String> = argv
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect();
        let _ = writeln!(o, "{}", shown.join(" "));
    }
    let _ = writeln!(o, "```\n");
    let counted: Vec<String> = PEERS
        .iter()
        .map(|p| format!("{} {}", p.name(), r.samples.get(p).map_or(0, Vec::len)))
        .collect();
    let _ = writeln!(
        o,
        "{} timed runs per peer after one warm-up round, peers alternated; valid: {}. Times \
         in seconds from the host kernel's trace clock.\n",
        env.runs,
        counted.join(", ")
    );
    timing_header(&mut o);
    timing_row(&mut o, "**start -> userspace marker**", r, |s| {
        Some(s.start_to_marker)
    });
    timing_row(&mut o, "**start -> exit**", r, |s| Some(s.start_to_exit));
    timing_row(&mut o, "host: start -> first KVM_RUN", r, |s| {
        Some(s.start_to_kvm_run)
    });
    timing_row(&mut o, "guest: first KVM_RUN -> marker", r, |s| {
        Some(s.kvm_run_to_marker)
    });
    timing_row(
        &mut o,
        "&nbsp;&nbsp;before the guest's clock starts",
        r,
        |s| Some(s.kvm_run_to_marker - s.guest_uptime),
    );
    timing_row(&mut o, "&nbsp;&nbsp;guest uptime at the marker", r, |s| {
        Some(s.guest_uptime)
    });
    timing_row(&mut o, "marker -> exit (power-off, teardown)", r, |s| {
        Some(s.start_to_exit - s.start_to_marker)
    });
    timing_row(&mut o, "wall time in L1's shell (cross-check)", r, |s| {
        Some(s.wall)
    });
    timing_row(&mut o, "Kiln's own boot timer (cross-check)", r, |s| {
        s.kiln_timer
    });
    let exit_of = |p: Peer| {
        median(
            &r.samples
                .get(&p)
                .map(|v| v.iter().map(|s| s.start_to_exit).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    if let (Some(k), Some(q)) = (exit_of(Peer::Kiln), exit_of(Peer::Microvm)) {
        let met = k <= TARGET_RATIO * q;
        let _ = writeln!(
            o,
            "\nTarget: Kiln's median start -> exit <= {TARGET_RATIO}x QEMU microvm's in the same \
             run: {k:.2} s vs {q:.2} s = {:.2}x. {}",
            k / q,
            if met { "**Met.**" } else { "**Not met.**" }
        );
    }
    if let (Some(k), Some(q)) = (exit_of(Peer::Kiln), exit_of(Peer::MicrovmRtc)) {
        let _ = writeln!(
            o,
            "\nFor scale: Kiln's median start -> exit vs QEMU microvm,rtc=on's: {k:.2} s vs \
             {q:.2} s = {:.2}x.",
            k / q
        );
    }
    o.push('\n');
    exits(&mut o, &r.counts);
    let mut notes = r.notes.clone();
    for (p, why) in &r.invalid {
        notes.push(format!(
            "{}: {} invalid runs left out (first: {})",
            p.name(),
            why.len(),
            why[0]
        ));
    }
    if !notes.is_empty() {
        let _ = writeln!(o, "\nProblems:\n");
        for n in notes {
            let _ = writeln!(o, "- {n}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_rows_have_a_cell_per_peer_and_ratio() {
        let mut r = Results::default();
        for (p, exit) in [(Peer::Kiln, 10.0), (Peer::Microvm, 20.0), (Peer::Q35, 40.0)] {
            let s = Sample {
                start_to_exit: exit,
                ..Sample::default()
            };
            r.samples.insert(p, vec![s, s]);
        }
        let mut o = String::new();
        timing_header(&mut o);
        timing_row(&mut o, "exit", &r, |s| Some(s.start_to_exit));
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(
            lines[0],
            "| measure (s): median (p10-p90) | Kiln | microvm | microvm,rtc=on | q35 \
             | Kiln/microvm | Kiln/microvm,rtc=on | Kiln/q35 |"
        );
        assert_eq!(lines[1].matches('|').count(), lines[0].matches('|').count());
        assert_eq!(
            lines[2],
            "| exit | 10.00 (10.00-10.00) | 20.00 (20.00-20.00) | - | 40.00 (40.00-40.00) \
             | 0.50 | - | 0.25 |"
        );
    }

    #[test]
    fn names_exit_codes() {
        assert_eq!(svm_exit_name(0x400), "npf");
        assert_eq!(svm_exit_name(0x14), "write_cr4");
        assert_eq!(svm_exit_name(0x4e), "exception 14");
        assert_eq!(svm_exit_name(0x3ff), "0x3ff");
        assert_eq!(kvm_exit_name(6), "mmio");
    }
}
