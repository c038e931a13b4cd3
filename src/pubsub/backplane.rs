//! The Redis backplane: topics whose log lives in Redis, shared by every node that points at
//! the same Redis servers.
//!
//! Per topic, Redis holds (the keys start with [`PREFIX`]):
//!
//! * `<topic>:meta`, a hash with the topic's `epoch` (made once, by whichever node first
//!   touches the topic: `HSETNX`) and `offset`, the last offset given out;
//! * `<topic>:log`, a stream whose entry ids are `0-<offset>`, trimmed to about
//!   [`Config::pubsub_memory_messages`](crate::Config::pubsub_memory_messages) entries;
//! * `<topic>:id:<id>`, the offset a publish id was stored at, for the dedupe window;
//! * the pub/sub channel `<topic>`, on which each stored message is announced with its data.
//!
//! One Lua script per publish does the dedupe check, the `HINCRBY` of the offset, the `XADD`
//! and the `PUBLISH`, atomically, so every node sees the same offsets in the same order. A
//! pass of the hub sends all its publishes for one Redis server as one pipeline: one round
//! trip however many there are.
//!
//! Why the `redis` crate's synchronous API on the hub's thread, and not RESP spoken by the
//! reactor: the hub already is the one place that does storage work off the event loops, in
//! group-commit passes, and waits for its disk. A Redis round trip takes its place; the loops
//! hear back through their mailboxes as before, so nothing about them changes, and a Redis
//! that stops answering stalls the hub for at most [`Config::backplane_timeout`], never a loop.
//!
//! A node listens only for the topics it has subscribers for: one listener thread per Redis
//! server holds a `SUBSCRIBE` connection (the hub writes `SUBSCRIBE`/`UNSUBSCRIBE` to it as
//! subscribers come and go) and passes what arrives to the hub, in order, with each
//! subscription's confirmation, on which the hub fills from the stream whatever was
//! published before the channel was heard. The hub delivers a topic's messages in offset order
//! only: an arrival past the next offset expected is preceded by an `XRANGE` of those missed.
//!
//! Topics are spread over several Redis servers by jump consistent hashing of the topic's
//! CRC-32C: adding a server moves only the share of topics the new one takes.
//!
//! [`Config::backplane_timeout`]: crate::Config::backplane_timeout

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use redis::{ConnectionAddr, IntoConnectionInfo, Value};

use super::hub::PubSubStats;
use super::log::Record;
use crate::metrics;

/// What every key and channel of the backplane starts with.
pub const PREFIX: &str = "socketserver:";

/// Stream entries asked for at once by a history read (the bytes limit cuts it further).
const READ_COUNT: usize = 512;

/// The publish script. KEYS: meta, log, id key. ARGV: epoch to make if none, data, binary
/// flag, timestamp, stream length, dedupe window in ms, channel, has-id flag, id.
const PUBLISH_SCRIPT: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if ARGV[8] == '1' then
  local prior = redis.call('GET', KEYS[3])
  if prior then return {epoch, prior, 1} end
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'offset', 1))
if ARGV[8] == '1' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-' .. offset,
    'd', ARGV[2], 'b', ARGV[3], 't', ARGV[4], 'i', ARGV[9])
  if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[3], offset, 'PX', ARGV[6]) end
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-' .. offset,
    'd', ARGV[2], 'b', ARGV[3], 't', ARGV[4])
end
redis.call('PUBLISH', ARGV[7], epoch .. ' ' .. offset .. ' ' .. ARGV[3] .. ' ' .. ARGV[2])
return {epoch, offset, 0}
";

/// The topic's state. KEYS: meta, log. ARGV: epoch to make if none.
const META_SCRIPT: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HGET', KEYS[1], 'offset') or '0'
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local earliest = ''
if #first > 0 then earliest = first[1][1] end
return {epoch, offset, earliest}
";

/// A topic's state in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) epoch: u64,
    /// The last offset given out.
    pub(crate) last: u64,
    /// The oldest offset the stream holds (`last + 1` when it holds none).
    pub(crate) first: u64,
}

/// A publish for one Redis server.
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    pub(crate) data: &'a [u8],
    pub(crate) binary: bool,
    pub(crate) id: Option<&'a str>,
    pub(crate) timestamp_ms: u64,
}

/// What Redis made of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
    /// The id was seen within the window: `offset` is the first one's.
    pub(crate) duplicate: bool,
}

/// What a listener passes to the hub, in the order its Redis connection gave it.
#[derive(Debug)]
pub(crate) enum Heard {
    /// The channel of `topic` is being listened to (again): what was published before now must
    /// be read from the stream.
    Listening { topic: Arc<str> },
    /// A message announced on a topic's channel.
    Message {
        topic: Arc<str>,
        epoch: u64,
        offset: u64,
        binary: bool,
        data: Box<[u8]>,
    },
}

/// Why a backplane call failed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The Redis server cannot be reached now (or was just lost): try again later.
    Unavailable,
    /// It answered something this module does not understand.
    Protocol(String),
}

/// One Redis server.
struct Shard {
    url: String,
    client: redis::Client,
    connection: Option<redis::Connection>,
    retry: Reconnect,
    /// When to try connecting again after a failure.
    retry_at: Option<Instant>,
    listener: Arc<Listener>,
    listener_thread: Option<JoinHandle<()>>,
}

/// The shared side of a shard's listener thread.
struct Listener {
    state: Mutex<ListenerState>,
    wake: Condvar,
    stopping: AtomicBool,
}

struct ListenerState {
    /// The topics to listen to.
    wanted: HashSet<Arc<str>>,
    /// The write half of the listener's connection, when it has one.
    writer: Option<TcpStream>,
}

impl Listener {
    fn state(&self) -> MutexGuard<'_, ListenerState> {
        // A poisoned lock only means another thread panicked mid-update of a set and a stream
        // handle, both still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The hub's handle on every Redis server.
pub(crate) struct Backplane {
    shards: Vec<Shard>,
    timeout: Duration,
    stream_messages: usize,
    dedupe_window_ms: u64,
    publish_script: redis::Script,
    meta_script: redis::Script,
    stats: Arc<PubSubStats>,
}

/// Checks a `--backplane` list: `redis://HOST:PORT` (with an optional `:password@` or
/// `user:password@`), each at most once.
pub fn parse_urls(list: &str) -> Result<Vec<String>, String> {
    let mut urls: Vec<String> = Vec::new();
    for url in list.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        let info = url
            .into_connection_info()
            .map_err(|error| format!("{url}: {error}"))?;
        if !matches!(info.addr(), ConnectionAddr::Tcp(..)) {
            return Err(format!("{url}: the backplane speaks to redis://HOST:PORT"));
        }
        if urls.iter().any(|seen| seen == url) {
            return Err(format!("{url} is named twice"));
        }
        urls.push(url.to_string());
    }
    if urls.is_empty() {
        return Err("name at least one redis://HOST:PORT".into());
    }
    Ok(urls)
}

/// Jump consistent hash (Lamping and Veach, 2014): the bucket in `0..buckets` of `key`, such
/// that going from n to n + 1 buckets moves only 1/(n + 1) of the keys.
pub fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    let buckets = i64::try_from(buckets.max(1)).unwrap_or(i64::MAX);
    while next < buckets {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let scaled = ((key >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / scaled)) as i64;
    }
    usize::try_from(bucket).unwrap_or(0)
}

fn meta_key(topic: &str) -> String {
    format!("{PREFIX}{topic}:meta")
}

fn log_key(topic: &str) -> String {
    format!("{PREFIX}{topic}:log")
}

fn id_key(topic: &str, id: &str) -> String {
    format!("{PREFIX}{topic}:id:{id}")
}

fn channel(topic: &str) -> String {
    format!("{PREFIX}{topic}")
}

/// The number in a reply that may come as an integer or as text.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(number) => u64::try_from(*number).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// The offset of a stream entry id `0-<offset>`.
fn entry_offset(value: &Value) -> Option<u64> {
    let Value::BulkString(bytes) = value else {
        return None;
    };
    std::str::from_utf8(bytes)
        .ok()?
        .strip_prefix("0-")?
        .parse()
        .ok()
}

impl Backplane {
    /// Prepares a connection to each of `urls` and starts their listeners. Nothing is
    /// connected yet: a Redis server down at start is tried again with backoff, as one lost
    /// later is.
    pub(crate) fn start(
        urls: &[String],
        timeout: Duration,
        stream_messages: usize,
        dedupe_window: Duration,
        stats: Arc<PubSubStats>,
        heard: &Sender<Heard>,
    ) -> io::Result<Backplane> {
        let mut shards = Vec::new();
        for (index, url) in urls.iter().enumerate() {
            let client = redis::Client::open(url.as_str())
                .map_err(|error| io::Error::other(format!("{url}: {error}")))?;
            let listener = Arc::new(Listener {
                state: Mutex::new(ListenerState {
                    wanted: HashSet::new(),
                    writer: None,
                }),
                wake: Condvar::new(),
                stopping: AtomicBool::new(false),
            });
            let thread = {
                let listener = listener.clone();
                let heard = heard.clone();
                let info = client.get_connection_info().clone();
                let stats = stats.clone();
                std::thread::Builder::new()
                    .name(format!("socketserver-backplane-{index}"))
                    .spawn(move || listen(&info, &listener, &heard, &stats, timeout))?
            };
            shards.push(Shard {
                url: url.clone(),
                client,
                connection: None,
                retry: Reconnect::default(),
                retry_at: None,
                listener,
                listener_thread: Some(thread),
            });
        }
        metrics::shared_add(&stats.backplane_shards, shards.len() as u64);
        metrics::shared_add(&stats.backplane_shards_down, shards.len() as u64);
        Ok(Backplane {
            shards,
            timeout,
            stream_messages,
            dedupe_window_ms: u64::try_from(dedupe_window.as_millis()).unwrap_or(u64::MAX),
            publish_script: redis::Script::new(PUBLISH_SCRIPT),
            meta_script: redis::Script::new(META_SCRIPT),
            stats,
        })
    }

    /// The Redis server that holds `topic`.
    pub(crate) fn shard_of(&self, topic: &str) -> usize {
        jump_hash(
            u64::from(crc32c::crc32c(topic.as_bytes())),
            self.shards.len(),
        )
    }

    /// When a shard that is down should be tried again, the soonest.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.shards.iter().filter_map(|shard| shard.retry_at).min()
    }

    /// Connects every shard that is down and due for another try; returns those that came
    /// (back) up.
    pub(crate) fn reconnect_due(&mut self) -> Vec<usize> {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.shards.len())
            .filter(|&at| {
                let shard = &self.shards[at];
                shard.connection.is_none() && shard.retry_at.is_none_or(|when| when <= now)
            })
            .collect();
        due.into_iter().filter(|&at| self.connect(at)).collect()
    }

    /// True when `shard` has a connection now (it is not tried here: a shard that is down is
    /// tried on its schedule, so a publish to it is refused at once).
    pub(crate) fn is_up(&self, shard: usize) -> bool {
        self.shards[shard].connection.is_some()
    }

    fn connect(&mut self, at: usize) -> bool {
        let timeout = self.timeout;
        let shard = &mut self.shards[at];
        let opened =
            shard
                .client
                .get_connection_with_timeout(timeout)
                .and_then(|mut connection| {
                    connection.set_read_timeout(Some(timeout))?;
                    connection.set_write_timeout(Some(timeout))?;
                    self.publish_script.load(&mut connection)?;
                    self.meta_script.load(&mut connection)?;
                    Ok(connection)
                });
        match opened {
            Ok(connection) => {
                if shard.retry.failures > 0 || shard.retry_at.is_some() {
                    log::info!("backplane {}: connected", shard.url);
                }
                shard.connection = Some(connection);
                shard.retry.connected();
                shard.retry_at = None;
                metrics::shared_add(&self.stats.backplane_connects, 1);
                metrics::shared_sub(&self.stats.backplane_shards_down, 1);
                true
            }
            Err(error) => {
                let delay = shard.retry.next_delay();
                if shard.retry.failures <= 1 {
                    log::warn!(
                        "backplane {}: cannot connect ({error}); trying again with backoff",
                        shard.url
                    );
                }
                shard.retry_at = Some(Instant::now() + delay);
                false
            }
        }
    }

    /// Forgets `shard`'s connection after an error on it; it is tried again on the backoff
    /// schedule.
    fn lost(&mut self, at: usize, error: &redis::RedisError) {
        let shard = &mut self.shards[at];
        if shard.connection.take().is_some() {
            log::warn!("backplane {}: {error}; reconnecting", shard.url);
            // The listener's connection to the same server may be as dead without knowing it
            // (a restart behind a partition sends no reset): it reconnects too.
            if let Some(writer) = &shard.listener.state().writer {
                let _ = writer.shutdown(Shutdown::Both);
            }
            metrics::shared_add(&self.stats.backplane_errors, 1);
            metrics::shared_add(&self.stats.backplane_shards_down, 1);
            let delay = shard.retry.next_delay();
            shard.retry_at = Some(Instant::now() + delay);
        }
    }

    /// Runs `query` on `shard`'s connection, timing the round trip; a failure drops the
    /// connection. A query that is `idempotent` and finds the connection broken is tried once
    /// more on a new one at once: after a Redis restart every idle connection is broken, and
    /// only its first use finds out.
    fn call<T>(
        &mut self,
        at: usize,
        idempotent: bool,
        mut query: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failure> {
        // Only a connection that was there is tried again: one known to be down waits for its
        // backoff, so callers are refused at once meanwhile.
        let connected = self.shards[at].connection.is_some();
        match self.call_once(at, &mut query) {
            Err(Failure::Unavailable) if idempotent && connected && self.connect(at) => {
                self.call_once(at, &mut query)
            }
            outcome => outcome,
        }
    }

    fn call_once<T>(
        &mut self,
        at: usize,
        query: &mut impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failure> {
        let Some(connection) = self.shards[at].connection.as_mut() else {
            return Err(Failure::Unavailable);
        };
        let started = Instant::now();
        let result = query(connection);
        self.stats
            .backplane_roundtrip
            .shared_observe(started.elapsed());
        match result {
            Ok(value) => Ok(value),
            Err(error)
                if error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()
                    || error.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // A script missing means the server lost them (a SCRIPT FLUSH, a failover to
                // a replica): a new connection loads them again.
                self.lost(at, &error);
                Err(Failure::Unavailable)
            }
            Err(error) => {
                // A script or command error: the connection itself is fine.
                metrics::shared_add(&self.stats.backplane_errors, 1);
                Err(Failure::Protocol(error.to_string()))
            }
        }
    }

    /// The topic's epoch, last offset and oldest offset held, making its epoch if it has none.
    pub(crate) fn meta(&mut self, shard: usize, topic: &str) -> Result<Meta, Failure> {
        let epoch = super::log::random_epoch();
        let script = self.meta_script.clone();
        let reply: Vec<Value> = self.call(shard, true, |connection| {
            script
                .key(meta_key(topic))
                .key(log_key(topic))
                .arg(epoch.to_string())
                .invoke(connection)
        })?;
        let [epoch, last, first] = reply.as_slice() else {
            return Err(Failure::Protocol(format!("meta of {topic}: {reply:?}")));
        };
        let (Some(epoch), Some(last)) = (number(epoch), number(last)) else {
            return Err(Failure::Protocol(format!("meta of {topic}: {reply:?}")));
        };
        let first = entry_offset(first).unwrap_or(last + 1);
        Ok(Meta { epoch, last, first })
    }

    /// Stores `publishes` (all on `shard`) with one round trip, in order.
    pub(crate) fn publish(
        &mut self,
        shard: usize,
        publishes: &[Outgoing<'_>],
    ) -> Result<Vec<Stored>, Failure> {
        let epoch = super::log::random_epoch().to_string();
        let hash = self.publish_script.get_hash().to_string();
        let stream_messages = self.stream_messages.to_string();
        let window = self.dedupe_window_ms.to_string();
        let mut pipe = redis::pipe();
        for publish in publishes {
            let id = publish.id.unwrap_or("");
            pipe.cmd("EVALSHA")
                .arg(&hash)
                .arg(3)
                .arg(meta_key(publish.topic))
                .arg(log_key(publish.topic))
                .arg(id_key(publish.topic, id))
                .arg(&epoch)
                .arg(publish.data)
                .arg(if publish.binary { "1" } else { "0" })
                .arg(publish.timestamp_ms)
                .arg(&stream_messages)
                .arg(&window)
                .arg(channel(publish.topic))
                .arg(if publish.id.is_some() { "1" } else { "0" })
                .arg(id);
        }
        // Not tried again here: a publish without an id could be stored twice. Its publisher
        // is told, and sends it again (with its id, safely).
        let replies: Vec<Vec<Value>> =
            self.call(shard, false, |connection| pipe.query(connection))?;
        metrics::shared_add(&self.stats.backplane_publishes, publishes.len() as u64);
        replies
            .iter()
            .map(|reply| match reply.as_slice() {
                [epoch, offset, duplicate] => match (number(epoch), number(offset)) {
                    (Some(epoch), Some(offset)) => Ok(Stored {
                        epoch,
                        offset,
                        duplicate: number(duplicate) == Some(1),
                    }),
                    _ => Err(Failure::Protocol(format!("publish: {reply:?}"))),
                },
                _ => Err(Failure::Protocol(format!("publish: {reply:?}"))),
            })
            .collect()
    }

    /// Reads `topic`'s messages from offset `from` to `to` (inclusive), at most `max_bytes` of
    /// payload (and at least one message), oldest first. Offsets the stream no longer holds
    /// are simply absent.
    pub(crate) fn read(
        &mut self,
        shard: usize,
        topic: &str,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Result<Vec<Record>, Failure> {
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut start = from;
        while start <= to && bytes < max_bytes {
            let entries: Value = self.call(shard, true, |connection| {
                redis::cmd("XRANGE")
                    .arg(log_key(topic))
                    .arg(format!("0-{start}"))
                    .arg(format!("0-{to}"))
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .query(connection)
            })?;
            let Value::Array(entries) = entries else {
                return Err(Failure::Protocol(format!("XRANGE of {topic}: {entries:?}")));
            };
            let fetched = entries.len();
            for entry in entries {
                let record = parse_entry(&entry)
                    .ok_or_else(|| Failure::Protocol(format!("entry of {topic}: {entry:?}")))?;
                start = record.offset + 1;
                bytes += record.data.len();
                records.push(record);
                if bytes >= max_bytes {
                    break;
                }
            }
            metrics::shared_add(&self.stats.backplane_reads, 1);
            if fetched < READ_COUNT {
                break;
            }
        }
        Ok(records)
    }

    /// Starts listening to `topic` on `shard`'s channel (a [`Heard::Listening`] follows once
    /// Redis confirms).
    pub(crate) fn listen(&self, shard: usize, topic: &Arc<str>) {
        let listener = &self.shards[shard].listener;
        let mut state = listener.state();
        if state.wanted.insert(topic.clone()) {
            if let Some(writer) = state.writer.as_mut() {
                let command = redis::cmd("SUBSCRIBE")
                    .arg(channel(topic))
                    .get_packed_command();
                // A failed write means the connection is going: the listener resubscribes
                // everything wanted when it is back.
                let _ = writer.write_all(&command);
            }
        }
    }

    /// Stops listening to `topic` on `shard`'s channel.
    pub(crate) fn unlisten(&self, shard: usize, topic: &Arc<str>) {
        let listener = &self.shards[shard].listener;
        let mut state = listener.state();
        if state.wanted.remove(topic) {
            if let Some(writer) = state.writer.as_mut() {
                let command = redis::cmd("UNSUBSCRIBE")
                    .arg(channel(topic))
                    .get_packed_command();
                let _ = writer.write_all(&command);
            }
        }
    }

    /// Stops the listeners and waits for them. Whoever receives what they hear must have
    /// stopped receiving first (dropped its receiver), or a listener blocked on a full channel
    /// would never see the stop.
    pub(crate) fn stop(&mut self) {
        for shard in &self.shards {
            shard.listener.stopping.store(true, Ordering::SeqCst);
            let state = shard.listener.state();
            if let Some(writer) = &state.writer {
                let _ = writer.shutdown(Shutdown::Both);
            }
            shard.listener.wake.notify_all();
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.listener_thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Backplane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// When to try a Redis connection again: full jitter under a ceiling that doubles from 50 ms
/// to 2 s with each failure in a row, forever; a connection that stayed up 5 s starts it over.
/// (The client's `Backoff` is a general form of the same; the pub/sub room does not reach up
/// to the client's.)
#[derive(Debug, Default)]
struct Reconnect {
    /// Failures in a row.
    failures: u32,
    /// When the connection now up came up.
    up_since: Option<Instant>,
}

impl Reconnect {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);
    const HEALTHY: Duration = Duration::from_secs(5);

    fn connected(&mut self) {
        self.up_since = Some(Instant::now());
    }

    /// A connection, or an attempt at one, ended: how long to wait before the next attempt.
    fn next_delay(&mut self) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|since| since.elapsed() >= Self::HEALTHY)
        {
            self.failures = 0;
        }
        let ceiling = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// A stream entry `[id, [field, value, ...]]` as a record.
fn parse_entry(entry: &Value) -> Option<Record> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let offset = entry_offset(id)?;
    let mut record = Record {
        offset,
        timestamp_ms: 0,
        id: None,
        data: Box::default(),
        binary: false,
    };
    for pair in fields.chunks(2) {
        let [Value::BulkString(name), Value::BulkString(value)] = pair else {
            return None;
        };
        match name.as_slice() {
            b"d" => record.data = value.clone().into_boxed_slice(),
            b"b" => record.binary = value.as_slice() == b"1",
            b"t" => record.timestamp_ms = std::str::from_utf8(value).ok()?.parse().ok()?,
            b"i" => record.id = Some(String::from_utf8(value.clone()).ok()?.into()),
            _ => {}
        }
    }
    Some(record)
}

/// An announcement `<epoch> <offset> <binary> <data>` on `channel`, as heard.
fn parse_announcement(channel: &[u8], payload: &[u8]) -> Option<Heard> {
    let topic = std::str::from_utf8(channel).ok()?.strip_prefix(PREFIX)?;
    let mut parts = payload.splitn(4, |&byte| byte == b' ');
    let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let binary = parts.next()? == b"1";
    let data = parts.next().unwrap_or_default().into();
    Some(Heard::Message {
        topic: topic.into(),
        epoch,
        offset,
        binary,
        data,
    })
}

/// A listener thread: holds a `SUBSCRIBE` connection to one Redis server, reconnecting with
/// backoff, and passes what it hears to the hub until told to stop.
fn listen(
    info: &redis::ConnectionInfo,
    listener: &Listener,
    heard: &Sender<Heard>,
    stats: &PubSubStats,
    timeout: Duration,
) {
    let mut retry = Reconnect::default();
    while !listener.stopping.load(Ordering::SeqCst) {
        let outcome = listen_once(info, listener, heard, stats, timeout, &mut retry);
        listener.state().writer = None;
        if listener.stopping.load(Ordering::SeqCst) || outcome.is_ok() {
            return; // stopping, or the hub is gone
        }
        if let Err(error) = outcome {
            if retry.failures == 0 {
                log::warn!("backplane listener: {error}; reconnecting");
            }
        }
        let delay = retry.next_delay();
        // Waits the delay out, or less if told to stop.
        let state = listener.state();
        let _ = listener
            .wake
            .wait_timeout_while(state, delay, |_| !listener.stopping.load(Ordering::SeqCst));
    }
}

/// One connection's life; `Ok` when the hub has gone (nothing more to do), `Err` when the
/// connection failed.
fn listen_once(
    info: &redis::ConnectionInfo,
    listener: &Listener,
    heard: &Sender<Heard>,
    stats: &PubSubStats,
    timeout: Duration,
    retry: &mut Reconnect,
) -> io::Result<()> {
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(io::Error::other("not a TCP address"));
    };
    let address = (host.as_str(), *port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{host} has no address")))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_nodelay(true)?;
    // A listener only reads: keepalive probes are how it learns of a server that vanished
    // without a reset while nothing was published.
    socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(2))
            .with_retries(3),
    )?;
    let mut parser = redis::Parser::new();
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(username) = settings.username() {
            auth.arg(username);
        }
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(&auth.arg(password).get_packed_command())?;
        match parser.parse_value(&mut stream) {
            Ok(Value::Okay) | Ok(Value::SimpleString(_)) => {}
            other => return Err(io::Error::other(format!("AUTH refused: {other:?}"))),
        }
        stream.set_read_timeout(None)?;
    }
    {
        let mut state = listener.state();
        if !state.wanted.is_empty() {
            let mut subscribe = redis::cmd("SUBSCRIBE");
            for topic in &state.wanted {
                subscribe.arg(channel(topic));
            }
            stream.write_all(&subscribe.get_packed_command())?;
        }
        state.writer = Some(stream.try_clone()?);
    }
    if listener.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    retry.connected();
    metrics::shared_add(&stats.backplane_listener_connects, 1);
    loop {
        let value = parser
            .parse_value(&mut stream)
            .map_err(|error| io::Error::other(error.to_string()))?;
        let Value::Array(parts) = value else {
            continue;
        };
        let heard_now = match parts.as_slice() {
            [Value::BulkString(kind), Value::BulkString(channel), Value::BulkString(payload)]
                if kind.as_slice() == b"message" =>
            {
                metrics::shared_add(&stats.backplane_received, 1);
                parse_announcement(channel, payload)
            }
            [Value::BulkString(kind), Value::BulkString(channel), _]
                if kind.as_slice() == b"subscribe" =>
            {
                std::str::from_utf8(channel)
                    .ok()
                    .and_then(|channel| channel.strip_prefix(PREFIX))
                    .map(|topic| Heard::Listening {
                        topic: topic.into(),
                    })
            }
            _ => None,
        };
        if let Some(heard_now) = heard_now {
            if heard.send(heard_now).is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_spreads_keys_and_moves_few_when_a_bucket_is_added() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|n| u64::from(crc32c::crc32c(format!("topic-{n}").as_bytes())))
            .collect();
        let mut counts = [0usize; 4];
        for &key in &keys {
            counts[jump_hash(key, 4)] += 1;
        }
        for count in counts {
            assert!((2_000..3_000).contains(&count), "{counts:?}");
        }
        let moved = keys
            .iter()
            .filter(|&&key| jump_hash(key, 4) != jump_hash(key, 5))
            .count();
        // A fifth bucket takes about a fifth of the keys, and every one that moves goes to it.
        assert!((1_500..2_500).contains(&moved), "{moved}");
        assert!(keys
            .iter()
            .filter(|&&key| jump_hash(key, 4) != jump_hash(key, 5))
            .all(|&key| jump_hash(key, 5) == 4));
        assert_eq!(jump_hash(12_345, 1), 0);
    }

    #[test]
    fn announcements_and_entries_parse_and_bad_ones_are_refused() {
        let heard = parse_announcement(b"socketserver:news", b"7 42 0 hello world").unwrap();
        match heard {
            Heard::Message {
                topic,
                epoch,
                offset,
                binary,
                data,
            } => {
                assert_eq!(&*topic, "news");
                assert_eq!((epoch, offset, binary), (7, 42, false));
                assert_eq!(&*data, b"hello world");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_announcement(b"other:news", b"7 42 0 x").is_none());
        assert!(parse_announcement(b"socketserver:news", b"x 42 0 x").is_none());
        let entry = Value::Array(vec![
            Value::BulkString(b"0-9".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"payload".to_vec()),
                Value::BulkString(b"b".to_vec()),
                Value::BulkString(b"1".to_vec()),
                Value::BulkString(b"t".to_vec()),
                Value::BulkString(b"1700".to_vec()),
            ]),
        ]);
        let record = parse_entry(&entry).unwrap();
        assert_eq!(
            (record.offset, record.binary, record.timestamp_ms),
            (9, true, 1700)
        );
        assert_eq!(&*record.data, b"payload");
        assert!(parse_entry(&Value::BulkString(b"0-9".to_vec())).is_none());
    }

    #[test]
    fn reconnect_delays_grow_to_their_cap_and_start_over_after_a_healthy_connection() {
        let mut retry = Reconnect::default();
        let ceilings: Vec<Duration> = (0..8)
            .map(|_| {
                let delay = retry.next_delay();
                let ceiling = Reconnect::FIRST
                    .saturating_mul(1 << (retry.failures - 1))
                    .min(Reconnect::MAX);
                assert!(delay <= ceiling, "{delay:?} over {ceiling:?}");
                ceiling
            })
            .collect();
        assert_eq!(ceilings[0], Duration::from_millis(50));
        assert_eq!(ceilings[5], Duration::from_millis(1600));
        assert_eq!(ceilings[7], Reconnect::MAX);
        // A connection that just came up and failed at once does not start over.
        retry.connected();
        retry.next_delay();
        assert_eq!(retry.failures, 9);
        // One that stayed up long enough does.
        retry.up_since = Some(Instant::now() - Reconnect::HEALTHY);
        retry.next_delay();
        assert_eq!(retry.failures, 1);
    }

    #[test]
    fn backplane_urls_are_checked() {
        assert_eq!(
            parse_urls("redis://127.0.0.1:6379, redis://127.0.0.1:6380").unwrap(),
            ["redis://127.0.0.1:6379", "redis://127.0.0.1:6380"]
        );
        assert!(parse_urls("").is_err());
        assert!(parse_urls("redis://127.0.0.1:6379,redis://127.0.0.1:6379").is_err());
        assert!(parse_urls("http://127.0.0.1").is_err());
    }
}
