//! Untrusted feed bytes through the whole decode → JSON path, under both key namings: nothing
//! panics, every document parses as JSON, and the streaming path (`decode_entities` +
//! `transcode_feed`) agrees with the whole-feed path (`decode_feed` + `write_feed`) byte for byte,
//! and refuses exactly what it refuses, with the same kind of error (the streaming path names
//! the entity's field where the whole path names the feed's: it never decodes twice).
#![no_main]

mod alloc_guard;

#[global_allocator]
static ALLOC: alloc_guard::Guard = alloc_guard::Guard;

use gtfs_rt_kafka::decode::{decode_entities, decode_feed};
use gtfs_rt_kafka::json::{transcode_feed, write_entity, write_feed, Envelope, FieldNames};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

/// Entities also written one by one (`write_entity`); the same writers as in the whole feed, so
/// a few suffice.
const MAX_ENTITY_DOCS: usize = 2;

/// An error without prost's description of where it failed.
fn kind(e: &gtfs_rt_kafka::decode::DecodeError) -> String {
    // The memory bound is per entity on one path and per feed on the other (and needs inputs
    // above -max_len to trigger): same kind either way.
    if matches!(e, gtfs_rt_kafka::decode::DecodeError::TooLarge { .. }) {
        return "too large to decode".to_string();
    }
    let text = e.to_string();
    text.split("): ").next().unwrap_or(&text).to_string()
}

fuzz_target!(|data: &[u8]| {
    let envelope = Envelope {
        producer_timestamp: 1_732_442_400.123_456,
        source_id: "src \"quoted\" \\ \u{1} \u{2028}",
        event_type: "gtfs_realtime_vehicle",
    };
    let whole = decode_feed(data);
    let streamed = decode_entities(data);
    // decode_entities reads only the top level up front: a bad entity surfaces from
    // try_for_each, with decode_feed's error.
    match (&whole, &streamed) {
        (Ok(feed), Ok(entities)) => {
            assert_eq!(feed.header.as_ref(), Some(entities.header()));
            assert_eq!(feed.entity.len(), entities.len());
            let mut i = 0;
            entities
                .try_for_each(|entity| {
                    // Bytes, not PartialEq: a NaN float is equal to itself here.
                    assert_eq!(entity.encode_to_vec(), feed.entity[i].encode_to_vec());
                    i += 1;
                })
                .expect("decode_feed accepted what try_for_each refused");
        }
        (Err(a), Ok(entities)) => {
            let b = entities
                .try_for_each(|_| {})
                .expect_err("try_for_each accepted what decode_feed refused");
            assert_eq!(kind(a), kind(&b));
        }
        (Err(a), Err(b)) => assert_eq!(kind(a), kind(b)),
        (Ok(_), Err(b)) => panic!("decode_entities refused what decode_feed accepted: {b}"),
    }
    for names in [FieldNames::Proto, FieldNames::Camel] {
        // Whatever `out` held before must survive an error untouched.
        let mut streamed_doc = b"previous,".to_vec();
        let streamed_result = transcode_feed(&mut streamed_doc, data, names, Some(&envelope));
        let Ok(feed) = &whole else {
            let err =
                streamed_result.expect_err("transcode_feed accepted what decode_feed refused");
            assert_eq!(kind(&err), kind(whole.as_ref().err().unwrap()));
            assert_eq!(streamed_doc, b"previous,");
            continue;
        };
        let mut doc = Vec::new();
        write_feed(&mut doc, feed, names, Some(&envelope));
        assert_eq!(streamed_result.ok(), Some(feed.entity.len()));
        assert!(
            streamed_doc[b"previous,".len()..] == doc[..],
            "transcode_feed and write_feed differ"
        );
        check_json(&doc);
        let header = feed.header.as_ref().unwrap();
        for entity in feed.entity.iter().take(MAX_ENTITY_DOCS) {
            let mut one = Vec::new();
            write_entity(&mut one, header, entity, names, None);
            check_json(&one);
        }
    }
});

/// Valid JSON, one object, nothing after it (validated without building a tree).
fn check_json(doc: &[u8]) {
    assert_eq!(doc.first(), Some(&b'{'), "document is not an object");
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(doc) {
        panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(doc));
    }
}
