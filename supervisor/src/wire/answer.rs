//! Reading a plugin's answer to a task into a [`TaskResult`], within limits.
//!
//! An answer is at most `maxLineBytes` long, but a tree of it can cost many times that
//! (a million small keys in 11 MB became 460 MB), so before any tree is built one pass
//! over the text counts its values: an answer holding more than [`MAX_RESULT_VALUES`]
//! fails its task instead. (serde_json's own limit bounds the nesting at 128 levels.)

use std::fmt;

use loom_protocol::TaskResult;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Most JSON values (each member, element and scalar) an answer may hold.
pub const MAX_RESULT_VALUES: usize = 100_000;

/// Why a plugin's answer is not a usable task result. Never quotes the answer: results
/// carry credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// More values than a result may hold; no tree was built.
    #[error("the plugin's answer holds more than {max} JSON values, the most a result may hold (PROTOCOL.md, limits)")]
    TooManyValues {
        /// The most a result may hold ([`MAX_RESULT_VALUES`]).
        max: usize,
    },
    /// Not JSON, or nested too deep: what is wrong and where, by position.
    #[error("the plugin's answer is {0}")]
    NotJson(String),
    /// JSON, but a field a result needs is missing: serde's "missing field `status` at
    /// line 1 column 20", which names the field only.
    #[error("the plugin answered with an invalid result: {0}")]
    MissingField(String),
    /// JSON, but not shaped like a result (a field of the wrong type, not an object).
    #[error(
        "the plugin answered with an invalid result: expected {{\"status\": <integer>, \"result\": {{...}}, \"stdout\": \"...\", \"stderr\": \"...\"}} (problem at line {line} column {column})"
    )]
    NotAResult {
        /// Where the problem is.
        line: usize,
        /// Where the problem is.
        column: usize,
    },
}

/// The answer as a task result.
///
/// # Errors
/// [`AnswerError`]: why the answer is not a usable result, without quoting it (results
/// carry credentials): too many values, too deep, not JSON, or not shaped like a result.
pub fn read(raw: &str) -> Result<TaskResult, AnswerError> {
    count_values(raw, MAX_RESULT_VALUES)?;
    serde_json::from_str::<TaskResult>(raw).map_err(|e| describe(&e))
}

/// Whether the plugin says it stopped the task because of a `cancel`: a non-zero
/// status with `"cancelled": true` (PROTOCOL.md 4.5). A success is never cancelled.
pub fn is_cancelled(result: &TaskResult) -> bool {
    result.status != 0 && result.extra.get("cancelled") == Some(&serde_json::Value::Bool(true))
}

/// Fails when `raw` holds more than `max` values.
fn count_values(raw: &str, max: usize) -> Result<(), AnswerError> {
    let mut n = 0;
    let mut de = serde_json::Deserializer::from_str(raw);
    match (Count { n: &mut n, max }).deserialize(&mut de) {
        Ok(()) => Ok(()),
        Err(_) if n > max => Err(AnswerError::TooManyValues { max }),
        Err(e) => Err(describe(&e)),
    }
}

/// Describes a bad answer without quoting it.
fn describe(e: &serde_json::Error) -> AnswerError {
    let text = e.to_string();
    if text.starts_with("missing field") {
        // "missing field `status` at line 1 column 20": names the field only.
        return AnswerError::MissingField(text);
    }
    if e.is_syntax() || e.is_eof() {
        return AnswerError::NotJson(crate::wire::json::describe_json_error(e));
    }
    AnswerError::NotAResult { line: e.line(), column: e.column() }
}

/// Counts values, failing past `max`; builds nothing.
struct Count<'a> {
    n: &'a mut usize,
    max: usize,
}

impl Count<'_> {
    fn one<E: de::Error>(&mut self) -> Result<(), E> {
        *self.n += 1;
        if *self.n > self.max { Err(E::custom("too many values")) } else { Ok(()) }
    }

    fn nested(&mut self) -> Count<'_> {
        Count { n: &mut *self.n, max: self.max }
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
        self.one()
    }
    fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
        self.one()
    }
    fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
        self.one()
    }
    fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
        self.one()
    }
    fn visit_str<E: de::Error>(mut self, _: &str) -> Result<(), E> {
        self.one()
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.one()
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        while seq.next_element_seed(self.nested())?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.one()?;
        while map.next_key_seed(self.nested())?.is_some() {
            map.next_value_seed(self.nested())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_read() {
        let r = read(r#"{"status":0,"result":{"ipaddress":"10.0.0.5"},"stdout":"ok"}"#).unwrap();
        assert_eq!((r.status, r.result["ipaddress"].as_str(), r.stdout.as_str()), (0, Some("10.0.0.5"), "ok"));
    }

    #[test]
    fn an_answer_with_too_many_values_fails_before_a_tree_is_built() {
        let members: Vec<String> = (0..MAX_RESULT_VALUES).map(|i| format!("\"k{i}\":{i}")).collect();
        let big = format!("{{\"status\":0,\"result\":{{{}}}}}", members.join(","));
        let e = read(&big).unwrap_err().to_string();
        assert!(e.contains("more than 100000 JSON values"), "{e}");
        let fits = format!("{{\"status\":0,\"result\":{{{}}}}}", members[..1000].join(","));
        assert_eq!(read(&fits).unwrap().result.len(), 1000);
    }

    #[test]
    fn bad_answers_are_described_without_their_values() {
        for (answer, want) in [
            (r#"{"result":{"password":"hunter2"}}"#, "missing field `status`"),
            (r#"{"status":"hunter2"}"#, "expected {\"status\": <integer>"),
            (r#"{"status":0,"stdout":"hunter2""#, "ends too soon"),
        ] {
            let e = read(answer).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains("hunter2"), "{answer}: {e}");
        }
        let deep = format!("{{\"status\":0,\"result\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(read(&deep).unwrap_err().to_string().contains("nested deeper than 128 levels"));
    }
}
