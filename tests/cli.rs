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
