//! The thread every simple virtio device runs its queues on, and the ring-draining loop
//! they share.
//!
//! [`spawn`] starts a thread that waits (epoll) for kicks on the device's queues or for its
//! private stop eventfd, and calls the device's [`QueueService`] for the kicked queue. A
//! corrupt ring sets DEVICE_NEEDS_RESET and raises the configuration interrupt once; later
//! kicks are drained and ignored until the device is reset. [`drain`] is the event-idx-safe
//! loop that pops chains, lets the device serve each and returns them on the used ring.

use crate::device::{ActiveQueue, NeedsReset};
use crate::{GuestMemory, Interrupt};
use std::io;
use std::os::unix::io::AsRawFd;
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
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    out.broken = true;
                    break 'drain;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = serve(chain);
            if queue.add_used(mem, head, len).is_err() {
                out.broken = true;
                break 'drain;
            }
            out.completed += 1;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
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

/// A device's queue handling, run on the worker thread.
pub trait QueueService: Send + 'static {
    /// Serve queue `index` (an index into the queues given to [`spawn`]).
    fn serve(&mut self, index: usize, mem: &GuestMemory, queue: &mut Queue) -> Drained;
}

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
    epoll: Epoll,
}

const STOP: u64 = u64::MAX;

/// Start a thread called `name` serving `queues` with `service`. Host resources are set
/// up here, so failures reach the caller rather than dying in the thread.
pub fn spawn<S: QueueService>(
    name: &str,
    service: S,
    mem: GuestMemory,
    queues: Vec<ActiveQueue>,
    config_interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
) -> io::Result<WorkerHandle> {
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
    let worker = Worker {
        service,
        mem,
        queues,
        broken: false,
        config_interrupt,
        needs_reset,
        stop: stop.try_clone()?,
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
        let mut events = vec![EpollEvent::default(); self.queues.len() + 1];
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
        }
    }

    fn fail(&self) {
        self.needs_reset.set();
        self.config_interrupt.trigger();
    }
}
