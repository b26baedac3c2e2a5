//! Platform devices of a Kiln guest and the buses that route port and MMIO accesses to them.
//!
//! Every device follows one pattern: a struct holding its plain state, an implementation
//! of [`bus::BusDevice`] for guest accesses, and counters in its bus entry. Devices never
//! see KVM: the VMM's run loop turns an exit into a bus access, and a device that wants
//! the VM to stop says so through the [`bus::DeviceAction`] it returns.

pub mod acpi_pm;
pub mod acpi_pm1;
pub mod boot_timer;
pub mod bus;
pub mod cmos;
pub mod debug_console;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod pci;
pub mod post_code;
pub mod pvpanic;
pub mod serial;
pub mod system_control;

pub use bus::{Bus, BusDevice, DeviceAction};
