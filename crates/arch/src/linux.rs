//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst) and PVH entry, as far as
//! Kiln uses them: where the zero page, command line and initrd go, the e820 map, and the
//! register state at the 64-bit and PVH entry points. Parsing and copying the kernel image
//! itself is `linux-loader`'s job (in the VMM).

use crate::layout::{MapKind, MemoryLayout};
use kvm_bindings::kvm_sregs;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use std::ops::Range;

/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// PVH `hvm_start_info`, followed by its module list and memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Room for the command line (up to the next 64 KiB).
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Where the protected-mode kernel is loaded (bzImage) when it does not ask otherwise.
pub const KERNEL_LOAD_ADDR: u64 = 0x10_0000;
/// Kiln's areas below 1 MiB used by a Linux boot (the GDT page, PVH info, zero page,
/// page tables, command line, ACPI tables).
pub const LINUX_BOOT_AREAS: [Range<u64>; 4] = [
    0x1000..0x2000,
    PVH_INFO_ADDR..ZERO_PAGE_ADDR + 0x1000,
    CMDLINE_ADDR..CMDLINE_ADDR + CMDLINE_MAX as u64,
    crate::acpi::ACPI_AREA,
];

/// The reset vector a warm restart through the BIOS jumps to (F000:FFF0).
pub const RESET_VECTOR: u64 = 0xF_FFF0;

/// What Kiln puts at the reset vector for kernel guests, in place of firmware: pulse the
/// reset line through the i8042 (`mov al, 0xfe; out 0x64, al`), then halt.
///
/// Linux on a hardware-reduced ACPI platform reboots through EFI by default
/// (`efi_reboot_required()`), and without EFI falls back to a real-mode jump to the BIOS
/// reset vector; a real BIOS resets the machine from there, and so does this stub.
pub const RESET_STUB: [u8; 7] = [0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFD];

/// `type_of_loader` value for a loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags: the protected-mode code is loaded at 0x100000.
pub const LOADED_HIGH: u8 = 1;
/// xloadflags: the kernel has the 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1;
/// The setup header magic "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// PVH start-info magic.
pub const PVH_MAGIC: u32 = 0x336e_c578;

/// Errors placing a Linux kernel's pieces.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinuxError {
    /// The command line is longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Bytes given (without the terminating NUL).
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The initrd does not fit.
    #[error("the initrd ({size} bytes) does not fit in guest memory between the kernel's end ({lo:#x}) and {hi:#x}; give the guest more memory")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
        /// Lowest usable address.
        lo: u64,
        /// Highest usable address.
        hi: u64,
    },
    /// The bzImage is too old or lacks the 64-bit entry point.
    #[error("{0}")]
    Unsupported(String),
}

/// Check the setup header of a bzImage Kiln will enter at its 64-bit entry point.
pub fn check_header(hdr: &setup_header) -> Result<(), LinuxError> {
    let version = hdr.version;
    if version < 0x0206 {
        return Err(LinuxError::Unsupported(format!(
            "boot protocol {}.{:02} is too old (Kiln needs 2.06 or later)",
            version >> 8,
            version & 0xff
        )));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::Unsupported(
            "the kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)".into(),
        ));
    }
    Ok(())
}

/// The longest command line the kernel accepts: `cmdline_size` is "the maximum size of
/// the command line without the terminating zero" (boot protocol 2.06+).
pub fn cmdline_max(hdr: &setup_header) -> usize {
    (hdr.cmdline_size as usize).min(CMDLINE_MAX - 1)
}

/// Check a command line against the kernel's limit; returns the NUL-terminated bytes.
pub fn cmdline_bytes(cmdline: &str, max: usize) -> Result<Vec<u8>, LinuxError> {
    if cmdline.len() > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut b = cmdline.as_bytes().to_vec();
    b.push(0);
    Ok(b)
}

/// Where an initrd of `size` bytes goes: as high as possible below `max_addr` (exclusive)
/// and the end of low RAM, page-aligned, above `kernel_end`.
pub fn place_initrd(
    layout: &MemoryLayout,
    kernel_end: u64,
    max_addr: u64,
    size: u64,
) -> Result<u64, LinuxError> {
    let hi = layout.low_ram_size().min(max_addr);
    let lo = kernel_end.next_multiple_of(0x1000);
    let err = LinuxError::InitrdTooLarge { size, lo, hi };
    let addr = hi.checked_sub(size).ok_or(err.clone())? & !0xfff;
    if addr < lo {
        return Err(err);
    }
    Ok(addr)
}

/// The e820 map for `layout`.
pub fn e820(layout: &MemoryLayout) -> Vec<boot_e820_entry> {
    layout
        .memory_map()
        .iter()
        .map(|e| boot_e820_entry {
            addr: e.base,
            size: e.len,
            r#type: e.kind as u32,
        })
        .collect()
}

/// Everything the zero page needs besides the kernel's own setup header.
pub struct ZeroPage<'a> {
    /// The header read from the bzImage.
    pub header: setup_header,
    /// Guest memory layout (for e820).
    pub layout: &'a MemoryLayout,
    /// Initrd address and size, if any.
    pub initrd: Option<(u64, u64)>,
    /// The RSDP's address, if ACPI tables are provided.
    pub rsdp: Option<u64>,
}

/// Build the zero page.
pub fn zero_page(z: &ZeroPage<'_>) -> boot_params {
    let mut p = boot_params {
        hdr: z.header,
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.hdr.loadflags |= LOADED_HIGH;
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    p.ext_cmd_line_ptr = 0;
    if let Some((addr, size)) = z.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    if let Some(rsdp) = z.rsdp {
        p.acpi_rsdp_addr = rsdp;
    }
    let map = e820(z.layout);
    for (slot, e) in p.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    p.e820_entries = map.len().min(p.e820_table.len()) as u8;
    p
}

/// PVH start info, its module list (the initrd) and memory map, as bytes to write at
/// [`PVH_INFO_ADDR`].
pub fn pvh_start_info(
    layout: &MemoryLayout,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Vec<u8> {
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let mod_size = std::mem::size_of::<hvm_modlist_entry>() as u64;
    let modlist = PVH_INFO_ADDR + info_size;
    let memmap = modlist + mod_size;
    let map: Vec<hvm_memmap_table_entry> = layout
        .memory_map()
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.base,
            size: e.len,
            type_: if e.kind == MapKind::Ram { 1 } else { 2 },
            reserved: 0,
        })
        .collect();
    let info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: initrd.is_some() as u32,
        modlist_paddr: if initrd.is_some() { modlist } else { 0 },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: memmap,
        memmap_entries: map.len() as u32,
        reserved: 0,
    };
    let module = hvm_modlist_entry {
        paddr: initrd.map_or(0, |i| i.0),
        size: initrd.map_or(0, |i| i.1),
        cmdline_paddr: 0,
        reserved: 0,
    };
    let mut out = Vec::new();
    out.extend_from_slice(as_bytes(&info));
    out.extend_from_slice(as_bytes(&module));
    for e in &map {
        out.extend_from_slice(as_bytes(e));
    }
    out
}

fn as_bytes<T: vm_memory::ByteValued>(v: &T) -> &[u8] {
    v.as_slice()
}

/// Linux's 64-bit entry wants CS = __BOOT_CS (0x10) as 64-bit code and DS/ES/SS =
/// __BOOT_DS (0x18); Kiln's GDT has 32-bit code at 0x10, so Linux gets this table.
pub const LINUX_GDT: [u64; 6] = [
    0,
    0,
    crate::gdt::descriptor(0, 0xF_FFFF, 0x9B, 0xA), // 0x10: 64-bit code
    crate::gdt::descriptor(0, 0xF_FFFF, 0x93, 0xC), // 0x18: data
    crate::gdt::descriptor(0, 0x67, 0x8B, 0x0),     // 0x20: TSS
    0,
];

/// The Linux GDT as bytes.
pub fn linux_gdt_bytes() -> Vec<u8> {
    LINUX_GDT.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Special registers for the 64-bit entry: long mode, paging with the identity tables at
/// `cr3`, CS = 0x10 and data segments 0x18 from [`LINUX_GDT`].
pub fn set_linux64_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    crate::entry::set_entry_sregs(sregs, crate::CpuMode::Long, 0, cr3);
    let code = crate::gdt::segment_from(&LINUX_GDT, 0x10);
    let data = crate::gdt::segment_from(&LINUX_GDT, 0x18);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = crate::gdt::segment_from(&LINUX_GDT, 0x20);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIB;

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let l = MemoryLayout::new(64 * MIB);
        let a = place_initrd(&l, 0x80_0000, 0x7fff_ffff, 10_000).unwrap();
        assert_eq!(a, (64 * MIB - 10_000) & !0xfff);
        let e = place_initrd(&l, 0x80_0000, 0x7fff_ffff, 60 * MIB).unwrap_err();
        assert!(matches!(e, LinuxError::InitrdTooLarge { .. }));
        // initrd_addr_max below RAM end is honoured.
        let a = place_initrd(&l, 0x80_0000, 32 * MIB, 4096).unwrap();
        assert_eq!(a, 32 * MIB - 4096);
    }

    #[test]
    fn cmdline_limit() {
        assert_eq!(cmdline_bytes("ab", 2).unwrap(), b"ab\0");
        assert_eq!(
            cmdline_bytes("abc", 2).unwrap_err(),
            LinuxError::CmdlineTooLong { len: 3, max: 2 }
        );
        let hdr = setup_header {
            cmdline_size: 2048,
            ..Default::default()
        };
        assert_eq!(cmdline_max(&hdr), 2048);
    }

    #[test]
    fn zero_page_fields() {
        let l = MemoryLayout::new(512 * MIB);
        let p = zero_page(&ZeroPage {
            header: setup_header {
                header: HDRS_MAGIC,
                ..Default::default()
            },
            layout: &l,
            initrd: Some((0x1000_0000, 0x2000)),
            rsdp: Some(0xe0000),
        });
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.e820_entries }, 3);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        let last = p.e820_table[2];
        assert_eq!(({ last.addr }, { last.size }), (MIB, 511 * MIB));
    }

    #[test]
    fn pvh_info_layout() {
        let l = MemoryLayout::new(64 * MIB);
        let b = pvh_start_info(&l, Some((0x300_0000, 77)), None);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), PVH_MAGIC);
        assert_eq!(b.len(), 56 + 32 + 3 * 24);
    }

    #[test]
    fn linux_gdt_has_64bit_code_at_0x10() {
        let mut s = kvm_sregs::default();
        set_linux64_sregs(&mut s, 0x9000);
        assert_eq!((s.cs.selector, s.cs.l, s.ds.selector), (0x10, 1, 0x18));
    }
}
