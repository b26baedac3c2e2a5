//! `kiln img amend -o OPTIONS FILE`: change a qcow2 image's options in place, as
//! `qemu-img amend`: `compat` (0.10 or 1.1), `lazy_refcounts`, and `size` (growing, as
//! resize). Options only creation can choose are refused with qemu-img's words; changing
//! the refcount width is refused (convert instead).

use super::create::{parse_bool, parse_compat};
use super::parse_size;
use kiln_block::qcow2::{AmendOptions, Qcow2};
use kiln_block::{BlockDevice, Format, Share};
use std::path::Path;

/// `kiln img amend`.
pub(super) fn amend(format: Option<&str>, options: &[String], file: &Path) -> Result<u8, String> {
    if options.is_empty() {
        return Err("Must specify options (-o)".into());
    }
    let format = match format {
        Some(f) => Format::from_name(f).map_err(|e| e.to_string())?,
        None => kiln_block::probe(file).map_err(|e| e.to_string())?,
    };
    if format != Format::Qcow2 {
        return Err(format!(
            "Format driver '{format}' does not support option amendment"
        ));
    }
    let mut o = AmendOptions::default();
    let mut size = None;
    let mut refcount_bits = None;
    for item in options
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("Invalid option '{item}' (expected name=value)"))?;
        match k {
            "compat" => o.version = Some(parse_compat(v)?),
            "lazy_refcounts" => o.lazy_refcounts = Some(parse_bool(k, v)?),
            "size" => size = Some(parse_size(v)?),
            "refcount_bits" => {
                refcount_bits = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("Invalid refcount_bits '{v}'"))?,
                )
            }
            "backing_file" | "backing_fmt" => {
                return Err("Cannot amend the backing file (use 'kiln img rebase' instead)".into())
            }
            "cluster_size" | "extended_l2" | "compression_type" | "preallocation"
            | "encryption" | "encrypt.format" | "data_file" | "data_file_raw" => {
                return Err(format!(
                    "Invalid parameter '{k}': this option is only supported for image creation"
                ))
            }
            _ => return Err(format!("Invalid parameter '{k}'")),
        }
    }
    let mut img = Qcow2::open_shared(file, false, Share::Readers).map_err(|e| e.to_string())?;
    if let Some(bits) = refcount_bits {
        if bits != img.header().refcount_bits() {
            return Err(format!(
                "Changing refcount_bits is not supported by Kiln (convert with -o refcount_bits={bits})"
            ));
        }
    }
    img.amend(&o).map_err(|e| e.to_string())?;
    let cur = img.size();
    // The resize opens the image itself: this open (and its write lock) ends first.
    drop(img);
    if let Some(new) = size.filter(|&n| n != cur) {
        kiln_block::resize_image(file, Format::Qcow2, new, false).map_err(|e| e.to_string())?;
    }
    Ok(0)
}
