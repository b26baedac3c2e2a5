//! The host-side tracing of `cargo xtask bench linux` (see `linux`): the shell script
//! that arms and reads the kernel's tracing around each peer run, and the parsers of
//! what it prints (trace lines, exit histograms).

use std::collections::BTreeMap;
use std::path::Path;

/// Host-side tracing around each peer run; `$1` says what to do. Triggers are written
/// with `>>`: opening a trigger file with O_TRUNC (`>`) removes all its triggers.
pub const TRACE: &str = r#"#!/bin/sh
T=/sys/kernel/tracing
[ -e $T/trace ] || mount -t tracefs nodev $T || exit 1
E=$T/events
H1='hist:keys=exit_reason:vals=hitcount:sort=hitcount.descending:size=256'
H2='hist:keys=reason:vals=hitcount:sort=hitcount.descending'
H3='hist:keys=port,rw:vals=hitcount:sort=hitcount.descending'
case "$1" in
arm)
  echo 0 > $T/tracing_on
  echo > $T/set_event
  echo '!disable_event:kvm:kvm_entry' >> $E/kvm/kvm_exit/trigger 2>/dev/null
  echo mono > $T/trace_clock
  echo 0 > $T/options/overwrite
  echo > $T/trace
  echo 'gpa == 0xfebff000 && type == 2' > $E/kvm/kvm_mmio/filter || exit 1
  echo 'disable_event:kvm:kvm_entry:1' >> $E/kvm/kvm_exit/trigger || exit 1
  for e in sched/sched_process_exec sched/sched_process_exit kvm/kvm_entry kvm/kvm_mmio; do
    echo 1 > $E/$e/enable || exit 1
  done
  echo 1 > $T/tracing_on ;;
read)
  echo 0 > $T/tracing_on
  grep -e sched_process_exec -e sched_process_exit -e kvm_entry: -e kvm_mmio: $T/trace
  echo > $T/set_event
  echo '!disable_event:kvm:kvm_entry' >> $E/kvm/kvm_exit/trigger ;;
count-arm)
  echo "$H1" >> $E/kvm/kvm_exit/trigger || exit 1
  echo "$H2" >> $E/kvm/kvm_userspace_exit/trigger || exit 1
  echo "$H3" >> $E/kvm/kvm_pio/trigger || exit 1 ;;
count-read)
  cat $E/kvm/kvm_exit/hist $E/kvm/kvm_userspace_exit/hist $E/kvm/kvm_pio/hist
  echo "!$H1" >> $E/kvm/kvm_exit/trigger
  echo "!$H2" >> $E/kvm/kvm_userspace_exit/trigger
  echo "!$H3" >> $E/kvm/kvm_pio/trigger ;;
esac
"#;

/// What the exit-counting (warm-up) run of one peer saw.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// kvm_exit by SVM/VMX exit code.
    pub hardware: BTreeMap<u64, u64>,
    /// kvm_userspace_exit by KVM_EXIT_* reason.
    pub userspace: BTreeMap<u64, u64>,
    /// kvm_pio by (port, rw: 0 in, 1 out).
    pub pio: BTreeMap<(u64, u64), u64>,
    /// Kiln's own --trace-exits total.
    pub kiln_total: Option<u64>,
}

/// Trace timestamps (seconds) of one peer run.
#[derive(Debug, PartialEq)]
pub struct Times {
    /// The VMM's execve.
    pub exec: f64,
    /// Its first VM entry.
    pub entry: f64,
    /// The guest's marker write.
    pub marker: f64,
    /// The exit of the exec'd process.
    pub exit: f64,
}

/// The timestamp and event name of a trace line, and the rest after the event name.
fn event(line: &str) -> Option<(f64, &str, &str)> {
    let (head, rest) = line.split_once(": ")?;
    let ts = head.rsplit(' ').next()?.parse().ok()?;
    let (name, fields) = rest.split_once(": ").unwrap_or((rest, ""));
    Some((ts, name, fields))
}

/// Find the peer's execve (by program file name), its first VM entry, the marker write
/// and the exit of the exec'd process in the `read` output.
pub fn parse_trace(text: &str, program: &str) -> Result<Times, String> {
    let field = |fields: &str, key: &str| {
        fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .map(str::to_string)
    };
    let mut exec: Option<(f64, String)> = None;
    let (mut entry, mut marker, mut exit) = (None, None, None);
    for line in text.lines() {
        let Some((ts, name, fields)) = event(line) else {
            continue;
        };
        match (name, &exec) {
            ("sched_process_exec", None) => {
                let file = field(fields, "filename=").unwrap_or_default();
                if Path::new(&file).file_name().is_some_and(|f| f == program) {
                    exec = Some((ts, field(fields, "pid=").unwrap_or_default()));
                }
            }
            ("kvm_entry", Some(_)) if entry.is_none() => entry = Some(ts),
            ("kvm_mmio", Some(_)) if marker.is_none() => marker = Some(ts),
            ("sched_process_exit", Some((_, pid)))
                if exit.is_none() && field(fields, "pid=").as_ref() == Some(pid) =>
            {
                exit = Some(ts)
            }
            _ => {}
        }
    }
    let (exec, _) = exec.ok_or(format!("no execve of {program} in the trace"))?;
    Ok(Times {
        exec,
        entry: entry.ok_or("no VM entry in the trace")?,
        marker: marker.ok_or("no marker write in the trace")?,
        exit: exit.ok_or("no VMM exit in the trace")?,
    })
}

/// Parse the three histograms (`{ key: value, ... } hitcount: N` lines).
pub fn parse_hists(text: &str) -> Counts {
    let mut c = Counts::default();
    for line in text.lines() {
        let Some(body) = line.trim().strip_prefix('{') else {
            continue;
        };
        let Some((keys, rest)) = body.split_once('}') else {
            continue;
        };
        let Some(n) = rest
            .trim()
            .strip_prefix("hitcount:")
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let kv: BTreeMap<&str, u64> = keys
            .split(',')
            .filter_map(|p| {
                let (k, v) = p.split_once(':')?;
                Some((k.trim(), v.trim().parse().ok()?))
            })
            .collect();
        if let Some(&r) = kv.get("exit_reason") {
            *c.hardware.entry(r).or_default() += n;
        } else if let Some(&r) = kv.get("reason") {
            *c.userspace.entry(r).or_default() += n;
        } else if let (Some(&p), Some(&rw)) = (kv.get("port"), kv.get("rw")) {
            *c.pio.entry((p, rw)).or_default() += n;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_peer_in_the_trace() {
        let t = "\
            exe-119     [001] .....     8.406572: sched_process_exec: filename=/proc/self/exe pid=119 old_pid=119
 qemu-system-x86-176     [000] .....    21.969489: sched_process_exec: filename=/usr/bin/qemu-system-x86_64 pid=176 old_pid=176
           vcpu0-230     [001] d..1.    22.242844: kvm_entry: vcpu 0, rip 0x100200
 qemu-system-x86-181     [001] .....    43.381089: kvm_mmio: mmio write len 1 gpa 0xfebff000 val 0x1
 qemu-system-x86-179     [000] .....    43.879657: sched_process_exit: comm=qemu-system-x86 pid=179 prio=120
 qemu-system-x86-176     [000] .....    43.937725: sched_process_exit: comm=qemu-system-x86 pid=176 prio=120
";
        let times = parse_trace(t, "qemu-system-x86_64").unwrap();
        assert_eq!(
            times,
            Times {
                exec: 21.969489,
                entry: 22.242844,
                marker: 43.381089,
                exit: 43.937725
            }
        );
        assert!(parse_trace(t, "kiln").unwrap_err().contains("no execve"));
        let cut = &t[..t.find("           vcpu0").unwrap()];
        assert!(parse_trace(cut, "qemu-system-x86_64").is_err());
    }

    #[test]
    fn reads_histograms() {
        let h = "# trigger info: hist:keys=exit_reason\n\
                 { exit_reason:       1024 } hitcount:      29005\n\
                 { exit_reason:        123 } hitcount:        606\n\
                 Totals:\n    Hits: 29611\n\
                 { reason:          2 } hitcount:        606\n\
                 { port:       1016, rw:          1 } hitcount:        132\n";
        let c = parse_hists(h);
        assert_eq!(c.hardware.get(&1024), Some(&29005));
        assert_eq!(c.hardware.len(), 2);
        assert_eq!(c.userspace.get(&2), Some(&606));
        assert_eq!(c.pio.get(&(1016, 1)), Some(&132));
    }
}
