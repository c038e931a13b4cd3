//! A page and its WebSocket on one port: `GET /` serves a page with a text box; what is typed
//! there goes over a WebSocket at `/ws` and comes back. With `--deflate`, permessage-deflate
//! is offered (browsers ask for it; the page shows what was agreed).
//!
//! Run with `cargo run --release --example ws_echo -- [ADDR] [--deflate]` (ADDR defaults to
//! `127.0.0.1:8080`), then open `http://127.0.0.1:8080/`. The first line printed is
//! `listening on ADDR`. With `--tls-cert FILE --tls-key FILE` the page is served over HTTPS
//! and its socket is WSS: open `https://localhost:8080/`.

use std::io::Write;
use std::sync::Arc;

use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::ws::{self, DeflateOptions, WebSocketOptions, WebSocketRoute};
use socketserver::protocol::Http;
use socketserver::Server;

/// The page, served as it is.
const PAGE: &str = include_str!("ws_echo.html");

fn main() -> socketserver::Result<()> {
    env_logger::init();
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let deflate = arguments.iter().any(|argument| argument == "--deflate");
    let flag = |name: &str| {
        arguments
            .iter()
            .position(|argument| argument == name)
            .and_then(|at| arguments.get(at + 1))
    };
    // The address is the argument that is neither a flag nor a flag's value.
    let addr = arguments
        .iter()
        .enumerate()
        .find(|(at, argument)| {
            !argument.starts_with("--") && (*at == 0 || !arguments[at - 1].starts_with("--tls"))
        })
        .map_or("127.0.0.1:8080", |(_, argument)| argument.as_str());
    let server = Server::bind(addr)?;
    let server = match (flag("--tls-cert"), flag("--tls-key")) {
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => {
            use socketserver::tls::{TlsAcceptor, TlsSettings};
            server.tls(TlsAcceptor::new(TlsSettings::new(cert, key).alpn_http1())?)
        }
        (None, None) => server,
        _ => {
            return Err(socketserver::Error::Config(
                "--tls-cert and --tls-key go together (and need the tls feature)".into(),
            ))
        }
    };
    let mut options = WebSocketOptions::from_config(server.config());
    if deflate {
        options = options.with_deflate(DeflateOptions::default());
    }
    let router = Arc::new(
        Router::new()
            .get("/", |_| {
                Response::new(200)
                    .header("Content-Type", "text/html; charset=utf-8")
                    .body(PAGE.as_bytes())
            })
            .websocket("/ws", WebSocketRoute::new(options, |_| ws::Echo)),
    );
    let limits = HttpLimits::from_config(server.config());
    println!("listening on {}", server.local_addr());
    // Scripts (and the browser test) read the address from this first line.
    let _ = std::io::stdout().flush();
    server.serve(move || Http::new(router.clone(), limits))
}
