//! One dialled connection driven by the calling thread: connect with a timeout, read with the
//! protocol's timer as the read timeout, write what it answers, and dial again when it asks.
//!
//! The protocol is the same sans-IO state machine the [`Clients`](super::Clients) loop runs,
//! inside a [`Session`]; this driver adds only the socket calls, as the blocking servers do.
//! Nothing happens between calls: the connection is served (read, timers, reconnects) only
//! while the caller is inside [`Blocking::run_until`], which is how scripts and tests want it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{interrupted, would_block};
use crate::protocol::{Context, Protocol, Session};
use crate::ConnId;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A connected socket, in clear text or under TLS.
enum ClientStream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::ClientTls>),
}

impl ClientStream {
    fn socket(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(socket) => socket,
            #[cfg(feature = "tls")]
            ClientStream::Tls(stream) => stream.socket(),
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(socket) => socket.read(buf),
            #[cfg(feature = "tls")]
            ClientStream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(socket) => socket.write(buf),
            #[cfg(feature = "tls")]
            ClientStream::Tls(stream) => stream.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(_) => Ok(()),
            #[cfg(feature = "tls")]
            ClientStream::Tls(stream) => stream.flush(),
        }
    }
}

/// Where the connection stands.
enum Link<P: Protocol> {
    /// Connected: the socket and the protocol's session on it.
    Up {
        stream: ClientStream,
        session: Box<Session<P>>,
    },
    /// Ended; the protocol asked to be dialled again at `at`.
    Waiting { protocol: P, at: Instant },
    /// Ended for good: the protocol did not ask to be dialled again.
    Over(P),
    /// Only while moving between the others.
    Moving,
}

/// A dialled connection served by the calling thread.
pub struct Blocking<P: Protocol> {
    addr: SocketAddr,
    connect_timeout: Duration,
    link: Link<P>,
    /// Counts connects, so each session has an identity of its own.
    connects: u32,
    read_buffer: Vec<u8>,
    /// Speak TLS, checking the server's certificate against this name.
    #[cfg(feature = "tls")]
    tls: Option<(crate::tls::TlsConnector, String)>,
}

impl<P: Protocol> Blocking<P> {
    /// Connects to `addr` (waiting at most `connect_timeout`) with `protocol` on this end. A
    /// failed connect is not an error here: the protocol hears `on_closed` and decides, as it
    /// does for every later end, whether to be dialled again.
    pub fn dial(addr: SocketAddr, connect_timeout: Duration, protocol: P) -> Blocking<P> {
        let mut client = Blocking::unconnected(addr, connect_timeout);
        client.connect(protocol);
        client
    }

    fn unconnected(addr: SocketAddr, connect_timeout: Duration) -> Blocking<P> {
        Blocking {
            addr,
            connect_timeout,
            link: Link::Moving,
            connects: 0,
            read_buffer: vec![0; READ_CHUNK],
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Like [`Blocking::dial`], over TLS: every connect (reconnects too) runs a handshake,
    /// within the connect timeout per read, and the server's certificate must carry
    /// `server_name` and be signed by a CA `connector` trusts. A failed handshake is an end
    /// like a failed connect.
    #[cfg(feature = "tls")]
    pub fn dial_tls(
        addr: SocketAddr,
        connect_timeout: Duration,
        protocol: P,
        connector: crate::tls::TlsConnector,
        server_name: String,
    ) -> Blocking<P> {
        let mut client = Blocking::unconnected(addr, connect_timeout);
        client.tls = Some((connector, server_name));
        client.connect(protocol);
        client
    }

    /// The protocol, whatever the connection's state.
    pub fn protocol(&self) -> &P {
        match &self.link {
            Link::Up { session, .. } => session.protocol(),
            Link::Waiting { protocol, .. } | Link::Over(protocol) => protocol,
            Link::Moving => unreachable!("the link is only moving inside a method"),
        }
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// True once the connection ended and its protocol did not ask to be dialled again.
    pub fn is_over(&self) -> bool {
        matches!(self.link, Link::Over(_))
    }

    /// Runs `callback` on the protocol with a context while connected (to send something),
    /// then writes what it wrote. `None` while not connected.
    pub fn with_protocol<R>(
        &mut self,
        callback: impl FnOnce(&mut P, &mut Context<'_>) -> R,
    ) -> Option<R> {
        let Link::Up { session, .. } = &mut self.link else {
            return None;
        };
        session.set_now(Instant::now());
        let result = session.with_protocol(callback);
        self.after_callback();
        Some(result)
    }

    /// Serves the connection (input, timers, reconnects) until `done` says so, the deadline
    /// passes, or the connection is over. Returns whether `done` was reached; an error only
    /// once the connection is over for good.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&P) -> bool,
    ) -> io::Result<bool> {
        loop {
            if done(self.protocol()) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            match &mut self.link {
                Link::Over(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("the connection to {} is over", self.addr),
                    ))
                }
                Link::Waiting { at, .. } => {
                    if now < *at {
                        // The backoff's appointment (or the caller's deadline, if sooner).
                        std::thread::sleep((*at).min(deadline) - now);
                        continue;
                    }
                    if let Link::Waiting { protocol, .. } =
                        std::mem::replace(&mut self.link, Link::Moving)
                    {
                        self.connect(protocol);
                    }
                }
                Link::Up { stream, session } => {
                    let wake = session
                        .timer_deadline()
                        .map_or(deadline, |timer| timer.min(deadline));
                    let wait = wake
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1));
                    stream.socket().set_read_timeout(Some(wait))?;
                    match stream.read(&mut self.read_buffer) {
                        Ok(0) => {
                            session.set_now(Instant::now());
                            session.eof();
                            self.after_callback();
                            // The peer is gone: whatever the protocol answered, this is the end.
                            self.end();
                        }
                        Ok(count) => {
                            session.set_now(Instant::now());
                            session.feed(&self.read_buffer[..count]);
                            self.after_callback();
                        }
                        Err(error)
                            if would_block(&error) || error.kind() == io::ErrorKind::TimedOut =>
                        {
                            let now = Instant::now();
                            if session.timer_deadline().is_some_and(|timer| timer <= now) {
                                session.set_now(now);
                                session.fire_timer();
                                self.after_callback();
                            }
                        }
                        Err(error) if interrupted(&error) => {}
                        Err(error) => {
                            log::debug!("connection to {}: {error}", self.addr);
                            self.end();
                        }
                    }
                }
                Link::Moving => unreachable!("the link is only moving inside a method"),
            }
        }
    }

    /// Writes what a callback wrote, and ends the connection if the protocol asked to close.
    fn after_callback(&mut self) {
        let Link::Up { stream, session } = &mut self.link else {
            return;
        };
        if let Err(error) = session.write_output(stream).and_then(|()| stream.flush()) {
            log::debug!("connection to {}: writing: {error}", self.addr);
            return self.end();
        }
        if session.take_drain_wanted() {
            session.drained();
            if let Err(error) = session.write_output(stream).and_then(|()| stream.flush()) {
                log::debug!("connection to {}: writing: {error}", self.addr);
                return self.end();
            }
        }
        if session.close_request().is_some() {
            self.end();
        }
    }

    /// Dials `protocol`'s connection; a failure is an end like any other.
    fn connect(&mut self, protocol: P) {
        self.connects = self.connects.wrapping_add(1);
        let id = ConnId {
            index: 0,
            gen: self.connects,
        };
        let connected = TcpStream::connect_timeout(&self.addr, self.connect_timeout);
        match connected.and_then(|socket| self.secure(socket)) {
            Ok(stream) => {
                let _ = stream.socket().set_nodelay(true);
                if let Err(error) = stream
                    .socket()
                    .set_write_timeout(Some(self.connect_timeout))
                {
                    log::debug!("connection to {}: {error}", self.addr);
                }
                let session = Session::with_id_and_peer(protocol, id, Some(self.addr));
                self.link = Link::Up {
                    stream,
                    session: Box::new(session),
                };
                self.after_callback();
            }
            Err(error) => {
                log::debug!("connecting to {}: {error}", self.addr);
                let session = Session::unopened(protocol, id, Some(self.addr));
                self.finish(session);
            }
        }
    }

    /// The connected socket as this client speaks on it: under TLS (after the handshake) if
    /// it was dialled so.
    fn secure(&self, socket: TcpStream) -> io::Result<ClientStream> {
        #[cfg(feature = "tls")]
        if let Some((connector, name)) = &self.tls {
            let stream = connector.handshake_blocking(socket, name, self.connect_timeout)?;
            return Ok(ClientStream::Tls(Box::new(stream)));
        }
        Ok(ClientStream::Plain(socket))
    }

    /// Closes the socket and tells the protocol, which may ask to be dialled again.
    fn end(&mut self) {
        if !matches!(self.link, Link::Up { .. }) {
            return; // ended already (the protocol closed while handling the end of input)
        }
        if let Link::Up { stream, session } = std::mem::replace(&mut self.link, Link::Moving) {
            let _ = stream.socket().shutdown(std::net::Shutdown::Both);
            self.finish(*session);
        }
    }

    fn finish(&mut self, mut session: Session<P>) {
        session.set_now(Instant::now());
        session.closed();
        let again = session.take_reconnect();
        let protocol = session.into_protocol();
        self.link = match again {
            Some(after) => Link::Waiting {
                protocol,
                at: Instant::now() + after,
            },
            None => Link::Over(protocol),
        };
    }
}
