//! The virtio-console fuzz target's body: `run_one` turns arbitrary bytes into one of the
//! console's queues, guest memory and host input, and runs the device's queue service
//! through the shared harness's rounds ([`crate::fuzz`]).
//!
//! Input: the shared [`Header`] (flags [`RX`]: drive the receive queue, else the transmit
//! queue; [`PORT_DOWN`]: the driver has not transmitted yet, so input must wait), then the
//! host data ([`Header::encode_with_host`]: the bytes "typed" into the console before
//! the first round, for the receive queue), then the guest-memory image.
//!
//! Checked beyond the ring invariants: transmit chains are used with length 0, the output
//! writer gets exactly the bytes counted in `tx_bytes` and never more than the readable
//! bytes of the chains taken (each capped at [`MAX_TX_PER_CHAIN`]); on receive a used
//! length never exceeds the chain's writable bytes, the used lengths add up to `rx_bytes`,
//! what is left of the input is exactly what was not delivered (the guest got an unbroken
//! prefix), and nothing flows while the port is down.

use super::{ConsoleInput, VirtioConsole, BUDGET};
use super::{Service, Shared, MAX_TX_PER_CHAIN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::fuzz::{drive, guest_memory, Call, Driven, Header, Rules, Target};
use crate::worker::{Drained, QueueService};
use crate::GuestMemory;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use virtio_queue::Queue;

/// [`Header::flags`] bit: drive the receive queue (host input to the guest).
pub const RX: u8 = 1;
/// [`Header::flags`] bit: the driver has not transmitted since activation.
pub const PORT_DOWN: u8 = 2;

/// The output writer: everything the device wrote.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        super::lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Run one input; panics when an invariant fails (see the module documentation).
pub fn run_one(data: &[u8]) {
    run(data);
}

/// `run_one`, reporting what the harness saw.
pub fn run(data: &[u8]) -> Driven {
    let (h, host, image) = Header::decode_with_host(data);
    let mem = guest_memory(h.layout(), image);
    let sink = Sink::default();
    let (dev, input) = VirtioConsole::new(Box::new(sink.clone())).expect("fuzz: console");
    let rx = h.flag(RX);
    dev.shared
        .tx_seen
        .store(!h.flag(PORT_DOWN), Ordering::SeqCst);
    let mut target = Console {
        service: Service::new(dev.shared.clone(), dev.output.clone()),
        shared: dev.shared.clone(),
        input,
        host: if rx { host.to_vec() } else { Vec::new() },
        accepted: 0,
        sink,
        queue: if rx { RX_QUEUE } else { TX_QUEUE },
        used_bytes: 0,
        all_clean: true,
    };
    let rules = Rules {
        budget: Some(BUDGET),
        caught_up: !rx,
        taken_on_break: 1,
        writes_unused_chains: false,
        remembers_broken: false,
    };
    drive(&h, &mem, QUEUE_SIZE, rules, &mut target)
}

struct Console {
    service: Service,
    shared: Arc<Shared>,
    input: ConsoleInput,
    /// The host input, sent before the first round.
    host: Vec<u8>,
    /// How much of it the device accepted (the rest was over its buffer).
    accepted: usize,
    sink: Sink,
    queue: usize,
    /// The sum of the used lengths seen so far.
    used_bytes: u64,
    /// Every call so far was clean (its used lengths are trustworthy).
    all_clean: bool,
}

impl Target for Console {
    fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        self.service.serve(self.queue, mem, queue)
    }

    fn round(&mut self, index: usize) {
        if index == 0 && !self.host.is_empty() {
            self.input.send(&self.host);
            let dropped = self.shared.c.input_dropped.load(Ordering::Relaxed) as usize;
            self.accepted = self.host.len() - dropped;
        }
    }

    fn check(&mut self, call: &Call) {
        self.all_clean &= call.clean;
        let c = &self.shared.c;
        if self.queue == TX_QUEUE {
            let written = std::mem::take(&mut *super::lock(&self.sink.0));
            self.used_bytes += written.len() as u64;
            assert_eq!(
                c.tx_bytes.load(Ordering::Relaxed),
                self.used_bytes,
                "tx_bytes is not what the writer got"
            );
            let mut bound = Some(0u64);
            for u in &call.used {
                if call.clean {
                    assert_eq!(u.len, 0, "a transmit chain used with a length");
                }
                bound = bound
                    .zip(u.chain.as_ref())
                    .map(|(b, chain)| b + chain.readable().min(MAX_TX_PER_CHAIN as u64));
            }
            if let (Some(bound), false) = (bound, call.out.broken) {
                assert!(
                    written.len() as u64 <= bound,
                    "wrote {} bytes for {bound} readable",
                    written.len()
                );
            }
            assert!(
                written.len() <= (call.out.completed + 1) * MAX_TX_PER_CHAIN,
                "over the per-chain cap"
            );
            return;
        }
        assert!(
            self.sink.0.lock().map(|v| v.is_empty()).unwrap_or(false),
            "receiving wrote output"
        );
        for u in &call.used {
            self.used_bytes += u64::from(u.len);
            if let Some(chain) = &u.chain {
                assert!(
                    u64::from(u.len) <= chain.writable(),
                    "used length {} for {} writable bytes",
                    u.len,
                    chain.writable()
                );
            }
        }
        let delivered = c.rx_bytes.load(Ordering::Relaxed) as usize;
        if self.all_clean && !call.out.broken {
            assert_eq!(delivered as u64, self.used_bytes, "rx_bytes");
        }
        if !self.shared.tx_seen.load(Ordering::SeqCst) {
            assert_eq!((delivered, call.out.completed), (0, 0), "the port is down");
        }
        let left: Vec<u8> = super::lock(&self.shared.input).iter().copied().collect();
        assert!(delivered <= self.accepted, "delivered more than was sent");
        assert_eq!(
            left,
            self.host[delivered..self.accepted],
            "what is left is not the undelivered rest of the input"
        );
    }
}
