//! A feed's counters and the status its loop publishes for the supervisor, `/metrics`,
//! `/health`, the watchdog and the last line.
//!
//! A feed loop copies its status into a `StatusCell` after each step, under a lock held for
//! the copy only — never across I/O — so nothing that reads it can wait on a feed.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counters for the whole run of one feed; its last log line prints them.
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
    /// Of `unsent`, those with no spool file: lost.
    pub lost: u64,
    pub spool_errors: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} polls, {} delivered, {} fetch errors, {} decode errors, {} unchanged, \
             {} delivery errors, {} dropped (queue full), {} rejected by broker, \
             {} records refused, {} unsent at exit",
            self.polls,
            self.delivered,
            self.fetch_errors,
            self.decode_errors,
            self.skipped,
            self.delivery_errors,
            self.dropped,
            self.rejected,
            self.rejected_records,
            self.unsent
        )?;
        if self.unsent > 0 {
            write!(
                f,
                " ({} in the spool, {} lost)",
                self.unsent - self.lost,
                self.lost
            )?;
        }
        Ok(())
    }
}

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram of durations: cumulative counts per bucket, sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or under each `DURATION_BUCKETS` bound (not cumulative here).
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// What the last successful poll fetched and made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LastPoll {
    /// The feed's `header.timestamp`, Unix seconds.
    pub feed_timestamp: Option<u64>,
    pub entities: usize,
}

/// What a feed loop shows the rest of the process.
#[derive(Debug, Clone)]
pub struct FeedStatus {
    pub stats: Stats,
    pub queue_snapshots: usize,
    pub queue_bytes: usize,
    /// Queued snapshots without a spool file: lost if the process ended now.
    pub queue_unspooled: usize,
    /// Unix seconds of the last acknowledged delivery, if any.
    pub last_delivery_unix: Option<f64>,
    /// Duration of the last successful send (poll → ack).
    pub last_send_seconds: Option<f64>,
    pub started_unix: f64,
    pub poll_interval: Duration,
    /// When the step under way (poll, send, drain) began; `None` while the loop waits.
    pub busy_since: Option<Instant>,
    /// The longest a step may take by the feed's own timeouts; beyond it the loop is stuck.
    pub step_limit: Duration,
    /// The last poll's log line, for systemd's `STATUS=`.
    pub last_line: Option<String>,
    /// Whether the last poll was delivered (for `--once`).
    pub last_ok: bool,
    /// The loop has ended and its counters are final.
    pub finished: bool,
    /// The loop ended because its sink is gone for good; the process should stop.
    pub fatal: bool,
    pub last_poll: LastPoll,
    /// Bytes fetched (on the wire) and JSON bytes made, over the run.
    pub fetched_bytes: u64,
    pub document_bytes: u64,
    /// Fetch + convert of each poll, and poll → acknowledgement of each delivered one.
    pub poll_seconds: Histogram,
    pub send_seconds: Histogram,
}

impl FeedStatus {
    pub fn new(poll_interval: Duration, step_limit: Duration) -> FeedStatus {
        FeedStatus {
            stats: Stats::default(),
            queue_snapshots: 0,
            queue_bytes: 0,
            queue_unspooled: 0,
            last_delivery_unix: None,
            last_send_seconds: None,
            started_unix: now_unix(),
            poll_interval,
            busy_since: None,
            step_limit,
            last_line: None,
            last_ok: false,
            finished: false,
            fatal: false,
            last_poll: LastPoll::default(),
            fetched_bytes: 0,
            document_bytes: 0,
            poll_seconds: Histogram::default(),
            send_seconds: Histogram::default(),
        }
    }

    /// Seconds since the feed's own `header.timestamp` (the age transit teams alert on).
    pub fn feed_age(&self, now_unix: f64) -> Option<f64> {
        self.last_poll
            .feed_timestamp
            .map(|ts| (now_unix - ts as f64).max(0.0))
    }

    /// Seconds since the last delivery (or since start, before the first one).
    pub fn delivery_age(&self, now_unix: f64) -> f64 {
        (now_unix - self.last_delivery_unix.unwrap_or(self.started_unix)).max(0.0)
    }

    /// Healthy while something was delivered within three poll intervals (a minute at least).
    pub fn healthy(&self, now_unix: f64) -> bool {
        let limit = (self.poll_interval.as_secs_f64() * 3.0).max(60.0);
        self.delivery_age(now_unix) <= limit
    }

    /// A step has run past the feed's own timeouts: the loop is stuck (watchdog).
    pub fn stuck(&self, now: Instant) -> bool {
        !self.finished
            && self
                .busy_since
                .is_some_and(|since| now.saturating_duration_since(since) > self.step_limit)
    }

    /// Counters as the last line prints them when the loop could not finish in time:
    /// whatever is still queued is unsent, and lost unless spooled.
    pub fn final_stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        if !self.finished {
            stats.unsent = self.queue_snapshots as u64;
            stats.lost = self.queue_unspooled as u64;
        }
        stats
    }
}

/// One feed's published status, shared by its loop (writer) and the supervisor (reader).
#[derive(Clone)]
pub struct StatusCell(Arc<Mutex<FeedStatus>>);

impl StatusCell {
    pub fn new(status: FeedStatus) -> StatusCell {
        StatusCell(Arc::new(Mutex::new(status)))
    }

    /// The status right now (a copy).
    pub fn get(&self) -> FeedStatus {
        self.lock().clone()
    }

    /// Reads the status in place, without a copy; `read` must not block.
    pub fn with<R>(&self, read: impl FnOnce(&FeedStatus) -> R) -> R {
        read(&self.lock())
    }

    /// Changes the status in place; `change` must not block.
    pub fn update(&self, change: impl FnOnce(&mut FeedStatus)) {
        change(&mut self.lock());
    }

    fn lock(&self) -> MutexGuard<'_, FeedStatus> {
        // A writer that panicked leaves a status that is still plain data: keep reading it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every running feed's status by `source_id`, for the metrics listener and the supervisor.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<Vec<(String, StatusCell)>>>);

impl Board {
    pub fn set(&self, feeds: Vec<(String, StatusCell)>) {
        *self.lock() = feeds;
    }

    /// Copies of every feed's status, in configuration order.
    pub fn snapshot(&self) -> Vec<(String, FeedStatus)> {
        let cells: Vec<(String, StatusCell)> = self.lock().clone();
        cells
            .into_iter()
            .map(|(name, cell)| (name, cell.get()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(String, StatusCell)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_age_of_the_last_delivery() {
        let mut s = FeedStatus::new(Duration::from_secs(60), Duration::from_secs(40));
        s.started_unix = 900.0;
        assert!(s.healthy(910.0), "grace after start");
        s.last_delivery_unix = Some(1000.0);
        assert!(s.healthy(1000.0 + 179.0));
        assert!(!s.healthy(1000.0 + 181.0));
    }

    #[test]
    fn a_loop_is_stuck_only_past_its_own_step_limit() {
        let t0 = Instant::now();
        let mut s = FeedStatus::new(Duration::from_secs(1), Duration::from_secs(40));
        assert!(
            !s.stuck(t0 + Duration::from_secs(1000)),
            "waiting is not stuck"
        );
        s.busy_since = Some(t0);
        assert!(!s.stuck(t0 + Duration::from_secs(40)));
        assert!(s.stuck(t0 + Duration::from_secs(41)));
        s.finished = true;
        assert!(!s.stuck(t0 + Duration::from_secs(41)));
    }

    #[test]
    fn an_unfinished_loop_counts_its_queue_as_unsent() {
        let mut s = FeedStatus::new(Duration::from_secs(1), Duration::from_secs(40));
        s.queue_snapshots = 3;
        s.queue_unspooled = 1;
        let stats = s.final_stats();
        assert_eq!((stats.unsent, stats.lost), (3, 1));
        assert!(stats
            .to_string()
            .ends_with("3 unsent at exit (2 in the spool, 1 lost)"));
        s.finished = true;
        assert_eq!(
            s.final_stats().unsent,
            0,
            "a finished loop's counters are final"
        );
    }
}
