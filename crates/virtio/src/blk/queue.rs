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
use crate::GuestMemory;
use kiln_block::BlockDevice;
use std::num::Wrapping;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
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

/// What one [`QueueProcessor::process_queue`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Chains put on the used ring.
    pub completed: usize,
    /// Chains were completed and the driver wants an interrupt (always, unless event-idx
    /// was negotiated and its used_event says not yet).
    pub notify: bool,
    /// The budget ran out with requests still available: call again.
    pub more: bool,
    /// The ring is corrupt: the device must set DEVICE_NEEDS_RESET and stop using it.
    pub broken: bool,
}

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

/// Why the next chain could not be taken.
struct Corrupt;

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
        let mut out = QueueOutcome::default();
        if self.broken {
            out.broken = true;
            return out;
        }
        // Set when enable_notification found the available index ahead of next_avail: the
        // next pass must then find a chain. If it finds the index equal again, the index
        // moved back (or the device's own used-flags write lands on it, the rings
        // overlapping), and re-checking would spin forever without completing anything.
        let mut recheck = false;
        'drain: loop {
            if queue.disable_notification(mem).is_err() {
                out.broken = true;
                break;
            }
            loop {
                if out.completed >= self.budget {
                    out.more = true;
                    break 'drain;
                }
                match next_chain(mem, queue) {
                    Ok(Some(chain)) => {
                        recheck = false;
                        let head = chain.head_index();
                        let len = self.serve(mem, chain);
                        if queue.add_used(mem, head, len).is_err() {
                            out.broken = true;
                            break 'drain;
                        }
                        out.completed += 1;
                    }
                    Ok(None) if recheck => {
                        out.broken = true;
                        break 'drain;
                    }
                    Ok(None) => break,
                    Err(Corrupt) => {
                        out.broken = true;
                        break 'drain;
                    }
                }
            }
            match queue.enable_notification(mem) {
                Ok(true) => {
                    recheck = true;
                    continue;
                }
                Ok(false) => break,
                Err(_) => {
                    out.broken = true;
                    break;
                }
            }
        }
        if out.completed > 0 {
            // If used_event cannot be read, interrupting is the safe answer.
            out.notify = queue.needs_notification(mem).unwrap_or(true);
        }
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

/// The next available chain, None when the ring is empty, or Corrupt.
fn next_chain<'m>(
    mem: &'m GuestMemory,
    queue: &mut Queue,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>, Corrupt> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| Corrupt)?;
    let next = Wrapping(queue.next_avail());
    if avail == next {
        return Ok(None);
    }
    if (avail - next).0 > queue.size() {
        return Err(Corrupt);
    }
    // The iterator re-reads the index; None now means the ring entry was unreadable or
    // the driver moved the index back, both corrupt.
    let chain = queue
        .iter(mem)
        .map_err(|_| Corrupt)?
        .next()
        .ok_or(Corrupt)?;
    if chain.head_index() >= queue.size() {
        return Err(Corrupt);
    }
    Ok(Some(chain))
}

/// The worker thread runs the processor like any other device's queue service.
impl crate::worker::QueueService for QueueProcessor {
    fn serve(
        &mut self,
        _index: usize,
        mem: &GuestMemory,
        queue: &mut Queue,
    ) -> crate::worker::Drained {
        let out = self.process_queue(mem, queue);
        crate::worker::Drained {
            completed: out.completed,
            notify: out.notify,
            more: out.more,
            broken: out.broken,
        }
    }
}
