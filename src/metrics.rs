//! Prometheus text exposition of the run's counters, served from an optional listener that
//! the loop services between polls (no thread, no runtime) and/or written to a textfile for
//! node_exporter's textfile collector.
//!
//! Only numbers and the feed's `source_id` label leave this module: never a URL or a secret.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::app::Stats;

/// A point-in-time view of the loop, rendered on demand.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub stats: Stats,
    pub queue_snapshots: usize,
    pub queue_bytes: usize,
    /// Unix seconds of the last acknowledged delivery, if any.
    pub last_delivery_unix: Option<f64>,
    /// Duration of the last successful send (poll → ack).
    pub last_send_seconds: Option<f64>,
    pub started_unix: f64,
    pub poll_interval: Duration,
}

impl View {
    /// Seconds since the last delivery (or since start, before the first one).
    pub fn delivery_age(&self, now_unix: f64) -> f64 {
        (now_unix - self.last_delivery_unix.unwrap_or(self.started_unix)).max(0.0)
    }

    /// Healthy while something was delivered within three poll intervals (a minute at least).
    pub fn healthy(&self, now_unix: f64) -> bool {
        let limit = (self.poll_interval.as_secs_f64() * 3.0).max(60.0);
        self.delivery_age(now_unix) <= limit
    }
}

/// The text exposition format (version 0.0.4), one sample per feed for every metric (all
/// samples of a metric stay together under one HELP/TYPE, as the format requires).
pub fn render(feeds: &[(String, View)], now_unix: f64) -> String {
    type Read = fn(&View, f64) -> f64;
    let metrics: [(&str, &str, &str, Read); 15] = [
        ("polls_total", "counter", "Polls started.", |v, _| {
            v.stats.polls as f64
        }),
        (
            "delivered_total",
            "counter",
            "Snapshots acknowledged by the sink.",
            |v, _| v.stats.delivered as f64,
        ),
        (
            "fetch_errors_total",
            "counter",
            "Polls whose fetch failed.",
            |v, _| v.stats.fetch_errors as f64,
        ),
        (
            "decode_errors_total",
            "counter",
            "Polls whose body was not a FeedMessage.",
            |v, _| v.stats.decode_errors as f64,
        ),
        (
            "unchanged_total",
            "counter",
            "Polls skipped as unchanged.",
            |v, _| v.stats.skipped as f64,
        ),
        (
            "delivery_errors_total",
            "counter",
            "Failed send attempts (retried).",
            |v, _| v.stats.delivery_errors as f64,
        ),
        (
            "dropped_total",
            "counter",
            "Snapshots dropped because the queue was full.",
            |v, _| v.stats.dropped as f64,
        ),
        (
            "rejected_total",
            "counter",
            "Snapshots the broker refused (too large, invalid).",
            |v, _| v.stats.rejected as f64,
        ),
        (
            "rejected_records_total",
            "counter",
            "Entity records the broker refused.",
            |v, _| v.stats.rejected_records as f64,
        ),
        (
            "spool_errors_total",
            "counter",
            "Spool writes that failed.",
            |v, _| v.stats.spool_errors as f64,
        ),
        (
            "queue_snapshots",
            "gauge",
            "Snapshots waiting to be sent.",
            |v, _| v.queue_snapshots as f64,
        ),
        (
            "queue_bytes",
            "gauge",
            "Bytes of snapshots waiting to be sent.",
            |v, _| v.queue_bytes as f64,
        ),
        (
            "last_delivery_age_seconds",
            "gauge",
            "Seconds since the last acknowledged delivery (health).",
            |v, now| v.delivery_age(now),
        ),
        (
            "last_delivery_timestamp_seconds",
            "gauge",
            "Unix time of the last acknowledged delivery.",
            |v, _| v.last_delivery_unix.unwrap_or(0.0),
        ),
        (
            "last_send_duration_seconds",
            "gauge",
            "Poll-to-acknowledgement time of the last delivered poll.",
            |v, _| v.last_send_seconds.unwrap_or(0.0),
        ),
    ];
    let mut out = String::with_capacity(1024 + 256 * feeds.len() * metrics.len());
    for (name, kind, help, read) in metrics {
        let _ = writeln!(out, "# HELP gtfs_rt_kafka_{name} {help}");
        let _ = writeln!(out, "# TYPE gtfs_rt_kafka_{name} {kind}");
        for (feed, view) in feeds {
            let value = read(view, now_unix);
            let label = escape_label(feed);
            let _ = writeln!(out, "gtfs_rt_kafka_{name}{{feed=\"{label}\"}} {value}");
        }
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The `--metrics-addr` listener: non-blocking, serviced by the loop between polls.
pub struct MetricsServer {
    listener: TcpListener,
}

/// How long one scrape may take to send its request; a slow client can't stall the loop.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the loop wakes to look for scrapes while a listener is configured.
pub const SERVICE_INTERVAL: Duration = Duration::from_millis(100);

impl MetricsServer {
    pub fn bind(addr: &str) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer { listener })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers every connection waiting right now: `/metrics` (or `/`) and `/health`.
    pub fn serve_pending(&self, feeds: &[(String, View)]) {
        while let Ok((stream, _)) = self.listener.accept() {
            if let Err(e) = answer(stream, feeds) {
                log::debug!("metrics: scrape failed: {e}");
            }
        }
    }
}

/// `/health` is healthy when every feed is.
fn answer(mut stream: TcpStream, feeds: &[(String, View)]) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = [0u8; 1024];
    let n = stream.read(&mut request)?;
    let head = String::from_utf8_lossy(&request[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let now = now_unix();
    let health: String = feeds
        .iter()
        .map(|(feed, v)| {
            let state = if v.healthy(now) { "ok" } else { "stale" };
            format!(
                "{feed}: {state}, last delivery {:.0}s ago\n",
                v.delivery_age(now)
            )
        })
        .collect();
    let all_healthy = feeds.iter().all(|(_, v)| v.healthy(now));
    let (status, body) = match path {
        "/metrics" | "/" => ("200 OK", render(feeds, now)),
        "/health" if all_healthy => ("200 OK", health),
        "/health" => ("503 Service Unavailable", health),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Writes the exposition to `path` atomically (temp file + rename), as node_exporter's
/// textfile collector expects.
pub fn write_textfile(path: &Path, feeds: &[(String, View)]) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("prom.tmp");
    std::fs::write(&tmp, render(feeds, now_unix()))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> View {
        View {
            stats: Stats {
                polls: 7,
                delivered: 5,
                fetch_errors: 2,
                ..Stats::default()
            },
            queue_snapshots: 1,
            queue_bytes: 2048,
            last_delivery_unix: Some(1000.0),
            last_send_seconds: Some(0.012),
            started_unix: 900.0,
            poll_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn exposition_has_counters_gauges_and_a_label() {
        let text = render(&[("toei \"vehicle\"".to_string(), sample())], 1030.0);
        for line in [
            "# TYPE gtfs_rt_kafka_polls_total counter",
            "gtfs_rt_kafka_polls_total{feed=\"toei \\\"vehicle\\\"\"} 7",
            "gtfs_rt_kafka_fetch_errors_total{feed=\"toei \\\"vehicle\\\"\"} 2",
            "gtfs_rt_kafka_queue_bytes{feed=\"toei \\\"vehicle\\\"\"} 2048",
            "gtfs_rt_kafka_last_delivery_age_seconds{feed=\"toei \\\"vehicle\\\"\"} 30",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn health_follows_the_age_of_the_last_delivery() {
        let m = sample();
        assert!(m.healthy(1000.0 + 179.0));
        assert!(!m.healthy(1000.0 + 181.0));
        let fresh = View {
            last_delivery_unix: None,
            ..sample()
        };
        assert!(fresh.healthy(900.0 + 10.0), "grace after start");
    }

    #[test]
    fn listener_answers_metrics_and_health() {
        let server = MetricsServer::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let get = |path: &'static str| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
        };
        let metrics = get("/metrics");
        let health = get("/health");
        let m = View {
            last_delivery_unix: Some(now_unix()),
            ..sample()
        };
        let start = std::time::Instant::now();
        while !metrics.is_finished() || !health.is_finished() {
            server.serve_pending(&[("f".to_string(), m.clone())]);
            std::thread::sleep(Duration::from_millis(10));
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        let metrics = metrics.join().unwrap();
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics.contains("gtfs_rt_kafka_delivered_total{feed=\"f\"} 5"));
        assert!(health.join().unwrap().contains("f: ok, last delivery"));
    }
}
