//! Tests of virtio-vsock on real Unix sockets in a temporary directory, with the test
//! playing the guest driver on rings in a real `GuestMemoryMmap` (laid out by
//! virtio-queue's `MockSplitQueue`). Most drive the [`Muxer`] synchronously (serve the
//! queues, then handle host readiness with a bounded wait); one runs the device on its
//! worker thread through [`VirtioDevice::activate`].

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

#[test]
fn host_initiated_stream_both_ways_then_host_close() {
    let (_dir, uds, dev, mut m, mut g) = setup();
    let (mut host, local) = host_connect(&uds, &mut m, &mut g, 1234);
    assert_eq!(counter(&dev, "connections"), 1);

    // Host to guest, more than the guest's buffer: the device stops at its credit until
    // the guest says it consumed data.
    let data = pattern(200 << 10, 7);
    let writer = {
        let mut h = host.try_clone().unwrap();
        let d = data.clone();
        std::thread::spawn(move || h.write_all(&d).unwrap())
    };
    let mut got = Vec::new();
    let mut fwd = 0u32;
    while got.len() < data.len() {
        let (p, payload) = g.recv(&mut m);
        if p.op == OP_CREDIT_REQUEST {
            // Out of credit: the guest application reads everything and says so.
            fwd = got.len() as u32;
            let upd = Header {
                fwd_cnt: fwd,
                ..hdr(OP_CREDIT_UPDATE, 1234, local)
            };
            g.send(&mut m, &upd, &[]);
            continue;
        }
        assert_eq!(
            (p.op, p.src_port, p.dst_port),
            (OP_RW, local, 1234),
            "{p:?}"
        );
        got.extend_from_slice(&payload);
        assert!(got.len() as u32 - fwd <= GUEST_BUF, "credit overrun");
        if got.len() as u32 - fwd >= GUEST_BUF / 2 {
            // The guest application read everything so far.
            fwd = got.len() as u32;
            let upd = Header {
                fwd_cnt: fwd,
                ..hdr(OP_CREDIT_UPDATE, 1234, local)
            };
            g.send(&mut m, &upd, &[]);
        }
    }
    writer.join().unwrap();
    assert!(got == data, "host-to-guest bytes differ");

    // Guest to host, header and payload split across descriptors at odd places.
    let msg = pattern(3000, 9);
    g.send_split(
        &mut m,
        &rw(1234, local, msg.len(), fwd),
        &msg,
        &[10, 44, 45, 1000],
    );
    assert_eq!(read_exact(&mut host, msg.len()), msg);

    // The host closes: the guest is told both directions are shut and resets.
    drop(host);
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
    g.send(&mut m, &hdr(OP_RST, 1234, local), &[]);
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "errors"), 0);
    assert_eq!(counter(&dev, "rx_bytes"), data.len() as u64);
    assert_eq!(counter(&dev, "tx_bytes"), msg.len() as u64);
}

#[test]
fn host_connect_to_a_port_nobody_listens_on_is_closed() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 99\n").unwrap();
    let (req, _) = g.recv(&mut m);
    assert_eq!(req.op, OP_REQUEST);
    g.send(&mut m, &hdr(OP_RST, 99, req.src_port), &[]);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0, "EOF");
    assert_eq!(m.open_connections(), 0);
}

#[test]
fn bad_connect_lines_close_the_host_socket() {
    let (_dir, uds, dev, mut m, _g) = setup();
    for line in [&b"CONNECT x\n"[..], b"HELLO 5\n", &[b'7'; 40][..]] {
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(line).unwrap();
        let errors = counter(&dev, "errors");
        let deadline = Instant::now() + Duration::from_secs(5);
        while counter(&dev, "errors") == errors {
            assert!(Instant::now() < deadline, "{line:?} accepted");
            m.host_events(50);
        }
        assert_eq!(m.open_connections(), 0);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Closed: EOF, or a reset when the line was not read to its end.
        assert!(matches!(host.read(&mut [0u8; 16]), Ok(0) | Err(_)));
    }
    assert_eq!(counter(&dev, "errors"), 3);
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

#[test]
fn guest_initiated_stream_both_ways_then_guest_close() {
    let (_dir, uds, dev, mut m, mut g) = setup();
    let mut host = guest_connect(&uds, &mut m, &mut g, 777);
    let msg = pattern(70_000, 1);
    g.send_split(&mut m, &rw(777, 5000, 60_000, 0), &msg[..60_000], &[44]);
    g.send(&mut m, &rw(777, 5000, 10_000, 0), &msg[60_000..]);
    assert_eq!(read_exact(&mut host, msg.len()), msg);
    host.write_all(b"pong").unwrap();
    let (p, payload) = g.recv(&mut m);
    assert_eq!((p.op, payload.as_slice()), (OP_RW, &b"pong"[..]));
    assert_eq!(p.fwd_cnt, 70_000, "our fwd_cnt counts what the host took");

    let shut = Header {
        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
        ..hdr(OP_SHUTDOWN, 777, 5000)
    };
    g.send(&mut m, &shut, &[]);
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.src_port, p.dst_port), (OP_RST, 5000, 777));
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0, "EOF");
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "errors"), 0);
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let (_dir, _uds, dev, mut m, mut g) = setup();
    g.send(&mut m, &hdr(OP_REQUEST, 778, 6000), &[]);
    let (p, _) = g.recv(&mut m);
    assert_eq!(
        (p.op, p.src_cid, p.dst_cid, p.src_port, p.dst_port),
        (OP_RST, HOST_CID, GUEST_CID, 6000, 778)
    );
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "connections"), 0);
}

#[test]
fn packets_for_unknown_connections_are_reset_and_bad_ones_dropped() {
    let (_dir, _uds, dev, mut m, mut g) = setup();
    g.send(&mut m, &rw(1, 2, 5, 0), b"hello");
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.src_port, p.dst_port), (OP_RST, 2, 1));
    // Wrong source CID, wrong destination, a datagram type: dropped and counted.
    let bad = [
        Header {
            src_cid: 4,
            ..rw(1, 2, 0, 0)
        },
        Header {
            dst_cid: 5,
            ..rw(1, 2, 0, 0)
        },
        Header {
            type_: 2,
            ..rw(1, 2, 0, 0)
        },
    ];
    for h in &bad {
        g.send(&mut m, h, &[]);
    }
    g.refill(8);
    g.serve_rx(&mut m);
    assert!(g.try_recv().is_none());
    assert_eq!(counter(&dev, "errors"), 3);
    // A reset for nothing gets no answer.
    g.send(&mut m, &hdr(OP_RST, 1, 2), &[]);
    g.serve_rx(&mut m);
    assert!(g.try_recv().is_none());
}

#[test]
fn malformed_chains_fail_alone() {
    let (_dir, _uds, dev, mut m, mut g) = setup();
    let mem = g.mem.clone();
    // A header cut short.
    let at = g.tx.alloc(64);
    mem.write_slice(&rw(1, 2, 0, 0).to_bytes(), GuestAddress(at))
        .unwrap();
    g.tx.post(&mem, &[(at, 20, 0)]);
    // A length beyond the descriptors, and one beyond 64 KiB.
    let h = rw(1, 2, 100, 0);
    g.tx.post(&mem, &[(at, HDR_LEN as u32 + 50, 0)]);
    mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
    let big_at = g.tx.alloc(HDR_LEN as u64 + MAX_PAYLOAD as u64 + 1);
    mem.write_slice(
        &rw(1, 2, MAX_PAYLOAD + 1, 0).to_bytes(),
        GuestAddress(big_at),
    )
    .unwrap();
    g.tx.post(&mem, &[(big_at, (HDR_LEN + MAX_PAYLOAD + 1) as u32, 0)]);
    // A device-writable descriptor in a transmit chain.
    g.tx.post(&mem, &[(at, HDR_LEN as u32, 0), (at + 0x100, 16, W)]);
    // A descriptor outside guest memory.
    g.tx.post(&mem, &[(0xffff_0000_0000, HDR_LEN as u32, 0)]);
    g.serve_tx(&mut m);
    assert_eq!(counter(&dev, "errors"), 5);
    assert_eq!(counter(&dev, "tx_packets"), 0);

    // A receive chain with a device-readable descriptor is returned empty; the reset
    // for the next bad packet lands in the buffer after it.
    let r = g.rx.alloc(256);
    g.rx.post(&mem, &[(r, 256, 0)]);
    let r2 = g.rx.alloc(20);
    g.rx.post(&mem, &[(r2, 20, W)]);
    g.rx_posted += 2;
    g.send(&mut m, &rw(1, 2, 0, 0), &[]);
    assert_eq!(g.rx.next_used(&mem).map(|u| u.1), Some(0));
    assert_eq!(g.rx.next_used(&mem).map(|u| u.1), Some(0));
    g.rx_posted -= 2;
    let (p, _) = g.recv(&mut m);
    assert_eq!(p.op, OP_RST);
    assert_eq!(counter(&dev, "errors"), 7);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let (_dir, uds, dev, mut m, mut g) = setup();
    // The host program never reads: our buffer fills once its socket buffer is full.
    let _host = guest_connect(&uds, &mut m, &mut g, 900);
    let chunk = pattern(MAX_PAYLOAD, 3);
    let mut reset = false;
    for _ in 0..256 {
        g.send(&mut m, &rw(900, 5000, chunk.len(), 0), &chunk);
        g.refill(8);
        g.serve_rx(&mut m);
        while let Some((p, _)) = g.try_recv() {
            if p.op == OP_RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    assert!(reset, "no reset after overrunning the credit");
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "errors"), 1);
    // The device goes on.
    g.send(&mut m, &rw(1, 2, 0, 0), &[]);
    assert_eq!(g.recv(&mut m).0.op, OP_RST);
}

#[test]
fn credit_request_is_answered_and_unbounded_resets_stall_tx() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let _host = guest_connect(&uds, &mut m, &mut g, 901);
    g.send(&mut m, &hdr(OP_CREDIT_REQUEST, 901, 5000), &[]);
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.buf_alloc), (OP_CREDIT_UPDATE, BUF_ALLOC));

    // 300 packets for unknown connections while the guest posts no receive buffers:
    // the device takes what its reset queue holds and leaves the rest on the ring until
    // the receive queue drains it.
    let post = |g: &mut Guest, from: u32, n: u32| {
        for i in from..from + n {
            let at = g.tx.alloc(64);
            g.mem
                .write_slice(&rw(i, 2, 0, 0).to_bytes(), GuestAddress(at))
                .unwrap();
            g.tx.post(&g.mem.clone(), &[(at, HDR_LEN as u32, 0)]);
        }
    };
    let posted_rx = g.rx_posted;
    post(&mut g, 0, 200);
    let out = m.serve(TX_QUEUE, &g.mem, &mut g.txq);
    assert_eq!(out.completed, 200);
    // The receive buffers already posted take the first resets.
    m.serve(RX_QUEUE, &g.mem, &mut g.rxq);
    post(&mut g, 200, 100);
    let out = m.serve(TX_QUEUE, &g.mem, &mut g.txq);
    assert_eq!(out.completed, RESET_QUEUE_CAP - 200 + posted_rx);
    let out = m.serve(TX_QUEUE, &g.mem, &mut g.txq);
    assert_eq!(out.completed, 0);
    let mut resets = 0;
    while resets < 300 {
        let (p, _) = g.recv(&mut m);
        assert_eq!(p.op, OP_RST);
        resets += 1;
    }
}

#[test]
fn cid_and_path_checks() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    assert!(VirtioVsock::new(2, &p).is_err());
    assert!(VirtioVsock::new(u64::from(u32::MAX), &p).is_err());
    std::fs::write(&p, b"not a socket").unwrap();
    assert!(VirtioVsock::new(3, &p).is_err());
    std::fs::remove_file(&p).unwrap();
    // A stale socket is replaced.
    drop(UnixListener::bind(&p).unwrap());
    let dev = VirtioVsock::new(3, &p).unwrap();
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), 3);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    drop(dev);
    assert!(!p.exists(), "the socket goes with the device");
}

/// The device on its worker thread: host readiness wakes it, queue kicks drive it.
#[test]
fn on_the_worker_thread() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("w.sock");
    let mut dev = VirtioVsock::new(GUEST_CID, &uds).unwrap();
    let mut g = Guest::new();
    let kicks: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let evq = Ring::new(0x5_0000, 0xc0_0000).queue(&g.mem);
    // (Laying a ring out resets it: post buffers after.)
    let queues = [g.rx.queue(&g.mem), g.tx.queue(&g.mem), evq]
        .into_iter()
        .zip(&kicks)
        .map(|(queue, k)| {
            Some(ActiveQueue {
                queue,
                kick: k.try_clone().unwrap(),
                interrupt: irq.clone(),
            })
        })
        .collect();
    let needs_reset = NeedsReset::new();
    dev.activate(Activation {
        mem: g.mem.clone(),
        acked_features: dev.features(),
        queues,
        config_interrupt: irq.clone(),
        needs_reset: needs_reset.clone(),
    })
    .unwrap();
    g.refill(8);
    kicks[RX_QUEUE].write(1).unwrap();
    let wait_used = |g: &mut Guest| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = g.try_recv() {
                return p;
            }
            assert!(Instant::now() < deadline, "no packet from the worker");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 42\nearly").unwrap();
    let (req, _) = wait_used(&mut g);
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 42));
    let post_tx = |g: &mut Guest, h: &Header, payload: &[u8]| {
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let at = g.tx.alloc(bytes.len() as u64);
        g.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        g.tx.post(&g.mem.clone(), &[(at, bytes.len() as u32, 0)]);
        kicks[TX_QUEUE].write(1).unwrap();
    };
    post_tx(&mut g, &hdr(OP_RESPONSE, 42, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    // What the host sent after its CONNECT line is the stream's first bytes.
    let (p, payload) = wait_used(&mut g);
    assert_eq!((p.op, payload.as_slice()), (OP_RW, &b"early"[..]));
    host.write_all(b"more").unwrap();
    let (_, payload) = wait_used(&mut g);
    assert_eq!(payload, b"more");
    post_tx(&mut g, &rw(42, req.src_port, 5, 0), b"reply");
    assert_eq!(read_exact(&mut host, 5), b"reply");
    // A reply to a transmitted packet reaches rx without an rx kick.
    post_tx(&mut g, &rw(43, 7, 0, 0), &[]);
    assert_eq!(wait_used(&mut g).0.op, OP_RST);
    dev.reset();
    assert!(!needs_reset.is_set());
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        host.read(&mut [0u8; 16]).unwrap(),
        0,
        "reset closes connections"
    );
}
