//! Writing qcow2 images with extended L2 entries (subclusters) with Kiln: random writes,
//! zeroing and discards at random offsets and sizes, over a backing file or not, on
//! images qemu-img made; then `qemu-img check` finds nothing and `qemu-img compare`
//! agrees with the expected data. Partial writes allocate only the touched subclusters.

mod support;

use kiln_block::qcow2::{self, CreateOptions};
use kiln_block::BlockDevice;
use std::path::Path;
use support::*;

/// Random writes, zeroing and discards mirrored into `shadow`; sizes go from a few bytes
/// (inside one subcluster) to several clusters.
fn scribble(dev: &mut dyn BlockDevice, shadow: &mut [u8], seed: u64, n: usize, cs: u64) {
    let mut r = Rng(seed);
    let size = shadow.len() as u64;
    for i in 0..n {
        let len = 1 + match i % 4 {
            0 => r.below(3 * cs),
            1 => r.below(cs / 32 * 3),
            2 => r.below(700),
            _ => r.below(cs / 2),
        }
        .min(size - 1);
        let off = r.below(size - len);
        let (o, l) = (off as usize, len as usize);
        match i % 9 {
            3 => {
                dev.write_zeroes(off, len).unwrap();
                shadow[o..o + l].fill(0);
            }
            7 => {
                dev.discard(off, len).unwrap();
                shadow[o..o + l].fill(0);
            }
            _ => {
                let b = r.bytes(l);
                dev.write_at(&b, off).unwrap();
                shadow[o..o + l].copy_from_slice(&b);
            }
        }
    }
    dev.flush().unwrap();
}

fn verify(dir: &Path, img: &Path, shadow: &[u8], what: &str) {
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
    let mut dev = open(img, true);
    assert_same(&read_all(dev.as_mut()), shadow, what);
}

#[test]
fn extended_l2_overlays_written_by_kiln_pass_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (cs, size) in [(65536u64, 8u64 << 20), (2 << 20, 16 << 20)] {
        let base = d.join("base.raw");
        let base_data = data(cs, size as usize);
        std::fs::write(&base, &base_data).unwrap();
        let img = d.join("ov.qcow2");
        let _ = std::fs::remove_file(&img);
        let o = format!("extended_l2=on,cluster_size={cs}");
        qemu(
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                &o,
                "-b",
                "base.raw",
                "-F",
                "raw",
                s(&img),
            ],
        );
        let mut shadow = base_data.clone();
        let mut dev = open(&img, false);
        scribble(dev.as_mut(), &mut shadow, cs + 3, 120, cs);
        drop(dev);
        verify(d, &img, &shadow, &format!("overlay {cs}"));
        // Kiln's writes reopened: more of them, over what it wrote before.
        let mut dev = open(&img, false);
        scribble(dev.as_mut(), &mut shadow, cs + 4, 60, cs);
        drop(dev);
        verify(d, &img, &shadow, &format!("overlay {cs} again"));
        // The backing file is untouched.
        assert_same(&std::fs::read(&base).unwrap(), &base_data, "backing file");
    }
}

#[test]
fn extended_l2_images_without_backing_and_kiln_created() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (cs, kiln_made) in [(65536u64, false), (65536, true), (2 << 20, true)] {
        let size = 6u64 << 20;
        let img = d.join("e.qcow2");
        let _ = std::fs::remove_file(&img);
        if kiln_made {
            qcow2::create(
                &img,
                &CreateOptions {
                    size,
                    cluster_size: cs,
                    extended_l2: true,
                    ..Default::default()
                },
            )
            .unwrap();
        } else {
            let o = format!("extended_l2=on,cluster_size={cs}");
            qemu_create(&img, &o, "6M");
        }
        let mut shadow = vec![0u8; size as usize];
        let mut dev = open(&img, false);
        scribble(dev.as_mut(), &mut shadow, cs ^ 5, 100, cs);
        drop(dev);
        verify(
            d,
            &img,
            &shadow,
            &format!("no backing {cs} kiln={kiln_made}"),
        );
    }
}

#[test]
fn qemu_written_subclusters_then_kiln_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    let base_data = data(77, 4 << 20);
    std::fs::write(&base, &base_data).unwrap();
    let img = d.join("ov.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&img),
        ],
    );
    // qemu writes a few subclusters and zeroes some.
    qemu(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 2k 3k",
            "-c",
            "write -z 70k 6k",
            "-c",
            "write -P 0x22 200k 100k",
            "-c",
            "discard 256k 8k",
            s(&img),
        ],
    );
    let mut shadow = qemu_raw(d, &img);
    let mut dev = open(&img, false);
    assert_same(&read_all(dev.as_mut()), &shadow, "qemu's subclusters");
    scribble(dev.as_mut(), &mut shadow, 1234, 80, 65536);
    drop(dev);
    verify(d, &img, &shadow, "after kiln");
}

#[test]
fn small_writes_allocate_only_their_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    std::fs::write(&base, vec![0xabu8; 1 << 20]).unwrap();
    let img = d.join("ov.qcow2");
    qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&img),
        ],
    );
    let mut dev = open(&img, false);
    // 2 KiB subclusters: a 100-byte write at 5000 touches subcluster 2 only.
    dev.write_at(&[7u8; 100], 5000).unwrap();
    dev.flush().unwrap();
    let (kind, n) = dev.extent(0, 65536).unwrap();
    assert_eq!((kind, n), (kiln_block::Extent::Backing, 4096));
    let (kind, n) = dev.extent(4096, 65536 - 4096).unwrap();
    assert_eq!((kind, n), (kiln_block::Extent::Data, 2048));
    drop(dev);
    let mut want = vec![0xabu8; 1 << 20];
    want[5000..5100].fill(7);
    verify(d, &img, &want, "one subcluster");
}
