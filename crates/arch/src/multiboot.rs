//! Multiboot (v1) kernels: finding the header, the load segments, and the information
//! structure handed over at entry (multiboot specification 0.6.96, sections 3.1-3.3).
//!
//! Written by hand: `linux-loader` loads ELF64 Linux images only, and no maintained crate
//! loads multiboot v1 kernels (ELF32 or the a.out-kludge address fields) into an arbitrary
//! guest memory. The format is small and fully specified, so this module stays short.

use crate::layout::{MemoryLayout, LEGACY_HOLE, MIB, MULTIBOOT_INFO_AREA};

/// The header magic a kernel carries.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The value EAX holds at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie within this many bytes of the file start.
pub const HEADER_SEARCH_LIMIT: usize = 8192;

/// Header flag: align modules on page boundaries.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: memory information required.
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: video mode information requested (Kiln has no framebuffer; ignored).
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the address fields are valid (the a.out kludge).
pub const FLAG_ADDRESS_FIELDS: u32 = 1 << 16;
const KNOWN_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

/// Info flag bits Kiln sets.
pub mod info_flags {
    /// mem_lower / mem_upper valid.
    pub const MEMORY: u32 = 1 << 0;
    /// cmdline valid.
    pub const CMDLINE: u32 = 1 << 2;
    /// mods_count / mods_addr valid.
    pub const MODS: u32 = 1 << 3;
    /// mmap_length / mmap_addr valid.
    pub const MMAP: u32 = 1 << 6;
    /// boot_loader_name valid.
    pub const LOADER_NAME: u32 = 1 << 9;
}

/// Errors reading a multiboot kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultibootError {
    /// No valid header in the first 8 KiB.
    #[error("no multiboot header in the first 8 KiB")]
    NoHeader,
    /// The header asks for features Kiln does not provide.
    #[error("multiboot header requires unsupported features (flags {0:#x})")]
    UnsupportedFlags(u32),
    /// The ELF image is malformed or not what multiboot loads.
    #[error("multiboot ELF image: {0}")]
    BadElf(&'static str),
    /// The a.out-kludge address fields are inconsistent.
    #[error("multiboot address fields: {0}")]
    BadAddressFields(&'static str),
    /// The info structure does not fit Kiln's area.
    #[error("multiboot command line and module names are too long ({0} bytes)")]
    InfoTooLarge(usize),
}

/// One range of the kernel file to copy into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub addr: u64,
    /// Offset of the data in the file.
    pub file_offset: usize,
    /// Bytes copied from the file.
    pub file_size: usize,
    /// Bytes occupied in memory (the rest after `file_size` is zeroed).
    pub mem_size: u64,
}

/// A parsed multiboot kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultibootKernel {
    /// Header flags.
    pub flags: u32,
    /// Entry point (physical).
    pub entry: u32,
    /// What to load.
    pub segments: Vec<Segment>,
}

impl MultibootKernel {
    /// One past the highest byte the kernel occupies.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.addr + s.mem_size)
            .max()
            .unwrap_or(0)
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Find the header: returns its file offset.
pub fn find_header(image: &[u8]) -> Option<usize> {
    let limit = image.len().min(HEADER_SEARCH_LIMIT);
    (0..limit.saturating_sub(11)).step_by(4).find(|&off| {
        let (Some(magic), Some(flags), Some(sum)) = (
            u32_at(image, off),
            u32_at(image, off + 4),
            u32_at(image, off + 8),
        ) else {
            return false;
        };
        magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0
    })
}

/// Parse a multiboot kernel image.
pub fn parse(image: &[u8]) -> Result<MultibootKernel, MultibootError> {
    let off = find_header(image).ok_or(MultibootError::NoHeader)?;
    let flags = u32_at(image, off + 4).ok_or(MultibootError::NoHeader)?;
    if flags & 0xFFFF & !KNOWN_REQUIRED != 0 {
        return Err(MultibootError::UnsupportedFlags(flags));
    }
    if flags & FLAG_ADDRESS_FIELDS != 0 {
        parse_address_fields(image, off, flags)
    } else {
        parse_elf32(image, flags)
    }
}

fn parse_address_fields(
    image: &[u8],
    off: usize,
    flags: u32,
) -> Result<MultibootKernel, MultibootError> {
    let bad = MultibootError::BadAddressFields;
    let field = |i: usize| u32_at(image, off + 12 + 4 * i).ok_or(bad("header truncated"));
    let (header_addr, load_addr, load_end, bss_end, entry) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if load_addr > header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let delta = (header_addr - load_addr) as usize;
    let file_offset = off
        .checked_sub(delta)
        .ok_or(bad("load_addr precedes the file start"))?;
    let file_size = if load_end == 0 {
        image.len() - file_offset
    } else {
        if load_end < load_addr {
            return Err(bad("load_end_addr is below load_addr"));
        }
        (load_end - load_addr) as usize
    };
    if file_offset + file_size > image.len() {
        return Err(bad("load_end_addr is past the end of the file"));
    }
    let mem_end = if bss_end == 0 {
        load_addr as u64 + file_size as u64
    } else if (bss_end as u64) < load_addr as u64 + file_size as u64 {
        return Err(bad("bss_end_addr is below the loaded image"));
    } else {
        bss_end as u64
    };
    if entry < load_addr || entry as u64 >= mem_end {
        return Err(bad("entry_addr is outside the loaded image"));
    }
    Ok(MultibootKernel {
        flags,
        entry,
        segments: vec![Segment {
            addr: load_addr as u64,
            file_offset,
            file_size,
            mem_size: mem_end - load_addr as u64,
        }],
    })
}

fn parse_elf32(image: &[u8], flags: u32) -> Result<MultibootKernel, MultibootError> {
    let bad = MultibootError::BadElf;
    if image.get(0..4) != Some(b"\x7fELF") {
        return Err(bad("not an ELF file and the header has no address fields"));
    }
    if image[4] != 1 || image[5] != 1 {
        return Err(bad("not a little-endian ELF32 file"));
    }
    if u16_at(image, 18) != Some(3) {
        return Err(bad("not an i386 executable"));
    }
    let entry = u32_at(image, 24).ok_or(bad("truncated header"))?;
    let phoff = u32_at(image, 28).ok_or(bad("truncated header"))? as usize;
    let phentsize = u16_at(image, 42).ok_or(bad("truncated header"))? as usize;
    let phnum = u16_at(image, 44).ok_or(bad("truncated header"))? as usize;
    if phentsize < 32 {
        return Err(bad("program header entries too small"));
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .ok_or(bad("program header table out of range"))?;
        let f = |o: usize| u32_at(image, ph + o).ok_or(bad("program header table out of range"));
        if f(0)? != 1 {
            continue; // not PT_LOAD
        }
        let (offset, paddr, filesz, memsz) = (f(4)?, f(12)?, f(16)?, f(20)?);
        if filesz > memsz {
            return Err(bad("segment file size exceeds memory size"));
        }
        if offset as usize + filesz as usize > image.len() {
            return Err(bad("segment extends past the end of the file"));
        }
        if memsz == 0 {
            continue;
        }
        segments.push(Segment {
            addr: paddr as u64,
            file_offset: offset as usize,
            file_size: filesz as usize,
            mem_size: memsz as u64,
        });
    }
    if segments.is_empty() {
        return Err(bad("no loadable segments"));
    }
    if !segments
        .iter()
        .any(|s| (s.addr..s.addr + s.mem_size).contains(&(entry as u64)))
    {
        return Err(bad("entry point is outside every loaded segment"));
    }
    Ok(MultibootKernel {
        flags,
        entry,
        segments,
    })
}

/// A module as placed in guest memory.
#[derive(Clone, Debug)]
pub struct PlacedModule {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The module's string (its command line).
    pub string: String,
}

/// Build the information structure and everything it points to, to be written at
/// `MULTIBOOT_INFO_AREA.start`. Returns the bytes; the structure itself is at offset 0.
pub fn build_info(
    layout: &MemoryLayout,
    cmdline: &str,
    modules: &[PlacedModule],
) -> Result<Vec<u8>, MultibootError> {
    let base = MULTIBOOT_INFO_AREA.start;
    let mut blob = vec![0u8; 0x80];
    let put32 = |blob: &mut Vec<u8>, off: usize, v: u32| {
        blob[off..off + 4].copy_from_slice(&v.to_le_bytes());
    };
    let mut flags = info_flags::MEMORY | info_flags::CMDLINE | info_flags::MMAP;
    flags |= info_flags::LOADER_NAME;
    let low = layout.low_ram_size();
    put32(&mut blob, 4, (low.min(LEGACY_HOLE.start) / 1024) as u32);
    put32(&mut blob, 8, (low.saturating_sub(MIB) / 1024) as u32);

    // Memory map: entries of {u32 size = 20, u64 base, u64 len, u32 type}.
    let mmap_off = blob.len();
    for e in layout.memory_map() {
        blob.extend_from_slice(&20u32.to_le_bytes());
        blob.extend_from_slice(&e.base.to_le_bytes());
        blob.extend_from_slice(&e.len.to_le_bytes());
        blob.extend_from_slice(&(e.kind as u32).to_le_bytes());
    }
    let mmap_len = blob.len() - mmap_off;
    put32(&mut blob, 44, mmap_len as u32);
    put32(&mut blob, 48, (base + mmap_off as u64) as u32);

    // Module list, then strings.
    let mods_off = blob.len();
    blob.resize(mods_off + 16 * modules.len(), 0);
    let add_string = |blob: &mut Vec<u8>, s: &str| -> u32 {
        let at = base + blob.len() as u64;
        blob.extend_from_slice(s.as_bytes());
        blob.push(0);
        at as u32
    };
    let cmd_addr = add_string(&mut blob, cmdline);
    put32(&mut blob, 16, cmd_addr);
    let name_addr = add_string(&mut blob, "Kiln");
    put32(&mut blob, 64, name_addr);
    if !modules.is_empty() {
        flags |= info_flags::MODS;
        for (i, m) in modules.iter().enumerate() {
            let s = add_string(&mut blob, &m.string);
            let e = mods_off + 16 * i;
            put32(&mut blob, e, m.start as u32);
            put32(&mut blob, e + 4, m.end as u32);
            put32(&mut blob, e + 8, s);
        }
        put32(&mut blob, 20, modules.len() as u32);
        put32(&mut blob, 24, (base + mods_off as u64) as u32);
    }
    put32(&mut blob, 0, flags);
    let room = (MULTIBOOT_INFO_AREA.end - MULTIBOOT_INFO_AREA.start) as usize;
    if blob.len() > room {
        return Err(MultibootError::InfoTooLarge(blob.len()));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, fields: &[u32]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&(0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)).to_le_bytes());
        for f in fields {
            h.extend_from_slice(&f.to_le_bytes());
        }
        h
    }

    #[test]
    fn address_fields_kludge() {
        let mut img = vec![0u8; 16];
        img.extend(header(
            FLAG_ADDRESS_FIELDS | FLAG_MEMORY_INFO,
            &[0x10_0010, 0x10_0000, 0, 0x10_2000, 0x10_0040],
        ));
        img.resize(0x100, 0x90);
        let k = parse(&img).unwrap();
        assert_eq!(k.entry, 0x10_0040);
        assert_eq!(
            k.segments,
            vec![Segment {
                addr: 0x10_0000,
                file_offset: 0,
                file_size: 0x100,
                mem_size: 0x2000
            }]
        );
        assert_eq!(k.end(), 0x10_2000);
    }

    #[test]
    fn rejects_non_multiboot_and_unknown_flags() {
        assert_eq!(parse(&[0u8; 64]), Err(MultibootError::NoHeader));
        let mut bad_sum = header(0, &[]);
        bad_sum[8] ^= 1;
        assert_eq!(parse(&bad_sum), Err(MultibootError::NoHeader));
        assert_eq!(
            parse(&header(1 << 5, &[])),
            Err(MultibootError::UnsupportedFlags(1 << 5))
        );
        assert!(matches!(
            parse(&header(0, &[])),
            Err(MultibootError::BadElf(_))
        ));
    }

    #[test]
    fn info_structure_fields() {
        let layout = MemoryLayout::new(32 * MIB);
        let mods = [PlacedModule {
            start: 0x20_0000,
            end: 0x20_0010,
            string: "mod args".into(),
        }];
        let b = build_info(&layout, "hello world", &mods).unwrap();
        let r = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(r(0), 0x1 | 0x4 | 0x8 | 0x40 | 0x200);
        assert_eq!((r(4), r(8)), (639, 31 * 1024));
        assert_eq!(r(20), 1);
        let cmd = (r(16) as u64 - MULTIBOOT_INFO_AREA.start) as usize;
        assert_eq!(&b[cmd..cmd + 12], b"hello world\0");
        assert_eq!(r(44), 3 * 24);
    }
}
