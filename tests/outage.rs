//! No snapshot lost: the real binary against real brokers that go away — a cut link, a
//! `kill -9`ed Apache Kafka, a tansu that forgets everything, a `kill -9`ed producer.
//! Records are read back with confluent-kafka (tests/py/consume.py).
//!
//! These tests restart shared brokers, so they take a lock and run one at a time.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

const FIXTURE: &str = "mbta-vp-1.pb";
/// kafka4's PROXIED listener: bound on 19094, advertised as 19095 where our proxy listens.
const PROXY_PORT: u16 = 19095;
const PROXIED_PORT: u16 = 19094;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TCP forwarder whose link can be cut: every connection dropped, new ones refused.
struct Proxy {
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(listen: u16, upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", listen)).expect("proxy port");
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut list = conns2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy { up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}

fn brokers(action: &str, name: &str) {
    ci_script(".ci/brokers", &[action, name]);
}

fn spawn_producer(url: &str, broker: &str, topic: &str, extra: &[&str]) -> Child {
    Command::new(BIN)
        .env("VEHICLE_URL", url)
        .env("KAFKA_BROKER", broker)
        .env("KAFKA_TOPIC", topic)
        .args(["--poll-interval", "1", "--kafka-request-timeout", "2"])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGTERM, wait for exit 0, return stderr.
fn stop(mut child: Child) -> String {
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("no exit after TERM");
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(0), "{err}");
    err
}

/// SIGKILL, return what it wrote to stderr until then.
fn kill(mut child: Child) -> String {
    signal(child.id(), "KILL");
    child.wait().unwrap();
    stderr_of(&mut child)
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut err).unwrap();
    }
    err
}

/// Snapshots the producer fetched and converted (each must reach Kafka exactly once).
fn polls_ok(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.contains("poll ok:")).count()
}

/// The distinct producer timestamps in `records`, asserting each is a full document.
fn stamps(records: &[Value]) -> HashSet<u64> {
    records
        .iter()
        .map(|r| {
            let doc = assert_document(
                r["value"].as_str().unwrap().as_bytes(),
                FIXTURE,
                "toei_vehicle_api",
                "gtfs_realtime_vehicle",
            );
            doc["producer_timestamp"].as_f64().unwrap().to_bits()
        })
        .collect()
}

/// All records of `topic`, asserting there are exactly `expected` (none missing, none extra).
fn exactly(broker: &str, topic: &str, expected: usize) -> Vec<Value> {
    let records = consume(broker, topic, expected);
    assert_eq!(records.len(), expected);
    let extra = consume_up_to(broker, topic, expected + 1, 5);
    assert_eq!(extra.len(), expected, "duplicates in {topic}");
    let unique = stamps(&records);
    assert_eq!(unique.len(), expected, "a snapshot was delivered twice");
    records
}

#[test]
fn cut_link_loses_nothing_and_polls_keep_their_schedule() {
    let _guard = serial();
    let Some(direct) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let proxy = Proxy::start(PROXY_PORT, PROXIED_PORT);
    let topic = unique_topic("cut");
    create_topic(&direct, &topic, 1);
    let child = spawn_producer(
        &server.url("/feed"),
        &format!("127.0.0.1:{PROXY_PORT}"),
        &topic,
        &[],
    );
    server.wait_for_requests(3, Duration::from_secs(15));
    proxy.cut();
    let cut_at = server.requests();
    std::thread::sleep(Duration::from_secs(4));
    let during_cut = server.requests() - cut_at;
    proxy.restore();
    let restored_at = server.requests();
    server.wait_for_requests(restored_at + 4, Duration::from_secs(15));
    let err = stop(child);
    // Polling went on through the outage: ~4 polls in 4 s at a 1 s interval.
    assert!(during_cut >= 3, "{during_cut} polls during the cut\n{err}");
    let gap = server.max_gap();
    assert!(
        gap < Duration::from_millis(1500),
        "a poll slipped: {gap:?}\n{err}"
    );
    assert!(
        err.contains("not delivered yet") || err.contains("queued behind"),
        "{err}"
    );
    let n = polls_ok(&err);
    assert_eq!(n, server.requests(), "every fetch converted\n{err}");
    exactly(&direct, &topic, n);
    assert!(err.contains("0 unsent at exit"), "{err}");
}

#[test]
fn kill_9_of_apache_kafka_loses_nothing() {
    let _guard = serial();
    let Some(direct) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let topic = unique_topic("kill9");
    create_topic(&direct, &topic, 1);
    let child = spawn_producer(&server.url("/feed"), &direct, &topic, &[]);
    server.wait_for_requests(3, Duration::from_secs(15));
    brokers("kill9", "kafka4");
    let killed_at = server.requests();
    std::thread::sleep(Duration::from_secs(2));
    brokers("resume", "kafka4");
    let resumed_at = server.requests();
    assert!(
        resumed_at > killed_at,
        "polls stopped while the broker was down"
    );
    server.wait_for_requests(resumed_at + 5, Duration::from_secs(30));
    let err = stop(child);
    let n = polls_ok(&err);
    assert_eq!(n, server.requests(), "{err}");
    exactly(&direct, &topic, n);
    assert!(err.contains("0 unsent at exit"), "{err}");
}

#[test]
fn tansu_restart_with_wiped_state_recovers() {
    let _guard = serial();
    let Some(tansu) = broker("GRK_TEST_TANSU") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let topic = unique_topic("tansu-restart");
    create_topic(&tansu, &topic, 1);
    let child = spawn_producer(&server.url("/feed"), &tansu, &topic, &[]);
    server.wait_for_requests(3, Duration::from_secs(15));
    brokers("stop", "tansu");
    brokers("start", "tansu");
    // Memory storage: the topic and our producer id are gone. Recreate the topic the way an
    // operator would; the producer must notice and deliver what it fetches from now on.
    create_topic(&tansu, &topic, 1);
    let after_restart = server.requests();
    server.wait_for_requests(after_restart + 4, Duration::from_secs(30));
    let err = stop(child);
    let last_line = err.lines().last().unwrap_or_default().to_string();
    assert!(last_line.contains("0 unsent at exit"), "{err}");
    // Everything fetched after the restart is in the new topic (what came before died with
    // the broker's memory); nothing is duplicated.
    let records = consume_up_to(&tansu, &topic, 1000, 10);
    assert!(records.len() >= 4, "{} records\n{err}", records.len());
    assert_eq!(stamps(&records).len(), records.len(), "duplicates");
}

#[test]
fn kill_9_of_the_producer_keeps_its_spool() {
    let _guard = serial();
    let Some(direct) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let topic = unique_topic("spool");
    create_topic(&direct, &topic, 1);
    let spool = std::env::temp_dir().join(format!("grk-spool-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let spool_arg = spool.display().to_string();
    // Kafka unreachable: snapshots pile up in the spool.
    let child = spawn_producer(
        &server.url("/feed"),
        &format!("127.0.0.1:{}", dead_port()),
        &topic,
        &["--spool-dir", &spool_arg],
    );
    server.wait_for_requests(4, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    kill(child);
    let spooled = snap_files(&spool);
    assert!(spooled >= 4, "{spooled} files in the spool");
    // Restart with Kafka back: the spooled snapshots go first, each once.
    let child = spawn_producer(
        &server.url("/feed"),
        &direct,
        &topic,
        &["--spool-dir", &spool_arg],
    );
    let restarted_at = server.requests();
    server.wait_for_requests(restarted_at + 2, Duration::from_secs(15));
    let err = stop(child);
    assert!(
        err.contains(&format!("{spooled} snapshots from a previous run")),
        "{err}"
    );
    let n = spooled + polls_ok(&err);
    let records = exactly(&direct, &topic, n);
    // Oldest first: the spooled ones (fetched earlier) lead.
    let times: Vec<f64> = records
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["value"].as_str().unwrap()).unwrap()
                ["producer_timestamp"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(snap_files(&spool), 0, "spool emptied");
    std::fs::remove_dir_all(&spool).ok();
}

/// A national feed's document (8 MB of JSON) is larger than Kafka's default 1 MB limit: a
/// clear error with its size and the remedies, counted, and kept in the spool's rejected/.
#[test]
fn oversize_document_is_reported_and_kept_in_the_spool() {
    let _guard = serial();
    let Some(direct) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture("ovapi-nl-tu-1.pb"));
    let topic = unique_topic("oversize");
    create_topic(&direct, &topic, 1);
    let spool = std::env::temp_dir().join(format!("grk-spool-oversize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let out = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", &direct)
        .env("KAFKA_TOPIC", &topic)
        .env("SPOOL_DIR", &spool)
        .arg("--once")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = refusal_line(&err);
    assert!(line.contains("MESSAGE_TOO_LARGE"), "{line}");
    assert!(line.contains("KAFKA_COMPRESSION"), "{line}");
    assert!(line.contains("MODE=entity"), "{line}");
    assert!(line.contains("rejected/"), "{line}");
    assert!(err.contains("1 rejected by broker"), "{err}");
    let kept = std::fs::read_dir(spool.join("rejected")).unwrap().count();
    assert_eq!(kept, 1);
    std::fs::remove_dir_all(&spool).ok();
}

/// A long outage with fast polls: the queue holds QUEUE_MAX_BYTES, drops the oldest with a
/// warning and a counter, and the process's memory stays flat instead of growing per poll.
#[test]
fn long_outage_memory_stays_within_the_queue_bound() {
    let _guard = serial();
    let server = FeedServer::start(Response::fixture("wmata-rail-tu-1.pb"));
    let child = Command::new(BIN)
        .env("VEHICLE_URL", server.url("/feed"))
        .env("KAFKA_BROKER", format!("127.0.0.1:{}", dead_port()))
        .args(["--poll-interval", "0.1", "--queue-max-bytes", "4MiB"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for_requests(60, Duration::from_secs(60));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let err = stop(child);
    let polls = polls_ok(&err);
    let last = err.lines().last().unwrap_or_default();
    // Each document is ~0.9 MB: 60 polls would be ~50 MB unbounded.
    let document_bytes: usize = err
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once("entities, ")?;
            let (_, rest) = rest.split_once("), ")?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        polls as u64 * document_bytes as u64 > 40 << 20,
        "{polls} polls"
    );
    // Each drop names the snapshot: its sequence, its records' time, how many records.
    let drop = err
        .lines()
        .find(|l| l.contains("queue full (QUEUE_MAX_BYTES"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        drop.contains("(seq ") && drop.contains(" at 20") && drop.contains("Z, 1 records)"),
        "{drop}"
    );
    assert!(!last.contains(" 0 dropped"), "{last}");
    eprintln!(
        "long outage: {polls} polls of {document_bytes} bytes, peak RSS {peak_kib} KiB; {last}"
    );
    assert!(peak_kib < 40 * 1024, "peak RSS {peak_kib} KiB\n{last}");
}

/// Snapshot files in the spool (besides them: the delivery journal, rejected/).
fn snap_files(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .count()
}

/// The `producer_timestamp`s of the documents in the spool's snapshot files (their JSON is
/// stored as is), so the test knows what a killed process still held.
fn spooled_stamps(spool: &std::path::Path) -> HashSet<u64> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(spool).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".snap") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for part in text.split("\"producer_timestamp\":").skip(1) {
            let number: String = part
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if let Ok(v) = number.parse::<f64>() {
                out.insert(v.to_bits());
            }
        }
    }
    out
}

/// Exactly once across crashes: 20 `kill -9` of the producer at random moments (mid-fetch,
/// mid-send, between polls) while it delivers to Apache Kafka 4 with a spool; each restart
/// resumes the previous run's producer id and resends what was in flight as it was. Read back
/// with confluent-kafka: no document twice, and none missing — every snapshot a run logged
/// or left in its spool is in the topic (only one being fetched at the kill, never spooled,
/// may be absent).
#[test]
fn kill_9_of_the_producer_at_random_moments_duplicates_nothing() {
    let _guard = serial();
    let Some(direct) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let topic = unique_topic("crash");
    create_topic(&direct, &topic, 3);
    let spool = std::env::temp_dir().join(format!("grk-spool-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let spool_arg = spool.display().to_string();
    let seed = std::env::var("GRK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 0x9E37_79B9 + 1);
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let args = ["--spool-dir", &spool_arg, "--poll-interval", "0.2"];
    let (mut logged, mut held, mut resumed) = (0, HashSet::new(), 0);
    let mut logs = String::new();
    for _ in 0..20 {
        let child = spawn_producer(&server.url("/feed"), &direct, &topic, &args);
        std::thread::sleep(Duration::from_millis(300 + next() % 1200));
        let err = kill(child);
        logged += polls_ok(&err);
        resumed += usize::from(err.contains("taken over"));
        held.extend(spooled_stamps(&spool));
        logs.push_str(&err);
    }
    let child = spawn_producer(&server.url("/feed"), &direct, &topic, &args);
    let restarted_at = server.requests();
    server.wait_for_requests(restarted_at + 3, Duration::from_secs(20));
    let err = stop(child);
    logged += polls_ok(&err);
    logs.push_str(&err);
    assert!(err.contains("0 unsent at exit"), "{err}");
    assert!(
        !logs.contains("may be duplicated"),
        "seed {seed}: a restart gave up its producer id\n{logs}"
    );
    assert!(
        resumed >= 10,
        "seed {seed}: only {resumed} restarts resumed an identity"
    );
    let records = consume_up_to(&direct, &topic, logged + 100, 10);
    let unique = stamps(&records);
    assert_eq!(
        unique.len(),
        records.len(),
        "seed {seed}: {} duplicates",
        records.len() - unique.len()
    );
    let missing = held.difference(&unique).count();
    assert_eq!(
        missing, 0,
        "seed {seed}: {missing} spooled snapshots never arrived"
    );
    assert!(
        unique.len() >= logged && unique.len() <= logged + 20,
        "seed {seed}: {} in Kafka, {logged} logged",
        unique.len()
    );
    std::fs::remove_dir_all(&spool).ok();
}

/// Without a spool nothing is resent after a crash: five `kill -9` at random moments while
/// delivering, then a stop; read back, no document twice (what was queued at a kill is lost,
/// as README says, never duplicated).
#[test]
fn kill_9_without_a_spool_duplicates_nothing() {
    let _guard = serial();
    let Some(direct) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let topic = unique_topic("crash-nospool");
    create_topic(&direct, &topic, 3);
    let args = ["--poll-interval", "0.2"];
    let mut logged = 0;
    for i in 0..5u64 {
        let child = spawn_producer(&server.url("/feed"), &direct, &topic, &args);
        std::thread::sleep(Duration::from_millis(400 + 233 * i));
        logged += polls_ok(&kill(child));
    }
    let child = spawn_producer(&server.url("/feed"), &direct, &topic, &args);
    let restarted_at = server.requests();
    server.wait_for_requests(restarted_at + 3, Duration::from_secs(20));
    logged += polls_ok(&stop(child));
    let records = consume_up_to(&direct, &topic, logged + 50, 10);
    let unique = stamps(&records);
    assert_eq!(unique.len(), records.len(), "duplicates without a spool");
    assert!(
        records.len() <= logged + 5,
        "{} records, {logged} logged",
        records.len()
    );
}
