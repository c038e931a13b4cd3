//! One WebSocket connection, server side: frames in (read as they arrive, checked, joined into
//! messages), messages out (fragmented, compressed), the closing handshake and the heartbeat.
//!
//! Input is consumed as it comes: a data frame's payload is unmasked (and inflated, and checked
//! as UTF-8) piece by piece, so the driver only ever holds an unfinished header or control frame
//! (at most 14 + 125 bytes), and a bad byte is refused when it arrives. A message that arrives
//! whole in one read, the common case, is unmasked into a buffer the thread reuses and handed
//! to the handler from there: no allocation per message.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::close;
use super::deflate::{self, Agreed, Compressor, Inflater};
use super::frame::{self, Header, Opcode, Role, Violation, MAX_CONTROL_PAYLOAD};
use super::handshake::Accepted;
use super::utf8::{self, Utf8Validator};
use super::{Message, SendStatus, SharedRoute, WebSocket, WebSocketHandler};
use crate::metrics::Stats;
use crate::protocol::Context;

/// The state bits of a connection.
mod state {
    /// A close frame was sent: nothing more is.
    pub const CLOSE_SENT: u8 = 1 << 0;
    /// The peer's close frame arrived.
    pub const CLOSE_RECEIVED: u8 = 1 << 1;
    /// A ping was sent and nothing has arrived since.
    pub const AWAITING_PONG: u8 = 1 << 2;
    /// The handler was told of the end (`on_close`).
    pub const REPORTED: u8 = 1 << 3;
    /// Nothing more is read: the connection failed or the closing handshake is over.
    pub const ENDED: u8 = 1 << 4;
    /// This end dialled: it masks what it sends and refuses masked frames.
    pub const CLIENT: u8 = 1 << 5;
    /// This end started the closing handshake (its handler, or a shutdown).
    pub const CLOSED_HERE: u8 = 1 << 6;
}

/// No subprotocol was agreed.
const NO_SUBPROTOCOL: u8 = u8::MAX;

thread_local! {
    /// A whole message received in one read is unmasked here and handed to the handler: the
    /// thread's buffer, reused for every such message of every connection.
    static UNMASKED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where an outgoing message is compressed before it is framed.
    static COMPRESSED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The thread's buffers are kept up to this size between messages; a larger message's
/// storage is given back.
const KEPT_BUFFER_BYTES: usize = 256 * 1024;

/// What sending needs: the route, the agreed extensions, the closing state. Handed to the
/// handler inside its [`WebSocket`].
pub(crate) struct Link {
    route: SharedRoute,
    /// permessage-deflate as agreed in the handshake.
    deflate: Option<Agreed>,
    /// What only some connections need, some of the time: the message being assembled, and
    /// compression contexts kept between messages. One box for both keeps an idle connection
    /// a word smaller; it is freed whenever it holds neither.
    spare: Option<Box<Spare>>,
    /// Bits of [`state`].
    state: u8,
    /// The index of the agreed subprotocol in the route's list, or [`NO_SUBPROTOCOL`].
    subprotocol: u8,
}

/// See [`Link::spare`].
#[derive(Default)]
struct Spare {
    reading: Option<Reading>,
    kept: Kept,
}

/// Contexts of a connection that negotiated context takeover.
#[derive(Default)]
struct Kept {
    compressor: Option<Compressor>,
    /// `None` while it is lent to the message being inflated.
    inflater: Option<Inflater>,
}

/// A data frame whose payload is arriving.
struct InFrame {
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes of this frame read so far (where the masking key stands).
    offset: usize,
    fin: bool,
}

/// A data message being assembled; exists only while one is arriving.
struct Reading {
    frame: Option<InFrame>,
    text: bool,
    compressed: bool,
    /// The payload so far (unmasked, inflated).
    payload: Vec<u8>,
    utf8: Utf8Validator,
    /// Compressed bytes received for this message (bounded, though never kept).
    compressed_bytes: usize,
    inflater: Option<Inflater>,
}

/// One upgraded connection: forty bytes while idle.
pub(crate) struct WebSocketConnection {
    link: Link,
    handler: Box<dyn WebSocketHandler>,
}

/// What one step of reading input did.
enum Step {
    /// Consumed this many bytes; go on.
    Consumed(usize),
    /// The rest of a header or control frame has not arrived.
    Wait,
    /// Nothing more is to be read.
    Stop,
}

impl Link {
    fn has(&self, bits: u8) -> bool {
        self.state & bits != 0
    }

    pub(crate) fn options(&self) -> &super::WebSocketOptions {
        &self.route.options
    }

    /// The agreed subprotocol.
    pub(crate) fn subprotocol(&self) -> Option<&str> {
        self.route
            .options
            .subprotocols
            .get(usize::from(self.subprotocol))
            .map(String::as_str)
    }

    /// Which end this is.
    fn role(&self) -> Role {
        if self.has(state::CLIENT) {
            Role::Client
        } else {
            Role::Server
        }
    }

    /// The masking key for the next frame this end sends (see [`masking_key`]).
    fn mask(&self) -> Option<[u8; 4]> {
        masking_key(self.has(state::CLIENT))
    }

    /// True once a close frame was sent.
    pub(crate) fn is_closing(&self) -> bool {
        self.has(state::CLOSE_SENT)
    }

    /// The message being assembled, if one is under way.
    fn reading(&self) -> Option<&Reading> {
        self.spare.as_ref().and_then(|spare| spare.reading.as_ref())
    }

    fn reading_mut(&mut self) -> Option<&mut Reading> {
        self.spare.as_mut().and_then(|spare| spare.reading.as_mut())
    }

    /// Starts assembling a message.
    fn start_reading(&mut self, reading: Reading) -> &mut Reading {
        self.spare
            .get_or_insert_with(Box::default)
            .reading
            .insert(reading)
    }

    /// Takes the assembled message, freeing the spare box if nothing else is in it.
    fn take_reading(&mut self) -> Option<Reading> {
        let reading = self.spare.as_mut()?.reading.take();
        self.tidy();
        reading
    }

    /// The connection's own compressor (server context takeover).
    fn kept_compressor(&mut self) -> Option<&mut Compressor> {
        self.spare.as_mut()?.kept.compressor.as_mut()
    }

    /// The connection's own inflater (client context takeover), lent to one message.
    fn take_kept_inflater(&mut self) -> Option<Inflater> {
        let inflater = self.spare.as_mut()?.kept.inflater.take();
        self.tidy();
        inflater
    }

    /// Gives the connection's own inflater back after a message.
    fn keep_inflater(&mut self, inflater: Inflater) {
        self.spare.get_or_insert_with(Box::default).kept.inflater = Some(inflater);
    }

    /// Frees the spare box once it holds nothing.
    fn tidy(&mut self) {
        if self.spare.as_ref().is_some_and(|spare| {
            spare.reading.is_none()
                && spare.kept.compressor.is_none()
                && spare.kept.inflater.is_none()
        }) {
            self.spare = None;
        }
    }

    pub(crate) fn send(&mut self, ctx: &mut Context<'_>, message: Message<'_>) -> SendStatus {
        if self.is_closing() {
            return SendStatus::Closed;
        }
        if ctx.pending_output() > self.options().max_backpressure {
            return self.send_dropped(ctx);
        }
        let (opcode, payload) = match message {
            Message::Text(text) => (Opcode::Text, text.as_bytes()),
            Message::Binary(bytes) => (Opcode::Binary, bytes),
        };
        let fragment = self.options().fragment_bytes;
        // Compressed when deflate was agreed (the route then has its options) and the message
        // reaches the threshold.
        let compress = self
            .deflate
            .zip(self.options().deflate)
            .filter(|(_, options)| payload.len() >= options.threshold);
        match compress {
            None => {
                let client = self.has(state::CLIENT);
                ctx.write_with(|out| write_fragments(out, opcode, payload, false, fragment, client))
            }
            Some((agreed, options)) => {
                let kept = self.kept_compressor();
                let keeps_context = kept.is_some();
                COMPRESSED.with_borrow_mut(|compressed| {
                    compressed.clear();
                    let bits = agreed.server_window_bits;
                    deflate::compress(payload, compressed, kept, options.level, bits);
                    // Without a kept context a message that did not shrink goes as it is;
                    // with one it cannot, since the peer's context must see every message.
                    let (bytes, rsv1) = if compressed.len() < payload.len() || keeps_context {
                        (&compressed[..], true)
                    } else {
                        (payload, false)
                    };
                    ctx.write_with(|out| {
                        write_fragments(out, opcode, bytes, rsv1, fragment, false)
                    });
                    trim(compressed);
                });
            }
        }
        self.sent(ctx, payload.len())
    }

    /// Counts a message queued and says whether output is now over the soft limit.
    fn sent(&self, ctx: &mut Context<'_>, payload_len: usize) -> SendStatus {
        record(ctx, |stats| &stats.websocket_messages_out, 1);
        record(ctx, |stats| &stats.websocket_bytes_out, payload_len as u64);
        if ctx.pending_output() > self.options().backpressure_soft_limit {
            SendStatus::Backpressure
        } else {
            SendStatus::Sent
        }
    }

    /// Sends a message framed once for many connections: the shared frame, or the shared
    /// compressed one when deflate was agreed without server context takeover (a connection
    /// that keeps its context compresses its own copy, since its peer's context must see it).
    pub(crate) fn send_prepared(
        &mut self,
        ctx: &mut Context<'_>,
        message: &super::Prepared,
    ) -> SendStatus {
        if self.is_closing() {
            return SendStatus::Closed;
        }
        // A client masks every frame with its own key: a frame shared by many cannot be.
        if self.has(state::CLIENT) {
            return self.send(ctx, message.message());
        }
        let compress = self
            .deflate
            .zip(self.options().deflate)
            .filter(|(_, options)| message.payload_len() >= options.threshold);
        if compress.is_some() && self.kept_compressor().is_some() {
            return self.send(ctx, message.message());
        }
        if ctx.pending_output() > self.options().max_backpressure {
            return self.send_dropped(ctx);
        }
        let frame = match compress {
            Some((agreed, options)) => message
                .compressed(options.level, agreed.server_window_bits)
                .unwrap_or(message.frame()),
            None => message.frame(),
        };
        ctx.write_shared(frame);
        self.sent(ctx, message.payload_len())
    }

    /// A message not queued: the output waiting is over the limit.
    fn send_dropped(&mut self, ctx: &mut Context<'_>) -> SendStatus {
        record(ctx, |stats| &stats.websocket_send_dropped, 1);
        if self.options().close_on_backpressure_limit {
            self.start_close(ctx, close::POLICY_VIOLATION, "not reading its messages");
        }
        SendStatus::Dropped
    }

    pub(crate) fn ping(&mut self, ctx: &mut Context<'_>, payload: &[u8]) -> SendStatus {
        if self.is_closing() {
            return SendStatus::Closed;
        }
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return SendStatus::Dropped;
        }
        let mask = self.mask();
        ctx.write_with(|out| frame::write_frame(out, true, false, Opcode::Ping, payload, mask));
        SendStatus::Sent
    }

    /// Sends a close frame (once) and waits for the peer's, at most the close timeout; if the
    /// peer's has come already, the connection ends once the frame is written.
    pub(crate) fn start_close(&mut self, ctx: &mut Context<'_>, code: u16, reason: &str) {
        if self.is_closing() {
            return;
        }
        self.state |= state::CLOSED_HERE;
        let code = if close::is_valid(code) {
            code
        } else {
            log::warn!("websocket: close code {code} may not be sent; sending 1000");
            close::NORMAL
        };
        self.write_close(ctx, Some((code, reason)));
        if self.has(state::CLOSE_RECEIVED) {
            self.state |= state::ENDED;
            ctx.close();
        }
        // Either way the end is bounded: the peer's answer, or our last frame's delivery, must
        // come within the close timeout.
        ctx.set_timer(self.options().close_timeout);
    }

    fn write_close(&mut self, ctx: &mut Context<'_>, status: Option<(u16, &str)>) {
        self.state |= state::CLOSE_SENT;
        let mut payload = [0u8; 2 + close::MAX_REASON_BYTES];
        let length = status.map_or(0, |(code, reason)| {
            close::payload(code, reason, &mut payload)
        });
        let mask = self.mask();
        ctx.write_with(|out| {
            frame::write_frame(out, true, false, Opcode::Close, &payload[..length], mask)
        });
    }
}

/// A fresh masking key for a frame a client sends (RFC 6455, section 10.3: unpredictable, so
/// that a page's script cannot choose the bytes on the wire); a server sends none.
fn masking_key(client: bool) -> Option<[u8; 4]> {
    client.then(rand::random::<[u8; 4]>)
}

/// Appends a message as frames of at most `fragment` payload bytes: the first carries the
/// opcode (and RSV1 when compressed), the rest are continuations. A client masks each frame
/// with a key of its own.
fn write_fragments(
    out: &mut Vec<u8>,
    opcode: Opcode,
    payload: &[u8],
    rsv1: bool,
    fragment: usize,
    client: bool,
) {
    if payload.len() <= fragment {
        return frame::write_frame(out, true, rsv1, opcode, payload, masking_key(client));
    }
    let mut pieces = payload.chunks(fragment.max(1)).peekable();
    let mut first = true;
    while let Some(piece) = pieces.next() {
        let opcode = if first { opcode } else { Opcode::Continuation };
        frame::write_frame(
            out,
            pieces.peek().is_none(),
            rsv1 && first,
            opcode,
            piece,
            masking_key(client),
        );
        first = false;
    }
}

/// Runs `use_it` on `masked` unmasked (as the piece `offset` bytes into its payload) in the
/// thread's buffer, which keeps its storage for the next message.
fn with_unmasked<R>(
    masked: &[u8],
    mask: Option<[u8; 4]>,
    offset: usize,
    use_it: impl FnOnce(&[u8]) -> R,
) -> R {
    UNMASKED.with_borrow_mut(|unmasked| {
        unmasked.clear();
        frame::unmask_into(unmasked, masked, mask, offset);
        let result = use_it(unmasked);
        trim(unmasked);
        result
    })
}

/// Gives back a thread buffer's storage after an unusually large message.
fn trim(buffer: &mut Vec<u8>) {
    buffer.clear();
    if buffer.capacity() > KEPT_BUFFER_BYTES {
        buffer.shrink_to(KEPT_BUFFER_BYTES);
    }
}

/// Adds to one of the server's counters, if the driver keeps any.
fn record(ctx: &Context<'_>, pick: impl FnOnce(&Stats) -> &std::sync::atomic::AtomicU64, n: u64) {
    if let Some(recorder) = ctx.recorder {
        recorder.add(pick, n);
    }
}

/// The counter of closes with `code`.
fn close_counter(code: u16) -> impl FnOnce(&Stats) -> &std::sync::atomic::AtomicU64 {
    move |stats| match code {
        close::NORMAL => &stats.websocket_closed_normal,
        close::GOING_AWAY => &stats.websocket_closed_going_away,
        close::PROTOCOL_ERROR => &stats.websocket_closed_protocol_error,
        close::ABNORMAL => &stats.websocket_closed_abnormal,
        close::INVALID_DATA => &stats.websocket_closed_invalid_data,
        close::POLICY_VIOLATION => &stats.websocket_closed_policy,
        close::TOO_BIG => &stats.websocket_closed_too_big,
        close::INTERNAL_ERROR => &stats.websocket_closed_internal_error,
        _ => &stats.websocket_closed_other,
    }
}

impl WebSocketConnection {
    /// A connection just upgraded on `route`: the handshake `accepted` was answered with 101.
    /// Takes over its own backpressure (pings must be answered while output is backed up),
    /// arms the heartbeat and tells the handler.
    pub(crate) fn open(
        route: SharedRoute,
        handler: Box<dyn WebSocketHandler>,
        accepted: &Accepted,
        ctx: &mut Context<'_>,
    ) -> WebSocketConnection {
        let deflate = accepted.deflate.as_ref().map(|(agreed, _)| *agreed);
        let spare = deflate.and_then(|agreed| {
            let options = route.options.deflate?;
            let compressor = (!agreed.server_no_context_takeover)
                .then(|| Compressor::new(options.level, agreed.server_window_bits));
            let inflater = (!agreed.client_no_context_takeover)
                .then(|| Inflater::kept(agreed.client_window_bits));
            (compressor.is_some() || inflater.is_some()).then(|| {
                Box::new(Spare {
                    reading: None,
                    kept: Kept {
                        compressor,
                        inflater,
                    },
                })
            })
        });
        let subprotocol = accepted
            .subprotocol
            .and_then(|index| u8::try_from(index).ok())
            .unwrap_or(NO_SUBPROTOCOL);
        let mut connection = WebSocketConnection {
            link: Link {
                route,
                deflate,
                spare,
                state: 0,
                subprotocol,
            },
            handler,
        };
        ctx.manage_own_backpressure();
        ctx.cancel_timer();
        connection.arm_heartbeat(ctx);
        record(ctx, |stats| &stats.websockets_opened, 1);
        record(ctx, |stats| &stats.websockets_open, 1);
        connection.call_handler(ctx, |handler, ws| handler.on_open(ws));
        connection
    }

    /// A connection this end dialled, whose handshake the server answered with 101: the
    /// client role of the same state machine (it masks what it sends, refuses masked frames,
    /// and pings a quiet server as a server pings a quiet client). No extension is agreed.
    pub(crate) fn open_client(
        route: SharedRoute,
        handler: Box<dyn WebSocketHandler>,
        ctx: &mut Context<'_>,
    ) -> WebSocketConnection {
        let mut connection = WebSocketConnection {
            link: Link {
                route,
                deflate: None,
                spare: None,
                state: state::CLIENT,
                subprotocol: NO_SUBPROTOCOL,
            },
            handler,
        };
        ctx.manage_own_backpressure();
        ctx.cancel_timer();
        connection.arm_heartbeat(ctx);
        connection.call_handler(ctx, |handler, ws| handler.on_open(ws));
        connection
    }

    /// The handler, once the connection is over (a client that reconnects keeps it).
    pub(crate) fn into_handler(self) -> Box<dyn WebSocketHandler> {
        self.handler
    }

    /// True if this end started the closing handshake: the end was wanted, not suffered.
    pub(crate) fn closed_here(&self) -> bool {
        self.link.has(state::CLOSED_HERE)
    }

    /// Runs `act` with this connection's [`WebSocket`] handle, from outside the handler (a
    /// blocking client sending what its caller gave it).
    pub(crate) fn act<R>(
        &mut self,
        ctx: &mut Context<'_>,
        act: impl FnOnce(&mut WebSocket<'_, '_>) -> R,
    ) -> Option<R> {
        if self.link.has(state::ENDED) {
            return None;
        }
        let mut ws = WebSocket {
            ctx,
            link: &mut self.link,
        };
        Some(act(&mut ws))
    }

    fn arm_heartbeat(&mut self, ctx: &mut Context<'_>) {
        if let Some(interval) = self.link.options().ping_interval {
            ctx.set_timer(interval);
        }
    }

    /// Reads frames from `input`; returns the bytes used (an unfinished header or control
    /// frame is left for the next call).
    pub(crate) fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        if self.link.has(state::ENDED) {
            return input.len();
        }
        let mut at = 0;
        let mut arrived = false;
        while at < input.len() {
            match self.step(&input[at..], ctx) {
                Step::Consumed(used) => {
                    at += used;
                    arrived = true;
                }
                Step::Wait => break,
                Step::Stop => return input.len(),
            }
        }
        // Any frame is a sign of life: the heartbeat starts over (one timer store, however
        // many frames came; the reactor re-arms its entry lazily).
        if arrived && !self.link.has(state::CLOSE_SENT) {
            self.link.state &= !state::AWAITING_PONG;
            self.arm_heartbeat(ctx);
        }
        at
    }

    /// One step: more payload of the frame under way, or the next frame's header.
    fn step(&mut self, input: &[u8], ctx: &mut Context<'_>) -> Step {
        if self
            .link
            .reading()
            .is_some_and(|reading| reading.frame.is_some())
        {
            return self.payload_piece(input, ctx);
        }
        let role = self.link.role();
        let header = match frame::parse_header(input, role, self.link.deflate.is_some()) {
            Ok(Some(header)) => header,
            Ok(None) => return Step::Wait,
            Err(violation) => return self.fail(ctx, violation),
        };
        if header.opcode.is_control() {
            let end = header.header_len + header.payload_len as usize;
            let Some(masked) = input.get(header.header_len..end) else {
                return Step::Wait;
            };
            let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
            let payload = &mut payload[..masked.len()];
            payload.copy_from_slice(masked);
            if let Some(key) = header.mask {
                frame::apply_mask(payload, key, 0);
            }
            return match self.control(header.opcode, payload, ctx) {
                Step::Consumed(_) => Step::Consumed(end),
                other => other,
            };
        }
        self.data_header(&header, &input[header.header_len..], ctx)
    }

    /// A data frame's header is in: check it against the message under way and the limits,
    /// then deliver it at once if it is a whole message already here, or start reading it.
    fn data_header(&mut self, header: &Header, rest: &[u8], ctx: &mut Context<'_>) -> Step {
        // A message is under way exactly while its assembly exists.
        let under_way = self.link.reading().is_some();
        match header.opcode {
            Opcode::Continuation if !under_way => {
                return self.fail(ctx, Violation::protocol("a continuation with no message"))
            }
            Opcode::Continuation if header.rsv1 => {
                return self.fail(ctx, Violation::protocol("RSV1 on a continuation"))
            }
            Opcode::Text | Opcode::Binary if under_way => {
                return self.fail(
                    ctx,
                    Violation::protocol("a new message inside a fragmented one"),
                )
            }
            _ => {}
        }
        let max = self.link.options().max_message_bytes;
        let compressed = match self.link.reading() {
            Some(reading) => reading.compressed,
            None => header.rsv1,
        };
        let so_far = self.link.reading().map_or(0, |reading| {
            if compressed {
                reading.compressed_bytes
            } else {
                reading.payload.len()
            }
        });
        // Compressed bytes are bounded too (deflate cannot shrink below a few bytes per block
        // of output, nor grow data by more than a little).
        let allowed = if compressed {
            max + max / 64 + 1024
        } else {
            max
        };
        if header.payload_len > (allowed - so_far.min(allowed)) as u64 {
            return self.fail(
                ctx,
                Violation {
                    code: close::TOO_BIG,
                    reason: "a message over the size limit",
                },
            );
        }
        let length = header.payload_len as usize;
        if !under_way && header.fin && rest.len() >= length {
            let payload = &rest[..length];
            let text = header.opcode == Opcode::Text;
            let delivered = if header.rsv1 {
                self.deliver_compressed_whole(payload, header.mask, text, ctx)
            } else {
                self.deliver_whole(payload, header.mask, text, ctx)
            };
            return match delivered {
                Ok(()) => Step::Consumed(header.header_len + length),
                Err(violation) => self.fail(ctx, violation),
            };
        }
        if !under_way {
            let inflater = header.rsv1.then(|| {
                self.link
                    .take_kept_inflater()
                    .unwrap_or_else(Inflater::borrow)
            });
            self.link.start_reading(Reading {
                frame: None,
                text: header.opcode == Opcode::Text,
                compressed: header.rsv1,
                payload: Vec::new(),
                utf8: Utf8Validator::default(),
                compressed_bytes: 0,
                inflater,
            });
        }
        let Some(reading) = self.link.reading_mut() else {
            return Step::Wait;
        };
        if !reading.compressed {
            reading.payload.reserve(length);
        }
        reading.frame = Some(InFrame {
            remaining: header.payload_len,
            mask: header.mask,
            offset: 0,
            fin: header.fin,
        });
        if length == 0 {
            // An empty fragment ends here and now (if it is the last, its message too): no
            // more input may come to finish it.
            return match self.payload_piece(&[], ctx) {
                Step::Stop => Step::Stop,
                _ => Step::Consumed(header.header_len),
            };
        }
        Step::Consumed(header.header_len)
    }

    /// More of the payload of the data frame under way.
    fn payload_piece(&mut self, input: &[u8], ctx: &mut Context<'_>) -> Step {
        let max = self.link.options().max_message_bytes;
        let Some(reading) = self.link.reading_mut() else {
            return Step::Wait;
        };
        let Some(in_frame) = reading.frame.as_mut() else {
            return Step::Wait;
        };
        let take = (in_frame.remaining.min(input.len() as u64)) as usize;
        if take == 0 && in_frame.remaining > 0 {
            return Step::Wait;
        }
        let piece = &input[..take];
        in_frame.remaining -= take as u64;
        let frame_done = in_frame.remaining == 0;
        let last = frame_done && in_frame.fin;
        let (mask, offset) = (in_frame.mask, in_frame.offset);
        in_frame.offset += take;
        let checked_from = reading.payload.len();
        let outcome = if reading.compressed {
            reading.compressed_bytes += take;
            with_unmasked(piece, mask, offset, |unmasked| {
                match reading.inflater.as_mut() {
                    Some(inflater) => inflater.inflate(unmasked, last, &mut reading.payload, max),
                    None => Err(Violation::protocol("a compressed message with no inflater")),
                }
            })
        } else {
            frame::unmask_into(&mut reading.payload, piece, mask, offset);
            Ok(())
        };
        if let Err(violation) = outcome {
            return self.fail(ctx, violation);
        }
        if reading.text && reading.utf8.feed(&reading.payload[checked_from..]).is_err() {
            return self.fail(ctx, invalid_utf8());
        }
        if frame_done {
            reading.frame = None;
        }
        if last {
            let Some(reading) = self.link.take_reading() else {
                return Step::Consumed(take);
            };
            if let Err(violation) = self.deliver_assembled(reading, ctx) {
                return self.fail(ctx, violation);
            }
        }
        Step::Consumed(take)
    }

    /// A whole uncompressed message in one frame, all here: unmasked into the thread's buffer
    /// and handed over from there.
    fn deliver_whole(
        &mut self,
        masked: &[u8],
        mask: Option<[u8; 4]>,
        text: bool,
        ctx: &mut Context<'_>,
    ) -> Result<(), Violation> {
        with_unmasked(masked, mask, 0, |unmasked| {
            self.deliver(unmasked, text, ctx)
        })
    }

    /// A whole compressed message in one frame, all here.
    fn deliver_compressed_whole(
        &mut self,
        masked: &[u8],
        mask: Option<[u8; 4]>,
        text: bool,
        ctx: &mut Context<'_>,
    ) -> Result<(), Violation> {
        let max = self.link.options().max_message_bytes;
        let mut inflater = self
            .link
            .take_kept_inflater()
            .unwrap_or_else(Inflater::borrow);
        let mut inflated = Vec::new();
        let result = with_unmasked(masked, mask, 0, |unmasked| {
            inflater.inflate(unmasked, true, &mut inflated, max)
        });
        self.give_back(inflater);
        result?;
        self.deliver(&inflated, text, ctx)
    }

    /// A message assembled from pieces is complete.
    fn deliver_assembled(
        &mut self,
        reading: Reading,
        ctx: &mut Context<'_>,
    ) -> Result<(), Violation> {
        let Reading {
            text,
            payload,
            utf8,
            inflater,
            ..
        } = reading;
        if let Some(inflater) = inflater {
            self.give_back(inflater);
        }
        if text && utf8.finish().is_err() {
            return Err(invalid_utf8());
        }
        // Checked piece by piece as it came; checked once more whole to make it a `str`
        // without unsafe code (a second pass, for messages that came in pieces only).
        self.deliver(&payload, text, ctx)
    }

    /// The inflater of a finished message: back to the thread, or kept by the connection.
    fn give_back(&mut self, inflater: Inflater) {
        let no_takeover = self
            .link
            .deflate
            .is_none_or(|agreed| agreed.client_no_context_takeover);
        if let Some(kept) = inflater.finish_message(no_takeover) {
            self.link.keep_inflater(kept);
        }
    }

    /// Checks a whole message's text (one pass), then hands it to the handler (unless the
    /// server is closing: after its close frame, data is read and dropped until the peer's
    /// close comes).
    fn deliver(
        &mut self,
        payload: &[u8],
        text: bool,
        ctx: &mut Context<'_>,
    ) -> Result<(), Violation> {
        let message = if text {
            Message::Text(utf8::validate(payload).map_err(|_| invalid_utf8())?)
        } else {
            Message::Binary(payload)
        };
        record(ctx, |stats| &stats.websocket_messages_in, 1);
        record(ctx, |stats| &stats.websocket_bytes_in, payload.len() as u64);
        if !self.link.is_closing() {
            self.call_handler(ctx, |handler, ws| handler.on_message(message, ws));
        }
        Ok(())
    }

    /// A whole control frame (unmasked).
    fn control(&mut self, opcode: Opcode, payload: &[u8], ctx: &mut Context<'_>) -> Step {
        match opcode {
            Opcode::Ping => {
                // Answered even while output is backed up: the connection reads on.
                if !self.link.is_closing() {
                    let mask = self.link.mask();
                    ctx.write_with(|out| {
                        frame::write_frame(out, true, false, Opcode::Pong, payload, mask)
                    });
                }
                Step::Consumed(0)
            }
            Opcode::Pong => Step::Consumed(0),
            _ => self.peer_closed(payload, ctx),
        }
    }

    /// The peer's close frame: answered with one (if the server has not sent its own), then
    /// the server ends the TCP connection.
    fn peer_closed(&mut self, payload: &[u8], ctx: &mut Context<'_>) -> Step {
        let status = match close::parse(payload) {
            Ok(status) => status,
            Err(violation) => return self.fail(ctx, violation),
        };
        self.link.state |= state::CLOSE_RECEIVED | state::ENDED;
        if !self.link.is_closing() {
            // Echo the code, as RFC 6455 (section 5.5.1) suggests; an empty close gets one.
            self.link
                .write_close(ctx, status.map(|(code, _)| (code, "")));
        }
        let (code, reason) = status.unwrap_or((close::NO_STATUS, ""));
        self.report(ctx, code, reason);
        ctx.close();
        // The answer goes out behind whatever is still queued: a peer that does not read it
        // within the close timeout is cut (see `on_timer`).
        ctx.set_timer(self.link.options().close_timeout);
        Step::Stop
    }

    /// The peer broke a rule: a close frame with its code (unless one was sent), the handler
    /// told, and the connection ends once the frame is written.
    fn fail(&mut self, ctx: &mut Context<'_>, violation: Violation) -> Step {
        log::debug!("{:?}: websocket: {}", ctx.id(), violation.reason);
        if !self.link.is_closing() {
            self.link
                .write_close(ctx, Some((violation.code, violation.reason)));
        }
        self.link.state |= state::ENDED;
        self.report(ctx, violation.code, violation.reason);
        ctx.fail(violation.reason);
        ctx.set_timer(self.link.options().close_timeout);
        Step::Stop
    }

    /// Tells the handler the connection is over, once, and counts the close by its code.
    fn report(&mut self, ctx: &mut Context<'_>, code: u16, reason: &str) {
        if self.link.has(state::REPORTED) {
            return;
        }
        self.link.state |= state::REPORTED;
        record(ctx, close_counter(code), 1);
        if let Some(recorder) = ctx.recorder {
            recorder.sub(|stats| &stats.websockets_open, 1);
        }
        let handler = &mut self.handler;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| handler.on_close(code, reason))) {
            ctx.report_panic(crate::lifecycle::panic_message(payload.as_ref()));
        }
    }

    /// Runs a handler method with the connection's handle. A panic in it is reported to the
    /// server's error hook and closes the connection with 1011.
    fn call_handler(
        &mut self,
        ctx: &mut Context<'_>,
        call: impl FnOnce(&mut dyn WebSocketHandler, &mut WebSocket<'_, '_>),
    ) {
        let handler = &mut *self.handler;
        let link = &mut self.link;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut ws = WebSocket { ctx, link };
            call(handler, &mut ws);
        }));
        if let Err(payload) = outcome {
            ctx.report_panic(crate::lifecycle::panic_message(payload.as_ref()));
            self.fail(
                ctx,
                Violation {
                    code: close::INTERNAL_ERROR,
                    reason: "the server's handler failed",
                },
            );
        }
    }

    /// The connection's timer: the close timeout, the ping timeout, or time to ping.
    pub(crate) fn on_timer(&mut self, ctx: &mut Context<'_>) {
        if self.link.has(state::ENDED) {
            // The connection ended (the handshake finished, or the peer broke a rule) and its
            // last frames have not drained within the close timeout: the peer is not reading.
            ctx.abort();
            return;
        }
        if self.link.has(state::CLOSE_SENT) {
            self.cut(ctx, "the close was not answered");
        } else if self.link.has(state::AWAITING_PONG) {
            record(ctx, |stats| &stats.websocket_heartbeat_timeouts, 1);
            self.cut(ctx, "no answer to a ping");
        } else {
            let mask = self.link.mask();
            ctx.write_with(|out| frame::write_frame(out, true, false, Opcode::Ping, b"", mask));
            record(ctx, |stats| &stats.websocket_pings_sent, 1);
            self.link.state |= state::AWAITING_PONG;
            ctx.set_timer(self.link.options().ping_timeout);
        }
    }

    /// The peer stopped answering: the connection ends at once, abnormally (1006), without
    /// waiting for what is queued to drain.
    fn cut(&mut self, ctx: &mut Context<'_>, why: &str) {
        self.link.state |= state::ENDED;
        self.report(ctx, close::ABNORMAL, why);
        ctx.abort();
    }

    /// The peer ended its side of TCP: without a close frame, the connection ended abnormally.
    pub(crate) fn on_eof(&mut self, ctx: &mut Context<'_>) {
        self.link.state |= state::ENDED;
        self.report(ctx, close::ABNORMAL, "");
        ctx.close();
    }

    /// A graceful shutdown: close with 1001 and wait for the peer's answer (the shutdown
    /// deadline bounds the wait).
    pub(crate) fn on_shutdown(&mut self, ctx: &mut Context<'_>) {
        self.link
            .start_close(ctx, close::GOING_AWAY, "the server is shutting down");
    }

    /// A job the handler offloaded came back.
    pub(crate) fn on_job_done(
        &mut self,
        tag: u64,
        result: crate::protocol::JobResult,
        ctx: &mut Context<'_>,
    ) {
        if !self.link.has(state::ENDED) {
            self.call_handler(ctx, |handler, ws| handler.on_job_done(tag, result, ws));
        }
    }

    /// Another thread's notice for this connection.
    pub(crate) fn on_notice(&mut self, notice: &crate::protocol::Notice, ctx: &mut Context<'_>) {
        if !self.link.has(state::ENDED) {
            self.call_handler(ctx, |handler, ws| handler.on_notice(notice, ws));
        }
    }

    /// Backed-up output drained: the handler may send again.
    pub(crate) fn on_drain(&mut self, ctx: &mut Context<'_>) {
        if !self.link.has(state::ENDED) && !self.link.is_closing() {
            self.call_handler(ctx, |handler, ws| handler.on_drain(ws));
        }
    }

    /// The connection is gone, however it went (a reset, a limit, the shutdown deadline): the
    /// handler is told if it was not yet.
    pub(crate) fn on_closed(&mut self, ctx: &mut Context<'_>) {
        self.report(ctx, close::ABNORMAL, "");
    }
}

fn invalid_utf8() -> Violation {
    Violation {
        code: close::INVALID_DATA,
        reason: "a text message that is not UTF-8",
    }
}
