//! Several feeds in one process from a config file: each with its own URL, topic, interval,
//! mode and source_id, all scheduled by one loop in one thread.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn three_feeds_at_different_intervals() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let fixtures = ["mbta-vp-1.pb", "synthetic-tu.pb", "synthetic-pl-alerts.pb"];
    let servers: Vec<FeedServer> = fixtures
        .iter()
        .map(|f| FeedServer::start(Response::fixture(f)))
        .collect();
    let topics: Vec<String> = (0..3).map(|i| unique_topic(&format!("multi{i}"))).collect();
    for t in &topics {
        create_topic(&broker, t, 1);
    }
    let intervals = ["0.4", "0.8", "1.6"];
    let mut config = format!("kafka_broker = \"{broker}\"\nevent_type = \"gtfs_rt\"\n");
    for i in 0..3 {
        config.push_str(&format!(
            "\n[[feed]]\nsource_id = \"feed{i}\"\nvehicle_url = \"{}\"\nkafka_topic = \"{}\"\npoll_interval = {}\n",
            servers[i].url("/feed"),
            topics[i],
            intervals[i]
        ));
    }
    let path = std::env::temp_dir().join(format!("grk-multi-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    servers[2].wait_for_requests(3, Duration::from_secs(30));
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(15)).expect("no exit");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let counts: Vec<usize> = servers.iter().map(FeedServer::requests).collect();
    // ~3.2 s of polling: 0.4 s ≈ 8+, 0.8 s ≈ 4+, 1.6 s = 3.
    assert!(
        counts[0] > counts[1] && counts[1] > counts[2],
        "{counts:?}\n{err}"
    );
    assert!(counts[0] >= 2 * counts[2], "{counts:?}");
    for i in 0..3 {
        // Every snapshot of each feed is in its own topic, with its own source_id.
        let delivered = err
            .lines()
            .filter(|l| l.contains(&format!("[feed{i}] poll ok:")))
            .count();
        assert_eq!(delivered, counts[i], "feed{i}\n{err}");
        let records = consume(&broker, &topics[i], delivered);
        for r in &records {
            assert_document(
                r["value"].as_str().unwrap().as_bytes(),
                fixtures[i],
                &format!("feed{i}"),
                "gtfs_rt",
            );
        }
        assert!(
            err.contains(&format!("[feed{i}] stopped: {delivered} polls")),
            "{err}"
        );
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn config_file_errors_name_the_file_line_and_feed() {
    let path = std::env::temp_dir().join(format!("grk-multi-bad-{}.toml", std::process::id()));
    let check = |text: &str, expected: &str| {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{err}");
    };
    check(
        "[[feed]]\npoll_interval = \"soon\"\n",
        "POLL_INTERVAL / --poll-interval in [[feed]] #1",
    );
    check(
        "[[feed]]\nkafka_topik = \"x\"\n",
        "unknown setting \"kafka_topik\"",
    );
    check(
        "[[feed]]\nsource_id = \"a\"\n[[feed]]\nsource_id = \"a\"\n",
        "two feeds share source_id",
    );
    check("poll_interval = 5\n", "no [[feed]] table");
    check("[[feed]]\nmode = entity\n", "line 2");
    std::fs::remove_file(&path).ok();
}
