//! A descriptor chain as virtio-blk frames it, and guest-memory access through it.
//!
//! The device makes no assumption about how the driver splits a request into descriptors
//! (virtio 1.2 §2.7.4): the device-readable descriptors, read as one byte stream, hold the
//! 16-byte header and then any driver-to-device data; the device-writable descriptors hold
//! device-to-driver data, and the status is the last byte of the last descriptor. Every
//! guest access goes through vm-memory (which refuses addresses outside guest RAM); data
//! moves through a [`Cursor`] over the segments, never through a guest-sized allocation.

use super::MAX_SEGMENTS;
use crate::GuestMemory;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// One descriptor's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) addr: GuestAddress,
    pub(crate) len: u64,
}

/// The parts of a chain, in order.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Device-readable buffers: header, then data for the device.
    pub(crate) readable: Vec<Seg>,
    /// Device-writable buffers, the status byte excluded.
    pub(crate) writable: Vec<Seg>,
    /// Where the status byte goes: the last byte of the last descriptor, if that one is
    /// device-writable and not empty.
    pub(crate) status: Option<GuestAddress>,
    /// A readable descriptor after a writable one, or more than [`MAX_SEGMENTS`].
    pub(crate) malformed: bool,
}

impl Framing {
    /// Split a chain's descriptors (virtio-queue already bounds their number by the queue
    /// or indirect table size, stops at bad indices and caps the total length at 4 GiB).
    pub(crate) fn parse(descs: impl Iterator<Item = Descriptor>) -> Framing {
        let mut f = Framing::default();
        let mut last: Option<Descriptor> = None;
        let mut count = 0usize;
        for d in descs {
            count += 1;
            let seg = Seg {
                addr: d.addr(),
                len: u64::from(d.len()),
            };
            if count > MAX_SEGMENTS {
                f.malformed = true;
            } else if d.is_write_only() {
                f.writable.push(seg);
            } else {
                if !f.writable.is_empty() {
                    f.malformed = true;
                }
                f.readable.push(seg);
            }
            last = Some(d);
        }
        if let Some(d) = last {
            if d.is_write_only() && d.len() > 0 {
                f.status = d
                    .addr()
                    .0
                    .checked_add(u64::from(d.len()) - 1)
                    .map(GuestAddress);
                if count <= MAX_SEGMENTS {
                    // The last writable segment is this descriptor: its last byte is status.
                    if let Some(s) = f.writable.last_mut() {
                        s.len -= 1;
                        if s.len == 0 {
                            f.writable.pop();
                        }
                    }
                }
            }
        }
        f
    }
}

/// Total length of a segment list (at most 1024 segments of < 4 GiB: no overflow).
pub(crate) fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// Whether every segment lies entirely in guest memory.
pub(crate) fn in_memory(mem: &GuestMemory, segs: &[Seg]) -> bool {
    segs.iter().all(|s| {
        usize::try_from(s.len).is_ok_and(|len| GuestMemoryBackend::check_range(mem, s.addr, len))
    })
}

/// The segments after the first `n` bytes.
pub(crate) fn skip(segs: &[Seg], mut n: u64) -> Vec<Seg> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if n >= s.len {
            n -= s.len;
            continue;
        }
        // n < s.len, so addr + n cannot pass addr + len; an address that wraps is refused
        // by vm-memory later, so saturate rather than fail here.
        out.push(Seg {
            addr: GuestAddress(s.addr.0.saturating_add(n)),
            len: s.len - n,
        });
        n = 0;
    }
    out
}

/// A position in a segment list.
pub(crate) struct Cursor<'s> {
    segs: &'s [Seg],
    idx: usize,
    off: u64,
}

impl<'s> Cursor<'s> {
    /// The start of `segs`.
    pub(crate) fn new(segs: &'s [Seg]) -> Self {
        Cursor {
            segs,
            idx: 0,
            off: 0,
        }
    }

    /// The next contiguous piece of at most `max` bytes, or None at the end (or if the
    /// address would wrap).
    fn next_piece(&mut self, max: usize) -> Option<(GuestAddress, usize)> {
        loop {
            let s = self.segs.get(self.idx)?;
            let left = s.len - self.off;
            if left == 0 {
                self.idx += 1;
                self.off = 0;
                continue;
            }
            let n = usize::try_from(left).map_or(max, |l| l.min(max));
            let addr = GuestAddress(s.addr.0.checked_add(self.off)?);
            self.off += n as u64;
            return Some((addr, n));
        }
    }

    /// Fill `buf` from guest memory; false if the segments end or memory refuses.
    pub(crate) fn gather(&mut self, mem: &GuestMemory, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let Some((addr, n)) = self.next_piece(buf.len() - done) else {
                return false;
            };
            if mem.read_slice(&mut buf[done..done + n], addr).is_err() {
                return false;
            }
            done += n;
        }
        true
    }

    /// Copy `buf` into guest memory; Err(bytes copied) if the segments end or memory
    /// refuses part way.
    pub(crate) fn scatter(&mut self, mem: &GuestMemory, buf: &[u8]) -> Result<(), usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some((addr, n)) = self.next_piece(buf.len() - done) else {
                return Err(done);
            };
            if mem.write_slice(&buf[done..done + n], addr).is_err() {
                return Err(done);
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    fn d(addr: u64, len: u32, write: bool) -> Descriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn status_is_the_last_byte_of_the_last_descriptor() {
        let f = Framing::parse(
            [d(0x100, 16, false), d(0x200, 513, true), d(0x900, 1, true)].into_iter(),
        );
        assert!(!f.malformed);
        assert_eq!(f.status, Some(GuestAddress(0x900)));
        assert_eq!(
            f.writable,
            vec![Seg {
                addr: GuestAddress(0x200),
                len: 513
            }]
        );

        let f = Framing::parse([d(0x100, 16, false), d(0x200, 513, true)].into_iter());
        assert_eq!(f.status, Some(GuestAddress(0x200 + 512)));
        assert_eq!(
            f.writable,
            vec![Seg {
                addr: GuestAddress(0x200),
                len: 512
            }]
        );
    }

    #[test]
    fn readable_after_writable_and_missing_status() {
        let f = Framing::parse([d(0, 1, true), d(0, 16, false)].into_iter());
        assert!(f.malformed);
        assert_eq!(f.status, None);
        let f = Framing::parse([d(0, 16, false), d(0, 0, true)].into_iter());
        assert_eq!(f.status, None);
        let f = Framing::parse([d(u64::MAX, 2, true)].into_iter());
        assert_eq!(f.status, None, "status address overflows");
    }

    #[test]
    fn skip_and_cursor_cross_segments() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let segs = [
            Seg {
                addr: GuestAddress(0x10),
                len: 3,
            },
            Seg {
                addr: GuestAddress(0x40),
                len: 0,
            },
            Seg {
                addr: GuestAddress(0x80),
                len: 5,
            },
        ];
        let rest = skip(&segs, 4);
        assert_eq!(
            rest,
            vec![Seg {
                addr: GuestAddress(0x81),
                len: 4
            }]
        );
        assert_eq!(total(&segs), 8);
        Cursor::new(&segs).scatter(&mem, b"abcdefgh").unwrap();
        let mut out = [0u8; 8];
        assert!(Cursor::new(&segs).gather(&mem, &mut out));
        assert_eq!(&out, b"abcdefgh");
        assert_eq!(Cursor::new(&segs).scatter(&mem, b"abcdefghi"), Err(8));
        let far = [Seg {
            addr: GuestAddress(0xff0),
            len: 0x20,
        }];
        assert!(!in_memory(&mem, &far));
        assert_eq!(Cursor::new(&far).scatter(&mem, &[0; 0x20]), Err(0));
    }
}
