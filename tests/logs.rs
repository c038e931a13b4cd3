//! Logs you can follow: with request logging on, every HTTP request's line carries its
//! connection, its number on that connection and its W3C trace id (the incoming
//! `traceparent`'s when valid, a new one otherwise), and `--log-format json` writes each line
//! as one JSON object.

mod util;

use std::io::Write;

use serde_json::Value;
use util::{connect, read_to_end, Cli};

#[test]
fn a_requests_log_line_carries_its_connection_number_and_trace_id_as_json() {
    let server = Cli::start_with_env(
        &["--log-format", "json", "serve", "--protocol", "http"],
        &[("RUST_LOG", "warn,socketserver::http::request=debug")],
    );
    let traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut stream = connect(server.addr);
    let requests = format!(
        "GET / HTTP/1.1\r\nHost: t\r\ntraceparent: {traced}\r\n\r\n\
         GET /metrics HTTP/1.1\r\nHost: t\r\ntraceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n\r\n\
         GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(requests.as_bytes()).expect("write");
    let answers = String::from_utf8(read_to_end(&mut stream).expect("answers")).expect("text");
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 3, "{answers}");
    let (status, stderr) = server.terminate();
    assert!(status.success());
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .filter(|line: &Value| line["target"] == "socketserver::http::request")
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    let field = |line: &Value, name: &str| -> String {
        let msg = line["msg"].as_str().expect("a message");
        msg.split(' ')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {msg}"))
            .to_string()
    };
    for line in &lines {
        assert_eq!(line["level"], "DEBUG");
        assert!(
            line["ts"].as_str().is_some_and(|ts| ts.contains('T')),
            "{line}"
        );
    }
    // One connection, numbered requests, in order.
    let conn = field(&lines[0], "conn");
    assert!(lines.iter().all(|line| field(line, "conn") == conn));
    let numbers: Vec<String> = lines.iter().map(|line| field(line, "request")).collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    // The valid trace is kept; an all-zero one is refused and replaced, as is a missing one.
    assert_eq!(
        field(&lines[0], "trace"),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    for made in [field(&lines[1], "trace"), field(&lines[2], "trace")] {
        assert_eq!(made.len(), 32, "{made}");
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(made, "00000000000000000000000000000000");
        assert_ne!(made, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    assert_ne!(field(&lines[1], "trace"), field(&lines[2], "trace"));
    assert_eq!(field(&lines[0], "status"), "200");
    assert_eq!(field(&lines[1], "path"), "\"/metrics\"");
}

#[test]
fn no_request_line_is_written_at_the_default_level() {
    let server = Cli::start_with_env(&["serve", "--protocol", "http"], &[("RUST_LOG", "warn")]);
    let mut stream = connect(server.addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let _ = read_to_end(&mut stream);
    let (_, stderr) = server.terminate();
    assert!(!stderr.contains("request="), "{stderr}");
}
