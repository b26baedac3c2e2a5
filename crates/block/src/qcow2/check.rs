//! `check` for qcow2: rebuild every cluster's reference count from the metadata (header,
//! L1/L2 tables, snapshots, refcount structures) and compare it with the stored refcounts.
//! Stored counts that are too low are corruptions; too high are leaks, as in qemu-img.

use super::{
    read_be64s, Qcow2, L1_OFFSET_MASK, L2_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO,
};
use crate::fileio::{file_len, read_full};
use crate::Result;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// What `check` found.
#[derive(Debug, Default, Clone)]
pub struct CheckReport {
    /// Refcounts lower than the references (or other metadata errors): data at risk.
    pub corruptions: u64,
    /// Refcounts higher than the references: wasted space only.
    pub leaks: u64,
    /// Errors that stopped parts of the check.
    pub check_errors: u64,
    /// Guest clusters allocated in this image.
    pub allocated_clusters: u64,
    /// Guest clusters in the virtual disk.
    pub total_clusters: u64,
    /// Allocated clusters not contiguous with the previous one.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
    /// End of the last cluster in use.
    pub image_end_offset: u64,
    /// One line per problem, in qemu-img's wording.
    pub messages: Vec<String>,
}

struct Counter {
    cs: u64,
    file_len: u64,
    /// References per host cluster (sparse: hostile files may be huge and sparse).
    refs: HashMap<u64, u64>,
}

impl Counter {
    fn inc(&mut self, r: &mut CheckReport, what: &str, off: u64, len: u64) {
        self.inc_by(r, what, off, len, 1);
    }

    /// Count `times` references to every cluster of `len` bytes at `off`.
    fn inc_by(&mut self, r: &mut CheckReport, what: &str, off: u64, len: u64, times: u64) {
        if len == 0 {
            return;
        }
        if off >= self.file_len {
            r.corruptions += 1;
            r.messages.push(format!(
                "ERROR {what} at offset {off:#x} is beyond the end of the image file"
            ));
            return;
        }
        for c in off / self.cs..=(off + len - 1) / self.cs {
            *self.refs.entry(c).or_insert(0) += times;
        }
    }
}

/// Most bytes of bitmap tables one check reads (a real image's tables are tiny: a 1 TiB
/// disk with 64 KiB granularity and clusters needs 32 entries; a hostile sparse file
/// could claim gigabytes).
const MAX_BITMAP_TABLE_BYTES: u64 = 64 << 20;

/// Count the clusters of QEMU's persistent dirty bitmaps (directory, bitmap tables and
/// their data clusters) when the image says they are consistent, as qemu-img does: they
/// are in use, not leaked.
fn count_bitmaps(img: &mut Qcow2, c: &mut Counter, r: &mut CheckReport) -> Result<()> {
    let bitmaps = match img.bitmaps() {
        Ok(b) => b,
        Err(e) => {
            r.corruptions += 1;
            r.messages.push(format!("ERROR {e}"));
            return Ok(());
        }
    };
    if let Some((_, size, off)) = img.h.bitmaps.filter(|_| !bitmaps.is_empty()) {
        c.inc(r, "bitmap directory", off, size);
    }
    let flen = c.file_len;
    let mut table_bytes = 0u64;
    for (i, b) in bitmaps.iter().enumerate() {
        let (table_off, entries) = b.table;
        table_bytes += entries * 8;
        if table_bytes > MAX_BITMAP_TABLE_BYTES {
            r.check_errors += 1;
            r.messages.push(format!(
                "ERROR the bitmap tables add up to more than {} MiB; not checking the rest",
                MAX_BITMAP_TABLE_BYTES >> 20
            ));
            break;
        }
        if table_off.saturating_add(entries * 8) > flen {
            r.corruptions += 1;
            r.messages.push(format!(
                "ERROR bitmap {i}'s table lies beyond the end of the file"
            ));
            continue;
        }
        c.inc(r, "bitmap table", table_off, entries * 8);
        let mut t = vec![0u8; entries as usize * 8];
        read_full(&img.file, &mut t, table_off)?;
        for e in read_be64s(&t) {
            let data = e & 0x00ff_ffff_ffff_fe00;
            if data != 0 {
                c.inc(r, "bitmap data cluster", data, c.cs);
            }
        }
    }
    Ok(())
}

/// A COPIED flag to compare with the refcount: host offset, flag set, L1 index (for an
/// L2 table; None for a data cluster), the entry.
type CopiedCheck = (u64, bool, Option<usize>, u64);

/// Most bytes of snapshot L1 tables one check reads (a hostile image can list 65536
/// snapshots with a 32 MiB L1 table each).
const MAX_SNAPSHOT_L1_BYTES: u64 = 256 << 20;

/// L2 tables still to walk, with how many L1 entries reference each. Every distinct table
/// is read once however often hostile L1 tables point at it.
type PendingL2 = HashMap<u64, u64>;

/// Walk one L1 table (active or a snapshot's), counting references. The active table's
/// L2 tables are walked at once (their entries feed the statistics and the COPIED
/// checks); repeated and snapshot references go to `pending`, for [`walk_pending`].
fn walk_l1(
    img: &mut Qcow2,
    c: &mut Counter,
    r: &mut CheckReport,
    l1: &[u64],
    active: bool,
    copied: &mut Vec<CopiedCheck>,
    pending: &mut PendingL2,
) -> Result<()> {
    let cs = img.cluster_size;
    let mut next_contiguous = 0u64;
    let mut walked = std::collections::HashSet::new();
    for (i, &l1e) in l1.iter().enumerate() {
        let l2off = l1e & L1_OFFSET_MASK;
        if l2off == 0 {
            continue;
        }
        if !l2off.is_multiple_of(cs) {
            r.corruptions += 1;
            r.messages.push(format!(
                "ERROR l2_offset={l2off:#x}: Table is not cluster aligned; L1 entry corrupted"
            ));
            continue;
        }
        if active {
            copied.push((l2off, l1e & OFLAG_COPIED != 0, Some(i), l1e));
        }
        c.inc(r, "L2 table", l2off, cs);
        if l2off >= c.file_len {
            continue;
        }
        if active && walked.insert(l2off) {
            let mut stats = ActiveStats {
                next_contiguous: &mut next_contiguous,
                copied: &mut *copied,
            };
            walk_l2(img, c, r, l2off, 1, Some(&mut stats))?;
        } else {
            *pending.entry(l2off).or_insert(0) += 1;
        }
    }
    Ok(())
}

/// What the active L1 table's walk records beyond references.
struct ActiveStats<'a> {
    next_contiguous: &'a mut u64,
    copied: &'a mut Vec<CopiedCheck>,
}

/// Walk every pending L2 table once, counting its references as often as it is referenced.
fn walk_pending(
    img: &mut Qcow2,
    c: &mut Counter,
    r: &mut CheckReport,
    pending: PendingL2,
) -> Result<()> {
    let mut tables: Vec<(u64, u64)> = pending.into_iter().collect();
    tables.sort_unstable();
    for (l2off, times) in tables {
        walk_l2(img, c, r, l2off, times, None)?;
    }
    Ok(())
}

/// Count the references of the L2 table at `l2off`, `times` over.
fn walk_l2(
    img: &mut Qcow2,
    c: &mut Counter,
    r: &mut CheckReport,
    l2off: u64,
    times: u64,
    mut active: Option<&mut ActiveStats<'_>>,
) -> Result<()> {
    let cs = img.cluster_size;
    let ext = img.h.extended_l2();
    let shift = 62 - (img.h.cluster_bits - 8);
    let mut buf = vec![0u8; cs as usize];
    read_full(&img.file, &mut buf, l2off)?;
    let t = read_be64s(&buf);
    let step = if ext { 2 } else { 1 };
    for j in (0..t.len()).step_by(step) {
        let e = t[j];
        if e & OFLAG_COMPRESSED != 0 {
            let offset = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & ((1u64 << (img.h.cluster_bits - 8)) - 1)) + 1;
            if e & OFLAG_COPIED != 0 {
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR: coffset={offset:#x}: Cluster is compressed and has OFLAG_COPIED set (L2 table {l2off:#x})"
                ));
            }
            c.inc_by(r, "compressed cluster", offset & !511, sectors * 512, times);
            if active.is_some() {
                r.allocated_clusters += 1;
                r.compressed_clusters += 1;
                r.fragmented_clusters += 1;
            }
            continue;
        }
        let host = e & L2_OFFSET_MASK;
        if host == 0 {
            continue;
        }
        if !host.is_multiple_of(cs) {
            r.corruptions += 1;
            r.messages.push(format!(
                "ERROR offset={host:#x}: Cluster is not properly aligned; L2 entry corrupted"
            ));
            continue;
        }
        let _ = OFLAG_ZERO;
        if let Some(a) = active.as_deref_mut() {
            a.copied.push((host, e & OFLAG_COPIED != 0, None, e));
            r.allocated_clusters += 1;
            if *a.next_contiguous != 0 && host != *a.next_contiguous {
                r.fragmented_clusters += 1;
            }
            *a.next_contiguous = host + cs;
        }
        c.inc_by(r, "data cluster", host, cs, times);
    }
    Ok(())
}

/// Check the qcow2 image at `path` (opened read-only).
pub fn check(path: &Path) -> Result<CheckReport> {
    check_shared(path, crate::Share::default())
}

/// [`check`], letting other users of the image do what `share` says meanwhile.
pub fn check_shared(path: &Path, share: crate::Share) -> Result<CheckReport> {
    let mut img = Qcow2::open_shared(path, true, share)?;
    let ctx = path.display().to_string();
    check_image(&mut img).map_err(|e| e.context(&ctx))
}

pub(crate) fn check_image(img: &mut Qcow2) -> Result<CheckReport> {
    Ok(check_counted(img)?.0)
}

/// Check `img` and also return the references counted per host cluster (for repair).
pub(crate) fn check_counted(img: &mut Qcow2) -> Result<(CheckReport, HashMap<u64, u64>)> {
    // The check reads the tables from the file: write the cached changes out first.
    img.flush_meta()?;
    let cs = img.cluster_size;
    let mut r = CheckReport {
        total_clusters: img.h.size.div_ceil(cs),
        ..Default::default()
    };
    let flen = file_len(&img.file)?;
    let mut c = Counter {
        cs,
        file_len: flen,
        refs: HashMap::new(),
    };
    c.inc(&mut r, "header", 0, cs);
    let l1 = img.l1.clone();
    c.inc(
        &mut r,
        "L1 table",
        img.h.l1_table_offset,
        u64::from(img.h.l1_size) * 8,
    );
    let mut copied = Vec::new();
    let mut pending = PendingL2::new();
    walk_l1(img, &mut c, &mut r, &l1, true, &mut copied, &mut pending)?;
    // Internal snapshots: the table (parsed and bounds-checked at open) and each
    // snapshot's L1 tree.
    let mut ignore = Vec::new();
    let mut snapshot_l1_bytes = 0u64;
    for sn in img.snapshots.clone() {
        let (sl1_off, sl1_size) = (sn.l1_table_offset, sn.l1_size);
        c.inc(
            &mut r,
            "snapshot L1 table",
            sl1_off,
            u64::from(sl1_size) * 8,
        );
        if u64::from(sl1_size) * 8 > super::header::MAX_L1_BYTES || sl1_off >= flen {
            r.corruptions += 1;
            r.messages.push("ERROR snapshot L1 table is invalid".into());
            continue;
        }
        snapshot_l1_bytes += u64::from(sl1_size) * 8;
        if snapshot_l1_bytes > MAX_SNAPSHOT_L1_BYTES {
            r.check_errors += 1;
            r.messages.push(format!(
                "ERROR the snapshots' L1 tables add up to more than {} MiB; not checking the rest",
                MAX_SNAPSHOT_L1_BYTES >> 20
            ));
            break;
        }
        let mut buf = vec![0u8; sl1_size as usize * 8];
        read_full(&img.file, &mut buf, sl1_off)?;
        walk_l1(
            img,
            &mut c,
            &mut r,
            &read_be64s(&buf),
            false,
            &mut ignore,
            &mut pending,
        )?;
    }
    walk_pending(img, &mut c, &mut r, pending)?;
    count_bitmaps(img, &mut c, &mut r)?;
    if !img.snapshots.is_empty() {
        c.inc(
            &mut r,
            "snapshot table",
            img.h.snapshots_offset,
            img.snapshots_size,
        );
    }
    c.inc(
        &mut r,
        "refcount table",
        img.h.refcount_table_offset,
        u64::from(img.h.refcount_table_clusters) * cs,
    );
    for (i, &e) in img.reftable.clone().iter().enumerate() {
        let off = e & !0x1ff;
        if off == 0 {
            continue;
        }
        if off % cs != 0 {
            r.corruptions += 1;
            r.messages.push(format!(
                "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
            ));
            continue;
        }
        c.inc(&mut r, "refcount block", off, cs);
    }
    // Compare with the stored refcounts, over every cluster either side knows about.
    // Like qemu-img, only clusters inside the file are compared (references past its end
    // were reported above; refcounts past it are harmless). Visit the clusters either side
    // knows about: referenced ones, and those the existing refcount blocks count.
    let file_clusters = flen.div_ceil(cs);
    let epb = img.refblock_entries();
    let mut clusters: BTreeSet<u64> = c.refs.keys().copied().collect();
    for (t, &e) in img.reftable.clone().iter().enumerate() {
        if e & !0x1ff == 0 {
            continue;
        }
        let first = t as u64 * epb;
        for i in first..(first + epb).min(file_clusters) {
            if img.refcount(i)? != 0 {
                clusters.insert(i);
            }
        }
    }
    let mut highest = 0;
    for i in clusters.into_iter().filter(|&i| i < file_clusters) {
        let want = c.refs.get(&i).copied().unwrap_or(0);
        let have = img.refcount(i)?;
        if want > 0 {
            highest = i + 1;
        }
        if have != want {
            if have < want {
                r.corruptions += 1;
                r.messages.push(format!(
                    "ERROR cluster {i} refcount={have} reference={want}"
                ));
            } else {
                r.leaks += 1;
                r.messages.push(format!(
                    "Leaked cluster {i} refcount={have} reference={want}"
                ));
            }
        }
    }
    for (off, flag, l1_index, entry) in copied {
        let rc = img.refcount(off / cs)?;
        if (rc == 1) != flag {
            r.corruptions += 1;
            // qemu-img's wording.
            r.messages.push(match l1_index {
                Some(i) => format!(
                    "ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={entry:x} refcount={rc}"
                ),
                None => {
                    format!("ERROR OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={rc}")
                }
            });
        }
    }
    r.image_end_offset = highest * cs;
    Ok((r, c.refs))
}
