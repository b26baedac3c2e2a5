//! libFuzzer target: virtio-console queue handling on arbitrary descriptor chains, rings and
//! guest memory. The input format and the invariants are in `kiln_virtio::console::fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_virtio::console::fuzz::run_one(data);
});
