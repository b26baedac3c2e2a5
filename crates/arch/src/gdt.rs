//! Kiln's global descriptor table and its translation into KVM segment registers.
//!
//! The same table serves every protected- and long-mode entry:
//! `0x08` 64-bit code, `0x10` 32-bit code, `0x18` flat data, `0x20` a TSS (16 bytes).

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Selector of the flat 32-bit code segment.
pub const CODE32_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the task-state segment.
pub const TSS_SELECTOR: u16 = 0x20;

/// Build a descriptor from its parts: `flags` is the high nibble (G, D/B, L, AVL),
/// `access` the access byte (P, DPL, S, type).
pub const fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | ((access as u64) << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((flags as u64) & 0xF) << 52)
        | (((base >> 24) & 0xFF) << 56)
}

/// Kiln's GDT, in table order.
pub const GDT: [u64; 6] = [
    0,
    descriptor(0, 0xF_FFFF, 0x9B, 0xA), // 64-bit code: G, L
    descriptor(0, 0xF_FFFF, 0x9B, 0xC), // 32-bit code: G, D
    descriptor(0, 0xF_FFFF, 0x93, 0xC), // data: G, B
    descriptor(0, 0x67, 0x8B, 0x0),     // busy TSS (low half)
    0,                                  // TSS high half (base bits 32-63)
];

/// The GDT's limit as loaded into GDTR.
pub const GDT_LIMIT: u16 = (GDT.len() * 8 - 1) as u16;

/// The KVM segment register a selector of [`GDT`] loads.
pub fn segment(selector: u16) -> kvm_segment {
    segment_from(&GDT, selector)
}

/// The KVM segment register a selector of `table` loads.
pub fn segment_from(table: &[u64], selector: u16) -> kvm_segment {
    let d = table[(selector >> 3) as usize];
    let limit_raw = ((d & 0xFFFF) | ((d >> 32) & 0xF_0000)) as u32;
    let base = ((d >> 16) & 0xFF_FFFF) | ((d >> 32) & 0xFF00_0000);
    let access = (d >> 40) as u8;
    let flags = ((d >> 52) & 0xF) as u8;
    let g = flags & 0x8 != 0;
    kvm_segment {
        base,
        limit: if g {
            (limit_raw << 12) | 0xFFF
        } else {
            limit_raw
        },
        selector,
        type_: access & 0xF,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: g as u8,
        avl: flags & 1,
        unusable: 0,
        padding: 0,
    }
}

/// A real-mode segment register with the given selector (base = selector << 4, 64 KiB).
pub fn real_mode_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: (selector as u64) << 4,
        limit: 0xFFFF,
        selector,
        type_: if code { 0xB } else { 0x3 },
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The GDT as bytes, ready to copy to [`crate::layout::GDT_ADDR`].
pub fn gdt_bytes() -> Vec<u8> {
    GDT.iter().flat_map(|d| d.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_descriptor_encodings() {
        assert_eq!(GDT[1], 0x00AF_9B00_0000_FFFF);
        assert_eq!(GDT[2], 0x00CF_9B00_0000_FFFF);
        assert_eq!(GDT[3], 0x00CF_9300_0000_FFFF);
        assert_eq!(GDT[4], 0x0000_8B00_0000_0067);
    }

    #[test]
    fn segments_decode() {
        let cs = segment(CODE64_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.limit, cs.type_), (1, 0, 0xFFFF_FFFF, 0xB));
        let cs32 = segment(CODE32_SELECTOR);
        assert_eq!((cs32.l, cs32.db, cs32.g), (0, 1, 1));
        let ds = segment(DATA_SELECTOR);
        assert_eq!((ds.type_, ds.s, ds.present), (3, 1, 1));
        let tr = segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.limit), (0xB, 0, 0x67));
        assert_eq!(gdt_bytes().len(), 48);
    }
}
