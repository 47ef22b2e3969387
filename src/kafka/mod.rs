//! Our Kafka producer: a sans-IO protocol core (wire, versions, metadata, partitioner, batch,
//! produce) plus one blocking socket module (transport), driven by `Producer`. Owns everything
//! Kafka; never sees feeds, protobuf or JSON, and never spawns threads.
//!
//! Module map, bottom-up:
//! - `codes`: the Kafka error codes we decide on, by name.
//! - `wire`: size-prefixed frames, headers, correlation ids, leftover-byte checks.
//! - `response`: bounded decoders of the four responses we read (no count is trusted).
//! - `versions`: ApiVersions handshake (KIP-511 fallback) and highest-common-version choice.
//! - `metadata`: topic → partitions → leader, node id → `host:port`, with age.
//! - `partitioner`: Java-compatible murmur2 for keys, sticky round-robin without.
//! - `batch`: record batch v2 with pure-Rust gzip/snappy/lz4/zstd and producer-id fields.
//! - `produce`: Produce requests and per-partition Done / Retry / Fatal decisions.
//! - `attempt`: one produce call's policy as a state machine (rounds, retries, refusals,
//!   identity changes); the producer only moves its bytes.
//! - `idempotence`: producer id, epoch, sequences, batches in doubt; their saved form.
//! - `sasl`: PLAIN and SCRAM-SHA-256/512 clients and the SaslHandshake + SaslAuthenticate
//!   exchange (also for KIP-368 re-authentication); `Secret` (crate::secret): values that format as `***`.
//! - `tls`: rustls client config from PEM files, the handshake, certificate errors in words.
//! - `transport`: the only `TcpStream`; connect (+ TLS), write a frame, read a bounded frame.
//! - `producer`: the blocking facade with retries, backoff, reconnects, idempotence, and SASL
//!   on every new connection; `ConnPool` shares idle negotiated connections between the
//!   producers of one cluster (a connection goes back only when nothing is unread on it).

mod attempt;
mod batch;
mod codes;
mod config;
mod error;
#[cfg(test)]
pub(crate) mod fake;
mod idempotence;
mod metadata;
mod partitioner;
mod produce;
mod producer;
mod response;
mod sasl;
mod tls;
mod transport;
mod versions;
mod wire;

pub use crate::secret::Secret;
pub use config::{Acks, Compression, ProducerConfig, Sasl, SaslMechanism};
pub use error::{error_code_name, KafkaError, Phase};
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{
    ConnPool, Delivery, Journal, Produced, Producer, Record, Restored, TopicCreation, TopicSpec,
};
pub use tls::{Tls, TlsFiles};

/// Not an API: the fuzzers' way in (fuzz/fuzz_targets/kafka_response.rs). Runs one broker reply
/// through what the producer does with it: the size prefix check, the response header and
/// correlation id (1), the bounded decoder for `api` (0 Produce, 3 Metadata, 17 SaslHandshake,
/// 18 ApiVersions with its KIP-511 fallback, 19 CreateTopics, 22 InitProducerId, 36
/// SaslAuthenticate) at `version`, then metadata ingestion or the per-partition
/// produce decisions for topic "t", partitions 0..=2. Errors are returned, never panics.
#[doc(hidden)]
pub fn fuzz_response(api: i16, version: i16, frame: &[u8]) -> Result<(), String> {
    use kafka_protocol::messages::ApiKey;

    let Some((prefix, body)) = frame.split_first_chunk::<4>() else {
        return Err("no size prefix".to_owned());
    };
    wire::frame_len(*prefix)?;
    let body = bytes::Bytes::copy_from_slice(body);
    match api {
        0 => {
            let view = wire::parse_response(ApiKey::Produce, version, 1, body, response::produce)?;
            let batches: Vec<produce::PartitionBatch> = (0..3)
                .map(|partition| produce::PartitionBatch {
                    partition,
                    batch: batch::EncodedBatch {
                        bytes: bytes::Bytes::new(),
                        largest_record_bytes: 0,
                        compression: "none",
                    },
                })
                .collect();
            produce::interpret("fuzz", "t", Some([1; 16]), &view, &batches)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        3 => {
            let view =
                wire::parse_response(ApiKey::Metadata, version, 1, body, response::metadata)?;
            metadata::Metadata::default()
                .ingest("fuzz", "t", view, std::time::Instant::now())
                .map(drop)
                .map_err(|e| e.to_string())
        }
        18 => versions::Handshake::new()
            .on_response("fuzz", 1, body)
            .map(drop)
            .map_err(|e| e.to_string()),
        22 => wire::parse_response(
            ApiKey::InitProducerId,
            version,
            1,
            body,
            response::init_producer_id,
        )
        .map(drop),
        17 => wire::parse_response(
            ApiKey::SaslHandshake,
            version,
            1,
            body,
            response::sasl_handshake,
        )
        .map(drop),
        19 => wire::parse_response(
            ApiKey::CreateTopics,
            version,
            1,
            body,
            response::create_topics,
        )
        .map(drop),
        36 => wire::parse_response(
            ApiKey::SaslAuthenticate,
            version,
            1,
            body,
            response::sasl_authenticate,
        )
        .map(drop),
        _ => Err(format!("api {api} is not read by the producer")),
    }
}
