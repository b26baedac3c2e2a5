//! The virtio-vsock fuzz target's body: `run_one` turns arbitrary bytes into the transmit
//! or the receive queue, guest memory and host-side traffic, and runs the device's
//! [`Muxer`] through the shared harness's rounds ([`crate::fuzz`]).
//!
//! The host side is real: the device listens on a Unix socket in a fresh directory under
//! the system's temporary directory (removed afterwards).
//!
//! Input: the shared [`Header`] (flags: [`RX`] drives the receive queue, else the transmit
//! queue; [`LISTEN`] puts a host listener on `<socket>_5000`, so guest REQUESTs to port
//! [`LISTEN_PORT`] connect), the host data ([`Header::encode_with_host`]: host connections,
//! each a u8 length and that many bytes written to a new connection to the device's socket,
//! before the first round: `CONNECT <port>\n` lines and whatever follows; at most
//! [`MAX_HOST_CONNECTIONS`]), then the
//! guest-memory image. Guest packets, their headers and payloads split across descriptors
//! in any way, lengths, ops, CIDs and ports are whatever the image holds.
//!
//! Checked beyond the ring invariants: transmit chains are used with length 0 and each is
//! counted as one packet or one error; on receive a chain is used with length 0 (it could
//! not take a packet) or with a packet's length, at least a header and never more than
//! the chain's writable bytes, and every packet given to the guest (read back when no two
//! buffers the call filled overlap) comes from the host's CID to the guest's,
//! with the stream type and the header's length matching; the packets counted match the
//! chains that got one.

use super::muxer::Muxer;
use super::packet::{Header as Packet, HDR_LEN, TYPE_STREAM};
use super::{VirtioVsock, HOST_CID, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::fuzz::{drive, guest_memory, Call, Driven, Header, Rules, Target};
use crate::worker::{Drained, QueueService};
use crate::{GuestMemory, VirtioDevice};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

/// [`Header::flags`] bit: drive the receive queue.
pub const RX: u8 = 1;
/// [`Header::flags`] bit: a host program listens on `<socket>_`[`LISTEN_PORT`].
pub const LISTEN: u8 = 2;
/// The host port with a listener when [`LISTEN`] is set.
pub const LISTEN_PORT: u32 = 5000;
/// The guest's CID.
pub const GUEST_CID: u64 = 3;
/// Most host connections one input makes (the rest of the host data is ignored).
pub const MAX_HOST_CONNECTIONS: usize = 16;

/// Run one input; panics when an invariant fails (see the module documentation).
pub fn run_one(data: &[u8]) {
    run(data);
}

/// A directory of its own for each run, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kiln-vsock-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz: a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Host data as connections: each a u8 length and that many bytes.
pub fn connections(mut host: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [n, rest @ ..] = host {
        let n = usize::from(*n).min(rest.len());
        out.push(&rest[..n]);
        host = &rest[n..];
    }
    out
}

/// Whether any two of these writable buffers share bytes.
fn overlapping(descs: &[(u64, u32, bool)]) -> bool {
    let mut spans: Vec<(u64, u64)> = descs
        .iter()
        .filter(|d| d.2 && d.1 > 0)
        .map(|d| (d.0, d.0.saturating_add(u64::from(d.1))))
        .collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

/// `run_one`, reporting what the harness saw.
pub fn run(data: &[u8]) -> Driven {
    let (h, host, image) = Header::decode_with_host(data);
    let mem = guest_memory(h.layout(), image);
    let scratch = Scratch::new();
    let uds = scratch.0.join("v.sock");
    let dev = VirtioVsock::new(GUEST_CID, &uds).expect("fuzz: the device's socket");
    let muxer = dev.muxer().expect("fuzz: the muxer");
    let listener = h.flag(LISTEN).then(|| {
        let mut p = uds.as_os_str().to_owned();
        p.push(format!("_{LISTEN_PORT}"));
        let l = UnixListener::bind(PathBuf::from(p)).expect("fuzz: a host listener");
        l.set_nonblocking(true).expect("fuzz: nonblocking listener");
        l
    });
    let mut clients = Vec::new();
    // A Unix connect blocks once the listener's backlog is full, and the device accepts
    // only in the rounds: stay well below the backlog.
    for bytes in connections(host).into_iter().take(MAX_HOST_CONNECTIONS) {
        let Ok(mut s) = UnixStream::connect(&uds) else {
            break;
        };
        let _ = s.set_nonblocking(true);
        let _ = s.write(bytes);
        clients.push(s);
    }
    let mut target = Vsock {
        muxer,
        rx: h.flag(RX),
        mem: mem.clone(),
        dev: &dev,
        listener,
        accepted: Vec::new(),
        clients,
        used: 0,
        delivered: 0,
        all_clean: true,
    };
    let rules = Rules {
        budget: None,
        caught_up: false,
        taken_on_break: 1,
        writes_unused_chains: false,
        remembers_broken: false,
    };
    drive(&h, &mem, QUEUE_SIZE, rules, &mut target)
}

struct Vsock<'d> {
    muxer: Muxer,
    rx: bool,
    mem: GuestMemory,
    dev: &'d VirtioVsock,
    listener: Option<UnixListener>,
    /// Host ends of connections the guest made, drained each round.
    accepted: Vec<UnixStream>,
    /// Host connections made from the host data (kept open for the run).
    clients: Vec<UnixStream>,
    /// Used elements seen so far.
    used: u64,
    /// Of those, receive chains that got a packet (a used length other than 0).
    delivered: u64,
    /// Every call so far was clean.
    all_clean: bool,
}

impl Vsock<'_> {
    fn counter(&self, name: &str) -> u64 {
        self.dev
            .counters()
            .into_iter()
            .find(|c| c.0 == name)
            .map_or(0, |c| c.1)
    }

    /// The first [`HDR_LEN`] bytes of the chain's writable buffers, in order.
    fn written_header(&self, descs: &[(u64, u32, bool)]) -> Option<Packet> {
        let mut raw = [0u8; HDR_LEN];
        let mut at = 0;
        for &(addr, len, _) in descs.iter().filter(|d| d.2) {
            let n = (HDR_LEN - at).min(len as usize);
            self.mem
                .read_slice(&mut raw[at..at + n], GuestAddress(addr))
                .ok()?;
            at += n;
            if at == HDR_LEN {
                return Some(Packet::from_bytes(&raw));
            }
        }
        None
    }
}

impl Target for Vsock<'_> {
    fn serve(&mut self, mem: &GuestMemory, queue: &mut Queue) -> Drained {
        let index = if self.rx { RX_QUEUE } else { TX_QUEUE };
        let out = self.muxer.serve(index, mem, queue);
        // The other queues are not driven here: their wake-ups are dropped.
        let _ = self.muxer.take_wakeups();
        out
    }

    fn round(&mut self, _index: usize) {
        // Host side: take the guest's connections, read what they carry, let the muxer
        // see host readiness (CONNECT lines, data, EOFs).
        if let Some(l) = &self.listener {
            while let Ok((s, _)) = l.accept() {
                let _ = s.set_nonblocking(true);
                self.accepted.push(s);
            }
        }
        let mut buf = [0u8; 4096];
        for s in self.accepted.iter_mut().chain(self.clients.iter_mut()) {
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        self.muxer.host_events(0);
    }

    fn check(&mut self, call: &Call) {
        self.all_clean &= call.clean;
        self.used += call.used.len() as u64;
        let all: Vec<(u64, u32, bool)> = call
            .used
            .iter()
            .filter(|u| u.len > 0)
            .filter_map(|u| u.chain.as_ref())
            .flat_map(|c| c.descs.iter().copied())
            .collect();
        let shared = overlapping(&all);
        for u in &call.used {
            let Some(chain) = &u.chain else { continue };
            if !self.rx {
                assert_eq!(u.len, 0, "a transmit chain used with a length");
                continue;
            }
            if u.len == 0 {
                // A chain that could not take the packet (no room, bad buffers): failed.
                continue;
            }
            self.delivered += 1;
            assert!(
                u.len as usize >= HDR_LEN && u64::from(u.len) <= chain.writable(),
                "used length {} for {} writable bytes",
                u.len,
                chain.writable()
            );
            if shared {
                // Later packets (or pieces) overwrote earlier ones: nothing to read back.
                continue;
            }
            let p = self
                .written_header(&chain.descs)
                .expect("fuzz: the packet header in guest memory");
            assert_eq!(
                (p.src_cid, p.dst_cid, p.type_),
                (HOST_CID, GUEST_CID, TYPE_STREAM),
                "{p:?}"
            );
            assert_eq!(u.len as usize, HDR_LEN + p.len as usize, "{p:?}");
        }
        if !call.out.broken && self.all_clean {
            let (packets, errors) = if self.rx {
                (self.counter("rx_packets"), 0)
            } else {
                (self.counter("tx_packets"), self.counter("errors"))
            };
            if self.rx {
                assert_eq!(packets, self.delivered, "packets counted");
            } else {
                assert!(
                    packets + errors >= self.used,
                    "{packets} + {errors} < {}",
                    self.used
                );
            }
        }
    }
}
