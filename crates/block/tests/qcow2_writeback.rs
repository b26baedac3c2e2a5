//! Write-back qcow2 metadata: more L2 tables and refcount blocks change than the caches
//! hold (evictions write everything out mid-run), huge zeroing creates many new tables,
//! and closing without a flush still leaves an image `qemu-img check` finds clean with
//! every write readable by qemu-img.

mod support;

use support::*;

fn create(
    dir: &std::path::Path,
    name: &str,
    opts: &str,
    size: &str,
    backing: Option<&str>,
) -> std::path::PathBuf {
    let img = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2", "-o", opts];
    if let Some(b) = backing {
        args.extend(["-b", b, "-F", "raw"]);
    }
    args.extend([s(&img), size]);
    qemu("qemu-img", &args);
    img
}

#[test]
fn more_dirty_tables_than_the_caches_hold_are_written_out_safely() {
    let dir = tempfile::tempdir().unwrap();
    // 512-byte clusters: one L2 table maps 32 KiB; the caches hold 256 tables, the run
    // touches 1024 L2 tables and many refcount blocks (64-bit refcounts: 64 per block).
    let img = create(
        dir.path(),
        "e.qcow2",
        "cluster_size=512,refcount_bits=64",
        "32M",
        None,
    );
    let size = 32usize << 20;
    let mut shadow = vec![0u8; size];
    let mut dev = open(&img, false);
    let mut r = Rng(7);
    for (i, off) in (0..size).step_by(32 << 10).enumerate() {
        let at = off + r.below(28 << 10) as usize;
        let n = 1 + r.below(4096) as usize;
        let b = r.bytes(n);
        dev.write_at(&b, at as u64).unwrap();
        shadow[at..at + b.len()].copy_from_slice(&b);
        if i % 3 == 0 {
            // Free clusters again (deferred frees across evictions).
            let z = at / 512 * 512;
            dev.discard(z as u64, 1024).unwrap();
            shadow[z..z + 1024].fill(0);
        }
    }
    // No flush: closing writes the metadata out.
    drop(dev);
    assert_eq!(qemu_check(&img), 0, "qemu-img check after close");
    assert_same(&qemu_raw(dir.path(), &img), &shadow, "qemu-img's view");
    let mut dev = open(&img, true);
    assert_same(&read_all(dev.as_mut()), &shadow, "Kiln's view");
}

#[test]
fn zeroing_a_whole_overlay_creates_many_tables_and_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, data(3, 16 << 20)).unwrap();
    let img = create(
        dir.path(),
        "z.qcow2",
        "cluster_size=512",
        "16M",
        Some(s(&base)),
    );
    let mut dev = open(&img, false);
    // 512 L2 tables of zero entries (the backing file must not show through).
    dev.write_zeroes(0, 16 << 20).unwrap();
    let b = data(4, 3000);
    dev.write_at(&b, 5_000_000).unwrap();
    dev.flush().unwrap();
    drop(dev);
    let mut want = vec![0u8; 16 << 20];
    want[5_000_000..5_003_000].copy_from_slice(&b);
    assert_eq!(qemu_check(&img), 0, "qemu-img check");
    assert_same(&qemu_raw(dir.path(), &img), &want, "qemu-img's view");
}

#[test]
fn a_flush_with_nothing_to_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = create(dir.path(), "f.qcow2", "cluster_size=65536", "8M", None);
    let mut dev = open(&img, false);
    dev.write_at(&data(5, 70000), 100).unwrap();
    dev.flush().unwrap();
    let before = std::fs::read(&img).unwrap();
    dev.flush().unwrap();
    // Overwrites of owned clusters touch no metadata.
    dev.write_at(&data(6, 1000), 200).unwrap();
    dev.flush().unwrap();
    let after = std::fs::read(&img).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before[..65536 * 4],
        after[..65536 * 4],
        "metadata unchanged"
    );
    drop(dev);
    assert_eq!(qemu_check(&img), 0);
}
