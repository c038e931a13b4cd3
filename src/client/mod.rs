//! The client side: connections this process dials, the policy for dialling them again, and the
//! WebSocket, pub/sub and upstream clients built on them.
//!
//! The same sans-IO protocols run on both ends. What is client-specific lives here:
//!
//! * [`Clients`]: an event loop that only dials. It is the server's reactor with no listener,
//!   so dialled connections have the same identity, buffers, timers, watermarks and close paths
//!   as accepted ones (see [`reactor::dial`](crate::reactor::dial)). Many clients on one thread,
//!   for tools and load.
//! * [`Blocking`]: one dialled connection driven by the calling thread, for scripts and tests.
//! * [`Backoff`] and [`Retry`]: when to dial again.
//! * [`ws`]: the WebSocket client (the codec's client role) and its blocking API.
//! * [`pubsub`]: the pub/sub client that resumes where it left off.
//! * [`upstream`]: a keep-alive pool of connections to upstream servers, with failover.
//!
//! A protocol on a dialled connection hears `on_open` each time a connect succeeds and
//! `on_closed` each time a connection (or an attempt at one) ends; from `on_closed` it may ask
//! to be dialled again ([`Context::reconnect_after`](crate::protocol::Context::reconnect_after)),
//! keeping everything it remembers.

pub mod backoff;
pub mod blocking;
pub mod pubsub;
pub mod upstream;

pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

pub use backoff::{Backoff, Jitter, Retry};
pub use blocking::Blocking;

use crate::admission::Admission;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lifecycle::ShutdownSignal;
use crate::metrics::{StatsSet, StatsSnapshot};
use crate::protocol::Protocol;
use crate::reactor::completions::{self, Notifier};
use crate::reactor::dial::Dial;
use crate::reactor::{poll_with_waker, Parts, Reactor};
use crate::worker::Mailbox;
use crate::ConnId;

/// A loop with no listener never makes a protocol for an accepted connection.
fn no_listener<P>() -> P {
    unreachable!("a client loop has no listener, so it never accepts")
}

/// An event loop of dialled connections, all with protocol `P`, on the thread that runs it.
///
/// ```no_run
/// use socketserver::client::Clients;
/// use socketserver::protocol::Echo;
/// use socketserver::Config;
///
/// let mut clients = Clients::new(Config::default())?;
/// for _ in 0..1000 {
///     clients.dial("127.0.0.1:7000".parse().unwrap(), Echo)?;
/// }
/// let handle = clients.handle();
/// std::thread::spawn(move || clients.run());
/// // ... later
/// handle.shutdown();
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// `Config::connect_timeout` bounds each connect, `Config::idle_timeout` applies as to accepted
/// connections (set it to `None` for long connections kept alive by heartbeats), and
/// `Config::handle_signals` lets SIGINT/SIGTERM stop the loop. The loop runs until
/// [`ClientsHandle::shutdown`] (or a signal) and every connection has finished.
pub struct Clients<P: Protocol> {
    reactor: Reactor<P, fn() -> P>,
    handle: ClientsHandle,
}

/// Reaches a running [`Clients`] loop from other threads.
#[derive(Clone)]
pub struct ClientsHandle {
    shutdown: Arc<ShutdownSignal>,
    stats: Arc<StatsSet>,
    mailbox: Mailbox,
}

impl ClientsHandle {
    /// Stops the loop: every connection is asked to finish (`on_shutdown`), nothing is dialled
    /// again, and `run` returns once all have closed or the shutdown timeout passed.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// The loop's counters (dials, bytes, closes).
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Where other threads send notices to the loop's connections (by [`ConnId`]).
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }
}

impl<P: Protocol> Clients<P> {
    /// A loop with `config` (validated), not yet running.
    pub fn new(config: Config) -> Result<Clients<P>> {
        config.validate()?;
        let (poll, waker) = poll_with_waker()?;
        let stats = Arc::new(StatsSet::default());
        let shutdown = Arc::new(ShutdownSignal::new(waker.clone()));
        let (sender, receiver) = completions::channel(Notifier::new(waker));
        let mailbox = Mailbox::new(sender.clone());
        let reactor = Reactor::new(Parts {
            config,
            poll,
            listener: None,
            stats: stats.add_part(),
            pool: None,
            completions: (sender, receiver),
            shutdown: shutdown.clone(),
            verify: None,
            on_error: Arc::new(crate::lifecycle::default_error_hook),
            // Dialled connections are not admitted: the cap is for what peers open.
            admission: Admission::local(0),
            layer: None,
            factory: no_listener::<P> as fn() -> P,
        })?;
        Ok(Clients {
            reactor,
            handle: ClientsHandle {
                shutdown,
                stats,
                mailbox,
            },
        })
    }

    /// Starts connecting to `addr`, with `protocol` on this end. The connect goes on while the
    /// loop runs; its outcome reaches the protocol (`on_open`, or `on_closed`).
    pub fn dial(&mut self, addr: SocketAddr, protocol: P) -> Result<ConnId> {
        let dial = Dial::new(addr, self.reactor.core.config.connect_timeout);
        self.reactor
            .dial(dial, protocol)
            .map_err(|(error, _)| Error::io(format!("dialling {addr}"), error))
    }

    /// A handle for other threads: shutdown, counters, mailbox.
    pub fn handle(&self) -> ClientsHandle {
        self.handle.clone()
    }

    /// Runs the loop on this thread until a shutdown completes.
    pub fn run(self) -> Result<()> {
        self.reactor.run()
    }
}
