//! virtio-console (device ID 3, virtio 1.2 §5.3) with a single port and no optional
//! features: receiveq (queue 0) carries host input to the guest, transmitq (queue 1) the
//! guest's output to a host writer. The guest sees it as `/dev/hvc0`.
//!
//! Host input goes through a [`ConsoleInput`] handle into a bounded buffer
//! ([`INPUT_CAPACITY`]) and wakes the device thread; it is kept until the driver posts
//! receive buffers and has transmitted its first byte since activation, so nothing typed
//! before the guest is ready is lost. (Without VIRTIO_CONSOLE_F_MULTIPORT the device is
//! never told when the port is connected, and Linux drops data that arrives while its
//! port is still being set up: measured with 2 vCPUs, where the receive interrupt runs
//! on the other CPU before the console port exists. The driver's first output is the
//! sign that the port is up.) Transmitted bytes
//! are copied from guest memory in [`CHUNK`]-sized pieces, at most [`MAX_TX_PER_CHAIN`]
//! per chain. Driver mistakes (a writable buffer in a transmit chain, a readable one in a
//! receive chain, a buffer outside guest memory) are counted in `errors` and skipped.

use crate::device::{ActivateError, Activation, VirtioDevice};
use crate::worker::{drain, Drained, QueueService, WorkerBuilder, WorkerHandle};
use crate::GuestMemory;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes};
use vmm_sys_util::eventfd::EventFd;

/// The fuzz target's body: arbitrary bytes as a queue, guest memory and host input, run
/// and checked.
pub mod fuzz;

/// virtio's device ID for a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 64;
/// The receive queue (host to guest).
pub const RX_QUEUE: usize = 0;
/// The transmit queue (guest to host).
pub const TX_QUEUE: usize = 1;
/// Most input bytes buffered while the guest has no receive buffers.
pub const INPUT_CAPACITY: usize = 64 << 10;
/// Most bytes taken from one transmit chain; the rest of the chain is skipped and the
/// chain counted in `errors`.
pub const MAX_TX_PER_CHAIN: usize = 64 << 10;
/// Bytes copied from guest memory at a time.
pub const CHUNK: usize = 4 << 10;
/// Chains served per pass before other work gets a turn.
const BUDGET: usize = 256;

/// Lock a mutex, even one a panicking thread left poisoned (the data stays usable).
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Counters {
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    input_dropped: AtomicU64,
    errors: AtomicU64,
}

/// What the device, its thread and the input handles share.
struct Shared {
    input: Mutex<VecDeque<u8>>,
    /// Written when input arrives; the device thread treats it as a receive-queue kick.
    wake: EventFd,
    /// The driver has transmitted since activation: its port is up, input may flow.
    tx_seen: std::sync::atomic::AtomicBool,
    c: Counters,
}

impl Shared {
    fn error(&self) {
        self.c.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A handle that feeds host input (a terminal, a socket) to the guest's console.
#[derive(Clone)]
pub struct ConsoleInput(Arc<Shared>);

impl ConsoleInput {
    /// Queue `bytes` for the guest and wake the device. Up to [`INPUT_CAPACITY`] bytes wait
    /// for receive buffers; when the buffer is full the *newest* bytes (the tail of this
    /// call that does not fit) are dropped and counted in `input_dropped`, so what the
    /// guest gets is always an unbroken prefix of what was sent.
    pub fn send(&self, bytes: &[u8]) {
        let mut input = lock(&self.0.input);
        let take = bytes.len().min(INPUT_CAPACITY.saturating_sub(input.len()));
        input.extend(&bytes[..take]);
        drop(input);
        let dropped = bytes.len() - take;
        if dropped > 0 {
            self.0
                .c
                .input_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        if take > 0 {
            // A full counter already means a wake-up is pending.
            let _ = self.0.wake.write(1);
        }
    }
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput").finish_non_exhaustive()
    }
}

type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// The console device.
pub struct VirtioConsole {
    shared: Arc<Shared>,
    output: Output,
    worker: Option<WorkerHandle>,
}

impl VirtioConsole {
    /// A console writing the guest's output to `output`, and the handle that feeds it
    /// input.
    pub fn new(output: Box<dyn Write + Send>) -> io::Result<(VirtioConsole, ConsoleInput)> {
        let shared = Arc::new(Shared {
            input: Mutex::new(VecDeque::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            tx_seen: std::sync::atomic::AtomicBool::new(false),
            c: Counters::default(),
        });
        let dev = VirtioConsole {
            shared: shared.clone(),
            output: Arc::new(Mutex::new(output)),
            worker: None,
        };
        Ok((dev, ConsoleInput(shared)))
    }
}

struct Service {
    shared: Arc<Shared>,
    output: Output,
    chunk: Vec<u8>,
}

impl Service {
    fn new(shared: Arc<Shared>, output: Output) -> Self {
        Service {
            shared,
            output,
            chunk: vec![0; CHUNK],
        }
    }

    /// Copy the chain's readable buffers to `out`. The used length is 0.
    fn transmit(
        &mut self,
        mem: &GuestMemory,
        out: &mut dyn Write,
        chain: DescriptorChain<&GuestMemory>,
    ) -> u32 {
        let mut taken = 0usize;
        for desc in chain {
            if desc.is_write_only() {
                self.shared.error();
                continue;
            }
            let len = desc.len() as usize;
            let want = len.min(MAX_TX_PER_CHAIN - taken);
            let mut off = 0;
            while off < want {
                let n = (want - off).min(CHUNK);
                let buf = &mut self.chunk[..n];
                let ok = desc
                    .addr()
                    .checked_add(off as u64)
                    .is_some_and(|addr| mem.read_slice(buf, addr).is_ok())
                    && out.write_all(buf).is_ok();
                if !ok {
                    self.shared.error();
                    return 0;
                }
                self.shared
                    .c
                    .tx_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                off += n;
            }
            taken += want;
            if want < len {
                self.shared.error();
                return 0;
            }
        }
        0
    }

    fn serve_tx(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        let output = self.output.clone();
        let mut out = lock(&output);
        let drained = drain(mem, queue, BUDGET, |chain| {
            self.transmit(mem, &mut **out, chain)
        });
        if out.flush().is_err() {
            self.shared.error();
        }
        if drained.completed > 0 && !self.shared.tx_seen.swap(true, Ordering::SeqCst) {
            // The port is up: let input waiting for it through.
            let _ = self.shared.wake.write(1);
        }
        drained
    }

    /// Fill the chain's writable buffers from `input`; returns the bytes written.
    fn receive(
        &self,
        mem: &GuestMemory,
        input: &mut VecDeque<u8>,
        chain: DescriptorChain<&GuestMemory>,
    ) -> u32 {
        let mut written = 0usize;
        for desc in chain {
            if !desc.is_write_only() {
                self.shared.error();
                continue;
            }
            if input.is_empty() {
                break;
            }
            let n = (desc.len() as usize).min(input.len());
            // In place (no allocation); a no-op once the deque is contiguous.
            if mem
                .write_slice(&input.make_contiguous()[..n], desc.addr())
                .is_err()
            {
                self.shared.error();
                break;
            }
            input.drain(..n);
            written += n;
        }
        self.shared
            .c
            .rx_bytes
            .fetch_add(written as u64, Ordering::Relaxed);
        // At most INPUT_CAPACITY.
        written as u32
    }

    /// [`drain`] one chain at a time while there is input: chains the driver posts with
    /// nothing to give them stay on the ring until input arrives (and wakes us).
    fn serve_rx(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        if !self.shared.tx_seen.load(Ordering::SeqCst) {
            return Drained::default();
        }
        let shared = self.shared.clone();
        let mut input = lock(&shared.input);
        let mut out = Drained::default();
        while !input.is_empty() {
            if out.completed >= BUDGET {
                out.more = true;
                return out;
            }
            let d = drain(mem, queue, 1, |chain| self.receive(mem, &mut input, chain));
            out.completed += d.completed;
            out.notify |= d.notify;
            out.broken = d.broken;
            // Not `more`: the ring is empty and notifications are back on.
            if !d.more || d.broken {
                return out;
            }
        }
        // Input ran out with notifications off: turn them back on for the next kick.
        out.broken = queue.enable_notification(mem).is_err();
        out
    }
}

impl QueueService for Service {
    fn serve(&mut self, index: usize, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        if index == RX_QUEUE {
            self.serve_rx(mem, queue)
        } else {
            self.serve_tx(mem, queue)
        }
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn name(&self) -> &'static str {
        "virtio-console"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
    }

    /// cols, rows, max_nr_ports and emerg_wr: all zero (none of their features is offered).
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let event_idx = a.acked_features & self.features() != 0;
        let mut queues = Vec::with_capacity(2);
        for (i, q) in a.queues.into_iter().enumerate().take(2) {
            let Some(mut q) = q else {
                return Err(ActivateError::BadSetup(format!(
                    "virtio-console: queue {i} is not enabled"
                )));
            };
            q.queue.set_event_idx(event_idx);
            queues.push(q);
        }
        if queues.len() != 2 {
            return Err(ActivateError::BadSetup(
                "virtio-console: needs 2 queues".into(),
            ));
        }
        let service = Service::new(self.shared.clone(), self.output.clone());
        self.worker = Some(
            WorkerBuilder::new(
                "virtio-console",
                service,
                a.mem,
                queues,
                a.config_interrupt,
                a.needs_reset,
            )
            .wake_on(self.shared.wake.try_clone()?, RX_QUEUE)
            .spawn()?,
        );
        Ok(())
    }

    /// Stops the thread; buffered input is kept for the next activation.
    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        self.shared.tx_seen.store(false, Ordering::SeqCst);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.shared.c;
        vec![
            ("tx_bytes", g(&s.tx_bytes)),
            ("rx_bytes", g(&s.rx_bytes)),
            ("input_dropped", g(&s.input_dropped)),
            ("errors", g(&s.errors)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{ActiveQueue, NeedsReset};
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const N: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    type Mock<'a> = MockSplitQueue<'a, GuestMemory>;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn new_mem() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }
    /// Post chains of (addr, len, flags, next) descriptors at table index `at`.
    fn post(mock: &Mock, at: u16, descs: &[(u64, u32, u16, u16)]) {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f, n)| SplitDescriptor::new(a, l, f, n).into())
            .collect();
        mock.add_desc_chains(&raw, at).unwrap();
    }
    /// The queue of a 16-entry mock at `base`, its used ring moved to `base + 0x8000` (the
    /// mock's own overlaps its available ring).
    fn queue(mock: &Mock, base: u64) -> Queue {
        let mut q: Queue = mock.create_queue().unwrap();
        q.set_used_ring_address(Some((base + 0x8000) as u32), Some(0));
        q
    }
    /// (used idx, used length of element `i`) of the queue at `base`.
    fn used(mem: &GuestMemory, base: u64, i: u64) -> (u16, u32) {
        let idx = mem.read_obj(GuestAddress(base + 0x8002)).unwrap();
        (
            idx,
            mem.read_obj(GuestAddress(base + 0x8008 + 8 * i)).unwrap(),
        )
    }
    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
    fn setup() -> (VirtioConsole, ConsoleInput, Sink, Service) {
        let sink = Sink::default();
        let (dev, input) = VirtioConsole::new(Box::new(sink.clone())).unwrap();
        let svc = Service::new(dev.shared.clone(), dev.output.clone());
        (dev, input, sink, svc)
    }
    fn counters(dev: &VirtioConsole) -> Vec<u64> {
        dev.counters().iter().map(|c| c.1).collect()
    }

    #[test]
    fn transmit_in_order_and_driver_errors() {
        let mem = new_mem();
        let (dev, _input, sink, mut svc) = setup();
        mem.write_slice(b"hello world!\n", GuestAddress(0x1_0000))
            .unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        #[rustfmt::skip]
        post(&mock, 0, &[
            (0x1_0000, 6, N, 1), (0x1_0006, 5, 0, 0), // "hello " "world"
            (0x1_000b, 1, N, 3), (0x1_4000, 8, W | N, 4), (0x1_000c, 1, 0, 0), // writable
            (0xffff_ffff_f000, 0x2000, 0, 0), // outside guest memory
            (0, 0x10_0000, 0, 0), // huge: MAX_TX_PER_CHAIN taken
        ]);
        let out = svc.serve(TX_QUEUE, &mem, &mut queue(&mock, 0));
        assert_eq!((out.completed, out.notify, out.broken), (4, true, false));
        let got = std::mem::take(&mut *lock(&sink.0));
        assert_eq!(
            (&got[..13], got.len()),
            (&b"hello world!\n"[..], 13 + MAX_TX_PER_CHAIN)
        );
        assert_eq!(used(&mem, 0, 1), (4, 0));
        assert_eq!(counters(&dev), [13 + MAX_TX_PER_CHAIN as u64, 0, 0, 3]);
        // A corrupt ring (avail index far ahead) breaks the queue: no panic, no loop.
        mem.write_obj(1000u16, mock.avail_addr().unchecked_add(2))
            .unwrap();
        assert!(svc.serve(TX_QUEUE, &mem, &mut queue(&mock, 0)).broken);
    }

    #[test]
    fn input_waits_for_buffers_and_fills_them_in_order() {
        let mem = new_mem();
        let (dev, input, _sink, mut svc) = setup();
        input.send(b"abcdefghij");
        let mock = MockSplitQueue::new(&mem, 16);
        let mut q = queue(&mock, 0);
        // No buffers yet: nothing happens, the input is kept.
        assert_eq!(svc.serve(RX_QUEUE, &mem, &mut q).completed, 0);
        // Chain 0: 4-byte buffers, a readable one among them; chain 1: an 8-byte buffer.
        #[rustfmt::skip]
        post(&mock, 0, &[
            (0x1_0000, 4, W | N, 1), (0x1_1000, 4, W | N, 2), (0x1_5000, 4, N, 3),
            (0x1_2000, 4, W, 0), (0x1_3000, 8, W, 0),
        ]);
        // Buffers, but the driver has not transmitted yet (its port may not be up).
        assert_eq!(svc.serve(RX_QUEUE, &mem, &mut q).completed, 0);
        assert_eq!(q.next_avail(), 0, "no chain taken");
        dev.shared.tx_seen.store(true, Ordering::SeqCst);
        let out = svc.serve(RX_QUEUE, &mem, &mut q);
        assert_eq!((out.completed, out.notify, out.more), (1, true, false));
        assert_eq!(used(&mem, 0, 0), (1, 10));
        assert_eq!(read(&mem, 0x1_0000, 4), b"abcd");
        assert_eq!(read(&mem, 0x1_1000, 4), b"efgh");
        assert_eq!(read(&mem, 0x1_2000, 2), b"ij");
        // Chain 1 stays on the ring until there is input for it.
        assert_eq!(q.next_avail(), 1);
        assert_eq!(svc.serve(RX_QUEUE, &mem, &mut q).completed, 0);
        input.send(b"XY");
        assert_eq!(svc.serve(RX_QUEUE, &mem, &mut q).completed, 1);
        assert_eq!(
            (used(&mem, 0, 1), read(&mem, 0x1_3000, 2)),
            ((2, 2), b"XY".to_vec())
        );
        assert_eq!(counters(&dev), [0, 12, 0, 1]);
        // A corrupt ring breaks the queue.
        mem.write_obj(1000u16, mock.avail_addr().unchecked_add(2))
            .unwrap();
        input.send(b"z");
        assert!(svc.serve(RX_QUEUE, &mem, &mut q).broken);
    }

    #[test]
    fn input_beyond_the_bound_drops_the_newest_bytes() {
        let (dev, input, _sink, _svc) = setup();
        input.send(&vec![b'a'; INPUT_CAPACITY - 10]);
        input.send(&[b'b'; 30]);
        input.send(b"c");
        assert_eq!(counters(&dev)[2], 21);
        let buf = lock(&dev.shared.input);
        assert_eq!(buf.len(), INPUT_CAPACITY);
        assert_eq!(
            (buf[INPUT_CAPACITY - 11], buf[INPUT_CAPACITY - 1]),
            (b'a', b'b')
        );
    }

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    /// An activation (event-idx on) of rx at 0 and tx at 0x2_0000, and per queue the kick
    /// to write and the interrupt to watch.
    fn activation(mem: &GuestMemory, rx: &Mock, tx: &Mock) -> (Activation, Vec<[EventFd; 2]>) {
        let mut fds = Vec::new();
        let mut queues = Vec::new();
        for q in [queue(rx, 0), queue(tx, 0x2_0000)] {
            let (kick, irq) = (eventfd(), eventfd());
            queues.push(Some(ActiveQueue {
                queue: q,
                kick: kick.try_clone().unwrap(),
                interrupt: Arc::new(irq.try_clone().unwrap()),
            }));
            fds.push([kick, irq]);
        }
        let a = Activation {
            mem: mem.clone(),
            acked_features: 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX,
            queues,
            config_interrupt: Arc::new(eventfd()),
            needs_reset: NeedsReset::new(),
        };
        (a, fds)
    }

    #[test]
    fn runs_on_the_worker_thread_and_survives_reset() {
        let mem = new_mem();
        let (mut dev, input, sink, _svc) = setup();
        input.send(b"boot");
        let rx = MockSplitQueue::new(&mem, 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        mem.write_slice(b"out!", GuestAddress(0x1_0000)).unwrap();
        post(&tx, 0, &[(0x1_0000, 4, 0, 0)]);
        let (a, fds) = activation(&mem, &rx, &tx);
        let ([rx_kick, rx_irq], [_, tx_irq]) = (&fds[0], &fds[1]);
        dev.activate(a).unwrap();
        // Chains posted before activation are served without a kick.
        wait_for("tx", || used(&mem, 0x2_0000, 0) == (1, 0));
        assert_eq!(*lock(&sink.0), b"out!");
        wait_for("tx irq", || tx_irq.read().is_ok());
        // A receive buffer and a kick deliver the input typed before activation.
        post(&rx, 0, &[(0x1_1000, 16, W, 0)]);
        rx_kick.write(1).unwrap();
        wait_for("rx", || used(&mem, 0, 0) == (1, 4));
        assert_eq!(read(&mem, 0x1_1000, 4), b"boot");
        wait_for("rx irq", || rx_irq.read().is_ok());
        // A buffer with nothing to give waits; input alone then wakes the device.
        post(&rx, 1, &[(0x1_2000, 16, W, 0)]);
        rx_kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(used(&mem, 0, 1).0, 1);
        input.send(b"more");
        wait_for("rx 2", || used(&mem, 0, 1) == (2, 4));
        assert_eq!(read(&mem, 0x1_2000, 4), b"more");

        // Input sent while reset is kept for the next activation.
        dev.reset();
        input.send(b"after");
        let mem = new_mem();
        let rx = MockSplitQueue::new(&mem, 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        post(&rx, 0, &[(0x1_1000, 16, W, 0)]);
        let (a, fds) = activation(&mem, &rx, &tx);
        dev.activate(a).unwrap();
        // Held until the driver's first output after activation.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(used(&mem, 0, 0).0, 0);
        mem.write_slice(b"up", GuestAddress(0x1_0000)).unwrap();
        post(&tx, 0, &[(0x1_0000, 2, 0, 0)]);
        fds[1][0].write(1).unwrap();
        wait_for("rx after reset", || used(&mem, 0, 0) == (1, 5));
        assert_eq!(read(&mem, 0x1_1000, 5), b"after");
        dev.reset();
        assert_eq!(counters(&dev), [6, 13, 0, 0]);

        // Both queues are required.
        let mut a = activation(&mem, &rx, &tx).0;
        a.queues[1] = None;
        assert!(matches!(dev.activate(a), Err(ActivateError::BadSetup(_))));
    }
}
