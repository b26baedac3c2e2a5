//! Why a VM stopped, and the exit status each reason maps to.
//!
//! | status | meaning                                                        |
//! |--------|----------------------------------------------------------------|
//! | 0      | clean halt (raw guests), guest poweroff, Ctrl-A x              |
//! | 1      | Kiln error: bad input, unusable /dev/kvm (nothing ran)          |
//! | 2      | the guest reset (i8042, ACPI reset, KVM reset event, a Linux or |
//! |        | firmware guest's triple fault)                                 |
//! | 4      | the guest panicked                                             |
//! | 6      | triple fault, KVM internal or emulation error, unexpected exit |
//! | odd N  | the guest wrote V to the debug-exit port 0xf4: N = (V << 1) \| 1 |
//! | 130/143| Kiln was stopped by SIGINT / SIGTERM                           |

use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A vCPU executed HLT in a VM without an irqchip.
    Halted,
    /// The guest powered off.
    Poweroff,
    /// The guest asked for a reset.
    Reset,
    /// A guest that resets by triple-faulting (Linux, firmware) did so: a reset, but
    /// also what a guest crashing hard looks like, so it is told apart.
    TripleFaultReset,
    /// The guest panicked.
    Panic,
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM failed to run the guest, or an exit Kiln cannot handle.
    Internal(String),
    /// The guest wrote to the debug-exit port; the status to exit with.
    DebugExit(u8),
    /// A signal asked Kiln to stop.
    Signal(i32),
    /// The user typed Ctrl-A x.
    UserQuit,
}

impl StopReason {
    /// The process exit status for this reason.
    pub fn exit_status(&self) -> u8 {
        match self {
            StopReason::Halted | StopReason::Poweroff | StopReason::UserQuit => 0,
            StopReason::Reset | StopReason::TripleFaultReset => 2,
            StopReason::Panic => 4,
            StopReason::TripleFault | StopReason::Internal(_) => 6,
            StopReason::DebugExit(code) => *code,
            StopReason::Signal(sig) => (128 + sig) as u8,
        }
    }

    /// A sentence for the user when the stop is not an ordinary end.
    pub fn message(&self) -> Option<String> {
        match self {
            StopReason::TripleFault => Some("guest triple-faulted (KVM shutdown exit)".into()),
            StopReason::Internal(what) => Some(what.clone()),
            StopReason::Signal(sig) => Some(format!(
                "stopped by {}",
                if *sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }
            )),
            StopReason::Reset => Some("guest requested a reset".into()),
            StopReason::TripleFaultReset => {
                Some("guest reset by a triple fault (KVM shutdown exit)".into())
            }
            StopReason::Panic => Some("guest panicked".into()),
            _ => None,
        }
    }
}

/// The first reason to stop wins; the main thread is woken through an eventfd.
pub struct StopLatch {
    reason: Mutex<Option<(StopReason, Option<usize>)>>,
    event: EventFd,
}

impl StopLatch {
    /// A latch with nothing recorded.
    pub fn new() -> std::io::Result<Self> {
        Ok(StopLatch {
            reason: Mutex::new(None),
            event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Record `reason` (from vCPU `vcpu`, if any) unless another came first; wake the VM.
    pub fn request(&self, reason: StopReason, vcpu: impl Into<Option<usize>>) {
        let mut r = kiln_devices::bus::lock(&self.reason);
        if r.is_none() {
            *r = Some((reason, vcpu.into()));
        }
        let _ = self.event.write(1);
    }

    /// The recorded reason and the vCPU that caused it.
    pub fn reason(&self) -> Option<(StopReason, Option<usize>)> {
        kiln_devices::bus::lock(&self.reason).clone()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(StopReason::Halted.exit_status(), 0);
        assert_eq!(StopReason::Reset.exit_status(), 2);
        assert_eq!(StopReason::TripleFaultReset.exit_status(), 2);
        assert_eq!(StopReason::Panic.exit_status(), 4);
        assert_eq!(StopReason::TripleFault.exit_status(), 6);
        assert_eq!(StopReason::DebugExit(0x21).exit_status(), 0x21);
        assert_eq!(StopReason::Signal(libc::SIGINT).exit_status(), 130);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_status(), 143);
    }

    #[test]
    fn first_reason_wins() {
        let l = StopLatch::new().unwrap();
        l.request(StopReason::Halted, 0);
        l.request(StopReason::Reset, None);
        assert_eq!(l.reason(), Some((StopReason::Halted, Some(0))));
    }
}
