//! A Linux TAP interface opened through `/dev/net/tun`, with virtio-net headers.
//!
//! Hand-written on purpose: rust-vmm publishes no TAP crate (Firecracker, Cloud
//! Hypervisor and crosvm each keep their own inside their trees), and the general
//! TUN/TAP crates on crates.io (tun-rs, tun-tap, ...) are built for VPN-style use, with
//! their own async runtimes and GSO/GRO layers, and either lack or hide the three calls a
//! virtio-net backend needs: `IFF_VNET_HDR`, `TUNSETVNETHDRSZ` and `TUNSETOFFLOAD`. What
//! is needed is four ioctls, so they live here; this is the one file of the network device
//! with `unsafe`.
//!
//! Every read and write on a [`Tap`] carries one Ethernet frame preceded by the 12-byte
//! virtio 1.x network header ([`VNET_HDR_LEN`]), so frames pass between the guest's rings
//! and the kernel without translation. The descriptor is nonblocking.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

/// The virtio 1.x network header (`virtio_net_hdr_v1`, `num_buffers` included) that
/// precedes every frame read from or written to the TAP.
pub const VNET_HDR_LEN: usize = 12;

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_NAME_LEN: usize = 15;

/// `TUNSETOFFLOAD` flag: the guest takes frames with partial checksums.
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
/// `TUNSETOFFLOAD` flag: the guest takes TCPv4 segmentation-offload frames.
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
/// `TUNSETOFFLOAD` flag: the guest takes TCPv6 segmentation-offload frames.
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
/// `TUNSETOFFLOAD` flag: the guest takes TSO frames with ECN.
pub const TUN_F_TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
/// `TUNSETOFFLOAD` flag: the guest takes UDP fragmentation-offload frames.
pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;

const TUN_PATH: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF reads and writes it: the name, then the flags (a `short`)
/// at the start of the 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Open the TAP interface `name`, creating it when it does not exist (a created
    /// interface is not persistent: it goes away when the last descriptor closes).
    /// Creating or attaching needs CAP_NET_ADMIN (or ownership of a persistent TAP).
    ///
    /// Errors: a name Linux would refuse (empty, longer than [`MAX_NAME_LEN`] bytes,
    /// "." or "..", containing '/', ':', NUL or whitespace) is `InvalidInput`; a missing
    /// `/dev/net/tun`, a missing permission, an interface that exists but is not a TAP,
    /// or one another process holds, each get a message saying so.
    pub fn open_or_create(name: &str) -> io::Result<Tap> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| explain(e, name, "opening /dev/net/tun"))?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _union_rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes), which `IfReq`
        // matches in size and layout; `req` lives across the call and the descriptor is
        // ours.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        if ret < 0 {
            return Err(explain(io::Error::last_os_error(), name, "TUNSETIFF"));
        }
        // The kernel writes back the interface's name (NUL-terminated, at most 15 bytes).
        let len = req.name.iter().position(|b| *b == 0).unwrap_or(0);
        let actual = String::from_utf8_lossy(&req.name[..len]).into_owned();
        let tap = Tap {
            file,
            name: if actual.is_empty() {
                name.to_owned()
            } else {
                actual
            },
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points at a
        // live local; the descriptor is ours.
        let ret = unsafe {
            libc::ioctl(
                tap.fd(),
                libc::TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        };
        if ret < 0 {
            return Err(explain(io::Error::last_os_error(), name, "TUNSETVNETHDRSZ"));
        }
        Ok(tap)
    }

    /// A stand-in for a TAP over `file`, any nonblocking descriptor that keeps frame
    /// boundaries (one end of a datagram socket pair: the fuzz target's backend). No
    /// ioctl is made; [`Tap::set_offload`] on it fails.
    pub(super) fn from_file(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.to_owned(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tell the kernel which offloads the guest accepts on frames it receives
    /// ([`TUN_F_CSUM`], [`TUN_F_TSO4`], ...): it then hands over partially checksummed
    /// and segmentation-offload frames instead of finishing them first. TSO flags
    /// without [`TUN_F_CSUM`] are refused by the kernel (`InvalidInput`).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (no memory is accessed); the
        // descriptor is ours.
        let ret = unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read one frame (header first) into `buf`; `WouldBlock` when none is waiting. A
    /// frame longer than `buf` is cut short or refused by the kernel, and lost either way.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one frame (header first); `WouldBlock` when the interface's queue is full.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

/// Refuse what Linux's `dev_valid_name` refuses, before any system call.
fn check_name(name: &str) -> io::Result<()> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TAP device name {name:?} {why}"),
        )),
        None => Ok(()),
    }
}

/// Turn the errno of `step` into a message that says what to do about it.
fn explain(e: io::Error, name: &str, step: &str) -> io::Error {
    let msg = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "creating or attaching TAP device {name} needs CAP_NET_ADMIN \
             (run as root or give kiln cap_net_admin): {step}: {e}"
        ),
        Some(libc::ENOENT) | Some(libc::ENODEV) if step.starts_with("opening") => {
            format!("/dev/net/tun missing (load the tun module): {e}")
        }
        Some(libc::EBUSY) => {
            format!("TAP device {name} is in use (another process has it open): {e}")
        }
        Some(libc::EINVAL) if step == "TUNSETIFF" => {
            format!("{name} exists but is not a single-queue TAP device kiln can attach to: {e}")
        }
        _ => format!("TAP device {name}: {step}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for name in [
            "",
            "0123456789abcdef",
            "a/b",
            "a:b",
            "a b",
            ".",
            "..",
            "a\0",
        ] {
            let e = Tap::open_or_create(name).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
            assert!(e.to_string().contains("TAP device name"), "{e}");
        }
        assert!(check_name("0123456789abcde").is_ok());
    }

    #[test]
    fn errors_say_what_to_do() {
        let err = |errno, step| explain(io::Error::from_raw_os_error(errno), "kt0", step);
        let e = err(libc::EPERM, "TUNSETIFF");
        assert!(
            e.to_string().starts_with(
                "creating or attaching TAP device kt0 needs CAP_NET_ADMIN \
                 (run as root or give kiln cap_net_admin)"
            ),
            "{e}"
        );
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let e = err(libc::EACCES, "opening /dev/net/tun");
        assert!(e.to_string().contains("needs CAP_NET_ADMIN"), "{e}");
        let e = err(libc::ENOENT, "opening /dev/net/tun");
        assert!(
            e.to_string()
                .starts_with("/dev/net/tun missing (load the tun module)"),
            "{e}"
        );
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(err(libc::EBUSY, "TUNSETIFF").to_string().contains("in use"));
        assert!(err(libc::EINVAL, "TUNSETIFF")
            .to_string()
            .contains("not a single-queue TAP"));
    }
}
