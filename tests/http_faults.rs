//! Hostile and broken feed servers against the real binary: each fault gives exactly one
//! clear error line and a counter, memory stays bounded, nothing panics, and the next poll
//! (served correctly) succeeds.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const FIXTURE: &str = "mbta-vp-1.pb";

struct Run {
    stderr: String,
    documents: Vec<String>,
    /// Peak RSS (VmHWM) in KiB, read while the process was alive.
    peak_rss_kib: u64,
}

/// Runs the loop against `script` until one document came out (or 30 s), then SIGTERM.
fn run_loop(script: Vec<Response>, extra: &[&str]) -> Run {
    let server = FeedServer::script(script);
    let mut child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed?key=SECRET"))
        .args([
            "--sink",
            "stdout",
            "--poll-interval",
            "0.3",
            "--http-timeout",
            "2",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let documents = first_document(&mut child, Duration::from_secs(30));
    let peak_rss_kib = peak_rss_kib(child.id());
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(15)).expect("no exit after TERM");
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("SECRET"), "secret leaked: {stderr}");
    Run {
        stderr,
        documents,
        peak_rss_kib,
    }
}

fn first_document(child: &mut Child, timeout: Duration) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx.recv_timeout(timeout).into_iter().collect()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn feed() -> Vec<u8> {
    std::fs::read(fixture_path(FIXTURE)).unwrap()
}

/// The fault's poll fails with one line containing `cause`, counted under `counter`,
/// and the next poll delivers the feed.
fn check_fault(fault: Response, cause: &str, counter: &str) -> Run {
    check_faults(vec![fault], cause, counter)
}

/// Like `check_fault`, for a fault that spans several requests of one poll (redirects).
fn check_faults(mut script: Vec<Response>, cause: &str, counter: &str) -> Run {
    script.push(Response::Ok(feed()));
    let run = run_loop(script, &[]);
    let failures: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("poll failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{}", run.stderr);
    assert!(
        failures[0].to_lowercase().contains(&cause.to_lowercase()),
        "expected {cause:?} in {:?}",
        failures[0]
    );
    assert!(failures[0].contains("key=***"), "{}", failures[0]);
    assert_eq!(
        run.documents.len(),
        1,
        "next poll must deliver: {}",
        run.stderr
    );
    assert_document(
        run.documents[0].as_bytes(),
        FIXTURE,
        "toei_vehicle_api",
        "gtfs_realtime_vehicle",
    );
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("2 polls, 1 delivered"), "{last}");
    assert!(last.contains(counter), "{last}");
    run
}

#[test]
fn status_500() {
    check_fault(Response::status(500), "HTTP status 500", "1 fetch errors");
}

#[test]
fn status_404() {
    check_fault(Response::status(404), "HTTP status 404", "1 fetch errors");
}

#[test]
fn status_429_with_retry_after() {
    check_fault(
        Response::RetryAfter(429, 1),
        "HTTP status 429",
        "1 fetch errors",
    );
}

#[test]
fn connection_reset() {
    check_fault(Response::Reset, "connection", "1 fetch errors");
}

#[test]
fn accept_then_hang_times_out() {
    check_fault(Response::Hang, "timed out", "1 fetch errors");
}

#[test]
fn slow_trickle_past_the_timeout() {
    let slow = Response::Trickle {
        body: feed(),
        chunk: 100,
        pause: Duration::from_millis(100),
    };
    check_fault(slow, "timed out", "1 fetch errors");
}

#[test]
fn truncated_body() {
    let body = feed();
    let fault = Response::Truncated {
        announced: body.len() + 1000,
        body,
    };
    check_fault(fault, "truncated", "1 fetch errors");
}

#[test]
fn html_instead_of_protobuf() {
    let html = b"<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>";
    check_fault(Response::Ok(html.to_vec()), "html", "1 decode errors");
}

#[test]
fn random_bytes() {
    // A fixed xorshift stream: reproducible garbage.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    check_fault(Response::Ok(garbage), "decode", "1 decode errors");
}

#[test]
fn gzip_with_and_without_content_encoding() {
    for declared in [true, false] {
        let run = run_loop(
            vec![Response::Gzip {
                body: feed(),
                declared,
            }],
            &[],
        );
        assert_eq!(
            run.documents.len(),
            1,
            "declared={declared}: {}",
            run.stderr
        );
        assert_document(
            run.documents[0].as_bytes(),
            FIXTURE,
            "toei_vehicle_api",
            "gtfs_realtime_vehicle",
        );
        assert!(!run.stderr.contains("poll failed"), "{}", run.stderr);
    }
}

#[test]
fn body_of_200_mib_is_refused_with_bounded_memory() {
    for announce in [true, false] {
        let huge = Response::Huge {
            len: 200 << 20,
            announce,
        };
        let run = check_fault(huge, "exceeds MAX_BODY_BYTES", "1 fetch errors");
        // Default cap is 64 MiB: the process must stay far below the 200 MiB on offer.
        assert!(run.peak_rss_kib > 0, "could not read VmHWM");
        assert!(
            run.peak_rss_kib < 100 * 1024,
            "announce={announce}: peak RSS {} KiB",
            run.peak_rss_kib
        );
        if announce {
            // Refused from Content-Length: nothing was read, so nothing was held.
            assert!(
                run.peak_rss_kib < 32 * 1024,
                "peak {} KiB",
                run.peak_rss_kib
            );
        }
    }
}

#[test]
fn redirect_loop() {
    // One more hop than MAX_REDIRECTS (5) allows, all within the first poll.
    let hops = vec![Response::Redirect("/feed?key=SECRET".to_string()); 6];
    check_faults(hops, "redirect", "1 fetch errors");
}

#[test]
fn redirect_to_another_scheme() {
    check_fault(
        Response::Redirect("ftp://127.0.0.1/feed.pb".to_string()),
        "redirect",
        "1 fetch errors",
    );
}
