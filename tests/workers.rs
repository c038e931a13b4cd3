//! Offloaded jobs: they never stall the loop, their results find their connection or are
//! dropped, a panicking job fails only itself, and a full queue is an answer.

mod util;

use socketserver::Config;
use util::*;

#[test]
fn offloaded_work_does_not_stall_other_connections() {
    let (open, gate) = crossbeam_channel::unbounded();
    let server = start(move || GatedJobs { gate: gate.clone() });
    let mut waiting = connect(server.local_addr());
    waiting.write_all_line("wait a");
    wait_for("the job to be in flight", || {
        server.stats().jobs_in_flight == 1
    });

    // The job is blocked on a worker; everyone else is still answered at once.
    let mut other = connect(server.local_addr());
    for i in 0..100 {
        let line = format!("ping {i}\n");
        assert_eq!(round_trip(&mut other, line.as_bytes()), line.as_bytes());
    }
    assert_eq!(
        server.stats().jobs_in_flight,
        1,
        "the job must still be running"
    );

    open.send(()).expect("open the gate");
    assert_eq!(read_line(&mut waiting), "done a\n");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_worker_result_for_a_closed_connection_is_dropped() {
    let (open, gate) = crossbeam_channel::unbounded();
    let server = start(move || GatedJobs { gate: gate.clone() });
    let mut first = connect(server.local_addr());
    first.write_all_line("wait first");
    wait_for("the job to be in flight", || {
        server.stats().jobs_in_flight == 1
    });
    reset(first);
    wait_for("the reset connection to be removed", || {
        server.stats().active == 0
    });

    // The next connection takes the freed slot; the old job's result must not reach it.
    let mut second = connect(server.local_addr());
    assert_eq!(round_trip(&mut second, b"hello\n"), b"hello\n");
    open.send(()).expect("open the gate");
    wait_for("the stale result to be dropped", || {
        server.stats().stale_completions == 1
    });
    assert_eq!(
        round_trip(&mut second, b"again\n"),
        b"again\n",
        "only its own answers arrive"
    );
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_panicking_job_fails_only_its_own_request() {
    let (open, gate) = crossbeam_channel::unbounded();
    let server = start(move || GatedJobs { gate: gate.clone() });
    let mut stream = connect(server.local_addr());
    stream.write_all_line("panic");
    assert_eq!(read_line(&mut stream), "failed\n");
    open.send(()).expect("open the gate");
    stream.write_all_line("wait after");
    assert_eq!(
        read_line(&mut stream),
        "done after\n",
        "the connection and the pool still work"
    );
    assert_eq!(server.stats().closed_by_panic, 0);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_full_job_queue_answers_busy_instead_of_blocking() {
    let (open, gate) = crossbeam_channel::unbounded();
    let config = Config {
        workers: 1,
        job_queue: 1,
        ..test_config()
    };
    let server = start_with(config, move || GatedJobs { gate: gate.clone() });
    let mut stream = connect(server.local_addr());
    stream.write_all_line("wait running");
    wait_for("the first job to be taken by the worker", || {
        server.stats().jobs_in_flight == 1
    });
    // The worker may not have taken the first job off the queue yet; until it has, a second
    // job is refused. Retry until one is queued behind the running job.
    let mut probe = connect(server.local_addr());
    loop {
        let rejected_before = server.stats().jobs_rejected;
        probe.write_all_line("wait queued");
        wait_for("the job to be queued or refused", || {
            let stats = server.stats();
            stats.jobs_in_flight == 2 || stats.jobs_rejected > rejected_before
        });
        if server.stats().jobs_in_flight == 2 {
            break;
        }
        assert_eq!(read_line(&mut probe), "busy\n");
    }
    stream.write_all_line("wait refused");
    assert_eq!(
        read_line(&mut stream),
        "busy\n",
        "a full queue is answered at once"
    );
    assert_eq!(round_trip(&mut stream, b"still here\n"), b"still here\n");
    open.send(()).expect("release the running job");
    open.send(()).expect("release the queued job");
    assert_eq!(read_line(&mut stream), "done running\n");
    assert_eq!(read_line(&mut probe), "done queued\n");
    assert!(server.stats().jobs_rejected >= 1);
    server.shutdown().expect("clean shutdown");
}

trait WriteLine {
    fn write_all_line(&mut self, line: &str);
}

impl WriteLine for std::net::TcpStream {
    fn write_all_line(&mut self, line: &str) {
        use std::io::Write;
        self.write_all(format!("{line}\n").as_bytes())
            .expect("write line");
    }
}
