//! End-to-end tests of the real binary: a local HTTP server serves fixtures, the binary polls it,
//! and records are read back from real brokers with an independent client (confluent-kafka,
//! through tests/py/consume.py).
//!
//! Brokers come from GRK_TEST_KAFKA4 / GRK_TEST_KAFKA39 / GRK_TEST_TANSU ("host:port", started by
//! `.ci/brokers start all`). Unset means "skipped", unless GRK_REQUIRE_BROKERS=1 (as in CI),
//! where it is a failure.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const VP_FIXTURE: &str = "mbta-vp-1.pb";

#[test]
fn convert_prints_the_reference_document_with_envelope() {
    for fixture in ["mbta-vp-1.pb", "synthetic-pl-alerts.pb", "ovapi-nl-tu-1.pb"] {
        let out = Command::new(BIN)
            .args(["convert", &fixture_path(fixture)])
            .args(["--source-id", "src", "--event-type", "evt"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 1, "one document, one line");
        assert_document(text.trim_end().as_bytes(), fixture, "src", "evt");
    }
}

#[test]
fn convert_reads_stdin_and_rejects_garbage_with_one_line() {
    let mut child = Command::new(BIN)
        .args(["convert", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"<html><body>502 Bad Gateway</body></html>",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.to_lowercase().contains("html"), "{err}");
}

#[test]
fn invalid_settings_exit_2_naming_the_setting() {
    let check = |env: (&str, &str), expected: &str| {
        let out = Command::new(BIN)
            .env(env.0, env.1)
            .arg("--once")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{err}");
    };
    check(("POLL_INTERVAL", "fast"), "POLL_INTERVAL / --poll-interval");
    check(
        ("KAFKA_BROKER", "host:notaport"),
        "KAFKA_BROKER / --kafka-broker",
    );
    check(("VEHICLE_URL", "gopher://x"), "VEHICLE_URL / --vehicle-url");
    check(("KAFKA_TOPIC", "no spaces"), "KAFKA_TOPIC / --kafka-topic");
}

#[test]
fn once_to_stdout_from_http() {
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let out = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed?acl:consumerKey=SECRET123"))
        .args(["--sink", "stdout", "--once"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_document(
        String::from_utf8(out.stdout).unwrap().trim_end().as_bytes(),
        VP_FIXTURE,
        "toei_vehicle_api",
        "gtfs_realtime_vehicle",
    );
    assert!(err.contains("poll ok:"), "{err}");
    assert!(err.contains("48 entities"), "{err}");
    assert!(!err.contains("SECRET123"), "API key leaked: {err}");
}

#[test]
fn http_errors_fail_once_with_one_redacted_line() {
    let server = FeedServer::start(Response::status(500));
    let out = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed?acl:consumerKey=SECRET123"))
        .args(["--sink", "stdout", "--once", "--log-level", "trace"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let failures: Vec<&str> = err.lines().filter(|l| l.contains("poll failed")).collect();
    assert_eq!(failures.len(), 1, "{err}");
    assert!(failures[0].contains("HTTP status 500"), "{err}");
    assert!(failures[0].contains("acl:consumerKey=***"), "{err}");
    assert!(!err.contains("SECRET123"), "API key leaked: {err}");
}

#[test]
fn unreachable_broker_fails_once_naming_it() {
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let dead = dead_port();
    let out = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", format!("127.0.0.1:{dead}"))
        .args(["--once", "--delivery-timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{dead}")), "{err}");
}

#[test]
fn sigterm_while_sleeping_exits_0_at_once() {
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let mut child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .args(["--sink", "stdout", "--poll-interval", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first poll's document, so the process is sleeping before the next.
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(5)).expect("did not exit");
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_millis(900), "took {took:?}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("stopped: 1 polls, 1 delivered"), "{err}");
}

#[test]
fn second_signal_during_a_hung_poll_exits_immediately() {
    let server = FeedServer::start(Response::Hang);
    let mut child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .args(["--sink", "stdout", "--http-timeout", "30"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for_requests(1, Duration::from_secs(5));
    signal(child.id(), "TERM");
    // The first signal lets the in-flight poll finish (it would take 30 s here)...
    assert!(wait_timeout(&mut child, Duration::from_millis(500)).is_none());
    // ...the second one does not wait.
    let sent = Instant::now();
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(5)).expect("did not exit");
    assert_eq!(status.code(), Some(143));
    assert!(sent.elapsed() < Duration::from_millis(900));
}

#[test]
fn once_into_apache_kafka_4() {
    if let Some(broker) = broker("GRK_TEST_KAFKA4") {
        once_into(&broker);
    }
}

#[test]
fn once_into_apache_kafka_39() {
    if let Some(broker) = broker("GRK_TEST_KAFKA39") {
        once_into(&broker);
    }
}

#[test]
fn once_into_tansu() {
    if let Some(broker) = broker("GRK_TEST_TANSU") {
        once_into(&broker);
    }
}

/// `VEHICLE_URL=… KAFKA_BROKER=… KAFKA_TOPIC=… gtfs-rt-kafka --once` lands one record equal to
/// the reference plus the three metadata fields, read back by confluent-kafka.
fn once_into(broker: &str) {
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let topic = unique_topic("once");
    create_topic(broker, &topic, 1);
    let before = now_secs();
    let out = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", broker)
        .env("KAFKA_TOPIC", &topic)
        .arg("--once")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("{topic}[0]@0")), "{err}");
    let records = consume(broker, &topic, 1);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["key"], Value::Null);
    let value = record["value"].as_str().unwrap();
    let doc = assert_document(
        value.as_bytes(),
        VP_FIXTURE,
        "toei_vehicle_api",
        "gtfs_realtime_vehicle",
    );
    let ts = doc["producer_timestamp"].as_f64().unwrap();
    assert!(ts >= before && ts <= now_secs() + 1.0, "{ts}");
    let record_ts_ms = record["timestamp_ms"].as_i64().unwrap();
    assert!((record_ts_ms as f64 / 1000.0 - ts).abs() < 1.0);
}

#[test]
fn loop_delivers_every_poll_and_stops_cleanly_kafka_4() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let topic = unique_topic("loop");
    create_topic(&broker, &topic, 3);
    let mut child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", &broker)
        .env("KAFKA_TOPIC", &topic)
        .args(["--poll-interval", "0.5", "--compression", "lz4"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    server.wait_for_requests(5, Duration::from_secs(30));
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(15)).expect("did not exit");
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let delivered = err.lines().filter(|l| l.contains("poll ok:")).count();
    assert!(delivered >= 5, "{err}");
    assert!(err.contains(&format!("{delivered} delivered")), "{err}");
    let records = consume(&broker, &topic, delivered);
    assert_eq!(records.len(), delivered);
    let mut stamps: Vec<f64> = records
        .iter()
        .map(|r| {
            let doc = assert_document(
                r["value"].as_str().unwrap().as_bytes(),
                VP_FIXTURE,
                "toei_vehicle_api",
                "gtfs_realtime_vehicle",
            );
            doc["producer_timestamp"].as_f64().unwrap()
        })
        .collect();
    stamps.sort_by(f64::total_cmp);
    stamps.dedup();
    assert_eq!(stamps.len(), delivered, "each poll is its own record");
}

/// systemd's notify protocol through a real Unix datagram socket: READY once the loop starts,
/// STATUS with the poll's line, WATCHDOG pings more often than the poll interval, STOPPING.
#[test]
fn systemd_notify_protocol() {
    use std::os::unix::net::UnixDatagram;
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let dir = std::env::temp_dir().join(format!("grk-e2e-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000")
        .args(["--sink", "stdout", "--poll-interval", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    // With a 60 s interval and a 1 s watchdog, pings must keep coming while it sleeps.
    while messages
        .iter()
        .filter(|m: &&String| *m == "WATCHDOG=1")
        .count()
        < 4
    {
        let n = socket.recv(&mut buf).expect("notify message");
        messages.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(started.elapsed() < Duration::from_secs(5), "{messages:?}");
    // At a calm rate: half the watchdog timeout apart, not every loop turn.
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "4 pings in {:?}",
        started.elapsed()
    );
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(5)).expect("did not exit");
    assert_eq!(status.code(), Some(0));
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1");
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        messages.push(m.clone());
        if m == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(messages[0], "READY=1", "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("STATUS=poll ok:") && m.contains("48 entities")),
        "{messages:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--mode entity` into a 3-partition topic: one record per entity keyed by its id, the header
/// copied into each, values equal to the reference JSON, and each record on the partition the
/// Java client would choose for its key (Kafka's own `Utils.murmur2`, run through `java`).
#[test]
fn entity_mode_keys_and_partitions_match_the_java_client() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let topic = unique_topic("entity");
    create_topic(&broker, &topic, 3);
    let out = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", &broker)
        .env("KAFKA_TOPIC", &topic)
        .args(["--once", "--mode", "entity", "--record-timestamp", "feed"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let golden = golden(VP_FIXTURE);
    let entities = golden["entity"].as_array().unwrap();
    let header = &golden["header"];
    let feed_ts_ms = header["timestamp"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap()
        * 1000;
    let mut records = consume(&broker, &topic, entities.len());
    records.sort_by_key(|r| {
        let key = r["key"].as_str().unwrap().to_string();
        entities.iter().position(|e| e["id"] == key.as_str())
    });
    let keys: Vec<String> = records
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    let java = java_partitions(3, &keys);
    for ((record, entity), java_partition) in records.iter().zip(entities).zip(java) {
        assert_eq!(record["key"], entity["id"]);
        assert_eq!(
            record["partition"].as_i64(),
            Some(java_partition),
            "{}",
            record["key"]
        );
        assert_eq!(record["timestamp_ms"].as_i64(), Some(feed_ts_ms));
        let mut value: Value = serde_json::from_str(record["value"].as_str().unwrap()).unwrap();
        let obj = value.as_object_mut().unwrap();
        assert!(obj.remove("producer_timestamp").unwrap().is_f64());
        assert_eq!(obj.remove("source_id"), Some("toei_vehicle_api".into()));
        assert_eq!(
            obj.remove("event_type"),
            Some("gtfs_realtime_vehicle".into())
        );
        assert_eq!(obj.remove("header").as_ref(), Some(header));
        assert_eq!(obj.remove("entity").as_ref(), Some(entity));
        assert!(obj.is_empty(), "{obj:?}");
    }
    let spread: std::collections::HashSet<i64> = records
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(spread.len(), 3, "48 keys should reach every partition");
}

/// Kafka's own `Utils.murmur2` partition for each key, from the broker's client jar.
fn java_partitions(partitions: u32, keys: &[String]) -> Vec<i64> {
    let out = Command::new("java")
        .arg("-cp")
        .arg(repo_path(".ci/work/kafka4/lib/*"))
        .arg(repo_path("tests/java/Partition.java"))
        .arg(partitions.to_string())
        .args(keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// `replay DIR` sends archived captures in file-name order, each once, same document rules.
#[test]
fn replay_a_directory_of_captures_in_order() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("grk-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let order = ["synthetic-tu.pb", "mbta-vp-1.pb", "synthetic-pl-alerts.pb"];
    for (i, fixture) in order.iter().enumerate() {
        std::fs::copy(fixture_path(fixture), dir.join(format!("capture-{i}.pb"))).unwrap();
    }
    let topic = unique_topic("replay");
    create_topic(&broker, &topic, 1);
    let out = Command::new(BIN)
        .arg("replay")
        .arg(&dir)
        .env("KAFKA_BROKER", &broker)
        .env("KAFKA_TOPIC", &topic)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("replay 3/3"), "{err}");
    let records = consume(&broker, &topic, 3);
    for (record, fixture) in records.iter().zip(order) {
        assert_document(
            record["value"].as_str().unwrap().as_bytes(),
            fixture,
            "toei_vehicle_api",
            "gtfs_realtime_vehicle",
        );
    }
    // A capture that isn't a feed: one error line, the others still go, exit 1.
    std::fs::write(dir.join("capture-1b.pb"), b"<html>oops</html>").unwrap();
    let out = Command::new(BIN)
        .args(["replay", "--sink", "stdout"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--create-topic` with 3 partitions: entity records spread over all three; a second start
/// finds the topic and leaves it alone.
#[test]
fn create_topic_on_apache_kafka_4() {
    if let Some(broker) = broker("GRK_TEST_KAFKA4") {
        create_topic_then_produce(&broker);
    }
}

#[test]
fn create_topic_on_tansu() {
    if let Some(broker) = broker("GRK_TEST_TANSU") {
        create_topic_then_produce(&broker);
    }
}

fn create_topic_then_produce(broker: &str) {
    let server = FeedServer::start(Response::fixture(VP_FIXTURE));
    let topic = unique_topic("created");
    let run = || {
        Command::new(BIN)
            .env("VEHICLE_URL", server.url("/feed"))
            .env("KAFKA_BROKER", broker)
            .env("KAFKA_TOPIC", &topic)
            .args(["--once", "--mode", "entity", "--create-topic", "true"])
            .args([
                "--topic-partitions",
                "3",
                "--topic-config",
                "retention.ms=3600000",
            ])
            .output()
            .unwrap()
    };
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("created topic {topic} (3 partitions")),
        "{err}"
    );
    let records = consume(broker, &topic, 48);
    let partitions: std::collections::HashSet<i64> = records
        .iter()
        .map(|r| r["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(partitions.len(), 3, "{partitions:?}");
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already exists"), "{err}");
}
