//! [`VirtioNet`]: features, the configuration space, activation and the worker.
//!
//! The configuration space is `virtio_net_config` up to what the offered features use:
//! `mac` (VIRTIO_NET_F_MAC), `status` (VIRTIO_NET_F_STATUS, always LINK_UP) and
//! `max_virtqueue_pairs` (1; meaningful only with VIRTIO_NET_F_MQ, which is not offered).
//! It is read-only: driver writes are ignored.

use super::rx::Rx;
use super::tx::Tx;
use super::{default_mac, offload_flags, Counters, Tap, FEATURES, QUEUE_SIZE, RX_QUEUE};
use crate::device::{ActivateError, Activation, VirtioDevice};
use crate::worker::{Drained, QueueService, WorkerBuilder, WorkerHandle};
use crate::GuestMemory;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_net as vn;
use virtio_queue::{Queue, QueueT};

/// virtio's device ID for a network card.
pub const VIRTIO_ID_NET: u32 = 1;

/// Bytes of `virtio_net_config` exposed: mac[6], status, max_virtqueue_pairs.
const CONFIG_LEN: usize = 10;

/// The network device.
pub struct VirtioNet {
    tap: Arc<Tap>,
    mac: [u8; 6],
    counters: Arc<Counters>,
    worker: Option<WorkerHandle>,
}

impl VirtioNet {
    /// A network card on `tap` with address `mac`, or, when `None`, a stable address
    /// derived from the TAP's name ([`default_mac`](super::default_mac)).
    ///
    /// Errors: a multicast or all-zero `mac` (`InvalidInput`).
    pub fn new(tap: Tap, mac: Option<[u8; 6]>) -> io::Result<VirtioNet> {
        let mac = mac.unwrap_or_else(|| default_mac(tap.name()));
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "virtio-net: MAC {} is not a unicast address",
                    mac.map(|b| format!("{b:02x}")).join(":")
                ),
            ));
        }
        Ok(VirtioNet {
            tap: Arc::new(tap),
            mac,
            counters: Arc::default(),
            worker: None,
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The TAP interface's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(vn::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

/// Both queues' handling on the worker thread.
pub(super) struct Service {
    pub rx: Rx,
    pub tx: Tx,
}

impl Service {
    pub fn new(tap: &Arc<Tap>, counters: &Arc<Counters>, acked: u64) -> Self {
        let mergeable = acked & (1 << vn::VIRTIO_NET_F_MRG_RXBUF) != 0;
        Service {
            rx: Rx::new(tap.clone(), counters.clone(), mergeable),
            tx: Tx::new(tap.clone(), counters.clone()),
        }
    }
}

impl QueueService for Service {
    fn serve(&mut self, index: usize, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        if index == RX_QUEUE {
            self.rx.serve(mem, queue)
        } else {
            self.tx.serve(mem, queue)
        }
    }

    fn fd_ready(&mut self) {
        self.rx.tap_ready();
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let event_idx =
            a.acked_features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(2);
        for (i, q) in a.queues.into_iter().enumerate().take(2) {
            let Some(mut q) = q else {
                return Err(ActivateError::BadSetup(format!(
                    "virtio-net: queue {i} is not enabled"
                )));
            };
            q.queue.set_event_idx(event_idx);
            queues.push(q);
        }
        if queues.len() != 2 {
            return Err(ActivateError::BadSetup("virtio-net: needs 2 queues".into()));
        }
        self.tap.set_offload(offload_flags(a.acked_features))?;
        let service = Service::new(&self.tap, &self.counters, a.acked_features);
        self.worker = Some(
            WorkerBuilder::new(
                "virtio-net",
                service,
                a.mem,
                queues,
                a.config_interrupt,
                a.needs_reset,
            )
            .watch_fd(self.tap.clone(), RX_QUEUE)
            .spawn()?,
        );
        Ok(())
    }

    /// Stops the thread and turns the TAP's offloads off until the next activation
    /// says what the driver takes. Frames waiting in the TAP stay there; a frame held
    /// for want of receive buffers is dropped (counted in `rx_dropped`).
    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
            // Best effort: activation sets them again, and reports a failure there.
            let _ = self.tap.set_offload(0);
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
            ("rx_dropped", g(&c.rx_dropped)),
            ("tx_dropped", g(&c.tx_dropped)),
            ("errors", g(&c.errors)),
        ]
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.reset();
    }
}
