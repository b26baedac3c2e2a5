//! The virtio 1.x modern PCI transport (virtio 1.2 §4.1): a PCI function (vendor 0x1af4,
//! device 0x1040 + the virtio device ID) whose one 64-bit memory BAR holds the common
//! configuration, ISR, device configuration, queue notification registers and the MSI-X
//! table and PBA. Queue notifications are ioeventfds (no exit to user space); interrupts
//! are MSI-X vectors delivered through irqfds.

pub mod common_cfg;
mod transport;

pub use transport::{VirtioPciDevice, BAR_SIZE};
