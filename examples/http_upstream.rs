//! An HTTP front that forwards every request to upstream HTTP servers through a keep-alive
//! pool, failing over down the list when one is down.
//!
//! The forwarding runs on the worker pool (a blocking exchange with the upstream never holds
//! up the event loop); the pool keeps connections open between requests, so the upstream
//! accepts a few connections instead of one per request.
//!
//! ```text
//! cargo run --release --example http_upstream -- --listen 127.0.0.1:8080 \
//!     --upstream 127.0.0.1:9001,127.0.0.1:9002 [--workers 4] [--no-pool]
//! curl -i http://127.0.0.1:8080/anything
//! ```
//!
//! `--no-pool` opens a new upstream connection per request, for comparison. `/pool` answers
//! what the pool has done (connects, reuses, discarded, failovers, retries). An upstream that
//! cannot be reached is answered with 502, every upstream at its connection limit with 503.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use socketserver::client::upstream::{PoolOptions, UpstreamError, UpstreamPool};
use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::Http;
use socketserver::{Config, Error, Server};

fn usage() -> Error {
    Error::Config(
        "usage: http_upstream [--listen ADDR] --upstream ADDR[,ADDR...] [--workers N] [--no-pool]"
            .into(),
    )
}

fn main() -> socketserver::Result<()> {
    env_logger::init();
    let mut listen = "127.0.0.1:8080".to_string();
    let mut upstreams: Vec<SocketAddr> = Vec::new();
    let mut workers = 4;
    let mut pooled = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or_else(usage)?,
            "--upstream" => {
                for addr in args.next().ok_or_else(usage)?.split(',') {
                    upstreams.push(addr.parse().map_err(|_| usage())?);
                }
            }
            "--workers" => {
                workers = args.next().and_then(|n| n.parse().ok()).ok_or_else(usage)?;
            }
            "--no-pool" => pooled = false,
            _ => return Err(usage()),
        }
    }
    if upstreams.is_empty() {
        return Err(usage());
    }
    let options = PoolOptions {
        // Without a pool, nothing is kept: every request connects anew.
        max_idle: if pooled {
            PoolOptions::default().max_idle
        } else {
            0
        },
        ..PoolOptions::default()
    };
    let pool = Arc::new(UpstreamPool::new(upstreams, options));
    let config = Config {
        workers,
        ..Config::default()
    };
    let server = Server::bind_with(listen.as_str(), config)?;
    let status = pool.clone();
    let mut router = Router::new().get("/pool", move |_| {
        let stats = status.stats();
        let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Response::json(
            200,
            format!(
                r#"{{"connects":{},"reuses":{},"discarded":{},"failovers":{},"retries":{},"idle":{}}}"#,
                count(&stats.connects),
                count(&stats.reuses),
                count(&stats.discarded),
                count(&stats.failovers),
                count(&stats.retries),
                status.idle()
            ),
        )
    });
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let pool = pool.clone();
        router = router.route_offloaded(method, "/*", move |request| match pool.send(request) {
            Ok(answer) => answer.into_response(),
            Err(UpstreamError::Busy) => Response::text(503, "every upstream is busy\n"),
            Err(error) => {
                log::warn!("{} {}: {error}", request.method(), request.path());
                Response::text(502, format!("{error}\n"))
            }
        });
    }
    let router = Arc::new(router);
    let limits = HttpLimits::from_config(server.config());
    println!("listening on {}", server.local_addr());
    server.serve(move || Http::new(router.clone(), limits))
}
