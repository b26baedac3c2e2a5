//! The virtio-vsock seeds: the common ones on the transmit queue (guest packets in
//! readable buffers, a host listener on port 5000) and on the receive queue (writable
//! buffers, with host connections saying CONNECT), then protocol-level ones: a whole
//! connection's life, packets to unknown connections, wrong CIDs and types, lengths past
//! the chain or over 64 KiB, credit overruns, headers split across descriptors.

use super::{common, finish, Desc, Request, Seed, WRITE};
use kiln_virtio::vsock::fuzz::{GUEST_CID, LISTEN, LISTEN_PORT, RX};

const OP_REQUEST: u16 = 1;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;

/// A packet header (44 bytes, little-endian) from the guest's `src_port` to the host's
/// `dst_port`.
fn pkt(op: u16, src_port: u32, dst_port: u32, len: u32, flags: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(&GUEST_CID.to_le_bytes());
    h.extend_from_slice(&2u64.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&(64u32 << 10).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// Host connections (`u8` length, bytes), each saying CONNECT to a guest port.
fn connects(ports: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in ports {
        let line = format!("CONNECT {p}\n");
        out.push(line.len() as u8);
        out.extend_from_slice(line.as_bytes());
    }
    out
}

fn tx(log2: u8) -> Seed {
    let mut s = Seed::new(log2);
    s.h.flags = LISTEN;
    s.host = Some(Vec::new());
    s
}

fn rx(log2: u8) -> Seed {
    let mut s = Seed::new(log2);
    s.h.flags = RX;
    s.host = Some(connects(&[1234, 80, 22, 7, 5000, 9]));
    s
}

/// One chain per packet, each packet in one readable buffer.
fn packets(s: &mut Seed, list: &[Vec<u8>]) {
    for p in list {
        let d = s.data(p);
        s.chain(&[d]);
    }
}

/// Every seed, by name.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let tx_good: Request = &|s| vec![s.data(&pkt(OP_REQUEST, 1000, LISTEN_PORT, 0, 0))];
    let rx_good: Request = &|s| vec![s.buf(64)];
    let mut all = common("tx-", &tx, tx_good, 0, 8);
    all.extend(common("rx-", &rx, rx_good, WRITE, 8));
    {
        // A guest connection's whole life: request, data, credit, shutdown, reset.
        let mut s = tx(4);
        let mut rw = pkt(OP_RW, 1000, LISTEN_PORT, 5, 0);
        rw.extend_from_slice(b"hello");
        packets(
            &mut s,
            &[
                pkt(OP_REQUEST, 1000, LISTEN_PORT, 0, 0),
                rw,
                pkt(OP_CREDIT_UPDATE, 1000, LISTEN_PORT, 0, 0),
                pkt(OP_CREDIT_REQUEST, 1000, LISTEN_PORT, 0, 0),
                pkt(OP_SHUTDOWN, 1000, LISTEN_PORT, 0, 3),
                pkt(OP_RST, 1000, LISTEN_PORT, 0, 0),
            ],
        );
        all.push(("tx-connection-life".into(), s));
    }
    {
        // Packets for connections that do not exist, and to a port nobody listens on.
        let mut s = tx(4);
        let mut rw = pkt(OP_RW, 1001, 7777, 3, 0);
        rw.extend_from_slice(b"abc");
        packets(
            &mut s,
            &[
                rw,
                pkt(OP_REQUEST, 1002, 7777, 0, 0),
                pkt(OP_SHUTDOWN, 9, 9, 0, 1),
            ],
        );
        all.push(("tx-unknown-connections".into(), s));
    }
    {
        // Wrong source CID, destination CID and type; an unknown op.
        let mut s = tx(4);
        let mut bad_src = pkt(OP_REQUEST, 1, LISTEN_PORT, 0, 0);
        bad_src[0] = 9;
        let mut bad_dst = pkt(OP_REQUEST, 1, LISTEN_PORT, 0, 0);
        bad_dst[8] = 7;
        let mut bad_type = pkt(OP_REQUEST, 1, LISTEN_PORT, 0, 0);
        bad_type[28] = 2;
        let unknown_op = pkt(99, 1, LISTEN_PORT, 0, 0);
        packets(&mut s, &[bad_src, bad_dst, bad_type, unknown_op]);
        all.push(("tx-wrong-addresses".into(), s));
    }
    {
        // A length past the chain, a length over 64 KiB, a header cut short.
        let mut s = tx(4);
        s.h.memory = 3;
        let mut past = pkt(OP_RW, 1000, LISTEN_PORT, 100, 0);
        past.extend_from_slice(&[1; 10]);
        let mut over = pkt(OP_RW, 1000, LISTEN_PORT, 0x2_0000, 0);
        over.extend_from_slice(&[2; 64]);
        let short = pkt(OP_REQUEST, 1000, LISTEN_PORT, 0, 0)[..30].to_vec();
        packets(
            &mut s,
            &[pkt(OP_REQUEST, 1000, LISTEN_PORT, 0, 0), past, over, short],
        );
        all.push(("tx-bad-lengths".into(), s));
    }
    {
        // More data than the credit the device advertised (256 KiB), in 60 KiB packets.
        let mut s = tx(4);
        s.h.memory = 3;
        let d = s.data(&pkt(OP_REQUEST, 1000, LISTEN_PORT, 0, 0));
        s.chain(&[d]);
        let payload: Desc = (0x2_0000, 60 << 10, 0);
        for _ in 0..6 {
            let h = s.data(&pkt(OP_RW, 1000, LISTEN_PORT, 60 << 10, 0));
            s.chain(&[h, payload]);
        }
        all.push(("tx-credit-overrun".into(), s));
    }
    {
        // A header split across three descriptors, the payload across two more.
        let mut s = tx(4);
        let req = pkt(OP_REQUEST, 1000, LISTEN_PORT, 0, 0);
        let mut rw = pkt(OP_RW, 1000, LISTEN_PORT, 8, 0);
        rw.extend_from_slice(b"splitted");
        let d = s.data(&req);
        s.chain(&[d]);
        let parts: Vec<Desc> = [&rw[..10], &rw[10..43], &rw[43..47], &rw[47..]]
            .iter()
            .map(|p| s.data(p))
            .collect();
        s.chain(&parts);
        all.push(("tx-split-header".into(), s));
    }
    {
        // Receive buffers too small for a header, then big ones; split across two.
        let mut s = rx(4);
        let (a, b, c) = (s.buf(20), s.buf(24), s.buf(4096));
        s.chain(&[a]);
        s.chain(&[a, b]);
        s.chain(&[c]);
        all.push(("rx-small-buffers".into(), s));
    }
    {
        // Bad CONNECT lines from the host: nothing for the guest.
        let mut s = rx(4);
        let mut host = Vec::new();
        for line in [
            &b"CONNECT\n"[..],
            b"CONNECT 99999999999\n",
            b"HELLO 1\n",
            &[b'x'; 60],
        ] {
            host.push(line.len() as u8);
            host.extend_from_slice(line);
        }
        s.host = Some(host);
        let b = s.buf(64);
        s.chain(&[b]);
        all.push(("rx-bad-connect-lines-idle".into(), s));
    }
    let mut out = finish(all);
    out.push(("empty".into(), Vec::new()));
    out.push(("header-only".into(), Seed::new(4).h.encode(&[])));
    out
}
