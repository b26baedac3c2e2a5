//! The contract between a virtio device model and its transport.
//!
//! The transport owns feature negotiation, device status, queue configuration and
//! interrupts; the device owns its configuration space and, once the driver sets
//! DRIVER_OK, processes its queues (on its own thread, so the vCPU that kicked a queue
//! returns to the guest at once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// A way to interrupt the driver: a queue's or the configuration-change MSI-X vector (or
/// the INTx line). Cheap to call from a device thread.
pub trait Interrupt: Send + Sync {
    /// Raise the interrupt.
    fn trigger(&self);
}

/// An [`Interrupt`] that writes an eventfd (an irqfd KVM turns into the interrupt).
impl Interrupt for EventFd {
    fn trigger(&self) {
        // A full counter already means an interrupt is pending; nothing is lost.
        let _ = self.write(1);
    }
}

/// One queue the driver enabled.
pub struct ActiveQueue {
    /// The queue, configured by the driver (size, ring addresses, ready; event-idx set when
    /// VIRTIO_F_EVENT_IDX was negotiated).
    pub queue: Queue,
    /// Readable when the driver notified ("kicked") the queue (an ioeventfd on the notify
    /// register). The device reads it to clear it.
    pub kick: EventFd,
    /// Signals the driver that the queue has new used buffers.
    pub interrupt: Arc<dyn Interrupt>,
}

/// Everything a device gets at DRIVER_OK.
pub struct Activation {
    /// Guest memory (the device may clone it into its thread; the VMM joins device
    /// threads before guest memory goes away).
    pub mem: GuestMemory,
    /// The features the driver accepted (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
    /// The enabled queues, by queue index (a queue the driver left disabled is `None`).
    pub queues: Vec<Option<ActiveQueue>>,
    /// Signals a configuration change.
    pub config_interrupt: Arc<dyn Interrupt>,
    /// Set by the device when the driver broke the device (a corrupt ring); the transport
    /// then reports DEVICE_NEEDS_RESET. The device stops using its queues after setting it.
    pub needs_reset: NeedsReset,
}

/// The DEVICE_NEEDS_RESET flag shared between a device and its transport.
#[derive(Clone, Default, Debug)]
pub struct NeedsReset(Arc<AtomicBool>);

impl NeedsReset {
    /// A clear flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the flag.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why a device refused activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not enabled, or the setup is unusable.
    #[error("{0}")]
    BadSetup(String),
    /// The host could not start the device (thread, eventfd, ...).
    #[error("{0}")]
    Host(#[from] std::io::Error),
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block, 1 for net, ...).
    fn device_type(&self) -> u32;
    /// A short name for logs and counters ("virtio-blk").
    fn name(&self) -> &'static str;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits offered (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// A driver read of the device-specific configuration space (`offset` from its start;
    /// bytes beyond it read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write of the device-specific configuration space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stop processing (join any thread) and forget the queues; the device may be
    /// activated again afterwards.
    fn reset(&mut self);
    /// Counters for the metrics dump: (name, value), e.g. ("read_requests", 12).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
