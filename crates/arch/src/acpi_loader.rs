//! ACPI tables for firmware (BIOS) guests, handed to the firmware through fw_cfg the way
//! QEMU does: three files, `etc/acpi/rsdp`, `etc/acpi/tables` and `etc/table-loader`. The
//! firmware (SeaBIOS) allocates the first two in guest memory, then runs the loader's
//! commands: every pointer between tables is stored as an offset into the tables file and
//! patched by adding that file's address; every checksum is recomputed after patching.
//!
//! The platform is a classic PC, not hardware-reduced ACPI: guests booted by a BIOS drive
//! legacy devices (IDE on ISA IRQs 14 and 15, the 8259s), which Linux only keeps on a
//! platform that has a legacy PIC. So the FADT has PM1a event and control blocks (Kiln's
//! [`PM1A_EVT_BLK`] device powers off on `SLP_TYP = \_S5 | SLP_EN`) and SCI 9, and the
//! MADT says PCAT_COMPAT with SCI 9 level-triggered. The reset register is the one the
//! hardware-reduced tables use ([`crate::acpi::PM_PORT`] + 2). No SMI command port: the
//! platform is always in ACPI mode (SCI_EN reads 1).
//!
//! The loader format is QEMU's `hw/acpi/bios-linker-loader.c` interface (128-byte
//! commands), written here because no crate produces it.

use crate::acpi::{self, checksum_fix, OEM_ID};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;
use std::ops::Range;

/// fw_cfg file holding the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file holding every other table.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file holding the loader commands.
pub const LOADER_FILE: &str = "etc/table-loader";
/// PM1a event block (status and enable registers, 2 bytes each).
pub const PM1A_EVT_BLK: u16 = 0x610;
/// PM1a control block (2 bytes).
pub const PM1A_CNT_BLK: u16 = 0x614;
/// The SCI's ISA interrupt.
pub const SCI_IRQ: u16 = 9;

const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;
const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;
const FILE_NAME_LEN: usize = 56;

/// The three fw_cfg files.
#[derive(Debug, Clone)]
pub struct LoaderFiles {
    /// `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// `etc/acpi/tables`.
    pub tables: Vec<u8>,
    /// `etc/table-loader`.
    pub loader: Vec<u8>,
}

/// Loader commands being collected.
struct Loader(Vec<u8>);

impl Loader {
    fn command(&mut self, cmd: u32, body: &[u8]) {
        let mut entry = [0u8; 128];
        entry[..4].copy_from_slice(&cmd.to_le_bytes());
        entry[4..4 + body.len()].copy_from_slice(body);
        self.0.extend_from_slice(&entry);
    }

    fn name(name: &str) -> [u8; FILE_NAME_LEN] {
        let mut n = [0u8; FILE_NAME_LEN];
        n[..name.len()].copy_from_slice(name.as_bytes());
        n
    }

    fn allocate(&mut self, file: &str, align: u32, zone: u8) {
        let mut b = Vec::new();
        b.extend_from_slice(&Self::name(file));
        b.extend_from_slice(&align.to_le_bytes());
        b.push(zone);
        self.command(CMD_ALLOCATE, &b);
    }

    /// The `size`-byte field at `dest`+`offset` holds an offset into `src`; add `src`'s
    /// address to it.
    fn pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) {
        let mut b = Vec::new();
        b.extend_from_slice(&Self::name(dest));
        b.extend_from_slice(&Self::name(src));
        b.extend_from_slice(&offset.to_le_bytes());
        b.push(size);
        self.command(CMD_ADD_POINTER, &b);
    }

    fn checksum(&mut self, file: &str, offset: u32, start: u32, len: u32) {
        let mut b = Vec::new();
        b.extend_from_slice(&Self::name(file));
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&start.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        self.command(CMD_ADD_CHECKSUM, &b);
    }
}

fn append(blob: &mut Vec<u8>, table: &[u8], align: usize) -> u32 {
    let at = blob.len().next_multiple_of(align);
    blob.resize(at, 0);
    blob.extend_from_slice(table);
    at as u32
}

fn facs() -> Vec<u8> {
    let mut t = vec![0u8; 64];
    t[..4].copy_from_slice(b"FACS");
    t[4..8].copy_from_slice(&64u32.to_le_bytes());
    t[32] = 2; // version
    t
}

fn fadt() -> Vec<u8> {
    let io = |port: u16, bits: u8, size: AccessSize| {
        GAS::new(AddressSpace::SystemIo, bits, 0, size, u64::from(port))
    };
    let mut b = FADTBuilder::new(OEM_ID, *b"KILNFADT", 1).flag(Flags::ResetRegSup);
    b.sci_int = SCI_IRQ.into();
    b.pm1a_evt_blk = u32::from(PM1A_EVT_BLK).into();
    b.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK).into();
    b.pm1_evt_len = 4;
    b.pm1_cnt_len = 2;
    b.x_pm1a_evt_blk = io(PM1A_EVT_BLK, 32, AccessSize::WordAccess);
    b.x_pm1a_cnt_blk = io(PM1A_CNT_BLK, 16, AccessSize::WordAccess);
    b.reset_reg = io(
        (acpi::PM_PORT + acpi::RESET_REGISTER) as u16,
        8,
        AccessSize::ByteAccess,
    );
    b.reset_value = acpi::RESET_VALUE;
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"KILNVMM\0").into();
    let mut bytes = Vec::new();
    b.finalize().to_aml_bytes(&mut bytes);
    bytes
}

// FADT field offsets the loader patches.
const FADT_FIRMWARE_CTRL: u32 = 36;
const FADT_DSDT: u32 = 40;
const FADT_X_DSDT: u32 = 140;

/// The files for `vcpus` CPUs, PCI BARs in `mem32` (where the firmware puts them) and
/// `mmio64`.
pub fn loader_files(
    vcpus: u8,
    ioapic_addr: u32,
    lapic_addr: u32,
    mem32: &Range<u64>,
    mmio64: &Range<u64>,
) -> LoaderFiles {
    let mut tables = Vec::new();
    let facs_at = append(&mut tables, &facs(), 64);
    let dsdt = acpi::dsdt(mem32, mmio64);
    let dsdt_at = append(&mut tables, &dsdt, 16);
    let mut fadt = fadt();
    fadt[FADT_FIRMWARE_CTRL as usize..][..4].copy_from_slice(&facs_at.to_le_bytes());
    fadt[FADT_DSDT as usize..][..4].copy_from_slice(&dsdt_at.to_le_bytes());
    fadt[FADT_X_DSDT as usize..][..8].copy_from_slice(&u64::from(dsdt_at).to_le_bytes());
    checksum_fix(&mut fadt);
    let fadt_at = append(&mut tables, &fadt, 16);
    // SCI: ISA IRQ 9, active high, level-triggered (flags 0x000d).
    let madt = acpi::madt_with_overrides(vcpus, ioapic_addr, lapic_addr, &[(9, 9, 0x000d)]);
    let madt_at = append(&mut tables, &madt, 16);
    let mut rsdt = acpi_tables::sdt::Sdt::new(*b"RSDT", 36, 1, OEM_ID, *b"KILNRSDT", 1);
    rsdt.append_slice(&fadt_at.to_le_bytes());
    rsdt.append_slice(&madt_at.to_le_bytes());
    let mut rsdt = rsdt.as_slice().to_vec();
    checksum_fix(&mut rsdt);
    let rsdt_at = append(&mut tables, &rsdt, 16);

    // An ACPI 1.0 RSDP (20 bytes) pointing at the RSDT, as QEMU's i440FX machines have.
    let mut rsdp = Vec::with_capacity(20);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum, set by the loader
    rsdp.extend_from_slice(&OEM_ID);
    rsdp.push(0); // revision 0: ACPI 1.0
    rsdp.extend_from_slice(&rsdt_at.to_le_bytes());

    let mut l = Loader(Vec::new());
    l.allocate(RSDP_FILE, 16, ZONE_FSEG);
    l.allocate(TABLES_FILE, 64, ZONE_HIGH);
    l.pointer(TABLES_FILE, TABLES_FILE, fadt_at + FADT_FIRMWARE_CTRL, 4);
    l.pointer(TABLES_FILE, TABLES_FILE, fadt_at + FADT_DSDT, 4);
    l.pointer(TABLES_FILE, TABLES_FILE, fadt_at + FADT_X_DSDT, 8);
    l.checksum(TABLES_FILE, fadt_at + 9, fadt_at, fadt.len() as u32);
    l.pointer(TABLES_FILE, TABLES_FILE, rsdt_at + 36, 4);
    l.pointer(TABLES_FILE, TABLES_FILE, rsdt_at + 40, 4);
    l.checksum(TABLES_FILE, rsdt_at + 9, rsdt_at, rsdt.len() as u32);
    l.pointer(RSDP_FILE, TABLES_FILE, 16, 4);
    l.checksum(RSDP_FILE, 8, 0, 20);
    LoaderFiles {
        rsdp,
        tables,
        loader: l.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Run the loader as SeaBIOS does, with the tables at `base` and the RSDP at
    /// 0xF5000; returns (rsdp, tables) as they end up in memory.
    fn load(f: &LoaderFiles, base: u32) -> (Vec<u8>, Vec<u8>) {
        let (mut rsdp, mut tables) = (f.rsdp.clone(), f.tables.clone());
        let addr = |name: &str| if name == RSDP_FILE { 0xF5000u32 } else { base };
        let name = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8(b[..end].to_vec()).unwrap()
        };
        assert_eq!(f.loader.len() % 128, 0);
        for cmd in f.loader.chunks(128) {
            let kind = u32::from_le_bytes(cmd[..4].try_into().unwrap());
            let b = &cmd[4..];
            match kind {
                CMD_ALLOCATE => {}
                CMD_ADD_POINTER => {
                    let dest = name(&b[..56]);
                    let src = name(&b[56..112]);
                    let off = u32::from_le_bytes(b[112..116].try_into().unwrap()) as usize;
                    let size = b[116] as usize;
                    let file = if dest == RSDP_FILE {
                        &mut rsdp
                    } else {
                        &mut tables
                    };
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(&file[off..off + size]);
                    let patched = u64::from_le_bytes(v) + u64::from(addr(&src));
                    file[off..off + size].copy_from_slice(&patched.to_le_bytes()[..size]);
                }
                CMD_ADD_CHECKSUM => {
                    let file_name = name(&b[..56]);
                    let off = u32::from_le_bytes(b[56..60].try_into().unwrap()) as usize;
                    let start = u32::from_le_bytes(b[60..64].try_into().unwrap()) as usize;
                    let len = u32::from_le_bytes(b[64..68].try_into().unwrap()) as usize;
                    let file = if file_name == RSDP_FILE {
                        &mut rsdp
                    } else {
                        &mut tables
                    };
                    let s = sum(&file[start..start + len]);
                    file[off] = file[off].wrapping_sub(s);
                }
                other => panic!("unknown loader command {other}"),
            }
        }
        (rsdp, tables)
    }

    #[test]
    fn loaded_tables_link_up_with_valid_checksums() {
        let f = loader_files(
            2,
            0xfec0_0000,
            0xfee0_0000,
            &(0x8000_0000..0xfec0_0000),
            &(0x1_0000_0000..0x11_0000_0000),
        );
        let base = 0x07fe_0000u32;
        let (rsdp, tables) = load(&f, base);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp), 0);
        let at = |addr: u32| (addr - base) as usize;
        let table = |addr: u32| {
            let o = at(addr);
            let len = u32::from_le_bytes(tables[o + 4..o + 8].try_into().unwrap()) as usize;
            &tables[o..o + len]
        };
        let rsdt = table(u32::from_le_bytes(rsdp[16..20].try_into().unwrap()));
        assert_eq!(&rsdt[..4], b"RSDT");
        assert_eq!(sum(rsdt), 0);
        let fadt_addr = u32::from_le_bytes(rsdt[36..40].try_into().unwrap());
        let madt_addr = u32::from_le_bytes(rsdt[40..44].try_into().unwrap());
        let fadt = table(fadt_addr);
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(sum(fadt), 0);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        assert_eq!(u16::from_le_bytes(fadt[46..48].try_into().unwrap()), 9);
        assert_eq!(u32::from_le_bytes(fadt[56..60].try_into().unwrap()), 0x610);
        assert_eq!(u32::from_le_bytes(fadt[64..68].try_into().unwrap()), 0x614);
        let facs_addr = u32::from_le_bytes(fadt[36..40].try_into().unwrap());
        assert_eq!(facs_addr % 64, 0, "FACS is 64-byte aligned");
        assert_eq!(&tables[at(facs_addr)..at(facs_addr) + 4], b"FACS");
        let dsdt_addr = u32::from_le_bytes(fadt[40..44].try_into().unwrap());
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(u64::from(dsdt_addr), x_dsdt);
        let dsdt = table(dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        let madt = table(madt_addr);
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(sum(madt), 0);
        assert!(
            madt.windows(10)
                .any(|w| w == [2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]),
            "SCI override"
        );
    }
}
