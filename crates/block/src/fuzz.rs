//! The fuzz harness for the image parsers: one input is a sparse image file (the header,
//! L1/L2 tables, refcount structures and snapshot table are whatever the input holds),
//! which is opened as qcow2 (or legacy qcow when its version field says 1), read, walked
//! and checked, and optionally written, as a user's command would. Shared by the cargo-fuzz target `fuzz/fuzz_targets/qcow2.rs` and the stable
//! corpus replay in `crates/block/tests/fuzz_corpus.rs`.
//!
//! Input layout: byte 0 holds flags ([`FLAG_WRITE`], [`FLAG_CHECK`]); then chunks, each a
//! big-endian `u32` file offset, a big-endian `u16` length and that many bytes, written
//! into an anonymous temporary file (so a 2 MiB-cluster image with tables at 8 MiB fits in
//! a few hundred input bytes). A truncated last chunk is dropped.
//!
//! Invariants checked beyond "no panic, no hang": a write that succeeded reads back as
//! written, zeroing that succeeded reads back as zeros, and reads never return more or
//! less than asked.

use crate::qcow1::Qcow1;
use crate::qcow2::Qcow2;
use crate::{BlockDevice, Result};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Flag: also open the image read-write and write, zero and flush through it.
pub const FLAG_WRITE: u8 = 1;
/// Flag: run `check` over the image.
pub const FLAG_CHECK: u8 = 2;

/// Most bytes read from the device per input (keeps every input fast).
const READ_LIMIT: u64 = 1 << 20;
/// Most extents walked per input.
const EXTENT_STEPS: usize = 64;

/// Split an input into its flags and its `(offset, bytes)` chunks.
pub fn chunks(data: &[u8]) -> (u8, Vec<(u64, &[u8])>) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    let mut out = Vec::new();
    while rest.len() >= 6 {
        let off = u64::from(u32::from_be_bytes(rest[..4].try_into().unwrap()));
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
        rest = &rest[6..];
        if rest.len() < len {
            break;
        }
        out.push((off, &rest[..len]));
        rest = &rest[len..];
    }
    (flags, out)
}

/// Encode an image file as an input: its non-zero runs become chunks (runs closer than 16
/// zero bytes are merged), and its last byte one more, so the length survives. Used to
/// turn real images into seeds.
pub fn encode(flags: u8, image: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    let mut i = 0;
    while i < image.len() {
        if image[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        while i < image.len() && i - start < 0xffff {
            if image[i] != 0 {
                end = i + 1;
            } else if i - end >= 16 {
                break;
            }
            i += 1;
        }
        out.extend_from_slice(&(start as u32).to_be_bytes());
        out.extend_from_slice(&((end - start) as u16).to_be_bytes());
        out.extend_from_slice(&image[start..end]);
        i = end;
    }
    // Keep the file's length: a one-byte chunk at its end (images may end in zeros that
    // their tables point into).
    if let Some(&last) = image.last() {
        if last == 0 {
            out.extend_from_slice(&(image.len() as u32 - 1).to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.push(0);
        }
    }
    out
}

/// An anonymous file in the temporary directory (gone when dropped).
fn temp_file() -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .expect("O_TMPFILE in the temporary directory")
}

/// Write the input's chunks into a fresh anonymous file.
fn materialize(chunks: &[(u64, &[u8])]) -> File {
    let f = temp_file();
    for (off, bytes) in chunks {
        f.write_all_at(bytes, *off).expect("write fuzz image");
    }
    f
}

fn copy_of(f: &File) -> File {
    let len = f.metadata().expect("stat fuzz image").len();
    let g = temp_file();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], at).expect("read fuzz image");
        if buf[..n].iter().any(|&b| b != 0) {
            g.write_all_at(&buf[..n], at).expect("write fuzz image");
        }
        at += n as u64;
    }
    g.set_len(len).expect("size fuzz image");
    g
}

/// A cheap hash of the input, to pick offsets deterministically.
fn mix(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Read through the device the way `convert` and a guest would.
fn read_all(dev: &mut dyn BlockDevice, seed: u64) {
    let size = dev.size();
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    while at < size.min(READ_LIMIT) {
        let n = (size - at).min(buf.len() as u64) as usize;
        let _ = dev.read_at(&mut buf[..n], at);
        at += n as u64;
    }
    if size > 0 {
        for off in [size - 1, seed % size, size / 2] {
            let n = (size - off).min(4096) as usize;
            let _ = dev.read_at(&mut buf[..n], off);
        }
        // Out of range must fail, never read.
        assert!(dev.read_at(&mut buf[..1], size).is_err());
    }
    let mut at = 0;
    for _ in 0..EXTENT_STEPS {
        if at >= size {
            break;
        }
        match dev.extent(at, size - at) {
            Ok((_, n)) => {
                assert!(n > 0 && n <= size - at, "extent length {n} at {at}");
                at += n;
            }
            Err(_) => break,
        }
    }
}

/// Write, read back, zero, read back and flush through a read-write open.
fn write_some(dev: &mut dyn BlockDevice, seed: u64) -> Result<()> {
    let size = dev.size();
    if size == 0 {
        return Ok(());
    }
    let off = (seed % size) & !511;
    let len = (size - off).min(4096 + (seed >> 20) % 8192) as usize;
    let data: Vec<u8> = (0..len).map(|i| (i as u8 ^ seed as u8) | 1).collect();
    dev.write_at(&data, off)?;
    let mut back = vec![0u8; len];
    dev.read_at(&mut back, off)?;
    assert!(back == data, "a successful write did not read back");
    let zoff = off + (len as u64) / 2;
    let zlen = (size - zoff).min(1024);
    dev.write_zeroes(zoff, zlen)?;
    let mut back = vec![0xa5u8; zlen as usize];
    dev.read_at(&mut back, zoff)?;
    assert!(
        back.iter().all(|&b| b == 0),
        "zeroed range did not read as zeros"
    );
    dev.flush()
}

/// Run one input (see the module docs). Panics only on a broken invariant.
pub fn run_one(data: &[u8]) {
    let (flags, chunks) = chunks(data);
    let seed = mix(data);
    let file = materialize(&chunks);
    let path = Path::new("fuzz-image");
    if flags & FLAG_WRITE != 0 {
        if let Ok(mut img) = Qcow2::from_file(copy_of(&file), path, false) {
            let _ = write_some(&mut img, seed);
            read_all(&mut img, seed);
        }
    }
    let mut version = [0u8; 4];
    let _ = file.read_at(&mut version, 4);
    if version == [0, 0, 0, 1] {
        // Legacy qcow: read-only only.
        if let Ok(mut img) = Qcow1::from_file(file, path) {
            read_all(&mut img, seed);
        }
        return;
    }
    if let Ok(mut img) = Qcow2::from_file(file, path, true) {
        read_all(&mut img, seed);
        if flags & FLAG_CHECK != 0 {
            let _ = crate::qcow2::check::check_image(&mut img);
        }
    }
}
