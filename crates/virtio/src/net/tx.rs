//! The transmit queue: each chain's device-readable buffers (the 12-byte virtio-net
//! header, then the frame) are gathered into one bounded buffer and written to the TAP
//! as one packet. Chains are returned with used length 0.
//!
//! Nothing here blocks or waits: a TAP whose queue is full (`WouldBlock`) costs the
//! packet (`tx_dropped`), as a full NIC queue would. A chain with a device-writable
//! buffer, a buffer outside guest memory, fewer bytes than the header or more than
//! [`MAX_PACKET_LEN`] is dropped and counted in `errors` and `tx_dropped`; a packet the
//! kernel refuses (a malformed offload header) likewise.

use super::{Counters, Tap, MAX_PACKET_LEN, TX_BUDGET, VNET_HDR_LEN};
use crate::worker::{drain, Drained};
use crate::GuestMemory;
use std::io;
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::Bytes;

pub(super) struct Tx {
    tap: Arc<Tap>,
    counters: Arc<Counters>,
    /// The packet being gathered; its capacity is [`MAX_PACKET_LEN`], never more.
    buf: Vec<u8>,
}

impl Tx {
    pub fn new(tap: Arc<Tap>, counters: Arc<Counters>) -> Self {
        Tx {
            tap,
            counters,
            buf: Vec::with_capacity(MAX_PACKET_LEN),
        }
    }

    /// Send up to [`TX_BUDGET`] chains.
    pub fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        drain(mem, queue, TX_BUDGET, |chain| {
            self.send(mem, chain);
            0
        })
    }

    fn send(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) {
        let ok = self.gather(mem, chain);
        let c = &self.counters;
        if !ok {
            Counters::add(&c.errors, 1);
            Counters::add(&c.tx_dropped, 1);
            return;
        }
        match self.tap.write(&self.buf) {
            Ok(_) => {
                Counters::add(&c.tx_packets, 1);
                Counters::add(&c.tx_bytes, (self.buf.len() - VNET_HDR_LEN) as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Counters::add(&c.tx_dropped, 1),
            Err(_) => {
                Counters::add(&c.errors, 1);
                Counters::add(&c.tx_dropped, 1);
            }
        }
    }

    /// Copy the chain's readable buffers into `buf`; false when the chain is malformed.
    fn gather(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> bool {
        self.buf.clear();
        for desc in chain {
            let len = desc.len() as usize;
            if desc.is_write_only() || len > MAX_PACKET_LEN - self.buf.len() {
                return false;
            }
            let start = self.buf.len();
            // Within the capacity reserved at creation: no allocation.
            self.buf.resize(start + len, 0);
            if mem.read_slice(&mut self.buf[start..], desc.addr()).is_err() {
                return false;
            }
        }
        self.buf.len() >= VNET_HDR_LEN
    }
}
