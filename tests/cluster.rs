//! Delivery on a real 3-broker Apache Kafka 4 KRaft cluster (`.ci/cluster`: replication
//! factor 3, min.insync.replicas 2, topics of 6 partitions), in both modes, read back with
//! confluent-kafka: a `kill -9` of the broker leading most partitions, a rolling restart, two
//! of three brokers down, an oversize entity among small ones, a topic deleted and recreated.
//! Every fetched snapshot lands exactly once (or is counted as refused), and polls keep their
//! 1 s schedule throughout. Needs GRK_TEST_CLUSTER (the bootstrap list), set by scripts/test.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const FIXTURE: &str = "mbta-vp-1.pb";
/// Entities of the fixture: records per poll in entity mode.
const ENTITIES: usize = 48;
const PARTITIONS: u32 = 6;

/// The tests share one cluster and take its nodes down: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn cluster(args: &[&str]) {
    ci_script(".ci/cluster", args);
}

/// Runs a Python snippet with confluent-kafka; its stdout.
fn py(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A topic of 6 partitions, replication factor 3, with `config` on top of the cluster's
/// defaults (min.insync.replicas 2).
fn create(bootstrap: &str, topic: &str, config: &[&str]) {
    py(
        r#"
import sys
from confluent_kafka.admin import AdminClient, NewTopic
b, t, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = dict(kv.split("=", 1) for kv in sys.argv[4:])
a = AdminClient({"bootstrap.servers": b})
a.create_topics([NewTopic(t, n, 3, config=config)], operation_timeout=30)[t].result(60)
"#,
        &[&[bootstrap, topic, &PARTITIONS.to_string()], config].concat(),
    );
}

/// Waits until every partition of every topic has all its replicas in sync (a node that came
/// back has caught up), so the next step starts from a healthy cluster.
fn wait_healthy(bootstrap: &str) {
    py(
        r#"
import sys, time
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1]})
deadline = time.monotonic() + 120
while True:
    try:
        md = a.list_topics(timeout=10)
        brokers = len(md.brokers)
        lagging = [(t, p.id) for t in md.topics.values() for p in t.partitions.values()
                   if len(p.isrs) < len(p.replicas) or p.leader < 0]
        if brokers == 3 and not lagging:
            break
    except Exception as e:
        lagging = str(e)
    if time.monotonic() > deadline:
        sys.exit(f"cluster not healthy after 120 s: {lagging}")
    time.sleep(0.5)
"#,
        &[bootstrap],
    );
}

/// The node (1-3) leading most partitions of `topic`.
fn leader_of_most(bootstrap: &str, topic: &str) -> String {
    py(
        r#"
import sys, collections
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1]})
t = a.list_topics(sys.argv[2], timeout=10).topics[sys.argv[2]]
print(collections.Counter(p.leader for p in t.partitions.values()).most_common(1)[0][0])
"#,
        &[bootstrap, topic],
    )
    .trim()
    .to_string()
}

fn start(bootstrap: &str, topic: &str, url: &str, mode: &str) -> Daemon {
    Daemon::start(
        &["--poll-interval", "1", "--mode", mode],
        &[
            ("VEHICLE_URL", url),
            ("KAFKA_BROKER", bootstrap),
            ("KAFKA_TOPIC", topic),
        ],
    )
}

/// Every record of `topic` (all there is, read until nothing more comes for 5 s), grouped by
/// snapshot (its producer_timestamp): entity ids per snapshot. Fails on any duplicate.
fn snapshots(bootstrap: &str, topic: &str, at_least: usize) -> HashMap<u64, Vec<String>> {
    let records = consume_up_to(bootstrap, topic, at_least, 60);
    assert!(
        records.len() >= at_least,
        "{} of {at_least} records in {topic}",
        records.len()
    );
    // Anything beyond what was expected is a duplicate (or a stray); read what there is.
    let all = consume_up_to(bootstrap, topic, at_least + 1000, 5);
    let mut by_snapshot: HashMap<u64, Vec<String>> = HashMap::new();
    for r in &all {
        let doc: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        let stamp = doc["producer_timestamp"].as_f64().unwrap().to_bits();
        let id = match &doc["entity"] {
            Value::Array(_) => "<feed>".to_string(),
            one => one["id"].as_str().unwrap().to_string(),
        };
        let ids = by_snapshot.entry(stamp).or_default();
        assert!(
            !ids.contains(&id),
            "{id} of snapshot {stamp} twice in {topic}"
        );
        ids.push(id);
    }
    by_snapshot
}

/// Runs a daemon in `mode` at 1 s polls, disrupts the cluster with `disrupt` after 3 polls,
/// lets it poll 5 more after, stops it, and checks: every poll delivered, exactly once, in
/// full; no poll late by more than half an interval; 0 unsent at exit. Returns the log.
fn survives(name: &str, mode: &str, disrupt: impl FnOnce(&str, &str)) -> String {
    let _guard = serial();
    let Some(bootstrap) = broker("GRK_TEST_CLUSTER") else {
        return String::new();
    };
    wait_healthy(&bootstrap);
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let topic = unique_topic(name);
    create(&bootstrap, &topic, &[]);
    let daemon = start(&bootstrap, &topic, &server.url("/feed"), mode);
    server.wait_for_requests(3, Duration::from_secs(30));
    disrupt(&bootstrap, &topic);
    let after = server.requests();
    server.wait_for_requests(after + 5, Duration::from_secs(60));
    let (status, _, log) = daemon.stop(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("0 unsent at exit"), "{log}");
    let polls = log.matches("poll ok:").count();
    assert_fetches_converted(polls, server.requests(), &log);
    let per_poll = if mode == "entity" { ENTITIES } else { 1 };
    let got = snapshots(&bootstrap, &topic, polls * per_poll);
    assert_eq!(got.len(), polls, "snapshots in {topic}\n{log}");
    assert!(
        got.values().all(|ids| ids.len() == per_poll),
        "a snapshot is incomplete\n{log}"
    );
    let gap = server.max_gap();
    assert!(
        gap < Duration::from_millis(1600),
        "a poll was late: {gap:?} between two\n{log}"
    );
    wait_healthy(&bootstrap);
    log
}

/// Two of three down for 10 s: a partition is led by a dead broker (and with the controller
/// quorum lost, leadership can't move) or its leader lacks min.insync.replicas. Each failed
/// attempt names which, not a bare timeout.
fn outage_named(log: &str) {
    if log.is_empty() {
        return; // skipped
    }
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("deliver failed"))
        .collect();
    assert!(failures.len() >= 5, "the 10 s outage was not felt:\n{log}");
    for line in failures {
        assert!(
            line.contains("waiting for in-sync replicas") || line.contains("Connection refused"),
            "an outage line that does not say what is wrong: {line}"
        );
    }
}

/// Every fetch became a snapshot, but for one the stop may have cut short mid-request (the
/// server counts a request the moment it arrives; an unfinished fetch is no snapshot).
fn assert_fetches_converted(polls: usize, requests: usize, log: &str) {
    assert!(
        polls == requests || polls + 1 == requests,
        "{requests} fetches, {polls} converted\n{log}"
    );
}

fn kill_the_leader(bootstrap: &str, topic: &str) {
    let leader = leader_of_most(bootstrap, topic);
    cluster(&["kill9", &leader]);
    std::thread::sleep(Duration::from_secs(10));
    cluster(&["resume", &leader]);
}

fn rolling_restart(bootstrap: &str, _topic: &str) {
    for node in ["1", "2", "3"] {
        cluster(&["stop1", node]);
        cluster(&["resume", node]);
        wait_healthy(bootstrap);
    }
}

fn two_down(bootstrap: &str, topic: &str) {
    let leader = leader_of_most(bootstrap, topic);
    let other = if leader == "1" { "2" } else { "1" };
    cluster(&["kill9", &leader, other]);
    std::thread::sleep(Duration::from_secs(10));
    cluster(&["resume", &leader, other]);
}

#[test]
fn kill_9_of_the_leader_feed_mode() {
    survives("kill-leader-feed", "feed", kill_the_leader);
}

#[test]
fn kill_9_of_the_leader_entity_mode() {
    survives("kill-leader-entity", "entity", kill_the_leader);
}

#[test]
fn rolling_restart_feed_mode() {
    survives("rolling-feed", "feed", rolling_restart);
}

#[test]
fn rolling_restart_entity_mode() {
    survives("rolling-entity", "entity", rolling_restart);
}

#[test]
fn two_of_three_down_feed_mode() {
    outage_named(&survives("two-down-feed", "feed", two_down));
}

#[test]
fn two_of_three_down_entity_mode() {
    outage_named(&survives("two-down-entity", "entity", two_down));
}

/// A topic deleted and recreated under the running daemon: every poll fetched after the
/// new topic exists lands in it exactly once.
fn recreated(mode: &str) {
    let _guard = serial();
    let Some(bootstrap) = broker("GRK_TEST_CLUSTER") else {
        return;
    };
    wait_healthy(&bootstrap);
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let topic = unique_topic(&format!("recreated-{mode}"));
    create(&bootstrap, &topic, &[]);
    let daemon = start(&bootstrap, &topic, &server.url("/feed"), mode);
    server.wait_for_requests(3, Duration::from_secs(30));
    delete_topic(&bootstrap, &topic);
    create(&bootstrap, &topic, &[]);
    let recreated_at = server.requests();
    let t0 = Instant::now();
    server.wait_for_requests(recreated_at + 6, Duration::from_secs(60));
    let (status, _, log) = daemon.stop(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("0 unsent at exit"), "{log}");
    let per_poll = if mode == "entity" { ENTITIES } else { 1 };
    // The last fetch may have been cut short by the stop (no snapshot).
    let fetched_after = (server.requests() - recreated_at).saturating_sub(1);
    let got = snapshots(&bootstrap, &topic, fetched_after * per_poll);
    assert!(
        got.len() >= fetched_after,
        "{} < {fetched_after}\n{log}",
        got.len()
    );
    assert!(got.values().all(|ids| ids.len() == per_poll), "{log}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(server.max_gap() < Duration::from_millis(1600), "{log}");
}

#[test]
fn recreated_topic_feed_mode() {
    recreated("feed");
}

#[test]
fn recreated_topic_entity_mode() {
    recreated("entity");
}

/// Entity mode, a topic that takes at most 100,000 bytes per batch, a feed of 60 small
/// vehicles and one 200 kB alert, polled every second: each poll's 60 land exactly once,
/// the alert is refused each time, one line each, counted in the last line.
#[test]
fn an_oversize_entity_among_small_ones() {
    let _guard = serial();
    let Some(bootstrap) = broker("GRK_TEST_CLUSTER") else {
        return;
    };
    wait_healthy(&bootstrap);
    let feed = feed_with_one_oversize_entity();
    let server = FeedServer::start(Response::Ok(feed));
    let topic = unique_topic("oversize");
    create(&bootstrap, &topic, &["max.message.bytes=100000"]);
    let daemon = start(&bootstrap, &topic, &server.url("/feed"), "entity");
    server.wait_for_requests(6, Duration::from_secs(30));
    let (status, _, log) = daemon.stop(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    let polls = log.matches("poll ok:").count();
    assert!(polls >= 6, "{log}");
    assert_fetches_converted(polls, server.requests(), &log);
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused by the broker") && l.contains("MESSAGE_TOO_LARGE"))
        .count();
    assert_eq!(refusals, polls, "one refusal line per poll\n{log}");
    assert!(
        log.contains(&format!("{polls} records refused")),
        "the last line counts them\n{log}"
    );
    let got = snapshots(&bootstrap, &topic, polls * 60);
    assert_eq!(got.len(), polls, "{log}");
    for ids in got.values() {
        assert_eq!(ids.len(), 60);
        assert!(!ids.iter().any(|id| id == "huge-alert"));
    }
    assert!(server.max_gap() < Duration::from_millis(1600), "{log}");
}
