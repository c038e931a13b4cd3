//! Sans-IO protocols: state machines that take bytes and return bytes and wishes.
//!
//! A [`Protocol`] never sees a socket. The driver (the reactor, a blocking driver, or the
//! [`Session`] in a unit test) hands it the bytes received so far and a [`Context`] through which
//! it writes output and states its wishes: close the connection, arm a timer, offload a job to the
//! worker pool. Because of that, one state machine runs unchanged on the event loop, on blocking
//! threads, fed one byte at a time in a test, or under a fuzzer.
//!
//! # The contract
//!
//! * [`Protocol::on_read`] gets every unconsumed byte and returns how many it consumed. It
//!   consumes every *complete* unit it can (a line, a frame, a request) and leaves a partial
//!   unit in place: "incomplete" is a normal answer. The driver keeps the rest and calls again
//!   with it plus whatever arrives next.
//! * It checks its limits before it allocates: a peer that announces a 4 GiB frame gets an error
//!   and a close, not a 4 GiB buffer. The driver also caps unconsumed input at
//!   [`Config::max_input_bytes`](crate::Config::max_input_bytes).
//! * Output written through the context is sent in order. While the connection's pending output
//!   is above the high watermark the driver stops calling `on_read` (backpressure), so a protocol
//!   whose output is proportional to its input needs no flow control of its own. A timer armed
//!   with [`Context::set_input_timer`] stands still meanwhile; one armed with
//!   [`Context::set_timer`] runs on.
//! * [`Context::hold_input`] stops reading until one of the connection's jobs completes, for a
//!   protocol that cannot take more input before then; [`Context::manage_own_backpressure`]
//!   keeps input flowing above the high watermark, for a protocol that bounds its own output.
//! * [`Protocol::on_drain`] follows when pending output that reached the high watermark is back
//!   at the low watermark (for a blocking driver: when a write that had to wait completes).
//! * After [`Protocol::on_job_done`] the driver offers the unconsumed input again (unless reading
//!   is paused or the connection is closing), so a protocol may stop consuming while it waits
//!   for a job, as HTTP does when its pipeline of answers is full.
//! * A panic in any callback closes that connection only and is reported to the server's error
//!   hook; every other connection keeps being served.
//!
//! What is *not* guaranteed: how input is split between calls (any split may happen, which is
//! why the tests feed every protocol one byte at a time), and that a wish to close is honoured
//! before the peer's own close or reset is noticed.

mod datagram;
pub(crate) mod datagram_handler;
mod echo;
mod frame;
pub mod http;
mod line;
mod session;
pub mod ws;

use std::time::{Duration, Instant};

pub use datagram::{DatagramProtocol, Outbox, Outgoing, Peer};
pub use echo::Echo;
pub use frame::Frame;
pub use http::Http;
pub use line::Line;
pub use session::Session;

pub use crate::reactor::buffer::SharedBytes;
use crate::reactor::buffer::WriteBuf;
use crate::reactor::token::ConnId;
use crate::worker::{Job, WorkerPool};
pub use crate::worker::{
    JobFailed, JobOutput, JobResult, Mailbox, Notice, OffloadError, Recipients,
};

/// A sans-IO connection protocol. See the [module documentation](self) for the contract.
pub trait Protocol: 'static {
    /// The connection is established; nothing has been read yet.
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// `input` holds every byte received and not yet consumed. Consume complete units, write
    /// answers through `ctx`, and return the number of bytes consumed (at most `input.len()`).
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize;

    /// The peer will send no more (it half-closed or closed). Output can still be written;
    /// unconsumed input is discarded. The default closes once pending output is flushed, which
    /// is what lets a half-closed client still receive every answer.
    fn on_eof(&mut self, ctx: &mut Context<'_>) {
        ctx.close();
    }

    /// The timer armed with [`Context::set_timer`] came due.
    fn on_timer(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// A job offloaded with [`Context::offload`] finished (or panicked: `Err`).
    fn on_job_done(&mut self, tag: u64, result: JobResult, ctx: &mut Context<'_>) {
        let _ = (tag, result, ctx);
    }

    /// The server is shutting down gracefully. The default closes once pending output is flushed
    /// and jobs in flight are answered; a protocol may finish its current unit first.
    fn on_shutdown(&mut self, ctx: &mut Context<'_>) {
        ctx.close();
    }

    /// Pending output that had reached the high watermark has drained to the low watermark
    /// (under a blocking driver: a write that had to wait for the peer has completed). Input
    /// is fed again right after; a protocol that paces its own output (a WebSocket handler
    /// told of backpressure) may write more now.
    fn on_drain(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }

    /// A [`Notice`] another thread sent to this connection through its loop's [`Mailbox`]
    /// (see [`Context::mailbox`]): a pub/sub hub's delivery or answer. Downcast it to what the
    /// sender sends; a notice of another kind is ignored.
    fn on_notice(&mut self, notice: &Notice, ctx: &mut Context<'_>) {
        let _ = (notice, ctx);
    }

    /// The connection is closed, for whatever reason (the protocol's own close, the peer's,
    /// a reset, a limit, the shutdown deadline); no other callback follows, and nothing
    /// written now is sent. For a protocol that must learn of every end (WebSocket tells its
    /// handler `on_close` exactly once).
    fn on_closed(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }
}

/// How the protocol asked the connection to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    /// Close after pending output is written and jobs in flight are answered.
    Graceful,
    /// Like `Graceful`, but the protocol rejected the peer's input (counted as a protocol error).
    Failed(&'static str),
    /// Close now and discard pending output.
    Abort,
}

/// What the protocol asked of its timer during one callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum TimerRequest {
    /// Leave the timer as it is.
    #[default]
    Keep,
    /// Arm (or re-arm) the connection's timer to fire after `after`; an `input` timer stands
    /// still while the driver withholds input (see [`Context::set_input_timer`]).
    Set { after: Duration, input: bool },
    /// Disarm it.
    Cancel,
}

/// Wishes collected during one callback; the driver acts on them when the callback returns.
#[derive(Debug, Default)]
pub(crate) struct Wishes {
    pub(crate) close: Option<CloseRequest>,
    pub(crate) timer: TimerRequest,
    /// No more input until one of this connection's jobs completes.
    pub(crate) hold_input: bool,
    /// From now on, input is fed even above the high watermark.
    pub(crate) own_backpressure: bool,
    /// Call `on_drain` once pending output is at or below the low watermark.
    pub(crate) drain_wanted: bool,
    /// A dialled connection that ended asks to be dialled again after this delay.
    pub(crate) reconnect: Option<Duration>,
}

/// Where [`Context::peer_addr`] finds the peer's address.
#[derive(Clone, Copy)]
pub(crate) enum PeerSource<'a> {
    /// Nobody knows it (a bare [`Session`], a Unix-domain peer).
    Unknown,
    /// Known when the connection was accepted (the blocking drivers).
    Known(std::net::SocketAddr),
    /// Asked of the socket when wanted (the reactor: no per-connection copy is kept).
    Socket(&'a dyn AsksPeer),
}

/// Something that can tell the peer's address when asked: the reactor's socket, seen by the
/// protocol room only through this (protocols know no socket).
pub(crate) trait AsksPeer {
    /// The peer's address, if it is a TCP peer and the socket can still tell.
    fn peer_addr(&self) -> Option<std::net::SocketAddr>;
}

/// Where [`Context::offload`] sends jobs.
pub(crate) enum Offload<'a> {
    /// No worker pool: offloading answers [`OffloadError::Unavailable`].
    Unavailable,
    /// The reactor's worker pool.
    Pool {
        pool: &'a WorkerPool,
        /// Jobs this connection has in flight; bounded by `max`.
        in_flight: &'a mut u16,
        max: u16,
        /// Where refusals are counted.
        stats: &'a crate::metrics::Stats,
        /// The reactor's completion channel, handed to the job for its result.
        reply: &'a crate::reactor::completions::CompletionSender<crate::worker::Completion>,
    },
    /// Run the job on the calling thread and deliver its result after the callback returns
    /// (blocking drivers and the test harness).
    Inline(&'a mut Vec<(u64, JobResult)>),
}

/// The protocol's view of its connection during one callback.
pub struct Context<'a> {
    pub(crate) conn: ConnId,
    pub(crate) now: Instant,
    pub(crate) output: &'a mut WriteBuf,
    /// Bytes already waiting in the connection from earlier callbacks.
    pub(crate) pending_output: usize,
    pub(crate) wishes: &'a mut Wishes,
    pub(crate) offload: Offload<'a>,
    /// Where measurements go; `None` where nobody keeps counters (a bare [`Session`]).
    pub(crate) recorder: Option<crate::metrics::Recorder<'a>>,
    /// The clock read for measurements during this callback, read at most once.
    pub(crate) measured_now: Option<Instant>,
    /// Where the peer's address comes from.
    pub(crate) peer: PeerSource<'a>,
    /// The peer's verified certificate (mTLS), if it presented one.
    pub(crate) identity: Option<&'a std::sync::Arc<crate::tls::PeerIdentity>>,
    /// The server's error hook, for panics a protocol catches in code it calls.
    pub(crate) on_error: Option<&'a (dyn Fn(&crate::lifecycle::ErrorReport) + Send + Sync)>,
    /// The loop's mailbox; `None` under drivers that have no loop to wake (the blocking ones).
    pub(crate) mailbox: Option<&'a Mailbox>,
}

impl<'a> Context<'a> {
    /// The identity of this connection.
    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// The time cached at the start of this reactor turn (cheap; no system call).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Reports a panic the protocol caught in code it runs (a WebSocket handler, say) to the
    /// server's error hook, as the driver reports a panic in the protocol itself. The protocol
    /// decides what becomes of the connection.
    pub fn report_panic(&self, message: String) {
        if let Some(on_error) = self.on_error {
            on_error(&crate::lifecycle::ErrorReport {
                conn: Some(self.conn),
                peer: self.peer_addr(),
                message,
            });
        }
    }

    /// The peer's address: TCP peers only (a Unix-domain peer has none), and `None` where the
    /// driver does not know it (a [`Session`] in a test). Under the reactor it is asked of the
    /// socket (one system call), since no connection keeps a copy.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match self.peer {
            PeerSource::Unknown => None,
            PeerSource::Known(addr) => Some(addr),
            PeerSource::Socket(stream) => stream.peer_addr(),
        }
    }

    /// Who the peer proved to be with a TLS client certificate (verified against the
    /// configured client CA and CRL): `None` without TLS, without client authentication, or
    /// for a client that sent no certificate where one was optional. What a handler authorises
    /// by; see [`PeerIdentity::has_name`](crate::tls::PeerIdentity::has_name).
    pub fn peer_identity(&self) -> Option<&crate::tls::PeerIdentity> {
        self.identity.map(|identity| &**identity)
    }

    /// Queues `bytes` for sending, after everything written before.
    pub fn write(&mut self, bytes: &[u8]) {
        self.output.push(bytes);
    }

    /// Queues a reference to bytes shared with other connections (one encoded frame fanned
    /// out to many): no copy.
    pub fn write_shared(&mut self, bytes: &SharedBytes) {
        self.output.push_shared(bytes);
    }

    /// Where another thread can send [`Notice`]s for this connection (and the others of its
    /// loop): `None` under a driver without an event loop (the blocking models), where nothing
    /// could wake the connection for them.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        self.mailbox
    }

    /// Queues an owned buffer for sending without copying it (e.g. a response body).
    pub fn write_owned(&mut self, bytes: Vec<u8>) {
        self.output.push_owned(bytes);
    }

    /// Bytes written but not yet sent, including those queued during this callback.
    pub fn pending_output(&self) -> usize {
        self.pending_output + self.output.len()
    }

    /// Closes the connection once pending output is sent and jobs in flight are answered.
    /// Input that arrives meanwhile is not fed to the protocol.
    pub fn close(&mut self) {
        self.request_close(CloseRequest::Graceful);
    }

    /// Closes like [`Context::close`], counting the close as the peer's fault (bad input, a
    /// limit exceeded); `why` is logged at debug level. Write the error answer first.
    pub fn fail(&mut self, why: &'static str) {
        self.request_close(CloseRequest::Failed(why));
    }

    /// Closes the connection at once, discarding pending output.
    pub fn abort(&mut self) {
        self.wishes.close = Some(CloseRequest::Abort);
    }

    /// True once a close was requested.
    pub fn is_closing(&self) -> bool {
        self.wishes.close.is_some()
    }

    fn request_close(&mut self, request: CloseRequest) {
        // An abort stays an abort; the first graceful reason is kept.
        if self.wishes.close.is_none() {
            self.wishes.close = Some(request);
        }
    }

    /// Counts one answered request by the class of `status` (1xx to 5xx) and records its
    /// latency from `started` (the [`Context::now`] of the turn its first byte arrived in) to
    /// this moment, for the server's metrics (`socketserver_requests_total`,
    /// `socketserver_request_duration_seconds`). The clock is read once per callback, however
    /// many requests it answers.
    pub fn record_request(&mut self, status: u16, started: Instant) {
        let Some(recorder) = self.recorder else {
            return;
        };
        let now = self.measurement_now();
        recorder.request(status, now.saturating_duration_since(started));
    }

    /// The clock, read at most once per callback (for latencies and the HTTP `Date`).
    pub(crate) fn measurement_now(&mut self) -> Instant {
        *self.measured_now.get_or_insert_with(Instant::now)
    }

    /// Appends what `write` adds to the end of a `Vec` to the output, in place: no buffer of
    /// its own, no copy. `write` must only append.
    pub(crate) fn write_with<R>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        self.output.append_with(write)
    }

    /// Arms the connection's one timer to fire after `after`, replacing any armed before. It
    /// runs whatever the connection is doing (a push protocol's tick, a heartbeat); for a
    /// deadline on the peer's input use [`Context::set_input_timer`].
    pub fn set_timer(&mut self, after: Duration) {
        self.wishes.timer = TimerRequest::Set {
            after,
            input: false,
        };
    }

    /// Arms the connection's one timer as a deadline on the peer's *input* (a request that
    /// must arrive within `after`, an idle keep-alive), replacing any armed before. Unlike
    /// [`Context::set_timer`], it stands still while the driver withholds input because the
    /// peer is not taking output (backpressure: the reactor above the high watermark, a
    /// blocking driver waiting in a write), and runs on for the time it had left once input
    /// flows again: a peer that already sent everything is not blamed for the server's pause.
    pub fn set_input_timer(&mut self, after: Duration) {
        self.wishes.timer = TimerRequest::Set { after, input: true };
    }

    /// Disarms the connection's timer.
    pub fn cancel_timer(&mut self) {
        self.wishes.timer = TimerRequest::Cancel;
    }

    /// Asks the driver to read nothing more from the peer until one of this connection's
    /// offloaded jobs completes, because the protocol cannot take more input before then (HTTP
    /// does this while its queue of answers is full). The driver stops reading (the kernel's
    /// buffers then push back on the peer, instead of unread input piling up to
    /// [`Config::max_input_bytes`](crate::Config::max_input_bytes)); when a job comes back it
    /// offers the buffered input again and reads on, unless the protocol holds again. With no
    /// job in flight the wish has no effect, since nothing would end the hold.
    pub fn hold_input(&mut self) {
        self.wishes.hold_input = true;
    }

    /// Tells the driver that, from now on, this protocol bounds its own output: input keeps
    /// being fed while pending output is above the high watermark, instead of pausing (the
    /// hard limit still closes the connection). A protocol does this when it must go on
    /// reading whatever it writes, as WebSocket must to answer pings and see close frames
    /// while a slow peer's queue drains; it then answers its own senders with backpressure
    /// (see [`Context::pending_output`]) and learns of the drain from
    /// [`Protocol::on_drain`]. It lasts for the rest of the connection.
    pub fn manage_own_backpressure(&mut self) {
        self.wishes.own_backpressure = true;
    }

    /// Asks for [`Protocol::on_drain`] once the connection's pending output is at or below
    /// the low watermark: soon after this callback if it already is (or once the socket has
    /// taken it), else when it drains. For a protocol that stopped writing because output
    /// was waiting and must learn when to go on, whether or not the high watermark was
    /// reached. Under a blocking driver, whose writes wait for the peer, it follows as soon as
    /// the output is written.
    pub fn notify_when_drained(&mut self) {
        self.wishes.drain_wanted = true;
    }

    /// On a dialled connection, from [`Protocol::on_closed`]: dial the same address again
    /// after `after`, with this same protocol (its state, such as what it has received so far,
    /// carries over), which hears [`Protocol::on_open`] when the new connection is up and
    /// `on_closed` again if it fails. The new connection has a new [`ConnId`]. How long to
    /// wait is the protocol's policy (see [`client::Backoff`](crate::client::Backoff)); the
    /// driver only keeps the appointment. The wish is acted on when the connection ends, so
    /// `on_closed` is the place to make it (the last wish made counts); it is ignored on
    /// accepted connections and once the driver is shutting down.
    pub fn reconnect_after(&mut self, after: Duration) {
        self.wishes.reconnect = Some(after);
    }

    /// Runs `job` on the worker pool; its result comes back to [`Protocol::on_job_done`] with
    /// `tag`. Never blocks: a full queue answers [`OffloadError::Busy`] at once.
    pub fn offload<T, F>(&mut self, tag: u64, job: F) -> Result<(), OffloadError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let work: Box<dyn FnOnce() -> JobOutput + Send> = Box::new(move || Box::new(job()));
        match &mut self.offload {
            Offload::Unavailable => Err(OffloadError::Unavailable),
            Offload::Pool {
                pool,
                in_flight,
                max,
                stats,
                reply,
            } => {
                if **in_flight >= *max {
                    crate::metrics::add(&stats.jobs_rejected, 1);
                    return Err(OffloadError::TooManyInFlight);
                }
                let job = Job {
                    conn: self.conn,
                    tag,
                    work,
                    reply: (*reply).clone(),
                    submitted: Instant::now(),
                };
                if let Err(error) = pool.try_submit(job) {
                    crate::metrics::add(&stats.jobs_rejected, 1);
                    return Err(error);
                }
                **in_flight += 1;
                Ok(())
            }
            Offload::Inline(done) => {
                let started = Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(
                    |payload| JobFailed {
                        message: crate::lifecycle::panic_message(payload.as_ref()),
                    },
                );
                if let Some(recorder) = self.recorder {
                    recorder.job(started.elapsed());
                }
                done.push((tag, result));
                Ok(())
            }
        }
    }
}
