//! The multi-feed config file, read with the `toml` crate (TOML 1.0/1.1: every string, number
//! and table form a user may write), then flattened into settings as text so they go through
//! exactly the validation of the environment and flags.
//!
//! Top-level keys are defaults for every feed. Feeds are `[[feed]]` tables (or `feed = [{…}]`),
//! or named tables `[feed.NAME]`, whose name is the feed's `source_id` unless it sets one. Keys
//! are the environment variable names, case-insensitive (`kafka_topic`, `KAFKA_TOPIC`).
//! Values: strings, integers (`16_777_216`, `0x10`), floats, booleans.

use std::fmt;

use toml::{Table, Value};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Top-level settings: defaults for every feed.
    pub defaults: Vec<(String, String)>,
    /// One settings table per feed, in file order.
    pub feeds: Vec<Vec<(String, String)>>,
}

/// Why the file was refused: TOML's own message (with line and column), or which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl ConfigFile {
    /// The value of `key` for feed `index`: the feed's own, else the file's default.
    pub fn get(&self, index: usize, key: &str) -> Option<&str> {
        self.feeds
            .get(index)
            .and_then(|f| lookup(f, key))
            .or_else(|| lookup(&self.defaults, key))
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn error(reason: String) -> ParseError {
    ParseError { reason }
}

pub fn parse(text: &str) -> Result<ConfigFile, ParseError> {
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| error(one_line(&e.to_string())))?;
    let mut file = ConfigFile::default();
    for (key, value) in &table {
        if key.eq_ignore_ascii_case("feed") {
            file.feeds = feeds(value)?;
        } else {
            push(&mut file.defaults, key, value, "the top level")?;
        }
    }
    Ok(file)
}

/// `[[feed]]` / `feed = [{…}]` (an array of tables) or `[feed.NAME]` (a table of tables).
fn feeds(value: &Value) -> Result<Vec<Vec<(String, String)>>, ParseError> {
    let mut out = Vec::new();
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Table(t) = item else {
                    return Err(error(format!(
                        "feed #{} is not a table: write [[feed]] sections",
                        i + 1
                    )));
                };
                out.push(settings(t, &format!("[[feed]] #{}", i + 1))?);
            }
        }
        Value::Table(named) => {
            for (name, item) in named {
                let Value::Table(t) = item else {
                    return Err(error(format!(
                        "feed.{name} is not a table: write [feed.{name}] sections, or [[feed]]"
                    )));
                };
                let mut pairs = settings(t, &format!("[feed.{name}]"))?;
                if lookup(&pairs, "source_id").is_none() {
                    pairs.push(("source_id".to_string(), name.clone()));
                }
                out.push(pairs);
            }
        }
        _ => {
            return Err(error(
                "feed must be [[feed]] tables or [feed.NAME] tables".to_string(),
            ))
        }
    }
    Ok(out)
}

fn settings(table: &Table, place: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut pairs = Vec::new();
    for (key, value) in table {
        push(&mut pairs, key, value, place)?;
    }
    Ok(pairs)
}

/// One `key = value` as setting text; the same key twice (in two spellings) is an error.
fn push(
    pairs: &mut Vec<(String, String)>,
    key: &str,
    value: &Value,
    place: &str,
) -> Result<(), ParseError> {
    let name = key.to_ascii_lowercase();
    if lookup(pairs, &name).is_some() {
        return Err(error(format!("{key} is set twice in {place}")));
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        Value::Float(f) if f.is_finite() => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Float(f) => {
            return Err(error(format!(
                "{key} in {place}: {f} is not a finite number"
            )))
        }
        Value::Table(_) => {
            return Err(error(format!(
                "unknown setting {key:?} in {place}: a table (or dotted key) is not a setting; \
                 only feed.NAME tables are known"
            )))
        }
        Value::Array(_) | Value::Datetime(_) => {
            return Err(error(format!(
                "{key} in {place}: write the value as a string or a number"
            )))
        }
    };
    pairs.push((name, text));
    Ok(())
}

/// TOML's message spans several lines (a source excerpt); one log line keeps the first and
/// the caret's note.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let head = lines.first().copied().unwrap_or("invalid TOML");
    let detail = lines
        .iter()
        .rev()
        .find(|l| !l.starts_with('|') && !l.contains(" | ") && !l.starts_with("-->"))
        .copied()
        .filter(|l| *l != head);
    match detail {
        Some(d) => format!("{head}: {d}"),
        None => head.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_feeds() {
        let text = r#"
# shared
kafka_broker = "kafka:9092"   # comment after a value
poll_interval = 60

[[feed]]
source_id = "toei_vehicle"
vehicle_url = "https://example.org/vp?acl:consumerKey=k#frag"
mode = "entity"

[[feed]]
source_id = "toei_alerts"
poll_interval = 120
skip_unchanged = "timestamp"
create_topic = true
"#;
        let file = parse(text).unwrap();
        assert_eq!(file.feeds.len(), 2);
        assert_eq!(file.get(0, "kafka_broker"), Some("kafka:9092"));
        assert_eq!(file.get(0, "poll_interval"), Some("60"));
        assert_eq!(file.get(1, "poll_interval"), Some("120"));
        assert_eq!(
            file.get(0, "vehicle_url"),
            Some("https://example.org/vp?acl:consumerKey=k#frag")
        );
        assert_eq!(file.get(1, "create_topic"), Some("true"));
        assert_eq!(file.get(1, "mode"), None);
    }

    /// Files a user may write, each with the meaning TOML gives it.
    #[test]
    fn every_toml_form_of_a_value_or_table() {
        let check = |text: &str, key: &str, expected: &str| {
            let file = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(file.get(0, key), Some(expected), "{text}");
        };
        check(
            "[[feed]]\nkafka_topic = 'literal'\n",
            "kafka_topic",
            "literal",
        );
        check("[[feed]]\nx = \"\"\"\nmulti\"\"\"\n", "x", "multi");
        check("[[feed]]\nx = '''C:\\raw'''\n", "x", "C:\\raw");
        check(
            "[[feed]]\nqueue_max_bytes = 16_777_216\n",
            "queue_max_bytes",
            "16777216",
        );
        check(
            "[[feed]]\nqueue_max_bytes = 0x100\n",
            "queue_max_bytes",
            "256",
        );
        check("[[feed]]\nx = \"caf\\u00e9\"\n", "x", "café");
        check("[[feed]]\n\"kafka_topic\" = \"q\"\n", "kafka_topic", "q");
        check("[[feed]]\nKAFKA_TOPIC = \"u\"\n", "kafka_topic", "u");
        check("[[ feed ]]\nx = 1\n", "x", "1");
        check("feed = [{ x = 2 }]\n", "x", "2");
        check("[feed.toei]\nx = 3\n", "source_id", "toei");
        check("[feed.toei]\nsource_id = \"own\"\n", "source_id", "own");
        check("poll_interval = 0.5\n[[feed]]\n", "poll_interval", "0.5");
        check("[[feed]]\nx = 1e3\n", "x", "1000");
    }

    #[test]
    fn invalid_files_are_refused_naming_the_line_or_key() {
        let check = |text: &str, reason: &str| {
            let e = parse(text).unwrap_err();
            assert!(e.reason.contains(reason), "{text:?}: {e}");
            assert_eq!(e.reason.lines().count(), 1, "{e}");
        };
        check("[[feed]]\nmode = entity\n", "line 2");
        check("x = .5\n", "line 1");
        check("x = 007\n", "line 1");
        check("x = 5.\n", "line 1");
        check("x = nan\n[[feed]]\n", "not a finite number");
        check("x = \"a\u{1}b\"\n", "line 1");
        check("[[feed]]\na = 1\na = 2\n", "line 3");
        check("[[feed]]\na = 1\nA = 2\n", "set twice");
        check("[other]\nx = 1\n", "unknown setting \"other\"");
        check("kafka.topic = \"x\"\n", "unknown setting \"kafka\"");
        check("x = [1, 2]\n", "string or a number");
        check("feed = 3\n", "feed must be");
    }
}
