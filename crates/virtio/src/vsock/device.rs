//! [`VirtioVsock`]: the host listener's lifetime, the configuration space (the guest's
//! CID, read-only), features and activation of the worker thread.

use super::muxer::Muxer;
use super::{Counters, QUEUE_SIZE, RX_QUEUE};
use crate::device::{ActivateError, Activation, VirtioDevice};
use crate::worker::{WorkerBuilder, WorkerHandle};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_queue::QueueT;

/// virtio's device ID for a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// The socket device.
pub struct VirtioVsock {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    counters: Arc<Counters>,
    worker: Option<WorkerHandle>,
}

impl VirtioVsock {
    /// A device giving the guest CID `cid` (3 or more, below 2^32 - 1) and listening on
    /// the Unix socket `uds`. A socket already at `uds` (left by an earlier run) is
    /// replaced; anything else there is an error.
    pub fn new(cid: u64, uds: &Path) -> io::Result<VirtioVsock> {
        if !(3..u64::from(u32::MAX)).contains(&cid) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("vsock: CID {cid} is reserved or too large (3..4294967294)"),
            ));
        }
        match std::fs::symlink_metadata(uds) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(uds)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("vsock: {} exists and is not a socket", uds.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(uds)
            .map_err(|e| io::Error::new(e.kind(), format!("vsock: bind {}: {e}", uds.display())))?;
        listener.set_nonblocking(true)?;
        Ok(VirtioVsock {
            cid,
            uds: uds.to_path_buf(),
            listener,
            counters: Arc::default(),
            worker: None,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// A muxer for this device (for the worker, or for tests driving it directly).
    pub(super) fn muxer(&self) -> io::Result<Muxer> {
        Muxer::new(
            self.cid,
            self.uds.clone(),
            self.listener.try_clone()?,
            self.counters.clone(),
        )
    }
}

impl VirtioDevice for VirtioVsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.cid.to_le_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// Needs the receive and transmit queues; the event queue is optional (nothing is
    /// ever sent on it).
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let event_idx = a.acked_features & self.features() != 0;
        let mut queues = Vec::with_capacity(3);
        for (i, q) in a.queues.into_iter().enumerate().take(3) {
            match q {
                Some(mut q) => {
                    q.queue.set_event_idx(event_idx);
                    queues.push(q);
                }
                None if i < 2 => {
                    return Err(ActivateError::BadSetup(format!(
                        "virtio-vsock: queue {i} is not enabled"
                    )))
                }
                None => {}
            }
        }
        if queues.len() < 2 {
            return Err(ActivateError::BadSetup(
                "virtio-vsock: needs its receive and transmit queues".into(),
            ));
        }
        let muxer = self.muxer()?;
        let epoll = muxer.epoll();
        self.worker = Some(
            WorkerBuilder::new(
                "virtio-vsock",
                muxer,
                a.mem,
                queues,
                a.config_interrupt,
                a.needs_reset,
            )
            .watch_fd(epoll, RX_QUEUE)
            .spawn()?,
        );
        Ok(())
    }

    /// Stops the thread; every connection is closed (host sockets see EOF).
    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        vec![
            ("rx_packets", g(&c.rx_packets)),
            ("rx_bytes", g(&c.rx_bytes)),
            ("tx_packets", g(&c.tx_packets)),
            ("tx_bytes", g(&c.tx_bytes)),
            ("connections", g(&c.connections)),
            ("errors", g(&c.errors)),
        ]
    }
}

impl Drop for VirtioVsock {
    fn drop(&mut self) {
        self.reset();
        // Best effort: the socket file is ours; a later run would replace it anyway.
        let _ = std::fs::remove_file(&self.uds);
    }
}
