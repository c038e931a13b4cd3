//! The PROXY protocol on accepted connections: v1 and v2 headers from a trusted balancer
//! (sent a byte at a time, and with the first data in the same write) give the handler, the
//! verify hook and the logs the client's address; `LOCAL` keeps the balancer's; a malformed
//! header or none in time closes the connection; from an untrusted address a header is just
//! data.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socketserver::net::proxy::v2_header;
use socketserver::protocol::{Context, Protocol};
use socketserver::Config;
use util::{connect, is_closed_by_server, read_line, spawn_bound, Driver};

/// Says who its peer is as it opens, then echoes.
struct WhoAmI;

impl Protocol for WhoAmI {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        let peer = ctx
            .peer_addr()
            .map_or_else(|| "unknown".to_string(), |peer| peer.to_string());
        ctx.write(format!("peer {peer}\n").as_bytes());
    }

    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        ctx.write(input);
        input.len()
    }
}

/// A server trusting `ranges` to send PROXY headers, refusing client 192.0.2.66 by its hook.
fn serve(driver: Driver, ranges: &str) -> socketserver::RunningServer {
    let config = Config {
        proxy_protocol_from: ranges
            .split(',')
            .map(|range| range.parse().expect("a CIDR range"))
            .collect(),
        proxy_header_timeout: Duration::from_millis(300),
        ..util::test_config()
    };
    let server = util::bind_for(driver, config)
        .verify(|peer: SocketAddr| peer.ip() != "192.0.2.66".parse::<std::net::IpAddr>().unwrap());
    spawn_bound(driver, server, || WhoAmI)
}

/// Sends `bytes` one write per byte (with Nagle off, most arrive as segments of their own).
fn trickle(stream: &mut TcpStream, bytes: &[u8]) {
    stream.set_nodelay(true).expect("TCP_NODELAY");
    for byte in bytes {
        stream.write_all(std::slice::from_ref(byte)).expect("write");
    }
}

const DRIVERS: [Driver; 2] = [Driver::Reactor, Driver::Reactors];

#[test]
fn a_trusted_balancers_v1_and_v2_headers_name_the_client_to_the_handler() {
    for driver in DRIVERS {
        let server = serve(driver, "127.0.0.0/8,::1/128");
        let addr = server.local_addr();

        let mut v1 = connect(addr);
        trickle(&mut v1, b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n");
        assert_eq!(read_line(&mut v1), "peer 203.0.113.9:51000\n", "{driver:?}");
        v1.write_all(b"after\n").expect("write");
        assert_eq!(
            read_line(&mut v1),
            "after\n",
            "what follows the header is data"
        );

        let header = v2_header(
            "[2001:db8::42]:40000".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        );
        let mut v2 = connect(addr);
        trickle(&mut v2, &header);
        assert_eq!(read_line(&mut v2), "peer [2001:db8::42]:40000\n");

        // The header and the first data in one write: nothing of the data is lost.
        let mut together = connect(addr);
        let mut bytes = v2_header(
            "198.51.100.3:7".parse().unwrap(),
            "10.0.0.1:80".parse().unwrap(),
        );
        bytes.extend_from_slice(b"hello\n");
        together.write_all(&bytes).expect("write");
        assert_eq!(read_line(&mut together), "peer 198.51.100.3:7\n");
        assert_eq!(read_line(&mut together), "hello\n");

        // A health check's LOCAL header: the balancer's own address stays.
        let mut local = connect(addr);
        let mut check = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        check.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        local.write_all(&check).expect("write");
        let line = read_line(&mut local);
        assert_eq!(line, format!("peer {}\n", local.local_addr().unwrap()));
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn the_verify_hook_judges_the_client_the_header_names() {
    let server = serve(Driver::Reactor, "127.0.0.0/8");
    let mut refused = connect(server.local_addr());
    refused
        .write_all(b"PROXY TCP4 192.0.2.66 10.0.0.1 1000 80\r\n")
        .expect("write");
    assert!(
        is_closed_by_server(&mut refused),
        "the hook refused that client"
    );
    let mut allowed = connect(server.local_addr());
    allowed
        .write_all(b"PROXY TCP4 192.0.2.67 10.0.0.1 1000 80\r\n")
        .expect("write");
    assert_eq!(read_line(&mut allowed), "peer 192.0.2.67:1000\n");
    assert_eq!(server.stats().refused_by_verify, 1);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_malformed_header_or_none_in_time_closes_the_connection_before_the_handler_opens() {
    let server = serve(Driver::Reactor, "127.0.0.0/8");
    let addr = server.local_addr();
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 203.0.113.9 10.0.0.1 51000\r\n",
        b"PROXY TCP9 203.0.113.9 10.0.0.1 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
    ] {
        let mut stream = connect(addr);
        stream.write_all(bad).expect("write");
        assert!(is_closed_by_server(&mut stream), "{bad:?}");
    }
    // Half a header, then silence: closed once the header timeout passes.
    let mut slow = connect(addr);
    slow.write_all(b"PROXY TCP4 203.0").expect("write");
    assert!(is_closed_by_server(&mut slow));
    let mut silent = connect(addr);
    assert!(is_closed_by_server(&mut silent));
    assert!(server.stats().closed_protocol_error >= 6);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn from_an_untrusted_address_a_header_is_only_data() {
    let server = serve(Driver::Reactor, "10.0.0.0/8");
    let mut stream = connect(server.local_addr());
    let mine = stream.local_addr().expect("local address");
    assert_eq!(read_line(&mut stream), format!("peer {mine}\n"));
    stream
        .write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n")
        .expect("write");
    assert_eq!(
        read_line(&mut stream),
        "PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n",
        "not believed: handed to the protocol as it came"
    );
    server.shutdown().expect("clean shutdown");
}

#[test]
fn the_blocking_models_refuse_a_proxy_protocol_config() {
    let config = Config {
        proxy_protocol_from: vec!["127.0.0.0/8".parse().unwrap()],
        ..util::test_config()
    };
    let error = util::bind(config)
        .serve_blocking(socketserver::Model::ThreadPool, || WhoAmI)
        .expect_err("refused");
    assert!(error.to_string().contains("PROXY protocol"), "{error}");
}
