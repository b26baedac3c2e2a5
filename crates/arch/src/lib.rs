//! x86_64 guest platform knowledge for Kiln, free of any ioctl or VMM state.
//!
//! This crate owns *what the guest sees at boot*: the guest-physical memory map
//! ([`layout`]), Kiln's GDT ([`gdt`]), identity page tables ([`paging`]), the register
//! state each entry mode starts in ([`entry`]), the boot-info block raw guests receive
//! ([`bootinfo`]) and the multiboot v1 loader format ([`multiboot`]). It writes into guest
//! memory only through `vm-memory`; creating the VM and vCPUs is the `kiln-vmm` crate's job.

pub mod acpi;
pub mod acpi_loader;
pub mod bootinfo;
pub mod entry;
pub mod gdt;
pub mod layout;
pub mod linux;
pub mod mptable;
pub mod multiboot;
pub mod paging;

pub use entry::CpuMode;
pub use layout::MemoryLayout;
