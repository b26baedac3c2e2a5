//! Ring-level behaviour of the synchronous processor: corrupt rings break the queue (and
//! only then), event-idx notification suppression, the batch budget.

use super::*;
use crate::blk::{BUDGET, QUEUE_SIZE};

const DISK: u64 = 1 << 20;

#[test]
fn avail_index_jump_breaks_the_queue() {
    let img = raw_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 16);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));
    // One good request first.
    let (_, st) = drv.bare_req(T_FLUSH, 0);
    assert_eq!(p.process_queue(&mem, &mut q).completed, 1);
    assert_eq!(drv.byte(st.addr), OK);
    // The index jumps 17 entries ahead on a 16-entry queue.
    drv.bare_req(T_FLUSH, 0);
    drv.set_avail_idx(1 + 17);
    let out = p.process_queue(&mem, &mut q);
    assert!(out.broken);
    assert_eq!(out.completed, 0);
    assert!(p.is_broken());
    assert_eq!(drv.used_idx(), 1, "nothing used from a corrupt ring");
    // Parked: even a repaired index is not looked at again.
    drv.set_avail_idx(2);
    let out = p.process_queue(&mem, &mut q);
    assert!(out.broken && out.completed == 0);
    assert_eq!(drv.used_idx(), 1);
}

#[test]
fn exactly_a_queue_ahead_is_fine() {
    let img = raw_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 8);
    let mut q = drv.queue(false);
    let mut p = dev.queue_processor(all_features(&dev));
    // 8 chains of 1 descriptor each: a full ring, and the same head may be used twice.
    let h = drv.header(T_FLUSH, 0);
    let st = drv.status();
    let head = drv.chain(&[h, st]);
    for _ in 0..7 {
        drv.publish(head);
    }
    let out = p.process_queue(&mem, &mut q);
    assert!(!out.broken);
    assert_eq!(out.completed, 8);
}

#[test]
fn head_index_beyond_the_queue_breaks_it() {
    let img = raw_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 16);
    let mut q = drv.queue(true);
    let mut p = dev.queue_processor(all_features(&dev));
    drv.bare_req(T_FLUSH, 0);
    drv.publish(16);
    drv.bare_req(T_FLUSH, 0);
    let out = p.process_queue(&mem, &mut q);
    assert!(out.broken);
    assert_eq!(out.completed, 1, "the chain before the bad head is served");
    assert!(out.notify, "and the driver told about it");
    assert_eq!(drv.used_idx(), 1);
}

#[test]
fn rings_outside_guest_memory_break_the_queue() {
    let img = raw_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 16);
    // Used ring beyond RAM: the first add_used fails.
    let mut q = drv.queue(false);
    q.set_used_ring_address(Some(0), Some(1));
    drv.bare_req(T_FLUSH, 0);
    let mut p = dev.queue_processor(all_features(&dev));
    assert!(p.process_queue(&mem, &mut q).broken);
    // Available ring beyond RAM: the index cannot be read.
    let mut q = drv.queue(false);
    q.set_avail_ring_address(Some(0xffff_f000), Some(0xffff));
    let mut p = dev.queue_processor(all_features(&dev));
    assert!(p.process_queue(&mem, &mut q).broken);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let img = raw_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 16);
    let mut q = drv.queue(true);
    let mut p = dev.queue_processor(all_features(&dev));

    // The driver wants an interrupt only after used entry 3.
    drv.set_used_event(3);
    drv.bare_req(T_FLUSH, 0);
    let out = p.process_queue(&mem, &mut q);
    assert_eq!((out.completed, out.notify), (1, false));
    // The device asked to be kicked for the next entry.
    assert_eq!(drv.avail_event(), 1);
    drv.bare_req(T_FLUSH, 0);
    drv.bare_req(T_FLUSH, 0);
    let out = p.process_queue(&mem, &mut q);
    assert_eq!(
        (out.completed, out.notify),
        (2, false),
        "used idx 3: not past 3"
    );
    drv.bare_req(T_FLUSH, 0);
    let out = p.process_queue(&mem, &mut q);
    assert_eq!((out.completed, out.notify), (1, true), "entry 3 used");
    assert_eq!(drv.avail_event(), 4);

    // Nothing completed: no interrupt either way.
    let out = p.process_queue(&mem, &mut q);
    assert_eq!((out.completed, out.notify), (0, false));

    // Without event-idx every completion interrupts.
    let mut drv = Driver::new(&mem, 16);
    let mut q = drv.queue(false);
    drv.set_used_event(100);
    drv.bare_req(T_FLUSH, 0);
    let out = p.process_queue(&mem, &mut q);
    assert_eq!((out.completed, out.notify), (1, true));
}

#[test]
fn budget_bounds_one_call() {
    const {
        assert!(
            BUDGET >= QUEUE_SIZE as usize,
            "a full queue fits in one call"
        )
    };
    let img = raw_image(DISK);
    let mem = memory();
    let dev = device(&img);
    let mut drv = Driver::new(&mem, 256);
    let mut q = drv.queue(true);
    let mut p = dev.queue_processor(all_features(&dev)).with_budget(100);
    for _ in 0..256 {
        drv.bare_req(T_GET_ID, 0);
    }
    let mut done = Vec::new();
    loop {
        let out = p.process_queue(&mem, &mut q);
        assert!(!out.broken);
        done.push(out.completed);
        if !out.more {
            break;
        }
    }
    assert_eq!(done, vec![100, 100, 56]);
    assert_eq!(drv.used_idx(), 256);
}
