//! What an operator runs into, on the real binary: closed stderr or stdout never abort the
//! process, log lines can't be forged, settings that can never work are refused naming them.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const FIXTURE: &str = "mbta-vp-1.pb";

fn file_url() -> String {
    format!("file://{}", fixture_path(FIXTURE))
}

#[test]
fn a_closed_stderr_never_aborts_the_process() {
    // stderr closed outright (EBADF on every write).
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" --once --sink stdout --vehicle-url \"$1\" 2>&-")
        .arg(BIN)
        .arg(file_url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}", out.status);
    assert_document(
        out.stdout.trim_ascii_end(),
        FIXTURE,
        "toei_vehicle_api",
        "gtfs_realtime_vehicle",
    );

    // stderr a pipe whose reader is gone (EPIPE on every write).
    let mut child = Command::new(BIN)
        .args(["--once", "--sink", "stdout", "--vehicle-url", &file_url()])
        .args(["--log-level", "debug"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let mut doc = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut doc).unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("no exit");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!doc.is_empty());

    // The lines written outside the logger, into a stderr pipe whose reader is gone: a
    // refused setting (exit 2), `convert` of a missing file (exit 1), `--version` and
    // `--help` into a broken stdout too (exit 0). Never 134 (SIGABRT from a panic).
    for (args, code) in [
        (&["--poll-interval", "0"][..], 2),
        (&["convert", "/nonexistent.pb"][..], 1),
        (&["--version"][..], 0),
        (&["--help"][..], 0),
    ] {
        let status = Command::new(BIN)
            .args(args)
            .stdout(broken_pipe())
            .stderr(broken_pipe())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}: {status:?}");
    }
}

/// The write end of a pipe whose read end is already closed: every write fails with EPIPE.
fn broken_pipe() -> Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe(2) succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

#[test]
fn stdout_closed_by_its_reader_ends_the_run_with_exit_1() {
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let mut command = Command::new(BIN);
    command
        .args(["--sink", "stdout", "--poll-interval", "0.2"])
        .env("VEHICLE_URL", server.url("/f"))
        .stdout(Stdio::piped());
    let mut daemon = Daemon::spawn(command);
    // Like `| head -c 100`: read a little, then go away.
    let mut stdout = daemon.child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let status = wait_timeout(&mut daemon.child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running with stdout closed:\n{}", daemon.log()));
    std::thread::sleep(Duration::from_millis(100));
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("stdout was closed by its reader"), "{log}");
    assert!(log.contains("stopped: "), "{log}");
}

#[test]
fn config_and_broker_text_cannot_forge_log_lines() {
    // A source_id from a config file, with a newline and an ANSI escape in it: every line
    // of the feed is tagged with it.
    let path = write_config(
        "forge",
        &format!(
            "sink = \"stdout\"\n[[feed]]\nvehicle_url = \"{}\"\n\
             source_id = \"evil\\n2026-01-01T00:00:00.000Z INFO  [gtfs_rt_kafka] forged \\u001b[2J\"\n",
            file_url()
        ),
    );
    let out = Command::new(BIN)
        .args(["--once", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    for line in err.lines() {
        assert!(
            line.get(..4)
                .is_some_and(|y| y.chars().all(|c| c.is_ascii_digit())),
            "a line that is not a log record: {line:?}\n{err}"
        );
        assert!(!line.contains('\u{1b}'), "raw escape in {line:?}");
    }
    assert!(
        err.contains("[evil\\n2026-01-01T00:00:00.000Z INFO  [gtfs_rt_kafka] forged"),
        "{err}"
    );
    std::fs::remove_file(&path).ok();
}

/// Runs the binary with `args` and `env` until it exits (at most 10 s): (code, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(BIN);
    command.args(args).stdout(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut daemon = Daemon::spawn(command);
    let status = wait_timeout(&mut daemon.child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running:\n{}", daemon.log()));
    std::thread::sleep(Duration::from_millis(100));
    (status.code(), daemon.log())
}

#[test]
fn unwritable_spool_and_textfile_paths_are_start_errors() {
    let url = file_url();
    let base = ["--once", "--sink", "stdout", "--vehicle-url", url.as_str()];
    let (code, log) = run(
        &[&base[..], &["--spool-dir", "/proc/self/grk-spool"]].concat(),
        &[],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("check SPOOL_DIR / --spool-dir"), "{log}");
    assert!(!log.contains("poll ok"), "{log}");
    let (code, log) = run(
        &[
            &base[..],
            &["--metrics-textfile", "/nonexistent/dir/m.prom"],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("check METRICS_TEXTFILE / --metrics-textfile"),
        "{log}"
    );
}

#[test]
fn a_failed_spool_write_leaves_no_partial_file() {
    let spool = std::env::temp_dir().join(format!("grk-op-efbig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    // A file-size limit of 4 KiB (ulimit counts 512-byte blocks in sh): the write probe fits,
    // the ~100 KB snapshot does not (EFBIG; SIGXFSZ is caught, not fatal).
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "ulimit -f 8; exec \"$0\" --once --sink stdout --vehicle-url \"$1\" --spool-dir \"$2\"",
        )
        .arg(BIN)
        .arg(file_url())
        .arg(&spool)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("kept in memory only"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .collect();
    assert!(left.is_empty(), "partial spool files left: {left:?}");
    std::fs::remove_dir_all(&spool).ok();
}

#[test]
fn settings_that_look_like_ours_warn_and_ones_that_cannot_work_exit_2() {
    let url = file_url();
    let (code, log) = run(
        &["--once", "--sink", "stdout", "--vehicle-url", &url],
        &[("KAFKA_BROKERS", "x:1"), ("POLL_INTERVALL", "5")],
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("KAFKA_BROKERS is not a setting (ignored): did you mean KAFKA_BROKER?"),
        "{log}"
    );
    assert!(log.contains("did you mean POLL_INTERVAL?"), "{log}");
    for (var, value, expected) in [
        ("HTTP_TIMEOUT", "0", "a timeout must be more than 0"),
        ("DELIVERY_TIMEOUT", "0", "a timeout must be more than 0"),
        (
            "KAFKA_REQUEST_TIMEOUT",
            "0",
            "a timeout must be more than 0",
        ),
        ("VEHICLE_URL", "http://[::1", "is not a valid URL"),
        ("KAFKA_TOPIC", "", "empty"),
        ("METRICS_ADDR", "19180", "is not HOST:PORT"),
        ("POLL_INTERVAL", "soon", "units: 500ms, 30s, 2m, 1h"),
        ("RUST_LOG", "gtfs_rt_kafka=loud", "TARGET=LEVEL"),
    ] {
        let err = refused_at_start(&[], &[(var, value.as_ref())]);
        assert!(
            err.contains(var) && err.contains(expected),
            "{var}={value}: {err}"
        );
    }
    // An API key file with a line break inside the value.
    let key = std::env::temp_dir().join(format!("grk-op-key-{}", std::process::id()));
    std::fs::write(&key, "abc\r\ndef\n").unwrap();
    let err = refused_at_start(
        &[],
        &[
            ("FEED_API_KEY_FILE", key.as_os_str()),
            ("FEED_API_KEY_PARAM", "key".as_ref()),
        ],
    );
    assert!(
        err.contains("FEED_API_KEY_FILE") && err.contains("line break"),
        "{err}"
    );
    assert!(!err.contains("abc"), "the key leaked: {err}");
    std::fs::remove_file(&key).ok();
}

#[test]
fn rust_log_takes_env_logger_filters() {
    let url = file_url();
    let (code, log) = run(
        &["--once", "--sink", "stdout", "--vehicle-url", &url],
        &[("RUST_LOG", "warn,gtfs_rt_kafka::pipeline=debug")],
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("DEBUG [gtfs_rt_kafka::pipeline] decoded"),
        "{log}"
    );
    assert!(
        !log.contains("poll ok"),
        "info of other targets shown:\n{log}"
    );
}

/// Peak RSS (VmHWM) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// A 150 KB feed whose header (a 100 KB version string) each of 10,000 entities repeats in
/// entity mode: 1 GB of JSON if written. Refused within MAX_DOCUMENT_BYTES, memory stays small,
/// and the next (sane) poll is delivered.
#[test]
fn a_feed_that_amplifies_is_refused_within_the_document_bound() {
    use gtfs_rt_kafka::decode::transit_realtime::{FeedEntity, FeedHeader, FeedMessage};
    use prost::Message;
    let hostile = FeedMessage {
        header: Some(FeedHeader {
            gtfs_realtime_version: Some("2".repeat(100_000)),
            ..Default::default()
        }),
        entity: (0..10_000)
            .map(|i| FeedEntity {
                id: Some(i.to_string()),
                ..Default::default()
            })
            .collect(),
    }
    .encode_to_vec();
    assert!(hostile.len() < 200_000);
    let refusal = refused_then_next_delivered(hostile, &["--mode", "entity"], "MAX_DOCUMENT_BYTES");
    assert!(
        refusal.contains("10000 entities") && refusal.contains("16777216"),
        "{refusal}"
    );
}

/// A 1 MiB feed of one trip update with ~500,000 empty stop time updates (2 bytes each on the
/// wire, a 160-byte struct each decoded: ~170 MB unchecked). Refused before decoding, one
/// line, counted; memory stays small; the next (sane) poll is delivered.
#[test]
fn an_entity_that_amplifies_in_decoding_is_refused_before_it_is_decoded() {
    use gtfs_rt_kafka::decode::transit_realtime::{
        trip_update::StopTimeUpdate, FeedEntity, FeedHeader, FeedMessage, TripUpdate,
    };
    use prost::Message;
    let hostile = FeedMessage {
        header: Some(FeedHeader {
            gtfs_realtime_version: Some("2.0".into()),
            ..Default::default()
        }),
        entity: vec![FeedEntity {
            id: Some("x".into()),
            trip_update: Some(Box::new(TripUpdate {
                stop_time_update: vec![StopTimeUpdate::default(); 520_000],
                ..Default::default()
            })),
            ..Default::default()
        }],
    }
    .encode_to_vec();
    assert!(hostile.len() <= 1024 * 1024, "{}", hostile.len());
    let refusal = refused_then_next_delivered(hostile, &[], "would take up to");
    assert!(
        refusal.contains("entity 0 of this feed") && refusal.contains("limit is 32 MiB"),
        "{refusal}"
    );
}

/// Serves `hostile` and then a sane feed to a daemon (stdout sink, 0.5 s polls, `extra`
/// arguments). Asserts the hostile poll was refused with a line containing `needle`, counted
/// as one decode error, the next poll delivered, peak RSS under 64 MiB and exit 0; returns
/// the refusal line.
fn refused_then_next_delivered(hostile: Vec<u8>, extra: &[&str], needle: &str) -> String {
    let server = FeedServer::script(vec![Response::Ok(hostile), Response::fixture(FIXTURE)]);
    let mut args = vec!["--sink", "stdout", "--poll-interval", "0.5"];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&args, &[("VEHICLE_URL", &server.url("/f"))]);
    daemon.wait_for_line(needle, Duration::from_secs(20));
    daemon.wait_for_line("poll ok", Duration::from_secs(20));
    let peak = peak_rss_kib(daemon.child.id());
    let (status, _, log) = daemon.stop(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB\n{log}");
    assert!(log.contains("1 decode errors"), "counted: {log}");
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap()
        .to_string()
}

#[test]
fn a_kafka_address_that_speaks_http_is_named_as_such() {
    use std::io::Write;
    // A web server answers bytes it can't parse with an HTTP error, at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut first = [0u8; 64];
            let _ = stream.read(&mut first);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let out = Command::new(BIN)
        .args(["--once", "--vehicle-url", &file_url()])
        .env("KAFKA_BROKER", format!("127.0.0.1:{port}"))
        .env("DELIVERY_TIMEOUT", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("answered in HTTP: a web server, not a Kafka broker"),
        "{err}"
    );
}

#[test]
fn a_kraft_controller_port_is_named_as_such() {
    // The real Kafka 4 node's CONTROLLER listener (.ci/brokers: the broker port + 1).
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let (host, port) = broker.rsplit_once(':').unwrap();
    let controller = format!("{host}:{}", port.parse::<u16>().unwrap() + 1);
    let out = Command::new(BIN)
        .args(["--once", "--vehicle-url", &file_url()])
        .env("KAFKA_BROKER", &controller)
        .env("DELIVERY_TIMEOUT", "3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&controller), "{err}");
    assert!(err.contains("a KRaft controller port?"), "{err}");
}

#[test]
fn readme_compose_section_is_compose_yaml() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let compose = std::fs::read_to_string(format!("{root}/compose.yaml")).unwrap();
    let section = readme
        .split("### docker-compose")
        .nth(1)
        .expect("README has a docker-compose section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block in the compose section");
    assert_eq!(
        block, compose,
        "README's compose block differs from compose.yaml"
    );
}
