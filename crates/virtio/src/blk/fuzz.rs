//! The virtio-blk fuzz target's body: `run_one` turns arbitrary bytes into a queue set up
//! exactly as the PCI transport and [`VirtioBlk`] set one up (so an invalid queue never
//! reaches the device, as in the VMM), a guest-memory image and a raw disk image, then runs
//! `QueueProcessor::process_queue` a bounded number of times and
//! checks invariants.
//!
//! `fuzz/fuzz_targets/virtio_blk.rs` (cargo-fuzz, nightly) calls it with libFuzzer's
//! inputs; `tests/fuzz_corpus.rs` replays `fuzz/corpus/virtio_blk` on stable. The input
//! format is the shared [`Header`] (`HEADER_LEN` bytes; a short input reads as if padded
//! with zeros; its flags are [`DISCARD`], [`WRITE_ZEROES`], [`READ_ONLY`], its device byte
//! picks one of [`DISK_SIZES`]) followed by the guest-memory image: byte `i` of the rest of the input is guest byte `i`
//! (bytes that fall in a hole or past the end of RAM are dropped, RAM not covered is zero).
//! The descriptor table, rings and buffers are whatever that image holds, so loops, indirect
//! tables, out-of-range addresses, zero and huge lengths and wrong directions are all
//! reachable.
//!
//! What is checked: every call returns (a spin shows up as a libFuzzer timeout, or a hung
//! replay test) and reports consistently (used elements are exactly the completions, never
//! more than the heads taken from the ring, the used index in guest memory matches them,
//! a broken queue stays broken, no notification without a completion, without EVENT_IDX
//! always one with a completion); a quiet exit leaves the device caught up with the
//! available index; the counters agree with the ring; the disk never changes size; a
//! read-only disk is never written; a used length never exceeds the chain's writable bytes.
//! The queue set-up, rounds and ring checks are the shared harness's ([`crate::fuzz`]).
//! Guest memory is only reachable through vm-memory's
//! checked accessors (and AddressSanitizer checks the rest when fuzzing), so any access
//! outside it is a panic or a sanitizer report, both crashes.
//!
//! The disk is a raw image in one scratch file per thread (in `/dev/shm` when there is one,
//! so FLUSH's `fdatasync` costs nothing), unlinked at once and reset to the same contents
//! before every input: runs are deterministic.

use super::config::bit;
use super::{VirtioBlk, BUDGET, QUEUE_SIZE};
use crate::fuzz::{drive, guest_memory, Call, Rules, Target};
use crate::worker::Drained;
use crate::GuestMemory;
use kiln_block::raw::RawFile;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;

pub use crate::fuzz::{Header, Round, HEADER_LEN};

/// [`Header::flags`] bit: VIRTIO_BLK_F_DISCARD acked.
pub const DISCARD: u8 = 1;
/// [`Header::flags`] bit: VIRTIO_BLK_F_WRITE_ZEROES acked.
pub const WRITE_ZEROES: u8 = 2;
/// [`Header::flags`] bit: the disk is opened read-only.
pub const READ_ONLY: u8 = 4;

/// Disk sizes in bytes; [`Header::device`] picks one (modulo the count). Some are empty or
/// not whole sectors.
pub const DISK_SIZES: &[u64] = &[0, 512, 4096, 4096 + 100, 8192, 0x4000, 0x1_0000, 0x1_01ff];

/// The serial number GET_ID returns (exactly `ID_BYTES` long).
pub const SERIAL: &str = "kiln-fuzz-0123456789";

/// The disk size in bytes `h` asks for.
pub fn disk_size(h: &Header) -> u64 {
    DISK_SIZES[usize::from(h.device) % DISK_SIZES.len()]
}

/// The feature bits the driver acked.
pub fn acked_features(h: &Header) -> u64 {
    let mut f = bit(VIRTIO_RING_F_INDIRECT_DESC);
    for (on, b) in [
        (h.event_idx, VIRTIO_RING_F_EVENT_IDX),
        (h.flag(DISCARD), VIRTIO_BLK_F_DISCARD),
        (h.flag(WRITE_ZEROES), VIRTIO_BLK_F_WRITE_ZEROES),
    ] {
        if on {
            f |= bit(b);
        }
    }
    f
}

/// Byte `i` of the disk before every input (not zero, so reads show).
pub fn disk_byte(i: u64) -> u8 {
    (i as u8).wrapping_mul(13) ^ (i >> 9) as u8 ^ 0x5a
}

/// What one input did (for checking that seeds reach what they aim at).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The queue was valid, so the device ran (the transport refuses an invalid one).
    pub activated: bool,
    /// Chains put on the used ring, over all calls.
    pub completed: usize,
    /// The ring was found corrupt.
    pub broken: bool,
    /// Some call ran out of budget with chains left.
    pub more: bool,
    /// The device's counters at the end.
    pub counters: Vec<(&'static str, u64)>,
}

impl Summary {
    /// One counter by name (0 if there is none).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |&(_, v)| v)
    }
}

/// Run one input; panics when an invariant fails (see the module documentation).
pub fn run_one(data: &[u8]) {
    run(data);
}

/// `run_one`, reporting what happened.
pub fn run(data: &[u8]) -> Summary {
    let (h, image) = Header::decode(data);
    let mem = guest_memory(h.layout(), image);
    let disk_size = disk_size(&h);
    let read_only = h.flag(READ_ONLY);
    let disk = ScratchDisk::reset(disk_size, read_only);
    let dev = VirtioBlk::new(Box::new(disk), Some(SERIAL.into()));
    let mut target = Blk {
        processor: dev.queue_processor(acked_features(&h)),
        dev: &dev,
        disk_size,
        completed: 0,
    };
    let rules = Rules {
        budget: Some(BUDGET),
        caught_up: true,
        taken_on_break: 1,
        writes_unused_chains: false,
        remembers_broken: true,
    };
    let d = drive(&h, &mem, QUEUE_SIZE, rules, &mut target);
    let broken = target.processor.is_broken();
    drop(target);
    let summary = Summary {
        activated: d.activated,
        completed: d.completed,
        broken,
        more: d.more,
        counters: crate::VirtioDevice::counters(&dev),
    };
    drop(dev);
    ScratchDisk::verify(disk_size, read_only);
    summary
}

/// The processor under the harness, and blk's own checks: the counters.
struct Blk<'a> {
    processor: super::QueueProcessor,
    dev: &'a VirtioBlk,
    disk_size: u64,
    completed: u64,
}

impl Target for Blk<'_> {
    fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        self.processor.process_queue(mem, queue)
    }

    fn check(&mut self, call: &Call) {
        self.completed += call.out.completed as u64;
        // Every chain taken was counted once (a head beyond the queue is taken, not served).
        let c: std::collections::HashMap<_, _> = crate::VirtioDevice::counters(self.dev)
            .into_iter()
            .collect();
        let requests =
            c["read_requests"] + c["write_requests"] + c["flush_requests"] + c["other_requests"];
        assert!(
            (self.completed..=self.completed + 1).contains(&requests),
            "{requests} requests counted for {} completions",
            self.completed
        );
        assert!(c["errors"] <= requests, "{c:?}");
        assert!(
            c["bytes_read"] <= c["read_requests"] * self.disk_size
                && c["bytes_written"] <= c["write_requests"] * self.disk_size,
            "more bytes moved than the disk holds: {c:?}"
        );
        // A used length is the bytes read into the buffers and the status byte.
        for u in &call.used {
            if let Some(chain) = &u.chain {
                assert!(
                    u64::from(u.len) <= chain.writable(),
                    "used length {} for {} writable bytes",
                    u.len,
                    chain.writable()
                );
            }
        }
    }
}

thread_local! {
    /// This thread's scratch disk file (already unlinked).
    static SCRATCH: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// The per-thread raw disk image.
struct ScratchDisk;

impl ScratchDisk {
    /// A raw image of `size` bytes of [`disk_byte`]s in the scratch file.
    fn reset(size: u64, read_only: bool) -> RawFile {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let f = s.get_or_insert_with(create_scratch);
            f.set_len(0).expect("fuzz: truncate scratch disk");
            let contents: Vec<u8> = (0..size).map(disk_byte).collect();
            f.write_all_at(&contents, 0)
                .expect("fuzz: fill scratch disk");
            let f = f.try_clone().expect("fuzz: dup scratch disk");
            RawFile::from_file(f, read_only).expect("fuzz: open scratch disk")
        })
    }

    /// The disk kept its size; a read-only one kept its contents.
    fn verify(size: u64, read_only: bool) {
        SCRATCH.with(|s| {
            let s = s.borrow();
            let f = s.as_ref().expect("fuzz: scratch disk");
            let len = f.metadata().expect("fuzz: stat scratch disk").len();
            assert_eq!(len, size, "the disk changed size");
            if read_only {
                let mut got = vec![0u8; size as usize];
                f.read_exact_at(&mut got, 0)
                    .expect("fuzz: read scratch disk");
                let first = (0..size).find(|&i| got[i as usize] != disk_byte(i));
                assert_eq!(first, None, "a read-only disk was written");
            }
        });
    }
}

/// Create and unlink a scratch file: in /dev/shm if possible (tmpfs, so FLUSH is free),
/// else in the temporary directory.
fn create_scratch() -> File {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "kiln-virtio-blk-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let shm = Path::new("/dev/shm");
    let dirs: Vec<PathBuf> = if shm.is_dir() {
        vec![shm.to_path_buf(), std::env::temp_dir()]
    } else {
        vec![std::env::temp_dir()]
    };
    let mut last_err = None;
    for dir in dirs {
        let path = dir.join(&name);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                return f;
            }
            Err(e) => last_err = Some((path, e)),
        }
    }
    let (path, e) = last_err.expect("at least one directory tried");
    panic!("fuzz: cannot create scratch disk {}: {e}", path.display());
}
