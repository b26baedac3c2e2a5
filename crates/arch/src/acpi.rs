//! ACPI tables for Linux guests: RSDP, XSDT, a hardware-reduced FADT (revision 6), a DSDT
//! with `\_S5` and the pvpanic device, and a MADT listing every vCPU's local APIC, the
//! IOAPIC and the ISA interrupt overrides.
//!
//! Power is hardware-reduced ACPI: the guest powers off by writing `SLP_TYP << 2 | SLP_EN`
//! to the FADT's sleep control register and resets through its reset register; both are
//! I/O ports of Kiln's power device ([`PM_PORT`]). The `acpi_tables` crate encodes the
//! tables; the MADT is assembled from raw entries because that crate has no x86
//! interrupt-source-override structure.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use std::ops::Range;

/// Where the tables live (inside the legacy window reported reserved in e820).
pub const ACPI_AREA: Range<u64> = 0xE_0000..0xF_0000;
/// The RSDP (16-byte aligned, inside the BIOS area the kernel scans).
pub const RSDP_ADDR: u64 = ACPI_AREA.start;
/// Kiln's power device: +0 sleep control, +1 sleep status, +2 reset.
pub const PM_PORT: u64 = 0x600;
/// Ports the power device decodes.
pub const PM_PORTS: u64 = 4;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the reset register.
pub const RESET_REGISTER: u64 = 2;
/// The value written to the reset register to reset.
pub const RESET_VALUE: u8 = 1;
/// The SLP_TYP `\_S5` announces (and the device treats as power-off).
pub const S5_SLP_TYP: u8 = 5;
/// Sleep control register bit: sleep enable.
pub const SLP_EN: u8 = 1 << 5;
/// The 32-bit window PCI BARs may use (the device part of the MMIO hole, less the
/// boot-timer page at its top).
pub const PCI_MMIO32: Range<u64> = 0xC000_0000..0xFEBF_F000;
/// COM1's ports and interrupt, as the DSDT describes them.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's GSI (IOAPIC pin).
pub const COM1_IRQ: u32 = 4;
/// QEMU's pvpanic ISA port (ACPI id QEMU0001).
pub const PVPANIC_PORT: u16 = 0x505;

pub(crate) const OEM_ID: [u8; 6] = *b"KILN  ";

fn append_aligned(blob: &mut Vec<u8>, table: &[u8]) -> u64 {
    let at = blob.len().next_multiple_of(16);
    blob.resize(at, 0);
    blob.extend_from_slice(table);
    ACPI_AREA.start + at as u64
}

pub(crate) fn checksum_fix(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

/// The MADT: local APICs (IDs 0..vcpus), the IOAPIC (GSI base 0) and LINT1 as NMI on
/// every CPU. No interrupt source overrides: KVM's default routing sends ISA IRQ n to
/// IOAPIC pin n (IRQ0 included), and a hardware-reduced platform has no SCI.
pub fn madt(vcpus: u8, ioapic_addr: u32, lapic_addr: u32) -> Vec<u8> {
    madt_with_overrides(vcpus, ioapic_addr, lapic_addr, &[])
}

/// The MADT with interrupt source overrides `(ISA IRQ, GSI, MPS INTI flags)`.
pub fn madt_with_overrides(
    vcpus: u8,
    ioapic_addr: u32,
    lapic_addr: u32,
    overrides: &[(u8, u32, u16)],
) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 36, 5, OEM_ID, *b"KILNMADT", 1);
    t.append_slice(&lapic_addr.to_le_bytes());
    t.append_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: the 8259s exist
    for id in 0..vcpus {
        t.append_slice(&[0, 8, id, id, 1, 0, 0, 0]); // processor local APIC, enabled
    }
    let mut ioapic = vec![1, 12, vcpus, 0];
    ioapic.extend_from_slice(&ioapic_addr.to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&ioapic);
    for &(irq, gsi, flags) in overrides {
        let mut iso = vec![2, 10, 0, irq];
        iso.extend_from_slice(&gsi.to_le_bytes());
        iso.extend_from_slice(&flags.to_le_bytes());
        t.append_slice(&iso);
    }
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]); // local APIC NMI: all CPUs, LINT1
    let mut bytes = t.as_slice().to_vec();
    checksum_fix(&mut bytes);
    bytes
}

/// The DSDT: `\_S5` for power-off, COM1 and the RTC as ACPI devices, pvpanic, and the
/// PCI root bridge with its windows (`mem32` below 4 GiB, `mmio64` above) and INTx
/// routing (`_PRT`).
///
/// A hardware-reduced platform has no legacy PIC, so Linux maps no ISA IRQ to the IOAPIC
/// on its own: a device that interrupts must be described here with its interrupt, or the
/// kernel cannot request it (the 8250 driver then never transmits a byte from user space).
pub fn dsdt(mem32: &Range<u64>, mmio64: &Range<u64>) -> Vec<u8> {
    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLP_TYP, &0u8]))
        .to_aml_bytes(&mut body);

    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &0u8);
    let com1_crs_name = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs_name]);

    let rtc_io = aml::IO::new(0x70, 0x70, 1, 2);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_io]);
    let rtc_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0B00"));
    let rtc_crs_name = aml::Name::new("_CRS".into(), &rtc_crs);
    let rtc = aml::Device::new("RTC_".into(), vec![&rtc_hid, &rtc_crs_name]);

    let io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let crs = aml::ResourceTemplate::new(vec![&io]);
    let hid = aml::Name::new("_HID".into(), &"QEMU0001");
    let crs_name = aml::Name::new("_CRS".into(), &crs);
    let dev = aml::Device::new("PEVT".into(), vec![&hid, &crs_name]);
    // The PCI root bridge: bus 0 behind configuration mechanism #1, with the I/O space
    // around the configuration ports and the MMIO windows BARs may be placed in.
    let bus = aml::AddressSpace::new_bus_number(0u16, 0xffu16);
    let cfg_io = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_lo = aml::AddressSpace::new_io(0u16, 0xcf7u16, None);
    let io_hi = aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let mem32 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        mem32.start as u32,
        (mem32.end - 1) as u32,
        None,
    );
    let mem64 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        mmio64.start,
        mmio64.end - 1,
        None,
    );
    let pci_crs = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_lo, &io_hi, &mem32, &mem64]);
    let pci_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A03"));
    let pci_adr = aml::Name::new("_ADR".into(), &0u8);
    let pci_seg = aml::Name::new("_SEG".into(), &0u8);
    let pci_uid = aml::Name::new("_UID".into(), &0u8);
    let pci_bbn = aml::Name::new("_BBN".into(), &0u8);
    let pci_crs_name = aml::Name::new("_CRS".into(), &pci_crs);
    let pci_prt = aml::Name::new("_PRT".into(), &pci_routing_table());
    let pci0 = aml::Device::new(
        "PCI0".into(),
        vec![
            &pci_hid,
            &pci_adr,
            &pci_seg,
            &pci_uid,
            &pci_bbn,
            &pci_crs_name,
            &pci_prt,
        ],
    );
    aml::Scope::new("\\_SB_".into(), vec![&com1, &rtc, &dev, &pci0]).to_aml_bytes(&mut body);
    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"KILNDSDT", 1);
    t.append_slice(&body);
    let mut bytes = t.as_slice().to_vec();
    checksum_fix(&mut bytes);
    bytes
}

/// First of the IOAPIC inputs PCI INTx lines are wired to (GSI 16-23, shared).
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// How many IOAPIC inputs carry PCI INTx.
pub const PCI_INTX_GSIS: u32 = 8;

/// The GSI that interrupt pin `pin` (0 = INTA .. 3 = INTD) of the device in `slot` of bus 0
/// raises: the usual swizzle over GSI 16-23, as the `_PRT` in the DSDT says.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (slot as u32 + pin as u32) % PCI_INTX_GSIS
}

/// `_PRT` for bus 0: every slot's four pins to their GSI ([`pci_intx_gsi`]), in the GSI
/// form (no link devices): `Package { slot << 16 | 0xffff, pin, 0, gsi }`.
fn pci_routing_table() -> aml::PackageBuilder {
    let mut prt = aml::PackageBuilder::new();
    for slot in 1u8..32 {
        for pin in 0u8..4 {
            let addr = (slot as u32) << 16 | 0xffff;
            let gsi = pci_intx_gsi(slot, pin);
            prt.add_element(&aml::Package::new(vec![&addr, &pin, &0u8, &gsi]));
        }
    }
    prt
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io = |port: u64| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port);
    let mut b = FADTBuilder::new(OEM_ID, *b"KILNFADT", 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    b.sleep_control_reg = io(PM_PORT + SLEEP_CONTROL);
    b.sleep_status_reg = io(PM_PORT + SLEEP_STATUS);
    b.reset_reg = io(PM_PORT + RESET_REGISTER);
    b.reset_value = RESET_VALUE;
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"KILNVMM\0").into();
    let mut bytes = Vec::new();
    b.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// All tables as one blob for [`ACPI_AREA`]`.start`; the RSDP is at its start.
pub fn tables(vcpus: u8, ioapic_addr: u32, lapic_addr: u32, mmio64: &Range<u64>) -> Vec<u8> {
    let mut blob = vec![0u8; 0x40]; // RSDP goes here last
    let xsdt_at = blob.len();
    blob.resize(xsdt_at + 36 + 2 * 8, 0); // XSDT placeholder: header + two entries
    let dsdt_addr = append_aligned(&mut blob, &dsdt(&PCI_MMIO32, mmio64));
    let fadt_addr = append_aligned(&mut blob, &fadt(dsdt_addr));
    let madt_addr = append_aligned(&mut blob, &madt(vcpus, ioapic_addr, lapic_addr));
    let mut xsdt = XSDT::new(OEM_ID, *b"KILNXSDT", 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut x = Vec::new();
    xsdt.to_aml_bytes(&mut x);
    blob[xsdt_at..xsdt_at + x.len()].copy_from_slice(&x);
    let mut r = Vec::new();
    Rsdp::new(OEM_ID, ACPI_AREA.start + xsdt_at as u64).to_aml_bytes(&mut r);
    blob[..r.len()].copy_from_slice(&r);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn table_at(blob: &[u8], addr: u64) -> &[u8] {
        let off = (addr - ACPI_AREA.start) as usize;
        let len = u32::from_le_bytes(blob[off + 4..off + 8].try_into().unwrap()) as usize;
        &blob[off..off + len]
    }

    #[test]
    fn tables_link_up_with_valid_checksums() {
        let blob = tables(
            4,
            0xfec0_0000,
            0xfee0_0000,
            &(0x1_0000_0000..0x11_0000_0000),
        );
        assert!((blob.len() as u64) < ACPI_AREA.end - ACPI_AREA.start);
        assert_eq!(&blob[0..8], b"RSD PTR ");
        assert_eq!(sum(&blob[0..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(&blob[0..36]), 0, "RSDP extended checksum");
        let xsdt_addr = u64::from_le_bytes(blob[24..32].try_into().unwrap());
        let xsdt = table_at(&blob, xsdt_addr);
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table_at(&blob, entries[0]);
        assert_eq!(&fadt[0..4], b"FACP");
        assert_eq!(sum(fadt), 0);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        // RESET_REG (GAS at 116): system I/O, 8 bits at offset 0, byte access, 0x602.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1], "reset register GAS header");
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            PM_PORT + RESET_REGISTER
        );
        assert_eq!(fadt[128], RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            PM_PORT + SLEEP_CONTROL
        );
        assert_eq!(
            u64::from_le_bytes(fadt[260..268].try_into().unwrap()),
            PM_PORT + SLEEP_STATUS
        );
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table_at(&blob, dsdt_addr);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(8).any(|w| w == b"QEMU0001"));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
        assert!(dsdt.windows(4).any(|w| w == b"RTC_"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        assert!(dsdt.windows(4).any(|w| w == b"_PRT"));
        assert_eq!(pci_intx_gsi(1, 0), 17);
        assert_eq!(pci_intx_gsi(7, 1), 16);
        assert_eq!(pci_intx_gsi(31, 3), 18);
        let madt = table_at(&blob, entries[1]);
        assert_eq!(&madt[0..4], b"APIC");
        assert_eq!(sum(madt), 0);
        assert_eq!(madt.len(), 44 + 4 * 8 + 12 + 6);
    }
}
