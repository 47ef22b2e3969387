//! The conversion stage of gtfs-rt-kafka: `decode` (protobuf bytes → prost types, bounded,
//! entity by entity) and `json` (prost types → the Python producer's JSON).
//!
//! A crate of its own for one reason: the release profile optimises it for speed
//! (`opt-level = "s"`) while the rest of the binary stays at `"z"` for the size budget
//! (ARCHITECTURE.md "Dependencies", BENCHMARKS.md). Its API is the two modules, re-exported
//! by `gtfs_rt_kafka` under the same names.

pub mod decode;
pub mod json;
