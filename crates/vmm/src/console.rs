//! The host side of the serial console: standard input forwarded to the guest's UART,
//! the terminal in raw mode while a guest runs (only when stdin is a terminal, restored
//! on every way out), and QEMU's escape `Ctrl-A x` to quit (`Ctrl-A Ctrl-A` sends one
//! Ctrl-A). SIGINT and SIGTERM are taken through a signalfd so they stop the VM cleanly.
//! [`SharedOutput`] is the one output the guest's consoles share.

use crate::error::{os_err, Result};
use kiln_devices::bus::lock;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use vmm_sys_util::terminal::Terminal;

/// Ctrl-A, the escape prefix.
pub const ESCAPE: u8 = 0x01;

/// What forwarded input asks of the VM.
#[derive(Debug, PartialEq, Eq)]
pub enum InputEvent {
    /// Bytes for the guest.
    Bytes(Vec<u8>),
    /// The user typed the quit escape.
    Quit,
    /// End of input.
    Eof,
}

/// Standard input as the console reads it.
pub struct ConsoleInput {
    file: File,
    interactive: bool,
    raw: bool,
    escape_pending: bool,
}

impl ConsoleInput {
    /// Take standard input; a terminal is put into raw mode until this is dropped.
    /// `None` when there is no usable standard input.
    pub fn open() -> Option<Self> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd().try_clone_to_owned().ok()?;
        let interactive = stdin.is_terminal();
        let raw = interactive && stdin.lock().set_raw_mode().is_ok();
        Some(ConsoleInput {
            file: File::from(fd),
            interactive,
            raw,
            escape_pending: false,
        })
    }

    /// The descriptor to poll.
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Read what is available (call when the descriptor is readable).
    pub fn read(&mut self) -> InputEvent {
        let mut buf = [0u8; 4096];
        match self.file.read(&mut buf) {
            Ok(0) | Err(_) => InputEvent::Eof,
            Ok(n) if self.interactive => self.filter(&buf[..n]),
            Ok(n) => InputEvent::Bytes(buf[..n].to_vec()),
        }
    }

    /// Apply the Ctrl-A escapes to typed input.
    pub fn filter(&mut self, input: &[u8]) -> InputEvent {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.escape_pending {
                self.escape_pending = false;
                match b {
                    b'x' | b'X' => return InputEvent::Quit,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.escape_pending = true;
            } else {
                out.push(b);
            }
        }
        InputEvent::Bytes(out)
    }
}

impl Drop for ConsoleInput {
    fn drop(&mut self) {
        if self.raw {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}

/// SIGINT and SIGTERM blocked for the process's threads and readable from a signalfd.
/// Dropping it restores the previous signal mask.
pub struct StopSignals {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid value to pass to sigemptyset, which then
    // initializes it; sigaddset only writes into the set it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

impl StopSignals {
    /// Block SIGINT/SIGTERM on this thread (threads started later inherit the mask) and
    /// open a signalfd for them.
    pub fn block() -> Result<Self> {
        let set = sigset(&[libc::SIGINT, libc::SIGTERM]);
        // SAFETY: zeroed sigset_t is valid storage for the old mask that the call fills.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers refer to live, initialized sigset_t values on this stack.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask) };
        if rc != 0 {
            return Err(os_err("blocking SIGINT/SIGTERM")(
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        // SAFETY: `set` is a valid signal set; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(os_err("signalfd")(std::io::Error::last_os_error()));
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignals { fd, old_mask })
    }

    /// The descriptor to poll.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The signal that arrived, if any.
    pub fn take(&self) -> Option<i32> {
        // SAFETY: zeroed signalfd_siginfo is plain integers, valid storage for read().
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is exactly that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `block` on the same thread; the pointer is to
        // a live sigset_t.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> ConsoleInput {
        ConsoleInput {
            file: File::open("/dev/null").unwrap(),
            interactive: true,
            raw: false,
            escape_pending: false,
        }
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one() {
        let mut c = console();
        assert_eq!(
            c.filter(b"ab\x01\x01c"),
            InputEvent::Bytes(b"ab\x01c".to_vec())
        );
        assert_eq!(c.filter(b"\x01"), InputEvent::Bytes(vec![]));
        assert_eq!(c.filter(b"x"), InputEvent::Quit);
        assert_eq!(c.filter(b"\x01q"), InputEvent::Bytes(b"\x01q".to_vec()));
    }
}

/// One output shared by the guest's consoles (COM1 and the virtio console): each write
/// goes through whole, so lines from the two do not interleave mid-write.
#[derive(Clone)]
pub struct SharedOutput(Arc<Mutex<Box<dyn Write + Send>>>);

impl SharedOutput {
    /// Share `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        SharedOutput(Arc::new(Mutex::new(out)))
    }
}

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        lock(&self.0).write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.0).flush()
    }
}
