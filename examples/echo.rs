//! The smallest socketserver: an echo server.
//!
//! Try it:
//!
//! ```text
//! cargo run --release --example echo            # prints "listening on 127.0.0.1:7000"
//! nc 127.0.0.1 7000                             # type a line; it comes back
//! ```
//!
//! Ctrl-C shuts it down gracefully.

use std::time::Duration;

use socketserver::{protocol::Echo, Server};

fn main() -> socketserver::Result<()> {
    env_logger::init();
    let server = Server::bind("127.0.0.1:7000")?
        .max_connections(10_000)
        .idle_timeout(Duration::from_secs(60));
    println!("listening on {}", server.local_addr());
    server.serve(|| Echo)
}
