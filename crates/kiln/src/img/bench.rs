//! `kiln img bench`: qemu-img's simple I/O benchmark with its option names and output, on
//! the block layer the VMM's disks use: COUNT requests of BUFFER_SIZE bytes, the offset
//! advancing by STEP_SIZE and wrapping at the end of the image, timed from the first request to
//! the last (the final flush on close is not timed, as in qemu-img).
//!
//! Kiln's block core is synchronous, so requests run one after another whatever `-d`
//! says (the depth is accepted so pasted qemu-img command lines work, and reported).

use super::{open_image, parse_size};
use kiln_block::Share;
use std::path::Path;
use std::time::Instant;

/// Arguments of `kiln img bench`.
pub(super) struct BenchArgs<'a> {
    pub format: Option<&'a str>,
    pub cache: &'a str,
    pub count: u64,
    pub depth: u64,
    pub offset: &'a str,
    pub buffer_size: &'a str,
    pub step: Option<&'a str>,
    pub write: bool,
    pub pattern: u8,
    pub flush_interval: Option<u64>,
    pub quiet: bool,
    pub share: Share,
    pub file: &'a Path,
}

/// Run the benchmark; prints qemu-img's two lines (unless quiet).
pub(super) fn bench(a: BenchArgs<'_>) -> Result<u8, String> {
    let flush_each = match a.cache {
        "writeback" | "unsafe" => false,
        "writethrough" => true,
        "none" | "directsync" => {
            return Err(format!(
                "cache mode '{}' (O_DIRECT) is not supported by kiln img bench; use writeback, writethrough or unsafe",
                a.cache
            ))
        }
        other => return Err(format!("invalid cache mode '{other}'")),
    };
    if a.count == 0 {
        return Err("invalid request count 0 (-c must be at least 1)".into());
    }
    if a.depth == 0 {
        return Err("invalid queue depth 0 (-d must be at least 1)".into());
    }
    let bufsize = parse_size(a.buffer_size)?;
    if bufsize == 0 || bufsize > 1 << 30 {
        return Err(format!("invalid buffer size '{}'", a.buffer_size));
    }
    let step = a.step.map(parse_size).transpose()?.unwrap_or(bufsize);
    let mut offset = parse_size(a.offset)?;
    if a.flush_interval.is_some() && !a.write {
        return Err("--flush-interval is only available in write tests".into());
    }
    let mut img = open_image(a.file, a.format, !a.write, a.share)?;
    let size = img.size();
    if offset.checked_add(bufsize).is_none_or(|e| e > size) {
        return Err(format!(
            "{}: first request at offset {offset} of {bufsize} bytes is beyond the end of the image ({size} bytes)",
            a.file.display()
        ));
    }
    if !a.quiet {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            a.count,
            if a.write { "write" } else { "read" },
            bufsize,
            a.depth,
            offset,
            step
        );
        if a.depth > 1 {
            eprintln!("note: kiln runs the requests one at a time (its block core is synchronous)");
        }
    }
    let mut buf = vec![a.pattern; bufsize as usize];
    let start = Instant::now();
    for n in 1..=a.count {
        let r = if a.write {
            img.write_at(&buf, offset)
        } else {
            img.read_at(&mut buf, offset)
        };
        r.map_err(|e| format!("Failed request: {e}"))?;
        if flush_each || a.flush_interval.is_some_and(|i| i > 0 && n % i == 0) {
            img.flush()
                .map_err(|e| format!("Failed flush request: {e}"))?;
        }
        // qemu-img 10.0's wrap (modulo the image size, so runs see the same offsets as
        // the peer's), except that a request which would run past the end starts over at
        // 0 where qemu-img 10.0 fails with EIO.
        offset = (offset + step) % size;
        if offset + bufsize > size {
            offset = 0;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if a.write && a.cache != "unsafe" {
        img.flush().map_err(|e| e.to_string())?;
    }
    if !a.quiet {
        println!("Run completed in {secs:.3} seconds.");
    }
    Ok(0)
}
