//! The producer facade: one blocking `produce` call moves bytes between the sans-IO core
//! (versions, metadata, partitioner, batch, produce) and the transport, with retries, backoff and
//! reconnects. Owns the connections; never encodes or parses protocol bytes itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, InitProducerIdRequest, ProducerId, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::attempt::{Call, Plan};
use super::batch::{encode_batch, BatchRecord};
use super::codes::{NOT_CONTROLLER, TOPIC_ALREADY_EXISTS};
use super::config::{Acks, ProducerConfig, Sasl};
use super::error::KafkaError;
use super::idempotence::Idempotence;
use super::metadata::{Metadata, TopicStatus};
use super::produce::{self, Outcome, PartitionBatch};
use super::response;
use super::sasl;
use super::transport::{Connector, TcpConnector, TlsConnector, Transport};
use super::versions::{Handshake, HandshakeStep, Versions, INIT_PRODUCER_ID};
use super::wire;

/// A topic to create: -1 partitions or replication factor means the broker's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

/// What `create_topic` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicCreation {
    Created,
    AlreadyExists,
}

/// One record to produce. The timestamp is the record's creation time in ms since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub timestamp_ms: i64,
}

/// Where a record was written. `offset` is -1 with `Acks::None` (the broker does not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// An open, negotiated (and, with SASL, authenticated) connection.
struct Conn {
    transport: Box<dyn Transport>,
    encoder: wire::RequestEncoder,
    versions: Versions,
    /// With SASL, when the broker's session on this connection ends (KIP-368).
    session: Option<Session>,
}

/// An authenticated session with a lifetime: re-authenticate from `reauth_at`, reconnect from
/// `expires_at` (the broker closes an expired connection on its next request).
#[derive(Debug, Clone, Copy)]
struct Session {
    reauth_at: Instant,
    expires_at: Instant,
}

impl Session {
    /// Re-authenticate after 85 % of the lifetime, like Kafka's Java client (85-95 %).
    fn starting(now: Instant, lifetime: Duration) -> Session {
        Session {
            reauth_at: now + lifetime.mul_f64(0.85),
            expires_at: now + lifetime,
        }
    }
}

/// Idle connections kept per broker between calls.
const IDLE_PER_BROKER: usize = 4;

/// Idle, negotiated connections shared by the producers of one cluster (same addresses,
/// client id, TLS and SASL identity). A producer takes a connection for one call and gives it
/// back only when the call ended with nothing unread on it, so a connection is never used by
/// two calls at once and never carries someone else's pending response. Connections grow with
/// the calls in progress, not with the number of producers; at most `IDLE_PER_BROKER` stay.
#[derive(Clone, Default)]
pub struct ConnPool(std::sync::Arc<std::sync::Mutex<HashMap<String, Vec<Conn>>>>);

impl ConnPool {
    fn take(&self, addr: &str) -> Option<Conn> {
        self.lock().get_mut(addr).and_then(Vec::pop)
    }

    fn give(&self, addr: String, conn: Conn) {
        let mut idle = self.lock();
        let list = idle.entry(addr).or_default();
        if list.len() < IDLE_PER_BROKER {
            list.push(conn);
        }
    }

    /// Idle connections right now, over all brokers.
    pub fn idle(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Conn>>> {
        // The map holds plain connections; a panicked holder leaves it usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A blocking Kafka producer over our own protocol client.
pub struct Producer {
    config: ProducerConfig,
    connector: Box<dyn Connector>,
    /// Connections taken for the call in progress.
    conns: HashMap<String, Conn>,
    pool: ConnPool,
    metadata: Metadata,
    idempotence: Option<Idempotence>,
    /// Number of `produce` calls so far; rotates the keyless partition.
    calls: u64,
    rng: XorShift,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.config)
            .field("connections", &self.conns.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Saves the producer's idempotence state before a batch is first sent: the bytes of
/// `restore_identity`, and which records of the call are done so far (acknowledged or
/// refused). Given for one
/// call; a restarted process that restores the last state saved resends what was in flight
/// under the same identity, and the broker drops what it already has.
pub type Journal<'a> = &'a mut dyn FnMut(&[u8], &[bool]);

/// What one `produce_each` call did, record by record.
#[derive(Debug)]
pub struct Produced {
    /// Where each record landed; `None`: not acknowledged.
    pub landed: Vec<Option<Delivery>>,
    /// Records the broker refused for what they are (never appended, not worth resending).
    pub refused: Vec<bool>,
    /// Why they were refused (the first refusal).
    pub refusal: Option<KafkaError>,
    /// Why the call ended before every record landed.
    pub error: Option<KafkaError>,
}

/// What `restore_identity` took over from a previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub batches_in_doubt: usize,
    pub records_in_doubt: usize,
    /// How many of the pending records, from the oldest, must go first and exactly as they
    /// are (they reach the last record in doubt).
    pub resend_first: usize,
    /// Per pending record: it was in a batch acknowledged before the stop (the saved state
    /// did not know yet) — in Kafka, not to be sent again.
    pub landed: Vec<bool>,
}

/// A request written to a broker whose response is still to be read.
struct InFlight {
    addr: String,
    topic_id: Option<[u8; 16]>,
    correlation_id: i32,
    version: i16,
    batches: Vec<PartitionBatch>,
}

impl Producer {
    /// Creates a producer. Does no I/O: connections open on the first `produce`.
    pub fn new(config: ProducerConfig) -> Producer {
        let connector: Box<dyn Connector> = match &config.tls {
            Some(tls) => Box::new(TlsConnector(tls.clone())),
            None => Box::new(TcpConnector),
        };
        Producer::with_connector(config, connector)
    }

    /// Shares `pool`'s connections with the other producers of the same cluster.
    pub fn with_pool(mut self, pool: ConnPool) -> Producer {
        self.pool = pool;
        self
    }

    /// Ends a call: its connections go back to the pool when nothing is left unread on them
    /// (the call succeeded), and are closed otherwise.
    fn release_conns(&mut self, clean: bool) {
        for (addr, conn) in self.conns.drain() {
            if clean {
                self.pool.give(addr, conn);
            }
        }
    }

    pub(crate) fn with_connector(
        config: ProducerConfig,
        connector: Box<dyn Connector>,
    ) -> Producer {
        Producer {
            config,
            connector,
            conns: HashMap::new(),
            pool: ConnPool::default(),
            metadata: Metadata::default(),
            idempotence: None,
            calls: 0,
            rng: XorShift::seeded(),
        }
    }

    /// Sends all records to `topic` (grouped by partition, one request per leader), retrying
    /// retriable errors with exponential backoff and jitter until `deadline`; returns one
    /// [`Delivery`] per record, in input order.
    ///
    /// Keyed records go to `murmur2(key) % partitions` like the Java client; keyless records of
    /// one call share one partition, rotating after each successful call.
    ///
    /// After a retriable error, calling again with the same records (same order) is
    /// exactly-once with idempotence on: producer id, partition and sequences are reused.
    pub fn produce(
        &mut self,
        topic: &str,
        records: &[Record<'_>],
        deadline: Instant,
    ) -> Result<Vec<Delivery>, KafkaError> {
        let (landed, error) = self.produce_partial(topic, records, deadline);
        match error {
            Some(e) => Err(e),
            None => Ok(landed.into_iter().flatten().collect()),
        }
    }

    /// Like [`Producer::produce`], but also says which records landed when it fails: keyed
    /// records spread over partitions, and some partitions may succeed while others fail.
    /// Resending exactly the undelivered records (same order) is exactly-once with
    /// idempotence on, as their partitions' sequence numbers were not consumed.
    pub fn produce_partial(
        &mut self,
        topic: &str,
        records: &[Record<'_>],
        deadline: Instant,
    ) -> (Vec<Option<Delivery>>, Option<KafkaError>) {
        let produced = self.produce_each(topic, records, deadline, None);
        (produced.landed, produced.error)
    }

    /// Like [`Producer::produce_partial`], and also which records the broker refused for what
    /// they are (too large, invalid): never appended, never worth resending. A record neither
    /// landed nor refused has an unknown fate: resend it, in the same order, to have it
    /// deduplicated. With a `journal`, the idempotence state is handed to it before any
    /// batch is first sent (see [`Journal`]).
    pub fn produce_each(
        &mut self,
        topic: &str,
        records: &[Record<'_>],
        deadline: Instant,
        journal: Option<Journal<'_>>,
    ) -> Produced {
        let mut call = Call::new(topic, records, self.config.unknown_topic_retries);
        let error = self.produce_checked(&mut call, deadline, journal).err();
        self.release_conns(error.is_none());
        let landed = call
            .partition_of
            .iter()
            .zip(&call.offsets)
            .map(|(p, o)| match (p, o) {
                (Some(partition), Some(offset)) => Some(Delivery {
                    partition: *partition,
                    offset: *offset,
                }),
                _ => None,
            })
            .collect();
        Produced {
            landed,
            refused: call.refused,
            refusal: call.refusal,
            error,
        }
    }

    fn produce_checked(
        &mut self,
        call: &mut Call<'_, '_>,
        deadline: Instant,
        journal: Option<Journal<'_>>,
    ) -> Result<(), KafkaError> {
        if call.is_empty() {
            return Ok(());
        }
        if self.config.bootstrap.is_empty() {
            return Err(KafkaError::Config {
                setting: "bootstrap",
                reason: "no broker address".to_owned(),
            });
        }
        if self.config.idempotence && self.config.acks != Acks::All {
            return Err(KafkaError::Config {
                setting: "acks",
                reason: "idempotence needs acks=all".to_owned(),
            });
        }
        let result = self.produce_inner(call, deadline, journal);
        // The keyless partition moves on only after a success: a caller that resends the same
        // records after a failure reaches the same partition with the same producer id and
        // sequence numbers, so the broker drops the copy it already has. On failure the
        // producer id stays too: a batch whose fate is unknown is resent as itself, and any
        // other data at its sequence takes a new id first (`Idempotence::unsettled`).
        if result.is_ok() {
            self.calls = self.calls.wrapping_add(1);
        }
        result
    }

    /// Runs `call` (the policy, `attempt::Call`) against the brokers: metadata, producer id,
    /// encoding, the journal, writing requests and reading every answer. Only moves bytes and
    /// sleeps; every decision is the call's.
    fn produce_inner(
        &mut self,
        call: &mut Call<'_, '_>,
        deadline: Instant,
        mut journal: Option<Journal<'_>>,
    ) -> Result<(), KafkaError> {
        let topic = call.topic();
        loop {
            if let Some(retry) = call.backoff_due() {
                self.backoff(retry, deadline);
            }
            if let Some(end) = call.verdict(Instant::now() >= deadline, self.config.max_attempts) {
                return end;
            }
            // 1. Metadata and producer id.
            if call.take_refresh() {
                self.metadata.invalidate(topic);
            }
            let max_age = self.config.metadata_max_age;
            if self
                .metadata
                .topic(topic, Instant::now(), max_age)
                .is_none()
            {
                match self.refresh_metadata(topic, deadline) {
                    Ok(TopicStatus::Known) => {}
                    Ok(TopicStatus::NotReady(e)) => {
                        call.topic_not_ready(e)?;
                        continue;
                    }
                    Err(e) => {
                        call.metadata_failed(e)?;
                        continue;
                    }
                }
            }
            if self.config.idempotence && self.idempotence.is_none() {
                if let Err(e) = self.init_producer_id(deadline) {
                    call.identity_failed(e)?;
                    continue;
                }
            }
            let Some(info) = self.metadata.topic(topic, Instant::now(), max_age).cloned() else {
                continue;
            };

            // 2. What goes where this round.
            let by_leader = match call.plan(&info, self.idempotence.as_ref(), self.calls) {
                Plan::Send(by_leader) => by_leader,
                Plan::NewIdentity(why) => {
                    self.drop_identity(topic, &why);
                    continue;
                }
            };

            // 3. One request per leader, encoded, noted as of unknown fate (and saved, with a
            // journal, when new) before any is written.
            let mut requests: Vec<(String, Vec<PartitionBatch>)> = Vec::new();
            for (leader, partitions) in by_leader {
                let Some(addr) = self.metadata.broker_addr(leader).map(str::to_owned) else {
                    call.leader_unknown();
                    continue;
                };
                let mut batches = Vec::with_capacity(partitions.len());
                for p in partitions {
                    let identity = call.identity(self.idempotence.as_ref(), p);
                    let records = call.records();
                    let batch_records: Vec<BatchRecord> = call
                        .records_of(p)
                        .iter()
                        .map(|&i| BatchRecord {
                            key: records[i].key,
                            value: records[i].value,
                            timestamp_ms: records[i].timestamp_ms,
                        })
                        .collect();
                    match encode_batch(&batch_records, self.config.compression, identity) {
                        Ok(batch) => batches.push(PartitionBatch {
                            partition: p,
                            batch,
                        }),
                        Err(detail) => call.encode_failed(
                            p,
                            KafkaError::Encode {
                                topic: topic.to_owned(),
                                detail,
                            },
                        ),
                    }
                }
                if !batches.is_empty() {
                    requests.push((addr, batches));
                }
            }
            if let Some(idem) = &mut self.idempotence {
                let partitions: Vec<i32> = requests
                    .iter()
                    .flat_map(|(_, batches)| batches.iter().map(|b| b.partition))
                    .collect();
                let going = call.going(&partitions);
                let new = idem.note_unsettled(topic, call.records(), going, call.sequences());
                if let (true, Some(save)) = (new, journal.as_mut()) {
                    save(&idem.encode(unix_ms()), &call.done());
                }
            }

            // 4. All requests written before any answer is read. A failure that is not
            // retriable stops the writing, but what was written is still read.
            let mut in_flight: Vec<InFlight> = Vec::new();
            let mut fatal: Option<KafkaError> = None;
            for (addr, batches) in requests {
                let partitions: Vec<i32> = batches.iter().map(|b| b.partition).collect();
                match self.send_produce(&addr, topic, info.topic_id, batches, deadline) {
                    Ok(Some(flight)) => in_flight.push(flight),
                    Ok(None) => call.sent_unacknowledged(&partitions),
                    Err(e) => {
                        if let Some(e) = call.send_failed(e, &partitions) {
                            fatal = Some(e);
                            break;
                        }
                    }
                }
            }

            // 5. Every answer is read (or its connection closed) before the round ends, and
            // every partition's outcome applied.
            for flight in in_flight {
                let outcomes = match self.recv_produce(&flight, topic, deadline) {
                    Ok(outcomes) => outcomes,
                    Err(e) => {
                        call.recv_failed(e);
                        continue;
                    }
                };
                for (partition, outcome) in outcomes {
                    if let Err(e) = call.apply(partition, outcome, self.idempotence.as_mut()) {
                        fatal.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = fatal {
                return Err(e);
            }
        }
    }

    /// Takes over the idempotence state a previous run saved (`Journal`), unless it is older
    /// than `max_age` (the broker forgets idle producer ids: `producer.id.expiration.ms`).
    /// Errors say why it can't be used; the caller warns what that may duplicate.
    /// `pending`: the records still to deliver; a batch in doubt none of whose records is
    /// among them was acknowledged before the stop.
    pub fn restore_identity(
        &mut self,
        state: &[u8],
        pending: &[Record<'_>],
        max_age: Duration,
    ) -> Result<Restored, String> {
        let (mut idem, saved_at_ms) = Idempotence::decode(state)?;
        let landed = idem.settle_landed(pending);
        let age_ms = unix_ms().saturating_sub(saved_at_ms);
        if age_ms > i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX) {
            return Err(format!(
                "saved {} h ago, longer than brokers keep an idle producer id \
                 (producer.id.expiration.ms, 24 h by default); {} records sent just before \
                 may be duplicated",
                age_ms / 3_600_000,
                idem.records_in_doubt()
            ));
        }
        let restored = Restored {
            producer_id: idem.producer_id,
            producer_epoch: idem.producer_epoch,
            batches_in_doubt: idem.batches_in_doubt(),
            records_in_doubt: idem.records_in_doubt(),
            resend_first: idem.in_doubt_prefix(pending),
            landed,
        };
        self.idempotence = Some(idem);
        Ok(restored)
    }

    /// The idempotence state as `Journal` gets it, now (`None` before a producer id).
    pub fn identity_state(&self) -> Option<Vec<u8>> {
        self.idempotence.as_ref().map(|idem| idem.encode(unix_ms()))
    }

    /// Forgets the producer id (a new one is taken before the next send). When batches in
    /// doubt from before a restart are still unsettled, what that may duplicate is said once.
    fn drop_identity(&mut self, topic: &str, why: &str) {
        let Some(idem) = self.idempotence.take() else {
            return;
        };
        match idem.restored_in_doubt() {
            0 => log::debug!("kafka: {topic}: {why}"),
            n => log::warn!(
                "kafka: {topic}: producer id {} of the previous run can't be used any more \
                 ({why}): up to {n} records sent just before the restart may be duplicated",
                idem.producer_id
            ),
        }
    }

    /// Sleeps `retry_backoff * 2^(attempt-1)`, capped at `retry_backoff_max`, ±20 % jitter, never
    /// past `deadline`.
    fn backoff(&mut self, attempt: u32, deadline: Instant) {
        let base = self.config.retry_backoff.as_secs_f64()
            * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.config.retry_backoff_max.as_secs_f64());
        let jitter = 0.8 + 0.4 * self.rng.next_unit();
        let pause = Duration::from_secs_f64((capped * jitter).max(0.0));
        let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
        if !pause.is_zero() {
            log::debug!("kafka: retry {attempt} in {} ms", pause.as_millis());
            std::thread::sleep(pause);
        }
    }

    /// Time left for one request: the request timeout, cut short by the deadline.
    fn request_budget(&self, deadline: Instant) -> Duration {
        self.config
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
    }

    /// The connection to `addr`, opened and negotiated if needed, re-authenticated if its SASL
    /// session is close to its end.
    fn conn(&mut self, addr: &str, deadline: Instant) -> Result<&mut Conn, KafkaError> {
        if !self.conns.contains_key(addr) {
            if let Some(conn) = self.pool.take(addr) {
                self.conns.insert(addr.to_owned(), conn);
            }
        }
        let now = Instant::now();
        match self.conns.get(addr).and_then(|c| c.session) {
            Some(session) if now >= session.expires_at => {
                log::debug!("kafka {addr}: SASL session expired, reconnecting");
                self.conns.remove(addr);
            }
            Some(session) if now >= session.reauth_at => {
                if let Err(e) = self.reauthenticate(addr, deadline) {
                    self.conns.remove(addr);
                    return Err(e);
                }
            }
            _ => {}
        }
        if !self.conns.contains_key(addr) {
            let conn = self.open(addr, deadline)?;
            self.conns.insert(addr.to_owned(), conn);
        }
        self.conns.get_mut(addr).ok_or_else(|| KafkaError::Io {
            broker: addr.to_owned(),
            phase: super::error::Phase::Connect,
            detail: "connection vanished".to_owned(),
        })
    }

    fn open(&mut self, addr: &str, deadline: Instant) -> Result<Conn, KafkaError> {
        let connect_timeout = self
            .config
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let mut transport = self.connector.connect(addr, connect_timeout)?;
        let mut encoder = wire::RequestEncoder::new(&self.config.client_id);
        let mut handshake = Handshake::new();
        // Each fallback lowers the version, so this ends within API_VERSIONS.1 + 1 rounds.
        loop {
            let request = encoder
                .encode(
                    ApiKey::ApiVersions,
                    handshake.version(),
                    &handshake.request(),
                )
                .map_err(|detail| KafkaError::Encode {
                    topic: "-".to_owned(),
                    detail,
                })?;
            let budget = self.request_budget(deadline);
            transport.send(&request.frame, budget)?;
            let frame = transport.recv(self.request_budget(deadline))?;
            match handshake.on_response(addr, request.correlation_id, frame)? {
                HandshakeStep::Done(versions) => {
                    log::debug!(
                        "kafka {addr}: ApiVersions v{}, Produce v{}, Metadata v{}",
                        versions.api_versions,
                        versions.produce,
                        versions.metadata
                    );
                    let session = match &self.config.sasl {
                        None => None,
                        Some(sasl) => authenticate(
                            sasl,
                            addr,
                            transport.as_mut(),
                            &mut encoder,
                            &versions,
                            (self.config.request_timeout, deadline),
                        )?,
                    };
                    return Ok(Conn {
                        transport,
                        encoder,
                        versions,
                        session,
                    });
                }
                HandshakeStep::Retry => {}
            }
        }
    }

    /// KIP-368: a new SaslHandshake + SaslAuthenticate on the open connection, before the
    /// broker's session on it runs out. Nothing else is in flight on it: responses are read
    /// before the connection is used again.
    fn reauthenticate(&mut self, addr: &str, deadline: Instant) -> Result<(), KafkaError> {
        let (Some(sasl), Some(conn)) = (&self.config.sasl, self.conns.get_mut(addr)) else {
            return Ok(());
        };
        conn.session = authenticate(
            sasl,
            addr,
            conn.transport.as_mut(),
            &mut conn.encoder,
            &conn.versions,
            (self.config.request_timeout, deadline),
        )?;
        log::debug!("kafka {addr}: re-authenticated ({})", sasl.mechanism.name());
        Ok(())
    }

    /// One request/response exchange on `addr`; the connection is dropped on any failure.
    fn call<Q: Encodable, S>(
        &mut self,
        addr: &str,
        api: ApiKey,
        version_of: impl Fn(&Versions) -> Option<i16>,
        body: &Q,
        parse: fn(&Bytes, i16) -> Result<S, String>,
        deadline: Instant,
    ) -> Result<S, KafkaError> {
        let budget = self.request_budget(deadline);
        let result = (|| {
            let conn = self.conn(addr, deadline)?;
            let version =
                version_of(&conn.versions).ok_or_else(|| KafkaError::UnsupportedVersion {
                    broker: addr.to_owned(),
                    api: wire::api_name(api),
                    ours: INIT_PRODUCER_ID,
                    theirs: None,
                })?;
            let request =
                conn.encoder
                    .encode(api, version, body)
                    .map_err(|detail| KafkaError::Encode {
                        topic: "-".to_owned(),
                        detail,
                    })?;
            conn.transport.send(&request.frame, budget)?;
            let frame = conn.transport.recv(budget)?;
            wire::parse_response(api, version, request.correlation_id, frame, parse).map_err(
                |detail| KafkaError::Malformed {
                    broker: addr.to_owned(),
                    api: wire::api_name(api),
                    detail,
                },
            )
        })();
        if result.is_err() {
            self.conns.remove(addr);
        }
        result
    }

    /// Brokers to ask for cluster-wide things: connected ones, then bootstrap, then known ones.
    fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = self.conns.keys().cloned().collect();
        out.sort();
        for addr in self
            .config
            .bootstrap
            .iter()
            .map(String::as_str)
            .chain(self.metadata.broker_addrs())
        {
            if !out.iter().any(|a| a == addr) {
                out.push(addr.to_owned());
            }
        }
        out
    }

    fn refresh_metadata(
        &mut self,
        topic: &str,
        deadline: Instant,
    ) -> Result<TopicStatus, KafkaError> {
        let candidates = self.candidates();
        let mut last = None;
        for addr in &candidates {
            if Instant::now() >= deadline {
                break;
            }
            let request = Metadata::request(topic);
            match self.call(
                addr,
                ApiKey::Metadata,
                |v| Some(v.metadata),
                &request,
                response::metadata,
                deadline,
            ) {
                Ok(response) => return self.metadata.ingest(addr, topic, response, Instant::now()),
                Err(e @ KafkaError::Broker { .. }) => return Err(e),
                // Another broker of the same cluster would refuse the same certificate or
                // password: say so at once rather than "no broker reachable" at the deadline.
                Err(e) if e.is_security() => return Err(e),
                Err(e) => {
                    log::debug!("kafka: metadata from {addr}: {e}");
                    last = Some(e);
                }
            }
        }
        Err(KafkaError::NoBrokerReachable {
            tried: candidates.len(),
            last: Box::new(last.unwrap_or(KafkaError::Timeout {
                broker: "-".to_owned(),
                phase: super::error::Phase::Connect,
            })),
        })
    }

    /// Creates `spec.name` unless it exists (`--create-topic`). Any broker takes the request
    /// (KRaft forwards it to the controller); NOT_CONTROLLER and timeouts try the next one.
    pub fn create_topic(
        &mut self,
        spec: &TopicSpec,
        deadline: Instant,
    ) -> Result<TopicCreation, KafkaError> {
        let result = self.create_topic_on_any(spec, deadline);
        // `call` closes a connection on any failure, so what is left has nothing unread.
        self.release_conns(true);
        result
    }

    fn create_topic_on_any(
        &mut self,
        spec: &TopicSpec,
        deadline: Instant,
    ) -> Result<TopicCreation, KafkaError> {
        let configs = spec
            .configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        let topic = CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(spec.name.clone())))
            .with_num_partitions(spec.partitions)
            .with_replication_factor(spec.replication_factor)
            .with_configs(configs);
        let timeout_ms =
            i32::try_from(self.request_budget(deadline).as_millis()).unwrap_or(i32::MAX);
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(timeout_ms);
        let mut last = None;
        for addr in self.candidates() {
            let topics = match self.call(
                &addr,
                ApiKey::CreateTopics,
                |v| v.create_topics,
                &request,
                response::create_topics,
                deadline,
            ) {
                Ok(t) => t,
                Err(e) if e.is_retriable() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(result) = topics.into_iter().find(|t| t.name == spec.name) else {
                return Err(KafkaError::Malformed {
                    broker: addr,
                    api: "CreateTopics",
                    detail: format!("no result for topic {}", spec.name),
                });
            };
            match result.error_code {
                0 => return Ok(TopicCreation::Created),
                TOPIC_ALREADY_EXISTS => return Ok(TopicCreation::AlreadyExists),
                NOT_CONTROLLER => {
                    last = Some(KafkaError::broker_code(
                        &addr,
                        &spec.name,
                        None,
                        NOT_CONTROLLER,
                        result.error_message,
                    ));
                }
                code => {
                    return Err(KafkaError::broker_code(
                        &addr,
                        &spec.name,
                        None,
                        code,
                        result.error_message,
                    ))
                }
            }
        }
        Err(last.unwrap_or(KafkaError::Timeout {
            broker: "-".to_owned(),
            phase: super::error::Phase::Connect,
        }))
    }

    fn init_producer_id(&mut self, deadline: Instant) -> Result<(), KafkaError> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let mut last = None;
        for addr in self.candidates() {
            let response = match self.call(
                &addr,
                ApiKey::InitProducerId,
                |v| v.init_producer_id,
                &request,
                response::init_producer_id,
                deadline,
            ) {
                Ok(r) => r,
                Err(e) if e.is_retriable() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if response.error_code != 0 {
                return Err(KafkaError::broker_code(
                    &addr,
                    "-",
                    None,
                    response.error_code,
                    None,
                ));
            }
            log::debug!(
                "kafka {addr}: producer id {} epoch {}",
                response.producer_id,
                response.producer_epoch
            );
            self.idempotence = Some(Idempotence::new(
                response.producer_id,
                response.producer_epoch,
            ));
            return Ok(());
        }
        Err(last.unwrap_or(KafkaError::Timeout {
            broker: "-".to_owned(),
            phase: super::error::Phase::Connect,
        }))
    }

    /// Writes one Produce request to `addr`. `None` means acks=0: no response will come.
    fn send_produce(
        &mut self,
        addr: &str,
        topic: &str,
        topic_id: Option<[u8; 16]>,
        batches: Vec<PartitionBatch>,
        deadline: Instant,
    ) -> Result<Option<InFlight>, KafkaError> {
        let budget = self.request_budget(deadline);
        let acks = self.config.acks;
        let result = (|| {
            let conn = self.conn(addr, deadline)?;
            // v13 addresses the topic by id; without one (Metadata < v10) stay on v12.
            let version = match topic_id {
                None => conn.versions.produce.min(12),
                Some(_) => conn.versions.produce,
            };
            let request = produce::request(topic, topic_id, acks, budget, &batches);
            let shared: Vec<Bytes> = batches.iter().map(|b| b.batch.bytes.clone()).collect();
            let encoded = conn
                .encoder
                .encode_sharing(ApiKey::Produce, version, &request, &shared)
                .map_err(|detail| KafkaError::Encode {
                    topic: topic.to_owned(),
                    detail,
                })?;
            log::debug!(
                "kafka {addr}: Produce v{version} {topic} partitions {:?}, {} bytes",
                batches.iter().map(|b| b.partition).collect::<Vec<_>>(),
                encoded.frame.len()
            );
            let size = encoded.frame.len();
            conn.transport.send(&encoded.frame, budget).map_err(|e| {
                // A broker drops a request over its socket.request.max.bytes unread, closing
                // the connection mid-write: that request can never go, whatever the retries.
                let cut_off = matches!(e, KafkaError::Io { .. }) && size > SOCKET_REQUEST_MAX_BYTES;
                if cut_off {
                    KafkaError::RequestTooLarge {
                        broker: addr.to_owned(),
                        topic: topic.to_owned(),
                        request_bytes: size,
                        compression: batches.first().map_or("none", |b| b.batch.compression),
                    }
                } else {
                    e
                }
            })?;
            Ok((encoded.correlation_id, version))
        })();
        match result {
            Ok(_) if acks == Acks::None => Ok(None),
            Ok((correlation_id, version)) => Ok(Some(InFlight {
                addr: addr.to_owned(),
                topic_id,
                correlation_id,
                version,
                batches,
            })),
            Err(e) => {
                self.conns.remove(addr);
                Err(e)
            }
        }
    }

    fn recv_produce(
        &mut self,
        flight: &InFlight,
        topic: &str,
        deadline: Instant,
    ) -> Result<Vec<(i32, Outcome)>, KafkaError> {
        let budget = self.request_budget(deadline);
        let acks_all = self.config.acks == Acks::All;
        let addr = flight.addr.as_str();
        let result = (|| {
            let conn = self.conns.get_mut(addr).ok_or_else(|| KafkaError::Io {
                broker: addr.to_owned(),
                phase: super::error::Phase::Read,
                detail: "connection dropped before the response".to_owned(),
            })?;
            let frame: Bytes = conn.transport.recv(budget).map_err(|e| match e {
                // A live leader that does not answer with acks=all is waiting for replicas.
                KafkaError::Timeout {
                    broker,
                    phase: super::error::Phase::Read,
                } if acks_all => KafkaError::Timeout {
                    broker,
                    phase: super::error::Phase::AwaitingReplicas,
                },
                other => other,
            })?;
            let response = wire::parse_response(
                ApiKey::Produce,
                flight.version,
                flight.correlation_id,
                frame,
                response::produce,
            )
            .map_err(|detail| KafkaError::Malformed {
                broker: addr.to_owned(),
                api: "Produce",
                detail,
            })?;
            produce::interpret(addr, topic, flight.topic_id, &response, &flight.batches)
        })();
        if result.is_err() {
            self.conns.remove(addr);
        }
        result
    }
}

/// Runs a SASL exchange on `transport`; returns the session's lifetime when the broker set one.
/// `budget` is (request timeout, deadline): each request gets the smaller of the two.
fn authenticate(
    sasl: &Sasl,
    addr: &str,
    transport: &mut dyn Transport,
    encoder: &mut wire::RequestEncoder,
    versions: &Versions,
    budget: (Duration, Instant),
) -> Result<Option<Session>, KafkaError> {
    let left = || {
        budget
            .0
            .min(budget.1.saturating_duration_since(Instant::now()))
    };
    let mut exchange = sasl::Exchange::start(addr, sasl, versions)?;
    while let Some(request) = exchange.next_request(encoder)? {
        transport.send(&request.frame, left())?;
        let frame = transport.recv(left())?;
        exchange.on_response(frame)?;
    }
    let lifetime = exchange.session_lifetime();
    log::debug!(
        "kafka {addr}: authenticated as {} ({}){}",
        sasl.username,
        sasl.mechanism.name(),
        match lifetime {
            Some(l) => format!(", session lifetime {} ms", l.as_millis()),
            None => String::new(),
        }
    );
    Ok(lifetime.map(|l| Session::starting(Instant::now(), l)))
}

/// Kafka's default `socket.request.max.bytes`: a larger request is dropped unread.
const SOCKET_REQUEST_MAX_BYTES: usize = 100 * 1024 * 1024;

/// Wall-clock ms since the epoch (0 if the clock is before it).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// xorshift64* for backoff jitter; not for anything that needs real randomness.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        XorShift((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kafka::config::Compression;
    use crate::kafka::fake::Cluster;
    use crate::kafka::partitioner::partition_for_key;

    const TOPIC: &str = "gtfs";

    fn producer(cluster: &Cluster, tweak: impl FnOnce(&mut ProducerConfig)) -> Producer {
        let mut config = ProducerConfig {
            bootstrap: vec!["b1:9092".to_owned()],
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(2),
            unknown_topic_retries: 3,
            ..ProducerConfig::default()
        };
        tweak(&mut config);
        Producer::with_connector(config, Box::new(cluster.clone()))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    fn values(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("value-{i}")).collect()
    }

    fn keyless(values: &[String]) -> Vec<Record<'_>> {
        values
            .iter()
            .map(|v| Record {
                key: None,
                value: v.as_bytes(),
                timestamp_ms: 1,
            })
            .collect()
    }

    #[test]
    fn one_request_per_leader_and_deliveries_in_input_order() {
        let cluster = Cluster::new(2, TOPIC, &[1, 2, 1, 2]);
        let mut p = producer(&cluster, |c| c.compression = Compression::Zstd);
        let keys: Vec<String> = (0..30).map(|i| format!("vehicle-{i}")).collect();
        let vals = values(31);
        let mut records: Vec<Record> = keys
            .iter()
            .zip(&vals)
            .map(|(k, v)| Record {
                key: Some(k.as_bytes()),
                value: v.as_bytes(),
                timestamp_ms: 7,
            })
            .collect();
        records.push(Record {
            key: None,
            value: vals[30].as_bytes(),
            timestamp_ms: 7,
        });
        let deliveries = p.produce(TOPIC, &records, soon()).unwrap();
        assert_eq!(deliveries.len(), 31);
        let state = cluster.state();
        assert_eq!(state.count(ApiKey::Produce), 2, "one Produce per leader");
        for (i, (record, d)) in records.iter().zip(&deliveries).enumerate() {
            if let Some(key) = record.key {
                assert_eq!(d.partition as usize, partition_for_key(key, 4));
            }
            let log = &state.logs[&d.partition];
            assert_eq!(
                log[d.offset as usize].value.as_deref(),
                Some(vals[i].as_bytes()),
                "record {i} at {d:?}"
            );
        }
    }

    #[test]
    fn producers_sharing_a_pool_share_one_connection_and_keep_their_own_ids() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let pool = ConnPool::default();
        let idempotent = |c: &mut ProducerConfig| {
            c.idempotence = true;
            c.acks = Acks::All;
        };
        let mut a = producer(&cluster, idempotent).with_pool(pool.clone());
        let mut b = producer(&cluster, idempotent).with_pool(pool.clone());
        let vals = values(2);
        for _ in 0..3 {
            a.produce(TOPIC, &keyless(&vals), soon()).unwrap();
            b.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        }
        assert_eq!(pool.idle(), 1);
        let state = cluster.state();
        assert_eq!(
            state.count(ApiKey::ApiVersions),
            1,
            "one connection for both"
        );
        assert_eq!(
            state.count(ApiKey::InitProducerId),
            2,
            "one producer id each"
        );
        assert_eq!(state.log_values(0).len(), 12);
    }

    #[test]
    fn a_failed_call_closes_its_connections_instead_of_sharing_them() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let pool = ConnPool::default();
        let mut a = producer(&cluster, |c| c.unknown_topic_retries = 1).with_pool(pool.clone());
        let vals = values(1);
        assert!(a.produce("no-such-topic", &keyless(&vals), soon()).is_err());
        assert_eq!(pool.idle(), 0);
        a.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn keyless_partition_rotates_per_call() {
        let cluster = Cluster::new(1, TOPIC, &[1, 1, 1]);
        let mut p = producer(&cluster, |_| {});
        let vals = values(3);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
            assert!(d.iter().all(|x| x.partition == d[0].partition), "{d:?}");
            assert_eq!(d.iter().map(|x| x.offset).collect::<Vec<_>>(), [0, 1, 2]);
            seen.push(d[0].partition);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(
            cluster.state().count(ApiKey::Metadata),
            1,
            "cached metadata reused"
        );
        assert_eq!(
            cluster.state().count(ApiKey::ApiVersions),
            1,
            "connection reused"
        );
    }

    #[test]
    fn not_leader_refreshes_metadata_and_follows_the_leader() {
        let cluster = Cluster::new(2, TOPIC, &[1]);
        let mut p = producer(&cluster, |_| {});
        let vals = values(2);
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        // Leadership moves to broker 2; our cached metadata still says 1.
        cluster.state().leaders = vec![2];
        let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        assert_eq!(
            d,
            [
                Delivery {
                    partition: 0,
                    offset: 2
                },
                Delivery {
                    partition: 0,
                    offset: 3
                }
            ]
        );
        let state = cluster.state();
        assert_eq!(state.count(ApiKey::Metadata), 2);
        let produces: Vec<&str> = state
            .requests
            .iter()
            .filter(|r| r.1 == 0)
            .map(|r| r.0.as_str())
            .collect();
        assert_eq!(produces, ["b1:9092", "b1:9092", "b2:9092"]);
    }

    #[test]
    fn retriable_errors_retry_until_done() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster
            .state()
            .produce_errors
            .extend([(0, 7), (0, 19), (0, 5)]);
        let mut p = producer(&cluster, |_| {});
        let vals = values(1);
        let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        assert_eq!(
            d,
            [Delivery {
                partition: 0,
                offset: 0
            }]
        );
        let state = cluster.state();
        assert_eq!(state.count(ApiKey::Produce), 4);
        // Only LEADER_NOT_AVAILABLE asked for fresh metadata.
        assert_eq!(state.count(ApiKey::Metadata), 2);
    }

    #[test]
    fn fatal_errors_stop_at_once() {
        for (code, text) in [
            (10, "MESSAGE_TOO_LARGE"),
            (29, "TOPIC_AUTHORIZATION_FAILED"),
            (87, "INVALID_RECORD"),
        ] {
            let cluster = Cluster::new(1, TOPIC, &[1]);
            cluster.state().produce_errors.push_back((0, code));
            let mut p = producer(&cluster, |_| {});
            let vals = values(1);
            let err = p.produce(TOPIC, &keyless(&vals), soon()).unwrap_err();
            let line = err.to_string();
            assert!(
                line.contains(text) && line.contains("b1:9092") && line.contains("partition 0"),
                "{line}"
            );
            assert!(!err.is_retriable());
            assert_eq!(cluster.state().count(ApiKey::Produce), 1);
        }
    }

    #[test]
    fn a_refused_batch_is_split_and_only_the_record_at_fault_is_refused() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().max_batch_bytes = Some(50);
        let mut p = producer(&cluster, |c| {
            c.idempotence = true;
        });
        let vals = vec!["small-0".to_string(), "x".repeat(80), "small-2".to_string()];
        let (landed, err) = p.produce_partial(TOPIC, &keyless(&vals), soon());
        assert!(
            matches!(err, Some(KafkaError::MessageTooLarge { .. })),
            "{err:?}"
        );
        assert!(landed[0].is_some() && landed[1].is_none() && landed[2].is_some());
        let state = cluster.state();
        assert_eq!(state.log_values(0), ["small-0", "small-2"]);
        assert_eq!(
            state.count(ApiKey::InitProducerId),
            1,
            "one producer id throughout"
        );
    }

    #[test]
    fn unknown_topic_gives_up_after_budget() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().unknown_for = u32::MAX;
        let mut p = producer(&cluster, |_| {});
        let vals = values(1);
        let err = p.produce(TOPIC, &keyless(&vals), soon()).unwrap_err();
        assert!(
            matches!(err, KafkaError::UnknownTopic { attempts: 4, .. }),
            "{err}"
        );
        assert!(!err.is_retriable());
        assert_eq!(cluster.state().count(ApiKey::Metadata), 4);
    }

    #[test]
    fn auto_created_topic_appears_after_a_few_refreshes() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().unknown_for = 2;
        let mut p = producer(&cluster, |_| {});
        let vals = values(1);
        assert_eq!(
            p.produce(TOPIC, &keyless(&vals), soon()).unwrap()[0].offset,
            0
        );
    }

    #[test]
    fn no_leader_until_deadline() {
        let cluster = Cluster::new(1, TOPIC, &[-1]);
        let mut p = producer(&cluster, |_| {});
        let vals = values(1);
        let err = p
            .produce(
                TOPIC,
                &keyless(&vals),
                Instant::now() + Duration::from_millis(50),
            )
            .unwrap_err();
        assert!(
            matches!(err, KafkaError::DeadlineExceeded { undelivered: 1, .. }),
            "{err}"
        );
        assert!(err.is_retriable());
        assert!(err.to_string().contains("LEADER_NOT_AVAILABLE"), "{err}");
    }

    #[test]
    fn acks_none_reads_no_response() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let mut p = producer(&cluster, |c| c.acks = Acks::None);
        let vals = values(3);
        let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        assert!(
            d.iter().all(|x| *x
                == Delivery {
                    partition: 0,
                    offset: -1
                }),
            "{d:?}"
        );
        // A second call on the same connection still matches its responses (metadata is cached,
        // so force a refresh through a new topic-less request path: produce again).
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        assert_eq!(cluster.state().log_values(0).len(), 6);
    }

    #[test]
    fn bootstrap_falls_through_to_a_live_broker() {
        let cluster = Cluster::new(2, TOPIC, &[2]);
        cluster.state().down.insert("b1:9092".to_owned());
        let mut p = producer(&cluster, |c| {
            c.bootstrap = vec![
                "b1:9092".to_owned(),
                "nowhere:1".to_owned(),
                "b2:9092".to_owned(),
            ]
        });
        let vals = values(1);
        assert_eq!(
            p.produce(TOPIC, &keyless(&vals), soon()).unwrap()[0].offset,
            0
        );
        let err = {
            let cluster = Cluster::new(1, TOPIC, &[1]);
            cluster.state().down.insert("b1:9092".to_owned());
            let mut p = producer(&cluster, |_| {});
            p.produce(
                TOPIC,
                &keyless(&vals),
                Instant::now() + Duration::from_millis(30),
            )
            .unwrap_err()
        };
        assert!(
            err.to_string().contains("b1:9092: connect failed: refused"),
            "{err}"
        );
    }

    #[test]
    fn lost_response_reconnects_and_resends() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().lose_produce_responses = 1;
        let mut p = producer(&cluster, |_| {});
        let vals = values(2);
        let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        // Without idempotence the resend is a second copy: at-least-once.
        assert_eq!(d[0].offset, 2);
        assert_eq!(cluster.state().log_values(0).len(), 4);
        assert_eq!(cluster.state().count(ApiKey::ApiVersions), 2, "reconnected");
    }

    #[test]
    fn the_journal_is_written_before_new_batches_only_never_for_a_retry() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().lose_produce_responses = 1;
        let mut p = producer(&cluster, |c| c.idempotence = true);
        let saved: std::cell::RefCell<Vec<Vec<u8>>> = Default::default();
        let mut journal = |state: &[u8], _: &[bool]| saved.borrow_mut().push(state.to_vec());
        let vals = values(2);
        let first = p.produce_each(TOPIC, &keyless(&vals), soon(), Some(&mut journal));
        assert!(first.error.is_none(), "{:?}", first.error);
        assert_eq!(
            saved.borrow().len(),
            1,
            "the lost answer's batch went again without a write"
        );
        assert_eq!(cluster.state().log_values(0).len(), 2, "deduplicated");
        let more = values(3);
        let second = p.produce_each(TOPIC, &keyless(&more[2..]), soon(), Some(&mut journal));
        assert!(second.error.is_none());
        assert_eq!(saved.borrow().len(), 2, "a new batch, a new write");
        // What was saved restores the same identity.
        let mut q = producer(&cluster, |c| c.idempotence = true);
        let last = saved.borrow()[1].clone();
        let r = q
            .restore_identity(&last, &[], Duration::from_secs(60))
            .unwrap();
        let live = p.identity_state().expect("an id");
        let (live, _) = Idempotence::decode(&live).unwrap();
        assert_eq!(
            (r.producer_id, r.producer_epoch),
            (live.producer_id, live.producer_epoch)
        );
        assert_eq!(
            r.records_in_doubt, 0,
            "its batch left nothing pending: settled"
        );
    }

    #[test]
    fn a_saved_identity_older_than_the_brokers_expiry_is_not_taken_over() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let mut p = producer(&cluster, |c| c.idempotence = true);
        let vals = values(1);
        let mut saved = Vec::new();
        let mut journal = |state: &[u8], _: &[bool]| saved = state.to_vec();
        assert!(p
            .produce_each(TOPIC, &keyless(&vals), soon(), Some(&mut journal))
            .error
            .is_none());
        let mut q = producer(&cluster, |c| c.idempotence = true);
        let pending = keyless(&vals);
        // Saved "now"; a zero expiry makes it too old.
        std::thread::sleep(Duration::from_millis(5));
        let e = q
            .restore_identity(&saved, &pending, Duration::from_millis(1))
            .unwrap_err();
        assert!(e.contains("producer.id.expiration.ms"), "{e}");
        assert!(
            e.contains("1 records sent just before may be duplicated"),
            "{e}"
        );
        assert!(q.identity_state().is_none(), "a new id will be taken");
    }

    #[test]
    fn idempotent_resend_is_deduplicated_and_sequences_advance() {
        let cluster = Cluster::new(1, TOPIC, &[1, 1]);
        cluster.state().lose_produce_responses = 1;
        let mut p = producer(&cluster, |c| c.idempotence = true);
        let vals = values(2);
        let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        let partition = d[0].partition;
        assert_eq!(
            d.iter().map(|x| x.offset).collect::<Vec<_>>(),
            [0, 1],
            "original offsets"
        );
        assert_eq!(
            cluster.state().log_values(partition),
            ["value-0", "value-1"],
            "no duplicate"
        );
        for _ in 0..3 {
            p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        }
        let state = cluster.state();
        let seqs: Vec<i32> = state.logs.values().flatten().map(|r| r.sequence).collect();
        assert_eq!(state.logs.values().map(Vec::len).sum::<usize>(), 8);
        assert!(state.logs.values().flatten().all(|r| r.producer_id == 1000));
        let mut per_partition: Vec<Vec<i32>> = state
            .logs
            .values()
            .map(|l| l.iter().map(|r| r.sequence).collect())
            .collect();
        per_partition.sort();
        assert_eq!(
            per_partition,
            [vec![0, 1, 2, 3], vec![0, 1, 2, 3]],
            "{seqs:?}"
        );
        assert_eq!(state.count(ApiKey::InitProducerId), 1);
    }

    #[test]
    fn resend_after_a_failed_call_is_deduplicated() {
        // The first call's batch lands but every answer is lost until its deadline passes;
        // the caller resends the same records in a new call: same partition, same producer
        // id and sequences, so the broker keeps one copy.
        let cluster = Cluster::new(1, TOPIC, &[1, 1, 1]);
        cluster.state().lose_produce_responses = 1_000;
        let mut p = producer(&cluster, |c| c.idempotence = true);
        let vals = values(2);
        let err = p
            .produce(
                TOPIC,
                &keyless(&vals),
                Instant::now() + Duration::from_millis(50),
            )
            .unwrap_err();
        assert!(err.is_retriable(), "{err}");
        cluster.state().lose_produce_responses = 0;
        let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        let state = cluster.state();
        assert_eq!(state.log_values(d[0].partition), ["value-0", "value-1"]);
        assert_eq!(
            state.logs.values().map(Vec::len).sum::<usize>(),
            2,
            "one copy"
        );
        assert_eq!(state.count(ApiKey::InitProducerId), 1, "same producer id");
    }

    #[test]
    fn lost_producer_state_gets_a_new_producer_id() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let mut p = producer(&cluster, |c| c.idempotence = true);
        let vals = values(2);
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        cluster.state().produce_errors.push_back((0, 59));
        let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        assert_eq!(d[0].offset, 2);
        assert_eq!(cluster.state().count(ApiKey::InitProducerId), 2);
        // Without idempotence the same code is fatal.
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().produce_errors.push_back((0, 59));
        let mut p = producer(&cluster, |_| {});
        assert!(p.produce(TOPIC, &keyless(&vals), soon()).is_err());
    }

    #[test]
    fn idempotence_needs_acks_all() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let mut p = producer(&cluster, |c| {
            c.idempotence = true;
            c.acks = Acks::Leader;
        });
        let vals = values(1);
        assert!(matches!(
            p.produce(TOPIC, &keyless(&vals), soon()),
            Err(KafkaError::Config {
                setting: "acks",
                ..
            })
        ));
    }

    #[test]
    fn kip_511_fallback_on_connect() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().api_versions_max = 2;
        cluster.state().produce_max = 8;
        let mut p = producer(&cluster, |_| {});
        let vals = values(1);
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        let state = cluster.state();
        let versions: Vec<(i16, i16)> = state.requests.iter().map(|r| (r.1, r.2)).collect();
        assert_eq!(&versions[..3], &[(18, 4), (18, 2), (3, 12)]);
        assert!(versions.contains(&(0, 8)));
    }

    fn sasl_cluster(n_brokers: i32, leaders: &[i32], mechanisms: Vec<&'static str>) -> Cluster {
        let cluster = Cluster::new(n_brokers, TOPIC, leaders);
        cluster.state().sasl = Some(crate::kafka::fake::FakeSasl {
            mechanisms,
            username: "alice".to_owned(),
            password: "alice-secret".to_owned(),
            session_lifetime: Duration::from_secs(60),
        });
        cluster
    }

    fn with_sasl(
        mechanism: crate::kafka::SaslMechanism,
        password: &str,
    ) -> impl FnOnce(&mut ProducerConfig) {
        let password = password.to_owned();
        move |c: &mut ProducerConfig| {
            c.sasl = Some(Sasl {
                mechanism,
                username: "alice".to_owned(),
                password: crate::kafka::Secret::new(password),
            })
        }
    }

    #[test]
    fn sasl_authenticates_every_connection_after_api_versions() {
        use crate::kafka::SaslMechanism::Plain;
        let cluster = sasl_cluster(2, &[1, 2], vec!["PLAIN", "SCRAM-SHA-512"]);
        let mut p = producer(&cluster, with_sasl(Plain, "alice-secret"));
        let keys = ["a", "b", "c", "d", "e", "f"];
        let records: Vec<Record> = keys
            .iter()
            .map(|k| Record {
                key: Some(k.as_bytes()),
                value: b"v",
                timestamp_ms: 1,
            })
            .collect();
        p.produce(TOPIC, &records, soon()).unwrap();
        let state = cluster.state();
        for addr in ["b1:9092", "b2:9092"] {
            let apis: Vec<i16> = state
                .requests
                .iter()
                .filter(|r| r.0 == addr)
                .map(|r| r.1)
                .take(3)
                .collect();
            assert_eq!(
                apis,
                [18, 17, 36],
                "{addr}: ApiVersions, SaslHandshake, SaslAuthenticate"
            );
        }
        assert_eq!(state.count(ApiKey::SaslAuthenticate), 2);
    }

    #[test]
    fn wrong_password_fails_at_once_naming_mechanism_and_user() {
        use crate::kafka::SaslMechanism::Plain;
        let cluster = sasl_cluster(1, &[1], vec!["PLAIN"]);
        let mut p = producer(&cluster, |c| {
            with_sasl(Plain, "wrong-password")(c);
            c.idempotence = true;
        });
        let vals = values(1);
        let started = Instant::now();
        let err = p
            .produce(
                TOPIC,
                &keyless(&vals),
                Instant::now() + Duration::from_secs(30),
            )
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no retrying until the deadline"
        );
        let line = err.to_string();
        assert_eq!(
            line,
            "kafka broker b1:9092: SASL authentication failed (PLAIN, user alice): \
             SASL_AUTHENTICATION_FAILED: Invalid username or password"
        );
        assert!(!err.is_retriable() && err.is_security());
        // Fixed on the broker side: the next call goes through.
        cluster.state().sasl.as_mut().unwrap().password = "wrong-password".to_owned();
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
    }

    #[test]
    fn a_mechanism_the_broker_lacks_is_named_with_what_it_offers() {
        use crate::kafka::SaslMechanism::ScramSha256;
        let cluster = sasl_cluster(1, &[1], vec!["PLAIN", "SCRAM-SHA-512"]);
        let mut p = producer(&cluster, with_sasl(ScramSha256, "alice-secret"));
        let vals = values(1);
        let err = p.produce(TOPIC, &keyless(&vals), soon()).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "SASL mechanism SCRAM-SHA-256 is not enabled on the broker; it offers PLAIN, \
                 SCRAM-SHA-512 (set sasl.mechanism / KAFKA_SASL_MECHANISM)"
            ),
            "{err}"
        );
    }

    #[test]
    fn sessions_are_renewed_on_the_connection_then_replaced_once_expired() {
        use crate::kafka::SaslMechanism::Plain;
        let cluster = sasl_cluster(1, &[1], vec!["PLAIN"]);
        let mut p = producer(&cluster, with_sasl(Plain, "alice-secret"));
        let vals = values(1);
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        let session_of = |p: &mut Producer| {
            let conn = p.pool.take("b1:9092").unwrap();
            let session = conn.session.unwrap();
            p.pool.give("b1:9092".to_owned(), conn);
            session
        };
        let set_session = |p: &mut Producer, session: Session| {
            let mut conn = p.pool.take("b1:9092").unwrap();
            conn.session = Some(session);
            p.pool.give("b1:9092".to_owned(), conn);
        };
        let session = session_of(&mut p);
        let lifetime = session.expires_at - session.reauth_at;
        // 15 % of the broker's 60 s.
        assert!(
            lifetime > Duration::from_millis(8_900) && lifetime < Duration::from_millis(9_100),
            "{lifetime:?}"
        );
        // Past 85 % of the lifetime: KIP-368 re-authentication on the same connection.
        let now = Instant::now();
        set_session(
            &mut p,
            Session {
                reauth_at: now,
                expires_at: now + Duration::from_secs(5),
            },
        );
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        {
            let state = cluster.state();
            assert_eq!(state.count(ApiKey::SaslHandshake), 2);
            assert_eq!(state.count(ApiKey::ApiVersions), 1, "same connection");
        }
        assert!(session_of(&mut p).reauth_at > now + Duration::from_secs(40));
        // Past the end: a new connection (the broker would close this one).
        set_session(
            &mut p,
            Session {
                reauth_at: now,
                expires_at: now,
            },
        );
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        let state = cluster.state();
        assert_eq!(state.count(ApiKey::ApiVersions), 2, "reconnected");
        assert_eq!(state.count(ApiKey::SaslHandshake), 3);
        assert_eq!(state.log_values(0).len(), 3);
    }

    #[test]
    fn produce_v13_only_with_a_topic_id() {
        for (topic_id, expected) in [(None, 12), (Some([5; 16]), 13)] {
            let cluster = Cluster::new(1, TOPIC, &[1]);
            cluster.state().produce_max = 13;
            cluster.state().topic_id = topic_id;
            let mut p = producer(&cluster, |_| {});
            let vals = values(2);
            let d = p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
            assert_eq!(
                d[1],
                Delivery {
                    partition: 0,
                    offset: 1
                }
            );
            let state = cluster.state();
            let produce: Vec<i16> = state
                .requests
                .iter()
                .filter(|r| r.1 == 0)
                .map(|r| r.2)
                .collect();
            assert_eq!(produce, [expected]);
        }
    }

    #[test]
    fn malformed_response_is_retried_as_the_same_batch_and_named() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        cluster.state().garbage_produce = true;
        let mut p = producer(&cluster, |c| c.idempotence = true);
        let vals = values(1);
        let deadline = Instant::now() + Duration::from_millis(100);
        let err = p.produce(TOPIC, &keyless(&vals), deadline).unwrap_err();
        assert!(err.is_retriable(), "{err}");
        let line = err.to_string();
        assert!(
            line.contains("malformed Produce response") && line.contains("b1:9092"),
            "{line}"
        );
        // Every attempt appended (the reply was garbage): the broker kept one copy, because
        // each resend carried the same producer id and sequence.
        cluster.state().garbage_produce = false;
        p.produce(TOPIC, &keyless(&vals), soon()).unwrap();
        let state = cluster.state();
        assert_eq!(state.log_values(0), ["value-0"]);
        assert_eq!(state.count(ApiKey::InitProducerId), 1);
    }

    #[test]
    fn producer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Producer>();
    }

    #[test]
    fn empty_input_and_missing_bootstrap() {
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let mut p = producer(&cluster, |_| {});
        assert_eq!(p.produce(TOPIC, &[], soon()).unwrap(), []);
        assert!(cluster.state().requests.is_empty());
        let mut p = producer(&cluster, |c| c.bootstrap.clear());
        let vals = values(1);
        assert!(matches!(
            p.produce(TOPIC, &keyless(&vals), soon()),
            Err(KafkaError::Config { .. })
        ));
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut rng = XorShift::seeded();
        for _ in 0..1000 {
            let u = rng.next_unit();
            assert!((0.0..1.0).contains(&u));
        }
        let cluster = Cluster::new(1, TOPIC, &[1]);
        let mut p = producer(&cluster, |c| {
            c.retry_backoff = Duration::from_millis(10);
            c.retry_backoff_max = Duration::from_millis(25);
        });
        let far = Instant::now() + Duration::from_secs(5);
        for (attempt, lo, hi) in [(1, 8, 40), (2, 16, 60), (5, 20, 60)] {
            let t = Instant::now();
            p.backoff(attempt, far);
            let ms = t.elapsed().as_millis();
            assert!(ms >= lo && ms < hi, "attempt {attempt}: {ms} ms");
        }
        let t = Instant::now();
        p.backoff(10, Instant::now() + Duration::from_millis(3));
        assert!(
            t.elapsed() < Duration::from_millis(20),
            "never past the deadline"
        );
    }
}
