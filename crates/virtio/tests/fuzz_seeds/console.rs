//! The virtio-console seeds: the common ones on the transmit queue (readable buffers) and
//! on the receive queue (writable buffers, with host input), and the caps and waits.

use super::{common, finish, Request, Seed, WRITE};
use kiln_virtio::console::fuzz::{PORT_DOWN, RX};

/// Host input: `n` printable bytes.
fn typed(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
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
    s.host = Some(typed(300));
    s
}

/// Every seed, by name.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let tx_good: Request = &|s| vec![s.data(b"hello, "), s.data(b"console\n")];
    let rx_good: Request = &|s| vec![s.buf(16)];
    let mut all = common("tx-", &tx, tx_good, 0, 6);
    all.extend(common("rx-", &rx, rx_good, WRITE, 6));
    {
        // More than MAX_TX_PER_CHAIN (64 KiB) in one chain.
        let mut s = tx(4);
        s.h.memory = 3;
        s.chain(&[(0x2_0000, 0x1_8000, 0)]);
        s.chain(&[(0x2_0000, 0xc000, 0), (0x4_0000, 0x8000, 0)]);
        let d = s.data(b"after\n");
        s.chain(&[d]);
        all.push(("tx-over-the-cap".into(), s));
    }
    {
        // Input longer than the buffers: the rest waits.
        let mut s = rx(4);
        s.host = Some(typed(5000));
        for _ in 0..3 {
            let b = s.buf(100);
            s.chain(&[b, b]);
        }
        all.push(("rx-input-longer-than-buffers".into(), s));
    }
    {
        // A lot of input and big buffers.
        let mut s = rx(4);
        s.h.memory = 3;
        s.host = Some(typed(60_000));
        for i in 0..8u64 {
            s.chain(&[(0x2_0000 + i * 0x2000, 0x2000, WRITE)]);
        }
        all.push(("rx-big-input".into(), s));
    }
    {
        let mut s = rx(4);
        s.h.flags |= PORT_DOWN;
        let b = s.buf(64);
        s.chain(&[b]);
        all.push(("rx-port-down-idle".into(), s));
    }
    {
        let mut s = rx(4);
        s.host = Some(Vec::new());
        let b = s.buf(64);
        s.chain(&[b]);
        all.push(("rx-no-input-idle".into(), s));
    }
    let mut out = finish(all);
    out.push(("empty".into(), Vec::new()));
    out.push(("header-only".into(), Seed::new(4).h.encode(&[])));
    out
}
