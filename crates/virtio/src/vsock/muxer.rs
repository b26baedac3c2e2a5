//! The device thread's side of vsock: [`Muxer`] owns every connection and the host
//! listener, turns guest packets (transmit queue) into host socket traffic and host
//! events into packets for the receive queue.
//!
//! Host readiness is collected in one inner epoll (the listener, every connection socket,
//! a timer for handshake and shutdown deadlines), all edge-triggered; the worker watches
//! that epoll's descriptor, so readiness calls [`QueueService::fd_ready`] and then serves
//! the receive queue. Packets for the guest come from a bounded queue of resets for
//! connections that no longer exist, then from a round robin of connections with pending
//! control packets or readable data and credit. Transmit processing stops while the reset
//! queue is full and resumes when the receive queue drains it.

use super::conn::{connect_nonblocking, Conn, Flushed, State, BUF_ALLOC};
use super::packet::*;
use super::{
    Counters, CONNECT_LINE_MAX, HOST_CID, LOCAL_PORT_BASE, MAX_CONNS, RESET_QUEUE_CAP, RX_QUEUE,
    TIMEOUT, TX_QUEUE,
};
use crate::worker::{drain, next_chain, Drained, QueueService};
use crate::GuestMemory;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

/// Guest packets handled per transmit pass.
const TX_BUDGET: usize = 256;
/// Packets given to the guest per receive pass.
const RX_BUDGET: usize = 256;

/// Epoll data of the listener and the timer; connections count from FIRST_ID.
const LISTENER: u64 = 0;
const TIMER: u64 = 1;
const FIRST_ID: u64 = 2;

/// A host connection still sending its `CONNECT <port>\n` line.
struct Connecting {
    stream: UnixStream,
    line: Vec<u8>,
}

/// All of a vsock device's connections.
pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Arc<Epoll>,
    timer: TimerFd,
    counters: Arc<Counters>,
    next_id: u64,
    conns: HashMap<u64, Conn>,
    /// (local port, guest port) -> connection id.
    ports: HashMap<(u32, u32), u64>,
    /// Local ports of host-initiated connections in use.
    local_ports: HashSet<u32>,
    next_local_port: u32,
    connecting: HashMap<u64, Connecting>,
    /// Connections with something for the guest, in turn.
    rxq: VecDeque<u64>,
    /// Resets for connections that are gone (or never were).
    resets: VecDeque<Header>,
    tx_stalled: bool,
    wake: u64,
    scratch: Vec<u8>,
    payload: Vec<u8>,
}

impl Muxer {
    /// A muxer for the guest `cid`, accepting host connections on `listener` (bound at
    /// `uds`, non-blocking) and connecting to `uds`_PORT for the guest.
    pub fn new(
        cid: u64,
        uds: PathBuf,
        listener: UnixListener,
        counters: Arc<Counters>,
    ) -> io::Result<Muxer> {
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        listener.set_nonblocking(true)?;
        let et = EventSet::IN | EventSet::EDGE_TRIGGERED;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(et, LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(et, TIMER),
        )?;
        Ok(Muxer {
            cid,
            uds,
            listener,
            epoll: Arc::new(epoll),
            timer,
            counters,
            next_id: FIRST_ID,
            conns: HashMap::new(),
            ports: HashMap::new(),
            local_ports: HashSet::new(),
            next_local_port: LOCAL_PORT_BASE,
            connecting: HashMap::new(),
            rxq: VecDeque::new(),
            resets: VecDeque::new(),
            tx_stalled: false,
            wake: 0,
            scratch: vec![0; MAX_PAYLOAD],
            payload: Vec::new(),
        })
    }

    /// The inner epoll, for the worker to watch.
    pub fn epoll(&self) -> Arc<Epoll> {
        self.epoll.clone()
    }

    /// Connections open (host-initiated ones still sending CONNECT included).
    pub fn open_connections(&self) -> usize {
        self.conns.len() + self.connecting.len()
    }

    fn error(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Handle host readiness, waiting up to `timeout_ms` for the first event (0: only
    /// what is ready). Returns the events handled.
    pub fn host_events(&mut self, timeout_ms: i32) -> usize {
        let mut events = [EpollEvent::default(); 64];
        let mut total = 0;
        let mut timeout = timeout_ms;
        loop {
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for ev in &events[..n] {
                self.host_event(ev.data(), ev.event_set());
            }
            total += n;
            if n < events.len() {
                break;
            }
            timeout = 0;
        }
        total
    }

    fn host_event(&mut self, id: u64, set: EventSet) {
        match id {
            LISTENER => self.accept(),
            TIMER => {
                // Disarming also clears the expiry count (and so the readiness).
                let _ = self.timer.clear();
                self.expire();
            }
            _ if self.connecting.contains_key(&id) => self.read_connect_line(id),
            _ => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                let gone = EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
                if set.intersects(EventSet::IN | gone) {
                    conn.host_readable = true;
                }
                if conn.to_host_len() > 0 && set.intersects(EventSet::OUT | gone) {
                    self.flush(id);
                }
                self.enqueue(id);
            }
        }
    }

    fn register(&mut self, stream: &UnixStream) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(set, id),
        )?;
        Ok(id)
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.open_connections() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                self.error();
                continue;
            }
            let Ok(id) = self.register(&stream) else {
                self.error();
                continue;
            };
            self.connecting.insert(
                id,
                Connecting {
                    stream,
                    line: Vec::new(),
                },
            );
            self.read_connect_line(id);
        }
    }

    /// Read the CONNECT line a byte at a time (what follows it is the connection's data).
    fn read_connect_line(&mut self, id: u64) {
        let Some(c) = self.connecting.get_mut(&id) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match c.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&c.line),
                Ok(1) if c.line.len() < CONNECT_LINE_MAX => c.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EOF, an error or a line too long.
                _ => break None,
            }
        };
        let Some(c) = self.connecting.remove(&id) else {
            return;
        };
        let Some(port) = port else {
            self.error();
            return;
        };
        let local = self.fresh_local_port();
        let mut conn = Conn::new(c.stream, local, port, State::LocalInit);
        conn.pending.request = true;
        conn.deadline = Some(Instant::now() + TIMEOUT);
        self.local_ports.insert(local);
        self.ports.insert((local, port), id);
        self.conns.insert(id, conn);
        self.rearm_timer();
        self.enqueue(id);
    }

    fn fresh_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(LOCAL_PORT_BASE);
            if !self.local_ports.contains(&p) {
                return p;
            }
        }
    }

    /// Reset connections whose handshake or shutdown did not finish in time.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.kill(id, true);
        }
        self.rearm_timer();
    }

    fn rearm_timer(&mut self) {
        let next = self.conns.values().filter_map(|c| c.deadline).min();
        let _ = match next {
            None => self.timer.clear(),
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now());
                self.timer
                    .reset(wait.max(std::time::Duration::from_millis(1)), None)
            }
        };
    }

    /// Drop a connection (closing its host socket), telling the guest with a reset when
    /// `rst`.
    fn kill(&mut self, id: u64, rst: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            conn.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        self.ports.remove(&(conn.local_port, conn.peer_port));
        if conn.host_initiated {
            self.local_ports.remove(&conn.local_port);
        }
        if rst {
            self.push_reset(conn.local_port, conn.peer_port);
        }
    }

    fn push_reset(&mut self, local_port: u32, peer_port: u32) {
        if self.resets.len() >= RESET_QUEUE_CAP + MAX_CONNS {
            self.error();
            return;
        }
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        });
    }

    /// Put a connection in the receive round robin when it has something for the guest.
    fn enqueue(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.state == State::Established
            && conn.host_readable
            && !conn.host_eof
            && !conn.peer_shut_rcv
            && conn.credit() == 0
            && !conn.credit_asked
        {
            conn.pending.credit_request = true;
            conn.credit_asked = true;
        }
        if !conn.in_rxq && conn.has_rx_work() {
            conn.in_rxq = true;
            self.rxq.push_back(id);
        }
    }

    fn flush(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.flush() == Flushed::Failed {
            self.kill(id, true);
            return;
        }
        if conn.done() {
            self.kill(id, true);
        }
    }

    /// One packet from the guest.
    fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        self.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .tx_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            self.error();
            return;
        }
        let Some(&id) = self.ports.get(&(hdr.dst_port, hdr.src_port)) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.push_reset(hdr.dst_port, hdr.src_port),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match hdr.op {
            OP_RESPONSE if conn.state == State::LocalInit => {
                conn.state = State::Established;
                conn.deadline = None;
                let ok = format!("OK {}\n", conn.local_port);
                // A fresh socket's send buffer takes a short line whole.
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    self.kill(id, true);
                    return;
                }
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                self.rearm_timer();
            }
            OP_RST => {
                self.kill(id, false);
                return;
            }
            OP_RW if conn.state == State::Established && !conn.peer_shut_send => {
                if !conn.queue_to_host(payload) {
                    // More than the credit we gave.
                    self.error();
                    self.kill(id, true);
                    return;
                }
                self.flush(id);
            }
            OP_SHUTDOWN => {
                if conn.peer_shutdown(hdr.flags) {
                    self.kill(id, true);
                    return;
                }
                if conn.peer_shut_rcv && conn.peer_shut_send {
                    // Both shut, data still on its way to the host: bounded wait.
                    conn.deadline = Some(Instant::now() + TIMEOUT);
                    self.rearm_timer();
                }
                self.flush(id);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => conn.pending.credit_update = true,
            _ => {
                // A second REQUEST, a RESPONSE or data out of turn, an unknown op.
                self.error();
                self.kill(id, true);
                return;
            }
        }
        self.enqueue(id);
    }

    /// The guest connects to host port P: connect to the Unix socket `uds`_P.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.open_connections() >= MAX_CONNS {
            self.push_reset(hdr.dst_port, hdr.src_port);
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = connect_nonblocking(Path::new(&path));
        let Ok(stream) = stream else {
            self.push_reset(hdr.dst_port, hdr.src_port);
            return;
        };
        let Ok(id) = self.register(&stream) else {
            self.error();
            self.push_reset(hdr.dst_port, hdr.src_port);
            return;
        };
        let mut conn = Conn::new(stream, hdr.dst_port, hdr.src_port, State::Established);
        conn.peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        conn.pending.response = true;
        self.ports.insert((hdr.dst_port, hdr.src_port), id);
        self.conns.insert(id, conn);
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        self.enqueue(id);
    }

    fn has_rx_work(&self) -> bool {
        !self.resets.is_empty() || !self.rxq.is_empty()
    }

    /// Serve the transmit queue: every chain is one guest packet.
    pub fn serve_tx(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        let budget = TX_BUDGET.min(RESET_QUEUE_CAP.saturating_sub(self.resets.len()));
        if budget == 0 {
            // Each packet may need a reset: wait for the receive queue to take some.
            self.tx_stalled = true;
            return Drained::default();
        }
        let mut payload = std::mem::take(&mut self.payload);
        let mut out = drain(mem, queue, budget, |chain| {
            match read_packet(mem, chain, &mut payload) {
                Ok(hdr) => self.guest_packet(&hdr, &payload),
                Err(_) => self.error(),
            }
            0
        });
        self.payload = payload;
        if out.more && budget < TX_BUDGET {
            // Stopped for room in the reset queue, not for fairness: the receive queue
            // wakes us when it has taken some.
            self.tx_stalled = true;
            out.more = false;
        }
        if self.has_rx_work() {
            self.wake |= 1 << RX_QUEUE;
        }
        out
    }

    /// Serve the receive queue: fill the guest's buffers with pending packets.
    pub fn serve_rx(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        let mut out = Drained::default();
        let mut recheck = false;
        while self.has_rx_work() {
            if out.completed >= RX_BUDGET {
                out.more = true;
                break;
            }
            let chain = match next_chain(mem, queue) {
                Ok(c) => c,
                Err(_) => {
                    out.broken = true;
                    break;
                }
            };
            let Some(chain) = chain else {
                // No buffer: ask for a kick when there is one (event-idx safe: look
                // again once after enabling; finding nothing then is a corrupt ring).
                if recheck {
                    out.broken = true;
                    break;
                }
                match queue.enable_notification(mem) {
                    Ok(true) => {
                        recheck = true;
                        continue;
                    }
                    Ok(false) => break,
                    Err(_) => {
                        out.broken = true;
                        break;
                    }
                }
            };
            recheck = false;
            let head = chain.head_index();
            let len = match Segments::of_chain(chain, true) {
                Ok(segs) if segs.total() >= HDR_LEN as u64 => match self.fill(mem, &segs) {
                    Some(len) => len,
                    None => {
                        // Nothing to send after all (a host socket had no data).
                        queue.go_to_previous_position();
                        break;
                    }
                },
                _ => {
                    self.error();
                    0
                }
            };
            if queue.add_used(mem, head, len).is_err() {
                out.broken = true;
                break;
            }
            out.completed += 1;
        }
        if out.completed > 0 {
            out.notify = queue.needs_notification(mem).unwrap_or(true);
        }
        if self.tx_stalled && self.resets.len() < RESET_QUEUE_CAP {
            self.tx_stalled = false;
            self.wake |= 1 << TX_QUEUE;
        }
        out
    }

    /// Write the next packet for the guest into `segs`; its length, or `None` when there
    /// was nothing to send.
    fn fill(&mut self, mem: &GuestMemory, segs: &Segments) -> Option<u32> {
        let cap = ((segs.total() - HDR_LEN as u64) as usize).min(MAX_PAYLOAD);
        loop {
            if let Some(hdr) = self.resets.pop_front() {
                return Some(self.put(mem, segs, &hdr, 0, None));
            }
            let id = self.rxq.pop_front()?;
            let Some((hdr, n)) = self.conn_packet(id, cap) else {
                continue;
            };
            let len = self.put(mem, segs, &hdr, n, Some(id));
            self.enqueue(id);
            return Some(len);
        }
    }

    /// Write a header and `n` bytes of `scratch` into the chain.
    fn put(
        &mut self,
        mem: &GuestMemory,
        segs: &Segments,
        hdr: &Header,
        n: usize,
        id: Option<u64>,
    ) -> u32 {
        let ok = segs.write_at(mem, 0, &hdr.to_bytes()).is_ok()
            && segs
                .write_at(mem, HDR_LEN as u64, &self.scratch[..n])
                .is_ok();
        if !ok {
            self.error();
            if let (Some(id), true) = (id, n > 0) {
                // The data is lost: the stream cannot go on.
                self.kill(id, true);
            }
            return 0;
        }
        self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rx_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        (HDR_LEN + n) as u32
    }

    /// The next packet of connection `id` (at most `cap` payload bytes, read into
    /// `scratch`), or `None` when it has nothing.
    fn conn_packet(&mut self, id: u64, cap: usize) -> Option<(Header, usize)> {
        let conn = self.conns.get_mut(&id)?;
        conn.in_rxq = false;
        let mut n = 0;
        let mut flags = 0;
        let p = &mut conn.pending;
        let op = if std::mem::take(&mut p.request) {
            OP_REQUEST
        } else if std::mem::take(&mut p.response) {
            OP_RESPONSE
        } else {
            let mut op = None;
            if conn.can_send_data() && cap > 0 {
                let want = cap.min(conn.credit() as usize);
                match conn.read_host(&mut self.scratch[..want]) {
                    Ok(0) => {
                        // Host EOF: the host sends nothing more. The guest may still
                        // send (a half-close, as a request/response client does); a host
                        // that closed completely fails the next write, which resets.
                        // When the guest has stopped sending too, the connection is
                        // over: it gets a bounded time to close.
                        conn.host_eof = true;
                        conn.pending.shutdown = true;
                        if conn.peer_shut_send {
                            conn.deadline = Some(Instant::now() + TIMEOUT);
                            self.rearm_timer();
                        }
                    }
                    Ok(k) => {
                        n = k;
                        op = Some(OP_RW);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        self.kill(id, true);
                        return None;
                    }
                }
            }
            let conn = self.conns.get_mut(&id)?;
            let p = &mut conn.pending;
            match op {
                Some(op) => op,
                None if std::mem::take(&mut p.shutdown) => {
                    flags = SHUTDOWN_SEND;
                    OP_SHUTDOWN
                }
                None if p.credit_update => OP_CREDIT_UPDATE,
                None if std::mem::take(&mut p.credit_request) => OP_CREDIT_REQUEST,
                None => return None,
            }
        };
        let conn = self.conns.get_mut(&id)?;
        conn.sent_to_guest(n as u32);
        let hdr = Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            len: n as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: conn.fwd_cnt_for_header(),
        };
        Some((hdr, n))
    }
}

/// The port of a `CONNECT <port>` line (without its newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

impl QueueService for Muxer {
    fn serve(&mut self, index: usize, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        match index {
            RX_QUEUE => self.serve_rx(mem, queue),
            TX_QUEUE => self.serve_tx(mem, queue),
            // The event queue carries only transport resets (migration), never sent.
            _ => Drained::default(),
        }
    }

    fn fd_ready(&mut self) {
        self.host_events(0);
    }

    fn take_wakeups(&mut self) -> u64 {
        std::mem::take(&mut self.wake)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"connect 1",
            b"CONNECT 1 2",
        ] {
            assert_eq!(
                parse_connect(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
