//! The worker's watched descriptor ([`crate::worker::WorkerBuilder::watch_fd`]), which virtio-net
//! uses for its TAP, tested with an eventfd standing in for the TAP.

use crate::device::{ActiveQueue, NeedsReset};
use crate::worker::{Drained, QueueService, WorkerBuilder};
use crate::GuestMemory;
use std::io;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Counts `fd_ready` and `serve` calls per queue.
#[derive(Default)]
struct Counting(Arc<std::sync::Mutex<(usize, [usize; 2])>>);
impl QueueService for Counting {
    fn serve(&mut self, index: usize, _: &GuestMemory, _: &mut Queue) -> Drained {
        self.0.lock().unwrap().1[index] += 1;
        Drained::default()
    }
    fn fd_ready(&mut self) {
        self.0.lock().unwrap().0 += 1;
    }
}

fn active_queue() -> ActiveQueue {
    ActiveQueue {
        queue: Queue::new(16).unwrap(),
        kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        interrupt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
    }
}

/// The watched descriptor is edge-triggered: one that stays readable (an eventfd
/// nobody reads) wakes the worker once per change, not in a loop.
#[test]
fn watched_fd_wakes_its_queue_once_per_edge() {
    use std::time::{Duration, Instant};
    let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let seen = Counting::default();
    let state = seen.0.clone();
    let cfg = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let queues = vec![active_queue(), active_queue()];
    let err = WorkerBuilder::new(
        "t",
        Counting::default(),
        mem.clone(),
        vec![active_queue()],
        cfg.clone(),
        NeedsReset::new(),
    )
    .watch_fd(fd.clone(), 1)
    .spawn();
    assert_eq!(
        err.err().map(|e| e.kind()),
        Some(io::ErrorKind::InvalidInput)
    );
    let w = WorkerBuilder::new("t", seen, mem, queues, cfg, NeedsReset::new())
        .watch_fd(fd.clone(), 1)
        .spawn()
        .unwrap();
    let wait = |want: (usize, [usize; 2])| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while *state.lock().unwrap() != want {
            assert!(Instant::now() < deadline, "{:?}", *state.lock().unwrap());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // Both queues once at start.
    wait((0, [1, 1]));
    fd.write(1).unwrap();
    wait((1, [1, 2]));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        *state.lock().unwrap(),
        (1, [1, 2]),
        "no spin while readable"
    );
    fd.write(1).unwrap();
    wait((2, [1, 3]));
    w.stop();
}
