//! Reading qcow2 images made by the real qemu-img/qemu-io: every cluster size, v2 and v3,
//! zero clusters, compressed clusters and backing chains read back byte-identical to
//! `qemu-img convert -O raw`.

mod support;

use support::*;

#[test]
fn qemu_images_read_back_identical_across_cluster_sizes_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, data(1, 3 << 20)).unwrap();
    for cs in ["512", "4k", "64k", "2M"] {
        for compat in ["0.10", "1.1"] {
            let img = dir.path().join(format!("t-{cs}-{compat}.qcow2"));
            qemu(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    &format!("cluster_size={cs},compat={compat}"),
                    s(&raw),
                    s(&img),
                ],
            );
            // Zero clusters (v3) or explicit zeros (v2), a partial overwrite, a discard.
            qemu(
                "qemu-io",
                &[
                    "-f",
                    "qcow2",
                    "-c",
                    "write -z 100k 300k",
                    "-c",
                    "write -P 0x5a 1M 5000",
                    "-c",
                    "discard 2M 128k",
                    s(&img),
                ],
            );
            let mut dev = open(&img, true);
            assert_same(
                &read_all(dev.as_mut()),
                &qemu_raw(dir.path(), &img),
                &format!("cluster_size={cs} compat={compat}"),
            );
        }
    }
}

#[test]
fn compressed_images_read_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    // Compressible data: repeated text with random bytes sprinkled in.
    let mut v = b"kiln compresses well ".repeat(100_000);
    v.truncate(2 << 20);
    let mut r = Rng(7);
    for _ in 0..2000 {
        let i = r.below(v.len() as u64) as usize;
        v[i] = r.next() as u8;
    }
    std::fs::write(&raw, &v).unwrap();
    for cs in ["512", "4k", "64k"] {
        let img = dir.path().join(format!("c-{cs}.qcow2"));
        qemu(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &format!("cluster_size={cs}"),
                s(&raw),
                s(&img),
            ],
        );
        let mut dev = open(&img, true);
        assert_same(
            &read_all(dev.as_mut()),
            &v,
            &format!("compressed cluster_size={cs}"),
        );
    }
}

#[test]
fn backing_chains_read_through_qcow2_and_raw_backing_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    std::fs::write(&base, data(3, 2 << 20)).unwrap();
    // raw <- mid.qcow2 <- top.qcow2, names stored relative to the overlay's directory.
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&d.join("mid.qcow2")),
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-c",
            "write -P 0x11 64k 100k",
            "-c",
            "write -z 1M 64k",
            s(&d.join("mid.qcow2")),
        ],
    );
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            s(&d.join("top.qcow2")),
            "3M",
        ],
    );
    qemu(
        "qemu-io",
        &[
            "-c",
            "write -P 0x22 100k 10k",
            "-c",
            "write -z 1000k 30k",
            s(&d.join("top.qcow2")),
        ],
    );
    let top = d.join("top.qcow2");
    let mut dev = open(&top, true);
    assert_same(
        &read_all(dev.as_mut()),
        &qemu_raw(d, &top),
        "raw <- qcow2 <- qcow2 chain",
    );
}

#[test]
fn backing_loops_and_overlong_chains_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu(
        "qemu-img",
        &["create", "-f", "qcow2", s(&d.join("a.qcow2")), "1M"],
    );
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            s(&d.join("b.qcow2")),
        ],
    );
    // Point a at b: a loop.
    qemu(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            s(&d.join("a.qcow2")),
        ],
    );
    let e = kiln_block::open(&d.join("b.qcow2"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("loop"), "{e}");
    // A chain of 18 images is deeper than the limit of 16.
    qemu(
        "qemu-img",
        &["create", "-f", "qcow2", s(&d.join("c0.qcow2")), "1M"],
    );
    for i in 1..18 {
        let prev = format!("c{}.qcow2", i - 1);
        qemu(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                &prev,
                "-F",
                "qcow2",
                s(&d.join(format!("c{i}.qcow2"))),
            ],
        );
    }
    let e = kiln_block::open(&d.join("c17.qcow2"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("deeper than 16"), "{e}");
    assert!(kiln_block::open(&d.join("c16.qcow2"), &Default::default()).is_ok());
}

#[test]
fn a_named_raw_backing_format_is_never_probed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // "evil.raw" is a qcow2 image whose backing file is a secret; named as raw, it must be
    // read as its own bytes and the secret never opened.
    std::fs::write(d.join("secret"), vec![0x77u8; 1 << 20]).unwrap();
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "secret",
            "-F",
            "raw",
            s(&d.join("evil.raw")),
        ],
    );
    let evil = std::fs::read(d.join("evil.raw")).unwrap();
    let top = d.join("top.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "evil.raw",
            "-F",
            "raw",
            s(&top),
            "1M",
        ],
    );
    let mut dev = open(&top, true);
    let got = read_all(dev.as_mut());
    assert_eq!(&got[..evil.len()], &evil[..]);
    assert!(got[evil.len()..].iter().all(|&b| b == 0));
    // And forcing raw on the qcow2 file itself shows its bytes.
    let mut raw = kiln_block::open(
        &d.join("evil.raw"),
        &kiln_block::OpenOptions {
            read_only: true,
            format: Some(kiln_block::Format::Raw),
            no_backing: false,
            share: kiln_block::Share::Readers,
        },
    )
    .unwrap();
    assert_eq!(read_all(raw.as_mut()), evil);
}

#[test]
fn images_with_internal_snapshots_read_the_active_layer_and_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("snap.qcow2");
    qemu_create(&img, "cluster_size=4k", "2M");
    qemu("qemu-io", &["-c", "write -P 0x01 0 300k", s(&img)]);
    qemu("qemu-img", &["snapshot", "-c", "one", s(&img)]);
    qemu(
        "qemu-io",
        &[
            "-c",
            "write -P 0x02 100k 50k",
            "-c",
            "write -z 200k 20k",
            s(&img),
        ],
    );
    qemu("qemu-img", &["snapshot", "-c", "two", s(&img)]);
    qemu("qemu-io", &["-c", "write -P 0x03 1M 4k", s(&img)]);
    let mut dev = open(&img, true);
    assert_same(
        &read_all(dev.as_mut()),
        &qemu_raw(dir.path(), &img),
        "active layer",
    );
    let r = kiln_block::qcow2::check::check(&img).unwrap();
    assert_eq!((r.corruptions, r.leaks), (0, 0), "{:?}", r.messages);
    // Writes copy shared clusters and L2 tables first (once the reader is gone: a
    // writer needs the image to itself); the snapshots keep their data.
    drop(dev);
    let one = {
        let copy = dir.path().join("one.qcow2");
        std::fs::copy(&img, &copy).unwrap();
        qemu("qemu-img", &["snapshot", "-a", "one", s(&copy)]);
        qemu_raw(dir.path(), &copy)
    };
    let mut want = qemu_raw(dir.path(), &img);
    let mut rw = open(&img, false);
    rw.write_at(&[9; 10000], 98_000).unwrap();
    want[98_000..108_000].fill(9);
    rw.flush().unwrap();
    drop(rw);
    assert_eq!(qemu_check(&img), 0);
    assert_same(&qemu_raw(dir.path(), &img), &want, "after write");
    qemu("qemu-img", &["snapshot", "-a", "one", s(&img)]);
    assert_same(&qemu_raw(dir.path(), &img), &one, "snapshot one kept");
}

#[test]
fn damaged_images_give_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.qcow2");
    qemu_create(&good, "cluster_size=512", "256k");
    qemu(
        "qemu-io",
        &[
            "-c",
            "write -P 0x44 0 100k",
            "-c",
            "write -z 120k 8k",
            s(&good),
        ],
    );
    let bytes = std::fs::read(&good).unwrap();
    let img = dir.path().join("bad.qcow2");
    let mut r = Rng(99);
    for round in 0..300 {
        let mut f = bytes.clone();
        // Damage a few bytes of the metadata (header, refcount structures, L1, L2 tables).
        for _ in 0..1 + round % 4 {
            let i = r.below(6 * 512) as usize;
            f[i] = r.next() as u8;
        }
        std::fs::write(&img, &f).unwrap();
        if let Ok(mut dev) = kiln_block::open(&img, &Default::default()) {
            let mut buf = vec![0u8; dev.size().min(1 << 20) as usize];
            let _ = dev.read_at(&mut buf, 0);
            let _ = dev.write_at(&[1, 2, 3], 1000);
            let _ = dev.write_zeroes(0, 4096.min(dev.size()));
        }
        let _ = kiln_block::qcow2::check::check(&img);
    }
}

#[test]
fn qemu_images_with_every_create_option_read_back_identical() {
    // The options of `qemu-img create -o` that shape what Kiln reads (cluster sizes and
    // compat levels, compression and extended L2 have tests of their own): preallocation
    // modes, lazy refcounts, refcount widths, each written by qemu-io, then read back.
    let dir = tempfile::tempdir().unwrap();
    for opts in [
        "preallocation=metadata",
        "preallocation=falloc,cluster_size=4k",
        "preallocation=full,cluster_size=512",
        "lazy_refcounts=on,cluster_size=4k",
        "refcount_bits=1,cluster_size=4k",
        "refcount_bits=64,cluster_size=2M",
        "compat=0.10,refcount_bits=16,cluster_size=1k",
    ] {
        let img = dir.path().join("t.qcow2");
        let _ = std::fs::remove_file(&img);
        qemu_create(&img, opts, "3M");
        qemu(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0x11 0 70000",
                "-c",
                "write -z 100k 300k",
                "-c",
                "write -P 0x5a 1M 5000",
                "-c",
                "discard 2M 128k",
                "-c",
                "write -P 0x77 3070k 2k",
                s(&img),
            ],
        );
        assert_eq!(qemu_check(&img), 0, "{opts}: qemu-img check");
        let mut dev = open(&img, true);
        assert_same(&read_all(dev.as_mut()), &qemu_raw(dir.path(), &img), opts);
    }
}

#[test]
fn a_small_or_large_l2_cache_changes_nothing_but_speed() {
    // QEMU's l2-cache-size: two tables (the minimum) or many, with dirty tables in the
    // cache when it is resized; the data and the image stay right.
    let dir = tempfile::tempdir().unwrap();
    for (cache, cs) in [(0u64, "512"), (1 << 20, "4k"), (64 << 20, "64k")] {
        let img = dir.path().join(format!("c{cache}.qcow2"));
        qemu_create(&img, &format!("cluster_size={cs}"), "8M");
        let mut dev = open(&img, false);
        let mut want = vec![0u8; 8 << 20];
        let mut rng = Rng(cache + 7);
        for i in 0..200 {
            let off = rng.below((8 << 20) - 9000) as usize;
            let len = 1 + rng.below(9000) as usize;
            let bytes = rng.bytes(len);
            dev.write_at(&bytes, off as u64).unwrap();
            want[off..off + bytes.len()].copy_from_slice(&bytes);
            if i == 100 {
                dev.set_l2_cache_size(cache).unwrap();
            }
        }
        assert_same(&read_all(dev.as_mut()), &want, &format!("cache {cache}"));
        dev.flush().unwrap();
        drop(dev);
        assert_eq!(qemu_check(&img), 0, "cache {cache}");
        assert_same(
            &qemu_raw(dir.path(), &img),
            &want,
            &format!("qemu view, cache {cache}"),
        );
    }
}
