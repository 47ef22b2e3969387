//! Where documents go: Kafka through our client, or stdout (one JSON document per line).
//!
//! The app hands a finished document to a `Sink`; only `KafkaSink` knows Kafka exists.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::config::{AcksSetting, CompressionSetting, KafkaSettings, NewTopic};
use crate::kafka::{
    Acks, Compression, ConnPool, Journal, KafkaError, Producer, ProducerConfig, Record,
    TopicCreation, TopicSpec,
};

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

impl SinkError {
    /// The reader of stdout went away (`| head`): nothing sent there can ever arrive again.
    pub fn output_closed(&self) -> bool {
        matches!(self, SinkError::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The sink refused these bytes themselves (size, format): resending them can never
    /// work. Which Kafka errors mean that is the client's to say.
    pub fn rejects_data(&self) -> bool {
        match self {
            SinkError::Kafka(e) => e.rejects_data(),
            SinkError::Stdout(_) => false,
        }
    }
}

/// One record to deliver.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub timestamp_ms: i64,
}

/// What a delivery attempt did, record by record.
#[derive(Debug)]
pub struct Delivered {
    /// Where each record landed; `None`: not acknowledged.
    pub landed: Vec<Option<Landed>>,
    /// Records refused for what they are (too large, invalid): never appended, and resending
    /// them can't help. A record neither landed nor refused has an unknown fate.
    pub refused: Vec<bool>,
    /// Why the `refused` records were refused.
    pub refusal: Option<SinkError>,
    /// Why not every record landed.
    pub error: Option<SinkError>,
}

/// What a sink took over from a previous run (`Sink::restore`).
#[derive(Debug)]
pub struct Resumed {
    /// For the log line.
    pub what: String,
    /// How many pending records, from the oldest, were in flight at the stop: resent first
    /// and exactly, and never dropped before (`Outbox`'s exact resend).
    pub resend_first: usize,
    /// Per pending record: already in the sink (acknowledged before the stop).
    pub landed: Vec<bool>,
}

pub trait Sink {
    /// Delivers records in order, retrying as the sink sees fit until `deadline`. A sink that
    /// keeps delivery state worth saving (the idempotent Kafka producer) hands it to `journal`
    /// before its first send of new data.
    fn deliver(
        &mut self,
        records: &[OutRecord<'_>],
        deadline: Instant,
        journal: Option<Journal<'_>>,
    ) -> Delivered;

    /// The delivery state worth saving, now (what `deliver` hands its journal).
    fn journal_state(&self) -> Option<Vec<u8>> {
        None
    }

    /// Takes over the state a previous run saved through the journal. `Ok(Some(..))` says
    /// what was taken over; `Ok(None)`: this sink keeps no such state; `Err`: why it can't be
    /// used (and what that may cost). `pending`: the records still to deliver, oldest first
    /// (what was in flight is among them unless it landed).
    fn restore(
        &mut self,
        _state: &[u8],
        _pending: &[OutRecord<'_>],
    ) -> Result<Option<Resumed>, String> {
        Ok(None)
    }

    /// Runs once in the feed's own loop before its first poll (topic creation).
    fn prepare(&mut self, _deadline: Instant) {}
}

/// Kafka's default `producer.id.expiration.ms`: a producer id idle longer may be forgotten by
/// the broker, and a resend under it would no longer be recognised.
const PRODUCER_ID_EXPIRATION: Duration = Duration::from_secs(24 * 3600);

pub struct KafkaSink {
    producer: Producer,
    topic: String,
    /// `CREATE_TOPIC`: created (when missing) by `prepare`, in the feed's own loop.
    create_topic: Option<NewTopic>,
}

/// One connection pool per Kafka cluster identity: feeds with the same brokers, client id
/// and security settings (passwords and certificates included) share connections, so their
/// number follows the sends in progress, not the number of feeds. Each feed keeps its own
/// producer: its own producer id, sequences and metadata, so one topic's trouble stays its own.
#[derive(Default)]
pub struct Clusters(Vec<(KafkaSettings, ConnPool)>);

impl Clusters {
    pub fn pool_for(&mut self, settings: &KafkaSettings) -> ConnPool {
        let same_cluster = |known: &KafkaSettings| {
            known.bootstrap == settings.bootstrap
                && known.client_id == settings.client_id
                && known.security_protocol == settings.security_protocol
                && known.tls == settings.tls
                && known.sasl == settings.sasl
        };
        if let Some((_, pool)) = self.0.iter().find(|(k, _)| same_cluster(k)) {
            return pool.clone();
        }
        let pool = ConnPool::default();
        self.0.push((settings.clone(), pool.clone()));
        pool
    }
}

impl KafkaSink {
    /// A sink sharing its cluster's connections with the other feeds' sinks.
    pub fn shared(settings: &KafkaSettings, clusters: &mut Clusters) -> KafkaSink {
        let mut sink = KafkaSink::new(settings);
        sink.producer = sink.producer.with_pool(clusters.pool_for(settings));
        sink
    }

    /// A sink over a given producer (the simulation's, over the in-memory cluster).
    #[cfg(test)]
    pub(crate) fn with_producer(producer: Producer, topic: &str) -> KafkaSink {
        KafkaSink {
            producer,
            topic: topic.to_string(),
            create_topic: None,
        }
    }

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
            tls: settings.tls.clone(),
            sasl: settings.sasl.clone(),
            ..ProducerConfig::default()
        };
        KafkaSink {
            producer: Producer::new(config),
            topic: settings.topic.clone(),
            create_topic: settings.create_topic.clone(),
        }
    }
}

impl KafkaSink {
    /// `--create-topic`: creates the topic when missing. Failing is not fatal (the broker may
    /// auto-create it, or an operator may); it is one clear line.
    pub fn ensure_topic(&mut self, topic: &NewTopic, deadline: Instant) {
        let spec = TopicSpec {
            name: self.topic.clone(),
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            configs: topic.configs.clone(),
        };
        match self.producer.create_topic(&spec, deadline) {
            Ok(TopicCreation::Created) => log::info!(
                "created topic {} ({} partitions, replication factor {})",
                spec.name,
                describe_default(spec.partitions.into()),
                describe_default(spec.replication_factor.into())
            ),
            Ok(TopicCreation::AlreadyExists) => {
                log::info!("topic {} already exists; left as it is", spec.name)
            }
            Err(e) => log::error!(
                "cannot create topic {} (CREATE_TOPIC): {e}; create it yourself or grant this \
                 client CREATE on it",
                spec.name
            ),
        }
    }
}

fn describe_default(n: i64) -> String {
    if n < 0 {
        "broker default".to_string()
    } else {
        n.to_string()
    }
}

impl Sink for KafkaSink {
    fn prepare(&mut self, deadline: Instant) {
        if let Some(topic) = self.create_topic.take() {
            self.ensure_topic(&topic, deadline);
        }
    }

    fn journal_state(&self) -> Option<Vec<u8>> {
        self.producer.identity_state()
    }

    fn restore(
        &mut self,
        state: &[u8],
        pending: &[OutRecord<'_>],
    ) -> Result<Option<Resumed>, String> {
        let pending = kafka_records(pending);
        let r = self
            .producer
            .restore_identity(state, &pending, PRODUCER_ID_EXPIRATION)?;
        let id = format!("producer id {} epoch {}", r.producer_id, r.producer_epoch);
        let what = match r.records_in_doubt {
            0 => format!("{id} taken over (nothing was in doubt)"),
            n => format!(
                "{id} taken over; {n} records in {} batches that may already be in Kafka \
                 are resent as they were, and the broker drops what it has",
                r.batches_in_doubt
            ),
        };
        Ok(Some(Resumed {
            what,
            resend_first: r.resend_first,
            landed: r.landed,
        }))
    }

    fn deliver(
        &mut self,
        records: &[OutRecord<'_>],
        deadline: Instant,
        journal: Option<Journal<'_>>,
    ) -> Delivered {
        let records = kafka_records(records);
        let produced = self
            .producer
            .produce_each(&self.topic, &records, deadline, journal);
        let landed = produced
            .landed
            .into_iter()
            .map(|d| {
                d.map(|d| Landed::Kafka {
                    topic: self.topic.clone(),
                    partition: d.partition,
                    offset: d.offset,
                })
            })
            .collect();
        Delivered {
            landed,
            refused: produced.refused,
            refusal: produced.refusal.map(SinkError::Kafka),
            error: produced.error.map(SinkError::Kafka),
        }
    }
}

/// The producer's view of the outbox's records.
fn kafka_records<'a>(records: &[OutRecord<'a>]) -> Vec<Record<'a>> {
    records
        .iter()
        .map(|r| Record {
            key: r.key,
            value: r.value,
            timestamp_ms: r.timestamp_ms,
        })
        .collect()
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
    fn deliver(
        &mut self,
        records: &[OutRecord<'_>],
        _: Instant,
        _: Option<Journal<'_>>,
    ) -> Delivered {
        let mut landed = Vec::with_capacity(records.len());
        let mut line = Vec::new();
        for r in records {
            // One write per document, so feeds sharing stdout never interleave their lines.
            line.clear();
            line.extend_from_slice(r.value);
            line.push(b'\n');
            let written = self.out.write_all(&line);
            if let Err(e) = written {
                landed.resize(records.len(), None);
                return Delivered {
                    landed,
                    refused: vec![false; records.len()],
                    refusal: None,
                    error: Some(SinkError::Stdout(e)),
                };
            }
            landed.push(Some(Landed::Stdout));
        }
        let error = self.out.flush().err();
        if error.is_some() {
            landed = vec![None; records.len()];
        }
        Delivered {
            landed,
            refused: vec![false; records.len()],
            refusal: None,
            error: error.map(SinkError::Stdout),
        }
    }
}
