//! Transports: TCP and Unix-domain stream sockets behind one `Listener` and one `Stream`, UDP
//! and Unix-domain datagram sockets behind one `DatagramSocket`, so the reactor and the
//! blocking drivers never name a transport; and binding (SO_REUSEADDR, SO_REUSEPORT, the listen
//! backlog, stale Unix socket files), plus per-connection options; and the PROXY protocol
//! header a load balancer sends before anything else on a connection ([`proxy`]).

pub mod proxy;

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::config::Config;
use crate::protocol::Peer;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (with the real port when port 0 was asked for).
    Tcp(SocketAddr),
    /// The path of a Unix-domain stream socket.
    Unix(PathBuf),
    /// A UDP address.
    Udp(SocketAddr),
    /// The path of a Unix-domain datagram socket.
    UnixDatagram(PathBuf),
}

impl ListenAddr {
    /// The IP address and port, for TCP and UDP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) | ListenAddr::Udp(addr) => Some(*addr),
            ListenAddr::Unix(_) | ListenAddr::UnixDatagram(_) => None,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Udp(addr) => write!(f, "udp:{addr}"),
            ListenAddr::UnixDatagram(path) => write!(f, "unixgram:{}", path.display()),
        }
    }
}

/// Removes a Unix socket file when dropped, i.e. when its listener closes.
#[derive(Debug)]
pub(crate) struct UnlinkOnDrop(PathBuf);

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
    /// The guard removes the socket file when the listener is dropped (absent for an
    /// inherited listener, whose file belongs to the process that bound it).
    Unix(
        mio::net::UnixListener,
        #[allow(dead_code, reason = "held for its Drop, which removes the socket file")]
        Option<UnlinkOnDrop>,
    ),
}

/// An accepted or dialled connection of either transport, or either under TLS (non-blocking,
/// for the reactor).
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
    /// A socket with the TLS layer over it: reads and writes are plaintext.
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream>),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Tcp(stream) => stream.fmt(f),
            Stream::Unix(stream) => stream.fmt(f),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => f.debug_tuple("Tls").field(stream.socket()).finish(),
        }
    }
}

/// How a non-blocking connect began ([`Stream::connect`]).
#[derive(Debug)]
pub(crate) enum ConnectStart {
    /// Connected at once.
    Connected,
    /// Under way: the socket turns writable when it ends, either way.
    InProgress,
    /// Failed at once (refused, unreachable).
    Failed(io::Error),
}

/// An accepted connection of either transport, switched to blocking mode (for the blocking
/// drivers). `&BlockingStream` reads and writes, like `&TcpStream`.
pub(crate) enum BlockingStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
    /// A socket with the TLS layer over it: reads and writes are plaintext.
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::BlockingTls>),
}

impl fmt::Debug for BlockingStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockingStream::Tcp(stream) => stream.fmt(f),
            BlockingStream::Unix(stream) => stream.fmt(f),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => f.debug_tuple("Tls").field(stream.socket()).finish(),
        }
    }
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

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(inner) => inner.register(registry, token, interest),
            Stream::Unix(inner) => inner.register(registry, token, interest),
            #[cfg(feature = "tls")]
            Stream::Tls(inner) => inner.socket_mut().register(registry, token, interest),
        }
    }
    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(inner) => inner.reregister(registry, token, interest),
            Stream::Unix(inner) => inner.reregister(registry, token, interest),
            #[cfg(feature = "tls")]
            Stream::Tls(inner) => inner.socket_mut().reregister(registry, token, interest),
        }
    }
    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(inner) => inner.deregister(registry),
            Stream::Unix(inner) => inner.deregister(registry),
            #[cfg(feature = "tls")]
            Stream::Tls(inner) => inner.socket_mut().deregister(registry),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(stream) => stream.as_fd(),
            Stream::Unix(stream) => stream.as_fd(),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.socket().as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            Stream::Unix(stream) => stream.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            Stream::Unix(stream) => stream.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write_vectored(bufs),
            Stream::Unix(stream) => stream.write_vectored(bufs),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.write_vectored(bufs),
        }
    }
    /// Pushes out what a layer holds (`WouldBlock` if the socket does not take it all); a
    /// plain socket holds nothing.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => Ok(()),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

impl crate::protocol::AsksPeer for Stream {
    fn peer_addr(&self) -> Option<SocketAddr> {
        Stream::peer_addr(self)
    }
}

/// What a server wraps each accepted socket in before its protocol sees it: the TLS layer.
/// The reactor and the blocking acceptor call it and know nothing of what it does.
pub(crate) type Layer = std::sync::Arc<dyn Fn(Stream) -> io::Result<Stream> + Send + Sync>;

/// How far a layered stream got with opening ([`Stream::open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// Open: the protocol may be told.
    Done,
    /// Waiting for the peer.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Blocked,
}

impl Stream {
    /// A layer over the socket has not finished opening (the TLS handshake): nothing may be
    /// fed to or written by the protocol until [`Stream::open`] says `Done`.
    pub(crate) fn is_opening(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.is_handshaking(),
        }
    }

    /// Drives a layer's opening as far as the socket allows; an error means it failed (the
    /// layer has counted why and told the peer).
    pub(crate) fn open(&mut self) -> io::Result<Opening> {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => Ok(Opening::Done),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.handshake(),
        }
    }

    /// A layer's opening outlasted its timeout (the layer counts it; the caller closes).
    pub(crate) fn opening_timed_out(&self) {
        #[cfg(feature = "tls")]
        if let Stream::Tls(stream) = self {
            stream.handshake_timed_out();
        }
    }

    /// A layer holds output the socket has not taken yet (flushed by [`Write::flush`]).
    pub(crate) fn holds_output(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.holds_output(),
        }
    }

    /// The peer's verified identity (a TLS client certificate).
    pub(crate) fn identity(&self) -> Option<&std::sync::Arc<crate::tls::PeerIdentity>> {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => None,
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.identity(),
        }
    }
}

impl Stream {
    /// The socket's descriptor, below any layer.
    fn raw_socket_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(stream) => stream.as_raw_fd(),
            Stream::Unix(stream) => stream.as_raw_fd(),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.socket().raw_socket_fd(),
        }
    }

    /// Copies the socket's waiting input into `buf` without taking it, below any layer: how a
    /// PROXY protocol header, which comes before TLS, is looked at. 0 means end of stream.
    pub(crate) fn peek_below_layer(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`, a live exclusive slice.
        let read = unsafe {
            libc::recv(
                self.raw_socket_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK,
            )
        };
        usize::try_from(read).map_err(|_| io::Error::last_os_error())
    }

    /// Takes `len` bytes of input already seen by [`Stream::peek_below_layer`], below any
    /// layer, so that the layer (or the protocol) starts right after them.
    pub(crate) fn consume_below_layer(&self, len: usize) -> io::Result<()> {
        let mut scratch = [0u8; 512];
        let mut left = len;
        while left > 0 {
            let take = left.min(scratch.len());
            // SAFETY: as above, into `scratch`, at most `take` bytes.
            let read =
                unsafe { libc::recv(self.raw_socket_fd(), scratch.as_mut_ptr().cast(), take, 0) };
            match usize::try_from(read) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => left -= read,
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    /// The peer's address (TCP only; Unix peers are local processes without one).
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(stream) => stream.peer_addr().ok(),
            Stream::Unix(_) => None,
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.socket().peer_addr(),
        }
    }

    /// Shuts down one or both directions. Under TLS, shutting the write side sends
    /// `close_notify` first (if the socket takes it now).
    pub(crate) fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.shutdown(how),
            Stream::Unix(stream) => stream.shutdown(how),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => {
                if how != Shutdown::Read {
                    stream.close_notify();
                }
                stream.socket_mut().shutdown(how)
            }
        }
    }

    /// Starts a non-blocking TCP connect to `addr`. The socket comes back even when the
    /// connect failed at once (a refusal on loopback often does), so that failure takes the
    /// same close path as one seen later; only failing to make a socket at all is an error.
    pub(crate) fn connect(addr: SocketAddr) -> io::Result<(Stream, ConnectStart)> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.nonblocking().cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        let start = match socket.connect(&addr.into()) {
            Ok(()) => ConnectStart::Connected,
            Err(error) if crate::error::connect_in_progress(&error) => ConnectStart::InProgress,
            Err(error) => ConnectStart::Failed(error),
        };
        let stream = std::net::TcpStream::from(OwnedFd::from(socket));
        Ok((Stream::Tcp(mio::net::TcpStream::from_std(stream)), start))
    }

    /// The outcome of a connect that was in progress, once the socket turned writable:
    /// `Ok(true)` connected, `Ok(false)` not yet (a wake-up before the end), or the error the
    /// kernel kept for it (`SO_ERROR`).
    pub(crate) fn connect_outcome(&self) -> io::Result<bool> {
        let stream = match self {
            Stream::Tcp(stream) => stream,
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => return stream.socket().connect_outcome(),
            _ => return Ok(true),
        };
        if let Some(error) = stream.take_error()? {
            return Err(error);
        }
        match stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Applies the per-connection options of `config` (TCP_NODELAY and keepalive; TCP only).
    pub(crate) fn apply_options(&self, config: &Config) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => apply_tcp_options(stream, config),
            Stream::Unix(_) => Ok(()),
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => stream.socket().apply_options(config),
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
            #[cfg(feature = "tls")]
            Stream::Tls(stream) => {
                return Ok(BlockingStream::Tls(Box::new(stream.into_blocking(config)?)));
            }
        };
        stream.set_nonblocking(false)?;
        // A peer that stops reading for a whole idle timeout is treated as gone; without one
        // (WebSocket, whose heartbeats find dead peers), one that takes nothing for the ping
        // timeout is, so that no write (and no pub/sub delivery waiting behind it) waits forever.
        stream.set_write_timeout(config.idle_timeout.or(Some(config.ws_ping_timeout)))?;
        Ok(stream)
    }
}

impl BlockingStream {
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.set_nonblocking(nonblocking),
            BlockingStream::Unix(stream) => stream.set_nonblocking(nonblocking),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.socket().set_nonblocking(nonblocking),
        }
    }

    /// The peer's verified identity (a TLS client certificate).
    pub(crate) fn identity(&self) -> Option<&std::sync::Arc<crate::tls::PeerIdentity>> {
        match self {
            BlockingStream::Tcp(_) | BlockingStream::Unix(_) => None,
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.identity(),
        }
    }

    /// Sets the read timeout (`None` blocks forever).
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.set_read_timeout(timeout),
            BlockingStream::Unix(stream) => stream.set_read_timeout(timeout),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.socket().set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.set_write_timeout(timeout),
            BlockingStream::Unix(stream) => stream.set_write_timeout(timeout),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.socket().set_write_timeout(timeout),
        }
    }

    /// Shuts down one or both directions. Under TLS, shutting only the write side (a
    /// graceful close) sends `close_notify` first; shutting both (cutting a connection whose
    /// peer stopped taking output) does not wait to.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(stream) => stream.shutdown(how),
            BlockingStream::Unix(stream) => stream.shutdown(how),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => {
                if how == Shutdown::Write {
                    stream.close_notify();
                }
                stream.socket().shutdown(how)
            }
        }
    }
}

impl Read for &BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(stream) => (&*stream).read(buf),
            BlockingStream::Unix(stream) => (&*stream).read(buf),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for &BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(stream) => (&*stream).write(buf),
            BlockingStream::Unix(stream) => (&*stream).write(buf),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            BlockingStream::Tcp(stream) => (&*stream).write_vectored(bufs),
            BlockingStream::Unix(stream) => (&*stream).write_vectored(bufs),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => {
                let first = bufs.iter().find(|slice| !slice.is_empty());
                stream.write(first.map_or(&[][..], |slice| &slice[..]))
            }
        }
    }
    /// Writes what a layer holds, waiting for the socket; a plain socket holds nothing.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingStream::Tcp(_) | BlockingStream::Unix(_) => Ok(()),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.flush(),
        }
    }
}

impl BlockingStream {
    /// A writer for this socket that never waits: each write takes what the socket's buffer
    /// has room for now (`MSG_DONTWAIT`) and answers `WouldBlock` when it has none, though the
    /// socket itself stays blocking. It lets a blocking driver tell a write that completes at
    /// once from one that must wait for the peer to read.
    ///
    /// Under TLS the plaintext is encrypted and what the socket does not take is held by the
    /// layer; [`Write::flush`] on this writer then answers `WouldBlock` until it is out.
    pub(crate) fn without_waiting(&self) -> DontWait<'_> {
        match self {
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => DontWait::Tls(stream),
            _ => DontWait::Socket(socket2::SockRef::from(self)),
        }
    }
}

/// See [`BlockingStream::without_waiting`].
pub(crate) enum DontWait<'a> {
    Socket(socket2::SockRef<'a>),
    #[cfg(feature = "tls")]
    Tls(&'a crate::tls::BlockingTls),
}

/// Send flags of a write that does not wait (and, on Linux, raises no SIGPIPE either).
#[cfg(target_os = "linux")]
const DONT_WAIT: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const DONT_WAIT: libc::c_int = libc::MSG_DONTWAIT;

impl Write for DontWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            DontWait::Socket(socket) => socket.send_with_flags(buf, DONT_WAIT),
            #[cfg(feature = "tls")]
            DontWait::Tls(stream) => stream.write_without_waiting(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            DontWait::Socket(socket) => socket.send_vectored_with_flags(bufs, DONT_WAIT),
            #[cfg(feature = "tls")]
            DontWait::Tls(stream) => {
                let first = bufs.iter().find(|slice| !slice.is_empty());
                stream.write_without_waiting(first.map_or(&[][..], |slice| &slice[..]))
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            DontWait::Socket(_) => Ok(()),
            #[cfg(feature = "tls")]
            DontWait::Tls(stream) => stream.flush_without_waiting(),
        }
    }
}

impl AsFd for BlockingStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            BlockingStream::Tcp(stream) => stream.as_fd(),
            BlockingStream::Unix(stream) => stream.as_fd(),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.socket().as_fd(),
        }
    }
}

impl AsRawFd for BlockingStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            BlockingStream::Tcp(stream) => stream.as_raw_fd(),
            BlockingStream::Unix(stream) => stream.as_raw_fd(),
            #[cfg(feature = "tls")]
            BlockingStream::Tls(stream) => stream.socket().as_raw_fd(),
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

/// Clears the way for binding a Unix socket of `kind` at `path`: a stale socket file (nobody
/// bound to it any more) is removed; a live one, or a file that is not a socket, is an
/// "address in use" error.
fn remove_stale_socket(path: &Path, kind: socket2::Type) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "exists and is not a socket",
        ));
    }
    let probe = socket2::Socket::new(socket2::Domain::UNIX, kind, None)?;
    match probe.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a server is bound there",
        )),
        // Nobody is bound to it: a socket file left behind by a server that is gone.
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
        }
        Err(error) => Err(error),
    }
}

/// A non-blocking Unix-domain listener at `path`. A stale socket file (nobody accepting on it)
/// is removed first; a live one, or a file that is not a socket, is an "address in use" error.
/// The file is removed again when the listener closes.
pub(crate) fn listen_unix(path: &Path, config: &Config) -> io::Result<Listener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    remove_stale_socket(path, Type::STREAM)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let guard = UnlinkOnDrop(path.to_path_buf());
    socket.listen(backlog(config))?;
    let listener = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
    Ok(Listener::Unix(
        mio::net::UnixListener::from_std(listener),
        Some(guard),
    ))
}

fn backlog(config: &Config) -> i32 {
    config.listen_backlog.min(i32::MAX as u32) as i32
}

impl Listener {
    /// Where the listener is bound.
    pub(crate) fn listen_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(listener, _) => {
                bound_path(&listener.local_addr()?).map(ListenAddr::Unix)
            }
        }
    }
}

/// The path a Unix socket is bound to (a server's socket always has one).
fn bound_path(addr: &std::os::unix::net::SocketAddr) -> io::Result<PathBuf> {
    addr.as_pathname()
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an unnamed Unix socket"))
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(listener) => listener.as_fd(),
            Listener::Unix(listener, _) => listener.as_fd(),
        }
    }
}

/// A datagram socket of either transport: UDP, or Unix-domain datagrams. The reactor uses it
/// non-blocking, the blocking drivers blocking; both share it between threads by reference
/// (`recv_from` and `send_to` take `&self`).
#[derive(Debug)]
pub(crate) enum DatagramSocket {
    Udp(std::net::UdpSocket),
    /// The guard (absent for an inherited socket, whose owner removes the file) removes the
    /// socket file when the socket is dropped.
    Unix(
        std::os::unix::net::UnixDatagram,
        #[allow(dead_code, reason = "held for its Drop, which removes the socket file")]
        Option<UnlinkOnDrop>,
    ),
}

impl DatagramSocket {
    /// Receives one datagram into `buf`; the count is the datagram's length even when it was
    /// longer than `buf` (MSG_TRUNC), so oversize datagrams can be recognised and dropped.
    pub(crate) fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Peer)> {
        let socket = socket2::SockRef::from(self);
        // SAFETY: `recv_from_with_flags` only writes initialised bytes into the buffer, so
        // viewing the initialised `buf` as `MaybeUninit` and back is sound.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        let (count, addr) = socket.recv_from_with_flags(uninit, libc::MSG_TRUNC)?;
        let peer = match self {
            DatagramSocket::Udp(_) => Peer::Inet(addr.as_socket().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "a UDP peer without an address")
            })?),
            DatagramSocket::Unix(..) => Peer::Unix(addr.as_pathname().map(Path::to_path_buf)),
        };
        Ok((count, peer))
    }

    /// Sends one datagram to `to`.
    pub(crate) fn send_to(&self, data: &[u8], to: &Peer) -> io::Result<usize> {
        match (self, to) {
            (DatagramSocket::Udp(socket), Peer::Inet(addr)) => socket.send_to(data, addr),
            (DatagramSocket::Unix(socket, _), Peer::Unix(Some(path))) => socket.send_to(data, path),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address of this socket's family to send to",
            )),
        }
    }

    /// Switches between blocking and non-blocking mode.
    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            DatagramSocket::Udp(socket) => socket.set_nonblocking(nonblocking),
            DatagramSocket::Unix(socket, _) => socket.set_nonblocking(nonblocking),
        }
    }

    /// Bounds how long a blocking send may wait for room (`None`: forever).
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            DatagramSocket::Udp(socket) => socket.set_write_timeout(timeout),
            DatagramSocket::Unix(socket, _) => socket.set_write_timeout(timeout),
        }
    }

    /// Where the socket is bound.
    pub(crate) fn listen_addr(&self) -> io::Result<ListenAddr> {
        match self {
            DatagramSocket::Udp(socket) => socket.local_addr().map(ListenAddr::Udp),
            DatagramSocket::Unix(socket, _) => {
                bound_path(&socket.local_addr()?).map(ListenAddr::UnixDatagram)
            }
        }
    }
}

impl AsFd for DatagramSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DatagramSocket::Udp(socket) => socket.as_fd(),
            DatagramSocket::Unix(socket, _) => socket.as_fd(),
        }
    }
}

impl AsRawFd for DatagramSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// A non-blocking UDP socket bound to `addr` (SO_REUSEPORT if configured). SO_REUSEADDR is not
/// set: on UDP it would let a second server bind the same port and silently take its datagrams.
pub(crate) fn bind_udp(addr: SocketAddr, config: &Config) -> io::Result<DatagramSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if config.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(DatagramSocket::Udp(socket.into()))
}

/// A non-blocking Unix-domain datagram socket bound at `path`; a stale socket file is replaced,
/// a live one refused, and the file is removed when the socket closes.
pub(crate) fn bind_unix_datagram(path: &Path) -> io::Result<DatagramSocket> {
    use socket2::{Domain, SockAddr, Socket, Type};
    remove_stale_socket(path, Type::DGRAM)?;
    let socket = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let guard = UnlinkOnDrop(path.to_path_buf());
    Ok(DatagramSocket::Unix(
        std::os::unix::net::UnixDatagram::from(OwnedFd::from(socket)),
        Some(guard),
    ))
}

/// A socket handed over by a parent process: a listener, or a datagram socket.
#[derive(Debug)]
pub(crate) enum Adopted {
    Listener(Listener),
    Datagram(DatagramSocket),
}

/// Takes over `fd`, a socket bound by another process, switching it to non-blocking mode. Its
/// kind (TCP or Unix, stream or datagram) is read from the socket itself; a stream socket must
/// be listening. A Unix socket file stays where it is when the socket closes here: it belongs to
/// the process that bound it.
pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Adopted> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::from(fd);
    let (domain, kind) = (socket.domain()?, socket.r#type()?);
    let inet = domain == Domain::IPV4 || domain == Domain::IPV6;
    if kind == Type::STREAM && !socket.is_listener()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the inherited stream socket is not listening",
        ));
    }
    socket.set_nonblocking(true)?;
    let fd = OwnedFd::from(socket);
    Ok(match (inet, domain == Domain::UNIX, kind) {
        (true, _, Type::STREAM) => Adopted::Listener(Listener::Tcp(
            mio::net::TcpListener::from_std(std::net::TcpListener::from(fd)),
        )),
        (_, true, Type::STREAM) => Adopted::Listener(Listener::Unix(
            mio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)),
            None,
        )),
        (true, _, Type::DGRAM) => Adopted::Datagram(DatagramSocket::Udp(fd.into())),
        (_, true, Type::DGRAM) => Adopted::Datagram(DatagramSocket::Unix(fd.into(), None)),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the inherited socket is not a TCP, UDP or Unix socket",
            ))
        }
    })
}

/// Raises this process's soft limit on open descriptors to its hard limit, as servers and
/// load generators holding many connections need (the soft limit is often 1,024, the hard one
/// much higher), and returns the soft limit now in force. Raising up to the hard limit needs
/// no privilege.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit from a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
