//! Snapshots waiting for Kafka: a FIFO bounded by bytes, oldest dropped first (and counted).
//!
//! Pure data structure: no I/O, no clock. The app pushes each fetched snapshot and pops it
//! only once the sink acknowledged it, so a Kafka outage never stalls polling.

use std::collections::VecDeque;

/// One fetched snapshot, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Increasing per process run; also names the spool file when there is one.
    pub seq: u64,
    pub document: Vec<u8>,
    pub timestamp_ms: i64,
    /// Whether a copy is on disk (so acking or dropping it must remove that copy).
    pub spooled: bool,
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
        self.bytes += snapshot.document.len();
        self.items.push_back(snapshot);
        let mut dropped = Vec::new();
        while self.bytes > self.max_bytes && self.items.len() > 1 {
            if let Some(old) = self.items.pop_front() {
                self.bytes -= old.document.len();
                dropped.push(old);
            }
        }
        dropped
    }

    /// The oldest snapshots, at most `max_items`, whose documents add up to at most
    /// `max_bytes` (always at least one when the queue is not empty), to send in one
    /// request, in order.
    pub fn head(&mut self, max_bytes: usize, max_items: usize) -> &[Snapshot] {
        // Pushes may have wrapped the ring; one slice makes grouping simple (a no-op when
        // already contiguous).
        let front: &[Snapshot] = self.items.make_contiguous();
        let mut total = 0;
        let mut n = 0;
        for s in front {
            total += s.document.len();
            if n > 0 && (total > max_bytes || n >= max_items) {
                break;
            }
            n += 1;
        }
        &front[..n]
    }

    /// Removes the `n` oldest snapshots (after they were acknowledged).
    pub fn pop(&mut self, n: usize) -> Vec<Snapshot> {
        let n = n.min(self.items.len());
        let popped: Vec<Snapshot> = self.items.drain(..n).collect();
        self.bytes -= popped.iter().map(|s| s.document.len()).sum::<usize>();
        popped
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
        Snapshot {
            seq,
            document: vec![b'x'; len],
            timestamp_ms: seq as i64,
            spooled: false,
        }
    }

    fn seqs(items: &[Snapshot]) -> Vec<u64> {
        items.iter().map(|s| s.seq).collect()
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
        assert_eq!(seqs(q.head(1000, usize::MAX)), [5]);
    }

    #[test]
    fn head_groups_oldest_first_within_a_request_size() {
        let mut q = Queue::new(1000);
        for seq in 1..=5 {
            q.push(snap(seq, 30));
        }
        assert_eq!(seqs(q.head(100, usize::MAX)), [1, 2, 3]);
        assert_eq!(
            seqs(q.head(10, usize::MAX)),
            [1],
            "at least one, even if larger"
        );
        assert_eq!(seqs(q.head(1000, 2)), [1, 2]);
        assert_eq!(seqs(q.head(1000, 0)), [1], "at least one");
        assert_eq!(seqs(&q.pop(2)), [1, 2]);
        assert_eq!(seqs(q.head(1000, usize::MAX)), [3, 4, 5]);
        assert_eq!(q.bytes(), 90);
        q.pop(10);
        assert!(q.is_empty());
        assert!(q.head(100, usize::MAX).is_empty());
    }

    #[test]
    fn head_sees_everything_after_wraparound() {
        let mut q = Queue::new(10_000);
        for seq in 1..=8 {
            q.push(snap(seq, 10));
        }
        q.pop(6);
        for seq in 9..=20 {
            q.push(snap(seq, 10));
        }
        assert_eq!(seqs(q.head(10_000, usize::MAX)).len(), q.len());
    }
}
