//! The virtio-net fuzz target's body: `run_one` turns arbitrary bytes into the receive or
//! the transmit queue, guest memory and frames from the host, and runs the device's queue
//! handling through the shared harness's rounds ([`crate::fuzz`]).
//!
//! The backend is one end of a Unix datagram socket pair standing in for the TAP (it
//! keeps frame boundaries and is nonblocking, as a TAP is); the harness holds the other
//! end, sends the host's frames into it and reads what the device transmitted.
//!
//! Input: the shared [`Header`] (flags: [`RX`] drives the receive queue, else the transmit
//! queue; [`MRG_RXBUF`], [`GUEST_CSUM`], [`GUEST_TSO4`], [`HOST_CSUM`] are features the
//! driver acked), the host data ([`Header::encode_with_host`]: frames, each a u16 length
//! and that many bytes, header included, sent as the socket takes them before each round),
//! then the guest-memory image.
//!
//! Checked beyond the ring invariants: on transmit every chain is sent or dropped and
//! counted once, every frame written to the backend is at least a header and at most
//! [`MAX_PACKET_LEN`], is exactly the chain's readable bytes, and chains are used with
//! length 0; on receive a used length never exceeds the chain's writable bytes, the used
//! lengths of a call add up to the frames counted (header included), a frame takes one
//! chain without mergeable buffers, and no more frames are delivered or dropped than the
//! host sent.

use super::rx::Rx;
use super::tx::Tx;
use super::{offload_flags, Counters, Tap, MAX_PACKET_LEN, QUEUE_SIZE, TX_BUDGET, VNET_HDR_LEN};
use crate::fuzz::{drive, guest_memory, Call, Driven, Header, Rules, Target};
use crate::worker::Drained;
use crate::GuestMemory;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_net as vn;
use virtio_queue::Queue;

/// [`Header::flags`] bit: drive the receive queue (frames from the host to the guest).
pub const RX: u8 = 1;
/// [`Header::flags`] bit: VIRTIO_NET_F_MRG_RXBUF acked.
pub const MRG_RXBUF: u8 = 2;
/// [`Header::flags`] bit: VIRTIO_NET_F_GUEST_CSUM acked.
pub const GUEST_CSUM: u8 = 4;
/// [`Header::flags`] bit: VIRTIO_NET_F_GUEST_TSO4 acked.
pub const GUEST_TSO4: u8 = 8;
/// [`Header::flags`] bit: VIRTIO_NET_F_CSUM acked.
pub const HOST_CSUM: u8 = 16;

/// The feature bits the driver acked.
pub fn acked_features(h: &Header) -> u64 {
    let mut f = 0;
    for (mask, bit) in [
        (MRG_RXBUF, vn::VIRTIO_NET_F_MRG_RXBUF),
        (GUEST_CSUM, vn::VIRTIO_NET_F_GUEST_CSUM),
        (GUEST_TSO4, vn::VIRTIO_NET_F_GUEST_TSO4),
        (HOST_CSUM, vn::VIRTIO_NET_F_CSUM),
    ] {
        if h.flag(mask) {
            f |= 1u64 << bit;
        }
    }
    if h.event_idx {
        f |= 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    }
    f
}

/// Host data as frames: each a u16 length and that many bytes (the last one gets what is
/// left).
pub fn frames(mut host: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = host {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        out.push(&rest[..n]);
        host = &rest[n..];
    }
    out
}

/// Run one input; panics when an invariant fails (see the module documentation).
pub fn run_one(data: &[u8]) {
    run(data);
}

/// `run_one`, reporting what the harness saw.
pub fn run(data: &[u8]) -> Driven {
    let (h, host, image) = Header::decode_with_host(data);
    let mem = guest_memory(h.layout(), image);
    let acked = acked_features(&h);
    let offloads = offload_flags(acked);
    assert!(
        offloads == 0 || offloads & super::TUN_F_CSUM != 0,
        "segmentation offloads without checksum offload"
    );
    let (ours, peer) = UnixDatagram::pair().expect("fuzz: socket pair");
    ours.set_nonblocking(true).expect("fuzz: nonblocking");
    peer.set_nonblocking(true).expect("fuzz: nonblocking");
    let tap = Arc::new(Tap::from_file(File::from(OwnedFd::from(ours)), "fuzz"));
    let counters = Arc::new(Counters::default());
    let rx = h.flag(RX);
    let mergeable = acked & (1 << vn::VIRTIO_NET_F_MRG_RXBUF) != 0;
    let queue = if rx {
        Side::Rx(Rx::new(tap.clone(), counters.clone(), mergeable))
    } else {
        Side::Tx(Tx::new(tap, counters.clone()))
    };
    let mut target = Net {
        queue,
        peer,
        frames: if rx { frames(host) } else { Vec::new() },
        sent: 0,
        sent_bytes: 0,
        mergeable,
        counters,
        last: [0; 7],
        buf: vec![0; MAX_PACKET_LEN + 1],
    };
    let rules = if rx {
        Rules {
            budget: None,
            caught_up: false,
            taken_on_break: QUEUE_SIZE,
            writes_unused_chains: true,
            remembers_broken: false,
        }
    } else {
        Rules {
            budget: Some(TX_BUDGET),
            caught_up: true,
            taken_on_break: 1,
            writes_unused_chains: false,
            remembers_broken: false,
        }
    };
    let driven = drive(&h, &mem, QUEUE_SIZE, rules, &mut target);
    drop(target);
    driven
}

/// The queue under test.
enum Side {
    Rx(Rx),
    Tx(Tx),
}

struct Net<'a> {
    queue: Side,
    /// The host's end of the socket pair.
    peer: UnixDatagram,
    /// The host's frames, sent in order as the socket takes them.
    frames: Vec<&'a [u8]>,
    /// How many of them (and their bytes) were sent.
    sent: usize,
    sent_bytes: u64,
    mergeable: bool,
    counters: Arc<Counters>,
    /// The counters after the previous call.
    last: [u64; 7],
    buf: Vec<u8>,
}

impl Net<'_> {
    /// rx_packets, rx_bytes, tx_packets, tx_bytes, rx_dropped, tx_dropped, errors.
    fn counters(&self) -> [u64; 7] {
        let c = &self.counters;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            g(&c.rx_packets),
            g(&c.rx_bytes),
            g(&c.tx_packets),
            g(&c.tx_bytes),
            g(&c.rx_dropped),
            g(&c.tx_dropped),
            g(&c.errors),
        ]
    }
}

impl Target for Net<'_> {
    fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        match &mut self.queue {
            Side::Rx(rx) => rx.serve(mem, queue),
            Side::Tx(tx) => tx.serve(mem, queue),
        }
    }

    fn round(&mut self, _index: usize) {
        let Side::Rx(rx) = &mut self.queue else {
            return;
        };
        while let Some(f) = self.frames.get(self.sent) {
            match self.peer.send(f) {
                Ok(_) => {
                    self.sent += 1;
                    self.sent_bytes += f.len() as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Refused outright (too big for the socket): the host never sent it.
                Err(_) => self.sent += 1,
            }
        }
        // The worker's edge-triggered readiness.
        rx.tap_ready();
    }

    fn check(&mut self, call: &Call) {
        let now = self.counters();
        let d: Vec<u64> = now.iter().zip(self.last).map(|(n, l)| n - l).collect();
        self.last = now;
        let [rx_packets, rx_bytes, tx_packets, tx_bytes, _, tx_dropped, _] = d[..] else {
            unreachable!()
        };
        let out = call.out;
        if matches!(self.queue, Side::Rx(_)) {
            let mut lens = 0u64;
            for u in &call.used {
                lens += u64::from(u.len);
                assert!(
                    !call.clean || u.len as usize <= MAX_PACKET_LEN,
                    "used length {}",
                    u.len
                );
                if let Some(chain) = &u.chain {
                    assert!(
                        u64::from(u.len) <= chain.writable(),
                        "used length {} for {} writable bytes",
                        u.len,
                        chain.writable()
                    );
                }
            }
            if call.clean && !out.broken {
                let framed = rx_bytes + VNET_HDR_LEN as u64 * rx_packets;
                assert_eq!(lens, framed, "used lengths against the frames delivered");
            }
            if !self.mergeable && !out.broken {
                assert_eq!(out.completed as u64, rx_packets, "one chain per frame");
            }
            assert!(
                out.completed as u64 >= rx_packets,
                "a frame without a chain"
            );
            assert!(
                now[0] + now[4] <= self.sent as u64 && now[1] <= self.sent_bytes,
                "more frames delivered or dropped than sent: {now:?}, {} sent",
                self.sent
            );
            return;
        }
        let mut frames = Vec::new();
        loop {
            match self.peer.recv(&mut self.buf) {
                Ok(n) => frames.push(self.buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("fuzz: reading the peer: {e}"),
            }
        }
        for f in &frames {
            assert!(
                (VNET_HDR_LEN..=MAX_PACKET_LEN).contains(&f.len()),
                "a {}-byte frame reached the backend",
                f.len()
            );
        }
        let payload: u64 = frames.iter().map(|f| (f.len() - VNET_HDR_LEN) as u64).sum();
        assert_eq!(
            (tx_packets, tx_bytes),
            (frames.len() as u64, payload),
            "the counters against what the backend got"
        );
        if !out.broken {
            assert_eq!(
                tx_packets + tx_dropped,
                out.completed as u64,
                "every chain is sent or dropped, once"
            );
        }
        if call.clean {
            for u in &call.used {
                assert_eq!(u.len, 0, "a transmit chain used with a length");
            }
            let chains: Option<Vec<_>> = call.used.iter().map(|u| u.chain.as_ref()).collect();
            if let (Some(chains), 0) = (chains, tx_dropped) {
                for (k, (f, c)) in frames.iter().zip(chains).enumerate() {
                    assert_eq!(
                        f.len() as u64,
                        c.readable(),
                        "frame {k} is not its chain's readable bytes"
                    );
                }
            }
        }
    }
}
