//! `kiln img read` and `kiln img write`: dd-style access to an image's guest view at an
//! offset (reads to stdout; writes of a byte pattern, zeros or a file's contents).

use super::IO_CHUNK;
use super::{open_image, parse_size};
use kiln_block::Share;
use std::io::Write;
use std::path::Path;

/// `kiln img read FILE OFFSET LENGTH`.
pub(super) fn read(
    format: Option<&str>,
    file: &Path,
    offset: &str,
    length: &str,
    share: Share,
) -> Result<u8, String> {
    let offset = parse_size(offset)?;
    let length = parse_size(length)?;
    let mut img = open_image(file, format, true, share)?;
    if offset.checked_add(length).is_none_or(|e| e > img.size()) {
        return Err(format!(
            "{}: range {offset}+{length} is beyond the end of the image ({} bytes)",
            file.display(),
            img.size()
        ));
    }
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; IO_CHUNK.min(length) as usize];
    let mut done = 0;
    while done < length {
        let n = IO_CHUNK.min(length - done) as usize;
        img.read_at(&mut buf[..n], offset + done)
            .map_err(|e| e.to_string())?;
        out.write_all(&buf[..n])
            .map_err(|e| format!("stdout: {e}"))?;
        done += n as u64;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))?;
    Ok(0)
}

/// Arguments of `kiln img write`.
pub(super) struct WriteArgs<'a> {
    pub format: Option<&'a str>,
    pub pattern: Option<u8>,
    pub zero: bool,
    pub length: Option<&'a str>,
    pub from: Option<&'a Path>,
    pub file: &'a Path,
    pub offset: &'a str,
}

/// `kiln img write FILE OFFSET (--pattern B --length N | --zero --length N | --from F)`.
pub(super) fn write(a: WriteArgs<'_>) -> Result<u8, String> {
    let offset = parse_size(a.offset)?;
    let data = match (a.from, a.length) {
        (Some(f), None) => Some(std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?),
        (Some(_), Some(_)) => {
            return Err("--from takes its length from the file; drop --length".into())
        }
        (None, None) => {
            return Err("say what to write: --pattern or --zero with --length, or --from".into())
        }
        (None, Some(_)) => None,
    };
    let length = match (&data, a.length) {
        (Some(d), _) => d.len() as u64,
        (None, Some(l)) => parse_size(l)?,
        (None, None) => 0,
    };
    if data.is_none() && a.pattern.is_none() && !a.zero {
        return Err("--length needs --pattern or --zero".into());
    }
    let mut img = open_image(a.file, a.format, false, Share::Readers)?;
    if offset.checked_add(length).is_none_or(|e| e > img.size()) {
        return Err(format!(
            "{}: range {offset}+{length} is beyond the end of the image ({} bytes)",
            a.file.display(),
            img.size()
        ));
    }
    if a.zero {
        img.write_zeroes(offset, length)
            .map_err(|e| e.to_string())?;
    } else if let Some(d) = data {
        img.write_at(&d, offset).map_err(|e| e.to_string())?;
    } else {
        let buf = vec![a.pattern.unwrap_or(0); IO_CHUNK.min(length) as usize];
        let mut done = 0;
        while done < length {
            let n = IO_CHUNK.min(length - done) as usize;
            img.write_at(&buf[..n], offset + done)
                .map_err(|e| e.to_string())?;
            done += n as u64;
        }
    }
    img.flush().map_err(|e| e.to_string())?;
    Ok(0)
}
