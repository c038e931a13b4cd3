//! The accept loop: drain the listener within a budget, admit or refuse, and survive running out
//! of descriptors.
//!
//! When `accept` fails with EMFILE/ENFILE the pending connection stays in the kernel's backlog and
//! the listener stays readable, so retrying at once would spin at 100 % CPU. Instead accepting
//! pauses, a warning is logged (at most once per pause, and pauses are rate-limited by the timer),
//! and a timer resumes it after [`Config::accept_pause`](crate::Config::accept_pause). Listener
//! events during the pause are ignored; the resume drains whatever queued up meanwhile.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;

use super::connection::Connection;
use super::{Core, Reactor, TimerEvent};
use crate::error::{interrupted, is_accept_transient, is_fd_exhaustion, would_block};
use crate::lifecycle::WARN_INTERVAL;
use crate::metrics;
use crate::net::{Listener, Stream};
use crate::protocol::Protocol;

/// The listening socket and what the accept loop remembers between turns.
pub(crate) struct Acceptor {
    /// The listener; `None` once shutdown has begun (dropping it stops new connections).
    pub(crate) listener: Option<Listener>,
    /// Accepting is paused until the resume timer fires.
    pub(crate) paused: bool,
    /// The accept budget ran out with connections possibly still waiting.
    pub(crate) ready_again: bool,
    /// When the last exhaustion warning was logged.
    last_warning: Option<Instant>,
}

impl Acceptor {
    pub(crate) fn new(listener: Option<Listener>) -> Self {
        Acceptor {
            listener,
            paused: false,
            ready_again: false,
            last_warning: None,
        }
    }

    /// Pauses accepting after running out of descriptors and arms the resume timer.
    fn pause(&mut self, core: &mut Core, error: &io::Error) {
        self.paused = true;
        metrics::add(&core.stats.accept_pauses, 1);
        let now = core.clock.now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL)
        {
            self.last_warning = Some(now);
            log::warn!(
                "accept failed ({error}); pausing accepts for {:?} (further warnings suppressed for {:?})",
                core.config.accept_pause,
                WARN_INTERVAL
            );
        }
        core.timers.schedule(
            core.clock.now_tick().after(core.config.accept_pause),
            TimerEvent::AcceptResume,
        );
    }
}

impl<P: Protocol, F: FnMut() -> P> Reactor<P, F> {
    /// Accepts until `WouldBlock`, the budget, or descriptor exhaustion.
    pub(crate) fn accept_ready(&mut self) {
        self.acceptor.ready_again = false;
        if self.acceptor.paused || self.core.draining {
            return;
        }
        for _ in 0..self.core.config.accept_budget {
            let Some(listener) = &self.acceptor.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(error) if would_block(&error) => return,
                Err(error) if interrupted(&error) || is_accept_transient(&error) => {}
                Err(error) if is_fd_exhaustion(&error) => {
                    return self.acceptor.pause(&mut self.core, &error);
                }
                Err(error) => {
                    // Unknown errors are treated like exhaustion: back off, never spin.
                    return self.acceptor.pause(&mut self.core, &error);
                }
            }
        }
        self.acceptor.ready_again = true;
    }

    /// Turns an accepted socket into a connection, or refuses it at once.
    fn admit(&mut self, stream: Stream, peer: Option<SocketAddr>) {
        let shown = peer.map_or_else(|| "unix peer".to_string(), |peer| peer.to_string());
        let core = &mut self.core;
        // A trusted balancer names its client in a PROXY header: that client is verified once
        // the header is read.
        let from_balancer = peer.is_some_and(|peer| {
            let ip = peer.ip().to_canonical();
            core.config
                .proxy_protocol_from
                .iter()
                .any(|range| range.contains(&ip))
        });
        // Unix peers have no address to verify: the socket file's permissions guard them.
        if let (Some(verify), Some(peer), false) = (&core.verify, peer, from_balancer) {
            if !verify(peer) {
                metrics::add(&core.stats.refused_by_verify, 1);
                log::debug!("refused {peer}: rejected by the verify hook");
                return;
            }
        }
        // The cap is the server's: every loop (and prefork worker) counts against it.
        if !core.admission.try_admit() {
            // Dropping the socket closes it now: the client sees end of stream, not a hang.
            metrics::add(&core.stats.refused_over_capacity, 1);
            log::debug!(
                "refused {shown}: {} connections open on the server",
                core.config.max_connections
            );
            return;
        }
        if let Err(error) = stream.apply_options(&core.config) {
            log::debug!("{shown}: setting socket options failed: {error}");
        }
        let stream = match &core.layer {
            None => stream,
            Some(layer) => match layer(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    log::warn!("{shown}: setting up the TLS layer failed: {error}");
                    core.admission.release();
                    return;
                }
            },
        };
        let now = core.clock.now_tick();
        let protocol = (self.factory)();
        let id = self
            .connections
            .insert_with(|id| Connection::new(id, stream, protocol, now));
        let Some(conn) = self.connections.get_mut(id) else {
            return;
        };
        if let Err(error) =
            core.poll
                .registry()
                .register(&mut conn.stream, id.token(), Interest::READABLE)
        {
            log::warn!("{shown}: register failed: {error}");
            self.connections.remove(id);
            core.admission.release();
            return;
        }
        metrics::add(&core.stats.accepted, 1);
        metrics::add(&core.stats.active, 1);
        if let Some(idle) = core.config.idle_timeout {
            core.timers.schedule(now.after(idle), TimerEvent::Idle(id));
        }
        log::debug!("{id:?}: accepted {shown}");
        if from_balancer {
            // The header first, then any handshake, within both their timeouts.
            conn.flags |= super::connection::flag::OPENING | super::connection::flag::PROXY_HEADER;
            let mut timeout = core.config.proxy_header_timeout;
            if conn.stream.is_opening() {
                timeout += core.config.tls_handshake_timeout;
            }
            core.timers
                .schedule(now.after(timeout), TimerEvent::OpenTimeout(id));
            return;
        }
        if conn.stream.is_opening() {
            // The protocol hears `on_open` once the handshake is done (`opening_ready`); the
            // first event for the socket (registered with input waiting, epoll reports it at
            // once) drives it.
            conn.flags |= super::connection::flag::OPENING;
            core.timers.schedule(
                now.after(core.config.tls_handshake_timeout),
                TimerEvent::OpenTimeout(id),
            );
            return;
        }
        conn.call(core, |protocol, ctx| protocol.on_open(ctx));
        conn.conclude(core);
    }
}
