//! gtfs-rt-kafka: poll GTFS-Realtime feeds, convert them to canonical protobuf JSON, produce
//! them to Kafka.
//!
//! Modules follow the data flow: `supervisor` → `feed_loop` → `pipeline` (`fetch` → `decode`
//! → `json`) → `outbox` (`queue`, `spool`) → `sink` → `kafka`, with settings from `config`.
//! `unsafe` is denied everywhere; `limits` allows it for two libc calls, `alloc_cache` for the
//! allocator it is.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod alloc_cache;
pub mod config;
pub use gtfs_rt_convert::{decode, json};
pub mod config_file;
pub mod control;
pub mod feed_loop;
pub mod fetch;
pub mod kafka;
pub mod limits;
pub mod logger;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod pipeline;
pub mod queue;
pub mod schedule;
pub mod secret;
pub mod signals;
#[cfg(test)]
mod sim;
pub mod sink;
pub mod spool;
pub mod stats;
pub mod supervisor;
