//! Opening images by path: format probing and backing chains (qcow2 or raw backing files,
//! names resolved against the overlay's directory, a depth limit and cycle detection).
//!
//! Probing only ever chooses between raw and qcow2 by the qcow2 magic; an image opened as
//! raw (probed or named) never opens a backing file, and a backing file whose format the
//! overlay names is opened as that format, never probed. A probed raw image refuses writes
//! that would give its sector 0 another format's signature.

use crate::qcow1::Qcow1;
use crate::qcow2::Qcow2;
use crate::raw::RawFile;
use crate::{BlockDevice, Error, Format, Result, Share};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Longest backing chain accepted (overlay not counted).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Refuse writes (backing files are always read-only).
    pub read_only: bool,
    /// The format; None probes it.
    pub format: Option<Format>,
    /// Do not open backing files (reads of unallocated clusters then return zeros).
    pub no_backing: bool,
    /// What other users may do with the image and its backing files meanwhile.
    pub share: Share,
}

/// Guess an image's format from its first bytes: qcow2 if it has the magic (qcow if the
/// version is 1), else raw.
pub fn probe(path: &Path) -> Result<Format> {
    let mut f = File::open(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(Error::io(path.display().to_string(), e)),
        }
    }
    Ok(if got == 8 && magic == *b"QFI\xfb\0\0\0\x01" {
        Format::Qcow
    } else if got >= 4 && magic[..4] == *b"QFI\xfb" {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Open `path` with its backing chain.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn BlockDevice>> {
    let mut seen = Vec::new();
    open_chain(path, opts, 0, &mut seen)
}

/// Open the internal snapshot `snapshot` (ID or name) of the qcow2 image at `path`,
/// read-only, with the image's backing chain: its disk as it was when the snapshot was
/// taken (see [`Qcow2::view_snapshot`]).
pub fn open_snapshot(path: &Path, snapshot: &str, share: Share) -> Result<Box<dyn BlockDevice>> {
    let mut img = Qcow2::open_shared(path, true, share)?;
    img.view_snapshot(snapshot)
        .map_err(|e| e.context(&path.display().to_string()))?;
    if let Some(name) = img.backing_file().map(str::to_owned) {
        let fmt = img.backing_format().map(str::to_owned);
        let canon =
            std::fs::canonicalize(path).map_err(|e| Error::io(path.display().to_string(), e))?;
        img.set_backing(open_backing(
            path,
            &name,
            fmt.as_deref(),
            share,
            1,
            &mut vec![canon],
        )?);
    }
    Ok(Box::new(img))
}

/// Where a backing file name stored in `overlay` points: relative names are relative to
/// the overlay's directory.
pub fn resolve_backing(overlay: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match overlay.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn open_chain(
    path: &Path,
    opts: &OpenOptions,
    depth: usize,
    seen: &mut Vec<PathBuf>,
) -> Result<Box<dyn BlockDevice>> {
    let canon =
        std::fs::canonicalize(path).map_err(|e| Error::io(path.display().to_string(), e))?;
    if seen.contains(&canon) {
        return Err(Error::Invalid(format!(
            "backing chain has a loop: {} appears twice",
            path.display()
        )));
    }
    if depth > MAX_CHAIN_DEPTH {
        return Err(Error::Invalid(format!(
            "backing chain is deeper than {MAX_CHAIN_DEPTH} images"
        )));
    }
    seen.push(canon);
    let format = match opts.format {
        Some(f) => f,
        None => probe(path)?,
    };
    match format {
        Format::Raw => {
            let mut raw = RawFile::open_shared(path, opts.read_only, opts.share)?;
            if opts.format.is_none() {
                raw.set_probed();
            }
            Ok(Box::new(raw))
        }
        Format::Qcow => {
            if !opts.read_only {
                return Err(Error::ReadOnly(format!(
                    "{}: qcow (version 1) images can only be opened read-only; convert to qcow2 to write",
                    path.display()
                )));
            }
            let mut img = Qcow1::open_shared(path, opts.share)?;
            if opts.no_backing {
                return Ok(Box::new(img));
            }
            if let Some(name) = img.backing_file().map(str::to_owned) {
                img.set_backing(open_backing(
                    path,
                    &name,
                    None,
                    opts.share,
                    depth + 1,
                    seen,
                )?);
            }
            Ok(Box::new(img))
        }
        Format::Qcow2 => {
            let mut img = Qcow2::open_shared(path, opts.read_only, opts.share)?;
            if opts.no_backing {
                return Ok(Box::new(img));
            }
            if let Some(name) = img.backing_file().map(str::to_owned) {
                let fmt = img.backing_format().map(str::to_owned);
                img.set_backing(open_backing(
                    path,
                    &name,
                    fmt.as_deref(),
                    opts.share,
                    depth + 1,
                    seen,
                )?);
            }
            Ok(Box::new(img))
        }
    }
}

/// Open the backing file `name` of the image at `overlay` (read-only, with its own
/// chain): resolved against the overlay's directory, as the format the overlay names or
/// probed. `depth` and `seen` continue the chain's depth limit and loop detection.
pub(crate) fn open_backing(
    overlay: &Path,
    name: &str,
    format: Option<&str>,
    share: Share,
    depth: usize,
    seen: &mut Vec<PathBuf>,
) -> Result<Box<dyn BlockDevice>> {
    let format = format
        .map(Format::from_name)
        .transpose()
        .map_err(|e| e.context(&overlay.display().to_string()))?;
    let opts = OpenOptions {
        read_only: true,
        format,
        no_backing: false,
        share,
    };
    open_chain(&resolve_backing(overlay, name), &opts, depth, seen).map_err(|e| {
        Error::Invalid(format!(
            "{}: could not open backing file: {e}",
            overlay.display()
        ))
    })
}
