//! The VMM's error type: every failure a user can cause or meet, each one sentence.

use crate::kvm::PreflightError;

/// Anything that stops a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` is unusable.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The configuration is wrong (bad sizes, overlapping loads, ...).
    #[error("{0}")]
    Config(String),
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A kernel image is malformed or unsupported.
    #[error("{path}: {reason}")]
    Kernel {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Guest memory could not be set up.
    #[error("{0}")]
    Memory(String),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {err}")]
    Kvm {
        /// What was being done.
        op: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// An OS call failed.
    #[error("{op} failed: {err}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The error.
        err: std::io::Error,
    },
}

/// Shorthand for a failed KVM ioctl.
pub fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |err| VmmError::Kvm { op, err }
}

/// Shorthand for a failed OS call.
pub fn os_err(op: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |err| VmmError::Os { op, err }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, VmmError>;
