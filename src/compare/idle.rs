//! `compare --idle N`: how many idle connections each model holds, and what they cost.
//!
//! For each model, a fresh server (pinned like a [`super::run`] server, idle timeout off) is
//! given idle connections in steps (1, 10, 100, 1,000, then tenths of N). After each step a
//! *probe*, a new client, makes [`PROBE_REQUESTS`] echo round trips, and the server's memory
//! and threads are sampled. With `--protocol ws` every idle connection is an upgraded
//! WebSocket and the probe a WebSocket echo; otherwise, plain echo. A model *gives out* at the first step where a connect fails, the
//! probe gets no answer within [`PROBE_TIMEOUT`], the server closes idle connections, or the
//! server dies; the row says which, and the memory per connection is measured up to there.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::process::{ServerProcess, Usage};
use super::{CompareConfig, ModelKind};
use crate::error::{Error, Result};
use crate::load::{client_socket, LoadProtocol};

/// Round trips the probe makes at each step.
pub const PROBE_REQUESTS: usize = 200;
/// How long the probe waits for a connect or an answer before the model counts as given out.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one idle connection may take to be established.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Payload bytes per probe request.
const PROBE_BYTES: usize = 64;

/// One step: the server holding `connections` idle connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleStep {
    /// Idle connections held.
    pub connections: usize,
    /// Server resident memory, in bytes (all its processes).
    pub rss_bytes: u64,
    /// Server threads (all its processes).
    pub threads: u64,
    /// The probe's median round trip, in microseconds.
    pub probe_p50_us: f64,
    /// The probe's 99th percentile round trip.
    pub probe_p99_us: f64,
    /// The probe's slowest round trip.
    pub probe_max_us: f64,
}

/// One model's idle capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleRow {
    /// The model's name.
    pub model: String,
    /// Idle connections asked for.
    pub target: usize,
    /// Idle connections held at the last step the probe was answered.
    pub held: usize,
    /// Server resident memory with no idle connection, after one probe, in bytes.
    pub baseline_rss_bytes: u64,
    /// Resident memory added per idle connection held, in bytes.
    pub bytes_per_connection: Option<f64>,
    /// Where the model gave out, if it did: idle connections open at that point.
    pub gave_out_at: Option<usize>,
    /// Why it gave out.
    pub reason: Option<String>,
    /// Every step measured, the last answered one last.
    pub steps: Vec<IdleStep>,
}

/// Idle capacity of every model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleComparison {
    /// Idle connections asked for.
    pub connections: usize,
    /// CPUs the server ran on.
    pub server_cpus: Vec<usize>,
    /// CPUs the clients ran on.
    pub load_cpus: Vec<usize>,
    /// One row per model.
    pub rows: Vec<IdleRow>,
}

impl IdleComparison {
    /// The comparison as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialising it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The connection counts at which a model is measured on the way to `target`.
pub fn steps(target: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = [1, 10, 100, 1000]
        .into_iter()
        .chain((1..=10).map(|tenth| target * tenth / 10))
        .filter(|&step| step > 0 && step <= target)
        .collect();
    steps.push(target);
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// Measures every model of `config` holding `target` idle connections (1..=100,000); see the
/// [module documentation](self). `progress` is told each model as it starts.
pub fn run(
    config: &CompareConfig,
    target: usize,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<IdleComparison> {
    config.validate()?;
    if !matches!(config.protocol, LoadProtocol::Echo | LoadProtocol::Ws) {
        return Err(Error::Config(
            "compare --idle holds echo or ws connections (--protocol echo or ws)".into(),
        ));
    }
    if !(1..=100_000).contains(&target) {
        return Err(Error::Config(
            "idle connections must be within 1..=100000".into(),
        ));
    }
    let mut rows = Vec::new();
    for (index, &model) in config.models.iter().enumerate() {
        progress(index + 1, config.models.len(), model.name());
        // The clients run on a thread of their own, pinned to the load CPUs.
        let row = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    if let Err(error) = super::process::pin_current_thread(&config.load_cpus) {
                        log::warn!(
                            "could not pin the clients to {:?}: {error}",
                            config.load_cpus
                        );
                    }
                    measure_model(config, model, target)
                })
                .join()
        });
        rows.push(row.map_err(|_| Error::Tool("the idle clients' thread panicked".into()))?);
    }
    Ok(IdleComparison {
        connections: target,
        server_cpus: config.server_cpus.clone(),
        load_cpus: config.load_cpus.clone(),
        rows,
    })
}

fn measure_model(config: &CompareConfig, model: ModelKind, target: usize) -> IdleRow {
    let mut row = IdleRow {
        model: model.name().into(),
        target,
        held: 0,
        baseline_rss_bytes: 0,
        bytes_per_connection: None,
        gave_out_at: None,
        reason: None,
        steps: Vec::new(),
    };
    if let Err((at, reason)) = ramp(config, model, target, &mut row) {
        row.gave_out_at = Some(at);
        row.reason = Some(reason);
    }
    if let Some(last) = row.steps.last() {
        if last.connections > 0 {
            let added = last.rss_bytes as f64 - row.baseline_rss_bytes as f64;
            row.bytes_per_connection = Some(added / last.connections as f64);
        }
    }
    row
}

/// Where a model gave out: idle connections open at that point, and why.
type GaveOut = (usize, String);

/// Starts the server, takes its baseline, and grows its idle connections step by step.
fn ramp(
    config: &CompareConfig,
    model: ModelKind,
    target: usize,
    row: &mut IdleRow,
) -> std::result::Result<(), GaveOut> {
    // Room for the probe above the idle connections, so a cap is never what is measured.
    let websocket = config.protocol == LoadProtocol::Ws;
    let args = model.serve_args(config.protocol_name(), target + 16, config.parallel);
    let mut server = ServerProcess::start(&config.program, &args, &config.server_cpus)
        .map_err(|error| (0, format!("server: {error}")))?;
    let addr: SocketAddr = server
        .listen_addr
        .parse()
        .map_err(|_| (0, format!("server listens on {:?}", server.listen_addr)))?;
    // The first probe warms the server up, so the baseline includes what any client costs.
    probe(addr, websocket).map_err(|reason| (0, reason))?;
    row.baseline_rss_bytes = server.usage().rss_bytes;
    let mut idle: Vec<TcpStream> = Vec::with_capacity(target);
    let grown = grow(&mut server, addr, websocket, target, row, &mut idle);
    // Stop the server while the idle connections are still open: shutting down with them is
    // part of what every model must do.
    server.stop();
    grown
}

/// Opens idle connections step by step, measuring after each, until `target` or a failure.
fn grow(
    server: &mut ServerProcess,
    addr: SocketAddr,
    websocket: bool,
    target: usize,
    row: &mut IdleRow,
    idle: &mut Vec<TcpStream>,
) -> std::result::Result<(), GaveOut> {
    for step in steps(target) {
        if let Some(reason) = open_idle(addr, websocket, idle, step, target) {
            return Err((idle.len(), reason));
        }
        let probed = probe(addr, websocket);
        if let Some(status) = server.exited() {
            let ended = super::process::describe(Some(status));
            return Err((idle.len(), format!("server {ended}")));
        }
        let closed = closed_count(idle);
        if closed > 0 {
            let reason = format!("the server closed {closed} idle connections");
            return Err((idle.len(), reason));
        }
        let latency = probed.map_err(|reason| (idle.len(), reason))?;
        let usage: Usage = server.usage();
        row.held = idle.len();
        row.steps.push(IdleStep {
            connections: idle.len(),
            rss_bytes: usage.rss_bytes,
            threads: usage.threads,
            probe_p50_us: latency.value_at_quantile(0.5) as f64,
            probe_p99_us: latency.value_at_quantile(0.99) as f64,
            probe_max_us: latency.max() as f64,
        });
    }
    Ok(())
}

/// Opens idle connections until `idle` holds `until`; the reason of the first failure, if any.
fn open_idle(
    addr: SocketAddr,
    websocket: bool,
    idle: &mut Vec<TcpStream>,
    until: usize,
    target: usize,
) -> Option<String> {
    while idle.len() < until {
        match connect(addr, idle.len(), target) {
            Ok(mut stream) => {
                if websocket {
                    if let Err(reason) = upgrade(&mut stream, addr) {
                        return Some(reason);
                    }
                }
                idle.push(stream)
            }
            Err(error) => return Some(format!("connect: {error}")),
        }
    }
    None
}

/// Upgrades a connected stream to WebSocket (blocking, bounded by the probe timeout).
fn upgrade(stream: &mut TcpStream, addr: SocketAddr) -> std::result::Result<(), String> {
    let request = crate::load::ws_upgrade(&addr.to_string(), "/");
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.write_all(&request))
        .map_err(|error| format!("upgrade: {error}"))?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte, so that nothing after the head is taken from the stream.
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) if head.len() < 8192 => head.push(byte[0]),
            Ok(_) => return Err("upgrade: no answer".into()),
            Err(error) => return Err(format!("upgrade: {error}")),
        }
    }
    if head.starts_with(b"HTTP/1.1 101 ") {
        Ok(())
    } else {
        Err("upgrade refused".into())
    }
}

/// Connects connection `index` of `connections` (blocking, bounded by the connect timeout).
fn connect(addr: SocketAddr, index: usize, connections: usize) -> std::io::Result<TcpStream> {
    let socket = client_socket(addr, index, connections)?;
    socket.connect_timeout(&addr.into(), CONNECT_TIMEOUT)?;
    Ok(socket.into())
}

/// A new client's round trips, or why it was not answered.
fn probe(addr: SocketAddr, websocket: bool) -> std::result::Result<Histogram<u64>, String> {
    let (request, answer_bytes) = if websocket {
        // The server's frame: a two-byte header (the payload is under 126 bytes), no mask.
        (LoadProtocol::Ws.request(PROBE_BYTES), 2 + PROBE_BYTES)
    } else {
        let request = LoadProtocol::Echo.request(PROBE_BYTES);
        let length = request.len();
        (request, length)
    };
    let mut answer = vec![0u8; answer_bytes];
    let mut stream = connect(addr, 0, 1).map_err(|error| format!("probe connect: {error}"))?;
    if websocket {
        upgrade(&mut stream, addr)?;
    }
    let timeouts = stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)));
    timeouts.map_err(|error| format!("probe: {error}"))?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|error| format!("probe histogram: {error}"))?;
    for _ in 0..PROBE_REQUESTS {
        let sent = Instant::now();
        let exchanged = stream
            .write_all(&request)
            .and_then(|()| stream.read_exact(&mut answer));
        match exchanged {
            Ok(()) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!(
                    "a new client got no answer within {} s",
                    PROBE_TIMEOUT.as_secs_f64()
                ))
            }
            Err(error) => return Err(format!("probe: {error}")),
        }
        let micros = sent.elapsed().as_micros();
        latency.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
    }
    Ok(latency)
}

/// Idle connections the server has closed (read end at EOF or reset); the rest stay as they are.
fn closed_count(idle: &[TcpStream]) -> usize {
    let mut byte = [0u8; 1];
    idle.iter()
        .filter(|stream| {
            if stream.set_nonblocking(true).is_err() {
                return true;
            }
            let closed = match stream.peek(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(error) => error.kind() != ErrorKind::WouldBlock,
            };
            let _ = stream.set_nonblocking(false);
            closed
        })
        .count()
}

impl fmt::Display for IdleComparison {
    /// The table: one line per model.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} idle connections; server on CPU {:?}, clients on CPU {:?}; probe: {} echo round trips per step",
            self.connections, self.server_cpus, self.load_cpus, PROBE_REQUESTS
        )?;
        writeln!(
            f,
            "{:<9} {:>7} {:>9} {:>9} {:>8} {:>9} {:>9}  gave out",
            "model", "held", "RSS MiB", "B/conn", "threads", "p50 µs", "p99 µs"
        )?;
        for row in &self.rows {
            let gave_out = match (row.gave_out_at, &row.reason) {
                (Some(at), Some(reason)) => format!("at {at}: {reason}"),
                _ => "no".into(),
            };
            match row.steps.last() {
                Some(step) => writeln!(
                    f,
                    "{:<9} {:>7} {:>9.1} {:>9} {:>8} {:>9.0} {:>9.0}  {gave_out}",
                    row.model,
                    row.held,
                    step.rss_bytes as f64 / (1 << 20) as f64,
                    row.bytes_per_connection
                        .map_or("-".into(), |bytes| format!("{bytes:.0}")),
                    step.threads,
                    step.probe_p50_us,
                    step.probe_p99_us,
                )?,
                None => writeln!(
                    f,
                    "{:<9} {:>7} {:>9} {:>9} {:>8} {:>9} {:>9}  {gave_out}",
                    row.model, 0, "-", "-", "-", "-", "-"
                )?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::steps;

    #[test]
    fn steps_grow_by_decades_then_tenths() {
        assert_eq!(steps(1), vec![1]);
        assert_eq!(steps(50), vec![1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]);
        assert_eq!(
            steps(10_000),
            vec![1, 10, 100, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10_000]
        );
    }
}
