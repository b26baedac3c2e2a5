//! Identity-mapped long-mode page tables built from 2 MiB pages.
//!
//! One PML4 entry points at one PDPT; each PDPT entry points at a page directory that
//! maps 1 GiB. At least the first 4 GiB are mapped (so the 32-bit MMIO hole is reachable),
//! and more when RAM extends above that.

use crate::layout::{GIB, PDPT_ADDR, PD_ADDR, PD_LIMIT, PML4_ADDR};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Errors building page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// The address space to map needs more page directories than fit below 640 KiB.
    #[error(
        "long mode can identity-map at most {max} GiB with Kiln's page tables; {wanted} GiB asked"
    )]
    TooLarge {
        /// GiB the tables can map.
        max: u64,
        /// GiB that would be needed.
        wanted: u64,
    },
    /// Writing to guest memory failed.
    #[error("writing page tables to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The most GiB of address space Kiln's page-table area can map.
pub const MAX_MAPPED_GIB: u64 = (PD_LIMIT - PD_ADDR) / 0x1000;

/// How many GiB are mapped for guest RAM ending at `ram_end`.
pub fn mapped_gib(ram_end: u64) -> u64 {
    ram_end.div_ceil(GIB).max(4)
}

/// The guest-physical range the tables occupy for RAM ending at `ram_end`.
pub fn table_area(ram_end: u64) -> std::ops::Range<u64> {
    PML4_ADDR..PD_ADDR + mapped_gib(ram_end) * 0x1000
}

/// Write the tables for RAM ending at `ram_end`; returns the CR3 value.
pub fn write_identity_tables<M: GuestMemory>(mem: &M, ram_end: u64) -> Result<u64, PagingError> {
    let gib = mapped_gib(ram_end);
    if gib > MAX_MAPPED_GIB {
        return Err(PagingError::TooLarge {
            max: MAX_MAPPED_GIB,
            wanted: gib,
        });
    }
    mem.write_obj(PDPT_ADDR | PRESENT | WRITABLE, GuestAddress(PML4_ADDR))?;
    mem.write_slice(&[0u8; 4088], GuestAddress(PML4_ADDR + 8))?;
    let mut pdpt = vec![0u8; 4096];
    for i in 0..gib {
        let pd = PD_ADDR + i * 0x1000;
        let entry = pd | PRESENT | WRITABLE;
        pdpt[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&entry.to_le_bytes());
        let mut table = Vec::with_capacity(4096);
        for j in 0..512u64 {
            let addr = i * GIB + j * (2 << 20);
            table.extend_from_slice(&(addr | PRESENT | WRITABLE | PAGE_SIZE_2M).to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd))?;
    }
    mem.write_slice(&pdpt, GuestAddress(PDPT_ADDR))?;
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn maps_identity_with_2m_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cr3 = write_identity_tables(&mem, 16 << 20).unwrap();
        assert_eq!(cr3, PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpt3, (PD_ADDR + 3 * 0x1000) | 3);
        // Second PD, entry 5 maps 1 GiB + 10 MiB.
        let e: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 0x1000 + 5 * 8))
            .unwrap();
        assert_eq!(e, (GIB + 10 * (1 << 20)) | 0x83);
        assert_eq!(table_area(16 << 20), 0x9000..0xF000);
    }

    #[test]
    fn refuses_more_than_fits() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let err = write_identity_tables(&mem, (MAX_MAPPED_GIB + 1) * GIB).unwrap_err();
        assert!(matches!(err, PagingError::TooLarge { .. }));
    }
}
