//! Transports: TCP and Unix-domain stream sockets behind one [`Listener`] and one `Stream`, so
//! the reactor and the blocking drivers never name a transport; and binding (SO_REUSEADDR,
//! SO_REUSEPORT, the listen backlog, stale Unix socket files), plus per-connection options.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::config::Config;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (with the real port when port 0 was asked for).
    Tcp(SocketAddr),
    /// The path of a Unix-domain socket.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Removes a Unix socket file when dropped, i.e. when its listener closes.
#[derive(Debug)]
pub(crate) struct UnlinkOnDrop(PathBuf);

impl UnlinkOnDrop {
    /// The socket file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0) {
            log::debug!("removing {}: {error}", self.0.display());
        }
    }
}

/// A listening socket of either transport.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    /// The guard removes the socket file when the listener is dropped.
    Unix(mio::net::UnixListener, UnlinkOnDrop),
}

/// An accepted connection of either transport (non-blocking, for the reactor).
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

/// An accepted connection of either transport, switched to blocking mode (for the blocking
/// drivers). `&BlockingStream` reads and writes, like `&TcpStream`.
#[derive(Debug)]
pub(crate) enum BlockingStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Listener {
    /// Accepts one connection; the peer address is known for TCP only.
    pub(crate) fn accept(&self) -> io::Result<(Stream, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(listener) => listener
                .accept()
                .map(|(stream, peer)| (Stream::Tcp(stream), Some(peer))),
            Listener::Unix(listener, _) => listener
                .accept()
                .map(|(stream, _)| (Stream::Unix(stream), None)),
        }
    }
}

macro_rules! delegate_source {
    ($type:ident, $($variant:ident $( ($ignored:tt) )?),+) => {
        impl Source for $type {
            fn register(&mut self, registry: &Registry, token: Token, interest: Interest) -> io::Result<()> {
                match self { $( delegate_source!(@pattern $variant inner $($ignored)?) => inner.register(registry, token, interest), )+ }
            }
            fn reregister(&mut self, registry: &Registry, token: Token, interest: Interest) -> io::Result<()> {
                match self { $( delegate_source!(@pattern $variant inner $($ignored)?) => inner.reregister(registry, token, interest), )+ }
            }
            fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
                match self { $( delegate_source!(@pattern $variant inner $($ignored)?) => inner.deregister(registry), )+ }
            }
        }
    };
    (@pattern $variant:ident $inner:ident) => { Self::$variant($inner) };
    (@pattern $variant:ident $inner:ident $ignored:tt) => { Self::$variant($inner, _) };
}

delegate_source!(Listener, Tcp, Unix(_));
delegate_source!(Stream, Tcp, Unix);

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            Stream::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            Stream::Unix(stream) => stream.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write_vectored(bufs),
            Stream::Unix(stream) => stream.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// The peer's address (TCP only; Unix peers are local processes without one).
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(stream) => stream.peer_addr().ok(),
            Stream::Unix(_) => None,
        }
    }

    /// Shuts down one or both directions.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.shutdown(how),
            Stream::Unix(stream) => stream.shutdown(how),
        }
    }

    /// Applies the per-connection options of `config` (TCP_NODELAY and keepalive; TCP only).
    pub(crate) fn apply_options(&self, config: &Config) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => apply_tcp_options(stream, config),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// The same socket in blocking mode, with the configured options.
    pub(crate) fn into_blocking(self, config: &Config) -> io::Result<BlockingStream> {
        let stream = match self {
            Stream::Tcp(stream) => {
                apply_tcp_options(&stream, config)?;
                BlockingStream::Tcp(std::net::TcpStream::from(OwnedFd::from(stream)))
            }
            Stream::Unix(stream) => {
                BlockingStream::Unix(std::os::unix::net::UnixStream::from(OwnedFd::from(stream)))
            }
        };
        stream.set_nonblocking(false)?;
        // A peer that stops reading for a whole idle timeout is treated as gone.
        stream.set_write_timeout(config.idle_timeout)?;
        Ok(stream)
    }
}

impl BlockingStream {
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.set_nonblocking(nonblocking),
            BlockingStream::Unix(stream) => stream.set_nonblocking(nonblocking),
        }
    }

    /// Sets the read timeout (`None` blocks forever).
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.set_read_timeout(timeout),
            BlockingStream::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.set_write_timeout(timeout),
            BlockingStream::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    /// Shuts down one or both directions.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.shutdown(how),
            BlockingStream::Unix(stream) => stream.shutdown(how),
        }
    }
}

impl Read for &BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(stream) => (&*stream).read(buf),
            BlockingStream::Unix(stream) => (&*stream).read(buf),
        }
    }
}

impl Write for &BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(stream) => (&*stream).write(buf),
            BlockingStream::Unix(stream) => (&*stream).write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(stream) => (&*stream).write_vectored(bufs),
            BlockingStream::Unix(stream) => (&*stream).write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for BlockingStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            BlockingStream::Tcp(stream) => stream.as_raw_fd(),
            BlockingStream::Unix(stream) => stream.as_raw_fd(),
        }
    }
}

/// Applies TCP_NODELAY and TCP keepalive as `config` asks.
fn apply_tcp_options(stream: &impl AsFd, config: &Config) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    if config.tcp_nodelay {
        socket.set_tcp_nodelay(true)?;
    }
    if let Some(idle) = config.tcp_keepalive {
        socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?;
    }
    Ok(())
}

/// A non-blocking TCP listener with SO_REUSEADDR (and SO_REUSEPORT if configured) and the
/// configured backlog. On failure the socket is closed before returning: no descriptor leaks.
pub(crate) fn listen_tcp(addr: SocketAddr, config: &Config) -> io::Result<Listener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if config.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog(config))?;
    Ok(Listener::Tcp(mio::net::TcpListener::from_std(
        socket.into(),
    )))
}

/// A non-blocking Unix-domain listener at `path`. A stale socket file (nobody accepting on it)
/// is removed first; a live one, or a file that is not a socket, is an "address in use" error.
/// The file is removed again when the listener closes.
pub(crate) fn listen_unix(path: &Path, config: &Config) -> io::Result<Listener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::fs::FileTypeExt;
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "exists and is not a socket",
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a server is listening there",
                ))
            }
            // Nobody accepts on it: a socket file left behind by a server that is gone.
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?
            }
            Err(error) => return Err(error),
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let guard = UnlinkOnDrop(path.to_path_buf());
    socket.listen(backlog(config))?;
    let listener = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
    Ok(Listener::Unix(
        mio::net::UnixListener::from_std(listener),
        guard,
    ))
}

fn backlog(config: &Config) -> i32 {
    config.listen_backlog.min(i32::MAX as u32) as i32
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(listener) => listener.as_fd(),
            Listener::Unix(listener, _) => listener.as_fd(),
        }
    }
}
