//! Blocking drivers: the same [`Protocol`] code over blocking sockets, one thread per
//! connection at a time — the counterparts of Python socketserver's `ThreadingMixIn`
//! ([`Model::ThreadPerConnection`]) and of a bounded worker pool ([`Model::ThreadPool`]).
//!
//! They exist to be compared with the reactor, so they share everything with it but the
//! concurrency model: the protocols, the [`Config`] limits, the verify and error hooks, the
//! counters, graceful shutdown. Each connection runs through a [`Session`] (the sans-IO driver the
//! tests use too); this room adds only the socket calls.
//!
//! How each concern maps onto blocking sockets:
//!
//! * **Backpressure** is the blocking `write` itself; output is still capped by
//!   `write_hard_limit` before it is written.
//! * **Idle timeout and protocol timers** are the socket's read timeout, set to whichever comes
//!   first (and only when it changes, to save a system call per read).
//! * **Offloaded jobs run inline** on the connection's own thread, which is already off any
//!   event loop; their results are delivered right after the callback that offloaded them.
//! * **Graceful shutdown**: the acceptor stops, then every live connection's read side is shut
//!   (`shutdown(SHUT_RD)`), which wakes its blocked `read` with end of stream; the handler sees the
//!   shutdown flag and calls [`Protocol::on_shutdown`] instead of `on_eof`, flushes, and closes.
//! * **Running out of descriptors** pauses accepting for `accept_pause`, as in the reactor.
//!
//! The acceptor waits on a `mio::Poll` (listener plus waker plus signals) so that a
//! [`ServerHandle`](crate::ServerHandle) can wake it; handlers never touch the poll.

pub(crate) mod datagram;
pub(crate) mod pool;
pub(crate) mod threads;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};
use slab::Slab;

use crate::config::Config;
use crate::error::{interrupted, is_accept_transient, is_disconnect, would_block, Error, Result};
use crate::lifecycle::{
    panic_message, register_signals, shutdown_signalled, CloseReason, ErrorHook, ErrorReport,
    ShutdownSignal, VerifyHook, WARN_INTERVAL,
};
use crate::metrics::{self, Stats};
use crate::net::{BlockingStream, Listener};
use crate::protocol::{CloseRequest, Protocol, Session};
use crate::reactor::token::{ConnId, LISTENER};

/// Which blocking concurrency model serves the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// A new thread for every connection (Python's `ThreadingMixIn`), at most
    /// [`Config::max_connections`] at once. With `block_on_close`, shutdown waits (up to
    /// [`Config::shutdown_timeout`]) for every handler thread to finish.
    ThreadPerConnection {
        /// Wait for handler threads at shutdown (Python's `block_on_close`).
        block_on_close: bool,
    },
    /// [`Config::pool_threads`] threads take accepted connections from a queue of
    /// [`Config::pool_queue`]; a connection arriving to a full queue is closed at once and
    /// counted in `refused_over_capacity`.
    ThreadPool,
}

/// What every handler thread shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stats: Arc<Stats>,
    pub(crate) on_error: ErrorHook,
    /// Set when graceful shutdown begins; handlers then answer end of stream with
    /// `on_shutdown`.
    pub(crate) shutting_down: AtomicBool,
    /// Descriptors of live connections, so shutdown can wake their blocked reads. An entry is
    /// removed (under this lock) before its socket is closed, so every fd here is open.
    live: Mutex<Slab<RawFd>>,
}

impl Shared {
    pub(crate) fn new(config: Config, stats: Arc<Stats>, on_error: ErrorHook) -> Arc<Self> {
        Arc::new(Shared {
            config,
            stats,
            on_error,
            shutting_down: AtomicBool::new(false),
            live: Mutex::new(Slab::new()),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Slab<RawFd>> {
        // A handler that panicked while holding the lock cannot leave the slab inconsistent
        // (every operation on it is a single insert or remove), so poisoning is ignored.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts graceful shutdown: every live connection's blocked read returns end of stream.
    pub(crate) fn begin_shutdown(&self) {
        let live = self.live();
        self.shutting_down.store(true, Ordering::Release);
        for (_, &fd) in live.iter() {
            // SAFETY: `fd` is open: entries are removed under this lock before their socket
            // is dropped. shutdown(2) does not close or invalidate the descriptor.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }
}

/// Everything the acceptor needs, taken from the [`Server`](crate::Server).
pub(crate) struct Acceptor {
    pub(crate) poll: Poll,
    pub(crate) listener: Listener,
    pub(crate) shutdown: Arc<ShutdownSignal>,
    pub(crate) verify: Option<VerifyHook>,
    /// What wraps each accepted socket (TLS), if anything; its handshake runs on the
    /// connection's own thread.
    pub(crate) layer: Option<crate::net::Layer>,
}

impl Acceptor {
    /// Accepts until shutdown is requested (handle or signal), handing each admitted
    /// connection, as a blocking socket, to `dispatch`.
    pub(crate) fn run(
        mut self,
        shared: &Shared,
        mut dispatch: impl FnMut(BlockingStream, Option<SocketAddr>),
    ) -> Result<()> {
        let registry = self.poll.registry();
        registry
            .register(&mut self.listener, LISTENER, Interest::READABLE)
            .map_err(|error| Error::io("registering the listener", error))?;
        let mut signals = register_signals(registry, &shared.config)?;
        // Waker events need no handling of their own: they only end the poll so that the
        // shutdown flag is looked at.
        let mut events = Events::with_capacity(16);
        let mut paused_until: Option<Instant> = None;
        let mut warned_at: Option<Instant> = None;
        loop {
            let timeout = paused_until.map(|until| until.saturating_duration_since(Instant::now()));
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if !interrupted(&error) {
                    return Err(Error::io("polling", error));
                }
            }
            metrics::shared_add(&shared.stats.turns, 1);
            if self.shutdown.is_requested() {
                return Ok(());
            }
            if shutdown_signalled(&mut signals) && self.shutdown.drain() {
                return Ok(());
            }
            if paused_until.is_some_and(|until| Instant::now() < until) {
                continue;
            }
            paused_until = None;
            // Drain the backlog (the listener is edge-triggered).
            loop {
                match self.listener.accept() {
                    Ok((stream, peer)) => {
                        if let (Some(verify), Some(peer)) = (&self.verify, peer) {
                            if !verify(peer) {
                                metrics::shared_add(&shared.stats.refused_by_verify, 1);
                                continue;
                            }
                        }
                        let layered = match &self.layer {
                            None => Ok(stream),
                            Some(layer) => layer(stream),
                        };
                        match layered.and_then(|stream| stream.into_blocking(&shared.config)) {
                            Ok(stream) => dispatch(stream, peer),
                            Err(error) => {
                                log::debug!("could not set up an accepted socket: {error}")
                            }
                        }
                    }
                    Err(error) if would_block(&error) => break,
                    Err(error) if interrupted(&error) || is_accept_transient(&error) => {}
                    Err(error) => {
                        // Out of descriptors (or worse): back off, never spin.
                        let now = Instant::now();
                        metrics::shared_add(&shared.stats.accept_pauses, 1);
                        if warned_at.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL) {
                            warned_at = Some(now);
                            log::warn!(
                                "accept failed ({error}); pausing accepts for {:?}",
                                shared.config.accept_pause
                            );
                        }
                        paused_until = Some(now + shared.config.accept_pause);
                        break;
                    }
                }
            }
        }
    }
}

/// Serves one connection to the end on the calling thread: register it for shutdown, drive the
/// protocol, report a panic to the error hook, count the close.
pub(crate) fn serve_connection<P: Protocol + Send>(
    stream: BlockingStream,
    peer: Option<SocketAddr>,
    protocol: P,
    shared: &Shared,
) {
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut stream = stream;
    let index = shared.live().insert(stream.as_raw_fd());
    let id = ConnId {
        index: index as u32,
        gen: 0,
    };
    #[cfg(feature = "tls")]
    if let BlockingStream::Tls(tls) = &mut stream {
        // On this thread, before the protocol hears of the connection: a slow or silent
        // client holds only its own thread, and only for the handshake timeout.
        if let Err(error) = tls.handshake(shared.config.tls_handshake_timeout) {
            log::debug!("{id:?}: TLS handshake failed: {error}");
            shared.live().remove(index);
            metrics::shared_add(CloseReason::TlsHandshake.counter(&shared.stats), 1);
            drop(stream);
            metrics::shared_sub(&shared.stats.active, 1);
            return;
        }
    }
    let stream = Arc::new(stream);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        drive(&stream, peer, protocol, id, shared)
    }));
    shared.live().remove(index);
    let reason = match outcome {
        Ok(reason) => reason,
        Err(payload) => {
            let report = ErrorReport {
                conn: Some(id),
                peer,
                message: panic_message(payload.as_ref()),
            };
            (shared.on_error)(&report);
            CloseReason::Panic
        }
    };
    metrics::shared_add(reason.counter(&shared.stats), 1);
    log::debug!("{id:?}: closed ({reason:?})");
    drop(stream);
    metrics::shared_sub(&shared.stats.active, 1);
}

/// A blocking connection as other threads reach it: its session, behind a lock that its own
/// thread holds for every step but the wait for input, and its socket. A notice (a pub/sub
/// delivery) runs on the sender's thread, which writes the answer to the socket itself,
/// waiting for a slow peer as the writer of a blocking server does.
struct Connection<P: Protocol> {
    session: Mutex<Session<P>>,
    stream: Arc<BlockingStream>,
    stats: Arc<Stats>,
    /// How long a notice's sender waits for the peer to take its answer before the
    /// connection is cut: the ping timeout, after which a WebSocket peer counts as dead.
    write_wait: Duration,
}

impl<P: Protocol> Connection<P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Session<P>> {
        // A panic in a callback ends the connection; its session is not looked at again
        // except to be closed, which poisoning must not prevent.
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<P: Protocol + Send> crate::worker::DirectDelivery for Connection<P> {
    fn deliver(&self, notice: &crate::worker::Notice) {
        let mut session = self.lock();
        session.notice(notice);
        if session.pending_output() == 0 {
            return;
        }
        let mut written = write_within(&self.stream, &mut session, &self.stats, self.write_wait);
        // A protocol that waited for its output to be written goes on (it may write again).
        while written.is_ok() && session.take_drain_wanted() {
            session.drained();
            written = write_within(&self.stream, &mut session, &self.stats, self.write_wait);
        }
        if written.is_err() {
            // Its own thread, blocked in a read, sees the end and closes the connection.
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Writes the session's pending output, waiting at most `wait` for the socket to take it.
fn write_within<P: Protocol>(
    stream: &BlockingStream,
    session: &mut Session<P>,
    stats: &Stats,
    wait: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        let before = session.pending_output();
        let mut socket = stream.without_waiting();
        // A layer (TLS) may hold what the socket did not take: it must be out too.
        let outcome = session
            .write_output(&mut socket)
            .and_then(|()| socket.flush());
        metrics::shared_add(&stats.bytes_out, (before - session.pending_output()) as u64);
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) if would_block(&error) || interrupted(&error) => {}
            Err(error) => return Err(error),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut writable = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let millis = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for an open descriptor, for the duration of the call.
        unsafe { libc::poll(&mut writable, 1, millis) };
    }
}

/// The blocking connection loop: write what is pending, close if asked, else wait for input,
/// the protocol's timer, or the idle timeout, whichever comes first.
fn drive<P: Protocol + Send>(
    stream: &Arc<BlockingStream>,
    peer: Option<SocketAddr>,
    protocol: P,
    id: ConnId,
    shared: &Shared,
) -> CloseReason {
    let connection = Arc::new_cyclic(|myself: &std::sync::Weak<Connection<P>>| {
        let identity = stream.identity().map(|identity| (**identity).clone());
        let mut session = Session::with_identity(protocol, id, peer, identity);
        session.record_into(shared.stats.clone());
        session.report_errors_to(shared.on_error.clone());
        let direct: std::sync::Weak<dyn crate::worker::DirectDelivery> = myself.clone();
        session.set_mailbox(crate::worker::Mailbox::direct(direct));
        Connection {
            session: Mutex::new(session),
            stream: stream.clone(),
            stats: shared.stats.clone(),
            write_wait: shared.config.ws_ping_timeout,
        }
    });
    let reason = drive_session(stream, &connection, shared);
    connection.lock().closed();
    reason
}

/// The loop of [`drive`], over its connection.
fn drive_session<P: Protocol>(
    stream: &BlockingStream,
    connection: &Connection<P>,
    shared: &Shared,
) -> CloseReason {
    let config = &shared.config;
    let stats = &shared.stats;
    let mut socket = stream;
    let mut chunk = vec![0u8; config.read_chunk_bytes];
    let mut last_active = Instant::now();
    let mut read_timeout: Option<Duration> = None;
    let mut shutdown_delivered = false;
    if shared.shutting_down.load(Ordering::Acquire) {
        connection.lock().shutdown();
        shutdown_delivered = true;
    }
    loop {
        {
            let mut session = connection.lock();
            let pending = session.pending_output();
            if pending > 0 {
                if pending > config.write_hard_limit {
                    return CloseReason::OverLimit;
                }
                metrics::shared_raise(&stats.peak_pending_output, pending as u64);
                if let Err(reason) = write_pending(stream, &mut session, stats) {
                    return reason;
                }
                last_active = Instant::now();
            }
            if session.pending_output() == 0 && session.take_drain_wanted() {
                // Written: a protocol that waited for that goes on; what it writes goes next.
                session.drained();
                continue;
            }
            match session.close_request() {
                Some(CloseRequest::Abort) => return CloseReason::Protocol,
                Some(request) => {
                    let eof = session.is_eof();
                    drop(session);
                    linger(stream, config.linger_timeout, eof);
                    return match request {
                        CloseRequest::Failed(_) => CloseReason::ProtocolError,
                        _ if eof => CloseReason::PeerClosed,
                        _ if shutdown_delivered => CloseReason::Shutdown,
                        _ => CloseReason::Protocol,
                    };
                }
                None if session.is_eof() => return CloseReason::PeerClosed,
                None => {}
            }

            let now = Instant::now();
            session.set_now(now);
            if session
                .timer_deadline()
                .is_some_and(|deadline| deadline <= now)
            {
                session.fire_timer();
                continue;
            }
            let idle_deadline = config.idle_timeout.map(|idle| last_active + idle);
            if idle_deadline.is_some_and(|deadline| deadline <= now) {
                return CloseReason::Idle;
            }
            let wake = match (session.timer_deadline(), idle_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Zero would mean "no timeout" to the socket: wait at least a millisecond.
            let timeout = wake.map(|at| {
                at.saturating_duration_since(now)
                    .max(Duration::from_millis(1))
            });
            if timeout != read_timeout {
                if let Err(error) = stream.set_read_timeout(timeout) {
                    return closed_by(&error);
                }
                read_timeout = timeout;
            }
        }
        // The wait for input holds no lock: a notice can be delivered meanwhile.
        let read = socket.read(&mut chunk);
        let mut session = connection.lock();
        match read {
            Ok(0) if shared.shutting_down.load(Ordering::Acquire) && !shutdown_delivered => {
                shutdown_delivered = true;
                session.shutdown();
            }
            Ok(0) => session.eof(),
            Ok(count) => {
                last_active = Instant::now();
                metrics::shared_add(&stats.bytes_in, count as u64);
                session.feed(&chunk[..count]);
                if session.buffered_input().len() >= config.max_input_bytes {
                    return CloseReason::OverLimit;
                }
            }
            // A read timeout: loop round to fire the timer or close as idle.
            Err(error) if would_block(&error) || interrupted(&error) => {}
            Err(error) => return closed_by(&error),
        }
    }
}

/// Writes the session's pending output: first without waiting, which is all it takes while the
/// peer keeps up; if the socket cannot take it all at once, the connection is in backpressure
/// (counted), and the rest is written blocking, up to the write timeout. The time spent waiting
/// does not count against an input timer, since nothing was read meanwhile.
fn write_pending<P: Protocol>(
    stream: &BlockingStream,
    session: &mut Session<P>,
    stats: &Stats,
) -> std::result::Result<(), CloseReason> {
    // Every byte the socket takes is counted, whichever way it was written.
    // A layer (TLS) may hold what the socket did not take: flushing writes that too.
    let write = |session: &mut Session<P>, mut sink: &mut dyn std::io::Write| {
        let before = session.pending_output();
        let outcome = session.write_output(&mut sink).and_then(|()| sink.flush());
        metrics::shared_add(&stats.bytes_out, (before - session.pending_output()) as u64);
        outcome
    };
    match write(session, &mut stream.without_waiting()) {
        Ok(()) => return Ok(()),
        Err(error) if would_block(&error) => {}
        Err(error) => return Err(closed_by(&error)),
    }
    metrics::shared_add(&stats.backpressure_pauses, 1);
    let waiting_since = Instant::now();
    let mut socket = stream;
    let outcome = write(session, &mut socket);
    session.postpone_input_timer(waiting_since.elapsed());
    match outcome {
        Ok(()) => {
            session.drained();
            Ok(())
        }
        // The write timeout (the idle timeout) passed with the peer taking nothing.
        Err(error) if would_block(&error) => Err(CloseReason::Idle),
        Err(error) => Err(closed_by(&error)),
    }
}

fn closed_by(error: &io::Error) -> CloseReason {
    if is_disconnect(error) {
        CloseReason::Reset
    } else {
        log::warn!("I/O error: {error}");
        CloseReason::IoError
    }
}

/// Lingering close on a blocking socket: shut the write side, then read and discard until end
/// of stream, an error, or `linger` has passed (see the reactor's lingering close).
fn linger(stream: &BlockingStream, linger: Duration, peer_done: bool) {
    if peer_done || linger.is_zero() || stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + linger;
    let mut socket = stream;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match socket.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
