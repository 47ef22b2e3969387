//! Prometheus text exposition of every feed's status, served by a few listener threads of
//! its own (no runtime) and/or written to a textfile for node_exporter's textfile collector.
//!
//! The listener only ever reads the feeds' published status (a copy under a short lock), so
//! no client — idle, slow, huge or many — can delay a poll, a send or shutdown. Its threads,
//! connections in service and buffers are fixed in number and size.
//!
//! Only numbers and the feed's `source_id` label leave this module: never a URL or a secret.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::stats::{now_unix, Board, FeedStatus, Histogram, DURATION_BUCKETS};

type View = FeedStatus;

/// The text exposition format (version 0.0.4), one sample per feed for every metric (all
/// samples of a metric stay together under one HELP/TYPE, as the format requires).
pub fn render(feeds: &[(String, View)], now_unix: f64) -> String {
    type Read = fn(&View, f64) -> f64;
    let metrics: [(&str, &str, &str, Read); 19] = [
        (
            "feed_age_seconds",
            "gauge",
            "Seconds since the header.timestamp of the last feed fetched (NaN before one).",
            |v, now| v.feed_age(now).unwrap_or(f64::NAN),
        ),
        (
            "entities",
            "gauge",
            "Entities in the last feed fetched.",
            |v, _| v.last_poll.entities as f64,
        ),
        (
            "fetched_bytes_total",
            "counter",
            "Bytes of feed bodies fetched (as on the wire).",
            |v, _| v.fetched_bytes as f64,
        ),
        (
            "document_bytes_total",
            "counter",
            "Bytes of JSON made from the feeds.",
            |v, _| v.document_bytes as f64,
        ),
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
    type Hist = fn(&View) -> &Histogram;
    let histograms: [(&str, &str, Hist); 2] = [
        (
            "poll_duration_seconds",
            "Fetch and convert of each poll.",
            |v| &v.poll_seconds,
        ),
        (
            "send_duration_seconds",
            "Poll to acknowledgement of each delivered poll.",
            |v| &v.send_seconds,
        ),
    ];
    for (name, help, read) in histograms {
        let _ = writeln!(out, "# HELP gtfs_rt_kafka_{name} {help}");
        let _ = writeln!(out, "# TYPE gtfs_rt_kafka_{name} histogram");
        for (feed, view) in feeds {
            let h = read(view);
            let label = escape_label(feed);
            let mut cumulative = 0;
            for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "gtfs_rt_kafka_{name}_bucket{{feed=\"{label}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "gtfs_rt_kafka_{name}_bucket{{feed=\"{label}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "gtfs_rt_kafka_{name}_sum{{feed=\"{label}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "gtfs_rt_kafka_{name}_count{{feed=\"{label}\"}} {}",
                h.count
            );
        }
    }
    process_metrics(&mut out);
    out
}

/// `gtfs_rt_kafka_build_info` and the standard `process_*` metrics, from /proc.
fn process_metrics(out: &mut String) {
    let _ = writeln!(out, "# HELP gtfs_rt_kafka_build_info The running version.");
    let _ = writeln!(out, "# TYPE gtfs_rt_kafka_build_info gauge");
    let _ = writeln!(
        out,
        "gtfs_rt_kafka_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name in parentheses: utime 14, stime 15, starttime 22 (1-based).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    // Linux reports these in clock ticks of 1/100 s on every platform we ship for.
    let ticks = 100.0;
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("btime "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    });
    let start = field(22).zip(boot).map(|(st, b)| b + st / ticks);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as f64)
        .ok();
    let samples = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory in bytes.",
            kib("VmRSS:").map(|k| k * 1024.0),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time in seconds.",
            cpu,
        ),
        ("process_open_fds", "gauge", "Open file descriptors.", fds),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch in seconds.",
            start,
        ),
    ];
    for (name, kind, help, value) in samples {
        if let Some(value) = value {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `--metrics-addr` listener.
pub struct MetricsServer {
    listener: TcpListener,
}

/// Threads answering scrapes; each serves one connection at a time.
const WORKERS: usize = 4;
/// How long a client may take to send its request head; then it is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of a request read; the rest is never looked at.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

impl MetricsServer {
    pub fn bind(addr: &str) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        Ok(MetricsServer { listener })
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Starts the listener threads; they answer from `board` until the process ends.
    pub fn spawn(self, board: Board) -> std::io::Result<()> {
        for n in 0..WORKERS {
            let listener = self.listener.try_clone()?;
            let board = board.clone();
            std::thread::Builder::new()
                .name(format!("metrics-{n}"))
                .stack_size(64 * 1024)
                .spawn(move || serve(&listener, &board))?;
        }
        Ok(())
    }
}

fn serve(listener: &TcpListener, board: &Board) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, board) {
                    log::debug!("metrics: scrape failed: {e}");
                }
                crate::alloc_cache::trim();
            }
            // Out of fds or a connection reset before accept: back off a little, go on.
            Err(e) => {
                log::debug!("metrics: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads the request head (bounded in time and bytes) and returns its path.
fn read_path(stream: &mut TcpStream) -> std::io::Result<String> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = [0u8; MAX_REQUEST_HEAD];
    let mut len = 0;
    while len < head.len() && !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut head[len..])? {
            0 => break,
            n => len += n,
        }
    }
    let text = String::from_utf8_lossy(&head[..len]);
    Ok(text.split_whitespace().nth(1).unwrap_or("/").to_string())
}

/// `/metrics` (or `/`) and `/health`; `/health` is healthy when every feed is.
fn answer(mut stream: TcpStream, board: &Board) -> std::io::Result<()> {
    let path = read_path(&mut stream)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let feeds = board.snapshot();
    let now = now_unix();
    let (status, body) = match path.as_str() {
        "/metrics" | "/" => ("200 OK", render(&feeds, now)),
        "/health" => {
            let (healthy, text) = health(&feeds, now);
            let status = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, text)
        }
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// One line per feed, and whether every feed is healthy.
pub fn health(feeds: &[(String, View)], now: f64) -> (bool, String) {
    let text = feeds
        .iter()
        .map(|(feed, v)| {
            let state = if v.healthy(now) { "ok" } else { "stale" };
            format!(
                "{}: {state}, last delivery {:.0}s ago\n",
                escape_label(feed),
                v.delivery_age(now)
            )
        })
        .collect();
    (feeds.iter().all(|(_, v)| v.healthy(now)), text)
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
    use crate::stats::{Stats, StatusCell};

    fn sample() -> View {
        let mut v = FeedStatus::new(Duration::from_secs(60), Duration::from_secs(40));
        v.stats = Stats {
            polls: 7,
            delivered: 5,
            fetch_errors: 2,
            ..Stats::default()
        };
        v.queue_snapshots = 1;
        v.queue_bytes = 2048;
        v.last_delivery_unix = Some(1000.0);
        v.last_send_seconds = Some(0.012);
        v.started_unix = 900.0;
        v
    }

    #[test]
    fn histograms_feed_age_and_process_metrics() {
        let mut v = sample();
        v.poll_seconds.observe(0.02);
        v.poll_seconds.observe(3.0);
        v.last_poll.feed_timestamp = Some(1000);
        v.last_poll.entities = 42;
        let text = render(&[("f".to_string(), v)], 1030.0);
        for line in [
            "gtfs_rt_kafka_poll_duration_seconds_bucket{feed=\"f\",le=\"0.025\"} 1",
            "gtfs_rt_kafka_poll_duration_seconds_bucket{feed=\"f\",le=\"5\"} 2",
            "gtfs_rt_kafka_poll_duration_seconds_bucket{feed=\"f\",le=\"+Inf\"} 2",
            "gtfs_rt_kafka_poll_duration_seconds_count{feed=\"f\"} 2",
            "gtfs_rt_kafka_feed_age_seconds{feed=\"f\"} 30",
            "gtfs_rt_kafka_entities{feed=\"f\"} 42",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains("gtfs_rt_kafka_build_info{version=\""));
        assert!(text.lines().any(|l| l.starts_with("process_open_fds ")));
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

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn listener_answers_metrics_and_health_from_the_board() {
        let server = MetricsServer::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let board = Board::default();
        let mut fresh = sample();
        fresh.last_delivery_unix = Some(now_unix());
        board.set(vec![("f".to_string(), StatusCell::new(fresh))]);
        server.spawn(board.clone()).unwrap();
        let metrics = get(addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics.contains("gtfs_rt_kafka_delivered_total{feed=\"f\"} 5"));
        assert!(get(addr, "/health").contains("f: ok, last delivery"));
        // A second, stale feed makes /health fail, naming it.
        board.set(vec![
            ("f".to_string(), StatusCell::new(sample())),
            ("g".to_string(), StatusCell::new(sample())),
        ]);
        let health = get(addr, "/health");
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.contains("g: stale"), "{health}");
    }

    #[test]
    fn idle_clients_are_dropped_and_others_still_answered() {
        let server = MetricsServer::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server.spawn(Board::default()).unwrap();
        // More idle connections than workers: each is dropped after REQUEST_TIMEOUT.
        let idle: Vec<TcpStream> = (0..WORKERS * 2)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let t0 = Instant::now();
        assert!(get(addr, "/metrics").starts_with("HTTP/1.1 200"));
        assert!(t0.elapsed() < REQUEST_TIMEOUT * 3 + Duration::from_secs(1));
        drop(idle);
    }
}
