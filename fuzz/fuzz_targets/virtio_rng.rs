//! libFuzzer target: virtio-rng queue handling on arbitrary descriptor chains, rings and
//! guest memory. The input format and the invariants are in `kiln_virtio::rng::fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_virtio::rng::fuzz::run_one(data);
});
