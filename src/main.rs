//! Entry point: parse config, set up logging and signals, run, map the outcome to an exit code.
//!
//! Exit codes: 0 clean stop / `--once` delivered; 1 `--once` failed or `convert` input invalid;
//! 2 invalid setting or usage; 128+N on a second SIGINT/SIGTERM (immediate exit).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gtfs_rt_kafka::config::{
    self, Command, Config, ConvertConfig, ProcessConfig, RunConfig, SinkKind,
};
use gtfs_rt_kafka::feed_loop::FeedLoop;
use gtfs_rt_kafka::json::{stream_feed, Envelope, StreamError};
use gtfs_rt_kafka::logger::{self, LogFilter};
use gtfs_rt_kafka::notify::Notifier;
use gtfs_rt_kafka::signals::Signals;
use gtfs_rt_kafka::sink::{KafkaSink, Sink, StdoutSink};
use gtfs_rt_kafka::supervisor::{self, sink_target, Reload};

/// The daemon allocates through the per-thread cache in front of the system allocator
/// (`alloc_cache`: musl's allocator unmapped and remapped its groups entity after entity).
/// Declared here, not in the library, so other binaries (the fuzz targets) keep their own.
#[global_allocator]
static ALLOCATOR: gtfs_rt_kafka::alloc_cache::CachingAlloc =
    gtfs_rt_kafka::alloc_cache::CachingAlloc;

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    match config::parse(std::env::args().skip(1), &env) {
        Ok(Command::Help) => {
            logger::print_out(config::HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            logger::print_out(&format!("gtfs-rt-kafka {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Ok(Command::Convert(c)) => convert(&c),
        Ok(Command::Run(c)) => run(c),
        Ok(Command::Replay {
            process,
            config,
            inputs,
        }) => replay(&process, &config, &inputs),
        Err(e) => {
            logger::print_error(&e.to_string());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The daemon: a supervisor and one loop per feed (one from env/flags, or several from
/// `--config`).
fn run(run: RunConfig) -> ExitCode {
    init_logging(&run.process.log);
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let once = run.process.once;
    // SIGHUP parses the same command line and environment again, file included.
    let reload: Option<Reload> = run.process.config_file.is_some().then(|| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Box::new(move || {
            let env = |name: &str| std::env::var(name).ok();
            match config::parse(args.clone(), &env)? {
                Command::Run(run) => Ok(run),
                _ => Err(config::ConfigError {
                    setting: "--config".to_string(),
                    reason: "the command line no longer describes a run".to_string(),
                }),
            }
        }) as Reload
    });
    let env = |name: &str| std::env::var(name).ok();
    let notifier = Notifier::from_env(&env);
    match supervisor::run(run, &mut signals, &notifier, reload) {
        Ok(outcome) if outcome.sink_closed || (once && !outcome.all_ok) => {
            ExitCode::from(EXIT_FAILED)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `replay FILES…|DIR`: same document rules and sink as a run; no spool, metrics or skipping.
fn replay(process: &ProcessConfig, config: &Config, inputs: &[String]) -> ExitCode {
    init_logging(&process.log);
    let files = match replay_files(inputs) {
        Ok(f) => f,
        Err(e) => {
            logger::print_error(&format!("replay: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let config = Config {
        spool_dir: None,
        metrics_textfile: None,
        skip_unchanged: gtfs_rt_kafka::config::SkipUnchanged::Off,
        ..config.clone()
    };
    let sink: Box<dyn Sink + Send> = match config.sink {
        SinkKind::Kafka => Box::new(KafkaSink::new(&config.kafka)),
        SinkKind::Stdout => Box::new(StdoutSink::new(std::io::stdout())),
    };
    log::info!(
        "replaying {} files -> {}",
        files.len(),
        sink_target(&config)
    );
    let runner = match FeedLoop::new(config, sink, String::new(), true, Instant::now()) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let outcome = runner.replay(&files, &|| signals.stop_requested());
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

/// Logs go to stderr so `--sink stdout` and `convert` keep stdout for documents only.
fn init_logging(filter: &LogFilter) {
    logger::init(filter.clone());
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for (name, meant) in config::lookalike_env(names) {
        log::warn!("environment variable {name} is not a setting (ignored): did you mean {meant}?");
    }
}

fn convert(c: &ConvertConfig) -> ExitCode {
    let name = c.input.as_deref().unwrap_or("stdin");
    let bytes = match read_input(c.input.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            logger::print_error(&format!("convert {name}: {e}"));
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
    let mut stdout = std::io::stdout().lock();
    let streamed = stream_feed(&mut stdout, &bytes, c.names, Some(&envelope)).and_then(|_| {
        stdout
            .write_all(b"\n")
            .and_then(|()| stdout.flush())
            .map_err(StreamError::Write)
    });
    match streamed {
        Ok(()) => {}
        Err(StreamError::Decode(e)) => {
            logger::print_error(&format!("convert {name}: {e}"));
            return ExitCode::from(EXIT_FAILED);
        }
        Err(StreamError::Write(e)) => {
            logger::print_error(&format!("convert {name}: writing stdout failed: {e}"));
            return ExitCode::from(EXIT_FAILED);
        }
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
