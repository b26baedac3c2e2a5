//! Helpers for the block crate's interop tests: run the real qemu-img/qemu-io, make
//! deterministic test data, and read whole devices.
#![allow(dead_code)]

use kiln_block::{BlockDevice, OpenOptions};
use std::path::Path;
use std::process::Command;

/// Run a QEMU tool; panics (with its output) unless it exits 0. Fails loudly when the
/// tool is missing: these tests must never be skipped silently.
pub fn qemu(tool: &str, args: &[&str]) -> std::process::Output {
    let out = run_qemu(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a QEMU tool, again (up to 5 times) while it only failed to get an image's lock:
/// tests run in parallel threads, and a child spawned by another thread briefly holds
/// copies of this thread's image descriptors (and so their locks) until it execs.
pub fn run_qemu(tool: &str, args: &[&str]) -> std::process::Output {
    let mut tries = 0;
    loop {
        let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("{tool} is needed for these tests (apt-get install qemu-utils): {e}")
        });
        let locked = String::from_utf8_lossy(&out.stderr).contains("Failed to get");
        if out.status.success() || !locked || tries == 5 {
            return out;
        }
        tries += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `qemu-img create -f qcow2 -o OPTS IMG SIZE`: a fresh qcow2 image made by QEMU.
pub fn qemu_create(img: &Path, opts: &str, size: &str) {
    qemu(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", opts, s(img), size],
    );
}

/// `qemu-img check` exit status.
pub fn qemu_check(path: &Path) -> i32 {
    let out = run_qemu("qemu-img", &["check", path.to_str().unwrap()]);
    if out.status.code() != Some(0) {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.code().unwrap_or(-1)
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `n` bytes of test data: random, with zero runs (so images have holes).
pub fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = r.bytes(n);
    for i in 0..n / 65536 {
        if i % 3 == 1 {
            v[i * 65536..(i + 1) * 65536].fill(0);
        }
    }
    v
}

/// Open with probing and the backing chain.
pub fn open(path: &Path, read_only: bool) -> Box<dyn BlockDevice> {
    kiln_block::open(
        path,
        &OpenOptions {
            read_only,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The whole guest view of a device.
pub fn read_all(dev: &mut dyn BlockDevice) -> Vec<u8> {
    let mut v = vec![0u8; dev.size() as usize];
    dev.read_at(&mut v, 0).unwrap();
    v
}

/// What qemu-img says the guest view is.
pub fn qemu_raw(dir: &Path, img: &Path) -> Vec<u8> {
    let out = dir.join("qemu-view.raw");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

/// Assert two guest views are equal, naming the first differing offset.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at offset {i:#x}: got {:#x}, want {:#x}",
            got[i], want[i]
        );
    }
}

/// A path string.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
