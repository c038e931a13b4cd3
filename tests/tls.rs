//! TLS: the layer between the socket and the protocol, on every driver. What a client of an
//! HTTPS or WSS server relies on: TLS 1.3 (and 1.2 where allowed) with ALPN, keep-alive and
//! pipelining unchanged, any split of the byte stream, mTLS refusals with the right alert and
//! the identity handed to the handler, resumption, reload without dropping anyone, and limits
//! against clients that say nothing or speak clear text.

#![cfg(feature = "tls")]

mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::{AlertDescription, HandshakeKind, ProtocolVersion};
use socketserver::metrics::TlsFailure;
use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::ws::{self, WebSocketOptions, WebSocketRoute};
use socketserver::protocol::Http;
use socketserver::tls::{ClientAuth, TlsAcceptor, TlsSettings, TlsVersions};
use socketserver::{Config, RunningServer};
use util::tls::{self as tls_util, Pki, BOTH, SERVER_SERIAL};
use util::{test_config, wait_for, Driver, DRIVERS};

/// `/` says hello; `/whoami` answers the client certificate's common name, alternative names
/// and fingerprint (401 without one); `/ws` is a WebSocket echo.
fn router(config: &Config) -> Arc<Router> {
    Arc::new(
        Router::new()
            .get("/", |_| Response::text(200, "Hello, World!"))
            .get("/peer", |request| {
                let peer = request.peer_addr().map(|peer| peer.to_string());
                Response::text(200, peer.unwrap_or_default())
            })
            .get("/big", |_| {
                Response::text(
                    200,
                    util::pattern(BIG, 7)
                        .iter()
                        .map(|&b| char::from(b'a' + b % 26))
                        .collect::<String>(),
                )
            })
            .get("/whoami", |request| match request.peer_identity() {
                Some(identity) => Response::text(
                    200,
                    format!(
                        "{}|{}|{}",
                        identity.common_name.as_deref().unwrap_or(""),
                        identity.alt_names.join(","),
                        identity.fingerprint_sha256
                    ),
                ),
                None => Response::text(401, "anonymous"),
            })
            .websocket(
                "/ws",
                WebSocketRoute::new(WebSocketOptions::from_config(config), |_| ws::Echo),
            ),
    )
}

/// The size of `/big`'s body: far more than a socket's buffers, so the server's writes block.
const BIG: usize = 4 << 20;

/// An HTTPS server with `settings` on `driver`.
fn https(driver: Driver, config: Config, settings: TlsSettings) -> RunningServer {
    let acceptor = TlsAcceptor::new(settings).expect("TLS acceptor");
    let router = router(&config);
    let limits = HttpLimits::from_config(&config);
    let server = util::bind_for(driver, config).tls(acceptor);
    util::spawn_bound(driver, server, move || Http::new(router.clone(), limits))
}

fn tls_stats(server: &RunningServer) -> socketserver::metrics::TlsSnapshot {
    server.stats().tls.expect("TLS counters")
}

/// The serial of the certificate the server presented, in hex (read apart from the library).
fn server_serial(client: &tls_util::Client) -> String {
    let chain = client.conn.peer_certificates().expect("server certificate");
    let (_, certificate) = x509_parser::parse_x509_certificate(&chain[0]).expect("parse");
    certificate
        .raw_serial()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn hex_serial(serial: u64) -> String {
    let bytes = serial.to_be_bytes();
    let first = bytes.iter().position(|&byte| byte != 0).unwrap_or(7);
    bytes[first..]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[test]
fn tls13_with_alpn_carries_keep_alive_and_pipelined_requests_on_every_driver() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let server = https(driver, test_config(), pki.settings().alpn_http1());
        let mut client = tls_util::connect(server.local_addr(), &pki.client_config(None, BOTH));
        assert_eq!(
            client.conn.protocol_version(),
            Some(ProtocolVersion::TLSv1_3),
            "{driver:?}"
        );
        assert_eq!(client.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        // Keep-alive: two requests, one after the other, on one connection.
        for _ in 0..2 {
            assert_eq!(
                tls_util::get(&mut client, "/"),
                (200, "Hello, World!".into())
            );
        }
        // Pipelining: three requests in one write, three answers in order.
        let three = "GET / HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        client.write_all(three.as_bytes()).expect("pipeline");
        client.flush().expect("flush");
        assert_eq!(tls_util::read_answer(&mut client).0, 200);
        assert_eq!(
            tls_util::read_answer(&mut client),
            (401, "anonymous".into())
        );
        assert_eq!(tls_util::read_answer(&mut client).0, 200);
        let stats = tls_stats(&server);
        assert_eq!(stats.handshakes_full, 1, "{driver:?}");
        assert_eq!(stats.alpn_http1, 1, "{driver:?}");
        drop(client);
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn tls12_is_spoken_when_allowed_and_refused_when_only_tls13_is() {
    let pki = Pki::new();
    let tls12_only = pki.client_config(None, &[&rustls::version::TLS12]);
    let server = https(Driver::Reactor, test_config(), pki.settings());
    let mut client = tls_util::connect(server.local_addr(), &tls12_only);
    assert_eq!(
        client.conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls_util::get(&mut client, "/").0, 200);
    server.shutdown().expect("shutdown");

    let settings = pki.settings().versions(TlsVersions::Tls13Only);
    let server = https(Driver::Reactor, test_config(), settings);
    let refused = tls_util::try_connect(server.local_addr(), &tls12_only);
    assert_eq!(
        tls_util::refusal(refused),
        Some(rustls::Error::AlertReceived(
            AlertDescription::ProtocolVersion
        ))
    );
    wait_for("the refusal to be counted", || {
        tls_stats(&server).failed(TlsFailure::Incompatible) == 1
    });
    server.shutdown().expect("shutdown");
}

#[test]
fn a_second_connection_resumes_the_session_and_is_counted_as_resumed() {
    let pki = Pki::new();
    for driver in [Driver::Reactor, Driver::Reactors, Driver::Pool] {
        let server = https(driver, test_config(), pki.settings());
        let config = pki.client_config(None, BOTH);
        let mut first = tls_util::connect(server.local_addr(), &config);
        // The tickets come after the handshake: an answer read means they were read first.
        assert_eq!(tls_util::get(&mut first, "/").0, 200);
        assert_eq!(first.conn.handshake_kind(), Some(HandshakeKind::Full));
        let mut second = tls_util::connect(server.local_addr(), &config);
        assert_eq!(second.conn.handshake_kind(), Some(HandshakeKind::Resumed));
        assert_eq!(tls_util::get(&mut second, "/").0, 200);
        let stats = tls_stats(&server);
        assert_eq!((stats.handshakes_full, stats.handshakes_resumed), (1, 1));
        server.shutdown().expect("shutdown");
    }
}

/// Drives a rustls client by hand, sending every byte it makes in a write of its own (with
/// TCP_NODELAY, each its own segment), so the server meets every split of the stream.
fn exchange_one_byte_at_a_time(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> String {
    let mut socket = util::connect(addr);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(config.clone(), name).expect("client");
    client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("queue the request");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).expect("records");
        }
        for byte in records {
            socket.write_all(&[byte]).expect("one byte");
        }
        let count = socket.read(&mut buffer).expect("read records");
        if count == 0 {
            break;
        }
        client
            .read_tls(&mut &buffer[..count])
            .expect("take records");
        client.process_new_packets().expect("records are good");
        let _ = client.reader().read_to_end(&mut answer);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_server_fed_one_byte_at_a_time_finishes_the_handshake_and_answers_on_every_driver() {
    let pki = Pki::new();
    let config = pki.client_config(None, BOTH);
    for driver in DRIVERS {
        let server = https(driver, test_config(), pki.settings());
        let answer = exchange_one_byte_at_a_time(server.local_addr(), &config);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK"),
            "{driver:?}: {answer:?}"
        );
        assert!(answer.ends_with("Hello, World!"), "{driver:?}: {answer:?}");
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn wss_echoes_through_tungstenite_over_rustls() {
    let pki = Pki::new();
    for driver in [Driver::Reactor, Driver::Threads] {
        let server = https(driver, test_config(), pki.settings().alpn_http1());
        let stream = tls_util::connect(server.local_addr(), &pki.client_config(None, BOTH));
        let (mut socket, response) =
            tungstenite::client("wss://localhost/ws", stream).expect("WebSocket upgrade");
        assert_eq!(response.status(), 101);
        for text in ["hello", "over TLS", &"x".repeat(100_000)] {
            socket.send(tungstenite::Message::text(text)).expect("send");
            match socket.read().expect("echo") {
                tungstenite::Message::Text(echoed) => assert_eq!(echoed.as_str(), text),
                other => panic!("{driver:?}: not the echo: {other:?}"),
            }
        }
        socket.close(None).expect("close");
        drop(socket);
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn mtls_refuses_missing_foreign_revoked_and_expired_certificates_with_the_right_alert() {
    let pki = Pki::new();
    let settings = pki
        .settings()
        .client_ca(pki.path("ca.pem"), ClientAuth::Required)
        .crl(pki.path("crl.pem"));
    for driver in [Driver::Reactor, Driver::Threads] {
        let server = https(driver, test_config(), settings.clone());
        let cases = [
            (
                None,
                AlertDescription::CertificateRequired,
                TlsFailure::NoCertificate,
            ),
            (
                Some("stranger"),
                AlertDescription::UnknownCA,
                TlsFailure::BadCertificate,
            ),
            (
                Some("revoked"),
                AlertDescription::CertificateRevoked,
                TlsFailure::Revoked,
            ),
            (
                Some("expired"),
                AlertDescription::CertificateExpired,
                TlsFailure::Expired,
            ),
        ];
        for (client, alert, reason) in cases {
            let config = pki.client_config(client, BOTH);
            let refused = tls_util::try_connect(server.local_addr(), &config);
            assert_eq!(
                tls_util::refusal(refused),
                Some(rustls::Error::AlertReceived(alert)),
                "{driver:?}: {client:?}"
            );
            wait_for("the refusal to be counted", || {
                tls_stats(&server).failed(reason) == 1
            });
        }
        let mut alice =
            tls_util::connect(server.local_addr(), &pki.client_config(Some("alice"), BOTH));
        let (status, whoami) = tls_util::get(&mut alice, "/whoami");
        assert_eq!(status, 200, "{driver:?}");
        let der = rustls::pki_types::CertificateDer::from_pem_file(pki.path("alice.pem"))
            .expect("alice's certificate");
        let fingerprint: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(whoami, format!("alice|alice.example|{fingerprint}"));
        drop(alice);
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn optional_client_auth_admits_anonymous_clients_and_still_verifies_presented_certificates() {
    let pki = Pki::new();
    let settings = pki
        .settings()
        .client_ca(pki.path("ca.pem"), ClientAuth::Optional);
    let server = https(Driver::Reactor, test_config(), settings);
    let mut anonymous = tls_util::connect(server.local_addr(), &pki.client_config(None, BOTH));
    assert_eq!(
        tls_util::get(&mut anonymous, "/whoami"),
        (401, "anonymous".into())
    );
    let mut bob = tls_util::connect(server.local_addr(), &pki.client_config(Some("bob"), BOTH));
    assert!(tls_util::get(&mut bob, "/whoami")
        .1
        .starts_with("bob|bob.example|"));
    let stranger = tls_util::try_connect(
        server.local_addr(),
        &pki.client_config(Some("stranger"), BOTH),
    );
    assert_eq!(
        tls_util::refusal(stranger),
        Some(rustls::Error::AlertReceived(AlertDescription::UnknownCA))
    );
    server.shutdown().expect("shutdown");
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_connections_while_old_ones_keep_working() {
    let pki = Pki::new();
    // Full handshakes only: a resumed session shows the certificate it began with.
    let mut config = (*pki.client_config(None, BOTH)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    for driver in [Driver::Reactor, Driver::Pool] {
        pki.server_certificate("server", SERVER_SERIAL);
        let server = https(driver, test_config(), pki.settings());
        let mut old = tls_util::connect(server.local_addr(), &config);
        assert_eq!(server_serial(&old), hex_serial(SERVER_SERIAL));
        assert_eq!(tls_util::get(&mut old, "/").0, 200);

        pki.server_certificate("server", SERVER_SERIAL + 1);
        server.handle().reload_tls().expect("reload");
        let new = tls_util::connect(server.local_addr(), &config);
        assert_eq!(
            server_serial(&new),
            hex_serial(SERVER_SERIAL + 1),
            "{driver:?}"
        );
        assert_eq!(
            tls_util::get(&mut old, "/").0,
            200,
            "{driver:?}: old connection"
        );

        // A broken file is refused; the certificate in use stays.
        std::fs::write(pki.path("server.pem"), "not a certificate").expect("break it");
        assert!(server.handle().reload_tls().is_err());
        let after = tls_util::connect(server.local_addr(), &config);
        assert_eq!(server_serial(&after), hex_serial(SERVER_SERIAL + 1));
        let stats = tls_stats(&server);
        assert_eq!((stats.reloads, stats.reload_failures), (1, 1));
        // The expiry metric follows the certificate in use: 2099-01-01.
        assert_eq!(stats.certificate_not_after, 4_070_908_800);
        drop((old, new, after));
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn sighup_reloads_the_command_line_server_and_a_broken_file_keeps_the_old_certificate() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let cli = util::Cli::start(
        &[
            "serve",
            "--protocol",
            "http",
            "--tls-cert",
            cert.to_str().expect("path"),
            "--tls-key",
            key.to_str().expect("path"),
        ],
        None,
    );
    let mut config = (*pki.client_config(None, BOTH)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let mut old = tls_util::connect(cli.addr, &config);
    assert_eq!(tls_util::get(&mut old, "/").0, 200);
    let hangup = || {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(cli.child.id() as libc::pid_t, libc::SIGHUP) };
    };
    pki.server_certificate("server", SERVER_SERIAL + 1);
    hangup();
    wait_for("new connections to see the new certificate", || {
        server_serial(&tls_util::connect(cli.addr, &config)) == hex_serial(SERVER_SERIAL + 1)
    });
    assert_eq!(tls_util::get(&mut old, "/").0, 200, "the old connection");

    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("break it");
    hangup();
    wait_for("the broken reload to be refused", || {
        let mut client = tls_util::connect(cli.addr, &config);
        tls_util::get(&mut client, "/metrics")
            .1
            .contains("socketserver_tls_reloads_total{outcome=\"refused\"} 1")
    });
    let client = tls_util::connect(cli.addr, &config);
    assert_eq!(server_serial(&client), hex_serial(SERVER_SERIAL + 1));
    assert_eq!(tls_util::get(&mut old, "/").0, 200, "the old connection");
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("TLS reload refused"), "{stderr}");
}

#[test]
fn a_silent_client_is_cut_at_the_handshake_timeout_while_others_are_served() {
    let pki = Pki::new();
    let timeout = Duration::from_millis(300);
    let config = Config {
        tls_handshake_timeout: timeout,
        ..test_config()
    };
    for driver in DRIVERS {
        let server = https(driver, config.clone(), pki.settings());
        let mut good = tls_util::connect(server.local_addr(), &pki.client_config(None, BOTH));
        let started = Instant::now();
        let mut silent = util::connect(server.local_addr());
        let mut trickle = util::connect(server.local_addr());
        trickle
            .write_all(&[0x16, 0x03])
            .expect("the start of a hello");
        assert!(util::is_closed_by_server(&mut silent), "{driver:?}");
        assert!(util::is_closed_by_server(&mut trickle), "{driver:?}");
        assert!(started.elapsed() >= timeout, "{driver:?}: cut too early");
        assert_eq!(tls_util::get(&mut good, "/").0, 200, "{driver:?}");
        wait_for("both timeouts to be counted", || {
            tls_stats(&server).failed(TlsFailure::Timeout) == 2
        });
        drop(good);
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn clear_text_http_gets_a_400_and_bytes_that_are_not_tls_are_refused_on_every_driver() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let server = https(driver, test_config(), pki.settings());
        let mut plain = util::connect(server.local_addr());
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("plain request");
        let answer = util::read_to_end(&mut plain).expect("the answer, then the end");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request"),
            "{driver:?}: {answer}"
        );
        let mut garbage = util::connect(server.local_addr());
        garbage
            .write_all(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07])
            .expect("garbage");
        assert!(util::is_closed_by_server(&mut garbage), "{driver:?}");
        wait_for("both refusals to be counted", || {
            let stats = tls_stats(&server);
            stats.failed(TlsFailure::PlainHttp) == 1 && stats.failed(TlsFailure::NotTls) == 1
        });
        assert_eq!(server.stats().closed_tls_handshake, 2, "{driver:?}");
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn echo_line_and_frame_serve_over_tls_from_the_command_line() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let config = pki.client_config(None, BOTH);
    let cases: [(&str, &[u8], &[u8]); 3] = [
        ("echo", b"hello", b"hello"),
        ("line", b"one line\n", b"one line\n"),
        ("frame", b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x03abc"),
    ];
    for (protocol, sent, expected) in cases {
        for model in ["reactor", "threads"] {
            let cli = util::Cli::start(
                &[
                    "serve",
                    "--protocol",
                    protocol,
                    "--model",
                    model,
                    "--tls-cert",
                    cert.to_str().expect("path"),
                    "--tls-key",
                    key.to_str().expect("path"),
                ],
                None,
            );
            let mut client = tls_util::connect(cli.addr, &config);
            assert_eq!(client.conn.alpn_protocol(), None, "no ALPN for {protocol}");
            client.write_all(sent).expect("send");
            client.flush().expect("flush");
            let mut echoed = vec![0u8; expected.len()];
            client.read_exact(&mut echoed).expect("echo");
            assert_eq!(echoed, expected, "{protocol} under {model}");
            drop(client);
            let (status, stderr) = cli.terminate();
            assert!(status.success(), "{stderr}");
        }
    }
}

#[test]
#[ignore = "needs curl and openssl"]
fn curl_and_openssl_s_client_speak_to_the_server() {
    use std::process::{Command, Stdio};
    let pki = Pki::new();
    let settings = pki
        .settings()
        .alpn_http1()
        .client_ca(pki.path("ca.pem"), ClientAuth::Optional);
    let server = https(Driver::Reactor, test_config(), settings);
    let url = format!("https://localhost:{}", server.local_addr().port());
    let ca = pki.path("ca.pem");
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                ca.to_str().expect("path"),
            ])
            .args(args)
            .output()
            .expect("run curl");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(curl(&[&format!("{url}/")]), "Hello, World!");
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let whoami = curl(&[
        "--cert",
        cert.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
        &format!("{url}/whoami"),
    ]);
    assert!(whoami.starts_with("alice|alice.example|"), "{whoami}");
    let output = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(server.local_addr().to_string())
        .args([
            "-servername",
            "localhost",
            "-tls1_3",
            "-alpn",
            "http/1.1",
            "-CAfile",
        ])
        .arg(&ca)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    server.shutdown().expect("shutdown");
}

#[test]
fn the_allow_list_example_authorises_each_route_by_the_certificate_name() {
    let pki = Pki::new();
    let program = util::browser::example("mtls_allowlist");
    let path = |name: &str| pki.path(name).to_str().expect("path").to_string();
    let (mut child, line) = util::browser::start_printing(
        &program,
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &path("server.pem"),
            "--key",
            &path("server.key"),
            "--client-ca",
            &path("ca.pem"),
            "--crl",
            &path("crl.pem"),
        ],
    );
    let addr: SocketAddr = line
        .strip_prefix("listening on https://")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let get = |client: &str, path: &str| {
        let mut connection = tls_util::connect(addr, &pki.client_config(Some(client), BOTH));
        tls_util::get(&mut connection, path).0
    };
    assert_eq!(get("alice", "/admin"), 200);
    assert_eq!(get("bob", "/admin"), 403);
    assert_eq!(get("bob", "/reports"), 200);
    assert_eq!(get("bob", "/"), 200);
    let revoked = tls_util::try_connect(addr, &pki.client_config(Some("revoked"), BOTH));
    assert_eq!(
        tls_util::refusal(revoked),
        Some(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked
        ))
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn pub_sub_clients_subscribe_and_publish_over_wss() {
    use socketserver::client::pubsub::{Event, PubSubClient};
    use socketserver::client::ws::ClientOptions;
    use socketserver::tls::TlsConnector;
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let cli = util::Cli::start(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--memory",
            "--tls-cert",
            cert.to_str().expect("path"),
            "--tls-key",
            key.to_str().expect("path"),
        ],
        None,
    );
    let url = format!("wss://localhost:{}/", cli.addr.port());
    let options = || ClientOptions {
        tls: Some(TlsConnector::trusting(&ca).expect("trust the CA")),
        ..ClientOptions::default()
    };
    let mut subscriber = PubSubClient::connect(&url, options()).expect("wss subscriber");
    subscriber.subscribe("news", None);
    let mut publisher = PubSubClient::connect(&url, options()).expect("wss publisher");
    let deadline = Instant::now() + util::TIMEOUT;
    loop {
        let event = subscriber.next_event(util::TIMEOUT).expect("an event");
        if matches!(event, Some(Event::Subscribed { .. })) {
            break;
        }
        assert!(Instant::now() < deadline, "never subscribed");
    }
    let offset = publisher
        .publish("news", "hello over TLS", util::TIMEOUT)
        .expect("acknowledged");
    assert_eq!(offset, 1);
    match subscriber.next_event(util::TIMEOUT).expect("an event") {
        Some(Event::Message { offset, data, .. }) => {
            assert_eq!((offset, data.as_str()), (1, "hello over TLS"));
        }
        other => panic!("not the message: {other:?}"),
    }
    // The command-line subscriber reads it back from the log, over wss.
    let (status, stdout, stderr) = util::run_cli(
        &[
            "subscribe",
            &url,
            "news",
            "--from-offset",
            "1",
            "--count",
            "1",
            "--tls-ca",
            ca.to_str().expect("path"),
        ],
        util::TIMEOUT,
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "1\thello over TLS\n");
    // Without the CA to trust, a wss:// URL is refused with the reason.
    let refused = PubSubClient::connect(&url, ClientOptions::default());
    let error = refused.err().expect("refused").to_string();
    assert!(error.contains("CA to trust"), "{error}");
}

#[test]
fn the_load_generator_speaks_tls_and_its_counts_match_the_server() {
    use socketserver::load::{LoadConfig, LoadProtocol};
    use socketserver::tls::TlsConnector;
    let pki = Pki::new();
    let connector = TlsConnector::trusting(&pki.path("ca.pem")).expect("trust the CA");
    for protocol in [LoadProtocol::Http, LoadProtocol::Ws] {
        let server = https(Driver::Reactor, test_config(), pki.settings().alpn_http1());
        let config = LoadConfig {
            addr: server.local_addr(),
            protocol,
            http_path: if protocol == LoadProtocol::Ws {
                "/ws"
            } else {
                "/"
            }
            .into(),
            connections: 4,
            duration: Duration::from_millis(400),
            warmup: Duration::from_millis(100),
            tls: Some(connector.clone()),
            ..LoadConfig::default()
        };
        let report = socketserver::load::run(&config).expect("load over TLS");
        assert_eq!(
            report.connected, 4,
            "{protocol:?}: {:?}",
            report.first_failure
        );
        assert_eq!(report.errors, 0, "{protocol:?}: {:?}", report.first_failure);
        assert!(report.answers > 0, "{protocol:?}");
        assert_eq!(report.answers, report.requests_sent, "{protocol:?}");
        let stats = server.stats();
        assert_eq!(tls_stats(&server).handshakes_full, 4, "{protocol:?}");
        match protocol {
            LoadProtocol::Http => assert_eq!(stats.requests_2xx, report.answers),
            _ => assert_eq!(stats.websocket_messages_out, report.answers),
        }
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn compare_runs_a_model_over_tls() {
    let pki = Pki::new();
    let out = pki.path("compare");
    let path = |name: &str| pki.path(name).to_str().expect("path").to_string();
    let (status, stdout, stderr) = util::run_cli(
        &[
            "compare",
            "--quick",
            "--models",
            "reactor",
            "--connections",
            "4",
            "--protocol",
            "http",
            "--tls",
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server.key"),
            "--tls-ca",
            &path("ca.pem"),
            "--out",
            out.to_str().expect("path"),
        ],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let row = stdout
        .lines()
        .find(|line| line.starts_with("reactor"))
        .unwrap_or_else(|| panic!("no reactor row in {stdout}"));
    assert!(row.trim_end().ends_with("ok"), "{row}");
}

#[test]
fn a_large_answer_to_a_slow_reader_arrives_whole_on_every_driver() {
    let pki = Pki::new();
    let expected: String = util::pattern(BIG, 7)
        .iter()
        .map(|&byte| char::from(b'a' + byte % 26))
        .collect();
    // A layer buffer larger than the answer: rustls takes all of it at once, and most of the
    // records then wait in the layer (not in the connection's output buffer) for the socket.
    let config = Config {
        tls_buffer_bytes: 2 * BIG,
        ..test_config()
    };
    for driver in DRIVERS {
        let server = https(driver, config.clone(), pki.settings());
        // A small receive window: the server's writes block, and records wait in the layer.
        let socket = util::connect_with_small_window(server.local_addr());
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connection =
            rustls::ClientConnection::new(pki.client_config(None, BOTH), name).expect("client");
        let mut client = rustls::StreamOwned::new(connection, socket);
        for _ in 0..2 {
            let (status, body) = tls_util::get(&mut client, "/big");
            assert_eq!(status, 200, "{driver:?}");
            assert!(body == expected, "{driver:?}: the body differs");
        }
        drop(client);
        server.shutdown().expect("shutdown");
    }
}

/// The base64 SHA-256 of a certificate's public key (its SPKI), as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it: that one key is trusted, nothing else.
fn spki_hash(certificate: &std::path::Path) -> String {
    use base64::Engine;
    let der = rustls::pki_types::CertificateDer::from_pem_file(certificate).expect("certificate");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        parsed.tbs_certificate.subject_pki.raw,
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

#[test]
#[ignore = "needs chromium and chromedriver"]
fn chromium_echoes_over_wss_from_a_page_served_over_https() {
    use util::browser;
    let pki = Pki::new();
    let path = |name: &str| pki.path(name).to_str().expect("path").to_string();
    let example = browser::example("ws_echo");
    let (mut server, listening) = browser::start_printing(
        &example,
        &[
            "127.0.0.1:0",
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server.key"),
        ],
    );
    let port = listening
        .rsplit(':')
        .next()
        .expect("the example's port")
        .to_string();
    let session = browser::Session::start_with(&[format!(
        "--ignore-certificate-errors-spki-list={}",
        spki_hash(&pki.path("server.pem"))
    )]);
    let page = &session.browser;
    page.call(
        "POST",
        "/url",
        serde_json::json!({ "url": format!("https://localhost:{port}/") }),
    );
    wait_for("the page's WSS socket to open", || {
        page.text_of("#status") == "open"
    });
    page.type_and_send("hello over WSS");
    wait_for("the echo", || {
        page.text_of("#log").matches("hello over WSS").count() == 2
    });
    drop(session);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn prefork_workers_terminate_tls_and_reload_on_the_sighup_their_supervisor_passes_on() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let cli = util::Cli::start(
        &[
            "serve",
            "--model",
            "prefork",
            "--processes",
            "2",
            "--protocol",
            "http",
            "--tls-cert",
            cert.to_str().expect("path"),
            "--tls-key",
            key.to_str().expect("path"),
        ],
        None,
    );
    // The workers are running, but may still be starting: a SIGHUP passed on before a worker
    // installed its handler once killed it (SIGHUP's default action); they start with it
    // ignored now.
    let workers = util::wait_for_workers(&cli.child, 2);
    let mut config = (*pki.client_config(None, BOTH)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let mut old = tls_util::connect(cli.addr, &config);
    assert_eq!(tls_util::get(&mut old, "/"), (200, "Hello, World!".into()));
    pki.server_certificate("server", SERVER_SERIAL + 1);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(cli.child.id() as libc::pid_t, libc::SIGHUP) };
    // Every worker reloads: several new connections in a row (spread over both workers by
    // the kernel) all see the new certificate.
    wait_for("every worker to serve the new certificate", || {
        (0..8).all(|_| {
            server_serial(&tls_util::connect(cli.addr, &config)) == hex_serial(SERVER_SERIAL + 1)
        })
    });
    assert_eq!(tls_util::get(&mut old, "/").0, 200, "the old connection");
    assert_eq!(
        util::children_of(cli.child.id()),
        workers,
        "SIGHUP reloaded the workers; it did not replace them"
    );
    drop(old);
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_connection_the_server_closes_ends_with_close_notify_on_every_driver() {
    let pki = Pki::new();
    for driver in DRIVERS {
        let server = https(driver, test_config(), pki.settings());
        let mut client = tls_util::connect(server.local_addr(), &pki.client_config(None, BOTH));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("request");
        // rustls reports an end without close_notify as UnexpectedEof: Ok is the clean end.
        let mut answer = Vec::new();
        client
            .read_to_end(&mut answer)
            .unwrap_or_else(|error| panic!("{driver:?}: {error}"));
        assert!(answer.ends_with(b"Hello, World!"), "{driver:?}");
        server.shutdown().expect("shutdown");
    }
}

#[test]
fn a_proxy_protocol_header_comes_before_the_tls_handshake_and_names_the_client() {
    let pki = Pki::new();
    for driver in [Driver::Reactor, Driver::Reactors] {
        let config = Config {
            proxy_protocol_from: vec!["127.0.0.0/8".parse().expect("a range")],
            ..test_config()
        };
        let server = https(driver, config, pki.settings());
        let mut socket = util::connect(server.local_addr());
        let header = socketserver::net::proxy::v2_header(
            "203.0.113.50:6000".parse().expect("an address"),
            server.local_addr(),
        );
        socket.write_all(&header).expect("the PROXY header");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connection =
            rustls::ClientConnection::new(pki.client_config(None, BOTH), name).expect("client");
        let mut client = rustls::StreamOwned::new(connection, socket);
        while client.conn.is_handshaking() {
            client
                .conn
                .complete_io(&mut client.sock)
                .expect("the handshake after the header");
        }
        assert_eq!(
            tls_util::get(&mut client, "/peer"),
            (200, "203.0.113.50:6000".to_string()),
            "{driver:?}"
        );
        // Without the header, the trusted peer's handshake is not taken for one.
        let refused = tls_util::try_connect(server.local_addr(), &pki.client_config(None, BOTH));
        assert!(refused.is_err());
        server.shutdown().expect("clean shutdown");
    }
}
