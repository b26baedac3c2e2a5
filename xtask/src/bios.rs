//! `cargo xtask bench bios [--runs N] [--kiln PATH]`: BIOS boot time of the classic
//! workflow, Kiln vs `qemu-system-x86_64 -M pc`, on a real KVM (the rig's L1, or this
//! machine with hardware virtualization).
//!
//! Each round installs the project's installer CD (kiln-testrig's `install_iso`: SeaBIOS
//! -> isolinux -> Debian's cloud kernel -> an init that installs onto the IDE disk) onto a
//! fresh 4 GiB qcow2 disk, then boots the installed disk (SeaBIOS -> MBR -> extlinux ->
//! kernel -> the disk's init), once with Kiln (`kiln kvm`, the classic command lines as
//! typed) and once with QEMU (`-M pc`, IDE disk and CD, ACPI on like Kiln's). A small
//! shell wrapper notes L1's uptime when the VMM starts and when the guest prints its
//! userspace marker (`KILN-INSTALLER: started` on the CD, the installed system's marker
//! on the disk): the time from process start to the marker, at /proc/uptime's 10 ms
//! resolution. The whole run (to power-off) is reported too.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_testrig::install_iso::{installer_iso, INSTALLED_MARKER};
use kiln_testrig::{Artifacts, Batch, Host, RunSpec};

use crate::report::{self, Row, Section, Target};

const CD_MARKER: &str = "KILN-INSTALLER: started";
const DISK: &str = "/tmp/kiln-bench-bios.qcow2";
const QEMU_FILES: [&str; 2] = [
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/seabios/bios-256k.bin",
];

/// Run `argv` (the rest of the arguments) with its output read line by line; print
/// `BENCH-START <uptime>` first and `BENCH-MARK <uptime>` when a line holds the marker
/// (first argument), then the VMM's exit status.
const WRAPPER: &str = r#"marker=$1; shift
echo "BENCH-START $(cut -d' ' -f1 /proc/uptime)"
{ "$@"; echo "BENCH-STATUS $?"; } 2>&1 | while IFS= read -r line; do
    case "$line" in *"$marker"*) echo "BENCH-MARK $(cut -d' ' -f1 /proc/uptime)";; esac
    echo "$line"
done
echo "BENCH-END $(cut -d' ' -f1 /proc/uptime)"
"#;

fn kiln_install(kiln: &str) -> Vec<String> {
    [
        kiln,
        "kvm",
        "-m",
        "384",
        "-cdrom",
        "{file:iso}",
        "-hda",
        DISK,
        "-boot",
        "d",
    ]
    .map(String::from)
    .to_vec()
}

fn kiln_disk(kiln: &str) -> Vec<String> {
    [kiln, "kvm", "-m", "384", "-hda", DISK]
        .map(String::from)
        .to_vec()
}

fn qemu_pc(qemu: &str) -> Vec<String> {
    [
        qemu,
        "-M",
        "pc",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "384",
        "-nodefaults",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec()
}

fn qemu_install(qemu: &str) -> Vec<String> {
    let mut v = qemu_pc(qemu);
    v.extend(["-cdrom", "{file:iso}", "-boot", "d", "-drive"].map(String::from));
    v.push(format!("file={DISK},format=qcow2,if=ide"));
    v
}

fn qemu_disk(qemu: &str) -> Vec<String> {
    let mut v = qemu_pc(qemu);
    v.push("-drive".into());
    v.push(format!("file={DISK},format=qcow2,if=ide"));
    v
}

/// Seconds from start to marker and to the end, from a wrapped run's output.
fn parse(out: &str) -> Option<(f64, f64)> {
    let field = |key: &str| -> Option<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let start = field("BENCH-START ")?;
    let status = field("BENCH-STATUS ")?;
    (status == 0.0).then_some(())?;
    Some((field("BENCH-MARK ")? - start, field("BENCH-END ")? - start))
}

/// Run the benchmark and print its Markdown section.
pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let (mut runs, mut kiln_arg) = (2usize, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs needs a number")?.parse()?,
            "--kiln" => kiln_arg = Some(it.next().context("--kiln needs a path")?.clone()),
            other => bail!("unknown option '{other}' for bench bios"),
        }
    }
    let host = Host::detect().map_err(|e| anyhow::anyhow!("{e}"))?;
    let qemu = crate::linux::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is not installed: run `bash scripts/setup.sh bench`")?;
    let qemu_img = crate::linux::which("qemu-img").context("qemu-img is not installed")?;
    let kiln = match kiln_arg {
        Some(k) => std::path::absolute(k).context("resolving --kiln")?,
        None => crate::build_kiln(root)?,
    };
    let arts = Artifacts::get().map_err(|e| anyhow::anyhow!("guest artifacts: {e}"))?;
    let iso = installer_iso(&arts).map_err(|e| anyhow::anyhow!("installer ISO: {e}"))?;
    let kiln_at = if host.is_rig() {
        "/rig/bin/kiln".to_string()
    } else {
        kiln.to_string_lossy().into_owned()
    };
    let (q, qi) = (qemu.to_string_lossy(), qemu_img.to_string_lossy());
    let mut batch = Batch::new(&kiln)
        .carry_program(&qemu)
        .carry_program(&qemu_img);
    for f in QEMU_FILES {
        if !Path::new(f).is_file() {
            bail!("{f} is missing (Debian packages qemu-system-x86 and seabios have it)");
        }
        batch = batch.carry_file(f);
    }
    let wrapped = |name: String, marker: &str, argv: Vec<String>| {
        let mut args = ["-c", WRAPPER, "sh", marker].map(String::from).to_vec();
        args.extend(argv);
        RunSpec::new(&name, args)
            .program("/bin/sh")
            .file("iso", iso.as_path())
            .timeout_secs(300)
    };
    let create = |name: String, with: &str| {
        let cmd = match with {
            "kiln" => format!("rm -f {DISK} && {kiln_at} img create -f qcow2 {DISK} 4G"),
            _ => format!("rm -f {DISK} && {qi} create -q -f qcow2 {DISK} 4G"),
        };
        RunSpec::new(&name, ["-c".to_string(), cmd]).program("/bin/sh")
    };
    // No warm-up round: L1 keeps every file in RAM, and a boot is a cold start anyway.
    for r in 1..=runs {
        let round = r.to_string();
        batch = batch
            .run(create(format!("{round}-kiln-create"), "kiln"))
            .run(wrapped(
                format!("{round}-kiln-cd"),
                CD_MARKER,
                kiln_install(&kiln_at),
            ))
            .run(wrapped(
                format!("{round}-kiln-disk"),
                INSTALLED_MARKER,
                kiln_disk(&kiln_at),
            ))
            .run(create(format!("{round}-qemu-create"), "qemu"))
            .run(wrapped(
                format!("{round}-qemu-cd"),
                CD_MARKER,
                qemu_install(&q),
            ))
            .run(wrapped(
                format!("{round}-qemu-disk"),
                INSTALLED_MARKER,
                qemu_disk(&q),
            ));
    }
    batch = batch
        .run(RunSpec::new("remove-disk", ["-c", &format!("rm -f {DISK}")]).program("/bin/sh"))
        .on_run_end(|name, status, secs| {
            eprintln!("[bios] {name}: status {status:?} in {secs:.1} s")
        });
    eprintln!("[bios] {runs} rounds of Kiln and QEMU -M pc: CD install, disk boot");
    let result = batch
        .execute(&host)
        .map_err(|e| anyhow::anyhow!("the benchmark batch failed: {e}"))?;

    // [peer][cd, disk][to marker, to end]
    let mut m: [[[Vec<f64>; 2]; 2]; 2] = Default::default();
    let mut notes = Vec::new();
    for r in &result.runs {
        let parts: Vec<&str> = r.name.splitn(3, '-').collect();
        let [_round, peer, what] = parts[..] else {
            continue;
        };
        let (Some(p), Some(w)) = (
            ["kiln", "qemu"].iter().position(|x| *x == peer),
            ["cd", "disk"].iter().position(|x| *x == what),
        ) else {
            if r.status != Some(0) {
                notes.push(format!("{}: status {:?}", r.name, r.status));
            }
            continue;
        };
        if r.l1_kernel_log.contains("Call Trace") {
            // The rig's fault: a vCPU thread stuck in L1's nested KVM (L1 soft lockup). Its
            // time measures the host, not the VMM.
            notes.push(format!(
                "{}: left out, L1 reported a soft lockup (the rig's nested-KVM fault) during it",
                r.name
            ));
            continue;
        }
        match parse(&r.stdout_text()) {
            Some((mark, end)) => {
                m[p][w][0].push(mark);
                m[p][w][1].push(end);
            }
            None => notes.push(format!("{}: no result (status {:?})", r.name, r.status)),
        }
    }
    for (p, name) in ["Kiln", "QEMU"].iter().enumerate() {
        if m[p][0][0].is_empty() || m[p][1][0].is_empty() {
            bail!("{name}: too few valid runs: {notes:?}");
        }
    }
    let median = |v: &[f64]| report::stats(v).map_or(f64::NAN, |s| s.median);
    let ratio = |w: usize| median(&m[0][w][0]) / median(&m[1][w][0]);
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
    let row = |label: &str, w: usize, k: usize| Row {
        label: label.into(),
        kiln: m[0][w][k].clone(),
        qemu: m[1][w][k].clone(),
    };
    let target = |what: &str, r: f64| Target {
        text: format!("Kiln <= 0.5x QEMU -M pc, {what} (ratio {r:.2})"),
        met: r <= 0.5,
    };
    let section = Section {
        title: "BIOS boot: CD installer and installed disk (lower is better)".into(),
        runs: format!("{runs} rounds, no warm-up (every boot is a cold start)"),
        commands: vec![
            ("Kiln, CD".into(), kiln_install("kiln").join(" ")),
            ("Kiln, disk".into(), kiln_disk("kiln").join(" ")),
            (
                "QEMU, CD".into(),
                qemu_install("qemu-system-x86_64").join(" "),
            ),
            (
                "QEMU, disk".into(),
                qemu_disk("qemu-system-x86_64").join(" "),
            ),
        ],
        rows: vec![
            row("CD: process start to installer userspace (s)", 0, 0),
            row("CD: whole install, to power-off (s)", 0, 1),
            row("disk: process start to installed userspace (s)", 1, 0),
            row("disk: to power-off (s)", 1, 1),
        ],
        targets: vec![
            target("booting the ISO", ratio(0)),
            target("booting the installed disk", ratio(1)),
        ],
        notes,
    };
    print!(
        "{}",
        report::markdown(&report::Machine::detect(root), &[section])
    );
    Ok(())
}
