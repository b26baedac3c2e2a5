//! Stable replay of the image-parser fuzz corpus (`fuzz/corpus/qcow2/`): every file goes
//! through `kiln_block::fuzz::run_one` (open, read, walk extents, check, write), then
//! deterministic mutations of the corpus aimed at header fields and table entries. Fuzzing
//! proper is `cargo +nightly fuzz run qcow2` from the repository root (`fuzz/README.md`).
//!
//! The `seed-*` files are images made by the real qemu-img/qemu-io with every option the
//! block layer reads, plus hand-broken ones; rewrite them with
//! `cargo test -p kiln-block --test fuzz_corpus -- --ignored regenerate_seeds`.
//! `soak` (ignored) runs many more mutations: `KILN_FUZZ_ITERS=200000`,
//! `KILN_FUZZ_SAVE=<dir>` keeps a failing input.

use kiln_block::fuzz::{chunks, encode, run_one, FLAG_CHECK, FLAG_WRITE};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/qcow2")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Run one input on a thread with a time limit: a hang is a failure too.
fn run_bounded(name: &str, data: Vec<u8>) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        run_one(&data);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
            panic!("{name}: harness thread ended without finishing");
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: still running after 30 s (hang)"),
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Values that break parsers: zero, all ones, sign bits, offsets just past a table.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x200,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x0100_0000_0000_0000,
    0x00ff_ffff_ffff_fe00,
    0x4000_0000_0000_0000,
    0x8000_0000_0001_0000,
    u64::MAX,
];

/// A mutation of `input` that keeps its chunk framing (so it stays a sparse image).
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let (flags, cs) = chunks(input);
    let mut image: Vec<(u64, Vec<u8>)> = cs.into_iter().map(|(o, b)| (o, b.to_vec())).collect();
    let mut flags = flags;
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 => flags ^= 1 << rng.below(2),
            // Move a whole chunk (a table lands somewhere else).
            1 if !image.is_empty() => {
                let i = rng.below(image.len() as u64) as usize;
                image[i].0 = rng.below(1 << 24) & !511;
            }
            _ if !image.is_empty() => {
                let i = rng.below(image.len() as u64) as usize;
                let b = &mut image[i].1;
                if b.is_empty() {
                    continue;
                }
                // Mostly the first chunk: the header and its extensions.
                let at = rng.below(b.len() as u64) as usize;
                if rng.below(2) == 0 && b.len() >= 8 {
                    let at = at.min(b.len() - 8) & !3;
                    let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                    let v = if rng.below(2) == 0 {
                        v
                    } else {
                        v ^ rng.below(1 << 20)
                    };
                    if rng.below(2) == 0 {
                        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
                    } else {
                        b[at..at + 4].copy_from_slice(&(v as u32).to_be_bytes());
                    }
                } else {
                    b[at] = rng.next() as u8;
                }
            }
            _ => {}
        }
    }
    let mut out = vec![flags];
    for (o, b) in image {
        out.extend_from_slice(&(o as u32).to_be_bytes());
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(&b);
    }
    out
}

fn run_mutations(iters: u64, seed: u64, save: Option<&Path>) {
    let files = corpus();
    let mut rng = Rng(seed | 1);
    for n in 0..iters {
        let (name, base) = &files[rng.below(files.len() as u64) as usize];
        let input = mutate(base, &mut rng);
        let label = format!("mutation {n} of {name}");
        let keep = input.clone();
        let t = std::time::Instant::now();
        let r = std::panic::catch_unwind(|| run_bounded(&label, input));
        if t.elapsed() > Duration::from_millis(500) {
            eprintln!("{label}: slow, {:.1} s", t.elapsed().as_secs_f64());
        }
        if let Err(e) = r {
            if let Some(dir) = save {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(dir.join(format!("crash-{n}")), &keep).unwrap();
            }
            eprintln!("{label} failed");
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn corpus_replays_cleanly() {
    let files = corpus();
    assert!(
        files.len() >= 20,
        "fuzz/corpus/qcow2 holds {} files; the seeds are missing",
        files.len()
    );
    for (name, data) in files {
        run_bounded(&name, data);
    }
}

#[test]
fn mutations_of_the_corpus_replay_cleanly() {
    run_mutations(1000, 0x005e_ed0f_b10c, None);
}

#[test]
fn seeds_are_real_images_that_open() {
    // The well-formed seeds must open and read, or the corpus teaches the fuzzer nothing.
    for (name, data) in corpus() {
        if !name.starts_with("seed-ok-") {
            continue;
        }
        let (_, cs) = chunks(&data);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = std::fs::File::create(&p).unwrap();
        for (off, b) in cs {
            std::os::unix::fs::FileExt::write_all_at(&f, b, off).unwrap();
        }
        let opts = kiln_block::OpenOptions {
            read_only: true,
            format: None,
            no_backing: true,
            share: kiln_block::Share::Readers,
        };
        let mut dev =
            kiln_block::open(&p, &opts).unwrap_or_else(|e| panic!("{name} does not open: {e}"));
        let mut buf = vec![0u8; 4096.min(dev.size() as usize)];
        dev.read_at(&mut buf, 0)
            .unwrap_or_else(|e| panic!("{name} does not read: {e}"));
    }
}

#[test]
#[ignore = "long stable mutation run; KILN_FUZZ_ITERS, KILN_FUZZ_SEED, KILN_FUZZ_SAVE"]
fn soak() {
    let env = |k: &str| std::env::var(k).ok();
    let iters = env("KILN_FUZZ_ITERS").map_or(100_000, |v| v.parse().unwrap());
    let seed = env("KILN_FUZZ_SEED").map_or(0x50a4, |v| v.parse().unwrap());
    let save = env("KILN_FUZZ_SAVE").map(PathBuf::from);
    run_mutations(iters, seed, save.as_deref());
}

/// One seed: qemu-img create arguments, qemu-io commands, an optional post-processing step.
struct Seed {
    name: &'static str,
    create: &'static [&'static str],
    io: &'static [&'static str],
    patch: Option<fn(&mut Vec<u8>)>,
}

fn qemu(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed to regenerate seeds: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn be64_at(img: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(img[at..at + 8].try_into().unwrap())
}

fn put64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

const WRITES: &[&str] = &[
    "write -P 0x11 0 512",
    "write -P 0x22 100k 1k",
    "write -z 256k 64k",
    "write -P 0x33 1M 512",
];

const SEEDS: &[Seed] = &[
    Seed {
        name: "ok-c512-v3",
        create: &["-o", "cluster_size=512", "4M"],
        io: WRITES,
        patch: None,
    },
    Seed {
        name: "ok-c4k-v2",
        create: &["-o", "cluster_size=4k,compat=0.10", "4M"],
        io: WRITES,
        patch: None,
    },
    Seed {
        name: "ok-c64k",
        create: &["4M"],
        io: WRITES,
        patch: None,
    },
    Seed {
        name: "ok-c2m",
        create: &["-o", "cluster_size=2M", "8M"],
        io: &["write -P 0x44 0 512", "write -P 0x55 3M 512"],
        patch: None,
    },
    Seed {
        name: "ok-refbits1",
        create: &["-o", "cluster_size=4k,refcount_bits=1", "4M"],
        io: WRITES,
        patch: None,
    },
    Seed {
        name: "ok-refbits64",
        create: &["-o", "cluster_size=4k,refcount_bits=64", "4M"],
        io: WRITES,
        patch: None,
    },
    Seed {
        name: "ok-extl2",
        create: &["-o", "extended_l2=on,cluster_size=64k", "4M"],
        io: &[
            "write -P 0x66 4k 2k",
            "write -z 64k 2k",
            "write -P 0x77 130k 3k",
        ],
        patch: None,
    },
    Seed {
        name: "ok-lazy",
        create: &["-o", "cluster_size=4k,lazy_refcounts=on", "4M"],
        io: WRITES,
        patch: None,
    },
    Seed {
        name: "ok-zstd",
        create: &["-o", "cluster_size=4k,compression_type=zstd", "4M"],
        io: &[
            "write -c -P 0x12 0 4k",
            "write -c -P 0x13 8k 4k",
            "write -P 0x14 64k 4k",
        ],
        patch: None,
    },
    Seed {
        name: "ok-zlib",
        create: &["-o", "cluster_size=4k", "4M"],
        io: &[
            "write -c -P 0x15 0 4k",
            "write -c -P 0x16 4k 4k",
            "write -c -P 0x17 1M 4k",
        ],
        patch: None,
    },
    Seed {
        name: "ok-backing",
        create: &["-b", "base.raw", "-F", "raw", "-o", "cluster_size=4k", "4M"],
        io: &["write -P 0x18 2k 1k"],
        patch: None,
    },
    Seed {
        name: "ok-big-l1",
        create: &["-o", "cluster_size=512", "16G"],
        io: &["write -P 0x19 15G 512"],
        patch: None,
    },
    Seed {
        name: "ok-prealloc",
        create: &["-o", "cluster_size=4k,preallocation=metadata", "1M"],
        io: &[],
        patch: None,
    },
    Seed {
        name: "ok-empty",
        create: &["-o", "cluster_size=512", "0"],
        io: &[],
        patch: None,
    },
    Seed {
        name: "ok-discard",
        create: &["-o", "cluster_size=4k", "4M"],
        io: &["write -P 0x1a 0 16k", "discard 8k 4k"],
        patch: None,
    },
    Seed {
        name: "ok-dirty",
        create: &["-o", "cluster_size=4k,lazy_refcounts=on", "4M"],
        io: WRITES,
        patch: Some(|img| img[79] |= 1),
    },
    Seed {
        name: "corrupt-bit",
        create: &["-o", "cluster_size=4k", "4M"],
        io: WRITES,
        patch: Some(|img| img[79] |= 2),
    },
    Seed {
        name: "l1-past-eof",
        create: &["-o", "cluster_size=4k", "4M"],
        io: WRITES,
        patch: Some(|img| {
            let l1 = be64_at(img, 40) as usize;
            put64(img, l1, 0x8000_0000_4000_0000);
        }),
    },
    Seed {
        name: "l2-into-header",
        create: &["-o", "cluster_size=4k", "4M"],
        io: WRITES,
        patch: Some(|img| {
            let l1 = be64_at(img, 40) as usize;
            let l2 = (be64_at(img, l1) & 0x00ff_ffff_ffff_fe00) as usize;
            put64(img, l2, 0x8000_0000_0000_0000);
            put64(img, l2 + 8, 0x8000_0000_0000_0200);
        }),
    },
    Seed {
        name: "reftable-huge",
        create: &["-o", "cluster_size=4k", "4M"],
        io: WRITES,
        patch: Some(|img| {
            put64(img, 48, 0x7fff_f000);
            img[56..60].copy_from_slice(&0x00ff_ffffu32.to_be_bytes());
        }),
    },
    Seed {
        name: "compressed-huge",
        create: &["-o", "cluster_size=4k", "4M"],
        io: &["write -c -P 0x21 0 4k"],
        patch: Some(|img| {
            let l1 = be64_at(img, 40) as usize;
            let l2 = (be64_at(img, l1) & 0x00ff_ffff_ffff_fe00) as usize;
            put64(img, l2, 0x7fff_ffff_ffff_ffff);
        }),
    },
    Seed {
        name: "snapshots-many",
        create: &["-o", "cluster_size=4k", "4M"],
        io: WRITES,
        patch: Some(|img| {
            img[60..64].copy_from_slice(&65536u32.to_be_bytes());
            put64(img, 64, 0x1000);
        }),
    },
];

#[test]
#[ignore = "rewrites fuzz/corpus/qcow2/seed-* with qemu-img; run after changing the input format"]
fn regenerate_seeds() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("base.raw"), vec![0x5a; 1 << 20]).unwrap();
    let mut extra = Vec::new();
    for s in SEEDS {
        let img = tmp.path().join(format!("{}.qcow2", s.name));
        let p = img.to_str().unwrap();
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        let (opts, size) = s.create.split_at(s.create.len() - 1);
        args.extend_from_slice(opts);
        args.push(p);
        args.extend_from_slice(size);
        qemu("qemu-img", &args);
        for c in s.io {
            qemu("qemu-io", &["-f", "qcow2", "-c", c, p]);
        }
        let mut bytes = std::fs::read(&img).unwrap();
        if s.name == "ok-c64k" {
            // A snapshot, then more writes: shared clusters and a snapshot table.
            qemu("qemu-img", &["snapshot", "-c", "first", p]);
            qemu("qemu-io", &["-f", "qcow2", "-c", "write -P 0x99 0 1k", p]);
            extra.push(("ok-snapshot", std::fs::read(&img).unwrap()));
        }
        if let Some(f) = s.patch {
            f(&mut bytes);
        }
        let name = format!("seed-{}", s.name);
        std::fs::write(dir.join(&name), encode(FLAG_WRITE | FLAG_CHECK, &bytes)).unwrap();
    }
    // Legacy qcow (version 1): plain and compressed, made by converting.
    let raw = tmp.path().join("v1-src.raw");
    let mut data = vec![0u8; 1 << 20];
    data[..4096].fill(0x41);
    data[600_000..603_000].fill(0x42);
    std::fs::write(&raw, &data).unwrap();
    for (name, extra_args) in [("ok-qcow1", &[][..]), ("ok-qcow1-compressed", &["-c"][..])] {
        let img = tmp.path().join(name);
        let mut args = vec!["convert", "-O", "qcow"];
        args.extend_from_slice(extra_args);
        args.push(raw.to_str().unwrap());
        args.push(img.to_str().unwrap());
        // qemu-img 10 exits 1 silently after writing a complete compressed qcow image.
        let _ = Command::new("qemu-img").args(&args).output().unwrap();
        extra.push((name, std::fs::read(&img).unwrap()));
    }
    for (name, bytes) in extra {
        std::fs::write(
            dir.join(format!("seed-{name}")),
            encode(FLAG_WRITE | FLAG_CHECK, &bytes),
        )
        .unwrap();
    }
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(
            len < 64 << 10,
            "{} is {len} bytes (keep seeds small)",
            p.display()
        );
    }
}
