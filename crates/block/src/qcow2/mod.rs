//! qcow2, written from QEMU's `docs/interop/qcow2.txt`: open (v2/v3), reads through the
//! L1/L2 tables with an L2 cache, and (in [`write`]) allocating writes in QEMU's
//! crash-safe order; `write_extl2` does the same for extended L2 entries (subclusters)
//! and `compress` writes compressed clusters (zlib, zstd).
//!
//! Metadata is cached write-back (see [`meta_cache`]): between flushes a crash may lose
//! unflushed writes, but the order below holds for everything that reaches the disk,
//! enforced when metadata is written out (flush, close, eviction, eager operations).
//!
//! Crash-safety rules kept by every write path:
//! - refcount increments reach the disk (and are flushed) before any L1/L2 entry points
//!   to the cluster;
//! - guest data and new L2 tables are written and flushed before the entries that point
//!   to them;
//! - references are removed (and flushed) before refcounts drop;
//! - the refcount table grows by writing a new table elsewhere and then switching the
//!   header to it;
//! - no write lands on metadata: an overlap marks the image corrupt and fails.
//!
//! Lazy refcounts, dirty images and refcount repair: see [`repair`].

mod amend;
mod bitmaps;
mod cache;
pub mod check;
mod compress;
mod create;
pub mod header;
mod header_update;
pub mod measure;
mod meta_cache;
mod prealloc;
mod refcount;
pub mod repair;
mod resize;
pub mod snapshot;
mod snapshot_ops;
mod snapshot_view;
mod status;
mod unmap;
mod write;
mod write_extl2;

pub use amend::AmendOptions;
pub use bitmaps::Bitmap;
pub use create::{create, CreateOptions};
pub use header::{Compression, Header};
pub use prealloc::Prealloc;

use crate::fileio::{file_len, read_full, sync};
use crate::{check_range, BlockDevice, BlockStatus, Error, Extent, Format, Result, Share};
use cache::Cache;
use header::INCOMPAT_CORRUPT;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

/// L1 entry: the L2 table offset.
pub(crate) const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 (standard) entry: the host cluster offset.
pub(crate) const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1/L2 entry: refcount is exactly one, the cluster may be written in place.
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
/// L2 entry: compressed cluster.
pub(crate) const OFLAG_COMPRESSED: u64 = 1 << 62;
/// L2 entry (standard): the cluster reads as zeros.
pub(crate) const OFLAG_ZERO: u64 = 1;

/// Most lookups one [`BlockDevice::extent`] call makes before it answers.
const MAX_EXTENT_STEPS: usize = 1 << 16;

/// Largest L2 cache QEMU sizes by default on Linux (`l2-cache-size`).
pub const MAX_DEFAULT_L2_CACHE: u64 = 32 << 20;

/// L2 tables cached by default, by QEMU's rule: enough to cover the whole disk, at most
/// [`MAX_DEFAULT_L2_CACHE`] bytes, at least two tables.
fn default_l2_cache_tables(h: &Header, cluster_size: u64) -> usize {
    let covered_per_table = h.l2_entries() * cluster_size;
    let needed = h.size.div_ceil(covered_per_table);
    l2_cache_tables(
        needed
            .saturating_mul(cluster_size)
            .min(MAX_DEFAULT_L2_CACHE),
        cluster_size,
    )
}

/// L2 tables in a cache of `bytes` (at least two, as QEMU).
fn l2_cache_tables(bytes: u64, cluster_size: u64) -> usize {
    (bytes / cluster_size).clamp(2, 1 << 20) as usize
}

/// Where the bytes of a piece of a guest cluster come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Not allocated in this image: backing file or zeros.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster (0: none).
    Zero {
        /// Preallocated host cluster, or 0.
        host: u64,
    },
    /// Plain data at this host offset (of the cluster start).
    Data {
        /// Host offset of the cluster.
        host: u64,
        /// Whether the COPIED flag is set.
        copied: bool,
    },
    /// A compressed cluster.
    Compressed {
        /// Host byte offset of the compressed data.
        offset: u64,
        /// Bytes of compressed data (upper bound, sector granular).
        size: u64,
    },
}

/// An open qcow2 image.
pub struct Qcow2 {
    file: File,
    path: PathBuf,
    h: Header,
    read_only: bool,
    cluster_size: u64,
    l1: Vec<u64>,
    l2_cache: Cache<Vec<u64>>,
    reftable: Vec<u64>,
    refblock_cache: Cache<Vec<u8>>,
    backing: Option<Box<dyn BlockDevice>>,
    /// Host cluster indices of L2 tables and refcount blocks (for overlap checks).
    meta: HashSet<u64>,
    /// Where the search for free clusters starts.
    free_hint: u64,
    /// The last decompressed cluster: (host offset of the compressed data, bytes).
    zcache: Option<(u64, Vec<u8>)>,
    /// Internal snapshots (see [`snapshot`]).
    snapshots: Vec<snapshot::Snapshot>,
    /// Bytes of the snapshot table.
    snapshots_size: u64,
    /// Lazy refcounts: None while we have not set the dirty bit, Some(true) once set,
    /// Some(false) after a failed change (the bit then stays set at close).
    dirty_marked: Option<bool>,
    /// Where the next compressed cluster's bytes go (0: start a new host cluster).
    zfree: u64,
    /// Write-back metadata state (see [`meta_cache`]).
    wb: meta_cache::WriteBack,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("path", &self.path)
            .field("header", &self.h)
            .finish_non_exhaustive()
    }
}

pub(crate) fn read_be64s(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

impl Qcow2 {
    /// Open a qcow2 image without its backing file (see [`crate::open`] for chains).
    pub fn open(path: &Path, read_only: bool) -> Result<Qcow2> {
        Self::open_shared(path, read_only, Share::default())
    }

    /// [`open`](Self::open), letting other users of the image do what `share` says.
    pub fn open_shared(path: &Path, read_only: bool, share: Share) -> Result<Qcow2> {
        let ctx = path.display().to_string();
        let file = crate::fileio::open_image(path, read_only, share)?;
        Self::from_file(file, path, read_only).map_err(|e| e.context(&ctx))
    }

    /// Open from `file`; a dirty image opened read-write is repaired first (see [`repair`]).
    pub(crate) fn from_file(file: File, path: &Path, read_only: bool) -> Result<Qcow2> {
        let mut img = Self::load(file, path, read_only, false)?;
        if !read_only {
            img.clear_autoclear()?;
        }
        if !read_only && img.h.incompatible_features & header::INCOMPAT_DIRTY != 0 {
            img.repair_dirty()?;
        }
        Ok(img)
    }

    /// Open read-write without repairing a dirty image, even if it is marked corrupt
    /// (for `check -r`).
    pub(crate) fn from_file_no_repair(file: File, path: &Path) -> Result<Qcow2> {
        // A repair changes refcounts, not data: persistent bitmaps stay true, so the
        // autoclear bits stay (and the check counts the bitmaps' clusters).
        Self::load(file, path, false, true)
    }

    fn load(file: File, path: &Path, read_only: bool, allow_corrupt: bool) -> Result<Qcow2> {
        let mut first = vec![0u8; 4096];
        read_full(&file, &mut first, 0)?;
        // Cluster bits first, so the whole header cluster can be read.
        let cluster_bits = u32::from_be_bytes(first[20..24].try_into().unwrap());
        if (13..=21).contains(&cluster_bits) {
            first = vec![0u8; 1 << cluster_bits];
            read_full(&file, &mut first, 0)?;
        }
        let h = Header::parse(&first)?;
        let cluster_size = h.cluster_size();
        if !read_only && !allow_corrupt && h.incompatible_features & INCOMPAT_CORRUPT != 0 {
            return Err(Error::Corrupt(
                "image is marked corrupt; it can only be opened read-only".into(),
            ));
        }
        let flen = file_len(&file)?;
        let l1_bytes = u64::from(h.l1_size) * 8;
        if h.l1_size > 0 && h.l1_table_offset >= flen {
            return Err(Error::Invalid(
                "L1 table lies beyond the end of the file".into(),
            ));
        }
        let mut buf = vec![0u8; l1_bytes as usize];
        read_full(&file, &mut buf, h.l1_table_offset)?;
        let l1 = read_be64s(&buf);
        let rt_bytes = u64::from(h.refcount_table_clusters) * cluster_size;
        if h.refcount_table_offset >= flen {
            return Err(Error::Invalid(
                "refcount table lies beyond the end of the file".into(),
            ));
        }
        let mut buf = vec![0u8; rt_bytes as usize];
        read_full(&file, &mut buf, h.refcount_table_offset)?;
        let reftable = read_be64s(&buf);
        let mut meta = HashSet::new();
        for (i, e) in l1.iter().enumerate() {
            let off = e & L1_OFFSET_MASK;
            if off != 0 {
                if !off.is_multiple_of(cluster_size) {
                    return Err(Error::Corrupt(format!(
                        "L2 table offset {off:#x} (L1 index {i}) is not cluster aligned"
                    )));
                }
                meta.insert(off / cluster_size);
            }
        }
        for (i, e) in reftable.iter().enumerate() {
            let off = e & !0x1ff;
            if off != 0 {
                if !off.is_multiple_of(cluster_size) {
                    return Err(Error::Corrupt(format!(
                        "refcount block offset {off:#x} (index {i}) is not cluster aligned"
                    )));
                }
                meta.insert(off / cluster_size);
            }
        }
        // Tables past the end of the file would be created by our own writes: refuse to
        // write to such an image rather than grow the file to wherever they point.
        if !read_only {
            if let Some(&c) = meta.iter().find(|&&c| c * cluster_size >= flen) {
                return Err(Error::Corrupt(format!(
                    "metadata cluster at offset {:#x} lies beyond the end of the file; open read-only or repair it",
                    c * cluster_size
                )));
            }
        }
        let (snapshots, snapshots_size) = snapshot::read_table(&file, &h, flen)?;
        if !read_only {
            for sn in &snapshots {
                sn.validate_l1(cluster_size, flen)?;
            }
        }
        let l2_tables = meta_cache::cache_tables_override()
            .unwrap_or_else(|| default_l2_cache_tables(&h, cluster_size));
        let cache_tables = meta_cache::cache_tables_override()
            .unwrap_or(((8u64 << 20) / cluster_size).clamp(4, 256) as usize);
        Ok(Qcow2 {
            file,
            path: path.to_path_buf(),
            read_only,
            cluster_size,
            l1,
            l2_cache: Cache::new(l2_tables),
            reftable,
            refblock_cache: Cache::new(cache_tables),
            backing: None,
            meta,
            free_hint: 0,
            zcache: None,
            snapshots,
            snapshots_size,
            dirty_marked: None,
            zfree: 0,
            wb: meta_cache::WriteBack::default(),
            h,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.h
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backing file name as stored in the image.
    pub fn backing_file(&self) -> Option<&str> {
        self.h.backing_file.as_deref()
    }

    /// The backing format from the header extension.
    pub fn backing_format(&self) -> Option<&str> {
        self.h.backing_format.as_deref()
    }

    /// Attach the (read-only) backing device.
    pub fn set_backing(&mut self, backing: Box<dyn BlockDevice>) {
        self.backing = Some(backing);
    }

    /// Load the L2 table at `off` through the cache.
    fn l2_table(&mut self, off: u64) -> Result<&mut Vec<u64>> {
        if !self.l2_cache.contains(off) {
            self.before_load(true)?;
            let mut buf = vec![0u8; self.cluster_size as usize];
            read_full(&self.file, &mut buf, off)?;
            self.l2_cache.insert(off, read_be64s(&buf));
        }
        Ok(self.l2_cache.get_mut(off).expect("just inserted"))
    }

    /// Index of the L1 entry and of the L2 entry for guest offset `guest`.
    fn indices(&self, guest: u64) -> (usize, usize) {
        let cluster = guest >> self.h.cluster_bits;
        let l2e = self.h.l2_entries();
        ((cluster / l2e) as usize, (cluster % l2e) as usize)
    }

    /// The raw (first 64 bits, bitmap) L2 entry for `guest`, or None without an L2 table.
    fn l2_entry(&mut self, guest: u64) -> Result<Option<(u64, u64)>> {
        let (i1, i2) = self.indices(guest);
        let Some(&l1e) = self.l1.get(i1) else {
            return Ok(None);
        };
        let off = l1e & L1_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        let ext = self.h.extended_l2();
        let t = self.l2_table(off)?;
        Ok(Some(if ext {
            (t[2 * i2], t[2 * i2 + 1])
        } else {
            (t[i2], 0)
        }))
    }

    /// Decode where guest offset `guest` lives, and for how many bytes from `guest` that
    /// holds (to the end of its cluster, or subcluster with extended L2; without an L2
    /// table, to the end of the range that table would cover).
    pub(crate) fn lookup(&mut self, guest: u64) -> Result<(Mapping, u64)> {
        let cs = self.cluster_size;
        let in_cluster = guest % cs;
        let to_cluster_end = cs - in_cluster;
        let Some((e, bitmap)) = self.l2_entry(guest)? else {
            let span = self.h.l2_entries() * cs;
            return Ok((Mapping::Unallocated, span - guest % span));
        };
        if e & OFLAG_COMPRESSED != 0 {
            let shift = 62 - (self.h.cluster_bits - 8);
            let mask = (1u64 << (self.h.cluster_bits - 8)) - 1;
            let offset = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & mask) + 1;
            let size = sectors * 512 - (offset & 511);
            return Ok((Mapping::Compressed { offset, size }, to_cluster_end));
        }
        let host = e & L2_OFFSET_MASK;
        if !host.is_multiple_of(cs) {
            return Err(Error::Corrupt(format!(
                "cluster offset {host:#x} for guest offset {guest:#x} is not cluster aligned"
            )));
        }
        let copied = e & OFLAG_COPIED != 0;
        if self.h.extended_l2() {
            let sc_size = cs / 32;
            let sc = in_cluster / sc_size;
            let len = sc_size - in_cluster % sc_size;
            let alloc = bitmap >> sc & 1 != 0;
            let zero = bitmap >> (32 + sc) & 1 != 0;
            return match (alloc, zero) {
                (true, true) => Err(Error::Corrupt(format!(
                    "subcluster at guest offset {guest:#x} is both allocated and zero"
                ))),
                (true, false) if host == 0 => Err(Error::Corrupt(format!(
                    "allocated subcluster at guest offset {guest:#x} has no host cluster"
                ))),
                (true, false) => Ok((Mapping::Data { host, copied }, len)),
                (false, true) => Ok((Mapping::Zero { host }, len)),
                (false, false) => Ok((Mapping::Unallocated, len)),
            };
        }
        if e & OFLAG_ZERO != 0 {
            return Ok((Mapping::Zero { host }, to_cluster_end));
        }
        if host == 0 {
            return Ok((Mapping::Unallocated, to_cluster_end));
        }
        Ok((Mapping::Data { host, copied }, to_cluster_end))
    }

    /// Read guest bytes that are not allocated here: from the backing file, zeros past it.
    fn read_backing(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(b) = self.backing.as_mut() else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.size();
        let n = bsize.saturating_sub(offset).min(buf.len() as u64) as usize;
        if n > 0 {
            b.read_at(&mut buf[..n], offset)?;
        }
        buf[n..].fill(0);
        Ok(())
    }

    /// The decompressed contents of a compressed cluster.
    fn decompress(&mut self, offset: u64, size: u64) -> Result<&[u8]> {
        if self.zcache.as_ref().map(|z| z.0) != Some(offset) {
            let flen = file_len(&self.file)?;
            let avail = flen.saturating_sub(offset).min(size);
            let mut input = vec![0u8; avail as usize];
            read_full(&self.file, &mut input, offset)?;
            let mut out = vec![0u8; self.cluster_size as usize];
            compress::decompress_cluster(self.h.compression, &input, &mut out).map_err(|e| {
                Error::Corrupt(format!(
                    "compressed cluster at host offset {offset:#x}: {e}"
                ))
            })?;
            self.zcache = Some((offset, out));
        }
        Ok(&self.zcache.as_ref().expect("filled").1)
    }

    /// Fill `buf` with the guest's view at `offset` (no range check).
    pub(crate) fn read_guest(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        // A pending run of contiguous host data: (buf start, host offset, length).
        let mut run: Option<(usize, u64, usize)> = None;
        while done < buf.len() {
            let guest = offset + done as u64;
            let (m, len) = self.lookup(guest)?;
            let n = (len as usize).min(buf.len() - done);
            let in_cluster = guest % self.cluster_size;
            if let Mapping::Data { host, .. } = m {
                if !self.within_file(host)? {
                    return Err(Error::Corrupt(format!(
                        "data cluster at host offset {host:#x} (guest offset {guest:#x}) lies beyond the end of the file"
                    )));
                }
                let h = host + in_cluster;
                match run {
                    Some((s, rh, rl)) if rh + rl as u64 == h => run = Some((s, rh, rl + n)),
                    _ => {
                        if let Some((s, rh, rl)) = run.take() {
                            read_full(&self.file, &mut buf[s..s + rl], rh)?;
                        }
                        run = Some((done, h, n));
                    }
                }
                done += n;
                continue;
            }
            if let Some((s, rh, rl)) = run.take() {
                read_full(&self.file, &mut buf[s..s + rl], rh)?;
            }
            let out = &mut buf[done..done + n];
            match m {
                Mapping::Unallocated => self.read_backing(out, guest)?,
                Mapping::Zero { .. } => out.fill(0),
                Mapping::Compressed { offset: zoff, size } => {
                    let data = self.decompress(zoff, size)?;
                    out.copy_from_slice(&data[in_cluster as usize..in_cluster as usize + n]);
                }
                Mapping::Data { .. } => unreachable!("handled above"),
            }
            done += n;
        }
        if let Some((s, rh, rl)) = run {
            read_full(&self.file, &mut buf[s..s + rl], rh)?;
        }
        Ok(())
    }

    /// Set the corrupt bit on disk (v3) so the image is only opened read-only from now on.
    pub(crate) fn mark_corrupt(&mut self) {
        if self.h.version < 3 || self.read_only {
            return;
        }
        self.h.incompatible_features |= INCOMPAT_CORRUPT;
        let v = self.h.incompatible_features.to_be_bytes();
        let _ = crate::fileio::write_meta(&self.file, &v, 72).and_then(|_| sync(&self.file));
    }
}

impl BlockDevice for Qcow2 {
    fn set_l2_cache_size(&mut self, bytes: u64) -> Result<()> {
        // Dirty tables go out first; the new cache starts empty.
        self.flush_meta()?;
        self.l2_cache = Cache::new(l2_cache_tables(bytes, self.cluster_size));
        Ok(())
    }

    fn size(&self) -> u64 {
        self.h.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.h.size)?;
        self.read_guest(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.h.size)?;
        self.before_change()?;
        let r = self.write_guest(buf, offset);
        self.after_change(&r);
        r
    }

    fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush_meta()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.h.size)?;
        self.before_change()?;
        let r = self.zero_guest(offset, len);
        self.after_change(&r);
        r
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.h.size)?;
        self.before_change()?;
        let r = self.zero_guest(offset, len);
        self.after_change(&r);
        r
    }

    fn extent(&mut self, offset: u64, len: u64) -> Result<(Extent, u64)> {
        check_range(offset, len, self.h.size)?;
        let mut done = 0;
        let mut kind = None;
        // A bounded walk: a hostile image can make every lookup a one-cluster step over
        // an exabyte; the caller asks again from where this answer ends.
        let mut steps = 0;
        while done < len && steps < MAX_EXTENT_STEPS {
            steps += 1;
            let (m, mut n) = self.lookup(offset + done)?;
            let k = match m {
                Mapping::Unallocated => {
                    let bsize = self.backing.as_ref().map_or(0, |b| b.size());
                    if offset + done >= bsize {
                        Extent::Zero
                    } else {
                        // The part past the backing file's end reads as zeros.
                        n = n.min(bsize - (offset + done));
                        Extent::Backing
                    }
                }
                Mapping::Zero { .. } => Extent::Zero,
                _ => Extent::Data,
            };
            if *kind.get_or_insert(k) != k {
                break;
            }
            done += n.min(len - done);
        }
        Ok((kind.unwrap_or(Extent::Data), done))
    }

    fn block_status(&mut self, offset: u64, len: u64) -> Result<BlockStatus> {
        check_range(offset, len, self.h.size)?;
        self.status_at(offset, len)
    }

    fn backing_mut(&mut self) -> Option<&mut dyn BlockDevice> {
        match self.backing.as_mut() {
            Some(b) => Some(b.as_mut()),
            None => None,
        }
    }
}
