//! Creating qcow2 images laid out as qemu-img lays them out: header cluster, one refcount
//! table cluster, one refcount block, then the L1 table (the file ends where it ends).

use super::header::{self, Compression, NewHeader};
use super::prealloc::Prealloc;
use super::Qcow2;
use crate::fileio::{sync, write_full};
use crate::{Error, Result};
use std::fs::OpenOptions;
use std::path::Path;

/// Options for a new qcow2 image (qemu-img's `-o` names in the docs).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// `cluster_size`: 512 B to 2 MiB, a power of two (default 64 KiB).
    pub cluster_size: u64,
    /// `compat`: 3 for "1.1" (default), 2 for "0.10".
    pub version: u32,
    /// `refcount_bits`: 1 to 64, a power of two (default 16).
    pub refcount_bits: u32,
    /// `lazy_refcounts`.
    pub lazy_refcounts: bool,
    /// `extended_l2`.
    pub extended_l2: bool,
    /// `compression_type`.
    pub compression: Compression,
    /// `-b`: backing file name, stored as given.
    pub backing_file: Option<String>,
    /// `-F`: backing format.
    pub backing_format: Option<String>,
    /// `preallocation`.
    pub preallocation: Prealloc,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            lazy_refcounts: false,
            extended_l2: false,
            compression: Compression::Zlib,
            backing_file: None,
            backing_format: None,
            preallocation: Prealloc::Off,
        }
    }
}

fn bad<T>(msg: &str) -> Result<T> {
    Err(Error::InvalidArgument(msg.into()))
}

impl CreateOptions {
    /// Check the options, as qemu-img does before creating (or measuring) an image.
    pub fn validate(&self) -> Result<()> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return bad("cluster size must be a power of two between 512 and 2097152");
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return bad("refcount_bits must be a power of two between 1 and 64");
        }
        if !self.size.is_multiple_of(512) {
            return bad("image size must be a multiple of 512 bytes");
        }
        if self.size > 1 << 61 {
            return bad("image size too large");
        }
        if self.version == 2 {
            if self.refcount_bits != 16 {
                return bad("refcount widths other than 16 bits need compat=1.1");
            }
            if self.lazy_refcounts {
                return bad("lazy refcounts need compat=1.1");
            }
            if self.extended_l2 {
                return bad("extended L2 entries need compat=1.1");
            }
            if self.compression != Compression::Zlib {
                return bad("compression_type other than zlib needs compat=1.1");
            }
        } else if self.version != 3 {
            return bad("compat must be 0.10 or 1.1");
        }
        if self.extended_l2 && cs < 16384 {
            return bad("extended L2 entries need a cluster size of at least 16384 bytes");
        }
        if self.backing_format.is_some() && self.backing_file.is_none() {
            return bad("a backing format needs a backing file");
        }
        Ok(())
    }
}

/// Create (or truncate) `path` as an empty qcow2 image.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    opts.validate()?;
    let ctx = path.display().to_string();
    let cs = opts.cluster_size;
    let cluster_bits = cs.trailing_zeros();
    let refcount_order = opts.refcount_bits.trailing_zeros();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(ctx.clone(), e))?;
    let inner = || -> Result<()> {
        // Start as an empty disk (as qemu does), then grow it by allocating the L1 table.
        let nh = NewHeader {
            version: opts.version,
            cluster_bits,
            size: 0,
            refcount_order,
            lazy_refcounts: opts.lazy_refcounts,
            extended_l2: opts.extended_l2,
            compression: opts.compression,
            backing_file: opts.backing_file.as_deref(),
            backing_format: opts.backing_format.as_deref(),
            l1: (0, 0),
            reftable: (cs, 1),
        };
        let hdr = header::build(&nh)?;
        let mut reftable = vec![0u8; cs as usize];
        reftable[..8].copy_from_slice(&(2 * cs).to_be_bytes());
        let mut block = vec![0u8; cs as usize];
        for c in 0..3 {
            super::refcount::set_entry(&mut block, refcount_order, c, 1);
        }
        write_full(&file, &hdr, 0)?;
        write_full(&file, &reftable, cs)?;
        write_full(&file, &block, 2 * cs)?;
        let l2_entries = cs / if opts.extended_l2 { 16 } else { 8 };
        let l1_size = header::size_to_l1(opts.size, cluster_bits, l2_entries);
        if l1_size * 8 > header::MAX_L1_BYTES {
            return bad("image size too large for this cluster size");
        }
        if opts.size == 0 {
            return sync(&file);
        }
        let f2 = file.try_clone().map_err(|e| Error::io("dup", e))?;
        let mut img = Qcow2::from_file(f2, path, false)?;
        let l1_bytes = l1_size * 8;
        let c = img.alloc_clusters(l1_bytes.div_ceil(cs), &[])?;
        write_full(&file, &vec![0u8; l1_bytes as usize], c * cs)?;
        // The L1 table's refcounts (cached) and zeros durable before the header names it.
        img.sync_rb()?;
        // Header bytes 24..48: size, crypt_method (0), l1_size, l1_table_offset.
        let mut hdr_part = [0u8; 24];
        hdr_part[..8].copy_from_slice(&opts.size.to_be_bytes());
        hdr_part[12..16].copy_from_slice(&(l1_size as u32).to_be_bytes());
        hdr_part[16..24].copy_from_slice(&(c * cs).to_be_bytes());
        write_full(&file, &hdr_part, 24)?;
        sync(&file)?;
        drop(img);
        if opts.preallocation != Prealloc::Off {
            let mut img = Qcow2::from_file(
                file.try_clone().map_err(|e| Error::io("dup", e))?,
                path,
                false,
            )?;
            img.preallocate(opts.preallocation)?;
        }
        Ok(())
    };
    inner().map_err(|e| e.context(&ctx))
}
