//! PCI: configuration space, the root bus, the i440FX-compatible host bridge, and the
//! configuration mechanism #1 ports (0xcf8/0xcfc) through which the guest reaches them.
//!
//! Written for Kiln rather than taken from a crate: rust-vmm has no maintained PCI crate,
//! and the pieces (a 256-byte register file with write masks, a slot table, two ports) are
//! small. Devices on the bus implement [`PciDevice`]; [`PciHost`] is what they ask of the
//! VMM (BAR mapping, ioeventfds, MSI routes); [`msix`] is the MSI-X capability and table.

pub mod config_io;
pub mod config_space;
pub mod host;
pub mod host_bridge;
pub mod msix;
pub mod root;

pub use config_io::PciConfigIo;
pub use config_space::ConfigSpace;
pub use host::PciHost;
pub use host_bridge::HostBridge;
pub use root::{PciDevice, PciRoot};
