//! One poll's data path: fetch → decode (once) → JSON records, for either record shape.
//!
//! Knows nothing of queues, schedules or Kafka: it turns a feed URL into the bytes to send.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Mode, RecordTimestamp, SkipUnchanged};
use crate::decode::{decode_entities, DecodeError};
use crate::fetch::{Fetch, FetchError, Fetched, Fetcher};
use crate::json::{transcode_feed_within, write_entity_within, Envelope, FieldNames, WriteError};
use crate::queue::RecordSpan;
use crate::sink::Landed;

/// Turns fetched bytes into the records to send.
pub struct Pipeline {
    fetcher: Fetcher,
    names: FieldNames,
    mode: Mode,
    record_timestamp: RecordTimestamp,
    source_id: String,
    event_type: String,
    /// Size of the last payload, to allocate the next one in one go.
    last_payload_len: usize,
    /// MAX_DOCUMENT_BYTES: the poll's JSON never grows past it.
    max_document_bytes: usize,
    skip_unchanged: SkipUnchanged,
    /// CRC32C and length of the last body that became a snapshot.
    last_body: Option<(u32, usize)>,
    /// `header.timestamp` of the last feed that became a snapshot.
    last_feed_timestamp: Option<u64>,
}

/// A poll that found nothing new to send, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchanged {
    NotModified,
    SameBody(usize),
    SameTimestamp(u64),
}

impl fmt::Display for Unchanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unchanged::NotModified => f.write_str("304 Not Modified"),
            Unchanged::SameBody(n) => write!(f, "same {n}-byte body as the last snapshot"),
            Unchanged::SameTimestamp(ts) => {
                write!(f, "header.timestamp {ts} same as the last snapshot")
            }
        }
    }
}

/// What a poll produced.
#[derive(Debug)]
pub enum PollOutcome {
    New(Polled),
    Unchanged(Unchanged),
}

/// What one successful fetch + convert produced.
#[derive(Debug)]
pub struct Polled {
    pub payload: Vec<u8>,
    pub records: Vec<RecordSpan>,
    pub timestamp_ms: i64,
    pub wire_bytes: u64,
    pub entities: usize,
    pub feed_timestamp: Option<u64>,
    pub document_bytes: usize,
}

#[derive(Debug)]
pub enum PollError {
    Fetch(FetchError),
    Decode {
        url: String,
        error: DecodeError,
    },
    /// The JSON would pass MAX_DOCUMENT_BYTES; refused while written, before it was built.
    TooLarge {
        url: String,
        limit: usize,
        entities: usize,
    },
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Fetch(e) => e.fmt(f),
            PollError::Decode { url, error } => write!(f, "decode {url}: {error}"),
            PollError::TooLarge {
                url,
                limit,
                entities,
            } => write!(
                f,
                "convert {url}: the JSON of this feed ({entities} entities) would pass \
                 MAX_DOCUMENT_BYTES ({limit} bytes); refused (raise MAX_DOCUMENT_BYTES / \
                 --max-document-bytes if the feed is genuine)"
            ),
        }
    }
}

impl std::error::Error for PollError {}

impl Pipeline {
    pub fn new(config: &Config) -> Pipeline {
        Pipeline {
            fetcher: Fetcher::new(&config.fetch)
                .with_conditional_get(config.skip_unchanged != SkipUnchanged::Off),
            names: config.names,
            mode: config.mode,
            record_timestamp: config.record_timestamp,
            source_id: config.source_id.clone(),
            event_type: config.event_type.clone(),
            last_payload_len: 0,
            max_document_bytes: config.max_document_bytes,
            skip_unchanged: config.skip_unchanged,
            last_body: None,
            last_feed_timestamp: None,
        }
    }

    /// Whether this body is the same snapshot as the last one (when asked to skip those).
    fn unchanged(&self, body: &[u8], feed_timestamp: Option<u64>) -> Option<Unchanged> {
        if self.skip_unchanged == SkipUnchanged::Off {
            return None;
        }
        if self.last_body == Some((crc32c::crc32c(body), body.len())) {
            return Some(Unchanged::SameBody(body.len()));
        }
        // Only an equal timestamp counts: one going backwards (a load balancer switching
        // between servers) is new data, so a stale server can never wedge the feed.
        match (
            self.skip_unchanged,
            feed_timestamp,
            self.last_feed_timestamp,
        ) {
            (SkipUnchanged::Timestamp, Some(ts), Some(last)) if ts == last => {
                Some(Unchanged::SameTimestamp(ts))
            }
            _ => None,
        }
    }

    /// Fetches, decodes and converts one snapshot. `producer_timestamp` is taken here, right
    /// before the documents are written: the moment they are handed on for sending.
    pub fn poll(&mut self) -> Result<PollOutcome, PollError> {
        let fetched = match self.fetcher.fetch().map_err(PollError::Fetch)? {
            Fetch::Body(fetched) => fetched,
            Fetch::NotModified => return Ok(PollOutcome::Unchanged(Unchanged::NotModified)),
        };
        let converted = self.convert(&fetched);
        let url = self.fetcher.redacted_url().to_string();
        converted.map_err(|error| match error {
            WriteError::Decode(error) => PollError::Decode { url, error },
            WriteError::TooLarge { limit, entities } => PollError::TooLarge {
                url,
                limit,
                entities,
            },
        })
    }

    /// Decodes and converts fetched bytes (a poll's, or an archived capture's in `replay`).
    pub fn convert(&mut self, fetched: &Fetched) -> Result<PollOutcome, WriteError> {
        let feed = decode_entities(&fetched.body).map_err(WriteError::Decode)?;
        if let Some(unchanged) = self.unchanged(&fetched.body, feed.header().timestamp) {
            return Ok(PollOutcome::Unchanged(unchanged));
        }
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let envelope = Envelope {
            producer_timestamp: sent_at.as_secs_f64(),
            source_id: &self.source_id,
            event_type: &self.event_type,
        };
        let feed_timestamp = feed.header().timestamp;
        let send_ms = i64::try_from(sent_at.as_millis()).unwrap_or(i64::MAX);
        let timestamp_ms = match (self.record_timestamp, feed_timestamp) {
            (RecordTimestamp::Feed, Some(ts)) => {
                i64::try_from(ts.saturating_mul(1000)).unwrap_or(send_ms)
            }
            _ => send_ms,
        };
        let max = self.max_document_bytes;
        let mut payload = Vec::with_capacity((self.last_payload_len + 4096).min(max));
        let records = match self.mode {
            Mode::Feed => {
                transcode_feed_within(
                    &mut payload,
                    &fetched.body,
                    self.names,
                    Some(&envelope),
                    max,
                )?;
                vec![span(None, 0, payload.len())]
            }
            Mode::Entity => {
                // Every record repeats the header: the bound is on all of them together.
                let mut records = Vec::with_capacity(feed.len().min(max / 64));
                let mut over = false;
                feed.try_for_each(|entity| {
                    if over {
                        return;
                    }
                    // The key is the entity id; an entity without one gets a null key.
                    let id = entity.id.as_deref().unwrap_or_default();
                    if payload.len().saturating_add(id.len()) > max {
                        over = true;
                        return;
                    }
                    let key_start = entity.id.as_ref().map(|id| {
                        let start = payload.len();
                        payload.extend_from_slice(id.as_bytes());
                        start
                    });
                    let value_start = payload.len();
                    over = !write_entity_within(
                        &mut payload,
                        feed.header(),
                        entity,
                        self.names,
                        Some(&envelope),
                        max,
                    );
                    records.push(span(key_start, value_start, payload.len()));
                })
                .map_err(WriteError::Decode)?;
                if over {
                    return Err(WriteError::TooLarge {
                        limit: max,
                        entities: feed.len(),
                    });
                }
                records
            }
        };
        self.last_payload_len = payload.len();
        if self.skip_unchanged != SkipUnchanged::Off {
            self.last_body = Some((crc32c::crc32c(&fetched.body), fetched.body.len()));
            self.last_feed_timestamp = feed_timestamp;
        }
        log::debug!(
            "decoded {} entities; {} records, {} bytes",
            feed.len(),
            records.len(),
            payload.len()
        );
        Ok(PollOutcome::New(Polled {
            document_bytes: payload.len(),
            payload,
            records,
            timestamp_ms,
            wire_bytes: fetched.wire_bytes,
            entities: feed.len(),
            feed_timestamp,
        }))
    }
}

/// A record's span from offsets in the payload: key from `key_start` to `value_start`.
fn span(key_start: Option<usize>, value_start: usize, end: usize) -> RecordSpan {
    // Payloads are far below 4 GiB (MAX_BODY_BYTES), so offsets fit in u32.
    let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    RecordSpan {
        key: key_start.map(|k| (at(k), at(value_start - k))),
        value: (at(value_start), at(end - value_start)),
    }
}

/// One line for a poll delivered at once: bytes, entities, feed timestamp, where, time.
pub fn describe(polled: &Polled, landed: &Landed, elapsed: Duration, now_unix: u64) -> String {
    format!(
        "poll ok: {} -> {landed} in {} ms",
        describe_poll(polled, now_unix),
        elapsed.as_millis()
    )
}

pub fn describe_poll(polled: &Polled, now_unix: u64) -> String {
    let feed_ts = match polled.feed_timestamp {
        Some(ts) if ts <= now_unix => format!("feed ts {ts} ({}s old)", now_unix - ts),
        Some(ts) => format!("feed ts {ts} ({}s in the future)", ts - now_unix),
        None => "no feed ts".to_string(),
    };
    format!(
        "{} bytes fetched, {} entities, {feed_ts}, {} bytes JSON",
        polled.wire_bytes, polled.entities, polled.document_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_line_names_everything() {
        let polled = Polled {
            payload: Vec::new(),
            records: Vec::new(),
            document_bytes: 9000,
            timestamp_ms: 0,
            wire_bytes: 2048,
            entities: 12,
            feed_timestamp: Some(1_000),
        };
        let landed = Landed::Kafka {
            topic: "dev_topic".into(),
            partition: 0,
            offset: 42,
        };
        assert_eq!(
            describe(&polled, &landed, Duration::from_millis(7), 1_003),
            "poll ok: 2048 bytes fetched, 12 entities, feed ts 1000 (3s old), \
             9000 bytes JSON -> dev_topic[0]@42 in 7 ms"
        );
        assert!(describe(&polled, &landed, Duration::ZERO, 990).contains("(10s in the future)"));
    }
}
