//! Positioned file I/O helpers shared by the formats: opening an image with its lock,
//! whole-buffer reads that see zeros past the end of the file, whole-buffer writes,
//! `fdatasync`, and hole punching via `fallocate`.

use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Open an image file and lock it: exclusively when it is opened for writing, shared
/// when read-only, so two writers (or a writer and a reader) cannot use one image at
/// once and corrupt it. The lock (`flock`) goes away with the file.
pub(crate) fn open_image(path: &Path, read_only: bool) -> Result<File> {
    let ctx = || path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| Error::io(ctx(), e))?;
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock only reads the descriptor number, which `file` keeps open.
    let r = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Locked(format!(
                "{}: in use by another process (it holds the image's {} lock)",
                ctx(),
                if read_only { "write" } else { "read or write" }
            )));
        }
        return Err(Error::io(ctx(), e));
    }
    Ok(file)
}

/// Read `buf.len()` bytes at `offset`; bytes past the end of the file read as zeros.
pub(crate) fn read_full(file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::io(
                    format!("read at offset {}", offset + done as u64),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Write all of `buf` at `offset`.
pub(crate) fn write_full(file: &File, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(|e| Error::io(format!("write at offset {offset}"), e))
}

/// `fdatasync` the file.
pub(crate) fn sync(file: &File) -> Result<()> {
    file.sync_data().map_err(|e| Error::io("fdatasync", e))
}

/// The file's length in bytes.
pub(crate) fn file_len(file: &File) -> Result<u64> {
    Ok(file.metadata().map_err(|e| Error::io("stat", e))?.len())
}

/// Deallocate `len` bytes at `offset` so they read as zeros, keeping the file size.
/// Returns false when the file system cannot punch holes.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(Error::InvalidArgument(format!(
            "range {offset}+{len} too large"
        )));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file`,
    // which outlives the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
        _ => Err(Error::io(format!("punch hole at offset {offset}"), e)),
    }
}

/// Make `len` bytes at `offset` read as zeros: punch a hole, or write zeros if the file
/// system cannot.
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> Result<()> {
    let flen = file_len(file)?;
    // Only the part inside the file needs work: past its end it already reads as zeros.
    let end = (offset + len).min(flen);
    if end <= offset {
        return Ok(());
    }
    if punch_hole(file, offset, end - offset)? {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = offset;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        write_full(file, &zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
