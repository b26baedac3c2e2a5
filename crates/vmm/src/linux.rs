//! Loading Linux: a bzImage entered at its 64-bit entry point, or an ELF `vmlinux` entered
//! through its PVH note, with the command line, initrd, e820 map / PVH memory map and ACPI
//! tables in place. `linux-loader` parses and copies the kernel image; the placement rules
//! come from `kiln_arch::linux`.

use crate::error::{Result, VmmError};
use crate::loader::{read_file, write, BootState, EntryKind};
use crate::memory::GuestMem;
use kiln_arch::layout::{GDT_ADDR, IOAPIC_ADDR, LAPIC_ADDR};
use kiln_arch::linux::{self as boot, ZeroPage};
use kiln_arch::{acpi, paging, CpuMode, MemoryLayout};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, elf::PvhBootCapability, KernelLoader};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use vm_memory::GuestAddress;

/// A kernel image format Kiln recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// Linux bzImage ("HdrS" at 0x202).
    BzImage,
    /// A multiboot v1 kernel.
    Multiboot,
    /// An ELF64 kernel (Linux vmlinux, entered through PVH).
    Elf64,
}

/// Tell what kind of kernel `image` is.
pub fn detect(image: &[u8]) -> Option<KernelFormat> {
    if image.get(0x202..0x206) == Some(&boot::HDRS_MAGIC.to_le_bytes()[..]) {
        return Some(KernelFormat::BzImage);
    }
    if kiln_arch::multiboot::find_header(image).is_some() {
        return Some(KernelFormat::Multiboot);
    }
    if image.get(0..5) == Some(b"\x7fELF\x02") {
        return Some(KernelFormat::Elf64);
    }
    None
}

/// What a Linux boot needs besides guest memory.
pub struct LinuxBoot<'a> {
    /// The kernel file (for messages).
    pub kernel_path: &'a Path,
    /// Its contents.
    pub image: &'a [u8],
    /// The command line.
    pub cmdline: &'a str,
    /// The initrd file.
    pub initrd: Option<&'a PathBuf>,
    /// Provide ACPI tables.
    pub acpi: bool,
    /// vCPUs (for the MADT).
    pub vcpus: u8,
    /// The 64-bit MMIO window (for the PCI root bridge's resources).
    pub mmio64: std::ops::Range<u64>,
}

fn kernel_err(path: &Path, reason: impl ToString) -> VmmError {
    VmmError::Kernel {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn load_initrd(
    mem: &GuestMem,
    layout: &MemoryLayout,
    path: Option<&PathBuf>,
    kernel_end: u64,
    max_addr: u64,
) -> Result<Option<(u64, u64)>> {
    let Some(path) = path else { return Ok(None) };
    let data = read_file(path)?;
    let size = data.len() as u64;
    let addr = boot::place_initrd(layout, kernel_end, max_addr, size)
        .map_err(|e| VmmError::Config(format!("{}: {e}", path.display())))?;
    write(mem, &data, addr)?;
    Ok(Some((addr, size)))
}

/// ACPI tables (returns the RSDP address), or without ACPI an MP table; and the reset
/// stub at the BIOS reset vector.
fn write_acpi(mem: &GuestMem, b: &LinuxBoot<'_>) -> Result<Option<u64>> {
    write(mem, &boot::RESET_STUB, boot::RESET_VECTOR)?;
    if !b.acpi {
        let mp = kiln_arch::mptable::mptable(b.vcpus, IOAPIC_ADDR as u32, LAPIC_ADDR as u32)
            .map_err(|e| VmmError::Config(e.to_string()))?;
        write(mem, &mp, kiln_arch::mptable::MPTABLE_AREA.start)?;
        return Ok(None);
    }
    let tables = acpi::tables(b.vcpus, IOAPIC_ADDR as u32, LAPIC_ADDR as u32, &b.mmio64);
    write(mem, &tables, acpi::ACPI_AREA.start)?;
    Ok(Some(acpi::RSDP_ADDR))
}

/// Refuse a bzImage shorter than its setup header says (a truncated download or copy):
/// `linux-loader` would load the part that is there and the guest would crash later.
fn check_complete(path: &Path, image: &[u8]) -> Result<()> {
    let setup_sects = match image.get(0x1f1) {
        Some(0) | None => 4,
        Some(&n) => n as usize,
    };
    let syssize = image.get(0x1f4..0x1f8).map_or(0, |b| {
        u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize
    });
    let want = (setup_sects + 1) * 512 + syssize * 16;
    if image.len() < want {
        return Err(kernel_err(
            path,
            format!(
                "truncated bzImage: {} bytes, but its header says {want}",
                image.len()
            ),
        ));
    }
    Ok(())
}

/// Load a bzImage for its 64-bit entry point.
pub fn load_bzimage(mem: &GuestMem, layout: &MemoryLayout, b: &LinuxBoot<'_>) -> Result<BootState> {
    let path = b.kernel_path;
    check_complete(path, b.image)?;
    let loaded = BzImage::load(
        mem,
        None,
        &mut Cursor::new(b.image),
        Some(GuestAddress(boot::KERNEL_LOAD_ADDR)),
    )
    .map_err(|e| kernel_err(path, format!("cannot load bzImage: {e}")))?;
    let header = loaded
        .setup_header
        .ok_or_else(|| kernel_err(path, "bzImage without a setup header"))?;
    boot::check_header(&header).map_err(|e| kernel_err(path, e))?;
    let load = loaded.kernel_load.0;
    let kernel_end = (load + header.init_size as u64).max(loaded.kernel_end);
    if !layout.contains_ram(&(load..kernel_end)) {
        return Err(VmmError::Config(format!(
            "{} needs {:#x} bytes from {load:#x} to decompress and run; give the guest more memory",
            path.display(),
            kernel_end - load
        )));
    }
    let cmdline = boot::cmdline_bytes(b.cmdline, boot::cmdline_max(&header))
        .map_err(|e| VmmError::Config(e.to_string()))?;
    write(mem, &cmdline, boot::CMDLINE_ADDR)?;
    let max_addr = match header.initrd_addr_max {
        0 => 0x3800_0000,
        m => m as u64 + 1,
    };
    let initrd = load_initrd(mem, layout, b.initrd, kernel_end, max_addr)?;
    let rsdp = write_acpi(mem, b)?;
    let params = boot::zero_page(&ZeroPage {
        header,
        layout,
        initrd,
        rsdp,
    });
    LinuxBootConfigurator::write_bootparams::<GuestMem>(
        &BootParams::new(&params, GuestAddress(boot::ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| VmmError::Memory(format!("writing the zero page: {e}")))?;
    write(mem, &boot::linux_gdt_bytes(), GDT_ADDR)?;
    let cr3 = paging::write_identity_tables(mem, layout.ram_end())
        .map_err(|e| VmmError::Config(e.to_string()))?;
    Ok(BootState {
        mode: CpuMode::Long,
        kind: EntryKind::Linux64,
        entry: load + 0x200,
        rax: 0,
        rbx: 0,
        rsi: boot::ZERO_PAGE_ADDR,
        cr3,
    })
}

/// Load an ELF vmlinux for its PVH entry point.
pub fn load_pvh(mem: &GuestMem, layout: &MemoryLayout, b: &LinuxBoot<'_>) -> Result<BootState> {
    let path = b.kernel_path;
    let loaded = Elf::load(
        mem,
        None,
        &mut Cursor::new(b.image),
        Some(GuestAddress(boot::KERNEL_LOAD_ADDR)),
    )
    .map_err(|e| kernel_err(path, format!("cannot load ELF kernel: {e}")))?;
    let entry =
        match loaded.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => addr.0,
            _ => return Err(kernel_err(
                path,
                "ELF kernel without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use its bzImage",
            )),
        };
    let cmdline = boot::cmdline_bytes(b.cmdline, boot::CMDLINE_MAX - 1)
        .map_err(|e| VmmError::Config(e.to_string()))?;
    write(mem, &cmdline, boot::CMDLINE_ADDR)?;
    let initrd = load_initrd(mem, layout, b.initrd, loaded.kernel_end, u32::MAX as u64)?;
    let rsdp = write_acpi(mem, b)?;
    write(
        mem,
        &boot::pvh_start_info(layout, initrd, rsdp),
        boot::PVH_INFO_ADDR,
    )?;
    write(mem, &kiln_arch::gdt::gdt_bytes(), GDT_ADDR)?;
    Ok(BootState {
        mode: CpuMode::Protected,
        kind: EntryKind::Pvh,
        entry,
        rax: 0,
        rbx: boot::PVH_INFO_ADDR,
        rsi: 0,
        cr3: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), Some(KernelFormat::BzImage));
        let mut elf = b"\x7fELF\x02".to_vec();
        elf.resize(64, 0);
        assert_eq!(detect(&elf), Some(KernelFormat::Elf64));
        assert_eq!(detect(b"plain text"), None);
    }
}
