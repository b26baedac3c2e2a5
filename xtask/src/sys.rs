//! Running one child process and measuring it from outside: wall time from
//! just before the spawn to the reaping `wait4`, the exit status, and the
//! child's peak RSS (`ru_maxrss`).
//!
//! The few libc calls needed (`wait4`, `poll`, `syscall` for `pidfd_open`
//! and `pidfd_send_signal`) are declared here against the C library std
//! already links, rather than through the `libc` crate: adding a dependency
//! to xtask would change `Cargo.lock`, which `scripts/setup.sh bench` builds
//! with `--locked`. Layouts and numbers are those of x86_64 Linux, the only
//! target Kiln supports.

use std::ffi::{c_int, c_long, c_short, c_ulong};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::ptr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("xtask's process measurement is written for x86_64 Linux only");

/// `struct rusage` on x86_64 Linux: two `timeval`s, then 14 `long`s.
#[repr(C)]
struct Rusage {
    ru_utime: [c_long; 2],
    ru_stime: [c_long; 2],
    ru_maxrss: c_long,
    rest: [c_long; 13],
}

/// `struct pollfd`.
#[repr(C)]
struct PollFd {
    fd: c_int,
    events: c_short,
    revents: c_short,
}

extern "C" {
    fn wait4(pid: c_int, status: *mut c_int, options: c_int, rusage: *mut Rusage) -> c_int;
    fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
    fn syscall(num: c_long, ...) -> c_long;
}

const SYS_PIDFD_SEND_SIGNAL: c_long = 424;
const SYS_PIDFD_OPEN: c_long = 434;
const POLLIN: c_short = 1;
const SIGKILL: c_long = 9;

/// How a measured child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It outlived the timeout and was killed.
    TimedOut,
}

/// What was measured about one child process.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// From just before the spawn until the child was reaped.
    pub wall: Duration,
    /// How it ended.
    pub exit: Exit,
    /// `ru_maxrss` from `wait4`: the child's peak RSS in KiB (see [`floor_kib`]).
    pub maxrss_kib: u64,
    /// This process's VmHWM right after the spawn, in KiB. The kernel carries
    /// the parent's high-water mark into the child at exec, so `maxrss_kib`
    /// is `max(child's own peak, floor_kib)`: a value above the floor is the
    /// child's own.
    pub floor_kib: u64,
}

/// Spawn `cmd` (stdio already set up by the caller), wait for it to end
/// (killing it after `timeout`), and measure it.
pub fn run_measured(cmd: &mut Command, timeout: Duration) -> Result<Outcome> {
    // Make this process's high-water mark its current RSS, so that the floor
    // the child inherits is as low as it can be.
    fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM via /proc/self/clear_refs")?;
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    let floor_kib = self_hwm_kib();
    let pid = c_int::try_from(child.id()).context("child pid out of range")?;

    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no
    // memory is passed. `pid` is our unreaped child, so it names that process.
    let raw = unsafe { syscall(SYS_PIDFD_OPEN, c_long::from(pid), 0 as c_long) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("pidfd_open");
    }
    let raw = c_int::try_from(raw).context("pidfd out of range")?;
    // SAFETY: `raw` is a fresh fd returned by pidfd_open that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };

    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    let mut timed_out = false;
    loop {
        let mut pfd = PollFd {
            fd: pidfd.as_raw_fd(),
            events: POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, exclusively borrowed pollfd; nfds is 1.
        let n = unsafe { poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("poll on pidfd");
        }
        if n == 0 {
            timed_out = true;
            // SAFETY: pidfd_send_signal takes the pidfd, a signal number, a null
            // siginfo pointer and flags 0; the pidfd pins the child (not reaped).
            let r = unsafe {
                syscall(
                    SYS_PIDFD_SEND_SIGNAL,
                    c_long::from(pidfd.as_raw_fd()),
                    SIGKILL,
                    ptr::null::<u8>(),
                    0 as c_long,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error()).context("pidfd_send_signal");
            }
        }
        break;
    }

    let mut status: c_int = 0;
    let mut usage = Rusage {
        ru_utime: [0; 2],
        ru_stime: [0; 2],
        ru_maxrss: 0,
        rest: [0; 13],
    };
    loop {
        // SAFETY: `status` and `usage` are valid, exclusively borrowed and of
        // the types wait4 writes; `pid` is our child, reaped only here.
        let r = unsafe { wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if r < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        bail!("wait4({pid}) returned {r}: {err}");
    }
    let wall = start.elapsed();
    // The child is reaped; dropping `child` only closes our ends of its stdio.
    drop(child);

    let exit = if timed_out {
        Exit::TimedOut
    } else if status & 0x7f == 0 {
        Exit::Code((status >> 8) & 0xff)
    } else {
        Exit::Signal(status & 0x7f)
    };
    Ok(Outcome {
        wall,
        exit,
        maxrss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        floor_kib,
    })
}

/// This process's VmHWM in KiB (0 if /proc cannot tell).
pub fn self_hwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
