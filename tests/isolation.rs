//! Isolation, shutdown and signals, on the real binary: a feed whose server or broker
//! misbehaves never delays the others; SIGTERM ends the process on time in every blocked
//! state with the last line; metrics clients can't stall polls; SIGHUP reloads the file.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const FIXTURE: &str = "mbta-vp-1.pb";

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture_path(FIXTURE)).unwrap()
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_stuck_server_or_broker_never_delays_the_healthy_feeds() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let healthy = [
        FeedServer::start(Response::fixture(FIXTURE)),
        FeedServer::start(Response::fixture(FIXTURE)),
    ];
    let topics = [unique_topic("iso-ok0"), unique_topic("iso-ok1")];
    for t in &topics {
        create_topic(&broker, t, 1);
    }
    let hang = FeedServer::start(Response::Hang);
    let trickle = FeedServer::start(Response::Trickle {
        body: fixture_bytes(),
        chunk: 1,
        pause: Duration::from_millis(500),
    });
    let for_hung_broker = FeedServer::start(Response::fixture(FIXTURE));
    let for_dead_broker = FeedServer::start(Response::fixture(FIXTURE));
    let stuck_topic = unique_topic("iso-stuck");
    let text = format!(
        "kafka_broker = \"{broker}\"\npoll_interval = 1\nhttp_timeout = 30\n\
         kafka_request_timeout = 30\ndelivery_timeout = 30\nshutdown_timeout = 2\n\
         [[feed]]\nsource_id = \"ok0\"\nvehicle_url = \"{}\"\nkafka_topic = \"{}\"\n\
         [[feed]]\nsource_id = \"ok1\"\nvehicle_url = \"{}\"\nkafka_topic = \"{}\"\n\
         [[feed]]\nsource_id = \"hang\"\nvehicle_url = \"{}\"\nkafka_topic = \"{stuck_topic}\"\n\
         [[feed]]\nsource_id = \"trickle\"\nvehicle_url = \"{}\"\nkafka_topic = \"{stuck_topic}\"\n\
         [[feed]]\nsource_id = \"nxdomain\"\nvehicle_url = \"http://feed.invalid/x\"\nkafka_topic = \"{stuck_topic}\"\n\
         [[feed]]\nsource_id = \"hungbroker\"\nvehicle_url = \"{}\"\nkafka_broker = \"127.0.0.1:{}\"\n\
         [[feed]]\nsource_id = \"deadbroker\"\nvehicle_url = \"{}\"\nkafka_broker = \"127.0.0.1:{}\"\n",
        healthy[0].url("/f"),
        topics[0],
        healthy[1].url("/f"),
        topics[1],
        hang.url("/f"),
        trickle.url("/f"),
        for_hung_broker.url("/f"),
        silent_peer(),
        for_dead_broker.url("/f"),
        dead_port(),
    );
    let path = write_config("isolation", &text);
    let daemon = Daemon::start(&["--config", path.to_str().unwrap()], &[]);
    std::thread::sleep(Duration::from_secs(8));

    // Checked while the process runs: every healthy poll was on schedule and its snapshot
    // is in Kafka, read by an independent client.
    let log = daemon.log();
    for (i, server) in healthy.iter().enumerate() {
        let requests = server.requests();
        assert!(requests >= 7, "ok{i}: {requests} polls in 8 s\n{log}");
        let gap = server.max_gap();
        assert!(
            gap < Duration::from_millis(1100),
            "ok{i}: polls {gap:?} apart on a 1 s schedule\n{log}"
        );
        let delivered = count_lines(&log, &format!("[ok{i}] poll ok:"));
        assert!(
            delivered + 1 >= requests,
            "ok{i}: {delivered} of {requests} polls delivered within their interval\n{log}"
        );
        let records = consume(&broker, &topics[i], delivered);
        for r in &records {
            assert_document(
                r["value"].as_str().unwrap().as_bytes(),
                FIXTURE,
                &format!("ok{i}"),
                "gtfs_realtime_vehicle",
            );
        }
    }
    assert!(hang.requests() >= 1 && trickle.requests() >= 1);
    assert!(for_hung_broker.requests() >= 1 && for_dead_broker.requests() >= 1);

    let (status, took, log) = daemon.stop(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} (SHUTDOWN_TIMEOUT 2)\n{log}"
    );
    for feed in [
        "ok0",
        "ok1",
        "hang",
        "trickle",
        "nxdomain",
        "hungbroker",
        "deadbroker",
    ] {
        assert_eq!(
            count_lines(&log, &format!("[{feed}] stopped: ")),
            1,
            "{feed}\n{log}"
        );
    }
    // The snapshots that never reached the stuck brokers are counted, not hidden.
    let hung_line = log
        .lines()
        .find(|l| l.contains("[hungbroker] stopped: "))
        .unwrap();
    assert!(!hung_line.contains(" 0 unsent at exit"), "{hung_line}");
    std::fs::remove_file(&path).ok();
}

/// One blocked state of a single feed, and what its last line must say.
struct Blocked {
    name: &'static str,
    env: Vec<(String, String)>,
    server: FeedServer,
    unsent: &'static str,
}

#[test]
fn sigterm_ends_every_blocked_state_within_the_shutdown_timeout() {
    let spool = std::env::temp_dir().join(format!("grk-iso-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let hung_broker = format!("127.0.0.1:{}", silent_peer());
    let cases = vec![
        Blocked {
            name: "hung fetch",
            env: env(&[("KAFKA_BROKER", "127.0.0.1:9"), ("HTTP_TIMEOUT", "30")]),
            server: FeedServer::start(Response::Hang),
            unsent: " 0 unsent at exit",
        },
        Blocked {
            name: "trickling body",
            env: env(&[("KAFKA_BROKER", "127.0.0.1:9"), ("HTTP_TIMEOUT", "60")]),
            server: FeedServer::start(Response::Trickle {
                body: fixture_bytes(),
                chunk: 1,
                pause: Duration::from_millis(200),
            }),
            unsent: " 0 unsent at exit",
        },
        Blocked {
            name: "hung broker, spooled",
            env: env(&[
                ("KAFKA_BROKER", &hung_broker),
                ("KAFKA_REQUEST_TIMEOUT", "30"),
                ("DELIVERY_TIMEOUT", "30"),
                ("SPOOL_DIR", spool.to_str().unwrap()),
            ]),
            server: FeedServer::start(Response::fixture(FIXTURE)),
            unsent: " 1 unsent at exit (1 in the spool, 0 lost)",
        },
        Blocked {
            name: "hung broker, memory only",
            env: env(&[
                ("KAFKA_BROKER", &hung_broker),
                ("KAFKA_REQUEST_TIMEOUT", "30"),
                ("DELIVERY_TIMEOUT", "30"),
            ]),
            server: FeedServer::start(Response::fixture(FIXTURE)),
            unsent: " 1 unsent at exit (0 in the spool, 1 lost)",
        },
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|case| {
            std::thread::spawn(move || {
                let url = case.server.url("/f");
                let mut pairs: Vec<(&str, &str)> = case
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                pairs.extend([
                    ("VEHICLE_URL", url.as_str()),
                    ("SHUTDOWN_TIMEOUT", "2"),
                    ("POLL_INTERVAL", "60"),
                ]);
                let daemon = Daemon::start(&[], &pairs);
                case.server.wait_for_requests(1, Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(500));
                let (status, took, log) = daemon.stop(Duration::from_secs(10));
                let name = case.name;
                assert_eq!(status.code(), Some(0), "{name}\n{log}");
                assert!(took < Duration::from_secs(3), "{name}: {took:?}\n{log}");
                let last = log.lines().rev().find(|l| l.contains("stopped: "));
                let last = last.unwrap_or_else(|| panic!("{name}: no stopped line\n{log}"));
                assert!(last.contains(case.unsent), "{name}: {last}\n{log}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    std::fs::remove_dir_all(&spool).ok();
}

#[test]
fn idle_and_churning_metrics_clients_never_delay_polls_or_shutdown() {
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let port = dead_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &[],
        &[
            ("VEHICLE_URL", &server.url("/f")),
            ("SINK", "stdout"),
            ("POLL_INTERVAL", "0.5"),
            ("METRICS_ADDR", &addr),
        ],
    );
    daemon.wait_for_line("metrics on", Duration::from_secs(5));
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let mut idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_millis(100)).ok())
        .collect();
    assert!(idle.len() >= 100, "only {} connections", idle.len());
    // Meanwhile: a client sending a 10 MB request, a slowloris sending a byte every 100 ms,
    // and 100 scrapes a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hostile = Vec::new();
    {
        let addr = addr.clone();
        hostile.push(std::thread::spawn(move || {
            let target: std::net::SocketAddr = addr.parse().unwrap();
            if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                let chunk = vec![b'A'; 64 * 1024];
                for _ in 0..160 {
                    if std::io::Write::write_all(&mut s, &chunk).is_err() {
                        break;
                    }
                }
            }
        }));
    }
    for _ in 0..4 {
        let (addr, stop) = (addr.clone(), stop.clone());
        hostile.push(std::thread::spawn(move || {
            let target: std::net::SocketAddr = addr.parse().unwrap();
            let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                return;
            };
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if std::io::Write::write_all(&mut s, b"G").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    let scrapes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..8 {
        let (addr, stop, scrapes) = (addr.clone(), stop.clone(), scrapes.clone());
        hostile.push(std::thread::spawn(move || {
            let target: std::net::SocketAddr = addr.parse().unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Counted as tried whether or not the (full) backlog takes it.
                scrapes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_millis(50)) {
                    let _ = std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\n\r\n");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    let before = server.requests();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        // Ten new idle clients a second, each sending half a request line.
        let target: std::net::SocketAddr = addr.parse().unwrap();
        for _ in 0..10 {
            if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_millis(50)) {
                let _ = std::io::Write::write_all(&mut s, b"GET /met");
                idle.push(s);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let polls = server.requests() - before;
    assert!(
        polls >= 9,
        "{polls} polls in 5 s at 0.5 s\n{}",
        daemon.log()
    );
    assert!(
        server.max_gap() < Duration::from_millis(600),
        "polls {:?} apart",
        server.max_gap()
    );
    assert!(
        scrapes.load(std::sync::atomic::Ordering::SeqCst) >= 500,
        "the scraper did not run (100 scrapes a second tried)"
    );
    let (status, took, log) = daemon.stop(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}\n{log}");
    // The hostile clients end on their own (the listener is gone); not waited for.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(idle);
    drop(hostile);
}

#[test]
fn sighup_reloads_the_file_adding_and_removing_feeds_with_nothing_lost() {
    let Some(broker) = broker("GRK_TEST_KAFKA4") else {
        return;
    };
    let servers: Vec<FeedServer> = (0..3)
        .map(|_| FeedServer::start(Response::fixture(FIXTURE)))
        .collect();
    let topics: Vec<String> = (0..3).map(|i| unique_topic(&format!("hup{i}"))).collect();
    for t in &topics {
        create_topic(&broker, t, 1);
    }
    let feed = |i: usize, interval: &str| {
        format!(
            "[[feed]]\nsource_id = \"f{i}\"\nvehicle_url = \"{}\"\nkafka_topic = \"{}\"\npoll_interval = {interval}\n",
            servers[i].url("/f"),
            topics[i]
        )
    };
    let top = format!("kafka_broker = \"{broker}\"\n");
    let path = write_config(
        "reload",
        &format!("{top}{}{}", feed(0, "0.5"), feed(1, "0.5")),
    );
    let daemon = Daemon::start(&["--config", path.to_str().unwrap()], &[]);
    servers[1].wait_for_requests(3, Duration::from_secs(10));

    // An invalid file is refused and changes nothing.
    std::fs::write(&path, format!("{top}[[feed]]\npoll_interval = \"soon\"\n")).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_line("reload refused", Duration::from_secs(5));
    let f0 = servers[0].requests();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        servers[0].requests() > f0,
        "f0 stopped after a refused reload"
    );

    // f0 removed, f1 changed (interval), f2 added.
    std::fs::write(&path, format!("{top}{}{}", feed(1, "0.4"), feed(2, "0.5"))).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_line("1 added, 1 removed, 1 changed", Duration::from_secs(5));
    servers[2].wait_for_requests(3, Duration::from_secs(10));
    let f0_after = servers[0].requests();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        servers[0].requests() <= f0_after + 1,
        "removed feed still polling"
    );
    let (status, _, log) = daemon.stop(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("[f0] stopped (removed from the config): "),
        "{log}"
    );
    // Every poll that fetched a feed is in its topic, once.
    for i in 0..3 {
        let delivered = count_lines(&log, &format!("[f{i}] poll ok:"))
            + count_lines(&log, &format!("[f{i}] delivered "));
        let polls = servers[i].requests();
        assert!(
            delivered >= polls.saturating_sub(1),
            "f{i}: {delivered} of {polls}\n{log}"
        );
        let records = consume_up_to(&broker, &topics[i], polls + 5, 10);
        assert_eq!(
            records.len(),
            polls,
            "f{i}: every fetched snapshot once\n{log}"
        );
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn other_signals_are_reported_and_never_fatal() {
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let daemon = Daemon::start(
        &[],
        &[
            ("VEHICLE_URL", &server.url("/f")),
            ("SINK", "stdout"),
            ("POLL_INTERVAL", "0.5"),
        ],
    );
    server.wait_for_requests(1, Duration::from_secs(5));
    // Every signal README lists as "one warning line each; never fatal".
    for sig in [
        "USR1", "USR2", "ALRM", "VTALRM", "PROF", "IO", "PWR", "XCPU", "XFSZ",
    ] {
        daemon.signal(sig);
        daemon.wait_for_line(
            &format!("received SIG{sig}: ignored"),
            Duration::from_secs(5),
        );
    }
    daemon.signal("HUP");
    daemon.wait_for_line(
        "nothing to reload (no --config file)",
        Duration::from_secs(5),
    );
    let before = server.requests();
    server.wait_for_requests(before + 2, Duration::from_secs(5));
    let (status, _, log) = daemon.stop(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("stopped: "), "{log}");
}

#[test]
fn sigquit_stops_gracefully_with_the_last_line() {
    let server = FeedServer::start(Response::fixture(FIXTURE));
    let mut daemon = Daemon::start(
        &[],
        &[("VEHICLE_URL", &server.url("/f")), ("SINK", "stdout")],
    );
    server.wait_for_requests(1, Duration::from_secs(5));
    daemon.signal("QUIT");
    let status = wait_timeout(&mut daemon.child, Duration::from_secs(5)).expect("no exit");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(
        daemon.log().contains("stopped: 1 polls"),
        "{}",
        daemon.log()
    );
}

#[test]
fn the_open_file_limit_is_raised_or_the_start_refused() {
    let feeds: String = (0..40)
        .map(|i| {
            format!("[[feed]]\nsource_id = \"f{i}\"\nvehicle_url = \"http://127.0.0.1:9/\"\nsink = \"stdout\"\n")
        })
        .collect();
    let path = write_config("nofile", &feeds);
    let run = |limits: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{limits}; exec \"$0\" --config \"$1\" --once"))
            .arg(BIN)
            .arg(&path)
            .output()
            .unwrap()
    };
    // 40 feeds need more than a hard limit of 100: refused, naming the limit.
    let out = run("ulimit -n 100");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("RLIMIT_NOFILE allows 100"), "{err}");
    // A low soft limit under a high enough hard one is raised.
    let out = run("ulimit -Sn 100; ulimit -Hn 4096");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("raised the open-file limit from 100 to 4096"),
        "{err}"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn process_settings_inside_a_feed_and_empty_values_are_refused() {
    let check = |text: &str, env: &[(&str, &str)], expected: &str| {
        let path = write_config("scope", text);
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("--config").arg(&path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{err}");
        std::fs::remove_file(&path).ok();
    };
    for key in ["rust_log", "metrics_addr", "shutdown_timeout"] {
        check(
            &format!("[[feed]]\nsource_id = \"a\"\n[[feed]]\nsource_id = \"b\"\n{key} = \"5\"\n"),
            &[],
            &format!("{key} in [[feed]] #2 is process-wide"),
        );
    }
    check(
        "[[feed]]\nvehicle_url = \"\"\n",
        &[],
        "VEHICLE_URL / --vehicle-url in [[feed]] #1",
    );
    check(
        "[[feed]]\nsource_id = \"a\"\n",
        &[("KAFKA_TOPIC", "")],
        "KAFKA_TOPIC / --kafka-topic",
    );
    let err = refused_at_start(&[], &[("KAFKA_BROKER", "".as_ref())]);
    assert!(
        err.contains("KAFKA_BROKER / --kafka-broker") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn a_second_sigquit_exits_at_once_with_131() {
    let server = FeedServer::start(Response::Hang);
    let mut daemon = Daemon::start(
        &[],
        &[
            ("VEHICLE_URL", &server.url("/f")),
            ("SINK", "stdout"),
            ("HTTP_TIMEOUT", "30"),
            ("SHUTDOWN_TIMEOUT", "20"),
        ],
    );
    server.wait_for_requests(1, Duration::from_secs(5));
    daemon.signal("QUIT");
    std::thread::sleep(Duration::from_millis(300));
    daemon.signal("QUIT");
    let status = wait_timeout(&mut daemon.child, Duration::from_secs(3)).expect("no exit");
    assert_eq!(status.code(), Some(131), "{}", daemon.log());
}

/// README: `docker stop` kills 10 s after SIGTERM, so the image's SHUTDOWN_TIMEOUT leaves the
/// process (which exits by SHUTDOWN_TIMEOUT + 1 s) its last line.
#[test]
fn the_scratch_image_shutdown_timeout_fits_docker_stop() {
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile.scratch")).unwrap();
    let value: f64 = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("SHUTDOWN_TIMEOUT="))
        .map(|v| v.trim_end_matches(['\\', ' ']).parse().unwrap())
        .expect("Dockerfile.scratch sets SHUTDOWN_TIMEOUT");
    assert!(value + 1.0 < 10.0, "SHUTDOWN_TIMEOUT={value} in the image");
}
