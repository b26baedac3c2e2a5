//! The thread every simple virtio device runs its queues on, and the ring-draining loop
//! they share.
//!
//! [`spawn`] starts a thread that waits (epoll) for kicks on the device's queues or for its
//! private stop eventfd, and calls the device's [`QueueService`] for the kicked queue. A
//! corrupt ring sets DEVICE_NEEDS_RESET and raises the configuration interrupt once; later
//! kicks are drained and ignored until the device is reset. [`WorkerBuilder::wake_on`]
//! adds one host-side wake-up eventfd that counts as a kick of a chosen queue
//! (virtio-console's "input arrived" for its receive queue); [`WorkerBuilder::watch_fd`]
//! adds a host file descriptor watched edge-triggered (virtio-net's TAP): its readiness calls
//! [`QueueService::fd_ready`] and counts as a kick of a chosen queue;
//! [`QueueService::take_wakeups`] lets a service have another of its queues served
//! (virtio-vsock's replies to transmitted packets). [`drain`] is the
//! event-idx-safe loop that pops chains, lets the device serve each and returns them on
//! the used ring.

use crate::device::{ActiveQueue, NeedsReset};
use crate::{GuestMemory, Interrupt};
use std::io;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// What one pass over a queue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Chains returned to the driver.
    pub completed: usize,
    /// The driver wants an interrupt.
    pub notify: bool,
    /// The budget ran out with chains left: come back without waiting for a kick.
    pub more: bool,
    /// The ring is corrupt: stop using the queue.
    pub broken: bool,
}

/// Pop up to `budget` chains from `queue`, give each to `serve` (which returns the bytes it
/// wrote into the chain's buffers) and put it on the used ring. With event-idx, the
/// notification re-enable loop makes sure no chain published meanwhile is missed.
pub fn drain(
    mem: &GuestMemory,
    queue: &mut Queue,
    budget: usize,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> u32,
) -> Drained {
    let mut out = Drained::default();
    // Set when enable_notification found the available index ahead: the next pass must
    // then find a chain. Finding none means the index moved back (or the device's own
    // flags write lands on it, the rings overlapping): a corrupt ring, not a reason to
    // spin forever.
    let mut recheck = false;
    'drain: loop {
        if queue.disable_notification(mem).is_err() {
            out.broken = true;
            break;
        }
        loop {
            if out.completed >= budget {
                out.more = true;
                break 'drain;
            }
            let chain = match next_chain(mem, queue) {
                Ok(c) => c,
                Err(Corrupt) => {
                    out.broken = true;
                    break 'drain;
                }
            };
            let Some(chain) = chain else {
                if recheck {
                    out.broken = true;
                    break 'drain;
                }
                break;
            };
            recheck = false;
            let head = chain.head_index();
            let len = serve(chain);
            if queue.add_used(mem, head, len).is_err() {
                out.broken = true;
                break 'drain;
            }
            out.completed += 1;
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
        out.notify = queue.needs_notification(mem).unwrap_or(true);
    }
    out
}

/// The driver corrupted a ring.
pub(crate) struct Corrupt;

/// The next available chain, or `None` when the driver has published nothing new. A ring
/// the driver corrupted is an error: an available index more than a queue ahead of the
/// device, an entry that cannot be read, or a head index beyond the queue.
pub(crate) fn next_chain<'m>(
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

/// A device's queue handling, run on the worker thread.
pub trait QueueService: Send + 'static {
    /// Serve queue `index` (an index into the queues given to [`spawn`]).
    fn serve(&mut self, index: usize, mem: &GuestMemory, queue: &mut Queue) -> Drained;

    /// The file descriptor given to [`WorkerBuilder::watch_fd`] became ready (readable, or an error
    /// or hang-up). It is watched edge-triggered: this is called once per change, so the
    /// service must remember it until it has read the descriptor dry. `serve` for the
    /// descriptor's queue follows. The default does nothing.
    fn fd_ready(&mut self) {}

    /// Queues (a bit per index) the service wants served again without a kick, e.g. its
    /// receive queue after its transmit queue produced replies. Asked after every round
    /// of serving; the service must report each reason once, or the thread spins. The
    /// default asks for nothing.
    fn take_wakeups(&mut self) -> u64 {
        0
    }
}

/// A host file descriptor for [`WorkerBuilder::watch_fd`]; the worker keeps it open while
/// it runs.
pub type WatchedFd = Arc<dyn AsRawFd + Send + Sync>;

/// A running worker: how to stop it and the thread to join.
pub struct WorkerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Stop the thread and wait for it (a request in progress finishes first).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(t) = self.thread.take() {
            // A failed write means the counter is full, which already says "stop".
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Worker<S> {
    service: S,
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    broken: bool,
    config_interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
    stop: EventFd,
    extra: Option<(EventFd, usize)>,
    /// Kept so the descriptor stays open (and registered) while the thread runs.
    fd: Option<(WatchedFd, usize)>,
    epoll: Epoll,
}

const STOP: u64 = u64::MAX;

const EXTRA: u64 = u64::MAX - 1;

const FD: u64 = u64::MAX - 2;

/// Start a thread called `name` serving `queues` with `service` (no other wake-ups; see
/// [`WorkerBuilder`] for those). Host resources are set up here, so failures reach the
/// caller rather than dying in the thread.
pub fn spawn<S: QueueService>(
    name: &str,
    service: S,
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    config_interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
) -> io::Result<WorkerHandle> {
    WorkerBuilder::new(name, service, mem, queues, config_interrupt, needs_reset).spawn()
}

/// A worker thread to start, with optional wake-up sources beyond its queues' kicks.
pub struct WorkerBuilder<S> {
    name: String,
    service: S,
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    config_interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
    sources: Sources,
}

impl<S: QueueService> WorkerBuilder<S> {
    /// A thread called `name` serving `queues` with `service`.
    pub fn new(
        name: &str,
        service: S,
        mem: GuestMemory,
        queues: Vec<ActiveQueue>,
        config_interrupt: Arc<dyn Interrupt>,
        needs_reset: NeedsReset,
    ) -> Self {
        WorkerBuilder {
            name: name.into(),
            service,
            mem,
            queues,
            config_interrupt,
            needs_reset,
            sources: Sources {
                extra: None,
                fd: None,
            },
        }
    }

    /// Also wake on `event`, a host-side eventfd: when written, the thread reads it (to
    /// clear it) and treats it like a kick of queue `index`.
    pub fn wake_on(mut self, event: EventFd, index: usize) -> Self {
        self.sources.extra = Some((event, index));
        self
    }

    /// Also watch `fd` (a TAP) for readability, edge-triggered: each readiness change calls
    /// [`QueueService::fd_ready`] and then serves queue `index` as if it had been kicked;
    /// nothing is read from the descriptor by the worker.
    pub fn watch_fd(mut self, fd: WatchedFd, index: usize) -> Self {
        self.sources.fd = Some((fd, index));
        self
    }

    /// Start the thread. A wake-up source naming a queue that does not exist is refused
    /// (`InvalidInput`).
    pub fn spawn(self) -> io::Result<WorkerHandle> {
        start(
            &self.name,
            self.service,
            self.mem,
            self.queues,
            self.config_interrupt,
            self.needs_reset,
            self.sources,
        )
    }
}

/// Wake-up sources beyond the queue kicks and the stop event.
struct Sources {
    extra: Option<(EventFd, usize)>,
    fd: Option<(WatchedFd, usize)>,
}

fn start<S: QueueService>(
    name: &str,
    service: S,
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    config_interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
    Sources { extra, fd }: Sources,
) -> io::Result<WorkerHandle> {
    let wanted = [
        ("extra event", extra.as_ref().map(|e| e.1)),
        ("watched fd", fd.as_ref().map(|f| f.1)),
    ];
    for (what, index) in wanted {
        if let Some(index) = index.filter(|i| *i >= queues.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} for queue {index} of {}", queues.len()),
            ));
        }
    }
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let epoll = Epoll::new()?;
    for (i, q) in queues.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            q.kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, STOP),
    )?;
    if let Some((event, _)) = &extra {
        epoll.ctl(
            ControlOperation::Add,
            event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EXTRA),
        )?;
    }
    if let Some((f, _)) = &fd {
        let raw: RawFd = f.as_raw_fd();
        epoll.ctl(
            ControlOperation::Add,
            raw,
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, FD),
        )?;
    }
    let worker = Worker {
        service,
        mem,
        queues,
        broken: false,
        config_interrupt,
        needs_reset,
        stop: stop.try_clone()?,
        extra,
        fd,
        epoll,
    };
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || worker.run())?;
    Ok(WorkerHandle {
        stop,
        thread: Some(thread),
    })
}

impl<S: QueueService> Worker<S> {
    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); self.queues.len() + 3];
        // Serve anything made available before activation.
        let mut pending: Vec<bool> = vec![true; self.queues.len()];
        loop {
            let timeout = if pending.iter().any(|p| *p) { 0 } else { -1 };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.fail();
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == STOP {
                    let _ = self.stop.read();
                    return;
                }
                if ev.data() == EXTRA {
                    if let Some((event, index)) = &self.extra {
                        let _ = event.read();
                        if let Some(p) = pending.get_mut(*index) {
                            *p = true;
                        }
                    }
                    continue;
                }
                if ev.data() == FD {
                    if let Some((_, index)) = &self.fd {
                        if let Some(p) = pending.get_mut(*index) {
                            *p = true;
                        }
                        self.service.fd_ready();
                    }
                    continue;
                }
                let i = ev.data() as usize;
                if let Some(q) = self.queues.get(i) {
                    let _ = q.kick.read();
                    pending[i] = true;
                }
            }
            for (i, p) in pending.iter_mut().enumerate() {
                if !*p {
                    continue;
                }
                *p = false;
                if self.broken {
                    continue;
                }
                let q = &mut self.queues[i];
                let out = self.service.serve(i, &self.mem, &mut q.queue);
                if out.notify {
                    q.interrupt.trigger();
                }
                if out.broken {
                    self.broken = true;
                    self.needs_reset.set();
                    self.config_interrupt.trigger();
                }
                *p = out.more;
            }
            if !self.broken {
                let wake = self.service.take_wakeups();
                for (i, p) in pending.iter_mut().enumerate().take(64) {
                    *p |= wake & (1 << i) != 0;
                }
            }
        }
    }

    fn fail(&self) {
        self.needs_reset.set();
        self.config_interrupt.trigger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    struct Nop;
    impl QueueService for Nop {
        fn serve(&mut self, _: usize, _: &GuestMemory, _: &mut Queue) -> Drained {
            Drained::default()
        }
    }

    /// The fuzzer's find for blk, here for every device: a used ring whose flags field
    /// lies on the available index makes each notification toggle look like new work.
    #[test]
    fn overlapping_rings_end_as_broken_not_as_a_spin() {
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let w = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        mock.build_multiple_desc_chains(&[RawDescriptor::from(Descriptor::new(
            0x8_0000, 16, w, 0,
        ))])
        .unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        // avail at 0x3002 (flags, idx at 0x3004, ring[0] at 0x3006), used at 0x3004.
        queue.set_ready(false);
        queue.set_avail_ring_address(Some(0x3002), Some(0));
        queue.set_used_ring_address(Some(0x3004), Some(0));
        queue.set_ready(true);
        assert_eq!(queue.used_ring(), 0x3004);
        use vm_memory::Bytes;
        for (at, v) in [(0x3002u64, 0u16), (0x3004, 1), (0x3006, 0)] {
            mem.write_obj(v, GuestAddress(at)).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let out = drain(&mem, &mut queue, 64, |_| 0);
            let _ = tx.send(out);
        });
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("drain returned");
        assert!(out.broken, "{out:?}");
    }

    #[test]
    fn extra_event_must_name_a_queue() {
        let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let q = ActiveQueue {
            queue: Queue::new(16).unwrap(),
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            interrupt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        };
        let extra = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let err = WorkerBuilder::new(
            "t",
            Nop,
            mem,
            vec![q],
            Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            NeedsReset::new(),
        )
        .wake_on(extra, 1)
        .spawn();
        assert_eq!(
            err.err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
    }
}
