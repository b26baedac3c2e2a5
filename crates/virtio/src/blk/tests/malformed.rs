//! Malformed requests from a hostile driver: each gets its status (or, with nowhere to put
//! one, a used element of length 0), the disk is untouched, and the next good request on the
//! same queue still works.

use super::*;
use crate::blk::{QueueProcessor, MAX_SEGMENTS};

const DISK: u64 = 1 << 20;
const SECTORS: u64 = DISK / 512;

struct Rig<'m> {
    drv: Driver<'m>,
    q: Queue,
    p: QueueProcessor,
    img: Image,
    dev: VirtioBlk,
}

impl<'m> Rig<'m> {
    fn new(mem: &'m GuestMemory) -> Self {
        let img = raw_image(DISK);
        let dev = device(&img);
        let drv = Driver::new(mem, 256);
        let q = drv.queue(true);
        let p = dev.queue_processor(all_features(&dev));
        Rig {
            drv,
            q,
            p,
            img,
            dev,
        }
    }

    /// Serve what is available; exactly one chain must complete.
    fn serve_one(&mut self, what: &str) -> (u32, u32) {
        let before = self.drv.used_idx();
        let out = self.p.process_queue(self.drv.mem, &mut self.q);
        assert!(!out.broken, "{what}: the queue must survive");
        assert_eq!(out.completed, 1, "{what}");
        assert_eq!(self.drv.used_idx(), before.wrapping_add(1), "{what}");
        self.drv.last_used()
    }

    /// Expect `status` at `st` and a used length of `len`.
    fn expect(&mut self, what: &str, head: u16, st: D, status: u8, len: u32) {
        let (id, used_len) = self.serve_one(what);
        assert_eq!(id, u32::from(head), "{what}: used id");
        assert_eq!(self.drv.byte(st.addr), status, "{what}: status");
        assert_eq!(used_len, len, "{what}: used length");
        self.good(what);
    }

    /// Expect no status (used length 0).
    fn expect_unanswered(&mut self, what: &str, head: u16) {
        let (id, used_len) = self.serve_one(what);
        assert_eq!((id, used_len), (u32::from(head), 0), "{what}");
        self.good(what);
    }

    /// A write and a read back on the same queue still work.
    fn good(&mut self, after: &str) {
        let data = pattern(1024, 0x5a);
        let (_, wst) = self.drv.write_req(SECTORS - 2, &data, &[300]);
        let (_, bufs, rst) = self.drv.read_req(SECTORS - 2, &[1024]);
        let out = self.p.process_queue(self.drv.mem, &mut self.q);
        assert_eq!(out.completed, 2, "after {after}");
        assert_eq!((self.drv.byte(wst.addr), self.drv.byte(rst.addr)), (OK, OK));
        assert_eq!(self.drv.read(&bufs), data, "after {after}");
    }

    /// The image is all zeros except the last two sectors the good requests write.
    fn disk_untouched(&self, what: &str) {
        let b = std::fs::read(&self.img.path).unwrap();
        let end = (DISK - 1024) as usize;
        assert!(b[..end].iter().all(|&x| x == 0), "{what}: disk written");
    }
}

#[test]
fn bad_headers() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let d = &mut r.drv;

    // Header shorter than 16 bytes.
    let h = d.payload(&[0u8; 8]);
    let st = d.status();
    let head = d.chain(&[h, st]);
    r.expect("8-byte header", head, st, IOERR, 1);

    // Header outside guest memory.
    let d = &mut r.drv;
    let st = d.status();
    let head = d.chain(&[D::r(MEM_SIZE - 8, 16), st]);
    r.expect("header beyond RAM", head, st, IOERR, 1);
    let d = &mut r.drv;
    let st = d.status();
    let head = d.chain(&[D::r(u64::MAX - 4, 16), st]);
    r.expect("header address wraps", head, st, IOERR, 1);

    // A header split 10 + 6 is fine (no framing assumptions).
    let d = &mut r.drv;
    let mut h = d.header(T_FLUSH, 0);
    h.len = 10;
    let h2 = D::r(h.addr + 10, 6);
    let st = d.status();
    let head = d.chain(&[h, h2, st]);
    r.expect("split header", head, st, OK, 1);

    // Unknown and unoffered types.
    for ty in [2u32, 3, 14, 15, 0x8000_0000, u32::MAX] {
        let (head, st) = r.drv.bare_req(ty, 0);
        r.expect(&format!("type {ty:#x}"), head, st, UNSUPP, 1);
    }
    r.disk_untouched("bad headers");
}

#[test]
fn missing_or_unwritable_status() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let d = &mut r.drv;
    let h = d.header(T_FLUSH, 0);
    let head = d.chain(&[h]);
    r.expect_unanswered("no status descriptor", head);

    let d = &mut r.drv;
    let h = d.header(T_IN, 0);
    let mut st = d.status();
    st.flags = 0;
    let head = d.chain(&[h, st]);
    r.expect_unanswered("read-only status descriptor", head);
    assert_eq!(r.drv.byte(st.addr), 0xff, "read-only status written");

    let d = &mut r.drv;
    let h = d.header(T_FLUSH, 0);
    let mut st = d.status();
    st.len = 0;
    let head = d.chain(&[h, st]);
    r.expect_unanswered("empty status descriptor", head);

    for addr in [MEM_SIZE, MEM_SIZE + 0x1000, u64::MAX] {
        let d = &mut r.drv;
        let h = d.header(T_FLUSH, 0);
        let head = d.chain(&[h, D::w(addr, 1)]);
        r.expect_unanswered(&format!("status at {addr:#x}"), head);
    }

    // Data outside RAM too: IOERR is decided, but cannot be reported.
    let d = &mut r.drv;
    let h = d.header(T_IN, 0);
    let head = d.chain(&[h, D::w(MEM_SIZE + 512, 513)]);
    r.expect_unanswered("IN entirely outside RAM", head);
    r.disk_untouched("status");
}

#[test]
fn wrong_data_direction_and_order() {
    let mem = memory();
    let mut r = Rig::new(&mem);

    // OUT with device-writable data.
    let d = &mut r.drv;
    let h = d.header(T_OUT, 0);
    let p = d.payload(&[1u8; 512]);
    let extra = d.buffer(512);
    let st = d.status();
    let head = d.chain(&[h, p, extra, st]);
    r.expect("OUT with writable data", head, st, IOERR, 1);
    assert!(r.drv.read(&[extra]).iter().all(|&b| b == 0xee));

    // IN with device-readable data.
    let d = &mut r.drv;
    let h = d.header(T_IN, 0);
    let p = d.payload(&[1u8; 512]);
    let buf = d.buffer(512);
    let st = d.status();
    let head = d.chain(&[h, p, buf, st]);
    r.expect("IN with readable data", head, st, IOERR, 1);
    assert!(
        r.drv.read(&[buf]).iter().all(|&b| b == 0xee),
        "IN data written"
    );

    // A readable descriptor after a writable one.
    let d = &mut r.drv;
    let h = d.header(T_OUT, 0);
    let buf = d.buffer(16);
    let p = d.payload(&[1u8; 512]);
    let st = d.status();
    let head = d.chain(&[h, buf, p, st]);
    r.expect("readable after writable", head, st, IOERR, 1);

    // GET_ID with readable data.
    let d = &mut r.drv;
    let h = d.header(T_GET_ID, 0);
    let p = d.payload(&[0u8; 20]);
    let id = d.buffer(20);
    let st = d.status();
    let head = d.chain(&[h, p, id, st]);
    r.expect("GET_ID with readable data", head, st, IOERR, 1);

    // DISCARD with writable data.
    let d = &mut r.drv;
    let h = d.header(T_DISCARD, 0);
    let p = d.payload(&dwz_segment(0, 1, 0));
    let buf = d.buffer(16);
    let st = d.status();
    let head = d.chain(&[h, p, buf, st]);
    r.expect("DISCARD with writable data", head, st, IOERR, 1);
    r.disk_untouched("direction");
}

#[test]
fn bad_sector_ranges_and_lengths() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let cases: &[(&str, u64, &[u32])] = &[
        ("IN at capacity", SECTORS, &[512]),
        ("IN across the end", SECTORS - 1, &[1024]),
        ("IN sector overflows bytes", u64::MAX / 512 + 1, &[512]),
        ("IN at u64::MAX", u64::MAX, &[512]),
        ("IN of 511 bytes", 0, &[511]),
        ("IN of 513 bytes", 0, &[256, 257]),
        ("IN of almost 4 GiB", 0, &[u32::MAX - 1024]),
    ];
    for &(what, sector, lens) in cases {
        let d = &mut r.drv;
        let h = d.header(T_IN, sector);
        // Huge buffers are not allocated: describe them at the heap start.
        let mut descs = vec![h];
        for &l in lens {
            descs.push(if l > 1 << 20 {
                D::w(0x10_0000, l)
            } else {
                d.buffer(l)
            });
        }
        let st = d.status();
        descs.push(st);
        let head = d.chain(&descs);
        r.expect(what, head, st, IOERR, 1);
    }
    let outs: &[(&str, u64, usize)] = &[
        ("OUT at capacity", SECTORS, 512),
        ("OUT across the end", SECTORS - 1, 1024),
        ("OUT sector overflows bytes", u64::MAX / 512 + 1, 512),
        ("OUT of 513 bytes", 0, 513),
        ("OUT of 100 bytes", 0, 100),
    ];
    for &(what, sector, len) in outs {
        let (head, st) = r.drv.write_req(sector, &vec![0xab; len], &[len / 2]);
        r.expect(what, head, st, IOERR, 1);
    }
    r.disk_untouched("ranges");
}

#[test]
fn data_outside_guest_memory() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    let cases: &[(&str, u64, u32)] = &[
        ("data straddles the end of RAM", MEM_SIZE - 256, 512),
        ("data beyond RAM", MEM_SIZE + (1 << 30), 512),
        ("data address wraps", u64::MAX - 255, 512),
    ];
    for &(what, addr, len) in cases {
        let d = &mut r.drv;
        let h = d.header(T_IN, 0);
        let ok = d.buffer(512);
        let st = d.status();
        let head = d.chain(&[h, ok, D::w(addr, len), st]);
        r.expect(&format!("IN: {what}"), head, st, IOERR, 1);
        let d = &mut r.drv;
        let h = d.header(T_OUT, 0);
        let ok = d.payload(&[7u8; 512]);
        let st = d.status();
        let head = d.chain(&[h, ok, D::r(addr, len), st]);
        r.expect(&format!("OUT: {what}"), head, st, IOERR, 1);
    }
    // A DISCARD segment outside RAM.
    let d = &mut r.drv;
    let h = d.header(T_WRITE_ZEROES, 0);
    let st = d.status();
    let head = d.chain(&[h, D::r(MEM_SIZE, 16), st]);
    r.expect("WRITE_ZEROES segment beyond RAM", head, st, IOERR, 1);
    r.disk_untouched("addresses");
}

#[test]
fn bad_discard_and_write_zeroes() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    for ty in [T_DISCARD, T_WRITE_ZEROES] {
        let cases: &[(&str, u64, u32, u32, u8)] = &[
            ("beyond the end", SECTORS, 1, 0, IOERR),
            ("across the end", SECTORS - 1, 2, 0, IOERR),
            ("sector overflows", u64::MAX, 1, 0, IOERR),
            (
                "too many sectors",
                0,
                crate::blk::MAX_DISCARD_SECTORS + 1,
                0,
                IOERR,
            ),
            ("unknown flag", 0, 1, 2, UNSUPP),
            ("all flags", 0, 1, u32::MAX, UNSUPP),
        ];
        for &(what, sector, num, flags, status) in cases {
            let (head, st) = r.drv.dwz_req(ty, sector, num, flags);
            r.expect(&format!("type {ty}: {what}"), head, st, status, 1);
        }
        // Two segments (max_*_seg is 1), 15 bytes, no segment at all.
        let mut two = dwz_segment(0, 1, 0).to_vec();
        two.extend_from_slice(&dwz_segment(8, 1, 0));
        for (what, bytes, status) in [
            ("two segments", two, UNSUPP),
            ("15-byte segment", vec![0u8; 15], IOERR),
            ("no segment", vec![], IOERR),
        ] {
            let d = &mut r.drv;
            let h = d.header(ty, 0);
            let mut descs = vec![h];
            if !bytes.is_empty() {
                descs.push(d.payload(&bytes));
            }
            let st = d.status();
            descs.push(st);
            let head = d.chain(&descs);
            r.expect(&format!("type {ty}: {what}"), head, st, status, 1);
        }
    }
    // Unmap is for WRITE_ZEROES only.
    let (head, st) = r.drv.dwz_req(T_DISCARD, 0, 1, 1);
    r.expect("DISCARD with unmap", head, st, UNSUPP, 1);
    // Not negotiated: unsupported.
    let mut p = r.dev.queue_processor(0);
    let (_, st) = r.drv.dwz_req(T_DISCARD, 0, 1, 0);
    let (_, st2) = r.drv.dwz_req(T_WRITE_ZEROES, 0, 1, 0);
    assert_eq!(p.process_queue(&mem, &mut r.q).completed, 2);
    assert_eq!(
        (r.drv.byte(st.addr), r.drv.byte(st2.addr)),
        (UNSUPP, UNSUPP)
    );
}

#[test]
fn loops_and_overlong_chains() {
    let mem = memory();
    let mut r = Rig::new(&mem);
    // header -> status -> header -> ... : the chain ends after queue-size descriptors.
    let d = &mut r.drv;
    let h = d.header(T_FLUSH, 0);
    let st = d.status();
    let head = d.write_table(&[h, st]);
    d.store(
        (head + 1) % 256,
        st.addr,
        1,
        (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
        head,
    );
    d.publish(head);
    let (id, _) = r.serve_one("NEXT loop");
    assert_eq!(id, u32::from(head));
    assert_eq!(r.drv.byte(st.addr), IOERR, "loop: readable after writable");
    r.good("NEXT loop");

    // A self loop of one readable descriptor.
    let d = &mut r.drv;
    let h = d.header(T_FLUSH, 0);
    let head = d.write_table(&[h]);
    d.store(head, h.addr, 16, VRING_DESC_F_NEXT as u16, head);
    d.publish(head);
    r.expect_unanswered("self loop", head);

    // NEXT pointing beyond the table: the chain just ends (no status).
    let d = &mut r.drv;
    let h = d.header(T_FLUSH, 0);
    let head = d.write_table(&[h]);
    d.store(head, h.addr, 16, VRING_DESC_F_NEXT as u16, 4000);
    d.publish(head);
    r.expect_unanswered("next out of table", head);

    // More descriptors than MAX_SEGMENTS (indirect table).
    let d = &mut r.drv;
    let mut descs = vec![d.header(T_IN, 0)];
    let buf = d.buffer(512);
    descs.extend(std::iter::repeat_n(D::w(buf.addr, 0), MAX_SEGMENTS));
    descs.push(buf);
    let st = d.status();
    descs.push(st);
    let head = d.indirect_chain(&descs);
    r.expect("too many descriptors", head, st, IOERR, 1);

    // Indirect table outside RAM, misaligned length, nested indirect.
    for (addr, len) in [(MEM_SIZE, 32), (0x10_0000, 24), (u64::MAX - 15, 16)] {
        let d = &mut r.drv;
        let head = d.chain(&[D {
            addr,
            len,
            flags: VRING_DESC_F_INDIRECT as u16,
        }]);
        r.expect_unanswered(&format!("indirect table {addr:#x}+{len}"), head);
    }
    let d = &mut r.drv;
    let inner = d.alloc(16);
    let head = d.indirect_chain(&[D {
        addr: inner,
        len: 16,
        flags: VRING_DESC_F_INDIRECT as u16,
    }]);
    r.expect_unanswered("nested indirect", head);
    r.disk_untouched("loops");
}
