//! Untrusted broker replies through what the producer does with them (see
//! `gtfs_rt_kafka::kafka::fuzz_response`): nothing panics, aborts or allocates without bound.
//!
//! Input: one byte choosing the API, one choosing the version among those we negotiate, then the
//! frame as read from the socket (4-byte size prefix, response header with correlation id 1, body).
#![no_main]

mod alloc_guard;

#[global_allocator]
static ALLOC: alloc_guard::Guard = alloc_guard::Guard;

use gtfs_rt_kafka::kafka::fuzz_response;
use libfuzzer_sys::fuzz_target;

/// (ApiKey, lowest, highest version we speak), as in src/kafka/versions.rs: Produce, Metadata,
/// ApiVersions, InitProducerId, CreateTopics, SaslHandshake, SaslAuthenticate.
const APIS: [(i16, i16, i16); 7] = [
    (0, 3, 13),
    (3, 1, 13),
    (18, 0, 4),
    (22, 0, 5),
    (19, 4, 7),
    (17, 1, 1),
    (36, 0, 2),
];

fuzz_target!(|data: &[u8]| {
    let [api, version, frame @ ..] = data else {
        return;
    };
    let (api, lo, hi) = APIS[usize::from(*api) % APIS.len()];
    let version = lo + i16::from(*version) % (hi - lo + 1);
    let _ = fuzz_response(api, version, frame);
});
