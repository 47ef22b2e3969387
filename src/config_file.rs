//! The multi-feed config file: the small part of TOML it needs, parsed by hand so the binary
//! carries no TOML/serde machinery.
//!
//! Top-level `key = value` pairs are defaults for every feed; each `[[feed]]` table is one
//! feed. Keys are the environment variable names in lower case (`vehicle_url`,
//! `kafka_topic`, `poll_interval`, …) and go through the same validation as env and flags.
//! Values: "strings" (with \" \\ \n \t escapes), integers, floats, true/false.

use std::fmt;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Top-level settings: defaults for every feed.
    pub defaults: Vec<(String, String)>,
    /// One settings table per `[[feed]]`.
    pub feeds: Vec<Vec<(String, String)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
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
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl ConfigFile {}

pub fn parse(text: &str) -> Result<ConfigFile, ParseError> {
    let mut file = ConfigFile::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |reason: String| ParseError { line, reason };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with('[') {
            if strip_comment(trimmed).trim() != "[[feed]]" {
                return Err(err(format!("{trimmed:?}: the only table is [[feed]]")));
            }
            file.feeds.push(Vec::new());
            continue;
        }
        let (key, value) = trimmed
            .split_once('=')
            .ok_or_else(|| err(format!("{trimmed:?} is not `key = value`")))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!(
                "{key:?} is not a setting name like kafka_topic"
            )));
        }
        let value = parse_value(value.trim()).map_err(err)?;
        let table = match file.feeds.last_mut() {
            Some(feed) => feed,
            None => &mut file.defaults,
        };
        if table.iter().any(|(k, _)| k == key) {
            return Err(err(format!("{key} is set twice in the same table")));
        }
        table.push((key.to_string(), value));
    }
    Ok(file)
}

fn parse_value(v: &str) -> Result<String, String> {
    if let Some(rest) = v.strip_prefix('"') {
        return parse_string(rest);
    }
    let bare = strip_comment(v).trim();
    let is_number = bare.parse::<f64>().is_ok() && !bare.is_empty();
    if bare == "true" || bare == "false" || is_number {
        return Ok(bare.to_string());
    }
    Err(format!(
        "{v:?} is not a \"string\", a number, true or false"
    ))
}

/// The rest of a basic string after its opening quote; only a comment may follow it.
fn parse_string(rest: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let after = strip_comment(&rest[i + 1..]).trim();
                if !after.is_empty() {
                    return Err(format!("unexpected {after:?} after the string"));
                }
                return Ok(out);
            }
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
            },
            c => out.push(c),
        }
    }
    Err("unterminated string".to_string())
}

fn strip_comment(v: &str) -> &str {
    v.split_once('#').map_or(v, |(head, _)| head)
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

    #[test]
    fn errors_name_the_line() {
        let check = |text: &str, line: usize, reason: &str| {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        };
        check("[feed]\n", 1, "the only table is [[feed]]");
        check("a = 1\nb\n", 2, "is not `key = value`");
        check("a = yes\n", 1, "is not a \"string\"");
        check("a = \"open\n", 1, "unterminated");
        check("a = \"x\" y\n", 1, "after the string");
        check("a = \"\\q\"\n", 1, "unsupported escape");
        check("[[feed]]\na = 1\na = 2\n", 3, "set twice");
        check("my-key = 1\n", 1, "not a setting name");
    }

    #[test]
    fn escapes() {
        let file = parse(r#"a = "say \"hi\"\\n\t""#).unwrap();
        assert_eq!(file.get(0, "a"), Some("say \"hi\"\\n\t"));
    }
}
