//! The data path on its own (no thread): transmit to the host stack, receive from it,
//! with and without mergeable buffers, and the driver's mistakes.

use super::*;
use crate::net::device::Service;
use crate::net::{Counters, RX_QUEUE, TUN_F_CSUM, TX_QUEUE, VNET_HDR_LEN};
use crate::worker::QueueService;
use std::sync::Arc;
use virtio_bindings::virtio_net as vn;
use vm_memory::Address;

const MRG: u64 = 1 << vn::VIRTIO_NET_F_MRG_RXBUF;

fn counters(c: &Counters) -> [u64; 7] {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    [
        g(&c.rx_packets),
        g(&c.rx_bytes),
        g(&c.tx_packets),
        g(&c.tx_bytes),
        g(&c.rx_dropped),
        g(&c.tx_dropped),
        g(&c.errors),
    ]
}

/// Serve the receive queue (as the worker would on each TAP edge) until its used index
/// reaches `want`.
fn pump(svc: &mut Service, mem: &GuestMemory, q: &mut Queue, want: u16) {
    wait_for("frames in the receive queue", || {
        svc.fd_ready();
        let out = svc.serve(RX_QUEUE, mem, q);
        assert!(!out.broken);
        used(mem, 0, 0).0 == want
    });
}

#[test]
fn transmit_reaches_the_host_and_bad_chains_are_dropped() {
    let Some((tap, h)) = host_tap() else { return };
    let tap = Arc::new(tap);
    let mem = new_mem();
    let c = Arc::new(Counters::default());
    let mut svc = Service::new(&tap, &c, 0);
    let sock = h.socket();
    let frame = h.frame_to_host(sock.local_addr().unwrap().port(), b"hello from the guest");
    let rest = (frame.len() - 20) as u32;
    mem.write_slice(&[0; VNET_HDR_LEN], GuestAddress(0x10_0000))
        .unwrap();
    mem.write_slice(&frame[..20], GuestAddress(0x10_1000))
        .unwrap();
    mem.write_slice(&frame[20..], GuestAddress(0x10_2000))
        .unwrap();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
    #[rustfmt::skip]
    post(&mock, 0, &[
        // Header, then the frame in two pieces.
        (0x10_0000, 12, N, 1), (0x10_1000, 20, N, 2), (0x10_2000, rest, 0, 0),
        // 12 + 64 KiB + 256 bytes: longer than any packet.
        (0x10_0000, 12, N, 4), (0x20_0000, 0x1_0000, N, 5), (0x20_0000, 0x100, 0, 0),
        // A device-writable buffer.
        (0x10_0000, 12, N, 7), (0x10_1000, 20, W, 0),
        // A header and no frame: the kernel refuses it.
        (0x10_0000, 12, 0, 0),
    ]);
    let mut q = queue(&mock, 0x2_0000);
    let out = svc.serve(TX_QUEUE, &mem, &mut q);
    assert_eq!((out.completed, out.notify, out.broken), (4, true, false));
    assert_eq!(used(&mem, 0x2_0000, 0), (4, (0, 0)));
    assert_eq!(used(&mem, 0x2_0000, 3), (4, (8, 0)));
    let mut buf = [0; 64];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello from the guest");
    assert_eq!(from, (h.peer, 4000).into());
    let bytes = frame.len() as u64;
    assert_eq!(counters(&c), [0, 0, 1, bytes, 0, 3, 3]);
    // A corrupt ring (available index far ahead) breaks the queue.
    mem.write_obj(1000u16, mock.avail_addr().unchecked_add(2))
        .unwrap();
    assert!(svc.serve(TX_QUEUE, &mem, &mut q).broken);
}

#[test]
fn receive_one_chain_per_frame_without_mergeable_buffers() {
    let Some((tap, h)) = host_tap() else { return };
    let tap = Arc::new(tap);
    let mem = new_mem();
    let c = Arc::new(Counters::default());
    let mut svc = Service::new(&tap, &c, 0);
    let mock = MockSplitQueue::new(&mem, 16);
    // Chain 0: 512 bytes; chain 1: the header's 12 bytes, then 2 KiB.
    #[rustfmt::skip]
    post(&mock, 0, &[
        (0x10_0000, 512, W, 0),
        (0x11_0000, 12, W | N, 2), (0x11_1000, 2048, W, 0),
    ]);
    let mut q = queue(&mock, 0);
    // Too big for chain 0: dropped, chain 0 kept for the next frame.
    let big = payload(1000, 1);
    h.send_to_guest(&big);
    wait_for("the big frame", || {
        svc.fd_ready();
        svc.serve(RX_QUEUE, &mem, &mut q);
        counters(&c)[4] == 1
    });
    assert_eq!(used(&mem, 0, 0).0, 0);
    let small = payload(100, 2);
    h.send_to_guest(&small);
    pump(&mut svc, &mem, &mut q, 1);
    let len = VNET_HDR_LEN + HEADERS + 100;
    assert_eq!(used(&mem, 0, 0), (1, (0, len as u32)));
    let got = read(&mem, 0x10_0000, len);
    // No offloads set: a plain header, num_buffers 1.
    assert_eq!(got[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got[12..18], GUEST_MAC);
    assert_eq!(got[18..24], h.host_mac);
    assert_eq!(got[24..26], [0x08, 0x00]);
    assert_eq!(got[12 + HEADERS..], small[..]);
    // The big one again now fits chain 1, across its two buffers.
    h.send_to_guest(&big);
    pump(&mut svc, &mem, &mut q, 2);
    let len = VNET_HDR_LEN + HEADERS + 1000;
    assert_eq!(used(&mem, 0, 1), (2, (1, len as u32)));
    assert_eq!(read(&mem, 0x11_0000, 12)[10..], [1, 0]);
    assert_eq!(read(&mem, 0x11_1000 + HEADERS as u64, 1000), big);
    let bytes = (HEADERS * 2 + 1100) as u64;
    assert_eq!(counters(&c), [2, bytes, 0, 0, 1, 0, 0]);
}

#[test]
fn mergeable_buffers_split_frames_and_frames_wait_for_buffers() {
    let Some((tap, h)) = host_tap() else { return };
    let tap = Arc::new(tap);
    let mem = new_mem();
    let c = Arc::new(Counters::default());
    let mut svc = Service::new(&tap, &c, MRG);
    let mock = MockSplitQueue::new(&mem, 16);
    // 8 bytes (num_buffers lands in the next chain), then 256: too few for the frame.
    post(&mock, 0, &[(0x10_0000, 8, W, 0), (0x10_1000, 256, W, 0)]);
    let mut q = queue(&mock, 0);
    let data = payload(1000, 3);
    h.send_to_guest(&data);
    wait_for("the frame to be held", || {
        svc.fd_ready();
        let out = svc.serve(RX_QUEUE, &mem, &mut q);
        assert_eq!((out.completed, out.broken), (0, false));
        svc.rx.holds_frame()
    });
    assert_eq!(used(&mem, 0, 0).0, 0);
    // The chains went back and the driver is asked to kick after its index 2.
    use virtio_queue::QueueT;
    assert_eq!(q.next_avail(), 0);
    let avail_event: u16 = mem.read_obj(GuestAddress(0x8000 + 4 + 8 * 16)).unwrap();
    assert_eq!(avail_event, 2);
    // Four more chains (one with a readable buffer first, skipped): 8 + 5 * 256 >= 1054.
    #[rustfmt::skip]
    post(&mock, 2, &[
        (0x10_2000, 256, W, 0), (0x10_3000, 256, W, 0), (0x10_4000, 256, W, 0),
        (0x10_8000, 16, N, 6), (0x10_5000, 256, W, 0),
    ]);
    let out = svc.serve(RX_QUEUE, &mem, &mut q);
    assert_eq!((out.completed, out.notify, out.more), (6, true, false));
    let len = VNET_HDR_LEN + HEADERS + 1000;
    let lens: Vec<_> = (0..6).map(|i| used(&mem, 0, i).1).collect();
    let heads = [0, 1, 2, 3, 4, 5];
    let expect = [8, 256, 256, 256, 256, (len - 8 - 4 * 256) as u32];
    assert_eq!(lens, heads.into_iter().zip(expect).collect::<Vec<_>>());
    assert_eq!(used(&mem, 0, 0).0, 6);
    let mut got = read(&mem, 0x10_0000, 8);
    for (i, n) in expect.iter().enumerate().skip(1) {
        got.extend(read(&mem, 0x10_0000 + 0x1000 * i as u64, *n as usize));
    }
    assert_eq!(got[10..12], [6, 0], "num_buffers");
    assert_eq!(got[12..18], GUEST_MAC);
    assert_eq!(got[12 + HEADERS..], data[..]);
    assert_eq!(counters(&c), [1, (HEADERS + 1000) as u64, 0, 0, 0, 0, 1]);

    // With the checksum offload on, the host hands over a partially checksummed frame.
    tap.set_offload(TUN_F_CSUM).unwrap();
    post(&mock, 7, &[(0x11_0000, 2048, W, 0)]);
    h.send_to_guest(&data[..200]);
    pump(&mut svc, &mem, &mut q, 7);
    let hdr = read(&mem, 0x11_0000, 12);
    let flag = hdr[0] & vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    assert_eq!((flag, hdr[1]), (1, 0), "NEEDS_CSUM, no GSO: {hdr:?}");
    let (start, offset) = (
        u16::from_le_bytes([hdr[6], hdr[7]]),
        u16::from_le_bytes([hdr[8], hdr[9]]),
    );
    assert_eq!((start, offset, hdr[10]), (14 + 20, 6, 1));

    // A frame not even the whole ring could hold is dropped; the chains stay.
    let mock2 = MockSplitQueue::create(&mem, GuestAddress(0x3_0000), 16);
    let descs: Vec<_> = (0..16).map(|i| (0x12_0000 + 64 * i, 8, W, 0)).collect();
    post(&mock2, 0, &descs);
    let mut q2 = queue(&mock2, 0x3_0000);
    h.send_to_guest(&data[..100]);
    wait_for("the frame to be dropped", || {
        svc.fd_ready();
        svc.serve(RX_QUEUE, &mem, &mut q2);
        counters(&c)[4] == 1
    });
    assert_eq!((used(&mem, 0x3_0000, 0).0, q2.next_avail()), (0, 0));
}

#[test]
fn corrupt_or_odd_receive_rings() {
    let Some((tap, h)) = host_tap() else { return };
    let tap = Arc::new(tap);
    let mem = new_mem();
    let c = Arc::new(Counters::default());
    let mut svc = Service::new(&tap, &c, MRG);
    let mock = MockSplitQueue::new(&mem, 16);
    // A chain outside guest memory: skipped (counted), the next chain takes the frame.
    post(
        &mock,
        0,
        &[(0xffff_f000_0000, 4096, W, 0), (0x10_0000, 4096, W, 0)],
    );
    let mut q = queue(&mock, 0);
    h.send_to_guest(b"x");
    pump(&mut svc, &mem, &mut q, 2);
    assert_eq!(used(&mem, 0, 0).1, (0, 0));
    assert_eq!(used(&mem, 0, 1).1, (1, (VNET_HDR_LEN + HEADERS + 1) as u32));
    assert_eq!(read(&mem, 0x10_0000, 12)[10..], [2, 0]);
    // The available index far ahead: broken, whether or not a frame waits.
    mem.write_obj(1000u16, mock.avail_addr().unchecked_add(2))
        .unwrap();
    assert!(svc.serve(RX_QUEUE, &mem, &mut q).broken);
    h.send_to_guest(b"y");
    wait_for("broken with a frame", || {
        svc.fd_ready();
        svc.serve(RX_QUEUE, &mem, &mut q).broken
    });
}
