//! The virtio-net seeds: the common ones on the transmit queue (a virtio-net header and
//! an Ethernet frame in readable buffers) and on the receive queue (writable buffers, with
//! frames from the host), mergeable receive buffers, frames too big or too short, offload
//! headers.

use super::{common, finish, Request, Seed, WRITE};
use kiln_virtio::net::fuzz::{GUEST_CSUM, GUEST_TSO4, HOST_CSUM, MRG_RXBUF, RX};

/// A virtio-net header: `flags`, `gso_type`, `hdr_len`, `gso_size`, `csum_start`,
/// `csum_offset`, `num_buffers`.
fn vnet_hdr(flags: u8, gso: u8, gso_size: u16, csum: (u16, u16)) -> Vec<u8> {
    let mut h = vec![flags, gso];
    for v in [54u16, gso_size, csum.0, csum.1, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// An Ethernet frame of `len` bytes (IPv4 ethertype, a counting payload).
fn eth(len: usize) -> Vec<u8> {
    let mut f = vec![
        0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x54, 0, 0xab, 0xcd, 0xef, 8, 0,
    ];
    f.extend((14..len.max(14)).map(|i| i as u8));
    f
}

/// Host data: `frames`, each with its length.
fn host(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// A frame from the host: a header and `len` bytes of Ethernet.
fn packet(len: usize) -> Vec<u8> {
    let mut p = vnet_hdr(0, 0, 0, (0, 0));
    p.extend(eth(len));
    p
}

/// A transmit-queue seed (no host data, but the section is there).
fn tx(log2: u8) -> Seed {
    let mut s = Seed::new(log2);
    s.host = Some(Vec::new());
    s
}

fn rx(log2: u8) -> Seed {
    let mut s = Seed::new(log2);
    s.h.flags = RX;
    let frames: Vec<Vec<u8>> = (0..8).map(|i| packet(60 + 5 * i)).collect();
    s.host = Some(host(&frames));
    s
}

/// Every seed, by name.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let tx_good: Request = &|s| vec![s.data(&vnet_hdr(0, 0, 0, (0, 0))), s.data(&eth(60))];
    let rx_good: Request = &|s| vec![s.buf(128)];
    let mut all = common("tx-", &tx, tx_good, 0, 8);
    all.extend(common("rx-", &rx, rx_good, WRITE, 8));
    {
        // Checksum and TSO headers; a header alone; shorter than a header.
        let mut s = tx(4);
        s.h.flags = HOST_CSUM;
        let (h, f) = (s.data(&vnet_hdr(1, 1, 1448, (34, 16))), s.data(&eth(1514)));
        s.chain(&[h, f]);
        let h = s.data(&vnet_hdr(1, 0xff, 0xffff, (0xffff, 0xffff)));
        s.chain(&[h, f]);
        s.chain(&[h]);
        let short = s.data(&[0; 11]);
        s.chain(&[short]);
        all.push(("tx-offload-headers-and-short".into(), s));
    }
    {
        // More than MAX_PACKET_LEN (65574 bytes) in one chain, then one just at it.
        let mut s = tx(4);
        s.h.memory = 3;
        s.chain(&[(0x2_0000, 0x1_1000, 0)]);
        s.chain(&[(0x2_0000, 12, 0), (0x4_0000, 65562, 0)]);
        all.push(("tx-over-max-packet".into(), s));
    }
    {
        // Mergeable buffers: a 1000-byte frame over 128-byte chains, offloads on.
        let mut s = rx(4);
        s.h.flags = RX | MRG_RXBUF | GUEST_CSUM | GUEST_TSO4;
        s.host = Some(host(&[packet(1000), packet(60)]));
        for _ in 0..10 {
            let b = s.buf(128);
            s.chain(&[b]);
        }
        all.push(("rx-mergeable".into(), s));
    }
    {
        // Mergeable, too few buffers: the frame waits (nothing served).
        let mut s = rx(4);
        s.h.flags = RX | MRG_RXBUF;
        s.host = Some(host(&[packet(1000)]));
        for _ in 0..2 {
            let b = s.buf(128);
            s.chain(&[b]);
        }
        all.push(("rx-mergeable-too-few-idle".into(), s));
    }
    {
        // Mergeable, the header split over two buffers (num_buffers across them).
        let mut s = rx(4);
        s.h.flags = RX | MRG_RXBUF;
        s.host = Some(host(&[packet(200)]));
        let (a, b) = (s.buf(11), s.buf(100));
        s.chain(&[a, b]);
        let c = s.buf(200);
        s.chain(&[c]);
        all.push(("rx-mergeable-split-header".into(), s));
    }
    {
        // Without mergeable buffers a frame bigger than a chain is dropped.
        let mut s = rx(4);
        s.host = Some(host(&[packet(1000), packet(60)]));
        let b = s.buf(128);
        s.chain(&[b]);
        all.push(("rx-too-big-dropped".into(), s));
    }
    {
        // Frames shorter than a header and an Ethernet header, an empty one, then one good.
        let mut s = rx(4);
        s.host = Some(host(&[vec![1; 5], vec![], packet(10), packet(60)]));
        let b = s.buf(128);
        s.chain(&[b]);
        all.push(("rx-short-frames".into(), s));
    }
    {
        // A 60000-byte frame over 4 KiB mergeable buffers.
        let mut s = rx(5);
        s.h.flags = RX | MRG_RXBUF;
        s.h.memory = 3;
        s.host = Some(host(&[packet(59_900)]));
        for i in 0..16u64 {
            s.chain(&[(0x2_0000 + i * 0x1000, 0x1000, WRITE)]);
        }
        all.push(("rx-big-frame".into(), s));
    }
    {
        let mut s = rx(4);
        s.host = Some(Vec::new());
        let b = s.buf(128);
        s.chain(&[b]);
        all.push(("rx-no-frames-idle".into(), s));
    }
    let mut out = finish(all);
    out.push(("empty".into(), Vec::new()));
    out.push(("header-only".into(), Seed::new(4).h.encode(&[])));
    out
}
