//! Shared by the crash tests (crash_kill.rs, crash_powerloss.rs): the writer child, its
//! seeded operations, the marker log, and the verdict on a crashed image.
//!
//! The writer child is the test binary itself, re-run with `KILN_CRASH_CHILD` set and a
//! filter selecting its `crash_writer_child` test (which does nothing otherwise). It opens
//! the image (with its backing file) read-write, runs the operations of its seed, and
//! appends a marker record after each one to a marker file (one `write` each, so a kill
//! loses none): `D` op i done, `F` ops[..n] covered by a completed flush. Markers have the
//! trace format of kiln-block's test hook, so with `KILN_BLOCK_TRACE` they go into the
//! same file, in order with the writes and syncs.
#![allow(dead_code)]

use crate::support::{qemu, qemu_create, Rng};
use kiln_block::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One writer operation.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Write `len` seeded bytes at `off`.
    Write { off: u64, len: u64, seed: u64 },
    /// `write_zeroes`.
    Zero { off: u64, len: u64 },
    /// `discard` (Kiln's discarded ranges read as zeros).
    Discard { off: u64, len: u64 },
    /// `flush`.
    Flush,
}

/// An image layout to test.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub cluster_size: u64,
    pub refcount_bits: u32,
    pub backing: bool,
    pub lazy: bool,
    pub size: u64,
    pub ops: usize,
    /// Tables per metadata cache in the writer (0: Kiln's default); small caches make
    /// evictions write metadata out in the middle of operations.
    pub cache_tables: usize,
}

impl Config {
    /// Bytes of the backing file (smaller than the disk, so part reads as zeros).
    fn backing_len(&self) -> u64 {
        self.size / 4 * 3
    }
}

/// The operations of `seed`, ending with a flush (seed 0: [`reuse_scenario`]).
pub fn ops(cfg: &Config, seed: u64) -> Vec<Op> {
    if seed == 0 {
        return reuse_scenario(cfg);
    }
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let cs = cfg.cluster_size;
    let size = cfg.size;
    let mut v = Vec::new();
    for _ in 0..cfg.ops {
        // Half the operations go to a hot eighth of the disk, so they meet earlier
        // ones (overwrites, zeroing and discards of allocated clusters).
        let span = if r.below(2) == 0 { size / 8 } else { size };
        let off = match r.below(3) {
            0 => r.below(span / cs) * cs,
            _ => r.below(span),
        };
        let len = match r.below(4) {
            0 => 1 + r.below(512),
            1 => 1 + r.below(cs),
            2 => cs * (1 + r.below(3)),
            _ => 1 + r.below(3 * cs + 1000),
        }
        .min(size - off)
        .max(1);
        let op = match r.below(20) {
            0..=10 => Op::Write {
                off,
                len,
                seed: r.next(),
            },
            // Zeroing and discards mostly of whole clusters, so clusters get freed.
            11..=13 => {
                let (off, len) = whole_clusters(&mut r, off, len, cs, size);
                Op::Zero { off, len }
            }
            14..=15 => {
                let (off, len) = whole_clusters(&mut r, off, len, cs, size);
                Op::Discard { off, len }
            }
            _ => Op::Flush,
        };
        v.push(op);
    }
    v.push(Op::Flush);
    v
}

/// A fixed scenario: a data cluster is written, flushed, discarded and freed at a flush;
/// then a write to a range without an L2 table places the new table on that freed
/// cluster (its stale contents are guest data), and a flush links it.
pub fn reuse_scenario(cfg: &Config) -> Vec<Op> {
    let cs = cfg.cluster_size;
    let l2_span = cs / 8 * cs;
    vec![
        Op::Write {
            off: 0,
            len: cs,
            seed: 11,
        },
        Op::Flush,
        Op::Discard { off: 0, len: cs },
        Op::Flush,
        Op::Write {
            off: 2 * l2_span,
            len: cs,
            seed: 12,
        },
        Op::Flush,
    ]
}

/// Usually turn (off, len) into a run of 1 to 4 whole clusters.
fn whole_clusters(r: &mut Rng, off: u64, len: u64, cs: u64, size: u64) -> (u64, u64) {
    if r.below(4) == 0 {
        return (off, len);
    }
    let off = off / cs * cs;
    (off, (cs * (1 + r.below(4))).min(size - off))
}

/// The bytes a write op writes (memoized: the verdict needs them again and again).
pub fn write_data(seed: u64, len: u64) -> Vec<u8> {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<(u64, u64), Vec<u8>>> =
            Default::default();
    }
    CACHE.with(|c| {
        c.borrow_mut()
            .entry((seed, len))
            .or_insert_with(|| Rng(seed | 1).bytes(len as usize))
            .clone()
    })
}

/// A scratch directory on tmpfs when there is one (the kill test needs no real
/// durability, and thousands of fdatasyncs on a disk would be slow).
pub fn scratch() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("kiln-crash")
            .tempdir_in("/dev/shm")
        {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Create the image (and its raw backing file) for `cfg` with qemu-img; returns the
/// image path and the guest view before any write.
pub fn make_image(dir: &Path, cfg: &Config, name: &str) -> (PathBuf, Vec<u8>) {
    let img = dir.join(format!("{name}.qcow2"));
    let mut opts = format!(
        "cluster_size={},refcount_bits={}",
        cfg.cluster_size, cfg.refcount_bits
    );
    if cfg.lazy {
        opts += ",lazy_refcounts=on";
    }
    let mut base = vec![0u8; cfg.size as usize];
    let size = cfg.size.to_string();
    if cfg.backing {
        let b = dir.join(format!("{name}-base.raw"));
        let bytes = crate::support::data(0xba5e ^ cfg.cluster_size, cfg.backing_len() as usize);
        std::fs::write(&b, &bytes).unwrap();
        base[..bytes.len()].copy_from_slice(&bytes);
        let bs = b.to_str().unwrap();
        qemu(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &opts,
                "-b",
                bs,
                "-F",
                "raw",
                img.to_str().unwrap(),
                &size,
            ],
        );
    } else {
        qemu_create(&img, &opts, &size);
    }
    (img, base)
}

/// Run the writer child on `img` (test `child_test` of this binary); `env` adds the hook
/// variables. Returns whether it was killed by SIGKILL.
pub fn run_child(
    child_test: &str,
    cfg: &Config,
    seed: u64,
    img: &Path,
    markers: &Path,
    env: &[(&str, String)],
) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let spec = format!(
        "{}|{}|{}|{}|{}|{}|{}|{}",
        img.display(),
        markers.display(),
        seed,
        cfg.cluster_size,
        cfg.refcount_bits,
        u8::from(cfg.backing),
        u8::from(cfg.lazy),
        cfg.size,
    );
    let spec = format!("{spec}|{}", cfg.ops);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env("KILN_CRASH_CHILD", spec)
        .env_remove("KILN_BLOCK_KILL_AT_META_WRITE")
        .env_remove("KILN_BLOCK_TRACE")
        .env_remove("KILN_BLOCK_CACHE_TABLES");
    if cfg.cache_tables > 0 {
        cmd.env("KILN_BLOCK_CACHE_TABLES", cfg.cache_tables.to_string());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    if out.status.signal() == Some(libc::SIGKILL) {
        return true;
    }
    assert!(
        out.status.success(),
        "writer child failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// The child's body: runs only when `KILN_CRASH_CHILD` is set.
pub fn child_main() {
    let Ok(spec) = std::env::var("KILN_CRASH_CHILD") else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let img = PathBuf::from(f[0]);
    let cfg = Config {
        cluster_size: f[3].parse().unwrap(),
        refcount_bits: f[4].parse().unwrap(),
        backing: f[5] == "1",
        lazy: f[6] == "1",
        size: f[7].parse().unwrap(),
        ops: f[8].parse().unwrap(),
        cache_tables: 0,
    };
    let seed: u64 = f[2].parse().unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(f[1])
        .unwrap();
    let mut mark = |tag: u8, a: u64| {
        let mut rec = vec![tag];
        rec.extend_from_slice(&a.to_be_bytes());
        rec.extend_from_slice(&0u64.to_be_bytes());
        log.write_all(&rec).unwrap();
    };
    let mut dev = kiln_block::open(&img, &OpenOptions::default()).unwrap();
    for (i, op) in ops(&cfg, seed).iter().enumerate() {
        match *op {
            Op::Write { off, len, seed } => dev.write_at(&write_data(seed, len), off).unwrap(),
            Op::Zero { off, len } => dev.write_zeroes(off, len).unwrap(),
            Op::Discard { off, len } => dev.discard(off, len).unwrap(),
            Op::Flush => {
                dev.flush().unwrap();
                mark(b'F', i as u64 + 1);
            }
        }
        mark(b'D', i as u64);
    }
}

/// A parsed trace/marker record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub tag: u8,
    pub a: u64,
    pub b: u64,
    pub data: Vec<u8>,
}

/// Parse a trace or marker file.
pub fn parse(bytes: &[u8]) -> Vec<Rec> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert!(at + 17 <= bytes.len(), "truncated trace record");
        let tag = bytes[at];
        let a = u64::from_be_bytes(bytes[at + 1..at + 9].try_into().unwrap());
        let b = u64::from_be_bytes(bytes[at + 9..at + 17].try_into().unwrap());
        at += 17;
        let mut data = Vec::new();
        if tag == b'W' || tag == b'M' {
            data = bytes[at..at + b as usize].to_vec();
            at += b as usize;
        }
        v.push(Rec { tag, a, b, data });
    }
    v
}

/// From the markers seen before a crash: (ops covered by a completed flush, ops that may
/// have run: those done plus the one in progress).
pub fn durable_and_started(markers: &[Rec], nops: usize) -> (usize, usize) {
    let mut durable = 0;
    let mut done = 0;
    for m in markers {
        match m.tag {
            b'F' => durable = m.a as usize,
            b'D' => done = m.a as usize + 1,
            _ => {}
        }
    }
    (durable, (done + 1).min(nops))
}

/// Check a crashed guest view: every byte is what the flushed ops left, or what one of
/// the ops that may have run after them wrote.
pub fn verify_view(
    view: &[u8],
    base: &[u8],
    ops: &[Op],
    durable: usize,
    started: usize,
) -> Result<(), String> {
    if view.len() != base.len() {
        return Err(format!("size {} != {}", view.len(), base.len()));
    }
    let mut want = base.to_vec();
    let apply = |st: &mut Vec<u8>, op: &Op| match *op {
        Op::Write { off, len, seed } => {
            st[off as usize..(off + len) as usize].copy_from_slice(&write_data(seed, len))
        }
        Op::Zero { off, len } | Op::Discard { off, len } => {
            st[off as usize..(off + len) as usize].fill(0)
        }
        Op::Flush => {}
    };
    for op in &ops[..durable] {
        apply(&mut want, op);
    }
    let later: Vec<(Op, Option<Vec<u8>>)> = ops[durable..started.max(durable)]
        .iter()
        .map(|op| match *op {
            Op::Write { len, seed, .. } => (*op, Some(write_data(seed, len))),
            _ => (*op, None),
        })
        .collect();
    const CHUNK: usize = 4096;
    for (ci, (vc, wc)) in view.chunks(CHUNK).zip(want.chunks(CHUNK)).enumerate() {
        if vc == wc {
            continue;
        }
        for (j, (&got, &w)) in vc.iter().zip(wc).enumerate() {
            let i = ci * CHUNK + j;
            if got == w {
                continue;
            }
            let i64_ = i as u64;
            let ok = later.iter().any(|(op, d)| match *op {
                Op::Write { off, len, .. } if (off..off + len).contains(&i64_) => {
                    d.as_ref().unwrap()[(i64_ - off) as usize] == got
                }
                Op::Zero { off, len } | Op::Discard { off, len } => {
                    (off..off + len).contains(&i64_) && got == 0
                }
                _ => false,
            });
            if !ok {
                return Err(format!(
                "guest byte {i:#x} is {got:#x}, want {w:#x} (flushed ops {durable}, started {started})"
            ));
            }
        }
    }
    Ok(())
}

/// `qemu-img check` exit status and output.
pub fn qemu_check_out(img: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", img.to_str().unwrap()])
        .output()
        .expect("qemu-img is needed for these tests");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The full verdict on a crashed image: `qemu-img check` finds no corruption (leaks are
/// fine), Kiln's own check agrees, and the guest view read by Kiln and by
/// `qemu-img convert` keeps every flushed write.
pub fn verdict(
    dir: &Path,
    img: &Path,
    base: &[u8],
    ops: &[Op],
    durable: usize,
    started: usize,
) -> Result<(), String> {
    let (code, out) = qemu_check_out(img);
    if code != 0 && code != 3 {
        return Err(format!("qemu-img check exit {code}:\n{out}"));
    }
    let r = kiln_block::qcow2::check::check(img).map_err(|e| e.to_string())?;
    if r.corruptions > 0 {
        return Err(format!(
            "kiln check: {} corruptions: {:?}",
            r.corruptions, r.messages
        ));
    }
    let mut dev = kiln_block::open(
        img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut view = vec![0u8; dev.size() as usize];
    dev.read_at(&mut view, 0).map_err(|e| e.to_string())?;
    drop(dev);
    verify_view(&view, base, ops, durable, started).map_err(|e| format!("kiln read: {e}"))?;
    let raw = dir.join("verdict.raw");
    let out = Command::new("qemu-img")
        .args([
            "convert",
            "-O",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "qemu-img convert failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let view = std::fs::read(&raw).unwrap();
    verify_view(&view, base, ops, durable, started).map_err(|e| format!("qemu read: {e}"))
}
