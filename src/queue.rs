//! Snapshots waiting for Kafka: a FIFO bounded by bytes, oldest dropped first (and counted).
//!
//! Pure data structure: no I/O, no clock. The app pushes each fetched snapshot and pops it
//! only once the sink acknowledged it, so a Kafka outage never stalls polling.

use std::collections::VecDeque;

/// One fetched snapshot, ready to send: one record (feed mode) or one per entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Increasing across runs; also names the spool file when there is one.
    pub seq: u64,
    /// The records' keys and values back to back; `records` says where each lies.
    pub payload: Vec<u8>,
    pub records: Vec<RecordSpan>,
    /// Records not acknowledged yet, in send order (a snapshot may take several requests).
    pub undelivered: Vec<u32>,
    pub timestamp_ms: i64,
    /// Whether a copy is on disk (so acking or dropping it must remove that copy).
    pub spooled: bool,
}

/// Where one record's key (if any) and value lie in a snapshot's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    pub key: Option<(u32, u32)>,
    pub value: (u32, u32),
}

impl Snapshot {
    /// A feed-mode snapshot: the whole document as one record without key.
    pub fn document(seq: u64, document: Vec<u8>, timestamp_ms: i64) -> Snapshot {
        let len = u32::try_from(document.len()).unwrap_or(u32::MAX);
        Snapshot::new(
            seq,
            document,
            vec![RecordSpan {
                key: None,
                value: (0, len),
            }],
            timestamp_ms,
        )
    }

    pub fn new(
        seq: u64,
        payload: Vec<u8>,
        records: Vec<RecordSpan>,
        timestamp_ms: i64,
    ) -> Snapshot {
        let n = u32::try_from(records.len()).unwrap_or(u32::MAX);
        Snapshot {
            seq,
            payload,
            records,
            undelivered: (0..n).collect(),
            timestamp_ms,
            spooled: false,
        }
    }

    /// Record `i`'s key and value. Spans are checked when built or read from disk; an
    /// out-of-range one yields empty slices rather than a panic.
    pub fn record(&self, i: u32) -> (Option<&[u8]>, &[u8]) {
        let slice = |(start, len): (u32, u32)| {
            let start = start as usize;
            self.payload
                .get(start..start.saturating_add(len as usize))
                .unwrap_or_default()
        };
        match self.records.get(i as usize) {
            Some(span) => (span.key.map(slice), slice(span.value)),
            None => (None, &[]),
        }
    }

    pub fn record_len(&self, i: u32) -> usize {
        let (key, value) = self.record(i);
        key.map_or(0, <[u8]>::len) + value.len()
    }

    pub fn is_delivered(&self) -> bool {
        self.undelivered.is_empty()
    }
}

#[derive(Debug)]
pub struct Queue {
    items: VecDeque<Snapshot>,
    bytes: usize,
    max_bytes: usize,
}

impl Queue {
    pub fn new(max_bytes: usize) -> Queue {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Appends `snapshot`; returns the oldest snapshots dropped to stay within the bound.
    /// A snapshot larger than the whole bound is kept alone rather than refused: the newest
    /// data is the most valuable, and the bound is about backlog, not one document.
    pub fn push(&mut self, snapshot: Snapshot) -> Vec<Snapshot> {
        self.push_keeping(snapshot, 0)
    }

    /// Like `push`, but the first `protected` snapshots are never dropped: records of theirs
    /// are in a send whose outcome is unknown, to be resent exactly as they were. Beyond the
    /// bound the oldest unprotected snapshots go; with nothing else left, the new one.
    pub fn push_keeping(&mut self, snapshot: Snapshot, protected: usize) -> Vec<Snapshot> {
        self.bytes += snapshot.payload.len();
        self.items.push_back(snapshot);
        let mut dropped = Vec::new();
        while self.bytes > self.max_bytes && self.items.len() > 1 {
            let victim = if protected < self.items.len() - 1 {
                protected
            } else if protected == 0 {
                0
            } else {
                self.items.len() - 1
            };
            if let Some(old) = self.items.remove(victim) {
                self.bytes -= old.payload.len();
                dropped.push(old);
            }
            if victim == self.items.len() {
                break;
            }
        }
        dropped
    }

    /// The next records to send, oldest first, as (snapshot index, record index): at most
    /// `max_records`, adding up to at most `max_bytes` (always at least one when anything is
    /// undelivered).
    pub fn next_batch(&self, max_bytes: usize, max_records: usize) -> Vec<(usize, u32)> {
        let mut batch = Vec::new();
        let mut total = 0;
        for (si, snapshot) in self.items.iter().enumerate() {
            for &ri in &snapshot.undelivered {
                total += snapshot.record_len(ri);
                if !batch.is_empty() && (total > max_bytes || batch.len() >= max_records) {
                    return batch;
                }
                batch.push((si, ri));
            }
        }
        batch
    }

    pub fn get(&self, index: usize) -> Option<&Snapshot> {
        self.items.get(index)
    }

    /// Marks records acknowledged; returns the fully delivered snapshots now removed from
    /// the front.
    pub fn acknowledge(&mut self, acked: &[(usize, u32)]) -> Vec<Snapshot> {
        for &(si, ri) in acked {
            if let Some(snapshot) = self.items.get_mut(si) {
                snapshot.undelivered.retain(|&r| r != ri);
            }
        }
        let mut done = Vec::new();
        while self.items.front().is_some_and(Snapshot::is_delivered) {
            if let Some(s) = self.items.pop_front() {
                self.bytes -= s.payload.len();
                done.push(s);
            }
        }
        done
    }

    /// Removes the snapshot at `index` whatever its state (the broker refused it).
    pub fn remove(&mut self, index: usize) -> Option<Snapshot> {
        let s = self.items.remove(index)?;
        self.bytes -= s.payload.len();
        Some(s)
    }

    /// Removes the oldest snapshot whatever its state (the broker refused it).
    pub fn pop_front(&mut self) -> Option<Snapshot> {
        let s = self.items.pop_front()?;
        self.bytes -= s.payload.len();
        Some(s)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(seq: u64, len: usize) -> Snapshot {
        Snapshot::document(seq, vec![b'x'; len], seq as i64)
    }

    /// A snapshot of `n` keyed records of `len` bytes each (key "k{i}").
    fn entities(seq: u64, n: u32, len: usize) -> Snapshot {
        let mut payload = Vec::new();
        let mut records = Vec::new();
        for i in 0..n {
            let key = format!("k{i}");
            let k = (payload.len() as u32, key.len() as u32);
            payload.extend_from_slice(key.as_bytes());
            let v = (payload.len() as u32, len as u32);
            payload.extend(std::iter::repeat_n(b'v', len));
            records.push(RecordSpan {
                key: Some(k),
                value: v,
            });
        }
        Snapshot::new(seq, payload, records, 0)
    }

    fn seqs(items: &[Snapshot]) -> Vec<u64> {
        items.iter().map(|s| s.seq).collect()
    }

    #[test]
    fn snapshots_of_a_send_in_doubt_are_never_dropped() {
        let doc = |n: u64| Snapshot::document(n, vec![b'x'; 10], 0);
        let mut q = Queue::new(25);
        q.push(doc(1));
        q.push(doc(2));
        // 1 is protected: 2 goes instead.
        let dropped = q.push_keeping(doc(3), 1);
        assert_eq!(dropped.iter().map(|s| s.seq).collect::<Vec<_>>(), [2]);
        // Everything but the new one protected: the new one goes.
        let dropped = q.push_keeping(doc(4), 2);
        assert_eq!(dropped.iter().map(|s| s.seq).collect::<Vec<_>>(), [4]);
        assert_eq!(q.len(), 2);
        assert_eq!(q.get(0).unwrap().seq, 1);
        assert_eq!(q.get(1).unwrap().seq, 3);
    }

    #[test]
    fn drops_oldest_beyond_the_byte_bound() {
        let mut q = Queue::new(100);
        assert!(q.push(snap(1, 40)).is_empty());
        assert!(q.push(snap(2, 40)).is_empty());
        assert_eq!(seqs(&q.push(snap(3, 40))), [1]);
        assert_eq!(q.bytes(), 80);
        assert_eq!(seqs(&q.push(snap(4, 90))), [2, 3]);
        assert_eq!(q.len(), 1);
        // Larger than the bound on its own: kept, everything older goes.
        assert_eq!(seqs(&q.push(snap(5, 500))), [4]);
        assert_eq!(q.next_batch(1000, usize::MAX), [(0, 0)]);
    }

    #[test]
    fn batches_take_records_oldest_first_within_limits() {
        let mut q = Queue::new(10_000);
        for seq in 1..=5 {
            q.push(snap(seq, 30));
        }
        assert_eq!(q.next_batch(100, usize::MAX), [(0, 0), (1, 0), (2, 0)]);
        assert_eq!(
            q.next_batch(10, usize::MAX),
            [(0, 0)],
            "at least one, even if larger"
        );
        assert_eq!(q.next_batch(1000, 2), [(0, 0), (1, 0)]);
        assert_eq!(q.next_batch(1000, 0), [(0, 0)], "at least one");
        assert_eq!(seqs(&q.acknowledge(&[(0, 0), (1, 0)])), [1, 2]);
        assert_eq!(q.next_batch(1000, usize::MAX), [(0, 0), (1, 0), (2, 0)]);
        assert_eq!(q.bytes(), 90);
    }

    #[test]
    fn partly_delivered_snapshots_resend_only_what_is_missing() {
        let mut q = Queue::new(10_000);
        q.push(entities(1, 4, 10));
        q.push(entities(2, 2, 10));
        let (key, value) = q.get(0).unwrap().record(2);
        assert_eq!(key, Some(&b"k2"[..]));
        assert_eq!(value, &[b'v'; 10][..]);
        // Records 0 and 2 of the first snapshot landed, 1 and 3 did not.
        assert!(q.acknowledge(&[(0, 0), (0, 2)]).is_empty());
        assert_eq!(
            q.next_batch(1000, usize::MAX),
            [(0, 1), (0, 3), (1, 0), (1, 1)]
        );
        assert_eq!(seqs(&q.acknowledge(&[(0, 1), (0, 3)])), [1]);
        assert_eq!(q.next_batch(1000, usize::MAX), [(0, 0), (0, 1)]);
        assert_eq!(q.pop_front().map(|s| s.seq), Some(2));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn bad_spans_never_panic() {
        let s = Snapshot::new(
            1,
            b"abc".to_vec(),
            vec![RecordSpan {
                key: Some((2, 99)),
                value: (u32::MAX, 5),
            }],
            0,
        );
        assert_eq!(s.record(0), (Some(&b""[..]), &b""[..]));
        assert_eq!(s.record(7), (None, &b""[..]));
    }
}
