//! The idempotent producer's state — producer id, epoch, the next sequence number per
//! partition, the batches whose fate is unknown — and the decisions that rest on it: which
//! sequence a batch takes, whether sending some data now would reuse a sequence, what an
//! acknowledgement changes. Pure: no I/O, no clock.
//!
//! Also its persistent form (`encode`/`decode`): with a spool, the state is saved before a
//! batch is first sent, so a process killed at any moment restarts under the same identity,
//! resends the batches in doubt as they were, and the broker drops what it already has.

use std::collections::{BTreeMap, HashMap};

use super::batch::Identity;
use super::producer::Record;

/// Producer id and the next sequence number per (topic, partition), for idempotent produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Idempotence {
    pub producer_id: i64,
    pub producer_epoch: i16,
    next_sequence: HashMap<(String, i32), i32>,
    /// Batches sent whose fate is unknown (no acknowledgement, no refusal), by (topic,
    /// partition). Such a batch may be in the log; the next batch at that sequence must be the
    /// same data (a resend the broker deduplicates), or a new producer id is taken first —
    /// never the same sequence for different data.
    unsettled: HashMap<(String, i32), Unsettled>,
    /// Partitions whose batch in doubt came from a previous run's saved state: what taking a
    /// new producer id now may duplicate (said once, in a warning).
    restored: Vec<(String, i32)>,
}

/// A batch of unknown fate (see `Idempotence::unsettled`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unsettled {
    base_sequence: i32,
    /// Each record's fingerprint, in order: the batch is the same data exactly when these
    /// are; a resent keyless record goes back to this partition, whatever the sticky choice
    /// would be now.
    records: Vec<u64>,
}

impl Idempotence {
    pub(crate) fn new(producer_id: i64, producer_epoch: i16) -> Idempotence {
        Idempotence {
            producer_id,
            producer_epoch,
            next_sequence: HashMap::new(),
            unsettled: HashMap::new(),
            restored: Vec::new(),
        }
    }

    /// The identity stamped on `partition`'s batch in this call: the partition's next
    /// sequence number the first time, the same on every retry (`sequences`, per call), so
    /// the broker recognises a resent batch.
    pub(crate) fn identity(
        &self,
        topic: &str,
        partition: i32,
        sequences: &mut HashMap<i32, i32>,
    ) -> Identity {
        let base = *sequences
            .entry(partition)
            .or_insert_with(|| self.next(topic, partition));
        Identity {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: base,
        }
    }

    fn next(&self, topic: &str, partition: i32) -> i32 {
        self.next_sequence
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// The records of `idx` (a partition's pending records, in order) to send now: when the
    /// partition's batch in doubt is among them, in its order (a restart resending what it had
    /// in flight, among other records), exactly that batch, so it goes again as itself and
    /// the broker drops it if it has it; otherwise all of `idx`.
    pub(crate) fn resend_selection(
        &self,
        topic: &str,
        partition: i32,
        records: &[Record<'_>],
        idx: &[usize],
    ) -> Vec<usize> {
        let Some(u) = self.unsettled.get(&(topic.to_owned(), partition)) else {
            return idx.to_vec();
        };
        if idx.len() <= u.records.len() {
            return idx.to_vec();
        }
        let mut wanted = u.records.iter().peekable();
        let mut chosen = Vec::with_capacity(u.records.len());
        for &i in idx {
            if wanted
                .peek()
                .is_some_and(|&&fp| fingerprint(records, &[i]) == fp)
            {
                chosen.push(i);
                wanted.next();
            }
        }
        if wanted.peek().is_none() {
            chosen
        } else {
            idx.to_vec()
        }
    }

    /// Whether sending `by_partition` now would put different data at the sequence of a batch
    /// whose fate is unknown.
    pub(crate) fn reuses_unsettled_sequence(
        &self,
        topic: &str,
        records: &[Record<'_>],
        by_partition: &BTreeMap<i32, Vec<usize>>,
        sequences: &HashMap<i32, i32>,
    ) -> bool {
        by_partition.iter().any(|(p, idx)| {
            let base = sequences
                .get(p)
                .copied()
                .unwrap_or_else(|| self.next(topic, *p));
            self.unsettled
                .get(&(topic.to_owned(), *p))
                .is_some_and(|u| {
                    let differs =
                        u.base_sequence == base && !same_records(&u.records, records, idx);
                    if differs {
                        log::debug!(
                            "kafka: {topic}[{p}]: sequence {base} holds a batch of unknown fate; \
                         {} other records would take it",
                            idx.len()
                        );
                    }
                    differs
                })
        })
    }

    /// Notes batches about to be sent as of unknown fate until acknowledged or refused.
    /// Returns whether any of them is new (not a resend of a batch already noted): the state
    /// worth saving before it goes out.
    pub(crate) fn note_unsettled<'i>(
        &mut self,
        topic: &str,
        records: &[Record<'_>],
        by_partition: impl IntoIterator<Item = (i32, &'i [usize])>,
        sequences: &HashMap<i32, i32>,
    ) -> bool {
        let mut new = false;
        for (p, idx) in by_partition {
            let Some(&base) = sequences.get(&p) else {
                continue;
            };
            let entry = Unsettled {
                base_sequence: base,
                records: idx.iter().map(|&i| fingerprint(records, &[i])).collect(),
            };
            let key = (topic.to_owned(), p);
            if self.unsettled.get(&key) != Some(&entry) {
                new = true;
                self.restored.retain(|k| *k != key);
                self.unsettled.insert(key, entry);
            }
        }
        new
    }

    /// Where a keyless record went when it was last sent with an unknown outcome.
    pub(crate) fn unsettled_partition_of(&self, topic: &str, record: &Record<'_>) -> Option<i32> {
        let mut in_doubt = self
            .unsettled
            .iter()
            .filter(|((t, _), _)| t == topic)
            .peekable();
        // Nothing in doubt, the usual case: the record (a whole document in feed mode) is not
        // fingerprinted here as well as in `note_unsettled`.
        in_doubt.peek()?;
        let fp = fingerprint(std::slice::from_ref(record), &[0]);
        // The lowest such partition: the same answer whatever the map's order (replayable).
        in_doubt
            .filter(|(_, u)| u.records.contains(&fp))
            .map(|((_, p), _)| *p)
            .min()
    }

    /// The partition's batch was refused (never appended): its sequence is free again.
    pub(crate) fn settle(&mut self, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        self.unsettled.remove(&key);
        self.restored.retain(|k| *k != key);
    }

    /// Advances the partition's sequence after its batch of `n` records was acknowledged.
    pub(crate) fn commit_sequence(
        &mut self,
        topic: &str,
        partition: i32,
        n: usize,
        sequences: &mut HashMap<i32, i32>,
    ) {
        self.settle(topic, partition);
        if let Some(base) = sequences.remove(&partition) {
            // Sequences wrap at i32::MAX back to 0, as in the Java client.
            let next = (i64::from(base) + n as i64) % (i64::from(i32::MAX) + 1);
            self.next_sequence
                .insert((topic.to_owned(), partition), next as i32);
        }
    }

    /// After a restart: a batch in doubt with a record no longer `pending` was answered
    /// before the stop — the outbox keeps every snapshot's spool file until a saved state
    /// says its records are done, so a missing record was acknowledged (a batch is appended
    /// whole) or refused (then its batch was settled in a state saved before the file went).
    /// Its sequence is used; the partition continues after it. Returns which `pending`
    /// records were in such a batch: in Kafka already, never to be sent again.
    pub(crate) fn settle_landed(&mut self, pending: &[Record<'_>]) -> Vec<bool> {
        let each: Vec<u64> = (0..pending.len())
            .map(|i| fingerprint(pending, &[i]))
            .collect();
        let present: std::collections::HashSet<u64> = each.iter().copied().collect();
        let mut in_kafka = std::collections::HashSet::new();
        let landed: Vec<(String, i32)> = self
            .unsettled
            .iter()
            .filter(|(_, u)| u.records.iter().any(|fp| !present.contains(fp)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in landed {
            if let Some(u) = self.unsettled.remove(&key) {
                let next = (i64::from(u.base_sequence) + u.records.len() as i64)
                    % (i64::from(i32::MAX) + 1);
                self.next_sequence.insert(key.clone(), next as i32);
                in_kafka.extend(u.records);
            }
            self.restored.retain(|k| *k != key);
        }
        each.iter().map(|fp| in_kafka.contains(fp)).collect()
    }

    /// How many of `pending` (oldest first), from the front, reach the last record in a batch
    /// of unknown fate: what must be resent first, exactly, before anything newer.
    pub(crate) fn in_doubt_prefix(&self, pending: &[Record<'_>]) -> usize {
        let in_doubt: std::collections::HashSet<u64> = self
            .unsettled
            .values()
            .flat_map(|u| u.records.iter().copied())
            .collect();
        (0..pending.len())
            .rev()
            .find(|&i| in_doubt.contains(&fingerprint(pending, &[i])))
            .map_or(0, |i| i + 1)
    }

    /// Whether the partition has a batch of unknown fate.
    pub(crate) fn in_doubt(&self, topic: &str, partition: i32) -> bool {
        self.unsettled.contains_key(&(topic.to_owned(), partition))
    }

    /// Records in batches of unknown fate: what a new producer id may duplicate.
    pub(crate) fn records_in_doubt(&self) -> usize {
        self.unsettled.values().map(|u| u.records.len()).sum()
    }

    /// Records in batches in doubt since before a restart, still unsettled.
    pub(crate) fn restored_in_doubt(&self) -> usize {
        self.restored
            .iter()
            .filter_map(|k| self.unsettled.get(k))
            .map(|u| u.records.len())
            .sum()
    }

    /// Batches in doubt.
    pub(crate) fn batches_in_doubt(&self) -> usize {
        self.unsettled.len()
    }

    /// The state as bytes, with the wall-clock time it was saved (ms since the epoch).
    pub(crate) fn encode(&self, saved_at_ms: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 24 * self.unsettled.len());
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&saved_at_ms.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        // Sorted, so the same state is the same bytes.
        let mut next: Vec<_> = self.next_sequence.iter().collect();
        next.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out.extend_from_slice(&(next.len() as u32).to_be_bytes());
        for ((topic, p), seq) in next {
            put_topic(&mut out, topic);
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
        }
        let mut unsettled: Vec<_> = self.unsettled.iter().collect();
        unsettled.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out.extend_from_slice(&(unsettled.len() as u32).to_be_bytes());
        for ((topic, p), u) in unsettled {
            put_topic(&mut out, topic);
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(&u.base_sequence.to_be_bytes());
            out.extend_from_slice(&(u.records.len() as u32).to_be_bytes());
            for fp in &u.records {
                out.extend_from_slice(&fp.to_be_bytes());
            }
        }
        out
    }

    /// The state `encode` wrote and when it was saved; every batch in doubt is marked as
    /// restored. Any malformed input is an error, never a panic.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(Idempotence, i64), String> {
        let mut r = Reader(bytes);
        if r.take(STATE_MAGIC.len())? != STATE_MAGIC {
            return Err("not a producer state (bad magic)".to_owned());
        }
        let saved_at_ms = i64::from_be_bytes(r.array()?);
        let mut state = Idempotence::new(
            i64::from_be_bytes(r.array()?),
            i16::from_be_bytes(r.array()?),
        );
        for _ in 0..r.count(10)? {
            let topic = r.topic()?;
            let p = i32::from_be_bytes(r.array()?);
            let seq = i32::from_be_bytes(r.array()?);
            state.next_sequence.insert((topic, p), seq);
        }
        for _ in 0..r.count(14)? {
            let key = (r.topic()?, i32::from_be_bytes(r.array()?));
            let base_sequence = i32::from_be_bytes(r.array()?);
            let n = r.count(8)?;
            let records = (0..n)
                .map(|_| r.array().map(u64::from_be_bytes))
                .collect::<Result<_, _>>()?;
            state.restored.push(key.clone());
            state.unsettled.insert(
                key,
                Unsettled {
                    base_sequence,
                    records,
                },
            );
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the producer state", r.0.len()));
        }
        Ok((state, saved_at_ms))
    }
}

const STATE_MAGIC: &[u8; 4] = b"GRKP";

fn put_topic(out: &mut Vec<u8>, topic: &str) {
    let bytes = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A bounds-checked cursor: every read says what was missing instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("producer state cut short".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A count of items of at least `min_item_bytes` each, checked against what is left, so a
    /// corrupt count can't make us reserve or loop for long.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        if n.saturating_mul(min_item_bytes) > self.0.len() {
            return Err(format!("producer state claims {n} items it does not hold"));
        }
        Ok(n)
    }

    fn topic(&mut self) -> Result<String, String> {
        let n = u16::from_be_bytes(self.array()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "topic not UTF-8".to_owned())
    }
}

/// Whether the records `idx` are, in order, those whose fingerprints are `saved`.
fn same_records(saved: &[u64], records: &[Record<'_>], idx: &[usize]) -> bool {
    saved.len() == idx.len()
        && saved
            .iter()
            .zip(idx)
            .all(|(&fp, &i)| fingerprint(records, &[i]) == fp)
}

/// The data of the records `idx` (keys, values, timestamps): tells a resend from other data.
pub(crate) fn fingerprint(records: &[Record<'_>], idx: &[usize]) -> u64 {
    // Two CRCs of different polynomials, both computed in hardware where the CPU has it
    // (crc32c: SSE4.2 / ARMv8 CRC; crc32fast, already linked by flate2: PCLMUL / ARMv8):
    // independent 32-bit halves, at memory speed. A byte-wise hash here was 97 % of the
    // producer's CPU (BENCHMARKS.md "What moved").
    let mut c = 0u32;
    let mut ieee = crc32fast::Hasher::new();
    let mut eat = |bytes: &[u8]| {
        c = crc32c::crc32c_append(c, bytes);
        ieee.update(bytes);
    };
    for &i in idx {
        let r = &records[i];
        match r.key {
            Some(key) => {
                eat(&(key.len() as u64).to_le_bytes());
                eat(key);
            }
            None => eat(&u64::MAX.to_le_bytes()),
        }
        eat(&(r.value.len() as u64).to_le_bytes());
        eat(r.value);
        eat(&r.timestamp_ms.to_le_bytes());
    }
    (u64::from(c) << 32) | u64::from(ieee.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(values: &[&'static str]) -> Vec<Record<'static>> {
        values
            .iter()
            .map(|v| Record {
                key: Some(b"k"),
                value: v.as_bytes(),
                timestamp_ms: 7,
            })
            .collect()
    }

    #[test]
    fn fingerprints_tell_data_apart_and_match_the_same_data() {
        let r = |key: Option<&'static [u8]>, value: &'static [u8], ts| Record {
            key,
            value,
            timestamp_ms: ts,
        };
        let fp = |rs: &[Record<'_>]| fingerprint(rs, &(0..rs.len()).collect::<Vec<_>>());
        let base = [r(Some(b"ab"), b"c", 1), r(None, b"x", 2)];
        assert_eq!(fp(&base), fp(&base.clone()));
        // Field boundaries count: the same bytes split differently are other data.
        for other in [
            [r(Some(b"a"), b"bc", 1), r(None, b"x", 2)],
            [r(Some(b"ab"), b"c", 1), r(Some(b""), b"x", 2)],
            [r(Some(b"ab"), b"c", 1), r(None, b"x", 3)],
            [r(Some(b"ab"), b"c", 1), r(None, b"y", 2)],
        ] {
            assert_ne!(fp(&base), fp(&other), "{other:?}");
        }
        // Both halves are in use.
        let v = fp(&base);
        assert_ne!(v >> 32, 0);
        assert_ne!(v & 0xffff_ffff, 0);
    }

    /// A state with an acknowledged partition and a batch in doubt on another.
    fn state_in_doubt(rs: &[Record<'_>]) -> Idempotence {
        let mut s = Idempotence::new(4242, 3);
        let mut seqs = HashMap::new();
        s.identity("t", 0, &mut seqs);
        s.commit_sequence("t", 0, 5, &mut seqs);
        s.identity("t", 1, &mut seqs);
        let batch = [0, 1];
        assert!(s.note_unsettled("t", rs, [(1, &batch[..])], &seqs));
        assert!(
            !s.note_unsettled("t", rs, [(1, &batch[..])], &seqs),
            "a resend is not new"
        );
        s
    }

    #[test]
    fn the_saved_state_restores_identity_sequences_and_batches_in_doubt() {
        let rs = records(&["a", "b", "c"]);
        let s = state_in_doubt(&rs);
        let bytes = s.encode(1_700_000_000_000);
        let (back, saved_at) = Idempotence::decode(&bytes).unwrap();
        assert_eq!(saved_at, 1_700_000_000_000);
        assert_eq!((back.producer_id, back.producer_epoch), (4242, 3));
        assert_eq!(back.next_sequence, s.next_sequence);
        assert_eq!(back.unsettled, s.unsettled);
        assert_eq!(back.restored_in_doubt(), 2);
        assert_eq!(bytes, back.encode(saved_at), "same state, same bytes");
        // The batch in doubt goes again first, alone, at its own sequence.
        let mut seqs = HashMap::new();
        assert_eq!(back.resend_selection("t", 1, &rs, &[0, 2, 1]), vec![0, 1]);
        assert_eq!(back.identity("t", 1, &mut seqs).base_sequence, 0);
        assert_eq!(back.identity("t", 0, &mut seqs).base_sequence, 5);
        // Other data at that sequence is detected.
        let other = BTreeMap::from([(1, vec![1, 2])]);
        assert!(back.reuses_unsettled_sequence("t", &rs, &other, &HashMap::new()));
    }

    #[test]
    fn a_record_in_doubt_goes_back_to_its_partition_and_others_are_free() {
        let rs = records(&["a", "b", "c"]);
        assert_eq!(
            Idempotence::new(1, 0).unsettled_partition_of("t", &rs[0]),
            None,
            "nothing in doubt"
        );
        let s = state_in_doubt(&rs);
        assert_eq!(s.unsettled_partition_of("t", &rs[1]), Some(1));
        assert_eq!(s.unsettled_partition_of("t", &rs[2]), None, "not in it");
        assert_eq!(s.unsettled_partition_of("u", &rs[1]), None, "another topic");
    }

    #[test]
    fn a_batch_in_doubt_not_among_the_records_in_order_leaves_them_whole() {
        let rs = records(&["a", "b", "c"]);
        let s = state_in_doubt(&rs);
        assert_eq!(s.resend_selection("t", 1, &rs, &[1, 0, 2]), vec![1, 0, 2]);
        assert_eq!(s.resend_selection("t", 1, &rs, &[0]), vec![0]);
        assert_eq!(s.resend_selection("t", 2, &rs, &[0, 1, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn any_damage_to_the_saved_state_is_an_error_not_a_panic() {
        let rs = records(&["a", "b", "c"]);
        let bytes = state_in_doubt(&rs).encode(1);
        for cut in 0..bytes.len() {
            assert!(Idempotence::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Idempotence::decode(&longer).is_err());
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            let _ = Idempotence::decode(&flipped);
        }
        let mut huge = bytes[..22].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Idempotence::decode(&huge).is_err());
    }
}
