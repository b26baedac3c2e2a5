//! Image locking as QEMU does it, so that Kiln, qemu-img and QEMU's VMs all see each
//! other's use of an image: two writers, or a writer and a reader that needs consistent
//! metadata, never have one image open at once.
//!
//! QEMU (block/file-posix.c) locks single bytes of the image file with open-file-
//! description (OFD) read locks, which conflict between open files, not just processes:
//! byte 100 + N while it holds permission N, and byte 200 + N while it refuses to share
//! permission N with others. The permissions are bit 0 "consistent read", 1 "write",
//! 2 "write unchanged" and 3 "resize". Before using a permission it checks that nobody
//! holds the byte at 200 + N; before refusing to share one, that nobody holds 100 + N.
//! `flock` would not do: it neither sees nor is seen by QEMU's locks. No crate implements
//! this protocol, so it is written here.
//!
//! Measured with qemu-io and qemu-system-x86_64 10 (`/proc/locks`): a qcow2 image and
//! its backing files always refuse to share write and resize (their metadata must stay
//! put); a writable qcow2 holds read, write and resize. Kiln does the same for every
//! format, which is what qemu-img's commands that read data (check, compare, convert)
//! do for raw images as well. `-U` (force share) refuses nothing and is for read-only
//! opens only.

use crate::{Error, Result};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// What other users (processes, or other opens in this one) may do with an image while
/// this open of it lasts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Share {
    /// Others may read the image but neither write nor resize it: what qemu-img and a
    /// VM's disk allow by default.
    #[default]
    Readers,
    /// Others may do anything, and nothing they hold stops this open: qemu-img's `-U`
    /// (`--force-share`). Read-only opens only; what is read may be inconsistent while
    /// someone else writes.
    Force,
}

/// Permission bits, as QEMU numbers them.
const CONSISTENT_READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const RESIZE: u8 = 1 << 3;
/// Lock-byte bases: held permissions, and permissions refused to others.
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

fn perm_name(bit: u8) -> &'static str {
    match bit {
        0 => "consistent read",
        1 => "write",
        2 => "write unchanged",
        _ => "resize",
    }
}

/// Attempts at taking an image's locks, 10 ms apart, before it counts as in use.
const LOCK_TRIES: u32 = 20;

/// Lock the open image `file` (at `path`) for a use that writes or only reads, sharing
/// what `share` says. The locks go away with the file.
pub(crate) fn lock_image(file: &File, path: &Path, writable: bool, share: Share) -> Result<()> {
    let perm = if writable {
        CONSISTENT_READ | WRITE | RESIZE
    } else {
        CONSISTENT_READ
    };
    let unshared = match share {
        Share::Readers => WRITE | RESIZE,
        Share::Force if writable => {
            return Err(Error::InvalidArgument(format!(
                "{}: force-share (-U) can only be used with read-only images",
                path.display()
            )))
        }
        Share::Force => 0,
    };
    let fd = file.as_raw_fd();
    for bit in 0..4 {
        for (mask, base) in [(perm, PERM_BASE), (unshared, SHARED_BASE)] {
            if mask & (1 << bit) != 0 {
                ofd_lock(fd, libc::F_OFD_SETLK, libc::F_RDLCK, base + i64::from(bit))
                    .map_err(|e| Error::io(format!("{}: locking the image", path.display()), e))?;
            }
        }
    }
    // A conflicting lock may belong to a child another thread of this process is
    // spawning (it holds copies of our descriptors until its exec closes them), which is
    // gone within microseconds: look a few times before calling the image busy.
    let mut tries = 0;
    loop {
        match conflict(fd, perm, unshared) {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if tries < LOCK_TRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(Some(what)) => {
                return Err(Error::Locked(format!(
                    "{}: in use by another process (failed to get {what} lock)",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(Error::io(
                    format!("{}: testing the image's locks", path.display()),
                    e,
                ))
            }
        }
    }
}

/// The first lock another open file holds against this use, in QEMU's words
/// (`"write"`, `shared "write"`).
fn conflict(fd: libc::c_int, perm: u8, unshared: u8) -> std::io::Result<Option<String>> {
    for bit in 0..4 {
        let b = 1u8 << bit;
        if perm & b != 0 && held_by_others(fd, SHARED_BASE + i64::from(bit))? {
            return Ok(Some(format!("\"{}\"", perm_name(bit))));
        }
        if unshared & b != 0 && held_by_others(fd, PERM_BASE + i64::from(bit))? {
            return Ok(Some(format!("shared \"{}\"", perm_name(bit))));
        }
    }
    Ok(None)
}

/// Whether an open file other than `fd`'s holds a lock on byte `at`.
fn held_by_others(fd: libc::c_int, at: i64) -> std::io::Result<bool> {
    let mut fl = flock_at(libc::F_WRLCK, at);
    // SAFETY: F_OFD_GETLK reads and fills in the `flock` struct it is given, which lives
    // on this stack frame for the whole call.
    let r = unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

fn ofd_lock(fd: libc::c_int, cmd: libc::c_int, kind: libc::c_int, at: i64) -> std::io::Result<()> {
    let fl = flock_at(kind, at);
    // SAFETY: F_OFD_SETLK only reads the `flock` struct, which outlives the call.
    let r = unsafe { libc::fcntl(fd, cmd, &fl) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn flock_at(kind: libc::c_int, at: i64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at;
    fl.l_len = 1;
    // OFD locks require l_pid 0 (zeroed above).
    fl
}
