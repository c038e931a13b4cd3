//! The Redis backplane, against a real `redis-server` started by each test on a loopback
//! port: two nodes share a topic with one offset sequence, a subscriber moves from one node to
//! the other and resumes with no gap, publish ids are deduplicated across nodes, topics are
//! spread over two Redis servers, and a Redis that stops and comes back makes publishes fail
//! fast and then work again, with `/readyz` degraded meanwhile and nothing lost by the
//! subscribers that stayed.
//!
//! Ignored without `redis-server` (`.ci/run` installs it and runs them).

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use socketserver::protocol::http::{HttpLimits, Router};
use socketserver::protocol::ws::WebSocketOptions;
use socketserver::protocol::Http;
use socketserver::pubsub::{PubSub, Storage};
use socketserver::{Config, RunningServer};
use util::pubsub::Client;
use util::redis::{free_port, Redis};
use util::{test_config, wait_for, Driver, TIMEOUT};

/// One node: a pub/sub server in this process whose topics live in `servers`.
struct Node {
    server: Option<RunningServer>,
    pubsub: Option<PubSub>,
}

impl Node {
    fn start(servers: &[String]) -> Node {
        Node::start_with(servers, Config::default().pubsub_max_topics)
    }

    /// A node that holds at most `max_topics` topics at once.
    fn start_with(servers: &[String], max_topics: usize) -> Node {
        let config = Config {
            shutdown_timeout: Duration::from_millis(300),
            backplane_timeout: Duration::from_millis(500),
            pubsub_max_topics: max_topics,
            ..test_config()
        };
        let storage = Storage::Redis {
            servers: servers.to_vec(),
        };
        let pubsub = PubSub::start(&config, storage).expect("start pub/sub");
        let route = pubsub.route(WebSocketOptions::from_config(&config));
        let router = Arc::new(Router::new().websocket("/", route));
        let limits = HttpLimits::from_config(&config);
        let server = util::spawn_on(Driver::Reactor, config, move || {
            Http::new(router.clone(), limits)
        });
        Node {
            server: Some(server),
            pubsub: Some(pubsub),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map(RunningServer::local_addr)
            .expect("running")
    }

    fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    fn ready(&self) -> bool {
        self.pubsub
            .as_ref()
            .is_some_and(|pubsub| pubsub.stats().backplane_ready())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown();
        }
        if let Some(pubsub) = self.pubsub.take() {
            pubsub.shutdown();
        }
    }
}

/// A subscription's start, checked: its epoch (as the wire gives it) and last offset.
fn subscribed(client: &mut Client, topic: &str, from: Option<Value>) -> (String, u64, bool) {
    let answer = client.subscribe(topic, from);
    (
        answer["epoch"].as_str().expect("an epoch").to_string(),
        answer["offset"].as_u64().expect("the last offset"),
        answer["recovered"].as_bool().expect("recovered"),
    )
}

#[test]
#[ignore = "needs redis-server"]
fn two_nodes_share_a_topic_and_every_message_reaches_both_with_one_offset() {
    let redis = Redis::start("share");
    let servers = vec![redis.url()];
    let (a, b) = (Node::start(&servers), Node::start(&servers));
    let mut on_a = a.client();
    let mut on_b = b.client();
    let (epoch_a, last_a, _) = subscribed(&mut on_a, "news", None);
    let (epoch_b, last_b, _) = subscribed(&mut on_b, "news", None);
    assert_eq!(
        (&epoch_a, last_a),
        (&epoch_b, last_b),
        "one epoch, one offset"
    );
    assert_eq!(last_a, 0);

    let mut publisher_a = a.client();
    let mut publisher_b = b.client();
    let mut offsets = Vec::new();
    for n in 0..20 {
        let publisher = if n % 2 == 0 {
            &mut publisher_a
        } else {
            &mut publisher_b
        };
        offsets.push(publisher.publish("news", &format!("m{n}"), None));
    }
    assert_eq!(
        offsets,
        (1..=20).collect::<Vec<u64>>(),
        "Redis gives out one sequence"
    );
    let expected: Vec<(u64, String)> = (0..20).map(|n| (n + 1, format!("m{n}"))).collect();
    assert_eq!(
        on_a.messages(20),
        expected,
        "node A shows every message, in order"
    );
    assert_eq!(on_b.messages(20), expected, "node B shows the same");

    // The same id published on the other node is a repeat: acknowledged, not stored again.
    let first = publisher_a.publish("news", "once", Some("order-7"));
    let again = publisher_b.publish("news", "once", Some("order-7"));
    assert_eq!(first, again);
    assert_eq!(on_a.messages(1), vec![(21, "once".to_string())]);
    let after = publisher_b.publish("news", "next", None);
    assert_eq!(after, 22);
    assert_eq!(
        on_b.messages(2),
        vec![(21, "once".into()), (22, "next".into())]
    );
}

#[test]
#[ignore = "needs redis-server"]
fn a_subscriber_that_moves_to_the_other_node_resumes_with_no_gap() {
    let redis = Redis::start("move");
    let servers = vec![redis.url()];
    let (a, b) = (Node::start(&servers), Node::start(&servers));
    let mut publisher = b.client();
    let mut on_a = a.client();
    let (epoch, _, _) = subscribed(&mut on_a, "orders", None);
    for n in 1..=5 {
        publisher.publish("orders", &format!("o{n}"), None);
    }
    let seen = on_a.messages(5);
    assert_eq!(seen.last().map(|m| m.0), Some(5));
    drop(on_a);
    // Published while it is away, on the node it will come back to.
    for n in 6..=10 {
        publisher.publish("orders", &format!("o{n}"), None);
    }
    let mut on_b = b.client();
    let (epoch_b, last, recovered) = subscribed(
        &mut on_b,
        "orders",
        Some(json!({"epoch": epoch, "offset": 5})),
    );
    assert!(recovered, "resumed on the other node");
    assert_eq!((epoch_b.as_str(), last), (epoch.as_str(), 10));
    let missed: Vec<(u64, String)> = (6..=10).map(|n| (n, format!("o{n}"))).collect();
    assert_eq!(
        on_b.messages(5),
        missed,
        "what it missed, from Redis' stream"
    );
    publisher.publish("orders", "o11", None);
    assert_eq!(on_b.messages(1), vec![(11, "o11".to_string())], "then live");

    // A node that had never heard of the topic resumes it as well.
    let c = Node::start(&servers);
    let mut on_c = c.client();
    let (_, _, recovered) = subscribed(
        &mut on_c,
        "orders",
        Some(json!({"epoch": epoch, "offset": 8})),
    );
    assert!(recovered);
    let rest: Vec<u64> = on_c.messages(3).into_iter().map(|m| m.0).collect();
    assert_eq!(rest, [9, 10, 11]);
}

#[test]
#[ignore = "needs redis-server"]
fn topics_are_spread_over_two_redis_servers_and_every_node_finds_each_one() {
    let (first, second) = (Redis::start("shard-0"), Redis::start("shard-1"));
    let servers = vec![first.url(), second.url()];
    let (a, b) = (Node::start(&servers), Node::start(&servers));
    let topics: Vec<String> = (0..16).map(|n| format!("room-{n}")).collect();
    let mut subscriber = b.client();
    for topic in &topics {
        subscribed(&mut subscriber, topic, None);
    }
    let mut publisher = a.client();
    for topic in &topics {
        assert_eq!(publisher.publish(topic, topic, None), 1);
    }
    let mut heard: Vec<String> = subscriber
        .messages(topics.len())
        .into_iter()
        .map(|(_, data)| data)
        .collect();
    heard.sort();
    let mut expected = topics.clone();
    expected.sort();
    assert_eq!(heard, expected);
    let holder = |topic: &str| {
        let key = format!("socketserver:{topic}:meta");
        let on_first = first.keys().contains(&key);
        let on_second = second.keys().contains(&key);
        assert!(on_first != on_second, "{topic} lives on exactly one server");
        usize::from(on_second)
    };
    let on_second = topics.iter().filter(|topic| holder(topic) == 1).count();
    assert!(
        (1..topics.len()).contains(&on_second),
        "both servers hold some of the 16 topics ({on_second} on the second)"
    );
}

#[test]
#[ignore = "needs redis-server"]
fn redis_going_away_fails_publishes_fast_and_they_work_again_once_it_is_back() {
    let mut redis = Redis::start("outage");
    let servers = vec![redis.url()];
    let (a, b) = (Node::start(&servers), Node::start(&servers));
    let mut subscriber = b.client();
    let (epoch, _, _) = subscribed(&mut subscriber, "alerts", None);
    let mut publisher = a.client();
    assert_eq!(publisher.publish("alerts", "before", None), 1);
    assert_eq!(subscriber.messages(1), vec![(1, "before".to_string())]);
    assert!(a.ready() && b.ready());

    redis.kill();
    // Every publish is answered, with an error, while Redis is away.
    for n in 0..5 {
        publisher.send(
            json!({"type": "publish", "topic": "alerts", "data": "lost", "id": format!("p{n}")}),
        );
        let answer = publisher.expect("error");
        assert_eq!(answer["code"], "backplane_unavailable", "{answer}");
        assert_eq!(answer["id"], format!("p{n}"));
    }
    wait_for("node A to report the backplane down", || !a.ready());

    redis.run();
    // Publishes work again once the node has reconnected (on its backoff schedule).
    let mut offset = None;
    wait_for("a publish to be acknowledged after Redis is back", || {
        publisher
            .send(json!({"type": "publish", "topic": "alerts", "data": "after", "id": "after-1"}));
        let answer = publisher.next();
        if answer["type"] == "ack" {
            offset = answer["offset"].as_u64();
            true
        } else {
            assert_eq!(answer["code"], "backplane_unavailable", "{answer}");
            false
        }
    });
    assert_eq!(
        offset,
        Some(2),
        "the append-only file kept the topic's offset"
    );
    assert!(a.ready());
    // The subscriber that stayed connected gets it, with the same epoch, nothing missing.
    assert_eq!(subscriber.messages(1), vec![(2, "after".to_string())]);
    wait_for("node B to be ready again", || b.ready());
    let mut late = b.client();
    let (epoch_now, last, recovered) = subscribed(
        &mut late,
        "alerts",
        Some(json!({"epoch": epoch, "offset": 0})),
    );
    assert!(recovered);
    assert_eq!((epoch_now, last), (epoch, 2));
    assert_eq!(
        late.messages(2),
        vec![(1, "before".to_string()), (2, "after".to_string())]
    );
}

#[test]
#[ignore = "needs redis-server"]
fn a_redis_that_lost_its_data_closes_the_subscribers_with_1012_and_they_are_told_on_resume() {
    let mut redis = Redis::start("reset");
    let servers = vec![redis.url()];
    let node = Node::start(&servers);
    let mut subscriber = node.client();
    let (epoch, _, _) = subscribed(&mut subscriber, "ticks", None);
    let mut publisher = node.client();
    publisher.publish("ticks", "t1", None);
    assert_eq!(subscriber.messages(1), vec![(1, "t1".to_string())]);

    redis.kill();
    std::fs::remove_dir_all(&redis.dir).expect("remove the data");
    std::fs::create_dir_all(&redis.dir).expect("an empty data directory");
    redis.run();
    let mut publisher = node.client();
    wait_for("a publish to the emptied Redis to be acknowledged", || {
        publisher.send(json!({"type": "publish", "topic": "ticks", "data": "new"}));
        publisher.next()["type"] == "ack"
    });
    // The subscriber is closed rather than shown offset 1 again under its old epoch.
    let closed = loop {
        match subscriber.socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame,
            Ok(tungstenite::Message::Text(text)) => panic!("shown {text} under the old epoch"),
            Ok(_) => {}
            Err(error) => panic!("no close frame: {error}"),
        }
    };
    assert_eq!(
        closed.map(|frame| u16::from(frame.code)),
        Some(1012),
        "service restart"
    );
    let mut resumed = node.client();
    let (epoch_now, _, recovered) = subscribed(
        &mut resumed,
        "ticks",
        Some(json!({"epoch": epoch, "offset": 1})),
    );
    assert!(!recovered, "told the history it knew is gone");
    assert_ne!(epoch_now, epoch);
}

/// Stores a message in a topic's Redis stream the way a node does, but without announcing it
/// on the channel: what a node's listener misses when its connection drops.
fn store_unannounced(redis: &Redis, topic: &str, data: &str) -> u64 {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut connection = client
        .get_connection_with_timeout(TIMEOUT)
        .expect("connect to redis");
    let offset: u64 = redis::cmd("HINCRBY")
        .arg(format!("socketserver:{topic}:meta"))
        .arg("offset")
        .arg(1)
        .query(&mut connection)
        .expect("HINCRBY");
    let _: String = redis::cmd("XADD")
        .arg(format!("socketserver:{topic}:log"))
        .arg(format!("0-{offset}"))
        .arg(&["d", data, "b", "0", "t", "0"])
        .query(&mut connection)
        .expect("XADD");
    offset
}

#[test]
#[ignore = "needs redis-server"]
fn what_a_node_did_not_hear_is_read_from_the_stream_in_order() {
    let redis = Redis::start("missed");
    let servers = vec![redis.url()];
    let (a, b) = (Node::start(&servers), Node::start(&servers));
    let mut subscriber = b.client();
    subscribed(&mut subscriber, "feed", None);
    let mut publisher = a.client();
    assert_eq!(publisher.publish("feed", "heard-1", None), 1);
    assert_eq!(subscriber.messages(1), vec![(1, "heard-1".to_string())]);

    // Missed announcements: the next one heard is offset 4, and 2 and 3 come first.
    assert_eq!(store_unannounced(&redis, "feed", "missed-2"), 2);
    assert_eq!(store_unannounced(&redis, "feed", "missed-3"), 3);
    assert_eq!(publisher.publish("feed", "heard-4", None), 4);
    assert_eq!(
        subscriber.messages(3),
        vec![
            (2, "missed-2".to_string()),
            (3, "missed-3".to_string()),
            (4, "heard-4".to_string())
        ]
    );

    // Stored while the node's listener was cut off, and nothing published after: the
    // listener comes back, and the node reads what it missed as it listens again.
    assert_eq!(store_unannounced(&redis, "feed", "missed-5"), 5);
    let client = redis::Client::open(redis.url()).expect("url");
    let mut connection = client
        .get_connection_with_timeout(TIMEOUT)
        .expect("connect to redis");
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut connection)
        .expect("CLIENT KILL");
    assert!(killed >= 1, "node B's listener was cut");
    assert_eq!(subscriber.messages(1), vec![(5, "missed-5".to_string())]);
}

#[test]
fn readyz_reports_degraded_while_the_backplane_cannot_reach_redis() {
    let nobody = format!("redis://127.0.0.1:{}", free_port());
    let server = util::Cli::start(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--backplane",
            &nobody,
            "--backplane-timeout-ms",
            "200",
            "--agent-addr",
            "127.0.0.1:0",
        ],
        None,
    );
    let agent = server.next_address("agent check at ");
    let mut check = util::connect(agent);
    let said = util::read_to_end(&mut check).expect("the agent's answer");
    assert_eq!(
        said, b"drain\n",
        "HAProxy's agent sends it no new clients either"
    );
    let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).build();
    let readyz = agent.get(&format!("http://{}/readyz", server.addr)).call();
    match readyz {
        Err(ureq::Error::Status(503, response)) => {
            let body = response.into_string().expect("a body");
            assert!(body.starts_with("degraded"), "{body}");
        }
        other => panic!("expected 503 degraded, got {other:?}"),
    }
    let livez = agent.get(&format!("http://{}/livez", server.addr)).call();
    assert_eq!(livez.map(|response| response.status()).ok(), Some(200));
    // A publish is answered, with the reason, not left waiting.
    let mut publisher = Client::connect(server.addr);
    publisher.send(json!({"type": "publish", "topic": "t", "data": "x"}));
    assert_eq!(publisher.expect("error")["code"], "backplane_unavailable");
}

#[test]
#[ignore = "needs redis-server"]
fn prefork_workers_share_their_topics_through_the_backplane() {
    let redis = Redis::start("prefork");
    let server = util::Cli::start(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--model",
            "prefork",
            "--processes",
            "2",
            "--backplane",
            &redis.url(),
        ],
        None,
    );
    util::wait_for_workers(&server.child, 2);
    // Connections land on either worker: whichever each lands on, all see one topic.
    let mut subscribers: Vec<Client> = (0..6).map(|_| Client::connect(server.addr)).collect();
    for subscriber in &mut subscribers {
        subscribed(subscriber, "shared", None);
    }
    let mut publishers: Vec<Client> = (0..4).map(|_| Client::connect(server.addr)).collect();
    let mut offsets = Vec::new();
    for (n, publisher) in publishers.iter_mut().enumerate() {
        offsets.push(publisher.publish("shared", &format!("from {n}"), None));
    }
    assert_eq!(offsets, [1, 2, 3, 4]);
    let expected: Vec<(u64, String)> = (0..4).map(|n| (n + 1, format!("from {n}"))).collect();
    for subscriber in &mut subscribers {
        assert_eq!(subscriber.messages(4), expected);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_clients_publish_waits_out_a_redis_outage_and_is_stored_once() {
    use socketserver::client::pubsub::{Event, PubSubClient};
    use socketserver::client::ws::ClientOptions;
    let mut redis = Redis::start("client-outage");
    let servers = vec![redis.url()];
    let node = Node::start(&servers);
    let mut subscriber = node.client();
    subscribed(&mut subscriber, "kept", None);
    redis.kill();
    let url = format!("ws://{}/", node.addr());
    let mut publisher = PubSubClient::connect(&url, ClientOptions::default()).expect("connect");
    let sequence = publisher.start_publish("kept", "through the outage");
    // Refused for now, and reported, but not given up.
    loop {
        match publisher.next_event(TIMEOUT).expect("an event") {
            Some(Event::Refused {
                sequence: Some(refused),
                code,
                ..
            }) => {
                assert_eq!(
                    (refused, code.as_str()),
                    (sequence, "backplane_unavailable")
                );
                break;
            }
            Some(Event::Connected) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        publisher.state().unacknowledged(),
        1,
        "still waiting to be stored"
    );
    redis.run();
    let offset = publisher
        .wait_published(sequence, TIMEOUT * 2)
        .expect("not refused for good")
        .expect("acknowledged once Redis is back");
    assert_eq!(offset, 1);
    assert_eq!(
        subscriber.messages(1),
        vec![(1, "through the outage".to_string())]
    );
    // Sent again and again during the outage, stored once: the next offset is 2.
    let mut other = node.client();
    assert_eq!(other.publish("kept", "next", None), 2);
}

#[test]
#[ignore = "needs redis-server"]
fn more_missed_than_one_fill_reads_is_caught_up_in_steps_in_order() {
    let redis = Redis::start("long-fill");
    let node = Node::start(&[redis.url()]);
    let mut subscriber = node.client();
    subscribed(&mut subscriber, "bulk", None);
    // 96 messages of 60 KiB (5.6 MiB) stored while the node heard nothing: more than one
    // fill (4 MiB) takes.
    let sizes: Vec<String> = (0..96)
        .map(|n| format!("{n:03}{}", "x".repeat(60 * 1024)))
        .collect();
    for data in &sizes {
        store_unannounced(&redis, "bulk", data);
    }
    let client = redis::Client::open(redis.url()).expect("url");
    let mut connection = client
        .get_connection_with_timeout(TIMEOUT)
        .expect("connect to redis");
    let _: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query(&mut connection)
        .expect("CLIENT KILL");
    let got = subscriber.messages(96);
    let offsets: Vec<u64> = got.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets, (1..=96).collect::<Vec<u64>>());
    assert!(got
        .iter()
        .zip(&sizes)
        .all(|((_, data), expected)| data == expected));
}

#[test]
#[ignore = "needs redis-server"]
fn a_resume_from_before_what_redis_still_holds_is_not_recovered_on_a_node_already_listening() {
    let redis = Redis::start("trimmed");
    let node = Node::start(&[redis.url()]);
    let mut listener = node.client();
    let (epoch, _, _) = subscribed(&mut listener, "trim", None);
    let mut publisher = node.client();
    for n in 1..=3 {
        publisher.publish("trim", &format!("t{n}"), None);
    }
    assert_eq!(listener.messages(3).len(), 3);
    // Redis trims the stream (as MAXLEN does over time), telling no one.
    let client = redis::Client::open(redis.url()).expect("url");
    let mut connection = client
        .get_connection_with_timeout(TIMEOUT)
        .expect("connect to redis");
    let _: u64 = redis::cmd("XTRIM")
        .arg(&["socketserver:trim:log", "MAXLEN", "0"])
        .query(&mut connection)
        .expect("XTRIM");
    let mut resumer = node.client();
    let answer = resumer.subscribe("trim", Some(json!({"epoch": epoch, "offset": 0})));
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(answer["earliest"], 4, "{answer}");
}

#[test]
#[ignore = "needs redis-server"]
fn a_node_at_its_topic_limit_forgets_idle_redis_topics_instead_of_refusing_new_ones() {
    let redis = Redis::start("topic-limit");
    let node = Node::start_with(&[redis.url()], 3);
    let mut subscriber = node.client();
    subscribed(&mut subscriber, "kept", None);
    let mut publisher = node.client();
    for n in 0..10 {
        assert_eq!(publisher.publish(&format!("passing-{n}"), "x", None), 1);
    }
    // Topics come back from Redis as they are used again: the offsets go on.
    assert_eq!(publisher.publish("passing-0", "again", None), 2);
    // The topic with a subscriber here was never forgotten.
    let offset = publisher.publish("kept", "still heard", None);
    assert_eq!(
        subscriber.messages(1),
        vec![(offset, "still heard".to_string())]
    );
}

#[test]
fn a_bad_backplane_url_is_refused_before_anything_binds() {
    let (status, stdout, stderr) = util::run_cli(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--backplane",
            "http://127.0.0.1:6379",
            "--addr",
            "127.0.0.1:0",
        ],
        TIMEOUT,
    );
    assert!(!status.success());
    assert!(stderr.contains("--backplane"), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");
}
