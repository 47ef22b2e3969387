//! Producer settings and their defaults, all in one `Default` impl; never parses strings or env vars
//! (the app's config module does that once at startup).

use std::time::Duration;

use super::tls::Tls;
use super::Secret;

/// How many replicas must have the batch before the broker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// All in-sync replicas (`acks=-1`). The default.
    #[default]
    All,
    /// Only the partition leader (`acks=1`).
    Leader,
    /// No acknowledgement at all (`acks=0`): the broker sends no response and offsets are unknown (-1).
    None,
}

impl Acks {
    /// The value of the Produce request's `acks` field.
    pub(crate) fn wire(self) -> i16 {
        match self {
            Acks::All => -1,
            Acks::Leader => 1,
            Acks::None => 0,
        }
    }
}

/// Record batch compression. Every codec is pure Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Uncompressed. The default.
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// As `KAFKA_COMPRESSION` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub(crate) fn to_protocol(self) -> kafka_protocol::records::Compression {
        use kafka_protocol::records::Compression as P;
        match self {
            Compression::None => P::None,
            Compression::Gzip => P::Gzip,
            Compression::Snappy => P::Snappy,
            Compression::Lz4 => P::Lz4,
            Compression::Zstd => P::Zstd,
        }
    }
}

/// A SASL mechanism this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// Every mechanism, by its Kafka name.
    pub const ALL: [SaslMechanism; 3] = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ];

    /// The name Kafka uses (`sasl.mechanism`, the SaslHandshake request).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials: authenticate every connection with `mechanism` as `username`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

/// Settings of a [`Producer`](super::Producer).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Brokers to ask for metadata first, each `host:port`. Defaults to empty (must be set).
    pub bootstrap: Vec<String>,
    /// Sent in every request header, shows up in broker logs and quotas. Defaults to `gtfs-rt-kafka`.
    pub client_id: String,
    /// Defaults to [`Acks::All`].
    pub acks: Acks,
    /// Defaults to [`Compression::None`].
    pub compression: Compression,
    /// Longest wait for one response; also sent as the Produce request's timeout. Defaults to 30 s.
    pub request_timeout: Duration,
    /// Longest wait to open one TCP connection. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// First pause before a retry; doubles per attempt, with ±20 % jitter. Defaults to 100 ms.
    pub retry_backoff: Duration,
    /// Upper bound of the retry pause. Defaults to 1 s.
    pub retry_backoff_max: Duration,
    /// Metadata older than this is refreshed before use. Defaults to 5 min.
    pub metadata_max_age: Duration,
    /// Metadata refreshes that may report the topic unknown before `produce` gives up with
    /// `UnknownTopic` (gives auto-creation time). Defaults to 10.
    pub unknown_topic_retries: u32,
    /// Idempotent produce (InitProducerId, per-partition sequence numbers): retries never duplicate
    /// records. Needs `acks = All`. Defaults to false.
    pub idempotence: bool,
    /// TLS on every connection (`security.protocol` SSL or SASL_SSL). Defaults to none.
    pub tls: Option<Tls>,
    /// Attempts one call may make before it gives up as if its deadline had passed; `None`
    /// (the default): until the deadline. The simulation sets it so a schedule's outcome
    /// doesn't depend on how fast the machine spins.
    pub max_attempts: Option<u32>,
    /// SASL on every connection (`security.protocol` SASL_PLAINTEXT or SASL_SSL), after
    /// ApiVersions, and again before the broker's session lifetime runs out. Defaults to none.
    pub sasl: Option<Sasl>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap: Vec::new(),
            client_id: "gtfs-rt-kafka".to_owned(),
            acks: Acks::All,
            compression: Compression::None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            metadata_max_age: Duration::from_secs(5 * 60),
            unknown_topic_retries: 10,
            idempotence: false,
            tls: None,
            max_attempts: None,
            sasl: None,
        }
    }
}
