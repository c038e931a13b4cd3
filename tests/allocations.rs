//! HTTP on the reactor allocates nothing per request once a connection's buffers have grown:
//! keep-alive, pipelined and header-heavy requests cost zero heap allocations after warm-up,
//! and an offloaded request costs only its job and its answer's box.
//!
//! The same holds under the blocking drivers, whose connections run through the same
//! socket-less core.
//!
//! A counting global allocator (this test binary's own) counts the allocations made on the
//! server's threads: each handler marks the thread it runs on (the reactor's, a worker's, a
//! blocking driver's handler thread). The client in the test thread reads into buffers
//! allocated before counting.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::Http;
use util::{connect, spawn_on, test_config, Driver};

/// The system allocator, counting allocations (and reallocations) made on marked threads.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread is one of the server's: its allocations count.
    static SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: a thread being torn down has no thread-locals left to ask.
    if SERVER_THREAD.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread-local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mark_server_thread() {
    SERVER_THREAD.with(|marked| marked.set(true));
}

fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

const PLAIN: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
const OFFLOADED: &[u8] = b"GET /offloaded HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// A request with the headers a browser sends, and then some.
fn header_heavy() -> Vec<u8> {
    let mut request = b"GET /?page=1&sort=name HTTP/1.1\r\nHost: localhost:8080\r\n".to_vec();
    let fields = [
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        ),
        (
            "Accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("Accept-Language", "en-GB,en;q=0.9"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Cache-Control", "max-age=0"),
        ("Connection", "keep-alive"),
        (
            "Cookie",
            "session=0123456789abcdef; theme=dark; consent=yes",
        ),
        ("Sec-Fetch-Dest", "document"),
        ("Sec-Fetch-Mode", "navigate"),
        ("Sec-Fetch-Site", "none"),
        ("Sec-Fetch-User", "?1"),
        ("Upgrade-Insecure-Requests", "1"),
        ("X-Request-Id", "5f0c6d2e-8a41-4b8e-9a55-1f3e0c2d7b90"),
        ("X-Forwarded-For", "203.0.113.7, 198.51.100.23"),
        ("Referer", "http://localhost:8080/index.html"),
    ];
    for (name, value) in fields {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// A client that knows the length of the (fixed-size) answer it gets, and reads answers into a
/// buffer allocated up front: it allocates nothing while it runs.
struct Client {
    stream: TcpStream,
    answer_bytes: usize,
    buffer: Vec<u8>,
}

impl Client {
    /// Connects and learns the answer's length from one exchange of `request`.
    fn new(addr: std::net::SocketAddr, request: &[u8], most_in_flight: usize) -> Client {
        let mut stream = connect(addr);
        stream.write_all(request).expect("send");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        let answer_bytes = loop {
            let read = stream.read(&mut chunk).expect("read");
            assert!(read > 0, "the server closed");
            answer.extend_from_slice(&chunk[..read]);
            let whole = answer.len();
            if let Some(parsed) = util::http::parse_answer(&mut answer, false) {
                assert_eq!(parsed.status, 200);
                assert!(answer.is_empty(), "one answer to one request");
                break whole;
            }
        };
        Client {
            stream,
            answer_bytes,
            buffer: vec![0; answer_bytes * most_in_flight],
        }
    }

    /// Sends `batch` (`depth` requests back to back) and reads their `depth` answers.
    fn exchange(&mut self, batch: &[u8], depth: usize) {
        self.stream.write_all(batch).expect("send");
        let want = self.answer_bytes * depth;
        let mut have = 0;
        while have < want {
            let read = self
                .stream
                .read(&mut self.buffer[have..want])
                .expect("read");
            assert!(read > 0, "the server closed after {have} of {want} bytes");
            have += read;
        }
        assert!(self.buffer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}

/// Allocations on the server's threads while `run` runs.
fn allocations_during(run: impl FnOnce()) -> u64 {
    let before = allocations();
    run();
    allocations() - before
}

const WARM_UP: usize = 200;
const MEASURED: usize = 1_000;
const DEPTH: usize = 16;

/// Every case on one server: keep-alive, pipelined, header-heavy, offloaded (where the driver
/// has a worker pool: the reactor; the blocking drivers run offloaded handlers inline).
fn check_server(driver: Driver) {
    let router = Arc::new(
        Router::new()
            .get("/", |_| {
                // Inline handlers run on the connection's thread: the reactor's, or a blocking
                // driver's handler thread.
                mark_server_thread();
                Response::text(200, "Hello, World!")
            })
            .route_offloaded("GET", "/offloaded", |_| {
                mark_server_thread();
                Response::text(200, "Hello, World!")
            }),
    );
    let config = socketserver::Config {
        workers: 1,
        ..test_config()
    };
    let limits = HttpLimits::from_config(&config);
    let server = spawn_on(driver, config, move || Http::new(router.clone(), limits));
    let addr = server.local_addr();

    // Keep-alive: one request, one answer, over and over.
    let mut client = Client::new(addr, PLAIN, DEPTH);
    for _ in 0..WARM_UP {
        client.exchange(PLAIN, 1);
    }
    let keep_alive = allocations_during(|| {
        for _ in 0..MEASURED {
            client.exchange(PLAIN, 1);
        }
    });
    assert_eq!(
        keep_alive, 0,
        "{driver:?}: {keep_alive} allocations for {MEASURED} keep-alive requests"
    );

    // Pipelined: sixteen requests in one write, their answers in one.
    let batch = PLAIN.repeat(DEPTH);
    for _ in 0..WARM_UP / DEPTH + 1 {
        client.exchange(&batch, DEPTH);
    }
    let pipelined = allocations_during(|| {
        for _ in 0..MEASURED / DEPTH {
            client.exchange(&batch, DEPTH);
        }
    });
    assert_eq!(
        pipelined,
        0,
        "{driver:?}: {pipelined} allocations for {} pipelined requests",
        MEASURED / DEPTH * DEPTH
    );

    // A browser's head: sixteen fields, a query, a cookie.
    let heavy = header_heavy();
    let mut heavy_client = Client::new(addr, &heavy, 1);
    for _ in 0..WARM_UP {
        heavy_client.exchange(&heavy, 1);
    }
    let header_heavy = allocations_during(|| {
        for _ in 0..MEASURED {
            heavy_client.exchange(&heavy, 1);
        }
    });
    assert_eq!(
        header_heavy, 0,
        "{driver:?}: {header_heavy} allocations for {MEASURED} header-heavy requests"
    );

    // Offloaded, on the reactor: the job (a boxed closure) and its answer (a boxed value)
    // cross threads, and the reactor's completion channel takes a new block of slots every 31
    // results; nothing else is allocated. (A blocking driver runs the job inline, boxed all
    // the same.)
    let mut offloaded_client = Client::new(addr, OFFLOADED, 1);
    for _ in 0..WARM_UP {
        offloaded_client.exchange(OFFLOADED, 1);
    }
    let offloaded = allocations_during(|| {
        for _ in 0..MEASURED {
            offloaded_client.exchange(OFFLOADED, 1);
        }
    });
    let bound = 2 * MEASURED as u64 + MEASURED as u64 / 31 + 1;
    assert!(
        offloaded <= bound,
        "{driver:?}: {offloaded} allocations for {MEASURED} offloaded requests (at most {bound})"
    );
    drop((client, heavy_client, offloaded_client));
    server.shutdown().expect("clean shutdown");
}

/// One test function runs every driver in turn, so that nothing else runs in this process
/// while allocations are counted.
#[test]
fn http_requests_allocate_nothing_on_the_hot_path_after_warm_up() {
    for driver in [Driver::Reactor, Driver::Threads, Driver::Pool] {
        check_server(driver);
    }
}
