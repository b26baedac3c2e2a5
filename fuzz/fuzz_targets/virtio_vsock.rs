//! libFuzzer target: virtio-vsock's transmit and receive queues (guest packets, host
//! connections over real Unix sockets) on arbitrary descriptor chains, rings and guest
//! memory. The input format and the invariants are in `kiln_virtio::vsock::fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kiln_virtio::vsock::fuzz::run_one(data);
});
