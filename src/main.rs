//! Entry point: parse config, set up logging and signals, run, map the outcome to an exit code.
//!
//! Exit codes: 0 clean stop / `--once` delivered; 1 `--once` failed or `convert` input invalid;
//! 2 invalid setting or usage; 128+N on a second SIGINT/SIGTERM (immediate exit).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gtfs_rt_kafka::app::{self, Pipeline, Runner, StartError};
use gtfs_rt_kafka::config::{self, Command, Config, ConvertConfig, SinkKind};
use gtfs_rt_kafka::json::{transcode_feed, Envelope};
use gtfs_rt_kafka::metrics::MetricsServer;
use gtfs_rt_kafka::notify::Notifier;
use gtfs_rt_kafka::signals::Signals;
use gtfs_rt_kafka::sink::{KafkaSink, Sink, StdoutSink};

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    match config::parse(std::env::args().skip(1), &env) {
        Ok(Command::Help) => {
            print!("{}", config::HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("gtfs-rt-kafka {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Convert(c)) => convert(&c),
        Ok(Command::Run(c)) => run(&c),
        Ok(Command::Replay { config, inputs }) => replay(&config, &inputs),
        Err(e) => {
            eprintln!("gtfs-rt-kafka: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The daemon: one feed from env/flags, or several from `--config`, in one loop.
fn run(configs: &[Config]) -> ExitCode {
    let Some(first) = configs.first() else {
        return ExitCode::from(EXIT_CONFIG);
    };
    init_logging(first.log_level);
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let metrics = match first.metrics_addr.as_deref().map(bind_metrics).transpose() {
        Ok(m) => m,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut sinks: Vec<Box<dyn Sink>> = configs.iter().map(open_sink).collect();
    let mut runners = Vec::with_capacity(configs.len());
    for (config, sink) in configs.iter().zip(sinks.iter_mut()) {
        log::info!(
            "starting: {} every {:.1}s -> {}",
            pipeline_source(config),
            config.poll_interval.as_secs_f64(),
            sink_target(config)
        );
        match Runner::new(config, Pipeline::new(config), sink.as_mut()) {
            Ok(r) => runners.push(r),
            Err(e) => {
                log::error!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let env = |name: &str| std::env::var(name).ok();
    let notifier = Notifier::from_env(&env);
    let outcomes = app::run_all(runners, metrics.as_ref(), &mut signals, &notifier);
    let mut all_ok = true;
    for (config, outcome) in configs.iter().zip(&outcomes) {
        let tag = if configs.len() > 1 {
            format!("[{}] ", config.source_id)
        } else {
            String::new()
        };
        log::info!("{tag}stopped: {}", outcome.stats);
        all_ok &= outcome.last_ok;
    }
    if first.once && !all_ok {
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

fn bind_metrics(addr: &str) -> Result<MetricsServer, StartError> {
    let server = MetricsServer::bind(addr).map_err(|cause| StartError::Metrics {
        addr: addr.to_string(),
        cause,
    })?;
    log::info!("metrics on http://{addr}/metrics and /health");
    Ok(server)
}

fn open_sink(config: &Config) -> Box<dyn Sink> {
    match config.sink {
        SinkKind::Kafka => {
            let mut kafka = KafkaSink::new(&config.kafka);
            if let Some(topic) = &config.kafka.create_topic {
                kafka.ensure_topic(topic, Instant::now() + config.delivery_timeout);
            }
            Box::new(kafka)
        }
        SinkKind::Stdout => Box::new(StdoutSink::new(std::io::stdout())),
    }
}

/// `replay FILES…|DIR`: same document rules and sink as a run; no spool, metrics or skipping.
fn replay(config: &Config, inputs: &[String]) -> ExitCode {
    init_logging(config.log_level);
    let files = match replay_files(inputs) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gtfs-rt-kafka: replay: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let config = Config {
        spool_dir: None,
        metrics_addr: None,
        metrics_textfile: None,
        skip_unchanged: gtfs_rt_kafka::config::SkipUnchanged::Off,
        ..config.clone()
    };
    let mut sink: Box<dyn Sink> = match config.sink {
        SinkKind::Kafka => Box::new(KafkaSink::new(&config.kafka)),
        SinkKind::Stdout => Box::new(StdoutSink::new(std::io::stdout().lock())),
    };
    log::info!(
        "replaying {} files -> {}",
        files.len(),
        sink_target(&config)
    );
    let runner = match Runner::new(&config, Pipeline::new(&config), sink.as_mut()) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let outcome = runner.replay(&files, &mut signals);
    log::info!("replay done: {}", outcome.stats);
    if outcome.last_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Files as given; a directory stands for its regular files sorted by name.
fn replay_files(inputs: &[String]) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let path = std::path::PathBuf::from(input);
        if path.is_dir() {
            let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&path)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            files.extend(entries);
        } else if path.is_file() {
            files.push(path);
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{input}: no such file or directory"),
            ));
        }
    }
    Ok(files)
}

fn pipeline_source(config: &Config) -> String {
    gtfs_rt_kafka::fetch::describe_source(&config.fetch)
}

fn sink_target(config: &Config) -> String {
    match config.sink {
        SinkKind::Stdout => "stdout".to_string(),
        SinkKind::Kafka => format!(
            "kafka {} topic {} (acks {:?}, compression {:?}, {}{})",
            config.kafka.bootstrap.join(","),
            config.kafka.topic,
            config.kafka.acks,
            config.kafka.compression,
            config.kafka.security_protocol.name(),
            match &config.kafka.sasl {
                Some(sasl) => format!(" {} user {}", sasl.mechanism.name(), sasl.username),
                None => String::new(),
            }
        ),
    }
}

/// Logs go to stderr so `--sink stdout` and `convert` keep stdout for documents only.
/// The HTTP stack logs full request URLs (with API keys in the query) at debug, so its
/// crates are capped at info whatever the level: no secret reaches a log line.
fn init_logging(level: log::LevelFilter) {
    let quiet = level.min(log::LevelFilter::Info);
    let logger = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_module_level("ureq", quiet)
        .with_module_level("ureq_proto", quiet)
        .with_module_level("rustls", quiet)
        .with_utc_timestamps();
    if logger.init().is_err() {
        eprintln!("gtfs-rt-kafka: logger already initialised");
    }
}

fn convert(c: &ConvertConfig) -> ExitCode {
    let name = c.input.as_deref().unwrap_or("stdin");
    let bytes = match read_input(c.input.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gtfs-rt-kafka: convert {name}: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let envelope = Envelope {
        producer_timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        source_id: &c.source_id,
        event_type: &c.event_type,
    };
    let mut out = Vec::new();
    if let Err(e) = transcode_feed(&mut out, &bytes, c.names, Some(&envelope)) {
        eprintln!("gtfs-rt-kafka: convert {name}: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    out.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(&out).and_then(|_| stdout.flush()) {
        eprintln!("gtfs-rt-kafka: convert {name}: writing stdout failed: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

fn read_input(path: Option<&str>) -> std::io::Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().lock().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}
