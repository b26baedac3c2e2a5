//! What a hostile guest (or a misbehaving host program) can do: malformed chains and
//! packets, unknown connections, credit overruns, a full reset queue, corrupt rings,
//! bad CONNECT lines, a host listener that never accepts, bad device setups.

use super::*;

#[test]
fn bad_connect_lines_close_the_host_socket() {
    let (_dir, uds, dev, mut m, _g) = setup();
    for line in [&b"CONNECT x\n"[..], b"HELLO 5\n", &[b'7'; 40][..]] {
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(line).unwrap();
        let errors = counter(&dev, "errors");
        let deadline = Instant::now() + Duration::from_secs(5);
        while counter(&dev, "errors") == errors {
            assert!(Instant::now() < deadline, "{line:?} accepted");
            m.host_events(50);
        }
        assert_eq!(m.open_connections(), 0);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Closed: EOF, or a reset when the line was not read to its end.
        assert!(matches!(host.read(&mut [0u8; 16]), Ok(0) | Err(_)));
    }
    assert_eq!(counter(&dev, "errors"), 3);
}

#[test]
fn a_host_listener_with_a_full_backlog_refuses_rather_than_stalls() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let mut path = uds.as_os_str().to_owned();
    path.push("_5001");
    let listener = UnixListener::bind(&path).unwrap();
    // SAFETY: listen() on a descriptor the listener owns; a second call only changes the
    // backlog (0: one connection waits, the next is refused).
    let r = unsafe { libc::listen(std::os::unix::io::AsRawFd::as_raw_fd(&listener), 0) };
    assert_eq!(r, 0);
    let mut replies = Vec::new();
    for port in 1..=4 {
        g.send(&mut m, &hdr(OP_REQUEST, port, 5001), &[]);
        replies.push(g.recv(&mut m).0.op);
    }
    assert_eq!(replies[0], OP_RESPONSE);
    assert_eq!(replies.last(), Some(&OP_RST), "{replies:?}");
}

#[test]
fn packets_for_unknown_connections_are_reset_and_bad_ones_dropped() {
    let (_dir, _uds, dev, mut m, mut g) = setup();
    g.send(&mut m, &rw(1, 2, 5, 0), b"hello");
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.src_port, p.dst_port), (OP_RST, 2, 1));
    // Wrong source CID, wrong destination, a datagram type: dropped and counted.
    let bad = [
        Header {
            src_cid: 4,
            ..rw(1, 2, 0, 0)
        },
        Header {
            dst_cid: 5,
            ..rw(1, 2, 0, 0)
        },
        Header {
            type_: 2,
            ..rw(1, 2, 0, 0)
        },
    ];
    for h in &bad {
        g.send(&mut m, h, &[]);
    }
    g.refill(8);
    g.serve_rx(&mut m);
    assert!(g.try_recv().is_none());
    assert_eq!(counter(&dev, "errors"), 3);
    // A reset for nothing gets no answer.
    g.send(&mut m, &hdr(OP_RST, 1, 2), &[]);
    g.serve_rx(&mut m);
    assert!(g.try_recv().is_none());
}

#[test]
fn malformed_chains_fail_alone() {
    let (_dir, _uds, dev, mut m, mut g) = setup();
    let mem = g.mem.clone();
    // A header cut short.
    let at = g.tx.alloc(64);
    mem.write_slice(&rw(1, 2, 0, 0).to_bytes(), GuestAddress(at))
        .unwrap();
    g.tx.post(&mem, &[(at, 20, 0)]);
    // A length beyond the descriptors, and one beyond 64 KiB.
    let h = rw(1, 2, 100, 0);
    g.tx.post(&mem, &[(at, HDR_LEN as u32 + 50, 0)]);
    mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
    let big_at = g.tx.alloc(HDR_LEN as u64 + MAX_PAYLOAD as u64 + 1);
    mem.write_slice(
        &rw(1, 2, MAX_PAYLOAD + 1, 0).to_bytes(),
        GuestAddress(big_at),
    )
    .unwrap();
    g.tx.post(&mem, &[(big_at, (HDR_LEN + MAX_PAYLOAD + 1) as u32, 0)]);
    // A device-writable descriptor in a transmit chain.
    g.tx.post(&mem, &[(at, HDR_LEN as u32, 0), (at + 0x100, 16, W)]);
    // A descriptor outside guest memory.
    g.tx.post(&mem, &[(0xffff_0000_0000, HDR_LEN as u32, 0)]);
    g.serve_tx(&mut m);
    assert_eq!(counter(&dev, "errors"), 5);
    assert_eq!(counter(&dev, "tx_packets"), 0);

    // A receive chain with a device-readable descriptor is returned empty; the reset
    // for the next bad packet lands in the buffer after it.
    let r = g.rx.alloc(256);
    g.rx.post(&mem, &[(r, 256, 0)]);
    let r2 = g.rx.alloc(20);
    g.rx.post(&mem, &[(r2, 20, W)]);
    g.rx_posted += 2;
    g.send(&mut m, &rw(1, 2, 0, 0), &[]);
    assert_eq!(g.rx.next_used(&mem).map(|u| u.1), Some(0));
    assert_eq!(g.rx.next_used(&mem).map(|u| u.1), Some(0));
    g.rx_posted -= 2;
    let (p, _) = g.recv(&mut m);
    assert_eq!(p.op, OP_RST);
    assert_eq!(counter(&dev, "errors"), 7);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let (_dir, uds, dev, mut m, mut g) = setup();
    // The host program never reads: our buffer fills once its socket buffer is full.
    let _host = guest_connect(&uds, &mut m, &mut g, 900);
    let chunk = pattern(MAX_PAYLOAD, 3);
    let mut reset = false;
    for _ in 0..256 {
        g.send(&mut m, &rw(900, 5000, chunk.len(), 0), &chunk);
        g.refill(8);
        g.serve_rx(&mut m);
        while let Some((p, _)) = g.try_recv() {
            if p.op == OP_RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    assert!(reset, "no reset after overrunning the credit");
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "errors"), 1);
    // The device goes on.
    g.send(&mut m, &rw(1, 2, 0, 0), &[]);
    assert_eq!(g.recv(&mut m).0.op, OP_RST);
}

#[test]
fn credit_request_is_answered_and_unbounded_resets_stall_tx() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let _host = guest_connect(&uds, &mut m, &mut g, 901);
    g.send(&mut m, &hdr(OP_CREDIT_REQUEST, 901, 5000), &[]);
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.buf_alloc), (OP_CREDIT_UPDATE, BUF_ALLOC));

    // 300 packets for unknown connections while the guest posts no receive buffers:
    // the device takes what its reset queue holds and leaves the rest on the ring until
    // the receive queue drains it.
    let post = |g: &mut Guest, from: u32, n: u32| {
        for i in from..from + n {
            let at = g.tx.alloc(64);
            g.mem
                .write_slice(&rw(i, 2, 0, 0).to_bytes(), GuestAddress(at))
                .unwrap();
            g.tx.post(&g.mem.clone(), &[(at, HDR_LEN as u32, 0)]);
        }
    };
    let posted_rx = g.rx_posted;
    post(&mut g, 0, 200);
    let out = m.serve(TX_QUEUE, &g.mem, &mut g.txq);
    assert_eq!(out.completed, 200);
    // The receive buffers already posted take the first resets.
    m.serve(RX_QUEUE, &g.mem, &mut g.rxq);
    post(&mut g, 200, 100);
    let out = m.serve(TX_QUEUE, &g.mem, &mut g.txq);
    assert_eq!(out.completed, RESET_QUEUE_CAP - 200 + posted_rx);
    let out = m.serve(TX_QUEUE, &g.mem, &mut g.txq);
    assert_eq!(out.completed, 0);
    let mut resets = 0;
    while resets < 300 {
        let (p, _) = g.recv(&mut m);
        assert_eq!(p.op, OP_RST);
        resets += 1;
    }
}

#[test]
fn cid_and_path_checks() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    assert!(VirtioVsock::new(2, &p).is_err());
    assert!(VirtioVsock::new(u64::from(u32::MAX), &p).is_err());
    std::fs::write(&p, b"not a socket").unwrap();
    assert!(VirtioVsock::new(3, &p).is_err());
    std::fs::remove_file(&p).unwrap();
    // A stale socket is replaced.
    drop(UnixListener::bind(&p).unwrap());
    let dev = VirtioVsock::new(3, &p).unwrap();
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), 3);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    drop(dev);
    assert!(!p.exists(), "the socket goes with the device");
}

#[test]
fn a_corrupt_ring_is_reported_broken() {
    let (_dir, _uds, _dev, mut m, mut g) = setup();
    // A reset waits for the guest; the receive ring's index then runs a queue ahead.
    g.send(&mut m, &rw(1, 2, 0, 0), &[]);
    g.mem
        .write_obj(RING + 5, GuestAddress(g.rx.avail_ring() + 2))
        .unwrap();
    assert!(m.serve(RX_QUEUE, &g.mem, &mut g.rxq).broken);
    g.mem
        .write_obj(
            g.tx.avail.wrapping_add(RING + 1),
            GuestAddress(g.tx.avail_ring() + 2),
        )
        .unwrap();
    assert!(m.serve(TX_QUEUE, &g.mem, &mut g.txq).broken);
}
