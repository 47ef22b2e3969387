//! Writes the seed corpus of the `kafka_response` target: one well-formed broker reply per API and
//! version we read, encoded by kafka-protocol's broker side, in the target's input format.
//!
//!     cargo +nightly run --manifest-path fuzz/Cargo.toml --example kafka_seeds -- fuzz/seeds/kafka_response
//!
//! The output is committed (a few KB), so fuzzing needs no extra build step.

use std::path::PathBuf;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsResponse, InitProducerIdResponse,
    MetadataResponse, ProduceResponse, ProducerId, ResponseHeader, SaslAuthenticateResponse,
    SaslHandshakeResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

/// The fuzz target's input: API selector, version selector, size prefix, header, body.
fn seed<R: Encodable>(selector: u8, lo: i16, api: ApiKey, version: i16, body: &R) -> Vec<u8> {
    let mut frame = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(1)
        .encode(&mut frame, api.response_header_version(version))
        .unwrap();
    body.encode(&mut frame, version).unwrap();
    let mut out = BytesMut::new();
    out.put_u8(selector);
    out.put_u8(u8::try_from(version - lo).unwrap());
    out.put_i32(i32::try_from(frame.len()).unwrap());
    out.put_slice(&frame);
    out.to_vec()
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: kafka_seeds DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: String, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();

    let produce = ProduceResponse::default()
        .with_responses(vec![TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_topic_id(uuid_bytes([1; 16]))
            .with_partition_responses(vec![
                PartitionProduceResponse::default()
                    .with_index(0)
                    .with_base_offset(42),
                PartitionProduceResponse::default()
                    .with_index(1)
                    .with_error_code(6)
                    .with_base_offset(-1),
                PartitionProduceResponse::default()
                    .with_index(2)
                    .with_error_code(87)
                    .with_base_offset(-1)
                    .with_record_errors(vec![BatchIndexAndErrorMessage::default()
                        .with_batch_index(0)
                        .with_batch_index_error_message(Some("bad".into()))])
                    .with_error_message(Some("invalid".into())),
            ])])
        .with_throttle_time_ms(1);
    for version in 3..=13 {
        write(
            format!("produce-v{version}"),
            seed(0, 3, ApiKey::Produce, version, &produce),
        );
    }

    let metadata = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host("127.0.0.1".into())
                .with_port(9092),
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(2))
                .with_host("::1".into())
                .with_port(9093)
                .with_rack(Some("r".into())),
        ])
        .with_cluster_id(Some("c".into()))
        .with_controller_id(BrokerId(1))
        .with_topics(vec![MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
            .with_topic_id(uuid_bytes([1; 16]))
            .with_partitions(vec![
                MetadataResponsePartition::default()
                    .with_partition_index(0)
                    .with_leader_id(BrokerId(2))
                    .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                    .with_isr_nodes(vec![BrokerId(2)]),
                MetadataResponsePartition::default()
                    .with_error_code(5)
                    .with_partition_index(1)
                    .with_leader_id(BrokerId(-1)),
            ])]);
    for version in 1..=13 {
        write(
            format!("metadata-v{version}"),
            seed(1, 1, ApiKey::Metadata, version, &metadata),
        );
    }

    // The handshake starts at v4; a broker that lacks it answers a v0 body (KIP-511).
    let ranges = [(0, 3, 13), (3, 1, 13), (18, 0, 4), (22, 0, 5)]
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key)
                .with_min_version(min)
                .with_max_version(max)
        })
        .to_vec();
    let api_versions = ApiVersionsResponse::default().with_api_keys(ranges.clone());
    write(
        "api-versions-v4".to_owned(),
        seed(2, 0, ApiKey::ApiVersions, 4, &api_versions),
    );
    let fallback = ApiVersionsResponse::default()
        .with_error_code(35)
        .with_api_keys(vec![ApiVersion::default()
            .with_api_key(18)
            .with_min_version(0)
            .with_max_version(2)]);
    write(
        "api-versions-kip511".to_owned(),
        seed(2, 0, ApiKey::ApiVersions, 0, &fallback),
    );

    more_seeds(&write);

    let init = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(77))
        .with_producer_epoch(2);
    for version in 0..=5 {
        write(
            format!("init-producer-id-v{version}"),
            seed(3, 0, ApiKey::InitProducerId, version, &init),
        );
    }
}

fn more_seeds(write: &dyn Fn(String, Vec<u8>)) {
    let created = CreateTopicsResponse::default().with_topics(vec![
        CreatableTopicResult::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_topic_id(uuid_bytes([1; 16]))
            .with_num_partitions(3)
            .with_replication_factor(1),
        CreatableTopicResult::default()
            .with_name(TopicName(StrBytes::from_static_str("u")))
            .with_error_code(36)
            .with_error_message(Some("Topic 'u' already exists.".into())),
    ]);
    for version in 4..=7 {
        write(
            format!("create-topics-v{version}"),
            seed(4, 4, ApiKey::CreateTopics, version, &created),
        );
    }
    let handshake = SaslHandshakeResponse::default().with_mechanisms(vec![
        StrBytes::from_static_str("PLAIN"),
        StrBytes::from_static_str("SCRAM-SHA-512"),
    ]);
    write(
        "sasl-handshake-v1".to_owned(),
        seed(5, 1, ApiKey::SaslHandshake, 1, &handshake),
    );
    let authenticate = SaslAuthenticateResponse::default()
        .with_auth_bytes(bytes::Bytes::from_static(
            b"r=fyko+d2lbbFgONRv9qkxdawLHo+Vgk7qvUOKUwuWLIWg4l/9SraGMHEE,s=QSXCR+Q6sek8bf92,i=4096",
        ))
        .with_session_lifetime_ms(3_600_000);
    for version in 0..=2 {
        write(
            format!("sasl-authenticate-v{version}"),
            seed(6, 0, ApiKey::SaslAuthenticate, version, &authenticate),
        );
    }
}

fn uuid_bytes(bytes: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(bytes)
}
