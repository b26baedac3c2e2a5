//! [`VirtioBlk`] through the [`VirtioDevice`] interface: identity, features, config space,
//! and the worker thread (kicks, interrupts, DEVICE_NEEDS_RESET, reset and re-activation).

use super::*;
use crate::device::{ActivateError, Activation, ActiveQueue, NeedsReset};
use crate::{Interrupt, VirtioDevice};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK: u64 = 4 << 20;

struct Signals {
    kick: EventFd,
    irq: Arc<EventFd>,
    cfg: Arc<EventFd>,
    needs_reset: NeedsReset,
}

impl Signals {
    fn kick(&self) {
        self.kick.write(1).unwrap();
    }
}

/// How often an interrupt eventfd fired since the last call.
fn fired(fd: &EventFd) -> u64 {
    fd.read().unwrap_or(0)
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn activation(mem: &GuestMemory, queue: Queue, features: u64) -> (Activation, Signals) {
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let cfg = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let needs_reset = NeedsReset::new();
    let irq_dyn: Arc<dyn Interrupt> = irq.clone();
    let act = Activation {
        mem: mem.clone(),
        acked_features: features,
        queues: vec![Some(ActiveQueue {
            queue,
            kick: kick.try_clone().unwrap(),
            interrupt: irq_dyn,
        })],
        config_interrupt: cfg.clone(),
        needs_reset: needs_reset.clone(),
    };
    let sig = Signals {
        kick,
        irq,
        cfg,
        needs_reset,
    };
    (act, sig)
}

#[test]
fn identity_features_and_config() {
    let img = raw_image(DISK + 300);
    let mut dev = device(&img);
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.name(), "virtio-blk");
    assert_eq!(dev.queue_max_sizes(), vec![256]);
    let f = dev.features();
    for b in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ] {
        assert_ne!(f & (1 << b), 0, "feature {b}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_CONFIG_WCE), 0);
    // Capacity in whole sectors (the 300-byte tail is not addressable).
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK / 512);
    assert_eq!(dev.capacity(), DISK / 512);
    // Byte-wise and unaligned reads see the same bytes; writes change nothing.
    let mut all = [0u8; 96];
    dev.read_config(0, &mut all);
    dev.write_config(0, &[0xff; 96]);
    dev.write_config(32, &[1]);
    let mut again = [0u8; 96];
    for (i, b) in again.iter_mut().enumerate() {
        dev.read_config(i as u64, std::slice::from_mut(b));
    }
    assert_eq!(all, again);
    let mut blk = [0u8; 4];
    dev.read_config(20, &mut blk);
    assert_eq!(u32::from_le_bytes(blk), 512);

    drop(dev); // a writer has the image to itself
    let ro = VirtioBlk::new(open(&img, true), None);
    let f = ro.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
        0
    );
}

#[test]
fn worker_serves_kicks_and_interrupts() {
    let img = qcow2_image(DISK);
    let mem = memory();
    let mut dev = device(&img);
    let mut drv = Driver::new(&mem, 256);
    let features = dev.features();
    let (act, sig) = activation(&mem, drv.queue(true), features);
    dev.activate(act).unwrap();

    let data = pattern(8192, 3);
    let (_, wst) = drv.write_req(100, &data, &[4096]);
    sig.kick();
    wait_until("write used", || drv.used_idx() == 1);
    wait_until("interrupt", || fired(&sig.irq) > 0);
    assert_eq!(drv.byte(wst.addr), OK);

    // Having seen used entry 0, the driver wants to hear about entry 1.
    drv.set_used_event(1);
    let (_, bufs, rst) = drv.read_req(100, &[8192]);
    sig.kick();
    wait_until("read used", || drv.used_idx() == 2);
    assert_eq!(drv.byte(rst.addr), OK);
    assert_eq!(drv.read(&bufs), data);
    wait_until("interrupt", || fired(&sig.irq) > 0);

    // The driver does not want to hear about the next completion.
    drv.set_used_event(10);
    drv.bare_req(T_FLUSH, 0);
    sig.kick();
    wait_until("flush used", || drv.used_idx() == 3);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fired(&sig.irq), 0, "event-idx must suppress the interrupt");
    assert!(!sig.needs_reset.is_set());

    let c: std::collections::HashMap<_, _> = dev.counters().into_iter().collect();
    assert_eq!((c["read_requests"], c["write_requests"]), (1, 1));
    assert_eq!(c["bytes_written"], 8192);
    dev.reset();
}

#[test]
fn requests_made_before_activation_are_served() {
    let img = raw_image(DISK);
    let mem = memory();
    let mut dev = device(&img);
    let mut drv = Driver::new(&mem, 16);
    drv.bare_req(T_FLUSH, 0);
    let (act, _sig) = activation(&mem, drv.queue(false), dev.features());
    dev.activate(act).unwrap();
    wait_until("served without a kick", || drv.used_idx() == 1);
}

#[test]
fn corrupt_ring_sets_needs_reset_then_reset_and_reactivate() {
    let img = raw_image(DISK);
    let mem = memory();
    let mut dev = device(&img);
    let features = dev.features();
    {
        let mut drv = Driver::new(&mem, 16);
        let (act, sig) = activation(&mem, drv.queue(true), features);
        dev.activate(act).unwrap();
        let (_, st) = drv.write_req(8, &pattern(512, 1), &[]);
        sig.kick();
        wait_until("write", || drv.used_idx() == 1);
        assert_eq!(drv.byte(st.addr), OK);

        drv.set_avail_idx(1 + 100);
        sig.kick();
        wait_until("needs reset", || sig.needs_reset.is_set());
        wait_until("config interrupt", || fired(&sig.cfg) > 0);
        // The worker ignores the queue now, however often it is kicked.
        drv.set_avail_idx(1);
        drv.bare_req(T_FLUSH, 0);
        for _ in 0..1000 {
            sig.kick();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(drv.used_idx(), 1);
        dev.reset();
    }
    // The driver resets the device and sets it up again with a fresh ring.
    let mut drv = Driver::new(&mem, 16);
    let (act, sig) = activation(&mem, drv.queue(false), features);
    dev.activate(act).unwrap();
    let (_, bufs, st) = drv.read_req(8, &[512]);
    sig.kick();
    wait_until("read after re-activation", || drv.used_idx() == 1);
    assert_eq!(drv.byte(st.addr), OK);
    assert_eq!(drv.read(&bufs), pattern(512, 1));
    assert!(!sig.needs_reset.is_set());
    // Activating again without a reset in between replaces the worker.
    let mut drv = Driver::new(&mem, 16);
    let (act, sig) = activation(&mem, drv.queue(false), features);
    dev.activate(act).unwrap();
    drv.bare_req(T_FLUSH, 0);
    sig.kick();
    wait_until("flush on the third activation", || drv.used_idx() == 1);
    // Dropping an active device stops and joins its worker.
    drop(dev);
}

#[test]
fn activation_errors() {
    let img = raw_image(DISK);
    let mem = memory();
    let mut dev = device(&img);
    let drv = Driver::new(&mem, 16);
    let (mut act, _sig) = activation(&mem, drv.queue(false), dev.features());
    act.queues[0] = None;
    assert!(matches!(dev.activate(act), Err(ActivateError::BadSetup(_))));
    let (mut act, _sig) = activation(&mem, drv.queue(false), dev.features());
    act.queues.clear();
    assert!(matches!(dev.activate(act), Err(ActivateError::BadSetup(_))));
    // Rings outside guest memory.
    let mut q = drv.queue(false);
    q.set_desc_table_address(Some(0), Some(0x100));
    let (act, _sig) = activation(&mem, q, dev.features());
    assert!(matches!(dev.activate(act), Err(ActivateError::BadSetup(_))));
    // A failed activation leaves the device usable.
    let (act, _sig) = activation(&mem, drv.queue(false), dev.features());
    dev.activate(act).unwrap();
    dev.reset();
    dev.reset();
}
