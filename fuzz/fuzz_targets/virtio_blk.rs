//! libFuzzer target: virtio-blk queue handling on arbitrary descriptor chains, rings and
//! guest memory. The input format and the invariants are in `kiln_virtio::blk::fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_virtio::blk::fuzz::run_one(data);
});
