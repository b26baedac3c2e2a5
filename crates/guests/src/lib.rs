//! Guest programs for Kiln, assembled from source at build time.
//!
//! The sources live in `asm/*.S` (GNU as, Intel syntax); `build.rs` assembles
//! and links them with GNU binutils into `OUT_DIR` and this crate embeds the
//! results. Each source starts with a comment block describing the program
//! and its contract (entry mode, inputs, exact serial output, exit status).
//!
//! Kiln machine contract assumed by the raw guests: RAM from guest-physical
//! 0, a 16550 UART at port 0x3f8, an exit port at 0xf4 (an `out` of V ends
//! the VM with status `((V << 1) | 1) & 0xff`, `hlt` ends it with status 0),
//! and Kiln's boot info block at 0x1800 (pointed to by EBX/RBX at entry).
//!
//! Unless stated otherwise, a program's entry point is its load address.

/// Built-in demo guest (flat binary). Loaded at [`DEMO_LOAD_ADDR`] and
/// started in real mode at CS = 0x1000, IP = 0. It prints a greeting, the
/// CPU vendor and the RAM size, switches to protected mode and then long
/// mode (reporting each step on the serial port) and halts (exit status 0).
pub const DEMO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo.bin"));

/// Guest-physical load address (and entry point) of [`DEMO`].
pub const DEMO_LOAD_ADDR: u64 = 0x10000;

/// A 512-byte boot sector for BIOS boot tests (see `asm/boot_sector.S`): prints its
/// boot drive and the text in its disk's second sector through the BIOS, then writes
/// 0x10 to the debug-exit port (exit status 33).
pub const BOOT_SECTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/boot_sector.bin"));

/// Raw real-mode test guest (flat binary, `.code16`). Loaded at
/// [`RAW_LOAD_ADDR`], started with CS = 0xF000, IP = 0. Sums the table at
/// [`RAW_TABLE_ADDR`] (see [`table_bytes`]; at most 16379 values, as the
/// table is reached through segment 0xFFFF), prints
/// `kiln raw real: count=N sum=0xXXXXXXXX\n` and halts with EAX = sum,
/// ECX = count.
pub const RAW_REAL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/raw_real.bin"));

/// Raw protected-mode test guest (flat binary, `.code32`). Loaded at
/// [`RAW_LOAD_ADDR`]. Sums the table at [`RAW_TABLE_ADDR`], prints
/// `kiln raw protected: count=N sum=0xXXXXXXXX\n` and halts with
/// EAX = sum, ECX = count.
pub const RAW_PROTECTED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/raw_protected.bin"));

/// Raw long-mode test guest (flat binary, `.code64`). Loaded at
/// [`RAW_LOAD_ADDR`]. Sums the table at [`RAW_TABLE_ADDR`], prints
/// `kiln raw long: count=N sum=0xXXXXXXXX\n` and halts with RAX = sum
/// (zero-extended), RCX = count.
pub const RAW_LONG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/raw_long.bin"));

/// Guest-physical load address (and entry point) of [`RAW_REAL`],
/// [`RAW_PROTECTED`] and [`RAW_LONG`].
pub const RAW_LOAD_ADDR: u64 = 0xF0000;

/// Guest-physical address of the input table read by the raw guests
/// (u32 count, then `count` u32 values; build it with [`table_bytes`]).
pub const RAW_TABLE_ADDR: u64 = 0x100000;

/// Multiboot v1 test kernel as an ELF32 i386 executable (entry `_start`,
/// one PT_LOAD at [`MULTIBOOT_LOAD_ADDR`]). Its header sets flags bits 0
/// and 1. It prints the multiboot information it was given, then
/// `multiboot: done`, and exits with `out 0xf4` of 0x10 (exit status 33).
pub const MULTIBOOT_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/multiboot_elf.elf"));

/// The same multiboot v1 test kernel as [`MULTIBOOT_ELF`], as a flat binary
/// using the a.out kludge (header flags bits 0, 1 and 16; header at offset
/// 0, load address [`MULTIBOOT_LOAD_ADDR`], with a .bss after the image).
pub const MULTIBOOT_AOUT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/multiboot_aout.bin"));

/// Guest-physical address the multiboot kernels are linked and loaded at.
pub const MULTIBOOT_LOAD_ADDR: u64 = 0x100000;

/// Misbehaving 32-bit protected-mode guest (flat binary): hammers all I/O
/// ports, unbacked MMIO and the exit path, prints a line per step and exits
/// with `out 0xf4` of 0x21 (exit status 67). Loaded at
/// [`HOSTILE_LOAD_ADDR`].
pub const HOSTILE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hostile.bin"));

/// Guest-physical load address (and entry point) of [`HOSTILE`].
pub const HOSTILE_LOAD_ADDR: u64 = 0x100000;

/// Reads COM1 until a `.` and prints `serial-sum: count=N hash=0xXXXXXXXX` (h = h * 31 +
/// byte over the bytes before the `.`), then halts. Flat 32-bit protected mode, load and
/// entry at [`SERIAL_SUM_LOAD_ADDR`]. Waits forever without input.
pub const SERIAL_SUM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/serial_sum.bin"));

/// Guest-physical load address (and entry point) of [`SERIAL_SUM`].
pub const SERIAL_SUM_LOAD_ADDR: u64 = 0x100000;

/// Probes memory slots changed while it runs (see `asm/slot_probe.S`): waits for a
/// read-only slot at 0x2000000 holding the magic 0x4b494c4e, prints `1`, waits for the slot
/// to go away, then exits with status 0x21 (0x23 if the read-only slot took a write).
/// Flat 32-bit protected mode, load and entry at 0x100000.
pub const SLOT_PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/slot_probe.bin"));

/// The hash [`SERIAL_SUM`] prints for `input` (the bytes before the terminating `.`).
pub fn serial_sum_hash(input: &[u8]) -> u32 {
    input
        .iter()
        .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(b as u32))
}

/// Silent 64 KiB real-mode image for start-up benchmarks (exactly 65536
/// bytes). Usable as a QEMU `-bios` image or in Kiln loaded at
/// [`TINY_LOAD_ADDR`] with entry [`TINY_ENTRY`]. The reset vector (offset
/// 0xFFF0) far-jumps to 0xF000:0, which does `out 0xf4` of 0 (exit status
/// 1), then `cli; hlt` in a loop.
pub const TINY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny.bin"));

/// Guest-physical load address of [`TINY`] in Kiln.
pub const TINY_LOAD_ADDR: u64 = 0xF0000;

/// Entry point of [`TINY`] in Kiln: the reset vector at image offset 0xFFF0
/// (real mode, CS = 0xFFFF, IP = 0).
pub const TINY_ENTRY: u64 = 0xFFFF0;

/// Encodes the input table of the raw guests: a little-endian u32 count
/// followed by the little-endian u32 values. Place it at [`RAW_TABLE_ADDR`].
pub fn table_bytes(values: &[u32]) -> Vec<u8> {
    let count = u32::try_from(values.len()).expect("table has more than u32::MAX values");
    let mut bytes = Vec::with_capacity(4 + 4 * values.len());
    bytes.extend_from_slice(&count.to_le_bytes());
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB_MAGIC: u32 = 0x1BAD_B002;

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Finds the multiboot header (magic at a 4-byte aligned offset within
    /// the first 8 KiB with a valid checksum); returns its offset.
    fn multiboot_header(image: &[u8]) -> usize {
        let limit = image.len().min(8192);
        (0..limit.saturating_sub(11))
            .step_by(4)
            .find(|&off| {
                u32_at(image, off) == MB_MAGIC
                    && u32_at(image, off)
                        .wrapping_add(u32_at(image, off + 4))
                        .wrapping_add(u32_at(image, off + 8))
                        == 0
            })
            .expect("no multiboot header in the first 8 KiB")
    }

    #[test]
    fn all_images_non_empty() {
        for image in [
            DEMO,
            RAW_REAL,
            RAW_PROTECTED,
            RAW_LONG,
            MULTIBOOT_ELF,
            MULTIBOOT_AOUT,
            HOSTILE,
            TINY,
        ] {
            assert!(!image.is_empty());
        }
    }

    #[test]
    fn raw_guests_contain_their_banner() {
        assert!(contains(RAW_REAL, b"kiln raw real: count="));
        assert!(contains(RAW_PROTECTED, b"kiln raw protected: count="));
        assert!(contains(RAW_LONG, b"kiln raw long: count="));
        for image in [RAW_REAL, RAW_PROTECTED, RAW_LONG] {
            assert!(contains(image, b" sum=0x"));
            // Must fit below 1 MiB when loaded at 0xF0000.
            assert!(RAW_LOAD_ADDR + image.len() as u64 <= 0x100000);
        }
        // Real mode starts with `cli` at CS:IP = 0xF000:0.
        assert_eq!(RAW_REAL[0], 0xFA);
    }

    #[test]
    fn multiboot_elf_header_and_elf() {
        let off = multiboot_header(MULTIBOOT_ELF);
        let flags = u32_at(MULTIBOOT_ELF, off + 4);
        assert_eq!(flags & 0x3, 0x3);
        assert_eq!(
            flags & (1 << 16),
            0,
            "the ELF build must not use the a.out kludge"
        );

        let elf = MULTIBOOT_ELF;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 1, "ELFCLASS32");
        assert_eq!(elf[5], 1, "little-endian");
        assert_eq!(u16_at(elf, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(elf, 18), 3, "EM_386");
        let entry = u64::from(u32_at(elf, 24));
        let phoff = u32_at(elf, 28) as usize;
        let phentsize = usize::from(u16_at(elf, 42));
        let phnum = usize::from(u16_at(elf, 44));
        let mut found = false;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            let p_type = u32_at(elf, ph);
            let p_offset = u32_at(elf, ph + 4) as usize;
            let p_paddr = u64::from(u32_at(elf, ph + 12));
            let p_filesz = u64::from(u32_at(elf, ph + 16));
            let p_memsz = u64::from(u32_at(elf, ph + 20));
            if p_type == 1 && p_paddr == MULTIBOOT_LOAD_ADDR {
                found = true;
                assert!(p_memsz > p_filesz, "expected a .bss");
                assert!(entry >= p_paddr && entry < p_paddr + p_filesz);
                // The multiboot header is the first thing in the segment.
                assert_eq!(p_offset, off);
            }
        }
        assert!(found, "no PT_LOAD at {MULTIBOOT_LOAD_ADDR:#x}");
    }

    #[test]
    fn multiboot_aout_header() {
        let image = MULTIBOOT_AOUT;
        let off = multiboot_header(image);
        assert_eq!(off % 4, 0);
        let flags = u32_at(image, off + 4);
        assert_eq!(flags & 0x3, 0x3);
        assert_ne!(flags & (1 << 16), 0, "a.out kludge flag missing");
        let header_addr = u64::from(u32_at(image, off + 12));
        let load_addr = u64::from(u32_at(image, off + 16));
        let load_end_addr = u64::from(u32_at(image, off + 20));
        let bss_end_addr = u64::from(u32_at(image, off + 24));
        let entry_addr = u64::from(u32_at(image, off + 28));
        assert_eq!(load_addr, MULTIBOOT_LOAD_ADDR);
        assert_eq!(header_addr - load_addr, off as u64);
        assert_eq!(load_end_addr - load_addr, image.len() as u64);
        assert!(bss_end_addr > load_end_addr);
        assert!(entry_addr >= load_addr && entry_addr < load_end_addr);
        assert!(contains(image, b"multiboot: done\n"));
    }

    #[test]
    fn tiny_layout() {
        assert_eq!(TINY.len(), 65536);
        let reset = &TINY[TINY.len() - 16..];
        assert_eq!(reset[0], 0xEA, "far jump at the reset vector");
        assert_eq!(&reset[1..5], &[0x00, 0x00, 0x00, 0xF0], "jmp 0xF000:0x0000");
        assert!(reset[5..].iter().all(|&b| b == 0));
        // mov al, 0; out 0xf4, al; cli; hlt
        assert_eq!(&TINY[..6], &[0xB0, 0x00, 0xE6, 0xF4, 0xFA, 0xF4]);
        assert_eq!(TINY_ENTRY - TINY_LOAD_ADDR, 0xFFF0);
        assert!(!contains(TINY, b"kiln"));
    }

    #[test]
    fn demo_fits_and_has_text() {
        assert!(DEMO.len() < 0x10000, "demo must be < 64 KiB");
        // Must not reach its own page tables at 0x20000.
        assert!(DEMO_LOAD_ADDR + (DEMO.len() as u64) <= 0x20000);
        assert_eq!(DEMO[0], 0xFA, "starts with cli");
        for line in [
            &b"Kiln demo guest: hello from 16-bit real mode\n"[..],
            b"  CPU vendor: ",
            b" MiB (from Kiln's boot info at 0x1800)\n",
            b"  boot info: bad magic\n",
            b"  entering 32-bit protected mode\n",
            b"  now in 32-bit protected mode\n",
            b"  entering 64-bit long mode\n",
            b"  now in 64-bit long mode\n",
            b"Kiln demo guest: done, halting\n",
        ] {
            assert!(contains(DEMO, line), "{}", String::from_utf8_lossy(line));
        }
        assert!(!contains(DEMO, b"\r\n"));
    }

    #[test]
    fn hostile_has_text() {
        assert_eq!(HOSTILE[0], 0xFA, "starts with cli");
        for line in [
            &b"hostile: port reads ok\n"[..],
            b"hostile: port writes ok\n",
            b"hostile: mmio reads ok\n",
            b"hostile: mmio writes ok\n",
            b"hostile: storm done\n",
            b"hostile: survived\n",
        ] {
            assert!(contains(HOSTILE, line), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn table_encoding() {
        assert_eq!(table_bytes(&[]), vec![0, 0, 0, 0]);
        assert_eq!(
            table_bytes(&[1, 0xDEAD_BEEF]),
            vec![2, 0, 0, 0, 1, 0, 0, 0, 0xEF, 0xBE, 0xAD, 0xDE]
        );
    }
}
