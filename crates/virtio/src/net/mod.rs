//! virtio-net (device ID 1, virtio 1.2 §5.1) on a host TAP interface.
//!
//! - `tap`: [`Tap`], the interface opened through `/dev/net/tun` with virtio-net headers
//!   (the only `unsafe` here: four ioctls).
//! - `device`: [`VirtioNet`], the [`VirtioDevice`](crate::VirtioDevice): features, the
//!   `virtio_net_config` space, activation (TAP offloads from the driver's GUEST_*
//!   features) and the worker thread.
//! - `rx`: frames from the TAP scattered into the receive queue's buffers (mergeable
//!   buffers and `num_buffers`), the TAP read only while the driver has buffers posted.
//! - `tx`: transmit chains gathered into one bounded buffer and written to the TAP.
//! - [`fuzz`]: the fuzz target's body, on a datagram socket pair instead of a TAP.
//!
//! One receive queue (0) and one transmit queue (1) of [`QUEUE_SIZE`]; no control queue,
//! no multiqueue. Both queues and the TAP are served by one worker thread
//! ([`crate::worker::WorkerBuilder::watch_fd`]): the TAP is watched edge-triggered, and a frame is
//! read from it only when the receive queue has a buffer, so frames the guest has no room
//! for wait in the kernel's TAP queue (which drops them when full) rather than in Kiln.
//! At most one frame is held in Kiln, in a fixed bounce buffer, while it waits for more
//! mergeable buffers. Each pass does a bounded amount of work ([`RX_BUDGET`] frames,
//! [`TX_BUDGET`] chains), so a flood in one direction does not starve the other or a
//! reset.
//!
//! The guest is untrusted: descriptors are reached only through vm-memory, a transmit
//! chain longer than [`MAX_PACKET_LEN`] is dropped, a receive frame that no posted buffer
//! can hold is dropped, and a corrupt ring sets DEVICE_NEEDS_RESET through the worker.

mod device;
/// The fuzz target's body: arbitrary bytes as a queue, guest memory and frames, run and
/// checked.
pub mod fuzz;
mod rx;
mod tap;
mod tx;

#[cfg(test)]
mod tests;

pub use device::{VirtioNet, VIRTIO_ID_NET};
pub use tap::{
    Tap, MAX_NAME_LEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO, VNET_HDR_LEN,
};

use std::sync::atomic::AtomicU64;
use virtio_bindings::virtio_net as vn;

/// The size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// Largest Ethernet frame carried, header excluded: a 64 KiB segmentation-offload packet
/// with its Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65562;
/// Largest packet (virtio-net header and frame) either way.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Frames moved to the guest per pass over the receive queue.
pub const RX_BUDGET: usize = 64;
/// Chains sent per pass over the transmit queue.
pub const TX_BUDGET: usize = 256;

/// The device feature bits offered (VIRTIO_F_VERSION_1 is added by the transport).
pub const FEATURES: u64 = 1 << vn::VIRTIO_NET_F_CSUM
    | 1 << vn::VIRTIO_NET_F_GUEST_CSUM
    | 1 << vn::VIRTIO_NET_F_MAC
    | 1 << vn::VIRTIO_NET_F_GUEST_TSO4
    | 1 << vn::VIRTIO_NET_F_GUEST_TSO6
    | 1 << vn::VIRTIO_NET_F_HOST_TSO4
    | 1 << vn::VIRTIO_NET_F_HOST_TSO6
    | 1 << vn::VIRTIO_NET_F_MRG_RXBUF
    | 1 << vn::VIRTIO_NET_F_STATUS
    | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The TAP offload flags (`TUNSETOFFLOAD`) for the features the driver accepted: what the
/// guest can take on receive. Segmentation offloads need the checksum offload, as in the
/// specification's feature dependencies, so without GUEST_CSUM none is enabled.
pub fn offload_flags(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    if !has(vn::VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    for (bit, flag) in [
        (vn::VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
        (vn::VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
        (vn::VIRTIO_NET_F_GUEST_ECN, TUN_F_TSO_ECN),
        (vn::VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
    ] {
        if has(bit) {
            flags |= flag;
        }
    }
    flags
}

/// A stable, locally administered unicast MAC for the interface `name`: 52:54:00 and
/// three bytes of an FNV-1a hash of the name (the same on every run and host).
pub fn default_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

/// What the device counts, shared by the device and its worker.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    /// Add `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}
