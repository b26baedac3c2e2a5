//! The "virtio-blk" worker thread: waits (epoll) for a kick on the queue's eventfd or for
//! the device's private stop eventfd, runs the [`QueueProcessor`] and raises the queue
//! interrupt when the driver wants one. A corrupt ring sets DEVICE_NEEDS_RESET and raises
//! the configuration interrupt once; later kicks are drained and ignored until reset.

use super::queue::QueueProcessor;
use crate::device::{ActiveQueue, NeedsReset};
use crate::{GuestMemory, Interrupt};
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const KICK: u64 = 0;
const STOP: u64 = 1;

/// A running worker: how to stop it and the thread to join.
pub(crate) struct WorkerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Stop the thread and wait for it (a request in progress finishes first).
    pub(crate) fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(t) = self.thread.take() {
            // The worker also wakes on an error; if the write fails, the counter is full,
            // which already means "stop".
            let _ = self.stop.write(1);
            // A worker that panicked has nothing left to clean up; the disk lives on in its
            // (poisoned, still usable) mutex.
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Everything the thread owns.
struct Worker {
    processor: QueueProcessor,
    mem: GuestMemory,
    queue: ActiveQueue,
    config_interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
    stop: EventFd,
    epoll: Epoll,
}

/// Start the worker for `queue`. Host resources (eventfd, epoll, thread) are set up here,
/// so failures reach the caller rather than dying in the thread.
pub(crate) fn spawn(
    processor: QueueProcessor,
    mem: GuestMemory,
    queue: ActiveQueue,
    config_interrupt: Arc<dyn Interrupt>,
    needs_reset: NeedsReset,
) -> io::Result<WorkerHandle> {
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        queue.kick.as_raw_fd(),
        EpollEvent::new(EventSet::IN, KICK),
    )?;
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, STOP),
    )?;
    let worker = Worker {
        processor,
        mem,
        queue,
        config_interrupt,
        needs_reset,
        stop: stop.try_clone()?,
        epoll,
    };
    let thread = std::thread::Builder::new()
        .name("virtio-blk".into())
        .spawn(move || worker.run())?;
    Ok(WorkerHandle {
        stop,
        thread: Some(thread),
    })
}

impl Worker {
    fn run(mut self) {
        let mut events = [EpollEvent::default(); 2];
        // Serve anything made available before activation.
        let mut more = true;
        loop {
            let timeout = if more { 0 } else { -1 };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Cannot wait any more: the queue is dead, say so.
                    self.fail();
                    return;
                }
            };
            let mut kicked = false;
            for ev in &events[..n] {
                match ev.data() {
                    STOP => {
                        let _ = self.stop.read();
                        return;
                    }
                    _ => {
                        // Only we read this eventfd and epoll says it is readable.
                        let _ = self.queue.kick.read();
                        kicked = true;
                    }
                }
            }
            if kicked || more {
                more = self.service();
            }
        }
    }

    /// Process the queue and signal the driver; whether to come back without a kick.
    fn service(&mut self) -> bool {
        if self.processor.is_broken() {
            return false;
        }
        let out = self
            .processor
            .process_queue(&self.mem, &mut self.queue.queue);
        if out.notify {
            self.queue.interrupt.trigger();
        }
        if out.broken {
            self.fail();
        }
        out.more
    }

    fn fail(&self) {
        self.needs_reset.set();
        self.config_interrupt.trigger();
    }
}
