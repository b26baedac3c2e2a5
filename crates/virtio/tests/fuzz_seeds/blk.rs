//! The virtio-blk seeds: well-formed and deliberately broken requests (every request
//! type, descriptor loops, indirect tables, zero and huge lengths, addresses beyond memory,
//! wrong directions, index jumps, rings that overlap).

use super::{Desc, Seed, NEXT, WRITE};
use kiln_virtio::blk::fuzz::{Round, DISCARD, READ_ONLY, WRITE_ZEROES};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

/// Index of a disk size in `DISK_SIZES`.
const DISK_0: u8 = 0;
const DISK_4K: u8 = 2;
const DISK_4K_PARTIAL: u8 = 3;
const DISK_64K: u8 = 6;
const DISK_64K_PARTIAL: u8 = 7;

/// virtio-blk's parts of a request.
trait BlkSeed {
    fn header(&mut self, ty: u32, sector: u64) -> Desc;
    fn status(&mut self) -> Desc;
    fn dwz(&mut self, sector: u64, num: u32, flags: u32) -> Desc;
}

impl BlkSeed for Seed {
    /// A 16-byte request header (readable).
    fn header(&mut self, ty: u32, sector: u64) -> Desc {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&ty.to_le_bytes());
        b[8..16].copy_from_slice(&sector.to_le_bytes());
        let a = self.alloc(16, 0);
        self.put(a, &b);
        (a, 16, 0)
    }

    /// A writable status byte.
    fn status(&mut self) -> Desc {
        (self.alloc(1, 0xff), 1, WRITE)
    }

    /// A DISCARD / WRITE_ZEROES segment (readable).
    fn dwz(&mut self, sector: u64, num: u32, flags: u32) -> Desc {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&sector.to_le_bytes());
        b[8..12].copy_from_slice(&num.to_le_bytes());
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        self.data(&b)
    }
}

/// A blk seed: DISCARD and WRITE_ZEROES acked, a 64 KiB disk.
fn new(queue_log2: u8) -> Seed {
    let mut s = Seed::new(queue_log2);
    s.h.flags = DISCARD | WRITE_ZEROES;
    s.h.device = DISK_64K;
    s
}

/// A seed with one well-formed request of `ty` (data descriptors `data`).
fn one(ty: u32, sector: u64, data: impl FnOnce(&mut Seed) -> Vec<Desc>) -> Seed {
    let mut s = new(4);
    let mut descs = vec![s.header(ty, sector)];
    descs.extend(data(&mut s));
    descs.push(s.status());
    s.chain(&descs);
    s
}

/// The seed corpus: named inputs, each aimed at one behavior.
/// Every seed, by name.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(&str, Seed)> = Vec::new();
    let pattern = |n: usize| (0..n).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>();

    // Well-formed requests.
    out.push(("in", one(T_IN, 1, |s| vec![s.buf(512)])));
    out.push((
        "in-odd-segments",
        one(T_IN, 2, |s| vec![s.buf(100), s.buf(924), s.buf(512)]),
    ));
    out.push(("out", one(T_OUT, 3, |s| vec![s.data(&pattern(1024))])));
    out.push(("flush", one(T_FLUSH, 0, |_| vec![])));
    out.push(("get-id", one(T_GET_ID, 0, |s| vec![s.buf(20)])));
    out.push(("get-id-short", one(T_GET_ID, 0, |s| vec![s.buf(7)])));
    out.push(("discard", one(T_DISCARD, 0, |s| vec![s.dwz(4, 8, 0)])));
    out.push((
        "write-zeroes",
        one(T_WRITE_ZEROES, 0, |s| vec![s.dwz(1, 3, 0)]),
    ));
    out.push((
        "write-zeroes-unmap",
        one(T_WRITE_ZEROES, 0, |s| vec![s.dwz(0, 127, 1)]),
    ));
    out.push((
        "write-zeroes-two-segments",
        one(T_WRITE_ZEROES, 0, |s| vec![s.dwz(0, 1, 0), s.dwz(9, 1, 0)]),
    ));
    out.push((
        "discard-bad-flags",
        one(T_DISCARD, 0, |s| vec![s.dwz(0, u32::MAX, 0xffff_fff1)]),
    ));
    let mut s = one(T_DISCARD, 0, |s| vec![s.dwz(0, 1, 0)]);
    s.h.flags &= !(DISCARD | WRITE_ZEROES);
    out.push(("discard-not-acked", s));
    out.push(("unknown-type", one(99, 0, |s| vec![s.buf(512)])));
    {
        // Write, read back, flush, identify: a mixed queue.
        let mut s = new(4);
        let h = s.header(T_OUT, 5);
        let d = s.data(&pattern(2048));
        let st = s.status();
        s.chain(&[h, d, st]);
        let h = s.header(T_IN, 5);
        let (b1, b2) = (s.buf(1536), s.buf(512));
        let st = s.status();
        s.chain(&[h, b1, b2, st]);
        let h = s.header(T_FLUSH, 0);
        let st = s.status();
        s.chain(&[h, st]);
        let h = s.header(T_GET_ID, 0);
        let b = s.buf(512);
        let st = s.status();
        s.chain(&[h, b, st]);
        out.push(("mixed-queue", s));
    }

    // Ranges against the disk.
    out.push(("in-last-sector", one(T_IN, 127, |s| vec![s.buf(512)])));
    out.push(("in-past-end", one(T_IN, 127, |s| vec![s.buf(1024)])));
    out.push(("in-sector-max", one(T_IN, u64::MAX, |s| vec![s.buf(512)])));
    out.push(("in-not-sectors", one(T_IN, 0, |s| vec![s.buf(513)])));
    let mut s = one(T_IN, 0, |s| vec![s.buf(512)]);
    s.h.device = DISK_0;
    out.push(("empty-disk", s));
    let mut s = one(T_IN, 8, |s| vec![s.buf(512)]);
    s.h.device = DISK_4K_PARTIAL;
    out.push(("partial-sector-disk", s));
    let mut s = one(T_OUT, 127, |s| vec![s.data(&pattern(512))]);
    s.h.device = DISK_64K_PARTIAL;
    out.push(("out-odd-size-disk", s));
    for (name, ty) in [
        ("read-only-out", T_OUT),
        ("read-only-write-zeroes", T_WRITE_ZEROES),
        ("read-only-discard", T_DISCARD),
    ] {
        let mut s = one(ty, 0, |s| {
            if ty == T_OUT {
                vec![s.data(&pattern(512))]
            } else {
                vec![s.dwz(0, 4, 0)]
            }
        });
        s.h.flags |= READ_ONLY;
        s.h.device = DISK_4K;
        out.push((name, s));
    }

    // Descriptor loops and bad links.
    {
        let mut s = new(3);
        let (h, st) = (s.header(T_IN, 0), s.buf(512));
        s.store(0, (h.0, h.1, NEXT), 1);
        s.store(1, (st.0, st.1, WRITE | NEXT), 0);
        s.publish(0);
        out.push(("next-loop", s));
    }
    {
        let mut s = new(3);
        let h = s.header(T_FLUSH, 0);
        s.store(0, (h.0, h.1, NEXT), 0);
        s.publish(0);
        out.push(("next-self-loop", s));
    }
    {
        let mut s = new(3);
        let (h, st) = (s.header(T_FLUSH, 0), s.status());
        s.store(0, (h.0, h.1, NEXT), 200);
        s.store(1, st, 0);
        s.publish(0);
        out.push(("next-out-of-range", s));
    }

    // Indirect tables.
    {
        let mut s = new(3);
        let (h, b, st) = (s.header(T_IN, 0), s.buf(4096), s.status());
        let ind = s.indirect(&[h, b, st]);
        s.chain(&[ind]);
        out.push(("indirect-in", s));
    }
    {
        let mut s = new(3);
        let (h, st) = (s.header(T_FLUSH, 0), s.status());
        let inner = s.indirect(&[h, st]);
        let outer = s.indirect(&[inner]);
        s.chain(&[outer]);
        out.push(("indirect-nested", s));
    }
    {
        let mut s = new(3);
        let (h, b) = (s.header(T_IN, 0), s.buf(512));
        let (table, len, f) = s.indirect(&[h, b]);
        // Entry 1 links back to entry 0.
        s.put(table + 16 + 12, &(WRITE | NEXT).to_le_bytes());
        s.put(table + 16 + 14, &0u16.to_le_bytes());
        s.chain(&[(table, len, f)]);
        out.push(("indirect-loop", s));
    }
    {
        let mut s = new(3);
        let (h, st) = (s.header(T_FLUSH, 0), s.status());
        let (table, _, f) = s.indirect(&[h, st]);
        s.chain(&[(table, 31, f)]);
        let (h, st) = (s.header(T_FLUSH, 0), s.status());
        let (table, _, f) = s.indirect(&[h, st]);
        s.chain(&[(table, 0, f)]);
        s.chain(&[(table, u32::MAX, f)]);
        s.chain(&[(0xffff_fff0_0000, 32, f)]);
        out.push(("indirect-bad-lengths", s));
    }
    {
        // An indirect descriptor that also has NEXT, and a header before it.
        let mut s = new(3);
        let (h, st) = (s.header(T_FLUSH, 0), s.status());
        let ind = s.indirect(&[st]);
        let st2 = s.status();
        s.chain(&[h, ind, st2]);
        out.push(("indirect-with-next", s));
    }
    {
        // More than MAX_SEGMENTS (1024) descriptors in one indirect table.
        let mut s = new(2);
        let h = s.header(T_IN, 0);
        let b = s.buf(512);
        let mut descs = vec![h];
        descs.extend(std::iter::repeat_n((b.0, 0, WRITE), 1100));
        descs.push(s.status());
        let ind = s.indirect(&descs);
        s.chain(&[ind]);
        out.push(("indirect-too-many-segments", s));
    }

    // Lengths and addresses.
    {
        let mut s = new(4);
        let h = s.header(T_IN, 0);
        let st = s.status();
        s.chain(&[(h.0, 0, 0), st]);
        let h = s.header(T_IN, 0);
        let b = s.buf(512);
        s.chain(&[h, (b.0, 0, WRITE), b, (st.0, 0, WRITE)]);
        let h = s.header(T_OUT, 0);
        s.chain(&[h, (h.0, 0, 0), st]);
        out.push(("zero-lengths", s));
    }
    out.push((
        "huge-lengths",
        one(T_IN, 0, |s| {
            let b = s.buf(512);
            vec![(b.0, u32::MAX, WRITE)]
        }),
    ));
    {
        let mut s = one(T_OUT, 0, |s| {
            let d = s.data(&pattern(512));
            vec![(d.0, u32::MAX - 511, 0)]
        });
        let h = s.header(T_WRITE_ZEROES, 0);
        let st = s.status();
        s.chain(&[h, (h.0, u32::MAX, 0), st]);
        out.push(("huge-lengths-out", s));
    }
    {
        let mut s = new(4);
        let st = s.status();
        let h = s.header(T_IN, 0);
        s.chain(&[(0x1_0000_0000, 16, 0), (0x4000_0000, 512, WRITE), st]);
        s.chain(&[h, (0xfff0, 512, WRITE), st]);
        s.chain(&[h, (u64::MAX - 8, 512, WRITE), st]);
        s.chain(&[h, (0x10_0000, 1, WRITE)]);
        s.chain(&[h, (u64::MAX, 1, WRITE)]);
        s.chain(&[(u64::MAX - 7, 16, 0), st]);
        out.push(("addresses-beyond-memory", s));
    }
    {
        // Buffers across the hole of layout 4 (RAM 0..32K and 48K..80K).
        let mut s = one(T_IN, 0, |_| vec![(0x7f00, 512, WRITE)]);
        s.h.memory = 4;
        let h = s.header(T_OUT, 0);
        s.chain(&[h, (0xbf00, 512, 0), (0xc100, 1, WRITE)]);
        out.push(("across-a-hole", s));
    }
    {
        let mut s = one(T_IN, 0, |_| vec![(0xf_fe00, 512, WRITE)]);
        s.h.memory = 3;
        out.push(("high-buffer-1m", s));
    }

    // Wrong directions.
    {
        let mut s = new(4);
        let st = s.status();
        let h = s.header(T_IN, 0);
        let d = s.data(&pattern(512));
        s.chain(&[h, d, st]); // IN with a readable data buffer
        let h = s.header(T_OUT, 0);
        let b = s.buf(512);
        s.chain(&[h, b, st]); // OUT with a writable data buffer
        let h = s.header(T_FLUSH, 0);
        s.chain(&[(h.0, 16, WRITE), st]); // writable header
        s.chain(&[h, (st.0, 1, 0)]); // readable status
        let h = s.header(T_IN, 0);
        s.chain(&[h, b, d, st]); // readable after writable
        out.push(("wrong-directions", s));
    }

    // Ring-level corruption and positions.
    {
        let mut s = one(T_FLUSH, 0, |_| vec![]);
        s.h.rounds = vec![Round {
            avail_idx: Some(s.size() + 1),
            used_event: None,
        }];
        out.push(("avail-idx-jump", s));
    }
    {
        let mut s = one(T_FLUSH, 0, |_| vec![]);
        s.publish(16);
        s.publish(0xffff);
        out.push(("head-beyond-queue", s));
    }
    {
        let mut s = new(4);
        s.h.next_avail = 0xfffe;
        s.h.next_used = 0xfffd;
        for _ in 0..4 {
            let h = s.header(T_FLUSH, 0);
            let st = s.status();
            s.chain(&[h, st]);
        }
        out.push(("index-wraparound", s));
    }
    {
        // Event-idx, in rounds: the driver publishes more between calls.
        let mut s = new(5);
        s.h.event_idx = true;
        for i in 0..6u64 {
            let h = s.header(T_IN, i);
            let b = s.buf(512);
            let st = s.status();
            s.chain(&[h, b, st]);
        }
        s.h.rounds = vec![
            Round {
                avail_idx: Some(1),
                used_event: Some(0),
            },
            Round {
                avail_idx: Some(3),
                used_event: Some(5),
            },
            Round {
                avail_idx: Some(6),
                used_event: Some(4),
            },
            Round {
                avail_idx: Some(6),
                used_event: Some(0xffff),
            },
        ];
        out.push(("event-idx-rounds", s));
    }
    {
        let mut s = new(3);
        s.h.event_idx = true;
        for _ in 0..4 {
            let h = s.header(T_FLUSH, 0);
            let st = s.status();
            s.chain(&[h, st]);
        }
        out.push(("event-idx-full-ring", s));
    }
    {
        // The used ring on top of the available ring.
        let mut s = one(T_FLUSH, 0, |_| vec![]);
        s.h.used_ring = s.h.avail_ring;
        out.push(("rings-overlap", s));
    }
    {
        // The used ring's flags on the available index (no EVENT_IDX): every
        // enable_notification writes 0 over the index and reads it back as new work. Used to
        // spin process_queue forever; now the queue breaks.
        let mut s = new(4);
        let a = s.alloc(0x100, 0) + 2;
        s.h.avail_ring = a;
        s.h.used_ring = a + 2;
        let h = s.header(T_FLUSH, 0);
        let st = s.status();
        s.chain(&[h, st]);
        out.push(("used-flags-on-avail-idx", s));
    }
    {
        // A read whose buffer covers the rings: the device overwrites its own queue.
        let mut s = new(4);
        let h = s.header(T_IN, 0);
        let st = s.status();
        let rings = s.h.avail_ring;
        s.chain(&[h, (rings, 512, WRITE), st]);
        let h = s.header(T_IN, 0);
        s.chain(&[h, (0, 512, WRITE), st]);
        s.h.rounds = vec![Round::default(); 4];
        out.push(("read-over-the-rings", s));
    }
    {
        let mut s = one(T_FLUSH, 0, |_| vec![]);
        // A misaligned address is ignored by the queue (the table stays at 0).
        s.h.desc_table = 8;
        out.push(("misaligned-ring", s));
    }
    {
        let mut s = one(T_FLUSH, 0, |_| vec![]);
        s.h.used_ring = 0xfff0; // runs past the 64 KiB of RAM: the transport refuses it
        out.push(("ring-outside-memory", s));
    }
    {
        let mut s = new(0);
        let st = s.status();
        s.chain(&[st]);
        out.push(("queue-size-one", s));
    }
    {
        // Every one of the 256 descriptors in use: 32 reads and writes, 80 flushes.
        let mut s = new(8);
        for i in 0..112u64 {
            let ty = match i % 3 {
                0 if i < 48 => T_IN,
                1 if i < 48 => T_OUT,
                _ => T_FLUSH,
            };
            let mut descs = vec![s.header(ty, i)];
            match ty {
                T_IN => descs.push(s.buf(512)),
                T_OUT => descs.push(s.data(&pattern(512))),
                _ => {}
            }
            descs.push(s.status());
            s.chain(&descs);
        }
        assert_eq!(s.next_desc, 0, "the table is full");
        out.push(("queue-size-256-full", s));
    }

    let mut all: Vec<(String, Vec<u8>)> = out
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.finish()))
        .collect();
    all.push(("empty".into(), Vec::new()));
    all.push(("header-only".into(), new(4).h.encode(&[])));
    all
}
