//! Delivery against a real Apache Kafka 4, read back with confluent-kafka: a record the
//! broker refuses for its size is set aside alone and its neighbours land exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

#[test]
fn an_oversize_entity_is_set_aside_and_its_neighbours_land_exactly_once() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::Ok(feed_with_one_oversize_entity()));
    let topic = unique_topic("oversize-entity");
    let out = std::process::Command::new(BIN)
        .args(["--once", "--mode", "entity"])
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", &broker)
        .env("KAFKA_TOPIC", &topic)
        // The topic takes at most 100,000 bytes per batch: the alert can never fit.
        .env("CREATE_TOPIC", "true")
        .env("TOPIC_PARTITIONS", "3")
        .env("TOPIC_CONFIG", "max.message.bytes=100000")
        .env("DELIVERY_TIMEOUT", "20")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let refusals: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("refused by the broker"))
        .collect();
    assert_eq!(refusals.len(), 1, "{err}");
    assert!(refusals[0].contains("MESSAGE_TOO_LARGE"), "{}", refusals[0]);
    assert!(refusals[0].contains("MODE=entity") || refusals[0].contains("max.message.bytes"));
    assert!(
        err.contains("1 records refused"),
        "the last line counts it: {err}"
    );
    let records = consume_up_to(&broker, &topic, 61, 8);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        *seen
            .entry(r["key"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    assert_eq!(records.len(), 60, "{err}\n{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "duplicates: {seen:?}");
    assert!(!seen.contains_key("huge-alert"));
    std::thread::sleep(Duration::from_millis(10));
}

/// A topic deleted and recreated (a new topic id) under a running producer: the next polls
/// deliver into the new topic within seconds (UNKNOWN_TOPIC_ID refreshes metadata at once),
/// not after the 5-minute metadata age.
#[test]
fn a_recreated_topic_gets_the_next_polls() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture("mbta-vp-1.pb"));
    let topic = unique_topic("recreated");
    create_topic(&broker, &topic, 1);
    let daemon = Daemon::start(
        &["--poll-interval", "0.5"],
        &[
            ("VEHICLE_URL", &server.url("/feed")),
            ("KAFKA_BROKER", &broker),
            ("KAFKA_TOPIC", &topic),
        ],
    );
    daemon.wait_for_line("poll ok", Duration::from_secs(20));
    delete_topic(&broker, &topic);
    create_topic(&broker, &topic, 1);
    let recreated_at = std::time::Instant::now();
    // A poll delivered from now on went into the new topic (the old one is gone).
    let before = daemon.log().matches("poll ok:").count();
    while daemon.log().matches("poll ok:").count() <= before {
        assert!(
            recreated_at.elapsed() < Duration::from_secs(15),
            "no delivery into the recreated topic within 15 s:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = recreated_at.elapsed();
    let (status, _, log) = daemon.stop(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{log}");
    let records = consume_up_to(&broker, &topic, 1, 10);
    assert!(!records.is_empty(), "nothing in the recreated topic\n{log}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// A document over the broker's `socket.request.max.bytes` (100 MiB by default): the broker
/// cuts the connection mid-request. Recognised as too large on the first try — one line with
/// the size and the remedies, counted — never retried as a broken pipe until the deadline.
#[test]
fn a_request_over_the_brokers_socket_limit_is_refused_at_once() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    use gtfs_rt_kafka::decode::transit_realtime::{FeedHeader, FeedMessage};
    use prost::Message;
    // 18 M control characters: each becomes "\u0001" in JSON, a 108 MB document.
    let feed = FeedMessage {
        header: Some(FeedHeader {
            gtfs_realtime_version: Some("\u{1}".repeat(18_000_000)),
            timestamp: Some(1_700_000_000),
            ..Default::default()
        }),
        entity: Vec::new(),
    }
    .encode_to_vec();
    let server = FeedServer::start(Response::Ok(feed));
    let topic = unique_topic("socket-limit");
    create_topic(&broker, &topic, 1);
    let started = std::time::Instant::now();
    let out = std::process::Command::new(BIN)
        .arg("--once")
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", &broker)
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_COMPRESSION", "none")
        .env("MAX_DOCUMENT_BYTES", "200MiB")
        .env("QUEUE_MAX_BYTES", "256MiB")
        .env("DELIVERY_TIMEOUT", "60")
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = refusal_line(&err);
    assert!(line.contains("socket.request.max.bytes"), "{line}");
    assert!(line.contains("KAFKA_COMPRESSION"), "{line}");
    assert!(line.contains("MODE=entity"), "{line}");
    assert!(!err.contains("Broken pipe (retriable)"), "{err}");
    assert!(err.contains("1 rejected by broker"), "{err}");
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}: retried\n{err}"
    );
}
