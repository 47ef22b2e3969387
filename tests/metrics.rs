//! Metrics from the real binary: the Prometheus listener scraped and parsed while the loop
//! runs, `/health`, and the node_exporter textfile.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `name{labels} value` lines of the per-feed series → name → value (labels checked
/// separately). Histogram buckets (an `le` label too), `build_info` and the `process_*`
/// series (no feed label) are left out.
fn parse(exposition: &str) -> HashMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter(|l| l.starts_with("gtfs_rt_kafka_") && !l.contains("_bucket{"))
        .filter(|l| !l.starts_with("gtfs_rt_kafka_build_info"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            assert!(series.ends_with("{feed=\"vp\"}"), "label on {l}");
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn prometheus_listener_and_textfile() {
    let server = FeedServer::script(vec![
        Response::Ok(std::fs::read(fixture_path("mbta-vp-1.pb")).unwrap()),
        Response::status(500),
        Response::Ok(std::fs::read(fixture_path("mbta-vp-1.pb")).unwrap()),
    ]);
    let port = dead_port();
    let textfile = std::env::temp_dir().join(format!("grk-metrics-{}.prom", std::process::id()));
    let mut child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .args([
            "--sink",
            "stdout",
            "--poll-interval",
            "0.3",
            "--source-id",
            "vp",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .arg("--metrics-textfile")
        .arg(&textfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for_requests(4, Duration::from_secs(20));
    let response = get(port, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let m = parse(body);
    assert!(m["gtfs_rt_kafka_polls_total"] >= 3.0, "{body}");
    assert!(m["gtfs_rt_kafka_delivered_total"] >= 2.0, "{body}");
    assert_eq!(m["gtfs_rt_kafka_fetch_errors_total"], 1.0, "{body}");
    assert!(m["gtfs_rt_kafka_last_delivery_age_seconds"] < 5.0, "{body}");
    assert_eq!(m["gtfs_rt_kafka_queue_snapshots"], 0.0);
    let health = get(port, "/health");
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    let file = std::fs::read_to_string(&textfile).unwrap();
    assert!(parse(&file)["gtfs_rt_kafka_polls_total"] >= 2.0, "{file}");
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("no exit");
    assert_eq!(status.code(), Some(0));
    std::fs::remove_file(&textfile).ok();
}

#[test]
fn a_busy_metrics_port_is_a_startup_error_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args([
            "--sink",
            "stdout",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("VEHICLE_URL", "file:///nonexistent.pb")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("METRICS_ADDR / --metrics-addr"), "{err}");
}
