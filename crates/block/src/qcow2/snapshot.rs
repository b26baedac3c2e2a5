//! qcow2 internal snapshots, the table side: parsing the snapshot table (bounded against
//! hostile counts, lengths and offsets), encoding it as QEMU does, rewriting it elsewhere
//! and switching the header to it in one write, and finding snapshots by ID or name. The
//! operations that change refcounts (create, apply, delete) are in [`super::snapshot_ops`].

use super::header::{Header, MAX_L1_BYTES};
use super::Qcow2;
use crate::fileio::{punch_hole, read_full, write_meta};
use crate::{Error, Result};
use std::fs::File;

/// Most snapshots an image may have (QEMU's limit).
pub const MAX_SNAPSHOTS: usize = 65536;
/// Most extra data bytes per table entry (QEMU's limit).
const MAX_EXTRA_DATA: u64 = 1024;
/// Largest snapshot table (QEMU's limit: 1 KiB per snapshot).
const MAX_TABLE_BYTES: u64 = 1024 * MAX_SNAPSHOTS as u64;
/// Fixed part of a table entry.
const ENTRY_FIXED: u64 = 40;
/// The extra data this implementation knows: 64-bit VM state size, disk size, icount.
const EXTRA_KNOWN: usize = 24;

/// One internal snapshot, as stored in the snapshot table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Unique ID string (QEMU uses decimal numbers).
    pub id: String,
    /// Name (tag); not necessarily unique.
    pub name: String,
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Bytes of saved VM state (0 for disk-only snapshots).
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest clock when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Virtual disk size when the snapshot was taken.
    pub disk_size: u64,
    /// Instruction count for record/replay; None when not recorded (-1 or absent).
    pub icount: Option<u64>,
    /// The ID and name as stored (they need not be UTF-8).
    raw_id: Vec<u8>,
    raw_name: Vec<u8>,
    /// Extra data past what we know, kept when the table is rewritten.
    unknown_extra: Vec<u8>,
}

impl Snapshot {
    /// A new snapshot entry (QEMU's layout: 24 bytes of extra data, icount 0).
    pub(crate) fn new(id: String, name: &str, l1: (u64, u32), disk_size: u64) -> Snapshot {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Snapshot {
            raw_id: id.as_bytes().to_vec(),
            raw_name: name.as_bytes().to_vec(),
            id,
            name: name.to_string(),
            l1_table_offset: l1.0,
            l1_size: l1.1,
            vm_state_size: 0,
            date_sec: now.as_secs() as u32,
            // qemu-img takes the time in microseconds.
            date_nsec: now.subsec_micros() * 1000,
            vm_clock_nsec: 0,
            disk_size,
            icount: Some(0),
            unknown_extra: Vec::new(),
        }
    }

    /// Bytes of this entry in the table (without the padding after it).
    fn encoded_len(&self) -> u64 {
        ENTRY_FIXED
            + (EXTRA_KNOWN + self.unknown_extra.len()) as u64
            + self.raw_id.len() as u64
            + self.raw_name.len() as u64
    }

    /// Append this entry (8-byte aligned) to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.resize(out.len().div_ceil(8) * 8, 0);
        out.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.raw_id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.raw_name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        // A VM state too large for 32 bits reads as disk-only to old implementations.
        let small = u32::try_from(self.vm_state_size).unwrap_or(0);
        out.extend_from_slice(&small.to_be_bytes());
        let extra = (EXTRA_KNOWN + self.unknown_extra.len()) as u32;
        out.extend_from_slice(&extra.to_be_bytes());
        out.extend_from_slice(&self.vm_state_size.to_be_bytes());
        out.extend_from_slice(&self.disk_size.to_be_bytes());
        out.extend_from_slice(&self.icount.unwrap_or(u64::MAX).to_be_bytes());
        out.extend_from_slice(&self.unknown_extra);
        out.extend_from_slice(&self.raw_id);
        out.extend_from_slice(&self.raw_name);
    }

    /// Refuse an L1 table that is absurdly large, misaligned or not inside the file.
    pub(crate) fn validate_l1(&self, cluster_size: u64, file_len: u64) -> Result<()> {
        let bytes = u64::from(self.l1_size) * 8;
        let what = format!("snapshot '{}' (ID {})", self.name, self.id);
        if bytes > MAX_L1_BYTES {
            return Err(Error::Invalid(format!(
                "{what}: L1 table of {} entries is too large",
                self.l1_size
            )));
        }
        if !self.l1_table_offset.is_multiple_of(cluster_size) {
            return Err(Error::Invalid(format!(
                "{what}: L1 table offset {:#x} is not cluster aligned",
                self.l1_table_offset
            )));
        }
        if bytes > 0
            && (self.l1_table_offset == 0
                || self
                    .l1_table_offset
                    .checked_add(bytes)
                    .is_none_or(|end| end > file_len))
        {
            return Err(Error::Invalid(format!(
                "{what}: L1 table at {:#x} lies beyond the end of the file",
                self.l1_table_offset
            )));
        }
        Ok(())
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Read the snapshot table the header points to; returns the entries and the table's
/// length in bytes. Every length is checked against the file and QEMU's limits before
/// anything is allocated or read.
pub(crate) fn read_table(file: &File, h: &Header, file_len: u64) -> Result<(Vec<Snapshot>, u64)> {
    let n = h.nb_snapshots as u64;
    if n == 0 {
        return Ok((Vec::new(), 0));
    }
    let bad = |m: String| Err(Error::Invalid(m));
    if n > MAX_SNAPSHOTS as u64 {
        return bad(format!("too many snapshots ({n}; at most {MAX_SNAPSHOTS})"));
    }
    let start = h.snapshots_offset;
    if !start.is_multiple_of(h.cluster_size()) || start == 0 {
        return bad(format!(
            "snapshot table offset {start:#x} is invalid (not cluster aligned)"
        ));
    }
    // Every entry has at least its fixed part: the whole table must fit in the file.
    if start
        .checked_add(n * ENTRY_FIXED)
        .is_none_or(|end| end > file_len)
    {
        return bad(format!(
            "snapshot table ({n} entries at {start:#x}) lies beyond the end of the file"
        ));
    }
    let mut snaps = Vec::with_capacity(n.min(1024) as usize);
    let mut off = start;
    for i in 0..n {
        off = off.div_ceil(8) * 8;
        let mut fixed = [0u8; ENTRY_FIXED as usize];
        if off + ENTRY_FIXED > file_len {
            return bad(format!(
                "snapshot table entry {i} lies beyond the end of the file"
            ));
        }
        read_full(file, &mut fixed, off)?;
        let id_len = u64::from(be16(&fixed, 12));
        let name_len = u64::from(be16(&fixed, 14));
        let extra_len = u64::from(be32(&fixed, 36));
        if extra_len > MAX_EXTRA_DATA {
            return bad(format!(
                "too much extra metadata in snapshot table entry {i} ({extra_len} > {MAX_EXTRA_DATA} bytes)"
            ));
        }
        let var = extra_len + id_len + name_len;
        let end = off + ENTRY_FIXED + var;
        if end - start > MAX_TABLE_BYTES {
            return bad(format!(
                "snapshot table is too big (more than {MAX_TABLE_BYTES} bytes)"
            ));
        }
        if end > file_len {
            return bad(format!(
                "snapshot table entry {i} lies beyond the end of the file"
            ));
        }
        let mut rest = vec![0u8; var as usize];
        read_full(file, &mut rest, off + ENTRY_FIXED)?;
        let (extra, names) = rest.split_at(extra_len as usize);
        let (raw_id, raw_name) = names.split_at(id_len as usize);
        let mut sn = Snapshot {
            id: String::from_utf8_lossy(raw_id).into_owned(),
            name: String::from_utf8_lossy(raw_name).into_owned(),
            l1_table_offset: be64(&fixed, 0),
            l1_size: be32(&fixed, 8),
            vm_state_size: u64::from(be32(&fixed, 32)),
            date_sec: be32(&fixed, 16),
            date_nsec: be32(&fixed, 20),
            vm_clock_nsec: be64(&fixed, 24),
            disk_size: h.size,
            icount: None,
            raw_id: raw_id.to_vec(),
            raw_name: raw_name.to_vec(),
            unknown_extra: Vec::new(),
        };
        if extra.len() >= 8 {
            sn.vm_state_size = be64(extra, 0);
        }
        if extra.len() >= 16 {
            sn.disk_size = be64(extra, 8);
        }
        if extra.len() >= 24 {
            sn.icount = Some(be64(extra, 16)).filter(|&v| v != u64::MAX);
            sn.unknown_extra = extra[24..].to_vec();
        }
        snaps.push(sn);
        off = end;
    }
    Ok((snaps, off - start))
}

/// The number an ID starts with, as C's strtoul reads it (0 without digits; saturating).
fn id_number(id: &str) -> u64 {
    id.trim_start()
        .chars()
        .map_while(|c| c.to_digit(10))
        .fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d))
        })
}

impl Qcow2 {
    /// The internal snapshots, in table order.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The index of the snapshot with this ID, or else the first with this name (how
    /// QEMU resolves a snapshot to apply).
    pub fn find_snapshot(&self, id_or_name: &str) -> Option<usize> {
        self.snapshots
            .iter()
            .position(|s| s.id == id_or_name)
            .or_else(|| self.snapshots.iter().position(|s| s.name == id_or_name))
    }

    /// The ID for a new snapshot: one more than the largest numeric ID.
    pub(crate) fn next_snapshot_id(&self) -> String {
        let max = self
            .snapshots
            .iter()
            .map(|s| id_number(&s.id))
            .max()
            .unwrap_or(0);
        max.saturating_add(1).to_string()
    }

    /// Whether `host..end` overlaps the snapshot table or a snapshot's L1 table.
    pub(crate) fn overlaps_snapshot_meta(&self, host: u64, end: u64) -> bool {
        let hits = |start: u64, size: u64| size > 0 && host < start + size && start < end;
        hits(self.h.snapshots_offset, self.snapshots_size)
            || self
                .snapshots
                .iter()
                .any(|s| hits(s.l1_table_offset, u64::from(s.l1_size) * 8))
    }

    /// Drop one reference to each cluster of `off..off+len`, punching out the clusters
    /// that become free.
    pub(crate) fn free_range(&mut self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size;
        for c in off / cs..=(off + len - 1) / cs {
            self.free_cluster(c)?;
        }
        Ok(())
    }

    /// Drop one reference to cluster `c`; punch it out once nothing uses it.
    pub(crate) fn free_cluster(&mut self, c: u64) -> Result<()> {
        self.update_refcount(c, -1, &[])?;
        if self.refcount(c)? == 0 {
            self.meta.remove(&c);
            punch_hole(&self.file, c * self.cluster_size, self.cluster_size)?;
        }
        Ok(())
    }

    /// Write `snaps` as the new snapshot table in newly allocated clusters, then switch
    /// the header (count and offset in one write) to it, then free the old table.
    pub(crate) fn write_snapshot_table(&mut self, snaps: Vec<Snapshot>) -> Result<()> {
        let cs = self.cluster_size;
        let total: u64 = snaps.iter().map(|s| s.encoded_len().div_ceil(8) * 8).sum();
        if total > MAX_TABLE_BYTES {
            return Err(Error::Unsupported("snapshot table would be too big".into()));
        }
        let mut bytes = Vec::new();
        for s in &snaps {
            s.encode(&mut bytes);
        }
        let size = bytes.len() as u64;
        let new_off = if snaps.is_empty() {
            0
        } else {
            let n = size.div_ceil(cs);
            let c = self.alloc_clusters(n, &[])?;
            self.check_overlap(c * cs, n * cs)?;
            bytes.resize((n * cs) as usize, 0);
            write_meta(&self.file, &bytes, c * cs)?;
            c * cs
        };
        // The table and its refcounts are on disk before the header points to it.
        self.sync_rb()?;
        let mut hdr = [0u8; 12];
        hdr[..4].copy_from_slice(&(snaps.len() as u32).to_be_bytes());
        hdr[4..].copy_from_slice(&new_off.to_be_bytes());
        write_meta(&self.file, &hdr, 60)?;
        self.sync_rb()?;
        let (old_off, old_size) = (self.h.snapshots_offset, self.snapshots_size);
        self.h.nb_snapshots = snaps.len() as u32;
        self.h.snapshots_offset = new_off;
        self.snapshots = snaps;
        self.snapshots_size = if new_off == 0 { 0 } else { size };
        if old_off != 0 {
            self.free_range(old_off, old_size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_unknown_extra_data_and_odd_lengths() {
        let mut a = Snapshot::new("7".into(), "first one", (0x30000, 3), 1 << 20);
        a.unknown_extra = vec![9; 5];
        a.vm_state_size = 1 << 33;
        let b = Snapshot::new("12".into(), "x", (0x50000, 1), 2 << 20);
        let mut bytes = Vec::new();
        a.encode(&mut bytes);
        let first_len = bytes.len();
        assert_eq!(first_len as u64, a.encoded_len());
        b.encode(&mut bytes);
        assert_eq!(
            bytes.len() as u64,
            first_len.div_ceil(8) as u64 * 8 + b.encoded_len()
        );
        // vm_state_size does not fit in 32 bits: the old field reads 0.
        assert_eq!(be32(&bytes, 32), 0);
        assert_eq!(be64(&bytes, 40), 1 << 33);
    }

    #[test]
    fn next_ids_follow_the_largest_number() {
        assert_eq!(id_number("12"), 12);
        assert_eq!(id_number("3abc"), 3);
        assert_eq!(id_number("abc"), 0);
    }
}
