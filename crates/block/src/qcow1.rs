//! Legacy qcow (version 1) images, read-only: the 48-byte header, the L1/L2 tables
//! (`cluster_bits`, `l2_bits`), plain and zlib-compressed clusters, and the backing file.
//! Written from the layout QEMU's `block/qcow.c` reads; encrypted images (AES, `crypt_method`
//! 1) are refused, as are writes of any kind: convert such images to qcow2 to change them.
//!
//! Header (big-endian): magic `QFI\xfb`, version 1, backing file offset (u64) and size
//! (u32), mtime (u32), size in bytes (u64), cluster_bits (u8, 9..=16), l2_bits (u8,
//! 6..=13: L2 tables of 512 B to 64 KiB), padding (u16), crypt_method (u32), L1 table
//! offset (u64). L1 entries are plain L2 table offsets; L2 entries are host offsets of data
//! clusters, or, with bit 63 set, compressed clusters: the low `63 - cluster_bits` bits
//! are the byte offset and the bits above it (below bit 63) the compressed size in bytes.

use crate::fileio::{file_len, read_full};
use crate::{check_range, BlockDevice, Error, Extent, Format, Result, Share};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Header size in bytes.
const HEADER_LEN: usize = 48;
/// L2 entry: compressed cluster.
const OFLAG_COMPRESSED: u64 = 1 << 63;
/// Largest L1 table accepted, in bytes.
const MAX_L1_BYTES: u64 = 32 << 20;
/// L2 tables kept in memory.
const L2_CACHE_TABLES: usize = 64;

/// An open qcow (version 1) image.
pub struct Qcow1 {
    file: File,
    path: PathBuf,
    size: u64,
    cluster_bits: u32,
    l2_bits: u32,
    l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
    backing_file: Option<String>,
    backing: Option<Box<dyn BlockDevice>>,
    /// The last decompressed cluster: (L2 entry, bytes).
    zcache: Option<(u64, Vec<u8>)>,
}

impl std::fmt::Debug for Qcow1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow1")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("cluster_bits", &self.cluster_bits)
            .finish_non_exhaustive()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Where a guest cluster's data lives.
enum Where {
    Unallocated,
    Data(u64),
    Compressed { offset: u64, size: u64, entry: u64 },
}

impl Qcow1 {
    /// Open a qcow image read-only, without its backing file (see [`crate::open`]).
    pub fn open(path: &Path) -> Result<Qcow1> {
        Self::open_shared(path, Share::default())
    }

    /// [`open`](Self::open), letting other users of the image do what `share` says.
    pub fn open_shared(path: &Path, share: Share) -> Result<Qcow1> {
        let ctx = path.display().to_string();
        let file = crate::fileio::open_image(path, true, share)?;
        Self::from_file(file, path).map_err(|e| e.context(&ctx))
    }

    pub(crate) fn from_file(file: File, path: &Path) -> Result<Qcow1> {
        let mut h = [0u8; HEADER_LEN];
        read_full(&file, &mut h, 0)?;
        if be32(&h, 0) != 0x5146_49fb {
            return Err(Error::Invalid("not a qcow image (bad magic)".into()));
        }
        let version = be32(&h, 4);
        if version != 1 {
            return Err(Error::Unsupported(format!(
                "unsupported qcow version {version}"
            )));
        }
        let backing_file_offset = be64(&h, 8);
        let backing_file_size = be32(&h, 16);
        let size = be64(&h, 24);
        let cluster_bits = u32::from(h[32]);
        let l2_bits = u32::from(h[33]);
        let crypt_method = be32(&h, 36);
        let l1_table_offset = be64(&h, 40);
        if crypt_method != 0 {
            return Err(Error::Unsupported(
                "encrypted qcow images are not supported".into(),
            ));
        }
        if !(9..=16).contains(&cluster_bits) {
            return Err(Error::Invalid(format!(
                "cluster size 2^{cluster_bits} out of range (512 B to 64 KiB)"
            )));
        }
        if !(6..=13).contains(&l2_bits) {
            return Err(Error::Invalid(format!(
                "L2 table size 2^{} out of range (512 B to 64 KiB)",
                l2_bits + 3
            )));
        }
        if size > 1 << 61 {
            return Err(Error::Invalid(format!("virtual size {size} too large")));
        }
        let shift = cluster_bits + l2_bits;
        let l1_size = size.div_ceil(1 << shift);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Error::Invalid("L1 table too large".into()));
        }
        let flen = file_len(&file)?;
        if l1_size > 0 && l1_table_offset.saturating_add(l1_size * 8) > flen {
            return Err(Error::Invalid(
                "L1 table lies beyond the end of the file".into(),
            ));
        }
        let mut buf = vec![0u8; (l1_size * 8) as usize];
        read_full(&file, &mut buf, l1_table_offset)?;
        let l1 = buf
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        let mut backing_file = None;
        if backing_file_offset != 0 {
            if backing_file_size > 1023 {
                return Err(Error::Invalid("backing file name too long".into()));
            }
            if backing_file_offset.saturating_add(u64::from(backing_file_size)) > flen {
                return Err(Error::Invalid(
                    "backing file name lies beyond the end of the file".into(),
                ));
            }
            let mut name = vec![0u8; backing_file_size as usize];
            read_full(&file, &mut name, backing_file_offset)?;
            let name = String::from_utf8(name)
                .map_err(|_| Error::Invalid("backing file name is not UTF-8".into()))?;
            if !name.is_empty() {
                backing_file = Some(name);
            }
        }
        Ok(Qcow1 {
            file,
            path: path.to_path_buf(),
            size,
            cluster_bits,
            l2_bits,
            l1,
            l2_cache: HashMap::new(),
            backing_file,
            backing: None,
            zcache: None,
        })
    }

    /// The backing file name as stored in the image.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_file.as_deref()
    }

    /// Attach the (read-only) backing device.
    pub fn set_backing(&mut self, backing: Box<dyn BlockDevice>) {
        self.backing = Some(backing);
    }

    /// log2 of the cluster size.
    pub fn cluster_bits(&self) -> u32 {
        self.cluster_bits
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Where guest offset `guest`'s cluster lives.
    fn lookup(&mut self, guest: u64) -> Result<Where> {
        let i1 = (guest >> (self.cluster_bits + self.l2_bits)) as usize;
        let i2 = ((guest >> self.cluster_bits) & ((1 << self.l2_bits) - 1)) as usize;
        let l2off = self.l1.get(i1).copied().unwrap_or(0);
        if l2off == 0 {
            return Ok(Where::Unallocated);
        }
        if !self.l2_cache.contains_key(&l2off) {
            let mut buf = vec![0u8; 8 << self.l2_bits];
            read_full(&self.file, &mut buf, l2off)?;
            if self.l2_cache.len() >= L2_CACHE_TABLES {
                self.l2_cache.clear();
            }
            let t = buf
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
                .collect();
            self.l2_cache.insert(l2off, t);
        }
        let e = self.l2_cache[&l2off][i2];
        if e == 0 {
            return Ok(Where::Unallocated);
        }
        if e & OFLAG_COMPRESSED != 0 {
            let bits = 63 - self.cluster_bits;
            let offset = e & ((1 << bits) - 1);
            let size = (e >> bits) & (self.cluster_size() - 1);
            return Ok(Where::Compressed {
                offset,
                size,
                entry: e,
            });
        }
        Ok(Where::Data(e))
    }

    /// The decompressed cluster of a compressed L2 entry.
    fn decompress(&mut self, offset: u64, size: u64, entry: u64) -> Result<&[u8]> {
        if self.zcache.as_ref().map(|z| z.0) != Some(entry) {
            let mut input = vec![0u8; size as usize];
            read_full(&self.file, &mut input, offset)?;
            let mut out = vec![0u8; self.cluster_size() as usize];
            let mut d = flate2::Decompress::new(false);
            let res = d.decompress(&input, &mut out, flate2::FlushDecompress::Finish);
            if res.is_err() || d.total_out() != out.len() as u64 {
                return Err(Error::Corrupt(format!(
                    "{}: compressed cluster at host offset {offset:#x} does not decompress to a full cluster",
                    self.path.display()
                )));
            }
            self.zcache = Some((entry, out));
        }
        Ok(&self.zcache.as_ref().expect("filled").1)
    }

    fn read_backing(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(b) = self.backing.as_mut() else {
            buf.fill(0);
            return Ok(());
        };
        let n = b.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        if n > 0 {
            b.read_at(&mut buf[..n], offset)?;
        }
        buf[n..].fill(0);
        Ok(())
    }

    fn refuse_write(&self) -> Error {
        Error::ReadOnly(format!(
            "{}: qcow (version 1) images are read-only; convert to qcow2 to write",
            self.path.display()
        ))
    }
}

impl BlockDevice for Qcow1 {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn format(&self) -> Format {
        Format::Qcow
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let cs = self.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let g = offset + done as u64;
            let inc = (g % cs) as usize;
            let n = (cs as usize - inc).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.lookup(g)? {
                Where::Unallocated => self.read_backing(out, g)?,
                Where::Data(host) => read_full(&self.file, out, host + inc as u64)?,
                Where::Compressed {
                    offset,
                    size,
                    entry,
                } => {
                    let d = self.decompress(offset, size, entry)?;
                    out.copy_from_slice(&d[inc..inc + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(self.refuse_write())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn discard(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(self.refuse_write())
    }

    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Err(self.refuse_write())
    }

    fn extent(&mut self, offset: u64, len: u64) -> Result<(Extent, u64)> {
        check_range(offset, len, self.size)?;
        let cs = self.cluster_size();
        let mut done = 0;
        let mut kind = None;
        while done < len {
            let g = offset + done;
            let k = match self.lookup(g)? {
                Where::Unallocated => {
                    if g >= self.backing.as_ref().map_or(0, |b| b.size()) {
                        Extent::Zero
                    } else {
                        Extent::Backing
                    }
                }
                _ => Extent::Data,
            };
            if *kind.get_or_insert(k) != k {
                break;
            }
            done += (cs - g % cs).min(len - done);
        }
        Ok((kind.unwrap_or(Extent::Data), done))
    }
}
