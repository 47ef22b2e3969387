//! One `produce` call as a state machine: which records go to which partition, which of them
//! go in this round and with which sequence, what each answer (or failure) changes, when to
//! back off, refresh metadata, take a new producer id, or give up. Pure: its inputs are
//! metadata, answers, errors and whether the deadline passed; `Producer` moves the bytes and
//! sleeps.
//!
//! The rules it keeps (ARCHITECTURE.md "Delivery invariants"): a batch of unknown fate is only
//! ever resent as itself; every partition's outcome in an answer is applied, so one refusal
//! never discards another's acknowledgement; a refused batch of several records is split so
//! only the record at fault is refused.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::batch::Identity;
use super::codes::{
    INVALID_PRODUCER_EPOCH, LEADER_NOT_AVAILABLE, OUT_OF_ORDER_SEQUENCE_NUMBER,
    UNKNOWN_PRODUCER_ID, UNKNOWN_TOPIC_OR_PARTITION,
};
use super::error::KafkaError;
use super::idempotence::Idempotence;
use super::metadata::TopicInfo;
use super::partitioner;
use super::produce::Outcome;
use super::producer::Record;

/// New producer ids one call may ask for after losing its producer state.
const MAX_IDENTITY_RESETS: u32 = 3;

/// The state of one call.
pub(crate) struct Call<'c, 'r> {
    topic: &'c str,
    records: &'c [Record<'r>],
    /// Per record: its partition once assigned (kept across retries), its offset once
    /// acknowledged, whether the broker refused it for what it is.
    pub partition_of: Vec<Option<i32>>,
    pub offsets: Vec<Option<i64>>,
    pub refused: Vec<bool>,
    /// The first refusal: why the `refused` records were refused.
    pub refusal: Option<KafkaError>,
    /// Partitions whose refused batch held several records: from then on one record per
    /// request, so a refusal lands on the record it is about.
    solo: HashSet<i32>,
    /// Base sequence of each partition's batch in this call, kept across retries so the
    /// broker recognises a resent batch.
    sequences: HashMap<i32, i32>,
    /// This round's records by partition (what each answer is about).
    round: BTreeMap<i32, Vec<usize>>,
    attempts: u32,
    retries: u32,
    unknown_topic: u32,
    unknown_topic_budget: u32,
    identity_resets: u32,
    last: Option<KafkaError>,
    refresh: bool,
    retry_due: bool,
    /// A partition lost our producer state: a new id comes once nothing else is in doubt.
    reset_due: Option<String>,
}

/// What to send this round, or why not.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Partitions by leader node id, each partition's records in `Call::records_of`.
    Send(BTreeMap<i32, Vec<i32>>),
    /// The producer id must change before anything else goes out (the reason, for the log).
    NewIdentity(String),
}

impl<'c, 'r> Call<'c, 'r> {
    pub(crate) fn new(
        topic: &'c str,
        records: &'c [Record<'r>],
        unknown_topic_budget: u32,
    ) -> Call<'c, 'r> {
        Call {
            topic,
            records,
            partition_of: vec![None; records.len()],
            offsets: vec![None; records.len()],
            refused: vec![false; records.len()],
            refusal: None,
            solo: HashSet::new(),
            sequences: HashMap::new(),
            round: BTreeMap::new(),
            attempts: 0,
            retries: 0,
            unknown_topic: 0,
            unknown_topic_budget,
            identity_resets: 0,
            last: None,
            refresh: false,
            retry_due: false,
            reset_due: None,
        }
    }

    pub(crate) fn topic(&self) -> &'c str {
        self.topic
    }

    pub(crate) fn records(&self) -> &'c [Record<'r>] {
        self.records
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records neither acknowledged nor refused.
    fn waiting(&self) -> usize {
        self.offsets
            .iter()
            .zip(&self.refused)
            .filter(|(o, r)| o.is_none() && !**r)
            .count()
    }

    /// The retry number to back off for before the next round, if one is due.
    pub(crate) fn backoff_due(&mut self) -> Option<u32> {
        std::mem::take(&mut self.retry_due).then(|| {
            self.retries += 1;
            self.retries
        })
    }

    /// The call's end, if it has come: everything answered (Ok, or the first refusal), or
    /// the deadline / attempt budget spent. Otherwise a new round starts.
    pub(crate) fn verdict(
        &mut self,
        expired: bool,
        max_attempts: Option<u32>,
    ) -> Option<Result<(), KafkaError>> {
        let waiting = self.waiting();
        if waiting == 0 {
            return Some(self.refusal.clone().map_or(Ok(()), Err));
        }
        if expired || max_attempts.is_some_and(|max| self.attempts >= max) {
            return Some(Err(KafkaError::DeadlineExceeded {
                topic: self.topic.to_owned(),
                undelivered: waiting,
                attempts: self.attempts,
                last: self
                    .last
                    .clone()
                    .or_else(|| self.refusal.clone())
                    .map(Box::new),
            }));
        }
        self.attempts += 1;
        None
    }

    /// Whether the topic's metadata must be fetched again before this round.
    pub(crate) fn take_refresh(&mut self) -> bool {
        std::mem::take(&mut self.refresh)
    }

    /// The topic is missing or still being created: retry, until the budget of such answers
    /// is spent.
    pub(crate) fn topic_not_ready(&mut self, e: KafkaError) -> Result<(), KafkaError> {
        self.count_unknown_topic(&e)?;
        self.retry(e);
        Ok(())
    }

    /// A metadata refresh failed: retry when retriable.
    pub(crate) fn metadata_failed(&mut self, e: KafkaError) -> Result<(), KafkaError> {
        if !e.is_retriable() {
            return Err(e);
        }
        log::debug!("will retry: {e}");
        // A refresh that timed out (often cut short by the deadline itself) says less than
        // what made us refresh (no leader, a moved partition): keep that.
        let timed_out = matches!(
            e,
            KafkaError::Timeout { .. } | KafkaError::NoBrokerReachable { .. }
        );
        if self.last.is_none() || !timed_out {
            self.last = Some(e);
        }
        self.retry_due = true;
        Ok(())
    }

    /// InitProducerId failed: retry when retriable.
    pub(crate) fn identity_failed(&mut self, e: KafkaError) -> Result<(), KafkaError> {
        if !e.is_retriable() {
            return Err(e);
        }
        self.retry(e);
        Ok(())
    }

    fn retry(&mut self, e: KafkaError) {
        log::debug!("will retry: {e}");
        self.last = Some(e);
        self.retry_due = true;
    }

    /// Assigns partitions (once per record), picks this round's records per partition and
    /// groups partitions by leader. `calls` rotates the keyless partition.
    pub(crate) fn plan(
        &mut self,
        info: &TopicInfo,
        idem: Option<&Idempotence>,
        calls: u64,
    ) -> Plan {
        let available = info.available();
        for (record, slot) in self.records.iter().zip(self.partition_of.iter_mut()) {
            if slot.is_none() {
                *slot = match record.key {
                    Some(key) => info
                        .partitions
                        .get(partitioner::partition_for_key(key, info.partitions.len()))
                        .map(|p| p.id),
                    // A keyless record in a batch of unknown fate goes back where it went.
                    None => idem
                        .and_then(|idem| idem.unsettled_partition_of(self.topic, record))
                        .or_else(|| partitioner::sticky_partition(calls, &available)),
                };
            }
        }
        let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        let mut unassigned = false;
        for (i, partition) in self.partition_of.iter().enumerate() {
            if self.offsets[i].is_some() || self.refused[i] {
                continue;
            }
            match partition {
                Some(p) => by_partition.entry(*p).or_default().push(i),
                None => unassigned = true,
            }
        }
        for (p, idx) in by_partition.iter_mut() {
            if self.solo.contains(p) {
                idx.truncate(1);
            } else if let Some(idem) = idem {
                *idx = idem.resend_selection(self.topic, *p, self.records, idx);
            }
        }
        // A new producer id is due: first what is in doubt under the current one, alone.
        if self.reset_due.is_some() {
            let topic = self.topic;
            by_partition.retain(|p, _| idem.is_some_and(|idem| idem.in_doubt(topic, *p)));
            if by_partition.is_empty() {
                self.sequences.clear();
                let why = self.reset_due.take().unwrap_or_default();
                return Plan::NewIdentity(why);
            }
        }
        // Invariant: a batch whose fate is unknown is only ever resent as itself.
        if idem.is_some_and(|idem| {
            idem.reuses_unsettled_sequence(self.topic, self.records, &by_partition, &self.sequences)
        }) {
            self.sequences.clear();
            return Plan::NewIdentity(
                "a batch that may be in the log is not resent as it was; taking a new \
                 producer id before sending other data"
                    .to_owned(),
            );
        }
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in by_partition.keys() {
            match info.leader(p) {
                Some(leader) => by_leader.entry(leader).or_default().push(p),
                None => unassigned = true,
            }
        }
        if unassigned {
            self.refresh = true;
            self.retry_due = true;
            self.last = Some(KafkaError::broker_code(
                "-",
                self.topic,
                None,
                LEADER_NOT_AVAILABLE,
                Some("no leader yet".to_owned()),
            ));
        }
        self.round = by_partition;
        Plan::Send(by_leader)
    }

    /// This round's records for `partition`, in order.
    pub(crate) fn records_of(&self, partition: i32) -> &[usize] {
        self.round.get(&partition).map_or(&[], Vec::as_slice)
    }

    /// The identity stamped on `partition`'s batch (the same on every retry in this call).
    pub(crate) fn identity(&mut self, idem: Option<&Idempotence>, partition: i32) -> Identity {
        idem.map_or(Identity::NONE, |idem| {
            idem.identity(self.topic, partition, &mut self.sequences)
        })
    }

    /// Base sequences of this call's batches, by partition.
    pub(crate) fn sequences(&self) -> &HashMap<i32, i32> {
        &self.sequences
    }

    /// Per record: done (acknowledged or refused) so far.
    pub(crate) fn done(&self) -> Vec<bool> {
        self.offsets
            .iter()
            .zip(&self.refused)
            .map(|(o, r)| o.is_some() || *r)
            .collect()
    }

    /// The partitions' batches of this round, for `Idempotence::note_unsettled`.
    pub(crate) fn going<'a>(
        &'a self,
        partitions: &'a [i32],
    ) -> impl Iterator<Item = (i32, &'a [usize])> + 'a {
        partitions
            .iter()
            .filter_map(|&p| Some((p, self.round.get(&p)?.as_slice())))
    }

    /// The leader's address is unknown: refresh and retry.
    pub(crate) fn leader_unknown(&mut self) {
        self.refresh = true;
        self.retry_due = true;
    }

    /// Data the protocol can't carry: refused like a broker refusal.
    pub(crate) fn encode_failed(&mut self, partition: i32, e: KafkaError) {
        self.refuse(partition, e);
    }

    /// acks=0: written is all we will ever know.
    pub(crate) fn sent_unacknowledged(&mut self, partitions: &[i32]) {
        for p in partitions {
            for &i in self.round.get(p).into_iter().flatten() {
                self.offsets[i] = Some(-1);
            }
        }
    }

    /// Writing the request of `partitions` failed: perhaps written, perhaps not — the same
    /// batches go again. A request the broker can never take (too large) is refused like a
    /// refused batch: split, or the record set aside. Any other failure that is not retriable
    /// ends the call (after what was written is read).
    pub(crate) fn send_failed(&mut self, e: KafkaError, partitions: &[i32]) -> Option<KafkaError> {
        if e.rejects_data() {
            for &p in partitions {
                self.refuse(p, e.clone());
            }
            return None;
        }
        if !e.is_retriable() {
            return Some(e);
        }
        self.refresh = true;
        self.retry(e);
        None
    }

    /// No reply, a garbled or mismatched one: the batches may be in the log. They go again
    /// as they were.
    pub(crate) fn recv_failed(&mut self, e: KafkaError) {
        self.refresh = true;
        self.retry(e);
    }

    /// Applies one partition's outcome. `Err`: the call ends with it (after the other
    /// partitions' outcomes are applied).
    pub(crate) fn apply(
        &mut self,
        partition: i32,
        outcome: Outcome,
        idem: Option<&mut Idempotence>,
    ) -> Result<(), KafkaError> {
        log::trace!("kafka: {}[{partition}]: {outcome:?}", self.topic);
        match outcome {
            Outcome::Done { base_offset } => {
                let idx = self.round.get(&partition).cloned().unwrap_or_default();
                for (k, &i) in idx.iter().enumerate() {
                    self.offsets[i] = Some(if base_offset >= 0 {
                        base_offset + k as i64
                    } else {
                        -1
                    });
                }
                if let Some(idem) = idem {
                    idem.commit_sequence(self.topic, partition, idx.len(), &mut self.sequences);
                }
                Ok(())
            }
            Outcome::Retry {
                refresh_metadata,
                reason,
            } => {
                self.count_unknown_topic(&reason)?;
                self.refresh |= refresh_metadata;
                self.retry(reason);
                Ok(())
            }
            Outcome::Fatal(e)
                if idem.is_some()
                    && is_lost_producer_state(&e)
                    && (self.reset_due.is_some() || self.identity_resets < MAX_IDENTITY_RESETS) =>
            {
                // The broker lost or fenced our producer state for this partition (restart,
                // expiry, a recreated topic): the batch was not appended, and a new producer
                // id restarts every sequence at 0. Not at once: batches of unknown fate on
                // other partitions are first resent under this id, which is the only one the
                // broker deduplicates them by (`plan`).
                if let Some(idem) = idem {
                    idem.settle(self.topic, partition);
                }
                self.sequences.remove(&partition);
                if self.reset_due.is_none() {
                    self.identity_resets += 1;
                    self.reset_due = Some(format!("will retry with a new producer id: {e}"));
                }
                self.last = Some(e);
                Ok(())
            }
            Outcome::Fatal(e) if e.rejects_data() => {
                // Refused, not appended: its sequence is free again.
                if let Some(idem) = idem {
                    idem.settle(self.topic, partition);
                }
                self.sequences.remove(&partition);
                self.refuse(partition, e);
                Ok(())
            }
            Outcome::Fatal(e) => Err(e),
        }
    }

    /// A partition's batch was refused for its data: a single record is refused for good; a
    /// batch of several is split, one record per request, to find the one at fault.
    fn refuse(&mut self, partition: i32, e: KafkaError) {
        match self.round.get(&partition).map(Vec::as_slice) {
            Some([only]) => {
                self.refused[*only] = true;
                self.refusal.get_or_insert(e);
            }
            _ => {
                log::debug!("kafka: batch refused ({e}); sending its records one by one");
                self.solo.insert(partition);
            }
        }
    }

    /// Counts an UNKNOWN_TOPIC_OR_PARTITION answer; past the budget the topic is taken as
    /// missing.
    fn count_unknown_topic(&mut self, e: &KafkaError) -> Result<(), KafkaError> {
        if e.code() != Some(UNKNOWN_TOPIC_OR_PARTITION) {
            return Ok(());
        }
        self.unknown_topic += 1;
        if self.unknown_topic <= self.unknown_topic_budget {
            return Ok(());
        }
        let broker = match e {
            KafkaError::Broker { broker, .. } => broker.clone(),
            _ => "-".to_owned(),
        };
        Err(KafkaError::UnknownTopic {
            topic: self.topic.to_owned(),
            broker,
            attempts: self.unknown_topic,
        })
    }
}

/// OUT_OF_ORDER_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH, UNKNOWN_PRODUCER_ID: the broker no
/// longer agrees with our sequence numbers.
fn is_lost_producer_state(e: &KafkaError) -> bool {
    matches!(
        e.code(),
        Some(OUT_OF_ORDER_SEQUENCE_NUMBER | INVALID_PRODUCER_EPOCH | UNKNOWN_PRODUCER_ID)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(keys: &[&'static str]) -> Vec<Record<'static>> {
        keys.iter()
            .map(|k| Record {
                key: Some(k.as_bytes()),
                value: k.as_bytes(),
                timestamp_ms: 1,
            })
            .collect()
    }

    /// Keys that land on partitions 0 and 1 of two (murmur2, like the Java client).
    fn on(partition: usize, n: usize) -> Vec<&'static str> {
        let all = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
        ];
        all.into_iter()
            .filter(|k| partitioner::partition_for_key(k.as_bytes(), 2) == partition)
            .take(n)
            .collect()
    }

    fn code(partition: i32, code: i16) -> KafkaError {
        KafkaError::broker_code("b1:9092", "t", Some(partition), code, None)
    }

    /// Two partitions, led by nodes 1 and 2.
    fn info() -> TopicInfo {
        TopicInfo::with_leaders(&[Some(1), Some(2)])
    }

    fn round<'c, 'r>(
        call: &mut Call<'c, 'r>,
        idem: Option<&Idempotence>,
    ) -> BTreeMap<i32, Vec<i32>> {
        assert!(call.verdict(false, None).is_none());
        match call.plan(&info(), idem, 0) {
            Plan::Send(by_leader) => by_leader,
            Plan::NewIdentity(why) => panic!("new identity: {why}"),
        }
    }

    #[test]
    fn one_partitions_refusal_or_failure_never_discards_anothers_acknowledgement() {
        let keys: Vec<_> = on(0, 2).into_iter().chain(on(1, 1)).collect();
        let records = keyed(&keys);
        let mut call = Call::new("t", &records, 2);
        let by_leader = round(&mut call, None);
        assert_eq!(by_leader, BTreeMap::from([(1, vec![0]), (2, vec![1])]));
        // Partition 1 answers first with a fatal error; partition 0's ack still counts.
        assert!(call.apply(1, Outcome::Fatal(code(1, 29)), None).is_err());
        assert!(matches!(
            call.apply(0, Outcome::Done { base_offset: 40 }, None),
            Ok(())
        ));
        assert_eq!(call.offsets, vec![Some(40), Some(41), None]);
    }

    #[test]
    fn a_refused_batch_is_split_and_only_the_record_at_fault_is_refused() {
        let records = keyed(&on(0, 3));
        let mut call = Call::new("t", &records, 2);
        round(&mut call, None);
        assert_eq!(call.records_of(0), [0, 1, 2]);
        call.apply(0, Outcome::Fatal(code(0, 87)), None).unwrap();
        assert_eq!(
            call.refused, [false; 3],
            "a batch of three: split, nobody refused yet"
        );
        round(&mut call, None);
        assert_eq!(
            call.records_of(0),
            [0],
            "one record per request from now on"
        );
        call.apply(0, Outcome::Done { base_offset: 7 }, None)
            .unwrap();
        round(&mut call, None);
        call.apply(0, Outcome::Fatal(code(0, 87)), None).unwrap();
        round(&mut call, None);
        call.apply(0, Outcome::Done { base_offset: 8 }, None)
            .unwrap();
        assert_eq!(call.offsets, vec![Some(7), None, Some(8)]);
        assert_eq!(call.refused, [false, true, false]);
        let end = call.verdict(false, None).expect("all answered");
        assert_eq!(
            end.unwrap_err().code(),
            Some(87),
            "ends with the refusal, named"
        );
    }

    #[test]
    fn retriable_answers_back_off_and_refresh_when_asked() {
        let records = keyed(&on(0, 1));
        let mut call = Call::new("t", &records, 2);
        round(&mut call, None);
        let retry = Outcome::Retry {
            refresh_metadata: true,
            reason: code(0, 6),
        };
        call.apply(0, retry, None).unwrap();
        assert_eq!(call.backoff_due(), Some(1));
        assert_eq!(call.backoff_due(), None);
        assert!(call.take_refresh());
        let end = call.verdict(true, None).expect("deadline");
        assert!(matches!(
            end,
            Err(KafkaError::DeadlineExceeded { undelivered: 1, .. })
        ));
    }

    #[test]
    fn a_request_the_broker_cut_off_for_its_size_is_refused_not_retried() {
        let records = keyed(&on(0, 1));
        let mut call = Call::new("t", &records, 2);
        round(&mut call, None);
        let cut = KafkaError::RequestTooLarge {
            broker: "b1:9092".into(),
            topic: "t".into(),
            request_bytes: 120 << 20,
            compression: "none",
        };
        assert!(call.send_failed(cut, &[0]).is_none());
        assert_eq!(call.refused, [true]);
        assert_eq!(call.backoff_due(), None, "no retry");
        assert!(matches!(
            call.verdict(false, None),
            Some(Err(KafkaError::RequestTooLarge { .. }))
        ));
    }

    #[test]
    fn an_unknown_topic_is_retried_within_its_budget_then_named() {
        let records = keyed(&on(0, 1));
        let mut call = Call::new("t", &records, 2);
        assert!(call.topic_not_ready(code(0, 3)).is_ok());
        assert!(call.topic_not_ready(code(0, 3)).is_ok());
        let e = call.topic_not_ready(code(0, 3)).unwrap_err();
        assert!(
            matches!(e, KafkaError::UnknownTopic { attempts: 3, .. }),
            "{e}"
        );
    }

    #[test]
    fn lost_producer_state_asks_for_a_new_id_a_few_times_then_gives_up() {
        let records = keyed(&on(0, 1));
        let mut call = Call::new("t", &records, 2);
        let mut idem = Idempotence::new(9, 0);
        for _ in 0..MAX_IDENTITY_RESETS {
            round(&mut call, Some(&idem));
            call.identity(Some(&idem), 0);
            call.apply(0, Outcome::Fatal(code(0, 45)), Some(&mut idem))
                .unwrap();
            assert!(call.verdict(false, None).is_none());
            let plan = call.plan(&info(), Some(&idem), 0);
            assert!(matches!(plan, Plan::NewIdentity(_)), "{plan:?}");
            assert!(call.sequences().is_empty());
        }
        round(&mut call, Some(&idem));
        assert!(call
            .apply(0, Outcome::Fatal(code(0, 45)), Some(&mut idem))
            .is_err());
    }

    #[test]
    fn a_new_id_waits_until_what_is_in_doubt_elsewhere_went_again_under_the_old_one() {
        let keys: Vec<_> = on(0, 1).into_iter().chain(on(1, 1)).collect();
        let records = keyed(&keys);
        let mut call = Call::new("t", &records, 2);
        let mut idem = Idempotence::new(9, 0);
        round(&mut call, Some(&idem));
        call.identity(Some(&idem), 0);
        call.identity(Some(&idem), 1);
        idem.note_unsettled("t", &records, call.going(&[0, 1]), call.sequences());
        // Partition 0's answer is lost (perhaps appended); partition 1 lost our state.
        call.recv_failed(code(0, 7));
        call.apply(1, Outcome::Fatal(code(1, 45)), Some(&mut idem))
            .unwrap();
        assert_eq!(call.backoff_due(), Some(1));
        assert!(call.verdict(false, None).is_none());
        let plan = call.plan(&info(), Some(&idem), 0);
        assert!(
            matches!(&plan, Plan::Send(by_leader) if by_leader.len() == 1),
            "{plan:?}"
        );
        assert_eq!(
            call.records_of(0),
            [0],
            "partition 0 again, under the same id"
        );
        assert_eq!(call.identity(Some(&idem), 0).producer_id, 9);
        call.apply(0, Outcome::Done { base_offset: 3 }, Some(&mut idem))
            .unwrap();
        assert!(call.verdict(false, None).is_none());
        let plan = call.plan(&info(), Some(&idem), 0);
        assert!(
            matches!(plan, Plan::NewIdentity(_)),
            "then the new id: {plan:?}"
        );
    }

    #[test]
    fn different_data_at_the_sequence_of_a_batch_in_doubt_takes_a_new_id_first() {
        let keys = on(0, 2);
        let records = keyed(&keys);
        let mut idem = Idempotence::new(9, 0);
        let mut first = Call::new("t", &records[..1], 2);
        round(&mut first, Some(&idem));
        first.identity(Some(&idem), 0);
        assert!(idem.note_unsettled("t", &records[..1], first.going(&[0]), first.sequences()));
        // The answer never came; a new call brings other data for that partition.
        let mut second = Call::new("t", &records[1..], 2);
        assert!(second.verdict(false, None).is_none());
        let plan = second.plan(&info(), Some(&idem), 0);
        assert!(matches!(plan, Plan::NewIdentity(_)), "{plan:?}");
    }
}
