//! Shared helpers for Kiln's integration tests: run the real `kiln` binary against the
//! machine's real /dev/kvm, with a deadline, and look at what it printed.
#![allow(dead_code)]

pub mod virtio_guest;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The kiln binary built for these tests.
pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// Fail loudly when the machine has no KVM: these tests must never be skipped silently.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test runs real guests and needs /dev/kvm, which this machine lacks"
    );
}

/// What a finished kiln run left behind.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("kiln died from a signal: {self:?}"))
    }

    /// Assert the run ended with `code`, showing everything on failure.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected status: {self:#?}"
        );
        self.no_panic()
    }

    /// Assert nothing looks like a Rust panic or backtrace.
    pub fn no_panic(&self) -> &Self {
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!self.stderr.contains(bad), "kiln panicked: {self:#?}");
        }
        self
    }

    /// Assert a Kiln error: status 1, exactly one stderr line, containing `needle`.
    pub fn expect_error(&self, needle: &str) -> &Self {
        self.expect_code(1);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "want one error line: {self:#?}");
        assert!(lines[0].starts_with("kiln: "), "{self:#?}");
        assert!(lines[0].contains(needle), "want '{needle}' in: {self:#?}");
        self
    }

    /// The 16-hex-digit value of register `name` in the (first) register dump.
    pub fn reg(&self, name: &str) -> u64 {
        let key = format!("{name}=");
        let at = self
            .stderr
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in dump: {self:#?}"));
        let hex: String = self.stderr[at + key.len()..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        u64::from_str_radix(&hex, 16).unwrap()
    }
}

/// Default deadline for a guest run.
pub const DEADLINE: Duration = Duration::from_secs(60);

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Wait for `child` with a deadline; kill it and fail if it runs over.
pub fn wait(mut child: Child, deadline: Duration) -> Run {
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kiln still running after {deadline:?}; stdout: {}\nstderr: {}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A `kiln` command with piped output and no input.
pub fn kiln(args: &[&str]) -> Command {
    let mut c = Command::new(kiln_bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("KILN_KVM_DEVICE");
    c
}

/// Run `kiln ARGS` to completion.
pub fn run(args: &[&str]) -> Run {
    wait(kiln(args).spawn().expect("spawn kiln"), DEADLINE)
}

/// Run `kiln ARGS` with `input` written to its stdin through a pipe.
pub fn run_with_input(args: &[&str], input: Vec<u8>) -> Run {
    let mut child = kiln(args).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let r = wait(child, DEADLINE);
    writer.join().unwrap();
    r
}

/// A scratch directory holding files for one test.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Write `data` to `name` in the directory; returns the path as a string.
    pub fn file(&self, name: &str, data: &[u8]) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }
}

/// A host program's canonical path, from the usual system directories (what the rig's
/// `carry_program` takes); panics naming the program when it is not installed.
pub fn which(program: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return p.canonicalize().unwrap();
        }
    }
    panic!("{program} is not installed (scripts/setup.sh installs it)");
}

/// The exit status of `qemu-img ARGS` (fails loudly when qemu-img is missing).
pub fn qemu_img_status(args: &[&str]) -> i32 {
    std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("qemu-img is needed for these tests (apt-get install qemu-utils): {e}")
        })
        .status
        .code()
        .unwrap()
}

/// Set the 16-bit refcount of cluster `c` in the first refcount block (at 2 clusters) of
/// a qcow2 image with 64 KiB clusters.
pub fn poke_refcount(path: &str, c: usize, v: u16) {
    let mut f = std::fs::read(path).unwrap();
    let at = 2 * 65536 + 2 * c;
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    std::fs::write(path, f).unwrap();
}

/// Run a QEMU tool (qemu-img, qemu-io) and insist it succeeds; returns its stdout.
pub fn qemu_ok(tool: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed for these tests (qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img create -q -f FMT OPTIONS... PATH [SIZE]` (SIZE "" for none: an overlay
/// takes its backing file's size); OPTIONS such as `["-o", "compat=0.10"]` or
/// `["-b", "base.qcow2", "-F", "qcow2"]`.
pub fn qemu_create(fmt: &str, options: &[&str], path: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", fmt];
    args.extend(options);
    args.push(path);
    if !size.is_empty() {
        args.push(size);
    }
    qemu_ok("qemu-img", &args);
}

/// `qemu-io -f FMT -c CMD ... PATH`: the commands run in order on the image.
pub fn qemu_io(fmt: &str, path: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(path);
    qemu_ok("qemu-io", &args);
}
