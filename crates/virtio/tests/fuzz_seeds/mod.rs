//! The seed generators for the fuzz corpora (`fuzz/corpus/<target>/`): [`Seed`] lays out
//! one input (the shared header, host data for targets that take it, a guest-memory image
//! with the descriptor table at 0, the rings after it and buffers after those), and
//! [`common`] makes the ring- and chain-level seeds every device gets (loops, indirect
//! tables, zero and huge lengths, addresses beyond RAM and across holes, wrong directions,
//! available-index jumps, heads beyond the queue, wraparound, event-idx rounds, rings that
//! overlap or lie outside RAM) from one well-formed request of that device. Each device's
//! module adds its own. `fuzz_corpus.rs` writes them and checks each does what it aims at.

pub mod blk;
pub mod console;
pub mod net;
pub mod rng;
pub mod vsock;

use kiln_virtio::fuzz::{Header, Round};

pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT: u16 = 4;

/// A descriptor as written: (addr, len, flags).
pub type Desc = (u64, u32, u16);

/// Lays out one input: a header and a guest-memory image (descriptor table at 0, the
/// available ring and used ring after it, buffers after those).
pub struct Seed {
    pub h: Header,
    /// Host-side data (`Header::encode_with_host`), for targets that take it.
    pub host: Option<Vec<u8>>,
    img: Vec<u8>,
    heap: u64,
    pub next_desc: u16,
    avail: u16,
}

impl Seed {
    pub fn new(queue_log2: u8) -> Seed {
        let size = 1u64 << queue_log2;
        let avail = (16 * size).next_multiple_of(0x10);
        let used = (avail + 6 + 2 * size).next_multiple_of(0x10);
        let heap = (used + 6 + 8 * size).next_multiple_of(0x100);
        Seed {
            h: Header {
                queue_log2,
                desc_table: 0,
                avail_ring: avail,
                used_ring: used,
                rounds: vec![Round::default()],
                ..Header::default()
            },
            host: None,
            img: Vec::new(),
            heap,
            next_desc: 0,
            avail: 0,
        }
    }

    pub fn size(&self) -> u16 {
        1 << self.h.queue_log2
    }

    pub fn put(&mut self, addr: u64, bytes: &[u8]) {
        let end = addr as usize + bytes.len();
        if self.img.len() < end {
            self.img.resize(end, 0);
        }
        self.img[addr as usize..end].copy_from_slice(bytes);
    }

    /// `len` bytes of guest memory (16-byte aligned) filled with `fill`.
    pub fn alloc(&mut self, len: u64, fill: u8) -> u64 {
        let a = self.heap;
        self.heap = (a + len.max(1)).next_multiple_of(16);
        self.put(a, &vec![fill; len as usize]);
        a
    }

    /// A readable buffer holding `bytes`.
    pub fn data(&mut self, bytes: &[u8]) -> Desc {
        let a = self.alloc(bytes.len() as u64, 0);
        self.put(a, bytes);
        (a, bytes.len() as u32, 0)
    }

    /// A writable buffer of `len` bytes.
    pub fn buf(&mut self, len: u32) -> Desc {
        (self.alloc(u64::from(len), 0xee), len, WRITE)
    }

    /// One descriptor table entry, exactly as given.
    pub fn store(&mut self, idx: u16, (addr, len, flags): Desc, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(self.h.desc_table + 16 * u64::from(idx), &b);
    }

    /// `descs` as a chain in the table (NEXT added to all but the last), not published.
    pub fn write_chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, &d) in descs.iter().enumerate() {
            let idx = self.next_desc;
            let next = (idx + 1) % self.size();
            let flags = if i + 1 < descs.len() { d.2 | NEXT } else { d.2 };
            self.store(idx, (d.0, d.1, flags), next);
            self.next_desc = next;
        }
        head
    }

    /// `descs` as a chain, made available.
    pub fn chain(&mut self, descs: &[Desc]) -> u16 {
        let head = self.write_chain(descs);
        self.publish(head);
        head
    }

    /// `descs` as an indirect table in memory (NEXT links to the following entry); the
    /// descriptor pointing at it.
    pub fn indirect(&mut self, descs: &[Desc]) -> Desc {
        let table = self.alloc(16 * descs.len() as u64, 0);
        for (i, &(a, l, f)) in descs.iter().enumerate() {
            let (f, next) = if i + 1 < descs.len() {
                (f | NEXT, i as u16 + 1)
            } else {
                (f, 0)
            };
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&a.to_le_bytes());
            b[8..12].copy_from_slice(&l.to_le_bytes());
            b[12..14].copy_from_slice(&f.to_le_bytes());
            b[14..16].copy_from_slice(&next.to_le_bytes());
            self.put(table + 16 * i as u64, &b);
        }
        (table, 16 * descs.len() as u32, INDIRECT)
    }

    /// Put `head` on the available ring and bump the index in the image.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.h.next_avail.wrapping_add(self.avail) % self.size());
        self.put(self.h.avail_ring + 4 + 2 * slot, &head.to_le_bytes());
        self.avail = self.avail.wrapping_add(1);
        let idx = self.h.next_avail.wrapping_add(self.avail);
        self.put(self.h.avail_ring + 2, &idx.to_le_bytes());
    }

    /// The input: header, host data (when set), image.
    pub fn finish(&self) -> Vec<u8> {
        match &self.host {
            Some(host) => self.h.encode_with_host(host, &self.img),
            None => self.h.encode(&self.img),
        }
    }
}

/// A well-formed request of a device: its descriptors, laid out in the seed.
pub type Request<'a> = &'a dyn Fn(&mut Seed) -> Vec<Desc>;

/// The seeds every device gets, named `prefix` + what they aim at: `new(log2)` makes an
/// empty seed for the device, `good` one well-formed request, `dir` the direction the
/// device wants its buffers in (`WRITE` or 0), `max_log2` the log2 of its largest queue.
///
/// Names say what the replay test expects: `avail-idx-jump`, `head-beyond-queue` and
/// `used-flags-on-avail-idx` break the ring; `ring-outside-memory` is refused by the
/// transport; every other seed has at least one request served.
pub fn common(
    prefix: &str,
    new: &dyn Fn(u8) -> Seed,
    good: Request,
    dir: u16,
    max_log2: u8,
) -> Vec<(String, Seed)> {
    let mut out: Vec<(&str, Seed)> = Vec::new();
    let one = |log2: u8| {
        let mut s = new(log2);
        let d = good(&mut s);
        s.chain(&d);
        s
    };
    let wrong = dir ^ WRITE;
    out.push(("valid", one(4)));
    {
        let mut s = new(4);
        for _ in 0..3 {
            let d = good(&mut s);
            s.chain(&d);
        }
        out.push(("three-requests", s));
    }
    {
        // A NEXT loop after a good request, and a descriptor linking to itself.
        let mut s = one(3);
        let (a, l, _) = s.buf(64);
        let i = s.next_desc;
        s.store(i, (a, l, dir | NEXT), i + 1);
        s.store(i + 1, (a, l, dir | NEXT), i);
        s.publish(i);
        s.store(i + 2, (a, l, dir | NEXT), i + 2);
        s.publish(i + 2);
        out.push(("next-loops", s));
    }
    {
        let mut s = one(3);
        let (a, l, _) = s.buf(64);
        let i = s.next_desc;
        s.store(i, (a, l, dir | NEXT), 200);
        s.publish(i);
        out.push(("next-out-of-range", s));
    }
    {
        let mut s = new(3);
        let d = good(&mut s);
        let ind = s.indirect(&d);
        s.chain(&[ind]);
        out.push(("indirect", s));
    }
    {
        let mut s = one(3);
        let d = good(&mut s);
        let inner = s.indirect(&d);
        let outer = s.indirect(&[inner]);
        s.chain(&[outer]);
        let (a, l, _) = s.buf(64);
        let (table, len, f) = s.indirect(&[(a, l, dir), (a, l, dir)]);
        // Entry 1 links back to entry 0.
        s.put(table + 16 + 12, &(dir | NEXT).to_le_bytes());
        s.chain(&[(table, len, f)]);
        out.push(("indirect-nested-and-loop", s));
    }
    {
        let mut s = one(3);
        let (a, l, _) = s.buf(64);
        let (table, _, f) = s.indirect(&[(a, l, dir)]);
        s.chain(&[(table, 31, f)]);
        s.chain(&[(table, 0, f)]);
        s.chain(&[(table, 0xffff_fff0, f)]);
        s.chain(&[(0xffff_fff0_0000, 32, f)]);
        out.push(("indirect-bad-lengths", s));
    }
    {
        let mut s = one(4);
        let (a, _, _) = s.buf(64);
        s.chain(&[(a, 0, dir)]);
        s.chain(&[(a, 0, dir), (a, 0, dir), (a, 16, dir)]);
        out.push(("zero-lengths", s));
    }
    {
        let mut s = one(4);
        let (a, _, _) = s.buf(64);
        s.chain(&[(a, u32::MAX, dir)]);
        s.chain(&[(a, 16, dir), (a, u32::MAX - 15, dir)]);
        out.push(("huge-lengths", s));
    }
    {
        let mut s = one(4);
        s.chain(&[(0x1_0000_0000, 512, dir)]);
        s.chain(&[(0xfff0, 512, dir)]);
        s.chain(&[(u64::MAX - 8, 512, dir)]);
        s.chain(&[(0x10_0000, 1, dir), (u64::MAX, 1, dir)]);
        out.push(("addresses-beyond-memory", s));
    }
    {
        // Buffers across the hole of layout 4 (RAM 0..32K and 48K..80K).
        let mut s = one(4);
        s.h.memory = 4;
        s.chain(&[(0x7f00, 512, dir)]);
        s.chain(&[(0xbf00, 512, dir), (0xc100, 1, dir)]);
        out.push(("across-a-hole", s));
    }
    {
        let mut s = one(4);
        let (a, l, _) = s.buf(64);
        s.chain(&[(a, l, wrong)]);
        s.chain(&[(a, l, dir), (a, l, wrong), (a, l, dir)]);
        out.push(("wrong-directions", s));
    }
    {
        let mut s = one(4);
        s.h.rounds = vec![Round {
            avail_idx: Some(s.size() + 1),
            used_event: None,
        }];
        out.push(("avail-idx-jump", s));
    }
    {
        let mut s = one(4);
        s.publish(16);
        s.publish(0xffff);
        out.push(("head-beyond-queue", s));
    }
    {
        let mut s = new(4);
        s.h.next_avail = 0xfffe;
        s.h.next_used = 0xfffd;
        for _ in 0..4 {
            let d = good(&mut s);
            s.chain(&d);
        }
        out.push(("index-wraparound", s));
    }
    {
        // Event-idx, in rounds: the driver publishes more between calls.
        let mut s = new(5);
        s.h.event_idx = true;
        for _ in 0..6 {
            let d = good(&mut s);
            s.chain(&d);
        }
        let r = |a, e| Round {
            avail_idx: Some(a),
            used_event: Some(e),
        };
        s.h.rounds = vec![r(1, 0), r(3, 5), r(6, 4), r(6, 0xffff)];
        out.push(("event-idx-rounds", s));
    }
    {
        let mut s = one(4);
        s.h.used_ring = s.h.avail_ring;
        out.push(("rings-overlap", s));
    }
    {
        // The used ring's flags on the available index (no EVENT_IDX): every
        // enable_notification writes 0 over the index and reads it back as new work.
        let mut s = new(4);
        let a = s.alloc(0x100, 0) + 2;
        s.h.avail_ring = a;
        s.h.used_ring = a + 2;
        let d = good(&mut s);
        s.chain(&d);
        out.push(("used-flags-on-avail-idx", s));
    }
    {
        let mut s = one(4);
        s.chain(&[(s.h.avail_ring, 64, dir)]);
        s.chain(&[(0, 64, dir)]);
        s.h.rounds = vec![Round::default(); 4];
        out.push(("buffers-over-the-rings", s));
    }
    {
        let mut s = one(4);
        s.h.used_ring = 0xfff0;
        out.push(("ring-outside-memory", s));
    }
    out.push(("queue-size-one", one(0)));
    {
        let mut s = new(max_log2);
        for _ in 0..(1u16 << max_log2) / 6 {
            let d = good(&mut s);
            s.chain(&d);
        }
        s.h.memory = 3;
        out.push(("queue-size-max", s));
    }
    out.into_iter()
        .map(|(n, s)| (format!("{prefix}{n}"), s))
        .collect()
}

/// Name and encode seeds.
pub fn finish(seeds: Vec<(String, Seed)>) -> Vec<(String, Vec<u8>)> {
    seeds.into_iter().map(|(n, s)| (n, s.finish())).collect()
}
