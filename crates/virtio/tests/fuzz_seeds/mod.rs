//! The seed generators for the fuzz corpora (`fuzz/corpus/<target>/`): [`Seed`] lays out
//! one input (the shared header, host data for targets that take it, a guest-memory image
//! with the descriptor table at 0, the rings after it and buffers after those), and
//! [`common`] makes the ring- and chain-level seeds every device gets (loops, indirect
//! tables, zero and huge lengths, addresses beyond RAM and across holes, wrong directions,
//! available-index jumps, heads beyond the queue, wraparound, event-idx rounds, rings that
//! overlap or lie outside RAM) from one well-formed request of that device. Each device's
//! module adds its own. `fuzz_corpus.rs` writes them and checks each does what it aims at.

pub mod blk;

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
