//! Tests of virtio-vsock on real Unix sockets in a temporary directory, with the test
//! playing the guest driver on rings in a real `GuestMemoryMmap` (laid out by
//! virtio-queue's `MockSplitQueue`). Most drive the [`Muxer`] synchronously (serve the
//! queues, then handle host readiness with a bounded wait); one runs the device on its
//! worker thread through [`VirtioDevice::activate`].
//!
//! - `streams`: connections both ways, data, credit, shutdown, the worker thread.
//! - `hostile`: malformed packets and chains, protocol violations, limits, bad setups.

mod hostile;
mod streams;

use super::muxer::Muxer;
use super::packet::*;
use super::*;
use crate::device::{Activation, ActiveQueue, NeedsReset};
use crate::worker::QueueService;
use crate::{GuestMemory, VirtioDevice};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const N: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const GUEST_CID: u64 = 3;
const GUEST_BUF: u32 = 64 << 10;
const RING: u16 = 256;
const RX_BASE: u64 = 0x1_0000;
const TX_BASE: u64 = 0x3_0000;

fn new_mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// One ring as the driver sees it: where its parts are and what it has posted.
struct Ring {
    base: u64,
    next_desc: u16,
    avail: u16,
    used_seen: u16,
    /// Buffer area for this ring's descriptors, used round robin.
    data: u64,
    data_next: u64,
    /// Per head: the (addr, len) pieces of its chain.
    chains: Vec<Vec<(u64, u32)>>,
}

impl Ring {
    fn new(base: u64, data: u64) -> Ring {
        Ring {
            base,
            next_desc: 0,
            avail: 0,
            used_seen: 0,
            data,
            data_next: 0,
            chains: vec![Vec::new(); RING as usize],
        }
    }

    fn desc_table(&self) -> u64 {
        self.base
    }
    fn avail_ring(&self) -> u64 {
        self.base + 16 * u64::from(RING)
    }
    fn used_ring(&self) -> u64 {
        self.base + 0x8000
    }

    /// A queue on this ring (the mock lays it out; its used ring moves off the
    /// available ring, which the mock's overlaps).
    fn queue(&self, mem: &GuestMemory) -> Queue {
        let mock = MockSplitQueue::create(mem, GuestAddress(self.base), RING);
        let mut q: Queue = mock.create_queue().unwrap();
        assert_eq!(mock.desc_table_addr().0, self.desc_table());
        assert_eq!(mock.avail_addr().0, self.avail_ring());
        q.set_used_ring_address(Some(self.used_ring() as u32), Some(0));
        q.set_event_idx(true);
        q
    }

    /// Space for `len` bytes in this ring's data area.
    fn alloc(&mut self, len: u64) -> u64 {
        if self.data_next + len > 0x40_0000 {
            self.data_next = 0;
        }
        let at = self.data + self.data_next;
        self.data_next += (len + 15) & !15;
        at
    }

    /// Post a chain of (addr, len, flags) pieces; returns its head.
    fn post(&mut self, mem: &GuestMemory, pieces: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in pieces.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % RING;
            let last = i + 1 == pieces.len();
            let flags = if last { flags } else { flags | N };
            let at = self.desc_table() + 16 * u64::from(idx);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(self.next_desc, GuestAddress(at + 14))
                .unwrap();
        }
        self.chains[head as usize] = pieces.iter().map(|p| (p.0, p.1)).collect();
        let slot = self.avail_ring() + 4 + 2 * u64::from(self.avail % RING);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.write_obj(self.avail, GuestAddress(self.avail_ring() + 2))
            .unwrap();
        head
    }

    /// The next used element: (head, length).
    fn next_used(&mut self, mem: &GuestMemory) -> Option<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used_ring() + 2)).unwrap();
        if idx == self.used_seen {
            return None;
        }
        let at = self.used_ring() + 4 + 8 * u64::from(self.used_seen % RING);
        self.used_seen = self.used_seen.wrapping_add(1);
        let head: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        Some((head as u16, len))
    }

    /// The first `len` bytes a used chain's buffers hold.
    fn read_chain(&self, mem: &GuestMemory, head: u16, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, l) in &self.chains[head as usize] {
            let n = (len as usize - out.len()).min(l as usize);
            let mut buf = vec![0; n];
            mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.extend_from_slice(&buf);
        }
        out
    }
}

/// The test's guest driver.
struct Guest {
    mem: GuestMemory,
    rx: Ring,
    tx: Ring,
    rxq: Queue,
    txq: Queue,
    /// rx buffers posted and not yet used.
    rx_posted: usize,
}

impl Guest {
    fn new() -> Guest {
        let mem = new_mem();
        let rx = Ring::new(RX_BASE, 0x40_0000);
        let tx = Ring::new(TX_BASE, 0x80_0000);
        let rxq = rx.queue(&mem);
        let txq = tx.queue(&mem);
        Guest {
            mem,
            rx,
            tx,
            rxq,
            txq,
            rx_posted: 0,
        }
    }

    /// Keep `n` receive buffers (header + 64 KiB, split header/payload like Linux's
    /// mergeable-less buffers) posted.
    fn refill(&mut self, n: usize) {
        while self.rx_posted < n {
            let a = self.rx.alloc(HDR_LEN as u64);
            let b = self.rx.alloc(MAX_PAYLOAD as u64);
            self.rx.post(
                &self.mem,
                &[(a, HDR_LEN as u32, W), (b, MAX_PAYLOAD as u32, W)],
            );
            self.rx_posted += 1;
        }
    }

    /// Post a packet on tx, its bytes split at `cuts`, and have the device take it.
    fn send_split(&mut self, m: &mut Muxer, hdr: &Header, payload: &[u8], cuts: &[usize]) {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let at = self.tx.alloc(bytes.len() as u64);
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        let mut pieces = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain([bytes.len()].iter()) {
            pieces.push((at + start as u64, (c - start) as u32, 0));
            start = c;
        }
        self.tx.post(&self.mem, &pieces);
        self.serve_tx(m);
    }

    fn send(&mut self, m: &mut Muxer, hdr: &Header, payload: &[u8]) {
        self.send_split(m, hdr, payload, &[]);
    }

    fn serve_tx(&mut self, m: &mut Muxer) {
        let out = m.serve(TX_QUEUE, &self.mem, &mut self.txq);
        assert!(!out.broken);
        while self.tx.next_used(&self.mem).is_some() {}
        self.wakeups(m);
    }

    fn serve_rx(&mut self, m: &mut Muxer) {
        let out = m.serve(RX_QUEUE, &self.mem, &mut self.rxq);
        assert!(!out.broken);
        self.wakeups(m);
    }

    fn wakeups(&mut self, m: &mut Muxer) {
        let w = m.take_wakeups();
        if w & (1 << RX_QUEUE) != 0 {
            self.serve_rx(m);
        }
        if w & (1 << TX_QUEUE) != 0 {
            self.serve_tx(m);
        }
    }

    /// A packet the device put on rx, if any (no waiting).
    fn try_recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let (head, len) = self.rx.next_used(&self.mem)?;
        self.rx_posted -= 1;
        let bytes = self.rx.read_chain(&self.mem, head, len);
        assert!(bytes.len() >= HDR_LEN, "short rx packet: {len}");
        let hdr = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
        assert_eq!(hdr.len as usize, bytes.len() - HDR_LEN);
        Some((hdr, bytes[HDR_LEN..].to_vec()))
    }

    /// The next packet for the guest, handling host readiness meanwhile (5 s at most).
    fn recv(&mut self, m: &mut Muxer) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = self.try_recv() {
                return p;
            }
            self.refill(8);
            self.serve_rx(m);
            if let Some(p) = self.try_recv() {
                return p;
            }
            assert!(Instant::now() < deadline, "no packet for the guest");
            m.host_events(50);
        }
    }
}

/// A header from the guest's `port` to host `port`.
fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF,
        ..Header::default()
    }
}

fn rw(src_port: u32, dst_port: u32, len: usize, fwd_cnt: u32) -> Header {
    Header {
        len: len as u32,
        fwd_cnt,
        ..hdr(OP_RW, src_port, dst_port)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn setup() -> (tempfile::TempDir, PathBuf, VirtioVsock, Muxer, Guest) {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let dev = VirtioVsock::new(GUEST_CID, &uds).unwrap();
    let m = dev.muxer().unwrap();
    (dir, uds, dev, m, Guest::new())
}

fn counter(dev: &VirtioVsock, name: &str) -> u64 {
    dev.counters().into_iter().find(|c| c.0 == name).unwrap().1
}

/// Read from `s` until `want` bytes arrived (5 s at most).
fn read_exact(s: &mut UnixStream, want: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0; want];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn read_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF after {line:?}");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// The host connects with `CONNECT port`; the guest accepts. Returns the host socket and
/// the host-side port.
fn host_connect(uds: &Path, m: &mut Muxer, g: &mut Guest, port: u32) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(uds).unwrap();
    host.write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let (req, _) = g.recv(m);
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid, req.dst_port, req.type_),
        (OP_REQUEST, HOST_CID, GUEST_CID, port, TYPE_STREAM)
    );
    assert!(req.src_port >= LOCAL_PORT_BASE, "{req:?}");
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    g.send(m, &hdr(OP_RESPONSE, port, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    (host, req.src_port)
}

/// The guest connects to `uds`_5000 where a host program listens.
fn guest_connect(uds: &Path, m: &mut Muxer, g: &mut Guest, port: u32) -> UnixStream {
    let mut path = uds.as_os_str().to_owned();
    path.push("_5000");
    let listener = UnixListener::bind(&path).unwrap();
    g.send(m, &hdr(OP_REQUEST, port, 5000), &[]);
    let (p, _) = g.recv(m);
    assert_eq!(
        (p.op, p.src_cid, p.dst_cid, p.src_port, p.dst_port),
        (OP_RESPONSE, HOST_CID, GUEST_CID, 5000, port)
    );
    listener.accept().unwrap().0
}
