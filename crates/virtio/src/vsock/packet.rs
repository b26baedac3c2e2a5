//! The vsock packet header (virtio 1.2 §5.10.6) and moving packets between descriptor
//! chains and host buffers. A header and its payload may be split across descriptors in
//! any way; every guest access goes through vm-memory, bounds-checked, and every length
//! the guest gives is checked before it sizes anything.

use crate::GuestMemory;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

/// Bytes in `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The largest payload accepted from or given to the guest in one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// `type` of a stream socket packet (the only type this device offers).
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, little-endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Decode the wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encode the wire form.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a chain could not carry a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// A descriptor of the wrong direction (device-writable on tx, readable on rx).
    Direction,
    /// Fewer bytes than a header, or than the header's `len` says follow it.
    Short,
    /// A `len` beyond [`MAX_PAYLOAD`].
    TooLong,
    /// A descriptor outside guest memory.
    Memory,
}

/// The guest-physical pieces of a chain, in order, all of one direction.
pub struct Segments {
    segs: Vec<(GuestAddress, u32)>,
    total: u64,
}

impl Segments {
    /// Collect the chain's descriptors, all of which must be device-writable (`writable`)
    /// or all device-readable. The chain's length is bounded by virtio-queue (at most the
    /// queue size), so this is too.
    pub fn of_chain(
        chain: DescriptorChain<&GuestMemory>,
        writable: bool,
    ) -> Result<Segments, PacketError> {
        let mut segs = Vec::new();
        let mut total = 0u64;
        for d in chain {
            if d.is_write_only() != writable {
                return Err(PacketError::Direction);
            }
            total += u64::from(d.len());
            segs.push((d.addr(), d.len()));
        }
        Ok(Segments { segs, total })
    }

    /// Bytes the chain holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Copy `buf.len()` bytes starting `offset` bytes into the chain into `buf`.
    pub fn read_at(
        &self,
        mem: &GuestMemory,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PacketError> {
        self.each(offset, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr).is_ok()
        })
    }

    /// Copy `data` into the chain starting `offset` bytes in.
    pub fn write_at(&self, mem: &GuestMemory, offset: u64, data: &[u8]) -> Result<(), PacketError> {
        self.each(offset, data.len(), |addr, range| {
            mem.write_slice(&data[range], addr).is_ok()
        })
    }

    /// Call `f` with (guest address, range of the caller's buffer) for each piece of the
    /// `len` bytes at `offset`.
    fn each(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> Result<(), PacketError> {
        if offset.saturating_add(len as u64) > self.total {
            return Err(PacketError::Short);
        }
        let mut skip = offset;
        let mut done = 0usize;
        for &(addr, seg_len) in &self.segs {
            if done == len {
                break;
            }
            let seg_len = u64::from(seg_len);
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let n = ((seg_len - skip) as usize).min(len - done);
            let at = addr.0.checked_add(skip).ok_or(PacketError::Memory)?;
            if !f(GuestAddress(at), done..done + n) {
                return Err(PacketError::Memory);
            }
            done += n;
            skip = 0;
        }
        Ok(())
    }
}

/// Read a packet from a driver-to-device chain: its header and, for RW packets, the
/// payload into `payload` (resized to the header's `len`, which is checked against
/// [`MAX_PAYLOAD`] and against the chain before anything is allocated). Other packets'
/// payloads are ignored.
pub fn read_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    let segs = Segments::of_chain(chain, false)?;
    let mut raw = [0u8; HDR_LEN];
    segs.read_at(mem, 0, &mut raw)?;
    let hdr = Header::from_bytes(&raw);
    payload.clear();
    if hdr.op == OP_RW {
        let len = hdr.len as usize;
        if len > MAX_PAYLOAD {
            return Err(PacketError::TooLong);
        }
        if HDR_LEN as u64 + len as u64 > segs.total() {
            return Err(PacketError::Short);
        }
        payload.resize(len, 0);
        segs.read_at(mem, HDR_LEN as u64, payload)?;
    }
    Ok(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 9,
            len: 10,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 3,
            buf_alloc: 0x4_0000,
            fwd_cnt: 7,
        };
        let b = h.to_bytes();
        assert_eq!(&b[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(b[30], OP_RW as u8);
        assert_eq!(Header::from_bytes(&b), h);
    }
}
