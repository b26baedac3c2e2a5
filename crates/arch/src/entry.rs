//! The register state a raw or multiboot guest starts in, per entry mode.
//!
//! | mode       | CS                                   | other segments     | CR0 / CR4 / EFER         |
//! |------------|--------------------------------------|--------------------|--------------------------|
//! | real       | selector = entry >> 4, IP = entry & 0xF | selector 0, base 0 | reset state (PE=0)       |
//! | protected  | 0x10, flat 32-bit                    | 0x18, flat 4 GiB   | PE                       |
//! | long       | 0x08, 64-bit                         | 0x18, flat         | PE, PG / PAE / LME, LMA  |
//!
//! Every mode: RSP = [`STACK_TOP`], RBX = [`BOOT_INFO_ADDR`], RFLAGS = 0x2 (interrupts
//! off), other general registers 0. Protected and long mode load Kiln's GDT at
//! [`GDT_ADDR`]; IDTR is empty (base 0, limit 0), so a fault triple-faults.

use crate::gdt::{self, CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::layout::{BOOT_INFO_ADDR, GDT_ADDR, STACK_TOP};
use kvm_bindings::{kvm_regs, kvm_sregs};

/// CR0: protection enable.
pub const CR0_PE: u64 = 1;
/// CR0: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// The CPU mode a guest is entered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// 16-bit real mode.
    Real,
    /// 32-bit protected mode, flat segments, paging off.
    Protected,
    /// 64-bit long mode, identity-mapped.
    Long,
}

impl CpuMode {
    /// The number the boot-info block reports for this mode.
    pub fn number(self) -> u32 {
        match self {
            CpuMode::Real => 0,
            CpuMode::Protected => 1,
            CpuMode::Long => 2,
        }
    }
}

/// Errors choosing an entry state.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Real mode can only start below 1 MiB (CS holds entry >> 4).
    #[error("real-mode entry {0:#x} is not below 1 MiB (CS = entry >> 4 must fit 16 bits)")]
    RealModeEntryTooHigh(u64),
    /// Protected mode cannot jump above 4 GiB.
    #[error("protected-mode entry {0:#x} is not below 4 GiB")]
    ProtectedEntryTooHigh(u64),
}

/// General registers at entry.
pub fn entry_regs(mode: CpuMode, entry: u64) -> Result<kvm_regs, EntryError> {
    let rip = match mode {
        CpuMode::Real if entry >= 0x10_0000 => return Err(EntryError::RealModeEntryTooHigh(entry)),
        CpuMode::Real => entry & 0xF,
        CpuMode::Protected if entry > u32::MAX as u64 => {
            return Err(EntryError::ProtectedEntryTooHigh(entry))
        }
        _ => entry,
    };
    Ok(kvm_regs {
        rip,
        rsp: STACK_TOP,
        rbx: BOOT_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    })
}

/// Adjust the vCPU's reset-state special registers for entry in `mode`.
/// `cr3` is used only in long mode.
pub fn set_entry_sregs(sregs: &mut kvm_sregs, mode: CpuMode, entry: u64, cr3: u64) {
    match mode {
        CpuMode::Real => {
            let cs = (entry >> 4) as u16;
            sregs.cs = gdt::real_mode_segment(cs, true);
            for s in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                *s = gdt::real_mode_segment(0, false);
            }
        }
        CpuMode::Protected | CpuMode::Long => {
            sregs.gdt.base = GDT_ADDR;
            sregs.gdt.limit = gdt::GDT_LIMIT;
            sregs.idt.base = 0;
            sregs.idt.limit = 0;
            let code = if mode == CpuMode::Long {
                CODE64_SELECTOR
            } else {
                CODE32_SELECTOR
            };
            sregs.cs = gdt::segment(code);
            let data = gdt::segment(DATA_SELECTOR);
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = gdt::segment(TSS_SELECTOR);
            sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !(3 << 29); // caches on (clear CD, NW)
            if mode == CpuMode::Long {
                sregs.cr3 = cr3;
                sregs.cr4 |= CR4_PAE;
                sregs.cr0 |= CR0_PG;
                sregs.efer |= EFER_LME | EFER_LMA;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_mode_splits_entry_into_cs_ip() {
        let r = entry_regs(CpuMode::Real, 0xF_0123).unwrap();
        assert_eq!(r.rip, 3);
        let mut s = kvm_sregs::default();
        set_entry_sregs(&mut s, CpuMode::Real, 0xF_0123, 0);
        assert_eq!((s.cs.selector, s.cs.base), (0xF012, 0xF_0120));
        assert!(entry_regs(CpuMode::Real, 0x10_0000).is_err());
    }

    #[test]
    fn long_mode_sets_paging_bits() {
        let mut s = kvm_sregs::default();
        set_entry_sregs(&mut s, CpuMode::Long, 0x10_0000, 0x9000);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cr3, s.cs.l, s.cs.selector), (0x9000, 1, 0x08));
    }
}
