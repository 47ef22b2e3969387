//! One feed's synchronous loop, on its own thread: its schedule, its polls through the
//! pipeline, and its outbox. Nothing another feed does can delay it.
//!
//! Polling never waits for Kafka: a send attempt is bounded by this feed's next poll slot,
//! and unsent snapshots wait in the outbox. Between steps the loop waits on its
//! `FeedControl`, so the supervisor's orders wake it at once; it publishes its status after
//! every step.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::{FeedControl, Order};
use crate::fetch::{Fetch, Fetcher};
use crate::metrics;
use crate::outbox::Outbox;
use crate::pipeline::{describe, describe_poll, Pipeline, PollError, PollOutcome};
use crate::queue::Snapshot;
use crate::schedule::{jitter_noise, next_poll_after, next_step, poll_jitter, Step};
use crate::sink::{Landed, Sink};
use crate::spool::SpoolError;
use crate::stats::{now_unix, FeedStatus, LastPoll, Stats, StatusCell};

/// A failed fetch is tried again this many times within its interval, a quarter interval
/// apart (at most `MAX_FETCH_RETRY_GAP`), before waiting for the next slot.
const FETCH_RETRIES: u32 = 2;
const MAX_FETCH_RETRY_GAP: Duration = Duration::from_secs(10);
/// Beyond a step's own timeouts (fetch + delivery), what spool and textfile writes may add
/// before the watchdog counts the loop as stuck.
const STEP_SLACK: Duration = Duration::from_secs(30);

/// What a failed fetch tells the scheduler.
struct FetchFailure {
    worth_retrying: bool,
    retry_after: Option<Duration>,
}

/// Why a feed could not start; `Display` names the setting to fix.
#[derive(Debug)]
pub enum FeedStartError {
    Spool(SpoolError),
    Textfile {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
}

impl std::fmt::Display for FeedStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedStartError::Spool(e) => write!(f, "{e} (check SPOOL_DIR / --spool-dir)"),
            FeedStartError::Textfile { path, cause } => write!(
                f,
                "cannot write {}: {cause} (check METRICS_TEXTFILE / --metrics-textfile)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for FeedStartError {}

/// How a loop ended: its final counters and, when retired, what it hands on.
pub struct FeedEnd {
    pub stats: Stats,
    /// The last poll was delivered and nothing is left unsent (for `--once`).
    pub last_ok: bool,
    /// Unsent snapshots with no spool copy, for the feed's next loop (a reload).
    pub leftover: Vec<Snapshot>,
}

pub struct FeedLoop {
    config: Config,
    once: bool,
    pipeline: Pipeline,
    outbox: Outbox,
    stats: Stats,
    status: StatusCell,
    /// The fixed-rate schedule's current slot, and when the next poll really runs.
    slot: Instant,
    due: Instant,
    fetch_retries_left: u32,
    /// What the last poll's fetch failure allows: an early retry, or a server-set pause.
    last_fetch_failure: Option<FetchFailure>,
    polled_once: bool,
    last_ok: bool,
    last_line: Option<String>,
    last_send_seconds: Option<f64>,
    /// "[source_id] " in front of log lines when several feeds share the process.
    tag: String,
    /// A small random offset of this process's polls from the slots (chosen once), so many
    /// gateways started together don't hit a feed server in the same millisecond, while the
    /// polls of this one stay exactly one interval apart.
    offset: Duration,
}

impl FeedLoop {
    /// Opens the feed's outbox (and spool). `first_poll` is this feed's phase in the
    /// process's schedule.
    pub fn new(
        config: Config,
        sink: Box<dyn Sink + Send>,
        tag: String,
        once: bool,
        first_poll: Instant,
    ) -> Result<FeedLoop, FeedStartError> {
        let mut stats = Stats::default();
        let outbox = Outbox::open(
            sink,
            config.spool_dir.as_deref(),
            config.queue_max_bytes,
            tag.clone(),
            &mut stats,
        )
        .map_err(FeedStartError::Spool)?;
        let step_limit = config.fetch.timeout + config.delivery_timeout + STEP_SLACK;
        let status = StatusCell::new(FeedStatus::new(config.poll_interval, step_limit));
        // An unwritable textfile is a start error, not a warning on every poll.
        if let Some(path) = &config.metrics_textfile {
            let views = [(config.source_id.clone(), status.get())];
            metrics::write_textfile(path, &views).map_err(|cause| FeedStartError::Textfile {
                path: path.clone(),
                cause,
            })?;
        }
        Ok(FeedLoop {
            pipeline: Pipeline::new(&config),
            once,
            outbox,
            stats,
            status,
            slot: first_poll,
            due: first_poll,
            fetch_retries_left: FETCH_RETRIES,
            last_fetch_failure: None,
            polled_once: false,
            last_ok: false,
            last_line: None,
            last_send_seconds: None,
            tag,
            offset: poll_jitter(config.poll_interval, jitter_noise()),
            config,
        })
    }

    /// The cell this loop publishes its status into.
    pub fn status(&self) -> StatusCell {
        self.status.clone()
    }

    /// "[source_id] " when several feeds share the process, else empty.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Takes over snapshots a previous loop of this feed left unsent.
    pub fn adopt(&mut self, snapshots: Vec<Snapshot>) {
        self.outbox.adopt(snapshots, &mut self.stats);
    }

    /// Runs until stopped or retired (or after one poll with `--once`).
    pub fn run(mut self, control: &FeedControl) -> FeedEnd {
        self.publish(Some(Instant::now()));
        self.outbox
            .prepare(Instant::now() + self.config.delivery_timeout);
        self.publish(None);
        loop {
            match control.order() {
                Order::Run => {}
                Order::Stop { deadline } => return self.finish(deadline),
                Order::Retire => return self.retire(),
            }
            if self.outbox.sink_closed() {
                log::error!(
                    "{}stdout was closed by its reader: this feed stops, and the process with it",
                    self.tag
                );
                self.status.update(|s| s.fatal = true);
                return self.finish(Instant::now());
            }
            if self.once && self.polled_once {
                // `--once` already spent its delivery budget on the poll.
                return self.finish(Instant::now());
            }
            let now = Instant::now();
            match next_step(now, self.due, self.outbox.send_at(now), false) {
                Step::Poll => {
                    self.publish(Some(now));
                    self.poll_now(now);
                }
                Step::Send => {
                    self.publish(Some(now));
                    let deadline = (now + self.config.delivery_timeout).min(self.due);
                    self.send_backlog(deadline);
                }
                Step::Sleep(nap) => {
                    control.wait_until(now + nap);
                    continue;
                }
                Step::Stop => {}
            }
            self.publish(None);
            // Between steps the loop holds no cached free blocks (bounded idle memory).
            crate::alloc_cache::trim();
        }
    }

    /// Delivers what is queued until `deadline`, counts the rest, ends.
    fn finish(mut self, deadline: Instant) -> FeedEnd {
        self.publish(Some(Instant::now()));
        let status = &self.status;
        self.outbox.drain(deadline, &mut self.stats, &mut |o, s| {
            publish_progress(status, o, s)
        });
        let end = FeedEnd {
            last_ok: self.last_ok && self.stats.unsent == 0,
            stats: self.stats.clone(),
            leftover: Vec::new(),
        };
        self.publish_final(end.last_ok);
        end
    }

    /// Ends without draining; what has no spool copy goes to the feed's next loop.
    fn retire(self) -> FeedEnd {
        self.publish_final(self.last_ok);
        FeedEnd {
            last_ok: self.last_ok,
            stats: self.stats,
            leftover: self.outbox.into_unspooled(),
        }
    }

    /// Publishes everything, and whether a step is under way (`busy_since`).
    fn publish(&self, busy_since: Option<Instant>) {
        self.publish_results();
        self.status.update(|s| s.busy_since = busy_since);
    }

    /// Publishes counters, queue and the last poll's outcome; leaves `busy_since` alone.
    fn publish_results(&self) {
        publish_progress(&self.status, &self.outbox, &self.stats);
        self.status.update(|s| {
            s.last_send_seconds = self.last_send_seconds;
            s.last_ok = self.last_ok;
            if s.last_line != self.last_line {
                s.last_line = self.last_line.clone();
            }
        });
    }

    fn publish_final(&self, last_ok: bool) {
        self.publish(None);
        self.status.update(|s| {
            s.last_ok = last_ok;
            s.finished = true;
        });
    }

    /// Delivers the queue until `deadline`, publishing progress after every attempt.
    fn send_backlog(&mut self, deadline: Instant) {
        let status = &self.status;
        self.outbox
            .send_backlog(deadline, &mut self.stats, &mut |o, s| {
                publish_progress(status, o, s)
            });
    }

    /// One poll (sending its snapshot), then the next due time: the next slot plus jitter,
    /// an early retry of a failed fetch, or a server's Retry-After.
    fn poll_now(&mut self, now: Instant) {
        let interval = self.config.poll_interval;
        let next_slot = next_poll_after(self.slot, interval, now);
        let deadline = if self.once {
            now + self.config.delivery_timeout
        } else {
            (now + self.config.delivery_timeout).min(next_slot)
        };
        let line = self.poll_and_send(now, deadline);
        self.polled_once = true;
        self.last_ok = line.is_ok();
        self.last_line = Some(line.unwrap_or_else(|e| e));
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
                self.due = self.slot + self.offset;
                self.fetch_retries_left = FETCH_RETRIES;
            }
        }
    }

    /// One poll; when nothing older is waiting, its snapshot is sent right away. Returns the
    /// poll's log line: Ok when the snapshot was delivered, Err otherwise.
    fn poll_and_send(&mut self, started: Instant, deadline: Instant) -> Result<String, String> {
        self.stats.polls += 1;
        publish_progress(&self.status, &self.outbox, &self.stats);
        let polled = self.pipeline.poll();
        let poll_seconds = started.elapsed().as_secs_f64();
        self.status.update(|s| s.poll_seconds.observe(poll_seconds));
        let polled = match polled {
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
                    PollError::Decode { .. } | PollError::TooLarge { .. } => {
                        self.stats.decode_errors += 1
                    }
                }
                let line = format!("{}poll failed: {e}", self.tag);
                log::error!("{line}");
                return Err(line);
            }
        };
        self.status.update(|s| {
            s.last_poll = LastPoll {
                feed_timestamp: polled.feed_timestamp,
                entities: polled.entities,
            };
            s.fetched_bytes += polled.wire_bytes;
            s.document_bytes += polled.document_bytes as u64;
        });
        let backlog = self.outbox.len();
        let now_unix = now_unix() as u64;
        let summary = describe_poll(&polled, now_unix);
        let mut polled = polled;
        let payload = std::mem::take(&mut polled.payload);
        let records = std::mem::take(&mut polled.records);
        self.outbox
            .push(payload, records, polled.timestamp_ms, &mut self.stats);
        // Counted as queued before any send: if the process must end during the send, the
        // last line still accounts for this snapshot.
        publish_progress(&self.status, &self.outbox, &self.stats);
        if backlog > 0 {
            let line = format!(
                "{}poll ok: {summary}; queued behind {backlog} unsent snapshots",
                self.tag
            );
            log::warn!("{line}");
            self.send_backlog(deadline);
            return if self.outbox.is_empty() {
                Ok(line)
            } else {
                Err(line)
            };
        }
        // Entity mode may need several requests for one snapshot.
        let mut last = None;
        while !self.outbox.is_empty() {
            let sent = self.outbox.send_batch(deadline, &mut self.stats);
            publish_progress(&self.status, &self.outbox, &self.stats);
            match sent {
                Ok(sent) => last = sent.last.or(last),
                Err(e) if self.outbox.is_empty() => {
                    // Nothing left to retry: what was not delivered was refused and set
                    // aside (its own error line says which record, how large, and why).
                    let line = format!(
                        "{}poll ok: {summary}; delivered but for what the broker refused: {e}",
                        self.tag
                    );
                    log::warn!("{line}");
                    return Err(line);
                }
                Err(e) => {
                    let line = format!(
                        "{}poll ok: {summary}; not delivered yet ({} snapshots queued, retried): {e}",
                        self.tag,
                        self.outbox.len()
                    );
                    log::warn!("{line}");
                    return Err(line);
                }
            }
        }
        let last = last.unwrap_or(Landed::Stdout);
        let send_seconds = started.elapsed().as_secs_f64();
        self.last_send_seconds = Some(send_seconds);
        self.status.update(|s| s.send_seconds.observe(send_seconds));
        let line = format!(
            "{}{}",
            self.tag,
            describe(&polled, &last, started.elapsed(), now_unix)
        );
        log::info!("{line}");
        Ok(line)
    }

    /// The feed's node_exporter textfile, rewritten after each poll.
    fn write_metrics_textfile(&self) {
        if let Some(path) = &self.config.metrics_textfile {
            // The step under way is not over: the watchdog still sees it busy.
            self.publish_results();
            let views = [(self.config.source_id.clone(), self.status.get())];
            if let Err(e) = metrics::write_textfile(path, &views) {
                log::warn!("{}metrics textfile {}: {e}", self.tag, path.display());
            }
        }
    }

    /// `replay`: sends archived captures (.pb, gzipped or not) in the given order, each
    /// delivered before the next is read; retries until delivered or stopped. Progress goes
    /// to a terminal as one updating line, otherwise one log line per file.
    pub fn replay(mut self, files: &[std::path::PathBuf], stop: &dyn Fn() -> bool) -> FeedEnd {
        let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut all_ok = true;
        for (i, path) in files.iter().enumerate() {
            if stop() {
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
            let records = polled.records.len();
            self.outbox.push(
                polled.payload,
                polled.records,
                polled.timestamp_ms,
                &mut self.stats,
            );
            while !self.outbox.is_empty() && !stop() {
                let deadline = Instant::now() + self.config.delivery_timeout;
                if let Err(e) = self.outbox.send_batch(deadline, &mut self.stats) {
                    log::warn!("replay {}: {e}; retrying", path.display());
                    let now = Instant::now();
                    let wait = self
                        .outbox
                        .send_at(now)
                        .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                    std::thread::sleep(wait.min(Duration::from_secs(1)));
                }
            }
            if on_terminal {
                // A progress line for a person watching; a write error is not worth a panic.
                let _ = write!(
                    std::io::stderr().lock(),
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
            let _ = writeln!(std::io::stderr().lock());
        }
        self.outbox
            .drain(Instant::now(), &mut self.stats, &mut |_, _| {});
        FeedEnd {
            last_ok: all_ok && self.stats.unsent == 0 && !stop(),
            stats: self.stats,
            leftover: Vec::new(),
        }
    }
}

/// Copies the counters and the queue's state into the feed's published status.
fn publish_progress(status: &StatusCell, outbox: &Outbox, stats: &Stats) {
    status.update(|s| {
        s.stats = stats.clone();
        s.queue_snapshots = outbox.len();
        s.queue_bytes = outbox.bytes();
        s.queue_unspooled = outbox.unspooled();
        s.last_delivery_unix = outbox.last_delivery_unix();
    });
}
