//! `kiln img map`: where each range of an image's guest view comes from, walking the
//! backing chain, in qemu-img map's human and JSON formats (entries merged as qemu-img
//! merges them). As QEMU, in a qcow2 image it guesses was preallocated, a data range that
//! lies in a hole of the image file reads as zeros and is shown so (`"zero": true,
//! "data": true`).

use super::{open_image, parse_format};
use kiln_block::raw::RawFile;
use kiln_block::{backing_chain, chain_status, BlockDevice, Extent, Format, Share};
use std::collections::HashMap;
use std::path::Path;

/// One map entry, as qemu-img's `MapEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    start: u64,
    length: u64,
    depth: u32,
    present: bool,
    zero: bool,
    data: bool,
    compressed: bool,
    offset: Option<u64>,
}

impl Entry {
    /// Whether `next` continues this entry (qemu-img's `entry_mergeable`).
    fn mergeable(&self, next: &Entry) -> bool {
        self.length != 0
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.depth == next.depth
            && self.present == next.present
            && match (self.offset, next.offset) {
                (Some(a), Some(b)) => a + self.length == b,
                (None, None) => true,
                _ => false,
            }
    }

    fn json(&self) -> String {
        let mut s = format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
            self.start, self.length, self.depth, self.present, self.zero, self.data, self.compressed
        );
        if let Some(o) = self.offset {
            s += &format!(", \"offset\": {o}");
        }
        s.push('}');
        s
    }
}

/// `%#-16x` of C: "0" for zero, else 0x-prefixed hex, left-aligned in 16 columns.
fn hex16(v: u64) -> String {
    let s = if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    };
    format!("{s:<16}")
}

/// `e` (data at a host offset in `file`) cut where `file` has holes: those pieces read as
/// zeros.
fn split_at_holes(file: &mut RawFile, e: Entry) -> Result<Vec<Entry>, String> {
    let host = e.offset.unwrap_or(0);
    let mut out = Vec::new();
    let mut done = 0;
    while done < e.length {
        let want = e.length - done;
        let (kind, n) = if host + done < file.size() {
            file.extent(host + done, want.min(file.size() - host - done))
                .map_err(|err| err.to_string())?
        } else {
            (Extent::Zero, want)
        };
        let n = n.clamp(1, want);
        out.push(Entry {
            start: e.start + done,
            length: n,
            zero: kind == Extent::Zero,
            offset: Some(host + done),
            ..e.clone()
        });
        done += n;
    }
    Ok(out)
}

/// `kiln img map [-f fmt] [--output human|json] FILE`.
pub(super) fn map(
    format: Option<&str>,
    output: &str,
    file: &Path,
    share: Share,
) -> Result<u8, String> {
    if output != "human" && output != "json" {
        return Err(format!("--output must be human or json, not '{output}'"));
    }
    let fmt = parse_format(format)?;
    let chain = backing_chain(file, fmt).map_err(|e| e.to_string())?;
    let mut img = open_image(file, format, true, share)?;
    let size = img.size();
    let mut entries: Vec<Entry> = Vec::new();
    // The qcow2 files of the chain, opened as plain files to find their holes.
    let mut files: HashMap<u32, RawFile> = HashMap::new();
    let mut looks: HashMap<u32, bool> = HashMap::new();
    let mut off = 0;
    while off < size {
        let (depth, st) = chain_status(img.as_mut(), off, size - off).map_err(|e| e.to_string())?;
        let e = Entry {
            start: off,
            length: st.len,
            depth,
            present: st.allocated,
            zero: st.zero,
            data: st.data,
            compressed: st.compressed,
            offset: st.offset,
        };
        off += st.len.max(1);
        // Only where QEMU looks (an image it guesses was preallocated), as qemu-img map.
        let link = match chain
            .get(depth as usize)
            .filter(|l| l.format == Format::Qcow2)
        {
            Some(l) => {
                let guess = match looks.get(&depth) {
                    Some(&g) => g,
                    None => {
                        let g = kiln_block::qcow2::Qcow2::open_shared(&l.path, true, Share::Force)
                            .and_then(|mut q| q.looks_metadata_preallocated())
                            .map_err(|e| e.to_string())?;
                        looks.insert(depth, g);
                        g
                    }
                };
                Some(l).filter(|_| guess)
            }
            None => None,
        };
        let pieces = match (link, e.offset) {
            (Some(l), Some(_)) if e.data && !e.zero && !e.compressed => {
                let f = match files.entry(depth) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(
                        RawFile::open_shared(&l.path, true, Share::Force)
                            .map_err(|e| e.to_string())?,
                    ),
                };
                split_at_holes(f, e)?
            }
            _ => vec![e],
        };
        for e in pieces {
            match entries.last_mut() {
                Some(last) if last.mergeable(&e) => last.length += e.length,
                _ => entries.push(e),
            }
        }
    }
    if entries.is_empty() {
        // qemu-img's entry for an empty image.
        entries.push(Entry {
            start: 0,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
        });
    }
    if output == "json" {
        let lines: Vec<String> = entries.iter().map(Entry::json).collect();
        println!("[{}]", lines.join(",\n"));
        return Ok(0);
    }
    println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
    for e in &entries {
        let Some(o) = e.offset.filter(|_| e.data) else {
            if e.data {
                return Err("File contains external, encrypted or compressed clusters.".into());
            }
            continue;
        };
        if !e.zero {
            let name = chain.get(e.depth as usize).map_or_else(
                || file.display().to_string(),
                |l| l.path.display().to_string(),
            );
            println!("{}{}{}{name}", hex16(e.start), hex16(e.length), hex16(o));
        }
    }
    Ok(0)
}
