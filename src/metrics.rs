//! Counters and latency histograms a reactor keeps about itself, readable from any thread while
//! it runs, and their Prometheus text exposition.
//!
//! In a reactor each counter is written by exactly one thread, so an update is a relaxed load
//! and store — no locked instruction on the hot path — and readers see a value at most a moment
//! old. Every reactor of a server has its own part ([`Stats`]); a [`StatsSet`] sums the parts
//! when read, so a scrape costs the reactors nothing. The blocking drivers write from many
//! threads and use the `shared_*` updates, which are atomic read-modify-writes.
//! [`Stats::snapshot`] copies a part into a plain [`StatsSnapshot`].
//!
//! The histograms ([`Histogram`]) have fixed buckets ([`LATENCY_BUCKETS_MICROS`], 10 µs to 10 s,
//! and `+Inf`), the shape Prometheus sums across processes; exact percentiles of the client's
//! view come from the load generator instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets, in microseconds; a last bucket (`+Inf`)
/// takes everything slower.
pub const LATENCY_BUCKETS_MICROS: [u64; 18] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 10_000_000,
];

/// Buckets of a histogram: one per bound and `+Inf`.
const BUCKETS: usize = LATENCY_BUCKETS_MICROS.len() + 1;

/// A latency histogram with fixed buckets, written by one thread (or, through the `shared_*`
/// updates, by several) and read by any.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative).
    counts: [AtomicU64; BUCKETS],
    /// The sum of every observation, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// The bucket `duration` falls in: the first whose bound it does not exceed.
    fn bucket(duration: Duration) -> usize {
        let nanos = duration.as_nanos();
        LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| nanos <= u128::from(bound) * 1_000)
            .unwrap_or(BUCKETS - 1)
    }

    /// Records one observation (the owning thread only).
    #[inline]
    pub(crate) fn observe(&self, duration: Duration) {
        add(&self.counts[Self::bucket(duration)], 1);
        add(&self.sum_nanos, saturating_nanos(duration));
    }

    /// Records one observation from one of several writing threads.
    #[inline]
    pub(crate) fn shared_observe(&self, duration: Duration) {
        shared_add(&self.counts[Self::bucket(duration)], 1);
        shared_add(&self.sum_nanos, saturating_nanos(duration));
    }

    /// Copies the buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|bucket| self.counts[bucket].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A copy of a [`Histogram`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket, not cumulative: `counts[i]` were at most
    /// `LATENCY_BUCKETS_MICROS[i]` and above the bound before; the last is `+Inf`.
    pub counts: [u64; BUCKETS],
    /// The sum of every observation, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.wrapping_add(theirs);
        }
        self.sum_nanos = self.sum_nanos.wrapping_add(other.sum_nanos);
    }

    /// The bound of the bucket holding the `quantile` (0..=1) observation: an upper estimate
    /// at the buckets' resolution. `None` with no observations, or when it is past the last
    /// bound.
    pub fn quantile_bound(&self, quantile: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return LATENCY_BUCKETS_MICROS
                    .get(bucket)
                    .map(|&micros| Duration::from_micros(micros));
            }
        }
        None
    }
}

macro_rules! counters {
    (
        $( $(#[$doc:meta])* $name:ident ),* $(,)?
        ; histograms: $( $(#[$hdoc:meta])* $histogram:ident ),* $(,)?
    ) => {
        /// Live counters and histograms of one reactor (or of the threads of a blocking driver).
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub(crate) $name: AtomicU64, )*
            $( $(#[$hdoc])* pub(crate) $histogram: Histogram, )*
        }

        /// A copy of every counter and histogram at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
            $( $(#[$hdoc])* pub $histogram: HistogramSnapshot, )*
            /// Jobs waiting in the worker pool's queue, not yet taken by a worker (read from the
            /// pool by [`StatsSet::snapshot`]; 0 in a single part and under blocking drivers,
            /// which run jobs inline).
            pub job_queue_depth: u64,
            /// The TLS layer's counters, when the server terminates TLS (read from the layer by
            /// [`StatsSet::snapshot`]: one set for all the server's loops).
            pub tls: Option<TlsSnapshot>,
        }

        impl Stats {
            /// Copies every counter and histogram.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                    $( $histogram: self.$histogram.snapshot(), )*
                    job_queue_depth: 0,
                    tls: None,
                }
            }
        }

        impl StatsSnapshot {
            /// Adds `other`'s counters and histograms to these (high-water marks take the
            /// larger).
            pub fn merge(&mut self, other: &StatsSnapshot) {
                let peak = self.peak_pending_output.max(other.peak_pending_output);
                $( self.$name = self.$name.wrapping_add(other.$name); )*
                $( self.$histogram.merge(&other.$histogram); )*
                self.job_queue_depth = self.job_queue_depth.wrapping_add(other.job_queue_depth);
                self.tls = self.tls.or(other.tls);
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
    /// Connections closed because their TLS handshake failed or timed out.
    closed_tls_handshake,
    /// Outbound connects started (dialled connections, redials included).
    dials_started,
    /// Outbound connects that succeeded.
    dials_connected,
    /// Outbound connects refused or failed.
    dials_failed,
    /// Outbound connects that did not finish within their connect timeout.
    dials_timed_out,
    /// Dialled connections dialled again after they ended, at their protocol's request.
    redials,
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
    /// Times a connection stopped reading because the peer was not taking its output: pending
    /// output passed the high watermark (reactor), or a write could not complete at once
    /// (blocking drivers).
    backpressure_pauses,
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
    /// Requests answered with a 1xx final status (interim `100 Continue` is not counted).
    requests_1xx,
    /// Requests answered with a 2xx status.
    requests_2xx,
    /// Requests answered with a 3xx status.
    requests_3xx,
    /// Requests answered with a 4xx status, the limits' rejections included.
    requests_4xx,
    /// Requests answered with a 5xx status (or a status outside 100..=599).
    requests_5xx,
    /// WebSocket upgrades accepted.
    websockets_opened,
    /// WebSockets open now.
    websockets_open,
    /// Whole WebSocket messages received (fragments joined, inflated).
    websocket_messages_in,
    /// WebSocket messages sent.
    websocket_messages_out,
    /// Payload bytes of the WebSocket messages received (inflated).
    websocket_bytes_in,
    /// Payload bytes of the WebSocket messages sent (before compression).
    websocket_bytes_out,
    /// WebSockets closed with code 1000 (normal).
    websocket_closed_normal,
    /// WebSockets closed with code 1001 (going away: a shutdown, a browser leaving).
    websocket_closed_going_away,
    /// WebSockets closed with code 1002 (the peer broke the protocol).
    websocket_closed_protocol_error,
    /// WebSockets closed with code 1007 (text that is not UTF-8).
    websocket_closed_invalid_data,
    /// WebSockets closed with code 1008 (policy: a peer that does not read its messages).
    websocket_closed_policy,
    /// WebSockets closed with code 1009 (a message over the size limit).
    websocket_closed_too_big,
    /// WebSockets closed with code 1011 (the handler failed).
    websocket_closed_internal_error,
    /// WebSockets that ended without a close frame (1006: the peer vanished, or missed its
    /// heartbeat).
    websocket_closed_abnormal,
    /// WebSockets closed with any other code.
    websocket_closed_other,
    /// WebSockets closed because the peer answered no ping within the ping timeout.
    websocket_heartbeat_timeouts,
    /// Pings sent to quiet WebSockets.
    websocket_pings_sent,
    /// Messages a WebSocket handler sent that were dropped: the peer was past its backpressure
    /// limit.
    websocket_send_dropped,
    ;
    histograms:
    /// From the turn in which a request's first byte was read to its answer being queued for
    /// sending: waiting for the rest of the request, the handler, a worker, and earlier
    /// answers of the pipeline.
    request_latency,
    /// From handing a job to the worker pool to its result: queueing and running.
    job_latency,
    /// The work of one reactor turn, from the poll's return to the next poll.
    turn_duration,
}

impl StatsSnapshot {
    /// Requests answered, every status class together.
    pub fn requests(&self) -> u64 {
        self.requests_1xx
            + self.requests_2xx
            + self.requests_3xx
            + self.requests_4xx
            + self.requests_5xx
    }
}

/// Where a protocol callback's measurements go: its reactor's own part (one writer), or a part
/// the threads of a blocking driver share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recorder<'a> {
    stats: &'a Stats,
    shared: bool,
}

impl<'a> Recorder<'a> {
    /// Records into a part only this thread writes.
    pub(crate) fn own(stats: &'a Stats) -> Self {
        Recorder {
            stats,
            shared: false,
        }
    }

    /// Records into a part several threads write.
    pub(crate) fn shared(stats: &'a Stats) -> Self {
        Recorder {
            stats,
            shared: true,
        }
    }

    /// One request answered with `status`, `latency` after it began.
    pub(crate) fn request(&self, status: u16, latency: Duration) {
        let counter = match status {
            100..=199 => &self.stats.requests_1xx,
            200..=299 => &self.stats.requests_2xx,
            300..=399 => &self.stats.requests_3xx,
            400..=499 => &self.stats.requests_4xx,
            _ => &self.stats.requests_5xx,
        };
        self.count(counter);
        self.observe(&self.stats.request_latency, latency);
    }

    /// One job finished, `latency` after it was handed over.
    pub(crate) fn job(&self, latency: Duration) {
        self.observe(&self.stats.job_latency, latency);
    }

    /// Adds `amount` to the counter `pick` names.
    pub(crate) fn add(&self, pick: impl FnOnce(&Stats) -> &AtomicU64, amount: u64) {
        let counter = pick(self.stats);
        if self.shared {
            shared_add(counter, amount);
        } else {
            add(counter, amount);
        }
    }

    /// Subtracts `amount` from the gauge `pick` names.
    pub(crate) fn sub(&self, pick: impl FnOnce(&Stats) -> &AtomicU64, amount: u64) {
        let counter = pick(self.stats);
        if self.shared {
            shared_sub(counter, amount);
        } else {
            sub(counter, amount);
        }
    }

    fn count(&self, counter: &AtomicU64) {
        if self.shared {
            shared_add(counter, 1);
        } else {
            add(counter, 1);
        }
    }

    fn observe(&self, histogram: &Histogram, duration: Duration) {
        if self.shared {
            histogram.shared_observe(duration);
        } else {
            histogram.observe(duration);
        }
    }
}

/// Why a TLS handshake failed: the `reason` label of
/// `socketserver_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// A plain-HTTP request on the TLS port (answered with a 400 in clear text).
    PlainHttp,
    /// Bytes that are not TLS at all, or a broken TLS message.
    NotTls,
    /// Client authentication is required and the client sent no certificate.
    NoCertificate,
    /// The client's certificate was not issued by the trusted CA, or is malformed.
    BadCertificate,
    /// The client's certificate has expired (or is not valid yet).
    Expired,
    /// The client's certificate is on the certificate revocation list.
    Revoked,
    /// Nothing in common: protocol version, cipher suite, key exchange group or ALPN protocol.
    Incompatible,
    /// The client ended the handshake with an alert (it rejected this server's certificate).
    AlertReceived,
    /// The handshake did not finish within `tls_handshake_timeout`.
    Timeout,
    /// The client closed or reset the connection during the handshake.
    Closed,
    /// Any other failure.
    Other,
}

impl TlsFailure {
    /// Every reason, in the order of [`TlsSnapshot::failures`].
    pub const ALL: [TlsFailure; 11] = [
        TlsFailure::PlainHttp,
        TlsFailure::NotTls,
        TlsFailure::NoCertificate,
        TlsFailure::BadCertificate,
        TlsFailure::Expired,
        TlsFailure::Revoked,
        TlsFailure::Incompatible,
        TlsFailure::AlertReceived,
        TlsFailure::Timeout,
        TlsFailure::Closed,
        TlsFailure::Other,
    ];

    /// The label value in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::PlainHttp => "plain_http",
            TlsFailure::NotTls => "not_tls",
            TlsFailure::NoCertificate => "no_certificate",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::Expired => "expired",
            TlsFailure::Revoked => "revoked",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::AlertReceived => "alert_received",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Closed => "closed",
            TlsFailure::Other => "other",
        }
    }
}

/// The TLS layer's counters: one set shared by every loop and thread of a server (handshakes
/// cost thousands of times more than an atomic add, so sharing costs nothing that shows).
#[derive(Debug, Default)]
pub(crate) struct TlsCounters {
    pub(crate) handshakes_full: AtomicU64,
    pub(crate) handshakes_resumed: AtomicU64,
    pub(crate) alpn_http1: AtomicU64,
    pub(crate) failures: [AtomicU64; TlsFailure::ALL.len()],
    pub(crate) reloads: AtomicU64,
    pub(crate) reload_failures: AtomicU64,
    /// The certificate in use expires at this Unix time (seconds).
    pub(crate) certificate_not_after: AtomicU64,
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
impl TlsCounters {
    pub(crate) fn failed(&self, reason: TlsFailure) {
        self.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TlsSnapshot {
        TlsSnapshot {
            handshakes_full: self.handshakes_full.load(Ordering::Relaxed),
            handshakes_resumed: self.handshakes_resumed.load(Ordering::Relaxed),
            alpn_http1: self.alpn_http1.load(Ordering::Relaxed),
            failures: std::array::from_fn(|index| self.failures[index].load(Ordering::Relaxed)),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            certificate_not_after: self.certificate_not_after.load(Ordering::Relaxed),
        }
    }
}

/// A copy of the TLS layer's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsSnapshot {
    /// Full handshakes completed.
    pub handshakes_full: u64,
    /// Handshakes that resumed an earlier session (a ticket or the session cache).
    pub handshakes_resumed: u64,
    /// Handshakes that agreed on ALPN `http/1.1`.
    pub alpn_http1: u64,
    /// Failed handshakes, by [`TlsFailure`] (indexed as [`TlsFailure::ALL`]).
    pub failures: [u64; TlsFailure::ALL.len()],
    /// Reloads of the certificate, key, client CA and CRL that took effect.
    pub reloads: u64,
    /// Reloads refused (a file missing or broken): the configuration before stayed.
    pub reload_failures: u64,
    /// When the certificate in use expires, as a Unix time in seconds.
    pub certificate_not_after: u64,
}

impl TlsSnapshot {
    /// Failed handshakes for `reason`.
    pub fn failed(&self, reason: TlsFailure) -> u64 {
        self.failures[reason as usize]
    }
}

/// The counters of every reactor (or driver) of one server, summed when read.
#[derive(Debug, Default)]
pub struct StatsSet {
    parts: Mutex<Vec<Arc<Stats>>>,
    /// The worker pool's count of queued jobs, once a pool runs.
    job_queue: Mutex<Option<Arc<AtomicU64>>>,
    /// The TLS layer's counters, when the server terminates TLS.
    tls: Mutex<Option<Arc<TlsCounters>>>,
}

impl StatsSet {
    /// Adds a part (one per reactor) and returns it for its owner to write.
    pub(crate) fn add_part(&self) -> Arc<Stats> {
        let part = Arc::new(Stats::default());
        lock(&self.parts).push(part.clone());
        part
    }

    /// Reads the worker pool's queue depth from `queued` at every snapshot.
    pub(crate) fn watch_job_queue(&self, queued: Arc<AtomicU64>) {
        *lock(&self.job_queue) = Some(queued);
    }

    /// Reads the TLS layer's counters from `counters` at every snapshot.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn watch_tls(&self, counters: Arc<TlsCounters>) {
        *lock(&self.tls) = Some(counters);
    }

    /// The sum of every part at one moment (each part read without stopping its writer).
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for part in lock(&self.parts).iter() {
            total.merge(&part.snapshot());
        }
        if let Some(queued) = lock(&self.job_queue).as_ref() {
            total.job_queue_depth = queued.load(Ordering::Relaxed);
        }
        total.tls = lock(&self.tls).as_ref().map(|counters| counters.snapshot());
        total
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only pushes and stores happen under these locks; a panic elsewhere cannot leave one
    // half-changed.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        family(&mut out, name, kind, help);
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
            ("{reason=\"tls_handshake\"}", stats.closed_tls_handshake),
        ],
    );
    metric(
        "dials_total",
        "counter",
        "Outbound connects, by outcome (started counts every attempt, redials included).",
        &[
            ("{outcome=\"started\"}", stats.dials_started),
            ("{outcome=\"connected\"}", stats.dials_connected),
            ("{outcome=\"failed\"}", stats.dials_failed),
            ("{outcome=\"timed_out\"}", stats.dials_timed_out),
        ],
    );
    metric(
        "redials_total",
        "counter",
        "Dialled connections dialled again after they ended.",
        &[("", stats.redials)],
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
        "backpressure_pauses_total",
        "counter",
        "Times a connection stopped reading because its peer was not taking output.",
        &[("", stats.backpressure_pauses)],
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
        "job_queue_depth",
        "gauge",
        "Jobs waiting in the worker queue, not yet taken by a worker.",
        &[("", stats.job_queue_depth)],
    );
    metric(
        "reactor_turns_total",
        "counter",
        "Event-loop turns.",
        &[("", stats.turns)],
    );
    metric(
        "requests_total",
        "counter",
        "Requests answered, by status class.",
        &[
            ("{class=\"1xx\"}", stats.requests_1xx),
            ("{class=\"2xx\"}", stats.requests_2xx),
            ("{class=\"3xx\"}", stats.requests_3xx),
            ("{class=\"4xx\"}", stats.requests_4xx),
            ("{class=\"5xx\"}", stats.requests_5xx),
        ],
    );
    metric(
        "websockets_opened_total",
        "counter",
        "WebSocket upgrades accepted.",
        &[("", stats.websockets_opened)],
    );
    metric(
        "websockets_open",
        "gauge",
        "WebSockets open now.",
        &[("", stats.websockets_open)],
    );
    metric(
        "websocket_messages_total",
        "counter",
        "Whole WebSocket messages, by direction.",
        &[
            ("{direction=\"in\"}", stats.websocket_messages_in),
            ("{direction=\"out\"}", stats.websocket_messages_out),
        ],
    );
    metric(
        "websocket_payload_bytes_total",
        "counter",
        "WebSocket message payload bytes (uncompressed), by direction.",
        &[
            ("{direction=\"in\"}", stats.websocket_bytes_in),
            ("{direction=\"out\"}", stats.websocket_bytes_out),
        ],
    );
    metric(
        "websocket_closes_total",
        "counter",
        "WebSockets closed, by close code (1006: ended without a close frame).",
        &[
            ("{code=\"1000\"}", stats.websocket_closed_normal),
            ("{code=\"1001\"}", stats.websocket_closed_going_away),
            ("{code=\"1002\"}", stats.websocket_closed_protocol_error),
            ("{code=\"1006\"}", stats.websocket_closed_abnormal),
            ("{code=\"1007\"}", stats.websocket_closed_invalid_data),
            ("{code=\"1008\"}", stats.websocket_closed_policy),
            ("{code=\"1009\"}", stats.websocket_closed_too_big),
            ("{code=\"1011\"}", stats.websocket_closed_internal_error),
            ("{code=\"other\"}", stats.websocket_closed_other),
        ],
    );
    metric(
        "websocket_heartbeat_timeouts_total",
        "counter",
        "WebSockets closed because no ping was answered in time.",
        &[("", stats.websocket_heartbeat_timeouts)],
    );
    metric(
        "websocket_pings_sent_total",
        "counter",
        "Pings sent to quiet WebSockets.",
        &[("", stats.websocket_pings_sent)],
    );
    metric(
        "websocket_send_dropped_total",
        "counter",
        "Messages dropped because their WebSocket was past its backpressure limit.",
        &[("", stats.websocket_send_dropped)],
    );
    if let Some(tls) = &stats.tls {
        metric(
            "tls_handshakes_total",
            "counter",
            "TLS handshakes completed, full or resumed (a ticket or the session cache).",
            &[
                ("{kind=\"full\"}", tls.handshakes_full),
                ("{kind=\"resumed\"}", tls.handshakes_resumed),
            ],
        );
        let failures: Vec<(String, u64)> = TlsFailure::ALL
            .iter()
            .map(|reason| {
                (
                    format!("{{reason=\"{}\"}}", reason.label()),
                    tls.failed(*reason),
                )
            })
            .collect();
        let failures: Vec<(&str, u64)> = failures
            .iter()
            .map(|(labels, value)| (labels.as_str(), *value))
            .collect();
        metric(
            "tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by reason.",
            &failures,
        );
        metric(
            "tls_alpn_total",
            "counter",
            "TLS handshakes by the application protocol agreed with ALPN.",
            &[("{protocol=\"http/1.1\"}", tls.alpn_http1)],
        );
        metric(
            "tls_reloads_total",
            "counter",
            "Reloads of the certificate, key, client CA and CRL, by outcome.",
            &[
                ("{outcome=\"ok\"}", tls.reloads),
                ("{outcome=\"refused\"}", tls.reload_failures),
            ],
        );
        metric(
            "tls_certificate_not_after_seconds",
            "gauge",
            "When the certificate in use expires, as a Unix time.",
            &[("", tls.certificate_not_after)],
        );
    }
    histogram(
        &mut out,
        "request_duration_seconds",
        "From the turn a request's first byte was read to its answer being queued.",
        &stats.request_latency,
    );
    histogram(
        &mut out,
        "job_duration_seconds",
        "From handing a job to the worker pool to its result, queueing included.",
        &stats.job_latency,
    );
    histogram(
        &mut out,
        "reactor_turn_duration_seconds",
        "The work of one event-loop turn, from the poll's return to the next poll.",
        &stats.turn_duration,
    );
    out
}

/// The process's own figures under the names every Prometheus client library exports
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from `/proc` at
/// each scrape, so dashboards made for other servers work unchanged. A figure the system does
/// not give (no `/proc`) is left out rather than reported as zero.
pub fn process_metrics() -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(1024);
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    };
    let stat = ProcessStat::read();
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stat.as_ref().map(|stat| stat.cpu_seconds),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stat.as_ref().map(|stat| stat.resident_bytes),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.as_ref().map(|stat| stat.virtual_bytes),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stat.as_ref().and_then(|stat| stat.start_time_seconds),
    );
    let open = std::fs::read_dir("/proc/self/fd")
        // The directory's own descriptor, open while it is listed, is not counted.
        .map(|entries| entries.count().saturating_sub(1) as f64)
        .ok();
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        open,
    );
    metric(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max_fds(),
    );
    out
}

/// What `/proc/self/stat` says of this process, in the units the metrics use.
struct ProcessStat {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: Option<f64>,
}

impl ProcessStat {
    fn read() -> Option<ProcessStat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name, in parentheses, may hold spaces: the fields start after its end.
        let fields: Vec<&str> = text
            .get(text.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        // proc(5) numbers fields from 1 with the pid; after the name, field 3 is index 0.
        let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        if ticks <= 0.0 || page <= 0.0 {
            return None;
        }
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|seconds| seconds.trim().parse::<f64>().ok())
        });
        Some(ProcessStat {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            start_time_seconds: boot_time
                .zip(field(22))
                .map(|(boot, start)| boot + start / ticks),
        })
    }
}

/// The soft limit on open descriptors; `None` if unlimited or unknown.
fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into memory this frame owns.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (got == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as f64)
}

/// The `HELP` and `TYPE` lines that open a metric family.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP socketserver_{name} {help}");
    let _ = writeln!(out, "# TYPE socketserver_{name} {kind}");
}

/// One histogram in the text format: cumulative `_bucket` lines with `le` in seconds, then
/// `_sum` (seconds) and `_count`.
pub(crate) fn histogram(out: &mut String, name: &str, help: &str, histogram: &HistogramSnapshot) {
    use std::fmt::Write;
    family(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bucket, count) in histogram.counts.iter().enumerate() {
        cumulative += count;
        let bound = match LATENCY_BUCKETS_MICROS.get(bucket) {
            Some(&micros) => (micros as f64 / 1e6).to_string(),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(
            out,
            "socketserver_{name}_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "socketserver_{name}_sum {}",
        histogram.sum_nanos as f64 / 1e9
    );
    let _ = writeln!(out, "socketserver_{name}_count {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let histogram = Histogram::default();
        for micros in [
            0,
            10,
            11,
            1_000,
            1_001,
            10_000_000,
            10_000_001,
            u64::MAX / 2_000,
        ] {
            histogram.observe(Duration::from_micros(micros));
        }
        let snapshot = histogram.snapshot();
        let first = |bound: u64| {
            LATENCY_BUCKETS_MICROS
                .iter()
                .position(|&b| b == bound)
                .expect("a bound")
        };
        assert_eq!(snapshot.counts[0], 2, "0 and 10 µs");
        assert_eq!(snapshot.counts[first(25)], 1, "11 µs");
        assert_eq!(snapshot.counts[first(1_000)], 1);
        assert_eq!(snapshot.counts[first(2_500)], 1, "1,001 µs");
        assert_eq!(snapshot.counts[first(10_000_000)], 1);
        assert_eq!(snapshot.counts[BUCKETS - 1], 2, "past 10 s: +Inf");
        assert_eq!(snapshot.count(), 8);
    }

    #[test]
    fn quantile_bounds_come_from_the_cumulative_counts() {
        let histogram = Histogram::default();
        for _ in 0..98 {
            histogram.observe(Duration::from_micros(40));
        }
        histogram.observe(Duration::from_micros(900));
        histogram.observe(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(
            snapshot.quantile_bound(0.5),
            Some(Duration::from_micros(50))
        );
        assert_eq!(
            snapshot.quantile_bound(0.99),
            Some(Duration::from_micros(1_000))
        );
        assert_eq!(snapshot.quantile_bound(1.0), None, "past the last bound");
        assert_eq!(HistogramSnapshot::default().quantile_bound(0.5), None);
    }

    #[test]
    fn parts_sum_when_read_and_the_text_format_has_cumulative_buckets() {
        let set = StatsSet::default();
        let (first, second) = (set.add_part(), set.add_part());
        Recorder::own(&first).request(200, Duration::from_micros(5));
        Recorder::own(&second).request(404, Duration::from_micros(30));
        Recorder::shared(&second).request(503, Duration::from_millis(3));
        let total = set.snapshot();
        assert_eq!(
            (total.requests_2xx, total.requests_4xx, total.requests_5xx),
            (1, 1, 1)
        );
        assert_eq!(total.requests(), 3);
        let text = prometheus(&total);
        for line in [
            "socketserver_request_duration_seconds_bucket{le=\"0.00001\"} 1",
            "socketserver_request_duration_seconds_bucket{le=\"0.00005\"} 2",
            "socketserver_request_duration_seconds_bucket{le=\"0.0025\"} 2",
            "socketserver_request_duration_seconds_bucket{le=\"0.005\"} 3",
            "socketserver_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "socketserver_request_duration_seconds_count 3",
            "socketserver_request_duration_seconds_sum 0.003035",
            "socketserver_requests_total{class=\"4xx\"} 1",
        ] {
            assert!(
                text.lines().any(|candidate| candidate == line),
                "{line}\n{text}"
            );
        }
    }
}
