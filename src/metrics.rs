//! Counters a reactor keeps about itself, readable from any thread while it runs.
//!
//! In a reactor each counter is written by exactly one thread, so an update is a relaxed load
//! and store — no locked instruction on the hot path — and readers see a value at most a moment
//! old. The blocking drivers write from many threads and use the `shared_*` updates, which are
//! atomic read-modify-writes. [`Stats::snapshot`] copies them all into a plain [`StatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters of one server, written by its reactor thread only.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub(crate) $name: AtomicU64, )*
        }

        /// A copy of every counter at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            /// Copies every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl StatsSnapshot {
            /// Adds `other`'s counters to these (high-water marks take the larger).
            pub fn merge(&mut self, other: &StatsSnapshot) {
                let peak = self.peak_pending_output.max(other.peak_pending_output);
                $( self.$name = self.$name.wrapping_add(other.$name); )*
                self.peak_pending_output = peak;
            }
        }
    };
}

counters! {
    /// Times the reactor returned from its poll (with events or on a timeout).
    turns,
    /// Connections accepted and handed to a protocol.
    accepted,
    /// Connections open now.
    active,
    /// Clients accepted and closed at once because `max_connections` were open.
    refused_over_capacity,
    /// Clients rejected by the verify hook.
    refused_by_verify,
    /// Times accepting paused because the process ran out of descriptors.
    accept_pauses,
    /// Connections closed after the peer finished sending.
    closed_by_peer,
    /// Connections closed because the peer reset them or the pipe broke.
    closed_by_reset,
    /// Connections closed by the idle timeout.
    closed_idle,
    /// Connections closed for exceeding an input or output limit.
    closed_over_limit,
    /// Connections closed at the protocol's request.
    closed_by_protocol,
    /// Connections closed because the protocol rejected their input.
    closed_protocol_error,
    /// Connections closed because a protocol callback panicked.
    closed_by_panic,
    /// Connections closed by a graceful shutdown (or cut at its deadline).
    closed_by_shutdown,
    /// Connections closed by an unexpected I/O error.
    closed_io_error,
    /// Readiness events dropped because their connection had closed.
    stale_events,
    /// Worker results dropped because their connection had closed.
    stale_completions,
    /// Bytes read from connections.
    bytes_in,
    /// Bytes written to connections.
    bytes_out,
    /// Jobs handed to the worker pool.
    jobs_submitted,
    /// Jobs whose results came back.
    jobs_completed,
    /// Jobs refused: the queue was full, or the connection had too many in flight.
    jobs_rejected,
    /// Jobs handed over and not yet come back.
    jobs_in_flight,
    /// The most output one connection has had waiting at once.
    peak_pending_output,
    /// Handler threads started and not yet joined (blocking drivers). A thread-per-connection
    /// server joins finished ones as it accepts, so this stays near the number of open
    /// connections; a pool holds its fixed number.
    handler_threads,
    /// Datagrams received and handed to the protocol.
    datagrams_in,
    /// Datagrams sent.
    datagrams_out,
    /// Datagrams dropped: too large to take in, answers to a full queue, or answers to a peer
    /// without an address (an unnamed Unix socket).
    datagrams_dropped,
    /// Send or receive errors on a datagram socket (ICMP-reported unreachable peers, a vanished
    /// Unix socket path): the datagram is lost, the server goes on.
    datagram_errors,
    /// Datagrams whose protocol callback panicked (its answers are discarded and a fresh
    /// protocol instance takes over).
    datagram_panics,
    /// Timer entries in the reactor's heap at the end of the last turn (cancelled and
    /// superseded ones included until they come due).
    timers,
}

/// The counters of every reactor (or driver) of one server, summed when read.
#[derive(Debug, Default)]
pub struct StatsSet {
    parts: std::sync::Mutex<Vec<std::sync::Arc<Stats>>>,
}

impl StatsSet {
    /// Adds a part (one per reactor) and returns it for its owner to write.
    pub(crate) fn add_part(&self) -> std::sync::Arc<Stats> {
        let part = std::sync::Arc::new(Stats::default());
        self.lock().push(part.clone());
        part
    }

    /// The sum of every part at one moment (each part read without stopping its writer).
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for part in self.lock().iter() {
            total.merge(&part.snapshot());
        }
        total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<std::sync::Arc<Stats>>> {
        // Parts are only ever pushed; a panic elsewhere cannot leave the list half-changed.
        self.parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Adds `amount` to a counter only this thread writes (no atomic read-modify-write needed).
#[inline]
pub(crate) fn add(counter: &AtomicU64, amount: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(amount),
        Ordering::Relaxed,
    );
}

/// Subtracts `amount` from a gauge only this thread writes.
#[inline]
pub(crate) fn sub(counter: &AtomicU64, amount: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_sub(amount),
        Ordering::Relaxed,
    );
}

/// Adds to a counter several threads write.
#[inline]
pub(crate) fn shared_add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

/// Subtracts from a gauge several threads write.
#[inline]
pub(crate) fn shared_sub(counter: &AtomicU64, amount: u64) {
    counter.fetch_sub(amount, Ordering::Relaxed);
}

/// Raises a high-water mark several threads write.
#[inline]
pub(crate) fn shared_raise(counter: &AtomicU64, value: u64) {
    counter.fetch_max(value, Ordering::Relaxed);
}

/// Sets a gauge only this thread writes.
#[inline]
pub(crate) fn set(counter: &AtomicU64, value: u64) {
    counter.store(value, Ordering::Relaxed);
}

/// Raises a high-water mark only this thread writes.
#[inline]
pub(crate) fn raise(counter: &AtomicU64, value: u64) {
    if value > counter.load(Ordering::Relaxed) {
        counter.store(value, Ordering::Relaxed);
    }
}

/// The counters in Prometheus text exposition format (version 0.0.4), every name prefixed
/// `socketserver_`: what `/metrics` serves.
pub fn prometheus(stats: &StatsSnapshot) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP socketserver_{name} {help}");
        let _ = writeln!(out, "# TYPE socketserver_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "socketserver_{name}{labels} {value}");
        }
    };
    metric(
        "connections_accepted_total",
        "counter",
        "Connections accepted and admitted.",
        &[("", stats.accepted)],
    );
    metric(
        "connections_active",
        "gauge",
        "Connections open now.",
        &[("", stats.active)],
    );
    metric(
        "connections_refused_total",
        "counter",
        "Connections refused at accept.",
        &[
            ("{reason=\"over_capacity\"}", stats.refused_over_capacity),
            ("{reason=\"verify\"}", stats.refused_by_verify),
        ],
    );
    metric(
        "connections_closed_total",
        "counter",
        "Connections closed, by reason.",
        &[
            ("{reason=\"peer\"}", stats.closed_by_peer),
            ("{reason=\"reset\"}", stats.closed_by_reset),
            ("{reason=\"idle\"}", stats.closed_idle),
            ("{reason=\"over_limit\"}", stats.closed_over_limit),
            ("{reason=\"protocol\"}", stats.closed_by_protocol),
            ("{reason=\"protocol_error\"}", stats.closed_protocol_error),
            ("{reason=\"panic\"}", stats.closed_by_panic),
            ("{reason=\"shutdown\"}", stats.closed_by_shutdown),
            ("{reason=\"io_error\"}", stats.closed_io_error),
        ],
    );
    metric(
        "received_bytes_total",
        "counter",
        "Bytes read from connections.",
        &[("", stats.bytes_in)],
    );
    metric(
        "sent_bytes_total",
        "counter",
        "Bytes written to connections.",
        &[("", stats.bytes_out)],
    );
    metric(
        "jobs_total",
        "counter",
        "Jobs offloaded to the worker pool, by outcome.",
        &[
            ("{outcome=\"submitted\"}", stats.jobs_submitted),
            ("{outcome=\"completed\"}", stats.jobs_completed),
            ("{outcome=\"rejected\"}", stats.jobs_rejected),
        ],
    );
    metric(
        "jobs_in_flight",
        "gauge",
        "Jobs queued or running on the worker pool.",
        &[("", stats.jobs_in_flight)],
    );
    metric(
        "reactor_turns_total",
        "counter",
        "Event-loop turns.",
        &[("", stats.turns)],
    );
    out
}
