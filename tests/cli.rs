//! The command line: the first line contract, clean exits on SIGTERM, clear errors.

mod util;

use std::io::Write;
use std::process::Command;

use util::*;

#[test]
fn serve_prints_its_address_first_and_serves_every_protocol() {
    for protocol in ["echo", "line", "frame"] {
        let server = Cli::start(&["serve", "--protocol", protocol], None);
        let mut stream = connect(server.addr);
        let message: &[u8] = match protocol {
            "frame" => b"\x00\x00\x00\x02hi",
            _ => b"hello\n",
        };
        assert_eq!(
            round_trip(&mut stream, message),
            message,
            "protocol {protocol}"
        );
        drop(stream);
        let (status, stderr) = server.terminate();
        assert!(
            status.success(),
            "{protocol}: exit status {status:?}, stderr: {stderr}"
        );
    }
}

#[test]
fn every_model_serves_and_exits_cleanly_on_sigterm() {
    for model in ["reactor", "reactors", "threads", "pool", "prefork"] {
        let server = Cli::start(
            &[
                "serve",
                "--protocol",
                "line",
                "--model",
                model,
                "--threads",
                "4",
                "--processes",
                "2",
            ],
            None,
        );
        let mut stream = connect(server.addr);
        for _ in 0..3 {
            assert_eq!(
                round_trip(&mut stream, b"three times\n"),
                b"three times\n",
                "{model}"
            );
        }
        let (status, stderr) = server.terminate();
        assert!(
            status.success(),
            "{model}: exit status {status:?}, stderr: {stderr}"
        );
        assert!(
            is_closed_by_server(&mut stream),
            "{model}: client closed at shutdown"
        );
    }
}

#[test]
fn every_model_serves_udp_and_exits_cleanly_on_sigterm() {
    for model in ["reactor", "reactors", "threads", "pool", "prefork"] {
        let server = Cli::start(
            &[
                "serve",
                "--udp",
                "--model",
                model,
                "--threads",
                "2",
                "--processes",
                "2",
            ],
            None,
        );
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
        client.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        for round in 0..3 {
            let message = format!("{model} {round}");
            client
                .send_to(message.as_bytes(), server.addr)
                .expect("send");
            let mut answer = [0; 64];
            let count = client.recv(&mut answer).expect("an answer");
            assert_eq!(&answer[..count], message.as_bytes(), "{model}");
        }
        let (status, stderr) = server.terminate();
        assert!(
            status.success(),
            "{model}: exit status {status:?}, stderr: {stderr}"
        );
    }
}

#[test]
fn sigterm_closes_connections_and_exits_cleanly() {
    let server = Cli::start(&["serve", "--protocol", "echo"], None);
    let mut stream = connect(server.addr);
    assert_eq!(round_trip(&mut stream, b"ping"), b"ping");
    let addr = server.addr;
    let (status, stderr) = server.terminate();
    assert!(status.success(), "exit status {status:?}, stderr: {stderr}");
    assert!(is_closed_by_server(&mut stream));
    // No probe of `addr` now: the process has exited (so its listener is gone), and the port
    // may already be another test's, whose counts a stray connection would upset.
    let _ = addr;
}

#[test]
fn bad_arguments_get_a_clear_message_and_a_failing_exit() {
    let cases: [&[&str]; 9] = [
        &["serve", "--protocol", "gopher"],
        &[
            "serve",
            "--model",
            "prefork",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &["serve", "--udp", "--protocol", "line"],
        &["serve", "--model", "prefork", "--processes", "0"],
        &["serve", "--model", "fibers"],
        &["serve", "--model", "pool", "--threads", "0"],
        &["serve", "--max-connections", "0"],
        &["serve", "--addr", "not an address"],
        &["frobnicate"],
    ];
    for args in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_socketserver"))
            .args(args)
            .output()
            .expect("run");
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.trim().is_empty(), "{args:?} must say why");
        assert!(
            output.stdout.is_empty(),
            "{args:?} must not claim to listen"
        );
    }
}

#[test]
fn metrics_addr_serves_the_counters_of_a_server_of_another_protocol() {
    for model in ["reactor", "reactors", "threads", "pool"] {
        let server = Cli::start(
            &[
                "serve",
                "--protocol",
                "line",
                "--model",
                model,
                "--threads",
                "2",
                "--metrics-addr",
                "127.0.0.1:0",
            ],
            None,
        );
        let second = server.next_line();
        let metrics_addr: std::net::SocketAddr = second
            .strip_prefix("metrics at http://")
            .and_then(|rest| rest.strip_suffix("/metrics\n"))
            .unwrap_or_else(|| panic!("{model}: unexpected second line {second:?}"))
            .parse()
            .expect("an address");
        let mut stream = connect(server.addr);
        assert_eq!(round_trip(&mut stream, b"counted\n"), b"counted\n");
        let scrape = || {
            let mut scraper = connect(metrics_addr);
            scraper
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("write");
            String::from_utf8(read_to_end(&mut scraper).expect("the whole answer")).expect("utf-8")
        };
        let sample = |text: &str, name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{model}: no {name} in {text}"))
                .parse()
                .expect("a number")
        };
        wait_for("the round trip counted", || {
            sample(&scrape(), "socketserver_sent_bytes_total") >= 8.0
        });
        let text = scrape();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{model}: {text}");
        // The scrapes are served apart: only the line client is counted.
        assert_eq!(
            sample(&text, "socketserver_connections_accepted_total"),
            1.0,
            "{model}"
        );
        assert_eq!(
            sample(&text, "socketserver_received_bytes_total"),
            8.0,
            "{model}"
        );
        drop(stream);
        let (status, stderr) = server.terminate();
        assert!(status.success(), "{model}: {status:?}, stderr: {stderr}");
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_socketserver"))
        .args(["serve", "--addr", &addr])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("binding") && stderr.contains(&addr),
        "stderr: {stderr}"
    );
}

#[test]
fn sigterm_right_after_another_loop_answers_still_shuts_down_gracefully() {
    // Regression: the loop that takes the signals registered them only after the other loops
    // were already serving, so a SIGTERM sent after an answer from one of those could kill the
    // process outright (exit by signal) instead of shutting it down.
    for udp in [false, true] {
        for _ in 0..10 {
            let mut args = vec!["serve", "--model", "reactors", "--threads", "8"];
            if udp {
                args.push("--udp");
            }
            let server = Cli::start(&args, None);
            if udp {
                let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
                client.set_read_timeout(Some(TIMEOUT)).expect("timeout");
                client.send_to(b"ping", server.addr).expect("send");
                let mut answer = [0; 8];
                assert_eq!(client.recv(&mut answer).expect("an answer"), 4);
            } else {
                let mut stream = connect(server.addr);
                assert_eq!(round_trip(&mut stream, b"ping"), b"ping");
            }
            let (status, stderr) = server.terminate();
            assert!(
                status.success(),
                "udp {udp}: exit {status:?}, stderr: {stderr}"
            );
        }
    }
}

/// The body of one `GET /metrics` from `addr`.
fn metrics_body(addr: std::net::SocketAddr) -> String {
    let mut scraper = connect(addr);
    scraper
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let answer =
        String::from_utf8(read_to_end(&mut scraper).expect("the whole answer")).expect("utf-8");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    body.to_string()
}

/// The value of the sample named exactly `name` (no labels).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .expect("a number")
}

#[test]
fn metrics_carry_the_process_figures_under_their_standard_names() {
    let server = Cli::start(&["serve", "--protocol", "pubsub", "--memory"], Some(512));
    let before = metrics_body(server.addr);
    assert_eq!(sample(&before, "process_max_fds"), 512.0, "the limit set");
    let open = sample(&before, "process_open_fds");
    assert!((3.0..512.0).contains(&open), "{open} open");
    assert!(sample(&before, "process_resident_memory_bytes") > 1024.0 * 1024.0);
    assert!(
        sample(&before, "process_virtual_memory_bytes")
            >= sample(&before, "process_resident_memory_bytes")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let started = sample(&before, "process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "started at {started}, now {now}"
    );
    // Twenty more connections are twenty more descriptors in the server.
    let held: Vec<_> = (0..20).map(|_| connect(server.addr)).collect();
    wait_for("the connections counted as descriptors", || {
        sample(&metrics_body(server.addr), "process_open_fds") >= open + 20.0
    });
    let cpu = sample(&metrics_body(server.addr), "process_cpu_seconds_total");
    assert!((0.0..600.0).contains(&cpu), "{cpu} CPU seconds");
    drop(held);
}

#[test]
#[ignore = "needs promtool (Debian package prometheus)"]
fn promtool_accepts_the_metrics_of_every_protocol() {
    for protocol in ["http", "pubsub"] {
        let mut args = vec!["serve", "--protocol", protocol];
        if protocol == "pubsub" {
            args.push("--memory");
        }
        let server = Cli::start(&args, None);
        let body = metrics_body(server.addr);
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs");
        check
            .stdin
            .take()
            .expect("its input")
            .write_all(body.as_bytes())
            .expect("the metrics written");
        let output = check.wait_with_output().expect("promtool ends");
        assert!(
            output.status.success(),
            "{protocol}: promtool says {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
