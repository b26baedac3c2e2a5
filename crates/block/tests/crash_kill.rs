//! Crash safety, abrupt-kill model: the writer child (see support/crash.rs) is killed with
//! SIGKILL just before its N-th qcow2 metadata write (kiln-block's test hook), for many N,
//! seeds and image layouts. After every kill `qemu-img check` must find no corruption
//! (leaks are allowed), and every write a completed flush covered must read back, through
//! Kiln and through `qemu-img convert`. Images with lazy refcounts are left dirty by the
//! kill; Kiln's read-write open must then repair them to a clean `qemu-img check`.

#[path = "support/crash.rs"]
mod crash;
mod support;

use crash::{Config, Op};
use support::Rng;

/// Not a test by itself: the writer child's entry point (does nothing unless
/// `KILN_CRASH_CHILD` is set).
#[test]
fn crash_writer_child() {
    crash::child_main();
}

const CONFIGS: [Config; 5] = [
    Config {
        cluster_size: 65536,
        refcount_bits: 16,
        backing: false,
        lazy: false,
        size: 8 << 20,
        ops: 60,
        cache_tables: 0,
    },
    Config {
        cluster_size: 4096,
        refcount_bits: 1,
        backing: true,
        lazy: false,
        size: 4 << 20,
        ops: 60,
        cache_tables: 0,
    },
    // Tiny clusters and wide refcounts: 64 entries per refcount block and 64 blocks per
    // table cluster, so refcount blocks are created and the table grows often.
    Config {
        cluster_size: 512,
        refcount_bits: 64,
        backing: true,
        lazy: false,
        size: 4 << 20,
        ops: 80,
        cache_tables: 0,
    },
    Config {
        cluster_size: 65536,
        refcount_bits: 16,
        backing: true,
        lazy: true,
        size: 8 << 20,
        ops: 60,
        cache_tables: 0,
    },
    // Metadata caches of 3 tables: evictions write metadata out in the middle of
    // operations (and the kill lands inside those write-outs too).
    Config {
        cluster_size: 512,
        refcount_bits: 16,
        backing: true,
        lazy: false,
        size: 4 << 20,
        ops: 80,
        cache_tables: 3,
    },
];

#[test]
fn sigkill_64k_clusters_16bit_refcounts() {
    kill_test(0);
}

#[test]
fn sigkill_4k_clusters_1bit_refcounts_over_backing() {
    kill_test(1);
}

#[test]
fn sigkill_512b_clusters_64bit_refcounts_over_backing() {
    kill_test(2);
}

#[test]
fn sigkill_lazy_refcounts_over_backing_then_repair_on_open() {
    kill_test(3);
}

#[test]
fn sigkill_tiny_metadata_caches_evicting_mid_operation() {
    kill_test(4);
}

/// Kill points per seed: metadata is written back at flushes and evictions only, so
/// every kill lands inside such a write-out.
const KILLS_PER_SEED: u64 = 8;

/// Three seeds, eight kill points each (120 kills over the five layouts).
fn kill_test(ci: usize) {
    let cfg = &CONFIGS[ci];
    let dir = crash::scratch();
    let mut kills = 0;
    let mut runs = 0;
    {
        for seed in 1..=3u64 {
            let op_seed = seed * 7 + ci as u64;
            let ops: Vec<Op> = crash::ops(cfg, op_seed);
            // A full run with the trace on counts the metadata writes to kill at.
            let name = format!("c{ci}s{seed}full");
            let (img, base) = crash::make_image(dir.path(), cfg, &name);
            let trace = dir.path().join(format!("{name}.trace"));
            let env = [("KILN_BLOCK_TRACE", trace.display().to_string())];
            assert!(!crash::run_child(
                "crash_writer_child",
                cfg,
                op_seed,
                &img,
                &trace,
                &env
            ));
            let recs = crash::parse(&std::fs::read(&trace).unwrap());
            let total = recs.iter().filter(|r| r.tag == b'M').count() as u64;
            // Metadata is written back at flushes only (several writes each).
            assert!(total >= 10, "{name}: only {total} metadata writes");
            crash::verdict(dir.path(), &img, &base, &ops, ops.len(), ops.len())
                .unwrap_or_else(|e| panic!("{name}: finished run: {e}"));
            let mut r = Rng(seed ^ (ci as u64) << 8 | 1);
            for k in 0..KILLS_PER_SEED {
                // Early points (header, first tables) and points spread over the run.
                let parts = KILLS_PER_SEED - 1;
                let n = if k == 0 {
                    1 + r.below(4)
                } else {
                    1 + (k - 1) * total / parts + r.below((total / parts).max(1))
                };
                let name = format!("c{ci}s{seed}k{k}");
                let (img, base) = crash::make_image(dir.path(), cfg, &name);
                let markers = dir.path().join(format!("{name}.markers"));
                let killed = crash::run_child(
                    "crash_writer_child",
                    cfg,
                    op_seed,
                    &img,
                    &markers,
                    &[("KILN_BLOCK_KILL_AT_META_WRITE", n.to_string())],
                );
                runs += 1;
                kills += usize::from(killed);
                let recs = crash::parse(&std::fs::read(&markers).unwrap_or_default());
                let (durable, started) = crash::durable_and_started(&recs, ops.len());
                if !killed {
                    assert_eq!(durable, ops.len(), "{name}: a finished run flushed all");
                }
                let what = format!("{name} ({cfg:?}, killed at metadata write {n})");
                crash::verdict(dir.path(), &img, &base, &ops, durable, started)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                if cfg.lazy {
                    // Kiln's read-write open repairs a dirty image; then it is clean.
                    let dev = support::open(&img, false);
                    drop(dev);
                    let (code, out) = crash::qemu_check_out(&img);
                    assert_eq!(code, 0, "{what}: after Kiln's repair:\n{out}");
                    let h = kiln_block::qcow2::Qcow2::open(&img, true).unwrap();
                    assert_eq!(
                        h.header().incompatible_features & 1,
                        0,
                        "{what}: still dirty"
                    );
                    drop(h);
                    crash::verdict(dir.path(), &img, &base, &ops, durable, started)
                        .unwrap_or_else(|e| panic!("{what}: after repair: {e}"));
                }
                let _ = std::fs::remove_file(&img);
            }
        }
    }
    eprintln!("{kills} kills in {runs} runs");
    assert_eq!(
        kills as u64,
        3 * KILLS_PER_SEED,
        "only {kills} of {runs} runs were killed"
    );
}
