//! Compressed qcow2 clusters against the real qemu-img: clusters Kiln writes compressed
//! (zlib and zstd, 4 KiB to 2 MiB clusters) pass `qemu-img check`, compare equal and are
//! counted as compressed by it; writes and zeroing over compressed clusters copy on write
//! and stay check-clean; images qemu-img compresses (zstd and zlib) read back identically.

mod support;

use kiln_block::qcow2::{self, Compression, CreateOptions, Qcow2};
use kiln_block::BlockDevice;
use std::path::Path;
use support::*;

/// Test data that compresses: per 4 KiB block, text-like repeats, runs of one byte,
/// random bytes (does not compress) or zeros.
fn compressible(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = vec![0u8; n];
    for (i, b) in v.chunks_mut(4096).enumerate() {
        match r.below(5) {
            0 | 1 => {
                let word = format!("kiln block {i} {} ", r.below(1000));
                for (k, x) in b.iter_mut().enumerate() {
                    *x = word.as_bytes()[k % word.len()];
                }
            }
            2 => b.fill(r.next() as u8),
            3 => b.copy_from_slice(&r.bytes(b.len())),
            _ => {}
        }
    }
    v
}

/// Write `data` as the whole disk with compressed clusters, skipping all-zero clusters
/// (what `convert -c` does).
fn write_all_compressed(img: &mut Qcow2, data: &[u8]) {
    let cs = img.header().cluster_size() as usize;
    for (k, c) in data.chunks(cs).enumerate() {
        if c.iter().any(|&x| x != 0) {
            img.write_compressed((k * cs) as u64, c).unwrap();
        }
    }
    img.flush().unwrap();
}

/// The percentage of compressed clusters `qemu-img check` reports.
fn qemu_compressed_pct(img: &Path) -> f64 {
    let out = qemu("qemu-img", &["check", s(img)]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("compressed clusters"))
        .unwrap_or_else(|| panic!("no compressed-cluster count in: {text}"));
    // "... 12.50% fragmented, 12.50% compressed clusters"
    let pct = line
        .split(", ")
        .find(|p| p.contains("compressed"))
        .and_then(|p| p.split('%').next())
        .unwrap();
    pct.trim().parse().unwrap()
}

fn verify(dir: &Path, img: &Path, want: &[u8], what: &str) {
    assert_eq!(qemu_check(img), 0, "{what}: qemu-img check");
    let raw = dir.join("expected.raw");
    std::fs::write(&raw, want).unwrap();
    qemu(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(img)],
    );
    let r = qcow2::check::check(img).unwrap();
    assert_eq!(
        (r.corruptions, r.leaks),
        (0, 0),
        "{what}: kiln check: {:?}",
        r.messages
    );
    let mut dev = open(img, true);
    assert_same(&read_all(dev.as_mut()), want, what);
}

#[test]
fn compressed_clusters_pass_qemu_check_then_survive_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (cs, size) in [(4096u64, 2u64 << 20), (65536, 6 << 20), (2 << 20, 12 << 20)] {
        for alg in [Compression::Zlib, Compression::Zstd] {
            let what = format!("{} {cs}", alg.name());
            let img = d.join("z.qcow2");
            qcow2::create(
                &img,
                &CreateOptions {
                    size,
                    cluster_size: cs,
                    compression: alg,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut want = compressible(cs ^ 7, size as usize);
            // One cluster of random bytes does not compress and is stored plain.
            let rnd = Rng(cs).bytes(cs as usize);
            want[cs as usize..2 * cs as usize].copy_from_slice(&rnd);
            let mut q = Qcow2::open(&img, false).unwrap();
            write_all_compressed(&mut q, &want);
            drop(q);
            verify(d, &img, &want, &what);
            let pct = qemu_compressed_pct(&img);
            assert!(pct > 10.0, "{what}: only {pct}% compressed clusters");
            let r = qcow2::check::check(&img).unwrap();
            assert!(r.compressed_clusters > 0, "{what}");
            // Several compressed clusters share host clusters (clusters of text compress
            // to well under half a cluster; 2 MiB images are mostly metadata clusters).
            assert!(
                cs > 65536 || r.image_end_offset < size / 2,
                "{what}: image is {} bytes: compressed clusters were not packed",
                r.image_end_offset
            );

            // Partial writes and zeroing over compressed clusters copy on write.
            let mut dev = open(&img, false);
            let mut rng = Rng(cs + 1);
            for i in 0..40 {
                let len = 1 + rng.below(cs.min(70_000) * 2);
                let off = rng.below(size - len);
                let (o, l) = (off as usize, len as usize);
                if i % 5 == 4 {
                    dev.write_zeroes(off, len).unwrap();
                    want[o..o + l].fill(0);
                } else {
                    let b = rng.bytes(l);
                    dev.write_at(&b, off).unwrap();
                    want[o..o + l].copy_from_slice(&b);
                }
            }
            dev.flush().unwrap();
            drop(dev);
            verify(d, &img, &want, &format!("{what} after overwrites"));

            // Compressing over compressed (and plain) clusters replaces them.
            let mut q = Qcow2::open(&img, false).unwrap();
            let again = compressible(cs ^ 99, size as usize);
            write_all_compressed(&mut q, &again);
            drop(q);
            for (k, c) in again.chunks(cs as usize).enumerate() {
                if c.iter().any(|&x| x != 0) {
                    let at = k * cs as usize;
                    want[at..at + c.len()].copy_from_slice(c);
                }
            }
            verify(d, &img, &want, &format!("{what} recompressed"));
        }
    }
}

#[test]
fn images_qemu_img_compresses_read_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("src.raw");
    let mut data = compressible(5, 5 << 20);
    // A size that is not a multiple of the cluster size.
    data.truncate((5 << 20) - 3 * 512);
    std::fs::write(&raw, &data).unwrap();
    for ctype in ["zstd", "zlib"] {
        for cs in ["4k", "64k", "2M"] {
            let img = d.join("q.qcow2");
            let _ = std::fs::remove_file(&img);
            let o = format!("cluster_size={cs},compression_type={ctype}");
            qemu(
                "qemu-img",
                &["convert", "-c", "-O", "qcow2", "-o", &o, s(&raw), s(&img)],
            );
            let want = qemu_raw(d, &img);
            let mut dev = open(&img, true);
            let got = read_all(dev.as_mut());
            assert_same(&got, &want, &format!("{ctype} {cs}"));
            assert_same(
                &got[..data.len()],
                &data,
                &format!("{ctype} {cs} vs source"),
            );
            // And Kiln writes over qemu's compressed clusters cleanly.
            drop(dev);
            let mut dev = open(&img, false);
            let mut want = got;
            let b = Rng(9).bytes(100_000);
            dev.write_at(&b, 12345).unwrap();
            want[12345..112_345].copy_from_slice(&b);
            dev.flush().unwrap();
            drop(dev);
            verify(d, &img, &want, &format!("{ctype} {cs} overwritten"));
        }
    }
}

#[test]
fn compressed_writes_are_refused_unaligned_and_on_read_only_images() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("z.qcow2");
    qcow2::create(
        &img,
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let mut q = Qcow2::open(&img, false).unwrap();
    assert!(q.write_compressed(512, &[1u8; 65536]).is_err());
    assert!(q.write_compressed(0, &[1u8; 1000]).is_err());
    assert!(q.write_compressed(1 << 20, &[1u8; 65536]).is_err());
    drop(q);
    let mut q = Qcow2::open(&img, true).unwrap();
    let e = q.write_compressed(0, &[1u8; 65536]).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[test]
fn compressed_clusters_with_narrow_refcounts_v2_and_extended_l2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 3u64 << 20;
    let cases = [
        // One-bit refcounts: a host cluster holds one compressed cluster only.
        CreateOptions {
            size,
            cluster_size: 4096,
            refcount_bits: 1,
            ..Default::default()
        },
        CreateOptions {
            size,
            version: 2,
            ..Default::default()
        },
        CreateOptions {
            size,
            refcount_bits: 64,
            extended_l2: true,
            compression: Compression::Zstd,
            ..Default::default()
        },
    ];
    for (i, opts) in cases.iter().enumerate() {
        let img = d.join("c.qcow2");
        qcow2::create(&img, opts).unwrap();
        let mut want = compressible(i as u64 + 40, size as usize);
        let mut q = Qcow2::open(&img, false).unwrap();
        write_all_compressed(&mut q, &want);
        drop(q);
        verify(d, &img, &want, &format!("case {i}"));
        assert!(qemu_compressed_pct(&img) > 10.0, "case {i}");
        let mut dev = open(&img, false);
        let mut rng = Rng(i as u64);
        for _ in 0..30 {
            let len = 1 + rng.below(20_000);
            let off = rng.below(size - len);
            let b = rng.bytes(len as usize);
            dev.write_at(&b, off).unwrap();
            want[off as usize..(off + len) as usize].copy_from_slice(&b);
        }
        dev.discard(65536, 3 * 65536 + 1000).unwrap();
        want[65536..4 * 65536 + 1000].fill(0);
        dev.flush().unwrap();
        drop(dev);
        verify(d, &img, &want, &format!("case {i} overwritten"));
    }
}
