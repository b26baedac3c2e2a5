//! `kiln img compare`: compare two images' guest views like qemu-img compare (exit 0
//! identical, 1 different, 2 error; a size difference is a warning unless -s, and the
//! longer image's tail must then read as zeros).

use super::open_image;
use super::IO_CHUNK;
use kiln_block::Share;
use kiln_block::{chain_status, BlockDevice, BlockStatus};
use std::path::Path;

const SECTOR: usize = 512;

enum Outcome {
    Same,
    Differ(String),
}

/// `kiln img compare [-f fmt] [-F fmt] [-s] FILE1 FILE2`: prints the verdict on stdout,
/// errors on stderr, returns the exit status.
pub(super) fn compare(
    f1: Option<&str>,
    f2: Option<&str>,
    strict: bool,
    file1: &Path,
    file2: &Path,
    share: Share,
) -> u8 {
    match run(f1, f2, strict, file1, file2, share) {
        Ok(Outcome::Same) => {
            println!("Images are identical.");
            0
        }
        Ok(Outcome::Differ(msg)) => {
            println!("{msg}");
            1
        }
        Err(e) => {
            eprintln!("kiln: {e}");
            2
        }
    }
}

fn status(dev: &mut dyn BlockDevice, off: u64, len: u64) -> Result<BlockStatus, String> {
    chain_status(dev, off, len)
        .map(|(_, s)| s)
        .map_err(|e| e.to_string())
}

fn read(dev: &mut dyn BlockDevice, buf: &mut [u8], off: u64) -> Result<(), String> {
    dev.read_at(buf, off).map_err(|e| e.to_string())
}

/// Where the first non-zero 512-byte sector of `len` bytes at `off` starts (as
/// qemu-img's check_empty_sectors reports it).
fn first_nonzero(dev: &mut dyn BlockDevice, off: u64, len: u64) -> Result<Option<u64>, String> {
    let mut buf = vec![0u8; IO_CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = IO_CHUNK.min(len - done) as usize;
        read(dev, &mut buf[..n], off + done)?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            let at = done + i as u64;
            return Ok(Some(off + at / SECTOR as u64 * SECTOR as u64));
        }
        done += n as u64;
    }
    Ok(None)
}

fn run(
    f1: Option<&str>,
    f2: Option<&str>,
    strict: bool,
    file1: &Path,
    file2: &Path,
    share: Share,
) -> Result<Outcome, String> {
    let mut a = open_image(file1, f1, true, share)?;
    let mut b = open_image(file2, f2, true, share)?;
    let (s1, s2) = (a.size(), b.size());
    if strict && s1 != s2 {
        return Ok(Outcome::Differ("Strict mode: Image size mismatch!".into()));
    }
    let common = s1.min(s2);
    let mut off = 0;
    let mut buf1 = Vec::new();
    let mut buf2 = Vec::new();
    while off < common {
        let st1 = status(a.as_mut(), off, common - off)?;
        let st2 = status(b.as_mut(), off, common - off)?;
        let chunk = st1.len.min(st2.len).max(1);
        if strict {
            let key = |s: &BlockStatus| {
                (
                    s.allocated,
                    s.zero,
                    s.data,
                    s.compressed,
                    s.offset.is_some(),
                )
            };
            if key(&st1) != key(&st2) {
                return Ok(Outcome::Differ(format!(
                    "Strict mode: Offset {off} block status mismatch!"
                )));
            }
        }
        if st1.zero && st2.zero {
            // Both read as zeros.
        } else if st1.allocated == st2.allocated {
            let mut done = 0;
            while done < chunk {
                let n = IO_CHUNK.min(chunk - done) as usize;
                buf1.resize(n, 0);
                buf2.resize(n, 0);
                read(a.as_mut(), &mut buf1, off + done)?;
                read(b.as_mut(), &mut buf2, off + done)?;
                if let Some(i) = buf1.iter().zip(&buf2).position(|(x, y)| x != y) {
                    let at = off + done + (i / SECTOR * SECTOR) as u64;
                    return Ok(Outcome::Differ(format!("Content mismatch at offset {at}!")));
                }
                done += n as u64;
            }
        } else {
            let dev = if st1.allocated {
                a.as_mut()
            } else {
                b.as_mut()
            };
            if let Some(at) = first_nonzero(dev, off, chunk)? {
                return Ok(Outcome::Differ(format!("Content mismatch at offset {at}!")));
            }
        }
        off += chunk;
    }
    if s1 != s2 {
        println!("Warning: Image size mismatch!");
        let (dev, total) = if s1 > s2 {
            (a.as_mut(), s1)
        } else {
            (b.as_mut(), s2)
        };
        while off < total {
            let st = status(dev, off, total - off)?;
            if !st.zero {
                if let Some(at) = first_nonzero(dev, off, st.len)? {
                    return Ok(Outcome::Differ(format!("Content mismatch at offset {at}!")));
                }
            }
            off += st.len.max(1);
        }
    }
    Ok(Outcome::Same)
}
