//! Golden tests of `json::write_feed`/`transcode_feed`/`write_entity`: every fixture decoded and written must equal, byte for byte,
//! what Python's protobuf `MessageToDict` + `json.dumps` gave (tests/golden/generate.py wrote those files).
//!
//! Byte equality also pins key order and number spelling (`35.0` vs `35`, `1e-05`); on a mismatch the
//! message names the first differing JSON path, or the byte offset when only order or spelling differ.

use std::fs;
use std::path::{Path, PathBuf};

use gtfs_rt_kafka::decode::{decode_feed, FeedMessage};
use gtfs_rt_kafka::json::{transcode_feed, write_entity, write_feed, FieldNames};
use serde_json::Value;

const FIXTURE_DIRS: [&str; 2] = ["tests/fixtures/gtfs-rt", "tests/golden/synthetic"];
const GOLDEN_DIR: &str = "tests/golden";
/// The repo ships 19 real-world fixtures and 2 synthetic ones; fewer means files went missing.
const MIN_FIXTURES: usize = 21;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in FIXTURE_DIRS {
        let entries = fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            if path.extension().is_some_and(|ext| ext == "pb") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .expect("fixture has a name")
        .to_string_lossy()
        .into_owned()
}

fn golden(name: &str) -> Option<Vec<u8>> {
    let mut bytes = fs::read(root().join(GOLDEN_DIR).join(name)).ok()?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Some(bytes)
}

fn convert(pb: &Path, names: FieldNames) -> Vec<u8> {
    let body = fs::read(pb).unwrap_or_else(|e| panic!("{}: {e}", pb.display()));
    let feed = decode_feed(&body).unwrap_or_else(|e| panic!("{}: {e}", pb.display()));
    let mut out = Vec::new();
    write_feed(&mut out, &feed, names, None);
    out
}

/// The same document through the entity-at-a-time path.
fn transcode(pb: &Path, names: FieldNames) -> Vec<u8> {
    let body = fs::read(pb).unwrap_or_else(|e| panic!("{}: {e}", pb.display()));
    let mut out = Vec::new();
    let n_entities = transcode_feed(&mut out, &body, names, None)
        .unwrap_or_else(|e| panic!("{}: {e}", pb.display()));
    let feed = decode_feed(&body).expect("fixture decodes");
    assert_eq!(n_entities, feed.entity.len(), "{}", pb.display());
    out
}

/// None if equal; else where and how `ours` differs from `golden`.
fn compare(ours: &[u8], golden: &[u8]) -> Option<String> {
    if ours == golden {
        return None;
    }
    let parsed_ours: Value = match serde_json::from_slice(ours) {
        Ok(v) => v,
        Err(e) => return Some(format!("our output is not valid JSON: {e}")),
    };
    let parsed_golden: Value = serde_json::from_slice(golden).expect("golden is valid JSON");
    if let Some(diff) = first_diff("$", &parsed_ours, &parsed_golden) {
        return Some(diff);
    }
    let at = ours.iter().zip(golden).position(|(a, b)| a != b);
    let at = at.unwrap_or(ours.len().min(golden.len()));
    let context = |bytes: &[u8]| {
        let start = at.saturating_sub(60);
        String::from_utf8_lossy(&bytes[start..(at + 60).min(bytes.len())]).into_owned()
    };
    Some(format!(
        "same JSON value, different bytes (key order or number spelling) at byte {at}:\n  ours:   …{}…\n  golden: …{}…",
        context(ours),
        context(golden)
    ))
}

/// The first JSON path where the two values differ. Numbers compare by kind too: 35 ≠ 35.0.
fn first_diff(path: &str, ours: &Value, golden: &Value) -> Option<String> {
    match (ours, golden) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                let sub = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => {
                        if let Some(diff) = first_diff(&sub, x, y) {
                            return Some(diff);
                        }
                    }
                    (Some(x), None) => return Some(format!("{sub}: only in ours: {x}")),
                    (None, Some(y)) => return Some(format!("{sub}: only in golden: {y}")),
                    (None, None) => unreachable!("key comes from one of the maps"),
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if let Some(diff) = first_diff(&format!("{path}[{i}]"), x, y) {
                    return Some(diff);
                }
            }
            (a.len() != b.len()).then(|| {
                format!(
                    "{path}: {} elements in ours, {} in golden",
                    a.len(),
                    b.len()
                )
            })
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: ours {a}, golden {b}")),
    }
}

#[test]
fn write_feed_matches_python_goldens() {
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= MIN_FIXTURES,
        "found only {} fixtures",
        fixtures.len()
    );
    let mut failures = Vec::new();
    let mut n_camel = 0;
    for pb in &fixtures {
        let name = stem(pb);
        let Some(expected) = golden(&format!("{name}.json")) else {
            failures.push(format!(
                "{name}: no golden; run python3 tests/golden/generate.py"
            ));
            continue;
        };
        if let Some(diff) = compare(&convert(pb, FieldNames::Proto), &expected) {
            failures.push(format!("{name}.json: {diff}"));
        }
        if let Some(diff) = compare(&transcode(pb, FieldNames::Proto), &expected) {
            failures.push(format!("{name}.json, transcode_feed: {diff}"));
        }
        if let Some(expected) = golden(&format!("{name}.camel.json")) {
            n_camel += 1;
            if let Some(diff) = compare(&convert(pb, FieldNames::Camel), &expected) {
                failures.push(format!("{name}.camel.json: {diff}"));
            }
            if let Some(diff) = compare(&transcode(pb, FieldNames::Camel), &expected) {
                failures.push(format!("{name}.camel.json, transcode_feed: {diff}"));
            }
        }
    }
    assert!(n_camel >= 2, "camelCase goldens missing ({n_camel} found)");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Entities per fixture whose write_entity output is also compared, as parsed JSON, with the golden;
/// the rest are compared byte for byte with write_feed's rendering of the same entity.
const N_PARSED_ENTITIES: usize = 25;

#[test]
fn write_entity_matches_each_golden_entity() {
    for pb in fixtures() {
        let name = stem(&pb);
        let expected = golden(&format!("{name}.json")).expect("golden exists");
        let expected: Value = serde_json::from_slice(&expected).expect("golden is JSON");
        let body = fs::read(&pb).expect("fixture readable");
        let feed = decode_feed(&body).expect("fixture decodes");
        let header = feed.header.as_ref().expect("fixture has a header");
        let mut out = Vec::new();
        for (i, entity) in feed.entity.iter().enumerate() {
            out.clear();
            write_entity(&mut out, header, entity, FieldNames::Proto, None);
            // {"header":H,"entity":[E]} from write_feed, which the goldens pin, must become {"header":H,"entity":E}.
            let single = FeedMessage {
                header: Some(header.clone()),
                entity: vec![entity.clone()],
            };
            let mut as_feed = Vec::new();
            write_feed(&mut as_feed, &single, FieldNames::Proto, None);
            let as_feed = String::from_utf8(as_feed).expect("UTF-8");
            // A header string cannot hold an unescaped quote, so the first `,"entity":[` is the key.
            let (head, rest) = as_feed.split_once(",\"entity\":[").expect("entity key");
            let element = rest.strip_suffix("]}").expect("document end");
            let want = format!("{head},\"entity\":{element}}}");
            assert_eq!(
                String::from_utf8_lossy(&out),
                want.as_str(),
                "{name} entity {i}"
            );
            if i < N_PARSED_ENTITIES {
                let ours: Value = serde_json::from_slice(&out).expect("valid JSON");
                let want = serde_json::json!({
                    "header": expected["header"],
                    "entity": expected["entity"][i],
                });
                if let Some(diff) = first_diff("$", &ours, &want) {
                    panic!("{name} entity {i}: {diff}");
                }
            }
        }
    }
}
