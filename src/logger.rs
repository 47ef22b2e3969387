//! The log sink: one line per record on stderr, `2026-11-24T10:00:00.123Z INFO  [target] message`,
//! filtered by `RUST_LOG`'s env_logger syntax (`info`, `gtfs_rt_kafka=debug`,
//! `warn,gtfs_rt_kafka::supervisor=info`).
//!
//! Two promises the design card's simple_logger can't keep, hence our own 100 lines: a closed or
//! broken stderr never ends the process (simple_logger's `eprintln!` panics on EPIPE, and a
//! panic aborts), and a message can't forge lines (control characters from a broker's error
//! text or a config value are escaped). The HTTP and TLS crates log full request URLs (API keys
//! in the query) at debug, so they are capped at info whatever the filter asks.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Crates that must never log below info (they would print secrets).
const QUIET: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// `RUST_LOG`: a default level and per-target levels (longest matching prefix wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    pub default: LevelFilter,
    pub targets: Vec<(String, LevelFilter)>,
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter {
            default: LevelFilter::Info,
            targets: Vec::new(),
        }
    }
}

impl LogFilter {
    /// env_logger's syntax: comma-separated `level` and `target=level` parts.
    pub fn parse(spec: &str) -> Result<LogFilter, String> {
        let mut filter = LogFilter::default();
        let level = |s: &str| {
            s.trim().parse::<LevelFilter>().map_err(|_| {
                format!(
                    "{:?} in {spec:?} is not one of off, error, warn, info, debug, trace \
                     (syntax: LEVEL or TARGET=LEVEL, comma-separated)",
                    s.trim()
                )
            })
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                None => filter.default = level(part)?,
                Some((target, lvl)) if !target.trim().is_empty() => filter
                    .targets
                    .push((target.trim().replace('-', "_"), level(lvl)?)),
                Some(_) => return Err(format!("{part:?} in {spec:?} has no target before '='")),
            }
        }
        Ok(filter)
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        let chosen = self
            .targets
            .iter()
            .filter(|(t, _)| target == t || target.starts_with(&format!("{t}::")))
            .max_by_key(|(t, _)| t.len())
            .map_or(self.default, |(_, l)| *l);
        let crate_name = target.split("::").next().unwrap_or(target);
        if QUIET.contains(&crate_name) {
            chosen.min(LevelFilter::Info)
        } else {
            chosen
        }
    }

    /// The most verbose level any target may log at.
    fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, |a, b| a.max(b))
    }
}

struct StderrLogger {
    filter: LogFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.filter.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(now_millis(), record);
        // One write per line, so threads never interleave within a line. A failure (closed
        // stderr, full disk behind a redirect) loses this line and nothing else.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// A line outside the logger (usage errors, `convert`, `replay`): `gtfs-rt-kafka: ` and the
/// text, escaped like a log message. A closed stderr loses the line; it never panics (the
/// `eprintln!` macro does, and `panic = "abort"` would turn that into SIGABRT).
pub fn print_error(text: &str) {
    let mut line = String::with_capacity(text.len() + 16);
    line.push_str("gtfs-rt-kafka: ");
    escape_into(&mut line, text);
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Help and version text to stdout; a closed stdout is not an error worth a panic.
pub fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Installs the logger; a second call (tests) leaves the first in place.
pub fn init(filter: LogFilter) {
    let max = filter.max();
    if log::set_boxed_logger(Box::new(StderrLogger { filter })).is_ok() {
        log::set_max_level(max);
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn format_line(unix_ms: u64, record: &Record<'_>) -> String {
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "{} {:<5} [{}] ",
        utc_timestamp(unix_ms),
        record.level(),
        record.target()
    );
    let message = record.args().to_string();
    escape_into(&mut line, &message);
    line.push('\n');
    line
}

/// Control characters (newlines, ANSI escapes, …) as visible escapes: one record, one line.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix milliseconds (proleptic Gregorian, UTC).
pub(crate) fn utc_timestamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc_timestamp(1_732_442_400_999), "2024-11-24T10:00:00.999Z");
        assert_eq!(utc_timestamp(4_102_444_799_000), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn env_logger_syntax() {
        let f = LogFilter::parse("warn,gtfs_rt_kafka=debug,gtfs_rt_kafka::fetch=trace").unwrap();
        assert_eq!(f.level_for("gtfs_rt_kafka::feed_loop"), LevelFilter::Debug);
        assert_eq!(f.level_for("gtfs_rt_kafka::fetch"), LevelFilter::Trace);
        assert_eq!(f.level_for("gtfs_rt_kafka_other"), LevelFilter::Warn);
        assert_eq!(f.level_for("ureq"), LevelFilter::Warn);
        assert_eq!(f.max(), LevelFilter::Trace);
        let f = LogFilter::parse("gtfs-rt-kafka=info").unwrap();
        assert_eq!(f.level_for("gtfs_rt_kafka::x"), LevelFilter::Info);
        assert_eq!(
            LogFilter::parse("DEBUG").unwrap().default,
            LevelFilter::Debug
        );
        assert!(LogFilter::parse("loud").unwrap_err().contains("not one of"));
        assert!(LogFilter::parse("=debug").is_err());
        assert!(LogFilter::parse("x=loud").is_err());
    }

    #[test]
    fn http_and_tls_crates_never_go_below_info() {
        let f = LogFilter::parse("trace").unwrap();
        for target in ["ureq", "ureq::run", "ureq_proto::client", "rustls::client"] {
            assert_eq!(f.level_for(target), LevelFilter::Info, "{target}");
        }
        let f = LogFilter::parse("ureq=trace").unwrap();
        assert_eq!(f.level_for("ureq::pool"), LevelFilter::Info);
    }

    #[test]
    fn a_message_cannot_forge_a_line() {
        let record = Record::builder()
            .args(format_args!(
                "broker said: oops\n2026-01-01T00:00:00.000Z INFO  [x] fake \x1b[31mred"
            ))
            .level(log::Level::Error)
            .target("gtfs_rt_kafka::outbox")
            .build();
        let line = format_line(0, &record);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with("oops\\n2026-01-01T00:00:00.000Z INFO  [x] fake \\u{1b}[31mred\n"));
        assert!(line.starts_with("1970-01-01T00:00:00.000Z ERROR [gtfs_rt_kafka::outbox] "));
    }
}
