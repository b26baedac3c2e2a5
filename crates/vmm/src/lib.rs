//! The Kiln virtual machine: from a [`VmConfig`] to a running guest.
//!
//! Data flows one way: a [`VmConfig`] goes to [`Vm::build`], which checks `/dev/kvm`
//! ([`kvm`]), maps guest memory ([`memory`]), loads the guest ([`loader`]), attaches the
//! platform devices and configures the vCPUs ([`vcpu`]); [`Vm::run`] starts one thread per
//! vCPU and waits for a [`StopReason`], forwarding standard input to the serial port
//! meanwhile ([`console`]). ioctl details stay in this crate; devices live in
//! `kiln-devices` and `kiln-virtio` and see nothing of KVM.
//!
//! ```no_run
//! use kiln_vmm::{GuestConfig, LoadSource, LoadSpec, Vm, VmConfig};
//! use kiln_arch::CpuMode;
//!
//! let guest = GuestConfig::Raw {
//!     loads: vec![LoadSpec { source: LoadSource::File("guest.bin".into()), addr: 0x10_0000 }],
//!     entry: None,
//!     mode: CpuMode::Protected,
//! };
//! let outcome = Vm::build(&VmConfig::new(guest))?.run()?;
//! std::process::exit(outcome.exit_status.into());
//! # Ok::<(), kiln_vmm::VmmError>(())
//! ```

pub mod config;
pub mod console;
pub mod error;
pub mod exits;
pub mod firmware;
pub mod ide;
pub mod interrupts;
pub mod kvm;
pub mod linux;
pub mod loader;
pub mod memory;
pub mod pci_host;
pub mod platform;
pub mod regs;
pub mod resources;
pub mod stop;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use config::{FirmwareConfig, GuestConfig, LoadSource, LoadSpec, ModuleSpec, VmConfig};
pub use error::VmmError;
pub use stop::StopReason;
pub use vm::{RunOutcome, RunningVm, Vm};
