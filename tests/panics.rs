//! A panic inside a protocol closes that connection, reaches the error hook, and nobody else
//! notices.

mod util;

use std::sync::{Arc, Mutex};

use socketserver::protocol::{Context, Protocol};
use socketserver::ErrorReport;
use util::*;

/// Echoes, but panics on the byte `!`.
struct Fragile;

impl Protocol for Fragile {
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        if input.contains(&b'!') {
            panic!("fragile protocol met a '!'");
        }
        ctx.write(input);
        input.len()
    }
}

#[test]
fn a_protocol_panic_reaches_the_error_hook_and_the_server_keeps_serving() {
    let reports: Arc<Mutex<Vec<ErrorReport>>> = Arc::default();
    let sink = reports.clone();
    let server = bind(test_config())
        .on_error(move |report| sink.lock().expect("reports lock").push(report.clone()))
        .spawn(|| Fragile)
        .expect("spawn");
    let mut bystander = connect(server.local_addr());
    assert_eq!(round_trip(&mut bystander, b"before"), b"before");

    let mut victim = connect(server.local_addr());
    let victim_addr = victim.local_addr().expect("local addr");
    std::io::Write::write_all(&mut victim, b"boom!").expect("write");
    assert!(
        is_closed_by_server(&mut victim),
        "the panicking connection is closed"
    );

    wait_for("the error hook to be called", || {
        !reports.lock().expect("lock").is_empty()
    });
    {
        let reports = reports.lock().expect("lock");
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].peer, Some(victim_addr));
        assert!(
            reports[0].message.contains("fragile protocol"),
            "message: {}",
            reports[0].message
        );
    }
    assert_eq!(server.stats().closed_by_panic, 1);

    assert_eq!(
        round_trip(&mut bystander, b"after"),
        b"after",
        "others keep being served"
    );
    let mut newcomer = connect(server.local_addr());
    assert_eq!(
        round_trip(&mut newcomer, b"new"),
        b"new",
        "new clients are served too"
    );
    drop((bystander, newcomer));
    server.shutdown().expect("clean shutdown");
}
