//! The crate's error type and the I/O predicates the reactor decides with.
//!
//! The reactor never matches raw errno numbers in its logic: it asks what an error *means*
//! (would it block, was the call interrupted, did the peer go away, did the process run out of
//! descriptors) through the predicates here, so every such decision reads the same everywhere.

use std::fmt;
use std::io;

/// Errors returned by the library's fallible entry points (binding, configuring, running).
#[derive(Debug)]
pub enum Error {
    /// An operating-system I/O error, with what was being done when it happened.
    Io {
        /// What the library was doing, e.g. "binding 127.0.0.1:7000".
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A configuration value outside its documented range.
    Config(String),
    /// The server's own thread panicked (a bug in the library or in a hook, not a protocol:
    /// protocol panics are caught per connection).
    Panicked(String),
    /// The measuring tools (`load`, `compare`) could not do their job: a server under test that
    /// would not start, a chart that could not be drawn.
    Tool(String),
}

impl Error {
    /// Wraps an I/O error with a short description of what was being attempted.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Config(message) => write!(f, "invalid configuration: {message}"),
            Error::Panicked(message) => write!(f, "the server thread panicked: {message}"),
            Error::Tool(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Config(_) | Error::Panicked(_) | Error::Tool(_) => None,
        }
    }
}

/// A specialised `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operation would block: a non-blocking socket is drained (or full). Not an error.
pub fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the system call (EINTR): retry, nothing happened.
pub fn interrupted(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Interrupted
}

/// The peer went away (reset, broken pipe, aborted): close quietly, it is not the server's fault.
pub fn is_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::TimedOut
    )
}

/// The process or the system ran out of file descriptors (EMFILE / ENFILE), or the kernel
/// could not allocate socket buffers (ENOBUFS / ENOMEM): accepting must pause, not spin.
pub fn is_fd_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// An `accept` that failed only for the connection being accepted (it was reset or aborted
/// while waiting in the backlog): skip it and keep accepting.
pub fn is_accept_transient(error: &io::Error) -> bool {
    is_disconnect(error) || matches!(error.raw_os_error(), Some(libc::EPROTO) | Some(libc::EPERM))
}

/// A non-blocking connect has begun and goes on in the background (EINPROGRESS): its end is
/// seen as writability, and its outcome read from `SO_ERROR`.
pub fn connect_in_progress(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EINPROGRESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_name_their_meaning() {
        assert!(would_block(&io::Error::from(io::ErrorKind::WouldBlock)));
        assert!(interrupted(&io::Error::from(io::ErrorKind::Interrupted)));
        assert!(is_disconnect(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
        assert!(is_disconnect(&io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_fd_exhaustion(&io::Error::from(
            io::ErrorKind::WouldBlock
        )));
        assert!(is_accept_transient(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
