//! A task's `config`, read from the task's JSON only when first used.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A task's `config` object: `provider`, `service`, `automators`, `ssh-auth`, and every key
/// that earlier tasks' results put there. Use it as the `Map` it derefs to.
///
/// It is kept as the JSON text it arrived as and turned into a `Map` (a tree of `Value`s)
/// the first time it is used: for a Loom START task (2 KB) building the tree is most of
/// what reading the task costs, and a plugin that answers without looking at the config
/// never pays it. Written back out unchanged while unused.
#[derive(Default)]
pub struct Config {
    /// The object's JSON text, until it is parsed.
    raw: Option<Box<RawValue>>,
    map: OnceLock<Map<String, Value>>,
}

impl Config {
    /// Keeps `raw`, which must be a JSON object (the task reader checks).
    pub(crate) fn from_raw(raw: Box<RawValue>) -> Config {
        Config { raw: Some(raw), map: OnceLock::new() }
    }

    /// Whether it has been turned into a `Map` yet (for tests and diagnostics).
    pub fn is_parsed(&self) -> bool {
        self.map.get().is_some()
    }

    fn parse(raw: Option<&RawValue>) -> Map<String, Value> {
        // The text is a JSON object checked when the task was read, so this cannot fail;
        // an empty map would be the answer if it ever did.
        raw.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default()
    }

    /// The parsed map, by value.
    pub fn into_map(mut self) -> Map<String, Value> {
        match self.map.take() {
            Some(map) => map,
            None => Config::parse(self.raw.as_deref()),
        }
    }
}

impl From<Map<String, Value>> for Config {
    fn from(map: Map<String, Value>) -> Config {
        Config { raw: None, map: OnceLock::from(map) }
    }
}

impl Deref for Config {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| Config::parse(self.raw.as_deref()))
    }
}

impl DerefMut for Config {
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        let map = match self.map.take() {
            Some(map) => map,
            None => Config::parse(self.raw.as_deref()),
        };
        // Changed from now on: the text no longer says what it holds.
        self.raw = None;
        self.map = OnceLock::from(map);
        match self.map.get_mut() {
            Some(map) => map,
            // `OnceLock::from` just filled it.
            None => unreachable!("a OnceLock made from a value holds it"),
        }
    }
}

impl Clone for Config {
    fn clone(&self) -> Config {
        Config { raw: self.raw.clone(), map: self.map.clone() }
    }
}

impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for Config {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.map.get(), &self.raw) {
            (Some(map), _) => map.serialize(s),
            (None, Some(raw)) => raw.serialize(s),
            (None, None) => Map::new().serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Config {
        Config::from_raw(RawValue::from_string(text.to_owned()).unwrap())
    }

    #[test]
    fn parsed_on_first_use_and_written_back_unchanged_until_then() {
        let c = raw(r#"{"b": 1, "a": {"x": [1, 2]}}"#);
        assert!(!c.is_parsed());
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"b": 1, "a": {"x": [1, 2]}}"#, "the text as it came");
        assert_eq!(c.get("b"), Some(&Value::from(1)));
        assert!(c.is_parsed());
        assert_eq!(c["a"]["x"][1], 2);
    }

    #[test]
    fn changes_are_kept_and_written() {
        let mut c = raw(r#"{"a": 1}"#);
        c.insert("b".into(), Value::from(true));
        assert_eq!(serde_json::to_value(&c).unwrap(), serde_json::json!({"a": 1, "b": true}));
        let clone = c.clone();
        assert_eq!(clone, c);
        assert_eq!(c.into_map().len(), 2);
        assert_eq!(Config::default().len(), 0);
    }
}
