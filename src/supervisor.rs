//! The supervisor: starts one loop per feed on its own thread and owns what is the whole
//! process's — signals, reloads, the shutdown deadline, the metrics listener, systemd notify
//! and the last lines.
//!
//! It never does a feed's I/O and never waits on a feed: it gives orders (`FeedControl`) and
//! reads what each loop publishes (`StatusCell`). So one feed's hung server, broker or disk
//! can't delay another feed, a scrape, or the exit at the shutdown deadline.

use std::fmt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError, ProcessConfig, RunConfig, SinkKind};
use crate::control::{FeedControl, Order};
use crate::feed_loop::{FeedEnd, FeedLoop, FeedStartError};
use crate::limits;
use crate::metrics::MetricsServer;
use crate::notify::Notifier;
use crate::queue::Snapshot;
use crate::schedule::phase;
use crate::signals::Signals;
use crate::sink::{Clusters, KafkaSink, Sink, StdoutSink};
use crate::stats::{Board, FeedStatus, Stats, StatusCell};

/// The longest the supervisor waits between looks at its feeds (reloads, retirements).
const TICK: Duration = Duration::from_secs(1);
/// With `--once`, how often it looks whether every feed is done.
const ONCE_TICK: Duration = Duration::from_millis(20);
/// How far past the shutdown deadline the supervisor waits for loops finishing their last
/// step, before it prints the last lines from what they published.
const EXIT_GRACE: Duration = Duration::from_millis(300);
/// A feed loop's stack. Measured need: under 64 KiB for a poll without compression, under
/// 256 KiB with zstd (its encoder's tables live on the stack); only the pages a loop touches
/// become resident, so the margin costs address space, not memory.
const FEED_STACK: usize = 1024 * 1024;

/// Why the process could not start; `Display` names the setting to fix.
#[derive(Debug)]
pub enum StartError {
    Feed { feed: String, error: FeedStartError },
    Metrics { addr: String, cause: std::io::Error },
    Limits(limits::LimitError),
    Thread(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Feed { feed, error } => write!(f, "feed {feed}: {error}"),
            StartError::Metrics { addr, cause } => write!(
                f,
                "cannot listen on {addr}: {cause} (check METRICS_ADDR / --metrics-addr)"
            ),
            StartError::Limits(e) => e.fmt(f),
            StartError::Thread(e) => write!(f, "cannot start a feed thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Reads the configuration again (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<RunConfig, ConfigError>>;

/// How the run ended, for the exit code.
pub struct Outcome {
    /// Every feed's last poll was delivered and nothing was left unsent (for `--once`).
    pub all_ok: bool,
    /// A feed's sink is gone for good (stdout closed): the run could not go on.
    pub sink_closed: bool,
}

/// A feed loop on its thread.
struct Running {
    config: Config,
    tag: String,
    control: FeedControl,
    status: StatusCell,
    handle: JoinHandle<FeedEnd>,
}

pub struct Supervisor<'a> {
    process: ProcessConfig,
    feeds: Vec<Running>,
    /// Loops retiring for a reload, each with the settings of the loop that replaces it.
    replacing: Vec<(Running, Config)>,
    /// Loops of feeds removed by a reload, draining.
    removing: Vec<Running>,
    board: Board,
    /// Kafka connections shared by the feeds of each cluster.
    clusters: Clusters,
    notifier: &'a Notifier,
    reload: Option<Reload>,
    last_watchdog: Option<Instant>,
    last_status: Option<String>,
}

/// Runs every feed until a stop signal (or, with `--once`, until each has polled once).
pub fn run(
    run: RunConfig,
    signals: &mut Signals,
    notifier: &Notifier,
    reload: Option<Reload>,
) -> Result<Outcome, StartError> {
    limits::ensure_fds(run.feeds.iter().map(fds_needed).sum()).map_err(StartError::Limits)?;
    let board = Board::default();
    if let Some(addr) = &run.process.metrics_addr {
        let server = MetricsServer::bind(addr).map_err(|cause| StartError::Metrics {
            addr: addr.clone(),
            cause,
        })?;
        server.spawn(board.clone()).map_err(StartError::Thread)?;
        log::info!("metrics on http://{addr}/metrics and /health");
    }
    let mut sup = Supervisor {
        process: run.process,
        feeds: Vec::new(),
        replacing: Vec::new(),
        removing: Vec::new(),
        board,
        clusters: Clusters::default(),
        notifier,
        reload,
        last_watchdog: None,
        last_status: None,
    };
    let n = run.feeds.len();
    // Open every feed's spool before any loop starts, so a bad one refuses the start.
    let mut loops = Vec::with_capacity(n);
    for config in run.feeds {
        let feed_loop = sup.open_feed(&config, n)?;
        loops.push((config, feed_loop));
    }
    for (config, feed_loop) in loops {
        let running = spawn(config, feed_loop).map_err(StartError::Thread)?;
        sup.feeds.push(running);
    }
    sup.publish_board();
    notifier.ready();
    Ok(sup.supervise(signals))
}

impl Supervisor<'_> {
    fn tag_for(&self, config: &Config, n_feeds: usize) -> String {
        if n_feeds > 1 || self.process.config_file.is_some() {
            format!("[{}] ", config.source_id)
        } else {
            String::new()
        }
    }

    /// A feed's loop, ready to spawn: its sink, its outbox (spool opened), its phase.
    fn open_feed(&mut self, config: &Config, n_feeds: usize) -> Result<FeedLoop, StartError> {
        let tag = self.tag_for(config, n_feeds);
        log::info!(
            "{tag}starting: {} {} -> {}",
            crate::fetch::describe_source(&config.fetch),
            if self.process.once {
                "once".to_string()
            } else {
                format!("every {}", describe_interval(config.poll_interval))
            },
            sink_target(config)
        );
        // `--once` polls every feed at once; a run spreads them over their interval.
        let spread = if self.process.once { 1 } else { n_feeds };
        let first_poll = Instant::now() + phase(&config.source_id, config.poll_interval, spread);
        let sink: Box<dyn Sink + Send> = match config.sink {
            SinkKind::Kafka => Box::new(KafkaSink::shared(&config.kafka, &mut self.clusters)),
            SinkKind::Stdout => Box::new(StdoutSink::new(std::io::stdout())),
        };
        FeedLoop::new(config.clone(), sink, tag, self.process.once, first_poll).map_err(|error| {
            StartError::Feed {
                feed: config.source_id.clone(),
                error,
            }
        })
    }

    fn supervise(mut self, signals: &mut Signals) -> Outcome {
        let tick = if self.process.once { ONCE_TICK } else { TICK };
        let tick = self
            .notifier
            .watchdog_interval()
            .map_or(tick, |w| w.min(tick));
        loop {
            signals.sleep(tick);
            for name in signals.take_ignored() {
                log::warn!(
                    "received {name}: ignored (SIGTERM, SIGINT or SIGQUIT stop; SIGHUP reloads --config)"
                );
            }
            if signals.stop_requested() {
                break;
            }
            if signals.take_reload() {
                self.reload();
            }
            self.tend();
            if self.process.once && self.feeds.iter().all(|f| f.status.with(|s| s.finished)) {
                break;
            }
            if self.feeds.iter().any(|f| f.status.with(|s| s.fatal)) {
                break;
            }
            self.notify();
        }
        self.notifier.stopping();
        self.shutdown()
    }

    /// Finishes reload work whose old loops have ended: starts replacements, reports removals.
    fn tend(&mut self) {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.replacing)
            .into_iter()
            .partition(|(old, _)| old.handle.is_finished());
        self.replacing = waiting;
        for (old, config) in done {
            let leftover = join(old.handle);
            self.start_replacement(config, leftover);
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.removing)
            .into_iter()
            .partition(|r| r.handle.is_finished());
        self.removing = waiting;
        for r in done {
            log::info!(
                "{}stopped (removed from the config): {}",
                r.tag,
                r.status.with(FeedStatus::final_stats)
            );
            join(r.handle);
        }
    }

    fn start_replacement(&mut self, config: Config, leftover: Vec<Snapshot>) {
        let n = self.feeds.len() + 1;
        match self.open_feed(&config, n) {
            Ok(mut feed_loop) => {
                feed_loop.adopt(leftover);
                match spawn(config, feed_loop) {
                    Ok(running) => self.feeds.push(running),
                    Err(e) => log::error!("reload: cannot start a feed thread: {e}"),
                }
            }
            Err(e) => log::error!(
                "reload: {e}; the feed stays stopped ({} unsent snapshots lost)",
                leftover.len()
            ),
        }
        self.publish_board();
    }

    /// SIGHUP: read the config again; start added feeds, drain removed ones, restart changed
    /// ones with what they had queued. An invalid file changes nothing.
    fn reload(&mut self) {
        let Some(reload) = &self.reload else {
            log::warn!("received SIGHUP: nothing to reload (no --config file); ignored");
            return;
        };
        let new = match reload() {
            Ok(new) => new,
            Err(e) => {
                log::error!("reload refused, the running configuration stays: {e}");
                return;
            }
        };
        let same_process = ProcessConfig {
            once: self.process.once,
            config_file: self.process.config_file.clone(),
            ..new.process.clone()
        } == self.process;
        if !same_process {
            log::warn!(
                "reload: process-wide settings (rust_log, shutdown_timeout, metrics_addr) \
                 changed; they take effect at the next start"
            );
        }
        let (mut added, mut removed, mut changed) = (0, 0, 0);
        let old = std::mem::take(&mut self.feeds);
        let shutdown = self.process.shutdown_timeout;
        for running in old {
            match new
                .feeds
                .iter()
                .find(|c| c.source_id == running.config.source_id)
            {
                Some(c) if *c == running.config => self.feeds.push(running),
                Some(c) => {
                    changed += 1;
                    running.control.give(Order::Retire);
                    self.replacing.push((running, c.clone()));
                }
                None => {
                    removed += 1;
                    running.control.give(Order::Stop {
                        deadline: Instant::now() + shutdown,
                    });
                    self.removing.push(running);
                }
            }
        }
        let n = new.feeds.len();
        for config in new.feeds {
            let known = self
                .feeds
                .iter()
                .map(|r| &r.config)
                .chain(self.replacing.iter().map(|(_, c)| c))
                .any(|c| c.source_id == config.source_id);
            if known {
                continue;
            }
            added += 1;
            match self
                .open_feed(&config, n)
                .and_then(|l| spawn(config, l).map_err(StartError::Thread))
            {
                Ok(running) => self.feeds.push(running),
                Err(e) => log::error!("reload: {e}; that feed is not started"),
            }
        }
        self.publish_board();
        log::info!(
            "reloaded {}: {added} added, {removed} removed, {changed} changed",
            self.process
                .config_file
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        );
    }

    fn publish_board(&self) {
        self.board.set(
            self.feeds
                .iter()
                .map(|r| (r.config.source_id.clone(), r.status.clone()))
                .collect(),
        );
    }

    /// systemd: `WATCHDOG=1` while no loop is stuck past its own timeouts; `STATUS=` when
    /// the last poll line changes.
    fn notify(&mut self) {
        let now = Instant::now();
        if let Some(interval) = self.notifier.watchdog_interval() {
            let due = self.last_watchdog.is_none_or(|t| now >= t + interval);
            if due && !self.feeds.iter().any(|r| r.status.with(|s| s.stuck(now))) {
                self.notifier.watchdog();
                self.last_watchdog = Some(now);
            }
        }
        let line = match self.feeds.as_slice() {
            [one] => one.status.with(|s| s.last_line.clone()),
            many => Some(format!(
                "{} feeds, {} with their last poll delivered",
                many.len(),
                many.iter().filter(|r| r.status.with(|s| s.last_ok)).count()
            )),
        };
        if line.is_some() && line != self.last_status {
            if let Some(text) = &line {
                self.notifier.status(text);
            }
            self.last_status = line;
        }
    }

    /// Orders every loop to deliver what it holds by the deadline, waits for them at most
    /// that long, and prints each feed's last line from what it published.
    fn shutdown(mut self) -> Outcome {
        let deadline = Instant::now() + self.process.shutdown_timeout;
        let order = Order::Stop { deadline };
        for r in self.feeds.iter().chain(&self.removing) {
            r.control.give(order);
        }
        for (old, _) in &self.replacing {
            old.control.give(order);
        }
        let everyone: Vec<&Running> = self
            .feeds
            .iter()
            .chain(&self.removing)
            .chain(self.replacing.iter().map(|(r, _)| r))
            .collect();
        while Instant::now() < deadline + EXIT_GRACE
            && !everyone.iter().all(|r| r.status.with(|s| s.finished))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut all_ok = true;
        let mut sink_closed = false;
        for r in everyone {
            let status = r.status.get();
            if !status.finished {
                log::error!(
                    "{}still {} at the shutdown deadline (SHUTDOWN_TIMEOUT {}): ending anyway",
                    r.tag,
                    if status.busy_since.is_some() {
                        "fetching or sending"
                    } else {
                        "busy"
                    },
                    describe_interval(self.process.shutdown_timeout)
                );
            }
            all_ok &= status.finished && status.last_ok;
            sink_closed |= status.fatal;
            let stats: Stats = status.final_stats();
            log::info!("{}stopped: {stats}", r.tag);
        }
        // Loops retiring for a reload hand their unspooled snapshots to nobody now.
        for (old, _) in std::mem::take(&mut self.replacing) {
            if old.handle.is_finished() {
                let left = join(old.handle).len();
                if left > 0 {
                    log::error!("{}{left} unsent snapshots lost at exit (reload)", old.tag);
                }
            }
        }
        Outcome {
            all_ok,
            sink_closed,
        }
    }
}

fn spawn(config: Config, feed_loop: FeedLoop) -> std::io::Result<Running> {
    let control = FeedControl::default();
    let status = feed_loop.status();
    let tag = feed_loop.tag().to_string();
    let loop_control = control.clone();
    let handle = std::thread::Builder::new()
        .name(format!("feed {}", config.source_id))
        .stack_size(FEED_STACK)
        .spawn(move || {
            let end = feed_loop.run(&loop_control);
            // A thread's cache is not freed with it (alloc_cache).
            crate::alloc_cache::trim();
            end
        })?;
    Ok(Running {
        config,
        tag,
        control,
        status,
        handle,
    })
}

/// A finished loop's hand-over; a loop that panicked hands over nothing (and said so).
fn join(handle: JoinHandle<FeedEnd>) -> Vec<Snapshot> {
    match handle.join() {
        Ok(end) => end.leftover,
        Err(_) => {
            log::error!("a feed loop ended abnormally; its in-memory snapshots are lost");
            Vec::new()
        }
    }
}

/// File descriptors one feed may hold at once: its HTTP connection, a Kafka connection while
/// it sends (idle ones are shared per cluster), and a spool or textfile being written.
fn fds_needed(config: &Config) -> u64 {
    let sending = match config.sink {
        SinkKind::Kafka => 1,
        SinkKind::Stdout => 0,
    };
    2 + sending
}

/// "60 s", "1.5 s": the setting's own syntax.
pub fn describe_interval(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs} s")
    }
}

pub fn sink_target(config: &Config) -> String {
    match config.sink {
        SinkKind::Stdout => "stdout".to_string(),
        SinkKind::Kafka => format!(
            "kafka {} topic {} (acks={}, compression={}, {}{})",
            config.kafka.bootstrap.join(","),
            config.kafka.topic,
            config.kafka.acks.name(),
            config.kafka.compression.name(),
            config.kafka.security_protocol.name(),
            match &config.kafka.sasl {
                Some(sasl) => format!(" {} user {}", sasl.mechanism.name(), sasl.username),
                None => String::new(),
            }
        ),
    }
}
