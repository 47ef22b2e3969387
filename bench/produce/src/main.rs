//! Sends one poll's records N times with gtfs-rt-kafka's `kafka::Producer`, the way the binary
//! sends a poll (`produce` calls of at most the outbox's `MAX_SEND_BYTES` each, one after the
//! other, each waiting for its acks), and prints one JSON line of timings.
//!
//! A poll's records are the lines of `--values` (one JSON document per line: one line for feed
//! mode, one per entity for entity mode), keyed by the lines of `--keys` when given. The first
//! call (connect, ApiVersions, Metadata, InitProducerId) is timed apart from the rest.
//!
//! grk-bench-produce --broker HOST:PORT --topic T --values FILE [--keys FILE] --polls N
//!     [--acks all|1|0] [--compression none|gzip|snappy|lz4|zstd] [--idempotence true|false]
#![forbid(unsafe_code)]

/// The shipped binary's allocator, so the producer runs as it does there.
#[global_allocator]
static ALLOCATOR: gtfs_rt_kafka::alloc_cache::CachingAlloc =
    gtfs_rt_kafka::alloc_cache::CachingAlloc;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gtfs_rt_kafka::kafka::{Acks, Compression, Producer, ProducerConfig, Record};
use gtfs_rt_kafka::outbox::MAX_SEND_BYTES;

struct Args {
    broker: String,
    topic: String,
    values: String,
    keys: Option<String>,
    polls: usize,
    acks: Acks,
    compression: Compression,
    idempotence: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        broker: String::new(),
        topic: String::new(),
        values: String::new(),
        keys: None,
        polls: 100,
        acks: Acks::All,
        compression: Compression::None,
        idempotence: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--broker" => args.broker = value,
            "--topic" => args.topic = value,
            "--values" => args.values = value,
            "--keys" => args.keys = Some(value),
            "--polls" => args.polls = value.parse().map_err(|e| format!("--polls: {e}"))?,
            "--acks" => {
                args.acks = match value.as_str() {
                    "all" | "-1" => Acks::All,
                    "1" => Acks::Leader,
                    "0" => Acks::None,
                    _ => return Err(format!("--acks: {value:?}")),
                }
            }
            "--compression" => {
                args.compression = match value.as_str() {
                    "none" => Compression::None,
                    "gzip" => Compression::Gzip,
                    "snappy" => Compression::Snappy,
                    "lz4" => Compression::Lz4,
                    "zstd" => Compression::Zstd,
                    _ => return Err(format!("--compression: {value:?}")),
                }
            }
            "--idempotence" => args.idempotence = value == "true",
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.broker.is_empty() || args.topic.is_empty() || args.values.is_empty() {
        return Err("--broker, --topic and --values are required".to_string());
    }
    // As the binary: idempotence only with acks=all.
    args.idempotence &= args.acks == Acks::All;
    Ok(args)
}

fn lines(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(text
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// On-CPU time of this (single-threaded) process so far, from /proc/self/schedstat; 0 if unreadable.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

fn run(args: &Args) -> Result<String, String> {
    let values = lines(&args.values)?;
    let keys = match &args.keys {
        Some(path) => Some(lines(path)?),
        None => None,
    };
    if keys.as_ref().is_some_and(|k| k.len() != values.len()) {
        return Err("--keys and --values differ in line count".to_string());
    }
    let mut producer = Producer::new(ProducerConfig {
        bootstrap: vec![args.broker.clone()],
        acks: args.acks,
        compression: args.compression,
        idempotence: args.idempotence,
        ..ProducerConfig::default()
    });
    // A poll's records go in calls of at most the outbox's MAX_SEND_BYTES of values, one
    // after the other, as the binary's outbox sends them (a larger record goes alone).
    let mut send = || {
        let timestamp_ms = now_ms();
        let records: Vec<Record<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, value)| Record {
                key: keys.as_ref().map(|k| k[i].as_slice()),
                value,
                timestamp_ms,
            })
            .collect();
        let mut rest = &records[..];
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && (n == 0 || bytes + rest[n].value.len() <= MAX_SEND_BYTES) {
                bytes += rest[n].value.len();
                n += 1;
            }
            let (call, later) = rest.split_at(n);
            producer
                .produce(&args.topic, call, Instant::now() + Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            rest = later;
        }
        Ok::<(), String>(())
    };

    let started = Instant::now();
    send().map_err(|e| format!("first produce: {e}"))?;
    let first_call = started.elapsed();

    let mut call_ms = Vec::with_capacity(args.polls);
    let cpu_before = cpu_seconds();
    let timed = Instant::now();
    for _ in 0..args.polls {
        let call_started = Instant::now();
        send()?;
        // As the feed loop after every poll: the thread's small-block cache goes back.
        gtfs_rt_kafka::alloc_cache::trim();
        call_ms.push(format!("{:.3}", call_started.elapsed().as_secs_f64() * 1e3));
    }
    let seconds = timed.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let poll_bytes: usize = values.iter().map(Vec::len).sum();
    Ok(format!(
        "{{\"records\":{},\"bytes\":{},\"seconds\":{seconds:.6},\"cpu_seconds\":{cpu:.6},\"first_call_ms\":{:.3},\"call_ms\":[{}]}}",
        args.polls * values.len(),
        args.polls * poll_bytes,
        first_call.as_secs_f64() * 1e3,
        call_ms.join(",")
    ))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("grk-bench-produce: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grk-bench-produce: {e}");
            ExitCode::from(1)
        }
    }
}
