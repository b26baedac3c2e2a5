//! Tests of virtio-net on real TAP interfaces (they need CAP_NET_ADMIN and
//! `/dev/net/tun`; without the capability they say so and pass), with guest memory and
//! rings built by virtio-queue's `MockSplitQueue`.
//!
//! Each test makes its own interface ("kt" + pid + n), gives the host side an IPv4 /30
//! with IPv6 off (so the kernel sends nothing unasked), and a permanent neighbour entry
//! for the guest's address, so a UDP datagram the host sends to the guest is exactly one
//! frame on the TAP, and one the guest sends reaches a host socket. The interface goes
//! away with its last descriptor.

mod data;
mod device;
mod worker_fd;

use super::Tap;
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub(super) use crate::GuestMemory;

pub const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
pub const N: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
pub type Mock<'a> = MockSplitQueue<'a, GuestMemory>;

/// The guest's MAC in these tests.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Ethernet + IPv4 + UDP headers.
pub const HEADERS: usize = 14 + 20 + 8;

/// The host side of a test TAP.
pub struct Host {
    pub name: String,
    /// The host's address on the interface.
    pub local: Ipv4Addr,
    /// The guest's address (a permanent neighbour at [`GUEST_MAC`]).
    pub peer: Ipv4Addr,
    /// The host interface's MAC.
    pub host_mac: [u8; 6],
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

/// A fresh TAP, host side up (always `Some`: without CAP_NET_ADMIN the test fails loudly).
pub fn host_tap() -> Option<(Tap, Host)> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let name = format!("kt{pid}n{n}");
    let tap = match Tap::open_or_create(&name) {
        Ok(t) => t,
        Err(e) => panic!("the virtio-net tests need TAP devices (root or CAP_NET_ADMIN): {e}"),
    };
    assert_eq!(tap.name(), name);
    let (a, b, c) = (
        100 + (pid % 100) as u8,
        (pid / 100 % 256) as u8,
        (n * 4 % 256) as u8,
    );
    let local = Ipv4Addr::new(10, a, b, c + 1);
    let peer = Ipv4Addr::new(10, a, b, c + 2);
    // Absent when the host has no IPv6.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    ip(&["addr", "add", &format!("{local}/30"), "dev", &name]);
    ip(&["link", "set", "dev", &name, "up"]);
    let mac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    #[rustfmt::skip]
    ip(&["neigh", "replace", &peer.to_string(), "lladdr", &mac, "dev", &name, "nud", "permanent"]);
    let addr = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let mut host_mac = [0u8; 6];
    for (m, h) in host_mac.iter_mut().zip(addr.trim().split(':')) {
        *m = u8::from_str_radix(h, 16).unwrap();
    }
    let host = Host {
        name,
        local,
        peer,
        host_mac,
    };
    Some((tap, host))
}

impl Host {
    /// Have the host send `payload` in a UDP datagram to the guest (one frame on the TAP).
    pub fn send_to_guest(&self, payload: &[u8]) {
        let s = UdpSocket::bind((self.local, 0)).unwrap();
        s.send_to(payload, (self.peer, 9)).unwrap();
    }

    /// A host socket on the host's address, for datagrams from the guest.
    pub fn socket(&self) -> UdpSocket {
        let s = UdpSocket::bind((self.local, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// A frame from the guest to `port` on the host carrying `payload` in UDP.
    pub fn frame_to_host(&self, port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.host_mac);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 8 + payload.len()) as u16;
        let mut iph = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        iph[2..4].copy_from_slice(&total.to_be_bytes());
        iph.extend_from_slice(&self.peer.octets());
        iph.extend_from_slice(&self.local.octets());
        let sum = ip_checksum(&iph);
        iph[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&iph);
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        f.extend_from_slice(payload);
        f
    }
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn new_mem() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// Post chains of (addr, len, flags, next) descriptors at table index `at`.
pub fn post(mock: &Mock, at: u16, descs: &[(u64, u32, u16, u16)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .map(|&(a, l, f, n)| SplitDescriptor::new(a, l, f, n).into())
        .collect();
    mock.add_desc_chains(&raw, at).unwrap();
}

/// The queue of a 16-entry mock at `base`, event-idx on, its used ring moved to
/// `base + 0x8000` (the mock's own overlaps its available ring).
pub fn queue(mock: &Mock, base: u64) -> Queue {
    use virtio_queue::QueueT;
    let mut q: Queue = mock.create_queue().unwrap();
    q.set_used_ring_address(Some((base + 0x8000) as u32), Some(0));
    q.set_event_idx(true);
    q
}

/// (used idx, (head, used length) of element `i`) of the queue at `base`.
pub fn used(mem: &GuestMemory, base: u64, i: u64) -> (u16, (u32, u32)) {
    let at = |o: u64| GuestAddress(base + 0x8000 + o);
    let idx = mem.read_obj(at(2)).unwrap();
    let elem = (
        mem.read_obj(at(4 + 8 * i)).unwrap(),
        mem.read_obj(at(8 + 8 * i)).unwrap(),
    );
    (idx, elem)
}

pub fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// A recognisable payload of `len` bytes.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// Call `f` until it returns true, failing after 5 seconds.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
