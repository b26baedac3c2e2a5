//! qcow2 preallocation at create time (`-o preallocation=metadata|falloc|full`, as
//! qemu-img): every guest cluster gets an L2 entry pointing to its own host cluster, so
//! later writes never allocate; `falloc` also reserves the data clusters' space in the
//! file system and `full` writes zeros into them.

use super::{Qcow2, OFLAG_COPIED};
use crate::fileio::{allocate, sync, write_full, write_meta};
use crate::{Error, Result};

/// How much of a new image to allocate up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prealloc {
    /// Nothing (sparse; the default).
    #[default]
    Off,
    /// L2 tables and refcounts for every cluster; data clusters stay holes in the file.
    Metadata,
    /// As `Metadata`, with the data clusters' space reserved (`fallocate`).
    Falloc,
    /// As `Metadata`, with zeros written into every data cluster.
    Full,
}

impl Prealloc {
    /// Parse qemu-img's name for the mode.
    pub fn from_name(name: &str) -> Result<Prealloc> {
        Ok(match name {
            "off" => Prealloc::Off,
            "metadata" => Prealloc::Metadata,
            "falloc" => Prealloc::Falloc,
            "full" => Prealloc::Full,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "invalid preallocation mode '{other}' (off, metadata, falloc or full)"
                )))
            }
        })
    }
}

/// Data clusters written or reserved per call in `full`/`falloc` mode.
const FILL_CHUNK: u64 = 8 << 20;

impl Qcow2 {
    /// Allocate every guest cluster of this (new, empty) image; see the module docs.
    pub(crate) fn preallocate(&mut self, mode: Prealloc) -> Result<()> {
        if mode == Prealloc::Off || self.h.size == 0 {
            return Ok(());
        }
        self.flush_meta()?;
        let cs = self.cluster_size;
        let per_l2 = self.h.l2_entries();
        let ext = self.h.extended_l2();
        let clusters = self.h.size.div_ceil(cs);
        let mut data_runs = Vec::new();
        let mut end = 0u64;
        for (i1, first) in (0..clusters).step_by(per_l2 as usize).enumerate() {
            let n = per_l2.min(clusters - first);
            let table = self.alloc_clusters(1, &[])?;
            let data = self.alloc_clusters(n, &[])?;
            let mut words = vec![0u64; (cs / 8) as usize];
            for k in 0..n {
                let host = ((data + k) * cs) | OFLAG_COPIED;
                if ext {
                    // Every subcluster allocated.
                    words[2 * k as usize] = host;
                    words[2 * k as usize + 1] = 0xffff_ffff;
                } else {
                    words[k as usize] = host;
                }
            }
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            write_meta(&self.file, &bytes, table * cs)?;
            self.meta.insert(table);
            self.l1[i1] = (table * cs) | OFLAG_COPIED;
            data_runs.push((data * cs, n * cs));
            end = end.max((data + n) * cs).max((table + 1) * cs);
        }
        match mode {
            Prealloc::Full => {
                let zeros = vec![0u8; FILL_CHUNK as usize];
                for &(at, len) in &data_runs {
                    let mut done = 0;
                    while done < len {
                        let n = FILL_CHUNK.min(len - done);
                        write_full(&self.file, &zeros[..n as usize], at + done)?;
                        done += n;
                    }
                }
            }
            Prealloc::Falloc => {
                for &(at, len) in &data_runs {
                    allocate(&self.file, at, len)?;
                }
            }
            _ => {}
        }
        // The data clusters lie inside the file even where they are holes.
        let flen = crate::fileio::file_len(&self.file)?;
        if flen < end {
            self.file
                .set_len(end)
                .map_err(|e| Error::io("set length", e))?;
        }
        // Tables and refcounts (written out from the cache) durable before the L1 table
        // points at them.
        self.sync_rb()?;
        let l1: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        write_meta(&self.file, &l1, self.h.l1_table_offset)?;
        sync(&self.file)
    }
}
