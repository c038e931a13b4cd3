//! Pub/sub over WebSocket: topics, a durable log per topic, and subscribers that resume where
//! they left off without losing or repeating a message.
//!
//! ```no_run
//! use std::sync::Arc;
//! use socketserver::protocol::http::{HttpLimits, Router};
//! use socketserver::protocol::ws::WebSocketOptions;
//! use socketserver::pubsub::{FsyncPolicy, PubSub, Storage};
//! use socketserver::{protocol::Http, Server};
//!
//! let server = Server::bind("127.0.0.1:8080")?;
//! let storage = Storage::Disk { dir: "socketserver-data".into(), fsync: FsyncPolicy::Always };
//! let pubsub = PubSub::start(server.config(), storage)?;
//! let route = pubsub.route(WebSocketOptions::from_config(server.config()));
//! let router = Arc::new(Router::new().websocket("/", route));
//! let limits = HttpLimits::from_config(server.config());
//! server.serve(move || Http::new(router.clone(), limits))?;
//! pubsub.shutdown();
//! # Ok::<(), socketserver::Error>(())
//! ```
//!
//! The wire protocol (JSON text frames) is in [`wire`]. What it guarantees:
//!
//! * **Acknowledged means stored.** A publish is acknowledged (`ack`, with its offset) once its
//!   record reached the durability point of the [`FsyncPolicy`]: on the disk under `Always`
//!   (a crash of the machine loses none of them), in the file under `Interval` and `Never` (a
//!   crash of the process loses none; one of the machine may lose the last interval's). A
//!   subscriber is shown a message only after that point, so no crash takes back a message
//!   someone saw.
//! * **An offset names one message forever.** Offsets start at 1 and are contiguous per
//!   topic. A topic's *epoch* changes only when recovery finds that records which may have
//!   been delivered are gone, and a subscriber resuming with another epoch is told
//!   `recovered: false`.
//! * **Resume.** `subscribe` with `from: {epoch, offset}` gets every later message exactly
//!   once, in order, from the log and then live, with no gap or overlap at the seam, if the
//!   epoch matches and `offset + 1` is still held; otherwise it gets `recovered: false`, the
//!   oldest offset held (`earliest`), and the live messages from now.
//! * **No duplicates from retries.** A publish that repeats an `id` seen within
//!   [`Config::pubsub_dedupe_window`] (2 minutes, surviving a restart) is acknowledged with the
//!   first one's offset and not stored again.
//! * **Slow subscribers cost bounded memory and lose nothing.** Past the high watermark of
//!   output waiting, a subscriber is no longer written live messages: it catches up from the
//!   log at its own pace (a read of [`Config::pubsub_fetch_bytes`] each time its output drains)
//!   and goes back to live once it has caught up. With
//!   [`Config::pubsub_close_slow_subscribers`] it is closed with code 4008 instead, and
//!   resumes from its offset when it comes back. Either way it is counted. A subscriber whose
//!   next message has left the history gets an `error` with code `gap` naming what it missed.
//!
//! All disk work (appends, fsyncs, history reads) happens on the hub's thread (`hub.rs`),
//! never on an event loop; the loops hear back through their mailboxes. A message is framed
//! once and its bytes shared by every subscriber's output queue; with permessage-deflate and
//! no context takeover it is compressed once too.
//!
//! It runs under every model of one process. On an event loop (`reactor`, `reactors`) the hub
//! hands deliveries to the loops and never waits; under the blocking models (`threads`,
//! `pool`) each connection is its own thread and the hub's thread writes to every subscriber
//! itself, waiting for each as a blocking server's broadcaster does (a subscriber that takes
//! nothing for [`Config::ws_ping_timeout`] is cut), which is what `compare --protocol pubsub`
//! puts side by side. A prefork server's processes would share no hub, so `serve` refuses that
//! combination unless the topics live in Redis ([`Storage::Redis`], the [`backplane`]): then
//! each process, like each node of a cluster, has its own hub and they share the topics. A [`Session`](crate::protocol::Session) in a test has no mailbox: its client is
//! told `unavailable`.

pub mod backplane;
mod hub;
pub mod log;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

pub use self::hub::PubSubStats;
use self::hub::{Address, Command, Delivery, HubLimits, Resume};
use crate::config::Config;
use crate::protocol::ws::{
    Message, SendStatus, WebSocket, WebSocketHandler, WebSocketOptions, WebSocketRoute,
};
use crate::protocol::Notice;

/// When a publish counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledged after its record is on the disk (one fsync for every publish waiting).
    Always,
    /// Acknowledged once written to the file; the file is synced every this long (Redis'
    /// `appendfsync everysec` at one second).
    Interval(Duration),
    /// Acknowledged once written to the file; the system syncs it when it likes.
    Never,
}

/// Where topics keep their messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A log per topic under `dir/topics/<topic>/`.
    Disk {
        /// The data directory.
        dir: PathBuf,
        /// When a publish counts as stored.
        fsync: FsyncPolicy,
    },
    /// A bounded history per topic in memory ([`Config::pubsub_memory_messages`] and
    /// [`Config::pubsub_memory_bytes`]), lost at a restart.
    Memory,
    /// In Redis, shared by every node pointed at the same servers ([`backplane`]): a stream
    /// per topic, offsets and epochs given out by Redis, so a subscriber resumes on any node.
    /// Topics are spread over the servers by jump hash. A publish is acknowledged once Redis
    /// has it: as durable as Redis is made (`appendonly yes` with `appendfsync always` for a
    /// crash of the machine to lose none).
    Redis {
        /// `redis://HOST:PORT` of each server, in an order every node must share.
        servers: Vec<String>,
    },
}

/// How messages are framed for subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Envelope {
    /// The [`wire`] protocol's `message` objects.
    Json,
    /// The payload as published (`ws --broadcast`).
    Raw,
}

/// The close code for a connection closed for not reading: a subscriber under
/// [`Config::pubsub_close_slow_subscribers`], or any connection whose replies (its
/// acknowledgements, refusals, subscription starts and gaps) would otherwise be dropped.
pub const CLOSE_SLOW_SUBSCRIBER: u16 = 4008;

/// Sends a reply the client is owed: an acknowledgement, a refusal, a subscription's start or
/// end, a gap. A reply is never dropped. A connection whose output is already over the
/// WebSocket limit is not reading what it asked for, so it is closed with
/// [`CLOSE_SLOW_SUBSCRIBER`] instead, and its client learns the outcome from the next
/// connection: it sends its unacknowledged publishes again (their ids make that safe) and
/// resumes its subscriptions from their offsets.
fn reply(ws: &mut WebSocket<'_, '_>, line: &str) {
    if ws.send_text(line) == SendStatus::Dropped {
        ws.close(
            CLOSE_SLOW_SUBSCRIBER,
            "not reading its replies; send again after reconnecting",
        );
    }
}

/// The topic every connection of a broadcast server publishes and subscribes to.
const BROADCAST_TOPIC: &str = "broadcast";

/// True for a topic name of at most `max` bytes of `[A-Za-z0-9._:-]`, not starting with `.`.
pub fn valid_topic(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// What every connection of a service shares.
struct Shared {
    publishes: Sender<Command>,
    control: Sender<Command>,
    stats: Arc<PubSubStats>,
    envelope: Envelope,
    max_topic_bytes: usize,
    max_subscriptions: usize,
    max_data_bytes: usize,
    max_id_bytes: usize,
    close_slow: bool,
}

/// A running pub/sub service: its hub thread, and the routes that let clients in.
pub struct PubSub {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    recoveries: Vec<(Arc<str>, log::Recovery)>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub").finish_non_exhaustive()
    }
}

impl PubSub {
    /// Starts the hub with `storage`, opening and recovering every topic already in it (so a
    /// damaged log is reported at start), with the limits of `config`.
    pub fn start(config: &Config, storage: Storage) -> crate::Result<PubSub> {
        PubSub::start_with(config, storage, Envelope::Json)
    }

    /// Starts a broadcast service: every message a connection sends goes, as it is, to every
    /// connection of its routes (one topic, in memory, through the same fan-out).
    pub fn start_broadcast(config: &Config) -> crate::Result<PubSub> {
        PubSub::start_with(config, Storage::Memory, Envelope::Raw)
    }

    fn start_with(config: &Config, storage: Storage, envelope: Envelope) -> crate::Result<PubSub> {
        config.validate()?;
        let stats = Arc::new(PubSubStats::default());
        let hub::Started {
            publishes,
            control,
            thread,
            recoveries,
        } = hub::start(
            storage,
            envelope,
            HubLimits::from_config(config),
            config.pubsub_queue,
            stats.clone(),
        )
        .map_err(|error| crate::Error::io("starting the pub/sub log", error))?;
        Ok(PubSub {
            shared: Arc::new(Shared {
                publishes,
                control,
                stats,
                envelope,
                max_topic_bytes: config.pubsub_max_topic_bytes,
                max_subscriptions: config.pubsub_max_subscriptions,
                max_data_bytes: config.pubsub_max_data_bytes,
                max_id_bytes: config.pubsub_max_id_bytes,
                close_slow: config.pubsub_close_slow_subscribers,
            }),
            thread: Some(thread),
            recoveries,
        })
    }

    /// What recovery cut from the topics found at start, topic by topic (only those where it
    /// cut something or made a new epoch); each is also logged at warn.
    pub fn recoveries(&self) -> &[(Arc<str>, log::Recovery)] {
        &self.recoveries
    }

    /// A WebSocket route whose every connection is a pub/sub client (or, for a broadcast
    /// service, a broadcast member).
    pub fn route(&self, options: WebSocketOptions) -> WebSocketRoute {
        let shared = self.shared.clone();
        WebSocketRoute::new(options, move |_request| Client::new(shared.clone()))
    }

    /// The service's counters.
    pub fn stats(&self) -> Arc<PubSubStats> {
        self.shared.stats.clone()
    }

    /// Lets the hub finish what is queued, make every write durable, and stop; waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.shared.control.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PubSub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One subscription of a connection.
struct Subscription {
    topic: Arc<str>,
    /// The next offset to show; 0 until the hub has confirmed the subscription.
    next: u64,
    /// A history read is on its way.
    fetching: bool,
    /// Live messages are being skipped because output is over the limit: read history once
    /// it drains.
    lagging: bool,
}

/// A pub/sub connection's handler.
struct Client {
    shared: Arc<Shared>,
    subscriptions: Vec<Subscription>,
    /// This connection as the hub addresses it, once it has used the hub.
    address: Option<Address>,
    /// Subscribes sent and not yet answered: at most `max_subscriptions`, so a client that
    /// subscribes and unsubscribes in a loop cannot queue unbounded work for the hub.
    subscribes_in_flight: usize,
}

impl Client {
    fn new(shared: Arc<Shared>) -> Client {
        Client {
            shared,
            subscriptions: Vec::new(),
            address: None,
            subscribes_in_flight: 0,
        }
    }

    fn reply_error(
        &self,
        ws: &mut WebSocket<'_, '_>,
        code: &str,
        message: &str,
        topic: Option<&str>,
        id: Option<&str>,
    ) {
        if self.shared.envelope == Envelope::Json {
            reply(ws, &wire::error(code, message, topic, id));
        }
    }

    /// This connection as the hub addresses it; `None` under a driver without a loop.
    fn address(&mut self, ws: &mut WebSocket<'_, '_>) -> Option<Address> {
        if self.address.is_none() {
            let conn = ws.id();
            self.address = ws.context().mailbox().map(|mailbox| Address {
                mailbox: mailbox.clone(),
                conn,
            });
        }
        self.address.clone()
    }

    fn subscribe(&mut self, topic: &str, from: Option<Resume>, ws: &mut WebSocket<'_, '_>) {
        let Some(who) = self.address(ws) else {
            return self.reply_error(
                ws,
                "unavailable",
                "this connection cannot be reached by the pub/sub service",
                Some(topic),
                None,
            );
        };
        if self.subscribes_in_flight >= self.shared.max_subscriptions {
            return self.reply_error(
                ws,
                "overloaded",
                "too many subscribes are not answered yet",
                Some(topic),
                None,
            );
        }
        let topic: Arc<str> = match self.subscriptions.iter().position(|s| &*s.topic == topic) {
            Some(at) => {
                // Subscribing again starts over from what this request asks.
                let existing = self.subscriptions.remove(at);
                existing.topic
            }
            None if self.subscriptions.len() >= self.shared.max_subscriptions => {
                return self.reply_error(
                    ws,
                    "too_many_subscriptions",
                    "this connection subscribes to as many topics as it may",
                    Some(topic),
                    None,
                );
            }
            None => topic.into(),
        };
        self.subscriptions.push(Subscription {
            topic: topic.clone(),
            next: 0,
            fetching: true,
            lagging: false,
        });
        self.subscribes_in_flight += 1;
        let subscribe = Command::Subscribe {
            topic: topic.clone(),
            from,
            who,
        };
        if self.shared.control.send(subscribe).is_err() {
            // The hub has stopped (the service was shut down): say so rather than stay silent.
            self.subscribes_in_flight -= 1;
            self.subscriptions.retain(|s| s.topic != topic);
            self.reply_error(
                ws,
                "unavailable",
                "the pub/sub service has stopped",
                Some(&topic),
                None,
            );
        }
    }

    fn on_client_message(&mut self, text: &str, ws: &mut WebSocket<'_, '_>) {
        let message = match wire::parse(text) {
            Ok(message) => message,
            Err(wire::Refusal::BadJson) => {
                return self.reply_error(ws, "bad_json", "not JSON", None, None)
            }
            Err(wire::Refusal::BadMessage) => {
                return self.reply_error(
                    ws,
                    "bad_message",
                    "not a message of this protocol (subscribe, unsubscribe, publish)",
                    None,
                    None,
                )
            }
        };
        let topic = match &message {
            wire::ClientMessage::Subscribe { topic, .. }
            | wire::ClientMessage::Unsubscribe { topic }
            | wire::ClientMessage::Publish { topic, .. } => topic.as_ref(),
        };
        if !valid_topic(topic, self.shared.max_topic_bytes) {
            let id = match &message {
                wire::ClientMessage::Publish { id, .. } => id.as_deref(),
                _ => None,
            };
            let why = format!(
                "a topic is 1 to {} bytes of A-Z a-z 0-9 . _ : - and does not start with .",
                self.shared.max_topic_bytes
            );
            return self.reply_error(ws, "bad_topic", &why, Some(topic), id);
        }
        match message {
            wire::ClientMessage::Subscribe { topic, from } => {
                let from = match from {
                    None => None,
                    Some(from) => match from.epoch.as_deref().map(wire::parse_epoch) {
                        Some(None) => {
                            return self.reply_error(
                                ws,
                                "bad_message",
                                "an epoch is 16 hex digits",
                                Some(&topic),
                                None,
                            )
                        }
                        epoch => Some(Resume {
                            epoch: epoch.flatten(),
                            offset: from.offset,
                        }),
                    },
                };
                self.subscribe(&topic, from, ws);
            }
            wire::ClientMessage::Unsubscribe { topic } => {
                let Some(at) = self.subscriptions.iter().position(|s| *s.topic == *topic) else {
                    return self.reply_error(
                        ws,
                        "not_subscribed",
                        "this connection does not subscribe to that topic",
                        Some(&topic),
                        None,
                    );
                };
                let subscription = self.subscriptions.remove(at);
                if let Some(who) = self.address(ws) {
                    let _ = self.shared.control.send(Command::Unsubscribe {
                        topic: subscription.topic,
                        who,
                    });
                }
                reply(ws, &wire::unsubscribed(&topic));
            }
            wire::ClientMessage::Publish { topic, data, id } => {
                let id = id.as_deref();
                if data.len() > self.shared.max_data_bytes {
                    return self.reply_error(
                        ws,
                        "too_large",
                        "the message's data is over the limit",
                        Some(&topic),
                        id,
                    );
                }
                if id.is_some_and(|id| id.is_empty() || id.len() > self.shared.max_id_bytes) {
                    return self.reply_error(
                        ws,
                        "bad_message",
                        "an id is 1 to pubsub_max_id_bytes (128 by default) bytes",
                        Some(&topic),
                        id,
                    );
                }
                let who = self.address(ws);
                if who.is_none() {
                    return self.reply_error(
                        ws,
                        "unavailable",
                        "this connection cannot be reached by the pub/sub service",
                        Some(&topic),
                        id,
                    );
                }
                self.publish(
                    topic.as_ref().into(),
                    data.as_bytes().into(),
                    false,
                    id.map(Into::into),
                    who,
                    ws,
                );
            }
        }
    }

    fn publish(
        &mut self,
        topic: Arc<str>,
        data: Box<[u8]>,
        binary: bool,
        id: Option<Box<str>>,
        who: Option<Address>,
        ws: &mut WebSocket<'_, '_>,
    ) {
        let command = Command::Publish {
            topic,
            data,
            binary,
            id,
            who,
        };
        match self.shared.publishes.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(Command::Publish { topic, id, .. })) => {
                crate::metrics::shared_add(&self.shared.stats.refused, 1);
                self.reply_error(
                    ws,
                    "overloaded",
                    "the log's queue is full: publish again later",
                    Some(&topic),
                    id.as_deref(),
                );
            }
            Err(_) => self.reply_error(
                ws,
                "unavailable",
                "the pub/sub service has stopped",
                None,
                None,
            ),
        }
    }

    fn fetch(&self, at: usize) {
        let subscription = &self.subscriptions[at];
        if let Some(who) = self.address.clone() {
            let _ = self.shared.control.send(Command::Fetch {
                topic: subscription.topic.clone(),
                from: subscription.next,
                who,
            });
        }
    }

    /// Output waiting is over the route's soft limit (the server's high watermark): a
    /// subscriber stops being written live messages.
    fn over_limit(ws: &WebSocket<'_, '_>) -> bool {
        ws.buffered_amount() > ws.backpressure_soft_limit()
    }

    fn on_delivery(&mut self, delivery: &Delivery, ws: &mut WebSocket<'_, '_>) {
        match delivery {
            Delivery::Replies(lines) => {
                for line in lines {
                    reply(ws, line);
                }
            }
            Delivery::Refused { topic, line } => {
                self.subscribes_in_flight = self.subscribes_in_flight.saturating_sub(1);
                self.subscriptions.retain(|s| s.topic != *topic);
                if self.shared.envelope == Envelope::Json {
                    reply(ws, line);
                }
            }
            Delivery::Subscribed {
                topic,
                epoch,
                last,
                earliest,
                recovered,
                next,
            } => {
                self.subscribes_in_flight = self.subscribes_in_flight.saturating_sub(1);
                let Some(subscription) = self.subscriptions.iter_mut().find(|s| s.topic == *topic)
                else {
                    return;
                };
                subscription.next = *next;
                subscription.fetching = next <= last;
                if self.shared.envelope == Envelope::Json {
                    reply(
                        ws,
                        &wire::subscribed(topic, *epoch, *last, *recovered, *earliest),
                    );
                }
            }
            Delivery::Live { topic, messages } => self.on_live(topic, messages, ws),
            Delivery::Close { code, reason } => ws.close(*code, reason),
            Delivery::History {
                topic,
                messages,
                gap,
                more,
            } => {
                let Some(at) = self.subscriptions.iter().position(|s| s.topic == *topic) else {
                    return;
                };
                let subscription = &mut self.subscriptions[at];
                subscription.fetching = false;
                if let Some((from, to)) = *gap {
                    if subscription.next <= to {
                        if self.shared.envelope == Envelope::Json {
                            reply(ws, &wire::gap(topic, subscription.next.max(from), to));
                        } else {
                            // A broadcast member has no protocol to be told of a gap in: it
                            // is closed, as a subscriber that fell too far behind.
                            ws.close(CLOSE_SLOW_SUBSCRIBER, "fell behind the history held");
                            return;
                        }
                        subscription.next = to + 1;
                    }
                }
                let mut written = 0;
                let mut stopped = false;
                for message in messages {
                    if message.offset != subscription.next {
                        continue;
                    }
                    match ws.send_prepared(&message.frame) {
                        SendStatus::Sent | SendStatus::Backpressure => {
                            subscription.next += 1;
                            written += 1;
                        }
                        SendStatus::Dropped | SendStatus::Closed => {
                            stopped = true;
                            break;
                        }
                    }
                }
                crate::metrics::shared_add(&self.shared.stats.delivered, written);
                if *more || stopped {
                    if stopped || Self::over_limit(ws) {
                        self.subscriptions[at].lagging = true;
                        ws.notify_when_drained();
                    } else {
                        self.subscriptions[at].fetching = true;
                        self.fetch(at);
                    }
                }
            }
        }
    }

    fn on_live(
        &mut self,
        topic: &Arc<str>,
        messages: &[hub::Published],
        ws: &mut WebSocket<'_, '_>,
    ) {
        let Some(at) = self.subscriptions.iter().position(|s| s.topic == *topic) else {
            return; // unsubscribed meanwhile
        };
        let mut written = 0;
        for message in messages {
            let subscription = &mut self.subscriptions[at];
            if subscription.next == 0 || message.offset < subscription.next {
                continue; // not confirmed yet, or already shown (from history)
            }
            if subscription.fetching || subscription.lagging {
                break; // history brings it
            }
            if message.offset > subscription.next {
                // Missed while behind: read the log from where this subscriber is.
                subscription.fetching = true;
                self.fetch(at);
                break;
            }
            if Self::over_limit(ws) {
                crate::metrics::shared_add(&self.shared.stats.slow_subscribers, 1);
                if self.shared.close_slow {
                    ws.close(
                        CLOSE_SLOW_SUBSCRIBER,
                        "not reading its messages; resume from your offset",
                    );
                    break;
                }
                subscription.lagging = true;
                ws.notify_when_drained();
                break;
            }
            match ws.send_prepared(&message.frame) {
                SendStatus::Sent | SendStatus::Backpressure => {
                    subscription.next += 1;
                    written += 1;
                }
                SendStatus::Dropped => {
                    subscription.lagging = true;
                    ws.notify_when_drained();
                    break;
                }
                SendStatus::Closed => break,
            }
        }
        crate::metrics::shared_add(&self.shared.stats.delivered, written);
    }
}

impl WebSocketHandler for Client {
    fn on_open(&mut self, ws: &mut WebSocket<'_, '_>) {
        if self.shared.envelope == Envelope::Raw {
            self.subscribe(BROADCAST_TOPIC, None, ws);
        }
    }

    fn on_message(&mut self, message: Message<'_>, ws: &mut WebSocket<'_, '_>) {
        match (self.shared.envelope, message) {
            (Envelope::Json, Message::Text(text)) => self.on_client_message(text, ws),
            (Envelope::Json, Message::Binary(_)) => self.reply_error(
                ws,
                "bad_message",
                "messages are JSON text frames",
                None,
                None,
            ),
            (Envelope::Raw, message) => {
                let who = None;
                let binary = matches!(message, Message::Binary(_));
                self.publish(
                    BROADCAST_TOPIC.into(),
                    message.as_bytes().into(),
                    binary,
                    None,
                    who,
                    ws,
                );
            }
        }
    }

    fn on_notice(&mut self, notice: &Notice, ws: &mut WebSocket<'_, '_>) {
        if let Some(delivery) = notice.downcast_ref::<Delivery>() {
            self.on_delivery(delivery, ws);
        }
    }

    fn on_drain(&mut self, _ws: &mut WebSocket<'_, '_>) {
        for at in 0..self.subscriptions.len() {
            let subscription = &mut self.subscriptions[at];
            if subscription.lagging && !subscription.fetching {
                subscription.lagging = false;
                subscription.fetching = true;
                self.fetch(at);
            }
        }
    }

    fn on_close(&mut self, _code: u16, _reason: &str) {
        if let Some(who) = self.address.take() {
            let _ = self.shared.control.send(Command::Gone { who });
        }
    }
}
