//! The hub: one thread that owns every topic's log and knows every topic's subscribers.
//!
//! Connections talk to it with [`Command`]s over two channels: publishes over a bounded one
//! (a full queue is an immediate `overloaded` answer on the loop, never a wait), and what must
//! never be refused (subscribing, reading history, a connection's end) over an unbounded one
//! whose size the connections' own limits bound. The hub answers with [`Delivery`] notices
//! through each connection's loop [`Mailbox`]: never a lock an event loop waits on.
//!
//! One pass of the hub takes every command waiting (group commit): it appends every publish
//! to its topic's log, writes each topic touched with one `write`, and under
//! [`FsyncPolicy::Always`] makes them durable with one `fsync` per topic, then acknowledges
//! them and hands them to the subscribers. A message reaches subscribers only after its
//! durability point, so nobody sees a message a crash can take back. Each message is framed
//! once ([`Prepared`]), and one notice per loop carries the pass's messages of a topic to all
//! of that loop's subscribers, named by one shared list that changes only when they do.
//!
//! Because one thread sends every notice, a connection sees them in the order the hub made
//! them: a subscription's `subscribed` answer comes before its first message, and a history
//! read covers everything up to the moment it was made, the live messages after it following
//! without a gap or an overlap.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};

use super::backplane::{Backplane, Failure, Heard, Outgoing};
use super::log::{DiskLog, LogLimits, MemoryLog, Record, Recovery};
use super::wire;
use super::{Envelope, FsyncPolicy, Storage};
use crate::config::Config;
use crate::metrics::{self, Histogram};
use crate::protocol::ws::{Message, Prepared};
use crate::protocol::{Mailbox, Notice, Recipients};
use crate::reactor::token::ConnId;

/// Commands taken in one pass at most (the rest wait for the next pass).
const PASS_COMMANDS: usize = 8192;
/// Payload read from Redis at most by one fill of a topic (what its channel missed); the rest
/// is read in the next passes, so a long outage is caught up in bounded steps.
const FILL_BYTES: usize = 4 << 20;
/// How often retention is enforced.
const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// A connection, as the hub addresses it.
#[derive(Clone, Debug)]
pub(crate) struct Address {
    pub(crate) mailbox: Mailbox,
    pub(crate) conn: ConnId,
}

impl Address {
    fn key(&self) -> (u64, ConnId) {
        (self.mailbox.loop_id(), self.conn)
    }

    fn send(&self, delivery: Delivery) {
        self.mailbox
            .send(Recipients::One(self.conn), Arc::new(delivery));
    }
}

/// Where a subscription asks to start: after `offset` of `epoch` (`None`: any, meaning the
/// beginning when `offset` is 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resume {
    pub(crate) epoch: Option<u64>,
    pub(crate) offset: u64,
}

/// What a connection asks of the hub.
pub(crate) enum Command {
    Subscribe {
        topic: Arc<str>,
        from: Option<Resume>,
        who: Address,
    },
    Unsubscribe {
        topic: Arc<str>,
        who: Address,
    },
    /// Read the topic's history from `from` for this subscriber.
    Fetch {
        topic: Arc<str>,
        from: u64,
        who: Address,
    },
    /// The connection has closed: forget its subscriptions.
    Gone {
        who: Address,
    },
    Publish {
        topic: Arc<str>,
        data: Box<[u8]>,
        binary: bool,
        id: Option<Box<str>>,
        /// Where the ack goes; `None` asks for none.
        who: Option<Address>,
    },
    /// Finish what is queued, make everything durable, and end the thread.
    Stop,
}

/// A message framed for its subscribers.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) offset: u64,
    pub(crate) frame: Prepared,
}

/// What the hub sends to connections, as a [`Notice`].
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A subscription has begun: `next` is the first offset it will be shown.
    Subscribed {
        topic: Arc<str>,
        epoch: u64,
        last: u64,
        earliest: u64,
        recovered: bool,
        next: u64,
    },
    /// Messages that reached their durability point, for every subscriber of the loop.
    Live {
        topic: Arc<str>,
        messages: Vec<Published>,
    },
    /// History read for one subscriber: `gap` names offsets no longer held that were skipped;
    /// `more` says there is more history after these.
    History {
        topic: Arc<str>,
        messages: Vec<Published>,
        gap: Option<(u64, u64)>,
        more: bool,
    },
    /// A subscription could not begin (the error, as JSON text).
    Refused { topic: Arc<str>, line: String },
    /// Answers for one connection (acks, errors), in order, as JSON text.
    Replies(Vec<String>),
    /// Close the connection with this WebSocket code: its subscription cannot go on here
    /// (its client resumes from its offset, and is told what it missed).
    Close { code: u16, reason: &'static str },
}

/// The close code for subscribers of a topic whose log was reset (a Redis server that lost
/// it): 1012, service restart.
const CLOSE_RESET: u16 = 1012;
/// The close code for a subscriber whose history cannot be read now: 1013, try again later.
const CLOSE_TRY_AGAIN: u16 = 1013;

/// A topic's storage.
enum Store {
    Disk(DiskLog),
    Memory(MemoryLog),
    /// In Redis, through the backplane: what this node knows of it.
    Remote {
        shard: usize,
        epoch: u64,
        /// The oldest offset Redis held when last asked.
        first: u64,
        /// This node listens to the topic's channel (it has subscribers here).
        listening: bool,
    },
}

impl Store {
    fn epoch(&self) -> u64 {
        match self {
            Store::Disk(log) => log.epoch(),
            Store::Memory(log) => log.epoch(),
            Store::Remote { epoch, .. } => *epoch,
        }
    }

    fn last_offset(&self) -> u64 {
        match self {
            Store::Disk(log) => log.last_offset(),
            Store::Memory(log) => log.last_offset(),
            // Offsets are given out by Redis; nothing is appended here.
            Store::Remote { .. } => 0,
        }
    }

    fn first_offset(&self) -> u64 {
        match self {
            Store::Disk(log) => log.first_offset(),
            Store::Memory(log) => log.first_offset(),
            Store::Remote { first, .. } => *first,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Store::Disk(log) => log.bytes(),
            Store::Memory(log) => log.bytes(),
            Store::Remote { .. } => 0,
        }
    }
}

/// A topic's subscribers on one loop.
struct LoopSubscribers {
    mailbox: Mailbox,
    conns: Vec<ConnId>,
    /// Where each of `conns` is, so a subscriber leaves in O(1) however many there are.
    positions: HashMap<ConnId, usize>,
    /// `conns` as the shared list notices name; rebuilt after a change, when next needed.
    shared: Option<Arc<[ConnId]>>,
}

struct Topic {
    name: Arc<str>,
    store: Store,
    /// The newest offset subscribers may be shown (it reached its durability point).
    durable: u64,
    loops: Vec<LoopSubscribers>,
    /// Appended this pass and not yet durable: framed for delivery.
    pending: Vec<Published>,
    /// Appended this pass: the acks owed once durable.
    acks: Vec<(Address, String)>,
    /// Records written to the file and not yet synced (interval policy).
    unsynced: bool,
    /// A write or sync failed: nothing more is stored until a restart recovers the log.
    failed: bool,
    /// Durable messages held back for [`Config::pubsub_delivery_delay`], and since when.
    held: Vec<Published>,
    held_since: Option<Instant>,
}

/// Counters of the pub/sub service, shared by the hub and the connections.
#[derive(Debug, Default)]
pub struct PubSubStats {
    pub(crate) topics: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) acknowledged: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) frames_prepared: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_latency: Histogram,
    pub(crate) bytes_stored: AtomicU64,
    pub(crate) slow_subscribers: AtomicU64,
    pub(crate) history_reads: AtomicU64,
    pub(crate) resumes_recovered: AtomicU64,
    pub(crate) resumes_lost: AtomicU64,
    pub(crate) storage_errors: AtomicU64,
    pub(crate) backplane_shards: AtomicU64,
    pub(crate) backplane_shards_down: AtomicU64,
    pub(crate) backplane_connects: AtomicU64,
    pub(crate) backplane_listener_connects: AtomicU64,
    pub(crate) backplane_errors: AtomicU64,
    pub(crate) backplane_publishes: AtomicU64,
    pub(crate) backplane_received: AtomicU64,
    pub(crate) backplane_reads: AtomicU64,
    pub(crate) backplane_roundtrip: Histogram,
}

impl PubSubStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Messages stored (each once, repeats not counted).
    pub fn published(&self) -> u64 {
        Self::get(&self.published)
    }

    /// Messages written to subscribers.
    pub fn delivered(&self) -> u64 {
        Self::get(&self.delivered)
    }

    /// Frames prepared for delivery (one per message per pass, however many subscribers).
    pub fn frames_prepared(&self) -> u64 {
        Self::get(&self.frames_prepared)
    }

    /// Times a subscriber fell behind its output limit (and caught up from the log, or was
    /// closed).
    pub fn slow_subscribers(&self) -> u64 {
        Self::get(&self.slow_subscribers)
    }

    /// fsync calls made.
    pub fn fsyncs(&self) -> u64 {
        Self::get(&self.fsyncs)
    }

    /// False while a Redis server of the backplane cannot be reached (always true without a
    /// backplane): what `/readyz` reports.
    pub fn backplane_ready(&self) -> bool {
        Self::get(&self.backplane_shards_down) == 0
    }

    /// The counters in Prometheus text format, names prefixed `socketserver_pubsub_`.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, &AtomicU64)]| {
            metrics::family(&mut out, &format!("pubsub_{name}"), kind, help);
            for (labels, value) in samples {
                let _ = writeln!(
                    out,
                    "socketserver_pubsub_{name}{labels} {}",
                    Self::get(value)
                );
            }
        };
        metric("topics", "gauge", "Topics held.", &[("", &self.topics)]);
        metric(
            "subscriptions",
            "gauge",
            "Subscriptions open now.",
            &[("", &self.subscriptions)],
        );
        metric(
            "published_total",
            "counter",
            "Publishes, by outcome.",
            &[
                ("{outcome=\"stored\"}", &self.published),
                ("{outcome=\"duplicate\"}", &self.duplicates),
                ("{outcome=\"refused\"}", &self.refused),
            ],
        );
        metric(
            "acknowledged_total",
            "counter",
            "Publishes acknowledged.",
            &[("", &self.acknowledged)],
        );
        metric(
            "delivered_total",
            "counter",
            "Messages written to subscribers.",
            &[("", &self.delivered)],
        );
        metric(
            "frames_prepared_total",
            "counter",
            "Frames encoded for delivery (one per message, shared by its subscribers).",
            &[("", &self.frames_prepared)],
        );
        metric(
            "fsyncs_total",
            "counter",
            "fsync calls.",
            &[("", &self.fsyncs)],
        );
        metric(
            "stored_bytes",
            "gauge",
            "Bytes held by the topics' logs.",
            &[("", &self.bytes_stored)],
        );
        metric(
            "slow_subscribers_total",
            "counter",
            "Times a subscriber passed its output limit.",
            &[("", &self.slow_subscribers)],
        );
        metric(
            "history_reads_total",
            "counter",
            "History reads for subscribers catching up.",
            &[("", &self.history_reads)],
        );
        metric(
            "resumes_total",
            "counter",
            "Subscriptions that asked to resume, by outcome.",
            &[
                ("{recovered=\"true\"}", &self.resumes_recovered),
                ("{recovered=\"false\"}", &self.resumes_lost),
            ],
        );
        metric(
            "storage_errors_total",
            "counter",
            "Log writes or syncs that failed.",
            &[("", &self.storage_errors)],
        );
        metric(
            "backplane_servers",
            "gauge",
            "Redis servers of the backplane (0 without one), and those down now.",
            &[
                ("{state=\"configured\"}", &self.backplane_shards),
                ("{state=\"down\"}", &self.backplane_shards_down),
            ],
        );
        metric(
            "backplane_connects_total",
            "counter",
            "Connections made to the backplane's Redis servers, by use.",
            &[
                ("{use=\"commands\"}", &self.backplane_connects),
                ("{use=\"listener\"}", &self.backplane_listener_connects),
            ],
        );
        metric(
            "backplane_errors_total",
            "counter",
            "Backplane calls that failed (the connection is made again if it was lost).",
            &[("", &self.backplane_errors)],
        );
        metric(
            "backplane_publishes_total",
            "counter",
            "Publishes sent to Redis.",
            &[("", &self.backplane_publishes)],
        );
        metric(
            "backplane_received_total",
            "counter",
            "Messages heard on the topics' Redis channels.",
            &[("", &self.backplane_received)],
        );
        metric(
            "backplane_reads_total",
            "counter",
            "Reads of a topic's Redis stream (history, and filling what a channel missed).",
            &[("", &self.backplane_reads)],
        );
        metrics::histogram(
            &mut out,
            "pubsub_backplane_roundtrip_seconds",
            "Time one round trip to Redis took (a pass's pipeline of publishes counts once).",
            &self.backplane_roundtrip.snapshot(),
        );
        metrics::histogram(
            &mut out,
            "pubsub_fsync_duration_seconds",
            "Time one fsync of a topic's log took.",
            &self.fsync_latency.snapshot(),
        );
        out
    }
}

/// The limits the hub keeps, from the [`Config`].
#[derive(Clone, Debug)]
pub(crate) struct HubLimits {
    pub(crate) max_topics: usize,
    pub(crate) log: LogLimits,
    pub(crate) dedupe_window: Duration,
    pub(crate) dedupe_ids: usize,
    pub(crate) memory_messages: usize,
    pub(crate) memory_bytes: usize,
    pub(crate) fetch_bytes: usize,
    pub(crate) delivery_delay: Duration,
    pub(crate) backplane_timeout: Duration,
}

impl HubLimits {
    pub(crate) fn from_config(config: &Config) -> HubLimits {
        HubLimits {
            max_topics: config.pubsub_max_topics,
            log: LogLimits {
                segment_bytes: config.pubsub_segment_bytes,
                retention_bytes: config.pubsub_retention_bytes,
                retention_ms: u64::try_from(config.pubsub_retention.as_millis())
                    .unwrap_or(u64::MAX),
                max_record_bytes: config.pubsub_max_data_bytes + config.pubsub_max_id_bytes + 64,
            },
            dedupe_window: config.pubsub_dedupe_window,
            dedupe_ids: config.pubsub_dedupe_ids,
            memory_messages: config.pubsub_memory_messages,
            memory_bytes: config.pubsub_memory_bytes,
            fetch_bytes: config.pubsub_fetch_bytes,
            delivery_delay: config.pubsub_delivery_delay,
            backplane_timeout: config.backplane_timeout,
        }
    }
}

/// A publish id remembered for the dedupe window.
struct Remembered {
    topic: Arc<str>,
    id: Box<str>,
    at_ms: u64,
}

/// The hub's state, owned by its thread.
pub(crate) struct Hub {
    storage: Storage,
    envelope: Envelope,
    limits: HubLimits,
    topics: HashMap<Arc<str>, Topic>,
    /// The topics each connection subscribes to, to forget them when it goes.
    subscriptions: HashMap<(u64, ConnId), Vec<Arc<str>>>,
    /// Publish ids within the dedupe window: (topic, id) to offset.
    seen: HashMap<(Arc<str>, Box<str>), u64>,
    /// The same, oldest first, to forget them in order.
    seen_order: VecDeque<Remembered>,
    stats: Arc<PubSubStats>,
    /// Topics touched in this pass.
    touched: Vec<Arc<str>>,
    last_sync: Instant,
    last_retention: Instant,
    /// What recovery cut from topics opened at start.
    recoveries: Vec<(Arc<str>, Recovery)>,
    /// Topics holding messages back for the delivery delay, oldest first.
    holding: VecDeque<Arc<str>>,
    /// The Redis servers, under [`Storage::Redis`].
    backplane: Option<Backplane>,
    /// This pass's publishes to Redis topics, in order.
    outgoing: Vec<Pending>,
    /// Redis topics with more to read than one fill takes: read on in the next pass.
    refill: Vec<Arc<str>>,
}

/// A publish to a Redis topic, waiting for its pass's pipeline.
struct Pending {
    topic: Arc<str>,
    shard: usize,
    data: Box<[u8]>,
    binary: bool,
    id: Option<Box<str>>,
    who: Option<Address>,
    timestamp_ms: u64,
}

/// What [`start`] hands back: the two channels' senders, the thread, what recovery did.
pub(crate) struct Started {
    pub(crate) publishes: Sender<Command>,
    pub(crate) control: Sender<Command>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) recoveries: Vec<(Arc<str>, Recovery)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Starts the hub's thread; returns the two channels' senders.
pub(crate) fn start(
    storage: Storage,
    envelope: Envelope,
    limits: HubLimits,
    queue: usize,
    stats: Arc<PubSubStats>,
) -> std::io::Result<Started> {
    let (publishes, publish_queue) = crossbeam_channel::bounded(queue);
    let (control, control_queue) = crossbeam_channel::unbounded();
    // What the listeners hear: bounded, so a hub that falls behind slows them down (and
    // Redis' output limit for subscribers cuts one that falls too far; it then reconnects and
    // the hub fills from the stream) instead of queueing without bound here.
    let (heard_sender, heard_queue) = crossbeam_channel::bounded(queue);
    let backplane = match &storage {
        Storage::Redis { servers } => {
            let mut backplane = Backplane::start(
                servers,
                limits.backplane_timeout,
                limits.memory_messages,
                limits.dedupe_window,
                stats.clone(),
                &heard_sender,
            )?;
            backplane.reconnect_due();
            Some(backplane)
        }
        _ => None,
    };
    drop(heard_sender);
    let mut hub = Hub {
        storage,
        envelope,
        limits,
        topics: HashMap::new(),
        subscriptions: HashMap::new(),
        seen: HashMap::new(),
        seen_order: VecDeque::new(),
        stats,
        touched: Vec::new(),
        last_sync: Instant::now(),
        last_retention: Instant::now(),
        recoveries: Vec::new(),
        holding: VecDeque::new(),
        backplane,
        outgoing: Vec::new(),
        refill: Vec::new(),
    };
    hub.open_existing_topics()?;
    let recoveries = std::mem::take(&mut hub.recoveries);
    let thread = std::thread::Builder::new()
        .name("socketserver-pubsub".into())
        .spawn(move || {
            hub.run(&control_queue, &publish_queue, heard_queue);
            if let Some(mut backplane) = hub.backplane.take() {
                backplane.stop();
            }
        })?;
    Ok(Started {
        publishes,
        control,
        thread,
        recoveries,
    })
}

impl Hub {
    /// Opens (and recovers) every topic found in the data directory, so their epochs, offsets
    /// and publish ids are known before the first client comes.
    fn open_existing_topics(&mut self) -> std::io::Result<()> {
        let Storage::Disk { dir, .. } = &self.storage else {
            return Ok(());
        };
        let topics_dir = dir.join("topics");
        std::fs::create_dir_all(&topics_dir)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&topics_dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    if super::valid_topic(name, usize::MAX) {
                        names.push(name.to_string());
                    }
                }
            }
        }
        names.sort();
        for name in names {
            if let Err((_, message)) = self.topic(&Arc::from(name.as_str())) {
                return Err(std::io::Error::other(format!("topic {name}: {message}")));
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        control: &Receiver<Command>,
        publishes: &Receiver<Command>,
        heard: Receiver<Heard>,
    ) {
        // Without a backplane nobody sends on `heard`, and a channel with no sender is always
        // ready (disconnected): it is replaced by one that never is, or the hub would spin.
        let mut heard = if self.backplane.is_some() {
            heard
        } else {
            crossbeam_channel::never()
        };
        let mut pass = Vec::with_capacity(1024);
        let mut stopping = false;
        while !stopping {
            let wait = self.next_wait();
            crossbeam_channel::select! {
                recv(heard) -> news => match news {
                    Ok(news) => self.hear(news),
                    Err(_) => heard = crossbeam_channel::never(),
                },
                recv(control) -> command => match command {
                    Ok(command) => pass.push(command),
                    Err(_) => stopping = true,
                },
                recv(publishes) -> command => match command {
                    Ok(command) => pass.push(command),
                    Err(_) => stopping = true,
                },
                default(wait) => {},
            }
            // Everything waiting joins this pass: what must not wait first, then publishes.
            while pass.len() < PASS_COMMANDS {
                match control.try_recv() {
                    Ok(command) => pass.push(command),
                    Err(_) => break,
                }
            }
            while pass.len() < PASS_COMMANDS {
                match publishes.try_recv() {
                    Ok(command) => pass.push(command),
                    Err(_) => break,
                }
            }
            for _ in 0..PASS_COMMANDS {
                match heard.try_recv() {
                    Ok(news) => self.hear(news),
                    Err(_) => break,
                }
            }
            for command in pass.drain(..) {
                match command {
                    Command::Stop => stopping = true,
                    command => self.handle(command),
                }
            }
            for name in std::mem::take(&mut self.refill) {
                let _ = self.refresh(&name);
            }
            self.send_to_redis();
            self.commit();
            self.reconnect_backplane();
            self.release_held(stopping);
            self.tick();
        }
        self.sync_all();
        // The listeners may be waiting to hand something over: stop taking before they are
        // stopped and waited for.
        drop(heard);
        log::debug!("pub/sub hub stopped");
    }

    /// Delivers what was held back for the delivery delay once it has waited that long (all
    /// of it when `all`).
    fn release_held(&mut self, all: bool) {
        while let Some(name) = self.holding.front() {
            let Some(topic) = self.topics.get_mut(name) else {
                self.holding.pop_front();
                continue;
            };
            let due = topic
                .held_since
                .is_none_or(|since| since.elapsed() >= self.limits.delivery_delay);
            if !due && !all {
                break;
            }
            topic.held_since = None;
            let held = std::mem::take(&mut topic.held);
            deliver(topic, held);
            self.holding.pop_front();
        }
    }

    /// How long the hub may sleep: until held messages are due, the next interval sync, or
    /// retention.
    fn next_wait(&self) -> Duration {
        if !self.refill.is_empty() {
            return Duration::ZERO;
        }
        let mut wait = RETENTION_EVERY.saturating_sub(self.last_retention.elapsed());
        if let Some(at) = self.backplane.as_ref().and_then(Backplane::next_retry) {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        if let Some(since) = self
            .holding
            .front()
            .and_then(|name| self.topics.get(name))
            .and_then(|topic| topic.held_since)
        {
            wait = wait.min(self.limits.delivery_delay.saturating_sub(since.elapsed()));
        }
        if let Storage::Disk {
            fsync: FsyncPolicy::Interval(every),
            ..
        } = self.storage
        {
            if self.topics.values().any(|topic| topic.unsynced) {
                wait = wait.min(every.saturating_sub(self.last_sync.elapsed()));
            }
        }
        wait
    }

    /// Periodic work: the interval sync, retention.
    fn tick(&mut self) {
        if let Storage::Disk {
            fsync: FsyncPolicy::Interval(every),
            ..
        } = self.storage
        {
            if self.last_sync.elapsed() >= every {
                self.sync_all();
            }
        }
        if self.last_retention.elapsed() >= RETENTION_EVERY {
            self.last_retention = Instant::now();
            let now = now_ms();
            let mut stored = 0;
            for topic in self.topics.values_mut() {
                if let Store::Disk(log) = &mut topic.store {
                    if let Err(error) = log.enforce_retention(now) {
                        log::warn!("topic {}: retention: {error}", topic.name);
                    }
                }
                stored += topic.store.bytes();
            }
            self.stats.bytes_stored.store(stored, Ordering::Relaxed);
            self.forget_old_ids(now);
        }
    }

    /// Syncs every topic written since its last sync.
    fn sync_all(&mut self) {
        self.last_sync = Instant::now();
        for topic in self.topics.values_mut() {
            if topic.unsynced {
                topic.unsynced = false;
                sync_topic(topic, &self.stats);
            }
        }
    }

    fn forget_old_ids(&mut self, now: u64) {
        let window = u64::try_from(self.limits.dedupe_window.as_millis()).unwrap_or(u64::MAX);
        while let Some(oldest) = self.seen_order.front() {
            let expired = now.saturating_sub(oldest.at_ms) > window;
            if !expired && self.seen_order.len() <= self.limits.dedupe_ids {
                break;
            }
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&(old.topic, old.id));
            }
        }
    }

    fn remember(&mut self, topic: &Arc<str>, id: Box<str>, offset: u64, at_ms: u64) {
        if self.limits.dedupe_window.is_zero() {
            return;
        }
        self.seen_order.push_back(Remembered {
            topic: topic.clone(),
            id: id.clone(),
            at_ms,
        });
        self.seen.insert((topic.clone(), id), offset);
    }

    /// The topic named, opened (or created) if need be.
    fn topic(&mut self, name: &Arc<str>) -> Result<&mut Topic, (&'static str, String)> {
        if !self.topics.contains_key(name) {
            if self.topics.len() >= self.limits.max_topics {
                self.forget_an_idle_remote_topic();
            }
            if self.topics.len() >= self.limits.max_topics {
                return Err((
                    "too_many_topics",
                    "this server holds as many topics as it may".into(),
                ));
            }
            let window_start = now_ms().saturating_sub(
                u64::try_from(self.limits.dedupe_window.as_millis()).unwrap_or(u64::MAX),
            );
            let mut recent = Vec::new();
            let mut remote_last = None;
            let store = match &self.storage {
                Storage::Disk { dir, .. } => {
                    let path: PathBuf = dir.join("topics").join(&**name);
                    let opened = DiskLog::open(&path, self.limits.log, window_start, |record| {
                        if let Some(id) = &record.id {
                            recent.push((id.clone(), record.offset, record.timestamp_ms));
                        }
                    });
                    let (log, recovery) = opened.map_err(|error| {
                        log::error!("topic {name}: cannot open its log: {error}");
                        (
                            "storage",
                            format!("the topic's log cannot be opened: {error}"),
                        )
                    })?;
                    if let Some(reason) = recovery.cut_reason {
                        log::warn!(
                            "topic {name}: recovery cut {} bytes at {reason}{}",
                            recovery.truncated_bytes,
                            if recovery.new_epoch {
                                "; new epoch"
                            } else {
                                ""
                            }
                        );
                    } else if recovery.new_epoch {
                        log::warn!("topic {name}: records may be missing; new epoch");
                    }
                    if recovery != Recovery::default() {
                        self.recoveries.push((name.clone(), recovery));
                    }
                    Store::Disk(log)
                }
                Storage::Memory => Store::Memory(MemoryLog::new(
                    self.limits.memory_messages,
                    self.limits.memory_bytes,
                )),
                Storage::Redis { .. } => {
                    let Some(backplane) = self.backplane.as_mut() else {
                        return Err(("storage", "the backplane is not running".into()));
                    };
                    let shard = backplane.shard_of(name);
                    let meta = backplane.meta(shard, name).map_err(refusal)?;
                    remote_last = Some(meta.last);
                    Store::Remote {
                        shard,
                        epoch: meta.epoch,
                        first: meta.first,
                        listening: false,
                    }
                }
            };
            for (id, offset, at_ms) in recent {
                self.remember(name, id, offset, at_ms);
            }
            let durable = remote_last.unwrap_or_else(|| store.last_offset());
            metrics::shared_add(&self.stats.topics, 1);
            self.topics.insert(
                name.clone(),
                Topic {
                    name: name.clone(),
                    store,
                    durable,
                    loops: Vec::new(),
                    pending: Vec::new(),
                    acks: Vec::new(),
                    unsynced: false,
                    failed: false,
                    held: Vec::new(),
                    held_since: None,
                },
            );
        }
        self.topics
            .get_mut(name)
            .ok_or(("storage", "the topic vanished".into()))
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe { topic, from, who } => self.subscribe(topic, from, who),
            Command::Unsubscribe { topic, who } => self.unsubscribe(&topic, &who),
            Command::Fetch { topic, from, who } => {
                if let Some(delivery) = self.read_remote_history(&topic, from) {
                    who.send(delivery);
                } else if let Some(found) = self.topics.get(&topic) {
                    let delivery = read_history(
                        found,
                        from,
                        self.limits.fetch_bytes,
                        self.envelope,
                        &self.stats,
                    );
                    who.send(delivery);
                }
            }
            Command::Gone { who } => {
                if let Some(topics) = self.subscriptions.remove(&who.key()) {
                    for topic in topics {
                        self.remove_subscriber(&topic, &who);
                    }
                }
            }
            Command::Publish {
                topic,
                data,
                binary,
                id,
                who,
            } => self.publish(topic, data, binary, id, who),
            Command::Stop => {}
        }
    }

    fn subscribe(&mut self, name: Arc<str>, from: Option<Resume>, who: Address) {
        let stats = self.stats.clone();
        let fetch_bytes = self.limits.fetch_bytes;
        let envelope = self.envelope;
        let refuse = |who: &Address, (code, message): (&str, String)| {
            who.send(Delivery::Refused {
                topic: name.clone(),
                line: wire::error(code, &message, Some(&name), None),
            });
        };
        let created = !self.topics.contains_key(&name);
        if let Err(refused) = self.topic(&name) {
            return refuse(&who, refused);
        }
        // A Redis topic this node does not listen to yet may have moved on since it was last
        // asked, and a resume must know the oldest offset Redis holds now (trimming moves it
        // without a word): its state is read again before the subscription begins.
        let listening = self.remote_listening(&name);
        if !created && (listening == Some(false) || (listening.is_some() && from.is_some())) {
            if let Err(refused) = self.refresh(&name) {
                return refuse(&who, refused);
            }
        }
        let remote = self.remote_listening(&name).is_some();
        let Some(topic) = self.topics.get_mut(&name) else {
            return;
        };
        let epoch = topic.store.epoch();
        let earliest = topic.store.first_offset();
        let last = topic.durable;
        let (next, recovered) = match from {
            None => (last + 1, true),
            Some(resume) => {
                let epoch_ok =
                    resume.epoch == Some(epoch) || (resume.epoch.is_none() && resume.offset == 0);
                let held = resume.offset + 1 >= earliest && resume.offset <= last;
                let recovered = epoch_ok && held;
                let counter = if recovered {
                    &stats.resumes_recovered
                } else {
                    &stats.resumes_lost
                };
                metrics::shared_add(counter, 1);
                if recovered {
                    (resume.offset + 1, true)
                } else {
                    (last + 1, false)
                }
            }
        };
        let added = add_subscriber(topic, &who);
        who.send(Delivery::Subscribed {
            topic: name.clone(),
            epoch,
            last,
            earliest,
            recovered,
            next,
        });
        if let Store::Remote {
            shard, listening, ..
        } = &mut topic.store
        {
            if !*listening {
                *listening = true;
                if let Some(backplane) = &self.backplane {
                    backplane.listen(*shard, &name);
                }
            }
        }
        if next <= last && !remote {
            who.send(read_history(topic, next, fetch_bytes, envelope, &stats));
        } else if next <= last {
            if let Some(history) = self.read_remote_history(&name, next) {
                who.send(history);
            }
        }
        if added {
            metrics::shared_add(&stats.subscriptions, 1);
            self.subscriptions.entry(who.key()).or_default().push(name);
        }
    }

    fn unsubscribe(&mut self, name: &Arc<str>, who: &Address) {
        if let Some(topics) = self.subscriptions.get_mut(&who.key()) {
            topics.retain(|topic| topic != name);
        }
        self.remove_subscriber(name, who);
    }

    fn remove_subscriber(&mut self, name: &Arc<str>, who: &Address) {
        let Some(topic) = self.topics.get_mut(name) else {
            return;
        };
        for subscribers in &mut topic.loops {
            if subscribers.mailbox.loop_id() == who.mailbox.loop_id() {
                if let Some(at) = subscribers.positions.remove(&who.conn) {
                    subscribers.conns.swap_remove(at);
                    if let Some(&moved) = subscribers.conns.get(at) {
                        subscribers.positions.insert(moved, at);
                    }
                    subscribers.shared = None;
                    metrics::shared_sub(&self.stats.subscriptions, 1);
                }
            }
        }
        topic
            .loops
            .retain(|subscribers| !subscribers.conns.is_empty());
        if topic.loops.is_empty() {
            if let Store::Remote {
                shard, listening, ..
            } = &mut topic.store
            {
                if *listening {
                    *listening = false;
                    if let Some(backplane) = &self.backplane {
                        backplane.unlisten(*shard, name);
                    }
                }
            }
        }
    }

    fn publish(
        &mut self,
        name: Arc<str>,
        data: Box<[u8]>,
        binary: bool,
        id: Option<Box<str>>,
        who: Option<Address>,
    ) {
        let refuse = |who: &Option<Address>,
                      stats: &PubSubStats,
                      code: &str,
                      message: &str,
                      id: Option<&str>| {
            metrics::shared_add(&stats.refused, 1);
            if let Some(who) = who {
                who.send(Delivery::Replies(vec![wire::error(
                    code,
                    message,
                    Some(&name),
                    id,
                )]));
            }
        };
        if self.backplane.is_some() {
            return self.publish_remote(name, data, binary, id, who);
        }
        if let Some(id) = &id {
            if let Some(&offset) = self.seen.get(&(name.clone(), id.clone())) {
                // A repeat: acknowledged with the first one's offset once that is durable.
                metrics::shared_add(&self.stats.duplicates, 1);
                if let Some(topic) = self.topics.get_mut(&name) {
                    if let Some(who) = who {
                        let ack = wire::ack(Some(id), &name, offset);
                        if offset <= topic.durable {
                            who.send(Delivery::Replies(vec![ack]));
                        } else {
                            topic.acks.push((who, ack));
                        }
                    }
                }
                return;
            }
        }
        let stats = self.stats.clone();
        let envelope = self.envelope;
        let timestamp = now_ms();
        let topic = match self.topic(&name) {
            Ok(topic) => topic,
            Err((code, message)) => return refuse(&who, &stats, code, &message, id.as_deref()),
        };
        if topic.failed {
            return refuse(
                &who,
                &stats,
                "storage",
                "the topic's log cannot be written",
                id.as_deref(),
            );
        }
        let epoch = topic.store.epoch();
        let frame = prepare(
            envelope,
            &name,
            epoch,
            topic.store.last_offset() + 1,
            &data,
            binary,
        );
        let record = Record {
            offset: 0, // the log gives it the next one
            timestamp_ms: timestamp,
            id: id.clone(),
            data,
            binary,
        };
        let offset = match &mut topic.store {
            Store::Disk(log) => log.append(record),
            Store::Memory(log) => log.append(record),
            // Redis topics take `publish_remote`: the hub appends nothing of theirs.
            Store::Remote { .. } => return,
        };
        metrics::shared_add(&stats.frames_prepared, 1);
        topic.pending.push(Published { offset, frame });
        if let Some(who) = who {
            topic
                .acks
                .push((who, wire::ack(id.as_deref(), &name, offset)));
        }
        if !self.touched.contains(&name) {
            self.touched.push(name.clone());
        }
        if let Some(id) = id {
            self.remember(&name, id, offset, timestamp);
        }
    }

    /// Forgets one Redis topic nobody here subscribes to, to make room for another: its log is
    /// in Redis, and what this node knew of it is read again when it is next used. (A topic
    /// stored here is never forgotten: its log is this node's.)
    fn forget_an_idle_remote_topic(&mut self) {
        let idle = self.topics.iter().find_map(|(name, topic)| {
            let forgettable = matches!(
                topic.store,
                Store::Remote {
                    listening: false,
                    ..
                }
            ) && topic.loops.is_empty()
                && topic.pending.is_empty()
                && topic.held.is_empty()
                && !self.touched.contains(name)
                && !self.refill.contains(name);
            forgettable.then(|| name.clone())
        });
        if let Some(name) = idle {
            self.topics.remove(&name);
            metrics::shared_sub(&self.stats.topics, 1);
        }
    }

    /// For a Redis topic, whether this node listens to its channel; `None` for a topic stored
    /// here (or not open).
    fn remote_listening(&self, name: &Arc<str>) -> Option<bool> {
        match self.topics.get(name)?.store {
            Store::Remote { listening, .. } => Some(listening),
            _ => None,
        }
    }

    /// Reads a Redis topic's state again: a new epoch resets it, and what was stored since this
    /// node last heard is read from the stream and handed to its subscribers in order.
    fn refresh(&mut self, name: &Arc<str>) -> Result<(), (&'static str, String)> {
        let Some(Topic {
            store: Store::Remote { shard, .. },
            ..
        }) = self.topics.get(name)
        else {
            return Ok(());
        };
        let shard = *shard;
        let Some(backplane) = self.backplane.as_mut() else {
            return Ok(());
        };
        let meta = backplane.meta(shard, name).map_err(refusal)?;
        let Some(topic) = self.topics.get_mut(name) else {
            return Ok(());
        };
        if let Store::Remote { epoch, first, .. } = &mut topic.store {
            *first = meta.first;
            if *epoch != meta.epoch {
                *epoch = meta.epoch;
                reset(topic, meta.last);
                return Ok(());
            }
        }
        if meta.last > topic.durable {
            self.fill(name, meta.last);
        }
        Ok(())
    }

    /// Reads a Redis topic's messages after what was handed on up to `to`, and queues them
    /// for its subscribers in order; true once handed on up to `to`. False if Redis could not
    /// be read (they stay unread until the next message or reconnection brings this node back
    /// here), or if there was more than one fill reads ([`FILL_BYTES`]): the topic then reads
    /// on in the next pass.
    fn fill(&mut self, name: &Arc<str>, to: u64) -> bool {
        let Some(topic) = self.topics.get_mut(name) else {
            return false;
        };
        if topic.loops.is_empty() {
            // Nobody here to hand them to.
            topic.durable = topic.durable.max(to);
            return true;
        }
        let topic = &*topic;
        let (Store::Remote { shard, epoch, .. }, from) = (&topic.store, topic.durable + 1) else {
            return false;
        };
        let (shard, epoch) = (*shard, *epoch);
        let Some(backplane) = self.backplane.as_mut() else {
            return false;
        };
        // The read pages through the stream itself, and stops at the byte bound.
        let Ok(records) = backplane.read(shard, name, from, to, FILL_BYTES) else {
            return false;
        };
        let bytes: usize = records.iter().map(|record| record.data.len()).sum();
        let reached = records.last().map_or(from - 1, |record| record.offset);
        let complete = bytes < FILL_BYTES || reached >= to;
        let messages = framed(self.envelope, name, epoch, records);
        let Some(topic) = self.topics.get_mut(name) else {
            return false;
        };
        topic.pending.extend(messages);
        // Offsets Redis no longer held are passed over: a subscriber that needed them is told
        // of the gap when it asks for them.
        topic.durable = if complete { to } else { reached };
        if !complete && !self.refill.contains(name) {
            self.refill.push(name.clone());
        }
        if !self.touched.contains(name) {
            self.touched.push(name.clone());
        }
        complete
    }

    /// A subscriber's history from a Redis topic's stream; `None` if it is not one. A read
    /// that fails closes the subscriber with 1013 (it resumes from its offset later) rather
    /// than tell it of a gap that is not there.
    fn read_remote_history(&mut self, name: &Arc<str>, from: u64) -> Option<Delivery> {
        let topic = self.topics.get(name)?;
        let Store::Remote { shard, epoch, .. } = topic.store else {
            return None;
        };
        let durable = topic.durable;
        let backplane = self.backplane.as_mut()?;
        metrics::shared_add(&self.stats.history_reads, 1);
        let records = match backplane.read(shard, name, from, durable, self.limits.fetch_bytes) {
            Ok(records) => records,
            Err(_) => {
                return Some(Delivery::Close {
                    code: CLOSE_TRY_AGAIN,
                    reason: "the topic's history cannot be read now; resume later",
                })
            }
        };
        let held_from = records.first().map_or(durable + 1, |record| record.offset);
        let gap = (from < held_from).then(|| (from, held_from - 1));
        let reached = records.last().map_or(from.saturating_sub(1), |r| r.offset);
        let messages = framed(self.envelope, name, epoch, records);
        Some(Delivery::History {
            topic: name.clone(),
            more: reached < durable && !messages.is_empty(),
            messages,
            gap,
        })
    }

    /// Queues a publish for Redis, or refuses it at once if its server is down.
    fn publish_remote(
        &mut self,
        name: Arc<str>,
        data: Box<[u8]>,
        binary: bool,
        id: Option<Box<str>>,
        who: Option<Address>,
    ) {
        let refuse =
            |stats: &PubSubStats, who: &Option<Address>, (code, message): (&str, String)| {
                metrics::shared_add(&stats.refused, 1);
                if let Some(who) = who {
                    who.send(Delivery::Replies(vec![wire::error(
                        code,
                        &message,
                        Some(&name),
                        id.as_deref(),
                    )]));
                }
            };
        let shard = match self.topic(&name) {
            Ok(Topic {
                store: Store::Remote { shard, .. },
                ..
            }) => *shard,
            Ok(_) => return,
            Err(refused) => return refuse(&self.stats, &who, refused),
        };
        if !self.backplane.as_ref().is_some_and(|b| b.is_up(shard)) {
            return refuse(&self.stats, &who, refusal(Failure::Unavailable));
        }
        self.outgoing.push(Pending {
            topic: name.clone(),
            shard,
            data,
            binary,
            id,
            who,
            timestamp_ms: now_ms(),
        });
    }

    /// Sends this pass's publishes to Redis, one pipeline per server, and answers their
    /// publishers: acknowledged once Redis has them, an error if it could not be reached
    /// (their ids make sending them again safe). Delivery comes back through the channels.
    fn send_to_redis(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let Some(backplane) = self.backplane.as_mut() else {
            return;
        };
        let outgoing = std::mem::take(&mut self.outgoing);
        let mut replies: HashMap<(u64, ConnId), (Address, Vec<String>)> = HashMap::new();
        let mut shards: Vec<usize> = outgoing.iter().map(|pending| pending.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            let batch: Vec<&Pending> = outgoing.iter().filter(|p| p.shard == shard).collect();
            let publishes: Vec<Outgoing<'_>> = batch
                .iter()
                .map(|pending| Outgoing {
                    topic: &pending.topic,
                    data: &pending.data,
                    binary: pending.binary,
                    id: pending.id.as_deref(),
                    timestamp_ms: pending.timestamp_ms,
                })
                .collect();
            let outcome = backplane.publish(shard, &publishes);
            for (at, pending) in batch.iter().enumerate() {
                let line = match &outcome {
                    Ok(stored) => {
                        let stored = stored[at];
                        let counter = if stored.duplicate {
                            &self.stats.duplicates
                        } else {
                            &self.stats.published
                        };
                        metrics::shared_add(counter, 1);
                        metrics::shared_add(&self.stats.acknowledged, 1);
                        wire::ack(pending.id.as_deref(), &pending.topic, stored.offset)
                    }
                    Err(failure) => {
                        metrics::shared_add(&self.stats.refused, 1);
                        let (code, message) = refusal(failure.clone());
                        wire::error(code, &message, Some(&pending.topic), pending.id.as_deref())
                    }
                };
                if let Some(who) = &pending.who {
                    replies
                        .entry(who.key())
                        .or_insert_with(|| (who.clone(), Vec::new()))
                        .1
                        .push(line);
                }
            }
        }
        for (_, (who, lines)) in replies {
            who.send(Delivery::Replies(lines));
        }
    }

    /// What a listener heard: a message is handed on in offset order (what was missed before
    /// it is read from the stream first); a channel listened to again is filled from the
    /// stream.
    fn hear(&mut self, news: Heard) {
        match news {
            Heard::Listening { topic } => {
                if self.remote_listening(&topic) == Some(true) {
                    let _ = self.refresh(&topic);
                }
            }
            Heard::Message {
                topic: name,
                epoch,
                offset,
                binary,
                data,
            } => {
                if self.remote_listening(&name) != Some(true) {
                    return;
                }
                let Some(topic) = self.topics.get_mut(&name) else {
                    return;
                };
                if topic.store.epoch() != epoch {
                    // Redis lost the topic and a node made it again: learn the new state.
                    let _ = self.refresh(&name);
                    return;
                }
                if offset <= topic.durable {
                    return; // already handed on (filled from the stream)
                }
                if offset > topic.durable + 1 && !self.fill(&name, offset - 1) {
                    return;
                }
                let Some(topic) = self.topics.get_mut(&name) else {
                    return;
                };
                let frame = prepare(self.envelope, &name, epoch, offset, &data, binary);
                topic.pending.push(Published { offset, frame });
                topic.durable = offset;
                if !self.touched.contains(&name) {
                    self.touched.push(name);
                }
            }
        }
    }

    /// Tries the Redis servers that are down and due; for one that came back, every topic of
    /// it with subscribers here is filled with what was stored meanwhile.
    fn reconnect_backplane(&mut self) {
        let Some(backplane) = self.backplane.as_mut() else {
            return;
        };
        if backplane.next_retry().is_none_or(|at| at > Instant::now()) {
            return;
        }
        let back = backplane.reconnect_due();
        if back.is_empty() {
            return;
        }
        let names: Vec<Arc<str>> = self
            .topics
            .values()
            .filter(|topic| {
                matches!(topic.store, Store::Remote { shard, listening: true, .. } if back.contains(&shard))
            })
            .map(|topic| topic.name.clone())
            .collect();
        for name in names {
            let _ = self.refresh(&name);
        }
    }

    /// Makes this pass's appends durable (as the policy has it), then acknowledges them and
    /// hands them to their subscribers.
    fn commit(&mut self) {
        let fsync = match self.storage {
            Storage::Disk { fsync, .. } => Some(fsync),
            Storage::Memory | Storage::Redis { .. } => None,
        };
        let mut replies: HashMap<(u64, ConnId), (Address, Vec<String>)> = HashMap::new();
        for name in self.touched.drain(..) {
            let Some(topic) = self.topics.get_mut(&name) else {
                continue;
            };
            let appended = topic.pending.len() as u64;
            let stored = match &mut topic.store {
                Store::Memory(_) => true,
                // What came from Redis is stored there already, and was acknowledged when
                // Redis answered its publisher.
                Store::Remote { .. } => true,
                Store::Disk(log) => match log.write() {
                    Ok(()) => {
                        topic.unsynced = true;
                        if fsync == Some(FsyncPolicy::Always) {
                            topic.unsynced = false;
                            sync_topic(topic, &self.stats)
                        } else {
                            true
                        }
                    }
                    Err(error) => {
                        log::error!("topic {name}: writing its log failed: {error}; it stores nothing more until a restart");
                        metrics::shared_add(&self.stats.storage_errors, 1);
                        topic.failed = true;
                        false
                    }
                },
            };
            if !stored {
                // Nothing of this pass is acknowledged or shown: the publishers are told.
                topic.pending.clear();
                for (who, _) in topic.acks.drain(..) {
                    replies
                        .entry(who.key())
                        .or_insert_with(|| (who.clone(), Vec::new()))
                        .1
                        .push(wire::error(
                            "storage",
                            "the message could not be stored",
                            Some(&name),
                            None,
                        ));
                }
                continue;
            }
            if !matches!(topic.store, Store::Remote { .. }) {
                metrics::shared_add(&self.stats.published, appended);
            }
            if let Some(last) = topic.pending.last() {
                topic.durable = last.offset;
            }
            let acked = topic.acks.len() as u64;
            metrics::shared_add(&self.stats.acknowledged, acked);
            for (who, ack) in topic.acks.drain(..) {
                replies
                    .entry(who.key())
                    .or_insert_with(|| (who.clone(), Vec::new()))
                    .1
                    .push(ack);
            }
            if topic.pending.is_empty() {
                continue;
            }
            if self.limits.delivery_delay.is_zero() {
                let messages = std::mem::take(&mut topic.pending);
                deliver(topic, messages);
            } else {
                // Held back to leave with the next ones, in one write per subscriber.
                let pending = std::mem::take(&mut topic.pending);
                topic.held.extend(pending);
                if topic.held_since.is_none() {
                    topic.held_since = Some(Instant::now());
                    self.holding.push_back(name.clone());
                }
            }
        }
        for (_, (who, lines)) in replies {
            who.send(Delivery::Replies(lines));
        }
    }
}

/// A Redis topic came back with another epoch (Redis lost it): its subscribers here are closed
/// with 1012, and resume from their offsets elsewhere or here, where they are told the epoch
/// changed (`recovered: false`) rather than shown a new message under an old offset.
fn reset(topic: &mut Topic, last: u64) {
    log::warn!(
        "topic {}: its log in Redis has a new epoch; its subscribers here are closed to resume",
        topic.name
    );
    topic.pending.clear();
    topic.durable = last;
    let close: Notice = Arc::new(Delivery::Close {
        code: CLOSE_RESET,
        reason: "the topic's log was reset; resume to learn what was lost",
    });
    for subscribers in &mut topic.loops {
        let shared = subscribers
            .shared
            .get_or_insert_with(|| subscribers.conns.as_slice().into())
            .clone();
        subscribers
            .mailbox
            .send(Recipients::Many(shared), close.clone());
    }
}

/// A backplane failure as the error code and message its client is told.
fn refusal(failure: Failure) -> (&'static str, String) {
    match failure {
        Failure::Unavailable => (
            "backplane_unavailable",
            "the Redis server holding this topic cannot be reached now; try again".into(),
        ),
        Failure::Protocol(message) => ("backplane", message),
    }
}

/// Hands durable messages to every loop with subscribers of `topic`: one notice per loop,
/// naming them all with the loop's shared list.
fn deliver(topic: &mut Topic, messages: Vec<Published>) {
    if topic.loops.is_empty() || messages.is_empty() {
        return;
    }
    let delivery: Notice = Arc::new(Delivery::Live {
        topic: topic.name.clone(),
        messages,
    });
    for subscribers in &mut topic.loops {
        let shared = subscribers
            .shared
            .get_or_insert_with(|| subscribers.conns.as_slice().into())
            .clone();
        subscribers
            .mailbox
            .send(Recipients::Many(shared), delivery.clone());
    }
}

/// Adds `who` to a topic's subscribers; false if it already was one.
fn add_subscriber(topic: &mut Topic, who: &Address) -> bool {
    let loop_id = who.mailbox.loop_id();
    let at = match topic
        .loops
        .iter()
        .position(|subscribers| subscribers.mailbox.loop_id() == loop_id)
    {
        Some(at) => at,
        None => {
            topic.loops.push(LoopSubscribers {
                mailbox: who.mailbox.clone(),
                conns: Vec::new(),
                positions: HashMap::new(),
                shared: None,
            });
            topic.loops.len() - 1
        }
    };
    let subscribers = &mut topic.loops[at];
    if subscribers.positions.contains_key(&who.conn) {
        return false;
    }
    subscribers
        .positions
        .insert(who.conn, subscribers.conns.len());
    subscribers.conns.push(who.conn);
    subscribers.shared = None;
    true
}

/// One fsync of a topic's log, timed and counted; false if it failed (the topic then stores
/// nothing more).
fn sync_topic(topic: &mut Topic, stats: &PubSubStats) -> bool {
    let Store::Disk(log) = &mut topic.store else {
        return true;
    };
    let started = Instant::now();
    match log.sync() {
        Ok(synced) => {
            if synced {
                stats.fsync_latency.shared_observe(started.elapsed());
                metrics::shared_add(&stats.fsyncs, 1);
            }
            true
        }
        Err(error) => {
            log::error!(
                "topic {}: fsync failed: {error}; it stores nothing more until a restart",
                topic.name
            );
            metrics::shared_add(&stats.storage_errors, 1);
            topic.failed = true;
            false
        }
    }
}

/// Frames a message for its subscribers: the wire protocol's `message` object, or (raw) the
/// payload as it was published.
fn prepare(
    envelope: Envelope,
    topic: &str,
    epoch: u64,
    offset: u64,
    data: &[u8],
    binary: bool,
) -> Prepared {
    match envelope {
        Envelope::Json => Prepared::text(&wire::message(
            topic,
            epoch,
            offset,
            &String::from_utf8_lossy(data),
        )),
        Envelope::Raw => match (binary, std::str::from_utf8(data)) {
            (false, Ok(text)) => Prepared::new(Message::Text(text)),
            _ => Prepared::new(Message::Binary(data)),
        },
    }
}

/// Frames records read from a log (on disk, in memory or in Redis) for their subscribers.
fn framed(envelope: Envelope, topic: &str, epoch: u64, records: Vec<Record>) -> Vec<Published> {
    records
        .into_iter()
        .map(|record| Published {
            offset: record.offset,
            frame: prepare(
                envelope,
                topic,
                epoch,
                record.offset,
                &record.data,
                record.binary,
            ),
        })
        .collect()
}

/// Reads a subscriber's next history from `from`, up to what is durable.
fn read_history(
    topic: &Topic,
    from: u64,
    max_bytes: usize,
    envelope: Envelope,
    stats: &PubSubStats,
) -> Delivery {
    metrics::shared_add(&stats.history_reads, 1);
    let earliest = topic.store.first_offset();
    let gap = (from < earliest).then(|| (from, earliest - 1));
    let start = from.max(earliest);
    let mut records: Vec<Record> = Vec::new();
    let read = match &topic.store {
        Store::Disk(log) => log.read(start, topic.durable, max_bytes, &mut records),
        Store::Memory(log) => {
            log.read(start, topic.durable, max_bytes, &mut records);
            Ok(())
        }
        // Read by `read_remote_history`, which can reach Redis.
        Store::Remote { .. } => Ok(()),
    };
    if let Err(error) = read {
        // Told to the subscriber as a gap, never passed over in silence.
        log::error!(
            "topic {}: reading history from {start}: {error}",
            topic.name
        );
        metrics::shared_add(&stats.storage_errors, 1);
        return Delivery::History {
            topic: topic.name.clone(),
            messages: Vec::new(),
            gap: Some((from, topic.durable)),
            more: false,
        };
    }
    let messages = framed(envelope, &topic.name, topic.store.epoch(), records);
    let reached = messages
        .last()
        .map_or(start.saturating_sub(1), |m| m.offset);
    Delivery::History {
        topic: topic.name.clone(),
        more: reached < topic.durable && !messages.is_empty(),
        messages,
        gap,
    }
}
