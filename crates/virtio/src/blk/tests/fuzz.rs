//! A deterministic randomized test (guest RAM in three regions with holes): thousands of random descriptor tables (addresses in
//! RAM, in a hole, beyond RAM and near 2^64; lengths from 0 to u32::MAX; random flags
//! including NEXT loops and indirect tables; plausible and random headers) through the
//! synchronous processor. Nothing may panic or take long, and every published head must get
//! its used element unless the ring was corrupt, in which case the queue is broken.

use super::*;
use crate::blk::QueueProcessor;
use std::time::{Duration, Instant};

/// xorshift64* (Vigna): small, deterministic, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const ITERATIONS: usize = 3000;
/// Guest RAM: two regions with a hole between them.
const LOW_END: u64 = 0x10_0000;
const HIGH: u64 = 0x20_0000;
const HIGH_END: u64 = 0x30_0000;
/// The descriptor table and rings live in a third region of their own, behind a hole, so
/// no random buffer (whatever its length) reaches them and the used-ring check holds.
const RINGS: u64 = 0x40_0000;
const DISK: u64 = 1 << 20;

fn fuzz_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH), (HIGH_END - HIGH) as usize),
        (GuestAddress(RINGS), 0x1_0000),
    ])
    .unwrap()
}

fn in_ram(addr: u64) -> bool {
    addr < LOW_END || (HIGH..HIGH_END).contains(&addr)
}

fn addr(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=3 => rng.below(LOW_END),
        4..=5 => HIGH + rng.below(HIGH_END - HIGH),
        6 => LOW_END - rng.below(1024), // straddles the hole
        7 => LOW_END + rng.below(HIGH - LOW_END), // in the hole
        8 => HIGH_END - rng.below(1024), // straddles the end of RAM
        _ => {
            let r = rng.next();
            rng.pick(&[HIGH_END, 1 << 40, u64::MAX, u64::MAX - 15, r])
        }
    }
}

fn len(rng: &mut Rng) -> u32 {
    let r = rng.next();
    rng.pick(&[
        0,
        1,
        15,
        16,
        17,
        511,
        512,
        513,
        4096,
        65536,
        (r % 200_000) as u32,
        u32::MAX,
        u32::MAX - 15,
        r as u32,
    ])
}

fn flags(rng: &mut Rng) -> u16 {
    if rng.chance(5) {
        rng.next() as u16
    } else {
        // NEXT | WRITE | INDIRECT, INDIRECT rarer.
        (rng.below(4) as u16) | if rng.chance(10) { 4 } else { 0 }
    }
}

/// A random descriptor; in-RAM indirect tables get random (safe) entries written.
fn descriptor(rng: &mut Rng, mem: &GuestMemory, size: u16, nested: bool) -> (u64, u32, u16, u16) {
    let a = addr(rng);
    let mut l = len(rng);
    let f = flags(rng);
    let next = if rng.chance(95) {
        rng.below(u64::from(size)) as u16
    } else {
        rng.next() as u16
    };
    if f & 4 != 0 && in_ram(a) && !nested {
        if rng.chance(80) {
            // A real table of up to 32 entries, so no stale memory is taken for one.
            let k = rng.below(33);
            l = 16 * k as u32;
            for i in 0..k {
                let (da, dl, df, dn) = descriptor(rng, mem, k as u16, true);
                let raw = RawDescriptor::from(Descriptor::new(da, dl, df, dn));
                let _ = mem.write_obj(raw, GuestAddress(a + 16 * i));
            }
        } else {
            l |= 1; // a length that is not a whole number of entries
        }
    }
    if nested && f & 4 != 0 && in_ram(a) {
        l |= 1;
    }
    if f & 2 == 0 && f & 4 == 0 && l >= 16 && in_ram(a) && rng.chance(70) {
        let (r1, r2, r3) = (rng.next(), rng.below(2100), rng.next());
        let ty = rng.pick(&[0u32, 0, 1, 1, 4, 8, 11, 13, 2, r1 as u32]);
        let sector = rng.pick(&[0, r2, DISK / 512 - 1, u64::MAX, r3]);
        let mut h = [0u8; 32];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h[16..32].copy_from_slice(&dwz_segment(
            rng.below(2100),
            rng.below(64) as u32,
            rng.below(3) as u32,
        ));
        let n = if l >= 32 { 32 } else { 16 };
        let _ = mem.write_slice(&h[..n], GuestAddress(a));
    }
    (a, l, f, next)
}

/// A buffer of `len` bytes in RAM (occasionally straddling a region's end).
fn buffer_addr(rng: &mut Rng, len: u64) -> u64 {
    let (start, end) = if rng.chance(50) {
        (0, LOW_END)
    } else {
        (HIGH, HIGH_END)
    };
    if rng.chance(3) {
        return end - rng.below(len.max(1));
    }
    let room = (end - start).saturating_sub(len).max(1);
    start + rng.below(room)
}

/// Well-formed chains (header, data, status), some descriptors then perturbed, some put
/// behind an indirect descriptor. Returns the heads.
fn structured(rng: &mut Rng, mem: &GuestMemory, drv: &Driver<'_>, size: u16) -> Vec<u16> {
    let mut heads = Vec::new();
    let mut idx = 0u16;
    while idx < size {
        let ty = rng.pick(&[
            T_IN,
            T_IN,
            T_OUT,
            T_OUT,
            T_FLUSH,
            T_GET_ID,
            T_DISCARD,
            T_WRITE_ZEROES,
            3,
        ]);
        let sector = if rng.chance(90) {
            rng.below(DISK / 512 + 4)
        } else {
            rng.next()
        };
        let hdr = buffer_addr(rng, 16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        let _ = mem.write_slice(&h, GuestAddress(hdr));
        let mut chain = vec![(hdr, 16u32, 0u16)];
        let writable = matches!(ty, T_IN | T_GET_ID);
        let data = if ty == T_FLUSH { 0 } else { rng.below(5) };
        for _ in 0..data {
            let l = match rng.below(4) {
                0 => 512 * rng.below(9) as u32,
                1 => rng.pick(&[16, 20, 511, 513, 4095]),
                2 => rng.below(1 << 16) as u32,
                _ => 512,
            };
            let a = buffer_addr(rng, u64::from(l));
            if matches!(ty, T_DISCARD | T_WRITE_ZEROES) && l >= 16 {
                let seg = dwz_segment(
                    rng.below(DISK / 512 + 4),
                    rng.below(300) as u32,
                    rng.below(3) as u32,
                );
                let _ = mem.write_slice(&seg, GuestAddress(a));
            }
            let dir = writable ^ rng.chance(5);
            chain.push((a, l, if dir { 2 } else { 0 }));
        }
        chain.push((buffer_addr(rng, 1), 1, 2));
        for d in chain.iter_mut() {
            if rng.chance(4) {
                match rng.below(3) {
                    0 => d.0 = addr(rng),
                    1 => d.1 = len(rng),
                    _ => d.2 = flags(rng) & !1,
                }
            }
        }
        let indirect = rng.chance(20);
        let room = usize::from(size - idx);
        if !indirect && chain.len() > room {
            break;
        }
        let head = idx;
        let n = chain.len();
        // NEXT on all but the last, linking to the following entry.
        let link = |i: usize, base: u16| (u16::from(i + 1 < n), base + i as u16 + 1);
        if indirect {
            let table = buffer_addr(rng, 16 * n as u64) & !15;
            for (i, &(a, l, f)) in chain.iter().enumerate() {
                let (nf, next) = link(i, 0);
                let raw = RawDescriptor::from(Descriptor::new(a, l, f | nf, next));
                let _ = mem.write_obj(raw, GuestAddress(table + 16 * i as u64));
            }
            drv.store(idx, table, 16 * n as u32, 4, 0);
            idx += 1;
        } else {
            for (i, &(a, l, f)) in chain.iter().enumerate() {
                let (nf, next) = link(i, head);
                drv.store(idx, a, l, f | nf, next);
                idx += 1;
            }
        }
        heads.push(head);
    }
    heads
}

#[test]
fn random_descriptor_tables() {
    let mem = fuzz_memory();
    let imgs = [raw_image(DISK), qcow2_image(DISK)];
    let devs: Vec<VirtioBlk> = imgs.iter().map(device).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let (mut served, mut broken) = (0usize, 0usize);
    for it in 0..ITERATIONS {
        let dev = &devs[it % 2];
        let size = rng.pick(&[1u16, 2, 4, 8, 16, 32, 64, 256]);
        let mut drv = Driver::new_at(&mem, size, RINGS);
        let mut q = drv.queue(rng.chance(50));
        let mut p: QueueProcessor = dev.queue_processor(all_features(dev));
        let structured_heads = if rng.chance(60) {
            structured(&mut rng, &mem, &drv, size)
        } else {
            for i in 0..size {
                let (a, l, f, n) = descriptor(&mut rng, &mem, size, false);
                drv.store(i, a, l, f, n);
            }
            Vec::new()
        };
        drv.set_used_event(rng.next() as u16);
        let n = rng.below(u64::from(size) + 1) as u16;
        // Now and then one head beyond the queue, or an index that jumps too far.
        let bad_head = (n > 0 && rng.chance(5)).then(|| rng.below(u64::from(n)) as usize);
        let mut heads = Vec::new();
        for j in 0..usize::from(n) {
            let h = if bad_head == Some(j) {
                size + rng.below(10) as u16
            } else if !structured_heads.is_empty() && rng.chance(90) {
                rng.pick(&structured_heads)
            } else {
                rng.below(u64::from(size)) as u16
            };
            heads.push(h);
            drv.publish(h);
        }
        let mut corrupt = bad_head.is_some();
        if rng.chance(3) {
            corrupt = true;
            drv.set_avail_idx(n.wrapping_add(size).wrapping_add(1 + rng.below(100) as u16));
        }
        let mut out = p.process_queue(&mem, &mut q);
        while out.more {
            out = p.process_queue(&mem, &mut q);
        }
        if corrupt {
            assert!(
                out.broken,
                "iteration {it}: a corrupt ring must break the queue"
            );
            broken += 1;
            continue;
        }
        assert!(!out.broken, "iteration {it}: a sane ring broke");
        assert_eq!(drv.used_idx(), n, "iteration {it}: every head used");
        for (j, &h) in heads.iter().enumerate() {
            assert_eq!(
                drv.used(j as u16).0,
                u32::from(h),
                "iteration {it}: used id {j}"
            );
        }
        served += heads.len();
    }
    let took = start.elapsed();
    eprintln!("served {served} chains, {broken} corrupt rings, in {took:?}");
    for dev in &devs {
        eprintln!("{:?}", crate::VirtioDevice::counters(dev));
    }
    assert!(
        served > 50_000 && broken > 100,
        "served {served}, broken {broken}"
    );
    // The structured chains reach real I/O.
    let c: std::collections::HashMap<_, _> = crate::VirtioDevice::counters(&devs[1])
        .into_iter()
        .collect();
    assert!(
        c["bytes_written"] > 1 << 20 && c["bytes_read"] > 1 << 20,
        "{c:?}"
    );
    assert!(took < Duration::from_secs(120), "took {took:?}");

    // The devices still serve a plain request.
    for dev in &devs {
        let mut drv = Driver::new_at(&mem, 16, RINGS);
        drv.heap_at(HIGH);
        let mut q = drv.queue(true);
        let mut p = dev.queue_processor(all_features(dev));
        let (_, st) = drv.write_req(3, &pattern(512, 1), &[]);
        let (_, bufs, rst) = drv.read_req(3, &[512]);
        assert_eq!(p.process_queue(&mem, &mut q).completed, 2);
        assert_eq!((drv.byte(st.addr), drv.byte(rst.addr)), (OK, OK));
        assert_eq!(drv.read(&bufs), pattern(512, 1));
    }
}
