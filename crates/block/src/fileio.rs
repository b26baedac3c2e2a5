//! Positioned file I/O helpers shared by the formats: opening an image with its locks,
//! whole-buffer reads that see zeros past the end of the file, whole-buffer writes,
//! `fdatasync`, and hole punching via `fallocate`.
//!
//! # Test hook (crash-safety tests only)
//!
//! Writes of qcow2 metadata (header, L1, L2, refcount table and blocks, snapshot table) go
//! through [`write_meta`], guest data through [`write_full`]. Two environment variables,
//! read once per process, turn on a hook used by the crash tests; when neither is set the
//! hook costs one initialised-`OnceLock` load per write:
//! - `KILN_BLOCK_KILL_AT_META_WRITE=N`: the process sends itself `SIGKILL` just before its
//!   N-th metadata write (1-based), as an abrupt crash at that point;
//! - `KILN_BLOCK_TRACE=FILE`: append a record of every completed write, hole punch and
//!   `fdatasync` to FILE, so a test can replay the writes and drop the ones no flush
//!   covered (a power-loss model). A record is a tag byte, two big-endian u64 and, for
//!   writes, the bytes: `W` data write and `M` metadata write (offset, length, bytes),
//!   `P` hole punch (offset, length), `S` fdatasync (0, 0). Other tags are free for the tests' own markers.

use crate::lock::{lock_image, Share};
use crate::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The crash-test hook's settings (see the module docs).
struct Hook {
    kill_at: Option<u64>,
    trace: Option<Mutex<File>>,
}

static HOOK: OnceLock<Option<Hook>> = OnceLock::new();
static META_WRITES: AtomicU64 = AtomicU64::new(0);

fn hook() -> Option<&'static Hook> {
    HOOK.get_or_init(|| {
        let kill_at = std::env::var("KILN_BLOCK_KILL_AT_META_WRITE")
            .ok()
            .and_then(|v| v.parse().ok());
        let trace = std::env::var_os("KILN_BLOCK_TRACE").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        });
        (kill_at.is_some() || trace.is_some()).then_some(Hook { kill_at, trace })
    })
    .as_ref()
}

/// Append one record to the `KILN_BLOCK_TRACE` file, if tracing is on.
fn trace(tag: u8, a: u64, b: u64, bytes: &[u8]) {
    if let Some(t) = hook().and_then(|h| h.trace.as_ref()) {
        let mut rec = Vec::with_capacity(17 + bytes.len());
        rec.push(tag);
        rec.extend_from_slice(&a.to_be_bytes());
        rec.extend_from_slice(&b.to_be_bytes());
        rec.extend_from_slice(bytes);
        let mut f = t.lock().unwrap_or_else(|e| e.into_inner());
        // A failing trace must not go unnoticed: the test would check the wrong thing.
        f.write_all(&rec)
            .expect("KILN_BLOCK_TRACE: cannot append to the trace file");
    }
}

/// Write qcow2 metadata: [`write_full`], counted by the crash-test hook.
pub(crate) fn write_meta(file: &File, buf: &[u8], offset: u64) -> Result<()> {
    if let Some(n) = hook().and_then(|h| h.kill_at) {
        if META_WRITES.fetch_add(1, Ordering::SeqCst) + 1 == n {
            // SAFETY: getpid and kill take plain integers; SIGKILL ends the process here.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
    write_tagged(file, buf, offset, b'M')
}

/// Open an image file and lock it the way QEMU does ([`crate::lock`]): for writing,
/// nobody else may use it; for reading, nobody else may write it unless `share` says so.
pub(crate) fn open_image(path: &Path, read_only: bool, share: Share) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| Error::io(path.display().to_string(), e))?;
    lock_image(&file, path, !read_only, share)?;
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
    write_tagged(file, buf, offset, b'W')
}

fn write_tagged(file: &File, buf: &[u8], offset: u64, tag: u8) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(|e| Error::io(format!("write at offset {offset}"), e))?;
    trace(tag, offset, buf.len() as u64, buf);
    Ok(())
}

/// `fdatasync` the file.
pub(crate) fn sync(file: &File) -> Result<()> {
    file.sync_data().map_err(|e| Error::io("fdatasync", e))?;
    trace(b'S', 0, 0, &[]);
    Ok(())
}

/// The size of an image file, or of a block device (an LVM volume, a partition, a loop
/// device), whose size `stat` does not give.
pub fn file_len(file: &File) -> Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata().map_err(|e| Error::io("stat", e))?;
    if meta.file_type().is_block_device() {
        // The reads and writes are positioned (pread/pwrite), so moving the file
        // position here changes nothing else.
        let mut f: &File = file;
        return std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
            .map_err(|e| Error::io("finding the size of the block device", e));
    }
    Ok(meta.len())
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
        trace(b'P', offset, len, &[]);
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

/// Reserve `len` bytes at `offset` in the file system (`fallocate`, keeping the size
/// unchanged only where the range lies inside the file).
pub(crate) fn allocate(file: &File, offset: u64, len: u64) -> Result<()> {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(Error::InvalidArgument("allocation range too large".into()));
    };
    // SAFETY: fallocate only reads the descriptor number (kept open by `file`) and the
    // range; it touches no memory of ours.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, off, n) };
    if r != 0 {
        return Err(Error::io(
            format!("fallocate {len} bytes at offset {offset}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
