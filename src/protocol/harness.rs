//! A driver without sockets: feeds a protocol bytes and collects what it writes and wishes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{CloseRequest, Context, Offload, Protocol, TimerRequest, Wishes};
use crate::reactor::buffer::{ReadBuf, WriteBuf};
use crate::reactor::token::ConnId;
use crate::worker::JobResult;

/// Drives a [`Protocol`] from memory, the way the reactor would, minus the sockets.
///
/// Offloaded jobs run inline and their results are delivered right after the callback that
/// offloaded them. Use it to test a protocol with input split at every byte boundary:
///
/// ```
/// use socketserver::protocol::{Harness, Line};
///
/// let mut whole = Harness::new(Line::default());
/// whole.feed(b"hello\nworld\n");
/// let mut bytewise = Harness::new(Line::default());
/// for byte in b"hello\nworld\n" {
///     bytewise.feed(&[*byte]);
/// }
/// assert_eq!(whole.take_output(), bytewise.take_output());
/// ```
pub struct Harness<P: Protocol> {
    protocol: P,
    input: ReadBuf,
    output: WriteBuf,
    close: Option<CloseRequest>,
    timer: Option<Duration>,
    eof: bool,
    now: Instant,
}

impl<P: Protocol> Harness<P> {
    /// Opens a connection to `protocol` (calls [`Protocol::on_open`]).
    pub fn new(protocol: P) -> Self {
        let mut harness = Harness {
            protocol,
            input: ReadBuf::default(),
            output: WriteBuf::default(),
            close: None,
            timer: None,
            eof: false,
            now: Instant::now(),
        };
        harness.call(|protocol, ctx| protocol.on_open(ctx));
        harness
    }

    /// Delivers `bytes` as newly received input, unless the protocol asked to close.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.close.is_some() || self.eof {
            return;
        }
        self.input.extend(bytes);
        let mut input = std::mem::take(&mut self.input);
        let consumed = self.call(|protocol, ctx| protocol.on_read(input.as_slice(), ctx));
        input.consume(consumed);
        self.input = input;
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

    /// The delay of the armed timer, if one is armed.
    pub fn timer(&self) -> Option<Duration> {
        self.timer
    }

    /// Unconsumed input.
    pub fn buffered_input(&self) -> &[u8] {
        self.input.as_slice()
    }

    /// The protocol itself, for inspecting its state.
    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// Runs one callback, then delivers the results of jobs it offloaded (and of jobs those
    /// deliveries offloaded), in order.
    fn call<R>(&mut self, callback: impl FnOnce(&mut P, &mut Context<'_>) -> R) -> R {
        let (result, done) = self.invoke(callback);
        let mut queue = VecDeque::from(done);
        while let Some((tag, job_result)) = queue.pop_front() {
            let ((), more) =
                self.invoke(|protocol, ctx| protocol.on_job_done(tag, job_result, ctx));
            queue.extend(more);
        }
        result
    }

    fn invoke<R>(
        &mut self,
        callback: impl FnOnce(&mut P, &mut Context<'_>) -> R,
    ) -> (R, Vec<(u64, JobResult)>) {
        let mut done: Vec<(u64, JobResult)> = Vec::new();
        let mut wishes = Wishes::default();
        let result = {
            let mut ctx = Context {
                conn: ConnId { index: 0, gen: 0 },
                now: self.now,
                output: &mut self.output,
                pending_output: 0,
                wishes: &mut wishes,
                offload: Offload::Inline(&mut done),
            };
            callback(&mut self.protocol, &mut ctx)
        };
        self.apply(wishes);
        (result, done)
    }

    fn apply(&mut self, wishes: Wishes) {
        match wishes.timer {
            TimerRequest::Keep => {}
            TimerRequest::Set(after) => self.timer = Some(after),
            TimerRequest::Cancel => self.timer = None,
        }
        if self.close.is_none() {
            self.close = wishes.close;
        }
    }
}
