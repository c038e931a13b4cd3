//! `socketserver compare`: every concurrency model under the same load, side by side.
//!
//! For each model and each concurrency level, [`run`] starts a fresh server as a child process
//! (`socketserver serve --model …`) pinned to the server's CPUs, drives it with the load
//! generator ([`crate::load`]) on a thread pinned to the other CPUs, so the two never share a
//! core, and samples the server through `/proc` over exactly the measured window: CPU seconds
//! per request, resident memory and threads. A model that cannot serve a level (connections
//! refused, closed, or held without an answer) is recorded with the reason, and the sweep goes
//! on. [`Comparison`] prints as one table, serialises to `compare.json`, and [`chart::write_svg`]
//! draws `compare.svg`.
//!
//! [`idle::run`] (`compare --idle N`) asks a different question: how many idle connections each
//! model holds, at what memory per connection, and whether a new client is still answered.

pub mod chart;
pub mod idle;
pub mod process;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::load::{self, LoadConfig, LoadProtocol, Phase};
use process::{ServerProcess, Usage};

/// The concurrency models `compare` runs, in the order of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// A thread per connection.
    Threads,
    /// A fixed pool of handler threads (64) fed by a bounded queue of connections.
    Pool,
    /// One event loop on one thread.
    Reactor,
    /// Several event loops, one per thread, each with its own SO_REUSEPORT listener.
    Reactors,
    /// A supervisor and worker processes, each one event loop on the shared socket.
    Prefork,
}

impl ModelKind {
    /// Every model, in table order.
    pub const ALL: [ModelKind; 5] = [
        ModelKind::Threads,
        ModelKind::Pool,
        ModelKind::Reactor,
        ModelKind::Reactors,
        ModelKind::Prefork,
    ];

    /// The name `serve --model` takes.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Threads => "threads",
            ModelKind::Pool => "pool",
            ModelKind::Reactor => "reactor",
            ModelKind::Reactors => "reactors",
            ModelKind::Prefork => "prefork",
        }
    }

    /// The model named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ModelKind> {
        ModelKind::ALL
            .into_iter()
            .find(|model| model.name() == name)
    }

    /// The `serve` arguments that start this model on an ephemeral loopback port, with
    /// `parallel` loops or processes where the model has several.
    pub fn serve_args(
        self,
        protocol: &str,
        max_connections: usize,
        parallel: usize,
    ) -> Vec<String> {
        let mut args = vec![
            "serve".to_string(),
            format!("--model={}", self.name()),
            format!("--protocol={protocol}"),
            "--addr=127.0.0.1:0".into(),
            format!("--max-connections={max_connections}"),
            // Idle connections are part of what is measured, not something to reclaim.
            "--idle-timeout=0".into(),
        ];
        if protocol == "pubsub" {
            // What is compared is the loops' fan-out, not the disk: a bounded memory history.
            args.push("--memory".into());
        }
        match self {
            ModelKind::Reactors => args.push(format!("--threads={parallel}")),
            ModelKind::Prefork => args.push(format!("--processes={parallel}")),
            _ => {}
        }
        args
    }
}

/// What a comparison runs. [`CompareConfig::new`] gives the default run; [`CompareConfig::quick`]
/// the short one.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The `socketserver` program that serves (started as `program serve …`).
    pub program: PathBuf,
    /// Models, in table order.
    pub models: Vec<ModelKind>,
    /// Concurrency levels (connections), in table order (1..=100,000 each).
    pub connections: Vec<usize>,
    /// The request format (the server is started with the same protocol).
    pub protocol: LoadProtocol,
    /// Payload bytes per request (not HTTP's).
    pub message_bytes: usize,
    /// Requests each connection keeps in flight (HTTP pipelining when above 1).
    pub pipeline: usize,
    /// Load before measuring, per run.
    pub warmup: Duration,
    /// The measured window, per run.
    pub duration: Duration,
    /// CPUs the server runs on.
    pub server_cpus: Vec<usize>,
    /// CPUs the load generator runs on (the same as the server's only on a one-CPU machine).
    pub load_cpus: Vec<usize>,
    /// Event loops of `reactors` and processes of `prefork` (default: the server's CPUs, at
    /// least 2, so that they differ from `reactor`).
    pub parallel: usize,
    /// The server's `--max-connections` (default 100,000: no model is capped below what it
    /// can hold).
    pub max_connections: usize,
    /// Serve and load over TLS: the servers get this certificate and key, the load trusts the
    /// CA (so the cost of TLS per model is one flag away).
    #[cfg(feature = "tls")]
    pub tls: Option<CompareTls>,
}

/// The files a comparison over TLS needs.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct CompareTls {
    /// The servers' certificate chain (PEM); it must name 127.0.0.1.
    pub certificate: PathBuf,
    /// Its private key (PEM).
    pub private_key: PathBuf,
    /// The CA the load generator trusts (PEM).
    pub ca: PathBuf,
}

impl CompareConfig {
    /// The default run: every model at 1, 16, 256, 1,024 and 4,096 connections, 64-byte echo,
    /// 1 s of warm-up and 5 s measured per run (about 3 minutes in all), the server on the first
    /// half of this process's CPUs (at least one) and the load on the rest.
    pub fn new(program: PathBuf) -> CompareConfig {
        let cpus = process::available_cpus();
        let (server_cpus, load_cpus) = split_cpus(&cpus, cpus.len().div_ceil(2).max(1));
        CompareConfig {
            program,
            models: ModelKind::ALL.to_vec(),
            connections: vec![1, 16, 256, 1024, 4096],
            protocol: LoadProtocol::Echo,
            message_bytes: 64,
            pipeline: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            parallel: server_cpus.len().max(2),
            server_cpus,
            load_cpus,
            max_connections: 100_000,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The short run (under a minute on two cores): as [`CompareConfig::new`], with 0.25 s of
    /// warm-up and 1 s measured per run.
    pub fn quick(program: PathBuf) -> CompareConfig {
        CompareConfig {
            warmup: Duration::from_millis(250),
            duration: Duration::from_secs(1),
            ..CompareConfig::new(program)
        }
    }

    /// Puts the server on the first `count` of this process's CPUs and the load on the rest
    /// (on a one-CPU machine both share it).
    pub fn server_cpu_count(&mut self, count: usize) -> Result<()> {
        let cpus = process::available_cpus();
        if count == 0 || count > cpus.len() {
            return Err(Error::Config(format!(
                "--server-cpus must be within 1..={} (the CPUs this process may use)",
                cpus.len()
            )));
        }
        (self.server_cpus, self.load_cpus) = split_cpus(&cpus, count);
        self.parallel = count.max(2);
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let fail = |message: &str| Err(Error::Config(message.into()));
        if self.models.is_empty() {
            return fail("compare needs at least one model");
        }
        if self.connections.is_empty() {
            return fail("compare needs at least one concurrency level");
        }
        if self.server_cpus.is_empty() || self.load_cpus.is_empty() {
            return fail("compare needs CPUs for the server and for the load");
        }
        if !(1..=1024).contains(&self.pipeline) {
            return fail("pipeline must be within 1..=1024");
        }
        if !(1..=1024).contains(&self.parallel) {
            return fail("parallel loops or processes must be within 1..=1024");
        }
        Ok(())
    }

    pub(crate) fn protocol_name(&self) -> &'static str {
        match self.protocol {
            LoadProtocol::Echo => "echo",
            LoadProtocol::Line => "line",
            LoadProtocol::Frame => "frame",
            LoadProtocol::Http => "http",
            LoadProtocol::Ws => "ws",
            LoadProtocol::Pubsub => "pubsub",
        }
    }
}

/// Splits `cpus` into the first `count` (at least one) and the rest; with nothing left, the
/// load shares the server's CPUs.
fn split_cpus(cpus: &[usize], count: usize) -> (Vec<usize>, Vec<usize>) {
    let count = count.clamp(1, cpus.len().max(1));
    let server: Vec<usize> = cpus.iter().copied().take(count).collect();
    let load: Vec<usize> = cpus.iter().copied().skip(count).collect();
    let server = if server.is_empty() { vec![0] } else { server };
    let load = if load.is_empty() {
        server.clone()
    } else {
        load
    };
    (server, load)
}

/// One model at one concurrency level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The model's name (`threads`, `pool`, `reactor`, `reactors`, `prefork`).
    pub model: String,
    /// Connections the load opened.
    pub connections: usize,
    /// Whether every connection was established and answered, with no loss.
    pub ok: bool,
    /// Why not, when `ok` is false.
    pub failure: Option<String>,
    /// Connections established.
    pub connected: usize,
    /// Connections with at least one answer in the measured window.
    pub served: usize,
    /// Answers per second in the measured window.
    pub requests_per_second: f64,
    /// Latency percentiles of the answered requests, in microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest answer.
    pub max_us: f64,
    /// Server CPU time (user + system, all its threads and processes) per answered request, in
    /// microseconds; `None` when nothing was answered.
    pub server_cpu_us_per_request: Option<f64>,
    /// Server CPU seconds per second of the measured window (1.0 is one core busy).
    pub server_cpu_load: f64,
    /// Server resident memory at the end of the window, in bytes (all its processes).
    pub server_rss_bytes: u64,
    /// Server threads at the end of the window (all its processes).
    pub server_threads: u64,
    /// Server processes at the end of the window.
    pub server_processes: u64,
}

impl Row {
    fn failed(model: ModelKind, connections: usize, reason: String) -> Row {
        Row {
            model: model.name().into(),
            connections,
            failure: Some(reason),
            ..Row::default()
        }
    }

    /// Whether the row has latency figures (something was answered in the window).
    pub fn measured(&self) -> bool {
        self.requests_per_second > 0.0
    }
}

/// A whole comparison: how it was run, and one row per model and level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The request format.
    pub protocol: String,
    /// Payload bytes per request (not HTTP's).
    pub message_bytes: usize,
    /// Requests each connection kept in flight.
    pub pipeline: usize,
    /// Warm-up per run, in seconds.
    pub warmup_seconds: f64,
    /// Measured window per run, in seconds.
    pub duration_seconds: f64,
    /// CPUs the server ran on.
    pub server_cpus: Vec<usize>,
    /// CPUs the load ran on.
    pub load_cpus: Vec<usize>,
    /// Loops of `reactors` and processes of `prefork`.
    pub parallel: usize,
    /// Models, in table order.
    pub models: Vec<String>,
    /// One row per model and concurrency level, models outermost.
    pub rows: Vec<Row>,
}

impl Comparison {
    /// What was sent, for titles: "echo 64-byte requests", "http GET / requests, 16 in
    /// flight per connection".
    pub fn requests(&self) -> String {
        let what = if self.protocol == "http" {
            "http GET / requests".to_string()
        } else if self.protocol == "ws" {
            format!("WebSocket {}-byte binary messages", self.message_bytes)
        } else if self.protocol == "pubsub" {
            format!(
                "pub/sub publishes of {} bytes, each acknowledged",
                self.message_bytes
            )
        } else {
            format!("{} {}-byte requests", self.protocol, self.message_bytes)
        };
        if self.pipeline > 1 {
            format!("{what}, {} in flight per connection", self.pipeline)
        } else {
            what
        }
    }

    /// The comparison as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialising it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// What [`run`] is about to do, for a progress line.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// The run about to start, counting from 1.
    pub step: usize,
    /// Runs in all.
    pub steps: usize,
    /// The model.
    pub model: &'a str,
    /// Connections.
    pub connections: usize,
}

/// Runs every model at every level, one fresh server per run; see the
/// [module documentation](self). Only a configuration error stops it: a model failing at a
/// level becomes a row with its reason.
pub fn run(config: &CompareConfig, mut progress: impl FnMut(&Progress<'_>)) -> Result<Comparison> {
    config.validate()?;
    let steps = config.models.len() * config.connections.len();
    let mut rows = Vec::with_capacity(steps);
    for &model in &config.models {
        for &connections in &config.connections {
            progress(&Progress {
                step: rows.len() + 1,
                steps,
                model: model.name(),
                connections,
            });
            rows.push(run_one(config, model, connections));
        }
    }
    Ok(Comparison {
        protocol: config.protocol_name().into(),
        message_bytes: config.message_bytes,
        pipeline: config.pipeline,
        warmup_seconds: config.warmup.as_secs_f64(),
        duration_seconds: config.duration.as_secs_f64(),
        server_cpus: config.server_cpus.clone(),
        load_cpus: config.load_cpus.clone(),
        parallel: config.parallel,
        models: config
            .models
            .iter()
            .map(|model| model.name().into())
            .collect(),
        rows,
    })
}

/// One server, one load, one row.
fn run_one(config: &CompareConfig, model: ModelKind, connections: usize) -> Row {
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut args = model.serve_args(
        config.protocol_name(),
        config.max_connections,
        config.parallel,
    );
    #[cfg(feature = "tls")]
    let connector = match &config.tls {
        None => None,
        Some(tls) => {
            args.push(format!("--tls-cert={}", tls.certificate.display()));
            args.push(format!("--tls-key={}", tls.private_key.display()));
            match crate::tls::TlsConnector::trusting(&tls.ca) {
                Ok(connector) => Some(connector),
                Err(error) => return Row::failed(model, connections, format!("TLS: {error}")),
            }
        }
    };
    let mut server = match ServerProcess::start(&config.program, &args, &config.server_cpus) {
        Ok(server) => server,
        Err(error) => return Row::failed(model, connections, format!("server: {error}")),
    };
    let addr = match server.listen_addr.parse() {
        Ok(addr) => addr,
        Err(_) => {
            let reason = format!("server listens on {:?}, not TCP", server.listen_addr);
            return Row::failed(model, connections, reason);
        }
    };
    let load_config = LoadConfig {
        addr,
        protocol: config.protocol,
        connections,
        duration: config.duration,
        warmup: config.warmup,
        message_bytes: config.message_bytes,
        pipeline: config.pipeline,
        #[cfg(feature = "tls")]
        tls: connector,
        ..LoadConfig::default()
    };
    let (report, window) = match measure(&server, &load_config, &config.load_cpus) {
        Ok(measured) => measured,
        Err(error) => return Row::failed(model, connections, format!("load: {error}")),
    };
    let exited = server.exited();
    let ending = server.stop();
    let seconds = config.duration.as_secs_f64();
    let cpu_seconds = (window.end.cpu_seconds - window.start.cpu_seconds).max(0.0);
    let mut failure = failure_of(&report);
    if exited.is_some() {
        // The server's own ending is the first thing to know: everything else follows from it.
        failure = Some(format!("server {ending} during the run"));
    }
    Row {
        model: model.name().into(),
        connections,
        ok: failure.is_none(),
        failure,
        connected: report.connected,
        served: report.served,
        requests_per_second: report.rate,
        p50_us: report.latency.p50_us,
        p90_us: report.latency.p90_us,
        p99_us: report.latency.p99_us,
        p999_us: report.latency.p999_us,
        max_us: report.latency.max_us,
        server_cpu_us_per_request: (report.recorded > 0)
            .then(|| cpu_seconds * 1e6 / report.recorded as f64),
        server_cpu_load: cpu_seconds / seconds,
        server_rss_bytes: window.end.rss_bytes,
        server_threads: window.end.threads,
        server_processes: window.end.processes,
    }
}

/// The server's usage as the measured window opened and closed.
struct Window {
    start: Usage,
    end: Usage,
}

/// Runs the load on a thread pinned to the load CPUs, sampling the server as the measured
/// window opens and closes.
fn measure(
    server: &ServerProcess,
    load_config: &LoadConfig,
    load_cpus: &[usize],
) -> Result<(load::Report, Window)> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            if let Err(error) = process::pin_current_thread(load_cpus) {
                log::warn!("could not pin the load to CPUs {load_cpus:?}: {error}");
            }
            let mut window = Window {
                start: Usage::default(),
                end: Usage::default(),
            };
            let report = load::run_observed(load_config, |phase| match phase {
                Phase::Measuring => window.start = server.usage(),
                Phase::Draining => window.end = server.usage(),
            })?;
            Ok((report, window))
        });
        worker
            .join()
            .unwrap_or_else(|_| Err(Error::Tool("the load thread panicked".into())))
    })
}

/// Why a load run does not count as a clean pass, if it does not.
fn failure_of(report: &load::Report) -> Option<String> {
    let reason = report
        .first_failure
        .as_deref()
        .map_or(String::new(), |reason| format!(": {reason}"));
    if report.failed_connects > 0 {
        Some(format!(
            "{} of {} connects failed{reason}",
            report.failed_connects, report.connections
        ))
    } else if report.errors > 0 {
        Some(format!(
            "{} of {} connections lost{reason}",
            report.errors, report.connections
        ))
    } else if report.served < report.connected {
        Some(format!(
            "only {} of {} connections answered in the window",
            report.served, report.connected
        ))
    } else if report.recorded == 0 {
        Some("no answers in the measured window".into())
    } else {
        None
    }
}

impl fmt::Display for Comparison {
    /// The table: one line per model and level, failures with their reasons.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}, closed loop, {:.2} s measured after {:.2} s warm-up; \
             server on CPU {:?}, load on CPU {:?}; reactors and prefork run {} loops",
            self.requests(),
            self.duration_seconds,
            self.warmup_seconds,
            self.server_cpus,
            self.load_cpus,
            self.parallel
        )?;
        writeln!(
            f,
            "{:<9} {:>6} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}  status",
            "model",
            "conns",
            "req/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "CPU µs",
            "RSS MiB",
            "threads"
        )?;
        for row in &self.rows {
            let cpu = row
                .server_cpu_us_per_request
                .map_or("-".to_string(), |micros| format!("{micros:.2}"));
            let status = row.failure.as_deref().unwrap_or("ok");
            if row.measured() {
                writeln!(
                    f,
                    "{:<9} {:>6} {:>10} {:>9.0} {:>9.0} {:>9.0} {:>8} {:>8.1} {:>8}  {status}",
                    row.model,
                    row.connections,
                    thousands(row.requests_per_second),
                    row.p50_us,
                    row.p99_us,
                    row.p999_us,
                    cpu,
                    row.server_rss_bytes as f64 / (1 << 20) as f64,
                    row.server_threads,
                )?;
            } else {
                writeln!(
                    f,
                    "{:<9} {:>6} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}  {status}",
                    row.model, row.connections, "-", "-", "-", "-", "-", "-", "-",
                )?;
            }
        }
        Ok(())
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn cpus_split_into_server_and_load() {
        assert_eq!(split_cpus(&[0, 1], 1), (vec![0], vec![1]));
        assert_eq!(split_cpus(&[0, 1, 2, 3], 2), (vec![0, 1], vec![2, 3]));
        // One CPU: the load has to share it.
        assert_eq!(split_cpus(&[3], 1), (vec![3], vec![3]));
    }
}
