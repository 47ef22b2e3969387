//! Metadata cache: broker node id → `host:port`, topic → partitions → leader, with age. Builds
//! Metadata requests and ingests responses; never opens connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::error::KafkaError;
use super::response::MetadataView;

// LEADER_NOT_AVAILABLE is the usual answer while an auto-created topic gets its leaders.
use super::codes::{LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionInfo {
    pub id: i32,
    /// Leader node id, when the partition has one and the broker list names it.
    pub leader: Option<i32>,
}

#[derive(Debug, Clone)]
pub(crate) struct TopicInfo {
    /// The topic's id (Metadata v10+), which Produce v13 addresses it by.
    pub topic_id: Option<[u8; 16]>,
    /// Sorted by partition id.
    pub partitions: Vec<PartitionInfo>,
    fetched_at: Instant,
}

impl TopicInfo {
    /// Partition ids that have a leader right now.
    pub(crate) fn available(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|p| p.leader.is_some())
            .map(|p| p.id)
            .collect()
    }

    /// A topic whose partition `i` is led by `leaders[i]` (`None`: no leader), for tests.
    #[cfg(test)]
    pub(crate) fn with_leaders(leaders: &[Option<i32>]) -> TopicInfo {
        TopicInfo {
            topic_id: None,
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(id, &leader)| PartitionInfo {
                    id: id as i32,
                    leader,
                })
                .collect(),
            fetched_at: Instant::now(),
        }
    }

    pub(crate) fn leader(&self, partition: i32) -> Option<i32> {
        self.partitions
            .iter()
            .find(|p| p.id == partition)
            .and_then(|p| p.leader)
    }
}

/// What a metadata response said about the topic we asked for.
#[derive(Debug)]
pub(crate) enum TopicStatus {
    /// Partitions are known (some may still lack a leader).
    Known,
    /// The topic is missing or still being created: ask again after a backoff.
    NotReady(KafkaError),
}

#[derive(Debug, Default)]
pub(crate) struct Metadata {
    brokers: HashMap<i32, String>,
    topics: HashMap<String, TopicInfo>,
}

impl Metadata {
    pub(crate) fn request(topic: &str) -> MetadataRequest {
        MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_owned())),
            ))]))
            // Like the Java producer: a broker with auto.create.topics.enable creates it.
            .with_allow_auto_topic_creation(true)
    }

    pub(crate) fn broker_addr(&self, node_id: i32) -> Option<&str> {
        self.brokers.get(&node_id).map(String::as_str)
    }

    /// Every broker address we know, for metadata requests when bootstrap brokers fail.
    pub(crate) fn broker_addrs(&self) -> impl Iterator<Item = &str> {
        self.brokers.values().map(String::as_str)
    }

    /// The cached topic, if younger than `max_age`.
    pub(crate) fn topic(&self, topic: &str, now: Instant, max_age: Duration) -> Option<&TopicInfo> {
        self.topics
            .get(topic)
            .filter(|t| now.saturating_duration_since(t.fetched_at) < max_age)
    }

    pub(crate) fn invalidate(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Takes in a Metadata response from `broker` for `topic`.
    pub(crate) fn ingest(
        &mut self,
        broker: &str,
        topic: &str,
        response: MetadataView,
        now: Instant,
    ) -> Result<TopicStatus, KafkaError> {
        if response.error_code != 0 {
            return Err(KafkaError::broker_code(
                broker,
                topic,
                None,
                response.error_code,
                None,
            ));
        }
        let mut brokers = HashMap::with_capacity(response.brokers.len());
        for b in &response.brokers {
            let port = u16::try_from(b.port).map_err(|_| KafkaError::Malformed {
                broker: broker.to_owned(),
                api: "Metadata",
                detail: format!("node {} has port {}", b.node_id, b.port),
            })?;
            brokers.insert(b.node_id, format_addr(&b.host, port));
        }
        if !brokers.is_empty() {
            self.brokers = brokers;
        }
        let Some(t) = response
            .topics
            .iter()
            .find(|t| t.name.as_deref() == Some(topic))
        else {
            return Err(KafkaError::Malformed {
                broker: broker.to_owned(),
                api: "Metadata",
                detail: format!("response does not mention topic {topic}"),
            });
        };
        match t.error_code {
            0 => {}
            UNKNOWN_TOPIC_OR_PARTITION | LEADER_NOT_AVAILABLE => {
                self.topics.remove(topic);
                return Ok(TopicStatus::NotReady(KafkaError::broker_code(
                    broker,
                    topic,
                    None,
                    t.error_code,
                    None,
                )));
            }
            code => return Err(KafkaError::broker_code(broker, topic, None, code, None)),
        }
        if t.partitions.is_empty() {
            self.topics.remove(topic);
            return Ok(TopicStatus::NotReady(KafkaError::broker_code(
                broker,
                topic,
                None,
                LEADER_NOT_AVAILABLE,
                None,
            )));
        }
        let mut partitions: Vec<PartitionInfo> = t
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                id: p.index,
                // REPLICA_NOT_AVAILABLE and friends still come with a usable leader; only the
                // leader id matters, and only if the broker list can resolve it.
                leader: Some(p.leader_id).filter(|id| *id >= 0 && self.brokers.contains_key(id)),
            })
            .collect();
        partitions.sort_by_key(|p| p.id);
        log::debug!(
            "kafka {broker}: metadata for {topic}: {} partitions, {} with leader, {} brokers",
            partitions.len(),
            partitions.iter().filter(|p| p.leader.is_some()).count(),
            self.brokers.len()
        );
        self.topics.insert(
            topic.to_owned(),
            TopicInfo {
                topic_id: Some(t.topic_id).filter(|id| *id != [0; 16]),
                partitions,
                fetched_at: now,
            },
        );
        Ok(TopicStatus::Known)
    }
}

/// `host:port`, bracketing IPv6 literals so the result parses as a socket address.
fn format_addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, MetadataResponse};
    use kafka_protocol::protocol::Encodable;

    /// A metadata response: brokers (id, host, port) and one topic's (partition, leader) pairs.
    pub(crate) fn response(
        brokers: &[(i32, &str, i32)],
        topic: &str,
        topic_error: i16,
        partitions: &[(i32, i32)],
    ) -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(
                brokers
                    .iter()
                    .map(|&(id, host, port)| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(id))
                            .with_host(StrBytes::from_string(host.to_owned()))
                            .with_port(port)
                    })
                    .collect(),
            )
            .with_topics(vec![MetadataResponseTopic::default()
                .with_error_code(topic_error)
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_owned()))))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(id, leader)| {
                            MetadataResponsePartition::default()
                                .with_partition_index(id)
                                .with_leader_id(BrokerId(leader))
                                .with_error_code(if leader < 0 { LEADER_NOT_AVAILABLE } else { 0 })
                        })
                        .collect(),
                )])
    }

    /// The bounded decoder's view of a crate-encoded response.
    pub(crate) fn view(response: MetadataResponse) -> MetadataView {
        let mut buf = bytes::BytesMut::new();
        response.encode(&mut buf, 12).unwrap();
        crate::kafka::response::metadata(&buf.freeze(), 12).unwrap()
    }

    #[test]
    fn ingest_maps_leaders_to_addresses() {
        let mut md = Metadata::default();
        let now = Instant::now();
        let resp = response(
            &[(1, "a", 9092), (2, "::1", 9093)],
            "t",
            0,
            &[(1, 2), (0, 1), (2, -1), (3, 7)],
        );
        assert!(matches!(
            md.ingest("b:1", "t", view(resp), now).unwrap(),
            TopicStatus::Known
        ));
        let t = md.topic("t", now, Duration::from_secs(1)).unwrap();
        assert_eq!(
            t.partitions.iter().map(|p| p.id).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(t.available(), [0, 1]);
        assert_eq!(t.leader(1), Some(2));
        assert_eq!(t.leader(3), None, "leader 7 is not in the broker list");
        assert_eq!(md.broker_addr(1), Some("a:9092"));
        assert_eq!(md.broker_addr(2), Some("[::1]:9093"));
        assert!(
            md.topic("t", now + Duration::from_secs(2), Duration::from_secs(1))
                .is_none(),
            "stale"
        );
    }

    #[test]
    fn ingest_classifies_topic_errors() {
        let mut md = Metadata::default();
        let now = Instant::now();
        let status = md
            .ingest("b:1", "t", view(response(&[(1, "a", 1)], "t", 3, &[])), now)
            .unwrap();
        assert!(matches!(
            status,
            TopicStatus::NotReady(KafkaError::Broker { code: 3, .. })
        ));
        let status = md
            .ingest("b:1", "t", view(response(&[(1, "a", 1)], "t", 0, &[])), now)
            .unwrap();
        assert!(matches!(status, TopicStatus::NotReady(_)));
        let err = md
            .ingest(
                "b:1",
                "t",
                view(response(&[(1, "a", 1)], "t", 29, &[])),
                now,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("TOPIC_AUTHORIZATION_FAILED"),
            "{err}"
        );
        assert!(!err.is_retriable());
        let err = md
            .ingest(
                "b:1",
                "t",
                view(response(&[(1, "a", 1)], "other", 0, &[(0, 1)])),
                now,
            )
            .unwrap_err();
        assert!(matches!(err, KafkaError::Malformed { .. }));
        let err = md
            .ingest(
                "b:1",
                "t",
                view(response(&[(1, "a", 70000)], "t", 0, &[(0, 1)])),
                now,
            )
            .unwrap_err();
        assert!(err.to_string().contains("port 70000"), "{err}");
    }
}
