//! Putting a guest into memory: raw binaries at chosen addresses, multiboot kernels and
//! their modules, plus the tables Kiln provides (GDT, boot info, page tables, multiboot
//! info). Returns the [`BootState`] the boot vCPU starts from.

use crate::config::{GuestConfig, LoadSource, LoadSpec, ModuleSpec, VmConfig};
use crate::error::{Result, VmmError};
use crate::linux::{self, KernelFormat, LinuxBoot};
use crate::memory::GuestMem;
use kiln_arch::layout::{BOOT_AREA, BOOT_INFO_ADDR, GDT_ADDR, MULTIBOOT_INFO_AREA};
use kiln_arch::multiboot::{self, PlacedModule};
use kiln_arch::{bootinfo, gdt, paging, CpuMode, MemoryLayout};
use std::ops::Range;
use std::path::Path;
use vm_memory::{Bytes, GuestAddress};

/// Which boot protocol the entry state follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A raw binary (Kiln's GDT, boot info in RBX).
    Raw,
    /// A multiboot kernel (EAX magic, EBX info).
    Multiboot,
    /// Linux's 64-bit boot protocol (Linux GDT, RSI = zero page).
    Linux64,
    /// PVH (32-bit, EBX = start info).
    Pvh,
    /// Firmware from the reset vector (the vCPU keeps KVM's reset state).
    Firmware,
}

/// How the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootState {
    /// CPU mode at entry.
    pub mode: CpuMode,
    /// The boot protocol.
    pub kind: EntryKind,
    /// Entry address (physical; real mode splits it into CS:IP).
    pub entry: u64,
    /// RAX at entry.
    pub rax: u64,
    /// RBX at entry.
    pub rbx: u64,
    /// RSI at entry.
    pub rsi: u64,
    /// CR3 at entry (long mode only).
    pub cr3: u64,
}

/// Read a whole file, with a message naming it on failure.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| VmmError::Read {
        path: path.display().to_string(),
        reason: io_reason(&e),
    })
}

/// An I/O error as a short phrase ("No such file or directory").
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn describe_ram(layout: &MemoryLayout) -> String {
    layout
        .ram_ranges()
        .iter()
        .map(|r| format!("{:#x}-{:#x}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(" and ")
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Check that `what` occupying `range` is inside RAM and clear of `reserved` areas.
fn check_placement(
    layout: &MemoryLayout,
    what: &str,
    range: &Range<u64>,
    reserved: &[(Range<u64>, &str)],
) -> Result<()> {
    if range.end < range.start || !layout.contains_ram(range) {
        return Err(VmmError::Config(format!(
            "{what} ({:#x}-{:#x}) is outside guest memory (RAM is {})",
            range.start,
            range.end,
            describe_ram(layout)
        )));
    }
    for (area, name) in reserved {
        if overlaps(range, area) {
            return Err(VmmError::Config(format!(
                "{what} ({:#x}-{:#x}) overlaps {name} at {:#x}-{:#x}",
                range.start, range.end, area.start, area.end
            )));
        }
    }
    Ok(())
}

/// Copy `data` into guest memory at `addr`, with a message naming the range on failure.
pub(crate) fn write(mem: &GuestMem, data: &[u8], addr: u64) -> Result<()> {
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|e| VmmError::Memory(format!("writing {} bytes at {addr:#x}: {e}", data.len())))
}

/// Load raw binaries and Kiln's tables for entry in `mode`.
pub fn load_raw(
    mem: &GuestMem,
    layout: &MemoryLayout,
    loads: &[LoadSpec],
    entry: Option<u64>,
    mode: CpuMode,
    vcpus: u32,
) -> Result<BootState> {
    let mut reserved = vec![(BOOT_AREA, "Kiln's boot area (GDT and boot info)")];
    if mode == CpuMode::Long {
        reserved.push((paging::table_area(layout.ram_end()), "Kiln's page tables"));
    }
    let mut placed: Vec<(Range<u64>, String)> = Vec::new();
    let mut images = Vec::new();
    for load in loads {
        let data = match &load.source {
            LoadSource::File(p) => read_file(p)?,
            LoadSource::Bytes { data, .. } => data.clone(),
        };
        let what = format!("{}@{:#x}", load.source.name(), load.addr);
        let range = load.addr..load.addr.saturating_add(data.len() as u64);
        check_placement(layout, &what, &range, &reserved)?;
        if let Some((_, other)) = placed.iter().find(|(r, _)| overlaps(r, &range)) {
            return Err(VmmError::Config(format!("{what} overlaps {other}")));
        }
        placed.push((range, what));
        images.push((data, load.addr));
    }
    let entry = entry
        .or_else(|| loads.first().map(|l| l.addr))
        .ok_or_else(|| {
            VmmError::Config("nothing to run: give --load FILE@ADDR or --kernel FILE".into())
        })?;
    kiln_arch::entry::entry_regs(mode, entry).map_err(|e| VmmError::Config(e.to_string()))?;
    if !layout.contains_ram(&(entry..entry + 1)) {
        return Err(VmmError::Config(format!(
            "entry point {entry:#x} is outside guest memory (RAM is {})",
            describe_ram(layout)
        )));
    }
    for (data, addr) in &images {
        write(mem, data, *addr)?;
    }
    write(mem, &gdt::gdt_bytes(), GDT_ADDR)?;
    write(
        mem,
        &bootinfo::boot_info_bytes(layout, vcpus, mode),
        BOOT_INFO_ADDR,
    )?;
    let cr3 = if mode == CpuMode::Long {
        paging::write_identity_tables(mem, layout.ram_end())
            .map_err(|e| VmmError::Config(e.to_string()))?
    } else {
        0
    };
    Ok(BootState {
        mode,
        kind: EntryKind::Raw,
        entry,
        rax: 0,
        rbx: BOOT_INFO_ADDR,
        rsi: 0,
        cr3,
    })
}

const PAGE: u64 = 4096;

/// Load a multiboot kernel, its modules and the information structure.
pub fn load_multiboot(
    mem: &GuestMem,
    layout: &MemoryLayout,
    kernel_path: &Path,
    image: &[u8],
    cmdline: &str,
    modules: &[ModuleSpec],
) -> Result<BootState> {
    let kname = kernel_path.display().to_string();
    let kernel = multiboot::parse(image).map_err(|e| VmmError::Kernel {
        path: kname.clone(),
        reason: match e {
            multiboot::MultibootError::NoHeader => {
                "not a kernel Kiln recognises (no multiboot header in the first 8 KiB)".into()
            }
            other => other.to_string(),
        },
    })?;
    let reserved = [
        (BOOT_AREA, "Kiln's boot area (GDT)"),
        (MULTIBOOT_INFO_AREA, "Kiln's multiboot information area"),
    ];
    for seg in &kernel.segments {
        let range = seg.addr..seg.addr + seg.mem_size;
        check_placement(layout, &format!("{kname} segment"), &range, &reserved)?;
    }
    for seg in &kernel.segments {
        write(
            mem,
            &image[seg.file_offset..seg.file_offset + seg.file_size],
            seg.addr,
        )?;
        let zeros = seg.mem_size - seg.file_size as u64;
        if zeros > 0 {
            write(
                mem,
                &vec![0u8; zeros as usize],
                seg.addr + seg.file_size as u64,
            )?;
        }
    }
    let mut next = kernel.end().next_multiple_of(PAGE);
    let mut placed = Vec::new();
    for m in modules {
        let data = read_file(&m.path)?;
        let range = next..next + data.len() as u64;
        let what = format!("module {}", m.path.display());
        check_placement(layout, &what, &range, &reserved)?;
        if range.end > u32::MAX as u64 {
            return Err(VmmError::Config(format!("{what} does not fit below 4 GiB")));
        }
        write(mem, &data, next)?;
        placed.push(PlacedModule {
            start: range.start,
            end: range.end,
            string: m
                .args
                .clone()
                .unwrap_or_else(|| m.path.display().to_string()),
        });
        next = range.end.max(range.start + 1).next_multiple_of(PAGE);
    }
    let info = multiboot::build_info(layout, cmdline, &placed).map_err(|e| VmmError::Kernel {
        path: kname,
        reason: e.to_string(),
    })?;
    write(mem, &info, MULTIBOOT_INFO_AREA.start)?;
    write(mem, &gdt::gdt_bytes(), GDT_ADDR)?;
    Ok(BootState {
        mode: CpuMode::Protected,
        kind: EntryKind::Multiboot,
        entry: kernel.entry as u64,
        rax: multiboot::BOOTLOADER_MAGIC as u64,
        rbx: MULTIBOOT_INFO_AREA.start,
        rsi: 0,
        cr3: 0,
    })
}

/// Load whatever guest `config` describes.
pub fn load_guest(mem: &GuestMem, layout: &MemoryLayout, config: &VmConfig) -> Result<BootState> {
    match &config.guest {
        GuestConfig::Raw { loads, entry, mode } => {
            load_raw(mem, layout, loads, *entry, *mode, config.vcpus.into())
        }
        GuestConfig::Kernel {
            kernel,
            cmdline,
            initrd,
            modules,
        } => {
            let image = read_file(kernel)?;
            let format = linux::detect(&image).ok_or_else(|| VmmError::Kernel {
                path: kernel.display().to_string(),
                reason: "not a kernel Kiln recognises (no bzImage header, no multiboot header in the first 8 KiB, not an ELF64 vmlinux)".into(),
            })?;
            if format == KernelFormat::Multiboot {
                let mut all = Vec::new();
                if let Some(i) = initrd {
                    all.push(ModuleSpec {
                        path: i.clone(),
                        args: None,
                    });
                }
                all.extend(modules.iter().cloned());
                return load_multiboot(mem, layout, kernel, &image, cmdline, &all);
            }
            if let Some(m) = modules.first() {
                return Err(VmmError::Config(format!(
                    "--module {} is for multiboot kernels; {} is a Linux kernel (use --initrd)",
                    m.path.display(),
                    kernel.display()
                )));
            }
            let b = LinuxBoot {
                kernel_path: kernel,
                image: &image,
                cmdline,
                initrd: initrd.as_ref(),
                acpi: config.acpi,
                vcpus: config.vcpus,
                mmio64: layout.mmio64(),
            };
            match format {
                KernelFormat::BzImage => linux::load_bzimage(mem, layout, &b),
                _ => linux::load_pvh(mem, layout, &b),
            }
        }
        // The BIOS is mapped as a ROM by the VM builder; RAM stays empty.
        GuestConfig::Firmware(_) => Ok(BootState {
            mode: CpuMode::Real,
            kind: EntryKind::Firmware,
            entry: 0xFFFF_FFF0,
            rax: 0,
            rbx: 0,
            rsi: 0,
            cr3: 0,
        }),
    }
}
