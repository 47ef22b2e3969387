//! A feed's unsent snapshots and their way to the sink: the byte-bounded queue, the optional
//! spool, send attempts, exact resends, set-asides and drops — all counted.
//!
//! Owned by one feed loop; no schedule and no clock of its own beyond the deadlines and
//! retry times it is given and returns.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::kafka::Journal;
use crate::queue::{Queue, RecordSpan, Snapshot};
use crate::schedule::{jitter_noise, retry_delay};
use crate::sink::{Delivered, Landed, OutRecord, Sink, SinkError};
use crate::spool::{Spool, SpoolError};
use crate::stats::{now_unix, Stats};

/// The most document bytes sent in one produce request when catching up. Kept under the
/// brokers' default 1 MB `message.max.bytes`, which applies to a whole batch.
pub const MAX_SEND_BYTES: usize = 512 * 1024;

/// Called after every send attempt, so the feed can publish what changed.
pub type Progress<'a> = &'a mut dyn FnMut(&Outbox, &Stats);

/// What one successful send attempt delivered.
pub struct Sent {
    pub records: usize,
    pub last: Option<Landed>,
}

pub struct Outbox {
    sink: Box<dyn Sink + Send>,
    queue: Queue,
    queue_max_bytes: usize,
    spool: Option<Spool>,
    next_seq: u64,
    failures: u32,
    retry_at: Option<Instant>,
    /// How many records the failed attempt carried: the retry resends exactly those, so the
    /// idempotent producer's sequence numbers match and the broker drops a duplicate.
    retry_batch: Option<usize>,
    last_delivery_unix: Option<f64>,
    /// "[source_id] " in front of log lines when several feeds share the process.
    tag: String,
    /// The sink can never take anything again (stdout's reader is gone).
    closed: bool,
    /// The sink saves its delivery state in the spool's journal (the idempotent producer):
    /// then a finished snapshot's spool file is removed only after a journal that says so
    /// (`deferred`), so at every moment the spool and the journal together say what was in
    /// flight, and a restart resends exactly that.
    journaling: bool,
    /// Finished snapshots (sequence, records) whose spool files go after the next journal.
    deferred: Vec<(u64, u32)>,
    /// For the simulation's invariants: the values of records given up (set aside or dropped
    /// with the queue full) and why.
    #[cfg(test)]
    pub(crate) abandoned: Vec<(Vec<u8>, &'static str)>,
}

impl Outbox {
    /// Opens the spool (if configured) and queues what a previous run left in it.
    pub fn open(
        sink: Box<dyn Sink + Send>,
        spool_dir: Option<&Path>,
        queue_max_bytes: usize,
        tag: String,
        stats: &mut Stats,
    ) -> Result<Outbox, SpoolError> {
        let mut outbox = Outbox {
            sink,
            queue: Queue::new(queue_max_bytes),
            queue_max_bytes,
            spool: None,
            next_seq: 1,
            failures: 0,
            retry_at: None,
            retry_batch: None,
            last_delivery_unix: None,
            tag,
            closed: false,
            journaling: false,
            deferred: Vec::new(),
            #[cfg(test)]
            abandoned: Vec::new(),
        };
        if let Some(dir) = spool_dir {
            // A spool file holds one snapshot, which the queue bound also bounds; twice the
            // bound leaves room for the per-record framing.
            let max_file = (queue_max_bytes as u64)
                .saturating_mul(2)
                .saturating_add(64 << 10);
            let (spool, recovered) = Spool::open(dir, max_file)?;
            outbox.next_seq = recovered.next_seq;
            if !recovered.snapshots.is_empty() || recovered.corrupt > 0 {
                log::info!(
                    "{}spool {}: {} snapshots from a previous run are sent first ({} corrupt skipped)",
                    outbox.tag,
                    dir.display(),
                    recovered.snapshots.len(),
                    recovered.corrupt
                );
            }
            outbox.spool = Some(spool);
            let mut snapshots = recovered.snapshots;
            if let Some(journal) = recovered.journal {
                outbox.resume(&journal, &mut snapshots, stats);
            }
            for snapshot in snapshots {
                outbox.enqueue(snapshot, stats);
            }
        }
        Ok(outbox)
    }

    /// Takes over what the last journal of a previous run says: records of partly delivered
    /// snapshots that already landed are not sent again, and the sink resumes its delivery
    /// state (the producer's identity), so what was in flight at a crash goes again as it was.
    fn resume(&mut self, journal: &[u8], snapshots: &mut Vec<Snapshot>, stats: &mut Stats) {
        let Some((landed, next_seq, sink_state)) = parse_journal(journal) else {
            log::warn!(
                "{}spool: the delivery journal is unreadable; records sent just before the \
                 last stop may be duplicated",
                self.tag
            );
            return;
        };
        self.journaling = true;
        self.next_seq = self.next_seq.max(next_seq);
        let spool = self.spool.as_ref();
        snapshots.retain_mut(|s| {
            if let Some((flags, bits)) = landed.get(&s.seq).filter(|b| b.1.len() == s.records.len())
            {
                s.undelivered.retain(|&ri| !bits[ri as usize]);
                if s.is_delivered() {
                    // Done before the stop; only its file was left. Counted here unless the
                    // run before counted it.
                    if flags & COUNTED == 0 {
                        stats.delivered += 1;
                    }
                    if let Some(spool) = spool {
                        spool.remove(s.seq);
                    }
                    return false;
                }
            }
            true
        });
        let at: Vec<(usize, u32)> = snapshots
            .iter()
            .enumerate()
            .flat_map(|(si, s)| s.undelivered.iter().map(move |&ri| (si, ri)))
            .collect();
        let pending: Vec<OutRecord<'_>> = at
            .iter()
            .map(|&(si, ri)| {
                let s = &snapshots[si];
                let (key, value) = s.record(ri);
                OutRecord {
                    key,
                    value,
                    timestamp_ms: s.timestamp_ms,
                }
            })
            .collect();
        let restored = self.sink.restore(sink_state, &pending);
        drop(pending);
        match restored {
            Ok(Some(resumed)) => {
                log::info!("{}spool: {}", self.tag, resumed.what);
                // Acknowledged before the stop, after the journal was written.
                let landed: Vec<(usize, u32)> = at
                    .iter()
                    .zip(&resumed.landed)
                    .filter(|(_, &l)| l)
                    .map(|(&a, _)| a)
                    .collect();
                for (si, ri) in landed {
                    snapshots[si].undelivered.retain(|&r| r != ri);
                }
                let before = snapshots.len();
                snapshots.retain(|s| {
                    if s.is_delivered() {
                        if let Some(spool) = spool {
                            spool.remove(s.seq);
                        }
                    }
                    !s.is_delivered()
                });
                stats.delivered += (before - snapshots.len()) as u64;
                // Like the retry after a failed send: exactly those first, kept from drops.
                let first = resumed.resend_first
                    - resumed.landed[..resumed.resend_first.min(resumed.landed.len())]
                        .iter()
                        .filter(|&&l| l)
                        .count();
                if first > 0 {
                    self.retry_batch = Some(first);
                }
            }
            Ok(None) => {}
            Err(why) => log::warn!(
                "{}spool: the saved delivery state can't be used ({why}); a new producer id \
                 is taken",
                self.tag
            ),
        }
    }

    /// Queues (and spools) a new snapshot; returns its sequence number.
    pub fn push(
        &mut self,
        payload: Vec<u8>,
        records: Vec<RecordSpan>,
        timestamp_ms: i64,
        stats: &mut Stats,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.enqueue(Snapshot::new(seq, payload, records, timestamp_ms), stats);
        seq
    }

    /// Takes over snapshots another loop of the same feed left unsent (a reload), renumbered
    /// after this outbox's own.
    pub fn adopt(&mut self, snapshots: Vec<Snapshot>, stats: &mut Stats) {
        for mut s in snapshots {
            s.seq = self.next_seq;
            self.next_seq += 1;
            s.spooled = false;
            self.enqueue(s, stats);
        }
    }

    /// What is still queued and has no copy in this outbox's spool (for a hand-over).
    pub fn into_unspooled(mut self) -> Vec<Snapshot> {
        if !self.deferred.is_empty() {
            self.save_journal(&[], &[], &mut Stats::default());
        }
        let mut out = Vec::new();
        while let Some(s) = self.queue.pop_front() {
            if !s.spooled {
                out.push(s);
            }
        }
        out
    }

    /// Whatever the sink needs before the first send (`CREATE_TOPIC`), within `deadline`.
    pub fn prepare(&mut self, deadline: Instant) {
        self.sink.prepare(deadline);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn bytes(&self) -> usize {
        self.queue.bytes()
    }

    /// Queued snapshots with no spool file.
    pub fn unspooled(&self) -> usize {
        (0..self.queue.len())
            .filter_map(|i| self.queue.get(i))
            .filter(|s| !s.spooled)
            .count()
    }

    /// Whether the sink is gone for good (stdout closed by its reader).
    pub fn sink_closed(&self) -> bool {
        self.closed
    }

    pub fn last_delivery_unix(&self) -> Option<f64> {
        self.last_delivery_unix
    }

    /// When the queue may be sent next: now, after a failed attempt's backoff, or never
    /// (empty).
    pub fn send_at(&self, now: Instant) -> Option<Instant> {
        (!self.queue.is_empty()).then(|| self.retry_at.unwrap_or(now))
    }

    /// Sends queued snapshots oldest-first until the queue is empty, an attempt fails, or
    /// the deadline comes.
    pub fn send_backlog(&mut self, deadline: Instant, stats: &mut Stats, progress: Progress<'_>) {
        while !self.queue.is_empty() && Instant::now() < deadline {
            let sent = self.send_batch(deadline, stats);
            progress(self, stats);
            match sent {
                Ok(sent) => {
                    if let Some(last) = sent.last {
                        log::info!(
                            "{}delivered {} queued records (last {last}); {} snapshots still queued",
                            self.tag,
                            sent.records,
                            self.queue.len()
                        );
                    }
                }
                Err(e) => {
                    log::warn!(
                        "{}deliver failed ({} queued): {e}",
                        self.tag,
                        self.queue.len()
                    );
                    return;
                }
            }
        }
    }

    /// One send attempt of the queue's next records. What landed is acknowledged (finished
    /// snapshots leave the queue and the spool); what the broker refused for what it is is set
    /// aside, each record alone; what is left — fate unknown — is resent later as exactly the
    /// same records, so the idempotent producer's resend is deduplicated.
    pub fn send_batch(&mut self, deadline: Instant, stats: &mut Stats) -> Result<Sent, SinkError> {
        let max_records = self.retry_batch.unwrap_or(usize::MAX);
        let batch = self.queue.next_batch(MAX_SEND_BYTES, max_records);
        let records: Vec<OutRecord<'_>> = batch
            .iter()
            .filter_map(|&(si, ri)| {
                let snapshot = self.queue.get(si)?;
                let (key, value) = snapshot.record(ri);
                Some(OutRecord {
                    key,
                    value,
                    timestamp_ms: snapshot.timestamp_ms,
                })
            })
            .collect();
        // With a spool, the sink's delivery state is saved before it sends new data, together
        // with which records of partly delivered snapshots already landed: after a crash the
        // next start resends exactly what was in flight, under the same identity.
        let (queue, spool, deferred) = (&self.queue, self.spool.as_ref(), &mut self.deferred);
        let next_seq = self.next_seq;
        let mut journal_error = None;
        let mut saved = false;
        let mut save = |sink_state: &[u8], done: &[bool]| {
            if let Some(spool) = spool {
                let body = journal_body((queue, next_seq), (&batch, done), deferred, sink_state);
                match write_journal(spool, &body, deferred) {
                    Ok(()) => saved = true,
                    Err(e) => journal_error = Some(e),
                }
            }
        };
        let journal: Option<Journal<'_>> = match spool {
            Some(_) => Some(&mut save),
            None => None,
        };
        let Delivered {
            landed,
            refused,
            refusal,
            error,
        } = self.sink.deliver(&records, deadline, journal);
        drop(records);
        self.journaling |= saved;
        if let Some(e) = journal_error {
            stats.spool_errors += 1;
            log::warn!(
                "{}{e}; delivery state not saved: a crash before this send ends may duplicate it",
                self.tag
            );
        }
        let landed_at = |i: usize| landed.get(i).cloned().flatten();
        let acked: Vec<(usize, u32)> = (0..batch.len())
            .filter(|&i| landed_at(i).is_some())
            .map(|i| batch[i])
            .collect();
        let set_aside: Vec<(usize, u32)> = (0..batch.len())
            .filter(|&i| landed_at(i).is_none() && refused.get(i).copied().unwrap_or(false))
            .map(|i| batch[i])
            .collect();
        if self.journaling && !set_aside.is_empty() {
            // The sink settled the refused batches: saved before any file moves to rejected/,
            // so a restart never takes a refusal for an acknowledgement.
            let done: Vec<bool> = (0..batch.len())
                .map(|i| landed_at(i).is_some() || refused.get(i).copied().unwrap_or(false))
                .collect();
            self.save_journal(&batch, &done, stats);
        }
        let pending = batch.len() - acked.len() - set_aside.len();
        let sent = Sent {
            records: acked.len(),
            last: landed.iter().rev().flatten().next().cloned(),
        };
        let done = self.queue.acknowledge(&acked);
        // Indices as the queue is now, after the delivered snapshots in front left.
        let shift = done.len();
        for s in done {
            stats.delivered += 1;
            self.unspool(&s);
        }
        if !acked.is_empty() {
            self.last_delivery_unix = Some(now_unix());
        }
        // A refusal is reported with its own cause, not with whatever ended the call.
        let reason = refusal
            .as_ref()
            .or(error.as_ref())
            .map_or_else(|| "refused by the sink".to_string(), ToString::to_string);
        // Last first, so removing one never moves another still to handle.
        for &(si, ri) in set_aside.iter().rev() {
            self.set_aside(si - shift, ri, &reason, stats);
        }
        let Some(e) = error else {
            self.failures = 0;
            self.retry_at = None;
            self.retry_batch = None;
            return Ok(sent);
        };
        self.closed |= e.output_closed();
        if pending == 0 {
            // Everything else landed: the refusals were the whole trouble.
            self.failures = 0;
            self.retry_at = None;
            self.retry_batch = None;
            return Err(e);
        }
        stats.delivery_errors += 1;
        self.failures += 1;
        self.retry_batch = Some(pending);
        self.retry_at = Some(Instant::now() + retry_delay(self.failures, jitter_noise()));
        Err(e)
    }

    /// Takes a record the broker refused for what it is out of the queue: a whole one-record
    /// snapshot (kept in the spool's rejected/), or one entity of an entity-mode snapshot
    /// whose other records go on.
    fn set_aside(&mut self, si: usize, ri: u32, reason: &str, stats: &mut Stats) {
        let single = self.queue.get(si).is_some_and(|s| s.records.len() == 1);
        if single {
            stats.rejected += 1;
            if let Some(s) = self.queue.remove(si) {
                #[cfg(test)]
                self.abandoned.push((s.record(0).1.to_vec(), "refused"));
                let kept = self.keep_rejected(&s, stats);
                log::error!(
                    "{}snapshot {} ({} bytes of JSON) refused by the broker, {kept}: {reason}",
                    self.tag,
                    s.seq,
                    s.payload.len()
                );
            }
            return;
        }
        stats.rejected_records += 1;
        if let Some(s) = self.queue.get(si) {
            #[cfg(test)]
            self.abandoned.push((s.record(ri).1.to_vec(), "refused"));
            log::error!(
                "{}record {ri} of snapshot {} ({} bytes) refused by the broker and dropped: {reason}",
                self.tag,
                s.seq,
                s.record_len(ri)
            );
        }
        for done in self.queue.acknowledge(&[(si, ri)]) {
            stats.delivered += 1;
            self.unspool(&done);
        }
    }

    /// On stop: try to deliver what is queued before `deadline`; account for the rest.
    pub fn drain(&mut self, deadline: Instant, stats: &mut Stats, progress: Progress<'_>) {
        while !self.queue.is_empty() && Instant::now() < deadline {
            let sent = self.send_batch(deadline, stats);
            progress(self, stats);
            if sent.is_err() {
                let wait = self.retry_at.map_or(Duration::ZERO, |t| {
                    t.saturating_duration_since(Instant::now())
                });
                std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
        if !self.deferred.is_empty() {
            self.save_journal(&[], &[], stats);
        }
        let left = self.queue.len() as u64;
        let lost = self.unspooled() as u64;
        stats.unsent = left;
        stats.lost = lost;
        if left == 0 {
            return;
        }
        if lost == 0 {
            log::warn!(
                "{}{left} unsent snapshots stay in the spool for the next start",
                self.tag
            );
        } else if self.spool.is_some() {
            log::error!(
                "{}{left} unsent snapshots at exit: {} stay in the spool, {lost} lost \
                 (their spool writes had failed)",
                self.tag,
                left - lost
            );
        } else {
            log::error!(
                "{}{left} unsent snapshots lost at exit (set SPOOL_DIR to keep them)",
                self.tag
            );
        }
    }

    /// Spools (if configured) and queues a snapshot; drops the oldest beyond the bound.
    fn enqueue(&mut self, mut snapshot: Snapshot, stats: &mut Stats) {
        if let (Some(spool), false) = (&self.spool, snapshot.spooled) {
            match spool.write(&snapshot) {
                Ok(()) => snapshot.spooled = true,
                Err(e) => {
                    stats.spool_errors += 1;
                    log::error!(
                        "{}{e}; snapshot {} kept in memory only",
                        self.tag,
                        snapshot.seq
                    );
                }
            }
        }
        let dropped = self.queue.push_keeping(snapshot, self.snapshots_in_doubt());
        if !dropped.is_empty() {
            stats.dropped += dropped.len() as u64;
            // Each named: its sequence (as in the spool), its records' time, how many records.
            let seqs: Vec<String> = dropped
                .iter()
                .map(|s| {
                    let at =
                        crate::logger::utc_timestamp(u64::try_from(s.timestamp_ms).unwrap_or(0));
                    format!("seq {} at {at}, {} records", s.seq, s.undelivered.len())
                })
                .collect();
            log::warn!(
                "{}queue full (QUEUE_MAX_BYTES {}): dropped the {} oldest unsent snapshots \
                 ({}); {} dropped so far",
                self.tag,
                self.queue_max_bytes,
                dropped.len(),
                seqs.join("; "),
                stats.dropped
            );
            for s in &dropped {
                #[cfg(test)]
                for &ri in &s.undelivered {
                    self.abandoned.push((s.record(ri).1.to_vec(), "dropped"));
                }
                // Not deferred: a dropped snapshot is not done, and must not be counted as
                // delivered by the next start.
                if let (Some(spool), true) = (&self.spool, s.spooled) {
                    spool.remove(s.seq);
                }
            }
        }
    }

    /// How many snapshots at the front hold records of the failed send that will be resent
    /// exactly (`retry_batch`): they may already be in the log, so dropping them would force
    /// a new producer id and duplicate their neighbours.
    fn snapshots_in_doubt(&self) -> usize {
        let Some(mut records) = self.retry_batch else {
            return 0;
        };
        let mut snapshots = 0;
        while records > 0 {
            let Some(s) = self.queue.get(snapshots) else {
                break;
            };
            records = records.saturating_sub(s.undelivered.len());
            snapshots += 1;
        }
        snapshots
    }

    /// A refused snapshot leaves the queue; with a spool its file is kept aside.
    fn keep_rejected(&mut self, snapshot: &Snapshot, stats: &mut Stats) -> String {
        match (&self.spool, snapshot.spooled) {
            (Some(spool), true) => match spool.reject(snapshot.seq) {
                Ok(path) => format!("kept in {}", path.display()),
                Err(e) => {
                    stats.spool_errors += 1;
                    format!("dropped ({e})")
                }
            },
            _ => "dropped (no SPOOL_DIR to keep it)".to_string(),
        }
    }

    fn unspool(&mut self, snapshot: &Snapshot) {
        if let (Some(spool), true) = (&self.spool, snapshot.spooled) {
            if self.journaling {
                self.deferred
                    .push((snapshot.seq, snapshot.records.len() as u32));
            } else {
                spool.remove(snapshot.seq);
            }
        }
    }

    /// Writes the journal now, with the sink's current state (`done`: which records of
    /// `batch` are finished), and removes the deferred spool files it covers.
    fn save_journal(&mut self, batch: &[(usize, u32)], done: &[bool], stats: &mut Stats) {
        let (Some(spool), Some(sink_state)) = (&self.spool, self.sink.journal_state()) else {
            return;
        };
        let body = journal_body(
            (&self.queue, self.next_seq),
            (batch, done),
            &self.deferred,
            &sink_state,
        );
        if let Err(e) = write_journal(spool, &body, &mut self.deferred) {
            stats.spool_errors += 1;
            log::warn!("{}{e}; delivery state not saved", self.tag);
        }
    }
}

/// Writes a journal, then removes the deferred spool files it covers.
fn write_journal(
    spool: &Spool,
    body: &[u8],
    deferred: &mut Vec<(u64, u32)>,
) -> Result<(), SpoolError> {
    spool.write_journal(body)?;
    for (seq, _) in deferred.drain(..) {
        spool.remove(seq);
    }
    Ok(())
}

/// The journal: which records of spooled snapshots are done — delivered or set aside — in
/// partly sent snapshots (counting those `done` so far in the current call of `batch`) and
/// in finished ones whose files are `deferred`; then the sink's own state.
/// Layout: outbox part length u32; snapshot count u32; the next snapshot sequence u64 (so
/// numbers never repeat, even after the spool emptied); per snapshot its sequence u64, flags
/// u8 (`COUNTED`), record count u32 and a bitmap of done records; then the sink's bytes.
fn journal_body(
    (queue, next_seq): (&Queue, u64),
    (batch, done): (&[(usize, u32)], &[bool]),
    deferred: &[(u64, u32)],
    sink_state: &[u8],
) -> Vec<u8> {
    let mut part = Vec::new();
    let mut count = 0u32;
    for &(seq, n) in deferred {
        count += 1;
        let bits = vec![true; n as usize];
        put_entry(&mut part, seq, COUNTED, &bits);
    }
    // Records of this call done so far, by snapshot: one pass over the call.
    let mut done_now: HashMap<usize, Vec<u32>> = HashMap::new();
    for (&(si, ri), _) in batch.iter().zip(done).filter(|(_, &d)| d) {
        done_now.entry(si).or_default().push(ri);
    }
    for si in 0..queue.len() {
        let Some(s) = queue.get(si).filter(|s| s.spooled) else {
            continue;
        };
        let now = done_now.get(&si).map_or(&[][..], Vec::as_slice);
        // Untouched snapshots (nothing done yet) are the common case: nothing to say.
        if now.is_empty() && s.undelivered.len() == s.records.len() {
            continue;
        }
        let mut bits = vec![true; s.records.len()];
        for &ri in &s.undelivered {
            bits[ri as usize] = false;
        }
        for &ri in now {
            bits[ri as usize] = true;
        }
        count += 1;
        put_entry(&mut part, s.seq, 0, &bits);
    }
    let mut out = Vec::with_capacity(8 + part.len() + sink_state.len());
    out.extend_from_slice(&(12 + part.len() as u32).to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&next_seq.to_be_bytes());
    out.extend_from_slice(&part);
    out.extend_from_slice(sink_state);
    out
}

/// A journal entry's flag: the snapshot is finished and was counted (delivered) by the run
/// that wrote the journal; only its spool file was left.
const COUNTED: u8 = 1;

fn put_entry(part: &mut Vec<u8>, seq: u64, flags: u8, done: &[bool]) {
    part.extend_from_slice(&seq.to_be_bytes());
    part.push(flags);
    part.extend_from_slice(&(done.len() as u32).to_be_bytes());
    let mut packed = vec![0u8; done.len().div_ceil(8)];
    for (i, _) in done.iter().enumerate().filter(|(_, &d)| d) {
        packed[i / 8] |= 1 << (i % 8);
    }
    part.extend_from_slice(&packed);
}

/// Per snapshot sequence: its flags and which records are done.
type Done = HashMap<u64, (u8, Vec<bool>)>;

/// What `journal_body` wrote: done records by snapshot sequence, the next sequence, and the
/// sink's state. `None` when malformed (bounds checked, never a panic).
fn parse_journal(bytes: &[u8]) -> Option<(Done, u64, &[u8])> {
    let take_u32 = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let part_len = take_u32(bytes, 0)? as usize;
    let part = bytes.get(4..4usize.checked_add(part_len)?)?;
    let sink_state = &bytes[4 + part_len..];
    let count = take_u32(part, 0)?;
    let next_seq = u64::from_be_bytes(part.get(4..12)?.try_into().ok()?);
    let mut at = 12;
    let mut landed = HashMap::new();
    for _ in 0..count {
        let seq = u64::from_be_bytes(part.get(at..at + 8)?.try_into().ok()?);
        let flags = *part.get(at + 8)?;
        let n = take_u32(part, at + 9)? as usize;
        at += 13;
        let packed = part.get(at..at.checked_add(n.div_ceil(8))?)?;
        at += packed.len();
        let bits = (0..n)
            .map(|i| packed[i / 8] & (1 << (i % 8)) != 0)
            .collect();
        landed.insert(seq, (flags, bits));
    }
    (at == part.len()).then_some((landed, next_seq, sink_state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::KafkaError;
    use std::sync::{Arc, Mutex};

    /// What the in-memory sink does with the next attempt.
    #[derive(Clone, Debug)]
    enum Cue {
        /// Accept every record.
        Accept,
        /// Accept the first n records of the attempt, then fail retriably.
        AcceptThenFail(usize),
        /// Refuse record i of the attempt for its content (too large); accept the others.
        Refuse(usize),
    }

    fn too_large() -> SinkError {
        SinkError::Kafka(KafkaError::MessageTooLarge {
            broker: "b".into(),
            topic: "t".into(),
            partition: 0,
            batch_bytes: 2_000_000,
            largest_record_bytes: 2_000_000,
            compression: "none",
        })
    }

    /// A sink that follows a script of cues and records every value it accepted, in order.
    #[derive(Clone, Default)]
    struct ScriptedSink {
        cues: Arc<Mutex<Vec<Cue>>>,
        accepted: Arc<Mutex<Vec<Vec<u8>>>>,
        attempts: Arc<Mutex<Vec<usize>>>,
        /// Keeps a delivery state, as the Kafka sink: journalled before every send.
        journaling: bool,
    }

    impl ScriptedSink {
        fn with(cues: Vec<Cue>) -> ScriptedSink {
            let sink = ScriptedSink::default();
            *sink.cues.lock().unwrap() = cues;
            sink
        }
        fn accepted(&self) -> Vec<String> {
            let got = self.accepted.lock().unwrap();
            got.iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        }
    }

    impl Sink for ScriptedSink {
        fn journal_state(&self) -> Option<Vec<u8>> {
            self.journaling.then(|| b"state".to_vec())
        }

        fn deliver(
            &mut self,
            records: &[OutRecord<'_>],
            _: Instant,
            journal: Option<Journal<'_>>,
        ) -> Delivered {
            self.attempts.lock().unwrap().push(records.len());
            if let (true, Some(save)) = (self.journaling, journal) {
                save(b"state", &vec![false; records.len()]);
            }
            let cue = {
                let mut cues = self.cues.lock().unwrap();
                if cues.is_empty() {
                    Cue::Accept
                } else {
                    cues.remove(0)
                }
            };
            let retriable = || {
                SinkError::Kafka(KafkaError::Broker {
                    broker: "b".into(),
                    topic: "t".into(),
                    partition: Some(0),
                    code: 6,
                    message: None,
                    retriable: true,
                })
            };
            let mut landed = Vec::new();
            let mut refused = vec![false; records.len()];
            for (i, r) in records.iter().enumerate() {
                let ok = match cue {
                    Cue::Accept => true,
                    Cue::AcceptThenFail(n) => i < n,
                    Cue::Refuse(bad) => i != bad,
                };
                if ok {
                    self.accepted.lock().unwrap().push(r.value.to_vec());
                    landed.push(Some(Landed::Stdout));
                } else {
                    refused[i] = matches!(cue, Cue::Refuse(_));
                    landed.push(None);
                }
            }
            let error = match cue {
                Cue::Accept => None,
                Cue::AcceptThenFail(n) if n >= records.len() => None,
                Cue::AcceptThenFail(_) => Some(retriable()),
                Cue::Refuse(_) => Some(too_large()),
            };
            let refusal = refused.contains(&true).then(too_large);
            Delivered {
                landed,
                refused,
                refusal,
                error,
            }
        }
    }

    fn outbox(sink: &ScriptedSink, max_bytes: usize, spool: Option<&Path>) -> (Outbox, Stats) {
        let mut stats = Stats::default();
        let o = Outbox::open(
            Box::new(sink.clone()),
            spool,
            max_bytes,
            String::new(),
            &mut stats,
        )
        .unwrap();
        (o, stats)
    }

    /// An entity-mode snapshot: records "name:0", "name:1", …
    fn push_entities(o: &mut Outbox, name: &str, n: usize, stats: &mut Stats) {
        let mut payload = Vec::new();
        let mut spans = Vec::new();
        for i in 0..n {
            let start = payload.len() as u32;
            payload.extend_from_slice(format!("{name}:{i}").as_bytes());
            spans.push(RecordSpan {
                key: None,
                value: (start, payload.len() as u32 - start),
            });
        }
        o.push(payload, spans, 0, stats);
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn the_journal_says_which_records_are_done_and_carries_the_sink_state() {
        let dir = std::env::temp_dir().join(format!("grk-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sink = ScriptedSink::with(vec![]);
        let (mut o, mut stats) = outbox(&sink, 1 << 20, Some(&dir));
        push_entities(&mut o, "a", 10, &mut stats);
        push_entities(&mut o, "b", 3, &mut stats);
        o.queue.acknowledge(&[(0, 2), (0, 9)]);
        // In the call: record 0 of "b" (batch position 1) acknowledged so far.
        let batch = [(0, 3), (1, 0)];
        let body = journal_body((&o.queue, 77), (&batch, &[false, true]), &[(5, 9)], b"SINK");
        let (done, next_seq, sink_state) = parse_journal(&body).unwrap();
        assert_eq!((next_seq, sink_state), (77, &b"SINK"[..]));
        let bits = |seq: u64| {
            done[&seq]
                .1
                .iter()
                .map(|&b| u8::from(b))
                .collect::<Vec<_>>()
        };
        let a = o.queue.get(0).unwrap().seq;
        let b = o.queue.get(1).unwrap().seq;
        assert_eq!(bits(a), [0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(bits(b), [1, 0, 0]);
        assert_eq!(done[&a].0 & COUNTED, 0, "not finished: counted when it is");
        assert_eq!(bits(5), [1; 9], "a deferred file's snapshot is done");
        assert_eq!(done[&5].0 & COUNTED, COUNTED);
        // Damage is refused, never a panic.
        for cut in 0..body.len() - 4 {
            let _ = parse_journal(&body[..cut]);
        }
        assert!(parse_journal(&body[..10]).is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn delivers_in_order_and_empties() {
        let sink = ScriptedSink::default();
        let (mut o, mut stats) = outbox(&sink, 1 << 20, None);
        push_entities(&mut o, "a", 1, &mut stats);
        push_entities(&mut o, "b", 2, &mut stats);
        o.send_backlog(far(), &mut stats, &mut |_, _| {});
        assert!(o.is_empty());
        assert_eq!(sink.accepted(), ["a:0", "b:0", "b:1"]);
        assert_eq!(stats.delivered, 2);
        assert!(o.last_delivery_unix().is_some());
    }

    #[test]
    fn partial_acks_resend_exactly_the_missing_records_once() {
        let sink = ScriptedSink::with(vec![Cue::AcceptThenFail(2)]);
        let (mut o, mut stats) = outbox(&sink, 1 << 20, None);
        push_entities(&mut o, "s", 5, &mut stats);
        assert!(o.send_batch(far(), &mut stats).is_err());
        assert_eq!(stats.delivery_errors, 1);
        assert!(
            o.send_at(Instant::now()).unwrap() > Instant::now(),
            "backoff"
        );
        o.send_batch(far(), &mut stats).unwrap();
        assert_eq!(sink.accepted(), ["s:0", "s:1", "s:2", "s:3", "s:4"]);
        // The resend carried exactly the three unacknowledged records.
        assert_eq!(*sink.attempts.lock().unwrap(), [5, 3]);
        assert_eq!(stats.delivered, 1);
    }

    #[test]
    fn a_refused_record_is_set_aside_and_its_neighbours_go_once() {
        // The batch of 4 is refused for size; the outbox retries one at a time; record 2 is
        // refused alone and set aside.
        let sink = ScriptedSink::with(vec![
            Cue::Refuse(2),
            Cue::Accept,
            Cue::Accept,
            Cue::Refuse(0),
        ]);
        let (mut o, mut stats) = outbox(&sink, 1 << 20, None);
        push_entities(&mut o, "e", 4, &mut stats);
        for _ in 0..10 {
            if o.is_empty() {
                break;
            }
            let _ = o.send_batch(far(), &mut stats);
        }
        assert!(o.is_empty());
        let mut got = sink.accepted();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), sink.accepted().len(), "a record went twice");
        assert_eq!(got, ["e:0", "e:1", "e:3"]);
        assert_eq!(stats.rejected_records, 1);
        assert_eq!(stats.delivered, 1);
    }

    /// README "Exactly once across a crash": one journal write before a send of new data, one
    /// more after the broker refuses a record, and one at a stop that leaves finished
    /// snapshots' files — which go only once a journal covers them.
    #[test]
    fn the_journal_is_written_before_a_send_after_a_refusal_and_at_the_stop() {
        let dir = std::env::temp_dir().join(format!("grk-outbox-jw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sink = ScriptedSink::with(vec![Cue::Refuse(1)]);
        sink.journaling = true;
        let (mut o, mut stats) = outbox(&sink, 1 << 20, Some(&dir));
        push_entities(&mut o, "e", 3, &mut stats);
        let writes = |o: &Outbox| o.spool.as_ref().map_or(0, Spool::journal_generation);
        let snapshot_files = || {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("snap".as_ref()))
                .count()
        };
        assert_eq!(writes(&o), 0);
        let _ = o.send_batch(far(), &mut stats);
        assert_eq!(stats.rejected_records, 1);
        assert!(o.is_empty(), "records 0 and 2 landed, 1 set aside");
        assert_eq!(writes(&o), 2, "one before the send, one after the refusal");
        assert_eq!(snapshot_files(), 1, "finished, but no journal says so yet");
        o.drain(far(), &mut stats, &mut |_, _| {});
        assert_eq!(writes(&o), 3, "one at the stop");
        assert_eq!(snapshot_files(), 0, "removed once covered");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_refused_feed_snapshot_is_kept_aside_in_the_spool() {
        let dir = std::env::temp_dir().join(format!("grk-outbox-rej-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sink = ScriptedSink::with(vec![Cue::Refuse(0)]);
        let (mut o, mut stats) = outbox(&sink, 1 << 20, Some(&dir));
        push_entities(&mut o, "big", 1, &mut stats);
        push_entities(&mut o, "next", 1, &mut stats);
        assert!(o.send_batch(far(), &mut stats).is_err());
        assert_eq!(stats.rejected, 1);
        o.send_backlog(far(), &mut stats, &mut |_, _| {});
        assert_eq!(sink.accepted(), ["next:0"]);
        assert_eq!(std::fs::read_dir(dir.join("rejected")).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_it() {
        let sink = ScriptedSink::default();
        let (mut o, mut stats) = outbox(&sink, 20, None);
        for name in ["one", "two", "three", "four"] {
            push_entities(&mut o, name, 1, &mut stats);
        }
        assert!(stats.dropped >= 1);
        o.send_backlog(far(), &mut stats, &mut |_, _| {});
        let got = sink.accepted();
        assert_eq!(got.last().map(String::as_str), Some("four:0"));
        assert_eq!(stats.dropped + stats.delivered, 4, "{stats:?}");
    }

    #[test]
    fn drain_counts_what_stays_and_what_is_lost() {
        let sink = ScriptedSink::with(vec![Cue::AcceptThenFail(0); 100]);
        let (mut o, mut stats) = outbox(&sink, 1 << 20, None);
        push_entities(&mut o, "x", 1, &mut stats);
        push_entities(&mut o, "y", 1, &mut stats);
        o.drain(
            Instant::now() + Duration::from_millis(50),
            &mut stats,
            &mut |_, _| {},
        );
        assert_eq!((stats.unsent, stats.lost), (2, 2));
    }

    #[test]
    fn spooled_snapshots_survive_a_restart_and_leave_on_ack() {
        let dir = std::env::temp_dir().join(format!("grk-outbox-sp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let failing = ScriptedSink::with(vec![Cue::AcceptThenFail(0); 100]);
        let (mut o, mut stats) = outbox(&failing, 1 << 20, Some(&dir));
        push_entities(&mut o, "kept", 1, &mut stats);
        o.drain(Instant::now(), &mut stats, &mut |_, _| {});
        assert_eq!((stats.unsent, stats.lost), (1, 0));
        drop(o);
        let sink = ScriptedSink::default();
        let (mut o, mut stats) = outbox(&sink, 1 << 20, Some(&dir));
        assert_eq!(o.len(), 1);
        o.send_backlog(far(), &mut stats, &mut |_, _| {});
        assert_eq!(sink.accepted(), ["kept:0"]);
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .count();
        assert_eq!(files, 0, "acked snapshot left its spool file");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hand_over_keeps_unspooled_snapshots_in_order() {
        let failing = ScriptedSink::with(vec![Cue::AcceptThenFail(0); 100]);
        let (mut o, mut stats) = outbox(&failing, 1 << 20, None);
        push_entities(&mut o, "p", 1, &mut stats);
        push_entities(&mut o, "q", 1, &mut stats);
        let left = o.into_unspooled();
        let sink = ScriptedSink::default();
        let (mut next, mut stats) = outbox(&sink, 1 << 20, None);
        next.adopt(left, &mut stats);
        next.send_backlog(far(), &mut stats, &mut |_, _| {});
        assert_eq!(sink.accepted(), ["p:0", "q:0"]);
    }
}
