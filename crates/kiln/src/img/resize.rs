//! `kiln img resize`: change an image's virtual size (`[+|-]SIZE`), refusing to shrink
//! without `--shrink`, with qemu-img's messages.

use super::{parse_format, parse_size};
use kiln_block::{Format, OpenOptions};
use std::path::Path;

/// `kiln img resize [-f fmt] [--shrink] FILE [+|-]SIZE`.
pub(super) fn resize(
    format: Option<&str>,
    shrink: bool,
    file: &Path,
    size: &str,
) -> Result<u8, String> {
    let (sign, num) = match size.as_bytes().first() {
        Some(b'+') => (1i8, &size[1..]),
        Some(b'-') => (-1, &size[1..]),
        _ => (0, size),
    };
    let n = parse_size(num)?;
    let format = match parse_format(format)? {
        Some(f) => f,
        None => kiln_block::probe(file)
            .map_err(|e| format!("Could not open '{}': {e}", file.display()))?,
    };
    // Only a look at the current size: the resize's own open takes the write lock.
    let opts = OpenOptions {
        read_only: true,
        format: Some(format),
        no_backing: true,
        share: kiln_block::Share::Force,
    };
    let cur = kiln_block::open(file, &opts)
        .map_err(|e| format!("Could not open '{}': {e}", file.display()))?
        .size();
    let new = match sign {
        0 => Some(n),
        1 => cur.checked_add(n),
        _ => cur.checked_sub(n).filter(|&v| v > 0),
    };
    let Some(new) = new.filter(|&v| v > 0) else {
        return Err("New image size must be positive".into());
    };
    if format == Format::Qcow2 && !new.is_multiple_of(512) {
        return Err("The new size must be a multiple of 512".into());
    }
    if new < cur && !shrink {
        return Err("Use the --shrink option to perform a shrink operation.".into());
    }
    kiln_block::resize_image(file, format, new, shrink).map_err(|e| e.to_string())?;
    println!("Image resized.");
    Ok(0)
}
