//! The virtio-rng fuzz target's body: `run_one` turns arbitrary bytes into the request
//! queue and guest memory (the shared format, [`crate::fuzz::Header`] then the image; no
//! device flags) and runs the device's queue service through the shared harness's rounds.
//!
//! The entropy source is `/dev/zero`, so runs are deterministic. Checked beyond the ring
//! invariants: a used length never exceeds [`MAX_BYTES_PER_REQUEST`] nor the chain's
//! writable bytes, and those bytes hold what the source gave; every request is counted
//! once and the byte counter matches the used lengths.

use super::{Counters, Service, BUDGET, MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
use crate::fuzz::{drive, guest_memory, Call, Driven, Header, Rules, Target};
use crate::worker::{Drained, QueueService};
use crate::GuestMemory;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

/// Run one input; panics when an invariant fails (see the module documentation).
pub fn run_one(data: &[u8]) {
    run(data);
}

/// `run_one`, reporting what the harness saw.
pub fn run(data: &[u8]) -> Driven {
    let (h, image) = Header::decode(data);
    let mem = guest_memory(h.layout(), image);
    let counters = Arc::new(Counters::default());
    let mut target = Rng {
        service: Service {
            source: File::open("/dev/zero").expect("fuzz: open /dev/zero"),
            counters: counters.clone(),
            buf: Vec::new(),
        },
        mem: mem.clone(),
        counters,
        used_bytes: 0,
        completed: 0,
        all_clean: true,
    };
    let rules = Rules {
        budget: Some(BUDGET),
        caught_up: true,
        taken_on_break: 1,
        writes_unused_chains: false,
        remembers_broken: false,
    };
    drive(&h, &mem, QUEUE_SIZE, rules, &mut target)
}

struct Rng {
    service: Service,
    mem: GuestMemory,
    counters: Arc<Counters>,
    /// The sum of the used lengths seen so far.
    used_bytes: u64,
    /// Chains completed so far.
    completed: u64,
    /// Every call so far was clean (its used lengths are trustworthy).
    all_clean: bool,
}

impl Target for Rng {
    fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        self.service.serve(0, mem, queue)
    }

    fn check(&mut self, call: &Call) {
        self.all_clean &= call.clean;
        for u in &call.used {
            assert!(
                !call.clean || u.len as usize <= MAX_BYTES_PER_REQUEST,
                "used length {} over the cap",
                u.len
            );
            self.used_bytes += u64::from(u.len);
            let Some(chain) = &u.chain else { continue };
            assert!(
                u64::from(u.len) <= chain.writable(),
                "used length {} for {} writable bytes",
                u.len,
                chain.writable()
            );
            // The bytes written are the first `len` of the writable buffers, in order.
            let mut left = u64::from(u.len);
            for &(addr, len, _) in chain.descs.iter().filter(|d| d.2) {
                let n = left.min(u64::from(len));
                let mut got = vec![0xffu8; n as usize];
                self.mem
                    .read_slice(&mut got, GuestAddress(addr))
                    .expect("fuzz: a buffer the device filled");
                assert!(got.iter().all(|b| *b == 0), "not the source's bytes");
                left -= n;
            }
        }
        let requests = self.counters.requests.load(Ordering::Relaxed);
        let bytes = self.counters.bytes.load(Ordering::Relaxed);
        self.completed += call.out.completed as u64;
        let completed = self.completed;
        if call.out.broken {
            assert!(requests <= completed + 1, "{requests} for {completed}");
        } else {
            assert_eq!(requests, completed, "requests counted");
            if self.all_clean {
                assert_eq!(bytes, self.used_bytes, "bytes counted");
            }
        }
    }
}
