//! The synchronous core of virtio-blk: [`QueueProcessor`] drains the request queue, serves
//! each chain and puts it on the used ring, and decides whether the driver wants an
//! interrupt. The worker thread calls it on every kick; tests and fuzzers call it directly.
//!
//! Ring-level corruption (an available index more than a queue ahead or moving back, a
//! head index beyond the queue, rings outside guest memory) cannot be answered per request:
//! the processor reports the queue broken and refuses to touch it again until it is rebuilt
//! (reset).

use super::chain::Framing;
use super::config::bit;
use super::request::{execute, write_status, Ctx, Done, Kind};
use super::{ID_BYTES, QUEUE_SIZE};
use crate::worker::drain;
use crate::GuestMemory;
use kiln_block::BlockDevice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryBackend;

/// Chains served per [`QueueProcessor::process_queue`] call before it returns with
/// [`QueueOutcome::more`] set, so a driver that keeps the queue full cannot keep the
/// worker from noticing a reset.
pub const BUDGET: usize = 4 * QUEUE_SIZE as usize;

/// Request counters, shared between the device and its worker thread.
#[derive(Debug, Default)]
pub struct BlkCounters {
    /// IN requests.
    pub read_requests: AtomicU64,
    /// OUT requests.
    pub write_requests: AtomicU64,
    /// FLUSH requests.
    pub flush_requests: AtomicU64,
    /// Every other request (GET_ID, DISCARD, WRITE_ZEROES, unknown or unreadable).
    pub other_requests: AtomicU64,
    /// Bytes read from the disk into guest buffers.
    pub bytes_read: AtomicU64,
    /// Bytes written to the disk.
    pub bytes_written: AtomicU64,
    /// Requests that failed with IOERR or could not even get a status.
    pub errors: AtomicU64,
}

impl BlkCounters {
    /// (name, value) pairs for [`VirtioDevice::counters`](crate::VirtioDevice::counters).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("read_requests", g(&self.read_requests)),
            ("write_requests", g(&self.write_requests)),
            ("flush_requests", g(&self.flush_requests)),
            ("other_requests", g(&self.other_requests)),
            ("bytes_read", g(&self.bytes_read)),
            ("bytes_written", g(&self.bytes_written)),
            ("errors", g(&self.errors)),
        ]
    }

    fn record(&self, done: &Done, answered: bool) {
        let c = match done.kind {
            Kind::Read => &self.read_requests,
            Kind::Write => &self.write_requests,
            Kind::Flush => &self.flush_requests,
            Kind::Other => &self.other_requests,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(
            if done.kind == Kind::Read {
                done.to_guest
            } else {
                0
            },
            Ordering::Relaxed,
        );
        self.bytes_written
            .fetch_add(done.to_disk, Ordering::Relaxed);
        let ok = u32::from(done.status) == VIRTIO_BLK_S_OK
            || u32::from(done.status) == VIRTIO_BLK_S_UNSUPP;
        if !ok || !answered {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one [`QueueProcessor::process_queue`] call did (the shared worker's report).
pub type QueueOutcome = crate::worker::Drained;

/// Serves one virtio-blk request queue against a disk.
pub struct QueueProcessor {
    disk: Arc<Mutex<Box<dyn BlockDevice>>>,
    capacity: u64,
    read_only: bool,
    serial: [u8; ID_BYTES],
    discard: bool,
    write_zeroes: bool,
    counters: Arc<BlkCounters>,
    bounce: Vec<u8>,
    broken: bool,
    budget: usize,
}

impl QueueProcessor {
    /// A processor for `disk` (capacity in sectors) given the features the driver accepted.
    pub fn new(
        disk: Arc<Mutex<Box<dyn BlockDevice>>>,
        capacity: u64,
        read_only: bool,
        serial: [u8; ID_BYTES],
        acked_features: u64,
        counters: Arc<BlkCounters>,
    ) -> Self {
        QueueProcessor {
            disk,
            capacity,
            read_only,
            serial,
            discard: acked_features & bit(VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: acked_features & bit(VIRTIO_BLK_F_WRITE_ZEROES) != 0,
            counters,
            bounce: Vec::new(),
            broken: false,
            budget: BUDGET,
        }
    }

    /// The same processor serving at most `budget` chains per call (tests).
    #[cfg(test)]
    pub(crate) fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget;
        self
    }

    /// Whether a corrupt ring stopped this processor.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Serve available chains until the ring is empty (re-enabling notifications and
    /// checking once more, so no request is missed) or [`BUDGET`] chains were served.
    pub fn process_queue(&mut self, mem: &GuestMemory, queue: &mut Queue) -> QueueOutcome {
        if self.broken {
            return QueueOutcome {
                broken: true,
                ..QueueOutcome::default()
            };
        }
        let out = drain(mem, queue, self.budget, |chain| self.serve(mem, chain));
        self.broken = out.broken;
        out
    }

    /// Serve one chain; the length for its used element.
    fn serve(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        let f = Framing::parse(chain);
        // Without a status byte in guest RAM the outcome cannot be reported: do nothing.
        if !f
            .status
            .is_some_and(|a| GuestMemoryBackend::address_in_range(mem, a))
        {
            let done = Done {
                kind: Kind::Other,
                status: VIRTIO_BLK_S_IOERR as u8,
                to_guest: 0,
                to_disk: 0,
            };
            self.counters.record(&done, false);
            return 0;
        }
        let done = {
            let mut disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
            let mut ctx = Ctx {
                disk: &mut **disk,
                capacity: self.capacity,
                read_only: self.read_only,
                serial: &self.serial,
                discard: self.discard,
                write_zeroes: self.write_zeroes,
                bounce: &mut self.bounce,
            };
            execute(mem, &f, &mut ctx)
        };
        let answered = write_status(mem, &f, done.status);
        self.counters.record(&done, answered);
        if answered {
            u32::try_from(done.to_guest + 1).unwrap_or(u32::MAX)
        } else {
            0
        }
    }
}

/// The worker thread runs the processor like any other device's queue service.
impl crate::worker::QueueService for QueueProcessor {
    fn serve(
        &mut self,
        _index: usize,
        mem: &GuestMemory,
        queue: &mut Queue,
    ) -> crate::worker::Drained {
        self.process_queue(mem, queue)
    }
}
