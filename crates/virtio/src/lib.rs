//! Kiln's virtio devices and their transport.
//!
//! - [`device`]: the [`VirtioDevice`] trait between a device model and its transport, and
//!   what a device gets when the driver activates it ([`Activation`]).
//! - [`pci`]: the virtio 1.x modern PCI transport (common/notify/ISR/device capabilities in
//!   one memory BAR, MSI-X) that puts any [`VirtioDevice`] on Kiln's PCI bus.
//! - [`blk`]: virtio-blk on Kiln's block layer (raw, qcow2, backing chains).
//! - [`net`]: virtio-net on a host TAP interface (mergeable receive buffers, checksum and
//!   TSO offloads passed through to the TAP).
//! - [`console`]: virtio-console, one port: host input to the guest, guest output to a writer.
//! - [`rng`]: virtio-rng, fed from the host's `/dev/urandom`.
//! - [`vsock`]: virtio-vsock, guest sockets to host Unix sockets (Firecracker's scheme).
//! - [`worker`]: the queue thread and ring-draining loop simple devices share.
//! - [`fuzz`]: the harness the devices' fuzz targets share (input format, queue set-up,
//!   rounds, ring invariants).
//!
//! Device code sees guest memory only through vm-memory and rings only through
//! virtio-queue, whose checks (descriptor addresses inside guest memory, chain lengths,
//! index sanity) are the first line against a hostile driver.

pub mod blk;
pub mod console;
pub mod device;
pub mod fuzz;
pub mod net;
pub mod pci;
pub mod rng;
pub mod vsock;
pub mod worker;

pub use device::{Activation, GuestMemory, Interrupt, VirtioDevice};
