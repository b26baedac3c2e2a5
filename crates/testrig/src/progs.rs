//! Small static C programs the tests and benchmarks run inside guests and in L1, where
//! busybox has no equivalent: `vsock_echo` (both ends of a vsock connection, including
//! Firecracker's Unix-socket handshake) and `io_bench` (O_DIRECT 4 KiB random reads, a
//! timed TCP upload and its receiver). Their sources are in `crates/testrig/progs/`.
//!
//! They are C rather than Rust because they must be static binaries that can be carried
//! into a guest initramfs as plain files, built on demand by the test that needs them;
//! `cc -static` (gcc and libc6-dev, which `scripts/setup.sh` installs as Rust's linker
//! anyway) does that in a second, without a second cargo build inside a test. Each build
//! is cached under `target/kiln-artifacts/progs/` by a hash of its source.

use crate::{artifacts_dir, run_tool, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// A program this module can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prog {
    /// `vsock_echo`: see `progs/vsock_echo.c`.
    VsockEcho,
    /// `io_bench`: see `progs/io_bench.c`.
    IoBench,
}

impl Prog {
    /// The program's name (and its source's file stem).
    pub fn name(self) -> &'static str {
        match self {
            Prog::VsockEcho => "vsock_echo",
            Prog::IoBench => "io_bench",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Prog::VsockEcho => include_str!("../progs/vsock_echo.c"),
            Prog::IoBench => include_str!("../progs/io_bench.c"),
        }
    }
}

/// FNV-1a, enough to tell two versions of a source apart.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The static binary of `prog`, built now unless a build of the same source is cached.
pub fn build(prog: Prog) -> Result<PathBuf> {
    let dir = artifacts_dir().join("progs");
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let src = prog.source();
    let out = dir.join(format!("{}-{:016x}", prog.name(), fnv1a(src.as_bytes())));
    if out.is_file() {
        return Ok(out);
    }
    // Unique per build: tests build the same program from several threads and processes.
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("{}-{n}", std::process::id());
    let c = dir.join(format!("{}.{tag}.c", prog.name()));
    std::fs::write(&c, src).ctx(|| format!("writing {}", c.display()))?;
    let tmp = out.with_extension(format!("tmp{tag}"));
    let built = run_tool(
        Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&c),
    );
    let _ = std::fs::remove_file(&c);
    built?;
    std::fs::rename(&tmp, &out).ctx(|| format!("renaming {}", tmp.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_static_binaries_that_run() {
        for prog in [Prog::VsockEcho, Prog::IoBench] {
            let bin = build(prog).unwrap();
            let out = Command::new(&bin).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{}: usage exit", prog.name());
            let usage = String::from_utf8_lossy(&out.stderr);
            assert!(usage.contains(prog.name()), "{usage}");
            // Static: no program interpreter (no dynamic loader) in the ELF.
            let elf = std::fs::read(&bin).unwrap();
            let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
            let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
            let (size, count) = (u16_at(0x36), u16_at(0x38));
            const PT_INTERP: u32 = 3;
            let interp = (0..count).any(|i| {
                let o = phoff + i * size;
                u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == PT_INTERP
            });
            assert!(!interp, "{} is dynamically linked", prog.name());
        }
    }

    #[test]
    fn tcp_upload_counts_every_byte() {
        let bin = build(Prog::IoBench).unwrap();
        let port = 20000 + (std::process::id() % 20000) as u16;
        let recv = Command::new(&bin)
            .args(["tcp-recv", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let send = Command::new(&bin)
            .args(["tcp-send", "127.0.0.1", &port.to_string(), "3000000"])
            .output()
            .unwrap();
        let recv = recv.wait_with_output().unwrap();
        let sent = String::from_utf8_lossy(&send.stdout);
        assert!(
            sent.starts_with("KILN-TCP bytes=3000000 seconds="),
            "{sent}"
        );
        assert_eq!(
            String::from_utf8_lossy(&recv.stdout).trim(),
            "KILN-TCP-RECV bytes=3000000"
        );
    }
}
