//! Kiln's test rig: what the integration tests need to run Kiln against a real KVM.
//!
//! - [`artifacts`]: Debian kernels, their KVM modules and busybox, downloaded with
//!   `apt-get download`, extracted with `dpkg-deb -x` (nothing is installed) and cached
//!   under `target/kiln-artifacts/`.
//! - [`cpio`]: a newc ("070701") initramfs writer and reader.
//! - [`initramfs`]: a file-tree builder on top of it, and the L2 (guest) initramfs with
//!   busybox and a default `/init`.
//! - [`rig`]: run a batch of `kiln` invocations (or of other programs it carries) on a
//!   real KVM: directly when this machine has hardware virtualization, otherwise inside
//!   "L1", a Debian kernel with kvm-amd booted by QEMU (TCG emulating AMD-V with nested
//!   paging).
//! - [`progs`]: small static C programs for guests and L1 (vsock echo, I/O benchmarks).
//!
//! This crate owns the shared error type and the cache location; see each module for
//! the rest.

pub mod artifacts;
pub mod bzimage;
pub mod cpio;
pub mod initramfs;
pub mod install_iso;
mod l1;
pub mod progs;
pub mod rig;

pub use artifacts::{Artifacts, GenericKernel};
pub use initramfs::{guest_initramfs, Initramfs, Source, DEFAULT_GUEST_INIT};
pub use rig::{Batch, BatchResult, Host, RunResult, RunSpec};

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Output};

/// What went wrong, as one human-readable message (with the context needed to act on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Build an [`Error`] from a format string.
macro_rules! err {
    ($($t:tt)*) => { $crate::Error(format!($($t)*)) };
}
pub(crate) use err;

/// Attach context to I/O (or other) errors.
pub(crate) trait Context<T> {
    /// Prefix the error with `what` (e.g. "reading /x").
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

/// The workspace's cargo target directory: `$CARGO_TARGET_DIR` (at run time, then at
/// build time), else `target/` at the workspace root.
pub fn target_dir() -> PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf();
    let from_env = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from));
    match from_env {
        Some(p) if p.is_absolute() => p,
        Some(p) => root.join(p),
        None => root.join("target"),
    }
}

/// Where downloaded artifacts and rig logs live: `<target>/kiln-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    target_dir().join("kiln-artifacts")
}

/// Run a tool to completion; fail with its command line, status and stderr unless it
/// exits 0.
pub(crate) fn run_tool(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .ctx(|| format!("cannot run {shown} (is it installed?)"))?;
    if !out.status.success() {
        return Err(err!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The hex digest of `data` by the host's coreutils `tool` (`md5sum`, `sha256sum`): the
/// same reference the guests' busybox applets are compared with.
pub fn digest_hex(tool: &str, data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(tool)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Feed from another thread so a large input cannot deadlock against the output pipe.
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .expect("waiting for the digest tool");
    feeder
        .join()
        .expect("feeder thread")
        .unwrap_or_else(|e| panic!("writing to {tool}: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("{tool} printed nothing"))
        .to_string()
}
