//! TLS, SASL and secrets, end to end: the real binary against the TLS + SASL Kafka node of
//! `.ci/secure-broker` (SASL_SSL with SCRAM-SHA-512 and PLAIN, SASL_PLAINTEXT with
//! SCRAM-SHA-256, SSL with a client certificate), read back with confluent-kafka authenticating
//! on its own (tests/py/consume_secure.py); failures (wrong password, untrusted CA, missing
//! client certificate, mechanism not offered) as one line, survived by the polling loop; and no
//! secret in any log line, even at trace level.
//!
//! The broker tests run with GRK_TEST_SECURE=1 (after `.ci/secure-broker start`, whose
//! .ci/work/secure/secure.env holds addresses, certificates and credentials; GRK_SECURE_ENV
//! overrides that path). Unset, they print "skipped", unless GRK_REQUIRE_BROKERS=1 makes that a
//! failure. Settings validation needs no broker and always runs.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_document, fixture_path, repo_path, signal, unique_topic, wait_timeout, BIN};
use serde_json::Value;

const FIXTURE: &str = "mbta-vp-1.pb";

/// `.ci/secure-broker`'s settings, or `None` (skipped) when GRK_TEST_SECURE is not 1.
struct Secure(HashMap<String, String>);

impl Secure {
    fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from secure.env"))
    }

    /// librdkafka properties for the independent reader on `listener`.
    fn reader_props(&self, listener: &str) -> Vec<String> {
        let mut props = vec![format!("ssl.ca.location={}", self.get("CA"))];
        match listener {
            "SASL_SSL" => props.extend([
                "security.protocol=SASL_SSL".to_owned(),
                "sasl.mechanism=SCRAM-SHA-512".to_owned(),
                format!("sasl.username={}", self.get("SCRAM512_USER")),
                format!("sasl.password={}", self.get("SCRAM512_PASSWORD")),
            ]),
            "SASL_PLAINTEXT" => props.extend([
                "security.protocol=SASL_PLAINTEXT".to_owned(),
                "sasl.mechanism=SCRAM-SHA-256".to_owned(),
                format!("sasl.username={}", self.get("SCRAM256_USER")),
                format!("sasl.password={}", self.get("SCRAM256_PASSWORD")),
            ]),
            "SSL" => props.extend([
                "security.protocol=SSL".to_owned(),
                format!("ssl.certificate.location={}", self.get("CLIENT_CERT")),
                format!("ssl.key.location={}", self.get("CLIENT_KEY")),
            ]),
            other => panic!("no reader for {other}"),
        }
        props
    }

    /// Env for our binary: SASL_SSL with SCRAM-SHA-512 as alice.
    fn scram512(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKER", self.get("SASL_SSL").to_owned()),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL".to_owned()),
            ("KAFKA_SSL_CA_LOCATION", self.get("CA").to_owned()),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
            ("KAFKA_SASL_USERNAME", self.get("SCRAM512_USER").to_owned()),
            (
                "KAFKA_SASL_PASSWORD",
                self.get("SCRAM512_PASSWORD").to_owned(),
            ),
        ]
    }
}

fn secure() -> Option<Secure> {
    if std::env::var("GRK_TEST_SECURE").as_deref() != Ok("1") {
        if std::env::var("GRK_REQUIRE_BROKERS").as_deref() == Ok("1") {
            panic!(
                "GRK_TEST_SECURE is not 1 but GRK_REQUIRE_BROKERS=1 (run .ci/secure-broker start)"
            );
        }
        println!("skipped: GRK_TEST_SECURE is not 1");
        return None;
    }
    let path = std::env::var("GRK_SECURE_ENV")
        .map(Into::into)
        .unwrap_or_else(|_| repo_path(".ci/work/secure/secure.env"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run .ci/secure-broker start)", path.display()));
    Some(Secure(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    ))
}

/// The binary with a clean environment: the fixture as the feed, `topic`, then `env` and `args`.
fn binary(topic: &str, env: &[(&str, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("VEHICLE_URL", format!("file://{}", fixture_path(FIXTURE)))
        .env("KAFKA_TOPIC", topic)
        .env("SOURCE_ID", "secure-src")
        .env("EVENT_TYPE", "secure-evt")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads `count` records of `topic` with confluent-kafka over `listener`.
fn read_back(secure: &Secure, listener: &str, topic: &str, count: usize) -> Vec<Value> {
    let mut cmd = Command::new(std::env::var("GRK_PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(repo_path("tests/py/consume_secure.py"))
        .args(["--bootstrap", secure.get(listener), "--topic", topic])
        .args(["--count", &count.to_string(), "--timeout", "60"]);
    for p in secure.reader_props(listener) {
        cmd.args(["-X", &p]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "consume_secure.py ({listener}): {}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `--once` delivered: exit 0, the record is there, read back by an independent client.
fn assert_delivered(secure: &Secure, out: &Output, listener: &str, topic: &str) {
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let records = read_back(secure, listener, topic, 1);
    let value = records[0]["value"].as_str().expect("value");
    assert_document(value.as_bytes(), FIXTURE, "secure-src", "secure-evt");
    assert_eq!(records[0]["headers"], Value::Array(vec![]), "no headers");
}

#[test]
fn sasl_ssl_scram_sha_512_from_env() {
    let Some(secure) = secure() else { return };
    let topic = unique_topic("sec-scram512");
    let out = run(binary(&topic, &secure.scram512(), &["--once"]));
    assert_delivered(&secure, &out, "SASL_SSL", &topic);
    let log = text(&out.stderr);
    assert!(
        log.contains("SASL_SSL SCRAM-SHA-512 user alice"),
        "start line names the security: {log}"
    );
}

#[test]
fn sasl_ssl_plain_from_flags_with_the_password_in_a_file() {
    let Some(secure) = secure() else { return };
    let topic = unique_topic("sec-plain");
    let dir = std::env::temp_dir().join(format!("grk-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plain-password");
    std::fs::write(&file, format!("{}\n", secure.get("PLAIN_PASSWORD"))).unwrap();
    let env = [
        ("KAFKA_BROKER", secure.get("SASL_SSL").to_owned()),
        // Flags win over env: this protocol is overridden by -X.
        ("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT".to_owned()),
        ("KAFKA_SASL_PASSWORD_FILE", file.display().to_string()),
    ];
    let ca = format!("ssl.ca.location={}", secure.get("CA"));
    let user = format!("sasl.username={}", secure.get("PLAIN_USER"));
    let args = [
        "--once",
        "-X",
        "security.protocol=SASL_SSL",
        "-Xsasl.mechanisms=PLAIN",
        "-X",
        &user,
        "-X",
        &ca,
    ];
    let out = run(binary(&topic, &env, &args));
    assert_delivered(&secure, &out, "SASL_SSL", &topic);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sasl_plaintext_scram_sha_256() {
    let Some(secure) = secure() else { return };
    let topic = unique_topic("sec-scram256");
    let env = [
        ("KAFKA_BROKER", secure.get("SASL_PLAINTEXT").to_owned()),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT".to_owned()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256".to_owned()),
        (
            "KAFKA_SASL_USERNAME",
            secure.get("SCRAM256_USER").to_owned(),
        ),
        (
            "KAFKA_SASL_PASSWORD",
            secure.get("SCRAM256_PASSWORD").to_owned(),
        ),
    ];
    let out = run(binary(&topic, &env, &["--once"]));
    assert_delivered(&secure, &out, "SASL_PLAINTEXT", &topic);
}

#[test]
fn ssl_with_a_client_certificate() {
    let Some(secure) = secure() else { return };
    let topic = unique_topic("sec-mtls");
    // By name too: the certificate's SAN has DNS:localhost besides IP:127.0.0.1.
    let broker = secure.get("SSL").replace("127.0.0.1", "localhost");
    let env = [
        ("KAFKA_BROKER", broker),
        ("KAFKA_SECURITY_PROTOCOL", "SSL".to_owned()),
        ("KAFKA_SSL_CA_LOCATION", secure.get("CA").to_owned()),
        (
            "KAFKA_SSL_CERTIFICATE_LOCATION",
            secure.get("CLIENT_CERT").to_owned(),
        ),
        (
            "KAFKA_SSL_KEY_LOCATION",
            secure.get("CLIENT_KEY").to_owned(),
        ),
    ];
    let out = run(binary(&topic, &env, &["--once"]));
    assert_delivered(&secure, &out, "SSL", &topic);
}

/// The one line that says why delivery failed (the poll's warn line), checked for `expected`.
fn failure_line(out: &Output, expected: &[&str]) -> String {
    let log = text(&out.stderr);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("deliver: ")).collect();
    assert_eq!(lines.len(), 1, "one failure line:\n{log}");
    for e in expected {
        assert!(lines[0].contains(e), "{e:?} not in: {}", lines[0]);
    }
    assert!(!log.contains("panicked"), "{log}");
    lines[0].to_owned()
}

/// `--once` fails (exit 1) with one line holding `expected`; then the polling loop with the
/// same settings keeps running through 3 polls and stops cleanly on SIGTERM.
fn fails_and_survives(env: &[(&str, String)], expected: &[&str]) -> String {
    let topic = unique_topic("sec-fail");
    let started = Instant::now();
    let out = run(binary(&topic, env, &["--once"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a refusal is not retried until the delivery deadline: {:?}",
        started.elapsed()
    );
    let line = failure_line(&out, expected);

    let feed = CaptureServer::start();
    let mut env = env.to_vec();
    env.push(("VEHICLE_URL", feed.url("/feed.pb")));
    let mut child: Child = binary(
        &topic,
        &env,
        &["--poll-interval", "1", "--shutdown-timeout", "1"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while feed.requests().len() < 3 {
        assert!(Instant::now() < deadline, "fewer than 3 polls");
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited during the polls"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after 3 polls"
    );
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("stops on SIGTERM");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    for e in expected {
        assert!(log.contains(e), "{e:?} not in the loop's log:\n{log}");
    }
    line
}

#[test]
fn wrong_password_is_one_line_naming_mechanism_and_user() {
    let Some(secure) = secure() else { return };
    let mut env = secure.scram512();
    env.retain(|(k, _)| *k != "KAFKA_SASL_PASSWORD");
    env.push(("KAFKA_SASL_PASSWORD", "not-alices-password".to_owned()));
    let line = fails_and_survives(
        &env,
        &[
            "kafka broker 127.0.0.1:49092: SASL authentication failed (SCRAM-SHA-512, user alice)",
            "SASL_AUTHENTICATION_FAILED",
        ],
    );
    assert!(!line.contains("not-alices-password"), "{line}");
}

#[test]
fn untrusted_certificate_names_the_broker() {
    let Some(secure) = secure() else { return };
    let env = [
        ("KAFKA_BROKER", secure.get("SSL").to_owned()),
        ("KAFKA_SECURITY_PROTOCOL", "SSL".to_owned()),
        ("KAFKA_SSL_CA_LOCATION", secure.get("OTHER_CA").to_owned()),
        (
            "KAFKA_SSL_CERTIFICATE_LOCATION",
            secure.get("CLIENT_CERT").to_owned(),
        ),
        (
            "KAFKA_SSL_KEY_LOCATION",
            secure.get("CLIENT_KEY").to_owned(),
        ),
    ];
    fails_and_survives(
        &env,
        &[
            "kafka broker 127.0.0.1:49093: TLS: the broker's certificate is not signed by a trusted CA",
            "KAFKA_SSL_CA_LOCATION",
        ],
    );
    // The bundled Mozilla roots don't know the test CA either.
    let mut env = secure.scram512();
    env.retain(|(k, _)| *k != "KAFKA_SSL_CA_LOCATION");
    let out = run(binary(&unique_topic("sec-roots"), &env, &["--once"]));
    assert_eq!(out.status.code(), Some(1));
    failure_line(
        &out,
        &["127.0.0.1:49092: TLS: the broker's certificate is not signed"],
    );
}

#[test]
fn missing_client_certificate_is_refused_by_the_broker() {
    let Some(secure) = secure() else { return };
    let env = [
        ("KAFKA_BROKER", secure.get("SSL").to_owned()),
        ("KAFKA_SECURITY_PROTOCOL", "SSL".to_owned()),
        ("KAFKA_SSL_CA_LOCATION", secure.get("CA").to_owned()),
    ];
    fails_and_survives(
        &env,
        &[
            "kafka broker 127.0.0.1:49093: TLS: the broker refused our client certificate",
            "KAFKA_SSL_CERTIFICATE_LOCATION",
        ],
    );
}

#[test]
fn a_mechanism_the_listener_lacks_lists_what_it_offers() {
    let Some(secure) = secure() else { return };
    let env = [
        ("KAFKA_BROKER", secure.get("SASL_PLAINTEXT").to_owned()),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT".to_owned()),
        ("KAFKA_SASL_MECHANISM", "PLAIN".to_owned()),
        ("KAFKA_SASL_USERNAME", secure.get("PLAIN_USER").to_owned()),
        (
            "KAFKA_SASL_PASSWORD",
            secure.get("PLAIN_PASSWORD").to_owned(),
        ),
    ];
    let out = run(binary(&unique_topic("sec-mech"), &env, &["--once"]));
    assert_eq!(out.status.code(), Some(1));
    let line = failure_line(
        &out,
        &["127.0.0.1:49094: SASL mechanism PLAIN is not enabled on the broker; it offers "],
    );
    assert!(
        line.contains("SCRAM-SHA-256") && line.contains("SCRAM-SHA-512"),
        "{line}"
    );
}

#[test]
fn sessions_are_renewed_before_the_broker_ends_them() {
    let Some(secure) = secure() else { return };
    let reauth_ms: u64 = secure.get("REAUTH_MS").parse().unwrap();
    let topic = unique_topic("sec-reauth");
    let mut child = binary(
        &topic,
        &secure.scram512(),
        &["--poll-interval", "1", "--log-level", "debug"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Past the broker's session lifetime (plus the first connection's setup).
    std::thread::sleep(Duration::from_millis(reauth_ms + 3_000));
    signal(child.id(), "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(15)).expect("stops on SIGTERM");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    let delivered = log
        .lines()
        .filter(|l| l.contains("poll ok") && l.contains(&format!("-> {topic}[")))
        .count();
    assert!(
        log.contains("re-authenticated (SCRAM-SHA-512)"),
        "no re-authentication in:\n{log}"
    );
    assert!(
        !log.contains(" WARN ") && !log.contains(" ERROR "),
        "every poll delivered:\n{log}"
    );
    assert!(
        !log.contains("SASL session expired"),
        "renewed before the end:\n{log}"
    );
    assert!(
        delivered as u64 >= reauth_ms / 1000,
        "{delivered} polls delivered:\n{log}"
    );
    assert_eq!(
        read_back(&secure, "SASL_SSL", &topic, delivered).len(),
        delivered
    );
}

#[test]
fn secrets_never_reach_stdout_or_stderr_even_at_trace_level() {
    let Some(secure) = secure() else { return };
    let api_key = format!("feedkey{:x}", std::process::id() as u64 * 7919 + 0xabcdef);
    let password = secure.get("SCRAM512_PASSWORD").to_owned();
    let wrong_password = format!("wrongpw{:x}", std::process::id() as u64 * 104_729);
    let secrets = [api_key.as_str(), password.as_str(), wrong_password.as_str()];
    let check = |out: &Output, what: &str| {
        for stream in [&out.stdout, &out.stderr] {
            let t = text(stream);
            for s in secrets {
                assert!(!t.contains(s), "{what}: a secret leaked:\n{t}");
            }
        }
        assert!(text(&out.stderr).contains(" TRACE ") || text(&out.stderr).contains(" DEBUG "));
    };

    // Key in the query string; SCRAM-SHA-512 with the right password; delivered.
    let feed = CaptureServer::start();
    let topic = unique_topic("sec-leak");
    let mut env = secure.scram512();
    env.extend([
        ("VEHICLE_URL", feed.url("/feed.pb?agency=1")),
        ("FEED_API_KEY", api_key.clone()),
        ("FEED_API_KEY_PARAM", "acl:consumerKey".to_owned()),
    ]);
    let out = run(binary(&topic, &env, &["--once", "--log-level", "trace"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    check(&out, "query key, right password");
    assert!(
        text(&out.stderr).contains("/feed.pb?agency=***&acl:consumerKey=***"),
        "the URL is logged masked: {}",
        text(&out.stderr)
    );
    let requests = feed.requests();
    assert!(
        requests[0].starts_with(&format!("GET /feed.pb?agency=1&acl:consumerKey={api_key} ")),
        "{requests:?}"
    );

    // Key in a header; a wrong password: the failure line names the user, not the password.
    let feed = CaptureServer::start();
    let mut env = secure.scram512();
    env.retain(|(k, _)| *k != "KAFKA_SASL_PASSWORD");
    env.extend([
        ("KAFKA_SASL_PASSWORD", wrong_password.clone()),
        ("VEHICLE_URL", feed.url("/feed.pb")),
        ("FEED_API_KEY", api_key.clone()),
        ("FEED_API_KEY_HEADER", "X-Api-Key".to_owned()),
    ]);
    let out = run(binary(&topic, &env, &["--once", "--log-level", "trace"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    check(&out, "header key, wrong password");
    let head = &feed.requests()[0];
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("\r\nx-api-key: {api_key}\r\n")),
        "{head}"
    );
}

#[test]
fn https_feed_with_a_custom_ca_and_a_header_key() {
    let Some(secure) = secure() else { return };
    let feed = CaptureServer::start_tls(secure.get("SERVER_CERT"), secure.get("SERVER_KEY"));
    let url = feed.url("/feed.pb");
    let env = |ca: bool| {
        let mut env = vec![
            ("VEHICLE_URL", url.clone()),
            ("FEED_API_KEY", "k3y".to_owned()),
            ("FEED_API_KEY_HEADER", "x-api-key".to_owned()),
        ];
        if ca {
            env.push(("HTTP_CA_LOCATION", secure.get("CA").to_owned()));
        }
        env
    };
    let out = run(binary(
        "unused",
        &env(true),
        &["--once", "--sink", "stdout"],
    ));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_document(
        text(&out.stdout).trim_end().as_bytes(),
        FIXTURE,
        "secure-src",
        "secure-evt",
    );
    assert!(
        feed.requests()[0].contains("x-api-key: k3y\r\n"),
        "{:?}",
        feed.requests()
    );

    // Without the CA: the bundled roots refuse the test CA's certificate, in one line.
    let out = run(binary(
        "unused",
        &env(false),
        &["--once", "--sink", "stdout"],
    ));
    assert_eq!(out.status.code(), Some(1));
    let log = text(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("poll failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("fetch {url}: TLS error: "))
            && line.contains("not signed by a trusted CA (set HTTP_CA_LOCATION"),
        "{line}"
    );
}

/// Settings problems stop the start with exit 2 and one line naming the setting; no broker needed.
#[test]
fn invalid_security_settings_exit_2_naming_the_setting() {
    let dir = std::env::temp_dir().join(format!("grk-sec-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.join("missing.pem").display().to_string();
    let s = |v: &str| v.to_owned();
    // (env, args, the setting the error names)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("KAFKA_SECURITY_PROTOCOL", s("TLS"))],
            vec![],
            "KAFKA_SECURITY_PROTOCOL / -X security.protocol",
        ),
        (
            vec![("KAFKA_SECURITY_PROTOCOL", s("SASL_SSL"))],
            vec![],
            "KAFKA_SASL_MECHANISM / -X sasl.mechanism",
        ),
        (
            vec![],
            vec![
                "-X",
                "security.protocol=SASL_PLAINTEXT",
                "-X",
                "sasl.mechanism=GSSAPI",
            ],
            "KAFKA_SASL_MECHANISM / -X sasl.mechanism",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", s("SASL_PLAINTEXT")),
                ("KAFKA_SASL_MECHANISM", s("PLAIN")),
                ("KAFKA_SASL_USERNAME", s("u")),
            ],
            vec![],
            "KAFKA_SASL_PASSWORD / -X sasl.password or KAFKA_SASL_PASSWORD_FILE",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", s("SASL_PLAINTEXT")),
                ("KAFKA_SASL_MECHANISM", s("PLAIN")),
                ("KAFKA_SASL_USERNAME", s("u")),
                ("KAFKA_SASL_PASSWORD_FILE", empty.display().to_string()),
            ],
            vec![],
            "KAFKA_SASL_PASSWORD_FILE",
        ),
        (
            vec![("KAFKA_SASL_USERNAME", s("u"))],
            vec![],
            "KAFKA_SASL_USERNAME / -X sasl.username",
        ),
        (
            vec![
                ("KAFKA_SECURITY_PROTOCOL", s("SSL")),
                ("KAFKA_SSL_CA_LOCATION", missing.clone()),
            ],
            vec![],
            "KAFKA_SSL_CA_LOCATION / -X ssl.ca.location",
        ),
        (vec![], vec!["-X", "linger.ms=5"], "usage"),
        (
            vec![],
            vec!["-X", "ssl.key.password=x"],
            "-X ssl.key.password",
        ),
        (
            vec![("HTTP_CA_LOCATION", missing.clone())],
            vec![],
            "HTTP_CA_LOCATION / --http-ca-location",
        ),
        (vec![("FEED_API_KEY", s("k"))], vec![], "FEED_API_KEY"),
        (
            vec![
                ("FEED_API_KEY", s("k")),
                ("FEED_API_KEY_HEADER", s("bad header")),
            ],
            vec![],
            "FEED_API_KEY_HEADER / --feed-api-key-header",
        ),
    ];
    for (env, args, setting) in cases {
        let mut cmd = binary("t", &env, &args);
        cmd.arg("--once");
        let out = run(cmd);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("gtfs-rt-kafka: invalid {setting}: ")),
            "{env:?} {args:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A feed server that serves the fixture and keeps every request head (request line and
/// headers), over plain HTTP or TLS.
struct CaptureServer {
    port: u16,
    tls: bool,
    heads: Arc<Mutex<Vec<String>>>,
}

impl CaptureServer {
    fn start() -> CaptureServer {
        CaptureServer::spawn(None)
    }

    fn start_tls(cert: &str, key: &str) -> CaptureServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        CaptureServer::spawn(Some(Arc::new(config)))
    }

    fn spawn(tls: Option<Arc<rustls::ServerConfig>>) -> CaptureServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let body = std::fs::read(fixture_path(FIXTURE)).unwrap();
        let server = CaptureServer {
            port,
            tls: tls.is_some(),
            heads: heads.clone(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (heads, body, tls) = (heads.clone(), body.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    match tls {
                        None => serve(stream, &heads, &body),
                        Some(config) => {
                            let Ok(conn) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            serve(rustls::StreamOwned::new(conn, stream), &heads, &body)
                        }
                    }
                });
            }
        });
        server
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Reads request heads and answers each with the fixture until the client hangs up.
fn serve<S: Read + Write>(stream: S, heads: &Mutex<Vec<String>>, body: &[u8]) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        heads.lock().unwrap().push(head);
        let stream = reader.get_mut();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if stream
            .write_all(response.as_bytes())
            .and_then(|_| stream.write_all(body))
            .and_then(|_| stream.flush())
            .is_err()
        {
            return;
        }
    }
}
