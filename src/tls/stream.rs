//! The layer itself: a socket and a rustls connection, read and written as one stream of
//! plaintext. [`TlsStream`] is the non-blocking form the reactor (and the load generator)
//! drive; [`BlockingTls`] the blocking form the thread models drive from two threads at once.

use std::io::{self, IoSlice, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::{AlertDescription, CertificateError, HandshakeKind};

use super::identity::PeerIdentity;
use crate::error::{interrupted, would_block};
use crate::metrics::{TlsCounters, TlsFailure};
use crate::net::{BlockingStream, Opening, Stream};

/// The first byte of every TLS record that can open a connection (a handshake record).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Small slices written together are joined into one record up to this many bytes (a record
/// holds at most 16 KiB): an HTTP head and its body in one record, not two.
const JOIN_BYTES: usize = 16 * 1024;

/// What a clear-text HTTP request to the TLS port is answered with.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nContent-Length: 49\r\nConnection: close\r\n\r\n\
This port speaks HTTPS: ask for https:// instead\n";

/// Why a handshake failed, read off what rustls said.
fn classify(error: &rustls::Error, not_tls: bool) -> TlsFailure {
    use rustls::Error as E;
    match error {
        _ if not_tls => TlsFailure::NotTls,
        E::NoCertificatesPresented => TlsFailure::NoCertificate,
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. })
        | E::InvalidCertificate(CertificateError::NotValidYet)
        | E::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => TlsFailure::Expired,
        E::InvalidCertificate(CertificateError::Revoked) => TlsFailure::Revoked,
        E::InvalidCertificate(_) => TlsFailure::BadCertificate,
        E::PeerIncompatible(_) | E::NoApplicationProtocol => TlsFailure::Incompatible,
        E::AlertReceived(AlertDescription::CloseNotify) => TlsFailure::Closed,
        E::AlertReceived(_) => TlsFailure::AlertReceived,
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::PeerMisbehaved(_)
        | E::DecryptError => TlsFailure::NotTls,
        _ => TlsFailure::Other,
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Counts a finished server handshake (full or resumed, and its ALPN) and reads the peer's
/// identity from its certificate.
fn finished(tls: &rustls::Connection, counters: Option<&TlsCounters>) -> Option<PeerIdentity> {
    if let Some(counters) = counters {
        let kind = match tls.handshake_kind() {
            Some(HandshakeKind::Resumed) => &counters.handshakes_resumed,
            _ => &counters.handshakes_full,
        };
        kind.fetch_add(1, Ordering::Relaxed);
        if tls.alpn_protocol() == Some(b"http/1.1") {
            counters.alpn_http1.fetch_add(1, Ordering::Relaxed);
        }
    }
    tls.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| PeerIdentity::from_der(leaf))
}

/// A socket under TLS, non-blocking.
pub(crate) struct TlsStream {
    /// The socket itself (never a `Stream::Tls`).
    socket: Stream,
    tls: rustls::Connection,
    /// The server's counters (a client counts nothing).
    counters: Option<Arc<TlsCounters>>,
    /// The peer's verified certificate, read once the handshake finished.
    identity: Option<Arc<PeerIdentity>>,
    /// The first byte was looked at (server side): plain HTTP is answered, other bytes that
    /// are not TLS are marked for the failure count.
    first_byte_seen: bool,
    not_tls: bool,
    /// The socket reached end of stream.
    eof: bool,
}

impl TlsStream {
    pub(crate) fn server(
        socket: Stream,
        connection: rustls::ServerConnection,
        counters: Arc<TlsCounters>,
    ) -> TlsStream {
        TlsStream::new(socket, connection.into(), Some(counters))
    }

    pub(crate) fn client(socket: Stream, connection: rustls::ClientConnection) -> TlsStream {
        let mut stream = TlsStream::new(socket, connection.into(), None);
        stream.first_byte_seen = true;
        stream
    }

    fn new(socket: Stream, tls: rustls::Connection, counters: Option<Arc<TlsCounters>>) -> Self {
        TlsStream {
            socket,
            tls,
            counters,
            identity: None,
            first_byte_seen: false,
            not_tls: false,
            eof: false,
        }
    }

    /// The socket under the layer.
    pub(crate) fn socket(&self) -> &Stream {
        &self.socket
    }

    pub(crate) fn socket_mut(&mut self) -> &mut Stream {
        &mut self.socket
    }

    /// The handshake has not finished.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// rustls holds records the socket has not taken yet.
    pub(crate) fn holds_output(&self) -> bool {
        self.tls.wants_write()
    }

    /// The peer's verified certificate, once the handshake finished (mTLS).
    pub(crate) fn identity(&self) -> Option<&Arc<PeerIdentity>> {
        self.identity.as_ref()
    }

    fn count_failure(&self, reason: TlsFailure) {
        if let Some(counters) = &self.counters {
            if self.tls.is_handshaking() {
                counters.failed(reason);
            }
        }
    }

    /// The handshake outlasted its timeout (counted; the caller closes the connection).
    pub(crate) fn handshake_timed_out(&self) {
        self.count_failure(TlsFailure::Timeout);
    }

    /// Pushes what rustls holds to the socket until it is all out or the socket would block.
    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if interrupted(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads what the socket has into rustls and processes it: `Ok(0)` at end of stream,
    /// `WouldBlock` when the socket has nothing. When rustls rejects the input it has queued an
    /// alert saying why, which is sent before the error is returned.
    fn read_records(&mut self) -> io::Result<usize> {
        let count = loop {
            match self.tls.read_tls(&mut self.socket) {
                Err(error) if interrupted(&error) => {}
                other => break other?,
            }
        };
        if count == 0 {
            self.eof = true;
            return Ok(0);
        }
        if let Err(error) = self.tls.process_new_packets() {
            self.count_failure(classify(&error, self.not_tls));
            let _ = self.flush_records();
            return Err(tls_error(error));
        }
        Ok(count)
    }

    /// Looks at the first byte a client sent: a plain-HTTP request is answered `400` in clear
    /// text. `Ok(false)`: nothing has arrived yet.
    fn check_first_byte(&mut self) -> io::Result<bool> {
        let mut first = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peeked = socket2::SockRef::from(&self.socket).peek(&mut first);
        let count = match peeked {
            Ok(count) => count,
            Err(error) if would_block(&error) || interrupted(&error) => return Ok(false),
            Err(error) => {
                self.count_failure(TlsFailure::Closed);
                return Err(error);
            }
        };
        if count == 0 {
            self.count_failure(TlsFailure::Closed);
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.first_byte_seen = true;
        // SAFETY: peek wrote `count` (here 1) initialised bytes into `first`.
        let byte = unsafe { first[0].assume_init() };
        if byte == HANDSHAKE_RECORD {
            return Ok(true);
        }
        if byte.is_ascii_uppercase() {
            self.count_failure(TlsFailure::PlainHttp);
            self.answer_plain_http();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a plain-HTTP request on the TLS port",
            ));
        }
        // Not TLS either: rustls refuses it with an alert, counted as `not_tls`.
        self.not_tls = true;
        Ok(true)
    }

    /// Answers a clear-text request with a `400`: the request is read and dropped first (what
    /// has arrived of it, a bounded amount), so that closing with it unread does not turn the
    /// answer into a reset; then the write side is shut. Best effort: the client is wrong.
    fn answer_plain_http(&mut self) {
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match self.socket.read(&mut sink) {
                Ok(count) if count > 0 => {}
                _ => break,
            }
        }
        let _ = self.socket.write(PLAIN_HTTP_ANSWER);
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
    }

    /// Drives the handshake as far as the socket allows: sends what rustls has to say, reads
    /// what the peer said. `Done` once it finished; an error (counted by reason, the alert
    /// sent) when it failed.
    pub(crate) fn handshake(&mut self) -> io::Result<Opening> {
        if !self.first_byte_seen && !self.check_first_byte()? {
            return Ok(Opening::Blocked);
        }
        loop {
            match self.flush_records() {
                Ok(()) => {}
                // Held until the socket is writable; reading may go on meanwhile.
                Err(error) if would_block(&error) => {}
                Err(error) => {
                    self.count_failure(TlsFailure::Closed);
                    return Err(error);
                }
            }
            if !self.tls.is_handshaking() {
                self.identity = finished(&self.tls, self.counters.as_deref()).map(Arc::new);
                return Ok(Opening::Done);
            }
            match self.read_records() {
                Ok(0) => {
                    self.count_failure(TlsFailure::Closed);
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                Err(error) if would_block(&error) => return Ok(Opening::Blocked),
                Err(error) if error.kind() == io::ErrorKind::InvalidData => return Err(error),
                Err(error) => {
                    self.count_failure(TlsFailure::Closed);
                    return Err(error);
                }
            }
        }
    }

    /// Queues `close_notify` and sends it if the socket takes it now (a graceful close does
    /// not wait for a peer that reads nothing).
    pub(crate) fn close_notify(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush_records();
    }

    /// The blocking form of this stream, for a blocking driver.
    pub(crate) fn into_blocking(self, config: &crate::Config) -> io::Result<BlockingTls> {
        let socket = self.socket.into_blocking(config)?;
        Ok(BlockingTls {
            socket,
            state: Mutex::new(State {
                tls: self.tls,
                eof: self.eof,
            }),
            unsent: Mutex::new(Vec::new()),
            scratch: Mutex::new(Vec::new()),
            counters: self.counters,
            identity: self.identity,
            first_byte_seen: self.first_byte_seen,
        })
    }
}

impl Read for TlsStream {
    /// Plaintext, until `buf` is full or the socket would block: a short read means the socket
    /// is drained, as it does for a plain socket. `Ok(0)` at the end of the stream, with or
    /// without the peer's `close_notify`.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                // close_notify received: the end (after what was read now).
                Ok(0) => return Ok(filled),
                Ok(count) => {
                    filled += count;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(error) => return Err(error),
            }
            if self.eof {
                return Ok(filled);
            }
            match self.read_records() {
                Ok(_) => {
                    // A key update or a ticket may want answering; what the socket does not
                    // take now is held, and shows as output to flush.
                    if let Err(error) = self.flush_records() {
                        if !would_block(&error) {
                            return Err(error);
                        }
                    }
                }
                Err(error) if would_block(&error) && filled > 0 => return Ok(filled),
                Err(error) => return Err(error),
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Takes plaintext only once what rustls held before is out (else `WouldBlock`), encrypts
    /// as much as its buffer limit allows, and pushes it to the socket; what the socket does
    /// not take is held (see [`TlsStream::holds_output`]).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush_records()?;
        let accepted = match bufs {
            [] => 0,
            [one] => self.tls.writer().write(one)?,
            [first, ..] if first.len() >= JOIN_BYTES => self.tls.writer().write(first)?,
            _ => {
                let mut joined = [0u8; JOIN_BYTES];
                let mut length = 0;
                for slice in bufs {
                    let take = slice.len().min(JOIN_BYTES - length);
                    joined[length..length + take].copy_from_slice(&slice[..take]);
                    length += take;
                    if length == JOIN_BYTES {
                        break;
                    }
                }
                self.tls.writer().write(&joined[..length])?
            }
        };
        if let Err(error) = self.flush_records() {
            if !would_block(&error) {
                return Err(error);
            }
        }
        if accepted == 0 && bufs.iter().any(|slice| !slice.is_empty()) {
            // rustls' buffer is full (the handshake has not finished): wait for writability.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    /// Pushes out what rustls holds; `WouldBlock` if the socket does not take it all.
    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}

/// The rustls side of a [`BlockingTls`].
struct State {
    tls: rustls::Connection,
    eof: bool,
}

/// A socket under TLS, blocking, read by its connection's own thread while another thread may
/// write to it (a pub/sub delivery under the thread models). rustls sits behind a lock that
/// neither holds while it waits on the socket; a second lock over the records not yet written
/// keeps the writers' records in order. The locks are always taken in that order: `unsent`,
/// then `state`.
pub(crate) struct BlockingTls {
    socket: BlockingStream,
    state: Mutex<State>,
    /// Records made and not yet written to the socket.
    unsent: Mutex<Vec<u8>>,
    /// The reading thread's buffer for records (only that thread takes it).
    scratch: Mutex<Vec<u8>>,
    counters: Option<Arc<TlsCounters>>,
    identity: Option<Arc<PeerIdentity>>,
    first_byte_seen: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each lock guards one buffer or the rustls state, changed in single steps; a panic on
    // another thread leaves them usable (a broken connection then fails on its next record).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes of records read from the socket at once: at most one record's worth of plaintext
/// comes of it, under rustls' limit on received plaintext.
const READ_BYTES: usize = 16 * 1024;

impl BlockingTls {
    /// The socket under the layer.
    pub(crate) fn socket(&self) -> &BlockingStream {
        &self.socket
    }

    /// The peer's verified certificate, once the handshake finished (mTLS).
    pub(crate) fn identity(&self) -> Option<&Arc<PeerIdentity>> {
        self.identity.as_ref()
    }

    fn count_failure(&self, state: &State, reason: TlsFailure) {
        if let Some(counters) = &self.counters {
            if state.tls.is_handshaking() {
                counters.failed(reason);
            }
        }
    }

    /// Moves the records rustls made into `unsent`.
    fn take_records(state: &mut State, unsent: &mut Vec<u8>) {
        while state.tls.wants_write() {
            if state.tls.write_tls(unsent).is_err() {
                break; // a Vec takes everything; nothing else can fail here
            }
        }
    }

    /// Writes every record made so far, waiting for the socket (up to its write timeout).
    fn send_all(&self) -> io::Result<()> {
        let mut unsent = lock(&self.unsent);
        Self::take_records(&mut lock(&self.state), &mut unsent);
        let result = (&self.socket).write_all(&unsent);
        unsent.clear();
        result
    }

    /// Reads one batch of records from the socket (waiting up to its read timeout) into
    /// rustls and processes them. `Ok(0)` at end of stream. The first bytes a server reads are
    /// looked at for plain HTTP first.
    fn read_records(&self) -> io::Result<usize> {
        let mut scratch = lock(&self.scratch);
        scratch.resize(READ_BYTES, 0);
        let count = (&self.socket).read(&mut scratch)?;
        let mut state = lock(&self.state);
        if count == 0 {
            state.eof = true;
            let _ = state.tls.read_tls(&mut io::empty());
            return Ok(0);
        }
        let mut records = &scratch[..count];
        while !records.is_empty() {
            if state.tls.read_tls(&mut records)? == 0 {
                break;
            }
            if let Err(error) = state.tls.process_new_packets() {
                self.count_failure(&state, classify(&error, false));
                drop(state);
                // The alert rustls queued says why; send it before the connection closes.
                let _ = self.send_all();
                return Err(tls_error(error));
            }
        }
        Ok(count)
    }

    /// Runs the handshake to its end on the calling thread, within `timeout`; an error (counted
    /// by reason, the alert sent) if it fails or outlasts the timeout.
    pub(crate) fn handshake(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let result = self.handshake_until(deadline);
        // Back to the driver's own timeouts.
        self.socket.set_read_timeout(None)?;
        result
    }

    fn handshake_until(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            let handshaking = lock(&self.state).tls.is_handshaking();
            self.send_all()?;
            if !handshaking {
                let state = lock(&self.state);
                self.identity = finished(&state.tls, self.counters.as_deref()).map(Arc::new);
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.count_failure(&lock(&self.state), TlsFailure::Timeout);
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.socket.set_read_timeout(Some(left))?;
            if !self.first_byte_seen {
                match self.check_first_byte() {
                    Ok(()) => {}
                    // The read timeout: the loop sees whether the deadline passed.
                    Err(error) if would_block(&error) || interrupted(&error) => continue,
                    Err(error) => return Err(error),
                }
            }
            match self.read_records() {
                Ok(0) => {
                    self.count_failure(&lock(&self.state), TlsFailure::Closed);
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                // The read timeout: the loop sees whether the deadline passed.
                Err(error) if would_block(&error) || interrupted(&error) => {}
                Err(error) if error.kind() == io::ErrorKind::InvalidData => return Err(error),
                Err(error) => {
                    self.count_failure(&lock(&self.state), TlsFailure::Closed);
                    return Err(error);
                }
            }
        }
    }

    /// The blocking counterpart of [`TlsStream::check_first_byte`]: waits (within the read
    /// timeout) for the first byte and answers plain HTTP with a `400`.
    fn check_first_byte(&mut self) -> io::Result<()> {
        let mut first = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let count = socket2::SockRef::from(&self.socket).peek(&mut first)?;
        if count == 0 {
            return Ok(()); // end of stream: the read that follows reports it
        }
        self.first_byte_seen = true;
        // SAFETY: peek wrote `count` (here 1) initialised bytes into `first`.
        let byte = unsafe { first[0].assume_init() };
        if byte != HANDSHAKE_RECORD && byte.is_ascii_uppercase() {
            self.count_failure(&lock(&self.state), TlsFailure::PlainHttp);
            let mut sink = [0u8; 4096];
            let _ = self
                .socket
                .set_read_timeout(Some(Duration::from_millis(10)));
            for _ in 0..16 {
                match (&self.socket).read(&mut sink) {
                    Ok(count) if count > 0 => {}
                    _ => break,
                }
            }
            let _ = (&self.socket).write_all(PLAIN_HTTP_ANSWER);
            let _ = self.socket.shutdown(std::net::Shutdown::Write);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a plain-HTTP request on the TLS port",
            ));
        }
        Ok(())
    }

    /// Plaintext, waiting for the socket (up to its read timeout: then `WouldBlock`). `Ok(0)`
    /// at the end of the stream.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut state = lock(&self.state);
                match state.tls.reader().read(buf) {
                    Ok(count) => return Ok(count),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(error) => return Err(error),
                }
                if state.eof {
                    return Ok(0);
                }
            }
            self.read_records()?;
            if lock(&self.state).tls.wants_write() {
                self.send_all()?;
            }
        }
    }

    /// Encrypts `buf` and writes it, waiting for the socket (up to its write timeout).
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut unsent = lock(&self.unsent);
        (&self.socket).write_all(&unsent)?;
        unsent.clear();
        let accepted = {
            let mut state = lock(&self.state);
            let accepted = state.tls.writer().write(buf)?;
            Self::take_records(&mut state, &mut unsent);
            accepted
        };
        let result = (&self.socket).write_all(&unsent);
        unsent.clear();
        result.map(|()| accepted)
    }

    /// Like [`BlockingTls::write`] without waiting: `WouldBlock` while records written before
    /// are still not taken; otherwise encrypts `buf` and writes what the socket takes now,
    /// keeping the rest for the next write or flush.
    pub(crate) fn write_without_waiting(&self, buf: &[u8]) -> io::Result<usize> {
        let mut unsent = lock(&self.unsent);
        self.send_without_waiting(&mut unsent)?;
        if !unsent.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let accepted = {
            let mut state = lock(&self.state);
            let accepted = state.tls.writer().write(buf)?;
            Self::take_records(&mut state, &mut unsent);
            accepted
        };
        match self.send_without_waiting(&mut unsent) {
            Err(error) if !would_block(&error) => Err(error),
            _ => Ok(accepted),
        }
    }

    /// Writes what the socket takes now of `unsent`.
    fn send_without_waiting(&self, unsent: &mut Vec<u8>) -> io::Result<()> {
        let mut socket = self.socket.without_waiting();
        while !unsent.is_empty() {
            match socket.write(unsent) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => {
                    unsent.drain(..count);
                }
                Err(error) if interrupted(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Writes what is held, waiting for the socket.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.send_all()
    }

    /// Writes what is held if the socket takes it now; `WouldBlock` if it does not.
    pub(crate) fn flush_without_waiting(&self) -> io::Result<()> {
        let mut unsent = lock(&self.unsent);
        Self::take_records(&mut lock(&self.state), &mut unsent);
        self.send_without_waiting(&mut unsent)?;
        if unsent.is_empty() {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// Sends `close_notify`, waiting at most the socket's write timeout.
    pub(crate) fn close_notify(&self) {
        lock(&self.state).tls.send_close_notify();
        let _ = self.send_all();
    }
}
