//! Raw image files: device byte N is file byte N. Sparse-aware: zeroing and discarding punch
//! holes (`fallocate`), falling back to writing zeros where the file system cannot.

use crate::fileio::{file_len, open_image, read_full, sync, write_full, zero_range};
use crate::{check_range, BlockDevice, Error, Extent, Format, Result, Share};
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// A raw image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    /// The format was guessed, not named: writes may not give sector 0 another format's
    /// signature (QEMU's rule; the next probe would otherwise trust guest-written
    /// metadata, e.g. a backing file name pointing at a host file).
    probed: bool,
    /// The last region `extent` found with `lseek`, whole: (start, end, kind). On some
    /// file systems (tmpfs) SEEK_HOLE walks the page cache up to the hole, so a walk over
    /// a large data region chunk by chunk would rescan it every time (QEMU keeps the same
    /// cache for the same reason). Writes only turn holes into data, so they drop a cached
    /// hole; zeroing, discarding and resizing drop either.
    extent_cache: Option<(u64, u64, Extent)>,
}

/// Signatures at offset 0 that make a probe pick a format other than raw.
const SIGNATURES: [(&[u8], &str); 7] = [
    (b"QFI\xfb", "qcow/qcow2"),
    (b"QED\0", "qed"),
    (b"KDMV", "vmdk"),
    (b"conectix", "vpc"),
    (b"vhdxfile", "vhdx"),
    (b"LUKS\xba\xbe", "luks"),
    (b"# Disk DescriptorFile", "vmdk"),
];

impl RawFile {
    /// Open `path` as a raw image.
    pub fn open(path: &Path, read_only: bool) -> Result<RawFile> {
        Self::open_shared(path, read_only, Share::default())
    }

    /// [`open`](Self::open), letting other users of the image do what `share` says.
    pub fn open_shared(path: &Path, read_only: bool, share: Share) -> Result<RawFile> {
        let file = open_image(path, read_only, share)?;
        Self::from_file(file, read_only)
    }

    /// Use an already open file as a raw image.
    pub fn from_file(file: File, read_only: bool) -> Result<RawFile> {
        let size = file_len(&file)?;
        Ok(RawFile {
            file,
            size,
            read_only,
            probed: false,
            extent_cache: None,
        })
    }

    /// Mark this image's format as guessed (see [`crate::open`]): writes that would make
    /// sector 0 start with another format's signature then fail.
    pub fn set_probed(&mut self) {
        self.probed = true;
    }

    /// Refuse a write of `buf` at `offset` that would give a probed image another
    /// format's signature.
    fn check_signature(&self, buf: &[u8], offset: u64) -> Result<()> {
        const HEAD: u64 = 32;
        if !self.probed || offset >= HEAD || buf.is_empty() {
            return Ok(());
        }
        let mut head = [0u8; HEAD as usize];
        read_full(&self.file, &mut head, 0)?;
        let from = offset as usize;
        let n = buf.len().min(HEAD as usize - from);
        head[from..from + n].copy_from_slice(&buf[..n]);
        if let Some((_, name)) = SIGNATURES.iter().find(|(sig, _)| head.starts_with(sig)) {
            return Err(Error::ReadOnly(format!(
                "refusing a write that would give this raw image (format probed, not named) a {name} signature in sector 0; name the format raw to allow it"
            )));
        }
        Ok(())
    }

    /// Create (or truncate) `path` as a sparse raw image of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        file.set_len(size)
            .map_err(|e| Error::io(format!("{}: set length", path.display()), e))?;
        Ok(())
    }

    /// Create `path` as a raw image of `size` bytes with qemu-img's `preallocation` mode:
    /// `falloc` reserves the space, `full` writes zeros, `metadata` has no meaning for raw.
    pub fn create_preallocated(path: &Path, size: u64, mode: crate::qcow2::Prealloc) -> Result<()> {
        use crate::qcow2::Prealloc;
        if mode == Prealloc::Metadata {
            return Err(Error::InvalidArgument(
                "preallocation mode 'metadata' is for qcow2; raw images take off, falloc or full"
                    .into(),
            ));
        }
        Self::create(path, size)?;
        if mode == Prealloc::Off || size == 0 {
            return Ok(());
        }
        let ctx = path.display().to_string();
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(ctx.clone(), e))?;
        if mode == Prealloc::Falloc {
            crate::fileio::allocate(&file, 0, size).map_err(|e| e.context(&ctx))?;
        } else {
            let zeros = vec![0u8; 8 << 20];
            let mut done = 0u64;
            while done < size {
                let n = (size - done).min(zeros.len() as u64) as usize;
                crate::fileio::write_full(&file, &zeros[..n], done).map_err(|e| e.context(&ctx))?;
                done += n as u64;
            }
        }
        file.sync_all()
            .map_err(|e| Error::io(format!("{ctx}: sync"), e))
    }

    /// Change the size of the image (new space reads as zeros).
    pub fn resize(&mut self, size: u64) -> Result<()> {
        self.check_writable()?;
        self.file
            .set_len(size)
            .map_err(|e| Error::io("set length", e))?;
        self.size = size;
        self.extent_cache = None;
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly("image is open read-only".into()));
        }
        Ok(())
    }

    /// The next offset at or after `offset` where a data (`SEEK_DATA`) or hole
    /// (`SEEK_HOLE`) region starts, or None if the file system cannot tell.
    fn seek(&self, offset: u64, whence: i32) -> Option<u64> {
        let off = i64::try_from(offset).ok()?;
        // SAFETY: lseek only takes integers; the descriptor is owned by self.file. Moving
        // the file position is harmless since all our I/O is positioned (pread/pwrite).
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        u64::try_from(r).ok()
    }
}

impl BlockDevice for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> Format {
        Format::Raw
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        read_full(&self.file, buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
        self.check_signature(buf, offset)?;
        if matches!(self.extent_cache, Some((_, _, Extent::Zero))) {
            self.extent_cache = None;
        }
        write_full(&self.file, buf, offset)
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        sync(&self.file)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        check_range(offset, len, self.size)?;
        self.extent_cache = None;
        zero_range(&self.file, offset, len)
    }

    fn extent(&mut self, offset: u64, len: u64) -> Result<(Extent, u64)> {
        check_range(offset, len, self.size)?;
        let end = offset + len;
        if let Some((start, stop, kind)) = self.extent_cache {
            if (start..stop).contains(&offset) {
                return Ok((kind, stop.min(end) - offset));
            }
        }
        let (kind, stop) = match self.seek(offset, libc::SEEK_DATA) {
            // Inside a hole: it lasts until the next data (or the end of the file).
            Some(data) if data > offset => (Extent::Zero, data),
            Some(_) => match self.seek(offset, libc::SEEK_HOLE) {
                Some(hole) => (Extent::Data, hole.max(offset + 1)),
                None => return Ok((Extent::Data, len)),
            },
            // ENXIO: no data after offset at all.
            None if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => {
                (Extent::Zero, self.size)
            }
            None => return Ok((Extent::Data, len)),
        };
        self.extent_cache = Some((offset, stop, kind));
        Ok((kind, stop.min(end) - offset))
    }
}
