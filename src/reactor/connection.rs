//! One connection's state and the steps the reactor takes on it: read, feed, write, close.
//!
//! Readiness is *latched*: an edge-triggered event sets `READABLE` or `WRITABLE`, and only a
//! `WouldBlock` (or a short read, which proves the socket was drained) clears it. So a connection
//! that stops early — on its fairness budget, or paused by backpressure — still knows it has
//! input waiting, and is driven again without a new edge from the kernel.

use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mio::Interest;

use super::buffer::{ReadBuf, WriteBuf};
use super::timer::Tick;
use super::token::ConnId;
use super::{Core, TimerEvent};
use crate::error::{interrupted, is_disconnect, would_block};
use crate::lifecycle::{panic_message, CloseReason, ErrorReport};
use crate::metrics::{self, Stats};
use crate::net::{Opening, Stream};
use crate::protocol::{CloseRequest, Context, Offload, PeerSource, Protocol, TimerRequest, Wishes};

/// Bit flags of a connection's state, kept in one `u32` to keep idle connections small.
pub(crate) mod flag {
    /// The socket may have input: latched by an event, cleared by `WouldBlock` or a short read.
    pub const READABLE: u32 = 1 << 0;
    /// The socket may take output: latched by an event, cleared by `WouldBlock`.
    pub const WRITABLE: u32 = 1 << 1;
    /// Writable interest is registered with the poll (only while output is pending).
    pub const WANT_WRITE: u32 = 1 << 2;
    /// Pending output crossed the high watermark: input is not fed to the protocol.
    pub const PAUSED: u32 = 1 << 3;
    /// A close was requested; it happens once output is flushed and jobs are answered.
    pub const CLOSING: u32 = 1 << 4;
    /// Closed: waiting for removal at the end of the turn; every event for it is dropped.
    pub const CLOSED: u32 = 1 << 5;
    /// The peer finished sending (read returned 0).
    pub const EOF: u32 = 1 << 6;
    /// The peer's end-of-stream was signalled by the poll: read to the end, past short reads.
    pub const PEER_CLOSING: u32 = 1 << 7;
    /// On the ready-again list (stopped on its read budget with input left).
    pub const READY_AGAIN: u32 = 1 << 8;
    /// Answered and write side shut: input is read and discarded until end of stream or the
    /// linger timer, so that unread input cannot turn the close into a reset.
    pub const LINGERING: u32 = 1 << 9;
    /// The protocol asked for no more input until one of its jobs completes.
    pub const HELD: u32 = 1 << 10;
    /// The protocol timer is a deadline on input ([`Context::set_input_timer`]): it stands
    /// still while reading is paused by backpressure.
    ///
    /// [`Context::set_input_timer`]: crate::protocol::Context::set_input_timer
    pub const INPUT_TIMER: u32 = 1 << 11;
    /// Reading is paused by backpressure and the input timer does not run: `timer_deadline`
    /// holds the time it had left (see [`Clock::keep_span`](super::timer::Clock::keep_span)),
    /// and the resume arms it again for that long.
    pub const TIMER_FROZEN: u32 = 1 << 12;
    /// Pending output reached the high watermark: the protocol is owed an `on_drain` once it
    /// falls to the low watermark.
    pub const DRAIN_OWED: u32 = 1 << 13;
    /// The protocol bounds its own output: input is fed above the high watermark too.
    pub const OWN_BACKPRESSURE: u32 = 1 << 14;
    /// A dialled connection whose connect has not finished: nothing is read, written or fed
    /// until writability says it ended and `SO_ERROR` says how.
    pub const CONNECTING: u32 = 1 << 15;
    /// A layer over the socket (TLS) is opening: its handshake is driven, nothing is fed to the
    /// protocol, and `on_open` waits until it is done.
    pub const OPENING: u32 = 1 << 16;
    /// From a trusted balancer, and its PROXY protocol header has not been read yet (set with
    /// `OPENING`): the header comes first, then any layer's handshake, then `on_open`.
    pub const PROXY_HEADER: u32 = 1 << 17;
}

/// Where reading a PROXY header got to.
enum ProxyStep {
    /// Read and taken off the socket.
    Done,
    /// Only part of it is there.
    Wait,
    /// Closed: the header was bad, the peer left, or the verify hook refused the client.
    Closed,
}

/// One accepted or dialled connection. Small on purpose: an idle one holds no buffers.
pub(crate) struct Connection<P> {
    /// This connection's identity (slot and generation), as packed into its poll token.
    pub(crate) id: ConnId,
    /// The socket; closed when the connection is removed from the table.
    pub(crate) stream: Stream,
    /// The protocol state machine.
    pub(crate) protocol: P,
    /// Input the protocol left unconsumed; `None` when there is none.
    pub(crate) input: Option<Box<ReadBuf>>,
    /// Output the socket has not taken yet; `None` when there is none.
    pub(crate) output: Option<Box<WriteBuf>>,
    /// Last time input was read or output was written (the turn's cached `now`).
    pub(crate) last_active: Tick,
    /// When the protocol wants [`Protocol::on_timer`]; `None` when its timer is not armed.
    pub(crate) timer_deadline: Option<Tick>,
    /// Deadline of this connection's one live protocol-timer entry in the heap, if any. An entry
    /// with another deadline is stale and ignored when it comes due.
    pub(crate) timer_entry: Option<Tick>,
    /// Jobs offloaded and not yet answered.
    pub(crate) jobs_in_flight: u16,
    /// State bits, see [`flag`].
    pub(crate) flags: u32,
    /// Reason recorded when `CLOSING` was set.
    pub(crate) close_reason: CloseReason,
}

impl<P: Protocol> Connection<P> {
    pub(crate) fn new(id: ConnId, stream: Stream, protocol: P, now: Tick) -> Self {
        Connection {
            id,
            stream,
            protocol,
            input: None,
            output: None,
            last_active: now,
            timer_deadline: None,
            timer_entry: None,
            jobs_in_flight: 0,
            // A new socket can take output: try writing before asking the poll.
            flags: flag::WRITABLE,
            close_reason: CloseReason::Protocol,
        }
    }

    #[inline]
    pub(crate) fn has(&self, bits: u32) -> bool {
        self.flags & bits != 0
    }

    #[inline]
    fn set(&mut self, bits: u32) {
        self.flags |= bits;
    }

    #[inline]
    fn clear(&mut self, bits: u32) {
        self.flags &= !bits;
    }

    /// Output not yet taken by the socket: the buffer's, plus what a layer (TLS) holds,
    /// counted as one byte since rustls does not say how many.
    fn pending_output(&self) -> usize {
        self.output.as_ref().map_or(0, |output| output.len())
            + usize::from(self.stream.holds_output())
    }

    /// Records the poll's readiness for this connection.
    pub(crate) fn latch(&mut self, event: &mio::event::Event) {
        if event.is_readable() || event.is_error() {
            self.set(flag::READABLE);
        }
        if event.is_read_closed() {
            self.set(flag::READABLE | flag::PEER_CLOSING);
        }
        if event.is_writable() || event.is_error() || event.is_write_closed() {
            self.set(flag::WRITABLE);
        }
    }

    /// Does all the work the latched readiness allows: write, then read and feed the protocol.
    pub(crate) fn drive(&mut self, core: &mut Core, chunk: &mut [u8]) {
        if self.has(flag::CLOSED) {
            return;
        }
        if self.has(flag::WRITABLE) && self.pending_output() > 0 {
            self.flush(core);
        }
        if self.has(flag::DRAIN_OWED) && self.pending_output() <= core.config.write_low_watermark {
            self.clear(flag::DRAIN_OWED);
            self.resume(core);
            if !self.has(flag::CLOSED) {
                self.call(core, |protocol, ctx| protocol.on_drain(ctx));
            }
            // Resume: feed what is already buffered before reading more.
            if self.input.is_some() && !self.has(flag::HELD | flag::CLOSING | flag::CLOSED) {
                self.feed(core, &[]);
            }
        }
        if self.has(flag::READABLE)
            && !self.has(flag::PAUSED | flag::HELD | flag::CLOSING | flag::CLOSED | flag::EOF)
        {
            self.read(core, chunk);
        } else if self.has(flag::LINGERING) && self.has(flag::READABLE) && !self.has(flag::CLOSED) {
            self.discard(core, chunk);
        }
        self.conclude(core);
    }

    /// A dialled connection's connect may have ended (the socket turned writable, or failed):
    /// if it did, say so to the protocol (`on_open`) and drive the connection as any other;
    /// if it failed, close it (`on_closed`, where the protocol may ask to be dialled again).
    pub(crate) fn connect_ready(&mut self, core: &mut Core, chunk: &mut [u8]) {
        if !self.has(flag::WRITABLE) {
            return;
        }
        match self.stream.connect_outcome() {
            Ok(true) => self.connected(core, chunk),
            // Woken before the end: wait for the next edge.
            Ok(false) => self.clear(flag::WRITABLE),
            Err(error) => {
                log::debug!("{:?}: connect failed: {error}", self.id);
                self.close(core, CloseReason::ConnectFailed);
            }
        }
    }

    /// The connect succeeded: from here on the connection is like an accepted one.
    pub(crate) fn connected(&mut self, core: &mut Core, chunk: &mut [u8]) {
        self.clear(flag::CONNECTING);
        let now = core.clock.now_tick();
        self.last_active = now;
        metrics::add(&core.stats.dials_connected, 1);
        if let Err(error) = self.stream.apply_options(&core.config) {
            log::debug!("{:?}: setting socket options failed: {error}", self.id);
        }
        if let Some(idle) = core.config.idle_timeout {
            core.timers
                .schedule(now.after(idle), TimerEvent::Idle(self.id));
        }
        log::debug!("{:?}: connected to {:?}", self.id, self.stream.peer_addr());
        self.call(core, |protocol, ctx| protocol.on_open(ctx));
        self.drive(core, chunk);
    }

    /// An accepted connection's layer (TLS) is opening: drive its handshake with the readiness
    /// latched; once done, the protocol hears `on_open` and the connection is driven as any
    /// other (input may already wait in the layer, so reading is tried at once).
    pub(crate) fn opening_ready(&mut self, core: &mut Core, chunk: &mut [u8]) {
        if self.has(flag::PROXY_HEADER) {
            match self.read_proxy_header(core) {
                ProxyStep::Done => {}
                ProxyStep::Wait => {
                    self.clear(flag::READABLE);
                    return self.conclude(core);
                }
                ProxyStep::Closed => return,
            }
        }
        if !self.stream.is_opening() {
            // No layer to open (or it had nothing to do): the protocol starts now.
            self.clear(flag::OPENING);
            self.set(flag::READABLE);
            self.last_active = core.clock.now_tick();
            self.call(core, |protocol, ctx| protocol.on_open(ctx));
            return self.drive(core, chunk);
        }
        match self.stream.open() {
            Ok(Opening::Done) => {
                self.clear(flag::OPENING);
                self.set(flag::READABLE);
                self.last_active = core.clock.now_tick();
                log::debug!("{:?}: TLS handshake done", self.id);
                self.call(core, |protocol, ctx| protocol.on_open(ctx));
                self.drive(core, chunk);
            }
            Ok(Opening::Blocked) => {
                self.clear(flag::READABLE);
                self.last_active = core.clock.now_tick();
                self.conclude(core);
            }
            Err(error) => {
                log::debug!("{:?}: TLS handshake failed: {error}", self.id);
                self.close(core, CloseReason::TlsHandshake);
            }
        }
    }

    /// Looks for a whole PROXY header at the start of the input (below TLS), takes exactly it
    /// off the socket, and keeps the client's address it names; the verify hook is asked about
    /// that address, as it is about a direct peer's at accept.
    fn read_proxy_header(&mut self, core: &mut Core) -> ProxyStep {
        use crate::net::proxy::{self, Parsed};
        let mut peeked = [0u8; proxy::MAX_HEADER_BYTES];
        let seen = match self.stream.peek_below_layer(&mut peeked) {
            Ok(0) => {
                self.close(core, CloseReason::PeerClosed);
                return ProxyStep::Closed;
            }
            Ok(seen) => seen,
            Err(error) if would_block(&error) || interrupted(&error) => return ProxyStep::Wait,
            Err(error) => {
                log::debug!("{:?}: reading the PROXY header: {error}", self.id);
                self.close(core, CloseReason::IoError);
                return ProxyStep::Closed;
            }
        };
        let (length, header) = match proxy::parse(&peeked[..seen]) {
            Parsed::Done { length, header } => (length, header),
            Parsed::Incomplete => return ProxyStep::Wait,
            Parsed::Invalid(why) => {
                log::debug!("{:?}: closed: {why}", self.id);
                self.close(core, CloseReason::ProtocolError);
                return ProxyStep::Closed;
            }
        };
        if let Err(error) = self.stream.consume_below_layer(length) {
            log::debug!("{:?}: taking the PROXY header: {error}", self.id);
            self.close(core, CloseReason::IoError);
            return ProxyStep::Closed;
        }
        self.clear(flag::PROXY_HEADER);
        if let Some(client) = header.source() {
            if let Some(verify) = &core.verify {
                if !verify(client) {
                    metrics::add(&core.stats.refused_by_verify, 1);
                    log::debug!(
                        "{:?}: refused {client}: rejected by the verify hook",
                        self.id
                    );
                    self.close(core, CloseReason::Protocol);
                    return ProxyStep::Closed;
                }
            }
            log::debug!("{:?}: PROXY header: the client is {client}", self.id);
            core.proxied_peers.insert(self.id, client);
        }
        ProxyStep::Done
    }

    /// Lingering close: reads and drops input until end of stream (then closes), `WouldBlock`,
    /// or the read budget.
    fn discard(&mut self, core: &mut Core, chunk: &mut [u8]) {
        for _ in 0..core.config.read_budget {
            match self.stream.read(chunk) {
                Ok(0) => return self.close(core, self.close_reason),
                Ok(_) => {}
                Err(error) if would_block(&error) => {
                    self.clear(flag::READABLE);
                    return;
                }
                Err(error) if interrupted(&error) => {}
                // The answer was sent before the write side was shut; a reset now costs nothing.
                Err(_) => return self.close(core, self.close_reason),
            }
        }
        if !self.has(flag::READY_AGAIN) {
            self.set(flag::READY_AGAIN);
            core.ready_again.push(self.id);
        }
    }

    /// Reads until `WouldBlock`, a short read, the fairness budget, or a reason to stop.
    fn read(&mut self, core: &mut Core, chunk: &mut [u8]) {
        for _ in 0..core.config.read_budget {
            match self.stream.read(chunk) {
                Ok(0) => {
                    self.clear(flag::READABLE);
                    self.set(flag::EOF);
                    self.call(core, |protocol, ctx| protocol.on_eof(ctx));
                    return;
                }
                Ok(count) => {
                    self.last_active = core.clock.now_tick();
                    metrics::add(&core.stats.bytes_in, count as u64);
                    // A short read drained the socket: new input will raise a new edge. Unless
                    // the peer is closing, in which case keep reading to see the end of stream.
                    if count < chunk.len() && !self.has(flag::PEER_CLOSING) {
                        self.clear(flag::READABLE);
                    }
                    self.feed(core, &chunk[..count]);
                    if !self.has(flag::READABLE)
                        || self.has(flag::PAUSED | flag::HELD | flag::CLOSING | flag::CLOSED)
                    {
                        return;
                    }
                }
                Err(error) if would_block(&error) => {
                    self.clear(flag::READABLE);
                    return;
                }
                Err(error) if interrupted(&error) => {}
                Err(error) => {
                    self.close_on_error(core, &error);
                    return;
                }
            }
        }
        // Budget spent with input left: come back next turn without waiting for an edge.
        if !self.has(flag::READY_AGAIN) {
            self.set(flag::READY_AGAIN);
            core.ready_again.push(self.id);
        }
    }

    /// One of this connection's jobs came back: a hold on input ends, the input the protocol
    /// left unconsumed is offered once more (unless reading is paused or the connection is
    /// closing: then it waits for the resume, or is dropped), and a socket still latched
    /// readable is read again this turn, since no new edge may come for input already waiting.
    pub(crate) fn job_returned(&mut self, core: &mut Core) {
        self.clear(flag::HELD);
        if self.input.is_some() && !self.has(flag::PAUSED | flag::CLOSING | flag::CLOSED) {
            self.feed(core, &[]);
        }
        if self.has(flag::READABLE)
            && !self.has(flag::PAUSED | flag::HELD | flag::CLOSING | flag::CLOSED | flag::EOF)
            && !self.has(flag::READY_AGAIN)
        {
            self.set(flag::READY_AGAIN);
            core.ready_again.push(self.id);
        }
    }

    /// Stops feeding input: pending output passed the high watermark. An input timer stops
    /// too, keeping the time it had left: while the driver withholds input, the peer's pace of
    /// sending cannot be judged (a request timer would otherwise blame a client that sent
    /// everything long ago for the server's own backpressure).
    fn pause(&mut self, core: &mut Core) {
        if self.has(flag::DRAIN_OWED) {
            return;
        }
        self.set(flag::DRAIN_OWED);
        metrics::add(&core.stats.backpressure_pauses, 1);
        if self.has(flag::OWN_BACKPRESSURE) {
            return; // input keeps flowing; only the drain is owed
        }
        self.set(flag::PAUSED);
        if let (Some(deadline), true) = (self.timer_deadline, self.has(flag::INPUT_TIMER)) {
            let left = deadline.since(core.clock.now_tick());
            self.timer_deadline = Some(core.clock.keep_span(left));
            self.set(flag::TIMER_FROZEN);
        }
    }

    /// Feeds input again: pending output fell to the low watermark. A frozen input timer runs
    /// again for the time it had left when reading paused.
    fn resume(&mut self, core: &mut Core) {
        self.clear(flag::PAUSED);
        if !self.has(flag::TIMER_FROZEN) {
            return;
        }
        self.clear(flag::TIMER_FROZEN);
        if let Some(stored) = self.timer_deadline {
            let deadline = core.clock.now_tick().after(core.clock.span_kept_in(stored));
            self.arm_timer(core, deadline);
        }
    }

    /// Wants the protocol timer at `deadline`; pushes a heap entry only if the live one would
    /// fire too late (a later deadline is picked up when the live entry comes due, see
    /// `on_timer_entry`).
    fn arm_timer(&mut self, core: &mut Core, deadline: Tick) {
        self.timer_deadline = Some(deadline);
        if self.timer_entry.is_none_or(|entry| entry > deadline) {
            self.timer_entry = Some(deadline);
            core.timers
                .schedule(deadline, TimerEvent::Protocol(self.id));
        }
    }

    /// Hands `fresh` input (after any buffered input) to the protocol; keeps what it leaves.
    fn feed(&mut self, core: &mut Core, fresh: &[u8]) {
        match self.input.take() {
            Some(mut buffered) => {
                if buffered.len() + fresh.len() > core.config.max_input_bytes {
                    log::debug!("{:?}: unconsumed input over the limit", self.id);
                    return self.close(core, CloseReason::OverLimit);
                }
                buffered.extend(fresh);
                let consumed = self.call(core, |protocol, ctx| {
                    protocol.on_read(buffered.as_slice(), ctx)
                });
                if let Some(consumed) = consumed {
                    buffered.consume(consumed.min(buffered.len()));
                    if !buffered.is_empty() {
                        self.input = Some(buffered);
                    }
                }
            }
            None if fresh.is_empty() => {}
            None => {
                let Some(consumed) = self.call(core, |protocol, ctx| protocol.on_read(fresh, ctx))
                else {
                    return;
                };
                let rest = &fresh[consumed.min(fresh.len())..];
                if !rest.is_empty() && !self.has(flag::CLOSED) {
                    if rest.len() > core.config.max_input_bytes {
                        return self.close(core, CloseReason::OverLimit);
                    }
                    self.input = Some(Box::new(ReadBuf::from_slice(rest)));
                }
            }
        }
        if self
            .input
            .as_ref()
            .is_some_and(|input| input.len() >= core.config.max_input_bytes)
        {
            // The protocol let its input fill up without consuming: it can make no progress.
            log::debug!("{:?}: protocol stalled on a full input buffer", self.id);
            self.close(core, CloseReason::OverLimit);
        }
    }

    /// Runs one protocol callback with a context, catching a panic, then acts on its wishes.
    /// Returns `None` if the callback panicked (the connection is then closed).
    pub(crate) fn call<R>(
        &mut self,
        core: &mut Core,
        callback: impl FnOnce(&mut P, &mut Context<'_>) -> R,
    ) -> Option<R> {
        let mut wishes = Wishes::default();
        let pending_output = self.pending_output();
        let jobs_before = self.jobs_in_flight;
        let offload = match &core.pool {
            Some(pool) => Offload::Pool {
                pool,
                in_flight: &mut self.jobs_in_flight,
                max: core.config.max_jobs_per_connection as u16,
                stats: &core.stats,
                reply: &core.completion_sender,
            },
            None => Offload::Unavailable,
        };
        let mut ctx = Context {
            conn: self.id,
            now: core.clock.now(),
            output: &mut core.output,
            pending_output,
            wishes: &mut wishes,
            offload,
            recorder: Some(metrics::Recorder::own(&core.stats)),
            measured_now: None,
            peer: match core.proxied_peers.get(&self.id) {
                Some(&client) => PeerSource::Known(client),
                None => PeerSource::Socket(&self.stream),
            },
            identity: self.stream.identity(),
            on_error: Some(&*core.on_error),
            mailbox: Some(&core.mailbox),
        };
        let protocol = &mut self.protocol;
        let outcome = catch_unwind(AssertUnwindSafe(|| callback(protocol, &mut ctx)));
        let submitted = self.jobs_in_flight.saturating_sub(jobs_before);
        if submitted > 0 {
            metrics::add(&core.stats.jobs_submitted, submitted.into());
            metrics::add(&core.stats.jobs_in_flight, submitted.into());
        }
        match outcome {
            Ok(value) => {
                self.settle(core, wishes);
                Some(value)
            }
            Err(payload) => {
                core.output.clear();
                let report = ErrorReport {
                    conn: Some(self.id),
                    peer: core
                        .proxied_peers
                        .get(&self.id)
                        .copied()
                        .or_else(|| self.stream.peer_addr()),
                    message: panic_message(payload.as_ref()),
                };
                (core.on_error)(&report);
                self.close(core, CloseReason::Panic);
                None
            }
        }
    }

    /// Acts on what the protocol asked for during a callback: timer, output, close.
    fn settle(&mut self, core: &mut Core, wishes: Wishes) {
        match wishes.timer {
            TimerRequest::Keep => {}
            TimerRequest::Set { after, input } => {
                self.clear(flag::INPUT_TIMER | flag::TIMER_FROZEN);
                if input {
                    self.set(flag::INPUT_TIMER);
                }
                if input && self.has(flag::PAUSED) {
                    // Armed while reading is paused: it starts to run at the resume.
                    self.timer_deadline = Some(core.clock.keep_span(after));
                    self.set(flag::TIMER_FROZEN);
                } else {
                    self.arm_timer(core, core.clock.now_tick().after(after));
                }
            }
            // Lazy cancel: the heap entry stays and finds no wanted deadline when it comes due.
            TimerRequest::Cancel => {
                self.timer_deadline = None;
                self.clear(flag::INPUT_TIMER | flag::TIMER_FROZEN);
            }
        }
        // A hold with no job in flight would never end: it is only honoured while one is.
        if wishes.hold_input && self.jobs_in_flight > 0 {
            self.set(flag::HELD);
        }
        if wishes.own_backpressure {
            self.set(flag::OWN_BACKPRESSURE);
            // Already paused: input flows again now (the drain stays owed).
            if self.has(flag::PAUSED) {
                self.resume(core);
            }
        }
        if wishes.close == Some(CloseRequest::Abort) {
            core.output.clear();
            return self.close(core, CloseReason::Protocol);
        }
        if !core.output.is_empty() {
            self.send(core);
        }
        if let Some(after) = wishes.reconnect {
            // Kept only for a dialled connection; acted on when it is reaped.
            if let Some(dial) = core.dialled.get_mut(&self.id) {
                dial.reconnect_after = Some(after);
            }
        }
        if wishes.drain_wanted && !self.has(flag::CLOSED) {
            self.set(flag::DRAIN_OWED);
            // Already drained: no write will end to say so; come back next turn.
            if self.pending_output() <= core.config.write_low_watermark
                && !self.has(flag::READY_AGAIN)
            {
                self.set(flag::READY_AGAIN);
                core.ready_again.push(self.id);
            }
        }
        if let Some(request) = wishes.close {
            if !self.has(flag::CLOSING) {
                self.set(flag::CLOSING);
                self.close_reason = match request {
                    CloseRequest::Failed(why) => {
                        log::debug!("{:?}: closing on bad input: {why}", self.id);
                        CloseReason::ProtocolError
                    }
                    _ if self.has(flag::EOF) => CloseReason::PeerClosed,
                    _ if core.draining => CloseReason::Shutdown,
                    _ => CloseReason::Protocol,
                };
            }
        }
    }

    /// Sends the callback's output: straight to the socket when nothing is queued before it
    /// (no copy), and keeps whatever the socket does not take, subject to the watermarks.
    fn send(&mut self, core: &mut Core) {
        if self.has(flag::CLOSED) {
            core.output.clear();
            return;
        }
        if self.output.is_none() && self.has(flag::WRITABLE) {
            if let Err(error) = write_all_possible(&mut core.output, &mut self.stream, &core.stats)
            {
                core.output.clear();
                return self.close_on_error(core, &error);
            }
            if core.output.is_empty() {
                self.last_active = core.clock.now_tick();
                if self.stream.holds_output() {
                    // The layer kept what the socket would not take: wait for writability.
                    self.clear(flag::WRITABLE);
                }
                return;
            }
            self.clear(flag::WRITABLE);
        }
        let output = self.output.get_or_insert_with(Box::default);
        output.append(&mut core.output);
        let pending = output.len();
        metrics::raise(&core.stats.peak_pending_output, pending as u64);
        if pending > core.config.write_hard_limit {
            log::debug!(
                "{:?}: {pending} bytes of output pending, over the hard limit",
                self.id
            );
            self.close(core, CloseReason::OverLimit);
        } else if pending >= core.config.write_high_watermark {
            self.pause(core);
        }
    }

    /// Writes queued output while the socket takes it; frees the buffer once it empties. A
    /// layer's own held output goes first (the layer sees to that) or, with the buffer empty,
    /// on its own.
    fn flush(&mut self, core: &mut Core) {
        let Some(output) = self.output.as_mut() else {
            if self.stream.holds_output() {
                match self.stream.flush() {
                    Ok(()) => self.last_active = core.clock.now_tick(),
                    Err(error) if would_block(&error) => self.clear(flag::WRITABLE),
                    Err(error) => self.close_on_error(core, &error),
                }
            }
            return;
        };
        match write_all_possible(output, &mut self.stream, &core.stats) {
            Ok(()) => {
                self.last_active = core.clock.now_tick();
                if output.is_empty() {
                    self.output = None;
                    if self.stream.holds_output() {
                        self.clear(flag::WRITABLE);
                    }
                } else {
                    self.clear(flag::WRITABLE);
                }
            }
            Err(error) => self.close_on_error(core, &error),
        }
    }

    /// Closes now if a requested close has nothing left to wait for; otherwise makes the
    /// registered interest match the state (writable only while output is pending).
    pub(crate) fn conclude(&mut self, core: &mut Core) {
        if self.has(flag::CLOSED) {
            return;
        }
        let pending = self.pending_output();
        if self.has(flag::CLOSING) && pending == 0 && self.jobs_in_flight == 0 {
            return self.finish_close(core);
        }
        let want_write = pending > 0;
        if want_write != self.has(flag::WANT_WRITE) {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(error) =
                core.poll
                    .registry()
                    .reregister(&mut self.stream, self.id.token(), interest)
            {
                log::warn!("{:?}: reregister failed: {error}", self.id);
                return self.close(core, CloseReason::IoError);
            }
            self.flags ^= flag::WANT_WRITE;
        }
    }

    /// This connection's protocol-timer entry with deadline `entry` came due at `now`: fire the
    /// protocol's timer if its deadline has passed, or re-arm the entry for the later deadline.
    pub(crate) fn on_timer_entry(&mut self, core: &mut Core, entry: Tick, now: Tick) {
        if self.has(flag::CLOSED) || self.timer_entry != Some(entry) {
            return; // superseded by an earlier entry
        }
        self.timer_entry = None;
        if self.has(flag::TIMER_FROZEN) {
            return; // the resume arms it again
        }
        match self.timer_deadline {
            None => {}
            Some(deadline) if deadline <= now => {
                self.timer_deadline = None;
                self.call(core, |protocol, ctx| protocol.on_timer(ctx));
                self.conclude(core);
            }
            Some(deadline) => {
                self.timer_entry = Some(deadline);
                core.timers
                    .schedule(deadline, TimerEvent::Protocol(self.id));
            }
        }
    }

    /// Everything is answered: close, lingering first if the peer may still be sending.
    fn finish_close(&mut self, core: &mut Core) {
        if self.has(flag::LINGERING) {
            return;
        }
        let linger = core.config.linger_timeout;
        if self.has(flag::EOF) || linger.is_zero() {
            return self.close(core, self.close_reason);
        }
        if self.stream.shutdown(std::net::Shutdown::Write).is_err() {
            return self.close(core, self.close_reason);
        }
        self.set(flag::LINGERING);
        self.input = None;
        core.timers.schedule(
            core.clock.now_tick().after(linger),
            TimerEvent::Linger(self.id),
        );
        // Input may already be waiting with no new edge to come: discard it next turn.
        if self.has(flag::READABLE) && !self.has(flag::READY_AGAIN) {
            self.set(flag::READY_AGAIN);
            core.ready_again.push(self.id);
        }
    }

    fn close_on_error(&mut self, core: &mut Core, error: &io::Error) {
        if is_disconnect(error) {
            log::debug!("{:?}: peer went away: {error}", self.id);
            self.close(core, CloseReason::Reset);
        } else if error.kind() == io::ErrorKind::InvalidData {
            // The layer (TLS) rejected what the peer sent, and told it so with an alert.
            log::debug!("{:?}: bad TLS record: {error}", self.id);
            self.close(core, CloseReason::ProtocolError);
        } else {
            log::warn!("{:?}: I/O error: {error}", self.id);
            self.close(core, CloseReason::IoError);
        }
    }

    /// Marks the connection closed and queues it for removal at the end of the turn. The socket
    /// is closed then; events for it in the rest of this batch are dropped by the `CLOSED` bit.
    pub(crate) fn close(&mut self, core: &mut Core, reason: CloseReason) {
        if self.has(flag::CLOSED) {
            return;
        }
        self.set(flag::CLOSED);
        self.input = None;
        self.output = None;
        metrics::add(reason.counter(&core.stats), 1);
        log::debug!("{:?}: closed ({reason:?})", self.id);
        core.graveyard.push(self.id);
        // The protocol learns of every end; what it writes now goes nowhere.
        self.call(core, |protocol, ctx| protocol.on_closed(ctx));
        core.output.clear();
    }
}

/// Writes from `buffer` until it is empty or the socket would block. Disconnects and other
/// errors are returned; `WouldBlock` is not an error here.
fn write_all_possible(buffer: &mut WriteBuf, stream: &mut Stream, stats: &Stats) -> io::Result<()> {
    let written = buffer.write_until_blocked(stream)?;
    metrics::add(&stats.bytes_out, written as u64);
    Ok(())
}
