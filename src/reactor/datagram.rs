//! The datagram loop: one thread, one `mio::Poll`, one datagram socket (UDP or Unix), a
//! [`DatagramProtocol`] answering each datagram.
//!
//! A datagram socket has no connections, so this loop is much smaller than the stream
//! reactor: no slab, no per-connection timers. It keeps the same contract where it applies:
//!
//! * **Edge-triggered means drain**, bounded by a budget: up to `read_budget` datagrams per turn,
//!   then the next poll uses timeout 0 if the socket may hold more.
//! * **Direct writes.** Answers are sent right after the datagram that caused them; only what
//!   the socket refuses (`WouldBlock`) waits in the outbox, and only then is writable interest
//!   registered. An idle socket costs no wake-ups.
//! * **Output is bounded.** While the outbox is full the loop stops receiving: the kernel's
//!   receive buffer absorbs the burst and then drops, which for datagrams is the honest form of
//!   backpressure.
//! * **Errors are not fatal.** A send that fails (an ICMP-reported unreachable port, a Unix
//!   peer whose socket is gone) loses that datagram and is counted; receive errors are counted
//!   and the loop goes on. A datagram over `max_datagram_bytes` is dropped whole, never
//!   truncated.
//! * **Graceful shutdown**: stop receiving, send what the outbox holds (up to
//!   `shutdown_timeout`), return.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use signal_hook_mio::v1_0::Signals;

use super::completions::ShutdownSignal;
use super::token::{LISTENER, SIGNALS};
use super::{register_signals, shutdown_signalled, ErrorHook, VerifyHook};
use crate::config::Config;
use crate::error::{interrupted, would_block, Error, Result};
use crate::metrics::{self, Stats};
use crate::net::DatagramSocket;
use crate::protocol::{DatagramProtocol, Outbox, Peer};
use crate::server::ErrorReport;
use crate::worker::panic_message;

/// Runs a protocol over datagrams, whatever drives the socket: takes a received datagram, calls
/// the protocol (catching panics), sends the answers. Used by this loop and by the blocking
/// datagram driver; its counters are written by its own thread only.
pub(crate) struct DatagramHandler<P, F> {
    protocol: P,
    factory: F,
    pub(crate) outbox: Outbox,
    /// Receive buffer: one byte more than the largest datagram taken in.
    pub(crate) buffer: Vec<u8>,
    max_datagram_bytes: usize,
    stats: Arc<Stats>,
    /// Datagrams from UDP peers it rejects are dropped unseen.
    verify: Option<VerifyHook>,
    on_error: ErrorHook,
}

impl<P: DatagramProtocol, F: FnMut() -> P> DatagramHandler<P, F> {
    pub(crate) fn new(config: &Config, mut factory: F, hooks: Hooks, stats: Arc<Stats>) -> Self {
        DatagramHandler {
            protocol: factory(),
            factory,
            outbox: Outbox::new(config.datagram_queue),
            buffer: vec![0; config.max_datagram_bytes + 1],
            max_datagram_bytes: config.max_datagram_bytes,
            stats,
            verify: hooks.verify,
            on_error: hooks.on_error,
        }
    }

    /// Hands the datagram of `length` bytes now in the buffer to the protocol. `length` is the
    /// datagram's true length, which may exceed the buffer: such a datagram is dropped.
    pub(crate) fn handle(&mut self, length: usize, from: &Peer) {
        if length > self.max_datagram_bytes {
            log::debug!("{from}: dropped a datagram of {length} bytes (over the limit)");
            metrics::add(&self.stats.datagrams_dropped, 1);
            return;
        }
        if let (Some(verify), Peer::Inet(addr)) = (&self.verify, from) {
            if !verify(*addr) {
                metrics::add(&self.stats.refused_by_verify, 1);
                return;
            }
        }
        metrics::add(&self.stats.datagrams_in, 1);
        metrics::add(&self.stats.bytes_in, length as u64);
        let queued = self.outbox.len();
        let (protocol, outbox, datagram) =
            (&mut self.protocol, &mut self.outbox, &self.buffer[..length]);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            protocol.on_datagram(datagram, from, outbox)
        }));
        if let Err(payload) = outcome {
            // Whatever the failed call queued is discarded with the instance it came from.
            self.outbox.truncate(queued);
            self.protocol = (self.factory)();
            metrics::add(&self.stats.datagram_panics, 1);
            (self.on_error)(&ErrorReport {
                conn: None,
                peer: match from {
                    Peer::Inet(addr) => Some(*addr),
                    Peer::Unix(_) => None,
                },
                message: panic_message(payload.as_ref()),
            });
        }
        metrics::add(&self.stats.datagrams_dropped, self.outbox.take_dropped());
    }

    /// Sends queued answers until the outbox is empty or the socket would block (the only
    /// error returned). An answer the socket rejects for any other reason is dropped and
    /// counted.
    pub(crate) fn send_pending(&mut self, socket: &DatagramSocket) -> io::Result<()> {
        while let Some(answer) = self.outbox.front() {
            match socket.send_to(&answer.data, &answer.to) {
                Ok(sent) => {
                    metrics::add(&self.stats.datagrams_out, 1);
                    metrics::add(&self.stats.bytes_out, sent as u64);
                }
                Err(error) if would_block(&error) => return Err(error),
                Err(error) if interrupted(&error) => continue,
                Err(error) => {
                    log::debug!("sending to {}: {error}", answer.to);
                    metrics::add(&self.stats.datagram_errors, 1);
                }
            }
            self.outbox.pop();
        }
        Ok(())
    }

    /// Drops the oldest queued answer (a blocking send that timed out), counting it.
    pub(crate) fn drop_oldest(&mut self) {
        if self.outbox.pop().is_some() {
            metrics::add(&self.stats.datagrams_dropped, 1);
        }
    }

    /// Counts a receive error other than `WouldBlock` and `Interrupted`. On Linux an unconnected
    /// socket does not report ICMP errors, but other systems (and connected sockets) do, as
    /// ECONNREFUSED on the next receive: it concerns an earlier send, never this socket.
    pub(crate) fn receive_failed(&self, error: &io::Error) {
        log::debug!("receiving a datagram: {error}");
        metrics::add(&self.stats.datagram_errors, 1);
    }
}

/// The hooks a datagram server calls.
#[derive(Clone)]
pub(crate) struct Hooks {
    pub(crate) verify: Option<VerifyHook>,
    pub(crate) on_error: ErrorHook,
}

/// What a datagram loop is built from (assembled by
/// [`DatagramServer`](crate::DatagramServer)).
pub(crate) struct DatagramParts<F> {
    pub(crate) config: Config,
    pub(crate) poll: Poll,
    pub(crate) socket: DatagramSocket,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: Arc<ShutdownSignal>,
    pub(crate) hooks: Hooks,
    pub(crate) factory: F,
}

/// A datagram loop with its socket and signals registered, ready to run.
pub(crate) struct DatagramLoop<F> {
    parts: DatagramParts<F>,
    signals: Option<Signals>,
}

impl<F> DatagramLoop<F> {
    /// Registers the socket (and the signals, if the config handles them).
    pub(crate) fn new(parts: DatagramParts<F>) -> Result<Self> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&parts.socket);
        parts
            .poll
            .registry()
            .register(&mut SourceFd(&fd), LISTENER, Interest::READABLE)
            .map_err(|error| Error::io("registering the socket", error))?;
        let signals = register_signals(parts.poll.registry(), &parts.config)?;
        Ok(DatagramLoop { parts, signals })
    }

    /// Runs the loop until a graceful shutdown completes.
    pub(crate) fn run<P>(self) -> Result<()>
    where
        P: DatagramProtocol,
        F: FnMut() -> P,
    {
        let DatagramLoop {
            parts:
                DatagramParts {
                    config,
                    mut poll,
                    socket,
                    stats,
                    shutdown,
                    hooks,
                    factory,
                },
            mut signals,
        } = self;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let mut handler = DatagramHandler::new(&config, factory, hooks, stats.clone());
        let mut events = Events::with_capacity(64);
        // Latched readiness (edge-triggered): set by an event, cleared by WouldBlock.
        let mut readable = false;
        let mut writable = true;
        let mut want_write = false;
        let mut deadline: Option<Instant> = None;
        loop {
            let can_receive = readable && deadline.is_none() && !handler.outbox.is_full();
            let timeout = if can_receive {
                Some(Duration::ZERO)
            } else {
                deadline.map(|at| at.saturating_duration_since(Instant::now()))
            };
            if let Err(error) = poll.poll(&mut events, timeout) {
                if !interrupted(&error) {
                    return Err(Error::io("polling", error));
                }
            }
            let turn_started = Instant::now();
            metrics::add(&stats.turns, 1);
            for event in events.iter() {
                match event.token() {
                    LISTENER => {
                        readable |= event.is_readable() || event.is_error();
                        writable |= event.is_writable() || event.is_error();
                    }
                    SIGNALS if shutdown_signalled(&mut signals) => shutdown.trigger(),
                    // The waker (or a spurious signal wake-up) only ends the poll, so that the
                    // shutdown flag below is looked at.
                    _ => {}
                }
            }
            if shutdown.is_requested() && deadline.is_none() {
                deadline = Some(Instant::now() + config.shutdown_timeout);
            }
            if writable && handler.send_pending(&socket).is_err() {
                writable = false;
            }
            if readable && deadline.is_none() {
                readable = receive_batch(&mut handler, &socket, config.read_budget, &mut writable);
            }
            if let Some(at) = deadline {
                if handler.outbox.is_empty() || Instant::now() >= at {
                    let left = handler.outbox.len() as u64;
                    metrics::add(&stats.datagrams_dropped, left);
                    break;
                }
            }
            stats.turn_duration.observe(turn_started.elapsed());
            let wanted = !handler.outbox.is_empty();
            if wanted != want_write {
                want_write = wanted;
                let interest = if wanted {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                poll.registry()
                    .reregister(&mut SourceFd(&fd), LISTENER, interest)
                    .map_err(|error| Error::io("reregistering the socket", error))?;
            }
        }
        log::debug!("datagram loop stopped");
        Ok(())
    }
}

/// Receives up to `budget` datagrams, answering each at once. Returns whether the socket may
/// still be readable (the budget ran out, or the outbox filled up, before `WouldBlock`).
fn receive_batch<P: DatagramProtocol, F: FnMut() -> P>(
    handler: &mut DatagramHandler<P, F>,
    socket: &DatagramSocket,
    budget: usize,
    writable: &mut bool,
) -> bool {
    for _ in 0..budget {
        if handler.outbox.is_full() {
            return true;
        }
        match socket.recv_from(&mut handler.buffer) {
            Ok((length, from)) => {
                handler.handle(length, &from);
                if *writable && handler.send_pending(socket).is_err() {
                    *writable = false;
                }
            }
            Err(error) if would_block(&error) => return false,
            Err(error) if interrupted(&error) => {}
            Err(error) => handler.receive_failed(&error),
        }
    }
    true
}
