//! virtio-blk (device ID 2) on Kiln's block layer.
//!
//! - `device`: [`VirtioBlk`], the [`VirtioDevice`](crate::VirtioDevice) a transport puts
//!   on the bus: features, configuration space, activation and reset of the worker thread.
//! - `config`: the offered feature bits and the `virtio_blk_config` layout.
//! - `queue`: [`QueueProcessor`], the synchronous core that drains the request queue
//!   (ring sanity, event-idx notification suppression, the used ring), and [`BlkCounters`].
//! - `chain`: how a descriptor chain frames a request; guest-memory access through it.
//! - `request`: one descriptor chain as a request (virtio 1.2 §5.2.6): type checks,
//!   bounded bounce-buffer I/O against the [`kiln_block::BlockDevice`], the status.
//!
//! The guest is untrusted: every descriptor address and length is checked through
//! vm-memory, every sector range against the capacity with checked arithmetic, and memory
//! used per request is bounded ([`MAX_BOUNCE`], [`MAX_SEGMENTS`]). A malformed request fails
//! alone (IOERR/UNSUPP); a corrupt ring sets DEVICE_NEEDS_RESET and parks the queue.

mod chain;
mod config;
mod device;
/// The fuzz target's body: arbitrary bytes as a queue, guest memory and disk, run and checked.
pub mod fuzz;
mod queue;
mod request;

#[cfg(test)]
mod tests;

pub use device::{VirtioBlk, VIRTIO_ID_BLOCK};
pub use queue::{BlkCounters, QueueOutcome, QueueProcessor, BUDGET};

/// Bytes per virtio-blk sector (fixed by the specification, whatever `blk_size` says).
pub const SECTOR_SIZE: u64 = 512;

/// The size of the one request queue offered.
pub const QUEUE_SIZE: u16 = 256;

/// Largest bounce buffer used for one step of a read or write (requests are split).
pub const MAX_BOUNCE: usize = 1 << 20;

/// Most descriptors accepted in one chain (header and status included); longer chains
/// fail with IOERR. Above `seg_max + 2`, so a conforming driver never reaches it.
pub const MAX_SEGMENTS: usize = 1024;

/// `seg_max` in the configuration space: data descriptors per request.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// `max_discard_sectors` and `max_write_zeroes_sectors` (QEMU's value, just under 2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 0x3f_ffff;

/// Length of the serial number GET_ID returns (VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;
