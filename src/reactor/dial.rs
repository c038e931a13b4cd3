//! Dialled connections: outbound TCP connects that the loop drives beside the accepted ones.
//!
//! A dial is a non-blocking `connect`. Its end is seen as writability, and its outcome read
//! from `SO_ERROR`; until then the connection is `CONNECTING` and nothing is fed or written.
//! From the moment it connects it is a connection like any other: the same generation-checked
//! [`ConnId`], buffers, watermarks, timers and close paths, and its protocol hears `on_open`.
//! A connect that is refused, fails or outlasts its timeout closes the connection, and the
//! protocol hears `on_closed` as for any other end.
//!
//! Reconnecting is the protocol's call, and its timing the protocol's policy: from `on_closed`
//! it may ask to be dialled again after a delay
//! ([`Context::reconnect_after`](crate::protocol::Context::reconnect_after)). The loop then keeps
//! the protocol (and so everything it remembers) until a timer dials the same address again.
//! The new connection has a new `ConnId`, so nothing addressed to the old one reaches it.
//!
//! Dialled connections do not count against `max_connections`, which bounds what peers may
//! open; they count in the `connections_active` gauge and in `socketserver_dials_total`.

use std::net::SocketAddr;
use std::time::Duration;

use mio::Interest;

use super::connection::{flag, Connection};
use super::token::ConnId;
use super::{Reactor, TimerEvent};
use crate::lifecycle::CloseReason;
use crate::metrics;
use crate::net::{ConnectStart, Stream};
use crate::protocol::Protocol;

/// Where to connect, and for how long to try.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// A connect not finished after this long is abandoned (closed as timed out).
    pub connect_timeout: Duration,
    /// Set when the protocol asked, as the connection ended, to be dialled again this much
    /// later.
    pub(crate) reconnect_after: Option<Duration>,
}

impl Dial {
    /// A dial to `addr` that waits at most `connect_timeout` for the connect.
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Dial {
        Dial {
            addr,
            connect_timeout,
            reconnect_after: None,
        }
    }
}

impl<P: Protocol, F: FnMut() -> P> Reactor<P, F> {
    /// Starts connecting to `dial.addr` with `protocol` on the other end of it. Fails only if
    /// no socket could be made (descriptors ran out); the protocol is then handed back.
    pub(crate) fn dial(&mut self, dial: Dial, protocol: P) -> Result<ConnId, (std::io::Error, P)> {
        let (stream, start) = match Stream::connect(dial.addr) {
            Ok(started) => started,
            Err(error) => return Err((error, protocol)),
        };
        let core = &mut self.core;
        metrics::add(&core.stats.dials_started, 1);
        metrics::add(&core.stats.active, 1);
        let now = core.clock.now_tick();
        let timeout = now.after(dial.connect_timeout);
        let id = self.connections.insert_with(|id| {
            let mut conn = Connection::new(id, stream, protocol, now);
            conn.flags = flag::CONNECTING | flag::WANT_WRITE;
            conn
        });
        core.dialled.insert(id, dial);
        let Some(conn) = self.connections.get_mut(id) else {
            return Ok(id);
        };
        if let Err(error) = core.poll.registry().register(
            &mut conn.stream,
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("{id:?}: register failed: {error}");
            conn.close(core, CloseReason::IoError);
            return Ok(id);
        }
        match start {
            ConnectStart::InProgress => {
                core.timers
                    .schedule(timeout, TimerEvent::ConnectTimeout(id));
            }
            ConnectStart::Connected => conn.connected(core, &mut self.read_chunk),
            ConnectStart::Failed(error) => {
                log::debug!("{id:?}: connect failed: {error}");
                conn.close(core, CloseReason::ConnectFailed);
            }
        }
        Ok(id)
    }

    /// A dialled connection was reaped: if its protocol asked to be dialled again (and the
    /// loop is not shutting down), it waits for its timer; otherwise it is dropped.
    pub(crate) fn ended_dialled(&mut self, mut dial: Dial, protocol: P) {
        let Some(after) = dial.reconnect_after.take() else {
            return;
        };
        if self.core.draining {
            return;
        }
        let key = self.next_waiting;
        self.next_waiting += 1;
        self.waiting.insert(key, (dial, protocol));
        let due = self.core.clock.now_tick().after(after);
        self.core.timers.schedule(due, TimerEvent::Redial(key));
    }

    /// A waiting protocol's redial timer came due: dial its address again.
    pub(crate) fn redial(&mut self, key: u64) {
        let Some((dial, protocol)) = self.waiting.remove(&key) else {
            return;
        };
        metrics::add(&self.core.stats.redials, 1);
        if let Err((error, protocol)) = self.dial(dial.clone(), protocol) {
            // No socket to be had (descriptors ran out): wait as the accept loop does, then
            // try again, rather than drop a protocol that asked to go on.
            log::warn!("redialling {}: {error}", dial.addr);
            let pause = self.core.config.accept_pause;
            self.waiting.insert(key, (dial, protocol));
            let due = self.core.clock.now_tick().after(pause);
            self.core.timers.schedule(due, TimerEvent::Redial(key));
        }
    }
}
