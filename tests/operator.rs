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
