//! One stream connection between a guest port and a host Unix socket: its state, the
//! credit accounting in both directions (virtio 1.2 §5.10.6.3) and the bounded buffer of
//! guest data the host socket has not taken yet.

use super::packet::{MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

/// The receive buffer each connection advertises to the guest: the most guest data it
/// holds for a host socket that does not keep up.
pub const BUF_ALLOC: u32 = 256 << 10;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host connected; REQUEST sent (or to send) to the guest, awaiting RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
}

/// Control packets waiting for a receive buffer.
#[derive(Debug, Default, Clone, Copy)]
pub struct PendingRx {
    pub request: bool,
    pub response: bool,
    pub shutdown: bool,
    pub credit_update: bool,
    pub credit_request: bool,
}

/// What a write of guest data to the host socket did.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Some or all bytes went; the rest (if any) waits for the socket to be writable.
    Ok,
    /// The socket failed (the host closed it): the connection must be reset.
    Failed,
}

pub struct Conn {
    pub stream: UnixStream,
    /// Kiln's port (host side, CID 2).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    pub state: State,
    /// The host connected to Kiln's listener (the local port is one Kiln chose).
    pub host_initiated: bool,
    pub pending: PendingRx,
    /// In the muxer's round-robin of connections with something for the guest.
    pub in_rxq: bool,
    /// The host socket may have data (or EOF) to read: set by readiness, cleared by EAGAIN.
    pub host_readable: bool,
    /// The host socket said EOF (or failed); nothing more is read from it.
    pub host_eof: bool,
    /// The guest said it will receive no more.
    pub peer_shut_rcv: bool,
    /// The guest said it will send no more.
    pub peer_shut_send: bool,
    /// When the connection is killed if it has not finished its handshake or shutdown.
    pub deadline: Option<Instant>,
    /// We asked the guest for credit and have not heard back.
    pub credit_asked: bool,
    // Credit: ours.
    /// Guest bytes written to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_sent: Wrapping<u32>,
    /// Guest bytes the host socket has not taken (at most BUF_ALLOC).
    to_host: VecDeque<u8>,
    // Credit: the guest's.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
}

impl Conn {
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Conn {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            host_initiated: state == State::LocalInit,
            pending: PendingRx::default(),
            in_rxq: false,
            host_readable: true,
            host_eof: false,
            peer_shut_rcv: false,
            peer_shut_send: false,
            deadline: None,
            credit_asked: false,
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            to_host: VecDeque::new(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
        }
    }

    /// Take the guest's view of its receive buffer from any packet it sent. A change
    /// answers our credit request (an unchanged one does not, or a guest with no room
    /// would have us ask again for every packet it sends).
    pub fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        if (buf_alloc, fwd_cnt) != (self.peer_buf_alloc, self.peer_fwd_cnt.0) {
            self.credit_asked = false;
        }
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub fn credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Our `fwd_cnt` for a header going to the guest (the guest now knows it).
    pub fn fwd_cnt_for_header(&mut self) -> u32 {
        self.last_fwd_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        self.fwd_cnt.0
    }

    /// Bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt += n;
    }

    /// Guest data for the host. `false` when it would overrun the buffer we advertised
    /// (the guest ignored our credit).
    pub fn queue_to_host(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return false;
        }
        self.to_host.extend(data);
        true
    }

    /// Guest bytes still waiting for the host socket.
    pub fn to_host_len(&self) -> usize {
        self.to_host.len()
    }

    /// Write what the host socket takes.
    pub fn flush(&mut self) -> Flushed {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Flushed::Failed,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += n as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Flushed::Failed,
            }
        }
        if self.to_host.is_empty() && self.peer_shut_send {
            // Best effort: the host may already be gone, which its EOF says later.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        // Tell the guest about the space we freed before its view of our buffer runs
        // below one full packet (it does not ask on its own).
        let guest_view_free = BUF_ALLOC.saturating_sub(
            (self.fwd_cnt + Wrapping(self.to_host.len() as u32) - self.last_fwd_sent).0,
        );
        if self.fwd_cnt != self.last_fwd_sent && (guest_view_free as usize) < MAX_PAYLOAD {
            self.pending.credit_update = true;
        }
        Flushed::Ok
    }

    /// Read host data for the guest into `buf` (sized by the caller to the guest's
    /// credit and buffer). `Ok(0)` is EOF; `WouldBlock` clears `host_readable`.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return Err(e);
                }
                r => return r,
            }
        }
    }

    /// Whether data may flow to the guest now.
    pub fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.credit() > 0
    }

    /// Whether the connection has something for the receive queue.
    pub fn has_rx_work(&self) -> bool {
        let p = &self.pending;
        p.request
            || p.response
            || p.shutdown
            || p.credit_update
            || p.credit_request
            || self.can_send_data()
    }

    /// Apply a guest SHUTDOWN's flags. Returns true when both directions are now shut and
    /// nothing is left for the host: the connection is done.
    pub fn peer_shutdown(&mut self, flags: u32) -> bool {
        self.peer_shut_rcv |= flags & SHUTDOWN_RCV != 0;
        self.peer_shut_send |= flags & SHUTDOWN_SEND != 0;
        self.done()
    }

    /// Both directions shut by the guest and its data delivered.
    pub fn done(&self) -> bool {
        self.peer_shut_rcv && self.peer_shut_send && self.to_host.is_empty()
    }
}

/// Connect to the Unix socket at `path` without waiting: a listener whose backlog is full
/// (a host program that does not accept) is a failure (`WouldBlock`), not a stalled
/// device thread, which `UnixStream::connect` would be.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns; OwnedFd closes it once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and `len` does not
    // exceed its size; the descriptor is open (owned by `fd`).
    let r = unsafe {
        libc::connect(
            std::os::unix::io::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}
