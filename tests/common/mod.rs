//! Shared test helpers: fixtures and goldens, a tiny HTTP server, process control, and the
//! independent Kafka reader (confluent-kafka via tests/py/consume.py).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_gtfs-rt-kafka");

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn fixture_path(name: &str) -> String {
    repo_path(&format!("tests/fixtures/gtfs-rt/{name}"))
        .display()
        .to_string()
}

/// The reference JSON (Google's Python runtime) for a fixture.
pub fn golden(fixture: &str) -> Value {
    let stem = fixture.trim_end_matches(".pb");
    let path = repo_path(&format!("tests/golden/{stem}.json"));
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

/// Asserts `doc` is the fixture's reference JSON plus exactly the three envelope fields.
pub fn assert_document(doc: &[u8], fixture: &str, source_id: &str, event_type: &str) -> Value {
    let mut value: Value = serde_json::from_slice(doc)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(doc)));
    let object = value.as_object_mut().expect("document is an object");
    let ts = object
        .remove("producer_timestamp")
        .expect("producer_timestamp");
    assert!(ts.is_f64(), "producer_timestamp must be a float: {ts}");
    assert_eq!(object.remove("source_id"), Some(Value::from(source_id)));
    assert_eq!(object.remove("event_type"), Some(Value::from(event_type)));
    assert!(
        value == golden(fixture),
        "{fixture}: document differs from golden"
    );
    let mut full: Value = serde_json::from_slice(doc).unwrap();
    full.as_object_mut()
        .unwrap()
        .insert("producer_timestamp".into(), ts);
    full
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What the test HTTP server answers to a request.
#[derive(Clone)]
pub enum Response {
    Ok(Vec<u8>),
    Status(u16),
    /// 429/503 with a Retry-After header.
    RetryAfter(u16, u32),
    /// Accept the connection, read the request, never answer.
    Hang,
    /// Announce `announced` bytes, send `body`, close.
    Truncated {
        announced: usize,
        body: Vec<u8>,
    },
    /// Send the body a few bytes at a time with a pause between.
    Trickle {
        body: Vec<u8>,
        chunk: usize,
        pause: Duration,
    },
    /// `Content-Encoding: gzip` (when `declared`) or a bare gzip file.
    Gzip {
        body: Vec<u8>,
        declared: bool,
    },
    /// A body of `len` zero bytes, announced or chunked, generated on the fly.
    Huge {
        len: u64,
        announce: bool,
    },
    /// 302 to `location` (a path on this server, or an absolute URL).
    Redirect(String),
    /// Read the request, then close the socket without a word (reset).
    Reset,
    /// 200 with an `ETag`, or 304 when the request's `If-None-Match` matches it.
    ETagged {
        body: Vec<u8>,
        etag: String,
    },
}

impl Response {
    pub fn fixture(name: &str) -> Response {
        Response::Ok(std::fs::read(fixture_path(name)).unwrap())
    }
    pub fn status(code: u16) -> Response {
        Response::Status(code)
    }
}

/// A small HTTP/1.1 server on 127.0.0.1. Request n gets `script[n]`; the last entry repeats.
pub struct FeedServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    times: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl FeedServer {
    pub fn start(response: Response) -> FeedServer {
        FeedServer::script(vec![response])
    }

    pub fn script(script: Vec<Response>) -> FeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let times: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let counter = requests.clone();
        let log = times.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let script = script.clone();
                let counter = counter.clone();
                let log = log.clone();
                std::thread::spawn(move || serve(stream, &script, &counter, &log));
            }
        });
        FeedServer {
            port,
            requests,
            times,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Time between request `a` and request `b` (0-based).
    pub fn gap(&self, a: usize, b: usize) -> Duration {
        let times = self.times.lock().unwrap();
        times[b].duration_since(times[a])
    }

    /// The longest pause between two consecutive requests.
    pub fn max_gap(&self) -> Duration {
        let times = self.times.lock().unwrap();
        times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default()
    }

    pub fn wait_for_requests(&self, n: usize, timeout: Duration) {
        let start = Instant::now();
        while self.requests() < n {
            assert!(
                start.elapsed() < timeout,
                "only {} requests",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(
    mut stream: TcpStream,
    script: &[Response],
    counter: &AtomicUsize,
    times: &std::sync::Mutex<Vec<Instant>>,
) {
    let next = counter.load(Ordering::SeqCst);
    if let Response::Reset = script[next.min(script.len() - 1)] {
        // Closing with unread request bytes in the kernel buffer makes the OS send a RST.
        let mut first = [0u8; 1];
        let _ = stream.read(&mut first);
        times.lock().unwrap().push(Instant::now());
        counter.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut reader = BufReader::new(stream);
    loop {
        // Read one request head.
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut if_none_match = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("if-none-match") {
                    if_none_match = Some(value.trim().to_string());
                }
            }
        }
        times.lock().unwrap().push(Instant::now());
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let response = &script[n.min(script.len() - 1)];
        if let (Response::ETagged { etag, .. }, Some(sent)) = (response, &if_none_match) {
            if sent == etag {
                let not_modified = "HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n";
                if reader.get_mut().write_all(not_modified.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        if respond(reader.get_mut(), response).is_err() {
            return;
        }
        if !matches!(
            response,
            Response::Ok(_)
                | Response::Status(_)
                | Response::Redirect(_)
                | Response::ETagged { .. }
        ) {
            return;
        }
    }
}

fn respond(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    match response {
        Response::Ok(body) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)
        }
        Response::Status(code) => write!(
            stream,
            "HTTP/1.1 {code} Oops\r\nContent-Length: 5\r\n\r\noops!"
        ),
        Response::RetryAfter(code, secs) => write!(
            stream,
            "HTTP/1.1 {code} Slow Down\r\nRetry-After: {secs}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        Response::Hang => {
            std::thread::sleep(Duration::from_secs(120));
            Ok(())
        }
        Response::Truncated { announced, body } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n"
            )?;
            stream.write_all(body)
        }
        Response::Trickle { body, chunk, pause } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            for part in body.chunks(*chunk) {
                stream.write_all(part)?;
                stream.flush()?;
                std::thread::sleep(*pause);
            }
            Ok(())
        }
        Response::Gzip { body, declared } => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(body)?;
            let gz = enc.finish()?;
            let encoding = if *declared { "Content-Encoding: gzip\r\n" } else { "" };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\n{encoding}Content-Length: {}\r\nConnection: close\r\n\r\n",
                gz.len()
            )?;
            stream.write_all(&gz)
        }
        Response::Huge { len, announce } => {
            if *announce {
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")?;
            } else {
                write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            }
            let block = vec![0u8; 64 * 1024];
            let mut left = *len;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                stream.write_all(&block[..n])?;
                left -= n as u64;
            }
            Ok(())
        }
        Response::Redirect(location) => write!(
            stream,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        ),
        Response::Reset => Ok(()),
        Response::ETagged { body, etag } => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)
        }
    }
}

/// A port nothing listens on (bound then released).
pub fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The broker address from `var`, or None (test skipped) unless GRK_REQUIRE_BROKERS=1.
pub fn broker(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("GRK_REQUIRE_BROKERS").as_deref() == Ok("1") => {
            panic!("{var} is not set but GRK_REQUIRE_BROKERS=1")
        }
        _ => {
            eprintln!("skipped: {var} not set");
            None
        }
    }
}

pub fn unique_topic(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("e2e-{prefix}-{}-{nanos}", std::process::id())
}

/// The Python with the test tools (`GRK_PYTHON`, set by scripts/test to the project venv).
/// Runs one of the repository's broker scripts (`.ci/brokers`, `.ci/cluster`), asserting it
/// succeeded.
pub fn ci_script(script: &str, args: &[&str]) {
    let status = Command::new(repo_path(script))
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{script} {args:?} failed");
}

pub fn python() -> String {
    std::env::var("GRK_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

pub fn create_topic(broker: &str, topic: &str, partitions: u32) {
    let out = Command::new(python())
        .arg(repo_path("tests/py/create_topic.py"))
        .args(["--bootstrap", broker, "--topic", topic])
        .args(["--partitions", &partitions.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create_topic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes `topic` with confluent-kafka's admin client and waits until the broker forgets it.
pub fn delete_topic(broker: &str, topic: &str) {
    let script = r#"
import sys, time
from confluent_kafka.admin import AdminClient
a = AdminClient({"bootstrap.servers": sys.argv[1]})
a.delete_topics([sys.argv[2]])[sys.argv[2]].result(30)
for _ in range(100):
    if sys.argv[2] not in a.list_topics(timeout=10).topics:
        sys.exit(0)
    time.sleep(0.1)
sys.exit("still listed")
"#;
    let out = Command::new(python())
        .args(["-c", script, broker, topic])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "delete_topic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads `count` records with confluent-kafka; each is {"partition","offset","key","value",...}.
pub fn consume(broker: &str, topic: &str, count: usize) -> Vec<Value> {
    let records = consume_up_to(broker, topic, count, 60);
    assert_eq!(records.len(), count, "consume: timed out");
    records
}

/// Reads up to `count` records within `timeout_secs` (fewer on timeout).
pub fn consume_up_to(broker: &str, topic: &str, count: usize, timeout_secs: u32) -> Vec<Value> {
    let out = Command::new(python())
        .arg(repo_path("tests/py/consume.py"))
        .args(["--bootstrap", broker, "--topic", topic, "--assign"])
        .args(["--count", &count.to_string()])
        .args(["--timeout", &timeout_secs.to_string()])
        .output()
        .unwrap();
    let mut stdout = String::new();
    out.stdout.as_slice().read_to_string(&mut stdout).unwrap();
    // 0: all read; 3: timed out with what it got.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "consume: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The real binary running in the background, its stderr collected line by line as it comes
/// (so a test can look at the log while the process runs).
pub struct Daemon {
    pub child: Child,
    log: Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        Daemon::spawn(command)
    }

    /// Starts a prepared command (stderr is piped here).
    pub fn spawn(mut command: Command) -> Daemon {
        command.stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log: Arc<std::sync::Mutex<String>> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Daemon { child, log }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "no line with {needle:?} in {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// SIGTERM, then the exit status, how long the exit took, and the whole log.
    pub fn stop(mut self, timeout: Duration) -> (ExitStatus, Duration, String) {
        let t0 = Instant::now();
        signal(self.child.id(), "TERM");
        let status = match wait_timeout(&mut self.child, timeout) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("no exit within {timeout:?} of SIGTERM:\n{}", self.log());
            }
        };
        let took = t0.elapsed();
        // The reader thread drains the pipe once the process is gone.
        std::thread::sleep(Duration::from_millis(100));
        (status, took, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` and `env`, expecting a refusal at start: exit 2 and exactly one
/// line on stderr, which it returns.
pub fn refused_at_start(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut command = Command::new(BIN);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// A TCP peer that accepts connections and never says a word: a hung broker or server.
pub fn silent_peer() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// Writes a config file under the temp dir; returns its path.
pub fn write_config(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("grk-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// 60 small vehicle positions and one alert of ~200 kB, in one feed.
pub fn feed_with_one_oversize_entity() -> Vec<u8> {
    use gtfs_rt_kafka::decode::transit_realtime::{
        translated_string::Translation, Alert, FeedEntity, FeedHeader, FeedMessage,
        TranslatedString, VehicleDescriptor, VehiclePosition,
    };
    use prost::Message;
    let mut entity: Vec<FeedEntity> = (0..60)
        .map(|i| FeedEntity {
            id: Some(format!("vehicle-{i}")),
            vehicle: Some(Box::new(VehiclePosition {
                vehicle: Some(VehicleDescriptor {
                    id: Some(format!("car-{i}")),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    entity.insert(
        30,
        FeedEntity {
            id: Some("huge-alert".into()),
            alert: Some(Box::new(Alert {
                header_text: Some(TranslatedString {
                    translation: vec![Translation {
                        text: Some("x".repeat(200_000)),
                        language: None,
                    }],
                }),
                ..Default::default()
            })),
            ..Default::default()
        },
    );
    FeedMessage {
        header: Some(FeedHeader {
            gtfs_realtime_version: Some("2.0".into()),
            timestamp: Some(1_700_000_000),
            ..Default::default()
        }),
        entity,
    }
    .encode_to_vec()
}

/// The one "refused by the broker" line of a run's stderr (panics naming the log if none).
pub fn refusal_line(err: &str) -> &str {
    err.lines()
        .find(|l| l.contains("refused by the broker"))
        .unwrap_or_else(|| panic!("no refusal line: {err}"))
}
