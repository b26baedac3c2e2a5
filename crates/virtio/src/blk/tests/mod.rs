//! Tests of virtio-blk against real guest memory (GuestMemoryMmap), real rings built with
//! virtio-queue's MockSplitQueue, and real raw and qcow2 images in temporary files.
//!
//! This file holds the harness: a small "driver" that lays out descriptor chains and
//! reads the used ring, and image helpers.
//!
//! MockSplitQueue (virtio-queue 0.18) places its used ring on top of its available ring
//! (`SplitQueueRing::end` adds the element count, not the byte size), so the driver keeps
//! the mock's descriptor table and available ring but puts the used ring [`USED_RING`]
//! bytes after the table.

mod device;
mod fuzz;
mod io;
mod malformed;
mod ring;

use super::VirtioBlk;
use crate::GuestMemory;
use kiln_block::BlockDevice;
use std::path::PathBuf;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub(super) use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR as IOERR_U32, VIRTIO_BLK_S_OK as OK_U32, VIRTIO_BLK_S_UNSUPP as UNSUPP_U32,
    VIRTIO_BLK_T_DISCARD as T_DISCARD, VIRTIO_BLK_T_FLUSH as T_FLUSH,
    VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN, VIRTIO_BLK_T_OUT as T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES,
};

pub(super) const OK: u8 = OK_U32 as u8;
pub(super) const IOERR: u8 = IOERR_U32 as u8;
pub(super) const UNSUPP: u8 = UNSUPP_U32 as u8;

/// Guest RAM for the tests.
pub(super) const MEM_SIZE: u64 = 16 << 20;
/// Where the driver's buffers start (the rings live below).
const HEAP_BASE: u64 = 0x10_0000;
/// Offset of the used ring from the descriptor table (after the table and available ring
/// of up to 256 entries).
pub(super) const USED_RING: u64 = 0x2000;

pub(super) fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// An image file in its own temporary directory.
pub(super) struct Image {
    _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
}

pub(super) fn raw_image(size: u64) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    kiln_block::raw::RawFile::create(&path, size).unwrap();
    Image { _dir: dir, path }
}

pub(super) fn qcow2_image(size: u64) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.qcow2");
    let opts = kiln_block::qcow2::CreateOptions {
        size,
        ..Default::default()
    };
    kiln_block::qcow2::create(&path, &opts).unwrap();
    Image { _dir: dir, path }
}

pub(super) fn open(img: &Image, read_only: bool) -> Box<dyn BlockDevice> {
    let opts = kiln_block::OpenOptions {
        read_only,
        ..Default::default()
    };
    kiln_block::open(&img.path, &opts).unwrap()
}

/// A device on a writable image with the serial "kiln-test".
pub(super) fn device(img: &Image) -> VirtioBlk {
    VirtioBlk::new(open(img, false), Some("kiln-test".into()))
}

/// One descriptor as the driver writes it (the NEXT link is added by [`Driver::chain`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct D {
    pub(super) addr: u64,
    pub(super) len: u32,
    pub(super) flags: u16,
}

impl D {
    pub(super) fn r(addr: u64, len: u32) -> D {
        D {
            addr,
            len,
            flags: 0,
        }
    }
    pub(super) fn w(addr: u64, len: u32) -> D {
        D {
            addr,
            len,
            flags: VRING_DESC_F_WRITE as u16,
        }
    }
}

/// The driver side of one split queue at guest address 0.
pub(super) struct Driver<'m> {
    pub(super) mem: &'m GuestMemory,
    pub(super) vq: MockSplitQueue<'m, GuestMemory>,
    pub(super) size: u16,
    used_ring: u64,
    next_desc: u16,
    avail: u16,
    heap: u64,
}

impl<'m> Driver<'m> {
    pub(super) fn new(mem: &'m GuestMemory, size: u16) -> Self {
        Self::new_at(mem, size, 0)
    }

    /// A queue whose descriptor table starts at `base` (rings up to `base + 0x2806`).
    pub(super) fn new_at(mem: &'m GuestMemory, size: u16, base: u64) -> Self {
        assert!(size <= 256);
        let used_ring = base + USED_RING;
        // A clean used ring (flags, idx, elements, avail_event).
        mem.write_slice(
            &vec![0u8; 6 + 8 * usize::from(size)],
            GuestAddress(used_ring),
        )
        .unwrap();
        Driver {
            mem,
            vq: MockSplitQueue::create(mem, GuestAddress(base), size),
            size,
            used_ring,
            next_desc: 0,
            avail: 0,
            heap: HEAP_BASE,
        }
    }

    /// The device's view of the queue (what the transport would hand over).
    pub(super) fn queue(&self, event_idx: bool) -> Queue {
        let mut q: Queue = self.vq.create_queue().unwrap();
        q.set_used_ring_address(
            Some(self.used_ring as u32),
            Some((self.used_ring >> 32) as u32),
        );
        q.set_event_idx(event_idx);
        q
    }

    /// Allocate buffers from `addr` on.
    pub(super) fn heap_at(&mut self, addr: u64) {
        self.heap = addr;
    }

    /// Guest memory for a buffer of `len` bytes (16-byte aligned; wraps around).
    pub(super) fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(16);
        if self.heap + len > MEM_SIZE {
            self.heap = HEAP_BASE;
        }
        assert!(self.heap + len <= MEM_SIZE, "test buffer too large");
        let a = self.heap;
        self.heap += len;
        a
    }

    /// A readable 16-byte request header.
    pub(super) fn header(&mut self, ty: u32, sector: u64) -> D {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.payload(&h)
    }

    /// A readable buffer holding `bytes`.
    pub(super) fn payload(&mut self, bytes: &[u8]) -> D {
        let a = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        D::r(a, bytes.len() as u32)
    }

    /// A writable buffer, filled with 0xEE so untouched bytes show.
    pub(super) fn buffer(&mut self, len: u32) -> D {
        let a = self.alloc(u64::from(len));
        self.mem
            .write_slice(&vec![0xee; len as usize], GuestAddress(a))
            .unwrap();
        D::w(a, len)
    }

    /// A writable status byte, preset to 0xFF.
    pub(super) fn status(&mut self) -> D {
        let mut d = self.buffer(1);
        self.mem.write_slice(&[0xff], GuestAddress(d.addr)).unwrap();
        d.len = 1;
        d
    }

    /// Write `descs` as one chain into the descriptor table and make it available.
    pub(super) fn chain(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        self.write_table(descs);
        self.publish(head);
        head
    }

    /// Write `descs` as a chain into the table without publishing it; returns the head.
    pub(super) fn write_table(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = self.next_desc;
            let next = (idx + 1) % self.size;
            let flags = if i + 1 < descs.len() {
                d.flags | VRING_DESC_F_NEXT as u16
            } else {
                d.flags
            };
            self.store(idx, d.addr, d.len, flags, next);
            self.next_desc = next;
        }
        head
    }

    /// One descriptor table entry, exactly as given.
    pub(super) fn store(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let raw = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.vq.desc_table().store(idx, raw).unwrap();
    }

    /// `descs` as an indirect table behind one INDIRECT descriptor, made available.
    pub(super) fn indirect_chain(&mut self, descs: &[D]) -> u16 {
        let table = self.alloc(16 * descs.len() as u64);
        for (i, d) in descs.iter().enumerate() {
            let (flags, next) = if i + 1 < descs.len() {
                (d.flags | VRING_DESC_F_NEXT as u16, i as u16 + 1)
            } else {
                (d.flags, 0)
            };
            let raw = RawDescriptor::from(Descriptor::new(d.addr, d.len, flags, next));
            self.mem
                .write_obj(raw, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        self.chain(&[D {
            addr: table,
            len: 16 * descs.len() as u32,
            flags: VRING_DESC_F_INDIRECT as u16,
        }])
    }

    /// Put `head` on the available ring.
    pub(super) fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail % self.size);
        self.vq.avail().ring().ref_at(slot).unwrap().store(head);
        self.avail = self.avail.wrapping_add(1);
        self.set_avail_idx(self.avail);
    }

    /// Write the available index directly (to corrupt it).
    pub(super) fn set_avail_idx(&self, idx: u16) {
        self.vq.avail().idx().store(idx);
    }

    /// The driver's `used_event` (the avail ring's trailing field).
    pub(super) fn set_used_event(&self, v: u16) {
        let addr = self.vq.avail_addr().0 + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    /// The device's `avail_event` (the used ring's trailing field).
    pub(super) fn avail_event(&self) -> u16 {
        let addr = self.used_ring + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    pub(super) fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap()
    }

    /// Used element `i`: (descriptor id, length).
    pub(super) fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_ring + 4 + 8 * u64::from(i % self.size);
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// The last used element.
    pub(super) fn last_used(&self) -> (u32, u32) {
        self.used(self.used_idx().wrapping_sub(1))
    }

    pub(super) fn byte(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// The contents of `descs`' buffers, concatenated.
    pub(super) fn read(&self, descs: &[D]) -> Vec<u8> {
        let mut out = Vec::new();
        for d in descs {
            let mut b = vec![0u8; d.len as usize];
            self.mem.read_slice(&mut b, GuestAddress(d.addr)).unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    /// An OUT request writing `data` at `sector`, split into buffers of `split` lengths
    /// (the rest in one last buffer). Returns (head, status descriptor).
    pub(super) fn write_req(&mut self, sector: u64, data: &[u8], split: &[usize]) -> (u16, D) {
        let mut descs = vec![self.header(T_OUT, sector)];
        let mut at = 0;
        for &n in split {
            descs.push(self.payload(&data[at..at + n]));
            at += n;
        }
        if at < data.len() {
            descs.push(self.payload(&data[at..]));
        }
        let st = self.status();
        descs.push(st);
        (self.chain(&descs), st)
    }

    /// An IN request at `sector` into buffers of `lens`. Returns (head, buffers, status).
    pub(super) fn read_req(&mut self, sector: u64, lens: &[u32]) -> (u16, Vec<D>, D) {
        let mut descs = vec![self.header(T_IN, sector)];
        let bufs: Vec<D> = lens.iter().map(|&l| self.buffer(l)).collect();
        descs.extend_from_slice(&bufs);
        let st = self.status();
        descs.push(st);
        (self.chain(&descs), bufs, st)
    }

    /// A request with only a header and status (FLUSH, unknown types).
    pub(super) fn bare_req(&mut self, ty: u32, sector: u64) -> (u16, D) {
        let h = self.header(ty, sector);
        let st = self.status();
        (self.chain(&[h, st]), st)
    }

    /// DISCARD / WRITE_ZEROES with one segment.
    pub(super) fn dwz_req(&mut self, ty: u32, sector: u64, num: u32, flags: u32) -> (u16, D) {
        let h = self.header(ty, 0);
        let p = self.payload(&dwz_segment(sector, num, flags));
        let st = self.status();
        (self.chain(&[h, p, st]), st)
    }
}

/// A `struct virtio_blk_discard_write_zeroes`.
pub(super) fn dwz_segment(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

/// A deterministic byte pattern (differs per `seed`).
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Every feature the device offers, as if the driver accepted them all.
pub(super) fn all_features(dev: &VirtioBlk) -> u64 {
    crate::VirtioDevice::features(dev)
}
