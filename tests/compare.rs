//! `socketserver compare`: the sweep writes a table, an SVG with one series per model and JSON
//! with the documented fields; a level a model cannot serve is a row with its reason, not an
//! abort; `--idle` finds where a model gives out.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use socketserver::compare::idle::IdleComparison;
use socketserver::compare::Comparison;
use util::run_cli;

const MODELS: [&str; 5] = ["threads", "pool", "reactor", "reactors", "prefork"];

fn out_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("socketserver-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn quick_compare_writes_a_table_an_svg_with_one_series_per_model_and_json() {
    let out = out_dir("compare-quick");
    let out_arg = out.to_str().expect("utf-8 path");
    let (status, stdout, stderr) = run_cli(
        &[
            "compare",
            "--quick",
            "--connections",
            "1,8",
            "--out",
            out_arg,
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    // The progress line names every run.
    assert!(
        stderr.contains("[10/10] prefork at 8 connections"),
        "{stderr}"
    );

    // The table: a header and one line per model and level.
    assert!(
        stdout.contains("req/s") && stdout.contains("CPU µs"),
        "{stdout}"
    );
    for model in MODELS {
        for connections in ["1", "8"] {
            let line = stdout
                .lines()
                .find(|line| {
                    let mut words = line.split_whitespace();
                    words.next() == Some(model) && words.next() == Some(connections)
                })
                .unwrap_or_else(|| panic!("no row for {model} at {connections}:\n{stdout}"));
            assert!(line.ends_with("ok"), "{line}");
        }
    }

    // compare.json reads back into the documented structure, every row measured.
    let json = std::fs::read_to_string(out.join("compare.json")).expect("compare.json");
    let comparison: Comparison = serde_json::from_str(&json).expect("compare.json parses");
    assert_eq!(comparison.models, MODELS);
    assert_eq!(comparison.rows.len(), 10);
    for row in &comparison.rows {
        assert!(row.ok, "{row:?}");
        assert_eq!(
            (row.connected, row.served),
            (row.connections, row.connections)
        );
        assert!(row.requests_per_second > 0.0 && row.p50_us > 0.0, "{row:?}");
        assert!(
            row.p50_us <= row.p99_us && row.p99_us <= row.max_us,
            "{row:?}"
        );
        assert!(row.server_cpu_us_per_request.is_some_and(|cpu| cpu > 0.0));
        assert!(
            row.server_rss_bytes > 0 && row.server_threads >= 1,
            "{row:?}"
        );
    }
    // The models differ where they should: a prefork server is several processes, a thread
    // per connection holds a thread for each of the 8 connections.
    let row = |model: &str, connections: usize| {
        comparison
            .rows
            .iter()
            .find(|row| row.model == model && row.connections == connections)
            .expect("row")
    };
    assert!(row("prefork", 8).server_processes >= 3);
    assert!(row("threads", 8).server_threads >= 9);
    assert_eq!(row("reactor", 8).server_processes, 1);
    // Field names as documented, read as plain JSON.
    let value: serde_json::Value = serde_json::from_str(&json).expect("plain JSON");
    for field in [
        "model",
        "connections",
        "ok",
        "failure",
        "connected",
        "served",
        "requests_per_second",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "server_cpu_us_per_request",
        "server_cpu_load",
        "server_rss_bytes",
        "server_threads",
        "server_processes",
    ] {
        assert!(value["rows"][0].get(field).is_some(), "{field} missing");
    }

    // compare.svg is XML with one series per model: a legend entry for each, and in each of
    // the three panels one line of the model's own colour.
    let svg = std::fs::read_to_string(out.join("compare.svg")).expect("compare.svg");
    let document = roxmltree::Document::parse(&svg).expect("compare.svg is XML");
    let texts: Vec<String> = document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .filter_map(|node| node.text().map(|text| text.trim().to_string()))
        .collect();
    for model in MODELS {
        assert_eq!(
            texts.iter().filter(|text| *text == model).count(),
            1,
            "legend entry for {model}"
        );
    }
    let mut lines_by_colour: BTreeMap<String, usize> = BTreeMap::new();
    for node in document
        .descendants()
        .filter(|node| node.has_tag_name("polyline") && node.attribute("stroke-width") == Some("2"))
    {
        let colour = node.attribute("stroke").expect("stroke").to_string();
        *lines_by_colour.entry(colour).or_default() += 1;
    }
    assert_eq!(lines_by_colour.len(), MODELS.len(), "{lines_by_colour:?}");
    assert!(lines_by_colour.values().all(|&lines| lines == 3));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_level_a_model_cannot_serve_is_reported_with_its_reason_and_the_run_goes_on() {
    let out = out_dir("compare-failure");
    let out_arg = out.to_str().expect("utf-8 path");
    // The reactor closes connections over its cap of 50; the pool's 64 threads serve 64 of 100
    // connections and leave the rest waiting in the queue.
    let (status, stdout, stderr) = run_cli(
        &[
            "compare",
            "--quick",
            "--models",
            "reactor,pool",
            "--connections",
            "2,100",
            "--max-connections",
            "50",
            "--out",
            out_arg,
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let json = std::fs::read_to_string(out.join("compare.json")).expect("compare.json");
    let comparison: Comparison = serde_json::from_str(&json).expect("compare.json parses");
    let outcome: BTreeSet<(String, usize, bool)> = comparison
        .rows
        .iter()
        .map(|row| (row.model.clone(), row.connections, row.ok))
        .collect();
    assert_eq!(
        outcome,
        BTreeSet::from([
            ("reactor".into(), 2, true),
            ("reactor".into(), 100, false),
            ("pool".into(), 2, true),
            ("pool".into(), 100, false),
        ])
    );
    let reactor = &comparison.rows[1];
    let reason = reactor.failure.as_deref().expect("a reason");
    assert!(reason.starts_with("50 of 100 connections lost"), "{reason}");
    // What it did serve is still measured, and the table shows the reason on the row.
    assert!(reactor.requests_per_second > 0.0, "{reactor:?}");
    assert!(stdout.contains(reason), "{stdout}");
    let pool = &comparison.rows[3];
    assert!(pool.failure.is_some(), "{pool:?}");
    assert!(stdout.contains(pool.failure.as_deref().unwrap_or_default()));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn idle_capacity_finds_where_the_pool_gives_out_and_the_reactor_does_not() {
    let out = out_dir("compare-idle");
    let out_arg = out.to_str().expect("utf-8 path");
    let (status, stdout, stderr) = run_cli(
        &[
            "compare",
            "--idle",
            "100",
            "--models",
            "reactor,pool",
            "--out",
            out_arg,
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let json = std::fs::read_to_string(out.join("idle.json")).expect("idle.json");
    let idle: IdleComparison = serde_json::from_str(&json).expect("idle.json parses");
    let reactor = &idle.rows[0];
    assert_eq!((reactor.model.as_str(), reactor.held), ("reactor", 100));
    assert_eq!(reactor.gave_out_at, None, "{reactor:?}");
    assert!(reactor.bytes_per_connection.is_some(), "{reactor:?}");
    assert!(reactor.steps.iter().all(|step| step.probe_p99_us > 0.0));
    // 64 pool threads, each held by an idle connection: the next client waits in the queue.
    let pool = &idle.rows[1];
    let gave_out_at = pool.gave_out_at.expect("the pool gives out");
    assert!((64..=100).contains(&gave_out_at), "{pool:?}");
    assert!(pool.held < gave_out_at && pool.held >= 10, "{pool:?}");
    let reason = pool.reason.as_deref().expect("a reason");
    assert!(reason.contains("no answer"), "{reason}");
    assert!(stdout.contains(reason), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn compare_measures_http_with_pipelining_under_every_model() {
    let out = out_dir("compare-http");
    let out_arg = out.to_str().expect("utf-8 path");
    let (status, stdout, stderr) = run_cli(
        &[
            "compare",
            "--protocol",
            "http",
            "--pipeline",
            "4",
            "--connections",
            "4",
            "--warmup",
            "0.1",
            "--duration",
            "0.4",
            "--out",
            out_arg,
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("http GET / requests, 4 in flight per connection"),
        "{stdout}"
    );
    let json = std::fs::read_to_string(out.join("compare.json")).expect("compare.json");
    let comparison: Comparison = serde_json::from_str(&json).expect("a Comparison");
    assert_eq!(
        (comparison.protocol.as_str(), comparison.pipeline),
        ("http", 4)
    );
    assert_eq!(comparison.rows.len(), MODELS.len());
    for row in &comparison.rows {
        assert!(row.ok, "{}: {:?}", row.model, row.failure);
        assert!(row.requests_per_second > 0.0, "{}", row.model);
        assert_eq!(row.served, 4, "{}", row.model);
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn compare_measures_websocket_echo_under_every_model_and_idle_websockets() {
    let out = out_dir("compare-ws");
    let out_arg = out.to_str().expect("utf-8 path");
    let (status, stdout, stderr) = run_cli(
        &[
            "compare",
            "--protocol",
            "ws",
            "--connections",
            "4",
            "--warmup",
            "0.1",
            "--duration",
            "0.4",
            "--out",
            out_arg,
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("WebSocket 64-byte binary messages"),
        "{stdout}"
    );
    let json = std::fs::read_to_string(out.join("compare.json")).expect("compare.json");
    let comparison: Comparison = serde_json::from_str(&json).expect("a Comparison");
    assert_eq!(comparison.protocol, "ws");
    for row in &comparison.rows {
        assert!(row.ok, "{}: {:?}", row.model, row.failure);
        assert_eq!(row.served, 4, "{}", row.model);
    }
    let (status, stdout, stderr) = run_cli(
        &[
            "compare",
            "--idle",
            "50",
            "--protocol",
            "ws",
            "--models",
            "reactor,threads",
            "--out",
            out_arg,
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let json = std::fs::read_to_string(out.join("idle.json")).expect("idle.json");
    let idle: IdleComparison = serde_json::from_str(&json).expect("an IdleComparison");
    for row in &idle.rows {
        assert_eq!(
            (row.held, row.gave_out_at),
            (50, None),
            "{}: {:?}",
            row.model,
            row.reason
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Starts `compare` on a long sweep of the reactor and waits for the server it starts; returns
/// both processes.
fn compare_with_its_server() -> (std::process::Child, u32) {
    use std::process::{Command, Stdio};
    let out = out_dir("compare-signalled");
    let child = Command::new(env!("CARGO_BIN_EXE_socketserver"))
        .args(["compare", "--models", "reactor", "--connections", "1"])
        .args(["--warmup", "0", "--duration", "60", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn compare");
    let mut server = None;
    // A serving reactor has started its worker threads, which it does only after printing its
    // address (a server killed before that dies of the broken pipe instead).
    util::wait_for("compare's server to be serving", || {
        server = util::children_of(child.id()).first().copied();
        server.is_some_and(|pid| socketserver::compare::process::Usage::of(pid).threads >= 2)
    });
    (child, server.expect("a server"))
}

fn exit_of(child: &mut std::process::Child) -> std::process::ExitStatus {
    let mut status = None;
    util::wait_for("compare to exit", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

/// `compare` stopped its server only when its own values were dropped, so SIGTERM left the
/// server running under init. It stops (and waits for) the server before it exits.
#[test]
fn a_signal_to_compare_stops_the_server_it_started() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (mut compare, server) = compare_with_its_server();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(compare.id() as libc::pid_t, signal) };
        let status = exit_of(&mut compare);
        assert_eq!(status.code(), Some(128 + signal), "{status:?}");
        assert!(
            !util::is_alive(server),
            "the server {server} outlived compare"
        );
    }
}

/// However `compare` dies, its server goes too: the kernel signals it (PR_SET_PDEATHSIG).
#[test]
fn a_killed_compare_takes_its_server_with_it() {
    let (mut compare, server) = compare_with_its_server();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(compare.id() as libc::pid_t, libc::SIGKILL) };
    exit_of(&mut compare);
    util::wait_for("the orphaned server to exit", || !util::is_alive(server));
}

/// The CPU time of a prefork worker that died inside the measured window was lost, since only
/// live children were read. A worker that died and was waited for keeps counting.
#[test]
fn usage_keeps_the_cpu_time_of_a_worker_that_died() {
    use socketserver::compare::process::Usage;
    use std::io::Write;
    let cli = util::Cli::start(&["serve", "--model", "prefork", "--processes", "1"], None);
    let workers = util::wait_for_workers(&cli.child, 1);
    let worker_cpu = || Usage::of(workers[0]).cpu_seconds;
    // Make the worker spend enough CPU to show at the clock's 10 ms resolution.
    let mut stream = util::connect(cli.addr);
    let message = vec![b'c'; 64 * 1024];
    while worker_cpu() < 0.05 {
        stream.write_all(&message).expect("write");
        util::read_exact(&mut stream, message.len());
    }
    drop(stream);
    let before = Usage::of(cli.child.id()).cpu_seconds;
    // SAFETY: kill(2) on a worker of our own child.
    unsafe { libc::kill(workers[0] as libc::pid_t, libc::SIGKILL) };
    util::wait_for("the worker replaced", || {
        let now = util::children_of(cli.child.id());
        now.len() == 1 && now[0] != workers[0]
    });
    let after = Usage::of(cli.child.id()).cpu_seconds;
    assert!(
        after >= before,
        "the dead worker's CPU time was lost: {before} s, then {after} s"
    );
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "{status:?} {stderr}");
}
