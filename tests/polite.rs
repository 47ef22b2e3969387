//! Polite polling and skipping what didn't change: conditional GET with the server's own
//! ETag, identical bodies, unchanged `header.timestamp` (and timestamps going backwards),
//! Retry-After, and early retries of a failed fetch. The real binary, `--sink stdout`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use gtfs_rt_kafka::decode::{decode_feed, FeedMessage};
use prost::Message;

const FIXTURE: &str = "mbta-vp-1.pb";

fn feed_bytes() -> Vec<u8> {
    std::fs::read(fixture_path(FIXTURE)).unwrap()
}

/// The fixture with its header.timestamp set to `ts` and one vehicle moved by `nudge`.
fn variant(ts: u64, nudge: f32) -> Vec<u8> {
    let mut feed: FeedMessage = decode_feed(&feed_bytes()).unwrap();
    if let Some(h) = feed.header.as_mut() {
        h.timestamp = Some(ts);
    }
    if let Some(p) = feed.entity[0]
        .vehicle
        .as_mut()
        .and_then(|v| v.position.as_mut())
    {
        p.latitude = p.latitude.map(|lat| lat + nudge);
    }
    feed.encode_to_vec()
}

/// Runs the loop until `requests` fetches happened, then stops it; returns the documents
/// printed and stderr.
fn run(server: &FeedServer, args: &[&str], requests: usize) -> (Vec<String>, String) {
    let mut child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .args(["--sink", "stdout"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect_lines(&mut child);
    server.wait_for_requests(requests, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(100));
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("no exit");
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let documents: Vec<String> = lines.try_iter().collect();
    (documents, err)
}

fn collect_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn count(err: &str, needle: &str) -> usize {
    err.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn conditional_get_sends_nothing_on_304() {
    let server = FeedServer::start(Response::ETagged {
        body: feed_bytes(),
        etag: "\"v1\"".to_string(),
    });
    let (docs, err) = run(
        &server,
        &["--poll-interval", "0.2", "--skip-unchanged", "body"],
        5,
    );
    assert_eq!(docs.len(), 1, "{err}");
    assert!(
        count(&err, "poll unchanged: 304 Not Modified") >= 3,
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(last.contains("1 delivered"), "{last}");
}

#[test]
fn identical_bodies_are_skipped_and_off_by_default() {
    let server = FeedServer::start(Response::Ok(feed_bytes()));
    let (docs, err) = run(
        &server,
        &["--poll-interval", "0.2", "--skip-unchanged", "body"],
        4,
    );
    assert_eq!(docs.len(), 1, "{err}");
    assert!(count(&err, "same 5489-byte body") >= 2, "{err}");
    // Default: every poll is sent, like the Python producer.
    let server = FeedServer::start(Response::Ok(feed_bytes()));
    let (docs, _) = run(&server, &["--poll-interval", "0.2"], 4);
    assert!(docs.len() >= 4);
}

#[test]
fn unchanged_timestamps_skip_and_backwards_ones_do_not_wedge() {
    // 100, 100 (other content, same timestamp), 90 (a lagging server), 90, 100.
    let script = vec![
        Response::Ok(variant(100, 0.0)),
        Response::Ok(variant(100, 0.001)),
        Response::Ok(variant(90, 0.002)),
        Response::Ok(variant(90, 0.003)),
        Response::Ok(variant(100, 0.004)),
    ];
    let server = FeedServer::script(script);
    let (docs, err) = run(
        &server,
        &["--poll-interval", "0.2", "--skip-unchanged", "timestamp"],
        5,
    );
    let stamps: Vec<String> = docs
        .iter()
        .take(3)
        .map(|d| {
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            v["header"]["timestamp"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(stamps, ["100", "90", "100"], "{err}");
    assert_eq!(count(&err, "header.timestamp 100 same"), 1, "{err}");
    assert_eq!(count(&err, "header.timestamp 90 same"), 1, "{err}");
}

#[test]
fn retry_after_is_honoured() {
    let server = FeedServer::script(vec![
        Response::RetryAfter(503, 2),
        Response::Ok(feed_bytes()),
    ]);
    let (docs, err) = run(&server, &["--poll-interval", "0.2"], 2);
    assert_eq!(docs.len(), 1, "{err}");
    let gap = server.gap(0, 1);
    assert!(
        gap >= Duration::from_millis(1900),
        "asked for 2 s, waited {gap:?}"
    );
    assert!(err.contains("Retry-After 2s"), "{err}");
}

#[test]
fn a_failed_fetch_is_retried_within_its_interval() {
    let server = FeedServer::script(vec![
        Response::status(500),
        Response::status(502),
        Response::status(500),
        Response::Ok(feed_bytes()),
    ]);
    // 4 s interval: two early retries a second apart, then the next slot.
    let (docs, err) = run(&server, &["--poll-interval", "4"], 4);
    assert_eq!(docs.len(), 1, "{err}");
    let first_retry = server.gap(0, 1);
    let second_retry = server.gap(1, 2);
    let next_slot = server.gap(0, 3);
    assert!(first_retry < Duration::from_millis(1500), "{first_retry:?}");
    assert!(
        second_retry < Duration::from_millis(1500),
        "{second_retry:?}"
    );
    assert!(next_slot >= Duration::from_millis(3900), "{next_slot:?}");
    assert_eq!(count(&err, "poll failed"), 3, "{err}");
}
