//! The virtio-rng seeds: the common ones on writable buffers, and requests over
//! `MAX_BYTES_PER_REQUEST`.

use super::{common, finish, Request, Seed, WRITE};

/// Every seed, by name.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let good: Request = &|s| vec![s.buf(64)];
    let mut all = common("", &Seed::new, good, WRITE, 6);
    {
        // Bigger than MAX_BYTES_PER_REQUEST (64 KiB), in one buffer and in two.
        let mut s = Seed::new(4);
        s.h.memory = 3;
        s.chain(&[(0x2_0000, 0x2_0000, WRITE)]);
        s.chain(&[(0x4_0000, 0xc000, WRITE), (0x6_0000, 0x1_0000, WRITE)]);
        all.push(("over-the-cap".into(), s));
    }
    {
        let mut s = Seed::new(4);
        let (a, b, c) = (s.buf(7), s.buf(100), s.buf(1));
        s.chain(&[a, b, c]);
        s.chain(&[a, (b.0, 0, WRITE), c]);
        all.push(("segments".into(), s));
    }
    let mut out = finish(all);
    out.push(("empty".into(), Vec::new()));
    out.push(("header-only".into(), Seed::new(4).h.encode(&[])));
    out
}
