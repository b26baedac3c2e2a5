//! The virtio-blk fuzz target's body: `run_one` turns arbitrary bytes into a queue set up
//! exactly as the PCI transport and [`VirtioBlk`] set one up (so an invalid queue never
//! reaches the device, as in the VMM), a guest-memory image and a raw disk image, then runs
//! `QueueProcessor::process_queue` a bounded number of times and
//! checks invariants.
//!
//! `fuzz/fuzz_targets/virtio_blk.rs` (cargo-fuzz, nightly) calls it with libFuzzer's
//! inputs; `tests/fuzz_corpus.rs` replays `fuzz/corpus/virtio_blk` on stable. The input
//! format is `Header` (`HEADER_LEN` bytes; a short input reads as if padded with zeros)
//! followed by the guest-memory image: byte `i` of the rest of the input is guest byte `i`
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
//! read-only disk is never written. Guest memory is only reachable through vm-memory's
//! checked accessors (and AddressSanitizer checks the rest when fuzzing), so any access
//! outside it is a panic or a sanitizer report, both crashes.
//!
//! The disk is a raw image in one scratch file per thread (in `/dev/shm` when there is one,
//! so FLUSH's `fdatasync` costs nothing), unlinked at once and reset to the same contents
//! before every input: runs are deterministic.

use super::config::bit;
use super::{QueueOutcome, VirtioBlk, BUDGET, QUEUE_SIZE};
use crate::GuestMemory;
use kiln_block::raw::RawFile;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Length of the encoded `Header`; the guest-memory image follows it.
pub const HEADER_LEN: usize = 53;

/// Most rounds ([`Round`]) one input runs.
pub const MAX_ROUNDS: usize = 4;

/// Most `process_queue` calls per round (the worker calls again while `more` is set).
pub const CALLS_PER_ROUND: usize = 2;

/// Guest RAM layouts, as (start, length) regions; [`Header::memory`] picks one (modulo the
/// count). Some leave holes, so buffers and rings can straddle the end of a region.
pub const MEMORY_LAYOUTS: &[&[(u64, u64)]] = &[
    &[(0, 0x1_0000)],
    &[(0, 0x2_0000)],
    &[(0, 0x4_0000)],
    &[(0, 0x10_0000)],
    &[(0, 0x8000), (0xc000, 0x8000)],
    &[(0, 0x1000), (0x2000, 0xe000)],
];

/// Disk sizes in bytes; [`Header::disk`] picks one (modulo the count). Some are empty or
/// not whole sectors.
pub const DISK_SIZES: &[u64] = &[0, 512, 4096, 4096 + 100, 8192, 0x4000, 0x1_0000, 0x1_01ff];

/// The serial number GET_ID returns (exactly `ID_BYTES` long).
pub const SERIAL: &str = "kiln-fuzz-0123456789";

/// One round: optionally overwrite the driver's fields in guest memory, then run the
/// processor (again while it reports `more`, at most [`CALLS_PER_ROUND`] times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Store this in the available ring's `idx` before the round.
    pub avail_idx: Option<u16>,
    /// Store this in the available ring's `used_event` before the round.
    pub used_event: Option<u16>,
}

/// The fixed-size start of an input.
///
/// Encoding (`HEADER_LEN` bytes, integers little-endian): queue size as log2 (modulo 9,
/// so 1..=256), feature flags (bit 0 EVENT_IDX, 1 DISCARD, 2 WRITE_ZEROES, 3 read-only
/// disk), memory layout, disk size, the descriptor table, available ring and used ring
/// addresses (u64 each), the initial `next_avail` and `next_used` (u16 each), the round
/// count less one (modulo [`MAX_ROUNDS`]), then [`MAX_ROUNDS`] rounds of five bytes:
/// `avail_idx` (u16), `used_event` (u16), flags (bit 0 stores `avail_idx`, bit 1 stores
/// `used_event`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// log2 of the queue size (taken modulo 9).
    pub queue_log2: u8,
    /// VIRTIO_RING_F_EVENT_IDX acked (and set on the queue).
    pub event_idx: bool,
    /// VIRTIO_BLK_F_DISCARD acked.
    pub discard: bool,
    /// VIRTIO_BLK_F_WRITE_ZEROES acked.
    pub write_zeroes: bool,
    /// The disk is opened read-only.
    pub read_only: bool,
    /// Index into [`MEMORY_LAYOUTS`] (modulo its length).
    pub memory: u8,
    /// Index into [`DISK_SIZES`] (modulo its length).
    pub disk: u8,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest address of the used (device) ring.
    pub used_ring: u64,
    /// The queue's initial `next_avail` (as after that many requests).
    pub next_avail: u16,
    /// The queue's initial `next_used`.
    pub next_used: u16,
    /// The rounds to run: 1 to [`MAX_ROUNDS`] (an empty list encodes as one empty round,
    /// extra rounds are dropped).
    pub rounds: Vec<Round>,
}

impl Header {
    /// The queue size this header asks for.
    pub fn queue_size(&self) -> u16 {
        1 << (self.queue_log2 % 9)
    }

    /// The guest RAM layout this header asks for.
    pub fn layout(&self) -> &'static [(u64, u64)] {
        MEMORY_LAYOUTS[usize::from(self.memory) % MEMORY_LAYOUTS.len()]
    }

    /// The disk size in bytes this header asks for.
    pub fn disk_size(&self) -> u64 {
        DISK_SIZES[usize::from(self.disk) % DISK_SIZES.len()]
    }

    /// The feature bits the driver acked.
    pub fn acked_features(&self) -> u64 {
        let mut f = bit(VIRTIO_RING_F_INDIRECT_DESC);
        for (on, b) in [
            (self.event_idx, VIRTIO_RING_F_EVENT_IDX),
            (self.discard, VIRTIO_BLK_F_DISCARD),
            (self.write_zeroes, VIRTIO_BLK_F_WRITE_ZEROES),
        ] {
            if on {
                f |= bit(b);
            }
        }
        f
    }

    /// An input: this header followed by `memory` (byte `i` is guest byte `i`).
    pub fn encode(&self, memory: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + memory.len());
        out.push(self.queue_log2);
        out.push(
            u8::from(self.event_idx)
                | u8::from(self.discard) << 1
                | u8::from(self.write_zeroes) << 2
                | u8::from(self.read_only) << 3,
        );
        out.push(self.memory);
        out.push(self.disk);
        for a in [self.desc_table, self.avail_ring, self.used_ring] {
            out.extend_from_slice(&a.to_le_bytes());
        }
        out.extend_from_slice(&self.next_avail.to_le_bytes());
        out.extend_from_slice(&self.next_used.to_le_bytes());
        let n = self.rounds.len().clamp(1, MAX_ROUNDS);
        out.push((n - 1) as u8);
        for i in 0..MAX_ROUNDS {
            let r = self.rounds.get(i).filter(|_| i < n).copied();
            let r = r.unwrap_or_default();
            out.extend_from_slice(&r.avail_idx.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&r.used_event.unwrap_or(0).to_le_bytes());
            out.push(u8::from(r.avail_idx.is_some()) | u8::from(r.used_event.is_some()) << 1);
        }
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(memory);
        out
    }

    /// Split an input into its header and guest-memory image (never fails: missing header
    /// bytes read as zero).
    pub fn decode(data: &[u8]) -> (Header, &[u8]) {
        let mut raw = [0u8; HEADER_LEN];
        let n = data.len().min(HEADER_LEN);
        raw[..n].copy_from_slice(&data[..n]);
        let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[o + 1]]);
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap());
        let rounds = (0..=usize::from(raw[32]) % MAX_ROUNDS)
            .map(|i| {
                let o = 33 + 5 * i;
                let flags = raw[o + 4];
                Round {
                    avail_idx: (flags & 1 != 0).then(|| u16_at(o)),
                    used_event: (flags & 2 != 0).then(|| u16_at(o + 2)),
                }
            })
            .collect();
        let h = Header {
            queue_log2: raw[0],
            event_idx: raw[1] & 1 != 0,
            discard: raw[1] & 2 != 0,
            write_zeroes: raw[1] & 4 != 0,
            read_only: raw[1] & 8 != 0,
            memory: raw[2],
            disk: raw[3],
            desc_table: u64_at(4),
            avail_ring: u64_at(12),
            used_ring: u64_at(20),
            next_avail: u16_at(28),
            next_used: u16_at(30),
            rounds,
        };
        (h, &data[n..])
    }
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
    let mut summary = Summary::default();
    let (h, image) = Header::decode(data);
    let regions: Vec<_> = h
        .layout()
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemory::from_ranges(&regions).expect("fuzz: guest memory");
    for &(start, len) in h.layout() {
        let (start, end) = (start as usize, (start + len) as usize);
        if start < image.len() {
            mem.write_slice(
                &image[start..end.min(image.len())],
                GuestAddress(start as u64),
            )
            .expect("fuzz: fill guest memory");
        }
    }

    let disk_size = h.disk_size();
    let disk = ScratchDisk::reset(disk_size, h.read_only);
    let dev = VirtioBlk::new(Box::new(disk), Some(SERIAL.into()));

    // What the transport does at DRIVER_OK, then what VirtioBlk::activate adds.
    let mut q = Queue::new(QUEUE_SIZE).expect("fuzz: queue");
    q.set_size(h.queue_size());
    let halves = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = halves(h.desc_table);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = halves(h.avail_ring);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = halves(h.used_ring);
    q.set_used_ring_address(lo, hi);
    q.set_ready(true);
    q.set_event_idx(h.event_idx);
    q.set_next_avail(h.next_avail);
    q.set_next_used(h.next_used);
    if !q.is_valid(&mem) {
        // The transport refuses to activate; the device never sees this queue.
        return summary;
    }
    summary.activated = true;
    let mut p = dev.queue_processor(h.acked_features());
    let mut check = Checker::new(&q, h.event_idx, disk_size);

    for r in &h.rounds {
        // The harness writes through vm-memory like a driver; the ring is valid, so these
        // addresses are in RAM.
        if let Some(idx) = r.avail_idx {
            mem.write_obj(idx, GuestAddress(q.avail_ring() + 2))
                .expect("fuzz: avail idx");
        }
        if let Some(ev) = r.used_event {
            let at = q.avail_ring() + 4 + 2 * u64::from(q.size());
            mem.write_obj(ev, GuestAddress(at))
                .expect("fuzz: used_event");
        }
        for _ in 0..CALLS_PER_ROUND {
            let was_broken = p.is_broken();
            let out = p.process_queue(&mem, &mut q);
            check.call(&mem, &q, &dev, was_broken, out);
            summary.more |= out.more;
            if !out.more {
                break;
            }
        }
        if p.is_broken() {
            // The device sets DEVICE_NEEDS_RESET and leaves the queue alone until a reset
            // (a new processor): one more call must not touch it.
            let out = p.process_queue(&mem, &mut q);
            check.call(&mem, &q, &dev, true, out);
            break;
        }
    }
    summary.completed = check.completed;
    summary.broken = p.is_broken();
    summary.counters = crate::VirtioDevice::counters(&dev);
    drop(p);
    drop(dev);
    ScratchDisk::verify(disk_size, h.read_only);
    summary
}

/// The invariants checked after every `process_queue` call.
struct Checker {
    event_idx: bool,
    disk_size: u64,
    avail0: u16,
    used0: u16,
    /// Chains completed over all calls so far (below 2^16: bounded by the rounds).
    completed: usize,
}

impl Checker {
    fn new(q: &Queue, event_idx: bool, disk_size: u64) -> Self {
        Checker {
            event_idx,
            disk_size,
            avail0: q.next_avail(),
            used0: q.next_used(),
            completed: 0,
        }
    }

    fn call(
        &mut self,
        mem: &GuestMemory,
        q: &Queue,
        dev: &VirtioBlk,
        was_broken: bool,
        out: QueueOutcome,
    ) {
        if was_broken {
            assert_eq!(
                out,
                QueueOutcome {
                    broken: true,
                    ..QueueOutcome::default()
                },
                "a broken queue must stay untouched"
            );
            return;
        }
        assert!(out.completed <= BUDGET, "over budget: {out:?}");
        if out.more {
            assert!(
                out.completed == BUDGET && !out.broken,
                "`more` without a spent budget: {out:?}"
            );
        }
        if out.completed == 0 {
            assert!(!out.notify, "notification without a completion: {out:?}");
        } else if !self.event_idx {
            assert!(
                out.notify,
                "without EVENT_IDX every completion notifies: {out:?}"
            );
        }
        self.completed += out.completed;
        let done = self.completed as u16;

        // The device's positions: one used element per completion; a chain taken but not
        // completed only when that broke the queue.
        let used = q.next_used().wrapping_sub(self.used0);
        let taken = q.next_avail().wrapping_sub(self.avail0);
        assert_eq!(used, done, "next_used moved {used} for {done} completions");
        let extra = taken.wrapping_sub(done);
        assert!(
            extra == 0 || (extra == 1 && out.broken),
            "took {taken} chains for {done} completions ({out:?})"
        );

        // After the last add_used the device writes only the used flags or avail_event,
        // never the used idx.
        if out.completed > 0 && !out.broken {
            let idx: u16 = mem
                .read_obj(GuestAddress(q.used_ring() + 2))
                .expect("fuzz: used idx");
            assert_eq!(idx, q.next_used(), "the used idx in memory is stale");
        }
        // A quiet exit re-read the available index after its last write: caught up.
        if !out.broken && !out.more {
            let idx: u16 = mem
                .read_obj(GuestAddress(q.avail_ring() + 2))
                .expect("fuzz: avail idx");
            assert_eq!(idx, q.next_avail(), "stopped short of the available index");
        }

        // Every chain taken was counted once (a head beyond the queue is taken, not served).
        let c: std::collections::HashMap<_, _> =
            crate::VirtioDevice::counters(dev).into_iter().collect();
        let requests =
            c["read_requests"] + c["write_requests"] + c["flush_requests"] + c["other_requests"];
        assert!(
            (self.completed as u64..=self.completed as u64 + 1).contains(&requests),
            "{requests} requests counted for {} completions",
            self.completed
        );
        assert!(c["errors"] <= requests, "{c:?}");
        assert!(
            c["bytes_read"] <= c["read_requests"] * self.disk_size
                && c["bytes_written"] <= c["write_requests"] * self.disk_size,
            "more bytes moved than the disk holds: {c:?}"
        );
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
