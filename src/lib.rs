//! gtfs-rt-kafka: poll a GTFS-Realtime feed, convert it to canonical protobuf JSON, produce it to Kafka.
//!
//! Modules follow the data flow of one poll: `fetch` → `decode` → `json` → `kafka`,
//! driven by `app`'s single-threaded loop with settings from `config`.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod config_file;
pub mod decode;
pub mod fetch;
pub mod json;
pub mod kafka;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod signals;
pub mod sink;
pub mod spool;
