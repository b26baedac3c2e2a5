//! The receive queue: frames read from the TAP (header first) into a bounce buffer and
//! scattered into the driver's device-writable buffers.
//!
//! - The TAP is read only when the receive queue has a buffer, and only while it may hold
//!   frames: the worker watches it edge-triggered and [`Rx::tap_ready`] records the edge
//!   until a read finds it empty. With no buffers the device asks the driver for a kick
//!   and stops; the kernel keeps the frames (its TAP queue is bounded and drops when full).
//! - With VIRTIO_NET_F_MRG_RXBUF a frame takes as many chains as it needs and the header's
//!   `num_buffers` says how many; if the driver has posted too few, the chains go back and
//!   the frame waits in the bounce buffer for more (dropped only when even a full ring of
//!   the driver's buffers cannot hold it). Without it a frame must fit one chain; one that
//!   does not is dropped and the chain left for the next frame.
//! - The used elements of one frame are published with a single used-index update, so
//!   the driver never sees a frame with some of its buffers missing; interrupts follow
//!   the driver's `used_event` as virtio-queue's own check does.

use super::{Counters, Tap, MAX_PACKET_LEN, RX_BUDGET, VNET_HDR_LEN};
use crate::worker::{next_chain, Corrupt, Drained};
use crate::GuestMemory;
use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_AT: usize = 10;

/// What became of the frame in the bounce buffer.
enum Delivery {
    /// In the guest's buffers, using this many chains.
    Done(usize),
    /// No posted buffers could ever hold it: dropped.
    TooBig,
    /// The driver has posted too few buffers so far; its available index was `seen`.
    NoRoom { seen: u16 },
}

pub(super) struct Rx {
    tap: Arc<Tap>,
    counters: Arc<Counters>,
    mergeable: bool,
    /// The TAP may have frames (an edge arrived since a read last found it empty).
    tap_ready: bool,
    bounce: Vec<u8>,
    /// Length of a frame in `bounce` still to be delivered.
    held: Option<usize>,
    /// (head, length) of the chains holding the frame being delivered.
    used: Vec<(u16, u32)>,
}

impl Rx {
    pub fn new(tap: Arc<Tap>, counters: Arc<Counters>, mergeable: bool) -> Self {
        Rx {
            tap,
            counters,
            mergeable,
            tap_ready: true,
            bounce: vec![0; MAX_PACKET_LEN],
            held: None,
            used: Vec::with_capacity(usize::from(super::QUEUE_SIZE)),
        }
    }

    /// Whether a frame waits in the bounce buffer for receive buffers.
    #[cfg(test)]
    pub fn holds_frame(&self) -> bool {
        self.held.is_some()
    }

    /// The TAP reported readiness.
    pub fn tap_ready(&mut self) {
        self.tap_ready = true;
    }

    /// Move up to [`RX_BUDGET`] frames from the TAP to the guest.
    pub fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        let c = self.counters.clone();
        let used_before = Wrapping(queue.next_used());
        let mut out = Drained::default();
        // Set to the available index at which the driver was asked for a kick and had
        // already posted more: the next attempt must find more than that.
        let mut recheck: Option<u16> = None;
        let mut attempts = 0;
        loop {
            if attempts >= RX_BUDGET {
                out.more = true;
                break;
            }
            attempts += 1;
            let step = match self.held {
                Some(len) => self.deliver(mem, queue, len),
                None if !self.tap_ready => break,
                None => match available(mem, queue) {
                    Err(e) => Err(e),
                    Ok(0) => Ok(Delivery::NoRoom {
                        seen: queue.next_avail(),
                    }),
                    Ok(_) => match self.tap.read(&mut self.bounce) {
                        Ok(len) if (VNET_HDR_LEN + 14..=MAX_PACKET_LEN).contains(&len) => {
                            self.held = Some(len);
                            self.deliver(mem, queue, len)
                        }
                        Ok(_) => {
                            // Shorter than a header and an Ethernet header.
                            Counters::add(&c.errors, 1);
                            Counters::add(&c.rx_dropped, 1);
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.tap_ready = false;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            // Wait for the next edge rather than retry a failing read.
                            Counters::add(&c.errors, 1);
                            Counters::add(&c.rx_dropped, 1);
                            self.tap_ready = false;
                            break;
                        }
                    },
                },
            };
            match step {
                Ok(Delivery::Done(chains)) => {
                    let len = self.held.take().unwrap_or(VNET_HDR_LEN);
                    Counters::add(&c.rx_packets, 1);
                    Counters::add(&c.rx_bytes, (len - VNET_HDR_LEN) as u64);
                    out.completed += chains;
                    recheck = None;
                }
                Ok(Delivery::TooBig) => {
                    self.held = None;
                    Counters::add(&c.rx_dropped, 1);
                }
                Ok(Delivery::NoRoom { seen }) => {
                    if recheck == Some(seen) {
                        // The index said "more" and then moved back: corrupt.
                        out.broken = true;
                        break;
                    }
                    match kick_after(mem, queue, seen) {
                        Ok(true) => recheck = Some(seen),
                        Ok(false) => break,
                        Err(Corrupt) => {
                            out.broken = true;
                            break;
                        }
                    }
                }
                Err(Corrupt) => {
                    out.broken = true;
                    break;
                }
            }
        }
        if out.completed > 0 {
            out.notify = needs_interrupt(mem, queue, used_before);
        }
        out
    }

    /// Scatter the frame in `bounce[..len]` into the driver's next chains.
    fn deliver(
        &mut self,
        mem: &GuestMemory,
        queue: &mut Queue,
        len: usize,
    ) -> Result<Delivery, Corrupt> {
        let start = queue.next_avail();
        let frame = &mut self.bounce[..len];
        // The TAP leaves num_buffers alone; 1 unless the frame needs more chains.
        frame[NUM_BUFFERS_AT..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        self.used.clear();
        let mut num_buffers_at = [None; 2];
        let mut off = 0;
        while off < len {
            let Some(chain) = next_chain(mem, queue)? else {
                let seen = queue.next_avail();
                queue.set_next_avail(start);
                return Ok(Delivery::NoRoom { seen });
            };
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain {
                if off == len {
                    break;
                }
                if !desc.is_write_only() {
                    Counters::add(&self.counters.errors, 1);
                    continue;
                }
                let n = (desc.len() as usize).min(len - off);
                if mem.write_slice(&frame[off..off + n], desc.addr()).is_err() {
                    Counters::add(&self.counters.errors, 1);
                    break;
                }
                for (k, at) in num_buffers_at.iter_mut().enumerate() {
                    let pos = NUM_BUFFERS_AT + k;
                    if (off..off + n).contains(&pos) {
                        *at = desc.addr().checked_add((pos - off) as u64);
                    }
                }
                off += n;
                written += n;
            }
            // At most MAX_PACKET_LEN.
            self.used.push((head, written as u32));
            let ring_full = self.used.len() >= usize::from(queue.size());
            if off < len && (!self.mergeable || ring_full) {
                // No chain this driver posts can take it: keep the chains for the next.
                queue.set_next_avail(start);
                return Ok(Delivery::TooBig);
            }
        }
        if self.used.len() > 1 {
            // At most the queue size.
            let count = (self.used.len() as u16).to_le_bytes();
            for (byte, at) in count.iter().zip(num_buffers_at) {
                // Found above unless the header's buffer was outside guest memory, which
                // was counted already.
                if let Some(at) = at {
                    mem.write_obj(*byte, at).map_err(|_| Corrupt)?;
                }
            }
        }
        publish(mem, queue, &self.used)?;
        Ok(Delivery::Done(self.used.len()))
    }
}

impl Drop for Rx {
    /// A frame still held (the device is being reset) is lost: count it.
    fn drop(&mut self) {
        if self.held.is_some() {
            Counters::add(&self.counters.rx_dropped, 1);
        }
    }
}

/// Chains the driver has posted and the device not yet taken.
fn available(mem: &GuestMemory, queue: &Queue) -> Result<u16, Corrupt> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| Corrupt)?;
    let n = (avail - Wrapping(queue.next_avail())).0;
    if n > queue.size() {
        return Err(Corrupt);
    }
    Ok(n)
}

/// Ask the driver to kick once it posts beyond available index `seen` (the device's own
/// next index may be behind it, with chains given back); true when it already has.
fn kick_after(mem: &GuestMemory, queue: &mut Queue, seen: u16) -> Result<bool, Corrupt> {
    let next = queue.next_avail();
    queue.set_next_avail(seen);
    let more = queue.enable_notification(mem);
    queue.set_next_avail(next);
    more.map_err(|_| Corrupt)
}

/// Put `used` on the used ring in order and publish them with one index update.
fn publish(mem: &GuestMemory, queue: &mut Queue, used: &[(u16, u32)]) -> Result<(), Corrupt> {
    let ring = GuestAddress(queue.used_ring());
    let size = queue.size();
    let mut idx = Wrapping(queue.next_used());
    for &(head, len) in used {
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let slot = idx.0.checked_rem(size).ok_or(Corrupt)?;
        let at = ring.checked_add(4 + 8 * u64::from(slot)).ok_or(Corrupt)?;
        mem.write_slice(&elem, at).map_err(|_| Corrupt)?;
        idx += Wrapping(1);
    }
    let at = ring.checked_add(2).ok_or(Corrupt)?;
    mem.store(idx.0.to_le(), at, Ordering::Release)
        .map_err(|_| Corrupt)?;
    queue.set_next_used(idx.0);
    Ok(())
}

/// Whether the driver wants an interrupt for the chains used since `before` (with
/// event-idx: its `used_event` lies among them). When in doubt, interrupt.
fn needs_interrupt(mem: &GuestMemory, queue: &Queue, before: Wrapping<u16>) -> bool {
    if !queue.event_idx_enabled() {
        return true;
    }
    // The used index must be visible before `used_event` is read.
    fence(Ordering::SeqCst);
    let used_event_at =
        GuestAddress(queue.avail_ring()).checked_add(4 + 2 * u64::from(queue.size()));
    let Some(Ok(event)) =
        used_event_at.map(|at| mem.load::<u16>(at, Ordering::Relaxed).map(u16::from_le))
    else {
        return true;
    };
    let now = Wrapping(queue.next_used());
    now - Wrapping(event) - Wrapping(1) < now - before
}
