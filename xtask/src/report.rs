//! Benchmark results and how they are shown: summary statistics, the
//! machine description, and rendering as Markdown (stdout) or JSON.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Median, 10th and 90th percentile of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// 50th percentile.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// Percentile `q` (0..=1) of sorted `v`, interpolating between closest ranks.
fn percentile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Summary statistics of `samples`, or `None` if there are none.
pub fn stats(samples: &[f64]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(Stats {
        median: percentile(&v, 0.5),
        p10: percentile(&v, 0.1),
        p90: percentile(&v, 0.9),
    })
}

/// One measured quantity for both peers (either may be absent).
pub struct Row {
    /// What is measured, with its unit.
    pub label: String,
    /// Kiln's samples.
    pub kiln: Vec<f64>,
    /// QEMU's samples.
    pub qemu: Vec<f64>,
}

/// A target and whether this run met it.
pub struct Target {
    /// The target and the measured value, in words.
    pub text: String,
    /// Whether it was met.
    pub met: bool,
}

/// The results of one benchmark.
pub struct Section {
    /// Heading.
    pub title: String,
    /// Valid measured runs per peer (and warm-ups discarded), in words.
    pub runs: String,
    /// The exact commands of both peers.
    pub commands: Vec<(String, String)>,
    /// The table.
    pub rows: Vec<Row>,
    /// The targets.
    pub targets: Vec<Target>,
    /// Anything else a reader needs (noise, floors, invalid runs).
    pub notes: Vec<String>,
}

/// Where the numbers were measured.
pub struct Machine {
    /// (name, value) pairs.
    pub facts: Vec<(&'static str, String)>,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date (UTC) as YYYY-MM-DD and the time as HH:MM.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, sod) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (H. Hinnant), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        sod / 3600,
        sod / 60 % 60
    )
}

impl Machine {
    /// Describe this machine, the peers' versions and the current load.
    pub fn detect(root: &std::path::Path) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let kvm = if fs::metadata("/sys/module/kvm_pvm").is_ok() {
            "kvm_pvm (software nested KVM; each VM exit costs ~15 us)".to_owned()
        } else if fs::metadata("/sys/module/kvm_intel").is_ok() {
            "kvm_intel".to_owned()
        } else if fs::metadata("/sys/module/kvm_amd").is_ok() {
            "kvm_amd".to_owned()
        } else {
            "unknown".to_owned()
        };
        let root = root.to_string_lossy();
        let mut git = first_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
        let dirty = Command::new("git")
            .args([
                "-C",
                &root,
                "status",
                "--porcelain",
                "--",
                "crates",
                "Cargo.toml",
                "Cargo.lock",
            ])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if dirty {
            git.push_str(" + uncommitted changes in crates/");
        }
        Machine {
            facts: vec![
                ("date", utc_now()),
                ("CPU", model),
                ("nproc", nproc.to_string()),
                ("kernel", kernel.trim().to_owned()),
                ("/dev/kvm", kvm),
                ("Kiln", format!("git {git}, release build")),
                ("QEMU", first_line("qemu-system-x86_64", &["--version"])),
                ("strace", first_line("strace", &["-V"])),
                ("load average at start", load_average()),
            ],
        }
    }
}

/// The 1/5/15-minute load averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cell(s: Option<f64>) -> String {
    match s {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// Render everything as Markdown.
pub fn markdown(machine: &Machine, sections: &[Section]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Machine:\n");
    for (k, v) in &machine.facts {
        let _ = writeln!(o, "- {k}: {v}");
    }
    for s in sections {
        let _ = writeln!(o, "\n### {}\n\n{}\n", s.title, s.runs);
        for (peer, cmd) in &s.commands {
            let _ = writeln!(o, "{peer}:\n\n```sh\n{cmd}\n```\n");
        }
        let _ = writeln!(
            o,
            "| measure | Kiln median | Kiln p10 | Kiln p90 | QEMU median | QEMU p10 | QEMU p90 | Kiln/QEMU |"
        );
        let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|--:|");
        for r in &s.rows {
            let (k, q) = (stats(&r.kiln), stats(&r.qemu));
            let ratio = match (k, q) {
                (Some(k), Some(q)) if q.median > 0.0 => format!("{:.2}", k.median / q.median),
                _ => "-".into(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label,
                cell(k.map(|s| s.median)),
                cell(k.map(|s| s.p10)),
                cell(k.map(|s| s.p90)),
                cell(q.map(|s| s.median)),
                cell(q.map(|s| s.p10)),
                cell(q.map(|s| s.p90)),
                ratio
            );
        }
        let _ = writeln!(o, "\nTargets:\n");
        for t in &s.targets {
            let verdict = if t.met { "**met**" } else { "**NOT met**" };
            let _ = writeln!(o, "- {}: {verdict}", t.text);
        }
        if !s.notes.is_empty() {
            let _ = writeln!(o, "\nNotes:\n");
            for n in &s.notes {
                let _ = writeln!(o, "- {n}");
            }
        }
    }
    o
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_series(v: &[f64]) -> String {
    let samples: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    match stats(v) {
        Some(s) => format!(
            "{{\"median\":{},\"p10\":{},\"p90\":{},\"samples\":[{}]}}",
            s.median,
            s.p10,
            s.p90,
            samples.join(",")
        ),
        None => "null".into(),
    }
}

/// Render everything as one JSON object.
pub fn json(machine: &Machine, sections: &[Section]) -> String {
    let facts: Vec<String> = machine
        .facts
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
        .collect();
    let secs: Vec<String> = sections
        .iter()
        .map(|s| {
            let cmds: Vec<String> =
                s.commands.iter().map(|(p, c)| format!("{}:{}", json_str(p), json_str(c))).collect();
            let rows: Vec<String> = s
                .rows
                .iter()
                .map(|r| {
                    format!(
                        "{{\"measure\":{},\"kiln\":{},\"qemu\":{}}}",
                        json_str(&r.label),
                        json_series(&r.kiln),
                        json_series(&r.qemu)
                    )
                })
                .collect();
            let targets: Vec<String> = s
                .targets
                .iter()
                .map(|t| format!("{{\"target\":{},\"met\":{}}}", json_str(&t.text), t.met))
                .collect();
            let notes: Vec<String> = s.notes.iter().map(|n| json_str(n)).collect();
            format!(
                "{{\"title\":{},\"runs\":{},\"commands\":{{{}}},\"rows\":[{}],\"targets\":[{}],\"notes\":[{}]}}",
                json_str(&s.title),
                json_str(&s.runs),
                cmds.join(","),
                rows.join(","),
                targets.join(","),
                notes.join(",")
            )
        })
        .collect();
    format!(
        "{{\"machine\":{{{}}},\"benchmarks\":[{}]}}\n",
        facts.join(","),
        secs.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        let s = stats(&v).unwrap();
        assert_eq!((s.median, s.p10, s.p90), (6.0, 2.0, 10.0));
        assert_eq!(stats(&[4.0, 1.0]).unwrap().median, 2.5);
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn escaping() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
