//! The Intel MultiProcessor Specification 1.4 table, for Linux kernels booted without
//! ACPI (`--no-acpi`) that have X86_MPPARSE: one processor entry per vCPU, the ISA bus,
//! the IOAPIC, ISA IRQs 0-15 on IOAPIC pins 0-15 (as KVM's default routing wires them) and
//! LINT0/LINT1 as ExtINT/NMI. Written by hand: no maintained crate builds MP tables.

use std::ops::Range;

/// The floating pointer and table, in the BIOS area the kernel scans (0xF0000-0xFFFFF,
/// reserved in e820; big enough for 254 processors, unlike the EBDA's last KiB).
pub const MPTABLE_AREA: Range<u64> = 0xF_0000..0x10_0000;
/// The APIC version reported for local APICs.
const LAPIC_VERSION: u8 = 0x14;
/// The IOAPIC version reported.
const IOAPIC_VERSION: u8 = 0x11;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Errors building the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an MP table for {0} vCPUs does not fit its area")]
pub struct TooManyCpus(pub u8);

/// The floating pointer followed by the configuration table, for [`MPTABLE_AREA`]`.start`.
pub fn mptable(vcpus: u8, ioapic_addr: u32, lapic_addr: u32) -> Result<Vec<u8>, TooManyCpus> {
    let base = MPTABLE_AREA.start as u32;
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled, BSP
        entries.extend_from_slice(&[0, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&ioapic_addr.to_le_bytes());
    count += 1;
    for irq in 0..16u8 {
        // I/O interrupt: INT, conforming polarity/trigger, ISA bus 0 IRQ -> IOAPIC pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1, for all local APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum
    table.extend_from_slice(b"KILN    ");
    table.extend_from_slice(b"KILNVMM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&lapic_addr.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(base + 16).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(4); // spec revision 1.4
    out.push(0); // checksum
    out.extend_from_slice(&[0; 5]); // feature bytes: configuration table present
    out[10] = checksum(&out[..16]);
    out.extend_from_slice(&table);
    if out.len() as u64 > MPTABLE_AREA.end - MPTABLE_AREA.start {
        return Err(TooManyCpus(vcpus));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = mptable(2, 0xfec0_0000, 0xfee0_0000).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(
            u16::from_le_bytes([table[34], table[35]]),
            2 + 1 + 1 + 16 + 2
        );
        assert!(mptable(254, 0, 0).is_ok());
    }
}
