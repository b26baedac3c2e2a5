//! Kiln's disk images: the [`BlockDevice`] trait every image format implements, raw files
//! ([`raw::RawFile`]), qcow2 ([`qcow2::Qcow2`], our own implementation of QEMU's
//! `docs/interop/qcow2.txt`), legacy qcow version 1 read-only ([`qcow1::Qcow1`]) and
//! backing chains, plus format probing ([`open`]).
//!
//! The core is synchronous: every call finishes its I/O before it returns. Crash safety
//! follows QEMU's ordering rules (see [`qcow2`]); [`BlockDevice::flush`] is a real
//! `fdatasync` barrier.

mod error;
mod fileio;
#[doc(hidden)]
pub mod fuzz;
pub mod lock;
mod open;
pub mod qcow1;
pub mod qcow2;
pub mod raw;
mod status;

pub use error::{Error, Result};
pub use fileio::file_len;
pub use lock::Share;
pub use open::{open, open_snapshot, probe, resolve_backing, OpenOptions, MAX_CHAIN_DEPTH};
pub use status::{
    backing_chain, chain_status, open_qcow2_rw, resize_image, BlockStatus, ChainLink,
};

use std::fmt;

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain file: byte N of the device is byte N of the file.
    Raw,
    /// QEMU's copy-on-write format, versions 2 and 3.
    Qcow2,
    /// QEMU's legacy qcow format (version 1), read-only.
    Qcow,
}

impl Format {
    /// The name qemu-img uses (`raw`, `qcow2`, `qcow`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qcow => "qcow",
        }
    }

    /// Parse a format name as given to `-f`/`-O`/`-F`.
    pub fn from_name(name: &str) -> Result<Format> {
        match name {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "qcow" => Ok(Format::Qcow),
            other => Err(Error::Unsupported(format!(
                "unknown image format '{other}' (supported: raw, qcow2, qcow)"
            ))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a range of a device holds, as far as the format knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// Data stored in this image (may still happen to be zeros).
    Data,
    /// Reads as zeros without storing data (zero clusters, holes past a backing file).
    Zero,
    /// Not allocated here: reads come from the backing file.
    Backing,
}

/// A virtual disk: a fixed-size array of bytes with reads, writes and a durability barrier.
///
/// All offsets and lengths are in bytes and need no alignment. Accesses beyond
/// [`size`](BlockDevice::size) fail with [`Error::OutOfRange`].
pub trait BlockDevice: Send + fmt::Debug {
    /// The device size in bytes.
    fn size(&self) -> u64;

    /// Whether writes are refused.
    fn read_only(&self) -> bool;

    /// The format of this (top) image.
    fn format(&self) -> Format;

    /// Fill `buf` from the device starting at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Write `buf` to the device starting at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;

    /// Make every completed write durable (`fdatasync`).
    fn flush(&mut self) -> Result<()>;

    /// Tell the device `len` bytes at `offset` are no longer needed; they then read as
    /// zeros (this crate never lets discarded data reappear, even from a backing file).
    fn discard(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Make `len` bytes at `offset` read as zeros, without writing data where possible.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Size the format's L2 table cache to about `bytes` (qcow2: QEMU's `l2-cache-size`;
    /// formats without such a cache ignore it).
    fn set_l2_cache_size(&mut self, bytes: u64) -> Result<()> {
        let _ = bytes;
        Ok(())
    }

    /// What the range starting at `offset` holds: the kind of the first part, and how many
    /// bytes (at most `len`, at least 1 when `len > 0`) have that kind.
    fn extent(&mut self, offset: u64, len: u64) -> Result<(Extent, u64)> {
        let _ = offset;
        Ok((Extent::Data, len))
    }

    /// This image's own view of the range at `offset` (qemu's block status, without
    /// looking at backing files); `len` of the result is at least 1 and at most `len`.
    fn block_status(&mut self, offset: u64, len: u64) -> Result<BlockStatus> {
        status::from_extent(self, offset, len)
    }

    /// The backing device, if one is attached.
    fn backing_mut(&mut self) -> Option<&mut dyn BlockDevice> {
        None
    }
}

/// Check an access of `len` bytes at `offset` against a device of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}
