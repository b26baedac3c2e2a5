//! `kiln img snapshot`: list, create, apply and delete qcow2 internal snapshots, with
//! qemu-img's options, table layout and JSON keys (the table and JSON are shared with
//! `kiln img info`).

use super::info::human_size;
use super::parse_format;
use kiln_block::qcow2::snapshot::Snapshot;
use kiln_block::qcow2::Qcow2;
use kiln_block::Format;
use kiln_block::Share;
use serde::Serialize;
use std::path::Path;

/// One snapshot with qemu-img's JSON keys, in the order qemu-img prints them.
#[derive(Serialize)]
pub(super) struct SnapshotJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    icount: Option<u64>,
    #[serde(rename = "vm-clock-nsec")]
    vm_clock_nsec: u64,
    name: String,
    #[serde(rename = "date-sec")]
    date_sec: u32,
    #[serde(rename = "date-nsec")]
    date_nsec: u32,
    #[serde(rename = "vm-clock-sec")]
    vm_clock_sec: u64,
    id: String,
    #[serde(rename = "vm-state-size")]
    vm_state_size: u64,
}

/// The JSON form of a snapshot list.
pub(super) fn to_json(snaps: &[Snapshot]) -> Vec<SnapshotJson> {
    snaps
        .iter()
        .map(|s| SnapshotJson {
            icount: s.icount,
            vm_clock_nsec: s.vm_clock_nsec % 1_000_000_000,
            name: s.name.clone(),
            date_sec: s.date_sec,
            date_nsec: s.date_nsec,
            vm_clock_sec: s.vm_clock_nsec / 1_000_000_000,
            id: s.id.clone(),
            vm_state_size: s.vm_state_size,
        })
        .collect()
}

/// `secs` since the epoch as local time, "YYYY-MM-DD HH:MM:SS".
fn local_date(secs: u32) -> String {
    let t = libc::time_t::from(secs);
    let mut tm = std::mem::MaybeUninit::<libc::tm>::uninit();
    // SAFETY: localtime_r reads `t` and fills `tm`, both valid for the call; it returns
    // NULL (leaving `tm` unused) on failure.
    let ok = unsafe { !libc::localtime_r(&t, tm.as_mut_ptr()).is_null() };
    if !ok {
        return format!("@{secs}");
    }
    // SAFETY: localtime_r succeeded, so it initialized `tm`.
    let tm = unsafe { tm.assume_init() };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// qemu-img's snapshot table: "Snapshot list:", the column header, one row each.
pub(super) fn table(snaps: &[Snapshot]) -> String {
    let mut out = String::from("Snapshot list:\n");
    out += &format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    );
    for s in snaps {
        let secs = s.vm_clock_nsec / 1_000_000_000;
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (s.vm_clock_nsec / 1_000_000) % 1000
        );
        let icount = s.icount.map_or_else(|| "--".to_string(), |i| i.to_string());
        out += &format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            s.id,
            s.name,
            human_size(s.vm_state_size),
            local_date(s.date_sec),
            clock,
            icount
        );
    }
    out
}

/// What `kiln img snapshot` does.
#[derive(Clone, Copy)]
pub(super) enum Op<'a> {
    /// `-l` (the default).
    List,
    /// `-c NAME`.
    Create(&'a str),
    /// `-a NAME|ID`.
    Apply(&'a str),
    /// `-d NAME|ID`.
    Delete(&'a str),
}

/// `kiln img snapshot`.
pub(super) fn snapshot(
    op: Op<'_>,
    format: Option<&str>,
    output: &str,
    file: &Path,
    share: Share,
) -> Result<u8, String> {
    if output != "human" && output != "json" {
        return Err(format!("--output must be human or json, not '{output}'"));
    }
    let format = match parse_format(format)? {
        Some(f) => f,
        None => kiln_block::probe(file).map_err(|e| e.to_string())?,
    };
    let (verb, name) = match op {
        Op::List => ("list", ""),
        Op::Create(n) => ("create", n),
        Op::Apply(n) => ("apply", n),
        Op::Delete(n) => ("delete", n),
    };
    if format != Format::Qcow2 {
        if let Op::List = op {
            // Like qemu-img: a format without snapshots has none to list.
            if output == "json" {
                println!("[]");
            }
            return Ok(0);
        }
        return Err(format!(
            "Could not {verb} snapshot '{name}': format '{format}' does not support internal snapshots"
        ));
    }
    let read_only = matches!(op, Op::List);
    let mut img = Qcow2::open_shared(file, read_only, share).map_err(|e| e.to_string())?;
    let fail = |e: kiln_block::Error| format!("Could not {verb} snapshot '{name}': {e}");
    match op {
        Op::List => {
            let snaps = img.snapshots();
            if output == "json" {
                let s = serde_json::to_string_pretty(&to_json(snaps)).map_err(|e| e.to_string())?;
                println!("{s}");
            } else if !snaps.is_empty() {
                print!("{}", table(snaps));
            }
        }
        Op::Create(n) => {
            img.snapshot_create(n).map_err(fail)?;
        }
        Op::Apply(n) => {
            let i = img
                .find_snapshot(n)
                .ok_or_else(|| format!("Could not apply snapshot '{n}': snapshot not found"))?;
            img.snapshot_apply(i).map_err(fail)?;
        }
        Op::Delete(n) => {
            // qemu-img deletes by name; an ID is accepted when no name matches.
            let snaps = img.snapshots();
            let i = snaps
                .iter()
                .position(|s| s.name == n)
                .or_else(|| snaps.iter().position(|s| s.id == n))
                .ok_or_else(|| format!("Could not delete snapshot '{n}': snapshot not found"))?;
            img.snapshot_delete(i).map_err(fail)?;
        }
    }
    Ok(0)
}
