//! qcow2 compressed clusters: the two codecs (zlib as raw deflate, zstd as one frame per
//! cluster) and writing compressed clusters ([`Qcow2::write_compressed`]), packed several
//! to a host cluster as QEMU packs them.
//!
//! Formats, as QEMU's `block/qcow2-threads.c` writes and reads them:
//! - zlib: a raw deflate stream (no zlib header) with a 4 KiB window (QEMU inflates with
//!   window bits -12, so a larger window would make our clusters unreadable to it). The
//!   stream must end inside the stored sectors; bytes after it are padding.
//! - zstd: one zstd frame per cluster, decoded until a full cluster came out; the bytes
//!   after the frame (sector padding) are ignored.
//!
//! A cluster is stored compressed only if it compresses to less than a cluster minus one
//! byte (QEMU's limit); otherwise it is written as a normal cluster.
//!
//! Packing (QEMU's `qcow2_alloc_bytes`): compressed data is placed byte by byte after the
//! previous compressed cluster; a cluster that does not fit in what is left of the
//! current host cluster either continues into the next host cluster (when that is the
//! next free one) or starts a fresh one. Each host cluster's refcount counts the
//! compressed clusters whose bytes touch it, so one freed compressed cluster drops the
//! refcount of every host cluster it touched by one. The L2 descriptor holds the byte
//! offset and the number of 512-byte sectors beyond the first one that the data touches
//! (`x = 62 - (cluster_bits - 8)` bits of offset).
//!
//! Crate choice for zstd: `ruzstd`, pure Rust (decoder and, since 0.8, a "Fastest" encoder
//! roughly like zstd level 1). The `zstd` crate would build the C library through
//! `zstd-sys` and `cc`, a long C build on a 2-core machine for a feature used only by
//! `convert -c`; the frames ruzstd writes are standard zstd frames that QEMU's libzstd
//! decodes, and its decoder reads what QEMU's encoder writes.

use super::header::Compression;
use super::{Mapping, Qcow2, L2_OFFSET_MASK, OFLAG_COMPRESSED};
use crate::fileio::write_full;
use crate::{Error, Result};
use std::io::Read;

/// Largest zstd window accepted when decoding (QEMU's frames for 2 MiB clusters need at
/// most a few MiB; a hostile frame must not make us allocate more).
const ZSTD_MAX_WINDOW: u64 = 8 << 20;

/// Compress one cluster of `data`; `None` when the result would not be smaller than
/// `data.len() - 1` bytes (the cluster is then stored uncompressed).
pub(crate) fn compress_cluster(alg: Compression, data: &[u8]) -> Option<Vec<u8>> {
    let limit = data.len().saturating_sub(1);
    match alg {
        Compression::Zlib => {
            let mut c =
                flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12);
            let mut out = Vec::with_capacity(limit);
            match c.compress_vec(data, &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) if out.len() <= limit => Some(out),
                _ => None,
            }
        }
        Compression::Zstd => {
            let out = ruzstd::encoding::compress_to_vec(
                data,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            (out.len() <= limit).then_some(out)
        }
    }
}

/// Decompress `input` (a compressed cluster with its trailing padding) into all of `out`.
/// Errors when the data does not yield exactly a full cluster.
pub(crate) fn decompress_cluster(alg: Compression, input: &[u8], out: &mut [u8]) -> Result<()> {
    let ok = match alg {
        Compression::Zlib => {
            let mut d = flate2::Decompress::new(false);
            let res = d.decompress(input, out, flate2::FlushDecompress::Finish);
            res.is_ok() && d.total_out() == out.len() as u64
        }
        Compression::Zstd => {
            match ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
                input,
                ZSTD_MAX_WINDOW,
            ) {
                Ok(mut dec) => dec.read_exact(out).is_ok(),
                Err(_) => false,
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "{} data does not decompress to a full cluster",
            alg.name()
        )))
    }
}

impl Qcow2 {
    /// Reserve `size` bytes (at most a cluster) for compressed data, incrementing the
    /// refcount of every host cluster the bytes touch (written through, not flushed).
    fn alloc_bytes(&mut self, size: u64) -> Result<u64> {
        let cs = self.cluster_size;
        let mut off = self.zfree;
        if off != 0 && self.refcount(off / cs)? >= self.max_refcount() {
            off = 0;
        }
        let free_in_cluster = if off == 0 { 0 } else { cs - off % cs };
        if off == 0 || free_in_cluster < size {
            let c = self.alloc_clusters(1, &[])?;
            if off != 0 && off.div_ceil(cs) == c {
                // The data runs on from the current host cluster into the new one.
                self.update_refcount(off / cs, 1, &[])?;
            } else {
                off = c * cs;
            }
        } else {
            self.update_refcount(off / cs, 1, &[])?;
        }
        self.zfree = (off + size) % cs;
        if self.zfree != 0 {
            self.zfree = off + size;
        }
        Ok(off)
    }

    /// Write guest clusters starting at the cluster-aligned guest offset `guest`,
    /// compressed with the image's compression type. `data` covers whole clusters, except
    /// that the last cluster of the disk may be short (it is padded with zeros). Clusters
    /// that do not compress are written as normal clusters. Whatever the clusters held
    /// before is released.
    pub fn write_compressed(&mut self, guest: u64, data: &[u8]) -> Result<()> {
        let cs = self.cluster_size;
        if !guest.is_multiple_of(cs) {
            return Err(Error::InvalidArgument(format!(
                "compressed write at guest offset {guest:#x} is not cluster aligned"
            )));
        }
        crate::check_range(guest, data.len() as u64, self.h.size)?;
        let end = guest + data.len() as u64;
        if !(data.len() as u64).is_multiple_of(cs) && end.div_ceil(cs) * cs < self.h.size {
            return Err(Error::InvalidArgument(
                "compressed writes must cover whole clusters".into(),
            ));
        }
        self.check_writable()?;
        let alg = self.h.compression;
        // Compress first; clusters that do not shrink go through the normal write path.
        let mut packed = Vec::new();
        let mut cluster = vec![0u8; cs as usize];
        for (k, chunk) in data.chunks(cs as usize).enumerate() {
            let g = guest + k as u64 * cs;
            cluster[..chunk.len()].copy_from_slice(chunk);
            cluster[chunk.len()..].fill(0);
            match compress_cluster(alg, &cluster) {
                Some(z) => packed.push((g, z)),
                None => self.write_guest(chunk, g)?,
            }
        }
        if packed.is_empty() {
            return Ok(());
        }
        self.zcache = None;
        // 1. L2 tables for every cluster (each allocated and linked in crash-safe order).
        let mut l2offs = Vec::with_capacity(packed.len());
        for (g, _) in &packed {
            let (i1, _) = self.indices(*g);
            l2offs.push(self.ensure_l2(i1)?);
        }
        // 2. Refcounts for the compressed bytes, flushed before the data and entries.
        let mut offs = Vec::with_capacity(packed.len());
        for (_, z) in &packed {
            offs.push(self.alloc_bytes(z.len() as u64)?);
        }
        // 3. The data, flushed before the entries pointing to it (contiguous pieces are
        //    written together).
        let mut i = 0;
        while i < packed.len() {
            let start = offs[i];
            let mut buf = packed[i].1.clone();
            let mut j = i + 1;
            while j < packed.len() && offs[j] == start + buf.len() as u64 {
                buf.extend_from_slice(&packed[j].1);
                j += 1;
            }
            // Pad to the end of the last sector (as qemu-img leaves files): those bytes
            // of the host cluster are unused, the next compressed cluster starts there.
            let end = start + buf.len() as u64;
            buf.resize(buf.len() + (end.div_ceil(512) * 512 - end) as usize, 0);
            self.check_overlap(start, buf.len() as u64)?;
            write_full(&self.file, &buf, start)?;
            i = j;
        }
        // 4. The L2 entries, then the old mappings' refcounts.
        let shift = 62 - (self.h.cluster_bits - 8);
        let ext = self.h.extended_l2();
        let mut olds = Vec::with_capacity(packed.len());
        for (k, (g, z)) in packed.iter().enumerate() {
            let off = offs[k];
            let nb_csectors = (off + z.len() as u64 - 1) / 512 - off / 512;
            let entry = OFLAG_COMPRESSED | (nb_csectors << shift) | off;
            olds.push(self.entry_holdings(*g)?);
            let (_, i2) = self.indices(*g);
            let t = self.l2_table(l2offs[k])?;
            let (lo, hi) = if ext {
                t[2 * i2] = entry;
                t[2 * i2 + 1] = 0;
                (2 * i2, 2 * i2 + 1)
            } else {
                t[i2] = entry;
                (i2, i2)
            };
            self.l2_dirty(l2offs[k], lo, hi);
        }
        self.free_old(&olds)
    }

    /// What host space the L2 entry of guest cluster `guest` holds (for releasing it),
    /// whatever its subclusters say.
    fn entry_holdings(&mut self, guest: u64) -> Result<Mapping> {
        let Some((e, _)) = self.l2_entry(guest)? else {
            return Ok(Mapping::Unallocated);
        };
        if e & OFLAG_COMPRESSED != 0 {
            return Ok(self.lookup(guest)?.0);
        }
        let host = e & L2_OFFSET_MASK;
        Ok(if host == 0 {
            Mapping::Unallocated
        } else {
            Mapping::Zero { host }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{compress_cluster, decompress_cluster};
    use crate::qcow2::header::Compression;

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"compressible cluster "[i % 21]).collect()
    }

    #[test]
    fn clusters_round_trip_and_incompressible_ones_are_refused() {
        for alg in [Compression::Zlib, Compression::Zstd] {
            for cs in [512usize, 4096, 65536, 2 << 20] {
                let d = text(cs);
                let z = compress_cluster(alg, &d).expect("text compresses");
                assert!(z.len() < cs - 1);
                // Sector padding after the data is ignored.
                let mut padded = z.clone();
                padded.resize(z.len().div_ceil(512) * 512 + 512, 0xee);
                let mut out = vec![0u8; cs];
                decompress_cluster(alg, &padded, &mut out).unwrap();
                assert_eq!(out, d, "{} {cs}", alg.name());
                // Truncated data is an error.
                assert!(decompress_cluster(alg, &z[..z.len() / 2], &mut out).is_err());
            }
            let mut x = 0x1234_5678_9abc_def1u64;
            let noise: Vec<u8> = (0..65536)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(compress_cluster(alg, &noise).is_none());
        }
    }

    #[test]
    fn hostile_compressed_data_is_an_error_not_a_panic() {
        let mut x = 88172645463325252u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = compress_cluster(Compression::Zstd, &text(65536)).unwrap();
        let mut out = vec![0u8; 65536];
        for round in 0..400 {
            let len = (next() % 3000) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // A real frame with bytes flipped here and there.
                input = good.clone();
                for _ in 0..1 + next() % 8 {
                    let i = (next() as usize) % input.len();
                    input[i] ^= next() as u8 | 1;
                }
            } else if round % 3 == 0 && len >= 4 {
                input[..4].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
            }
            for alg in [Compression::Zlib, Compression::Zstd] {
                let _ = decompress_cluster(alg, &input, &mut out);
            }
        }
    }
}
