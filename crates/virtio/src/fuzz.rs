//! The harness every device's fuzz target shares: the input format ([`Header`], an
//! optional host-data section, the guest-memory image), guest memory built from it, the
//! queue set up as the PCI transport sets it up at DRIVER_OK (an invalid queue never
//! reaches a device), rounds of driver pokes (`avail_idx`, `used_event`) with bounded
//! calls of the device's queue handling ([`drive`]), and the ring invariants checked after
//! every call ([`Checker`]).
//!
//! A device's target implements [`Target`] (one call of its queue handling, what to do
//! before each round, its own checks on each [`Call`]) and hands it to [`drive`]. Each
//! call also comes with a view of the chains the driver had published, read through
//! virtio-queue from a copy of guest memory taken just before the call, so a device's
//! check can bound what it wrote or sent by the chain's writable or readable bytes.
//!
//! Guest memory is only reachable through vm-memory's checked accessors (and
//! AddressSanitizer checks the rest when fuzzing), so any access outside it is a panic or
//! a sanitizer report, both crashes. A spin shows up as a libFuzzer timeout or a hung
//! replay test.

use crate::worker::Drained;
use crate::GuestMemory;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Length of the encoded [`Header`].
pub const HEADER_LEN: usize = 53;

/// Most rounds ([`Round`]) one input runs.
pub const MAX_ROUNDS: usize = 4;

/// Most calls per round (the worker calls again while `more` is set).
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

/// One round: optionally overwrite the driver's fields in guest memory, then call the
/// device (again while it reports `more`, at most [`CALLS_PER_ROUND`] times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Store this in the available ring's `idx` before the round.
    pub avail_idx: Option<u16>,
    /// Store this in the available ring's `used_event` before the round.
    pub used_event: Option<u16>,
}

/// The fixed-size start of every input.
///
/// Encoding (`HEADER_LEN` bytes, integers little-endian): queue size as log2 (modulo 9,
/// so 1..=256), a flags byte (bit 0 EVENT_IDX, bits 1..=7 the device's [`Header::flags`]),
/// memory layout, one device byte, the descriptor table, available ring and used ring
/// addresses (u64 each), the initial `next_avail` and `next_used` (u16 each), the round
/// count less one (modulo [`MAX_ROUNDS`]), then [`MAX_ROUNDS`] rounds of five bytes:
/// `avail_idx` (u16), `used_event` (u16), flags (bit 0 stores `avail_idx`, bit 1 stores
/// `used_event`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// log2 of the queue size (taken modulo 9, and capped by the device's maximum).
    pub queue_log2: u8,
    /// VIRTIO_RING_F_EVENT_IDX acked (and set on the queue).
    pub event_idx: bool,
    /// Seven device-specific flag bits (bit 7 is ignored).
    pub flags: u8,
    /// Index into [`MEMORY_LAYOUTS`] (modulo its length).
    pub memory: u8,
    /// A device-specific byte (virtio-blk: the disk size).
    pub device: u8,
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
    /// The queue size this header asks for, at most `max` (a power of two).
    pub fn queue_size(&self, max: u16) -> u16 {
        (1u16 << (self.queue_log2 % 9)).min(max)
    }

    /// The guest RAM layout this header asks for.
    pub fn layout(&self) -> &'static [(u64, u64)] {
        MEMORY_LAYOUTS[usize::from(self.memory) % MEMORY_LAYOUTS.len()]
    }

    /// Whether device flag `mask` is set.
    pub fn flag(&self, mask: u8) -> bool {
        self.flags & mask != 0
    }

    /// An input: this header followed by `memory` (byte `i` is guest byte `i`).
    pub fn encode(&self, memory: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + memory.len());
        out.push(self.queue_log2);
        out.push(u8::from(self.event_idx) | (self.flags & 0x7f) << 1);
        out.push(self.memory);
        out.push(self.device);
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

    /// Split an input into its header and the rest (never fails: missing header bytes
    /// read as zero).
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
            flags: raw[1] >> 1,
            memory: raw[2],
            device: raw[3],
            desc_table: u64_at(4),
            avail_ring: u64_at(12),
            used_ring: u64_at(20),
            next_avail: u16_at(28),
            next_used: u16_at(30),
            rounds,
        };
        (h, &data[n..])
    }

    /// An input with host-side data: this header, `host`'s length (u16), `host` (at most
    /// 65535 bytes), then `memory`.
    pub fn encode_with_host(&self, host: &[u8], memory: &[u8]) -> Vec<u8> {
        let host = &host[..host.len().min(usize::from(u16::MAX))];
        let mut out = self.encode(&(host.len() as u16).to_le_bytes());
        out.extend_from_slice(host);
        out.extend_from_slice(memory);
        out
    }

    /// Split an input made by [`Header::encode_with_host`] into header, host data and
    /// guest-memory image (a short input gives what is there).
    pub fn decode_with_host(data: &[u8]) -> (Header, &[u8], &[u8]) {
        let (h, rest) = Header::decode(data);
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        let rest = rest.get(2..).unwrap_or(&[]);
        let (host, image) = rest.split_at(len.min(rest.len()));
        (h, host, image)
    }
}

/// Guest memory in `layout`, filled from `image` (byte `i` is guest byte `i`; bytes in a
/// hole or past the end of RAM are dropped, RAM not covered is zero).
pub fn guest_memory(layout: &[(u64, u64)], image: &[u8]) -> GuestMemory {
    let regions: Vec<_> = layout
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemory::from_ranges(&regions).expect("fuzz: guest memory");
    for &(start, len) in layout {
        let (start, end) = (start as usize, (start + len) as usize);
        if start < image.len() {
            mem.write_slice(
                &image[start..end.min(image.len())],
                GuestAddress(start as u64),
            )
            .expect("fuzz: fill guest memory");
        }
    }
    mem
}

/// A copy of `mem` (same layout, same contents).
fn snapshot(mem: &GuestMemory) -> GuestMemory {
    let layout: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    let copy = guest_memory(&layout, &[]);
    for r in mem.iter() {
        let mut buf = vec![0u8; r.len() as usize];
        mem.read_slice(&mut buf, r.start_addr())
            .expect("fuzz: read guest memory");
        copy.write_slice(&buf, r.start_addr())
            .expect("fuzz: copy guest memory");
    }
    copy
}

/// The queue as the transport hands it to a device offering `max_size` entries (what it
/// does at DRIVER_OK, event-idx as the device sets it), or `None` when the transport
/// would refuse it.
pub fn queue(h: &Header, max_size: u16, mem: &GuestMemory) -> Option<Queue> {
    let mut q = Queue::new(max_size).expect("fuzz: queue");
    q.set_size(h.queue_size(max_size));
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
    q.is_valid(mem).then_some(q)
}

/// What a device's queue handling must keep to, beyond the ring invariants every device
/// keeps.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Most chains completed per call; `more` only with exactly that many (`None`: the
    /// device bounds its work another way and `more` is not checked).
    pub budget: Option<usize>,
    /// A call that returns neither `more` nor `broken` has taken everything available
    /// (false for devices that leave chains posted until they have data for them).
    pub caught_up: bool,
    /// Chains taken but not completed when the ring breaks: 1 for a device that serves
    /// one chain at a time, more for one that gathers several per frame.
    pub taken_on_break: u16,
    /// The device may write into a chain's buffers and then give the chain back (net's
    /// receive path, when a frame does not fit yet): a buffer the driver laid over the
    /// rings can then change them after the last used element, so the checks of the used
    /// and available indexes in guest memory apply only to [`Call::clean`] calls.
    pub writes_unused_chains: bool,
    /// The device itself refuses to touch a broken queue again (blk's processor): after a
    /// break the harness calls once more and expects an untouched queue.
    pub remembers_broken: bool,
}

/// One device under the harness.
pub trait Target {
    /// One call of the device's queue handling, as its worker makes it.
    fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained;

    /// Before round `index` (after the driver's pokes): host-side input, for instance.
    fn round(&mut self, _index: usize) {}

    /// The device's own checks after a call (the ring invariants are already checked).
    fn check(&mut self, _call: &Call) {}
}

/// A chain the driver had published when a call started, as read through virtio-queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainView {
    /// The head index.
    pub head: u16,
    /// (address, length, device-writable) of each descriptor, indirect ones resolved.
    pub descs: Vec<(u64, u32, bool)>,
    /// Where the chain's indirect tables are, as (address, length).
    pub tables: Vec<(u64, u64)>,
}

impl ChainView {
    /// Bytes in the chain's device-readable descriptors.
    pub fn readable(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| !d.2)
            .map(|d| u64::from(d.1))
            .sum()
    }

    /// Bytes in the chain's device-writable descriptors.
    pub fn writable(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.2)
            .map(|d| u64::from(d.1))
            .sum()
    }
}

/// One used element a call added: the head and length it holds (read after the call, so
/// only meaningful when the call was [`Call::clean`]: otherwise the device may have
/// written a buffer over it), and the chain published at the matching available position
/// (when the call was clean).
#[derive(Clone, Debug)]
pub struct Used {
    /// The element's `id`.
    pub head: u32,
    /// The element's `len`.
    pub len: u32,
    /// The chain at that position, read before the call.
    pub chain: Option<ChainView>,
}

/// What one call did, for a device's checks.
#[derive(Debug)]
pub struct Call {
    /// The device's report.
    pub out: Drained,
    /// The used elements it added, in order (those after a break are not there).
    pub used: Vec<Used>,
    /// No writable buffer of a published chain overlaps the rings, the descriptor table
    /// or an indirect table, and the used ring overlaps neither of the others: the chains
    /// seen before the call are the ones the device served, so [`Used::chain`] is set.
    pub clean: bool,
}

/// What [`drive`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Driven {
    /// The queue was valid, so the device ran (the transport refuses an invalid one).
    pub activated: bool,
    /// Chains put on the used ring, over all calls.
    pub completed: usize,
    /// The ring was found corrupt.
    pub broken: bool,
    /// Some call stopped with work left.
    pub more: bool,
}

/// Run `target` on the queue `h` describes in `mem`: the rounds, the pokes, the calls and
/// every check.
pub fn drive(
    h: &Header,
    mem: &GuestMemory,
    max_size: u16,
    rules: Rules,
    target: &mut dyn Target,
) -> Driven {
    let mut driven = Driven::default();
    let Some(mut q) = queue(h, max_size, mem) else {
        return driven;
    };
    driven.activated = true;
    let mut check = Checker::new(&q, h.event_idx, rules);
    for (i, r) in h.rounds.iter().enumerate() {
        poke(mem, &q, r);
        target.round(i);
        for _ in 0..CALLS_PER_ROUND {
            let before = snapshot(mem);
            let (avail0, used0) = (q.next_avail(), q.next_used());
            let out = target.serve(mem, &mut q);
            let call = describe(h, max_size, &before, mem, &q, avail0, used0, out);
            let memory_checks = call.clean || !rules.writes_unused_chains;
            check.call(mem, &q, false, out, memory_checks);
            target.check(&call);
            driven.more |= out.more;
            driven.broken |= out.broken;
            if !out.more || out.broken {
                break;
            }
        }
        if driven.broken {
            if rules.remembers_broken {
                // The device sets DEVICE_NEEDS_RESET and leaves the queue alone until a
                // reset: one more call must not touch it.
                let out = target.serve(mem, &mut q);
                check.call(mem, &q, true, out, true);
            }
            break;
        }
    }
    driven.completed = check.completed;
    driven
}

/// The driver's writes before a round, through vm-memory (the ring is valid, so these
/// addresses are in RAM).
fn poke(mem: &GuestMemory, q: &Queue, r: &Round) {
    if let Some(idx) = r.avail_idx {
        mem.write_obj(idx, GuestAddress(q.avail_ring() + 2))
            .expect("fuzz: avail idx");
    }
    if let Some(ev) = r.used_event {
        let at = q.avail_ring() + 4 + 2 * u64::from(q.size());
        mem.write_obj(ev, GuestAddress(at))
            .expect("fuzz: used_event");
    }
}

/// The chain published at available position `pos` in `mem`, as virtio-queue reads it.
fn chain_at(h: &Header, max_size: u16, mem: &GuestMemory, pos: u16) -> Option<ChainView> {
    let mut q = queue(h, max_size, mem)?;
    q.set_next_avail(pos);
    let mut chain = q.iter(mem).ok()?.next()?;
    let head = chain.head_index();
    let mut descs = Vec::new();
    let mut tables = Vec::new();
    // What the chain switches to when it meets an indirect descriptor (only in the
    // descriptor table: an indirect table cannot hold another).
    let table_at = |at: u64| {
        let d: Option<virtio_queue::desc::split::Descriptor> = mem.read_obj(GuestAddress(at)).ok();
        d.filter(|d| d.refers_to_indirect_table())
            .map(|d| (d.addr().0, u64::from(d.len())))
    };
    tables.extend(table_at(q.desc_table() + 16 * u64::from(head)));
    for d in chain.by_ref() {
        descs.push((d.addr().0, d.len(), d.is_write_only()));
        if d.has_next() && tables.is_empty() {
            tables.extend(table_at(q.desc_table() + 16 * u64::from(d.next())));
        }
    }
    Some(ChainView {
        head,
        descs,
        tables,
    })
}

/// Whether [a, a+n) and [b, b+m) overlap (ranges that wrap count as overlapping).
fn overlaps(a: u64, n: u64, b: u64, m: u64) -> bool {
    match (a.checked_add(n), b.checked_add(m)) {
        (Some(ae), Some(be)) => n > 0 && m > 0 && a < be && b < ae,
        _ => true,
    }
}

#[allow(clippy::too_many_arguments)]
fn describe(
    h: &Header,
    max_size: u16,
    before: &GuestMemory,
    mem: &GuestMemory,
    q: &Queue,
    avail0: u16,
    used0: u16,
    out: Drained,
) -> Call {
    let size = u64::from(q.size());
    let avail_idx: u16 = before
        .read_obj(GuestAddress(q.avail_ring() + 2))
        .expect("fuzz: avail idx");
    let published = avail_idx.wrapping_sub(avail0);
    let views: Vec<Option<ChainView>> = if u64::from(published) <= size {
        (0..published)
            .map(|k| chain_at(h, max_size, before, avail0.wrapping_add(k)))
            .collect()
    } else {
        Vec::new()
    };
    let mut structures = vec![
        (q.desc_table(), 16 * size),
        (q.avail_ring(), 6 + 2 * size),
        (q.used_ring(), 6 + 8 * size),
    ];
    let mut clean = !overlaps(q.used_ring(), 6 + 8 * size, q.desc_table(), 16 * size)
        && !overlaps(q.used_ring(), 6 + 8 * size, q.avail_ring(), 6 + 2 * size);
    for v in views.iter().flatten() {
        structures.extend(v.tables.iter().copied());
    }
    for v in views.iter().flatten() {
        for &(addr, len, _) in v.descs.iter().filter(|d| d.2) {
            clean &= !structures
                .iter()
                .any(|&(s, n)| overlaps(addr, u64::from(len), s, n));
        }
    }
    let added = q.next_used().wrapping_sub(used0);
    let used = (0..added)
        .map(|k| {
            let slot = u64::from(used0.wrapping_add(k)) % size;
            let at = GuestAddress(q.used_ring() + 4 + 8 * slot);
            let head: u32 = mem.read_obj(at).expect("fuzz: used id");
            let len: u32 = mem
                .read_obj(GuestAddress(at.0 + 4))
                .expect("fuzz: used len");
            let chain = views.get(usize::from(k)).cloned().flatten();
            if let (true, Some(c)) = (clean, &chain) {
                assert_eq!(
                    head,
                    u32::from(c.head),
                    "used element {k} is not the chain taken at that position"
                );
            }
            Used {
                head,
                len,
                chain: chain.filter(|_| clean),
            }
        })
        .collect();
    Call { out, used, clean }
}

/// The ring invariants checked after every call.
pub struct Checker {
    rules: Rules,
    event_idx: bool,
    avail0: u16,
    used0: u16,
    /// Chains completed over all calls so far (below 2^16: bounded by the rounds).
    pub completed: usize,
}

impl Checker {
    /// A checker for `q` as it is before the first call.
    pub fn new(q: &Queue, event_idx: bool, rules: Rules) -> Self {
        Checker {
            rules,
            event_idx,
            avail0: q.next_avail(),
            used0: q.next_used(),
            completed: 0,
        }
    }

    /// Check a call's report against the queue and (with `memory_checks`) the indexes in
    /// guest memory.
    pub fn call(
        &mut self,
        mem: &GuestMemory,
        q: &Queue,
        was_broken: bool,
        out: Drained,
        memory_checks: bool,
    ) {
        if was_broken {
            let untouched = Drained {
                broken: true,
                ..Drained::default()
            };
            assert_eq!(out, untouched, "a broken queue must stay untouched");
            return;
        }
        if let Some(budget) = self.rules.budget {
            assert!(out.completed <= budget, "over budget: {out:?}");
            if out.more {
                assert!(
                    out.completed == budget && !out.broken,
                    "`more` without a spent budget: {out:?}"
                );
            }
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

        // One used element per completion; chains taken but not completed only when that
        // broke the queue.
        let used = q.next_used().wrapping_sub(self.used0);
        let taken = q.next_avail().wrapping_sub(self.avail0);
        assert_eq!(used, done, "next_used moved {used} for {done} completions");
        let extra = taken.wrapping_sub(done);
        assert!(
            extra == 0 || (extra <= self.rules.taken_on_break && out.broken),
            "took {taken} chains for {done} completions ({out:?})"
        );

        // After the last used element the device writes only the used flags or
        // avail_event, never the used idx.
        if memory_checks && out.completed > 0 && !out.broken {
            let idx: u16 = mem
                .read_obj(GuestAddress(q.used_ring() + 2))
                .expect("fuzz: used idx");
            assert_eq!(idx, q.next_used(), "the used idx in memory is stale");
        }
        // A quiet exit re-read the available index after its last write: caught up.
        if memory_checks && self.rules.caught_up && !out.broken && !out.more {
            let idx: u16 = mem
                .read_obj(GuestAddress(q.avail_ring() + 2))
                .expect("fuzz: avail idx");
            assert_eq!(idx, q.next_avail(), "stopped short of the available index");
        }
    }
}
