//! The loop: decide what is due next (poll, send, sleep, stop), run polls through
//! fetch → decode → json into the queue, and send the queue to the sink between polls.
//!
//! Single-threaded and blocking by design. Polling never waits for Kafka: a send attempt is
//! bounded by the next poll's slot, and unsent snapshots wait in the byte-bounded queue (and
//! the spool, when configured). Every blocking call has a timeout or a deadline, so a stop
//! request is honoured within the shutdown budget.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Mode, RecordTimestamp, SkipUnchanged};
use crate::decode::{decode_entities, DecodeError};
use crate::fetch::{Fetch, FetchError, Fetched, Fetcher};
use crate::json::{transcode_feed, write_entity, Envelope, FieldNames};
use crate::metrics::{self, MetricsServer};
use crate::notify::Notifier;
use crate::queue::{Queue, RecordSpan, Snapshot};
use crate::signals::Signals;
use crate::sink::{Landed, OutRecord, Sink, SinkError};
use crate::spool::{Spool, SpoolError};

/// The most document bytes sent in one produce request when catching up. Kept under the
/// brokers' default 1 MB `message.max.bytes`, which applies to a whole batch.
const MAX_SEND_BYTES: usize = 512 * 1024;
/// A send window shorter than this before the next poll is not worth starting.
const MIN_SEND_WINDOW: Duration = Duration::from_millis(100);
const RETRY_BASE: Duration = Duration::from_millis(250);
/// A failed fetch is tried again this many times within its interval, a quarter interval
/// apart (at most `MAX_FETCH_RETRY_GAP`), before waiting for the next slot.
const FETCH_RETRIES: u32 = 2;
const MAX_FETCH_RETRY_GAP: Duration = Duration::from_secs(10);
/// Polls start up to this share of the interval late (at most `MAX_POLL_JITTER`), so many
/// gateways started together don't hit a feed server in the same millisecond.
const POLL_JITTER_SHARE: u32 = 50;
const MAX_POLL_JITTER: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Turns fetched bytes into the records to send.
pub struct Pipeline {
    fetcher: Fetcher,
    names: FieldNames,
    mode: Mode,
    record_timestamp: RecordTimestamp,
    source_id: String,
    event_type: String,
    /// Size of the last payload, to allocate the next one in one go.
    last_payload_len: usize,
    skip_unchanged: SkipUnchanged,
    /// CRC32C and length of the last body that became a snapshot.
    last_body: Option<(u32, usize)>,
    /// `header.timestamp` of the last feed that became a snapshot.
    last_feed_timestamp: Option<u64>,
}

/// A poll that found nothing new to send, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchanged {
    NotModified,
    SameBody(usize),
    SameTimestamp(u64),
}

impl fmt::Display for Unchanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unchanged::NotModified => f.write_str("304 Not Modified"),
            Unchanged::SameBody(n) => write!(f, "same {n}-byte body as the last snapshot"),
            Unchanged::SameTimestamp(ts) => {
                write!(f, "header.timestamp {ts} same as the last snapshot")
            }
        }
    }
}

/// What a poll produced.
#[derive(Debug)]
pub enum PollOutcome {
    New(Polled),
    Unchanged(Unchanged),
}

/// What one successful fetch + convert produced.
#[derive(Debug)]
pub struct Polled {
    pub payload: Vec<u8>,
    pub records: Vec<RecordSpan>,
    pub timestamp_ms: i64,
    pub wire_bytes: u64,
    pub entities: usize,
    pub feed_timestamp: Option<u64>,
    pub document_bytes: usize,
}

#[derive(Debug)]
pub enum PollError {
    Fetch(FetchError),
    Decode { url: String, error: DecodeError },
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Fetch(e) => e.fmt(f),
            PollError::Decode { url, error } => write!(f, "decode {url}: {error}"),
        }
    }
}

impl std::error::Error for PollError {}

impl Pipeline {
    pub fn new(config: &Config) -> Pipeline {
        Pipeline {
            fetcher: Fetcher::new(&config.fetch)
                .with_conditional_get(config.skip_unchanged != SkipUnchanged::Off),
            names: config.names,
            mode: config.mode,
            record_timestamp: config.record_timestamp,
            source_id: config.source_id.clone(),
            event_type: config.event_type.clone(),
            last_payload_len: 0,
            skip_unchanged: config.skip_unchanged,
            last_body: None,
            last_feed_timestamp: None,
        }
    }

    /// Whether this body is the same snapshot as the last one (when asked to skip those).
    fn unchanged(&self, body: &[u8], feed_timestamp: Option<u64>) -> Option<Unchanged> {
        if self.skip_unchanged == SkipUnchanged::Off {
            return None;
        }
        if self.last_body == Some((crc32c::crc32c(body), body.len())) {
            return Some(Unchanged::SameBody(body.len()));
        }
        // Only an equal timestamp counts: one going backwards (a load balancer switching
        // between servers) is new data, so a stale server can never wedge the feed.
        match (
            self.skip_unchanged,
            feed_timestamp,
            self.last_feed_timestamp,
        ) {
            (SkipUnchanged::Timestamp, Some(ts), Some(last)) if ts == last => {
                Some(Unchanged::SameTimestamp(ts))
            }
            _ => None,
        }
    }

    /// Fetches, decodes and converts one snapshot. `producer_timestamp` is taken here, right
    /// before the documents are written: the moment they are handed on for sending.
    pub fn poll(&mut self) -> Result<PollOutcome, PollError> {
        let fetched = match self.fetcher.fetch().map_err(PollError::Fetch)? {
            Fetch::Body(fetched) => fetched,
            Fetch::NotModified => return Ok(PollOutcome::Unchanged(Unchanged::NotModified)),
        };
        self.convert(&fetched).map_err(|error| PollError::Decode {
            url: self.fetcher.redacted_url().to_string(),
            error,
        })
    }

    /// Decodes and converts fetched bytes (a poll's, or an archived capture's in `replay`).
    pub fn convert(&mut self, fetched: &Fetched) -> Result<PollOutcome, DecodeError> {
        let feed = decode_entities(&fetched.body)?;
        if let Some(unchanged) = self.unchanged(&fetched.body, feed.header().timestamp) {
            return Ok(PollOutcome::Unchanged(unchanged));
        }
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let envelope = Envelope {
            producer_timestamp: sent_at.as_secs_f64(),
            source_id: &self.source_id,
            event_type: &self.event_type,
        };
        let feed_timestamp = feed.header().timestamp;
        let send_ms = i64::try_from(sent_at.as_millis()).unwrap_or(i64::MAX);
        let timestamp_ms = match (self.record_timestamp, feed_timestamp) {
            (RecordTimestamp::Feed, Some(ts)) => {
                i64::try_from(ts.saturating_mul(1000)).unwrap_or(send_ms)
            }
            _ => send_ms,
        };
        let mut payload = Vec::with_capacity(self.last_payload_len + 4096);
        let records = match self.mode {
            Mode::Feed => {
                transcode_feed(&mut payload, &fetched.body, self.names, Some(&envelope))?;
                vec![span(None, 0, payload.len())]
            }
            Mode::Entity => {
                let mut records = Vec::with_capacity(feed.len());
                feed.try_for_each(|entity| {
                    // The key is the entity id; an entity without one gets a null key.
                    let key_start = entity.id.as_ref().map(|id| {
                        let start = payload.len();
                        payload.extend_from_slice(id.as_bytes());
                        start
                    });
                    let value_start = payload.len();
                    write_entity(
                        &mut payload,
                        feed.header(),
                        entity,
                        self.names,
                        Some(&envelope),
                    );
                    records.push(span(key_start, value_start, payload.len()));
                })?;
                records
            }
        };
        self.last_payload_len = payload.len();
        if self.skip_unchanged != SkipUnchanged::Off {
            self.last_body = Some((crc32c::crc32c(&fetched.body), fetched.body.len()));
            self.last_feed_timestamp = feed_timestamp;
        }
        log::debug!(
            "decoded {} entities; {} records, {} bytes",
            feed.len(),
            records.len(),
            payload.len()
        );
        Ok(PollOutcome::New(Polled {
            document_bytes: payload.len(),
            payload,
            records,
            timestamp_ms,
            wire_bytes: fetched.wire_bytes,
            entities: feed.len(),
            feed_timestamp,
        }))
    }
}

/// A record's span from offsets in the payload: key from `key_start` to `value_start`.
fn span(key_start: Option<usize>, value_start: usize, end: usize) -> RecordSpan {
    // Payloads are far below 4 GiB (MAX_BODY_BYTES), so offsets fit in u32.
    let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    RecordSpan {
        key: key_start.map(|k| (at(k), at(value_start - k))),
        value: (at(value_start), at(end - value_start)),
    }
}

/// Counters for the whole run; the last log line prints them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub polls: u64,
    /// Snapshots acknowledged by the sink (including ones from the spool).
    pub delivered: u64,
    pub fetch_errors: u64,
    pub decode_errors: u64,
    /// Send attempts that failed (each is retried; not a loss).
    pub delivery_errors: u64,
    /// Polls that found nothing new (304, same body, same header.timestamp).
    pub skipped: u64,
    /// Snapshots dropped because the queue was full.
    pub dropped: u64,
    /// Snapshots the broker refused for what they are (too large, invalid).
    pub rejected: u64,
    /// Single entity records refused (entity mode); the rest of their snapshot went out.
    pub rejected_records: u64,
    /// Snapshots still unsent at exit: kept in the spool, or lost without one.
    pub unsent: u64,
    pub spool_errors: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} polls, {} delivered, {} fetch errors, {} decode errors, {} unchanged, \
             {} delivery errors, {} dropped (queue full), {} rejected by broker, \
             {} unsent at exit",
            self.polls,
            self.delivered,
            self.fetch_errors,
            self.decode_errors,
            self.skipped,
            self.delivery_errors,
            self.dropped,
            self.rejected,
            self.unsent
        )
    }
}

/// One line for a poll delivered at once: bytes, entities, feed timestamp, where, time.
pub fn describe(polled: &Polled, landed: &Landed, elapsed: Duration, now_unix: u64) -> String {
    format!(
        "poll ok: {} -> {landed} in {} ms",
        describe_poll(polled, now_unix),
        elapsed.as_millis()
    )
}

fn describe_poll(polled: &Polled, now_unix: u64) -> String {
    let feed_ts = match polled.feed_timestamp {
        Some(ts) if ts <= now_unix => format!("feed ts {ts} ({}s old)", now_unix - ts),
        Some(ts) => format!("feed ts {ts} ({}s in the future)", ts - now_unix),
        None => "no feed ts".to_string(),
    };
    format!(
        "{} bytes fetched, {} entities, {feed_ts}, {} bytes JSON",
        polled.wire_bytes, polled.entities, polled.document_bytes
    )
}

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Poll,
    Send,
    Sleep(Duration),
    Stop,
}

/// `send_at`: when the queue may be sent next (None when it is empty).
pub fn next_step(
    now: Instant,
    next_poll: Instant,
    send_at: Option<Instant>,
    stop_requested: bool,
) -> Step {
    if stop_requested {
        return Step::Stop;
    }
    if now >= next_poll {
        return Step::Poll;
    }
    match send_at {
        Some(at) if now >= at && next_poll - now >= MIN_SEND_WINDOW => Step::Send,
        Some(at) if at < next_poll && now < at => Step::Sleep(at - now),
        _ => Step::Sleep(next_poll - now),
    }
}

/// Fixed-rate schedule: the slot after `scheduled`, even if it just passed (a send attempt
/// ends right at the slot, so "now" is often a hair late). Only when polls overran by half
/// an interval or more are the missed slots skipped — never fired in a burst.
pub fn next_poll_after(scheduled: Instant, interval: Duration, now: Instant) -> Instant {
    let next = scheduled + interval;
    let late = now.saturating_duration_since(next);
    if late < interval / 2 {
        return next;
    }
    let missed = late.as_nanos() / interval.as_nanos().max(1) + 1;
    let skip = u32::try_from(missed).unwrap_or(u32::MAX);
    next + interval.saturating_mul(skip)
}

/// A little random delay for one poll: up to 2 % of the interval, at most half a second.
pub fn poll_jitter(interval: Duration, noise: u64) -> Duration {
    let max = (interval / POLL_JITTER_SHARE).min(MAX_POLL_JITTER);
    let max_micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(noise % max_micros.saturating_add(1))
}

/// Exponential backoff between failed send attempts, with ±25 % jitter from `noise`.
pub fn retry_delay(failures: u32, noise: u64) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(RETRY_MAX);
    let jitter = (noise % 501) as f64 / 1000.0 + 0.75;
    capped.mul_f64(jitter)
}

/// Why the loop could not start; `Display` names the setting to fix.
#[derive(Debug)]
pub enum StartError {
    Spool(SpoolError),
    Metrics { addr: String, cause: std::io::Error },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spool(e) => write!(f, "{e} (check SPOOL_DIR / --spool-dir)"),
            StartError::Metrics { addr, cause } => write!(
                f,
                "cannot listen on {addr}: {cause} (check METRICS_ADDR / --metrics-addr)"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// Far enough ahead to mean "not before something else happens".
const FAR_FUTURE: Duration = Duration::from_secs(24 * 3600);

/// The loop for one or more feeds, in one thread: each turn, every feed with something due
/// acts (poll or send); otherwise the loop sleeps until the earliest feed needs it, waking
/// at once on SIGTERM/SIGINT. With `--once`, it ends when every feed has polled once.
pub fn run_all(
    mut runners: Vec<Runner<'_>>,
    metrics: Option<&MetricsServer>,
    signals: &mut Signals,
    notifier: &Notifier,
) -> Vec<RunOutcome> {
    let multi = runners.len() > 1;
    for r in &mut runners {
        if multi {
            r.tag = format!("[{}] ", r.config.source_id);
        }
    }
    notifier.ready();
    loop {
        notifier.watchdog();
        if let Some(server) = metrics {
            let views: Vec<(String, metrics::View)> = runners
                .iter()
                .map(|r| (r.config.source_id.clone(), r.metrics_view()))
                .collect();
            server.serve_pending(&views);
        }
        if signals.stop_requested() {
            break;
        }
        if runners.iter().all(|r| r.config.once && r.polled_once) {
            break;
        }
        let now = Instant::now();
        let mut acted = false;
        for i in 0..runners.len() {
            let horizon = runners
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| r.next_wake(now))
                .min()
                .unwrap_or(now + FAR_FUTURE);
            let before = runners[i].next_wake(now);
            if before > now {
                continue;
            }
            if let Some(line) = runners[i].act(now, horizon) {
                notifier.status(line.as_ref().unwrap_or_else(|e| e));
            }
            acted = true;
        }
        if acted {
            continue;
        }
        let now = Instant::now();
        let wake = runners
            .iter()
            .map(|r| r.next_wake(now))
            .min()
            .unwrap_or(now + FAR_FUTURE);
        let mut nap = wake.saturating_duration_since(now);
        // Wake in time for the systemd watchdog even on long intervals, and often enough to
        // answer scrapes when a metrics listener is open.
        if let Some(w) = notifier.watchdog_interval() {
            nap = nap.min(w);
        }
        if metrics.is_some() {
            nap = nap.min(metrics::SERVICE_INTERVAL);
        }
        signals.sleep(nap);
    }
    notifier.stopping();
    let deadline = Instant::now()
        + runners
            .first()
            .map_or(Duration::ZERO, |r| r.config.shutdown_timeout);
    runners.into_iter().map(|r| r.finish(deadline)).collect()
}

/// What a failed fetch tells the scheduler.
struct FetchFailure {
    worth_retrying: bool,
    retry_after: Option<Duration>,
}

/// What one successful send attempt delivered.
struct Sent {
    records: usize,
    last: Option<Landed>,
}

/// Result of `run`: counters and whether the last poll was delivered (for `--once`).
pub struct RunOutcome {
    pub stats: Stats,
    pub last_ok: bool,
}

/// The loop's state: queue, optional spool, counters, retry schedule.
pub struct Runner<'a> {
    config: &'a Config,
    pipeline: Pipeline,
    sink: &'a mut dyn Sink,
    queue: Queue,
    spool: Option<Spool>,
    stats: Stats,
    next_seq: u64,
    failures: u32,
    retry_at: Option<Instant>,
    /// What the last poll's fetch failure allows: an early retry, or a server-set pause.
    last_fetch_failure: Option<FetchFailure>,
    /// The fixed-rate schedule's current slot, and when the next poll really runs.
    slot: Instant,
    due: Instant,
    fetch_retries_left: u32,
    polled_once: bool,
    last_ok: bool,
    /// "[source_id] " in front of log lines when several feeds share the process.
    tag: String,
    last_delivery_unix: Option<f64>,
    last_send_seconds: Option<f64>,
    started_unix: f64,
    /// How many snapshots the failed attempt carried: the retry resends exactly those, so
    /// the idempotent producer's sequence numbers match and the broker drops a duplicate.
    retry_batch: Option<usize>,
}

impl<'a> Runner<'a> {
    /// Opens the spool (if configured) and queues what a previous run left in it.
    pub fn new(
        config: &'a Config,
        pipeline: Pipeline,
        sink: &'a mut dyn Sink,
    ) -> Result<Runner<'a>, StartError> {
        let mut runner = Runner {
            config,
            pipeline,
            sink,
            queue: Queue::new(config.queue_max_bytes),
            spool: None,
            stats: Stats::default(),
            next_seq: 1,
            failures: 0,
            retry_at: None,
            retry_batch: None,
            last_fetch_failure: None,
            slot: Instant::now(),
            due: Instant::now(),
            fetch_retries_left: FETCH_RETRIES,
            polled_once: false,
            last_ok: false,
            tag: String::new(),
            last_delivery_unix: None,
            last_send_seconds: None,
            started_unix: metrics::now_unix(),
        };

        if let Some(dir) = &config.spool_dir {
            let (spool, recovered) = Spool::open(dir).map_err(StartError::Spool)?;
            runner.next_seq = recovered.next_seq;
            if !recovered.snapshots.is_empty() || recovered.corrupt > 0 {
                log::info!(
                    "spool {}: {} snapshots from a previous run are sent first ({} corrupt skipped)",
                    dir.display(),
                    recovered.snapshots.len(),
                    recovered.corrupt
                );
            }
            runner.spool = Some(spool);
            for snapshot in recovered.snapshots {
                runner.enqueue(snapshot);
            }
        }
        Ok(runner)
    }

    /// When this feed next needs the loop: its next poll, or its queue's next send.
    fn next_wake(&self, now: Instant) -> Instant {
        if self.config.once && self.polled_once {
            return now + FAR_FUTURE;
        }
        match (!self.queue.is_empty()).then(|| self.retry_at.unwrap_or(now)) {
            Some(send_at) if send_at < self.due => send_at,
            _ => self.due,
        }
    }

    /// Does what is due for this feed at `now`, if anything: a poll, or a send of the queue.
    /// `horizon` is when another feed needs the loop; sends stop by then (with a second of
    /// grace) so one feed's outage never delays another's polls. Returns the poll's line.
    fn act(&mut self, now: Instant, horizon: Instant) -> Option<Result<String, String>> {
        if self.config.once && self.polled_once {
            return None;
        }
        let horizon = horizon.max(now + Duration::from_secs(1));
        let send_at = (!self.queue.is_empty()).then(|| self.retry_at.unwrap_or(now));
        match next_step(now, self.due, send_at, false) {
            Step::Poll => Some(self.poll_now(now, horizon)),
            Step::Send => {
                let deadline = (now + self.config.delivery_timeout)
                    .min(self.due)
                    .min(horizon);
                self.send_backlog(deadline);
                None
            }
            Step::Sleep(_) | Step::Stop => None,
        }
    }

    /// One poll (sending its snapshot), then the next due time: the next slot plus jitter,
    /// an early retry of a failed fetch, or a server's Retry-After.
    fn poll_now(&mut self, now: Instant, horizon: Instant) -> Result<String, String> {
        let interval = self.config.poll_interval;
        let next_slot = next_poll_after(self.slot, interval, now);
        let deadline = if self.config.once {
            now + self.config.delivery_timeout
        } else {
            (now + self.config.delivery_timeout)
                .min(next_slot)
                .min(horizon)
        };
        let line = self.poll_and_send(now, deadline);
        self.polled_once = true;
        self.last_ok = line.is_ok();
        self.write_metrics_textfile();
        let now = Instant::now();
        let retry_soon = now + (interval / 4).min(MAX_FETCH_RETRY_GAP);
        match self.last_fetch_failure.take() {
            Some(FetchFailure {
                retry_after: Some(wait),
                ..
            }) => {
                self.slot = next_poll_after(self.slot, interval, now);
                self.due = self.slot.max(now + wait);
                self.fetch_retries_left = FETCH_RETRIES;
                log::info!(
                    "{}next poll in {} s (Retry-After)",
                    self.tag,
                    (self.due - now).as_secs()
                );
            }
            Some(FetchFailure {
                worth_retrying: true,
                ..
            }) if self.fetch_retries_left > 0 && retry_soon < next_slot => {
                self.fetch_retries_left -= 1;
                self.due = retry_soon;
            }
            _ => {
                self.slot = next_poll_after(self.slot, interval, now);
                self.due = self.slot + poll_jitter(interval, jitter_noise());
                self.fetch_retries_left = FETCH_RETRIES;
            }
        }
        line
    }

    /// After the loop: deliver what is queued within the budget, account for the rest.
    fn finish(mut self, deadline: Instant) -> RunOutcome {
        // `--once` already spent its delivery budget on the poll.
        let deadline = if self.config.once {
            Instant::now()
        } else {
            deadline
        };
        self.drain(deadline);
        RunOutcome {
            last_ok: self.last_ok && self.stats.unsent == 0,
            stats: self.stats,
        }
    }

    /// Runs this one feed until stopped (or after one poll with `--once`).
    pub fn run(self, signals: &mut Signals, notifier: &Notifier) -> RunOutcome {
        let mut outcomes = run_all(vec![self], None, signals, notifier);
        outcomes.remove(0)
    }

    /// One poll; when nothing older is waiting, its snapshot is sent right away. Returns the
    /// poll's log line: Ok when the snapshot was delivered, Err otherwise.
    fn poll_and_send(&mut self, started: Instant, deadline: Instant) -> Result<String, String> {
        self.stats.polls += 1;
        let mut polled = match self.pipeline.poll() {
            Ok(PollOutcome::New(p)) => p,
            Ok(PollOutcome::Unchanged(why)) => {
                self.stats.skipped += 1;
                let line = format!("{}poll unchanged: {why}; nothing sent", self.tag);
                log::info!("{line}");
                return Ok(line);
            }
            Err(e) => {
                match &e {
                    PollError::Fetch(f) => {
                        self.stats.fetch_errors += 1;
                        self.last_fetch_failure = Some(FetchFailure {
                            worth_retrying: f.worth_retrying_soon(),
                            retry_after: f.retry_after(),
                        });
                    }
                    PollError::Decode { .. } => self.stats.decode_errors += 1,
                }
                let line = format!("{}poll failed: {e}", self.tag);
                log::error!("{line}");
                return Err(line);
            }
        };
        let backlog = self.queue.len();
        let seq = self.next_seq;
        self.next_seq += 1;
        let snapshot = Snapshot::new(
            seq,
            std::mem::take(&mut polled.payload),
            std::mem::take(&mut polled.records),
            polled.timestamp_ms,
        );
        self.enqueue(snapshot);
        let now_unix = unix_now();
        if backlog > 0 {
            let line = format!(
                "{}poll ok: {}; queued behind {backlog} unsent snapshots",
                self.tag,
                describe_poll(&polled, now_unix)
            );
            log::warn!("{line}");
            self.send_backlog(deadline);
            return if self.queue.is_empty() {
                Ok(line)
            } else {
                Err(line)
            };
        }
        // Entity mode may need several requests for one snapshot.
        let mut last = None;
        while !self.queue.is_empty() {
            match self.send_batch(deadline) {
                Ok(sent) => last = sent.last.or(last),
                Err(e) => {
                    let line = format!(
                        "{}poll ok: {}; not delivered yet ({} queued): {e}",
                        self.tag,
                        describe_poll(&polled, now_unix),
                        self.queue.len()
                    );
                    log::warn!("{line}");
                    return Err(line);
                }
            }
        }
        let last = last.unwrap_or(Landed::Stdout);
        self.last_send_seconds = Some(started.elapsed().as_secs_f64());
        let line = format!(
            "{}{}",
            self.tag,
            describe(&polled, &last, started.elapsed(), now_unix)
        );
        log::info!("{line}");
        Ok(line)
    }

    /// Sends queued snapshots oldest-first until the queue is empty, an attempt fails, or
    /// the deadline comes.
    fn send_backlog(&mut self, deadline: Instant) {
        while !self.queue.is_empty() && Instant::now() < deadline {
            match self.send_batch(deadline) {
                Ok(sent) => {
                    if let Some(last) = sent.last {
                        log::info!(
                            "{}delivered {} queued records (last {last}); {} snapshots still queued",
                            self.tag,
                            sent.records,
                            self.queue.len()
                        );
                    }
                }
                Err(e) => {
                    log::warn!(
                        "{}deliver failed ({} queued): {e}",
                        self.tag,
                        self.queue.len()
                    );
                    return;
                }
            }
        }
    }

    /// One send attempt of the queue's next records. What landed is acknowledged (finished
    /// snapshots leave the queue and the spool); on failure the same undelivered records
    /// are retried later, and a record the broker can never accept is set aside.
    fn send_batch(&mut self, deadline: Instant) -> Result<Sent, SinkError> {
        let max_records = self.retry_batch.unwrap_or(usize::MAX);
        let batch = self.queue.next_batch(MAX_SEND_BYTES, max_records);
        let records: Vec<OutRecord<'_>> = batch
            .iter()
            .filter_map(|&(si, ri)| {
                let snapshot = self.queue.get(si)?;
                let (key, value) = snapshot.record(ri);
                Some(OutRecord {
                    key,
                    value,
                    timestamp_ms: snapshot.timestamp_ms,
                })
            })
            .collect();
        let (landed, error) = self.sink.deliver(&records, deadline);
        drop(records);
        let acked: Vec<(usize, u32)> = batch
            .iter()
            .zip(&landed)
            .filter_map(|(b, l)| l.as_ref().map(|_| *b))
            .collect();
        let sent = Sent {
            records: acked.len(),
            last: landed.iter().rev().flatten().next().cloned(),
        };
        for s in self.queue.acknowledge(&acked) {
            self.stats.delivered += 1;
            self.unspool(&s);
        }
        if !acked.is_empty() {
            self.last_delivery_unix = Some(metrics::now_unix());
        }
        let Some(e) = error else {
            self.failures = 0;
            self.retry_at = None;
            self.retry_batch = None;
            return Ok(sent);
        };
        let unacked = batch.len() - acked.len();
        if e.rejects_data() && unacked == 1 {
            let refused = batch
                .iter()
                .zip(&landed)
                .find_map(|(b, l)| l.is_none().then_some(*b));
            self.set_aside(refused, &e);
            self.retry_batch = None;
            return Err(e);
        }
        self.stats.delivery_errors += 1;
        self.failures += 1;
        // A batch refused for size is retried one record at a time at once; otherwise the
        // same undelivered records are resent after a backoff.
        let delay = if e.rejects_data() {
            self.retry_batch = Some(1);
            Duration::ZERO
        } else {
            self.retry_batch = Some(unacked.max(1));
            retry_delay(self.failures, jitter_noise())
        };
        self.retry_at = Some(Instant::now() + delay);
        Err(e)
    }

    /// Takes a record the broker refused for what it is out of the queue: a whole feed-mode
    /// snapshot (kept in the spool's rejected/), or one entity of an entity-mode snapshot.
    fn set_aside(&mut self, refused: Option<(usize, u32)>, e: &SinkError) {
        let Some((si, ri)) = refused else { return };
        let single = self.queue.get(si).is_some_and(|s| s.records.len() == 1);
        if single && si == 0 {
            self.stats.rejected += 1;
            if let Some(s) = self.queue.pop_front() {
                let kept = self.keep_rejected(&s);
                log::error!(
                    "snapshot {} ({} bytes of JSON) refused by the broker, {kept}: {e}",
                    s.seq,
                    s.payload.len()
                );
            }
            return;
        }
        self.stats.rejected_records += 1;
        if let Some(s) = self.queue.get(si) {
            log::error!(
                "record {ri} of snapshot {} ({} bytes) refused by the broker and dropped: {e}",
                s.seq,
                s.record_len(ri)
            );
        }
        for done in self.queue.acknowledge(&[(si, ri)]) {
            self.stats.delivered += 1;
            self.unspool(&done);
        }
    }

    /// On stop: try to deliver what is queued before `deadline`; account for the rest.
    fn drain(&mut self, deadline: Instant) {
        while !self.queue.is_empty() && Instant::now() < deadline {
            if self.send_batch(deadline).is_err() {
                let wait = self.retry_at.map_or(Duration::ZERO, |t| {
                    t.saturating_duration_since(Instant::now())
                });
                std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
        let left = self.queue.len() as u64;
        self.stats.unsent = left;
        if left == 0 {
            return;
        }
        if self.spool.is_some() {
            log::warn!("{left} unsent snapshots stay in the spool for the next start");
        } else {
            log::error!("{left} unsent snapshots lost at exit (set SPOOL_DIR to keep them)");
        }
    }

    /// Spools (if configured) and queues a snapshot; drops the oldest beyond the bound.
    fn enqueue(&mut self, mut snapshot: Snapshot) {
        if let (Some(spool), false) = (&self.spool, snapshot.spooled) {
            match spool.write(&snapshot) {
                Ok(()) => snapshot.spooled = true,
                Err(e) => {
                    self.stats.spool_errors += 1;
                    log::error!("{e}; snapshot {} kept in memory only", snapshot.seq);
                }
            }
        }
        let dropped = self.queue.push(snapshot);
        if !dropped.is_empty() {
            self.stats.dropped += dropped.len() as u64;
            log::warn!(
                "queue full (QUEUE_MAX_BYTES {}): dropped the {} oldest unsent snapshots \
                 ({} dropped so far)",
                self.config.queue_max_bytes,
                dropped.len(),
                self.stats.dropped
            );
            for s in &dropped {
                self.unspool(s);
            }
        }
    }

    /// A refused snapshot leaves the queue; with a spool its file is kept aside.
    fn keep_rejected(&mut self, snapshot: &Snapshot) -> String {
        match (&self.spool, snapshot.spooled) {
            (Some(spool), true) => match spool.reject(snapshot.seq) {
                Ok(path) => format!("kept in {}", path.display()),
                Err(e) => {
                    self.stats.spool_errors += 1;
                    format!("dropped ({e})")
                }
            },
            _ => "dropped (no SPOOL_DIR to keep it)".to_string(),
        }
    }

    /// `replay`: sends archived captures (.pb, gzipped or not) in the given order, each
    /// delivered before the next is read; retries until delivered or stopped. Progress goes
    /// to a terminal as one updating line, otherwise one log line per file.
    pub fn replay(mut self, files: &[std::path::PathBuf], signals: &mut Signals) -> RunOutcome {
        let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut all_ok = true;
        for (i, path) in files.iter().enumerate() {
            if signals.stop_requested() {
                break;
            }
            self.stats.polls += 1;
            let settings = crate::config::FetchSettings {
                url: format!("file://{}", path.display()),
                ..self.config.fetch.clone()
            };
            let converted = match Fetcher::new(&settings).fetch() {
                Ok(Fetch::Body(body)) => self.pipeline.convert(&body).map_err(|e| e.to_string()),
                Ok(Fetch::NotModified) => Err("not modified".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let polled = match converted {
                Ok(PollOutcome::New(p)) => p,
                Ok(PollOutcome::Unchanged(why)) => {
                    log::info!("replay {}: {why}", path.display());
                    continue;
                }
                Err(e) => {
                    self.stats.decode_errors += 1;
                    all_ok = false;
                    log::error!("replay {}: {e}", path.display());
                    continue;
                }
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let records = polled.records.len();
            self.enqueue(Snapshot::new(
                seq,
                polled.payload,
                polled.records,
                polled.timestamp_ms,
            ));
            while !self.queue.is_empty() && !signals.stop_requested() {
                let deadline = Instant::now() + self.config.delivery_timeout;
                if let Err(e) = self.send_batch(deadline) {
                    log::warn!("replay {}: {e}; retrying", path.display());
                    let wait = self.retry_at.map_or(Duration::ZERO, |t| {
                        t.saturating_duration_since(Instant::now())
                    });
                    signals.sleep(wait);
                }
            }
            if on_terminal {
                eprint!(
                    "\rreplay: {}/{} files, {} delivered, {} failed ",
                    i + 1,
                    files.len(),
                    self.stats.delivered,
                    self.stats.decode_errors
                );
            } else {
                log::info!(
                    "replay {}/{}: {} ({records} records)",
                    i + 1,
                    files.len(),
                    path.display()
                );
            }
        }
        if on_terminal {
            eprintln!();
        }
        self.drain(Instant::now());
        RunOutcome {
            last_ok: all_ok && self.stats.unsent == 0 && !signals.stop_requested(),
            stats: self.stats,
        }
    }

    fn metrics_view(&self) -> metrics::View {
        metrics::View {
            stats: self.stats.clone(),
            queue_snapshots: self.queue.len(),
            queue_bytes: self.queue.bytes(),
            last_delivery_unix: self.last_delivery_unix,
            last_send_seconds: self.last_send_seconds,
            started_unix: self.started_unix,
            poll_interval: self.config.poll_interval,
        }
    }

    /// The textfile of a single-feed run (a multi-feed run names one file per feed).
    fn write_metrics_textfile(&self) {
        if let Some(path) = &self.config.metrics_textfile {
            let views = [(self.config.source_id.clone(), self.metrics_view())];
            if let Err(e) = metrics::write_textfile(path, &views) {
                log::warn!("metrics textfile {}: {e}", path.display());
            }
        }
    }

    fn unspool(&self, snapshot: &Snapshot) {
        if let (Some(spool), true) = (&self.spool, snapshot.spooled) {
            spool.remove(snapshot.seq);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Cheap per-call noise for jitter; no RNG crate needed.
fn jitter_noise() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(next_step(t0, t0, None, false), Step::Poll);
        assert_eq!(next_step(t0, t0 + s, None, false), Step::Sleep(s));
        assert_eq!(next_step(t0, t0 + s, None, true), Step::Stop);
        assert_eq!(next_step(t0 + s, t0, None, true), Step::Stop);
        // Queue waiting and due: send; due later: sleep until then; a poll is due first.
        assert_eq!(next_step(t0, t0 + s, Some(t0), false), Step::Send);
        let half = Duration::from_millis(500);
        assert_eq!(
            next_step(t0, t0 + s, Some(t0 + half), false),
            Step::Sleep(half)
        );
        assert_eq!(
            next_step(t0, t0 + s, Some(t0 + 2 * s), false),
            Step::Sleep(s)
        );
        assert_eq!(next_step(t0 + s, t0 + s, Some(t0), false), Step::Poll);
        // Too little time before the next poll to start a send: wait for the poll.
        let tiny = Duration::from_millis(10);
        assert_eq!(next_step(t0, t0 + tiny, Some(t0), false), Step::Sleep(tiny));
    }

    #[test]
    fn fixed_rate_schedule_skips_missed_slots() {
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        assert_eq!(next_poll_after(t0, i, t0 + Duration::from_secs(1)), t0 + i);
        // At the slot or a little past it: that slot still runs (now).
        assert_eq!(next_poll_after(t0, i, t0 + i), t0 + i);
        assert_eq!(next_poll_after(t0, i, t0 + Duration::from_secs(14)), t0 + i);
        // Half an interval late or more: skip to the next slot.
        assert_eq!(
            next_poll_after(t0, i, t0 + Duration::from_secs(16)),
            t0 + 2 * i
        );
        // A 35 s poll on a 10 s schedule: next is the 40 s slot, not three catch-up polls.
        assert_eq!(
            next_poll_after(t0, i, t0 + Duration::from_secs(35)),
            t0 + 4 * i
        );
    }

    #[test]
    fn poll_jitter_is_small_and_bounded() {
        let check = |interval_ms: u64, noise: u64, expected_us: u64| {
            assert_eq!(
                poll_jitter(Duration::from_millis(interval_ms), noise),
                Duration::from_micros(expected_us)
            );
        };
        // 1 s interval: up to 20 ms.
        check(1000, 0, 0);
        check(1000, 20_000, 20_000);
        check(1000, 20_001, 0);
        // 60 s interval: capped at 500 ms.
        check(60_000, 500_000, 500_000);
        check(60_000, 1_000_000, 499_999);
    }

    #[test]
    fn retry_delays_grow_and_cap_with_jitter() {
        let check = |failures, noise, expected_ms| {
            assert_eq!(
                retry_delay(failures, noise),
                Duration::from_millis(expected_ms),
                "failures={failures} noise={noise}"
            );
        };
        // noise 250 → factor 1.0 exactly.
        check(1, 250, 250);
        check(2, 250, 500);
        check(3, 250, 1000);
        check(10, 250, 5000);
        check(40, 250, 5000);
        // Jitter spans 0.75 .. 1.25.
        check(2, 0, 375);
        check(10, 500, 6250);
    }

    #[test]
    fn poll_line_names_everything() {
        let polled = Polled {
            payload: Vec::new(),
            records: Vec::new(),
            document_bytes: 9000,
            timestamp_ms: 0,
            wire_bytes: 2048,
            entities: 12,
            feed_timestamp: Some(1_000),
        };
        let landed = Landed::Kafka {
            topic: "dev_topic".into(),
            partition: 0,
            offset: 42,
        };
        assert_eq!(
            describe(&polled, &landed, Duration::from_millis(7), 1_003),
            "poll ok: 2048 bytes fetched, 12 entities, feed ts 1000 (3s old), \
             9000 bytes JSON -> dev_topic[0]@42 in 7 ms"
        );
        assert!(describe(&polled, &landed, Duration::ZERO, 990).contains("(10s in the future)"));
    }
}
