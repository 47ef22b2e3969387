//! Command line and environment → one validated `Command`, parsed once at startup.
//!
//! Every default lives in `Defaults`; every setting has an env var and a flag, and the flag wins.
//! Kafka client properties (`security.protocol`, `sasl.*`, `ssl.*`) are `-X name=value` flags.
//! Nothing here does I/O except reading the environment through the caller's lookup function
//! and the files that settings name (`*_FILE` secrets, `*_LOCATION` certificates), so a bad path
//! stops the start with one line. Secrets are `Secret`s from the moment they are read.

use std::fmt;
use std::time::Duration;

use crate::config_file;
pub use crate::fetch::FetchSettings;
use crate::fetch::{CaFile, FeedApiKey, KeyPlace};
use crate::json::FieldNames;
use crate::kafka::{Sasl, SaslMechanism, Secret, Tls, TlsFiles};
use crate::logger::LogFilter;

/// Every default in one place (the Python producer's where it had one).
pub struct Defaults;

impl Defaults {
    pub const VEHICLE_URL: &'static str =
        "https://api-public.odpt.org/api/v4/gtfs/realtime/toei_odpt_train_vehicle";
    pub const KAFKA_BROKER: &'static str = "kafka:9092";
    pub const KAFKA_TOPIC: &'static str = "dev_topic";
    pub const SOURCE_ID: &'static str = "toei_vehicle_api";
    pub const EVENT_TYPE: &'static str = "gtfs_realtime_vehicle";
    pub const POLL_INTERVAL: Duration = Duration::from_secs(60);
    pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
    /// Bound of one poll's JSON (the document, or all entity records together). The largest
    /// real feed we know (a 2.5 MB national one) makes 8.3 MB.
    pub const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;
    pub const MAX_REDIRECTS: u32 = 5;
    pub const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KAFKA_PORT: u16 = 9092;
    pub const CLIENT_ID: &'static str = "gtfs-rt-kafka";
    pub const QUEUE_MAX_BYTES: u64 = 64 * 1024 * 1024;
}

/// What the process was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Poll one feed (env/flags) or several (`--config FILE`), each in its own loop.
    Run(RunConfig),
    /// Print the document that would be sent for a .pb file (`None` = stdin).
    Convert(ConvertConfig),
    /// Send archived captures (files, or every file of a directory) in order.
    Replay {
        process: ProcessConfig,
        config: Box<Config>,
        inputs: Vec<String>,
    },
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConvertConfig {
    pub input: Option<String>,
    pub names: FieldNames,
    pub source_id: String,
    pub event_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Kafka,
    Stdout,
}

/// One record per poll (the Python producer's shape) or one per entity, keyed by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Feed,
    Entity,
}

/// Which polls count as "nothing new" and send nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipUnchanged {
    /// Every poll is sent, like the Python producer.
    Off,
    /// Conditional GET (304) and a body identical to the last snapshot's.
    Body,
    /// As `Body`, plus an unchanged `header.timestamp`.
    Timestamp,
}

/// Kafka record timestamp: when it was sent, or the feed's `header.timestamp` (event time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordTimestamp {
    Send,
    Feed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcksSetting {
    All,
    Leader,
    None,
}

impl AcksSetting {
    /// As `KAFKA_ACKS` spells it.
    pub fn name(self) -> &'static str {
        match self {
            AcksSetting::All => "all",
            AcksSetting::Leader => "1",
            AcksSetting::None => "0",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionSetting {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionSetting {
    /// As `KAFKA_COMPRESSION` spells it.
    pub fn name(self) -> &'static str {
        match self {
            CompressionSetting::None => "none",
            CompressionSetting::Gzip => "gzip",
            CompressionSetting::Snappy => "snappy",
            CompressionSetting::Lz4 => "lz4",
            CompressionSetting::Zstd => "zstd",
        }
    }
}

/// Kafka's `security.protocol`: TLS and/or SASL on every broker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSettings {
    /// `host:port` pairs, port defaulted to 9092.
    pub bootstrap: Vec<String>,
    pub topic: String,
    pub acks: AcksSetting,
    pub compression: CompressionSetting,
    pub request_timeout: Duration,
    pub client_id: String,
    pub idempotence: bool,
    pub security_protocol: SecurityProtocol,
    /// Set with SSL and SASL_SSL: roots (bundled or `ssl.ca.location`), client certificate.
    pub tls: Option<Tls>,
    /// Set with SASL_PLAINTEXT and SASL_SSL.
    pub sasl: Option<Sasl>,
    /// `--create-topic`: create the topic at start when it is missing.
    pub create_topic: Option<NewTopic>,
}

/// How `--create-topic` creates the topic; -1 leaves a value to the broker's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// Settings of the whole process: one value whatever the number of feeds. A config file
/// sets them at its top level, never inside `[[feed]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    /// `RUST_LOG`: a default level and per-target levels (env_logger's syntax).
    pub log: LogFilter,
    /// After SIGTERM/SIGINT, how long the feeds may take to deliver what they hold.
    pub shutdown_timeout: Duration,
    /// `host:port` for the Prometheus `/metrics` and `/health` listener.
    pub metrics_addr: Option<String>,
    /// Poll every feed once, deliver, exit.
    pub once: bool,
    /// The `--config` file, read again on SIGHUP.
    pub config_file: Option<std::path::PathBuf>,
}

/// The setting names (config-file keys) that are process-wide.
pub const PROCESS_KEYS: &[&str] = &[
    "rust_log",
    "shutdown_timeout",
    "metrics_addr",
    "config_file",
];

/// What `run` needs: the process settings and one `Config` per feed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub process: ProcessConfig,
    pub feeds: Vec<Config>,
}

/// The settings of one feed: where it is fetched, how it is converted, where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub fetch: FetchSettings,
    pub kafka: KafkaSettings,
    pub sink: SinkKind,
    pub poll_interval: Duration,
    pub source_id: String,
    pub event_type: String,
    pub names: FieldNames,
    pub mode: Mode,
    pub record_timestamp: RecordTimestamp,
    pub skip_unchanged: SkipUnchanged,
    /// How long one poll's delivery may retry before the poll counts as failed.
    pub delivery_timeout: Duration,
    /// Bound of one poll's JSON; a feed that would make more is refused while it is written.
    pub max_document_bytes: usize,
    /// Bound of unsent snapshots held in memory (and in the spool); oldest dropped beyond.
    pub queue_max_bytes: usize,
    /// Crash-safe copies of unsent snapshots; `None` = memory only.
    pub spool_dir: Option<std::path::PathBuf>,
    /// node_exporter textfile to rewrite after each poll.
    pub metrics_textfile: Option<std::path::PathBuf>,
}

/// An invalid setting: names it (env var and flag) and says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// One setting: its env var (if any), its flag, and whether the flag takes a value.
struct Setting {
    env: Option<&'static str>,
    flag: &'static str,
    takes_value: bool,
}

const SETTINGS: &[Setting] = &[
    s(Some("VEHICLE_URL"), "--vehicle-url"),
    s(Some("KAFKA_BROKER"), "--kafka-broker"),
    s(Some("KAFKA_TOPIC"), "--kafka-topic"),
    s(Some("POLL_INTERVAL"), "--poll-interval"),
    s(Some("SOURCE_ID"), "--source-id"),
    s(Some("EVENT_TYPE"), "--event-type"),
    s(Some("SINK"), "--sink"),
    s(Some("JSON_NAMES"), "--json-names"),
    s(Some("MODE"), "--mode"),
    s(Some("RECORD_TIMESTAMP"), "--record-timestamp"),
    s(Some("SKIP_UNCHANGED"), "--skip-unchanged"),
    s(Some("KAFKA_ACKS"), "--acks"),
    s(Some("KAFKA_COMPRESSION"), "--compression"),
    s(Some("KAFKA_REQUEST_TIMEOUT"), "--kafka-request-timeout"),
    s(Some("KAFKA_CLIENT_ID"), "--client-id"),
    s(Some("DELIVERY_TIMEOUT"), "--delivery-timeout"),
    s(Some("SHUTDOWN_TIMEOUT"), "--shutdown-timeout"),
    s(Some("HTTP_TIMEOUT"), "--http-timeout"),
    s(Some("HTTP_CONNECT_TIMEOUT"), "--http-connect-timeout"),
    s(Some("MAX_BODY_BYTES"), "--max-body-bytes"),
    s(Some("MAX_REDIRECTS"), "--max-redirects"),
    s(Some("MAX_DOCUMENT_BYTES"), "--max-document-bytes"),
    s(Some("HTTP_CA_LOCATION"), "--http-ca-location"),
    s(Some("FEED_API_KEY_FILE"), "--feed-api-key-file"),
    s(Some("FEED_API_KEY_PARAM"), "--feed-api-key-param"),
    s(Some("FEED_API_KEY_HEADER"), "--feed-api-key-header"),
    s(Some("RUST_LOG"), "--log-level"),
    s(Some("CONFIG_FILE"), "--config"),
    s(Some("QUEUE_MAX_BYTES"), "--queue-max-bytes"),
    s(Some("SPOOL_DIR"), "--spool-dir"),
    s(Some("METRICS_ADDR"), "--metrics-addr"),
    s(Some("METRICS_TEXTFILE"), "--metrics-textfile"),
    s(Some("KAFKA_IDEMPOTENCE"), "--idempotence"),
    s(Some("TOPIC_PARTITIONS"), "--topic-partitions"),
    s(
        Some("TOPIC_REPLICATION_FACTOR"),
        "--topic-replication-factor",
    ),
    s(Some("TOPIC_CONFIG"), "--topic-config"),
    s(Some("CREATE_TOPIC"), "--create-topic"),
    Setting {
        env: None,
        flag: "--once",
        takes_value: false,
    },
];

const fn s(env: Option<&'static str>, flag: &'static str) -> Setting {
    Setting {
        env,
        flag,
        takes_value: true,
    }
}

/// Kafka client properties for `-X name=value`, each with its env var. Only these are accepted.
const KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("security.protocol", "KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "KAFKA_SASL_MECHANISM"),
    ("sasl.username", "KAFKA_SASL_USERNAME"),
    ("sasl.password", "KAFKA_SASL_PASSWORD"),
    ("ssl.ca.location", "KAFKA_SSL_CA_LOCATION"),
    ("ssl.certificate.location", "KAFKA_SSL_CERTIFICATE_LOCATION"),
    ("ssl.key.location", "KAFKA_SSL_KEY_LOCATION"),
];

/// "KAFKA_SASL_USERNAME / -X sasl.username", for error messages.
fn property_name(property: &str) -> String {
    match KAFKA_PROPERTIES.iter().find(|(p, _)| *p == property) {
        Some((p, env)) => format!("{env} / -X {p}"),
        None => format!("-X {property}"),
    }
}

/// One `-X name=value`: a known property (librdkafka's `sasl.mechanisms` spelling accepted).
fn parse_property(arg: Option<String>) -> Result<(&'static str, String), ConfigError> {
    let arg = arg.ok_or_else(|| usage("-X needs name=value".to_string()))?;
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| usage(format!("-X {arg:?} is not name=value")))?;
    let name = name.trim();
    let canonical = if name == "sasl.mechanisms" {
        "sasl.mechanism"
    } else {
        name
    };
    if let Some((p, _)) = KAFKA_PROPERTIES.iter().find(|(p, _)| *p == canonical) {
        return Ok((p, value.to_string()));
    }
    let known: Vec<&str> = KAFKA_PROPERTIES.iter().map(|(p, _)| *p).collect();
    Err(match name {
        "ssl.key.password" => ConfigError {
            setting: "-X ssl.key.password".to_string(),
            reason: "encrypted private keys are not supported: decrypt the key \
                     (openssl pkcs8 -topk8 -nocrypt) and protect the file instead"
                .to_string(),
        },
        _ => usage(format!(
            "unknown -X property {name:?} (supported: {})",
            known.join(", ")
        )),
    })
}

/// Raw values gathered from flags and env, before typing.
struct Raw<'e> {
    flags: Vec<(&'static Setting, Option<String>)>,
    /// `-X name=value` Kafka properties, in command-line order.
    properties: Vec<(&'static str, String)>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Raw<'_> {
    /// The flag's value if given (last one wins), else the env var's, else `None`.
    fn get(&self, flag: &str) -> Option<(String, String)> {
        let from_flag = self
            .flags
            .iter()
            .rev()
            .find(|(s, _)| s.flag == flag)
            .and_then(|(s, v)| v.clone().map(|v| (s.flag.to_string(), v)));
        if from_flag.is_some() {
            return from_flag;
        }
        let setting = SETTINGS.iter().find(|s| s.flag == flag)?;
        let env = setting.env?;
        (self.env)(env)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (env.to_string(), v))
    }

    /// A Kafka property: `-X` (last one wins), else its env var; `None` when unset or blank.
    fn property(&self, property: &str) -> Option<String> {
        let from_flag = self
            .properties
            .iter()
            .rev()
            .find(|(p, _)| *p == property)
            .map(|(_, v)| v.clone());
        let env = KAFKA_PROPERTIES
            .iter()
            .find(|(p, _)| *p == property)
            .map(|(_, env)| *env);
        from_flag
            .or_else(|| env.and_then(|e| (self.env)(e)))
            .filter(|v| !v.trim().is_empty())
    }

    /// An env-only variable, `None` when unset or blank.
    fn env_var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// A setting given but empty is an error naming it: an empty value never means "use the
    /// default" (unset the variable for that).
    fn refuse_blank(&self) -> Result<(), ConfigError> {
        for (setting, value) in &self.flags {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError {
                    setting: setting_name(setting.flag),
                    reason: "is empty; give a value or leave the option out".to_string(),
                });
            }
        }
        for env in setting_env_names() {
            if (self.env)(env).is_some_and(|v| v.trim().is_empty()) {
                let flag = SETTINGS.iter().find(|s| s.env == Some(env));
                return Err(ConfigError {
                    setting: flag.map_or_else(|| env.to_string(), |s| setting_name(s.flag)),
                    reason: "is set but empty; give a value or unset it to use the default"
                        .to_string(),
                });
            }
        }
        Ok(())
    }

    fn has_switch(&self, flag: &str) -> bool {
        self.flags.iter().any(|(s, _)| s.flag == flag)
    }

    fn string(&self, flag: &str, default: &str) -> String {
        self.get(flag)
            .map(|(_, v)| v)
            .unwrap_or_else(|| default.to_string())
    }

    /// Parses with `parse`; an error names "ENV / --flag" and the offending value.
    fn typed<T>(
        &self,
        flag: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(flag) {
            None => Ok(default),
            Some((_, v)) => parse(v.trim()).map_err(|reason| ConfigError {
                setting: setting_name(flag),
                reason,
            }),
        }
    }
}

/// "KAFKA_BROKER / --kafka-broker", for error messages.
fn setting_name(flag: &str) -> String {
    match SETTINGS.iter().find(|s| s.flag == flag).and_then(|s| s.env) {
        Some(env) => format!("{env} / {flag}"),
        None => flag.to_string(),
    }
}

/// Parses `args` (without the program name) and the environment through `env`.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let mut args = args.into_iter().peekable();
    let mut subcommand = None;
    if let Some(first) = args.peek() {
        if first == "convert" || first == "replay" {
            subcommand = args.next();
        }
    }
    let mut raw = Raw {
        flags: Vec::new(),
        properties: Vec::new(),
        env,
    };
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-" => positional.push(arg),
            "-X" => raw.properties.push(parse_property(args.next())?),
            a if a.starts_with("-X") => raw
                .properties
                .push(parse_property(Some(a[2..].to_string()))?),
            a if a.starts_with("--") => raw.flags.push(parse_flag(a, &mut args)?),
            a if a.starts_with('-') => return Err(usage(format!("unknown option {a}"))),
            _ => positional.push(arg),
        }
    }
    if subcommand.as_deref() != Some("convert") {
        raw.refuse_blank()?;
    }
    match subcommand.as_deref() {
        Some("convert") => convert_config(&raw, positional),
        Some(_) if positional.is_empty() => {
            Err(usage("replay takes one or more FILES or a DIR".to_string()))
        }
        Some(_) => Ok(Command::Replay {
            process: process_config(&raw, None)?,
            config: Box::new(run_config(&raw)?),
            inputs: positional,
        }),
        None if !positional.is_empty() => Err(usage(format!(
            "unexpected argument {:?} (subcommands: `convert FILE|-`, `replay FILES…|DIR`)",
            positional[0]
        ))),
        None => match raw.get("--config") {
            Some((setting, path)) => run_from_file(&raw, &setting, &path).map(Command::Run),
            None => Ok(Command::Run(RunConfig {
                process: process_config(&raw, None)?,
                feeds: vec![run_config(&raw)?],
            })),
        },
    }
}

/// `--config FILE`: the process settings from the file's top level, and one `Config` per
/// `[[feed]]`. Each feed setting comes from the flags, else the feed's table, else the file's
/// top level, else the environment, else the default — and is validated exactly like the
/// env-only path. A process-wide key inside `[[feed]]` is an error naming it.
fn run_from_file(raw: &Raw, setting: &str, path: &str) -> Result<RunConfig, ConfigError> {
    let file_error = |reason: String| ConfigError {
        setting: format!("{setting} {path}"),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let file = config_file::parse(&text).map_err(|e| file_error(e.to_string()))?;
    // Every setting's env var name is a key.
    let known: Vec<String> = setting_env_names().map(str::to_ascii_lowercase).collect();
    let all_keys = file.defaults.iter().chain(file.feeds.iter().flatten());
    if let Some((key, _)) = all_keys.clone().find(|(k, _)| !known.contains(k)) {
        let hint = match closest_setting(key) {
            Some(k) => format!("did you mean {}?", k.to_ascii_lowercase()),
            None => "keys are the environment variable names".to_string(),
        };
        return Err(file_error(format!("unknown setting {key:?} ({hint})")));
    }
    for (index, feed) in file.feeds.iter().enumerate() {
        if let Some((key, _)) = feed
            .iter()
            .find(|(k, _)| PROCESS_KEYS.contains(&k.as_str()))
        {
            return Err(file_error(format!(
                "{key} in [[feed]] #{} is process-wide: set it once at the top of the file",
                index + 1
            )));
        }
    }
    if file.feeds.is_empty() {
        return Err(file_error("no [[feed]] table".to_string()));
    }
    let top_lookup = |name: &str| match file
        .defaults
        .iter()
        .find(|(k, _)| *k == name.to_ascii_lowercase())
    {
        Some((_, v)) => Some(v.clone()),
        None => (raw.env)(name),
    };
    let top_raw = Raw {
        flags: raw.flags.clone(),
        properties: raw.properties.clone(),
        env: &top_lookup,
    };
    top_raw.refuse_blank()?;
    let process = process_config(&top_raw, Some(path.to_string()))?;
    let mut configs: Vec<Config> = Vec::new();
    for index in 0..file.feeds.len() {
        let lookup = |name: &str| {
            file.get(index, &name.to_ascii_lowercase())
                .map(str::to_string)
                .or_else(|| (raw.env)(name))
        };
        let feed_raw = Raw {
            flags: raw.flags.clone(),
            properties: raw.properties.clone(),
            env: &lookup,
        };
        let in_feed = |e: ConfigError| ConfigError {
            setting: format!("{} in [[feed]] #{} of {path}", e.setting, index + 1),
            reason: e.reason,
        };
        feed_raw.refuse_blank().map_err(in_feed)?;
        let mut config = run_config(&feed_raw).map_err(in_feed)?;
        if configs.iter().any(|c| c.source_id == config.source_id) {
            return Err(file_error(format!(
                "two feeds share source_id {:?}; each feed needs its own",
                config.source_id
            )));
        }
        // Feeds share one spool directory and textfile setting; each keeps its own apart.
        config.spool_dir = config.spool_dir.map(|d| d.join(&config.source_id));
        config.metrics_textfile = config.metrics_textfile.map(|path| {
            let stem = path.file_stem().map_or_else(
                || "gtfs_rt_kafka".to_string(),
                |s| s.to_string_lossy().into_owned(),
            );
            path.with_file_name(format!("{stem}.{}.prom", config.source_id))
        });
        configs.push(config);
    }
    Ok(RunConfig {
        process,
        feeds: configs,
    })
}

/// Every environment variable this program reads.
fn known_env_names() -> Vec<&'static str> {
    setting_env_names()
        .chain([
            "STATE_DIRECTORY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ])
        .collect()
}

/// The env var of every setting: the flag-backed ones, the Kafka security properties, and the
/// secrets that are env/file only. Config-file keys are these in any case.
fn setting_env_names() -> impl Iterator<Item = &'static str> {
    SETTINGS
        .iter()
        .filter_map(|s| s.env)
        .chain(KAFKA_PROPERTIES.iter().map(|(_, env)| *env))
        .chain(["KAFKA_SASL_PASSWORD_FILE", "FEED_API_KEY"])
}

/// The known name closest to `name` when it is a likely typo of it (a letter or two off).
pub fn closest_setting(name: &str) -> Option<&'static str> {
    closest_in(name, &known_env_names())
}

fn closest_in(name: &str, known: &[&'static str]) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let allowed = if upper.len() >= 8 { 2 } else { 1 };
    known
        .iter()
        .copied()
        .map(|known| (edit_distance(&upper, known), known))
        // Distance 0 here is the right name in the wrong case (`kafka_topic`): still a typo
        // for the environment, which is case-sensitive.
        .filter(|(d, known)| *d <= allowed && name != *known)
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

/// Environment variables that look like ours but aren't (`KAFKA_BROKERS`, `POLL_INTERVALL`),
/// each with the name it probably meant: for one warning line each.
pub fn lookalike_env(names: impl Iterator<Item = String>) -> Vec<(String, &'static str)> {
    let known = known_env_names();
    names
        .filter(|n| !known.contains(&n.as_str()))
        .filter_map(|n| closest_in(&n, &known).map(|k| (n, k)))
        .collect()
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn usage(reason: String) -> ConfigError {
    ConfigError {
        setting: "usage".to_string(),
        reason: format!("{reason}; see --help"),
    }
}

fn parse_flag(
    arg: &str,
    rest: &mut impl Iterator<Item = String>,
) -> Result<(&'static Setting, Option<String>), ConfigError> {
    let (name, inline) = match arg.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (arg, None),
    };
    let setting = SETTINGS
        .iter()
        .find(|s| s.flag == name)
        .ok_or_else(|| usage(format!("unknown option {name}")))?;
    if !setting.takes_value {
        return match inline {
            Some(_) => Err(usage(format!("{name} takes no value"))),
            None => Ok((setting, None)),
        };
    }
    match inline.or_else(|| rest.next()) {
        Some(v) => Ok((setting, Some(v))),
        None => Err(usage(format!("{name} needs a value"))),
    }
}

fn convert_config(raw: &Raw, positional: Vec<String>) -> Result<Command, ConfigError> {
    if positional.len() != 1 {
        return Err(usage("convert takes exactly one FILE or -".to_string()));
    }
    let input = positional.into_iter().next().filter(|p| p != "-");
    Ok(Command::Convert(ConvertConfig {
        input,
        names: raw.typed("--json-names", FieldNames::Proto, parse_names)?,
        source_id: raw.string("--source-id", Defaults::SOURCE_ID),
        event_type: raw.string("--event-type", Defaults::EVENT_TYPE),
    }))
}

fn process_config(raw: &Raw, config_file: Option<String>) -> Result<ProcessConfig, ConfigError> {
    Ok(ProcessConfig {
        log: raw.typed("--log-level", LogFilter::default(), LogFilter::parse)?,
        shutdown_timeout: raw.typed(
            "--shutdown-timeout",
            Defaults::SHUTDOWN_TIMEOUT,
            parse_secs,
        )?,
        metrics_addr: raw.typed("--metrics-addr", None, |v| match v.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Some(v.to_string()))
            }
            _ => Err(format!(
                "{v:?} is not HOST:PORT (e.g. 0.0.0.0:9464 or 127.0.0.1:9464)"
            )),
        })?,
        once: raw.has_switch("--once"),
        config_file: config_file.map(Into::into),
    })
}

fn run_config(raw: &Raw) -> Result<Config, ConfigError> {
    let url = raw.string("--vehicle-url", Defaults::VEHICLE_URL);
    validate_url(&url).map_err(|reason| ConfigError {
        setting: setting_name("--vehicle-url"),
        reason,
    })?;
    let brokers = raw.string("--kafka-broker", Defaults::KAFKA_BROKER);
    let bootstrap = parse_bootstrap(&brokers).map_err(|reason| ConfigError {
        setting: setting_name("--kafka-broker"),
        reason,
    })?;
    let topic = raw.string("--kafka-topic", Defaults::KAFKA_TOPIC);
    validate_topic(&topic).map_err(|reason| ConfigError {
        setting: setting_name("--kafka-topic"),
        reason,
    })?;
    let (security_protocol, tls, sasl) = kafka_security(raw)?;
    let ca =
        match raw.get("--http-ca-location") {
            None => None,
            Some((_, path)) => Some(CaFile::load(std::path::Path::new(&path)).map_err(
                |reason| ConfigError {
                    setting: setting_name("--http-ca-location"),
                    reason,
                },
            )?),
        };
    let api_key = feed_api_key(raw)?;
    let poll_interval = raw.typed("--poll-interval", Defaults::POLL_INTERVAL, parse_secs)?;
    let acks = raw.typed("--acks", AcksSetting::All, parse_acks)?;
    // Idempotence needs acks=all; an explicit weaker acks turns the default off.
    let idempotence_default = acks == AcksSetting::All;
    let idempotence = raw.typed("--idempotence", idempotence_default, parse_bool)?;
    if idempotence && acks != AcksSetting::All {
        return Err(ConfigError {
            setting: setting_name("--idempotence"),
            reason: "needs KAFKA_ACKS=all".to_string(),
        });
    }
    if poll_interval < Duration::from_millis(100) {
        return Err(ConfigError {
            setting: setting_name("--poll-interval"),
            reason: "must be at least 0.1 seconds".to_string(),
        });
    }
    Ok(Config {
        fetch: FetchSettings {
            url,
            timeout: raw.typed("--http-timeout", Defaults::HTTP_TIMEOUT, parse_timeout)?,
            connect_timeout: raw.typed(
                "--http-connect-timeout",
                Defaults::HTTP_CONNECT_TIMEOUT,
                parse_timeout,
            )?,
            max_body_bytes: raw.typed("--max-body-bytes", Defaults::MAX_BODY_BYTES, parse_bytes)?,
            max_redirects: raw.typed("--max-redirects", Defaults::MAX_REDIRECTS, |v| {
                v.parse::<u32>()
                    .map_err(|_| format!("{v:?} is not a whole number"))
            })?,
            ca,
            api_key,
        },
        kafka: KafkaSettings {
            bootstrap,
            topic,
            acks,
            compression: raw.typed("--compression", CompressionSetting::None, parse_compression)?,
            request_timeout: raw.typed(
                "--kafka-request-timeout",
                Defaults::KAFKA_REQUEST_TIMEOUT,
                parse_timeout,
            )?,
            client_id: raw.string("--client-id", Defaults::CLIENT_ID),
            idempotence,
            security_protocol,
            tls,
            sasl,
            create_topic: new_topic(raw)?,
        },
        sink: raw.typed("--sink", SinkKind::Kafka, parse_sink)?,
        poll_interval,
        source_id: raw.string("--source-id", Defaults::SOURCE_ID),
        event_type: raw.string("--event-type", Defaults::EVENT_TYPE),
        names: raw.typed("--json-names", FieldNames::Proto, parse_names)?,
        mode: raw.typed("--mode", Mode::Feed, parse_mode)?,
        record_timestamp: raw.typed("--record-timestamp", RecordTimestamp::Send, |v| {
            match v.to_ascii_lowercase().as_str() {
                "send" => Ok(RecordTimestamp::Send),
                "feed" => Ok(RecordTimestamp::Feed),
                _ => Err(format!("{v:?} is not one of send, feed")),
            }
        })?,
        skip_unchanged: raw.typed("--skip-unchanged", SkipUnchanged::Off, |v| {
            match v.to_ascii_lowercase().as_str() {
                "off" | "false" | "no" => Ok(SkipUnchanged::Off),
                "body" => Ok(SkipUnchanged::Body),
                "timestamp" | "on" | "true" => Ok(SkipUnchanged::Timestamp),
                _ => Err(format!("{v:?} is not one of off, body, timestamp")),
            }
        })?,
        delivery_timeout: raw.typed(
            "--delivery-timeout",
            Defaults::DELIVERY_TIMEOUT,
            parse_timeout,
        )?,
        max_document_bytes: raw
            .typed(
                "--max-document-bytes",
                Defaults::MAX_DOCUMENT_BYTES,
                parse_bytes,
            )?
            .try_into()
            .unwrap_or(usize::MAX),
        queue_max_bytes: raw
            .typed("--queue-max-bytes", Defaults::QUEUE_MAX_BYTES, parse_bytes)?
            .try_into()
            .unwrap_or(usize::MAX),
        spool_dir: spool_dir(raw),
        metrics_textfile: raw.get("--metrics-textfile").map(|(_, v)| v.into()),
    })
}

/// `CREATE_TOPIC=true` / `--create-topic true` with its partitions, replication and configs.
fn new_topic(raw: &Raw) -> Result<Option<NewTopic>, ConfigError> {
    if !raw.typed("--create-topic", false, parse_bool)? {
        return Ok(None);
    }
    let partitions = raw.typed("--topic-partitions", -1, |v| match v.parse::<i32>() {
        Ok(n) if n >= 1 || n == -1 => Ok(n),
        _ => Err(format!(
            "{v:?} is not a partition count (1.., or -1 for the broker default)"
        )),
    })?;
    let replication_factor = raw.typed("--topic-replication-factor", -1, |v| {
        match v.parse::<i16>() {
            Ok(n) if n >= 1 || n == -1 => Ok(n),
            _ => Err(format!("{v:?} is not a replication factor (1.., or -1)")),
        }
    })?;
    let configs = raw.typed("--topic-config", Vec::new(), |v| {
        v.split(',')
            .map(str::trim)
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, val)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_string(), val.trim().to_string()))
                }
                _ => Err(format!(
                    "{kv:?} is not name=value (e.g. retention.ms=86400000)"
                )),
            })
            .collect()
    })?;
    Ok(Some(NewTopic {
        partitions,
        replication_factor,
        configs,
    }))
}

/// A secret from `from_flag`, else the env var `var`, else the file `file_var` names (its
/// trailing line break dropped). `var` and a file from the environment at once is an error:
/// which one is meant?
fn secret(
    raw: &Raw,
    setting: &str,
    from_flag: Option<String>,
    var: &str,
    file_var: (&str, Option<(String, String)>),
) -> Result<Option<Secret>, ConfigError> {
    let (file_setting, file) = file_var;
    if let Some(v) = from_flag {
        return Ok(Some(Secret::new(v)));
    }
    // A file named by a flag wins over the env var, as every flag does.
    let direct = match &file {
        Some((source, _)) if source.starts_with("--") => None,
        _ => raw.env_var(var),
    };
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError {
            setting: format!("{setting} / {file_setting}"),
            reason: "both are set; set one".to_string(),
        }),
        (Some(v), None) => Ok(Some(Secret::new(v))),
        (None, Some((_, path))) => {
            let bad = |reason: String| ConfigError {
                setting: file_setting.to_string(),
                reason,
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| bad(format!("cannot read {path}: {e}")))?;
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(bad(format!("{path} is empty")));
            }
            if value.chars().any(char::is_control) {
                // A CR/LF inside would break the request line or header on every poll.
                return Err(bad(format!(
                    "{path} holds a line break or control character inside the value \
                     (one line, the secret only)"
                )));
            }
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

/// `security.protocol` and what it needs: TLS files, SASL mechanism and credentials. Settings
/// for a layer the protocol doesn't use are an error, not silently ignored.
fn kafka_security(raw: &Raw) -> Result<(SecurityProtocol, Option<Tls>, Option<Sasl>), ConfigError> {
    let bad = |property: &str, reason: String| ConfigError {
        setting: property_name(property),
        reason,
    };
    let protocol = match raw.property("security.protocol") {
        None => SecurityProtocol::Plaintext,
        Some(v) => match v.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            _ => {
                return Err(bad(
                    "security.protocol",
                    format!("{v:?} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
                ))
            }
        },
    };
    let password_file = raw
        .env_var("KAFKA_SASL_PASSWORD_FILE")
        .map(|p| ("KAFKA_SASL_PASSWORD_FILE".to_string(), p));
    let sasl_set = ["sasl.mechanism", "sasl.username", "sasl.password"]
        .iter()
        .find(|p| raw.property(p).is_some())
        .map(|p| p.to_string())
        .or(password_file
            .as_ref()
            .map(|_| "KAFKA_SASL_PASSWORD_FILE".to_string()));
    let ssl_set = [
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
    ]
    .into_iter()
    .find(|p| raw.property(p).is_some());

    let tls = if protocol.tls() {
        let path = |p: &str| raw.property(p).map(std::path::PathBuf::from);
        let files = TlsFiles {
            ca: path("ssl.ca.location"),
            certificate: path("ssl.certificate.location"),
            key: path("ssl.key.location"),
        };
        Some(Tls::new(files).map_err(|e| match e {
            crate::kafka::KafkaError::Config { setting, reason } => bad(setting, reason),
            other => bad("security.protocol", other.to_string()),
        })?)
    } else {
        if let Some(p) = ssl_set {
            return Err(bad(
                p,
                format!(
                    "set, but security.protocol is {}; use SSL or SASL_SSL",
                    protocol.name()
                ),
            ));
        }
        None
    };

    let sasl = if protocol.sasl() {
        let mechanism = match raw.property("sasl.mechanism") {
            None => {
                return Err(bad(
                    "sasl.mechanism",
                    format!(
                        "required with {}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                        protocol.name()
                    ),
                ))
            }
            Some(v) => SaslMechanism::ALL
                .into_iter()
                .find(|m| m.name().eq_ignore_ascii_case(v.trim()))
                .ok_or_else(|| {
                    bad(
                        "sasl.mechanism",
                        format!("{v:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                    )
                })?,
        };
        let username = raw.property("sasl.username").ok_or_else(|| {
            bad(
                "sasl.username",
                format!("required with {}", protocol.name()),
            )
        })?;
        let from_flag = raw
            .properties
            .iter()
            .rev()
            .find(|(p, _)| *p == "sasl.password")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty());
        let password = secret(
            raw,
            &property_name("sasl.password"),
            from_flag,
            "KAFKA_SASL_PASSWORD",
            ("KAFKA_SASL_PASSWORD_FILE", password_file),
        )?
        .ok_or_else(|| ConfigError {
            setting: format!(
                "{} or KAFKA_SASL_PASSWORD_FILE",
                property_name("sasl.password")
            ),
            reason: format!("required with {}", protocol.name()),
        })?;
        Some(Sasl {
            mechanism,
            username,
            password,
        })
    } else {
        if let Some(p) = sasl_set {
            let setting = if p.contains('.') {
                property_name(&p)
            } else {
                p
            };
            return Err(ConfigError {
                setting,
                reason: format!(
                    "set, but security.protocol is {}; use SASL_PLAINTEXT or SASL_SSL",
                    protocol.name()
                ),
            });
        }
        None
    };
    Ok((protocol, tls, sasl))
}

/// `FEED_API_KEY` or `FEED_API_KEY_FILE`, with exactly one of `FEED_API_KEY_PARAM` (query
/// parameter name) or `FEED_API_KEY_HEADER` (header name).
fn feed_api_key(raw: &Raw) -> Result<Option<FeedApiKey>, ConfigError> {
    let key = secret(
        raw,
        "FEED_API_KEY",
        None,
        "FEED_API_KEY",
        (
            &setting_name("--feed-api-key-file"),
            raw.get("--feed-api-key-file"),
        ),
    )?;
    let param = raw.get("--feed-api-key-param").map(|(_, v)| v);
    let header = raw.get("--feed-api-key-header").map(|(_, v)| v);
    let place = match (param, header) {
        (Some(_), Some(_)) => {
            return Err(ConfigError {
                setting: format!(
                    "{} / {}",
                    setting_name("--feed-api-key-param"),
                    setting_name("--feed-api-key-header")
                ),
                reason: "both are set; the key goes in the query or in a header".to_string(),
            })
        }
        (Some(p), None) => {
            let p = p.trim().to_string();
            if p.contains(['&', '=', '#', '?']) {
                return Err(ConfigError {
                    setting: setting_name("--feed-api-key-param"),
                    reason: format!("{p:?} is not a query parameter name"),
                });
            }
            Some(KeyPlace::Query(p))
        }
        (None, Some(h)) => {
            let h = h.trim().to_string();
            // RFC 9110 token characters.
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if h.is_empty() || !h.chars().all(token) {
                return Err(ConfigError {
                    setting: setting_name("--feed-api-key-header"),
                    reason: format!("{h:?} is not a header name"),
                });
            }
            Some(KeyPlace::Header(h))
        }
        (None, None) => None,
    };
    match (key, place) {
        (Some(key), Some(place)) => Ok(Some(FeedApiKey { key, place })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError {
            setting: "FEED_API_KEY".to_string(),
            reason: "set, but not where it goes: set FEED_API_KEY_PARAM (e.g. acl:consumerKey) \
                     or FEED_API_KEY_HEADER (e.g. x-api-key)"
                .to_string(),
        }),
        (None, Some(_)) => Err(ConfigError {
            setting: "FEED_API_KEY".to_string(),
            reason: "FEED_API_KEY_PARAM or FEED_API_KEY_HEADER is set without a key: set \
                     FEED_API_KEY or FEED_API_KEY_FILE"
                .to_string(),
        }),
    }
}

/// `SPOOL_DIR`/`--spool-dir`, else systemd's `$STATE_DIRECTORY` (first entry), else none.
fn spool_dir(raw: &Raw) -> Option<std::path::PathBuf> {
    if let Some((_, dir)) = raw.get("--spool-dir") {
        return Some(dir.into());
    }
    (raw.env)("STATE_DIRECTORY")
        .and_then(|dirs| dirs.split(':').next().map(str::to_string))
        .filter(|d| !d.is_empty())
        .map(Into::into)
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

fn validate_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = ["http://", "https://", "file://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
        .ok_or_else(|| "must start with http://, https:// or file://".to_string())?;
    if rest.is_empty() || rest.starts_with('?') {
        return Err("has no host or path".to_string());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".to_string());
    }
    crate::fetch::check_url(url)
}

/// "a:1,b" → ["a:1", "b:9092"]; rejects empty entries and bad ports.
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(format!("{list:?} has an empty broker entry"));
        }
        let entry = entry
            .strip_prefix("PLAINTEXT://")
            .or_else(|| entry.strip_prefix("plaintext://"))
            .unwrap_or(entry);
        out.push(with_port(entry)?);
    }
    Ok(out)
}

fn with_port(entry: &str) -> Result<String, String> {
    // "[::1]:9092" or "[::1]" for IPv6; otherwise the last ':' splits host and port.
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{entry:?} has an unclosed '['"))?;
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (entry.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{entry:?} has no host"));
    }
    let port = match port {
        None => Defaults::KAFKA_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{entry:?} has an invalid port {p:?}")),
        },
    };
    Ok(format!("{host}:{port}"))
}

/// Kafka's own rule: 1–249 chars of [a-zA-Z0-9._-], not "." or "..".
fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err("must be 1 to 249 characters".to_string());
    }
    if topic == "." || topic == ".." {
        return Err("cannot be \".\" or \"..\"".to_string());
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{topic:?} contains {c:?}; allowed are a-z A-Z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// Seconds, possibly fractional ("60", "0.5"), or with a unit suffix ("500ms", "2s", "5m").
pub fn parse_secs(v: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| {
            format!("{v:?} is not a number of seconds (units: 500ms, 30s, 2m, 1h; a plain number is seconds)")
        })?;
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("{v:?} is out of range (0 to one year)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Like `parse_secs`, for timeouts: zero would fail every attempt at once.
fn parse_timeout(v: &str) -> Result<Duration, String> {
    let d = parse_secs(v)?;
    if d.is_zero() {
        return Err(format!("{v:?}: a timeout must be more than 0"));
    }
    Ok(d)
}

/// Bytes with an optional binary suffix: "1048576", "512KiB", "64MiB", "1GiB" (also K/M/G).
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{v:?} is not a byte count like 64MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (use KiB, MiB or GiB)")),
    };
    match n.checked_mul(scale) {
        Some(b) if b > 0 => Ok(b),
        _ => Err(format!("{v:?} is out of range")),
    }
}

fn parse_acks(v: &str) -> Result<AcksSetting, String> {
    match v.to_ascii_lowercase().as_str() {
        "all" | "-1" => Ok(AcksSetting::All),
        "1" | "leader" => Ok(AcksSetting::Leader),
        "0" | "none" => Ok(AcksSetting::None),
        _ => Err(format!("{v:?} is not one of all, -1, 1, 0")),
    }
}

fn parse_compression(v: &str) -> Result<CompressionSetting, String> {
    match v.to_ascii_lowercase().as_str() {
        "none" => Ok(CompressionSetting::None),
        "gzip" => Ok(CompressionSetting::Gzip),
        "snappy" => Ok(CompressionSetting::Snappy),
        "lz4" => Ok(CompressionSetting::Lz4),
        "zstd" => Ok(CompressionSetting::Zstd),
        _ => Err(format!("{v:?} is not one of none, gzip, snappy, lz4, zstd")),
    }
}

fn parse_sink(v: &str) -> Result<SinkKind, String> {
    match v.to_ascii_lowercase().as_str() {
        "kafka" => Ok(SinkKind::Kafka),
        "stdout" => Ok(SinkKind::Stdout),
        _ => Err(format!("{v:?} is not one of kafka, stdout")),
    }
}

fn parse_mode(v: &str) -> Result<Mode, String> {
    match v.to_ascii_lowercase().as_str() {
        "feed" => Ok(Mode::Feed),
        "entity" => Ok(Mode::Entity),
        _ => Err(format!("{v:?} is not one of feed, entity")),
    }
}

fn parse_names(v: &str) -> Result<FieldNames, String> {
    match v.to_ascii_lowercase().as_str() {
        "proto" | "snake" => Ok(FieldNames::Proto),
        "camel" => Ok(FieldNames::Camel),
        _ => Err(format!("{v:?} is not one of proto, camel")),
    }
}

/// Accepts a plain level ("debug") or an env_logger-style filter whose bare level is taken
/// ("info,gtfs_rt_kafka=debug" → info), so an existing RUST_LOG doesn't stop the daemon.
pub const HELP: &str = "\
gtfs-rt-kafka: poll a GTFS-Realtime feed, convert it to protobuf JSON, produce it to Kafka.

USAGE:
    gtfs-rt-kafka [OPTIONS]              poll forever (or once with --once)
    gtfs-rt-kafka convert FILE|- [OPTIONS]   print the JSON document for a .pb file
    gtfs-rt-kafka replay FILE...|DIR [OPTIONS]
                                         send archived captures in order (backfill, testing)

Every option can also be set from the environment variable shown; the flag wins.

FEED
    --vehicle-url URL          VEHICLE_URL        http://, https:// or file:// feed URL
                                                  [default: ODPT Toei train vehicle positions]
    --poll-interval SECS       POLL_INTERVAL      seconds between polls [default: 60]
    --http-timeout SECS        HTTP_TIMEOUT       whole request incl. body [default: 30]
    --http-connect-timeout S   HTTP_CONNECT_TIMEOUT [default: 10]
    --max-body-bytes N         MAX_BODY_BYTES     refuse larger bodies [default: 64MiB]
    --max-redirects N          MAX_REDIRECTS      [default: 5]
    --max-document-bytes N     MAX_DOCUMENT_BYTES refuse a poll whose JSON would be larger
                                                  [default: 16MiB]
    --http-ca-location PEM     HTTP_CA_LOCATION   CA for https feeds [default: bundled Mozilla roots]
    --feed-api-key-file PATH   FEED_API_KEY_FILE  the feed's API key, from a file (or FEED_API_KEY)
    --feed-api-key-param NAME  FEED_API_KEY_PARAM sent as query parameter NAME (e.g. acl:consumerKey)
    --feed-api-key-header NAME FEED_API_KEY_HEADER or as header NAME (e.g. x-api-key)

DOCUMENT
    --source-id ID             SOURCE_ID          [default: toei_vehicle_api]
    --event-type TYPE          EVENT_TYPE         [default: gtfs_realtime_vehicle]
    --json-names proto|camel   JSON_NAMES         field names [default: proto]
    --mode feed|entity         MODE               one record per poll, or one per entity keyed by id
                                                  (header copied into each) [default: feed]
    --record-timestamp send|feed RECORD_TIMESTAMP Kafka record time: send time or header.timestamp
                                                  [default: send]
    --skip-unchanged MODE      SKIP_UNCHANGED     off | body (304, identical body) | timestamp
                                                  (also unchanged header.timestamp) [default: off]

KAFKA
    --sink kafka|stdout        SINK               stdout: one JSON document per line [default: kafka]
    --kafka-broker LIST        KAFKA_BROKER       host:port[,host:port...] [default: kafka:9092]
    --kafka-topic TOPIC        KAFKA_TOPIC        [default: dev_topic]
    --acks all|1|0             KAFKA_ACKS         [default: all]
    --compression CODEC        KAFKA_COMPRESSION  none|gzip|snappy|lz4|zstd [default: none]
    --kafka-request-timeout S  KAFKA_REQUEST_TIMEOUT [default: 10]
    --client-id ID             KAFKA_CLIENT_ID    [default: gtfs-rt-kafka]
    --create-topic BOOL        CREATE_TOPIC       create the topic at start if missing [default: false]
    --topic-partitions N       TOPIC_PARTITIONS   for --create-topic [default: broker's]
    --topic-replication-factor N TOPIC_REPLICATION_FACTOR [default: broker's]
    --topic-config K=V,...     TOPIC_CONFIG       topic configs, e.g. retention.ms=86400000
    --delivery-timeout SECS    DELIVERY_TIMEOUT   longest send attempt (also capped by the next poll) [default: 10]
    --idempotence BOOL         KAFKA_IDEMPOTENCE  retries never duplicate [default: true with acks=all]

KAFKA SECURITY (librdkafka/Java property names; -X wins over the env var)
    -X security.protocol=P     KAFKA_SECURITY_PROTOCOL  PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL
    -X sasl.mechanism=M        KAFKA_SASL_MECHANISM     PLAIN|SCRAM-SHA-256|SCRAM-SHA-512
    -X sasl.username=U         KAFKA_SASL_USERNAME
                               KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE (keep it off
                                                        the command line; -X sasl.password works)
    -X ssl.ca.location=PEM     KAFKA_SSL_CA_LOCATION    [default: bundled Mozilla roots]
    -X ssl.certificate.location=PEM  KAFKA_SSL_CERTIFICATE_LOCATION  client certificate (mTLS)
    -X ssl.key.location=PEM    KAFKA_SSL_KEY_LOCATION   its unencrypted private key

DELIVERY GUARANTEES
    --queue-max-bytes N        QUEUE_MAX_BYTES    unsent snapshots kept; oldest dropped beyond [default: 64MiB]
    --spool-dir DIR            SPOOL_DIR          crash-safe copies of unsent snapshots
                                                  [default: $STATE_DIRECTORY under systemd, else none]

METRICS
    --metrics-addr HOST:PORT   METRICS_ADDR       serve /metrics (Prometheus) and /health
    --metrics-textfile PATH    METRICS_TEXTFILE   rewrite a node_exporter textfile after each poll

PROCESS
    --config FILE              CONFIG_FILE        several feeds in one process: [[feed]] tables of
                                                  these settings (lower-case env names); see README
    --once                                        one poll; exit 0 if delivered, 1 if not
    --shutdown-timeout SECS    SHUTDOWN_TIMEOUT   finish an in-flight poll after SIGTERM [default: 10]
    --log-level LEVEL          RUST_LOG           off|error|warn|info|debug|trace [default: info]
    -h, --help                 -V, --version

EXIT CODES
    0 clean shutdown or --once delivered; 1 --once failed; 2 invalid setting;
    130/143 second SIGINT/SIGTERM (immediate exit)
";

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        run_all_with(args, env).map(|mut r| r.feeds.remove(0))
    }

    fn run_all_with(args: &[&str], env: &[(&str, &str)]) -> Result<RunConfig, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone());
        match parse(args.iter().map(|a| a.to_string()), &lookup)? {
            Command::Run(c) => Ok(c),
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_python_producer() {
        let c = run_with(&[], &[]).unwrap();
        assert_eq!(c.fetch.url, Defaults::VEHICLE_URL);
        assert_eq!(c.kafka.bootstrap, vec!["kafka:9092".to_string()]);
        assert_eq!(c.kafka.topic, "dev_topic");
        assert_eq!(c.poll_interval, Duration::from_secs(60));
        assert_eq!(c.source_id, "toei_vehicle_api");
        assert_eq!(c.event_type, "gtfs_realtime_vehicle");
        assert_eq!(c.kafka.acks, AcksSetting::All);
        assert_eq!(c.sink, SinkKind::Kafka);
    }

    #[test]
    fn flags_win_over_env() {
        let c = run_with(
            &["--kafka-topic", "from_flag", "--poll-interval=5"],
            &[("KAFKA_TOPIC", "from_env"), ("POLL_INTERVAL", "7")],
        )
        .unwrap();
        assert_eq!(c.kafka.topic, "from_flag");
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        let c = run_with(&[], &[("KAFKA_TOPIC", "from_env")]).unwrap();
        assert_eq!(c.kafka.topic, "from_env");
    }

    #[test]
    fn invalid_settings_name_env_and_flag() {
        let check = |args: &[&str], env: &[(&str, &str)], setting: &str| {
            let err = run_with(args, env).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        };
        check(
            &[],
            &[("POLL_INTERVAL", "soon")],
            "POLL_INTERVAL / --poll-interval",
        );
        check(
            &[],
            &[("POLL_INTERVAL", "0")],
            "POLL_INTERVAL / --poll-interval",
        );
        check(
            &[],
            &[("KAFKA_BROKER", "a:1,,b")],
            "KAFKA_BROKER / --kafka-broker",
        );
        check(
            &[],
            &[("KAFKA_BROKER", "a:99999")],
            "KAFKA_BROKER / --kafka-broker",
        );
        check(
            &[],
            &[("KAFKA_TOPIC", "bad topic")],
            "KAFKA_TOPIC / --kafka-topic",
        );
        check(
            &[],
            &[("VEHICLE_URL", "ftp://x")],
            "VEHICLE_URL / --vehicle-url",
        );
        check(&["--acks", "2"], &[], "KAFKA_ACKS / --acks");
        check(
            &["--compression=brotli"],
            &[],
            "KAFKA_COMPRESSION / --compression",
        );
        check(
            &["--max-body-bytes", "12XB"],
            &[],
            "MAX_BODY_BYTES / --max-body-bytes",
        );
        check(&["--bogus"], &[], "usage");
        check(&["--kafka-topic"], &[], "usage");
        check(&["--once=yes"], &[], "usage");
        check(&["stray"], &[], "usage");
    }

    #[test]
    fn bootstrap_lists() {
        let check = |input: &str, expected: &[&str]| {
            assert_eq!(parse_bootstrap(input).unwrap(), expected, "{input}");
        };
        check("kafka:9092", &["kafka:9092"]);
        check("a, b:19092", &["a:9092", "b:19092"]);
        check("PLAINTEXT://k:1", &["k:1"]);
        check("[::1]:9093,[::1]", &["[::1]:9093", "[::1]:9092"]);
        assert!(parse_bootstrap("").is_err());
        assert!(parse_bootstrap(":9092").is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_secs("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_secs("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_secs("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("NaN").is_err());
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn log_levels_accept_env_logger_filters() {
        let c = run_all_with(&[], &[("RUST_LOG", "info,ureq=warn")]).unwrap();
        assert_eq!(c.process.log.default, log::LevelFilter::Info);
        assert_eq!(
            c.process.log.targets,
            [("ureq".to_string(), log::LevelFilter::Warn)]
        );
        let c = run_all_with(&["--log-level", "debug"], &[("RUST_LOG", "warn")]).unwrap();
        assert_eq!(c.process.log.default, log::LevelFilter::Debug);
        let e = run_with(&[], &[("RUST_LOG", "gtfs_rt_kafka=loud")]).unwrap_err();
        assert_eq!(e.setting, "RUST_LOG / --log-level");
        assert!(run_with(&["--log-level", "loud"], &[]).is_err());
    }

    #[test]
    fn lookalike_names_are_found_with_what_they_meant() {
        let env = [
            "KAFKA_BROKERS",
            "POLL_INTERVALL",
            "kafka_topic",
            "KAFKA_BROKER",
            "PATH",
            "HOME",
            "KAFKA_HEAP_OPTS",
            "VEHICLE_URI",
        ]
        .map(String::from);
        assert_eq!(
            lookalike_env(env.into_iter()),
            [
                ("KAFKA_BROKERS".to_string(), "KAFKA_BROKER"),
                ("POLL_INTERVALL".to_string(), "POLL_INTERVAL"),
                ("kafka_topic".to_string(), "KAFKA_TOPIC"),
                ("VEHICLE_URI".to_string(), "VEHICLE_URL"),
            ]
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn timeouts_of_zero_and_urls_that_cannot_work_are_refused() {
        for (var, value) in [
            ("HTTP_TIMEOUT", "0"),
            ("DELIVERY_TIMEOUT", "0s"),
            ("KAFKA_REQUEST_TIMEOUT", "0ms"),
            ("HTTP_CONNECT_TIMEOUT", "0"),
            ("VEHICLE_URL", "http://[::1"),
            ("VEHICLE_URL", "http://:80/x"),
            ("METRICS_ADDR", "19180"),
        ] {
            let e = run_all_with(&[], &[(var, value)]).unwrap_err();
            assert!(e.setting.starts_with(var), "{var}={value}: {e}");
        }
        let c = run_with(&[], &[("POLL_INTERVAL", "1h")]).unwrap();
        assert_eq!(c.poll_interval, Duration::from_secs(3600));
    }

    #[test]
    fn empty_values_are_errors_naming_the_setting() {
        let check = |args: &[&str], env: &[(&str, &str)], setting: &str| {
            let e = run_with(args, env).unwrap_err();
            assert_eq!(e.setting, setting, "{e}");
            assert!(e.reason.contains("empty"), "{e}");
        };
        check(&[], &[("KAFKA_TOPIC", "")], "KAFKA_TOPIC / --kafka-topic");
        check(
            &[],
            &[("KAFKA_BROKER", " ")],
            "KAFKA_BROKER / --kafka-broker",
        );
        check(&[], &[("VEHICLE_URL", "")], "VEHICLE_URL / --vehicle-url");
        check(&["--kafka-topic="], &[], "KAFKA_TOPIC / --kafka-topic");
        check(&[], &[("KAFKA_SASL_PASSWORD", "")], "KAFKA_SASL_PASSWORD");
    }

    #[test]
    fn kafka_security_from_env_and_x_flags() {
        // Plaintext by default.
        let c = run_with(&[], &[]).unwrap();
        assert_eq!(c.kafka.security_protocol, SecurityProtocol::Plaintext);
        assert!(c.kafka.tls.is_none() && c.kafka.sasl.is_none());

        let env = [
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "alice"),
            ("KAFKA_SASL_PASSWORD", "from-env"),
        ];
        let c = run_with(&[], &env).unwrap();
        assert_eq!(c.kafka.security_protocol, SecurityProtocol::SaslSsl);
        assert!(c.kafka.tls.is_some(), "bundled roots");
        let sasl = c.kafka.sasl.as_ref().unwrap();
        assert_eq!(
            (
                sasl.mechanism,
                sasl.username.as_str(),
                sasl.password.expose()
            ),
            (SaslMechanism::ScramSha512, "alice", "from-env")
        );
        assert!(
            !format!("{c:?}").contains("from-env"),
            "Debug hides the password"
        );

        // -X wins, in both spellings, librdkafka's sasl.mechanisms included.
        let c = run_with(
            &[
                "-X",
                "sasl.mechanisms=PLAIN",
                "-Xsasl.username=bob",
                "-X",
                "sasl.password=a=b",
                "-X",
                "security.protocol=SASL_PLAINTEXT",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.kafka.security_protocol, SecurityProtocol::SaslPlaintext);
        assert!(c.kafka.tls.is_none());
        let sasl = c.kafka.sasl.unwrap();
        assert_eq!(
            (
                sasl.mechanism,
                sasl.username.as_str(),
                sasl.password.expose()
            ),
            (SaslMechanism::Plain, "bob", "a=b")
        );
    }

    #[test]
    fn secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("grk-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret with spaces \r\n").unwrap();
        let path = file.display().to_string();
        let env = [
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD_FILE", path.as_str()),
            ("FEED_API_KEY_FILE", path.as_str()),
            ("FEED_API_KEY_PARAM", "acl:consumerKey"),
        ];
        let c = run_with(&[], &env).unwrap();
        assert_eq!(
            c.kafka.sasl.unwrap().password.expose(),
            "s3cret with spaces "
        );
        let key = c.fetch.api_key.unwrap();
        assert_eq!(key.key.expose(), "s3cret with spaces ");
        assert_eq!(key.place, KeyPlace::Query("acl:consumerKey".to_string()));
        // The env var and the file at once: which one is meant?
        let mut both = env.to_vec();
        both.push(("KAFKA_SASL_PASSWORD", "x"));
        let err = run_with(&[], &both).unwrap_err();
        assert!(err.setting.contains("KAFKA_SASL_PASSWORD_FILE"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn security_settings_that_cannot_work() {
        let check = |args: &[&str], env: &[(&str, &str)], setting: &str, reason: &str| {
            let err = run_with(args, env).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.reason.contains(reason), "{err}");
        };
        let sasl = [("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")];
        check(
            &[],
            &sasl,
            "KAFKA_SASL_MECHANISM / -X sasl.mechanism",
            "required",
        );
        check(
            &["-X", "sasl.mechanism=OAUTHBEARER"],
            &sasl,
            "KAFKA_SASL_MECHANISM / -X sasl.mechanism",
            "not one of",
        );
        check(
            &["-X", "sasl.mechanism=PLAIN"],
            &sasl,
            "KAFKA_SASL_USERNAME / -X sasl.username",
            "required",
        );
        check(
            &[],
            &[("KAFKA_SASL_USERNAME", "u")],
            "KAFKA_SASL_USERNAME / -X sasl.username",
            "security.protocol is PLAINTEXT",
        );
        check(
            &[],
            &[("KAFKA_SSL_CA_LOCATION", "/ca.pem")],
            "KAFKA_SSL_CA_LOCATION / -X ssl.ca.location",
            "use SSL or SASL_SSL",
        );
        check(
            &[
                "-X",
                "security.protocol=SSL",
                "-X",
                "ssl.ca.location=/nonexistent/ca.pem",
            ],
            &[],
            "KAFKA_SSL_CA_LOCATION / -X ssl.ca.location",
            "cannot read /nonexistent/ca.pem",
        );
        check(&["-X", "acks=all"], &[], "usage", "unknown -X property");
        check(&["-X"], &[], "usage", "needs name=value");
        check(&["-X", "security.protocol"], &[], "usage", "not name=value");
        check(
            &[],
            &[("FEED_API_KEY", "k")],
            "FEED_API_KEY",
            "FEED_API_KEY_PARAM",
        );
        check(
            &[],
            &[("FEED_API_KEY_PARAM", "key")],
            "FEED_API_KEY",
            "without a key",
        );
        check(
            &["--feed-api-key-header", "x-api-key"],
            &[("FEED_API_KEY", "k"), ("FEED_API_KEY_PARAM", "key")],
            "FEED_API_KEY_PARAM / --feed-api-key-param / FEED_API_KEY_HEADER / --feed-api-key-header",
            "both",
        );
        check(
            &[],
            &[("HTTP_CA_LOCATION", "/nonexistent/ca.pem")],
            "HTTP_CA_LOCATION / --http-ca-location",
            "cannot read",
        );
    }

    #[test]
    fn convert_subcommand() {
        let lookup = |_: &str| None;
        let cmd = parse(
            ["convert", "-", "--json-names", "camel"].map(String::from),
            &lookup,
        )
        .unwrap();
        match cmd {
            Command::Convert(c) => {
                assert_eq!(c.input, None);
                assert_eq!(c.names, FieldNames::Camel);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(["convert"].map(String::from), &lookup).is_err());
        assert_eq!(
            parse(["--help"].map(String::from), &lookup).unwrap(),
            Command::Help
        );
    }
}
