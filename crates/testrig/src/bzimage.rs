//! The x86 bzImage setup header, as far as the rig needs it: where the compressed kernel
//! payload is, and cutting the uncompressed ELF `vmlinux` out of it.
//!
//! The payload starts `payload_offset` (header offset 0x248) bytes into the protected-mode
//! code, which itself starts after `(setup_sects + 1) * 512` bytes; `payload_length` is at
//! 0x24c. Debian's kernels compress it with LZ4 (the legacy frame, magic 0x184c2102),
//! and the kernel's build appends the uncompressed size (4 bytes, little-endian) to every
//! compressed payload. `lz4 -d` (Debian's `lz4` package) reads those 4 bytes as one more
//! block header and fails ("Stream followed by undecodable data", exit 1, silent without
//! `-v`) after writing all the data, so they are cut off first and checked against the
//! output's size. Other compressions are recognised by magic and decompressed with the
//! matching Debian tool.

use crate::{err, run_tool, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// What the setup header says about a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Number of 512-byte setup sectors after the boot sector.
    pub setup_sects: u8,
    /// Boot protocol version (e.g. 0x020f for 2.15).
    pub version: u16,
    /// Offset of the compressed payload from the start of the protected-mode code.
    pub payload_offset: u32,
    /// Length of the compressed payload.
    pub payload_length: u32,
}

impl SetupHeader {
    /// Parse the header of a bzImage (boot protocol 2.08 or later, for the payload fields).
    pub fn parse(image: &[u8]) -> Result<SetupHeader> {
        if image.len() < 0x250 || &image[0x202..0x206] != b"HdrS" {
            return Err(err!("not a bzImage: no 'HdrS' setup header"));
        }
        let u16_at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
        let setup_sects = match image[0x1f1] {
            0 => 4,
            n => n,
        };
        let h = SetupHeader {
            setup_sects,
            version: u16_at(0x206),
            payload_offset: u32_at(0x248),
            payload_length: u32_at(0x24c),
        };
        if h.version < 0x0208 {
            return Err(err!(
                "bzImage boot protocol {:#x} has no payload fields (needs 2.08+)",
                h.version
            ));
        }
        Ok(h)
    }

    /// Byte offset of the payload in the bzImage file.
    pub fn payload_start(&self) -> usize {
        (self.setup_sects as usize + 1) * 512 + self.payload_offset as usize
    }
}

/// The compressed payload of a bzImage.
pub fn payload(image: &[u8]) -> Result<&[u8]> {
    let h = SetupHeader::parse(image)?;
    let start = h.payload_start();
    let end = start + h.payload_length as usize;
    image.get(start..end).ok_or_else(|| {
        err!(
            "bzImage payload {start:#x}..{end:#x} is past its end ({:#x})",
            image.len()
        )
    })
}

/// The decompressor for a payload, from its magic: (tool, arguments) reading stdin.
fn decompressor(payload: &[u8]) -> Result<(&'static str, &'static [&'static str])> {
    Ok(match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => ("lz4", &["-d", "-c"]),
        [0x1f, 0x8b, ..] => ("gzip", &["-d", "-c"]),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => ("xz", &["-d", "-c"]),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => ("zstd", &["-d", "-c", "-q"]),
        [b'B', b'Z', b'h', ..] => ("bzip2", &["-d", "-c"]),
        _ => {
            return Err(err!(
                "unknown bzImage payload compression (magic {:02x?})",
                &payload[..payload.len().min(6)]
            ))
        }
    })
}

/// Cut the payload out of `bzimage`, decompress it into `vmlinux` and check that the
/// result is an ELF file.
pub fn extract_vmlinux(bzimage: &Path, vmlinux: &Path) -> Result<()> {
    let image = std::fs::read(bzimage).ctx(|| format!("reading {}", bzimage.display()))?;
    let payload = payload(&image).map_err(|e| err!("{}: {e}", bzimage.display()))?;
    let (tool, args) = decompressor(payload).map_err(|e| err!("{}: {e}", bzimage.display()))?;
    let Some((data, size)) = payload.split_last_chunk::<4>() else {
        return Err(err!("{}: payload too short", bzimage.display()));
    };
    let size = u32::from_le_bytes(*size) as u64;
    let packed = vmlinux.with_extension("payload");
    std::fs::write(&packed, data).ctx(|| format!("writing {}", packed.display()))?;
    let out = std::fs::File::create(vmlinux).ctx(|| format!("creating {}", vmlinux.display()))?;
    let result = run_tool(
        Command::new(tool)
            .args(args)
            .arg(&packed)
            .stdout(Stdio::from(out)),
    );
    let _ = std::fs::remove_file(&packed);
    result.map_err(|e| {
        err!(
            "decompressing the payload of {} with {tool} (Debian package {}): {e}",
            bzimage.display(),
            if tool == "xz" { "xz-utils" } else { tool }
        )
    })?;
    let mut magic = [0u8; 4];
    use std::io::Read;
    let mut f = std::fs::File::open(vmlinux).ctx(|| format!("opening {}", vmlinux.display()))?;
    f.read_exact(&mut magic)
        .ctx(|| format!("reading {}", vmlinux.display()))?;
    let got = f.metadata().map(|m| m.len()).unwrap_or(0);
    if got != size {
        return Err(err!(
            "{} decompressed to {got} bytes, but the bzImage says {size}",
            bzimage.display()
        ));
    }
    if &magic != b"\x7fELF" {
        return Err(err!(
            "{} decompressed from {} is not an ELF file (starts {magic:02x?})",
            vmlinux.display(),
            bzimage.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 3 * 512];
        img[0x1f1] = 2;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0xaa; 16]);
        img.extend_from_slice(payload);
        img.extend_from_slice(&[0xbb; 8]);
        img
    }

    #[test]
    fn finds_the_payload_from_the_setup_header() {
        let img = fake_image(b"\x02\x21\x4c\x18rest");
        let h = SetupHeader::parse(&img).unwrap();
        assert_eq!((h.setup_sects, h.version), (2, 0x020f));
        assert_eq!(h.payload_start(), 3 * 512 + 16);
        assert_eq!(payload(&img).unwrap(), b"\x02\x21\x4c\x18rest");
        assert_eq!(decompressor(payload(&img).unwrap()).unwrap().0, "lz4");
    }

    #[test]
    fn rejects_what_is_not_a_bzimage() {
        assert!(SetupHeader::parse(&[0u8; 1024]).is_err());
        let mut img = fake_image(b"x");
        img[0x24c..0x250].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(payload(&img).is_err());
        assert!(decompressor(b"????").is_err());
    }
}
