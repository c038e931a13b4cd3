//! The event loop, and nothing else: one thread, one `mio::Poll`, a slab of connections.
//!
//! # One turn
//!
//! ```text
//! poll(timeout)          sleep until readiness, a timer, or a wake-up; EINTR is an empty turn
//!   now = clock()        read the clock once; every decision this turn uses this `now`
//!   dispatch events      listener -> accept loop; waker -> completions and shutdown;
//!                        signals -> shutdown; connection -> latch readiness, then drive it
//!   ready-again list     connections (and the listener) that stopped on a fairness budget
//!   timers               collect every due timer first, then run them
//!   reap                 remove closed connections from the slab: the one safe point per turn
//! ```
//!
//! The poll sleeps with timeout 0 while anything is on a ready-again list, otherwise until the
//! next timer; with nothing to do and no timer it sleeps until the kernel has news. An idle
//! connection therefore costs no wake-ups at all (and, with no idle timeout, no timer either).
//!
//! # Guarantees
//!
//! * An event, timer or worker result is acted on only if its [`ConnId`] generation matches the
//!   slot's current occupant; stale ones are counted and dropped.
//! * Slab entries are removed only when the turn ends, never in the middle of a batch, so a slot
//!   is never reused while events naming it may still be waiting in the same batch.
//! * Accept, read and write run until `WouldBlock` (edge-triggered), bounded per turn by budgets.
//! * Writable interest is registered only while output is pending.
//! * Output is bounded by watermarks (pause input) and a hard limit (close); input is bounded by
//!   [`Config::max_input_bytes`](crate::Config::max_input_bytes).
//!
//! # Not guaranteed
//!
//! * Fairness beyond the budgets: a connection is served at most `read_budget` reads per turn,
//!   but turns are not time-sliced, so a slow protocol callback delays everyone (offload it).
//! * Timer precision finer than the poll's (milliseconds), or timers firing before their turn.

pub(crate) mod accept;
pub mod buffer;
pub mod completions;
pub(crate) mod connection;
pub(crate) mod datagram;
pub mod dial;
pub mod timer;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll};
use signal_hook_mio::v1_0::Signals;

use self::accept::Acceptor;
use self::buffer::WriteBuf;
use self::completions::{CompletionSender, Completions};
use self::connection::{flag, Connection};
use self::dial::Dial;
use self::timer::{Clock, Tick, Timers};
use self::token::{ConnId, Slots, LISTENER, SIGNALS, WAKER};
use crate::admission::Admission;
use crate::config::Config;
use crate::error::{interrupted, Error, Result};
use crate::lifecycle::{
    register_signals, shutdown_signalled, CloseReason, ErrorHook, ShutdownSignal, VerifyHook,
};
use crate::metrics::{self, Stats};
use crate::protocol::Protocol;
use crate::worker::{Completion, JobDone, Mailbox, Notice, Recipients, WorkerPool};

/// A new poll and the waker that interrupts it (for shutdown and worker results).
pub(crate) fn poll_with_waker() -> Result<(Poll, Arc<mio::Waker>)> {
    let poll = Poll::new().map_err(|error| Error::io("creating a poll", error))?;
    let waker = mio::Waker::new(poll.registry(), WAKER)
        .map_err(|error| Error::io("creating a waker", error))?;
    Ok((poll, Arc::new(waker)))
}

/// What a timer is for. Connection timers carry the id (and sequence) they were armed for and
/// are dropped when those no longer match.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TimerEvent {
    /// Check the connection's idle deadline.
    Idle(ConnId),
    /// The connection's protocol timer (valid if its deadline is the connection's live entry).
    Protocol(ConnId),
    /// A lingering close has waited long enough for the peer's end of stream.
    Linger(ConnId),
    /// A dialled connection's connect has had its time.
    ConnectTimeout(ConnId),
    /// An accepted connection's layer (the TLS handshake) has had its time to open.
    OpenTimeout(ConnId),
    /// A dialled connection that ended is due to be dialled again (the key of its entry in
    /// [`Reactor::waiting`]).
    Redial(u64),
    /// Resume accepting after running out of descriptors.
    AcceptResume,
    /// Graceful shutdown ran out of time: cut whatever is left.
    ShutdownDeadline,
}

/// Everything the connections' code needs besides the connection itself.
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) poll: Poll,
    pub(crate) clock: Clock,
    pub(crate) timers: Timers<TimerEvent>,
    /// Scratch output for the callback running now; empty between callbacks.
    pub(crate) output: WriteBuf,
    /// The worker pool (shared by every reactor of a server), if it runs any threads.
    pub(crate) pool: Option<Arc<WorkerPool>>,
    /// This reactor's completion channel; every offloaded job carries a clone for its result.
    pub(crate) completion_sender: CompletionSender<Completion>,
    /// The same channel as a mailbox, for threads that send notices to this loop's connections.
    pub(crate) mailbox: Mailbox,
    pub(crate) stats: Arc<Stats>,
    /// Connections that stopped on their read budget with input left.
    pub(crate) ready_again: Vec<ConnId>,
    /// Connections closed this turn, removed from the slab when it ends.
    pub(crate) graveyard: Vec<ConnId>,
    pub(crate) verify: Option<VerifyHook>,
    pub(crate) on_error: ErrorHook,
    /// The server's count of connections held, against `max_connections` (shared by every
    /// loop of the server).
    pub(crate) admission: Admission,
    /// Graceful shutdown has begun.
    pub(crate) draining: bool,
    /// The dialled connections open now (accepted ones are not here): where each was dialled,
    /// and whether its protocol asked to be dialled again once it ends.
    pub(crate) dialled: HashMap<ConnId, Dial>,
    /// What wraps each accepted socket before its protocol sees it (TLS), if anything.
    pub(crate) layer: Option<crate::net::Layer>,
    /// The clients' addresses named by the PROXY headers of connections from trusted
    /// balancers, by connection (kept here, not in every connection: few servers use it).
    pub(crate) proxied_peers: HashMap<ConnId, std::net::SocketAddr>,
}

/// A single-threaded reactor serving one listener with protocol `P` made by `F`.
pub(crate) struct Reactor<P, F> {
    pub(crate) connections: Slots<Connection<P>>,
    /// The one read buffer every connection reads into.
    read_chunk: Vec<u8>,
    pub(crate) core: Core,
    pub(crate) acceptor: Acceptor,
    pub(crate) factory: F,
    completions: Completions<Completion>,
    /// Results taken from `completions`, being delivered; empty between wake-ups.
    completed: Vec<Completion>,
    /// Timers that came due, being run; empty between turns.
    due_timers: Vec<(Tick, TimerEvent)>,
    /// Set (and this loop woken) by a `ServerHandle`, or by a signal in any loop of the server.
    shutdown: Arc<ShutdownSignal>,
    signals: Option<Signals>,
    /// Protocols of dialled connections that ended and wait for their redial timer, by key.
    pub(crate) waiting: HashMap<u64, (Dial, P)>,
    /// The key the next waiting protocol gets (never reused, so a timer finds only its own).
    pub(crate) next_waiting: u64,
}

/// What a reactor is built from (assembled by [`Server`](crate::Server)).
pub(crate) struct Parts<F> {
    pub(crate) config: Config,
    pub(crate) poll: Poll,
    /// The listening socket; `None` for a loop that only dials (a client loop).
    pub(crate) listener: Option<crate::net::Listener>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) pool: Option<Arc<WorkerPool>>,
    pub(crate) completions: (CompletionSender<Completion>, Completions<Completion>),
    pub(crate) shutdown: Arc<ShutdownSignal>,
    pub(crate) verify: Option<VerifyHook>,
    pub(crate) on_error: ErrorHook,
    pub(crate) admission: Admission,
    /// What wraps each accepted socket (TLS), if anything.
    pub(crate) layer: Option<crate::net::Layer>,
    pub(crate) factory: F,
}

impl<P: Protocol, F: FnMut() -> P> Reactor<P, F> {
    /// Registers the listener (and the signal pipe, if asked for) and builds the loop.
    pub(crate) fn new(parts: Parts<F>) -> Result<Self> {
        let Parts {
            config,
            poll,
            mut listener,
            stats,
            pool,
            completions: (completion_sender, completions),
            shutdown,
            verify,
            on_error,
            admission,
            layer,
            factory,
        } = parts;
        if let Some(listener) = &mut listener {
            poll.registry()
                .register(listener, LISTENER, mio::Interest::READABLE)
                .map_err(|error| Error::io("registering the listener", error))?;
        }
        let signals = register_signals(poll.registry(), &config)?;
        let capacity = config.max_connections.min(65_536);
        Ok(Reactor {
            connections: Slots::with_capacity(capacity),
            read_chunk: vec![0; config.read_chunk_bytes],
            acceptor: Acceptor::new(listener),
            core: Core {
                config,
                poll,
                clock: Clock::new(),
                timers: Timers::default(),
                output: WriteBuf::default(),
                pool,
                mailbox: Mailbox::new(completion_sender.clone()),
                completion_sender,
                stats,
                ready_again: Vec::new(),
                graveyard: Vec::new(),
                verify,
                on_error,
                admission,
                draining: false,
                dialled: HashMap::new(),
                layer,
                proxied_peers: HashMap::new(),
            },
            factory,
            completions,
            completed: Vec::new(),
            due_timers: Vec::new(),
            shutdown,
            signals,
            waiting: HashMap::new(),
            next_waiting: 0,
        })
    }

    /// Runs turns until a graceful shutdown completes.
    pub(crate) fn run(mut self) -> Result<()> {
        let mut events = Events::with_capacity(self.core.config.events_per_poll);
        loop {
            self.turn(&mut events)?;
            if self.core.draining && self.connections.is_empty() {
                break;
            }
        }
        log::debug!("reactor stopped");
        Ok(())
    }

    /// One turn: poll, dispatch, ready-again, timers, reap.
    fn turn(&mut self, events: &mut Events) -> Result<()> {
        let timeout = if self.acceptor.ready_again || !self.core.ready_again.is_empty() {
            Some(Duration::ZERO)
        } else {
            self.core.timers.poll_timeout(self.core.clock.now_tick())
        };
        if let Err(error) = self.core.poll.poll(events, timeout) {
            if !interrupted(&error) {
                return Err(Error::io("polling", error));
            }
            // EINTR: an empty turn; the timers below still run.
        }
        let turn_started = self.core.clock.update();
        let now = self.core.clock.now_tick();
        metrics::add(&self.core.stats.turns, 1);

        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_ready(),
                WAKER => self.on_wake(),
                SIGNALS => self.on_signals(),
                token => self.on_connection_event(ConnId::from_token(token), event),
            }
        }
        self.run_ready_again();
        self.run_timers(now);
        self.reap();
        metrics::set(&self.core.stats.timers, self.core.timers.len() as u64);
        self.core
            .stats
            .turn_duration
            .observe(turn_started.elapsed());
        Ok(())
    }

    fn on_connection_event(&mut self, id: ConnId, event: &mio::event::Event) {
        match self.connections.get_mut(id) {
            Some(conn) if !conn.has(flag::CLOSED) => {
                conn.latch(event);
                if conn.has(flag::CONNECTING) {
                    conn.connect_ready(&mut self.core, &mut self.read_chunk);
                } else if conn.has(flag::OPENING) {
                    conn.opening_ready(&mut self.core, &mut self.read_chunk);
                } else {
                    conn.drive(&mut self.core, &mut self.read_chunk);
                }
            }
            // Drop: the connection this event was for has closed (its slot may hold another).
            _ => metrics::add(&self.core.stats.stale_events, 1),
        }
    }

    fn run_ready_again(&mut self) {
        if self.acceptor.ready_again {
            self.accept_ready();
        }
        if self.core.ready_again.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.core.ready_again);
        for id in ready.drain(..) {
            if let Some(conn) = self.connections.get_mut(id) {
                conn.flags &= !flag::READY_AGAIN;
                conn.drive(&mut self.core, &mut self.read_chunk);
            }
        }
        // The list's storage is kept for the next turn, unless connections that stopped again
        // during this pass already started a new one.
        if self.core.ready_again.is_empty() {
            self.core.ready_again = ready;
        }
    }

    fn run_timers(&mut self, now: Tick) {
        if self
            .core
            .timers
            .next_deadline()
            .is_none_or(|deadline| deadline > now)
        {
            return;
        }
        // The list is kept between turns: firing timers costs no allocation.
        let mut due = std::mem::take(&mut self.due_timers);
        self.core.timers.collect_expired(now, &mut due);
        for (deadline, timer) in due.drain(..) {
            match timer {
                TimerEvent::Idle(id) => self.check_idle(id, now),
                TimerEvent::Protocol(id) => {
                    if let Some(conn) = self.connections.get_mut(id) {
                        conn.on_timer_entry(&mut self.core, deadline, now);
                    }
                }
                TimerEvent::Linger(id) => {
                    if let Some(conn) = self.connections.get_mut(id) {
                        let reason = conn.close_reason;
                        conn.close(&mut self.core, reason);
                    }
                }
                TimerEvent::ConnectTimeout(id) => {
                    if let Some(conn) = self.connections.get_mut(id) {
                        if conn.has(flag::CONNECTING) {
                            conn.close(&mut self.core, CloseReason::ConnectTimeout);
                        }
                    }
                }
                TimerEvent::OpenTimeout(id) => {
                    if let Some(conn) = self.connections.get_mut(id) {
                        if conn.has(flag::PROXY_HEADER) && !conn.has(flag::CLOSED) {
                            log::debug!("{id:?}: no whole PROXY header in time");
                            conn.close(&mut self.core, CloseReason::ProtocolError);
                        } else if conn.has(flag::OPENING) && !conn.has(flag::CLOSED) {
                            log::debug!("{id:?}: TLS handshake timed out");
                            conn.stream.opening_timed_out();
                            conn.close(&mut self.core, CloseReason::TlsHandshake);
                        }
                    }
                }
                TimerEvent::Redial(key) => self.redial(key),
                TimerEvent::AcceptResume => {
                    self.acceptor.paused = false;
                    self.accept_ready();
                }
                TimerEvent::ShutdownDeadline => {
                    for id in self.connections.ids() {
                        if let Some(conn) = self.connections.get_mut(id) {
                            conn.close(&mut self.core, CloseReason::Shutdown);
                        }
                    }
                }
            }
        }
        self.due_timers = due;
    }

    /// Closes the connection if it has been idle for the whole timeout; otherwise re-arms the
    /// check for the moment it would be (the timer is armed once per timeout, not per byte).
    fn check_idle(&mut self, id: ConnId, now: Tick) {
        let Some(idle) = self.core.config.idle_timeout else {
            return;
        };
        let Some(conn) = self.connections.get_mut(id) else {
            return;
        };
        if conn.has(flag::CLOSED) {
            return;
        }
        let deadline = conn.last_active.after(idle);
        if conn.jobs_in_flight > 0 {
            // Waiting on a worker is not idleness: look again a full timeout later.
            self.core
                .timers
                .schedule(now.after(idle), TimerEvent::Idle(id));
        } else if deadline <= now {
            log::debug!("{id:?}: idle for {idle:?}");
            conn.close(&mut self.core, CloseReason::Idle);
        } else {
            self.core.timers.schedule(deadline, TimerEvent::Idle(id));
        }
    }

    /// The waker fired: worker results, and perhaps a shutdown request.
    fn on_wake(&mut self) {
        // The list is kept between wake-ups, so taking results costs no allocation.
        let mut done = std::mem::take(&mut self.completed);
        self.completions.drain_into(&mut done);
        for completion in done.drain(..) {
            let (id, tag, result, latency) = match completion {
                Completion::Job(JobDone {
                    conn,
                    tag,
                    result,
                    latency,
                }) => (conn, tag, result, latency),
                Completion::Notice { to, notice } => {
                    self.deliver_notice(&to, &notice);
                    continue;
                }
            };
            metrics::add(&self.core.stats.jobs_completed, 1);
            self.core.stats.job_latency.observe(latency);
            metrics::sub(&self.core.stats.jobs_in_flight, 1);
            match self.connections.get_mut(id) {
                Some(conn) if !conn.has(flag::CLOSED) => {
                    conn.jobs_in_flight = conn.jobs_in_flight.saturating_sub(1);
                    conn.call(&mut self.core, |protocol, ctx| {
                        protocol.on_job_done(tag, result, ctx)
                    });
                    // A protocol that stopped consuming until an answer was ready (a full
                    // pipeline) gets its buffered input again, and reading resumes.
                    conn.job_returned(&mut self.core);
                    conn.conclude(&mut self.core);
                }
                // Drop: the connection that asked for this job is gone.
                _ => metrics::add(&self.core.stats.stale_completions, 1),
            }
        }
        self.completed = done;
        if self.shutdown.is_requested() {
            self.begin_shutdown();
        }
    }

    /// Hands `notice` to the protocol of every connection named that is still open.
    fn deliver_notice(&mut self, to: &Recipients, notice: &Notice) {
        let ids: &[ConnId] = match to {
            Recipients::One(id) => std::slice::from_ref(id),
            Recipients::Many(ids) => ids,
        };
        for &id in ids {
            match self.connections.get_mut(id) {
                Some(conn) if !conn.has(flag::CLOSED) => {
                    conn.call(&mut self.core, |protocol, ctx| {
                        protocol.on_notice(notice, ctx)
                    });
                    conn.conclude(&mut self.core);
                }
                // Drop: that connection has closed since the sender named it.
                _ => metrics::add(&self.core.stats.stale_completions, 1),
            }
        }
    }

    fn on_signals(&mut self) {
        // A drain first serves on, not ready, for the drain delay; then (or at once without
        // one) the shutdown reaches the server's other loops too, and this one starts now.
        if shutdown_signalled(&mut self.signals) && self.shutdown.drain() {
            self.begin_shutdown();
        }
    }

    /// Stops accepting, lets every protocol finish (`on_shutdown`), and arms the deadline.
    pub(crate) fn begin_shutdown(&mut self) {
        if self.core.draining {
            return;
        }
        self.core.draining = true;
        // Protocols waiting to be dialled again are not connections: nothing to finish.
        self.waiting.clear();
        // Closing the listener refuses new clients at once instead of leaving them in a backlog.
        if let Some(mut listener) = self.acceptor.listener.take() {
            let _ = self.core.poll.registry().deregister(&mut listener);
        }
        let deadline = self
            .core
            .clock
            .now_tick()
            .after(self.core.config.shutdown_timeout);
        self.core
            .timers
            .schedule(deadline, TimerEvent::ShutdownDeadline);
        for id in self.connections.ids() {
            let Some(conn) = self.connections.get_mut(id) else {
                continue;
            };
            if conn.has(flag::CLOSED) {
                continue;
            }
            if conn.has(flag::OPENING) {
                // Not open yet: its protocol has nothing to finish.
                conn.close(&mut self.core, CloseReason::Shutdown);
                continue;
            }
            conn.call(&mut self.core, |protocol, ctx| protocol.on_shutdown(ctx));
            conn.conclude(&mut self.core);
        }
    }

    /// Removes the connections closed this turn; dropping each closes its socket.
    fn reap(&mut self) {
        let mut graveyard = std::mem::take(&mut self.core.graveyard);
        for id in graveyard.drain(..) {
            let Some(conn) = self.connections.remove(id) else {
                continue;
            };
            if !self.core.proxied_peers.is_empty() {
                self.core.proxied_peers.remove(&id);
            }
            match self.core.dialled.remove(&id) {
                // Accepted: the socket closes here, and then its place under
                // `max_connections` is free again.
                None => {
                    drop(conn);
                    self.core.admission.release();
                }
                Some(dial) => {
                    let Connection {
                        stream, protocol, ..
                    } = conn;
                    drop(stream);
                    self.ended_dialled(dial, protocol);
                }
            }
            // Counted once the socket is closed (above), so that a reader
            // of the gauge who sees a connection gone can rely on its peer having the end.
            metrics::sub(&self.core.stats.active, 1);
        }
        self.core.graveyard = graveyard;
        self.compact_timers();
    }

    /// Drops the timer entries of connections that have closed, once they must be at least
    /// half the heap. Closing leaves a connection's entries behind (cancelling is lazy), so
    /// without this, churn grows the heap by one idle entry per connection opened within the
    /// idle timeout, however few are open. A live connection has at most three entries (idle,
    /// protocol, linger), and the loop two of its own: past twice that bound, most are dead,
    /// so the pass costs O(1) per entry it removes.
    fn compact_timers(&mut self) {
        let live_bound = 3 * self.connections.len() + 2;
        if self.core.timers.len() <= 2 * live_bound + timer::COMPACT_FLOOR {
            return;
        }
        let connections = &self.connections;
        self.core.timers.retain(|deadline, event| match *event {
            TimerEvent::Idle(id)
            | TimerEvent::Linger(id)
            | TimerEvent::ConnectTimeout(id)
            | TimerEvent::OpenTimeout(id) => connections.get(id).is_some(),
            TimerEvent::Protocol(id) => connections
                .get(id)
                .is_some_and(|conn| conn.timer_entry == Some(deadline)),
            TimerEvent::Redial(_) | TimerEvent::AcceptResume | TimerEvent::ShutdownDeadline => true,
        });
    }
}
