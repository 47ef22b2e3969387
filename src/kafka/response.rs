//! Bounded decoders for the responses we read (ApiVersions, Metadata, Produce, InitProducerId,
//! SaslHandshake, SaslAuthenticate), keeping only the fields we use. Never trusts a count: arrays grow with the
//! bytes actually present, so a hostile length cannot make us allocate. No I/O.
//!
//! (kafka-protocol's own decoders pre-allocate `Vec::with_capacity(count)` from the wire; a
//! 12-byte reply announcing 2^31 brokers aborts the process. We still use the crate to encode
//! requests and, in tests, to encode the responses these decoders are checked against.)

use bytes::Bytes;

/// One broker-advertised range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BrokerRange {
    pub api_key: i16,
    pub min: i16,
    pub max: i16,
}

/// A cursor over a response body; every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
    flexible: bool,
}

type R<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], flexible: bool) -> Reader<'a> {
        Reader { buf, flexible }
    }

    fn take(&mut self, n: usize, what: &str) -> R<&'a [u8]> {
        if self.buf.len() < n {
            return Err(format!("{what}: needs {n} bytes, {} left", self.buf.len()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> R<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn i8(&mut self, what: &str) -> R<i8> {
        Ok(i8::from_be_bytes(self.fixed(what)?))
    }
    fn i16(&mut self, what: &str) -> R<i16> {
        Ok(i16::from_be_bytes(self.fixed(what)?))
    }
    fn i32(&mut self, what: &str) -> R<i32> {
        Ok(i32::from_be_bytes(self.fixed(what)?))
    }
    fn i64(&mut self, what: &str) -> R<i64> {
        Ok(i64::from_be_bytes(self.fixed(what)?))
    }

    fn uvarint(&mut self, what: &str) -> R<u32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.fixed::<1>(what)?[0];
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("{what}: varint longer than 5 bytes"))
    }

    /// A (nullable) string, compact in flexible versions.
    fn string(&mut self, what: &str) -> R<Option<String>> {
        let len: i64 = if self.flexible {
            i64::from(self.uvarint(what)?) - 1
        } else {
            i64::from(self.i16(what)?)
        };
        if len < 0 {
            return Ok(None);
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| format!("{what}: not UTF-8"))
    }

    /// A (nullable) byte string, compact in flexible versions; null reads as empty.
    fn bytes(&mut self, what: &str) -> R<Vec<u8>> {
        let len: i64 = if self.flexible {
            i64::from(self.uvarint(what)?) - 1
        } else {
            i64::from(self.i32(what)?)
        };
        if len < 0 {
            return Ok(Vec::new());
        }
        Ok(self.take(len as usize, what)?.to_vec())
    }

    fn skip(&mut self, n: usize, what: &str) -> R<()> {
        self.take(n, what).map(|_| ())
    }

    /// An array's element count (null counts as empty), checked against the bytes left: every
    /// element we read takes at least one byte.
    fn array_len(&mut self, what: &str) -> R<usize> {
        let n: i64 = if self.flexible {
            i64::from(self.uvarint(what)?) - 1
        } else {
            i64::from(self.i32(what)?)
        };
        let n = usize::try_from(n).unwrap_or(0);
        if n > self.buf.len() {
            return Err(format!(
                "{what}: {n} elements announced, {} bytes left",
                self.buf.len()
            ));
        }
        Ok(n)
    }

    /// Reads an array, growing the result only as elements actually decode.
    fn array<T>(&mut self, what: &str, mut element: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        let n = self.array_len(what)?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(element(self)?);
        }
        Ok(out)
    }

    /// Skips an array of fixed-size elements.
    fn skip_array(&mut self, element_bytes: usize, what: &str) -> R<()> {
        let n = self.array_len(what)?;
        self.skip(n.saturating_mul(element_bytes), what)
    }

    /// Skips a tagged-field section (flexible versions only); we use no tagged field.
    fn tags(&mut self, what: &str) -> R<()> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint(what)?;
        for _ in 0..n {
            self.uvarint(what)?;
            let size = self.uvarint(what)? as usize;
            self.skip(size, what)?;
        }
        Ok(())
    }

    fn end(self, what: &str) -> R<()> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(format!("{what}: {n} bytes left over")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiVersionsView {
    pub error_code: i16,
    pub ranges: Vec<BrokerRange>,
}

/// ApiVersions v0..=4 (flexible from v3).
pub(crate) fn api_versions(body: &Bytes, version: i16) -> R<ApiVersionsView> {
    let mut r = Reader::new(body, version >= 3);
    let error_code = r.i16("error_code")?;
    let ranges = r.array("api_keys", |r| {
        let range = BrokerRange {
            api_key: r.i16("api_key")?,
            min: r.i16("min_version")?,
            max: r.i16("max_version")?,
        };
        r.tags("api_keys tags")?;
        Ok(range)
    })?;
    if version >= 1 {
        r.i32("throttle_time_ms")?;
    }
    r.tags("tags")?;
    r.end("ApiVersions")?;
    Ok(ApiVersionsView { error_code, ranges })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerView {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionMetaView {
    pub error_code: i16,
    pub index: i32,
    pub leader_id: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicMetaView {
    pub error_code: i16,
    pub name: Option<String>,
    /// v10+; all zero (the nil UUID) when absent.
    pub topic_id: [u8; 16],
    pub partitions: Vec<PartitionMetaView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MetadataView {
    /// Top-level error (v13+), else 0.
    pub error_code: i16,
    pub brokers: Vec<BrokerView>,
    pub topics: Vec<TopicMetaView>,
}

/// Metadata v1..=13 (flexible from v9).
pub(crate) fn metadata(body: &Bytes, version: i16) -> R<MetadataView> {
    if version < 1 {
        return Err(format!("Metadata v{version} is not supported"));
    }
    let mut r = Reader::new(body, version >= 9);
    if version >= 3 {
        r.i32("throttle_time_ms")?;
    }
    let brokers = r.array("brokers", |r| {
        let node_id = r.i32("node_id")?;
        let host = r.string("host")?.ok_or("host: null")?;
        let port = r.i32("port")?;
        r.string("rack")?;
        r.tags("broker tags")?;
        Ok(BrokerView {
            node_id,
            host,
            port,
        })
    })?;
    if version >= 2 {
        r.string("cluster_id")?;
    }
    r.i32("controller_id")?;
    let topics = r.array("topics", |r| {
        let error_code = r.i16("topic error_code")?;
        let name = r.string("topic name")?;
        let topic_id = if version >= 10 {
            r.fixed("topic_id")?
        } else {
            [0; 16]
        };
        r.i8("is_internal")?;
        let partitions = r.array("partitions", |r| {
            let error_code = r.i16("partition error_code")?;
            let index = r.i32("partition_index")?;
            let leader_id = r.i32("leader_id")?;
            if version >= 7 {
                r.i32("leader_epoch")?;
            }
            r.skip_array(4, "replica_nodes")?;
            r.skip_array(4, "isr_nodes")?;
            if version >= 5 {
                r.skip_array(4, "offline_replicas")?;
            }
            r.tags("partition tags")?;
            Ok(PartitionMetaView {
                error_code,
                index,
                leader_id,
            })
        })?;
        if version >= 8 {
            r.i32("topic_authorized_operations")?;
        }
        r.tags("topic tags")?;
        Ok(TopicMetaView {
            error_code,
            name,
            topic_id,
            partitions,
        })
    })?;
    if (8..=10).contains(&version) {
        r.i32("cluster_authorized_operations")?;
    }
    let error_code = if version >= 13 {
        r.i16("error_code")?
    } else {
        0
    };
    r.tags("tags")?;
    r.end("Metadata")?;
    Ok(MetadataView {
        error_code,
        brokers,
        topics,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionProduceView {
    pub index: i32,
    pub error_code: i16,
    pub base_offset: i64,
    pub error_message: Option<String>,
    /// (batch index, message) of records the broker rejected.
    pub record_errors: Vec<(i32, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicProduceView {
    /// v3..=12 name the topic…
    pub name: Option<String>,
    /// …v13 gives its id instead.
    pub topic_id: [u8; 16],
    pub partitions: Vec<PartitionProduceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ProduceView {
    pub topics: Vec<TopicProduceView>,
    pub throttle_time_ms: i32,
}

/// Produce v3..=13 (flexible from v9; v13 names topics by id).
pub(crate) fn produce(body: &Bytes, version: i16) -> R<ProduceView> {
    if !(3..=13).contains(&version) {
        return Err(format!("Produce v{version} is not supported"));
    }
    let mut r = Reader::new(body, version >= 9);
    let topics = r.array("responses", |r| {
        let (name, topic_id) = if version >= 13 {
            (None, r.fixed("topic_id")?)
        } else {
            (
                Some(r.string("topic name")?.ok_or("topic name: null")?),
                [0; 16],
            )
        };
        let partitions = r.array("partition_responses", |r| {
            let index = r.i32("index")?;
            let error_code = r.i16("error_code")?;
            let base_offset = r.i64("base_offset")?;
            r.i64("log_append_time_ms")?;
            if version >= 5 {
                r.i64("log_start_offset")?;
            }
            let (record_errors, error_message) = if version >= 8 {
                let errors = r.array("record_errors", |r| {
                    let index = r.i32("batch_index")?;
                    let message = r.string("batch_index_error_message")?;
                    r.tags("record error tags")?;
                    Ok((index, message))
                })?;
                (errors, r.string("error_message")?)
            } else {
                (Vec::new(), None)
            };
            r.tags("partition tags")?;
            Ok(PartitionProduceView {
                index,
                error_code,
                base_offset,
                error_message,
                record_errors,
            })
        })?;
        r.tags("topic tags")?;
        Ok(TopicProduceView {
            name,
            topic_id,
            partitions,
        })
    })?;
    let throttle_time_ms = r.i32("throttle_time_ms")?;
    r.tags("tags")?;
    r.end("Produce")?;
    Ok(ProduceView {
        topics,
        throttle_time_ms,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InitProducerIdView {
    pub error_code: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// InitProducerId v0..=5 (flexible from v2).
pub(crate) fn init_producer_id(body: &Bytes, version: i16) -> R<InitProducerIdView> {
    let mut r = Reader::new(body, version >= 2);
    r.i32("throttle_time_ms")?;
    let view = InitProducerIdView {
        error_code: r.i16("error_code")?,
        producer_id: r.i64("producer_id")?,
        producer_epoch: r.i16("producer_epoch")?,
    };
    r.tags("tags")?;
    r.end("InitProducerId")?;
    Ok(view)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreatedTopicView {
    pub name: String,
    pub error_code: i16,
    pub error_message: Option<String>,
}

/// CreateTopics v4..=7 (flexible from v5): per topic its name, error code and message; the
/// v5+ partition count, replication factor and configs are skipped.
pub(crate) fn create_topics(body: &Bytes, version: i16) -> R<Vec<CreatedTopicView>> {
    let mut r = Reader::new(body, version >= 5);
    r.i32("throttle_time_ms")?;
    let topics = r.array("topics", |r| {
        let name = r.string("topic name")?.unwrap_or_default();
        if version >= 7 {
            r.skip(16, "topic_id")?;
        }
        let error_code = r.i16("error_code")?;
        let error_message = r.string("error_message")?;
        if version >= 5 {
            r.i32("num_partitions")?;
            r.i16("replication_factor")?;
            r.array("configs", |r| {
                r.string("config name")?;
                r.string("config value")?;
                r.i8("read_only")?;
                r.i8("config_source")?;
                r.i8("is_sensitive")?;
                r.tags("config tags")
            })?;
        }
        r.tags("topic tags")?;
        Ok(CreatedTopicView {
            name,
            error_code,
            error_message,
        })
    })?;
    r.tags("tags")?;
    r.end("CreateTopics")?;
    Ok(topics)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaslHandshakeView {
    pub error_code: i16,
    /// The mechanisms the broker enables on this listener.
    pub mechanisms: Vec<String>,
}

/// SaslHandshake v0..=1 (never flexible).
pub(crate) fn sasl_handshake(body: &Bytes, _version: i16) -> R<SaslHandshakeView> {
    let mut r = Reader::new(body, false);
    let error_code = r.i16("error_code")?;
    let mechanisms = r.array("mechanisms", |r| {
        Ok(r.string("mechanism")?.unwrap_or_default())
    })?;
    r.end("SaslHandshake")?;
    Ok(SaslHandshakeView {
        error_code,
        mechanisms,
    })
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SaslAuthenticateView {
    pub error_code: i16,
    pub error_message: Option<String>,
    /// The server's SASL message (a SCRAM challenge); never logged.
    pub auth_bytes: Vec<u8>,
    /// v1+: how long the authentication stays valid (KIP-368), 0 when the broker doesn't say.
    pub session_lifetime_ms: i64,
}

impl std::fmt::Debug for SaslAuthenticateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslAuthenticateView")
            .field("error_code", &self.error_code)
            .field("error_message", &self.error_message)
            .field(
                "auth_bytes",
                &format_args!("<{} bytes>", self.auth_bytes.len()),
            )
            .field("session_lifetime_ms", &self.session_lifetime_ms)
            .finish()
    }
}

/// SaslAuthenticate v0..=2 (flexible from v2).
pub(crate) fn sasl_authenticate(body: &Bytes, version: i16) -> R<SaslAuthenticateView> {
    let mut r = Reader::new(body, version >= 2);
    let error_code = r.i16("error_code")?;
    let error_message = r.string("error_message")?;
    let auth_bytes = r.bytes("auth_bytes")?;
    let session_lifetime_ms = if version >= 1 {
        r.i64("session_lifetime_ms")?
    } else {
        0
    };
    r.tags("tags")?;
    r.end("SaslAuthenticate")?;
    Ok(SaslAuthenticateView {
        error_code,
        error_message,
        auth_bytes,
        session_lifetime_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::api_versions_response::{ApiVersion, SupportedFeatureKey};
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
        TopicProduceResponse,
    };
    use kafka_protocol::messages::{
        ApiVersionsResponse, BrokerId, InitProducerIdResponse, MetadataResponse, ProduceResponse,
        ProducerId, TopicName,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encode<T: Encodable>(message: &T, version: i16) -> Bytes {
        let mut buf = BytesMut::new();
        message.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    /// Every prefix fails cleanly, and so does every single-byte corruption (or it decodes).
    fn never_panics<T>(body: &Bytes, decode: impl Fn(&Bytes) -> R<T>) {
        for cut in 0..body.len() {
            assert!(
                decode(&body.slice(..cut)).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        for i in 0..body.len() {
            for b in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = body.to_vec();
                bad[i] = b;
                let _ = decode(&Bytes::from(bad));
            }
        }
    }

    #[test]
    fn api_versions_every_version() {
        let crate_response = ApiVersionsResponse::default()
            .with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(0)
                    .with_min_version(3)
                    .with_max_version(12),
                ApiVersion::default()
                    .with_api_key(3)
                    .with_min_version(0)
                    .with_max_version(13),
            ])
            .with_throttle_time_ms(5)
            .with_supported_features(vec![SupportedFeatureKey::default()
                .with_name("metadata.version".into())
                .with_min_version(1)
                .with_max_version(20)])
            .with_finalized_features_epoch(3);
        for version in 0..=4 {
            let body = encode(&crate_response, version);
            let view = api_versions(&body, version).unwrap();
            assert_eq!(view.error_code, 0);
            assert_eq!(
                view.ranges,
                [
                    BrokerRange {
                        api_key: 0,
                        min: 3,
                        max: 12
                    },
                    BrokerRange {
                        api_key: 3,
                        min: 0,
                        max: 13
                    }
                ]
            );
            never_panics(&body, |b| api_versions(b, version));
        }
    }

    fn metadata_fixture() -> MetadataResponse {
        MetadataResponse::default()
            .with_throttle_time_ms(1)
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host("h1".into())
                    .with_port(9092),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host("h2".into())
                    .with_port(9093)
                    .with_rack(Some("r".into())),
            ])
            .with_cluster_id(Some("c".into()))
            .with_controller_id(BrokerId(1))
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_topic_id(uuid::Uuid::from_bytes([9; 16]))
                .with_partitions(vec![
                    MetadataResponsePartition::default()
                        .with_partition_index(0)
                        .with_leader_id(BrokerId(2))
                        .with_leader_epoch(4)
                        .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                        .with_isr_nodes(vec![BrokerId(2)])
                        .with_offline_replicas(vec![BrokerId(1)]),
                    MetadataResponsePartition::default()
                        .with_error_code(5)
                        .with_partition_index(1)
                        .with_leader_id(BrokerId(-1)),
                ])
                .with_topic_authorized_operations(-2147483648)])
    }

    #[test]
    fn metadata_every_version() {
        let crate_response = metadata_fixture();
        for version in 1..=13 {
            let body = encode(&crate_response, version);
            let view = metadata(&body, version).unwrap();
            assert_eq!(
                view.brokers,
                [
                    BrokerView {
                        node_id: 1,
                        host: "h1".into(),
                        port: 9092
                    },
                    BrokerView {
                        node_id: 2,
                        host: "h2".into(),
                        port: 9093
                    }
                ],
                "v{version}"
            );
            assert_eq!(view.topics.len(), 1);
            assert_eq!(view.topics[0].name.as_deref(), Some("t"));
            let id = if version >= 10 { [9; 16] } else { [0; 16] };
            assert_eq!(view.topics[0].topic_id, id);
            assert_eq!(
                view.topics[0].partitions,
                [
                    PartitionMetaView {
                        error_code: 0,
                        index: 0,
                        leader_id: 2
                    },
                    PartitionMetaView {
                        error_code: 5,
                        index: 1,
                        leader_id: -1
                    }
                ]
            );
            never_panics(&body, |b| metadata(b, version));
        }
        let v13 = encode(&crate_response.clone().with_error_code(29), 13);
        assert_eq!(metadata(&v13, 13).unwrap().error_code, 29);
    }

    #[test]
    fn produce_every_version() {
        let crate_response = ProduceResponse::default()
            .with_responses(vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_topic_id(uuid::Uuid::from_bytes([7; 16]))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default()
                        .with_index(0)
                        .with_base_offset(42)
                        .with_log_start_offset(0),
                    PartitionProduceResponse::default()
                        .with_index(1)
                        .with_error_code(87)
                        .with_base_offset(-1)
                        .with_record_errors(vec![BatchIndexAndErrorMessage::default()
                            .with_batch_index(3)
                            .with_batch_index_error_message(Some("bad".into()))])
                        .with_error_message(Some("invalid".into()))
                        .with_current_leader(
                            LeaderIdAndEpoch::default()
                                .with_leader_id(BrokerId(2))
                                .with_leader_epoch(7),
                        ),
                ])])
            .with_throttle_time_ms(9)
            .with_node_endpoints(vec![NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host("h2".into())
                .with_port(9093)]);
        for version in 3..=13 {
            let body = encode(&crate_response, version);
            let view = produce(&body, version).unwrap();
            if version >= 13 {
                assert_eq!(
                    (view.topics[0].name.as_deref(), view.topics[0].topic_id),
                    (None, [7; 16])
                );
            } else {
                assert_eq!(
                    (view.topics[0].name.as_deref(), view.topics[0].topic_id),
                    (Some("t"), [0; 16])
                );
            }
            assert_eq!(view.throttle_time_ms, 9);
            let p = &view.topics[0].partitions;
            assert_eq!((p[0].index, p[0].error_code, p[0].base_offset), (0, 0, 42));
            assert_eq!((p[1].index, p[1].error_code), (1, 87));
            if version >= 8 {
                assert_eq!(p[1].record_errors, [(3, Some("bad".to_owned()))]);
                assert_eq!(p[1].error_message.as_deref(), Some("invalid"));
            }
            never_panics(&body, |b| produce(b, version));
        }
        assert!(produce(&encode(&crate_response, 13), 14).is_err());
    }

    #[test]
    fn init_producer_id_every_version() {
        let crate_response = InitProducerIdResponse::default()
            .with_producer_id(ProducerId(77))
            .with_producer_epoch(2);
        for version in 0..=5 {
            let body = encode(&crate_response, version);
            let view = init_producer_id(&body, version).unwrap();
            assert_eq!(
                view,
                InitProducerIdView {
                    error_code: 0,
                    producer_id: 77,
                    producer_epoch: 2
                }
            );
            never_panics(&body, |b| init_producer_id(b, version));
        }
    }

    #[test]
    fn create_topics_every_version() {
        use kafka_protocol::messages::create_topics_response::{
            CreatableTopicConfigs, CreatableTopicResult,
        };
        use kafka_protocol::messages::CreateTopicsResponse;
        for version in 4..=7 {
            let mut result = CreatableTopicResult::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_error_code(36)
                .with_error_message(Some(StrBytes::from_static_str("exists")));
            if version >= 5 {
                result = result
                    .with_num_partitions(3)
                    .with_replication_factor(1)
                    .with_configs(Some(vec![CreatableTopicConfigs::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("1000")))]));
            }
            let body = encode(
                &CreateTopicsResponse::default().with_topics(vec![result]),
                version,
            );
            let topics = create_topics(&body, version).unwrap();
            assert_eq!(
                topics,
                [CreatedTopicView {
                    name: "t".into(),
                    error_code: 36,
                    error_message: Some("exists".into()),
                }],
                "v{version}"
            );
            never_panics(&body, |b| create_topics(b, version));
        }
    }

    #[test]
    fn sasl_every_version() {
        use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};
        let handshake = SaslHandshakeResponse::default()
            .with_error_code(33)
            .with_mechanisms(vec!["PLAIN".into(), "SCRAM-SHA-512".into()]);
        for version in 0..=1 {
            let body = encode(&handshake, version);
            let view = sasl_handshake(&body, version).unwrap();
            assert_eq!(view.error_code, 33);
            assert_eq!(view.mechanisms, ["PLAIN", "SCRAM-SHA-512"]);
            never_panics(&body, |b| sasl_handshake(b, version));
        }
        let authenticate = SaslAuthenticateResponse::default()
            .with_error_code(58)
            .with_error_message(Some("bad".into()))
            .with_auth_bytes(Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096"))
            .with_session_lifetime_ms(3_600_000);
        for version in 0..=2 {
            let body = encode(&authenticate, version);
            let view = sasl_authenticate(&body, version).unwrap();
            assert_eq!(view.error_code, 58);
            assert_eq!(view.error_message.as_deref(), Some("bad"));
            assert_eq!(view.auth_bytes, b"r=abc,s=c2FsdA==,i=4096");
            let lifetime = if version >= 1 { 3_600_000 } else { 0 };
            assert_eq!(view.session_lifetime_ms, lifetime);
            assert!(!format!("{view:?}").contains("r=abc"));
            never_panics(&body, |b| sasl_authenticate(b, version));
        }
    }

    #[test]
    fn hostile_counts_are_refused_without_allocating() {
        // Metadata v1: 2^31-1 brokers announced in an 8-byte body.
        let body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        let err = metadata(&body, 1).unwrap_err();
        assert!(err.contains("2147483647 elements announced"), "{err}");
        // Flexible: a 5-byte varint of u32::MAX.
        let body = Bytes::from_static(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(api_versions(&body, 3)
            .unwrap_err()
            .contains("elements announced"));
        let body = Bytes::from_static(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(api_versions(&body, 3).unwrap_err().contains("varint"));
    }
}
