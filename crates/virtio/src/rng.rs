//! virtio-rng (device ID 4, virtio 1.2 §5.4): one queue of device-writable buffers that
//! the device fills with random bytes from the host's `/dev/urandom`. The guest's
//! `/dev/hwrng` reads from it.

use crate::device::{ActivateError, Activation, VirtioDevice};
use crate::worker::{drain, spawn, Drained, QueueService, WorkerHandle};
use crate::GuestMemory;
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress};

/// The fuzz target's body: arbitrary bytes as a queue and guest memory, run and checked.
pub mod fuzz;

/// virtio's device ID for an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given for one request (a bigger buffer gets this much).
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;
/// Chains served per pass before other work gets a turn.
const BUDGET: usize = 256;

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// The entropy device.
pub struct VirtioRng {
    source: File,
    counters: Arc<Counters>,
    worker: Option<WorkerHandle>,
}

impl VirtioRng {
    /// A device reading the host's `/dev/urandom`.
    pub fn new() -> io::Result<Self> {
        Ok(VirtioRng {
            source: File::open("/dev/urandom")?,
            counters: Arc::default(),
            worker: None,
        })
    }
}

struct Service {
    source: File,
    counters: Arc<Counters>,
    buf: Vec<u8>,
}

impl Service {
    /// Fill the chain's device-writable buffers; returns the bytes written.
    fn fill(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut total = 0usize;
        for desc in chain {
            if !desc.is_write_only() {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let len = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - total);
            if len == 0 {
                break;
            }
            self.buf.resize(len, 0);
            let ok = self.source.read_exact(&mut self.buf[..len]).is_ok()
                && mem
                    .write_slice(&self.buf[..len], GuestAddress(desc.addr().0))
                    .is_ok();
            if !ok {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            total += len;
        }
        self.counters
            .bytes
            .fetch_add(total as u64, Ordering::Relaxed);
        total as u32
    }
}

impl QueueService for Service {
    fn serve(&mut self, _index: usize, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        drain(mem, queue, BUDGET, |chain| self.fill(mem, chain))
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let mut queues = a.queues;
        let Some(Some(mut q)) = queues.drain(..).next() else {
            return Err(ActivateError::BadSetup(
                "virtio-rng: queue 0 is not enabled".into(),
            ));
        };
        let event_idx = a.acked_features & self.features() != 0;
        virtio_queue::QueueT::set_event_idx(&mut q.queue, event_idx);
        let service = Service {
            source: self.source.try_clone()?,
            counters: self.counters.clone(),
            buf: Vec::new(),
        };
        self.worker = Some(spawn(
            "virtio-rng",
            service,
            a.mem,
            vec![q],
            a.config_interrupt,
            a.needs_reset,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("requests", g(&self.counters.requests)),
            ("bytes", g(&self.counters.bytes)),
            ("errors", g(&self.counters.errors)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestMemoryMmap;

    const F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    #[test]
    fn fills_writable_buffers_and_refuses_readable_ones() {
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        // Chain 0: two writable buffers (4 KiB + 100 bytes); chain 1: a readable buffer.
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8_0000, 0x1000, F_WRITE | F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x8_1000, 100, F_WRITE, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x8_2000, 64, 0, 0)),
        ];
        mock.build_multiple_desc_chains(&descs).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        // The mock's used ring overlaps its available ring; give it its own place.
        queue.set_used_ring_address(Some(0x9_0000), Some(0));
        let mut dev = VirtioRng::new().unwrap();
        let mut svc = Service {
            source: dev.source.try_clone().unwrap(),
            counters: dev.counters.clone(),
            buf: Vec::new(),
        };
        let out = svc.serve(0, &mem, &mut queue);
        assert_eq!((out.completed, out.broken), (2, false));
        let used_len = |i: u64| {
            mem.read_obj::<u32>(GuestAddress(0x9_0000 + 4 + 8 * i + 4))
                .unwrap()
        };
        assert_eq!((used_len(0), used_len(1)), (0x1000 + 100, 0));
        let mut got = vec![0u8; 0x1000];
        mem.read_slice(&mut got, GuestAddress(0x8_0000)).unwrap();
        assert!(
            got.iter().filter(|b| **b != 0).count() > 0xf00,
            "random bytes"
        );
        let c = dev.counters();
        assert_eq!(c, vec![("requests", 2), ("bytes", 0x1064), ("errors", 1)]);
        dev.reset();
    }
}
