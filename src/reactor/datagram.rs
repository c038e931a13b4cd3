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

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use signal_hook_mio::v1_0::Signals;

use super::token::{LISTENER, SIGNALS};
use crate::config::Config;
use crate::error::{interrupted, would_block, Error, Result};
use crate::lifecycle::{register_signals, shutdown_signalled, ShutdownSignal};
use crate::metrics::{self, Stats};
use crate::net::DatagramSocket;
use crate::protocol::datagram_handler::{DatagramHandler, Hooks};
use crate::protocol::DatagramProtocol;

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
                    SIGNALS if shutdown_signalled(&mut signals) => {
                        shutdown.drain();
                    }
                    // The waker (or a spurious signal wake-up) only ends the poll, so that the
                    // shutdown flag below is looked at.
                    _ => {}
                }
            }
            if shutdown.is_requested() && deadline.is_none() {
                deadline = Some(Instant::now() + config.shutdown_timeout);
            }
            if writable
                && handler
                    .send_pending(|data, to| socket.send_to(data, to))
                    .is_err()
            {
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
                if *writable
                    && handler
                        .send_pending(|data, to| socket.send_to(data, to))
                        .is_err()
                {
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
