//! Streams both ways: handshakes, data byte-exact in both directions, credit, shutdown
//! and its deadline, and the device on its worker thread.

use super::*;

#[test]
fn host_initiated_stream_both_ways_then_host_close() {
    let (_dir, uds, dev, mut m, mut g) = setup();
    let (mut host, local) = host_connect(&uds, &mut m, &mut g, 1234);
    assert_eq!(counter(&dev, "connections"), 1);

    // Host to guest, more than the guest's buffer: the device stops at its credit until
    // the guest says it consumed data.
    let data = pattern(200 << 10, 7);
    let writer = {
        let mut h = host.try_clone().unwrap();
        let d = data.clone();
        std::thread::spawn(move || h.write_all(&d).unwrap())
    };
    let mut got = Vec::new();
    let mut fwd = 0u32;
    while got.len() < data.len() {
        let (p, payload) = g.recv(&mut m);
        if p.op == OP_CREDIT_REQUEST {
            // Out of credit: the guest application reads everything and says so.
            fwd = got.len() as u32;
            let upd = Header {
                fwd_cnt: fwd,
                ..hdr(OP_CREDIT_UPDATE, 1234, local)
            };
            g.send(&mut m, &upd, &[]);
            continue;
        }
        assert_eq!(
            (p.op, p.src_port, p.dst_port),
            (OP_RW, local, 1234),
            "{p:?}"
        );
        got.extend_from_slice(&payload);
        assert!(got.len() as u32 - fwd <= GUEST_BUF, "credit overrun");
        if got.len() as u32 - fwd >= GUEST_BUF / 2 {
            // The guest application read everything so far.
            fwd = got.len() as u32;
            let upd = Header {
                fwd_cnt: fwd,
                ..hdr(OP_CREDIT_UPDATE, 1234, local)
            };
            g.send(&mut m, &upd, &[]);
        }
    }
    writer.join().unwrap();
    assert!(got == data, "host-to-guest bytes differ");

    // Guest to host, header and payload split across descriptors at odd places.
    let msg = pattern(3000, 9);
    g.send_split(
        &mut m,
        &rw(1234, local, msg.len(), fwd),
        &msg,
        &[10, 44, 45, 1000],
    );
    assert_eq!(read_exact(&mut host, msg.len()), msg);

    // The host closes: the guest is told the host sends no more, and resets.
    drop(host);
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    g.send(&mut m, &hdr(OP_RST, 1234, local), &[]);
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "errors"), 0);
    assert_eq!(counter(&dev, "rx_bytes"), data.len() as u64);
    assert_eq!(counter(&dev, "tx_bytes"), msg.len() as u64);
}

#[test]
fn host_connect_to_a_port_nobody_listens_on_is_closed() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 99\n").unwrap();
    let (req, _) = g.recv(&mut m);
    assert_eq!(req.op, OP_REQUEST);
    g.send(&mut m, &hdr(OP_RST, 99, req.src_port), &[]);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0, "EOF");
    assert_eq!(m.open_connections(), 0);
}

#[test]
fn guest_initiated_stream_both_ways_then_guest_close() {
    let (_dir, uds, dev, mut m, mut g) = setup();
    let mut host = guest_connect(&uds, &mut m, &mut g, 777);
    let msg = pattern(70_000, 1);
    g.send_split(&mut m, &rw(777, 5000, 60_000, 0), &msg[..60_000], &[44]);
    g.send(&mut m, &rw(777, 5000, 10_000, 0), &msg[60_000..]);
    assert_eq!(read_exact(&mut host, msg.len()), msg);
    host.write_all(b"pong").unwrap();
    let (p, payload) = g.recv(&mut m);
    assert_eq!((p.op, payload.as_slice()), (OP_RW, &b"pong"[..]));
    assert_eq!(p.fwd_cnt, 70_000, "our fwd_cnt counts what the host took");

    let shut = Header {
        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
        ..hdr(OP_SHUTDOWN, 777, 5000)
    };
    g.send(&mut m, &shut, &[]);
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.src_port, p.dst_port), (OP_RST, 5000, 777));
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0, "EOF");
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "errors"), 0);
}

#[test]
fn guest_half_close_reaches_the_host_and_data_still_flows_back() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let mut host = guest_connect(&uds, &mut m, &mut g, 779);
    g.send(&mut m, &rw(779, 5000, 3, 0), b"req");
    let shut = Header {
        flags: SHUTDOWN_SEND,
        ..hdr(OP_SHUTDOWN, 779, 5000)
    };
    g.send(&mut m, &shut, &[]);
    let mut all = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"req", "data, then EOF");
    host.write_all(b"answer").unwrap();
    let (p, payload) = g.recv(&mut m);
    assert_eq!((p.op, payload.as_slice()), (OP_RW, &b"answer"[..]));
    assert_eq!(m.open_connections(), 1);
}

/// The rig found this: a host client that sends its request, half-closes (shutdown of
/// its write side) and reads the answer. The guest must be told only that the host sends
/// no more, so it can still answer.
#[test]
fn host_half_close_leaves_the_guest_free_to_answer() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let (mut host, local) = host_connect(&uds, &mut m, &mut g, 1235);
    host.write_all(b"request").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (p, payload) = g.recv(&mut m);
    assert_eq!((p.op, payload.as_slice()), (OP_RW, &b"request"[..]));
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.flags), (OP_SHUTDOWN, SHUTDOWN_SEND), "{p:?}");
    // The guest answers after the host's EOF; the host reads it.
    g.send(&mut m, &rw(1235, local, 6, 0), b"answer");
    assert_eq!(read_exact(&mut host, 6), b"answer");
    assert_eq!(m.open_connections(), 1);
    // The guest closes: both directions are done, the host sees EOF.
    let shut = Header {
        flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
        ..hdr(OP_SHUTDOWN, 1235, local)
    };
    g.send(&mut m, &shut, &[]);
    let (p, _) = g.recv(&mut m);
    assert_eq!(p.op, OP_RST);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0, "EOF");
    assert_eq!(m.open_connections(), 0);
}

#[test]
fn a_handshake_the_guest_never_finishes_times_out() {
    let (_dir, uds, _dev, mut m, mut g) = setup();
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    let (req, _) = g.recv(&mut m);
    assert_eq!(req.op, OP_REQUEST);
    // The guest says nothing; the timer fires after TIMEOUT.
    let start = Instant::now();
    let (p, _) = g.recv(&mut m);
    assert_eq!((p.op, p.src_port, p.dst_port), (OP_RST, req.src_port, 5));
    assert!(start.elapsed() >= TIMEOUT - Duration::from_millis(100));
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut [0u8; 16]).unwrap(), 0, "EOF");
    assert_eq!(m.open_connections(), 0);
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let (_dir, _uds, dev, mut m, mut g) = setup();
    g.send(&mut m, &hdr(OP_REQUEST, 778, 6000), &[]);
    let (p, _) = g.recv(&mut m);
    assert_eq!(
        (p.op, p.src_cid, p.dst_cid, p.src_port, p.dst_port),
        (OP_RST, HOST_CID, GUEST_CID, 6000, 778)
    );
    assert_eq!(m.open_connections(), 0);
    assert_eq!(counter(&dev, "connections"), 0);
}

/// The device on its worker thread: host readiness wakes it, queue kicks drive it.
#[test]
fn on_the_worker_thread() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("w.sock");
    let mut dev = VirtioVsock::new(GUEST_CID, &uds).unwrap();
    let mut g = Guest::new();
    let kicks: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let evq = Ring::new(0x5_0000, 0xc0_0000).queue(&g.mem);
    // (Laying a ring out resets it: post buffers after.)
    let queues = [g.rx.queue(&g.mem), g.tx.queue(&g.mem), evq]
        .into_iter()
        .zip(&kicks)
        .map(|(queue, k)| {
            Some(ActiveQueue {
                queue,
                kick: k.try_clone().unwrap(),
                interrupt: irq.clone(),
            })
        })
        .collect();
    let needs_reset = NeedsReset::new();
    dev.activate(Activation {
        mem: g.mem.clone(),
        acked_features: dev.features(),
        queues,
        config_interrupt: irq.clone(),
        needs_reset: needs_reset.clone(),
    })
    .unwrap();
    g.refill(8);
    kicks[RX_QUEUE].write(1).unwrap();
    let wait_used = |g: &mut Guest| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = g.try_recv() {
                return p;
            }
            assert!(Instant::now() < deadline, "no packet from the worker");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 42\nearly").unwrap();
    let (req, _) = wait_used(&mut g);
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 42));
    let post_tx = |g: &mut Guest, h: &Header, payload: &[u8]| {
        let mut bytes = h.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let at = g.tx.alloc(bytes.len() as u64);
        g.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        g.tx.post(&g.mem.clone(), &[(at, bytes.len() as u32, 0)]);
        kicks[TX_QUEUE].write(1).unwrap();
    };
    post_tx(&mut g, &hdr(OP_RESPONSE, 42, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    // What the host sent after its CONNECT line is the stream's first bytes.
    let (p, payload) = wait_used(&mut g);
    assert_eq!((p.op, payload.as_slice()), (OP_RW, &b"early"[..]));
    host.write_all(b"more").unwrap();
    let (_, payload) = wait_used(&mut g);
    assert_eq!(payload, b"more");
    post_tx(&mut g, &rw(42, req.src_port, 5, 0), b"reply");
    assert_eq!(read_exact(&mut host, 5), b"reply");
    // A reply to a transmitted packet reaches rx without an rx kick.
    post_tx(&mut g, &rw(43, 7, 0, 0), &[]);
    assert_eq!(wait_used(&mut g).0.op, OP_RST);
    dev.reset();
    assert!(!needs_reset.is_set());
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        host.read(&mut [0u8; 16]).unwrap(),
        0,
        "reset closes connections"
    );
}
