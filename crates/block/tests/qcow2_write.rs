//! Writing qcow2 images with Kiln: created images are byte-identical to qemu-img's, and
//! after random writes (across cluster boundaries, over backing files, zeroing, refcount
//! table growth) `qemu-img check` finds no errors and `qemu-img compare` agrees with the
//! expected data; backing files are never modified; writes onto metadata are refused.

mod support;

use kiln_block::qcow2::{self, CreateOptions};
use kiln_block::{BlockDevice, Error};
use std::path::Path;
use support::*;

/// Random writes (and some zeroing) mirrored into `shadow`.
fn scribble(dev: &mut dyn BlockDevice, shadow: &mut [u8], seed: u64, n: usize) {
    let mut r = Rng(seed);
    let size = shadow.len() as u64;
    for i in 0..n {
        let len = 1 + r.below(if i % 4 == 0 { 300_000 } else { 9000 });
        let off = r.below(size - len);
        let (o, l) = (off as usize, len as usize);
        if i % 7 == 3 {
            dev.write_zeroes(off, len).unwrap();
            shadow[o..o + l].fill(0);
        } else {
            let b = r.bytes(l);
            dev.write_at(&b, off).unwrap();
            shadow[o..o + l].copy_from_slice(&b);
        }
    }
    dev.flush().unwrap();
}

fn verify_with_qemu(dir: &Path, img: &Path, shadow: &[u8], what: &str) {
    assert_eq!(qemu_check(img), 0, "{what}: qemu-img check");
    let raw = dir.join("expected.raw");
    std::fs::write(&raw, shadow).unwrap();
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
}

#[test]
fn created_images_are_byte_identical_to_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("base.raw"), [0u8; 4096]).unwrap();
    let cases: [(&str, CreateOptions); 5] = [
        (
            "",
            CreateOptions {
                size: 10 << 20,
                ..Default::default()
            },
        ),
        (
            "compat=0.10",
            CreateOptions {
                size: 10 << 20,
                version: 2,
                ..Default::default()
            },
        ),
        (
            "cluster_size=512,refcount_bits=1,lazy_refcounts=on",
            CreateOptions {
                size: 10 << 20,
                cluster_size: 512,
                refcount_bits: 1,
                lazy_refcounts: true,
                ..Default::default()
            },
        ),
        (
            "cluster_size=16k,extended_l2=on,compression_type=zstd,refcount_bits=64",
            CreateOptions {
                size: 1 << 30,
                cluster_size: 16384,
                extended_l2: true,
                compression: qcow2::Compression::Zstd,
                refcount_bits: 64,
                ..Default::default()
            },
        ),
        (
            "cluster_size=2M,backing_file=base.raw,backing_fmt=raw",
            CreateOptions {
                size: 10 << 20,
                cluster_size: 2 << 20,
                backing_file: Some("base.raw".into()),
                backing_format: Some("raw".into()),
                ..Default::default()
            },
        ),
    ];
    for (o, opts) in cases {
        let q = d.join("q.qcow2");
        let k = d.join("k.qcow2");
        let size = opts.size.to_string();
        let mut args = vec!["create", "-f", "qcow2"];
        if !o.is_empty() {
            args.extend(["-o", o]);
        }
        args.extend([s(&q), &size]);
        qemu("qemu-img", &args);
        qcow2::create(&k, &opts).unwrap();
        assert!(
            std::fs::read(&q).unwrap() == std::fs::read(&k).unwrap(),
            "differs from qemu-img for -o '{o}'"
        );
    }
}

#[test]
fn random_writes_pass_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, (cs, rb, v)) in [
        (512u64, 16u32, 3u32),
        (4096, 1, 3),
        (65536, 16, 2),
        (65536, 64, 3),
        (2 << 20, 8, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let img = d.join(format!("w{i}.qcow2"));
        let size = 6u64 << 20;
        let opts = CreateOptions {
            size,
            cluster_size: cs,
            refcount_bits: rb,
            version: v,
            ..Default::default()
        };
        qcow2::create(&img, &opts).unwrap();
        let mut shadow = vec![0u8; size as usize];
        {
            let mut dev = open(&img, false);
            scribble(dev.as_mut(), &mut shadow, 100 + i as u64, 40);
            assert_same(&read_all(dev.as_mut()), &shadow, "read back before reopen");
        }
        let what = format!("cluster_size={cs} refcount_bits={rb} v{v}");
        verify_with_qemu(d, &img, &shadow, &what);
        // Reopen and write again: allocation must respect what is already there.
        let mut dev = open(&img, false);
        scribble(dev.as_mut(), &mut shadow, 200 + i as u64, 20);
        drop(dev);
        verify_with_qemu(d, &img, &shadow, &what);
    }
}

#[test]
fn refcount_table_grows_by_write_elsewhere_then_switch() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("grow.qcow2");
    // 512-byte clusters with 64-bit refcounts: one refcount block covers 64 clusters and
    // the initial one-cluster table 4096 clusters (2 MiB), so 5 MiB of data must grow it.
    let size = 5u64 << 20;
    qcow2::create(
        &img,
        &CreateOptions {
            size,
            cluster_size: 512,
            refcount_bits: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let shadow = data(9, size as usize);
    let mut dev = open(&img, false);
    for chunk in 0..5u64 {
        let o = (chunk << 20) as usize;
        dev.write_at(&shadow[o..o + (1 << 20)], chunk << 20)
            .unwrap();
    }
    dev.flush().unwrap();
    drop(dev);
    let q = qcow2::Qcow2::open(&img, true).unwrap();
    assert!(q.header().refcount_table_clusters > 1, "table did not grow");
    verify_with_qemu(dir.path(), &img, &shadow, "refcount table growth");
}

#[test]
fn overlay_writes_copy_on_write_and_leave_backing_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 3usize << 20;
    let base_data = data(5, size);
    std::fs::write(d.join("base.raw"), &base_data).unwrap();
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            s(&d.join("base.raw")),
            s(&d.join("base.qcow2")),
        ],
    );
    for (backing, fmt, cs) in [
        ("base.raw", "raw", 65536u64),
        ("base.qcow2", "qcow2", 512),
        ("base.qcow2", "qcow2", 65536),
    ] {
        let top = d.join(format!("top-{fmt}-{cs}.qcow2"));
        let opts = CreateOptions {
            size: size as u64,
            cluster_size: cs,
            backing_file: Some(backing.into()),
            backing_format: Some(fmt.into()),
            ..Default::default()
        };
        qcow2::create(&top, &opts).unwrap();
        let before = std::fs::read(d.join(backing)).unwrap();
        let mut shadow = base_data.clone();
        let mut dev = open(&top, false);
        // Small writes inside clusters must keep the rest of each cluster from the backing file.
        dev.write_at(&[0xab; 10], 70_000).unwrap();
        shadow[70_000..70_010].fill(0xab);
        scribble(dev.as_mut(), &mut shadow, 31, 30);
        assert_same(&read_all(dev.as_mut()), &shadow, "overlay view");
        drop(dev);
        assert!(
            std::fs::read(d.join(backing)).unwrap() == before,
            "backing file {backing} changed"
        );
        assert_eq!(qemu_check(&top), 0);
        assert_same(&qemu_raw(d, &top), &shadow, "qemu's view of the overlay");
    }
}

#[test]
fn writes_landing_on_metadata_are_refused_and_mark_the_image_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("evil.qcow2");
    qcow2::create(
        &img,
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    {
        let mut dev = open(&img, false);
        dev.write_at(&[1u8; 512], 0).unwrap();
        dev.flush().unwrap();
    }
    // The L2 table is cluster 4 (header, refcount table, refcount block, L1 at 0..3);
    // point guest cluster 0 at the refcount table instead.
    let mut f = std::fs::read(&img).unwrap();
    let l2 = 4 * 65536;
    f[l2..l2 + 8].copy_from_slice(&(65536u64 | 1 << 63).to_be_bytes());
    std::fs::write(&img, f).unwrap();
    let mut dev = open(&img, false);
    let e = dev.write_at(&[2u8; 512], 0).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    assert!(e.to_string().contains("overwrite metadata"), "{e}");
    drop(dev);
    let q = qcow2::Qcow2::open(&img, true).unwrap();
    assert_ne!(
        q.header().incompatible_features & qcow2::header::INCOMPAT_CORRUPT,
        0
    );
    drop(q);
    let e = qcow2::Qcow2::open(&img, false).unwrap_err().to_string();
    assert!(e.contains("corrupt"), "{e}");
    let info = qemu("qemu-img", &["info", s(&img)]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("corrupt: true"));
}

#[test]
fn zeroing_and_discarding_whole_clusters_deallocates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 2usize << 20;
    let base_data = data(6, size);
    std::fs::write(d.join("base.raw"), &base_data).unwrap();
    for (v, backing) in [(3u32, true), (3, false), (2, true), (2, false)] {
        let img = d.join(format!("z{v}{backing}.qcow2"));
        let opts = CreateOptions {
            size: size as u64,
            version: v,
            backing_file: backing.then(|| "base.raw".into()),
            backing_format: backing.then(|| "raw".into()),
            ..Default::default()
        };
        qcow2::create(&img, &opts).unwrap();
        let mut shadow = if backing {
            base_data.clone()
        } else {
            vec![0; size]
        };
        let mut dev = open(&img, false);
        let fill = data(8, size);
        dev.write_at(&fill, 0).unwrap();
        shadow.copy_from_slice(&fill);
        dev.write_zeroes(100, 300_000).unwrap();
        shadow[100..300_100].fill(0);
        dev.discard(1 << 20, 1 << 20).unwrap();
        shadow[1 << 20..].fill(0);
        dev.flush().unwrap();
        assert_same(&read_all(dev.as_mut()), &shadow, "after zeroing");
        drop(dev);
        verify_with_qemu(d, &img, &shadow, &format!("zeroing v{v} backing={backing}"));
    }
}

#[test]
fn bad_headers_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("h.qcow2");
    qcow2::create(
        &img,
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let good = std::fs::read(&img).unwrap();
    let cases: [(usize, &[u8], &str); 7] = [
        (4, &[0, 0, 0, 4], "unsupported qcow2 version 4"),
        (20, &[0, 0, 0, 30], "cluster size"),
        (32, &[0, 0, 0, 1], "encrypted"),
        (
            72,
            &[0, 0, 0, 0, 0, 0, 0, 0x20],
            "unsupported qcow2 feature(s): unknown feature bit 5",
        ),
        (72, &[0, 0, 0, 0, 0, 0, 0, 4], "external data file"),
        (36, &[0, 0, 0, 0], "L1 table is too small"),
        (96, &[0, 0, 0, 7], "refcount order"),
    ];
    for (at, bytes, want) in cases {
        let mut f = good.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&img, &f).unwrap();
        let e = kiln_block::open(&img, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "want '{want}' in: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    std::fs::write(&img, &good[..50]).unwrap();
    let e = qcow2::Qcow2::open(&img, true).unwrap_err().to_string();
    assert!(e.contains("bad magic") || e.contains("too short"), "{e}");
}
