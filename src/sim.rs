//! Deterministic simulation of delivery: the real `Outbox`, `KafkaSink` and `Producer` against
//! the in-memory cluster (`kafka::fake`), driven through random, seeded schedules of polls,
//! sends and faults (lost acks after append, garbled and mismatched responses, per-partition
//! retriable and fatal codes, leaders moving, brokers down, batches over the size limit, queue
//! overflow). After each schedule the faults stop, the outbox drains, and the invariants of
//! ARCHITECTURE.md "Delivery invariants" are checked against the cluster's logs.
//!
//! A failure prints its seed; `GRK_SIM_SEED=N cargo test --lib sim` replays exactly that one.
//! `GRK_SIM_SCHEDULES` sets how many run (default 10,000).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kafka::fake::Cluster;
use crate::kafka::{Journal, Producer, ProducerConfig};
use crate::outbox::Outbox;
use crate::queue::RecordSpan;
use crate::sink::{Delivered, KafkaSink, Landed, OutRecord, Resumed, Sink};
use crate::stats::Stats;

const TOPIC: &str = "sim";

/// xorshift64*: small, seedable, the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// (value, partition, offset) of every record a send reported delivered.
type Landings = Arc<Mutex<Vec<(Vec<u8>, i32, i64)>>>;

/// The real Kafka sink, noting where each attempt said each record landed.
struct Recording {
    inner: KafkaSink,
    landed: Landings,
}

impl Sink for Recording {
    fn deliver(
        &mut self,
        records: &[OutRecord<'_>],
        deadline: Instant,
        journal: Option<Journal<'_>>,
    ) -> Delivered {
        let delivered = self.inner.deliver(records, deadline, journal);
        let mut log = self.landed.lock().unwrap();
        for (r, l) in records.iter().zip(&delivered.landed) {
            if let Some(Landed::Kafka {
                partition, offset, ..
            }) = l
            {
                log.push((r.value.to_vec(), *partition, *offset));
            }
        }
        delivered
    }

    fn journal_state(&self) -> Option<Vec<u8>> {
        self.inner.journal_state()
    }

    fn restore(
        &mut self,
        state: &[u8],
        pending: &[OutRecord<'_>],
    ) -> Result<Option<Resumed>, String> {
        self.inner.restore(state, pending)
    }
}

/// A process's outbox over the real sink and producer, opened on `spool` as at a start.
fn start(
    cluster: &Cluster,
    config: &ProducerConfig,
    landed: &Landings,
    (spool, queue_max): (Option<&std::path::Path>, usize),
    stats: &mut Stats,
) -> Result<Outbox, String> {
    let producer = Producer::with_connector(config.clone(), Box::new(cluster.clone()));
    let sink = Recording {
        inner: KafkaSink::with_producer(producer, TOPIC),
        landed: landed.clone(),
    };
    Outbox::open(Box::new(sink), spool, queue_max, String::new(), stats).map_err(|e| e.to_string())
}

/// A fresh spool directory for one schedule (in memory where the machine has /dev/shm:
/// thousands of schedules fsync there).
fn spool_dir(seed: u64) -> std::path::PathBuf {
    let base = std::path::Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("grk-sim-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One schedule; `Err` says which invariant broke and how.
fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let trace = std::env::var("GRK_SIM_TRACE").is_ok();
    if trace {
        crate::logger::init(
            crate::logger::LogFilter::parse(
                "debug,gtfs_rt_kafka::outbox=trace,gtfs_rt_kafka::kafka::producer=trace",
            )
            .unwrap_or_default(),
        );
    }
    let n_brokers = 1 + rng.below(3) as i32;
    let n_partitions = 1 + rng.below(4) as usize;
    let leaders: Vec<i32> = (0..n_partitions)
        .map(|_| 1 + rng.below(n_brokers as u64) as i32)
        .collect();
    let cluster = Cluster::new(n_brokers, TOPIC, &leaders);
    let size_limit = rng.chance(40).then_some(160);
    cluster.state().max_batch_bytes = size_limit;
    if rng.chance(50) {
        // Produce v13: the topic named by its id, so a recreated topic answers UNKNOWN_TOPIC_ID.
        let mut state = cluster.state();
        state.produce_max = 13;
        state.topic_id = Some([7; 16]);
    }
    let config = ProducerConfig {
        bootstrap: (1..=n_brokers).map(|id| format!("b{id}:9092")).collect(),
        retry_backoff: Duration::ZERO,
        retry_backoff_max: Duration::ZERO,
        unknown_topic_retries: 2,
        idempotence: true,
        // Calls end after so many attempts, never by the clock: the same seed, the same run.
        max_attempts: Some(8),
        ..ProducerConfig::default()
    };
    let landed = Arc::new(Mutex::new(Vec::new()));
    let queue_max = if rng.chance(30) { 400 } else { 1 << 20 };
    // With a spool, the process may also crash (and restart from the spool) at any request.
    let spool = rng.chance(40).then(|| spool_dir(seed));
    let mut stats = Stats::default();
    // A process starting: a new producer and outbox over the same cluster and spool.
    let open = |stats: &mut Stats| {
        start(
            &cluster,
            &config,
            &landed,
            (spool.as_deref(), queue_max),
            stats,
        )
    };
    let mut outbox = open(&mut stats)?;
    let mut abandoned: Vec<(Vec<u8>, &'static str)> = Vec::new();
    let mut crashes = 0u32;

    let mut pushed: Vec<Vec<u8>> = Vec::new();
    let mut snapshots = 0u64;
    let steps = 10 + rng.below(40);
    for step in 0..steps {
        match rng.below(13) {
            0..=3 => {
                snapshots += 1;
                // Feed mode: one record, no key (the partition is the producer's choice);
                // entity mode: one to five keyed records.
                let feed_mode = rng.chance(30);
                let n = if feed_mode {
                    1
                } else {
                    1 + rng.below(5) as usize
                };
                let mut payload = Vec::new();
                let mut spans = Vec::new();
                for i in 0..n {
                    let key_start = payload.len() as u32;
                    payload.extend_from_slice(format!("k{step}-{i}").as_bytes());
                    let value_start = payload.len() as u32;
                    // Mostly small; sometimes over the partition's size limit, sometimes one
                    // the broker refuses as invalid.
                    let pad = if rng.chance(10) {
                        200
                    } else {
                        rng.below(60) as usize
                    };
                    let invalid = if rng.chance(5) { "!invalid" } else { "" };
                    let value = format!("v{seed}-{step}-{i}-{}{invalid}", "x".repeat(pad));
                    payload.extend_from_slice(value.as_bytes());
                    pushed.push(value.into_bytes());
                    spans.push(RecordSpan {
                        key: (!feed_mode).then_some((key_start, value_start - key_start)),
                        value: (value_start, payload.len() as u32 - value_start),
                    });
                }
                outbox.push(payload, spans, 1_000, &mut stats);
                if trace {
                    log::debug!("step {step}: push {n} records; queue {}", outbox.len());
                }
            }
            4..=7 => {
                if trace {
                    log::debug!("step {step}: sending");
                }
                let garbled = rng.chance(10);
                cluster.state().garbage_produce = garbled;
                let sent = outbox.send_batch(Instant::now() + Duration::from_secs(10), &mut stats);
                if trace {
                    log::debug!(
                        "step {step}: send (garbled {garbled}): {:?}",
                        sent.as_ref().map(|s| s.records).map_err(|e| e.to_string())
                    );
                }
                cluster.state().garbage_produce = false;
            }
            8 => {
                let mut state = cluster.state();
                match rng.below(4) {
                    0 => state.lose_produce_responses += 1,
                    1 => state.wrong_correlation += 1,
                    _ => {
                        let p = rng.below(n_partitions as u64) as i32;
                        // Retriable answers, each for one request.
                        let codes = [6, 7, 19, 20, 100];
                        let code = codes[rng.below(codes.len() as u64) as usize];
                        state.produce_errors.push_back((p, code));
                    }
                }
                if trace {
                    log::debug!(
                        "step {step}: fault: errors {:?} lose {} wrongcorr {}",
                        state.produce_errors,
                        state.lose_produce_responses,
                        state.wrong_correlation
                    );
                }
            }
            9 => {
                // A leader moves, or (for a while) there is none.
                let p = rng.below(n_partitions as u64) as usize;
                cluster.state().leaders[p] = if rng.chance(20) {
                    -1
                } else {
                    1 + rng.below(n_brokers as u64) as i32
                };
            }
            11 if spool.is_some() => {
                // kill -9 within the next few requests (perhaps mid-send), then a restart.
                crashes += 1;
                cluster.state().crash_after = Some(rng.below(6) as u32);
                let _ = outbox.send_batch(Instant::now() + Duration::from_secs(10), &mut stats);
                abandoned.append(&mut outbox.abandoned);
                drop(outbox);
                {
                    let mut state = cluster.state();
                    state.crash_after = None;
                    state.crashed = false;
                }
                outbox = open(&mut stats)?;
                if trace {
                    log::debug!(
                        "step {step}: crash {crashes} and restart; queue {}",
                        outbox.len()
                    );
                }
            }
            12 if rng.chance(25) => {
                // The topic is deleted and created again: its logs and producer states go.
                cluster.state().recreate_topic();
                if trace {
                    log::debug!("step {step}: topic recreated");
                }
            }
            10 => {
                let b = format!("b{}:9092", 1 + rng.below(n_brokers as u64));
                let mut state = cluster.state();
                if !state.down.remove(&b) {
                    state.down.insert(b);
                }
            }
            _ => {}
        }
    }

    // Faults end; everything still queued must get out.
    {
        let mut state = cluster.state();
        state.down.clear();
        state.produce_errors.clear();
        state.lose_produce_responses = 0;
        state.wrong_correlation = 0;
        state.garbage_produce = false;
        for (p, leader) in state.leaders.iter_mut().enumerate() {
            if *leader < 0 {
                *leader = 1 + (p as i32 % n_brokers);
            }
        }
    }
    for _ in 0..200 {
        if outbox.is_empty() {
            break;
        }
        let _ = outbox.send_batch(Instant::now() + Duration::from_secs(10), &mut stats);
    }
    let landed = landed.lock().unwrap().clone();
    let queued = outbox.len();
    abandoned.append(&mut outbox.abandoned);
    drop(outbox);
    if let Some(dir) = &spool {
        let _ = std::fs::remove_dir_all(dir);
    }
    check(
        &cluster,
        queued,
        &abandoned,
        &landed,
        &pushed,
        &stats,
        (snapshots, size_limit, crashes),
    )
    .map_err(|e| format!("{e} ({crashes} crashes)"))
}

/// The invariants, against the cluster's logs.
#[allow(clippy::too_many_arguments)]
fn check(
    cluster: &Cluster,
    queued: usize,
    abandoned: &[(Vec<u8>, &'static str)],
    landed: &[(Vec<u8>, i32, i64)],
    pushed: &[Vec<u8>],
    stats: &Stats,
    (snapshots, size_limit, crashes): (u64, Option<usize>, u32),
) -> Result<(), String> {
    let state = cluster.state();
    // (ii) No sequence number reused for different data under one producer id.
    if let Some(v) = state.violations.first() {
        return Err(format!("sequence reuse: {v}"));
    }
    // Where each value is: (incarnation of the topic, partition, offset). A topic deleted and
    // created again is a new log; what was in doubt at the deletion may be in both.
    let mut where_is: HashMap<&[u8], Vec<(usize, i32, i64)>> = HashMap::new();
    for (generation, logs) in state.deleted.iter().chain([&state.logs]).enumerate() {
        for (p, log) in logs {
            for (offset, r) in log.iter().enumerate() {
                let v = r.value.as_deref().unwrap_or_default();
                where_is
                    .entry(v)
                    .or_default()
                    .push((generation, *p, offset as i64));
            }
        }
    }
    // No record twice in one incarnation of the topic.
    for (v, at) in &where_is {
        let mut generations: Vec<usize> = at.iter().map(|a| a.0).collect();
        generations.sort_unstable();
        if generations.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!(
                "duplicate: {} at {at:?}",
                String::from_utf8_lossy(&v[..v.len().min(24)])
            ));
        }
    }
    // (i) Reported delivered only with the offset the broker gave it, and it is there.
    for (v, p, offset) in landed {
        let there = where_is
            .get(v.as_slice())
            .is_some_and(|at| at.iter().any(|&(_, ap, ao)| (ap, ao) == (*p, *offset)));
        if !there {
            return Err(format!(
                "reported delivered at {p}@{offset} but the log has it at {:?}: {}",
                where_is.get(v.as_slice()),
                String::from_utf8_lossy(&v[..v.len().min(24)])
            ));
        }
    }
    // Nothing fetched is lost silently: every record is in the topic or was given up, counted.
    if queued > 0 {
        return Err(format!(
            "{queued} snapshots still queued after the faults ended"
        ));
    }
    let given_up: HashMap<&[u8], &str> = abandoned
        .iter()
        .map(|(v, why)| (v.as_slice(), *why))
        .collect();
    for v in pushed {
        if !where_is.contains_key(v.as_slice()) && !given_up.contains_key(v.as_slice()) {
            return Err(format!(
                "lost without a count: {}",
                String::from_utf8_lossy(&v[..v.len().min(24)])
            ));
        }
    }
    // (iii) A refused record is set aside alone: only records the broker refuses for
    // themselves (too large, invalid) are set aside, never their neighbours; and those are
    // never in the topic.
    let refusable = |v: &[u8]| {
        size_limit.is_some_and(|max| v.len() > max) || v.ends_with(crate::kafka::fake::INVALID_MARK)
    };
    for (v, why) in abandoned {
        if *why == "refused" && !refusable(v) {
            return Err(format!(
                "set aside though the broker takes it: {}",
                String::from_utf8_lossy(&v[..v.len().min(24)])
            ));
        }
    }
    for v in pushed {
        if refusable(v) && where_is.contains_key(v.as_slice()) {
            return Err("a record the broker refuses is in the topic".to_string());
        }
    }
    // (v) The counts add up: every snapshot delivered, dropped or refused.
    // A restarted process counts what it finds in the spool again (a snapshot acknowledged
    // just before a crash is resent, deduplicated and counted by the next run too): with
    // crashes, every snapshot is counted at least once.
    let counted = stats.delivered + stats.dropped + stats.rejected;
    if counted < snapshots || (crashes == 0 && counted != snapshots) {
        return Err(format!(
            "counts: {} delivered + {} dropped + {} rejected for {snapshots} snapshots",
            stats.delivered, stats.dropped, stats.rejected
        ));
    }
    Ok(())
}

#[test]
fn random_fault_schedules_keep_the_delivery_invariants() {
    if let Some(seed) = std::env::var("GRK_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let schedules: u64 = std::env::var("GRK_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let mut failures = Vec::new();
    for seed in 0..schedules {
        if let Err(e) = run(seed) {
            failures.push(format!("seed {seed}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {schedules} schedules broke an invariant (replay: GRK_SIM_SEED=N cargo test --lib sim); first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
