//! The device as a transport sees it: features, configuration space, TAP errors, and the
//! worker thread end to end.

use super::*;
use crate::device::{ActivateError, Activation, ActiveQueue, NeedsReset};
use crate::net::{default_mac, VirtioNet, FEATURES, VNET_HDR_LEN};
use crate::VirtioDevice;
use std::sync::Arc;
use virtio_bindings::virtio_net as vn;
use vm_memory::Address;
use vmm_sys_util::eventfd::EventFd;

#[test]
fn features_config_and_mac() {
    let Some((tap, h)) = host_tap() else { return };
    let dev = VirtioNet::new(tap, None).unwrap();
    assert_eq!((dev.device_type(), dev.name()), (1, "virtio-net"));
    assert_eq!(dev.queue_max_sizes(), vec![256, 256]);
    for bit in [
        vn::VIRTIO_NET_F_MAC,
        vn::VIRTIO_NET_F_STATUS,
        vn::VIRTIO_NET_F_CSUM,
        vn::VIRTIO_NET_F_GUEST_CSUM,
        vn::VIRTIO_NET_F_HOST_TSO4,
        vn::VIRTIO_NET_F_HOST_TSO6,
        vn::VIRTIO_NET_F_GUEST_TSO4,
        vn::VIRTIO_NET_F_GUEST_TSO6,
        vn::VIRTIO_NET_F_MRG_RXBUF,
        virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert!(dev.features() & (1 << bit) != 0, "bit {bit}");
    }
    assert_eq!(FEATURES.count_ones(), 10);
    let mac = default_mac(&h.name);
    assert_eq!((dev.mac(), &mac[..3]), (mac, &[0x52, 0x54, 0][..]));
    assert_eq!(mac, default_mac(&h.name), "stable");
    assert_ne!(mac, default_mac("other"));
    let mut cfg = [0xffu8; 16];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], mac);
    assert_eq!(cfg[6..], [1, 0, 1, 0, 0, 0, 0, 0, 0, 0], "LINK_UP, 1 pair");
    let mut part = [0u8; 4];
    dev.read_config(4, &mut part);
    assert_eq!(part, [mac[4], mac[5], 1, 0]);
    dev.read_config(u64::MAX, &mut part);
    assert_eq!(part, [0; 4]);
}

#[test]
fn tap_errors_and_mac_checks() {
    let Some((tap, h)) = host_tap() else { return };
    let e = Tap::open_or_create(&h.name).unwrap_err();
    assert!(e.to_string().contains("is in use"), "{e}");
    let e = Tap::open_or_create("lo").unwrap_err();
    assert!(e.to_string().contains("not a single-queue TAP"), "{e}");
    let e = VirtioNet::new(tap, Some([1, 2, 3, 4, 5, 6])).err().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

#[test]
fn worker_moves_frames_both_ways_and_frames_wait_for_buffers() {
    let Some((tap, h)) = host_tap() else { return };
    let mem = new_mem();
    let rx = MockSplitQueue::new(&mem, 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
    let mut fds = Vec::new();
    let mut queues = Vec::new();
    for q in [queue(&rx, 0), queue(&tx, 0x2_0000)] {
        let (kick, irq) = (eventfd(), eventfd());
        queues.push(Some(ActiveQueue {
            queue: q,
            kick: kick.try_clone().unwrap(),
            interrupt: Arc::new(irq.try_clone().unwrap()),
        }));
        fds.push([kick, irq]);
    }
    let needs_reset = NeedsReset::new();
    let config_irq = eventfd();
    let acked = FEATURES;
    let a = Activation {
        mem: mem.clone(),
        acked_features: acked,
        queues,
        config_interrupt: Arc::new(config_irq.try_clone().unwrap()),
        needs_reset: needs_reset.clone(),
    };
    let ([rx_kick, rx_irq], [tx_kick, tx_irq]) = (&fds[0], &fds[1]);
    let mut dev = VirtioNet::new(tap, Some(GUEST_MAC)).unwrap();
    dev.activate(a).unwrap();

    // No receive buffers: the frame waits in the kernel.
    let data = payload(300, 9);
    h.send_to_guest(&data);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used(&mem, 0, 0).0, 0);
    assert_eq!(dev.counters()[0], ("rx_packets", 0));
    // A buffer and a kick deliver it.
    post(&rx, 0, &[(0x10_0000, 4096, W, 0)]);
    rx_kick.write(1).unwrap();
    let len = (VNET_HDR_LEN + HEADERS + 300) as u32;
    wait_for("rx", || used(&mem, 0, 0) == (1, (0, len)));
    assert_eq!(read(&mem, 0x10_0000 + 12 + HEADERS as u64, 300), data);
    wait_for("rx irq", || rx_irq.read().is_ok());
    // With a buffer posted, a frame arriving wakes the device by itself.
    post(&rx, 1, &[(0x10_1000, 4096, W, 0)]);
    h.send_to_guest(b"second");
    wait_for("rx 2", || used(&mem, 0, 1).0 == 2);

    // Transmit: a chain and a kick reach a host socket.
    let sock = h.socket();
    let frame = h.frame_to_host(sock.local_addr().unwrap().port(), b"ping");
    mem.write_slice(&[0; VNET_HDR_LEN], GuestAddress(0x11_0000))
        .unwrap();
    mem.write_slice(&frame, GuestAddress(0x11_0000 + 12))
        .unwrap();
    post(&tx, 0, &[(0x11_0000, (12 + frame.len()) as u32, 0, 0)]);
    tx_kick.write(1).unwrap();
    let mut buf = [0; 16];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    wait_for("tx irq", || tx_irq.read().is_ok());
    let c: Vec<u64> = dev.counters().iter().map(|c| c.1).collect();
    let rx_bytes = (2 * HEADERS + 306) as u64;
    assert_eq!(c, [2, rx_bytes, 1, frame.len() as u64, 0, 0, 0]);

    // A corrupt receive ring: DEVICE_NEEDS_RESET and the configuration interrupt.
    mem.write_obj(1000u16, rx.avail_addr().unchecked_add(2))
        .unwrap();
    rx_kick.write(1).unwrap();
    wait_for("needs reset", || needs_reset.is_set());
    wait_for("config irq", || config_irq.read().is_ok());
    dev.reset();

    // Both queues are required.
    let a = Activation {
        mem: mem.clone(),
        acked_features: acked,
        queues: vec![None, None],
        config_interrupt: Arc::new(eventfd()),
        needs_reset: NeedsReset::new(),
    };
    assert!(matches!(dev.activate(a), Err(ActivateError::BadSetup(_))));
}
