//! `kiln img info`: what an image is, in qemu-img's human layout or its JSON keys.

use super::parse_format;
use kiln_block::qcow2::Qcow2;
use kiln_block::Share;
use kiln_block::{BlockDevice, Format};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One persistent dirty bitmap, as qemu-img lists it.
#[derive(Serialize)]
struct BitmapJson {
    flags: Vec<&'static str>,
    name: String,
    granularity: u64,
}

/// qcow2-specific data, with qemu-img's keys.
#[derive(Serialize)]
struct Qcow2Data {
    compat: &'static str,
    #[serde(rename = "compression-type")]
    compression_type: &'static str,
    #[serde(rename = "lazy-refcounts", skip_serializing_if = "Option::is_none")]
    lazy_refcounts: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bitmaps: Option<Vec<BitmapJson>>,
    #[serde(rename = "refcount-bits")]
    refcount_bits: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    corrupt: Option<bool>,
    #[serde(rename = "extended-l2", skip_serializing_if = "Option::is_none")]
    extended_l2: Option<bool>,
}

#[derive(Serialize)]
struct FormatSpecific {
    #[serde(rename = "type")]
    ty: &'static str,
    data: Qcow2Data,
}

/// The file (or block device) under the image, as qemu-img describes its protocol node.
#[derive(Serialize)]
struct FileNode {
    children: [(); 0],
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    filename: String,
    /// "file", or "host_device" for a block device.
    format: &'static str,
    #[serde(rename = "actual-size")]
    actual_size: u64,
    #[serde(rename = "format-specific")]
    format_specific: FileSpecific,
    #[serde(rename = "dirty-flag")]
    dirty_flag: bool,
}

#[derive(Serialize)]
struct FileSpecific {
    #[serde(rename = "type")]
    ty: &'static str,
    data: std::collections::BTreeMap<String, ()>,
}

#[derive(Serialize)]
struct Child {
    name: &'static str,
    info: FileNode,
}

/// The image description, with qemu-img's JSON keys and order.
#[derive(Serialize)]
struct ImageInfo {
    children: Vec<Child>,
    #[serde(
        rename = "backing-filename-format",
        skip_serializing_if = "Option::is_none"
    )]
    backing_filename_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots: Option<Vec<super::snapshot::SnapshotJson>>,
    #[serde(skip)]
    snapshot_table: Option<String>,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    filename: String,
    #[serde(rename = "cluster-size", skip_serializing_if = "Option::is_none")]
    cluster_size: Option<u64>,
    format: &'static str,
    #[serde(rename = "actual-size")]
    actual_size: u64,
    #[serde(rename = "format-specific", skip_serializing_if = "Option::is_none")]
    format_specific: Option<FormatSpecific>,
    #[serde(
        rename = "full-backing-filename",
        skip_serializing_if = "Option::is_none"
    )]
    full_backing_filename: Option<String>,
    #[serde(rename = "backing-filename", skip_serializing_if = "Option::is_none")]
    backing_filename: Option<String>,
    #[serde(rename = "dirty-flag")]
    dirty_flag: bool,
}

/// qemu's size_to_str: three significant digits and a binary unit ("196 KiB").
pub(crate) fn human_size(v: u64) -> String {
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut i = 0;
    // Switch to the next unit once the number would reach 1000.
    while i < 6 && v as f64 >= 1000.0 * (1u64 << (10 * i)) as f64 {
        i += 1;
    }
    let x = v as f64 / (1u64 << (10 * i)) as f64;
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{x:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s} {}B", UNITS[i])
}

fn gather(format: Option<&str>, file: &Path, share: Share) -> Result<ImageInfo, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let format = match parse_format(format)? {
        Some(f) => f,
        None => kiln_block::probe(file).map_err(|e| e.to_string())?,
    };
    // As QEMU, in whole 512-byte sectors (the tail of the last one reads as zeros): the
    // block layer's size of the file (a block device's too, which `stat` gives as 0).
    let length = std::fs::File::open(file)
        .map_err(|e| format!("{}: {e}", file.display()))
        .and_then(|f| kiln_block::file_len(&f).map_err(|e| format!("{}: {e}", file.display())))?
        .next_multiple_of(512);
    let block_device = {
        use std::os::unix::fs::FileTypeExt;
        meta.file_type().is_block_device()
    };
    let mut info = ImageInfo {
        children: vec![Child {
            name: "file",
            info: FileNode {
                children: [],
                virtual_size: length,
                filename: file.display().to_string(),
                format: if block_device { "host_device" } else { "file" },
                actual_size: meta.blocks() * 512,
                format_specific: FileSpecific {
                    ty: "file",
                    data: Default::default(),
                },
                dirty_flag: false,
            },
        }],
        backing_filename_format: None,
        snapshots: None,
        snapshot_table: None,
        virtual_size: length,
        filename: file.display().to_string(),
        cluster_size: None,
        format: format.name(),
        actual_size: meta.blocks() * 512,
        format_specific: None,
        full_backing_filename: None,
        backing_filename: None,
        dirty_flag: false,
    };
    if format == Format::Qcow {
        let img = kiln_block::qcow1::Qcow1::open_shared(file, share).map_err(|e| e.to_string())?;
        info.virtual_size = img.size();
        info.cluster_size = Some(1 << img.cluster_bits());
        if let Some(b) = img.backing_file() {
            info.backing_filename = Some(b.to_string());
            info.full_backing_filename =
                Some(kiln_block::resolve_backing(file, b).display().to_string());
        }
    }
    if format == Format::Qcow2 {
        let img = Qcow2::open_shared(file, true, share).map_err(|e| e.to_string())?;
        let h = img.header();
        info.virtual_size = img.size();
        info.cluster_size = Some(h.cluster_size());
        info.dirty_flag = h.incompatible_features & kiln_block::qcow2::header::INCOMPAT_DIRTY != 0;
        if let Some(b) = img.backing_file() {
            info.backing_filename = Some(b.to_string());
            info.full_backing_filename =
                Some(kiln_block::resolve_backing(file, b).display().to_string());
            info.backing_filename_format = img.backing_format().map(str::to_string);
        }
        if !img.snapshots().is_empty() {
            info.snapshots = Some(super::snapshot::to_json(img.snapshots()));
            info.snapshot_table = Some(super::snapshot::table(img.snapshots()));
        }
        let v3 = h.version >= 3;
        info.format_specific = Some(FormatSpecific {
            ty: "qcow2",
            data: Qcow2Data {
                compat: if h.version >= 3 { "1.1" } else { "0.10" },
                compression_type: h.compression.name(),
                // qemu-img shows these for v3 images only.
                lazy_refcounts: v3.then(|| h.lazy_refcounts()),
                bitmaps: Some(
                    img.bitmaps()
                        .map_err(|e| format!("{}: {e}", file.display()))?
                        .iter()
                        .map(|b| BitmapJson {
                            flags: b.flag_names(),
                            name: b.name.clone(),
                            granularity: b.granularity,
                        })
                        .collect::<Vec<_>>(),
                )
                .filter(|v| !v.is_empty()),
                refcount_bits: h.refcount_bits(),
                corrupt: v3.then_some(
                    h.incompatible_features & kiln_block::qcow2::header::INCOMPAT_CORRUPT != 0,
                ),
                extended_l2: v3.then(|| h.extended_l2()),
            },
        });
    }
    Ok(info)
}

/// `kiln img info`: the image, or with `backing_chain` every image of its backing chain
/// in order (human blocks separated by a blank line, or a JSON array), as qemu-img's
/// `--backing-chain`.
pub(super) fn info(
    format: Option<&str>,
    output: &str,
    file: &Path,
    backing_chain: bool,
    share: Share,
) -> Result<u8, String> {
    if output != "human" && output != "json" {
        return Err(format!("--output must be human or json, not '{output}'"));
    }
    let first = gather(format, file, share)?;
    if !backing_chain {
        if output == "json" {
            let s = serde_json::to_string_pretty(&first).map_err(|e| e.to_string())?;
            println!("{s}");
        } else {
            print!("{}", human(&first));
        }
        return Ok(0);
    }
    let mut seen = vec![canonical(file)?];
    let mut chain = vec![first];
    while let Some(next) = chain.last().and_then(|i| i.full_backing_filename.clone()) {
        let path = Path::new(&next);
        let canon = canonical(path)?;
        if seen.contains(&canon) {
            return Err(format!("Backing file '{next}' creates an infinite loop."));
        }
        if seen.len() > kiln_block::MAX_CHAIN_DEPTH {
            return Err(format!(
                "{}: backing chain is deeper than {} images",
                file.display(),
                kiln_block::MAX_CHAIN_DEPTH
            ));
        }
        seen.push(canon);
        let fmt = chain.last().and_then(|i| i.backing_filename_format.clone());
        chain.push(gather(fmt.as_deref(), path, share)?);
    }
    if output == "json" {
        let s = serde_json::to_string_pretty(&chain).map_err(|e| e.to_string())?;
        println!("{s}");
    } else {
        let blocks: Vec<String> = chain.iter().map(human).collect();
        print!("{}", blocks.join("\n"));
    }
    Ok(0)
}

fn canonical(path: &Path) -> Result<std::path::PathBuf, String> {
    std::fs::canonicalize(path).map_err(|e| format!("Could not open '{}': {e}", path.display()))
}

/// One image in qemu-img's human layout.
fn human(i: &ImageInfo) -> String {
    let mut out = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        i.filename,
        i.format,
        human_size(i.virtual_size),
        i.virtual_size,
        human_size(i.actual_size)
    );
    if let Some(cs) = i.cluster_size {
        out += &format!("cluster_size: {cs}\n");
    }
    if i.dirty_flag {
        out += "cleanly shut down: no\n";
    }
    if let Some(b) = &i.backing_filename {
        let full = i.full_backing_filename.as_deref().unwrap_or(b);
        if full != b {
            out += &format!("backing file: {b} (actual path: {full})\n");
        } else {
            out += &format!("backing file: {b}\n");
        }
    }
    if let Some(f) = &i.backing_filename_format {
        out += &format!("backing file format: {f}\n");
    }
    if let Some(t) = &i.snapshot_table {
        out += t;
    }
    if let Some(fs) = &i.format_specific {
        let d = &fs.data;
        out += &format!(
            "Format specific information:\n    compat: {}\n    compression type: {}\n",
            d.compat, d.compression_type
        );
        if let Some(l) = d.lazy_refcounts {
            out += &format!("    lazy refcounts: {l}\n");
        }
        if let Some(bitmaps) = &d.bitmaps {
            out += "    bitmaps:\n";
            for (i, b) in bitmaps.iter().enumerate() {
                out += &format!("        [{i}]:\n            flags:\n");
                for (j, f) in b.flags.iter().enumerate() {
                    out += &format!("                [{j}]: {f}\n");
                }
                out += &format!(
                    "            name: {}\n            granularity: {}\n",
                    b.name, b.granularity
                );
            }
        }
        out += &format!("    refcount bits: {}\n", d.refcount_bits);
        if let Some(c) = d.corrupt {
            out += &format!("    corrupt: {c}\n");
        }
        if let Some(e) = d.extended_l2 {
            out += &format!("    extended l2: {e}\n");
        }
    }
    for c in &i.children {
        let f = &c.info;
        out += &format!(
            "Child node '/{}':\n    filename: {}\n    protocol type: {}\n    file length: {} ({} bytes)\n    disk size: {}\n",
            c.name,
            f.filename,
            f.format,
            human_size(f.virtual_size),
            f.virtual_size,
            human_size(f.actual_size)
        );
    }
    out
}
