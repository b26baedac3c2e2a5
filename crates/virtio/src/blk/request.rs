//! One virtio-blk request (virtio 1.2 §5.2.6): header checks, the request types Kiln
//! serves (IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES), I/O against the disk through a
//! bounce buffer of at most [`MAX_BOUNCE`] bytes, and the status byte.
//!
//! Whatever the chain holds, the outcome is a status for this request only: IOERR for a
//! malformed request or a failed I/O, UNSUPP for a type or flag not offered.

use super::chain::{in_memory, skip, total, Cursor, Framing, Seg};
use super::{ID_BYTES, MAX_BOUNCE, MAX_DISCARD_SECTORS, SECTOR_SIZE};
use crate::GuestMemory;
use kiln_block::BlockDevice;
use virtio_bindings::virtio_blk::*;
use vm_memory::Bytes;

/// Size of `struct virtio_blk_outhdr` (le32 type, le32 ioprio, le64 sector).
const HEADER_SIZE: u64 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
const DWZ_SEGMENT_SIZE: u64 = 16;

/// What a request was, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
    Other,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) kind: Kind,
    /// VIRTIO_BLK_S_*.
    pub(crate) status: u8,
    /// Bytes written into the driver's buffers (the status byte not counted).
    pub(crate) to_guest: u64,
    /// Bytes written to the disk.
    pub(crate) to_disk: u64,
}

/// What a request may use: the disk and the device's fixed properties.
pub(crate) struct Ctx<'a> {
    pub(crate) disk: &'a mut dyn BlockDevice,
    /// Capacity in sectors.
    pub(crate) capacity: u64,
    pub(crate) read_only: bool,
    pub(crate) serial: &'a [u8; ID_BYTES],
    /// VIRTIO_BLK_F_DISCARD / VIRTIO_BLK_F_WRITE_ZEROES negotiated.
    pub(crate) discard: bool,
    pub(crate) write_zeroes: bool,
    /// Reused between requests; never grown past [`MAX_BOUNCE`].
    pub(crate) bounce: &'a mut Vec<u8>,
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

impl Done {
    fn new(kind: Kind, status: u8) -> Done {
        Done {
            kind,
            status,
            to_guest: 0,
            to_disk: 0,
        }
    }
}

/// Serve the request a chain frames. Does not write the status byte.
pub(crate) fn execute(mem: &GuestMemory, f: &Framing, ctx: &mut Ctx<'_>) -> Done {
    let mut hdr = [0u8; HEADER_SIZE as usize];
    if total(&f.readable) < HEADER_SIZE || !Cursor::new(&f.readable).gather(mem, &mut hdr) {
        return Done::new(Kind::Other, IOERR);
    }
    let ty = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    let kind = match ty {
        VIRTIO_BLK_T_IN => Kind::Read,
        VIRTIO_BLK_T_OUT => Kind::Write,
        VIRTIO_BLK_T_FLUSH => Kind::Flush,
        _ => Kind::Other,
    };
    if f.malformed {
        return Done::new(kind, IOERR);
    }
    let data_in = skip(&f.readable, HEADER_SIZE);
    let data_in_len = total(&data_in);
    let data_out_len = total(&f.writable);
    match ty {
        VIRTIO_BLK_T_IN => {
            if data_in_len != 0 {
                return Done::new(kind, IOERR);
            }
            read(mem, &f.writable, sector, ctx)
        }
        VIRTIO_BLK_T_OUT => {
            if ctx.read_only || data_out_len != 0 {
                return Done::new(kind, IOERR);
            }
            write(mem, &data_in, sector, ctx)
        }
        // Any data a FLUSH carries is ignored.
        VIRTIO_BLK_T_FLUSH => match ctx.disk.flush() {
            Ok(()) => Done::new(kind, OK),
            Err(_) => Done::new(kind, IOERR),
        },
        VIRTIO_BLK_T_GET_ID => {
            if data_in_len != 0 {
                return Done::new(kind, IOERR);
            }
            let n = data_out_len.min(ID_BYTES as u64) as usize;
            match Cursor::new(&f.writable).scatter(mem, &ctx.serial[..n]) {
                Ok(()) => Done {
                    to_guest: n as u64,
                    ..Done::new(kind, OK)
                },
                Err(done) => Done {
                    to_guest: done as u64,
                    ..Done::new(kind, IOERR)
                },
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = ty == VIRTIO_BLK_T_DISCARD;
            let offered = if discard {
                ctx.discard
            } else {
                ctx.write_zeroes
            };
            if !offered {
                return Done::new(kind, UNSUPP);
            }
            if ctx.read_only || data_out_len != 0 {
                return Done::new(kind, IOERR);
            }
            Done::new(kind, discard_or_zero(mem, &data_in, discard, ctx))
        }
        _ => Done::new(kind, UNSUPP),
    }
}

/// The byte range of `len` bytes at `sector`, if it is inside the disk.
fn byte_range(sector: u64, len: u64, capacity: u64) -> Option<u64> {
    let off = sector.checked_mul(SECTOR_SIZE)?;
    let end = off.checked_add(len)?;
    (end <= capacity.checked_mul(SECTOR_SIZE)?).then_some(off)
}

/// Checks shared by IN and OUT: whole sectors, inside the disk, buffers in guest RAM.
fn data_offset(mem: &GuestMemory, segs: &[Seg], sector: u64, cap: u64) -> Option<u64> {
    let len = total(segs);
    if !len.is_multiple_of(SECTOR_SIZE) || !in_memory(mem, segs) {
        return None;
    }
    byte_range(sector, len, cap)
}

fn bounce(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    debug_assert!(n <= MAX_BOUNCE);
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
}

fn read(mem: &GuestMemory, segs: &[Seg], sector: u64, ctx: &mut Ctx<'_>) -> Done {
    let mut done = Done::new(Kind::Read, IOERR);
    let Some(off) = data_offset(mem, segs, sector, ctx.capacity) else {
        return done;
    };
    let len = total(segs);
    let mut cur = Cursor::new(segs);
    while done.to_guest < len {
        let n = (len - done.to_guest).min(MAX_BOUNCE as u64) as usize;
        let buf = bounce(ctx.bounce, n);
        if ctx.disk.read_at(buf, off + done.to_guest).is_err() {
            return done;
        }
        if let Err(k) = cur.scatter(mem, buf) {
            done.to_guest += k as u64;
            return done;
        }
        done.to_guest += n as u64;
    }
    done.status = OK;
    done
}

fn write(mem: &GuestMemory, segs: &[Seg], sector: u64, ctx: &mut Ctx<'_>) -> Done {
    let mut done = Done::new(Kind::Write, IOERR);
    let Some(off) = data_offset(mem, segs, sector, ctx.capacity) else {
        return done;
    };
    let len = total(segs);
    let mut cur = Cursor::new(segs);
    while done.to_disk < len {
        let n = (len - done.to_disk).min(MAX_BOUNCE as u64) as usize;
        let buf = bounce(ctx.bounce, n);
        if !cur.gather(mem, buf) || ctx.disk.write_at(buf, off + done.to_disk).is_err() {
            return done;
        }
        done.to_disk += n as u64;
    }
    done.status = OK;
    done
}

/// DISCARD or WRITE_ZEROES: one 16-byte segment (le64 sector, le32 num_sectors, le32
/// flags) in the driver-to-device data.
fn discard_or_zero(mem: &GuestMemory, data: &[Seg], discard: bool, ctx: &mut Ctx<'_>) -> u8 {
    let len = total(data);
    if len == 0 || !len.is_multiple_of(DWZ_SEGMENT_SIZE) {
        return IOERR;
    }
    if len / DWZ_SEGMENT_SIZE > 1 {
        // More than max_discard_seg / max_write_zeroes_seg (1), as QEMU answers.
        return UNSUPP;
    }
    let mut seg = [0u8; DWZ_SEGMENT_SIZE as usize];
    if !Cursor::new(data).gather(mem, &mut seg) {
        return IOERR;
    }
    let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap());
    let num = u32::from_le_bytes(seg[8..12].try_into().unwrap());
    let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap());
    let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
    // §5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
    if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (discard && unmap) {
        return UNSUPP;
    }
    if num > MAX_DISCARD_SECTORS {
        return IOERR;
    }
    let bytes = u64::from(num) * SECTOR_SIZE;
    let Some(off) = byte_range(sector, bytes, ctx.capacity) else {
        return IOERR;
    };
    if bytes == 0 {
        return OK;
    }
    let r = if discard || unmap {
        // The block layer's discard reads back as zeros, so it also serves an unmapping
        // WRITE_ZEROES.
        ctx.disk.discard(off, bytes)
    } else {
        ctx.disk.write_zeroes(off, bytes)
    };
    if r.is_ok() {
        OK
    } else {
        IOERR
    }
}

/// Write the status byte; false if there is nowhere (valid) to put it.
pub(crate) fn write_status(mem: &GuestMemory, f: &Framing, status: u8) -> bool {
    f.status
        .is_some_and(|addr| mem.write_slice(&[status], addr).is_ok())
}
