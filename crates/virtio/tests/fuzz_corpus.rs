//! Stable replay of the fuzz corpora (`fuzz/corpus/<target>/`, one per target in
//! [`TARGETS`]): every file goes through the target's `run_one`, then deterministic
//! mutations of the corpus. Fuzzing proper (libFuzzer, nightly) is
//! `cargo +nightly fuzz run <target>` from the repository root; see `fuzz/README.md`.
//!
//! The seed generators are in `fuzz_seeds/`; the seeds are written by
//! `cargo test -p kiln-virtio --test fuzz_corpus -- --ignored regenerate_seeds`, which
//! replaces every `seed-*` file and leaves other corpus files (crashes, libFuzzer finds)
//! alone. `soak` (also ignored) runs many more mutations: `KILN_FUZZ_ITERS=1000000`,
//! `KILN_FUZZ_TARGET=virtio_net` for one target, `KILN_FUZZ_SAVE=<dir>` to keep a failing
//! input.

mod fuzz_seeds;

use kiln_virtio::fuzz::{Driven, Header, HEADER_LEN};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One fuzz target: its corpus directory's name, its body, its seeds.
struct Target {
    name: &'static str,
    run_one: fn(&[u8]),
    /// What the harness saw (activated, completed, broken).
    run: fn(&[u8]) -> Driven,
    seeds: fn() -> Vec<(String, Vec<u8>)>,
    /// Mutated inputs the replay test runs.
    mutations: usize,
}

fn blk_run(data: &[u8]) -> Driven {
    let s = kiln_virtio::blk::fuzz::run(data);
    Driven {
        activated: s.activated,
        completed: s.completed,
        broken: s.broken,
        more: s.more,
    }
}

const TARGETS: &[Target] = &[
    Target {
        name: "virtio_blk",
        run_one: kiln_virtio::blk::fuzz::run_one,
        run: blk_run,
        seeds: fuzz_seeds::blk::seeds,
        mutations: 2000,
    },
    Target {
        name: "virtio_net",
        run_one: kiln_virtio::net::fuzz::run_one,
        run: kiln_virtio::net::fuzz::run,
        seeds: fuzz_seeds::net::seeds,
        mutations: 4000,
    },
    Target {
        name: "virtio_console",
        run_one: kiln_virtio::console::fuzz::run_one,
        run: kiln_virtio::console::fuzz::run,
        seeds: fuzz_seeds::console::seeds,
        mutations: 4000,
    },
    Target {
        name: "virtio_rng",
        run_one: kiln_virtio::rng::fuzz::run_one,
        run: kiln_virtio::rng::fuzz::run,
        seeds: fuzz_seeds::rng::seeds,
        mutations: 4000,
    },
    Target {
        name: "virtio_vsock",
        run_one: kiln_virtio::vsock::fuzz::run_one,
        run: kiln_virtio::vsock::fuzz::run,
        seeds: fuzz_seeds::vsock::seeds,
        mutations: 2000,
    },
];

/// Fewest corpus files the replay accepts per target (a missing or emptied corpus is an
/// error).
const MIN_CORPUS: usize = 20;
/// Largest seed file and whole corpus the generator may write.
const MAX_SEED: usize = 64 << 10;
const MAX_CORPUS_BYTES: usize = 1 << 20;

fn corpus_dir(t: &Target) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(t.name)
}

fn corpus(t: &Target) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(t);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the fuzz corpus {} is missing ({e}); regenerate it with \
             `cargo test -p kiln-virtio --test fuzz_corpus -- --ignored regenerate_seeds`",
            dir.display()
        )
    });
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("read the corpus directory"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read a corpus file"))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= MIN_CORPUS,
        "the fuzz corpus {} has {} files, expected at least {MIN_CORPUS}",
        dir.display(),
        files.len()
    );
    files
}

/// Longest one input may take before the replay calls it a hang (a debug build on a slow
/// machine; inputs normally take milliseconds).
const HANG: Duration = Duration::from_secs(30);

/// Runs inputs on a worker thread so a hang fails the test instead of stalling CI.
struct Runner {
    inputs: mpsc::Sender<Vec<u8>>,
    results: mpsc::Receiver<Result<Duration, String>>,
}

impl Runner {
    fn new(run_one: fn(&[u8])) -> Runner {
        let (inputs, rx) = mpsc::channel::<Vec<u8>>();
        let (tx, results) = mpsc::channel();
        std::thread::spawn(move || {
            for data in rx {
                let start = Instant::now();
                let r = std::panic::catch_unwind(|| run_one(&data))
                    .map(|()| start.elapsed())
                    .map_err(|e| {
                        e.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "(no message)".into())
                    });
                if tx.send(r).is_err() {
                    return;
                }
            }
        });
        Runner { inputs, results }
    }

    /// Run one input, naming it if it panics or hangs; its duration.
    fn run(&self, name: &str, data: &[u8]) -> Duration {
        self.inputs
            .send(data.to_vec())
            .expect("the runner thread is gone");
        let result = self.results.recv_timeout(HANG);
        if !matches!(result, Ok(Ok(_))) {
            // Keep the failing input for minimizing and for the corpus.
            if let Some(dir) = std::env::var_os("KILN_FUZZ_SAVE") {
                let file = PathBuf::from(dir).join(name.replace(['/', ' ', '(', ')'], "_"));
                let _ = std::fs::write(&file, data);
                eprintln!("saved the failing input to {}", file.display());
            }
        }
        match result {
            Ok(Ok(t)) => t,
            Ok(Err(msg)) => panic!("fuzz input {name} ({} bytes) failed: {msg}", data.len()),
            Err(_) => panic!(
                "fuzz input {name} ({} bytes) hangs: no result after {HANG:?}",
                data.len()
            ),
        }
    }
}

#[test]
fn corpus_replays() {
    for t in TARGETS {
        let files = corpus(t);
        let runner = Runner::new(t.run_one);
        let start = Instant::now();
        let mut slowest = (Duration::ZERO, String::new());
        for (name, data) in &files {
            let t = runner.run(&format!("{}/{name}", t.name), data);
            if t > slowest.0 {
                slowest = (t, name.clone());
            }
        }
        eprintln!(
            "{}: replayed {} corpus files in {:?} (slowest {} in {:?})",
            t.name,
            files.len(),
            start.elapsed(),
            slowest.1,
            slowest.0
        );
    }
}

#[test]
fn seed_mutations() {
    for t in TARGETS {
        let seeds: Vec<Vec<u8>> = corpus(t).into_iter().map(|(_, d)| d).collect();
        let start = Instant::now();
        mutate_and_run(t, &seeds, 0x853c_49e6_748f_ea9b, t.mutations);
        eprintln!(
            "{}: {} mutated inputs in {:?}",
            t.name,
            t.mutations,
            start.elapsed()
        );
    }
}

/// Many more mutations, for hunting bugs without libFuzzer (`KILN_FUZZ_ITERS`, `KILN_FUZZ_SEED`).
#[test]
#[ignore]
fn soak() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let iters = env("KILN_FUZZ_ITERS", 200_000) as usize;
    let seed = env("KILN_FUZZ_SEED", 1);
    let only = std::env::var("KILN_FUZZ_TARGET").ok();
    for t in TARGETS {
        if only.as_deref().is_some_and(|o| o != t.name) {
            continue;
        }
        let seeds: Vec<Vec<u8>> = corpus(t).into_iter().map(|(_, d)| d).collect();
        let start = Instant::now();
        mutate_and_run(t, &seeds, seed, iters);
        eprintln!(
            "{}: {iters} mutated inputs in {:?}",
            t.name,
            start.elapsed()
        );
    }
}

/// The seeds as written by [`regenerate_seeds`] are what the corpus holds.
#[test]
#[ignore]
fn regenerate_seeds() {
    for t in TARGETS {
        let dir = corpus_dir(t);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let seeds = (t.seeds)();
        for (i, (name, data)) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}-{name}")), data).unwrap();
        }
        eprintln!("wrote {} seeds to {}", seeds.len(), dir.display());
    }
}

/// Every generator stays within the corpus limits.
#[test]
fn seeds_are_small() {
    for t in TARGETS {
        let seeds = (t.seeds)();
        assert!(
            seeds.len() >= MIN_CORPUS,
            "{}: {} seeds",
            t.name,
            seeds.len()
        );
        let mut total = 0;
        for (name, data) in &seeds {
            assert!(
                data.len() <= MAX_SEED,
                "{}/{name}: {} bytes",
                t.name,
                data.len()
            );
            total += data.len();
        }
        assert!(
            total <= MAX_CORPUS_BYTES,
            "{}: {total} bytes of seeds",
            t.name
        );
    }
}

/// Seeds the ring breaks on (by name), and ones whose ring the transport refuses.
const BREAKS: &[&str] = &[
    "avail-idx-jump",
    "head-beyond-queue",
    "used-flags-on-avail-idx",
    "read-over-the-rings",
];
const REFUSED: &str = "ring-outside-memory";

/// The generators' own seeds pass (also when the corpus directories are stale) and reach
/// what they aim at: activated unless the transport refuses the ring, broken exactly when
/// aimed at a corrupt ring (seeds that overwrite the rings may go either way), something
/// served unless the name says `idle`.
#[test]
fn generated_seeds_pass() {
    for t in TARGETS {
        let runner = Runner::new(t.run_one);
        for (name, data) in (t.seeds)() {
            runner.run(&format!("{}/{name}", t.name), &data);
            let d = (t.run)(&data);
            eprintln!(
                "{}/{name:40} activated {:5} completed {:3} broken {:5}",
                t.name, d.activated, d.completed, d.broken
            );
            if name == "empty" || name == "header-only" {
                continue;
            }
            assert_eq!(d.activated, !name.ends_with(REFUSED), "{}/{name}", t.name);
            if !name.ends_with("buffers-over-the-rings") {
                let expect = BREAKS.iter().any(|b| name.ends_with(b));
                assert_eq!(d.broken, expect, "{}/{name}", t.name);
            }
            if d.activated && !d.broken && !name.ends_with("idle") {
                assert!(d.completed > 0, "{}/{name}: nothing served", t.name);
            }
        }
    }
}

/// blk's seeds as generated are what the corpus holds (its input format is unchanged).
#[test]
fn blk_seeds_match_the_corpus() {
    let t = &TARGETS[0];
    let files: std::collections::HashMap<String, Vec<u8>> = corpus(t).into_iter().collect();
    for (i, (name, data)) in (t.seeds)().into_iter().enumerate() {
        let file = format!("seed-{i:02}-{name}");
        assert_eq!(files.get(&file), Some(&data), "{file}");
    }
}

#[test]
fn header_round_trips() {
    for t in TARGETS {
        for (name, data) in (t.seeds)()
            .into_iter()
            .filter(|(_, d)| d.len() >= HEADER_LEN)
        {
            let (h, body) = Header::decode(&data);
            assert_eq!(h.encode(body), data, "{}/{name}", t.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mutations

/// xorshift64* (Vigna).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Values that tend to matter to ring and request code.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    15,
    16,
    17,
    255,
    256,
    511,
    512,
    513,
    4096,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX,
    u64::MAX - 15,
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        if d.is_empty() {
            d.resize(HEADER_LEN, 0);
        }
        let at = if rng.below(4) == 0 {
            rng.below(HEADER_LEN.min(d.len()) as u64) as usize
        } else {
            rng.below(d.len() as u64) as usize
        };
        match rng.below(7) {
            0 => d[at] = rng.next() as u8,
            1 => d[at] ^= 1 << rng.below(8),
            2..=4 => {
                let width = rng.pick(&[1usize, 2, 4, 8]);
                let v = if rng.below(3) == 0 {
                    rng.next()
                } else {
                    rng.pick(INTERESTING)
                        .wrapping_add(rng.below(3))
                        .wrapping_sub(1)
                };
                let end = (at + width).min(d.len());
                d[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            5 => {
                // Copy a chunk within the input (descriptors onto descriptors, and so on).
                let from = rng.below(d.len() as u64) as usize;
                let n = (rng.below(64) as usize)
                    .min(d.len() - from)
                    .min(d.len() - at);
                d.copy_within(from..from + n, at);
            }
            _ => d.truncate(rng.below(d.len() as u64 + 1) as usize),
        }
    }
    d
}

fn mutate_and_run(t: &Target, seeds: &[Vec<u8>], seed: u64, iters: usize) {
    let mut rng = Rng(seed | 1);
    let runner = Runner::new(t.run_one);
    let mut slowest = (Duration::ZERO, 0);
    for i in 0..iters {
        let base = &seeds[rng.below(seeds.len() as u64) as usize];
        let input = mutate(&mut rng, base);
        let t = runner.run(&format!("{} mutation {i} (seed {seed:#x})", t.name), &input);
        if t > slowest.0 {
            slowest = (t, i);
        }
    }
    eprintln!(
        "{}: slowest mutation {} took {:?}",
        t.name, slowest.1, slowest.0
    );
}
