//! HTTP/1.1 on the reactor, against raw sockets and an independent client (ureq): keep-alive,
//! pipelining behind an offloaded handler, every split of the input, each limit's answer and
//! clean close, the request timeout, chunked bodies, HEAD, 100-continue, HTTP/1.0, /metrics.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socketserver::protocol::http::{HttpLimits, Request, Response, Router};
use socketserver::protocol::{Http, Session};
use socketserver::{Config, Model, RunningServer};
use util::http::{get, read_answer};
use util::{connect, read_to_end, start_with, test_config, wait_for, TIMEOUT};

/// A router for the tests: hello, echo of the body, a handler offloaded behind a gate.
fn router(gate: Option<crossbeam_channel::Receiver<()>>) -> Router {
    let router = Router::new()
        .get("/", |_| Response::text(200, "Hello, World!"))
        .get("/fast/*", |request: &Request| {
            Response::text(200, request.path().to_string())
        })
        .post("/echo", |request: &Request| {
            let trailers: Vec<String> = request
                .trailers()
                .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(value)))
                .collect();
            Response::new(200)
                .header("X-Trailers", trailers.join(","))
                .body(request.body().to_vec())
        });
    match gate {
        Some(gate) => router.route_offloaded("GET", "/slow", move |_| {
            let _ = gate.recv_timeout(TIMEOUT);
            Response::text(200, "/slow")
        }),
        None => router,
    }
}

fn serve(config: Config, router: Router) -> RunningServer {
    let limits = HttpLimits::from_config(&config);
    let router = Arc::new(router);
    start_with(config, move || Http::new(router.clone(), limits))
}

#[test]
fn keep_alive_reuses_one_connection_for_many_requests() {
    let server = serve(test_config(), router(None));
    let addr = server.local_addr();
    let mut stream = connect(addr);
    let mut buffer = Vec::new();
    for _ in 0..50 {
        stream.write_all(get("/").as_bytes()).expect("write");
        let answer = read_answer(&mut stream, &mut buffer, false);
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, &b"Hello, World!"[..])
        );
        assert_eq!(answer.header("connection"), None);
        assert!(answer
            .header("date")
            .is_some_and(|date| date.ends_with(" GMT")));
        assert_eq!(answer.header("server"), Some("socketserver"));
    }
    // An independent client keeps its connection alive too.
    let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).build();
    for _ in 0..20 {
        let body = agent
            .get(&format!("http://{addr}/"))
            .call()
            .expect("ureq GET")
            .into_string()
            .expect("body");
        assert_eq!(body, "Hello, World!");
    }
    assert_eq!(server.stats().accepted, 2, "one connection each");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn pipelined_requests_are_answered_in_order_behind_a_slow_offloaded_one() {
    let (release, gate) = crossbeam_channel::unbounded();
    let server = serve(test_config(), router(Some(gate)));
    let mut stream = connect(server.local_addr());
    let requests = [get("/slow"), get("/fast/1"), get("/fast/2")].concat();
    stream.write_all(requests.as_bytes()).expect("write");
    // The fast answers are computed at once but must wait for the slow one: nothing arrives.
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let early = stream.read(&mut byte);
    assert!(
        early.is_err(),
        "an answer overtook the slow request: {early:?}"
    );
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    release.send(()).expect("release the slow handler");
    let mut buffer = Vec::new();
    for path in ["/slow", "/fast/1", "/fast/2"] {
        let answer = read_answer(&mut stream, &mut buffer, false);
        assert_eq!(String::from_utf8_lossy(&answer.body), path);
    }
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_deep_pipeline_over_the_queue_bound_is_answered_in_full_and_in_order() {
    let (release, gate) = crossbeam_channel::unbounded();
    let config = Config {
        http_max_pipeline: 4,
        ..test_config()
    };
    let server = serve(config, router(Some(gate)));
    let mut stream = connect(server.local_addr());
    // One slow request, then 20 more: the queue fills at 4 and reading waits for the answers.
    let mut requests = get("/slow");
    for index in 0..20 {
        requests.push_str(&get(&format!("/fast/{index}")));
    }
    stream.write_all(requests.as_bytes()).expect("write");
    release.send(()).expect("release");
    let mut buffer = Vec::new();
    let answer = read_answer(&mut stream, &mut buffer, false);
    assert_eq!(answer.body, b"/slow");
    for index in 0..20 {
        let answer = read_answer(&mut stream, &mut buffer, false);
        assert_eq!(answer.body, format!("/fast/{index}").as_bytes());
    }
    server.shutdown().expect("clean shutdown");
}

/// The session's output with the Date values blanked (the second may turn mid-test).
fn answers_to(chunks: &[&[u8]]) -> String {
    let router = Arc::new(router(None));
    let mut session = Session::new(Http::new(router, HttpLimits::default()));
    for chunk in chunks {
        session.feed(chunk);
    }
    let text = String::from_utf8_lossy(&session.take_output()).into_owned();
    text.lines()
        .map(|line| {
            if line.starts_with("Date: ") {
                "Date: -"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_request_split_at_every_byte_parses_the_same() {
    let input = concat!(
        "GET /fast/a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nT1: v1\r\nT2: v2\r\n\r\n",
        "\r\nHEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    )
    .as_bytes();
    let whole = answers_to(&[input]);
    assert_eq!(whole.matches("HTTP/1.1 200 OK").count(), 5, "{whole}");
    assert!(
        whole.contains("X-Trailers: T1=v1,T2=v2\n\nabcde"),
        "{whole}"
    );
    assert!(whole
        .ends_with("Connection: close\nContent-Type: text/plain; charset=utf-8\n\nHello, World!"));
    for split in 1..input.len() {
        assert_eq!(
            answers_to(&[&input[..split], &input[split..]]),
            whole,
            "split at {split}"
        );
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(answers_to(&bytes), whole, "one byte at a time");
}

/// The status answered to `request` by a connection with `limits`, fed whole and split at every
/// byte (which must not change it).
fn status_for(limits: HttpLimits, request: &[u8]) -> u16 {
    let router = Arc::new(router(None));
    let status_of = |pieces: &[&[u8]]| {
        let mut session = Session::new(Http::new(router.clone(), limits));
        for piece in pieces {
            session.feed(piece);
        }
        let output = session.take_output();
        let text = String::from_utf8_lossy(&output);
        text.get(9..12)
            .and_then(|code| code.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no answer: {text:?}"))
    };
    let whole = status_of(&[request]);
    for split in 0..=request.len() {
        let (head, tail) = request.split_at(split);
        assert_eq!(status_of(&[head, tail]), whole, "split at {split}");
    }
    whole
}

/// Each HTTP limit holds at its boundary: one below and exactly at it are served, one above
/// gets the limit's status.
#[test]
fn every_http_limit_holds_at_its_boundary() {
    let limits = HttpLimits {
        max_head_bytes: 128,
        max_headers: 4,
        max_body_bytes: 50,
        ..HttpLimits::default()
    };
    // A head of exactly `length` bytes, its empty line included.
    let head = |length: usize| {
        let start = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
        let padding = length - start.len() - 4;
        format!("{start}{}\r\n\r\n", "p".repeat(padding)).into_bytes()
    };
    assert_eq!(status_for(limits, &head(127)), 200);
    assert_eq!(status_for(limits, &head(128)), 200);
    assert_eq!(status_for(limits, &head(129)), 431);

    let with_headers = |count: usize| {
        let extra: String = (1..count).map(|i| format!("X-{i}: v\r\n")).collect();
        format!("GET / HTTP/1.1\r\nHost: h\r\n{extra}\r\n").into_bytes()
    };
    assert_eq!(status_for(limits, &with_headers(3)), 200);
    assert_eq!(status_for(limits, &with_headers(4)), 200);
    assert_eq!(status_for(limits, &with_headers(5)), 431);

    let body = |length: usize| {
        let mut request =
            format!("POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n")
                .into_bytes();
        request.resize(request.len() + length, b'b');
        request
    };
    assert_eq!(status_for(limits, &body(49)), 200);
    assert_eq!(status_for(limits, &body(50)), 200);
    assert_eq!(status_for(limits, &body(51)), 413);
}

/// Sends `request` (and `then`), expects `status` with `Connection: close` and the whole error
/// body, then a clean end of stream.
fn expect_rejection(addr: SocketAddr, request: &[u8], then: &[u8], status: u16) {
    let mut stream = connect(addr);
    stream.write_all(request).expect("write");
    // The client keeps sending (a body the server will not read): the answer must survive.
    let _ = stream.write_all(then);
    let all = read_to_end(&mut stream).expect("a clean close, not a reset");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status} ")),
        "{status} expected for {:?}: {text}",
        String::from_utf8_lossy(&request[..request.len().min(60)])
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    let head_end = text.find("\r\n\r\n").expect("a head") + 4;
    let length: usize = text
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .expect("a length")
        .parse()
        .expect("number");
    assert_eq!(all.len() - head_end, length, "the whole body: {text}");
}

#[test]
fn each_limit_gets_its_status_and_a_clean_close_with_the_whole_answer() {
    let config = Config {
        http_max_head_bytes: 1024,
        http_max_headers: 8,
        http_max_body_bytes: 1000,
        ..test_config()
    };
    let server = serve(config, router(None));
    let addr = server.local_addr();
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    expect_rejection(addr, long_header.as_bytes(), b"", 431);
    let unfinished_head = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(2000));
    expect_rejection(addr, unfinished_head.as_bytes(), b"", 431);
    let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
    expect_rejection(addr, many_headers.as_bytes(), b"", 431);
    let big_body = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n";
    expect_rejection(addr, big_body, &[b'x'; 100_000], 413);
    let big_chunk = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n";
    expect_rejection(addr, big_chunk, &[b'x'; 4096], 413);
    expect_rejection(addr, b"GET / HTTP/1.1\r\nHost h\r\n\r\n", b"", 400);
    expect_rejection(addr, b"GET / HTTP/1.1\r\n\r\n", b"", 400);
    expect_rejection(addr, b"BLAH\r\n\r\n", b"", 400);
    let smuggle = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    expect_rejection(addr, smuggle, b"0\r\n\r\n", 400);
    let lengths =
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
    expect_rejection(addr, lengths, b"abcd", 400);
    let gzip = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    expect_rejection(addr, gzip, b"0\r\n\r\n", 501);
    let bad_chunk = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    expect_rejection(addr, bad_chunk, b"", 400);
    // Answers before the bad request are delivered first, in order.
    let mut stream = connect(addr);
    stream
        .write_all(format!("{}BLAH\r\n\r\n", get("/")).as_bytes())
        .expect("write");
    let text =
        String::from_utf8_lossy(&read_to_end(&mut stream).expect("clean close")).into_owned();
    let first = text.find("HTTP/1.1 200 OK").expect("the good answer");
    let second = text
        .find("HTTP/1.1 400 Bad Request")
        .expect("the rejection");
    assert!(first < second, "{text}");
    wait_for("the rejections counted as protocol errors", || {
        server.stats().closed_protocol_error >= 13
    });
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_slow_header_client_is_cut_off_while_others_are_served() {
    let config = Config {
        http_request_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let server = serve(config, router(None));
    let addr = server.local_addr();
    let mut slow = connect(addr);
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    // A header byte every 20 ms: progress, but never a whole head.
    slow.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut fast_answers = 0;
    loop {
        match slow.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => answer.extend_from_slice(&chunk[..count]),
            Err(_) => {
                // Meanwhile a normal client is answered at once.
                let mut normal = connect(addr);
                normal.write_all(get("/").as_bytes()).expect("write");
                let got = read_answer(&mut normal, &mut Vec::new(), false);
                assert_eq!(got.status, 200);
                fast_answers += 1;
                let _ = slow.write_all(b"X");
            }
        }
        assert!(started.elapsed() < TIMEOUT, "never cut off");
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(fast_answers > 5, "{fast_answers}");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn head_has_no_body_and_100_continue_is_sent_only_when_asked() {
    let server = serve(test_config(), router(None));
    let addr = server.local_addr();
    let mut stream = connect(addr);
    let mut buffer = Vec::new();
    // HEAD then GET pipelined: if HEAD carried a body, the GET's answer would be misread.
    let requests = format!("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n{}", get("/"));
    stream.write_all(requests.as_bytes()).expect("write");
    let head = read_answer(&mut stream, &mut buffer, true);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("13"))
    );
    let full = read_answer(&mut stream, &mut buffer, false);
    assert_eq!(full.body, b"Hello, World!");

    // Asked: the interim answer comes before the body is sent.
    let ask = "POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    stream.write_all(ask.as_bytes()).expect("write");
    let interim = read_answer(&mut stream, &mut buffer, false);
    assert_eq!(interim.status, 100);
    stream.write_all(b"body").expect("write");
    let answer = read_answer(&mut stream, &mut buffer, false);
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"body"[..]));
    // Not asked, or the body already sent with the head: no interim answer.
    let eager =
        "POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
    let plain = "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok";
    stream
        .write_all(format!("{eager}{plain}").as_bytes())
        .expect("write");
    for _ in 0..2 {
        let answer = read_answer(&mut stream, &mut buffer, false);
        assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok"[..]));
    }
    assert!(buffer.is_empty());
    server.shutdown().expect("clean shutdown");
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let server = serve(test_config(), router(None));
    let addr = server.local_addr();
    let mut stream = connect(addr);
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let all = read_to_end(&mut stream).expect("closed after the answer");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK") && text.ends_with("Hello, World!"));
    assert!(text.contains("Connection: close"), "{text}");

    let mut stream = connect(addr);
    let mut buffer = Vec::new();
    for _ in 0..3 {
        stream
            .write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("write");
        let answer = read_answer(&mut stream, &mut buffer, false);
        assert_eq!(answer.header("connection"), Some("keep-alive"));
    }
    server.shutdown().expect("clean shutdown");
}

/// An HTTP/1.0 request with Transfer-Encoding has framing a 1.0 peer may not share: it is
/// answered, then the connection closes, even when the client asked to keep it (RFC 9112, 6.1).
#[test]
fn http_1_0_with_transfer_encoding_is_answered_then_closed() {
    let server = serve(test_config(), router(None));
    let mut stream = connect(server.local_addr());
    stream
        .write_all(
            b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nhi\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        )
        .expect("write");
    let all = read_to_end(&mut stream).expect("closed after the answer");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("hi"),
        "{text}"
    );
    assert!(text.contains("Connection: close"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "nothing after: {text}");
    server.shutdown().expect("clean shutdown");
}

/// Two Host headers, or a Host that is no `host[:port]`, make the target ambiguous: 400
/// (RFC 9112, 3.2). An empty Host is allowed, as are IP literals and ports.
#[test]
fn two_host_headers_or_an_invalid_host_are_refused() {
    let server = serve(test_config(), router(None));
    let addr = server.local_addr();
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    ] {
        expect_rejection(addr, bad, b"", 400);
    }
    let mut stream = connect(addr);
    let mut buffer = Vec::new();
    for good in [
        "example.com",
        "example.com:8080",
        "127.0.0.1:80",
        "[::1]:8080",
        "",
        "xn--bcher-kva.example",
        "a%20b",
    ] {
        stream
            .write_all(format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n").as_bytes())
            .expect("write");
        let answer = read_answer(&mut stream, &mut buffer, false);
        assert_eq!(answer.status, 200, "Host: {good}");
    }
    server.shutdown().expect("clean shutdown");
}

/// A method that a route does not serve gets 405 with the methods it does serve, not 404.
#[test]
fn a_method_the_route_does_not_serve_gets_405_with_allow() {
    let server = serve(test_config(), router(None));
    let mut stream = connect(server.local_addr());
    let mut buffer = Vec::new();
    stream
        .write_all(b"DELETE / HTTP/1.1\r\nHost: h\r\n\r\nPUT /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\nDELETE /nowhere HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("write");
    let answer = read_answer(&mut stream, &mut buffer, false);
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET, HEAD"));
    let answer = read_answer(&mut stream, &mut buffer, false);
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("POST"));
    let answer = read_answer(&mut stream, &mut buffer, false);
    assert_eq!(answer.status, 404, "no route has the path at all");
    server.shutdown().expect("clean shutdown");
}

/// An absolute-form target gives its path and keeps its query, whatever the scheme's case.
#[test]
fn an_absolute_form_target_keeps_its_query_in_any_scheme_case() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let router = Router::new().get("/*", move |request: &Request| {
        let mut seen = record.lock().expect("lock");
        seen.push((
            request.path().to_string(),
            request.query().map(str::to_string),
        ));
        Response::new(204)
    });
    let server = serve(test_config(), router);
    let mut stream = connect(server.local_addr());
    let mut buffer = Vec::new();
    for target in [
        "http://h/p?x=1",
        "HTTP://h/p?x=1",
        "HtTpS://h:8443/p?x=1",
        "http://h?x=1",
        "http://h",
    ] {
        stream
            .write_all(format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .expect("write");
        assert_eq!(read_answer(&mut stream, &mut buffer, false).status, 204);
    }
    let query = Some("x=1".to_string());
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            ("/p".to_string(), query.clone()),
            ("/p".to_string(), query.clone()),
            ("/p".to_string(), query.clone()),
            ("/".to_string(), query),
            ("/".to_string(), None),
        ]
    );
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_quiet_keep_alive_connection_is_closed() {
    let config = Config {
        http_keep_alive_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let server = serve(config, router(None));
    let mut stream = connect(server.local_addr());
    stream.write_all(get("/").as_bytes()).expect("write");
    let all = read_to_end(&mut stream).expect("closed after the keep-alive timeout");
    assert!(String::from_utf8_lossy(&all).ends_with("Hello, World!"));
    server.shutdown().expect("clean shutdown");
}

/// One scrape of `/metrics`, checked as Prometheus text (version 0.0.4): every sample after its
/// `TYPE`, names well formed, histogram buckets cumulative and ending in `+Inf` = `_count`.
fn scrape(addr: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let mut stream = connect(addr);
    stream.write_all(get("/metrics").as_bytes()).expect("write");
    let answer = read_answer(&mut stream, &mut Vec::new(), false);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(answer.body).expect("utf-8");
    let mut samples = std::collections::BTreeMap::new();
    let mut typed = std::collections::BTreeMap::new();
    let mut last_bucket: Option<(String, f64)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value = value.parse::<f64>().expect("a number");
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (typed.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(typed.contains_key(family), "sample before its TYPE: {line}");
        let labels = &series[name.len()..];
        assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')));
        if name.ends_with("_bucket") {
            if let Some((previous_family, previous)) = &last_bucket {
                if previous_family == family {
                    assert!(value >= *previous, "buckets not cumulative: {line}");
                }
            }
            last_bucket = Some((family.to_string(), value));
        } else if name.ends_with("_count") && family != name {
            let infinity = samples[&format!("{family}_bucket{{le=\"+Inf\"}}")];
            assert_eq!(value, infinity, "{family}: +Inf bucket and _count differ");
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let mut config = test_config();
    config.workers = 1;
    let limits = HttpLimits::from_config(&config);
    let server = util::bind(config);
    let handle = server.handle();
    let (release, gate) = crossbeam_channel::unbounded();
    let router =
        Arc::new(router(Some(gate)).get("/metrics", move |_| Response::metrics(&handle.stats())));
    let server = server
        .spawn(move || Http::new(router.clone(), limits))
        .expect("spawn");
    let addr = server.local_addr();
    let before = scrape(addr);
    let moved = |after: &std::collections::BTreeMap<String, f64>, series: &str| {
        after[series] - before[series]
    };
    for path in ["/", "/", "/", "/", "/", "/missing"] {
        let mut stream = connect(addr);
        stream.write_all(get(path).as_bytes()).expect("write");
        read_answer(&mut stream, &mut Vec::new(), false);
    }
    // One worker: the first slow job holds it, the second waits in the queue.
    let mut slow: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    for stream in &mut slow {
        stream.write_all(get("/slow").as_bytes()).expect("write");
    }
    wait_for("one job running and one queued", || {
        scrape(addr)["socketserver_job_queue_depth"] == 1.0
    });
    for _ in &slow {
        release.send(()).expect("release");
    }
    for stream in &mut slow {
        assert_eq!(read_answer(stream, &mut Vec::new(), false).status, 200);
    }
    wait_for("the answers counted", || {
        let after = scrape(addr);
        moved(&after, "socketserver_connections_accepted_total") >= 8.0
            && moved(&after, "socketserver_job_duration_seconds_count") == 2.0
    });
    let after = scrape(addr);
    assert_eq!(after["socketserver_job_queue_depth"], 0.0);
    assert!(moved(&after, "socketserver_received_bytes_total") > 0.0);
    assert!(moved(&after, "socketserver_sent_bytes_total") > 0.0);
    assert!(after.contains_key("socketserver_connections_closed_total{reason=\"peer\"}"));
    // Five hellos, two slow answers, and the scrapes answered before this one.
    assert!(moved(&after, "socketserver_requests_total{class=\"2xx\"}") >= 7.0);
    assert_eq!(
        moved(&after, "socketserver_requests_total{class=\"4xx\"}"),
        1.0
    );
    let answered: f64 = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|class| after[&format!("socketserver_requests_total{{class=\"{class}\"}}")])
        .sum();
    assert_eq!(
        after["socketserver_request_duration_seconds_count"], answered,
        "every answered request has a latency"
    );
    // The slow jobs waited for the gate, so each took longer than the fastest bucket.
    assert!(moved(&after, "socketserver_job_duration_seconds_sum") > 0.0);
    assert!(
        moved(
            &after,
            "socketserver_job_duration_seconds_bucket{le=\"0.00001\"}"
        ) < 2.0,
        "gated jobs in the 10 µs bucket"
    );
    assert!(moved(&after, "socketserver_reactor_turn_duration_seconds_count") > 0.0);
    drop(slow);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn graceful_shutdown_closes_idle_connections_and_answers_in_flight_with_close() {
    let (release, gate) = crossbeam_channel::unbounded();
    let server = serve(test_config(), router(Some(gate)));
    let addr = server.local_addr();
    let mut idle = connect(addr);
    idle.write_all(get("/").as_bytes()).expect("write");
    read_answer(&mut idle, &mut Vec::new(), false);
    let mut busy = connect(addr);
    busy.write_all(get("/slow").as_bytes()).expect("write");
    wait_for("the slow job running", || {
        server.stats().jobs_in_flight == 1
    });
    let handle = server.handle().clone();
    handle.shutdown();
    // The idle keep-alive connection closes at once, with nothing more sent.
    assert_eq!(read_to_end(&mut idle).expect("clean close"), b"");
    release.send(()).expect("release");
    let text = String::from_utf8_lossy(&read_to_end(&mut busy).expect("clean close")).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("/slow"),
        "{text}"
    );
    assert!(text.contains("Connection: close"), "{text}");
    server.join().expect("clean exit");
}

#[test]
fn blocking_drivers_serve_keep_alive_pipelines_and_offloaded_routes_and_count_them() {
    let models = [
        Model::ThreadPerConnection {
            block_on_close: false,
        },
        Model::ThreadPool,
    ];
    for model in models {
        let config = test_config();
        let limits = HttpLimits::from_config(&config);
        // Offloaded handlers run inline on the connection's thread: an open gate.
        let (release, gate) = crossbeam_channel::unbounded();
        for _ in 0..3 {
            release.send(()).expect("open the gate");
        }
        let router = Arc::new(router(Some(gate)));
        let server = util::bind(config)
            .spawn_blocking(model, move || Http::new(router.clone(), limits))
            .expect("spawn");
        let mut stream = connect(server.local_addr());
        let mut buffer = Vec::new();
        for _ in 0..10 {
            stream.write_all(get("/").as_bytes()).expect("write");
            assert_eq!(
                read_answer(&mut stream, &mut buffer, false).body,
                b"Hello, World!"
            );
        }
        let pipeline = [get("/slow"), get("/fast/1"), get("/slow"), get("/fast/2")].concat();
        stream.write_all(pipeline.as_bytes()).expect("write");
        let bodies: Vec<Vec<u8>> = (0..4)
            .map(|_| read_answer(&mut stream, &mut buffer, false).body)
            .collect();
        assert_eq!(
            bodies,
            [&b"/slow"[..], b"/fast/1", b"/slow", b"/fast/2"],
            "{model:?}"
        );
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .expect("write");
        let last = read_answer(&mut stream, &mut buffer, false);
        assert_eq!(last.header("connection"), Some("close"), "{model:?}");
        assert_eq!(read_to_end(&mut stream).expect("clean close"), b"");
        wait_for("the requests counted", || server.stats().requests_2xx == 15);
        let stats = server.stats();
        assert_eq!(stats.request_latency.count(), 15, "{model:?}");
        assert_eq!(stats.job_latency.count(), 2, "{model:?}");
        server.shutdown().expect("clean shutdown");
    }
}

/// The answer body of one request sent as `raw` (written whole, after `prefix`).
fn body_of(addr: SocketAddr, prefix: &[u8], raw: &str) -> String {
    let mut stream = connect(addr);
    stream.write_all(prefix).expect("write");
    stream.write_all(raw.as_bytes()).expect("write");
    let mut buffer = Vec::new();
    let answer = read_answer(&mut stream, &mut buffer, false);
    String::from_utf8(answer.body).expect("text")
}

#[test]
fn forwarding_headers_name_the_client_only_from_trusted_proxies() {
    let who = |request: &Request| {
        let text = format!(
            "peer={} client={}",
            request
                .peer_addr()
                .map_or("-".into(), |peer| peer.ip().to_string()),
            request.client_ip().map_or("-".into(), |ip| ip.to_string())
        );
        Response::new(200).body(text.into_bytes())
    };
    let forwarded = "GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n";
    let trusting = serve(
        test_config(),
        Router::new()
            .get("/", who)
            .trust_forwarded_from(["127.0.0.0/8".parse().unwrap()]),
    );
    assert_eq!(
        body_of(trusting.local_addr(), b"", forwarded),
        "peer=127.0.0.1 client=203.0.113.9"
    );
    let wary = serve(
        test_config(),
        Router::new()
            .get("/", who)
            .trust_forwarded_from(["10.0.0.0/8".parse().unwrap()]),
    );
    assert_eq!(
        body_of(wary.local_addr(), b"", forwarded),
        "peer=127.0.0.1 client=127.0.0.1",
        "a header from an untrusted peer is not believed"
    );
    // Behind a balancer that sends the PROXY protocol, the peer is the client it names.
    let proxied = serve(
        Config {
            proxy_protocol_from: vec!["127.0.0.0/8".parse().unwrap()],
            ..test_config()
        },
        Router::new().get("/", who),
    );
    assert_eq!(
        body_of(
            proxied.local_addr(),
            b"PROXY TCP4 198.51.100.4 10.0.0.1 4000 80\r\n",
            &get("/")
        ),
        "peer=198.51.100.4 client=198.51.100.4"
    );
}

#[test]
fn a_handler_sees_the_requests_valid_trace_id_and_none_for_a_bad_one() {
    let server = serve(
        test_config(),
        Router::new().get("/", |request: &Request| {
            let trace = request.trace_id().map(|id| id.to_string());
            Response::new(200).body(trace.unwrap_or_else(|| "none".into()).into_bytes())
        }),
    );
    let with = |traceparent: &str| {
        body_of(
            server.local_addr(),
            b"",
            &format!("GET / HTTP/1.1\r\nHost: t\r\ntraceparent: {traceparent}\r\n\r\n"),
        )
    };
    assert_eq!(
        with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        with("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        "none"
    );
    assert_eq!(body_of(server.local_addr(), b"", &get("/")), "none");
}
