//! Our Kafka producer: a sans-IO protocol core (wire, versions, metadata, partitioner, batch,
//! produce) plus one blocking socket module (transport), driven by `Producer`. Owns everything
//! Kafka; never sees feeds, protobuf or JSON, and never spawns threads.
//!
//! Module map, bottom-up:
//! - `wire`: size-prefixed frames, headers, correlation ids, leftover-byte checks.
//! - `response`: bounded decoders of the four responses we read (no count is trusted).
//! - `versions`: ApiVersions handshake (KIP-511 fallback) and highest-common-version choice.
//! - `metadata`: topic → partitions → leader, node id → `host:port`, with age.
//! - `partitioner`: Java-compatible murmur2 for keys, sticky round-robin without.
//! - `batch`: record batch v2 with pure-Rust gzip/snappy/lz4/zstd and producer-id fields.
//! - `produce`: Produce requests and per-partition Done / Retry / Fatal decisions.
//! - `transport`: the only `TcpStream`; connect, write a frame, read a bounded frame.
//! - `producer`: the blocking facade with retries, backoff, reconnects, idempotence.

mod batch;
mod config;
mod error;
#[cfg(test)]
mod fake;
mod metadata;
mod partitioner;
mod produce;
mod producer;
mod response;
mod transport;
mod versions;
mod wire;

pub use config::{Acks, Compression, ProducerConfig};
pub use error::{error_code_name, KafkaError, Phase};
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{Delivery, Producer, Record};
