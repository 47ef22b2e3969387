//! Where documents go: Kafka through our client, or stdout (one JSON document per line).
//!
//! The app hands a finished document to a `Sink`; only `KafkaSink` knows Kafka exists.

use std::fmt;
use std::io::Write;
use std::time::Instant;

use crate::config::{AcksSetting, CompressionSetting, KafkaSettings};
use crate::kafka::{Acks, Compression, KafkaError, Producer, ProducerConfig, Record};
use crate::queue::Snapshot;

/// Where a document landed, for the poll's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landed {
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
    Stdout,
}

impl fmt::Display for Landed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Landed::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}[{partition}]@{offset}"),
            Landed::Stdout => f.write_str("stdout"),
        }
    }
}

#[derive(Debug)]
pub enum SinkError {
    Kafka(KafkaError),
    Stdout(std::io::Error),
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkError::Kafka(e) => write!(f, "deliver: {e}"),
            SinkError::Stdout(e) => write!(f, "deliver: writing to stdout failed: {e}"),
        }
    }
}

impl std::error::Error for SinkError {}

const RECORD_LIST_TOO_LARGE: i16 = 18;
const INVALID_RECORD: i16 = 87;

impl SinkError {
    /// The broker refused these bytes themselves (size, format): resending them can never
    /// work, unlike an outage or a permission that an operator may still fix.
    pub fn rejects_data(&self) -> bool {
        match self {
            SinkError::Kafka(e) => {
                matches!(
                    e,
                    KafkaError::MessageTooLarge { .. } | KafkaError::Encode { .. }
                ) || matches!(e.code(), Some(RECORD_LIST_TOO_LARGE | INVALID_RECORD))
            }
            SinkError::Stdout(_) => false,
        }
    }
}

pub trait Sink {
    /// Delivers snapshots in order (no key), retrying as the sink sees fit until `deadline`;
    /// one `Landed` per snapshot.
    fn deliver(
        &mut self,
        snapshots: &[Snapshot],
        deadline: Instant,
    ) -> Result<Vec<Landed>, SinkError>;
}

pub struct KafkaSink {
    producer: Producer,
    topic: String,
}

impl KafkaSink {
    pub fn new(settings: &KafkaSettings) -> KafkaSink {
        let config = ProducerConfig {
            bootstrap: settings.bootstrap.clone(),
            client_id: settings.client_id.clone(),
            acks: match settings.acks {
                AcksSetting::All => Acks::All,
                AcksSetting::Leader => Acks::Leader,
                AcksSetting::None => Acks::None,
            },
            compression: match settings.compression {
                CompressionSetting::None => Compression::None,
                CompressionSetting::Gzip => Compression::Gzip,
                CompressionSetting::Snappy => Compression::Snappy,
                CompressionSetting::Lz4 => Compression::Lz4,
                CompressionSetting::Zstd => Compression::Zstd,
            },
            request_timeout: settings.request_timeout,
            idempotence: settings.idempotence,
            ..ProducerConfig::default()
        };
        KafkaSink {
            producer: Producer::new(config),
            topic: settings.topic.clone(),
        }
    }
}

impl Sink for KafkaSink {
    fn deliver(
        &mut self,
        snapshots: &[Snapshot],
        deadline: Instant,
    ) -> Result<Vec<Landed>, SinkError> {
        let records: Vec<Record<'_>> = snapshots
            .iter()
            .map(|s| Record {
                key: None,
                value: &s.document,
                timestamp_ms: s.timestamp_ms,
            })
            .collect();
        let deliveries = self
            .producer
            .produce(&self.topic, &records, deadline)
            .map_err(SinkError::Kafka)?;
        Ok(deliveries
            .iter()
            .map(|d| Landed::Kafka {
                topic: self.topic.clone(),
                partition: d.partition,
                offset: d.offset,
            })
            .collect())
    }
}

/// Writes each document and a newline, flushed, so `| jq` or a pipe consumer sees it at once.
pub struct StdoutSink<W: Write> {
    out: W,
}

impl<W: Write> StdoutSink<W> {
    pub fn new(out: W) -> Self {
        StdoutSink { out }
    }
}

impl<W: Write> Sink for StdoutSink<W> {
    fn deliver(&mut self, snapshots: &[Snapshot], _: Instant) -> Result<Vec<Landed>, SinkError> {
        for s in snapshots {
            self.out
                .write_all(&s.document)
                .and_then(|_| self.out.write_all(b"\n"))
                .map_err(SinkError::Stdout)?;
        }
        self.out.flush().map_err(SinkError::Stdout)?;
        Ok(vec![Landed::Stdout; snapshots.len()])
    }
}
