//! The loop: decide what is due next (poll, sleep, stop), run one poll through
//! fetch → decode → json → sink, log one line per poll, count failures.
//!
//! Single-threaded and blocking by design; every blocking call is bounded by a timeout
//! or a deadline, so a stop request is honoured within the shutdown budget.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::decode::{decode_feed, DecodeError};
use crate::fetch::{FetchError, Fetcher};
use crate::json::{write_feed, Envelope, FieldNames};
use crate::notify::Notifier;
use crate::signals::Signals;
use crate::sink::{Landed, Sink, SinkError};

/// Turns fetched bytes into the document to send; owns the reusable output buffer.
pub struct Pipeline {
    fetcher: Fetcher,
    names: FieldNames,
    source_id: String,
    event_type: String,
    document: Vec<u8>,
}

/// What one successful poll did, for its log line.
#[derive(Debug)]
pub struct PollReport {
    pub wire_bytes: u64,
    pub feed_bytes: usize,
    pub entities: usize,
    pub feed_timestamp: Option<u64>,
    pub document_bytes: usize,
    pub landed: Landed,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub enum PollError {
    Fetch(FetchError),
    Decode { url: String, error: DecodeError },
    Deliver(SinkError),
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Fetch(e) => e.fmt(f),
            PollError::Decode { url, error } => write!(f, "decode {url}: {error}"),
            PollError::Deliver(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PollError {}

/// Counters for the whole run; logged at shutdown (and exported as metrics later).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub polls: u64,
    pub delivered: u64,
    pub fetch_errors: u64,
    pub decode_errors: u64,
    pub delivery_errors: u64,
}

impl Stats {
    fn count(&mut self, result: &Result<PollReport, PollError>) {
        self.polls += 1;
        match result {
            Ok(_) => self.delivered += 1,
            Err(PollError::Fetch(_)) => self.fetch_errors += 1,
            Err(PollError::Decode { .. }) => self.decode_errors += 1,
            Err(PollError::Deliver(_)) => self.delivery_errors += 1,
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} polls, {} delivered, {} fetch errors, {} decode errors, {} delivery errors",
            self.polls, self.delivered, self.fetch_errors, self.decode_errors, self.delivery_errors
        )
    }
}

impl Pipeline {
    pub fn new(config: &Config) -> Pipeline {
        Pipeline {
            fetcher: Fetcher::new(&config.fetch),
            names: config.names,
            source_id: config.source_id.clone(),
            event_type: config.event_type.clone(),
            document: Vec::new(),
        }
    }

    /// One poll end to end. `delivery_budget` bounds the sink's retries.
    pub fn poll(
        &mut self,
        sink: &mut dyn Sink,
        delivery_budget: Duration,
    ) -> Result<PollReport, PollError> {
        let started = Instant::now();
        let fetched = self.fetcher.fetch().map_err(PollError::Fetch)?;
        let feed = decode_feed(&fetched.body).map_err(|error| PollError::Decode {
            url: self.fetcher.redacted_url().to_string(),
            error,
        })?;
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let envelope = Envelope {
            producer_timestamp: sent_at.as_secs_f64(),
            source_id: &self.source_id,
            event_type: &self.event_type,
        };
        self.document.clear();
        write_feed(&mut self.document, &feed, self.names, Some(&envelope));
        log::debug!(
            "decoded {} entities; document is {} bytes",
            feed.entity.len(),
            self.document.len()
        );
        let landed = sink
            .deliver(
                &self.document,
                sent_at.as_millis() as i64,
                Instant::now() + delivery_budget,
            )
            .map_err(PollError::Deliver)?;
        let report = PollReport {
            wire_bytes: fetched.wire_bytes,
            feed_bytes: fetched.body.len(),
            entities: feed.entity.len(),
            feed_timestamp: feed.header.as_ref().and_then(|h| h.timestamp),
            document_bytes: self.document.len(),
            landed,
            elapsed: started.elapsed(),
        };
        self.shrink_buffer();
        Ok(report)
    }

    /// A one-off huge feed shouldn't pin its buffer for the rest of the process's life.
    fn shrink_buffer(&mut self) {
        const KEEP: usize = 16 << 20;
        if self.document.capacity() > KEEP {
            self.document = Vec::new();
        }
    }
}

/// One line for a successful poll: bytes, entities, feed timestamp, where it landed, time.
pub fn describe(report: &PollReport, now_unix: u64) -> String {
    let feed_ts = match report.feed_timestamp {
        Some(ts) if ts <= now_unix => format!("feed ts {ts} ({}s old)", now_unix - ts),
        Some(ts) => format!("feed ts {ts} ({}s in the future)", ts - now_unix),
        None => "no feed ts".to_string(),
    };
    format!(
        "poll ok: {} bytes fetched, {} entities, {feed_ts}, {} bytes JSON -> {} in {} ms",
        report.wire_bytes,
        report.entities,
        report.document_bytes,
        report.landed,
        report.elapsed.as_millis()
    )
}

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Poll,
    Sleep(Duration),
    Stop,
}

pub fn next_step(now: Instant, next_poll: Instant, stop_requested: bool) -> Step {
    if stop_requested {
        Step::Stop
    } else if now >= next_poll {
        Step::Poll
    } else {
        Step::Sleep(next_poll - now)
    }
}

/// Fixed-rate schedule: the next slot after `scheduled`; if polls overran, the next slot
/// still in the future (missed slots are skipped, never fired in a burst).
pub fn next_poll_after(scheduled: Instant, interval: Duration, now: Instant) -> Instant {
    let next = scheduled + interval;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let missed = behind / interval.as_nanos().max(1) + 1;
    let skip = u32::try_from(missed).unwrap_or(u32::MAX);
    next + interval.saturating_mul(skip)
}

/// Result of `run`: counters and whether the last poll succeeded (for `--once`).
pub struct RunOutcome {
    pub stats: Stats,
    pub last_ok: bool,
}

pub fn run(
    config: &Config,
    pipeline: &mut Pipeline,
    sink: &mut dyn Sink,
    signals: &mut Signals,
    notifier: &Notifier,
) -> RunOutcome {
    let mut stats = Stats::default();
    let mut last_ok = false;
    let mut scheduled = Instant::now();
    notifier.ready();
    loop {
        notifier.watchdog();
        match next_step(Instant::now(), scheduled, signals.stop_requested()) {
            Step::Stop => break,
            Step::Sleep(d) => {
                // Wake in time for the systemd watchdog even on long intervals.
                let d = notifier.watchdog_interval().map_or(d, |w| d.min(w));
                signals.sleep(d);
            }
            Step::Poll => {
                let budget = delivery_budget(config, signals.stop_requested());
                let result = pipeline.poll(sink, budget);
                stats.count(&result);
                last_ok = result.is_ok();
                notifier.status(&log_poll(&result));
                if config.once {
                    break;
                }
                scheduled = next_poll_after(scheduled, config.poll_interval, Instant::now());
            }
        }
    }
    notifier.stopping();
    RunOutcome { stats, last_ok }
}

/// A stop requested mid-poll caps delivery at the shutdown budget.
fn delivery_budget(config: &Config, stop_requested: bool) -> Duration {
    if stop_requested {
        config.delivery_timeout.min(config.shutdown_timeout)
    } else {
        config.delivery_timeout
    }
}

/// Logs the poll's one line and returns it (for systemd's STATUS=).
fn log_poll(result: &Result<PollReport, PollError>) -> String {
    match result {
        Ok(report) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let line = describe(report, now);
            log::info!("{line}");
            line
        }
        Err(e) => {
            let line = format!("poll failed: {e}");
            log::error!("{line}");
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(next_step(t0, t0, false), Step::Poll);
        assert_eq!(next_step(t0, t0 + s, false), Step::Sleep(s));
        assert_eq!(next_step(t0, t0 + s, true), Step::Stop);
        assert_eq!(next_step(t0 + s, t0, true), Step::Stop);
    }

    #[test]
    fn fixed_rate_schedule_skips_missed_slots() {
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        // On time: next slot.
        assert_eq!(next_poll_after(t0, i, t0 + Duration::from_secs(1)), t0 + i);
        // Exactly at the next slot: that slot has passed, take the one after.
        assert_eq!(next_poll_after(t0, i, t0 + i), t0 + 2 * i);
        // A 35 s poll on a 10 s schedule: next is the 40 s slot, not three catch-up polls.
        assert_eq!(
            next_poll_after(t0, i, t0 + Duration::from_secs(35)),
            t0 + 4 * i
        );
    }

    #[test]
    fn poll_line_names_everything() {
        let report = PollReport {
            wire_bytes: 2048,
            feed_bytes: 2048,
            entities: 12,
            feed_timestamp: Some(1_000),
            document_bytes: 9000,
            landed: Landed::Kafka {
                topic: "dev_topic".into(),
                partition: 0,
                offset: 42,
            },
            elapsed: Duration::from_millis(7),
        };
        assert_eq!(
            describe(&report, 1_003),
            "poll ok: 2048 bytes fetched, 12 entities, feed ts 1000 (3s old), \
             9000 bytes JSON -> dev_topic[0]@42 in 7 ms"
        );
        assert!(describe(&report, 990).contains("(10s in the future)"));
    }

    #[test]
    fn stats_count_each_kind() {
        let mut stats = Stats::default();
        stats.count(&Err(PollError::Deliver(SinkError::Stdout(
            std::io::ErrorKind::BrokenPipe.into(),
        ))));
        assert_eq!(stats.polls, 1);
        assert_eq!(stats.delivery_errors, 1);
        assert_eq!(stats.delivered, 0);
    }
}
