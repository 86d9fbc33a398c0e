//! Hand-written `Deserialize` for [`Task`] and [`TaskResult`].
//!
//! Derived with `#[serde(flatten)]`, both types would buffer every member (the whole
//! `config` tree included) into serde's internal `Content` and then deserialize it a
//! second time; a Loom START task took twice as long to read that way. These visitors
//! read each member once, straight into its field, and keep unknown members in `extra`.
//! A task's `config` is kept as text until used (see [`Config`]).
//! Errors match the derived ones: a missing required member, a duplicate member, or a
//! member of the wrong type is an error naming the member.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{Config, Task, TaskName, TaskResult};
use serde_json::value::RawValue;

/// A member name: one of `known`, or any other (owned, for `extra`).
enum Key {
    Known(usize),
    Other(String),
}

struct KeyVisitor(&'static [&'static str]);

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match self.0.iter().position(|k| *k == v) {
            Some(i) => Key::Known(i),
            None => Key::Other(v.to_owned()),
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Key, E> {
        Ok(match self.0.iter().position(|k| *k == v) {
            Some(i) => Key::Known(i),
            None => Key::Other(v),
        })
    }
}

struct KeySeed(&'static [&'static str]);

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_identifier(KeyVisitor(self.0))
    }
}

/// Sets a field read once; a second occurrence is the derived "duplicate field" error.
fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

const TASK_KEYS: &[&str] = &["taskId", "taskName", "jobId", "clusterId", "nodeId", "config"];

struct TaskVisitor;

impl<'de> Visitor<'de> for TaskVisitor {
    type Value = Task;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Loom task object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Task, A::Error> {
        let mut task_id: Option<String> = None;
        let mut task_name: Option<TaskName> = None;
        // `Option<Option<_>>`: the outer one says the member was seen (null is allowed).
        let mut job_id: Option<Option<String>> = None;
        let mut cluster_id: Option<Option<String>> = None;
        let mut node_id: Option<Option<String>> = None;
        let mut config: Option<Box<RawValue>> = None;
        let mut extra = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed(TASK_KEYS))? {
            match key {
                Key::Known(0) => once(&mut task_id, "taskId", &mut map)?,
                Key::Known(1) => once(&mut task_name, "taskName", &mut map)?,
                Key::Known(2) => once(&mut job_id, "jobId", &mut map)?,
                Key::Known(3) => once(&mut cluster_id, "clusterId", &mut map)?,
                Key::Known(4) => once(&mut node_id, "nodeId", &mut map)?,
                Key::Known(_) => {
                    once(&mut config, "config", &mut map)?;
                    // Kept as text (see `Config`); only an object is a config.
                    if config.as_ref().is_some_and(|raw| !raw.get().starts_with('{')) {
                        return Err(de::Error::invalid_type(
                            de::Unexpected::Other("a non-object config"),
                            &"an object",
                        ));
                    }
                }
                Key::Other(name) => {
                    let value = map.next_value()?;
                    extra.insert(name, value);
                }
            }
        }
        Ok(Task {
            task_id: task_id.ok_or_else(|| de::Error::missing_field("taskId"))?,
            task_name: task_name.ok_or_else(|| de::Error::missing_field("taskName"))?,
            job_id: job_id.flatten(),
            cluster_id: cluster_id.flatten(),
            node_id: node_id.flatten(),
            config: match config {
                Some(raw) => Config::from_raw(raw),
                None => Config::default(),
            },
            extra,
        })
    }
}

impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Task, D::Error> {
        d.deserialize_map(TaskVisitor)
    }
}

const RESULT_KEYS: &[&str] = &["status", "result", "stdout", "stderr", "hostname", "ipaddresses"];

struct ResultVisitor;

impl<'de> Visitor<'de> for ResultVisitor {
    type Value = TaskResult;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task result object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TaskResult, A::Error> {
        let mut status: Option<i64> = None;
        let mut result: Option<Map<String, Value>> = None;
        let mut stdout: Option<String> = None;
        let mut stderr: Option<String> = None;
        let mut hostname: Option<Option<String>> = None;
        let mut ipaddresses: Option<Option<Value>> = None;
        let mut extra = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed(RESULT_KEYS))? {
            match key {
                Key::Known(0) => once(&mut status, "status", &mut map)?,
                Key::Known(1) => once(&mut result, "result", &mut map)?,
                Key::Known(2) => once(&mut stdout, "stdout", &mut map)?,
                Key::Known(3) => once(&mut stderr, "stderr", &mut map)?,
                Key::Known(4) => once(&mut hostname, "hostname", &mut map)?,
                Key::Known(_) => once(&mut ipaddresses, "ipaddresses", &mut map)?,
                Key::Other(name) => {
                    let value = map.next_value()?;
                    extra.insert(name, value);
                }
            }
        }
        Ok(TaskResult {
            status: status.ok_or_else(|| de::Error::missing_field("status"))?,
            result: result.unwrap_or_default(),
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
            hostname: hostname.flatten(),
            ipaddresses: ipaddresses.flatten(),
            extra,
        })
    }
}

impl<'de> Deserialize<'de> for TaskResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TaskResult, D::Error> {
        d.deserialize_map(ResultVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_read_once_and_unknown_ones_kept() {
        let t: Task = serde_json::from_str(
            r#"{"taskId":"t","taskName":"CREATE","jobId":null,"nodeId":"n","config":{"a":1},"x":[1]}"#,
        )
        .unwrap();
        assert_eq!(
            (t.task_id.as_str(), t.task_name, t.job_id, t.node_id.as_deref()),
            ("t", TaskName::Create, None, Some("n"))
        );
        assert_eq!(t.config.get("a"), Some(&Value::from(1)));
        assert_eq!(t.extra.get("x"), Some(&serde_json::json!([1])));
    }

    #[test]
    fn the_config_stays_text_until_used_and_must_be_an_object() {
        let t: Task = serde_json::from_str(r#"{"taskId":"t","taskName":"START","config": {"a": {"b": 1}}}"#).unwrap();
        assert!(!t.config.is_parsed());
        assert_eq!(t.config["a"]["b"], 1);
        assert!(t.config.is_parsed());
        for bad in [r#""x""#, "[1]", "7"] {
            let text = format!(r#"{{"taskId":"t","taskName":"START","config":{bad}}}"#);
            let err = serde_json::from_str::<Task>(&text).unwrap_err().to_string();
            assert!(err.contains("invalid type") && err.contains("an object"), "{bad}: {err}");
        }
        let from_value: Task =
            serde_json::from_value(serde_json::json!({"taskId":"t","taskName":"START","config":{"k":[1]}})).unwrap();
        assert_eq!(from_value.config["k"][0], 1);
    }

    #[test]
    fn errors_name_the_member() {
        let err = |text: &str| serde_json::from_str::<Task>(text).unwrap_err().to_string();
        assert!(err(r#"{"taskName":"CREATE"}"#).contains("missing field `taskId`"));
        assert!(err(r#"{"taskId":"a","taskId":"b","taskName":"CREATE"}"#).contains("duplicate field `taskId`"));
        assert!(err(r#"{"taskId":1,"taskName":"CREATE"}"#).contains("invalid type"));
        assert!(err(r#"{"taskId":"a","taskName":"MAKE"}"#).contains("unknown variant"));
        assert!(err("[]").contains("invalid type"));
        let err = |text: &str| serde_json::from_str::<TaskResult>(text).unwrap_err().to_string();
        assert!(err(r#"{"stdout":""}"#).contains("missing field `status`"));
        assert!(err(r#"{"status":"0"}"#).contains("invalid type"));
    }

    #[test]
    fn a_result_reads_null_optionals_as_absent() {
        let r: TaskResult =
            serde_json::from_str(r#"{"status":0,"hostname":null,"ipaddresses":{"access_v4":"1.2.3.4"},"w":1}"#)
                .unwrap();
        assert_eq!(r.hostname, None);
        assert_eq!(r.ipaddresses, Some(serde_json::json!({"access_v4":"1.2.3.4"})));
        assert_eq!(r.extra.get("w"), Some(&Value::from(1)));
    }
}
