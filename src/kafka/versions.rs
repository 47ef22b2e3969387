//! API version negotiation: the versions this client speaks, the ApiVersions handshake with its
//! KIP-511 fallback, and the highest common version per API. No I/O.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
use kafka_protocol::protocol::StrBytes;

use super::error::KafkaError;
use super::response::{self, BrokerRange};
use super::wire;

/// Versions this client implements, per API, inclusive.
///
/// Produce starts at v3 (record batch v2 only); v13 addresses topics by id, so the producer drops
/// to v12 for a topic whose metadata carried no id. Metadata starts at v1 (null means "all topics"
/// from v1 on; we always name one topic).
pub(crate) const PRODUCE: (i16, i16) = (3, 13);
pub(crate) const METADATA: (i16, i16) = (1, 13);
pub(crate) const INIT_PRODUCER_ID: (i16, i16) = (0, 5);
/// From v4, -1 partitions / replication factor mean "the broker's default".
pub(crate) const CREATE_TOPICS: (i16, i16) = (4, 7);
pub(crate) const API_VERSIONS: (i16, i16) = (0, 4);
/// SaslHandshake v1 hands the tokens to SaslAuthenticate (v0 sent them raw, removed in Kafka 4).
pub(crate) const SASL_HANDSHAKE: (i16, i16) = (1, 1);
/// SaslAuthenticate v1 adds the session lifetime (KIP-368), v2 is flexible.
pub(crate) const SASL_AUTHENTICATE: (i16, i16) = (0, 2);

// UNSUPPORTED_VERSION: the code of a KIP-511 "please retry with a lower version" answer.
use super::codes::UNSUPPORTED_VERSION;

/// The version of each API to use on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Versions {
    pub produce: i16,
    pub metadata: i16,
    /// `None` when the broker cannot assign producer ids (idempotence unavailable).
    pub init_producer_id: Option<i16>,
    /// `None` when the broker can't create topics in a version we speak (`--create-topic`).
    pub create_topics: Option<i16>,
    /// The ApiVersions version that succeeded, for logs.
    pub api_versions: i16,
    /// `None` when the broker cannot do SASL the way we do (needed only with SASL configured).
    pub sasl_handshake: Option<i16>,
    pub sasl_authenticate: Option<i16>,
}

/// Highest version both sides speak, or `Err(broker range)` when the ranges do not meet.
fn pick(api: ApiKey, ours: (i16, i16), broker: &[BrokerRange]) -> Result<i16, Option<(i16, i16)>> {
    let theirs = broker
        .iter()
        .find(|r| r.api_key == api as i16)
        .ok_or(None)?;
    let (lo, hi) = (ours.0.max(theirs.min), ours.1.min(theirs.max));
    if lo <= hi {
        Ok(hi)
    } else {
        Err(Some((theirs.min, theirs.max)))
    }
}

/// Intersects the broker's ranges with ours.
pub(crate) fn negotiate(
    broker_addr: &str,
    broker: &[BrokerRange],
    api_versions: i16,
) -> Result<Versions, KafkaError> {
    let required = |api: ApiKey, ours: (i16, i16)| {
        pick(api, ours, broker).map_err(|theirs| KafkaError::UnsupportedVersion {
            broker: broker_addr.to_owned(),
            api: wire::api_name(api),
            ours,
            theirs,
        })
    };
    Ok(Versions {
        produce: required(ApiKey::Produce, PRODUCE)?,
        metadata: required(ApiKey::Metadata, METADATA)?,
        init_producer_id: pick(ApiKey::InitProducerId, INIT_PRODUCER_ID, broker).ok(),
        create_topics: pick(ApiKey::CreateTopics, CREATE_TOPICS, broker).ok(),
        api_versions,
        sasl_handshake: pick(ApiKey::SaslHandshake, SASL_HANDSHAKE, broker).ok(),
        sasl_authenticate: pick(ApiKey::SaslAuthenticate, SASL_AUTHENTICATE, broker).ok(),
    })
}

/// What the caller does after feeding an ApiVersions response to [`Handshake`].
#[derive(Debug, PartialEq)]
pub(crate) enum HandshakeStep {
    /// Negotiation finished.
    Done(Versions),
    /// The broker asked for a lower ApiVersions version: send [`Handshake::request`] again.
    Retry,
}

/// The ApiVersions exchange that opens every connection.
///
/// Starts at our highest version; a broker that does not know it answers (per KIP-511) with a v0
/// body carrying UNSUPPORTED_VERSION and its own ApiVersions range, and we retry at the highest
/// version we share, down to v0.
#[derive(Debug)]
pub(crate) struct Handshake {
    version: i16,
}

impl Handshake {
    pub(crate) fn new() -> Handshake {
        Handshake {
            version: API_VERSIONS.1,
        }
    }

    pub(crate) fn version(&self) -> i16 {
        self.version
    }

    pub(crate) fn request(&self) -> ApiVersionsRequest {
        // v3+ brokers validate these against [a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?.
        ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("gtfs-rt-kafka"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")))
    }

    /// Feeds the response frame (size prefix removed) to the request sent at [`Self::version`].
    pub(crate) fn on_response(
        &mut self,
        broker: &str,
        correlation_id: i32,
        mut frame: Bytes,
    ) -> Result<HandshakeStep, KafkaError> {
        let malformed = |detail: String| KafkaError::Malformed {
            broker: broker.to_owned(),
            api: "ApiVersions",
            detail,
        };
        // ApiVersions responses always use header v0, so a v0 fallback body parses after it.
        wire::check_header(
            ApiKey::ApiVersions,
            self.version,
            correlation_id,
            &mut frame,
        )
        .map_err(malformed)?;
        let code = match frame.get(..2) {
            Some(b) => i16::from_be_bytes([b[0], b[1]]),
            None => return Err(malformed("body shorter than its error code".to_owned())),
        };
        if code == UNSUPPORTED_VERSION && self.version > 0 {
            let theirs = response::api_versions(&frame, 0).ok().and_then(|r| {
                r.ranges
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map(|k| k.max)
            });
            let next = theirs.unwrap_or(0).clamp(0, self.version - 1);
            log::debug!(
                "kafka {broker}: ApiVersions v{} unsupported, retrying with v{next}",
                self.version
            );
            self.version = next;
            return Ok(HandshakeStep::Retry);
        }
        let response = response::api_versions(&frame, self.version)
            .map_err(|e| malformed(format!("v{}: {e}", self.version)))?;
        if response.error_code != 0 {
            return Err(KafkaError::broker_code(
                broker,
                "-",
                None,
                response.error_code,
                None,
            ));
        }
        let ranges = response.ranges;
        let versions = negotiate(broker, &ranges, self.version)?;
        log::debug!("kafka {broker}: negotiated {versions:?}");
        Ok(HandshakeStep::Done(versions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::wire::tests::broker_frame;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::ApiVersionsResponse;

    fn range(api: ApiKey, min: i16, max: i16) -> BrokerRange {
        BrokerRange {
            api_key: api as i16,
            min,
            max,
        }
    }

    #[test]
    fn negotiation_table() {
        struct Case {
            name: &'static str,
            broker: Vec<BrokerRange>,
            expect: Result<(i16, i16, Option<i16>), &'static str>,
        }
        let cases = [
            Case {
                name: "kafka 4.0",
                broker: vec![
                    range(ApiKey::Produce, 3, 12),
                    range(ApiKey::Metadata, 0, 12),
                    range(ApiKey::InitProducerId, 0, 5),
                ],
                expect: Ok((12, 12, Some(5))),
            },
            Case {
                name: "kafka 4.1 (produce v13 by topic id)",
                broker: vec![
                    range(ApiKey::Produce, 3, 13),
                    range(ApiKey::Metadata, 0, 13),
                    range(ApiKey::InitProducerId, 0, 6),
                ],
                expect: Ok((13, 13, Some(5))),
            },
            Case {
                name: "kafka 3.9",
                broker: vec![
                    range(ApiKey::Produce, 0, 11),
                    range(ApiKey::Metadata, 0, 12),
                    range(ApiKey::InitProducerId, 0, 5),
                ],
                expect: Ok((11, 12, Some(5))),
            },
            Case {
                name: "old broker without InitProducerId",
                broker: vec![range(ApiKey::Produce, 0, 7), range(ApiKey::Metadata, 0, 9)],
                expect: Ok((7, 9, None)),
            },
            Case {
                name: "produce v0..v2 only (pre record batch v2)",
                broker: vec![range(ApiKey::Produce, 0, 2), range(ApiKey::Metadata, 0, 5)],
                expect: Err("no common Produce version: client supports v3..=v13, broker v0..=v2"),
            },
            Case {
                name: "no metadata api",
                broker: vec![range(ApiKey::Produce, 3, 9)],
                expect: Err("no common Metadata version: client supports v1..=v13, broker does not offer the API"),
            },
        ];
        for case in cases {
            let got = negotiate("b:1", &case.broker, 3);
            match (got, case.expect) {
                (Ok(v), Ok((produce, metadata, init))) => {
                    assert_eq!(
                        (v.produce, v.metadata, v.init_producer_id),
                        (produce, metadata, init),
                        "{}",
                        case.name
                    )
                }
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{}: {e}", case.name),
                (got, expect) => panic!("{}: got {got:?}, expected {expect:?}", case.name),
            }
        }
    }

    fn api_versions_body(ranges: &[(ApiKey, i16, i16)], error_code: i16) -> ApiVersionsResponse {
        ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(
                ranges
                    .iter()
                    .map(|&(k, min, max)| {
                        ApiVersion::default()
                            .with_api_key(k as i16)
                            .with_min_version(min)
                            .with_max_version(max)
                    })
                    .collect(),
            )
    }

    #[test]
    fn handshake_at_v4() {
        let mut hs = Handshake::new();
        assert_eq!(hs.version(), 4);
        let body = api_versions_body(&[(ApiKey::Produce, 3, 12), (ApiKey::Metadata, 0, 12)], 0);
        let frame = broker_frame(ApiKey::ApiVersions, 4, 1, &body);
        let step = hs.on_response("b:1", 1, frame).unwrap();
        // Kafka 4: SaslHandshake v0..=1, SaslAuthenticate v0..=2; a v0-only handshake is no use.
        let mut sasl_hs = Handshake::new();
        let body = api_versions_body(
            &[
                (ApiKey::Produce, 3, 12),
                (ApiKey::Metadata, 0, 12),
                (ApiKey::SaslHandshake, 0, 1),
                (ApiKey::SaslAuthenticate, 0, 2),
            ],
            0,
        );
        let HandshakeStep::Done(v) = sasl_hs
            .on_response("b:1", 1, broker_frame(ApiKey::ApiVersions, 4, 1, &body))
            .unwrap()
        else {
            panic!("not done")
        };
        assert_eq!((v.sasl_handshake, v.sasl_authenticate), (Some(1), Some(2)));
        let old = [
            range(ApiKey::Produce, 3, 9),
            range(ApiKey::Metadata, 0, 9),
            range(ApiKey::SaslHandshake, 0, 0),
        ];
        assert_eq!(negotiate("b:1", &old, 3).unwrap().sasl_handshake, None);
        assert_eq!(
            step,
            HandshakeStep::Done(Versions {
                produce: 12,
                metadata: 12,
                init_producer_id: None,
                create_topics: None,
                api_versions: 4,
                sasl_handshake: None,
                sasl_authenticate: None,
            })
        );
    }

    #[test]
    fn handshake_falls_back_per_kip_511() {
        let mut hs = Handshake::new();
        // A broker knowing ApiVersions up to v2 answers a v4 request with a v0 body.
        let body = api_versions_body(&[(ApiKey::ApiVersions, 0, 2)], UNSUPPORTED_VERSION);
        let frame = broker_frame(ApiKey::ApiVersions, 0, 1, &body);
        assert_eq!(
            hs.on_response("b:1", 1, frame).unwrap(),
            HandshakeStep::Retry
        );
        assert_eq!(hs.version(), 2);
        let body = api_versions_body(&[(ApiKey::Produce, 3, 8), (ApiKey::Metadata, 0, 9)], 0);
        let frame = broker_frame(ApiKey::ApiVersions, 2, 2, &body);
        let HandshakeStep::Done(v) = hs.on_response("b:1", 2, frame).unwrap() else {
            panic!("not done")
        };
        assert_eq!((v.produce, v.metadata, v.api_versions), (8, 9, 2));
    }

    #[test]
    fn handshake_fallback_without_range_goes_to_v0_then_gives_up() {
        let mut hs = Handshake::new();
        let empty = api_versions_body(&[], UNSUPPORTED_VERSION);
        assert_eq!(
            hs.on_response("b:1", 1, broker_frame(ApiKey::ApiVersions, 0, 1, &empty))
                .unwrap(),
            HandshakeStep::Retry
        );
        assert_eq!(hs.version(), 0);
        let err = hs
            .on_response("b:1", 2, broker_frame(ApiKey::ApiVersions, 0, 2, &empty))
            .unwrap_err();
        assert!(err.to_string().contains("UNSUPPORTED_VERSION"), "{err}");
        // An unparseable fallback body still lowers the version rather than looping.
        let mut hs = Handshake::new();
        let garbage = Bytes::from_static(&[0, 0, 0, 1, 0, 35, 0xff]);
        assert_eq!(
            hs.on_response("b:1", 1, garbage).unwrap(),
            HandshakeStep::Retry
        );
        assert_eq!(hs.version(), 0);
    }

    #[test]
    fn handshake_rejects_garbage() {
        let mut hs = Handshake::new();
        for frame in [
            &[][..],
            &[0, 0, 0, 1][..],
            &[0, 0, 0, 1, 0][..],
            &[0, 0, 0, 2, 0, 0][..],
            &[0, 0, 0, 1, 0, 0, 9][..],
        ] {
            let err = hs
                .on_response("b:1", 1, Bytes::copy_from_slice(frame))
                .unwrap_err();
            assert!(matches!(err, KafkaError::Malformed { .. }), "{err}");
        }
    }
}
