//! A minimal HTTP server: `Hello, World!` at `/`, a JSON answer computed on the worker pool at
//! `POST /length`, and the server's counters at `/metrics`.
//!
//! Run with `cargo run --release --example http_hello`, then `curl -i http://127.0.0.1:8080/`.

use std::sync::Arc;

use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::Http;
use socketserver::Server;

fn main() -> socketserver::Result<()> {
    env_logger::init();
    let server = Server::bind("127.0.0.1:8080")?;
    let stats = server.handle();
    let router = Arc::new(
        Router::new()
            .get("/", |_| Response::text(200, "Hello, World!"))
            // Runs on the worker pool; pipelined answers after it wait their turn.
            .route_offloaded("POST", "/length", |request| {
                Response::json(200, format!("{{\"bytes\":{}}}", request.body().len()))
            })
            .get("/metrics", move |_| Response::metrics(&stats.stats())),
    );
    let limits = HttpLimits::from_config(server.config());
    println!("listening on http://{}", server.local_addr());
    server.serve(move || Http::new(router.clone(), limits))
}
