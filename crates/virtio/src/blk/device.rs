//! [`VirtioBlk`]: the virtio-blk [`VirtioDevice`] — identity, features, configuration
//! space, and the lifecycle of its worker thread (activate, reset, drop). The disk lives in
//! an `Arc<Mutex>` shared with the worker, so it survives any number of resets.

use super::config::{self, bit, CONFIG_SIZE};
use super::queue::{BlkCounters, QueueProcessor};
use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use crate::device::{ActivateError, Activation};
use crate::worker::{self, WorkerHandle};
use crate::VirtioDevice;
use kiln_block::BlockDevice;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

/// The virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// A virtio-blk device backed by a Kiln block device (raw, qcow2, backing chains).
pub struct VirtioBlk {
    disk: Arc<Mutex<Box<dyn BlockDevice>>>,
    capacity: u64,
    read_only: bool,
    serial: [u8; ID_BYTES],
    config: [u8; CONFIG_SIZE],
    counters: Arc<BlkCounters>,
    worker: Option<WorkerHandle>,
}

impl std::fmt::Debug for VirtioBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlk")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("active", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

impl VirtioBlk {
    /// A device for `disk`; read-only if the disk is. `serial` is what GET_ID returns
    /// (truncated to 20 bytes, zero padded; empty if None). The capacity is the disk size
    /// in whole 512-byte sectors.
    pub fn new(disk: Box<dyn BlockDevice>, serial: Option<String>) -> VirtioBlk {
        let capacity = disk.size() / SECTOR_SIZE;
        let read_only = disk.read_only();
        let mut id = [0u8; ID_BYTES];
        if let Some(s) = serial {
            let n = s.len().min(ID_BYTES);
            id[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        VirtioBlk {
            disk: Arc::new(Mutex::new(disk)),
            capacity,
            read_only,
            serial: id,
            config: config::config_space(capacity),
            counters: Arc::new(BlkCounters::default()),
            worker: None,
        }
    }

    /// The capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the disk refuses writes (VIRTIO_BLK_F_RO is offered).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The counters the worker updates.
    pub fn counters_handle(&self) -> Arc<BlkCounters> {
        self.counters.clone()
    }

    /// A synchronous processor for this device's disk and counters, as the worker thread
    /// uses it after the driver accepted `acked_features` (for tests and fuzzing; do not
    /// run one while the device is active).
    pub fn queue_processor(&self, acked_features: u64) -> QueueProcessor {
        QueueProcessor::new(
            self.disk.clone(),
            self.capacity,
            self.read_only,
            self.serial,
            acked_features,
            self.counters.clone(),
        )
    }
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        config::features(self.read_only)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config::read_space(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing is writable: the writeback toggle (VIRTIO_BLK_F_CONFIG_WCE) is not offered.
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let Activation {
            mem,
            acked_features,
            queues,
            config_interrupt,
            needs_reset,
        } = activation;
        let mut queue =
            queues.into_iter().next().flatten().ok_or_else(|| {
                ActivateError::BadSetup("virtio-blk: queue 0 is not enabled".into())
            })?;
        queue
            .queue
            .set_event_idx(acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0);
        if !queue.queue.is_valid(&mem) {
            return Err(ActivateError::BadSetup(
                "virtio-blk: queue 0 is not ready or its rings are outside guest memory".into(),
            ));
        }
        let processor = self.queue_processor(acked_features);
        self.worker = Some(worker::spawn(
            "virtio-blk",
            processor,
            mem,
            vec![queue],
            config_interrupt,
            needs_reset,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot()
    }
}

impl Drop for VirtioBlk {
    fn drop(&mut self) {
        self.reset();
    }
}
