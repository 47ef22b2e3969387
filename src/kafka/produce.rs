//! Produce requests and what their responses mean: one outcome per partition, Done / Retry /
//! Fatal. Pure; never sends, sleeps or refreshes metadata itself.

use std::time::Duration;

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::batch::EncodedBatch;
// The codes `classify` decides on, by name (a misspelt one would be a catch-all binding,
// which the compiler flags).
use super::codes::*;
use super::config::Acks;
use super::error::KafkaError;
use super::response::ProduceView;

/// One partition's batch in a request.
#[derive(Debug, Clone)]
pub(crate) struct PartitionBatch {
    pub partition: i32,
    pub batch: EncodedBatch,
}

/// What to do about one partition after a Produce response.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Appended; the batch's first record got `base_offset` (-1 when unknown).
    Done { base_offset: i64 },
    /// Send the same batch again after a backoff, refreshing metadata first if asked.
    Retry {
        refresh_metadata: bool,
        reason: KafkaError,
    },
    /// Give up on the whole call.
    Fatal(KafkaError),
}

pub(crate) fn request(
    topic: &str,
    topic_id: Option<[u8; 16]>,
    acks: Acks,
    timeout: Duration,
    batches: &[PartitionBatch],
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks.wire())
        .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))
        .with_topic_data(vec![TopicProduceData::default()
            // The encoder writes the name up to v12 and the id from v13 on.
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_topic_id(uuid::Uuid::from_bytes(topic_id.unwrap_or([0; 16])))
            .with_partition_data(
                batches
                    .iter()
                    .map(|b| {
                        PartitionProduceData::default()
                            .with_index(b.partition)
                            .with_records(Some(b.batch.bytes.clone()))
                    })
                    .collect(),
            )])
}

/// Matches a response to the batches sent and classifies each partition's result.
pub(crate) fn interpret(
    broker: &str,
    topic: &str,
    topic_id: Option<[u8; 16]>,
    response: &ProduceView,
    batches: &[PartitionBatch],
) -> Result<Vec<(i32, Outcome)>, KafkaError> {
    if response.throttle_time_ms > 0 {
        log::debug!(
            "kafka {broker}: produce throttled for {} ms",
            response.throttle_time_ms
        );
    }
    let malformed = |detail: String| KafkaError::Malformed {
        broker: broker.to_owned(),
        api: "Produce",
        detail,
    };
    let topic_response = response
        .topics
        .iter()
        .find(|t| {
            t.name.as_deref() == Some(topic) || (topic_id.is_some() && Some(t.topic_id) == topic_id)
        })
        .ok_or_else(|| malformed(format!("no entry for topic {topic}")))?;
    batches
        .iter()
        .map(|sent| {
            let p = topic_response
                .partitions
                .iter()
                .find(|p| p.index == sent.partition)
                .ok_or_else(|| malformed(format!("no entry for partition {}", sent.partition)))?;
            let mut message: Option<String> = p.error_message.clone();
            for (batch_index, m) in &p.record_errors {
                let line = format!("record {batch_index}: {}", m.as_deref().unwrap_or(""));
                message = Some(match message {
                    Some(prev) if !prev.is_empty() => format!("{prev}; {line}"),
                    _ => line,
                });
            }
            Ok((
                sent.partition,
                classify(broker, topic, sent, p.error_code, p.base_offset, message),
            ))
        })
        .collect()
}

/// The decision for one partition's error code.
pub(crate) fn classify(
    broker: &str,
    topic: &str,
    sent: &PartitionBatch,
    code: i16,
    base_offset: i64,
    message: Option<String>,
) -> Outcome {
    let err =
        || KafkaError::broker_code(broker, topic, Some(sent.partition), code, message.clone());
    let retry = |refresh_metadata: bool| Outcome::Retry {
        refresh_metadata,
        reason: err(),
    };
    match code {
        NONE => Outcome::Done { base_offset },
        // An idempotent retry of a batch the broker already has.
        DUPLICATE_SEQUENCE_NUMBER => Outcome::Done { base_offset },
        // Leadership moved or is unknown; the topic may still be in creation, or was deleted
        // and created again (its new id is in fresh metadata): ask for fresh metadata.
        UNKNOWN_TOPIC_OR_PARTITION
        | LEADER_NOT_AVAILABLE
        | NOT_LEADER_OR_FOLLOWER
        | NETWORK_EXCEPTION
        | KAFKA_STORAGE_ERROR
        | FENCED_LEADER_EPOCH
        | UNKNOWN_LEADER_EPOCH
        | UNKNOWN_TOPIC_ID
        | INCONSISTENT_TOPIC_ID => retry(true),
        // Same leader, later.
        REQUEST_TIMED_OUT | NOT_ENOUGH_REPLICAS | NOT_ENOUGH_REPLICAS_AFTER_APPEND => retry(false),
        MESSAGE_TOO_LARGE => Outcome::Fatal(KafkaError::MessageTooLarge {
            broker: broker.to_owned(),
            topic: topic.to_owned(),
            partition: sent.partition,
            batch_bytes: sent.batch.bytes.len(),
            largest_record_bytes: sent.batch.largest_record_bytes,
            compression: sent.batch.compression,
        }),
        // Our own bytes or settings are wrong, or the broker lost our producer state;
        // resending the same cannot help.
        CORRUPT_MESSAGE
        | INVALID_TOPIC_EXCEPTION
        | RECORD_LIST_TOO_LARGE
        | INVALID_REQUIRED_ACKS
        | TOPIC_AUTHORIZATION_FAILED
        | CLUSTER_AUTHORIZATION_FAILED
        | INVALID_TIMESTAMP
        | UNSUPPORTED_VERSION
        | UNSUPPORTED_FOR_MESSAGE_FORMAT
        | OUT_OF_ORDER_SEQUENCE_NUMBER
        | INVALID_PRODUCER_EPOCH
        | UNKNOWN_PRODUCER_ID
        | UNSUPPORTED_COMPRESSION_TYPE
        | INVALID_RECORD => Outcome::Fatal(match err() {
            KafkaError::Broker {
                broker,
                topic,
                partition,
                code,
                message,
                ..
            } => KafkaError::Broker {
                broker,
                topic,
                partition,
                code,
                message,
                retriable: false,
            },
            other => other,
        }),
        // Anything else: trust the protocol's retriable flag.
        _ => match err() {
            e if e.is_retriable() => Outcome::Retry {
                refresh_metadata: false,
                reason: e,
            },
            e => Outcome::Fatal(e),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kafka::batch::{decode_batches, encode_batch, BatchRecord, Identity};
    use crate::kafka::config::Compression;
    use crate::kafka::response;
    use crate::kafka::wire::tests::broker_frame;
    use crate::kafka::wire::{parse_response, RequestEncoder};
    use bytes::{Buf, Bytes};
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ApiKey, ProduceResponse};
    use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable};

    fn batch(partition: i32, n: usize) -> PartitionBatch {
        let values: Vec<Vec<u8>> = (0..n).map(|i| format!("v{i}").into_bytes()).collect();
        let records: Vec<BatchRecord> = values
            .iter()
            .map(|v| BatchRecord {
                key: None,
                value: v,
                timestamp_ms: 1,
            })
            .collect();
        PartitionBatch {
            partition,
            batch: encode_batch(&records, Compression::None, Identity::NONE).unwrap(),
        }
    }

    pub(crate) fn response(topic: &str, parts: &[(i32, i16, i64)]) -> ProduceResponse {
        ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_responses(
                parts
                    .iter()
                    .map(|&(index, error_code, base_offset)| {
                        PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(error_code)
                            .with_base_offset(base_offset)
                    })
                    .collect(),
            )])
    }

    fn view(r: ProduceResponse) -> ProduceView {
        let frame = broker_frame(ApiKey::Produce, 12, 1, &r);
        parse_response(ApiKey::Produce, 12, 1, frame, response::produce).unwrap()
    }

    #[test]
    fn request_round_trips_through_broker_decoder() {
        let batches = [batch(0, 2), batch(3, 1)];
        let req = request("t", None, Acks::All, Duration::from_secs(30), &batches);
        for version in [3, 8, 9, 11, 12] {
            let enc = RequestEncoder::new("c")
                .encode(ApiKey::Produce, version, &req)
                .unwrap();
            let mut frame = enc.frame.to_bytes();
            frame.advance(4);
            let header = decode_request_header_from_buffer(&mut frame).unwrap();
            assert_eq!(
                (header.request_api_key, header.request_api_version),
                (0, version)
            );
            let got = ProduceRequest::decode(&mut frame, version).unwrap();
            assert!(frame.is_empty());
            assert_eq!(got.acks, -1);
            assert_eq!(got.timeout_ms, 30_000);
            let parts = &got.topic_data[0].partition_data;
            assert_eq!(parts.len(), 2);
            assert_eq!(decode_batches(parts[0].records.clone().unwrap()).len(), 2);
            assert_eq!(parts[1].index, 3);
        }
    }

    #[test]
    fn shared_batches_go_out_uncopied_and_the_frame_is_unchanged() {
        let batches = [batch(0, 2), batch(3, 40), batch(5, 1)];
        let shared: Vec<Bytes> = batches.iter().map(|b| b.batch.bytes.clone()).collect();
        let topic_id = Some([7u8; 16]);
        for (version, id) in [(3, None), (8, None), (9, None), (12, None), (13, topic_id)] {
            let req = request("t", id, Acks::All, Duration::from_secs(30), &batches);
            let plain = RequestEncoder::new("c")
                .encode(ApiKey::Produce, version, &req)
                .unwrap();
            let gathered = RequestEncoder::new("c")
                .encode_sharing(ApiKey::Produce, version, &req, &shared)
                .unwrap();
            assert_eq!(
                gathered.frame.to_bytes(),
                plain.frame.to_bytes(),
                "v{version}"
            );
            assert_eq!(plain.frame.pieces().len(), 1);
            // Each batch is a piece of its own, the very same memory.
            for b in &shared {
                assert!(
                    gathered
                        .frame
                        .pieces()
                        .iter()
                        .any(|p| p.as_ptr() == b.as_ptr() && p.len() == b.len()),
                    "v{version}: batch copied"
                );
            }
            // Encoded bytes before each batch, the batch, and after the last one only where the
            // version has tagged fields there.
            let pieces = gathered.frame.pieces().len();
            assert_eq!(
                pieces,
                2 * shared.len() + usize::from(version >= 9),
                "v{version}"
            );
        }
    }

    #[test]
    fn response_parsing_per_version() {
        let batches = [batch(0, 2), batch(1, 1)];
        let mut body = response("t", &[(1, 6, -1), (0, 0, 42)]);
        body.responses[0].partition_responses[0].record_errors =
            vec![BatchIndexAndErrorMessage::default()
                .with_batch_index(0)
                .with_batch_index_error_message(Some("bad".into()))];
        for version in [3, 5, 8, 9, 10, 12] {
            let frame = broker_frame(ApiKey::Produce, version, 9, &body);
            let parsed =
                parse_response(ApiKey::Produce, version, 9, frame, response::produce).unwrap();
            let outcomes = interpret("b:1", "t", None, &parsed, &batches).unwrap();
            assert!(
                matches!(outcomes[0], (0, Outcome::Done { base_offset: 42 })),
                "{outcomes:?}"
            );
            let (
                1,
                Outcome::Retry {
                    refresh_metadata: true,
                    reason,
                },
            ) = &outcomes[1]
            else {
                panic!("{outcomes:?}")
            };
            let line = reason.to_string();
            assert!(
                line.contains("partition 1: NOT_LEADER_OR_FOLLOWER"),
                "{line}"
            );
            assert_eq!(
                line.contains("record 0: bad"),
                version >= 8,
                "v{version}: {line}"
            );
        }
    }

    #[test]
    fn response_missing_partition_is_malformed() {
        let err = interpret(
            "b:1",
            "t",
            None,
            &view(response("t", &[(0, 0, 1)])),
            &[batch(0, 1), batch(2, 1)],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no entry for partition 2"),
            "{err}"
        );
        let err = interpret(
            "b:1",
            "t",
            None,
            &view(response("u", &[(0, 0, 1)])),
            &[batch(0, 1)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("no entry for topic t"), "{err}");
    }

    #[test]
    fn classification_table() {
        #[derive(Debug, PartialEq)]
        enum K {
            Done,
            Refresh,
            Retry,
            Fatal,
        }
        let sent = batch(0, 3);
        let kind = |code| match classify("b:1", "t", &sent, code, 7, None) {
            Outcome::Done { base_offset } => {
                assert_eq!(base_offset, 7);
                K::Done
            }
            Outcome::Retry {
                refresh_metadata: true,
                reason,
            } => {
                assert!(reason.is_retriable());
                K::Refresh
            }
            Outcome::Retry {
                refresh_metadata: false,
                reason,
            } => {
                assert!(reason.is_retriable());
                K::Retry
            }
            Outcome::Fatal(e) => {
                assert!(!e.is_retriable(), "{e}");
                K::Fatal
            }
        };
        let table = [
            (0, K::Done),
            (46, K::Done),
            (3, K::Refresh),
            (5, K::Refresh),
            (6, K::Refresh),
            (13, K::Refresh),
            (7, K::Retry),
            (19, K::Retry),
            (20, K::Retry),
            (2, K::Fatal),
            (10, K::Fatal),
            (17, K::Fatal),
            (18, K::Fatal),
            (29, K::Fatal),
            (31, K::Fatal),
            (35, K::Fatal),
            (87, K::Fatal),
            (-1, K::Fatal),
            (14, K::Retry), // COORDINATOR_LOAD_IN_PROGRESS: protocol says retriable
            (12345, K::Fatal),
        ];
        for (code, expect) in table {
            assert_eq!(kind(code), expect, "code {code}");
        }
        let Outcome::Fatal(e) = classify("b:1", "t", &sent, 10, -1, None) else {
            panic!()
        };
        let line = e.to_string();
        assert!(
            line.contains(&format!("batch of {} bytes", sent.batch.bytes.len())),
            "{line}"
        );
        assert!(line.contains("largest record 2 bytes"), "{line}");
    }

    #[test]
    fn produce_request_carries_batch_bytes_unchanged() {
        let b = batch(0, 4);
        let req = request(
            "t",
            Some([3; 16]),
            Acks::None,
            Duration::from_millis(1500),
            std::slice::from_ref(&b),
        );
        assert_eq!(req.acks, 0);
        assert_eq!(req.timeout_ms, 1500);
        assert_eq!(req.topic_data[0].topic_id.as_bytes(), &[3; 16]);
        assert_eq!(
            req.topic_data[0].partition_data[0].records,
            Some(b.batch.bytes.clone())
        );
        let _: Bytes = b.batch.bytes;
    }
}
