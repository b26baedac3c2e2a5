//! virtio-vsock (device ID 19, virtio 1.2 §5.10) with a host backend on Unix sockets, in
//! Firecracker's style.
//!
//! - Host to guest: a host program connects to the device's Unix socket and writes
//!   `CONNECT <port>\n`; the guest gets a REQUEST from CID 2 (a fresh host port counting
//!   from 2^30); when it accepts, the host program reads `OK <host port>\n` and the socket
//!   carries the stream.
//! - Guest to host: a REQUEST to CID 2 port P connects to the Unix socket `<path>_P`.
//!
//! Streams only (no SEQPACKET), with the full credit-based flow control. Everything a
//! guest can make the device hold is bounded: connections ([`MAX_CONNS`]), each
//! connection's buffered data ([`BUF_ALLOC`]), the queue of resets, one packet's
//! payload ([`MAX_PAYLOAD`]).
//!
//! - `packet`: the header and reading/writing packets through descriptor chains.
//! - `conn`: one connection's state and credit accounting.
//! - `muxer`: all connections, host readiness and the queues' handling.
//! - `device`: [`VirtioVsock`], the [`VirtioDevice`](crate::VirtioDevice).
//! - [`fuzz`]: the body of the `virtio_vsock` fuzz target.

mod conn;
mod device;
pub mod fuzz;
mod muxer;
mod packet;
#[cfg(test)]
mod tests;

pub use conn::BUF_ALLOC;
pub use device::{VirtioVsock, VIRTIO_ID_VSOCK};
pub use packet::MAX_PAYLOAD;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// The event queue's index.
pub const EVENT_QUEUE: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most connections at once (host connections still sending CONNECT included).
pub const MAX_CONNS: usize = 1024;
/// Resets waiting for receive buffers before the transmit queue stops being read.
pub const RESET_QUEUE_CAP: usize = 256;
/// The first port Kiln gives host-initiated connections.
pub const LOCAL_PORT_BASE: u32 = 1 << 30;
/// The longest `CONNECT <port>` line accepted (without its newline).
pub const CONNECT_LINE_MAX: usize = 32;
/// How long a connection may take to finish its handshake or its shutdown.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// What the device counts (`--trace-exits`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets given to the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes given to the guest.
    pub rx_bytes: AtomicU64,
    /// Packets from the guest.
    pub tx_packets: AtomicU64,
    /// Payload bytes from the guest.
    pub tx_bytes: AtomicU64,
    /// Connections established (either direction).
    pub connections: AtomicU64,
    /// Malformed chains or packets, protocol violations, refused host connections.
    pub errors: AtomicU64,
}
