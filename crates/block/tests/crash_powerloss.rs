//! Crash safety, power-loss model: the writer child (see support/crash.rs) runs to the end
//! with kiln-block's trace hook on, logging every write, hole punch and fdatasync of the
//! image. Crash images are then rebuilt from the starting image: for a crash point in the
//! trace, every write before the last fdatasync is kept, and of the writes after it (not
//! yet covered by a flush, so the disk may have lost or reordered them) a random subset.
//! Each crash image must pass `qemu-img check` (leaks allowed) and keep every write that a
//! completed guest flush covered. This catches a missing fdatasync, which the kill test
//! cannot. The test also drops writes that a flush DID cover, and shows that the verdict
//! then fails, so it can fail.

#[path = "support/crash.rs"]
mod crash;
mod support;

use crash::{Config, Op, Rec};
use std::path::Path;
use support::Rng;

/// Not a test by itself: the writer child's entry point (does nothing unless
/// `KILN_CRASH_CHILD` is set).
#[test]
fn crash_writer_child() {
    crash::child_main();
}

/// Crash images per trace.
const POINTS: usize = 24;

const CONFIGS: [Config; 4] = [
    Config {
        cluster_size: 65536,
        refcount_bits: 16,
        backing: true,
        lazy: false,
        size: 16 << 20,
        ops: 60,
        cache_tables: 0,
    },
    Config {
        cluster_size: 4096,
        refcount_bits: 8,
        backing: false,
        lazy: false,
        size: 4 << 20,
        ops: 60,
        cache_tables: 0,
    },
    Config {
        cluster_size: 512,
        refcount_bits: 2,
        backing: true,
        lazy: false,
        size: 2 << 20,
        ops: 80,
        cache_tables: 0,
    },
    // Caches of 3 tables: evictions write metadata out in the middle of operations.
    Config {
        cluster_size: 512,
        refcount_bits: 16,
        backing: false,
        lazy: false,
        size: 2 << 20,
        ops: 80,
        cache_tables: 3,
    },
];

/// The fdatasyncs each operation of a traced run did: (op index, is a flush, syncs).
fn syncs_per_op(trace: &[Rec], ops: &[Op]) -> Vec<(usize, bool, usize)> {
    let mut v = Vec::new();
    let mut syncs = 0;
    for r in trace {
        match r.tag {
            b'S' => syncs += 1,
            b'D' => {
                let i = r.a as usize;
                v.push((i, matches!(ops[i], Op::Flush), syncs));
                syncs = 0;
            }
            _ => {}
        }
    }
    v
}

/// Apply a file-level record to an image held in memory.
fn apply(file: &mut Vec<u8>, r: &Rec) {
    apply_punching(file, r, true)
}

/// [`apply`], with hole punches ignored unless `punch` (a file system without hole
/// punching: freed clusters keep their stale contents, which a new table placed there
/// must never expose).
fn apply_punching(file: &mut Vec<u8>, r: &Rec, punch: bool) {
    match r.tag {
        b'W' | b'M' => {
            let end = (r.a + r.b) as usize;
            if file.len() < end {
                file.resize(end, 0);
            }
            file[r.a as usize..end].copy_from_slice(&r.data);
        }
        b'P' if punch => {
            let end = ((r.a + r.b) as usize).min(file.len());
            if (r.a as usize) < end {
                file[r.a as usize..end].fill(0);
            }
        }
        _ => {}
    }
}

/// The image after a power loss at trace position `at`: everything up to the last sync
/// before it, then the records `keep` selects among those after that sync.
fn crash_image(
    start: &[u8],
    trace: &[Rec],
    at: usize,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Vec<u8> {
    crash_image_punching(start, trace, at, keep, true)
}

/// [`crash_image`], with hole punches ignored unless `punch`.
fn crash_image_punching(
    start: &[u8],
    trace: &[Rec],
    at: usize,
    keep: &mut dyn FnMut(usize) -> bool,
    punch: bool,
) -> Vec<u8> {
    let last_sync = trace[..at]
        .iter()
        .rposition(|r| r.tag == b'S')
        .map_or(0, |p| p + 1);
    let mut file = start.to_vec();
    for r in &trace[..last_sync] {
        apply_punching(&mut file, r, punch);
    }
    for (i, r) in trace.iter().enumerate().take(at).skip(last_sync) {
        if keep(i) {
            apply_punching(&mut file, r, punch);
        }
    }
    file
}

fn judge(
    dir: &Path,
    img: &Path,
    file: &[u8],
    base: &[u8],
    ops: &[Op],
    trace: &[Rec],
    at: usize,
) -> Result<(), String> {
    std::fs::write(img, file).unwrap();
    let (durable, started) = crash::durable_and_started(&trace[..at], ops.len());
    crash::verdict(dir, img, base, ops, durable, started)
}

#[test]
fn power_loss_dropping_unflushed_writes_keeps_images_consistent_and_flushed_data() {
    let dir = crash::scratch();
    let mut images = 0;
    let mut broken_detected = 0;
    let mut broken_tried = 0;
    for (ci, cfg) in CONFIGS.iter().enumerate() {
        for seed in 1..=2u64 {
            let name = format!("p{ci}s{seed}");
            let (img, base) = crash::make_image(dir.path(), cfg, &name);
            let start = std::fs::read(&img).unwrap();
            let trace_path = dir.path().join(format!("{name}.trace"));
            let op_seed = seed * 13 + ci as u64;
            let ops = crash::ops(cfg, op_seed);
            let killed = crash::run_child(
                "crash_writer_child",
                cfg,
                op_seed,
                &img,
                &trace_path,
                &[("KILN_BLOCK_TRACE", trace_path.display().to_string())],
            );
            assert!(!killed);
            let trace = crash::parse(&std::fs::read(&trace_path).unwrap());
            assert!(trace.iter().any(|r| r.tag == b'S') && trace.iter().any(|r| r.tag == b'F'));
            // Write-back metadata: a guest flush costs at most 3 fdatasyncs, and with the
            // default caches the writes, zeroing and discards themselves none (the
            // 64k-cluster layout never needs a new refcount block; smaller ones may).
            let per_op = syncs_per_op(&trace, &ops);
            if cfg.cache_tables > 0 {
                // The tiny caches must really have written metadata out mid-operation.
                assert!(
                    per_op.iter().any(|&(_, flush, syncs)| !flush && syncs > 0),
                    "{name}: no eviction write-out happened"
                );
            }
            for (i, flush, syncs) in per_op {
                if flush {
                    assert!(syncs <= 3, "{name}: flush op {i} did {syncs} fdatasyncs");
                } else if cfg.cluster_size == 65536 {
                    assert_eq!(syncs, 0, "{name}: op {i} ({:?}) synced", ops[i]);
                }
            }
            let crashed = dir.path().join(format!("{name}-crash.qcow2"));
            // Sanity: replaying everything gives the finished image.
            let all = crash_image(&start, &trace, trace.len(), &mut |_| true);
            assert_eq!(all, std::fs::read(&img).unwrap(), "{name}: replay differs");
            let mut r = Rng(op_seed | 0x100);
            // Crash points: mostly just before an fdatasync whose window holds several
            // writes including metadata (where a missing sync would show), some anywhere.
            let mut candidates = Vec::new();
            let mut from = 0;
            for (i, rec) in trace.iter().enumerate() {
                if rec.tag == b'S' {
                    let w = &trace[from..i];
                    let writes = w
                        .iter()
                        .filter(|r| matches!(r.tag, b'W' | b'M' | b'P'))
                        .count();
                    if writes >= 2 && w.iter().any(|r| r.tag == b'M') {
                        candidates.push(i);
                    }
                    from = i + 1;
                }
            }
            eprintln!(
                "{name}: {} records, {} syncs, {} punches, {} candidates",
                trace.len(),
                trace.iter().filter(|r| r.tag == b'S').count(),
                trace.iter().filter(|r| r.tag == b'P').count(),
                candidates.len()
            );
            for k in 0..POINTS {
                let at = if k % 4 == 3 || candidates.is_empty() {
                    1 + r.below(trace.len() as u64) as usize
                } else {
                    candidates[r.below(candidates.len() as u64) as usize]
                };
                // Lose each pending write with probability 1/2, or all but one, or one.
                let last_sync = trace[..at]
                    .iter()
                    .rposition(|r| r.tag == b'S')
                    .map_or(0, |p| p + 1);
                let mode = r.below(3);
                let pick = last_sync + r.below((at - last_sync).max(1) as u64) as usize;
                let mut r2 = Rng(r.next() | 1);
                // Every other crash image: as on a file system without hole punching.
                let file = crash_image_punching(
                    &start,
                    &trace,
                    at,
                    &mut |i| match mode {
                        0 => r2.below(2) == 0,
                        1 => i != pick,
                        _ => i == pick,
                    },
                    k % 2 == 0,
                );
                judge(dir.path(), &crashed, &file, &base, &ops, &trace, at)
                    .unwrap_or_else(|e| panic!("{name} ({cfg:?}) crash {k} at record {at}: {e}"));
                images += 1;
            }
            // The broken variant: crash right after a guest flush, but lose one write
            // that flush covered. The verdict must catch (at least some of) these.
            if seed == 1 {
                let flushes: Vec<usize> = trace
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.tag == b'F' && r.a > 0)
                    .map(|(i, _)| i + 1)
                    .collect();
                for &at in flushes.iter().rev().take(2) {
                    // The last guest-data writes (not all zeros) and metadata writes the
                    // flush covered.
                    let mut victims: Vec<usize> = (0..at)
                        .rev()
                        .filter(|&i| trace[i].tag == b'W' && trace[i].data.iter().any(|&b| b != 0))
                        .take(3)
                        .collect();
                    victims.extend((0..at).rev().filter(|&i| trace[i].tag == b'M').take(3));
                    let file = crash_image(&start, &trace, at, &mut |_| true);
                    judge(dir.path(), &crashed, &file, &base, &ops, &trace, at)
                        .unwrap_or_else(|e| panic!("{name}: intact image at {at}: {e}"));
                    for victim in victims {
                        let mut lost = start.clone();
                        for (i, rec) in trace[..at].iter().enumerate() {
                            if i != victim {
                                apply(&mut lost, rec);
                            }
                        }
                        broken_tried += 1;
                        if judge(dir.path(), &crashed, &lost, &base, &ops, &trace, at).is_err() {
                            broken_detected += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{images} crash images; {broken_detected} of {broken_tried} lost flushed writes detected"
    );
    assert!(images >= 60);
    assert!(
        broken_detected * 2 >= broken_tried && broken_detected > 0,
        "the verdict missed lost flushed writes: {broken_detected} of {broken_tried} detected"
    );
}

/// A new L2 table placed on a freed cluster whose stale contents are guest data: at every
/// crash point of the run, losing any one pending write, on a file system without hole
/// punching, the image stays consistent (the table is durable before the L1 entry).
#[test]
fn new_table_on_a_freed_cluster_is_durable_before_its_l1_entry() {
    let dir = crash::scratch();
    let cfg = Config {
        cluster_size: 512,
        refcount_bits: 16,
        backing: false,
        lazy: false,
        size: 1 << 20,
        ops: 0,
        cache_tables: 0,
    };
    let (img, base) = crash::make_image(dir.path(), &cfg, "reuse");
    let start = std::fs::read(&img).unwrap();
    let trace_path = dir.path().join("reuse.trace");
    let ops = crash::ops(&cfg, 0);
    assert!(!crash::run_child(
        "crash_writer_child",
        &cfg,
        0,
        &img,
        &trace_path,
        &[("KILN_BLOCK_TRACE", trace_path.display().to_string())],
    ));
    let trace = crash::parse(&std::fs::read(&trace_path).unwrap());
    // The scenario does what it is meant to: the new table's cluster held guest data.
    let first_data = trace.iter().find(|r| r.tag == b'W').expect("a data write");
    let table_write = trace
        .iter()
        .rev()
        .find(|r| r.tag == b'M' && r.b == cfg.cluster_size)
        .expect("a whole new L2 table written");
    assert_eq!(
        first_data.a, table_write.a,
        "the new L2 table should reuse the freed data cluster"
    );
    let crashed = dir.path().join("reuse-crash.qcow2");
    let mut images = 0;
    for at in 1..=trace.len() {
        let last_sync = trace[..at]
            .iter()
            .rposition(|r| r.tag == b'S')
            .map_or(0, |p| p + 1);
        for pick in last_sync..at {
            let file = crash_image_punching(&start, &trace, at, &mut |i| i != pick, false);
            judge(dir.path(), &crashed, &file, &base, &ops, &trace, at)
                .unwrap_or_else(|e| panic!("crash at record {at} losing {pick}: {e}"));
            images += 1;
        }
    }
    eprintln!("{images} crash images");
}
