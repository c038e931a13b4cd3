//! A chat in the browser on pub/sub: rooms are topics, a room's history comes with joining it,
//! and a page whose connection drops reconnects (backing off) and resumes every room from the
//! last message it showed, so nothing is missed and nothing is shown twice.
//!
//! Run with `cargo run --release --example chat -- [ADDR] [--data-dir DIR]` (ADDR defaults
//! to `127.0.0.1:8080`; without `--data-dir` the history is kept in memory), then open
//! `http://127.0.0.1:8080/` in two windows. The first line printed is `listening on ADDR`.

use std::io::Write;
use std::sync::Arc;

use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::ws::{DeflateOptions, WebSocketOptions};
use socketserver::protocol::Http;
use socketserver::pubsub::{FsyncPolicy, PubSub, Storage};
use socketserver::Server;

/// The page, served as it is.
const PAGE: &str = include_str!("chat.html");

fn main() -> socketserver::Result<()> {
    env_logger::init();
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let data_dir = arguments
        .iter()
        .position(|argument| argument == "--data-dir")
        .and_then(|at| arguments.get(at + 1));
    let addr = arguments
        .iter()
        .enumerate()
        .find(|(at, argument)| {
            !argument.starts_with("--") && (*at == 0 || arguments[at - 1] != "--data-dir")
        })
        .map_or("127.0.0.1:8080", |(_, argument)| argument.as_str());
    let server = Server::bind(addr)?;
    let storage = match data_dir {
        Some(dir) => Storage::Disk {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
        },
        None => Storage::Memory,
    };
    let pubsub = PubSub::start(server.config(), storage)?;
    let options =
        WebSocketOptions::from_config(server.config()).with_deflate(DeflateOptions::default());
    let router = Arc::new(
        Router::new()
            .get("/", |_| {
                Response::new(200)
                    .content_type("text/html; charset=utf-8")
                    .body(PAGE.as_bytes())
            })
            .websocket("/ws", pubsub.route(options)),
    );
    let limits = HttpLimits::from_config(server.config());
    println!("listening on {}", server.local_addr());
    // Scripts (and the browser test) read the address from this first line.
    let _ = std::io::stdout().flush();
    let served = server.serve(move || Http::new(router.clone(), limits));
    // Everything acknowledged is on disk already; this lets the log close cleanly.
    pubsub.shutdown();
    served
}
