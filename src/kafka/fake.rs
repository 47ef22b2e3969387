//! An in-memory Kafka cluster for unit tests of the producer: decodes real request frames with the
//! broker-side codecs and answers with real response frames. Never opens a socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, InitProducerIdResponse, MetadataRequest, ProduceRequest,
    ProducerId, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable, Encodable};
use kafka_protocol::records::Record as WireRecord;

use super::batch::decode_batches;
use super::codes::{
    INVALID_RECORD, MESSAGE_TOO_LARGE, NOT_LEADER_OR_FOLLOWER, OUT_OF_ORDER_SEQUENCE_NUMBER,
    UNKNOWN_TOPIC_ID, UNSUPPORTED_VERSION,
};
use super::error::{KafkaError, Phase};
use super::metadata::tests::response as metadata_response;
use super::transport::{Connector, Transport};

/// Everything the fake cluster knows and every knob a test turns.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// (node id, `host:port`).
    pub brokers: Vec<(i32, String)>,
    pub topic: String,
    /// Leader node per partition (index = partition id); -1 for none.
    pub leaders: Vec<i32>,
    /// Metadata requests that still answer UNKNOWN_TOPIC_OR_PARTITION (u32::MAX: forever).
    pub unknown_for: u32,
    /// Highest ApiVersions version the brokers understand (KIP-511 fallback below it).
    pub api_versions_max: i16,
    pub produce_max: i16,
    /// The topic's id in Metadata responses (nil when `None`).
    pub topic_id: Option<[u8; 16]>,
    /// Addresses that refuse connections.
    pub down: HashSet<String>,
    /// Error codes the next Produce for a partition gets instead of an append.
    pub produce_errors: VecDeque<(i32, i16)>,
    /// Produce requests whose response is lost (connection reset) after the append.
    pub lose_produce_responses: u32,
    /// Answer Produce with garbage bytes.
    pub garbage_produce: bool,
    /// Per partition log.
    pub logs: HashMap<i32, Vec<WireRecord>>,
    /// The logs of earlier incarnations of the topic (deleted and created again), oldest first.
    pub deleted: Vec<HashMap<i32, Vec<WireRecord>>>,
    /// (broker address, api key, version) of every request, in order.
    pub requests: Vec<(String, i16, i16)>,
    /// The last batches (up to 5, like Kafka's window) per partition: (producer id, base
    /// sequence, record count, base offset, content fingerprint).
    last_batches: HashMap<i32, VecDeque<SeenBatch>>,
    /// Largest batch (sum of value bytes) a partition takes; beyond it MESSAGE_TOO_LARGE.
    pub max_batch_bytes: Option<usize>,
    /// Violations of the producer's invariants the broker can see: a sequence number reused
    /// under the same producer id for different data (which Kafka would ack as a duplicate).
    pub violations: Vec<String>,
    /// Answer the next Produce with a response carrying the wrong correlation id.
    pub wrong_correlation: u32,
    /// The producer's process dies after this many more requests reach the cluster: from
    /// then on (`crashed`) nothing it sends arrives and nothing comes back, as after `kill -9`.
    pub crash_after: Option<u32>,
    pub crashed: bool,
    /// SASL required on every connection (PLAIN only; SCRAM is checked against real brokers).
    pub sasl: Option<FakeSasl>,
}

#[derive(Debug, Clone)]
pub(crate) struct FakeSasl {
    pub mechanisms: Vec<&'static str>,
    pub username: String,
    pub password: String,
    /// Sent in SaslAuthenticate v1+; after it, requests other than SASL close the connection.
    pub session_lifetime: Duration,
}

impl State {
    /// Kafka's idempotent append: a batch equal (producer id, base sequence) to one of the
    /// last five is a duplicate and gets its original offset; one that doesn't continue the
    /// sequence is OUT_OF_ORDER_SEQUENCE_NUMBER.
    fn append(&mut self, p: i32, records: Vec<WireRecord>) -> (i16, i64) {
        let first = &records[0];
        let (pid, seq) = (first.producer_id, first.sequence);
        let fingerprint = fingerprint(&records);
        let log_len = self.logs.get(&p).map_or(0, Vec::len) as i64;
        let window = self.last_batches.entry(p).or_default();
        if pid >= 0 {
            if let Some(&(_, _, _, offset, seen)) = window.iter().find(|b| b.0 == pid && b.1 == seq)
            {
                if seen != fingerprint {
                    self.violations.push(format!(
                        "partition {p}: producer {pid} reused sequence {seq} for different data \
                         (acked as a duplicate of what is at offset {offset})"
                    ));
                }
                return (0, offset);
            }
            if let Some(&(_, last_seq, n, _, _)) = window.iter().rev().find(|b| b.0 == pid) {
                if seq != last_seq.wrapping_add(n as i32) {
                    return (OUT_OF_ORDER_SEQUENCE_NUMBER, -1);
                }
            } else if seq != 0 {
                // A producer id the partition never saw must start at 0.
                return (OUT_OF_ORDER_SEQUENCE_NUMBER, -1);
            }
        }
        window.push_back((pid, seq, records.len(), log_len, fingerprint));
        if window.len() > 5 {
            window.pop_front();
        }
        self.logs.entry(p).or_default().extend(records);
        (0, log_len)
    }

    /// The topic is deleted and created again with the same partitions: its logs and every
    /// producer's state go, and it gets a new topic id (when it has one).
    pub(crate) fn recreate_topic(&mut self) {
        self.deleted.push(std::mem::take(&mut self.logs));
        self.last_batches.clear();
        if let Some(id) = &mut self.topic_id {
            id[0] = id[0].wrapping_add(1);
        }
    }

    pub(crate) fn count(&self, api: ApiKey) -> usize {
        self.requests.iter().filter(|r| r.1 == api as i16).count()
    }

    pub(crate) fn log_values(&self, partition: i32) -> Vec<String> {
        self.logs
            .get(&partition)
            .into_iter()
            .flatten()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }
}

/// (producer id, base sequence, record count, base offset, fingerprint) of an appended batch.
type SeenBatch = (i64, i32, usize, i64, u64);

/// A value ending so is refused as INVALID_RECORD, every time (a record a broker-side
/// validation rejects).
pub(crate) const INVALID_MARK: &[u8] = b"!invalid";

/// The data of a batch (keys and values), to tell a resend from different data.
fn fingerprint(records: &[WireRecord]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for r in records {
        for part in [r.key.as_deref(), r.value.as_deref()] {
            for b in part.unwrap_or_default().iter().chain(&[0xff]) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// A cluster of `n_brokers` (`b1:9092`, …) and one topic with the given partition leaders.
#[derive(Clone)]
pub(crate) struct Cluster(Arc<Mutex<State>>);

impl Cluster {
    pub(crate) fn new(n_brokers: i32, topic: &str, leaders: &[i32]) -> Cluster {
        Cluster(Arc::new(Mutex::new(State {
            brokers: (1..=n_brokers)
                .map(|id| (id, format!("b{id}:9092")))
                .collect(),
            topic: topic.to_owned(),
            leaders: leaders.to_vec(),
            api_versions_max: 4,
            produce_max: 12,
            ..State::default()
        })))
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

impl Connector for Cluster {
    fn connect(
        &mut self,
        addr: &str,
        _timeout: Duration,
    ) -> Result<Box<dyn Transport>, KafkaError> {
        let state = self.0.lock().unwrap();
        let node = state.brokers.iter().find(|b| b.1 == addr).map(|b| b.0);
        match node {
            Some(node) if !state.down.contains(addr) && !state.crashed => Ok(Box::new(FakeConn {
                addr: addr.to_owned(),
                node,
                cluster: self.0.clone(),
                outbox: VecDeque::new(),
                reset: false,
                session_until: None,
            })),
            _ => Err(KafkaError::Io {
                broker: addr.to_owned(),
                phase: Phase::Connect,
                detail: "refused".to_owned(),
            }),
        }
    }
}

struct FakeConn {
    addr: String,
    node: i32,
    cluster: Arc<Mutex<State>>,
    outbox: VecDeque<Bytes>,
    reset: bool,
    /// With SASL: authenticated until then.
    session_until: Option<Instant>,
}

fn respond<R: Encodable>(
    header: &RequestHeader,
    response_header_version: i16,
    body: &R,
    version: i16,
) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(header.correlation_id)
        .encode(&mut buf, response_header_version)
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

impl FakeConn {
    /// Whether this request can't be sent: the connection was reset, or the producer's
    /// process is (now) dead.
    fn dead(&mut self) -> bool {
        let mut state = self.cluster.lock().unwrap();
        match state.crash_after {
            Some(0) => state.crashed = true,
            Some(n) => state.crash_after = Some(n - 1),
            None => {}
        }
        self.reset || state.crashed
    }

    fn handle(&mut self, mut frame: Bytes) -> Option<Bytes> {
        let len = frame.get_i32() as usize;
        assert_eq!(len, frame.len(), "size prefix");
        let header = decode_request_header_from_buffer(&mut frame).unwrap();
        let (key, version) = (header.request_api_key, header.request_api_version);
        let api = ApiKey::try_from(key).unwrap();
        let mut state = self.cluster.lock().unwrap();
        state.requests.push((self.addr.clone(), key, version));
        let rhv = api.response_header_version(version);
        if let Some(sasl) = state.sasl.clone() {
            let sasl_api = matches!(
                api,
                ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
            );
            if !sasl_api && self.session_until.is_none_or(|t| Instant::now() >= t) {
                // What Kafka does with a request before (or after the end of) authentication.
                self.reset = true;
                return None;
            }
            match api {
                ApiKey::SaslHandshake => {
                    let request = SaslHandshakeRequest::decode(&mut frame, version).unwrap();
                    let code = if sasl.mechanisms.contains(&request.mechanism.as_str()) {
                        0
                    } else {
                        33
                    };
                    let body = SaslHandshakeResponse::default()
                        .with_error_code(code)
                        .with_mechanisms(sasl.mechanisms.iter().map(|m| (*m).into()).collect());
                    return Some(respond(&header, rhv, &body, version));
                }
                ApiKey::SaslAuthenticate => {
                    let request = SaslAuthenticateRequest::decode(&mut frame, version).unwrap();
                    let expected = format!("\0{}\0{}", sasl.username, sasl.password);
                    let body = if request.auth_bytes == expected.as_bytes() {
                        self.session_until = Some(Instant::now() + sasl.session_lifetime);
                        SaslAuthenticateResponse::default()
                            .with_session_lifetime_ms(sasl.session_lifetime.as_millis() as i64)
                    } else {
                        SaslAuthenticateResponse::default()
                            .with_error_code(58)
                            .with_error_message(Some("Invalid username or password".into()))
                    };
                    return Some(respond(&header, rhv, &body, version));
                }
                _ => {}
            }
        }
        match api {
            ApiKey::ApiVersions => {
                let ranges = |s: &State| {
                    [
                        (ApiKey::Produce, 3, s.produce_max),
                        (ApiKey::Metadata, 0, 12),
                        (ApiKey::ApiVersions, 0, s.api_versions_max),
                        (ApiKey::InitProducerId, 0, 5),
                        (ApiKey::SaslHandshake, 0, 1),
                        (ApiKey::SaslAuthenticate, 0, 2),
                    ]
                    .iter()
                    .map(|&(k, min, max)| {
                        ApiVersion::default()
                            .with_api_key(k as i16)
                            .with_min_version(min)
                            .with_max_version(max)
                    })
                    .collect::<Vec<_>>()
                };
                if version > state.api_versions_max {
                    let body = ApiVersionsResponse::default()
                        .with_error_code(UNSUPPORTED_VERSION)
                        .with_api_keys(ranges(&state));
                    return Some(respond(&header, 0, &body, 0));
                }
                let body = ApiVersionsResponse::default().with_api_keys(ranges(&state));
                Some(respond(&header, rhv, &body, version))
            }
            ApiKey::Metadata => {
                let request = MetadataRequest::decode(&mut frame, version).unwrap();
                assert!(frame.is_empty());
                let asked = request.topics.unwrap()[0]
                    .name
                    .clone()
                    .unwrap()
                    .0
                    .to_string();
                let brokers: Vec<(i32, String, i32)> = state
                    .brokers
                    .iter()
                    .map(|(id, addr)| {
                        let (host, port) = addr.rsplit_once(':').unwrap();
                        (*id, host.to_owned(), port.parse().unwrap())
                    })
                    .collect();
                let brokers: Vec<(i32, &str, i32)> = brokers
                    .iter()
                    .map(|(i, h, p)| (*i, h.as_str(), *p))
                    .collect();
                let body = if asked != state.topic || state.unknown_for > 0 {
                    state.unknown_for = state.unknown_for.saturating_sub(1);
                    metadata_response(&brokers, &asked, 3, &[])
                } else {
                    let parts: Vec<(i32, i32)> = state
                        .leaders
                        .iter()
                        .enumerate()
                        .map(|(p, l)| (p as i32, *l))
                        .collect();
                    let mut body = metadata_response(&brokers, &asked, 0, &parts);
                    if let Some(id) = state.topic_id {
                        body.topics[0].topic_id = uuid::Uuid::from_bytes(id);
                    }
                    body
                };
                Some(respond(&header, rhv, &body, version))
            }
            ApiKey::InitProducerId => {
                let body = InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(999 + state.count(ApiKey::InitProducerId) as i64))
                    .with_producer_epoch(0);
                Some(respond(&header, rhv, &body, version))
            }
            ApiKey::Produce => {
                let request = ProduceRequest::decode(&mut frame, version).unwrap();
                assert!(frame.is_empty());
                let topic = &request.topic_data[0];
                let mut partitions = Vec::new();
                for pd in &topic.partition_data {
                    let p = pd.index;
                    // Produce v13 names the topic by id: an old id is a deleted topic.
                    let stale_id = version >= 13
                        && state
                            .topic_id
                            .is_some_and(|id| topic.topic_id != uuid::Uuid::from_bytes(id));
                    let (code, base_offset) = if stale_id {
                        (UNKNOWN_TOPIC_ID, -1)
                    } else if let Some(pos) = state.produce_errors.iter().position(|e| e.0 == p) {
                        (state.produce_errors.remove(pos).map_or(0, |e| e.1), -1)
                    } else if state.leaders.get(p as usize) != Some(&self.node) {
                        (NOT_LEADER_OR_FOLLOWER, -1)
                    } else {
                        let records = decode_batches(pd.records.clone().unwrap());
                        let value_bytes: usize = records
                            .iter()
                            .map(|r| r.value.as_ref().map_or(0, |v| v.len()))
                            .sum();
                        if state.max_batch_bytes.is_some_and(|max| value_bytes > max) {
                            (MESSAGE_TOO_LARGE, -1)
                        } else if records.iter().any(|r| {
                            r.value
                                .as_deref()
                                .is_some_and(|v| v.ends_with(INVALID_MARK))
                        }) {
                            (INVALID_RECORD, -1)
                        } else {
                            state.append(p, records)
                        }
                    };
                    partitions.push(
                        PartitionProduceResponse::default()
                            .with_index(p)
                            .with_error_code(code)
                            .with_base_offset(base_offset),
                    );
                }
                if request.acks == 0 {
                    return None;
                }
                if state.lose_produce_responses > 0 {
                    state.lose_produce_responses -= 1;
                    self.reset = true;
                    return None;
                }
                if state.wrong_correlation > 0 {
                    state.wrong_correlation -= 1;
                    let body = kafka_protocol::messages::ProduceResponse::default();
                    let mut wrong = header.clone();
                    wrong.correlation_id = header.correlation_id.wrapping_add(7);
                    return Some(respond(&wrong, rhv, &body, version));
                }
                if state.garbage_produce {
                    let mut buf = BytesMut::new();
                    buf.put_i32(9);
                    buf.put_i32(header.correlation_id);
                    buf.put_slice(&[0xff, 0xff, 0xff, 0x7f, 1]);
                    return Some(buf.freeze());
                }
                let body =
                    kafka_protocol::messages::ProduceResponse::default().with_responses(vec![
                        TopicProduceResponse::default()
                            .with_name(topic.name.clone())
                            .with_topic_id(topic.topic_id)
                            .with_partition_responses(partitions),
                    ]);
                Some(respond(&header, rhv, &body, version))
            }
            other => panic!("fake broker got unexpected {other:?}"),
        }
    }
}

impl Transport for FakeConn {
    fn send(&mut self, frame: &super::wire::Frame, _timeout: Duration) -> Result<(), KafkaError> {
        if self.dead() {
            return Err(KafkaError::Io {
                broker: self.addr.clone(),
                phase: Phase::Write,
                detail: "reset".to_owned(),
            });
        }
        if let Some(response) = self.handle(frame.to_bytes()) {
            self.outbox.push_back(response);
        }
        Ok(())
    }

    fn recv(&mut self, _timeout: Duration) -> Result<Bytes, KafkaError> {
        if self.reset || self.cluster.lock().unwrap().crashed {
            return Err(KafkaError::Io {
                broker: self.addr.clone(),
                phase: Phase::Read,
                detail: "connection reset by peer".to_owned(),
            });
        }
        let mut frame = self.outbox.pop_front().ok_or_else(|| KafkaError::Timeout {
            broker: self.addr.clone(),
            phase: Phase::Read,
        })?;
        frame.advance(4);
        Ok(frame)
    }
}
