//! A protocol driven from memory: bytes in, output and wishes collected. The test harness for
//! every protocol, and the core of the blocking drivers, which add only the socket calls.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{CloseRequest, Context, Offload, PeerSource, Protocol, TimerRequest, Wishes};
use crate::reactor::buffer::{ReadBuf, WriteBuf};
use crate::reactor::token::ConnId;
use crate::worker::JobResult;

/// Drives a [`Protocol`] from memory, the way the reactor would, minus the sockets.
///
/// Offloaded jobs run inline and their results are delivered right after the callback that
/// offloaded them. The blocking drivers run every connection through a `Session`; tests use it
/// to feed a protocol its input split at every byte boundary:
///
/// ```
/// use socketserver::protocol::{Session, Line};
///
/// let mut whole = Session::new(Line::default());
/// whole.feed(b"hello\nworld\n");
/// let mut bytewise = Session::new(Line::default());
/// for byte in b"hello\nworld\n" {
///     bytewise.feed(&[*byte]);
/// }
/// assert_eq!(whole.take_output(), bytewise.take_output());
/// ```
pub struct Session<P: Protocol> {
    protocol: P,
    input: ReadBuf,
    output: WriteBuf,
    close: Option<CloseRequest>,
    /// When the protocol's timer is due, if armed.
    timer: Option<Instant>,
    /// The armed timer is a deadline on input (it is postponed while a write waits).
    input_timer: bool,
    eof: bool,
    /// The time callbacks see as `ctx.now()`; advanced by the driver with [`Session::set_now`].
    now: Instant,
    id: ConnId,
    /// Job results delivered so far (to notice a job that unblocked the protocol).
    jobs_delivered: u64,
    /// Counters the protocol's measurements go to (a blocking driver's, shared by its threads).
    stats: Option<std::sync::Arc<crate::metrics::Stats>>,
    /// The peer's address, if the driver knows it.
    peer: Option<std::net::SocketAddr>,
    /// The peer's verified TLS client certificate, if the driver has one.
    identity: Option<std::sync::Arc<crate::tls::PeerIdentity>>,
    /// The server's error hook, for panics the protocol catches itself.
    on_error: Option<crate::lifecycle::ErrorHook>,
    /// The protocol was told the connection is over.
    closed: bool,
    /// Results of jobs run inline during the callback running now; empty between callbacks.
    finished: Vec<(u64, JobResult)>,
    /// Results waiting to be delivered, in order; empty between calls. Both lists keep their
    /// storage, so running a job costs no allocation beyond the job's own.
    undelivered: VecDeque<(u64, JobResult)>,
    /// Where other threads send this connection notices (a blocking driver's connection).
    mailbox: Option<crate::worker::Mailbox>,
    /// The protocol asked for `on_drain` once its output is written.
    drain_wanted: bool,
    /// The protocol asked to be dialled again after this delay ([`Context::reconnect_after`]).
    reconnect: Option<Duration>,
}

impl<P: Protocol> Session<P> {
    /// Opens a connection to `protocol` (calls [`Protocol::on_open`]).
    pub fn new(protocol: P) -> Self {
        Session::with_id(protocol, ConnId { index: 0, gen: 0 })
    }

    /// Opens a connection known to callbacks as `id`.
    pub fn with_id(protocol: P, id: ConnId) -> Self {
        Session::with_id_and_peer(protocol, id, None)
    }

    /// Opens a connection known to callbacks as `id`, from `peer`.
    pub fn with_id_and_peer(protocol: P, id: ConnId, peer: Option<std::net::SocketAddr>) -> Self {
        Session::with_identity(protocol, id, peer, None)
    }

    /// Opens a connection known to callbacks as `id`, from `peer`, who proved to be `identity`
    /// with a TLS client certificate ([`Context::peer_identity`]): how the blocking drivers
    /// open a TLS connection, and how a test shows a handler an authenticated peer.
    pub fn with_identity(
        protocol: P,
        id: ConnId,
        peer: Option<std::net::SocketAddr>,
        identity: Option<crate::tls::PeerIdentity>,
    ) -> Self {
        let mut session = Session::unopened(protocol, id, peer);
        session.identity = identity.map(std::sync::Arc::new);
        session.call(|protocol, ctx| protocol.on_open(ctx));
        session
    }

    /// A session whose connection never opened (a dial that failed): the protocol is not told
    /// of an open; [`Session::closed`] tells it of the end.
    pub fn unopened(protocol: P, id: ConnId, peer: Option<std::net::SocketAddr>) -> Self {
        Session {
            protocol,
            input: ReadBuf::default(),
            output: WriteBuf::default(),
            close: None,
            timer: None,
            input_timer: false,
            eof: false,
            now: Instant::now(),
            id,
            jobs_delivered: 0,
            stats: None,
            peer,
            identity: None,
            on_error: None,
            closed: false,
            finished: Vec::new(),
            undelivered: VecDeque::new(),
            mailbox: None,
            drain_wanted: false,
            reconnect: None,
        }
    }

    /// Delivers `bytes` as newly received input, unless the protocol asked to close.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.close.is_some() || self.eof {
            return;
        }
        // Nothing held: the protocol reads the fresh bytes where they are (as under the
        // reactor), and only what it leaves is copied.
        let mut fresh = if self.input.is_empty() {
            Some(bytes)
        } else {
            self.input.extend(bytes);
            None
        };
        loop {
            let delivered = self.jobs_delivered;
            let consumed = match fresh.take() {
                Some(bytes) => {
                    let consumed = self.call(|protocol, ctx| protocol.on_read(bytes, ctx));
                    assert!(
                        consumed <= bytes.len(),
                        "consumed {consumed} of {} bytes fed",
                        bytes.len()
                    );
                    self.input.extend(&bytes[consumed..]);
                    consumed
                }
                None => {
                    let mut input = std::mem::take(&mut self.input);
                    let consumed =
                        self.call(|protocol, ctx| protocol.on_read(input.as_slice(), ctx));
                    input.consume(consumed);
                    self.input = input;
                    consumed
                }
            };
            // As the reactor does: a job that finished may have unblocked a protocol that
            // stopped consuming (a full pipeline), so offer what is left once more; stop when
            // an offer makes no progress.
            let unblocked = self.jobs_delivered != delivered;
            if !unblocked || consumed == 0 || self.input.is_empty() || self.close.is_some() {
                break;
            }
        }
    }

    /// Signals end of input (the peer half-closed).
    pub fn eof(&mut self) {
        if !self.eof && self.close.is_none() {
            self.eof = true;
            self.call(|protocol, ctx| protocol.on_eof(ctx));
        }
    }

    /// Fires the protocol's timer, if armed; returns whether it was.
    pub fn fire_timer(&mut self) -> bool {
        if self.timer.take().is_some() {
            self.call(|protocol, ctx| protocol.on_timer(ctx));
            true
        } else {
            false
        }
    }

    /// Tells the protocol that output which had backed up has drained (calls
    /// [`Protocol::on_drain`]): a blocking driver does this once a write that had to wait for
    /// the peer completes.
    pub fn drained(&mut self) {
        if self.close.is_none() {
            self.call(|protocol, ctx| protocol.on_drain(ctx));
        }
    }

    /// True (once) if the protocol asked to be told when its output is written
    /// ([`Context::notify_when_drained`]): the driver calls [`Session::drained`] once it is.
    pub fn take_drain_wanted(&mut self) -> bool {
        std::mem::take(&mut self.drain_wanted)
    }

    /// Ends the session: the protocol is told the connection is closed
    /// ([`Protocol::on_closed`]), once. A blocking driver calls it when the connection ends.
    pub fn closed(&mut self) {
        if !self.closed {
            self.closed = true;
            self.call(|protocol, ctx| protocol.on_closed(ctx));
            self.output.release();
        }
    }

    /// Sends panics the protocol reports ([`Context::report_panic`](super::Context::report_panic))
    /// to the server's error hook.
    pub(crate) fn report_errors_to(&mut self, hook: crate::lifecycle::ErrorHook) {
        self.on_error = Some(hook);
    }

    /// Starts a graceful shutdown (calls [`Protocol::on_shutdown`]).
    pub fn shutdown(&mut self) {
        if self.close.is_none() {
            self.call(|protocol, ctx| protocol.on_shutdown(ctx));
        }
    }

    /// Takes everything written so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        let bytes = self.output.to_vec();
        self.output.release();
        bytes
    }

    /// The close the protocol asked for, if any.
    pub fn close_request(&self) -> Option<CloseRequest> {
        self.close
    }

    /// When the armed timer is due, if one is armed.
    pub fn timer_deadline(&self) -> Option<Instant> {
        self.timer
    }

    /// Moves the deadline of an armed *input* timer ([`Context::set_input_timer`]) `by`
    /// later; other timers are left as they are. A blocking driver calls it after a write that
    /// had to wait for the peer: it read nothing meanwhile, so that time must not count against
    /// the peer's input (the blocking counterpart of the reactor's frozen input timer).
    pub fn postpone_input_timer(&mut self, by: Duration) {
        if let (Some(deadline), true) = (&mut self.timer, self.input_timer) {
            *deadline += by;
        }
    }

    /// Sends the protocol's measurements (requests, job latency) to `stats`, a part several
    /// threads may write.
    pub(crate) fn record_into(&mut self, stats: std::sync::Arc<crate::metrics::Stats>) {
        self.stats = Some(stats);
    }

    /// Sets the time callbacks see from now on (a driver calls it before each step).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// True once end of input was signalled.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Bytes written by the protocol and not yet taken.
    pub fn pending_output(&self) -> usize {
        self.output.len()
    }

    /// Writes all pending output to `sink` (blocking drivers: a blocking socket, where
    /// `WouldBlock` means its write timeout passed and is returned as an error).
    pub fn write_output(&mut self, sink: &mut impl std::io::Write) -> std::io::Result<()> {
        self.output.write_until_blocked(sink)?;
        if !self.output.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        // Written out: the buffer keeps its last chunk (at most 64 KiB) for the next answer.
        Ok(())
    }

    /// Gives the protocol a mailbox ([`Context::mailbox`]) through which other threads reach
    /// this connection.
    pub(crate) fn set_mailbox(&mut self, mailbox: crate::worker::Mailbox) {
        self.mailbox = Some(mailbox);
    }

    /// Hands the protocol a notice from another thread ([`Protocol::on_notice`]), unless the
    /// connection is closing or over.
    pub fn notice(&mut self, notice: &crate::worker::Notice) {
        if self.closed || self.close.is_some() {
            return;
        }
        self.call(|protocol, ctx| protocol.on_notice(notice, ctx));
    }

    /// Unconsumed input.
    pub fn buffered_input(&self) -> &[u8] {
        self.input.as_slice()
    }

    /// The protocol itself, for inspecting its state.
    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// Ends the session and gives the protocol back (a blocking client that reconnects opens a
    /// new session with it).
    pub fn into_protocol(self) -> P {
        self.protocol
    }

    /// The delay the protocol asked to be dialled again after (once): what it wished in
    /// [`Protocol::on_closed`] with [`Context::reconnect_after`].
    pub fn take_reconnect(&mut self) -> Option<Duration> {
        self.reconnect.take()
    }

    /// Runs `callback` on the protocol with a context, as a driver's own callback would be
    /// run: what it writes and wishes is taken as from any callback. How a blocking client
    /// hands its protocol something to send.
    pub fn with_protocol<R>(&mut self, callback: impl FnOnce(&mut P, &mut Context<'_>) -> R) -> R {
        self.call(callback)
    }

    /// Runs one callback, then delivers the results of jobs it offloaded (and of jobs those
    /// deliveries offloaded), in order.
    fn call<R>(&mut self, callback: impl FnOnce(&mut P, &mut Context<'_>) -> R) -> R {
        let result = self.invoke(callback);
        let mut undelivered = std::mem::take(&mut self.undelivered);
        undelivered.extend(self.finished.drain(..));
        while let Some((tag, job_result)) = undelivered.pop_front() {
            self.jobs_delivered += 1;
            self.invoke(|protocol, ctx| protocol.on_job_done(tag, job_result, ctx));
            undelivered.extend(self.finished.drain(..));
        }
        self.undelivered = undelivered;
        result
    }

    /// Runs one callback; the results of jobs it ran inline are left in `finished`.
    fn invoke<R>(&mut self, callback: impl FnOnce(&mut P, &mut Context<'_>) -> R) -> R {
        let mut done = std::mem::take(&mut self.finished);
        let mut wishes = Wishes::default();
        let result = {
            let mut ctx = Context {
                conn: self.id,
                now: self.now,
                output: &mut self.output,
                pending_output: 0,
                wishes: &mut wishes,
                offload: Offload::Inline(&mut done),
                recorder: self.stats.as_deref().map(crate::metrics::Recorder::shared),
                measured_now: None,
                peer: self.peer.map_or(PeerSource::Unknown, PeerSource::Known),
                identity: self.identity.as_ref(),
                on_error: self.on_error.as_deref(),
                mailbox: self.mailbox.as_ref(),
            };
            callback(&mut self.protocol, &mut ctx)
        };
        self.finished = done;
        self.apply(wishes);
        result
    }

    fn apply(&mut self, wishes: Wishes) {
        match wishes.timer {
            TimerRequest::Keep => {}
            TimerRequest::Set { after, input } => {
                self.timer = Some(self.now + after);
                self.input_timer = input;
            }
            TimerRequest::Cancel => self.timer = None,
        }
        if self.close.is_none() {
            self.close = wishes.close;
        }
        self.drain_wanted |= wishes.drain_wanted;
        if wishes.reconnect.is_some() {
            self.reconnect = wishes.reconnect;
        }
        // `hold_input` needs nothing here: jobs run inline, so the job a hold waits for has
        // come back before the next input is fed; own backpressure likewise, since a blocking
        // write is the only backpressure there is.
    }
}
