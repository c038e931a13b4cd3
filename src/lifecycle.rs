//! What every driver shares about a server's life, below the reactor, the blocking drivers and
//! the server that assembles them: the verify and error hooks and the [`ErrorReport`] the error
//! hook is told, signal registration and the shutdown signal that reaches every loop, why a
//! connection closed, and how often a repeated warning may be logged.
//!
//! It exists so the drivers share these and not each other: the reactor and the blocking
//! drivers both serve the protocols, stop on the same signal and count the same close reasons,
//! and neither has to reach into the other's room for them.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Stats;
use crate::reactor::token::{ConnId, SIGNALS};

/// What the error hook is told when a protocol callback panics (the counterpart of Python
/// socketserver's `handle_error(request, client_address)`). The connection is already closed;
/// for a datagram server, the datagram's answers are discarded.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    /// The connection whose protocol failed (`None` for a datagram server, which has none).
    pub conn: Option<ConnId>,
    /// Its peer's address, if the socket could still tell.
    pub peer: Option<SocketAddr>,
    /// The panic message.
    pub message: String,
}

/// The verify hook: `false` closes the connection before any protocol sees it.
pub(crate) type VerifyHook = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;
/// The error hook: told about every protocol panic.
pub(crate) type ErrorHook = Arc<dyn Fn(&ErrorReport) + Send + Sync>;

/// Turns a panic payload into a message.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Minimum time between two warnings of the same recurring trouble (running out of
/// descriptors): enough to see it in the log, not enough to flood it.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// SIGINT and SIGTERM as readiness on the `SIGNALS` token, if `config` asks for signal handling.
pub(crate) fn register_signals(
    registry: &mio::Registry,
    config: &Config,
) -> Result<Option<Signals>> {
    if !config.handle_signals {
        return Ok(None);
    }
    let mut signals = Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(|error| Error::io("installing signal handlers", error))?;
    registry
        .register(&mut signals, SIGNALS, mio::Interest::READABLE)
        .map_err(|error| Error::io("registering signals", error))?;
    Ok(Some(signals))
}

/// True if SIGINT or SIGTERM arrived since the last look (logged once here); always false when
/// signals are not handled.
pub(crate) fn shutdown_signalled(signals: &mut Option<Signals>) -> bool {
    let received = signals
        .as_mut()
        .is_some_and(|signals| signals.pending().next().is_some());
    if received {
        log::info!("signal received: shutting down gracefully");
    }
    received
}

/// A shutdown request that reaches every event loop of a server: a flag, and the wakers of all
/// its loops. Triggered by a [`ServerHandle`](crate::ServerHandle) or by a signal in one loop.
///
/// It may be preceded by a drain: for [`Config::drain_delay`] the server serves on but says it
/// is not ready ([`ShutdownSignal::is_ready`], what `/readyz` answers), so that load balancers
/// stop sending it clients before it stops accepting.
#[derive(Debug)]
pub struct ShutdownSignal {
    requested: AtomicBool,
    draining: AtomicBool,
    drain_delay: Duration,
    wakers: Mutex<Vec<Arc<mio::Waker>>>,
    /// Wakes a drain's timer early when shutdown is requested meanwhile.
    drain_lock: Mutex<()>,
    drain_over: Condvar,
}

impl ShutdownSignal {
    /// A signal that wakes `waker` (more can be added with [`ShutdownSignal::add_waker`]).
    pub(crate) fn new(waker: Arc<mio::Waker>) -> Self {
        ShutdownSignal {
            requested: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_delay: Duration::ZERO,
            wakers: Mutex::new(vec![waker]),
            drain_lock: Mutex::new(()),
            drain_over: Condvar::new(),
        }
    }

    /// This signal, draining for `delay` before a shutdown that a signal starts.
    pub(crate) fn with_drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Starts the drain: not ready from now, and shutdown once the drain delay has passed.
    /// Shuts down at once (and returns true) when there is no delay, or when a drain had
    /// already begun: a second SIGTERM does not wait.
    pub fn drain(self: &Arc<Self>) -> bool {
        let delay = self.drain_delay;
        if delay.is_zero() || self.draining.swap(true, Ordering::AcqRel) || self.is_requested() {
            self.trigger();
            return true;
        }
        log::info!(
            "draining: /readyz answers 503 for {delay:?} while serving on, then shutting down"
        );
        let signal = self.clone();
        let timer = std::thread::Builder::new()
            .name("socketserver-drain".into())
            .spawn(move || {
                let guard = signal
                    .drain_lock
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let _ = signal
                    .drain_over
                    .wait_timeout_while(guard, delay, |_| !signal.is_requested());
                signal.trigger();
            });
        if timer.is_err() {
            // No thread for the timer: shutting down now is better than never.
            self.trigger();
            return true;
        }
        false
    }

    /// False once a drain or a shutdown has begun: what a health check (`/readyz`) reports.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && !self.is_requested()
    }

    /// Adds the waker of another loop of the same server.
    pub(crate) fn add_waker(&self, waker: Arc<mio::Waker>) {
        self.wakers().push(waker);
    }

    /// Requests shutdown and wakes every loop; idempotent.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::Release);
        {
            // Under the lock, so a drain's timer cannot miss it between its look and its wait.
            let _guard = self
                .drain_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.drain_over.notify_all();
        }
        for waker in self.wakers().iter() {
            if let Err(error) = waker.wake() {
                log::warn!("could not wake a loop for shutdown: {error}");
            }
        }
    }

    /// True once shutdown was requested.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<mio::Waker>>> {
        // Wakers are only ever pushed; a poisoned lock still holds a consistent list.
        self.wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why a connection closed, under any driver; each reason has its counter in
/// [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    PeerClosed,
    Reset,
    Idle,
    OverLimit,
    Protocol,
    ProtocolError,
    Panic,
    Shutdown,
    IoError,
    /// A dialled connection's connect was refused or failed.
    ConnectFailed,
    /// A dialled connection's connect did not finish within its timeout.
    ConnectTimeout,
    /// The TLS handshake failed or outlasted its timeout (the reason is counted by the layer).
    TlsHandshake,
}

impl CloseReason {
    /// The counter this reason is tallied in.
    pub(crate) fn counter(self, stats: &Stats) -> &AtomicU64 {
        match self {
            CloseReason::PeerClosed => &stats.closed_by_peer,
            CloseReason::Reset => &stats.closed_by_reset,
            CloseReason::Idle => &stats.closed_idle,
            CloseReason::OverLimit => &stats.closed_over_limit,
            CloseReason::Protocol => &stats.closed_by_protocol,
            CloseReason::ProtocolError => &stats.closed_protocol_error,
            CloseReason::Panic => &stats.closed_by_panic,
            CloseReason::Shutdown => &stats.closed_by_shutdown,
            CloseReason::IoError => &stats.closed_io_error,
            CloseReason::ConnectFailed => &stats.dials_failed,
            CloseReason::ConnectTimeout => &stats.dials_timed_out,
            CloseReason::TlsHandshake => &stats.closed_tls_handshake,
        }
    }
}

/// The error hook a driver has until its owner sets one: the panic, logged at error level.
pub(crate) fn default_error_hook(report: &ErrorReport) {
    let peer = report
        .peer
        .map_or_else(|| "unknown peer".to_string(), |peer| peer.to_string());
    match report.conn {
        Some(conn) => log::error!("{conn:?} ({peer}): protocol panicked: {}", report.message),
        None => log::error!(
            "datagram from {peer}: protocol panicked: {}",
            report.message
        ),
    }
}
