//! The error type of the block layer: every failure is one line a user can act on.

use std::io;

/// What went wrong while opening, reading or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error, with what was being done.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// The image is malformed (bad header, impossible table, ...).
    #[error("{0}")]
    Invalid(String),
    /// The image uses something this implementation refuses (encryption, unknown features).
    #[error("{0}")]
    Unsupported(String),
    /// A write to an image (or a part of one) that is read-only.
    #[error("{0}")]
    ReadOnly(String),
    /// The image's metadata is inconsistent; it was (or would be) marked corrupt.
    #[error("{0}")]
    Corrupt(String),
    /// Another process has the image open in a conflicting way.
    #[error("{0}")]
    Locked(String),
    /// An access outside the device.
    #[error(
        "access at offset {offset} length {len} is beyond the end of the device ({size} bytes)"
    )]
    OutOfRange {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of the device.
        size: u64,
    },
    /// A bad argument (image size, cluster size, option value, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

/// The block layer's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error with a short description of the operation.
    pub fn io(what: impl Into<String>, e: io::Error) -> Self {
        Error::Io(what.into(), e)
    }

    /// Prefix the message with `ctx` (usually the image path).
    pub fn context(self, ctx: &str) -> Self {
        match self {
            Error::Io(w, e) => Error::Io(format!("{ctx}: {w}"), e),
            Error::Invalid(m) => Error::Invalid(format!("{ctx}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{ctx}: {m}")),
            Error::ReadOnly(m) => Error::ReadOnly(format!("{ctx}: {m}")),
            Error::Corrupt(m) => Error::Corrupt(format!("{ctx}: {m}")),
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{ctx}: {m}")),
            Error::Locked(m) => Error::Locked(m), // already names the file
            e @ Error::OutOfRange { .. } => Error::Invalid(format!("{ctx}: {e}")),
        }
    }
}
