//! The Kiln boot-info block that raw guests find at [`BOOT_INFO_ADDR`] (also in EBX/RBX).
//!
//! | offset | size | field                              |
//! |--------|------|------------------------------------|
//! | 0x00   | u32  | magic `0x4E4C494B` ("KILN")        |
//! | 0x04   | u32  | version (1)                        |
//! | 0x08   | u64  | total RAM bytes                    |
//! | 0x10   | u64  | RAM bytes below 4 GiB              |
//! | 0x18   | u64  | RAM bytes above 4 GiB              |
//! | 0x20   | u32  | vCPU count                         |
//! | 0x24   | u32  | entry mode (0 real, 1 protected, 2 long) |

use crate::entry::CpuMode;
use crate::layout::{MemoryLayout, BOOT_INFO_ADDR};

/// "KILN" read as a little-endian u32.
pub const BOOT_INFO_MAGIC: u32 = 0x4E4C_494B;
/// Layout version.
pub const BOOT_INFO_VERSION: u32 = 1;

/// The encoded boot-info block.
pub fn boot_info_bytes(layout: &MemoryLayout, vcpus: u32, mode: CpuMode) -> Vec<u8> {
    let mut b = Vec::with_capacity(0x28);
    b.extend_from_slice(&BOOT_INFO_MAGIC.to_le_bytes());
    b.extend_from_slice(&BOOT_INFO_VERSION.to_le_bytes());
    b.extend_from_slice(&layout.ram_size.to_le_bytes());
    b.extend_from_slice(&layout.low_ram_size().to_le_bytes());
    b.extend_from_slice(&layout.high_ram_size().to_le_bytes());
    b.extend_from_slice(&vcpus.to_le_bytes());
    b.extend_from_slice(&mode.number().to_le_bytes());
    debug_assert_eq!(BOOT_INFO_ADDR % 8, 0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_table() {
        let b = boot_info_bytes(&MemoryLayout::new(0x1_4000_0000), 2, CpuMode::Long);
        assert_eq!(&b[0..4], b"KILN");
        assert_eq!(
            u64::from_le_bytes(b[8..16].try_into().unwrap()),
            0x1_4000_0000
        );
        assert_eq!(
            u64::from_le_bytes(b[16..24].try_into().unwrap()),
            0xC000_0000
        );
        assert_eq!(
            u64::from_le_bytes(b[24..32].try_into().unwrap()),
            0x8000_0000
        );
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(b[36..40].try_into().unwrap()), 2);
    }
}
