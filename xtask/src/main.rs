//! Kiln's developer tasks, run as `cargo xtask TASK`.
//!
//! `cargo xtask bench [startup|memory|all] [--runs N] [--warmup N] [--output markdown|json]`
//! builds the Kiln release binary, then measures it against QEMU (`-M microvm`) on the
//! silent tiny guest (`kiln_guests::TINY`): start-up time and VMM memory. Progress goes
//! to stderr, the results (Markdown for BENCHMARKS.md, or JSON) to stdout. The command
//! fails if a peer is missing or most of its runs are invalid, not when a target is
//! missed: benchmarks are not tests. This file owns argument parsing and set-up.
//!
//! `cargo xtask bench linux [--runs N] [--kiln PATH]` boots Debian's kernel to a
//! userspace marker and to power-off, Kiln vs QEMU `-M microvm` (also with `rtc=on`) and
//! `-M q35`, on a real KVM (the test rig's L1 on machines without hardware
//! virtualization); see `linux`. `cargo xtask bench io` measures virtio-blk throughput in
//! the same way against QEMU q35; see `io`. `cargo xtask bench bios` times the classic
//! BIOS workflow (installer CD, installed disk) against QEMU `-M pc`; see `bios`.
//! `cargo xtask bench img` measures `kiln img` against `qemu-img` (I/O and convert); see
//! `img`.

mod bench;
mod bios;
mod img;
mod io;
mod io_scripts;
mod linux;
mod linux_report;
mod linux_trace;
mod peers;
mod report;
mod sys;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use bench::Runs;
use peers::Env;

const USAGE: &str = "\
usage: cargo xtask bench [startup|memory|all] [--runs N] [--warmup N] [--output markdown|json]
       cargo xtask bench linux [--runs N] [--kiln PATH]
       cargo xtask bench io [--runs N] [--kiln PATH]
       cargo xtask bench bios [--runs N] [--kiln PATH]
       cargo xtask bench img [--runs N] [--kiln PATH] [--dir DIR]

  startup   wall time from process start to the tiny guest's exit, and to the
            first KVM_RUN (under strace), Kiln vs qemu-system-x86_64 -M microvm
  memory    Kiln's peak RSS minus guest pages touched, vs QEMU's peak RSS
  all       both (the default)
  linux     Debian's kernel to a userspace marker and to power-off, Kiln vs
            QEMU -M microvm, microvm,rtc=on and q35, on a real KVM (the rig's
            L1 on machines without hardware virtualization);
            --runs defaults to 10, --kiln uses a prebuilt kiln binary;
            Markdown only; takes ~1 min per run in the rig
  io        virtio-blk: a Linux guest's 128 MiB dd write and read, Kiln vs QEMU
            q35 + virtio-blk-pci on the same raw image (--runs defaults to 5)
  bios      the classic workflow through SeaBIOS: the installer CD and the
            installed disk to their userspace markers, Kiln (kiln kvm) vs QEMU
            -M pc, IDE disk and CD (--runs defaults to 2)
  img       disk images: kiln img bench vs qemu-img bench (sequential and
            random reads, overwrites and allocating writes on raw and qcow2)
            and convert of a 1 GiB image; files in target/kiln-bench-img
            unless --dir (--runs defaults to 7; verdicts on the fastest runs)

  --runs N     measured runs per peer (default 20)
  --warmup N   discarded warm-up runs per peer (default 3)
  --output F   markdown (default) or json, on stdout; progress goes to stderr

Needs /dev/kvm, qemu-system-x86_64 (10.x) and strace: `bash scripts/setup.sh bench`
installs them and runs this.";

/// Which benchmarks to run and how.
struct BenchArgs {
    startup: bool,
    memory: bool,
    runs: Runs,
    json: bool,
}

fn parse_bench(args: &[String]) -> Result<BenchArgs> {
    let mut out = BenchArgs {
        startup: true,
        memory: true,
        runs: Runs {
            measured: 20,
            warmup: 3,
        },
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<&String> {
            it.next().with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "startup" => (out.startup, out.memory) = (true, false),
            "memory" => (out.startup, out.memory) = (false, true),
            "all" => (out.startup, out.memory) = (true, true),
            "--runs" => {
                out.runs.measured = value("--runs")?.parse().context("--runs takes a number")?;
                if out.runs.measured == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            "--warmup" => {
                out.runs.warmup = value("--warmup")?
                    .parse()
                    .context("--warmup takes a number")?
            }
            "--output" => match value("--output")?.as_str() {
                "json" => out.json = true,
                "markdown" | "text" => out.json = false,
                other => bail!("unknown output format '{other}' (markdown or json)"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}'\n\n{USAGE}"),
        }
    }
    Ok(out)
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Build Kiln in release mode and return the binary's path.
pub(crate) fn build_kiln(root: &Path) -> Result<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("[xtask] cargo build --release -p kiln");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "kiln"])
        .current_dir(root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build --release -p kiln failed ({status})");
    }
    let kiln = root.join("target/x86_64-unknown-linux-gnu/release/kiln");
    if !kiln.is_file() {
        bail!("{} is missing after the build", kiln.display());
    }
    Ok(kiln)
}

/// Fail early, with the fix, if a peer or strace is missing.
fn preflight(need_strace: bool) -> Result<()> {
    if fs::metadata("/dev/kvm").is_err() {
        bail!("/dev/kvm is missing");
    }
    let mut tools = vec!["qemu-system-x86_64"];
    if need_strace {
        tools.push("strace");
    }
    for tool in tools {
        let found = Command::new(tool)
            .arg(if tool == "strace" { "-V" } else { "--version" })
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{tool} is not installed: run `bash scripts/setup.sh bench` (as root)");
        }
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("linux") {
        return linux::bench(&workspace_root(), &args[1..]);
    }
    if args.first().map(String::as_str) == Some("io") {
        return io::bench(&workspace_root(), &args[1..]);
    }
    if args.first().map(String::as_str) == Some("img") {
        return img::bench(&workspace_root(), &args[1..]);
    }
    if args.first().map(String::as_str) == Some("bios") {
        return bios::bench(&workspace_root(), &args[1..]);
    }
    let opts = parse_bench(args)?;
    preflight(opts.startup)?;
    let root = workspace_root();
    let kiln = build_kiln(&root)?;

    let dir = env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tiny = dir.join("tiny.bin");
    fs::write(&tiny, kiln_guests::TINY).context("writing the tiny guest")?;
    let env = Env {
        kiln,
        tiny,
        dir: dir.clone(),
    };

    let machine = report::Machine::detect(&root);
    let tiny_name = Path::new("tiny.bin");
    let result = (|| -> Result<Vec<report::Section>> {
        let mut sections = Vec::new();
        if opts.startup {
            sections.push(bench::startup(&env, opts.runs, tiny_name)?);
        }
        if opts.memory {
            sections.push(bench::memory(&env, opts.runs, tiny_name)?);
        }
        Ok(sections)
    })();
    let _ = fs::remove_dir_all(&dir);
    let mut sections = result?;
    if let Some(last) = sections.last_mut() {
        last.notes.push(format!(
            "load average at the end: {}",
            report::load_average()
        ));
    }
    if opts.json {
        print!("{}", report::json(&machine, &sections));
    } else {
        print!("{}", report::markdown(&machine, &sections));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task '{other}'\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
