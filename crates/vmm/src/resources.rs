//! Who owns which guest address ranges, port ranges and interrupt lines.
//!
//! Every MMIO window, port range and GSI a device uses is taken from here (vm-allocator),
//! so two devices can never claim the same resource. Fixed legacy resources (COM1, the
//! debug-exit port) are taken with an exact-match request.
//!
//! vm-allocator 0.1.4 grants an exact-match request that lies wholly inside a range it
//! already handed out (e.g. port 0x3fc after 0x3f8-0x3ff), so every grant is also checked
//! against the ranges granted before and refused on overlap.

use crate::error::{Result, VmmError};
use kiln_arch::layout::{MemoryLayout, MMIO32_DEVICES};
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive};

/// First GSI handed to devices that are not legacy ISA devices.
pub const FIRST_DYNAMIC_GSI: u32 = 5;
/// Last GSI the IOAPIC has.
pub const LAST_GSI: u32 = 23;
/// Last GSI for MSI routes (KVM allows 4096 routes; this leaves plenty).
pub const LAST_MSI_GSI: u32 = 1023;

/// The VM's allocators.
pub struct Resources {
    granted: Vec<(u8, u64, u64)>,
    /// I/O ports 0-0xffff.
    pub pio: AddressAllocator,
    /// The 32-bit MMIO hole's device part.
    pub mmio32: AddressAllocator,
    /// The 64-bit MMIO window above RAM.
    pub mmio64: AddressAllocator,
    /// Interrupt lines for devices.
    pub gsi: IdAllocator,
    /// GSIs for MSI routes (above the IOAPIC's).
    pub msi_gsi: IdAllocator,
}

fn alloc_err(what: String) -> impl FnOnce(vm_allocator::Error) -> VmmError {
    move |e| VmmError::Config(format!("cannot reserve {what}: {e}"))
}

impl Resources {
    /// Allocators for a VM with `layout`.
    pub fn new(layout: &MemoryLayout) -> Result<Self> {
        let mmio64 = layout.mmio64();
        let mk = |base: u64, size: u64| {
            AddressAllocator::new(base, size)
                .map_err(alloc_err(format!("range {base:#x}+{size:#x}")))
        };
        Ok(Resources {
            granted: Vec::new(),
            pio: mk(0, 0x1_0000)?,
            mmio32: mk(
                MMIO32_DEVICES.start,
                MMIO32_DEVICES.end - MMIO32_DEVICES.start,
            )?,
            mmio64: mk(mmio64.start, mmio64.end - mmio64.start)?,
            gsi: IdAllocator::new(FIRST_DYNAMIC_GSI, LAST_GSI)
                .map_err(alloc_err("the GSI range".into()))?,
            msi_gsi: IdAllocator::new(LAST_GSI + 1, LAST_MSI_GSI)
                .map_err(alloc_err("the MSI GSI range".into()))?,
        })
    }

    /// Take a GSI for an MSI route.
    pub fn allocate_msi_gsi(&mut self, name: &str) -> Result<u32> {
        self.msi_gsi
            .allocate_id()
            .map_err(alloc_err(format!("an MSI interrupt for {name}")))
    }

    /// Take a fixed port range for a legacy device.
    pub fn reserve_ports(&mut self, name: &str, base: u64, len: u64) -> Result<RangeInclusive> {
        let what = format!("ports {base:#x}+{len} for {name}");
        let r = self
            .pio
            .allocate(len, 1, AllocPolicy::ExactMatch(base))
            .map_err(alloc_err(what.clone()))?;
        self.check_new(0, &r, what)
    }

    /// Take a fixed MMIO window in the 32-bit hole for a platform device.
    pub fn reserve_mmio(&mut self, name: &str, base: u64, len: u64) -> Result<RangeInclusive> {
        let what = format!("MMIO {base:#x}+{len:#x} for {name}");
        let r = self
            .mmio32
            .allocate(len, 1, AllocPolicy::ExactMatch(base))
            .map_err(alloc_err(what.clone()))?;
        self.check_new(1, &r, what)
    }

    /// Take an MMIO window from the 32-bit hole (`below_4g`) or the 64-bit window.
    pub fn allocate_mmio(
        &mut self,
        name: &str,
        size: u64,
        align: u64,
        below_4g: bool,
    ) -> Result<RangeInclusive> {
        let what = format!("{size:#x} bytes of MMIO space for {name}");
        let (space, alloc) = if below_4g {
            (1, &mut self.mmio32)
        } else {
            (2, &mut self.mmio64)
        };
        let r = alloc
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map_err(alloc_err(what.clone()))?;
        self.check_new(space, &r, what)
    }

    fn check_new(&mut self, space: u8, r: &RangeInclusive, what: String) -> Result<RangeInclusive> {
        let clash = self
            .granted
            .iter()
            .any(|&(s, a, b)| s == space && a <= r.end() && r.start() <= b);
        if clash {
            let alloc = match space {
                0 => &mut self.pio,
                1 => &mut self.mmio32,
                _ => &mut self.mmio64,
            };
            let _ = alloc.free(r);
            return Err(VmmError::Config(format!(
                "cannot reserve {what}: already in use"
            )));
        }
        self.granted.push((space, r.start(), r.end()));
        Ok(*r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_cannot_be_taken_twice() {
        let mut r = Resources::new(&MemoryLayout::new(64 << 20)).unwrap();
        r.reserve_ports("com1", 0x3f8, 8).unwrap();
        assert!(r.reserve_ports("again", 0x3fc, 1).is_err());
        assert!(r.reserve_ports("again", 0x3f8, 8).is_err());
        assert!(r.reserve_ports("straddle", 0x3f6, 4).is_err());
        r.reserve_ports("next door", 0x400, 1).unwrap();
        assert_eq!(r.gsi.allocate_id().unwrap(), FIRST_DYNAMIC_GSI);
        let w = r
            .mmio32
            .allocate(0x1000, 0x1000, AllocPolicy::FirstMatch)
            .unwrap();
        assert_eq!(w.start(), MMIO32_DEVICES.start);
    }
}
