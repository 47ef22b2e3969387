//! The one error type of the Kafka client: what failed, where (broker, topic, partition) and whether
//! trying again can help. Never decides what to retry; `produce` and the producer loop do.

use std::fmt;

use kafka_protocol::error::ResponseError;

use super::codes::{
    CORRUPT_MESSAGE, INVALID_RECORD, MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE,
    UNKNOWN_TOPIC_OR_PARTITION,
};

/// What the client was doing on a connection when an I/O error or a timeout hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Resolving the address and opening the TCP connection.
    Connect,
    /// Writing a request.
    Write,
    /// Waiting for or reading a response.
    Read,
    /// Waiting for a Produce acknowledgement with acks=all: the leader answers once its
    /// in-sync replicas have the batch.
    AwaitingReplicas,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Write => "write",
            Phase::Read => "read",
            Phase::AwaitingReplicas => "waiting for in-sync replicas",
        })
    }
}

/// Everything that can go wrong while producing.
///
/// Each variant carries the context an operator needs (broker `host:port`, topic, partition, the
/// Kafka error code name); `Display` renders it as one log line.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KafkaError {
    /// The producer configuration cannot work (for example no bootstrap address).
    Config {
        setting: &'static str,
        reason: String,
    },
    /// A socket operation failed: refused, reset, closed by the broker, unreachable.
    Io {
        broker: String,
        phase: Phase,
        detail: String,
    },
    /// A socket operation did not finish in time.
    Timeout { broker: String, phase: Phase },
    /// The broker sent bytes that are not a valid response to what we asked.
    Malformed {
        broker: String,
        api: &'static str,
        detail: String,
    },
    /// The broker and this client share no version of an API we need.
    UnsupportedVersion {
        broker: String,
        api: &'static str,
        ours: (i16, i16),
        theirs: Option<(i16, i16)>,
    },
    /// The broker answered with a Kafka error code.
    Broker {
        broker: String,
        topic: String,
        partition: Option<i32>,
        code: i16,
        message: Option<String>,
        retriable: bool,
    },
    /// The broker refused a batch for its size.
    MessageTooLarge {
        broker: String,
        topic: String,
        partition: i32,
        batch_bytes: usize,
        largest_record_bytes: usize,
        /// The codec the batch was sent with (`none` when uncompressed), for the remedy.
        compression: &'static str,
    },
    /// The broker closed the connection while a request larger than its
    /// `socket.request.max.bytes` (100 MiB by default) was written: it reads the size first
    /// and drops such a request unread.
    RequestTooLarge {
        broker: String,
        topic: String,
        request_bytes: usize,
        compression: &'static str,
    },
    /// The topic does not exist (and was not auto-created) after several metadata refreshes.
    UnknownTopic {
        topic: String,
        broker: String,
        attempts: u32,
    },
    /// No bootstrap or known broker could be reached for metadata.
    NoBrokerReachable { tried: usize, last: Box<KafkaError> },
    /// The caller's deadline passed before every record was acknowledged.
    DeadlineExceeded {
        topic: String,
        undelivered: usize,
        attempts: u32,
        last: Option<Box<KafkaError>>,
    },
    /// A request could not be encoded (a record or batch exceeds the protocol's limits).
    Encode { topic: String, detail: String },
    /// TLS failed on a certificate or an alert, or a listener speaks TLS and we don't: fixing
    /// it takes a configuration change (CA file, client certificate, broker name, protocol).
    Tls { broker: String, detail: String },
    /// The broker refused our SASL credentials, or the exchange broke off.
    Authentication {
        broker: String,
        mechanism: &'static str,
        username: String,
        detail: String,
    },
    /// The broker does not enable the SASL mechanism we are configured for.
    MechanismNotOffered {
        broker: String,
        mechanism: &'static str,
        offered: Vec<String>,
    },
}

impl KafkaError {
    /// Whether the same call may succeed later without changing configuration or data.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaError::Io { .. }
            | KafkaError::Timeout { .. }
            | KafkaError::NoBrokerReachable { .. }
            | KafkaError::DeadlineExceeded { .. } => true,
            KafkaError::Broker { retriable, .. } => *retriable,
            KafkaError::Config { .. }
            | KafkaError::Malformed { .. }
            | KafkaError::UnsupportedVersion { .. }
            | KafkaError::MessageTooLarge { .. }
            | KafkaError::RequestTooLarge { .. }
            | KafkaError::UnknownTopic { .. }
            | KafkaError::Encode { .. }
            | KafkaError::Tls { .. }
            | KafkaError::Authentication { .. }
            | KafkaError::MechanismNotOffered { .. } => false,
        }
    }

    /// A TLS or SASL refusal: the credentials or certificates are wrong, not the data or the
    /// network. Retrying later makes sense only once someone fixes them.
    pub fn is_security(&self) -> bool {
        match self {
            KafkaError::Tls { .. }
            | KafkaError::Authentication { .. }
            | KafkaError::MechanismNotOffered { .. } => true,
            KafkaError::NoBrokerReachable { last, .. } => last.is_security(),
            _ => false,
        }
    }

    /// The broker (or the protocol) refused these bytes themselves — too large, corrupt,
    /// invalid — so they were not appended and resending them can never work, unlike an
    /// outage or a permission that an operator may still fix. The one place that knows
    /// which codes mean that.
    pub fn rejects_data(&self) -> bool {
        matches!(
            self,
            KafkaError::MessageTooLarge { .. }
                | KafkaError::RequestTooLarge { .. }
                | KafkaError::Encode { .. }
        ) || matches!(
            self.code(),
            Some(CORRUPT_MESSAGE | MESSAGE_TOO_LARGE | RECORD_LIST_TOO_LARGE | INVALID_RECORD)
        )
    }

    /// The Kafka error code, when the broker sent one.
    pub fn code(&self) -> Option<i16> {
        match self {
            KafkaError::Broker { code, .. } => Some(*code),
            KafkaError::MessageTooLarge { .. } => Some(MESSAGE_TOO_LARGE),
            KafkaError::UnknownTopic { .. } => Some(UNKNOWN_TOPIC_OR_PARTITION),
            _ => None,
        }
    }

    /// A broker error for `code`, using the protocol's own retriable flag.
    pub(crate) fn broker_code(
        broker: &str,
        topic: &str,
        partition: Option<i32>,
        code: i16,
        message: Option<String>,
    ) -> KafkaError {
        KafkaError::Broker {
            broker: broker.to_owned(),
            topic: topic.to_owned(),
            partition,
            code,
            message,
            retriable: ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable()),
        }
    }
}

/// The name Kafka's documentation uses for an error code, e.g. `NOT_LEADER_OR_FOLLOWER`.
pub fn error_code_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_owned(),
        Some(ResponseError::Unknown(code)) => format!("UNKNOWN_CODE_{code}"),
        // The crate names codes in CamelCase after Kafka's SCREAMING_SNAKE names.
        Some(known) => {
            let camel = known.to_string();
            let mut name = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// The first remedy for a refusal by size, worded by the codec the data went with.
fn compression_remedy(f: &mut fmt::Formatter<'_>, compression: &str) -> fmt::Result {
    if compression == "none" {
        f.write_str("enable compression (KAFKA_COMPRESSION=zstd), ")
    } else {
        write!(f, "already compressed ({compression}); ")
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KafkaError::Config { setting, reason } => {
                write!(f, "kafka config {setting}: {reason}")
            }
            KafkaError::Io { broker, phase, detail } => {
                write!(f, "kafka broker {broker}: {phase} failed: {detail} (retriable)")
            }
            KafkaError::Timeout { broker, phase: Phase::AwaitingReplicas } => write!(
                f,
                "kafka broker {broker}: waiting for in-sync replicas timed out: with acks=all \
                 the leader acknowledges once its in-sync replicas have the batch (a replica \
                 down or slow? the cluster drops it from the ISR within its session timeout) \
                 (retriable)"
            ),
            KafkaError::Timeout { broker, phase } => {
                write!(f, "kafka broker {broker}: {phase} timed out (retriable)")
            }
            KafkaError::Malformed { broker, api, detail } => {
                write!(f, "kafka broker {broker}: malformed {api} response: {detail}")
            }
            KafkaError::UnsupportedVersion { broker, api, ours, theirs } => {
                write!(f, "kafka broker {broker}: no common {api} version: client supports v{}..=v{}", ours.0, ours.1)?;
                match theirs {
                    Some((min, max)) => write!(f, ", broker v{min}..=v{max}"),
                    // A KRaft controller answers ApiVersions but offers no Produce.
                    None if *api == "Produce" => f.write_str(
                        ", broker does not offer the API (a KRaft controller port? point \
                         KAFKA_BROKER at a broker listener)",
                    ),
                    None => f.write_str(", broker does not offer the API"),
                }
            }
            KafkaError::Broker { broker, topic, partition, code, message, retriable } => {
                write!(f, "kafka broker {broker}: topic {topic}")?;
                if let Some(p) = partition {
                    write!(f, " partition {p}")?;
                }
                write!(f, ": {} (code {code}, ", error_code_name(*code))?;
                f.write_str(if *retriable { "retriable)" } else { "not retriable)" })?;
                if let Some(m) = message.as_deref().filter(|m| !m.is_empty()) {
                    write!(f, ": {m}")?;
                }
                match code {
                    7 => f.write_str(
                        " (the leader waited for its in-sync replicas past the request timeout)",
                    ),
                    19 | 20 => f.write_str(
                        " (waiting for in-sync replicas: fewer are in sync than the topic's \
                         min.insync.replicas, a broker is down)",
                    ),
                    _ => Ok(()),
                }
            }
            KafkaError::MessageTooLarge {
                broker,
                topic,
                partition,
                batch_bytes,
                largest_record_bytes,
                compression,
            } => {
                write!(
                    f,
                    "kafka broker {broker}: topic {topic} partition {partition}: MESSAGE_TOO_LARGE \
                     (code 10, not retriable): batch of {batch_bytes} bytes (largest record \
                     {largest_record_bytes} bytes) refused; "
                )?;
                compression_remedy(f, compression)?;
                f.write_str(
                    "send one record per entity (MODE=entity), or raise the topic's \
                     max.message.bytes (and the broker's message.max.bytes)",
                )
            }
            KafkaError::RequestTooLarge {
                broker,
                topic,
                request_bytes,
                compression,
            } => {
                write!(
                    f,
                    "kafka broker {broker}: topic {topic}: a request of {request_bytes} bytes was \
                     cut off by the broker (over its socket.request.max.bytes, 100 MiB by \
                     default) and refused; "
                )?;
                compression_remedy(f, compression)?;
                f.write_str(
                    "send one record per entity (MODE=entity), lower MAX_DOCUMENT_BYTES, or \
                     raise the broker's socket.request.max.bytes",
                )
            }
            KafkaError::UnknownTopic { topic, broker, attempts } => write!(
                f,
                "kafka broker {broker}: unknown topic {topic} after {attempts} metadata refreshes \
                 (create it, set CREATE_TOPIC=true, or enable auto.create.topics.enable on the \
                 broker)"
            ),
            KafkaError::NoBrokerReachable { tried, last } => {
                write!(f, "kafka: none of {tried} brokers reachable; last error: {last}")
            }
            KafkaError::DeadlineExceeded { topic, undelivered, attempts, last } => {
                write!(f, "kafka topic {topic}: deadline passed with {undelivered} records unacknowledged after {attempts} attempts")?;
                match last {
                    Some(last) => write!(f, "; last error: {last}"),
                    None => Ok(()),
                }
            }
            KafkaError::Encode { topic, detail } => {
                write!(f, "kafka topic {topic}: cannot encode request: {detail}")
            }
            KafkaError::Tls { broker, detail } => {
                write!(f, "kafka broker {broker}: TLS: {detail}")
            }
            KafkaError::Authentication { broker, mechanism, username, detail } => write!(
                f,
                "kafka broker {broker}: SASL authentication failed ({mechanism}, user {username}): {detail}"
            ),
            KafkaError::MechanismNotOffered { broker, mechanism, offered } => {
                write!(f, "kafka broker {broker}: SASL mechanism {mechanism} is not enabled on the broker; ")?;
                if offered.is_empty() {
                    f.write_str("it offers none (is this listener SASL_PLAINTEXT or SASL_SSL?)")
                } else {
                    write!(f, "it offers {} (set sasl.mechanism / KAFKA_SASL_MECHANISM)", offered.join(", "))
                }
            }
        }
    }
}

impl std::error::Error for KafkaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_follow_kafka_docs() {
        let check = |code: i16, name: &str| assert_eq!(error_code_name(code), name, "code {code}");
        check(0, "NONE");
        check(-1, "UNKNOWN_SERVER_ERROR");
        check(3, "UNKNOWN_TOPIC_OR_PARTITION");
        check(6, "NOT_LEADER_OR_FOLLOWER");
        check(10, "MESSAGE_TOO_LARGE");
        check(17, "INVALID_TOPIC_EXCEPTION");
        check(20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND");
        check(29, "TOPIC_AUTHORIZATION_FAILED");
        check(35, "UNSUPPORTED_VERSION");
        check(9999, "UNKNOWN_CODE_9999");
    }

    #[test]
    fn display_is_one_line_with_context() {
        let e = KafkaError::broker_code("b:9092", "t", Some(2), 6, Some("moved".into()));
        assert_eq!(
            e.to_string(),
            "kafka broker b:9092: topic t partition 2: NOT_LEADER_OR_FOLLOWER (code 6, retriable): moved"
        );
        assert!(e.is_retriable());
        let e = KafkaError::MessageTooLarge {
            broker: "b:9092".into(),
            topic: "t".into(),
            partition: 0,
            batch_bytes: 2_000_000,
            largest_record_bytes: 1_500_000,
            compression: "none",
        };
        let line = e.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("KAFKA_COMPRESSION") && line.contains("message.max.bytes"));
        assert!(line.contains("MODE=entity"));
        assert!(!e.is_retriable());
        let compressed = KafkaError::MessageTooLarge {
            broker: "b:9092".into(),
            topic: "t".into(),
            partition: 0,
            batch_bytes: 2_000_000,
            largest_record_bytes: 1_500_000,
            compression: "zstd",
        };
        let line = compressed.to_string();
        assert!(line.contains("already compressed (zstd)"), "{line}");
        assert!(!line.contains("enable compression"), "{line}");
    }
}
