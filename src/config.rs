//! Command line and environment → one validated `Command`, parsed once at startup.
//!
//! Every default lives in `Defaults`; every setting has an env var and a flag, and the flag wins.
//! Nothing here does I/O except reading the environment through the caller's lookup function.

use std::fmt;
use std::time::Duration;

use crate::json::FieldNames;

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
    Run(Box<Config>),
    /// Print the document that would be sent for a .pb file (`None` = stdin).
    Convert(ConvertConfig),
    /// Send archived captures (files, or every file of a directory) in order.
    Replay {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionSetting {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
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

#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    pub url: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_redirects: u32,
}

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
    pub once: bool,
    /// How long one poll's delivery may retry before the poll counts as failed.
    pub delivery_timeout: Duration,
    /// After SIGTERM/SIGINT during a poll, how long it may take to finish delivering.
    pub shutdown_timeout: Duration,
    pub log_level: log::LevelFilter,
    /// Bound of unsent snapshots held in memory (and in the spool); oldest dropped beyond.
    pub queue_max_bytes: usize,
    /// Crash-safe copies of unsent snapshots; `None` = memory only.
    pub spool_dir: Option<std::path::PathBuf>,
    /// `host:port` for the Prometheus `/metrics` and `/health` listener.
    pub metrics_addr: Option<String>,
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
    s(Some("RUST_LOG"), "--log-level"),
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

/// Raw values gathered from flags and env, before typing.
struct Raw<'e> {
    flags: Vec<(&'static Setting, Option<String>)>,
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
        env,
    };
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-" => positional.push(arg),
            a if a.starts_with("--") => raw.flags.push(parse_flag(a, &mut args)?),
            a if a.starts_with('-') => return Err(usage(format!("unknown option {a}"))),
            _ => positional.push(arg),
        }
    }
    match subcommand.as_deref() {
        Some("convert") => convert_config(&raw, positional),
        Some(_) if positional.is_empty() => {
            Err(usage("replay takes one or more FILES or a DIR".to_string()))
        }
        Some(_) => Ok(Command::Replay {
            config: Box::new(run_config(&raw)?),
            inputs: positional,
        }),
        None if !positional.is_empty() => Err(usage(format!(
            "unexpected argument {:?} (the only subcommand is `convert FILE|-`)",
            positional[0]
        ))),
        None => run_config(&raw).map(|c| Command::Run(Box::new(c))),
    }
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
            timeout: raw.typed("--http-timeout", Defaults::HTTP_TIMEOUT, parse_secs)?,
            connect_timeout: raw.typed(
                "--http-connect-timeout",
                Defaults::HTTP_CONNECT_TIMEOUT,
                parse_secs,
            )?,
            max_body_bytes: raw.typed("--max-body-bytes", Defaults::MAX_BODY_BYTES, parse_bytes)?,
            max_redirects: raw.typed("--max-redirects", Defaults::MAX_REDIRECTS, |v| {
                v.parse::<u32>()
                    .map_err(|_| format!("{v:?} is not a whole number"))
            })?,
        },
        kafka: KafkaSettings {
            bootstrap,
            topic,
            acks,
            compression: raw.typed("--compression", CompressionSetting::None, parse_compression)?,
            request_timeout: raw.typed(
                "--kafka-request-timeout",
                Defaults::KAFKA_REQUEST_TIMEOUT,
                parse_secs,
            )?,
            client_id: raw.string("--client-id", Defaults::CLIENT_ID),
            idempotence,
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
        once: raw.has_switch("--once"),
        delivery_timeout: raw.typed(
            "--delivery-timeout",
            Defaults::DELIVERY_TIMEOUT,
            parse_secs,
        )?,
        shutdown_timeout: raw.typed(
            "--shutdown-timeout",
            Defaults::SHUTDOWN_TIMEOUT,
            parse_secs,
        )?,
        log_level: raw.typed("--log-level", log::LevelFilter::Info, parse_level)?,
        queue_max_bytes: raw
            .typed("--queue-max-bytes", Defaults::QUEUE_MAX_BYTES, parse_bytes)?
            .try_into()
            .unwrap_or(usize::MAX),
        spool_dir: spool_dir(raw),
        metrics_addr: raw.get("--metrics-addr").map(|(_, v)| v),
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
    Ok(())
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
    } else {
        (v, 1.0)
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a number of seconds"))?;
    let secs = n * scale;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("{v:?} is out of range (0 to one year)"));
    }
    Ok(Duration::from_secs_f64(secs))
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
fn parse_level(v: &str) -> Result<log::LevelFilter, String> {
    let bare = v
        .split(',')
        .map(str::trim)
        .find(|part| !part.contains('='))
        .unwrap_or("info");
    bare.parse::<log::LevelFilter>()
        .map_err(|_| format!("{v:?} is not one of off, error, warn, info, debug, trace"))
}

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

DELIVERY GUARANTEES
    --queue-max-bytes N        QUEUE_MAX_BYTES    unsent snapshots kept; oldest dropped beyond [default: 64MiB]
    --spool-dir DIR            SPOOL_DIR          crash-safe copies of unsent snapshots
                                                  [default: $STATE_DIRECTORY under systemd, else none]

METRICS
    --metrics-addr HOST:PORT   METRICS_ADDR       serve /metrics (Prometheus) and /health
    --metrics-textfile PATH    METRICS_TEXTFILE   rewrite a node_exporter textfile after each poll

PROCESS
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
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone());
        match parse(args.iter().map(|a| a.to_string()), &lookup)? {
            Command::Run(c) => Ok(*c),
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
        assert!(!c.once);
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
        let c = run_with(&[], &[("RUST_LOG", "info,ureq=warn")]).unwrap();
        assert_eq!(c.log_level, log::LevelFilter::Info);
        let c = run_with(&["--log-level", "debug"], &[("RUST_LOG", "warn")]).unwrap();
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert!(run_with(&["--log-level", "loud"], &[]).is_err());
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
