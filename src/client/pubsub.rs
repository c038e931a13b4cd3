//! The pub/sub client: subscriptions that survive reconnects without a gap or a duplicate, and
//! publishes that are acknowledged exactly once.
//!
//! The client remembers, per topic, the `{epoch, offset}` of the last message it handed over.
//! On every (re)connect it subscribes from there, so the server replays what was missed; a
//! message at or before the remembered offset of the same epoch is a duplicate and dropped, so
//! the application sees each message once and in order. When the server cannot resume (the
//! epoch changed, or the messages are no longer held) its `recovered: false` is handed over as
//! [`Event::Subscribed`] with `recovered == false`: a gap the application can act on (reload
//! its state, say), and the subscription goes on live.
//!
//! Every publish carries an id (`<client>-<sequence>`, the client part random per client). One
//! not acknowledged when the connection ends is sent again, with the same id, after the
//! reconnect, and the server's dedupe window (rebuilt from the log after a restart) makes the
//! second copy answer with the first one's offset instead of storing it again.
//!
//! A refusal that says "not now" (`overloaded`, `unavailable`, `backplane_unavailable`: a full
//! queue, a server stopping, a Redis server out of reach) is not an outcome: the publish stays
//! unacknowledged and the subscription wanted. Both are sent again on the next connection,
//! and [`PubSubClient`] also sends them again on the same one after a delay (250 ms, doubling
//! to 5 s while the refusals go on), so a publish waits out an outage instead of failing.
//! The refusal is still reported, as [`Event::Refused`].
//!
//! [`PubSubHandler`] is the sans-IO part (a [`WebSocketHandler`] for [`WsClient`]), for
//! [`Clients`](super::Clients) loops; [`PubSubClient`] is the blocking API the CLI's
//! `subscribe` and `publish` use.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::ws::{ClientOptions, Url, WsClient};
use super::Blocking;
use crate::error::{Error, Result};
use crate::protocol::ws::{Message, WebSocket, WebSocketHandler};

/// Events the blocking [`PubSubClient`] holds for its caller before it stops reading (the
/// kernel's buffers then push back on the server, and nothing is lost) until the caller takes
/// some with [`PubSubClient::next_event`]. The read that crosses it is delivered whole, so at
/// most this many plus what one 64 KiB read carries are held.
pub const MAX_QUEUED_EVENTS: usize = 4096;

/// Publishes a client has sent and not yet seen acknowledged, at most; later ones wait in the
/// client, in order, and go as acknowledgements come back. It bounds what a client that
/// publishes faster than it reads makes the server hold for it (its acknowledgements, about
/// 80 bytes each), well under the server's WebSocket output limit, so a burst of any length
/// is acknowledged in full instead of overrunning the connection.
pub const MAX_IN_FLIGHT_PUBLISHES: usize = 1024;

/// Answers to publishes kept for [`PubSubClient::wait_published`] at most: past it the oldest
/// are forgotten, and asking for one of those is an error, so a client that publishes with
/// [`PubSubClient::start_publish`] and never asks holds bounded memory.
pub const MAX_KEPT_OUTCOMES: usize = 65_536;

/// Error codes that mean "try again later": the publish or subscription is kept and sent again.
pub const TRANSIENT_REFUSALS: [&str; 3] = ["overloaded", "unavailable", "backplane_unavailable"];

/// The first delay before sending again what was refused for now; it doubles while refusals
/// go on, up to [`RETRY_MAX`], and starts over at an acknowledgement.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where a subscription stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// New messages only, until the first `subscribed` names the epoch.
    Live,
    /// Everything after `offset`; `epoch` once known (none: from the very start).
    After { epoch: Option<String>, offset: u64 },
}

/// What the client hands the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message, once and in order.
    Message {
        /// Its topic.
        topic: String,
        /// Its offset in the topic.
        offset: u64,
        /// Its data.
        data: String,
    },
    /// A subscription began (on every connect). `recovered == false` after asking to resume
    /// means the server could not: messages may have been missed, and it goes on from `last`.
    Subscribed {
        /// The topic.
        topic: String,
        /// The topic's epoch.
        epoch: String,
        /// The topic's last offset when the subscription began.
        last: u64,
        /// Whether it resumed where this client left off.
        recovered: bool,
    },
    /// Messages `from..=to` were skipped: no longer held by the server.
    Gap {
        /// The topic.
        topic: String,
        /// The first offset skipped.
        from: u64,
        /// The last offset skipped.
        to: u64,
    },
    /// A publish was stored at `offset`.
    Acked {
        /// What [`PubSubClient::start_publish`] returned for it.
        sequence: u64,
        /// Where it was stored.
        offset: u64,
    },
    /// The server refused something (a publish, when `sequence` says which).
    Refused {
        /// The publish refused, if it was one.
        sequence: Option<u64>,
        /// The error code (see the wire protocol).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// A connection is up (subscriptions and unacknowledged publishes were sent again).
    Connected,
    /// The connection ended (a reconnect follows if the client has a backoff).
    Disconnected,
}

/// A publish not yet acknowledged.
#[derive(Debug, Clone)]
struct Unacked {
    topic: String,
    data: String,
}

/// What the handler and the blocking API share.
struct State {
    subscriptions: BTreeMap<String, Start>,
    /// In the order they were published, so they are sent (again) in that order: the first
    /// `on_wire` of them, up to sequence `sent_through`, are on this connection.
    unacked: BTreeMap<u64, Unacked>,
    /// Publishes sent on this connection and not yet answered: at most
    /// [`MAX_IN_FLIGHT_PUBLISHES`].
    on_wire: usize,
    /// The highest sequence sent on this connection (0: none yet).
    sent_through: u64,
    /// Publishes answered and not yet collected: the offset, or the refusal.
    outcomes: BTreeMap<u64, std::result::Result<u64, String>>,
    /// Outcomes up to this sequence that are not in `outcomes` were forgotten (or taken).
    forgotten_through: u64,
    /// This client's part of every publish id.
    client_id: String,
    next_sequence: u64,
    connected: bool,
    /// Publishes refused for now on this connection, to send again at `retry_at`.
    retry_publishes: Vec<u64>,
    /// Subscriptions refused for now on this connection, the same.
    retry_subscriptions: Vec<String>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
}

impl State {
    /// A connection opened: nothing of this client's is on it yet.
    fn new_connection(&mut self) {
        self.connected = true;
        self.on_wire = 0;
        self.sent_through = 0;
        // Everything unacknowledged and wanted goes again on a new connection anyway.
        self.retry_publishes.clear();
        self.retry_subscriptions.clear();
        self.retry_at = None;
    }

    /// Keeps the answer to publish `sequence`, forgetting the oldest past
    /// [`MAX_KEPT_OUTCOMES`].
    fn keep_outcome(&mut self, sequence: u64, outcome: std::result::Result<u64, String>) {
        self.outcomes.insert(sequence, outcome);
        while self.outcomes.len() > MAX_KEPT_OUTCOMES {
            if let Some((oldest, _)) = self.outcomes.pop_first() {
                self.forgotten_through = self.forgotten_through.max(oldest);
            }
        }
    }

    /// True if the answer to `sequence` came and is no longer kept: forgotten, or taken.
    fn outcome_gone(&self, sequence: u64) -> bool {
        sequence <= self.forgotten_through
            && !self.outcomes.contains_key(&sequence)
            && !self.unacked.contains_key(&sequence)
    }

    /// Something was refused for now: it is sent again after the current delay, which grows.
    fn retry_later(&mut self) {
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.retry_delay);
            self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
        }
    }

    /// The lines due to be sent again now (publishes refused for now, still unacknowledged,
    /// and subscriptions still wanted), if their time has come.
    fn due_retries(&mut self, now: Instant) -> Vec<String> {
        if self.retry_at.is_none_or(|at| at > now) {
            return Vec::new();
        }
        self.retry_at = None;
        let mut lines = Vec::new();
        for topic in std::mem::take(&mut self.retry_subscriptions) {
            if let Some(start) = self.subscriptions.get(&topic) {
                lines.push(subscribe_line(&topic, start));
            }
        }
        for sequence in std::mem::take(&mut self.retry_publishes) {
            if let Some(publish) = self.unacked.get(&sequence) {
                lines.push(publish_line(&self.client_id, sequence, publish));
                self.on_wire += 1;
            }
        }
        lines
    }

    /// The publish lines that fit in the window now: the next ones not yet sent on this
    /// connection, in order, until [`MAX_IN_FLIGHT_PUBLISHES`] are on the wire.
    fn fill_window(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while self.on_wire < MAX_IN_FLIGHT_PUBLISHES {
            let Some((&sequence, publish)) = self.unacked.range(self.sent_through + 1..).next()
            else {
                break;
            };
            lines.push(publish_line(&self.client_id, sequence, publish));
            self.sent_through = sequence;
            self.on_wire += 1;
        }
        lines
    }

    /// Publish `sequence` was answered: it leaves the unacknowledged, and the window if it
    /// was on the wire. False if it was not waiting (answered before, or not this client's).
    fn answered(&mut self, sequence: u64) -> bool {
        if self.unacked.remove(&sequence).is_none() {
            return false;
        }
        if sequence <= self.sent_through {
            self.on_wire = self.on_wire.saturating_sub(1);
        }
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A server message, as far as the client reads it (unknown fields are ignored).
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    topic: Option<String>,
    epoch: Option<String>,
    offset: Option<u64>,
    data: Option<String>,
    id: Option<String>,
    recovered: Option<bool>,
    code: Option<String>,
    message: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
}

/// Shared state of one pub/sub client.
#[derive(Clone)]
pub struct PubSubState(Arc<Mutex<State>>);

impl Default for PubSubState {
    fn default() -> Self {
        PubSubState(Arc::new(Mutex::new(State {
            subscriptions: BTreeMap::new(),
            unacked: BTreeMap::new(),
            on_wire: 0,
            sent_through: 0,
            outcomes: BTreeMap::new(),
            forgotten_through: 0,
            client_id: format!("{:016x}", rand::random::<u64>()),
            next_sequence: 1,
            connected: false,
            retry_publishes: Vec::new(),
            retry_subscriptions: Vec::new(),
            retry_at: None,
            retry_delay: RETRY_FIRST,
        })))
    }
}

impl PubSubState {
    /// Subscribes to `topic` from the next connection on (or now, through `ws`): live, or
    /// after offset `after` (0: from the start).
    pub fn subscribe(&self, topic: &str, after: Option<u64>, ws: Option<&mut WebSocket<'_, '_>>) {
        let start = after.map_or(Start::Live, |offset| Start::After {
            epoch: None,
            offset,
        });
        let mut state = lock(&self.0);
        state.subscriptions.insert(topic.to_string(), start.clone());
        if let (Some(ws), true) = (ws, state.connected) {
            ws.send_text(&subscribe_line(topic, &start));
        }
    }

    /// Queues a publish (sent now through `ws` if connected, else after the next connect);
    /// returns its sequence number.
    pub fn publish(&self, topic: &str, data: &str, ws: Option<&mut WebSocket<'_, '_>>) -> u64 {
        let mut state = lock(&self.0);
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let unacked = Unacked {
            topic: topic.to_string(),
            data: data.to_string(),
        };
        state.unacked.insert(sequence, unacked);
        if let (Some(ws), true) = (ws, state.connected) {
            for line in state.fill_window() {
                ws.send_text(&line);
            }
        }
        sequence
    }

    /// The answer to publish `sequence`, once it came (taken: asked once). At most
    /// [`MAX_KEPT_OUTCOMES`] are kept; the oldest beyond are forgotten.
    pub fn take_outcome(&self, sequence: u64) -> Option<std::result::Result<u64, String>> {
        let mut state = lock(&self.0);
        let outcome = state.outcomes.remove(&sequence);
        if outcome.is_some() {
            state.forgotten_through = state.forgotten_through.max(sequence);
        }
        outcome
    }

    /// Publishes not yet acknowledged: on the wire, or waiting for room in the window of
    /// [`MAX_IN_FLIGHT_PUBLISHES`].
    pub fn unacknowledged(&self) -> usize {
        lock(&self.0).unacked.len()
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        lock(&self.0).connected
    }
}

fn subscribe_line(topic: &str, start: &Start) -> String {
    let mut message = json!({"type": "subscribe", "topic": topic});
    if let Start::After { epoch, offset } = start {
        message["from"] = match epoch {
            Some(epoch) => json!({"epoch": epoch, "offset": offset}),
            None => json!({"offset": offset}),
        };
    }
    message.to_string()
}

fn publish_line(client_id: &str, sequence: u64, publish: &Unacked) -> String {
    json!({
        "type": "publish",
        "topic": publish.topic,
        "data": publish.data,
        "id": format!("{client_id}-{sequence}"),
    })
    .to_string()
}

/// The pub/sub client as a WebSocket handler: resubscribes and re-sends on every open, drops
/// duplicates, and hands everything else to its sink.
pub struct PubSubHandler {
    state: PubSubState,
    sink: Box<dyn FnMut(Event) + Send>,
}

impl PubSubHandler {
    /// A handler sharing `state` that hands events to `sink`.
    pub fn new(state: PubSubState, sink: impl FnMut(Event) + Send + 'static) -> PubSubHandler {
        PubSubHandler {
            state,
            sink: Box::new(sink),
        }
    }

    /// Handles one server message; returns the event for the application, if any.
    fn incoming(&mut self, text: &str) -> Option<Event> {
        let incoming: Incoming = match serde_json::from_str(text) {
            Ok(incoming) => incoming,
            Err(error) => {
                log::warn!("pub/sub: a message that is not the protocol's: {error}");
                return None;
            }
        };
        let mut state = lock(&self.state.0);
        let topic = incoming.topic.unwrap_or_default();
        match incoming.kind.as_str() {
            "message" => {
                let (epoch, offset) = (incoming.epoch?, incoming.offset?);
                let start = state.subscriptions.get_mut(&topic)?;
                if let Start::After {
                    epoch: Some(seen),
                    offset: last,
                } = start
                {
                    if *seen == epoch && offset <= *last {
                        return None; // seen already (a replay overlapping what came live)
                    }
                }
                *start = Start::After {
                    epoch: Some(epoch),
                    offset,
                };
                Some(Event::Message {
                    topic,
                    offset,
                    data: incoming.data.unwrap_or_default(),
                })
            }
            "subscribed" => {
                let (epoch, last) = (incoming.epoch?, incoming.offset?);
                let recovered = incoming.recovered.unwrap_or(true);
                let start = state.subscriptions.get_mut(&topic)?;
                *start = match (&*start, recovered) {
                    // Resumed: the replay follows from where this client stands.
                    (Start::After { offset, .. }, true) => Start::After {
                        epoch: Some(epoch.clone()),
                        offset: *offset,
                    },
                    // Live, or not resumable: the server goes on after its last offset.
                    _ => Start::After {
                        epoch: Some(epoch.clone()),
                        offset: last,
                    },
                };
                Some(Event::Subscribed {
                    topic,
                    epoch,
                    last,
                    recovered,
                })
            }
            "ack" => {
                let sequence = sequence_of(&state.client_id, incoming.id.as_deref()?)?;
                let offset = incoming.offset?;
                if !state.answered(sequence) {
                    return None;
                }
                state.retry_delay = RETRY_FIRST;
                state.keep_outcome(sequence, Ok(offset));
                Some(Event::Acked { sequence, offset })
            }
            "error" => {
                let code = incoming.code.unwrap_or_default();
                if code == "gap" {
                    if let (Some(from), Some(to)) = (incoming.from, incoming.to) {
                        if let Some(Start::After { offset, .. }) =
                            state.subscriptions.get_mut(&topic)
                        {
                            *offset = (*offset).max(to);
                        }
                        return Some(Event::Gap { topic, from, to });
                    }
                }
                let message = incoming.message.unwrap_or_default();
                let sequence = incoming
                    .id
                    .as_deref()
                    .and_then(|id| sequence_of(&state.client_id, id));
                let transient = TRANSIENT_REFUSALS.contains(&code.as_str());
                match sequence {
                    // Kept, off the wire, to go again.
                    Some(sequence)
                        if transient
                            && state.unacked.contains_key(&sequence)
                            && sequence <= state.sent_through =>
                    {
                        state.on_wire = state.on_wire.saturating_sub(1);
                        state.retry_publishes.push(sequence);
                        state.retry_later();
                    }
                    // Refused for now, but not waiting here (answered before): nothing to keep.
                    Some(_) if transient => {}
                    Some(sequence) => {
                        state.answered(sequence);
                        state.keep_outcome(sequence, Err(format!("{code}: {message}")));
                    }
                    None if transient && state.subscriptions.contains_key(&topic) => {
                        if !state.retry_subscriptions.contains(&topic) {
                            state.retry_subscriptions.push(topic.clone());
                        }
                        state.retry_later();
                    }
                    None => {}
                }
                Some(Event::Refused {
                    sequence,
                    code,
                    message,
                })
            }
            _ => None,
        }
    }
}

/// The sequence number in a publish id of this client (`<client>-<sequence>`).
fn sequence_of(client_id: &str, id: &str) -> Option<u64> {
    id.strip_prefix(client_id)?.strip_prefix('-')?.parse().ok()
}

impl WebSocketHandler for PubSubHandler {
    fn on_open(&mut self, ws: &mut WebSocket<'_, '_>) {
        let lines: Vec<String> = {
            let mut state = lock(&self.state.0);
            state.new_connection();
            let mut lines: Vec<String> = state
                .subscriptions
                .iter()
                .map(|(topic, start)| subscribe_line(topic, start))
                .collect();
            lines.extend(state.fill_window());
            lines
        };
        for line in &lines {
            ws.send_text(line);
        }
        (self.sink)(Event::Connected);
    }

    fn on_message(&mut self, message: Message<'_>, ws: &mut WebSocket<'_, '_>) {
        let Message::Text(text) = message else {
            return;
        };
        let event = self.incoming(text);
        // An answer to a publish made room in the window: the publishes waiting for it go
        // now. Other messages (the stream of a subscription) leave the window as it was.
        if matches!(
            event,
            Some(
                Event::Acked { .. }
                    | Event::Refused {
                        sequence: Some(_),
                        ..
                    }
            )
        ) {
            let lines = lock(&self.state.0).fill_window();
            for line in &lines {
                ws.send_text(line);
            }
        }
        if let Some(event) = event {
            (self.sink)(event);
        }
    }

    fn on_close(&mut self, _code: u16, _reason: &str) {
        lock(&self.state.0).connected = false;
        (self.sink)(Event::Disconnected);
    }
}

/// A blocking pub/sub client (what `socketserver subscribe` and `publish` run on).
///
/// ```no_run
/// use std::time::Duration;
/// use socketserver::client::{pubsub::{Event, PubSubClient}, ws::ClientOptions, Backoff};
///
/// let options = ClientOptions { backoff: Some(Backoff::default()), ..ClientOptions::default() };
/// let mut client = PubSubClient::connect("ws://127.0.0.1:8080/", options)?;
/// client.subscribe("news", Some(0));
/// let offset = client.publish("news", "hello", Duration::from_secs(10))?;
/// while let Some(event) = client.next_event(Duration::from_secs(1))? {
///     if let Event::Message { offset, data, .. } = event {
///         println!("{offset}\t{data}");
///     }
/// }
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct PubSubClient {
    connection: Blocking<WsClient>,
    state: PubSubState,
    events: Arc<Mutex<VecDeque<Event>>>,
}

impl PubSubClient {
    /// Dials `url`. Without a backoff in `options` a failed connect is an error; with one the
    /// client keeps trying while it is used.
    pub fn connect(url: &str, options: ClientOptions) -> Result<PubSubClient> {
        let parsed = Url::parse(url)?;
        let addr = parsed.resolve()?;
        let state = PubSubState::default();
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let queue = events.clone();
        // Acknowledgements are collected through `outcomes`; only the rest is queued.
        let handler = PubSubHandler::new(state.clone(), move |event| {
            if !matches!(event, Event::Acked { .. }) {
                lock(&queue).push_back(event);
            }
        });
        let reconnects = options.backoff.is_some();
        let protocol = WsClient::new(parsed.clone(), &options, handler);
        let mut client = PubSubClient {
            connection: super::ws::dial(&parsed, addr, &options, protocol)?,
            state,
            events,
        };
        if !reconnects {
            let deadline =
                Instant::now() + options.connect_timeout + options.websocket.ping_timeout;
            let open = client
                .connection
                .run_until(deadline, |protocol| protocol.is_open())
                .map_err(|error| Error::io(format!("connecting to {url}"), error))?;
            if !open {
                return Err(Error::io(
                    format!("connecting to {url}"),
                    std::io::ErrorKind::TimedOut.into(),
                ));
            }
        }
        Ok(client)
    }

    /// Subscribes to `topic`: live only (`None`), or after offset `after` (`Some(0)`: from the
    /// first message on).
    pub fn subscribe(&mut self, topic: &str, after: Option<u64>) {
        let state = self.state.clone();
        let sent = self.connection.with_protocol(|protocol, ctx| {
            protocol.act(ctx, |ws| state.subscribe(topic, after, Some(ws)))
        });
        if sent.flatten().is_none() {
            self.state.subscribe(topic, after, None);
        }
    }

    /// Sends a publish without waiting; returns its sequence for [`PubSubClient::wait_published`].
    pub fn start_publish(&mut self, topic: &str, data: &str) -> u64 {
        let state = self.state.clone();
        let sent = self.connection.with_protocol(|protocol, ctx| {
            protocol.act(ctx, |ws| state.publish(topic, data, Some(ws)))
        });
        match sent.flatten() {
            Some(sequence) => sequence,
            None => self.state.publish(topic, data, None),
        }
    }

    /// Waits at most `timeout` for publish `sequence` to be acknowledged: its offset, `None`
    /// if not yet (or if [`MAX_QUEUED_EVENTS`] wait to be taken first), or the server's
    /// refusal as an error.
    pub fn wait_published(&mut self, sequence: u64, timeout: Duration) -> Result<Option<u64>> {
        let state = self.state.clone();
        let deadline = Instant::now() + timeout;
        let events = self.events.clone();
        if lock(&state.0).outcome_gone(sequence) {
            return Err(Error::Tool(format!(
                "the answer to publish {sequence} is no longer kept (taken already, or one of \
                 more than {MAX_KEPT_OUTCOMES} nobody asked for)"
            )));
        }
        let waited = self.run_until(deadline, || {
            lock(&state.0).outcomes.contains_key(&sequence)
                || lock(&events).len() >= MAX_QUEUED_EVENTS
        });
        match self.state.take_outcome(sequence) {
            Some(Ok(offset)) => Ok(Some(offset)),
            Some(Err(refusal)) => Err(Error::Tool(format!("publish refused: {refusal}"))),
            None => waited
                .map(|_| None)
                .map_err(|error| Error::io("publishing", error)),
        }
    }

    /// Publishes and waits (at most `timeout`, across reconnects) until it is acknowledged.
    pub fn publish(&mut self, topic: &str, data: &str, timeout: Duration) -> Result<u64> {
        let sequence = self.start_publish(topic, data);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(offset) = self.wait_published(sequence, left)? {
                return Ok(offset);
            }
            if self.queued_events() >= MAX_QUEUED_EVENTS {
                // The acknowledgement is behind events nobody takes: reading stopped for them.
                return Err(Error::Tool(format!(
                    "{MAX_QUEUED_EVENTS} events wait to be taken (next_event) before the \
                     acknowledgement can be read"
                )));
            }
            if left.is_zero() {
                return Err(Error::io("publishing", std::io::ErrorKind::TimedOut.into()));
            }
        }
    }

    /// Events received and not yet taken with [`PubSubClient::next_event`].
    pub fn queued_events(&self) -> usize {
        lock(&self.events).len()
    }

    /// The next event, waiting at most `timeout`; `None` if none came. An error once the
    /// connection is over for good (no backoff, or its retries ran out).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if let Some(event) = lock(&self.events).pop_front() {
            return Ok(Some(event));
        }
        let events = self.events.clone();
        let deadline = Instant::now() + timeout;
        let waited = self.run_until(deadline, || !lock(&events).is_empty());
        if let Some(event) = lock(&self.events).pop_front() {
            return Ok(Some(event));
        }
        waited
            .map(|_| None)
            .map_err(|error| Error::io("receiving", error))
    }

    /// Serves the connection (acknowledgements, heartbeats, reconnects) for `duration`;
    /// sooner if [`MAX_QUEUED_EVENTS`] wait to be taken.
    pub fn serve_for(&mut self, duration: Duration) -> Result<()> {
        let events = self.events.clone();
        self.run_until(Instant::now() + duration, || {
            lock(&events).len() >= MAX_QUEUED_EVENTS
        })
        .map(|_| ())
        .map_err(|error| Error::io("serving", error))
    }

    /// Serves the connection until `done` or `deadline`, sending again, when due, what was
    /// refused for now.
    fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut() -> bool,
    ) -> std::io::Result<bool> {
        loop {
            let retry_at = lock(&self.state.0).retry_at;
            let until = retry_at.map_or(deadline, |at| at.min(deadline));
            if self.connection.run_until(until, |_| done())? {
                return Ok(true);
            }
            let lines = lock(&self.state.0).due_retries(Instant::now());
            if !lines.is_empty() {
                // Not connected: dropped here, since a new connection sends everything
                // unacknowledged and every subscription anyway.
                self.connection.with_protocol(|protocol, ctx| {
                    protocol.act(ctx, |ws| {
                        for line in &lines {
                            ws.send_text(line);
                        }
                    })
                });
            }
            if Instant::now() >= deadline {
                return Ok(done());
            }
        }
    }

    /// The shared state (connected, publishes waiting).
    pub fn state(&self) -> &PubSubState {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> (PubSubHandler, Arc<Mutex<Vec<Event>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let state = PubSubState::default();
        let handler = PubSubHandler::new(state, move |event| lock(&sink).push(event));
        (handler, seen)
    }

    #[test]
    fn answers_nobody_asks_for_are_kept_up_to_the_bound_then_the_oldest_go() {
        let (mut handler, _) = handler();
        let client = lock(&handler.state.0).client_id.clone();
        let total = MAX_KEPT_OUTCOMES as u64 + 10;
        for _ in 0..total {
            handler.state.publish("t", "x", None);
        }
        {
            let mut state = lock(&handler.state.0);
            state.new_connection();
            let _ = state.fill_window();
        }
        for sequence in 1..=total {
            let ack = format!(
                r#"{{"type":"ack","id":"{client}-{sequence}","topic":"t","offset":{sequence}}}"#
            );
            handler.incoming(&ack);
            // Room in the window for the next ones, as the handler makes after an answer.
            let _ = lock(&handler.state.0).fill_window();
        }
        let state = lock(&handler.state.0);
        assert_eq!(state.outcomes.len(), MAX_KEPT_OUTCOMES);
        assert!(state.outcome_gone(1), "the oldest answer is forgotten");
        assert!(state.outcome_gone(10));
        assert!(!state.outcome_gone(11), "a newer one is still there");
        assert_eq!(state.outcomes.get(&total), Some(&Ok(total)));
        drop(state);
        assert_eq!(handler.state.take_outcome(total), Some(Ok(total)));
        assert!(lock(&handler.state.0).outcome_gone(total), "taken once");
    }

    #[test]
    fn a_replay_overlapping_what_was_seen_is_dropped() {
        let (mut handler, _) = handler();
        handler.state.subscribe("t", Some(0), None);
        let message = |offset: u64| {
            format!(
                r#"{{"type":"message","topic":"t","epoch":"e","offset":{offset},"data":"d{offset}"}}"#
            )
        };
        let delivered: Vec<u64> = [1, 2, 2, 1, 3]
            .into_iter()
            .filter_map(|offset| match handler.incoming(&message(offset)) {
                Some(Event::Message { offset, .. }) => Some(offset),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, [1, 2, 3]);
        // The next subscribe resumes after the last message handed over.
        let lines = {
            let state = lock(&handler.state.0);
            subscribe_line("t", &state.subscriptions["t"])
        };
        assert_eq!(
            lines,
            r#"{"from":{"epoch":"e","offset":3},"topic":"t","type":"subscribe"}"#
        );
    }

    #[test]
    fn an_unrecoverable_resume_is_reported_and_goes_on_from_the_servers_last() {
        let (mut handler, _) = handler();
        handler.state.subscribe("t", Some(5), None);
        let event = handler.incoming(
            r#"{"type":"subscribed","topic":"t","epoch":"f","offset":9,"recovered":false,"earliest":1}"#,
        );
        assert!(matches!(
            event,
            Some(Event::Subscribed {
                recovered: false,
                last: 9,
                ..
            })
        ));
        let next = r#"{"type":"message","topic":"t","epoch":"f","offset":10,"data":"x"}"#;
        assert!(matches!(
            handler.incoming(next),
            Some(Event::Message { offset: 10, .. })
        ));
    }

    #[test]
    fn at_most_the_window_of_publishes_is_on_the_wire_and_each_answer_lets_the_next_go() {
        let state = PubSubState::default();
        let total = MAX_IN_FLIGHT_PUBLISHES as u64 + 500;
        for n in 1..=total {
            state.publish("t", &n.to_string(), None);
        }
        let mut state = lock(&state.0);
        let client_id = state.client_id.clone();
        let id = |line: &str| -> String {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
            value["id"].as_str().expect("an id").to_string()
        };
        let first = state.fill_window();
        assert_eq!(first.len(), MAX_IN_FLIGHT_PUBLISHES);
        assert_eq!(id(&first[0]), format!("{client_id}-1"));
        assert!(state.fill_window().is_empty(), "the window is full");
        // An answer to one not on the wire yet opens nothing.
        assert!(state.answered(total));
        assert!(state.fill_window().is_empty());
        // An answer to one on the wire lets the next in order go.
        assert!(state.answered(1));
        assert!(!state.answered(1), "answered once");
        let next = state.fill_window();
        let expected = format!("{client_id}-{}", MAX_IN_FLIGHT_PUBLISHES + 1);
        assert_eq!(
            next.iter().map(|line| id(line)).collect::<Vec<_>>(),
            [expected]
        );
        // A new connection sends the oldest unanswered first, again up to the window.
        state.new_connection();
        let again = state.fill_window();
        assert_eq!(again.len(), MAX_IN_FLIGHT_PUBLISHES);
        assert_eq!(id(&again[0]), format!("{client_id}-2"));
    }

    #[test]
    fn acks_settle_only_this_clients_publishes() {
        let (mut handler, _) = handler();
        let sequence = handler.state.publish("t", "x", None);
        let client_id = lock(&handler.state.0).client_id.clone();
        let foreign = r#"{"type":"ack","id":"someone-else-1","topic":"t","offset":4}"#;
        assert_eq!(handler.incoming(foreign), None);
        assert_eq!(handler.state.unacknowledged(), 1);
        let ours =
            format!(r#"{{"type":"ack","id":"{client_id}-{sequence}","topic":"t","offset":4}}"#);
        assert_eq!(
            handler.incoming(&ours),
            Some(Event::Acked {
                sequence,
                offset: 4
            })
        );
        assert_eq!(handler.state.take_outcome(sequence), Some(Ok(4)));
        assert_eq!(handler.state.unacknowledged(), 0);
    }
}
