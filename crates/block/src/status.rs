//! Block status across backing chains, as qemu-img reports it (`map`, `compare`,
//! `commit`, `rebase`): what one image says about a range ([`BlockStatus`]), the first
//! image of a chain that says something ([`chain_status`]), the list of files in a chain
//! ([`backing_chain`]), and resizing an image by path ([`resize_image`]).

use crate::qcow2::Qcow2;
use crate::raw::RawFile;
use crate::{resolve_backing, BlockDevice, Error, Extent, Format, Result, Share, MAX_CHAIN_DEPTH};
use std::path::{Path, PathBuf};

/// What one image of a chain says about a range starting at some offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// Bytes the status holds for (at least 1).
    pub len: u64,
    /// Allocated in this image (data or a zero marker); false: ask the backing file.
    pub allocated: bool,
    /// Reads as zeros (without reading data).
    pub zero: bool,
    /// Data is stored for the range.
    pub data: bool,
    /// The data is compressed.
    pub compressed: bool,
    /// Where the range starts in the image file, when it has a plain host location.
    pub offset: Option<u64>,
}

/// The default [`BlockDevice::block_status`]: from [`BlockDevice::extent`], with host
/// offsets equal to guest offsets for raw files.
pub(crate) fn from_extent<D: BlockDevice + ?Sized>(
    dev: &mut D,
    offset: u64,
    len: u64,
) -> Result<BlockStatus> {
    let (kind, n) = dev.extent(offset, len)?;
    let host = (dev.format() == Format::Raw).then_some(offset);
    Ok(match kind {
        Extent::Data => BlockStatus {
            len: n,
            allocated: true,
            zero: false,
            data: true,
            compressed: false,
            offset: host,
        },
        Extent::Zero => BlockStatus {
            len: n,
            allocated: dev.format() == Format::Raw,
            zero: true,
            data: false,
            compressed: false,
            offset: host,
        },
        Extent::Backing => BlockStatus {
            len: n,
            allocated: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
        },
    })
}

/// The status of the range at `offset` (at most `len` bytes, `len > 0`) as the chain
/// under `dev` sees it: the first image (depth 0 = `dev`) whose status is allocated or
/// zero, or the bottom image. Returns (depth, status).
pub fn chain_status(
    dev: &mut dyn BlockDevice,
    offset: u64,
    len: u64,
) -> Result<(u32, BlockStatus)> {
    let st = dev.block_status(offset, len)?;
    if st.allocated || st.zero {
        return Ok((0, st));
    }
    match dev.backing_mut() {
        Some(b) if offset < b.size() => {
            let n = st.len.min(b.size() - offset);
            let (d, s) = chain_status(b, offset, n)?;
            Ok((d + 1, s))
        }
        _ => Ok((0, st)),
    }
}

/// One image of a backing chain.
#[derive(Debug, Clone)]
pub struct ChainLink {
    /// Its path (backing names resolved against the overlay's directory).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
}

/// The files of the chain starting at `path` (top first), reading only headers.
pub fn backing_chain(path: &Path, format: Option<Format>) -> Result<Vec<ChainLink>> {
    let mut out = Vec::new();
    let mut cur = path.to_path_buf();
    let mut fmt = format;
    loop {
        if out.len() > MAX_CHAIN_DEPTH {
            return Err(Error::Invalid(format!(
                "backing chain is deeper than {MAX_CHAIN_DEPTH} images"
            )));
        }
        let f = match fmt {
            Some(f) => f,
            None => crate::probe(&cur)?,
        };
        out.push(ChainLink {
            path: cur.clone(),
            format: f,
        });
        if f != Format::Qcow2 {
            return Ok(out);
        }
        let img = Qcow2::open(&cur, true)?;
        let Some(name) = img.backing_file() else {
            return Ok(out);
        };
        let next = resolve_backing(&cur, name);
        fmt = match img.backing_format() {
            Some(b) => {
                Some(Format::from_name(b).map_err(|e| e.context(&cur.display().to_string()))?)
            }
            None => None,
        };
        cur = next;
    }
}

/// Open a qcow2 image for writing with its backing chain attached (read-only).
pub fn open_qcow2_rw(path: &Path) -> Result<Qcow2> {
    let mut img = Qcow2::open(path, false)?;
    if let Some(name) = img.backing_file().map(str::to_owned) {
        let fmt = img.backing_format().map(str::to_owned);
        let canon =
            std::fs::canonicalize(path).map_err(|e| Error::io(path.display().to_string(), e))?;
        let b = crate::open::open_backing(
            path,
            &name,
            fmt.as_deref(),
            Share::default(),
            1,
            &mut vec![canon],
        )?;
        img.set_backing(b);
    }
    Ok(img)
}

/// Resize the image at `path` to `size` bytes; shrinking only with `shrink`.
pub fn resize_image(path: &Path, format: Format, size: u64, shrink: bool) -> Result<()> {
    match format {
        Format::Raw => {
            let mut f = RawFile::open(path, false)?;
            if size < f.size() && !shrink {
                return Err(Error::InvalidArgument(
                    "Use the --shrink option to perform a shrink operation.".into(),
                ));
            }
            f.resize(size)?;
            f.flush()
        }
        Format::Qcow2 => {
            let ctx = path.display().to_string();
            let mut img = open_qcow2_rw(path)?;
            img.resize(size, shrink).map_err(|e| e.context(&ctx))
        }
        Format::Qcow => Err(Error::Unsupported(format!(
            "{}: qcow (version 1) images are read-only; convert to qcow2 to resize",
            path.display()
        ))),
    }
}
