//! The newc ("070701") cpio format that Linux unpacks as an initramfs: a streaming
//! writer for directories, regular files, symlinks and character devices, and a reader
//! (for tests and checks). Archives are uncompressed; Linux accepts that as is.
//!
//! Every header is 110 ASCII bytes (magic plus 13 eight-digit hex fields), followed by
//! the NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes. The
//! archive ends with an entry named `TRAILER!!!`. Owners are root and times are 0, so
//! the same input gives the same bytes.

use std::io::{self, Read, Write};

/// The magic of a newc header.
pub const MAGIC: &[u8; 6] = b"070701";
/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode` (as in `st_mode`).
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive to `W`, entry by entry. Call [`Writer::finish`] at the end.
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    /// Start an archive.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// Add a directory; `perm` is the permission bits (e.g. 0o755).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | (perm & 0o7777), 2, 0, (0, 0))
    }

    /// Add a regular file with the given contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.file_from(name, perm, data.len() as u64, &mut &data[..])
    }

    /// Add a regular file of `size` bytes read from `data` (which must hold exactly that
    /// many).
    pub fn file_from(
        &mut self,
        name: &str,
        perm: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let size32 = u32::try_from(size)
            .map_err(|_| io::Error::other(format!("{name}: too big for cpio ({size} bytes)")))?;
        self.header(name, S_IFREG | (perm & 0o7777), 1, size32, (0, 0))?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::other(format!(
                "{name}: expected {size} bytes, got {copied}"
            )));
        }
        self.written += size;
        self.pad()
    }

    /// Add a symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, S_IFLNK | 0o777, 1, target.len() as u32, (0, 0))?;
        self.raw(target.as_bytes())?;
        self.pad()
    }

    /// Add a character device node (e.g. /dev/console is 5:1, /dev/null 1:3).
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, S_IFCHR | (perm & 0o7777), 1, 0, (major, minor))
    }

    /// Write the trailer and return the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::other(format!("bad cpio entry name {name:?}")));
        }
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut h = Vec::with_capacity(110 + name.len() + 4);
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        h.extend_from_slice(name.as_bytes());
        h.push(0);
        self.raw(&h)?;
        self.pad()
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..n])
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading '/'.
    pub name: String,
    /// File type and permission bits.
    pub mode: u32,
    /// Device number (major, minor) for device nodes.
    pub rdev: (u32, u32),
    /// File contents, or the target of a symlink.
    pub data: Vec<u8>,
}

/// Parse a whole newc archive, up to (not including) its trailer.
pub fn parse(mut bytes: &[u8]) -> io::Result<Vec<Entry>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        if bytes.len() < 110 || &bytes[..6] != MAGIC {
            return Err(bad(&format!("no newc header at offset {offset}")));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).map_err(|_| bad("hex"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("bad hex field"))
        };
        let (mode, size) = (field(1)?, field(6)? as usize);
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_end = 110 + namesize;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size;
        if namesize == 0 || bytes.len() < data_end || bytes[name_end - 1] != 0 {
            return Err(bad(&format!("truncated entry at offset {offset}")));
        }
        let name = String::from_utf8_lossy(&bytes[110..name_end - 1]).into_owned();
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            mode,
            rdev,
            data: bytes[data_start..data_end].to_vec(),
        });
        let next = data_end.next_multiple_of(4).min(bytes.len());
        bytes = &bytes[next..];
        offset += next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        w.char_dev("dev/null", 0o666, 1, 3).unwrap();
        w.dir("bin", 0o755).unwrap();
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_every_kind_of_entry() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], MAGIC);
        let e = parse(&bytes).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "dev/null",
                "bin",
                "bin/hello",
                "empty",
                "bin/sh"
            ]
        );
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!((e[1].mode, e[1].rdev), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!((e[2].mode, e[2].rdev), (S_IFCHR | 0o666, (1, 3)));
        assert_eq!(e[4].mode, S_IFREG | 0o755);
        assert_eq!(e[4].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(e[5].data, b"");
        assert_eq!(
            (e[6].mode, e[6].data.as_slice()),
            (S_IFLNK | 0o777, &b"busybox"[..])
        );
    }

    #[test]
    fn header_layout_matches_newc() {
        let mut w = Writer::new(Vec::new());
        w.file("a", 0o644, b"xyz").unwrap();
        let bytes = w.finish().unwrap();
        let fields = [
            "00000001", // ino
            "000081a4", // mode 0100644
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "00000003", // filesize
            "00000000", // devmajor
            "00000000", // devminor
            "00000000", // rdevmajor
            "00000000", // rdevminor
            "00000002", // namesize, with the NUL
            "00000000", // check
        ];
        let want = format!("070701{}", fields.concat());
        assert_eq!(&bytes[..110], want.as_bytes());
        // name "a\0" ends at 112 (already aligned), data "xyz" + 1 pad, then the trailer.
        assert_eq!(&bytes[110..116], b"a\0xyz\0");
        assert_eq!(&bytes[116..122], MAGIC);
        let trailer_name = 116 + 110;
        assert_eq!(&bytes[trailer_name..trailer_name + 11], b"TRAILER!!!\0");
    }

    #[test]
    fn rejects_bad_names_and_sizes() {
        let mut w = Writer::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file_from("short", 0o644, 10, &mut &b"abc"[..]).is_err());
        assert!(parse(b"070701garbage").is_err());
    }

    /// Busybox's own cpio (from the Debian package the rig uses) lists what we wrote.
    #[test]
    fn busybox_cpio_lists_the_archive() {
        let busybox = crate::artifacts::busybox().expect("busybox-static artifact");
        let dir = crate::artifacts_dir().join(format!("cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.cpio");
        std::fs::write(&archive, sample()).unwrap();
        let out = std::process::Command::new(&busybox)
            .args(["cpio", "-t", "-v", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(out.status.success(), "{out:?}");
        let listing = String::from_utf8_lossy(&out.stdout);
        for want in [
            "drwxr-xr-x",
            "crw-------",
            "dev/console",
            "crw-rw-rw-",
            "dev/null",
            "-rwxr-xr-x",
            "bin/hello",
            "bin/sh -> busybox",
        ] {
            assert!(listing.contains(want), "want {want:?} in:\n{listing}");
        }
        assert_eq!(listing.lines().count(), 7, "{listing}");
    }
}
