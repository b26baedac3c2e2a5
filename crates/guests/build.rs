//! Build script for `kiln-guests`: assembles the guest programs in `asm/`
//! with GNU binutils (`as`, `ld`, `objcopy`) into `OUT_DIR`.
//!
//! Every program is assembled to an object, linked with `asm/guest.ld` at its
//! load address (`--defsym=LOAD_ADDR=...`) and, unless an ELF is wanted,
//! turned into a flat image with `objcopy -O binary`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the final artifact is.
#[derive(Clone, Copy)]
enum Output {
    /// Flat binary from `objcopy -O binary`.
    Flat,
    /// The linked ELF executable itself.
    Elf,
}

/// One guest program.
struct Guest {
    /// Output file name in `OUT_DIR`.
    out: &'static str,
    /// Source file in `asm/`.
    source: &'static str,
    /// Extra `as` arguments (`--32`/`--64`, `--defsym ...`).
    as_args: &'static [&'static str],
    /// `ld -m` emulation.
    emulation: &'static str,
    /// Guest-physical load address of the first byte.
    load_addr: u64,
    /// Kind of artifact.
    output: Output,
}

const GUESTS: &[Guest] = &[
    Guest {
        out: "raw_real.bin",
        source: "raw_real.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0xF0000,
        output: Output::Flat,
    },
    Guest {
        out: "raw_protected.bin",
        source: "raw_protected.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0xF0000,
        output: Output::Flat,
    },
    Guest {
        out: "raw_long.bin",
        source: "raw_long.S",
        as_args: &["--64"],
        emulation: "elf_x86_64",
        load_addr: 0xF0000,
        output: Output::Flat,
    },
    Guest {
        out: "multiboot_elf.elf",
        source: "multiboot.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0x100000,
        output: Output::Elf,
    },
    Guest {
        out: "multiboot_aout.bin",
        source: "multiboot.S",
        as_args: &["--32", "--defsym", "AOUT_KLUDGE=1"],
        emulation: "elf_i386",
        load_addr: 0x100000,
        output: Output::Flat,
    },
    Guest {
        out: "demo.bin",
        source: "demo.S",
        as_args: &["--64"],
        emulation: "elf_x86_64",
        load_addr: 0x10000,
        output: Output::Flat,
    },
    Guest {
        out: "hostile.bin",
        source: "hostile.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0x100000,
        output: Output::Flat,
    },
    Guest {
        out: "serial_sum.bin",
        source: "serial_sum.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0x100000,
        output: Output::Flat,
    },
    Guest {
        out: "slot_probe.bin",
        source: "slot_probe.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0x100000,
        output: Output::Flat,
    },
    Guest {
        out: "boot_sector.bin",
        source: "boot_sector.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0x7C00,
        output: Output::Flat,
    },
    Guest {
        out: "tiny.bin",
        source: "tiny.S",
        as_args: &["--32"],
        emulation: "elf_i386",
        load_addr: 0xF0000,
        output: Output::Flat,
    },
];

/// Shared files every program may depend on.
const SHARED: &[&str] = &["guest.ld", "serial16.inc", "serial32.inc", "serial64.inc"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let asm = manifest_dir.join("asm");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    for file in SHARED {
        println!("cargo:rerun-if-changed={}", asm.join(file).display());
    }
    for guest in GUESTS {
        println!(
            "cargo:rerun-if-changed={}",
            asm.join(guest.source).display()
        );
    }

    for guest in GUESTS {
        build(guest, &asm, &out_dir);
    }
}

fn build(guest: &Guest, asm: &Path, out_dir: &Path) {
    let stem = guest.out.split('.').next().expect("output name");
    let object = out_dir.join(format!("{stem}.o"));
    let linked = out_dir.join(format!("{stem}.linked.elf"));
    let target = out_dir.join(guest.out);

    let mut args: Vec<String> = guest.as_args.iter().map(|s| s.to_string()).collect();
    args.push("-I".into());
    args.push(path_str(asm));
    args.push("-o".into());
    args.push(path_str(&object));
    args.push(path_str(&asm.join(guest.source)));
    run("as", &args);

    let elf_out = match guest.output {
        Output::Elf => &target,
        Output::Flat => &linked,
    };
    let args: Vec<String> = vec![
        "-m".into(),
        guest.emulation.into(),
        "-nostdlib".into(),
        "--build-id=none".into(),
        "-z".into(),
        "noexecstack".into(),
        "--no-warn-rwx-segments".into(),
        format!("--defsym=LOAD_ADDR={:#x}", guest.load_addr),
        "-T".into(),
        path_str(&asm.join("guest.ld")),
        "-o".into(),
        path_str(elf_out),
        path_str(&object),
    ];
    run("ld", &args);

    if let Output::Flat = guest.output {
        let args = vec![
            "-O".into(),
            "binary".into(),
            path_str(&linked),
            path_str(&target),
        ];
        run("objcopy", &args);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("kiln-guests: non-UTF-8 path {}", path.display()))
        .to_owned()
}

/// Runs a binutils tool; panics with one clear message if it is missing or
/// fails. Warnings on stderr of a successful run are forwarded.
fn run(tool: &str, args: &[String]) {
    let cmdline = format!("{tool} {}", args.join(" "));
    let output = match Command::new(tool).args(args).output() {
        Ok(output) => output,
        Err(err) => panic!(
            "kiln-guests: could not run `{tool}` ({err}); the guest programs are assembled \
             with GNU binutils at build time: install binutils (apt-get install binutils)\n\
             command: {cmdline}"
        ),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "kiln-guests: `{tool}` failed ({}); the guest programs are assembled with GNU \
             binutils at build time: install binutils (apt-get install binutils) if it is \
             missing or broken\ncommand: {cmdline}\n{tool} stderr:\n{stderr}",
            output.status
        );
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={tool}: {line}");
    }
}
