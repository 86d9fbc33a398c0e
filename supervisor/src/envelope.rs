//! A submitted task, kept byte for byte, plus what the supervisor reads off it.
//!
//! The supervisor forwards tasks to plugins unchanged, so it never builds a JSON tree of
//! one. A single streaming pass ([`TaskEnvelope::parse`]) picks out the routing fields
//! (`taskId`, `taskName`, `config.provider.providertype`/`name`, `config.service.action.type`,
//! `config.automators`) and collects the values of credential-like keys anywhere in the
//! task, so that they can be scrubbed from anything the plugin logs.
//!
//! Errors describe the problem by field name and JSON type only; they never quote a value.

use std::borrow::Cow;
use std::fmt;

use loom_protocol::TaskName;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A task ready to route.
#[derive(Debug, Clone)]
pub struct TaskEnvelope {
    /// `taskId`.
    pub task_id: String,
    /// `taskName`.
    pub task_name: TaskName,
    /// `config.provider.providertype`, else `config.provider.name`.
    pub provider: Option<String>,
    /// `config.service.action.type`.
    pub automator: Option<String>,
    /// `config.automators`, when present.
    pub automators: Option<Vec<String>>,
    /// Values of credential-like keys, to scrub from logs.
    pub secrets: Vec<String>,
    raw: Box<RawValue>,
}

/// Why a document is not a usable task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", task_id.as_ref().map(|t| format!("task {t}: ")).unwrap_or_default())]
pub struct InvalidTask {
    /// The task's id, when it could be read.
    pub task_id: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl TaskEnvelope {
    /// Reads the routing fields and secrets off `raw`.
    ///
    /// # Errors
    /// [`InvalidTask`] when `raw` is not an object, or `taskId`/`taskName` are missing or
    /// not strings, or `taskName` is not one of the ten, or `config` is not an object.
    pub fn parse(raw: Box<RawValue>) -> Result<TaskEnvelope, InvalidTask> {
        let raw = one_line(raw);
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let fields =
            de.deserialize_any(TopVisitor).map_err(|e| InvalidTask { task_id: None, message: describe(&e) })?;
        let fail = |message: String| InvalidTask { task_id: fields.task_id.clone().and_then(Result::ok), message };
        let task_id = match fields.task_id.clone() {
            Some(Ok(id)) if !id.is_empty() => id,
            Some(Ok(_)) => return Err(fail("\"taskId\" is empty".into())),
            Some(Err(ty)) => return Err(fail(format!("\"taskId\" must be a string, found {ty}"))),
            None => return Err(fail("\"taskId\" is missing".into())),
        };
        let task_name = match &fields.task_name {
            Some(Ok(name)) => name.parse::<TaskName>().map_err(|e| fail(format!("\"taskName\": {e}")))?,
            Some(Err(ty)) => {
                return Err(fail(format!("\"taskName\" must be a string, found {ty}")));
            }
            None => return Err(fail("\"taskName\" is missing".into())),
        };
        if let Some(problem) = fields.problem {
            return Err(fail(problem));
        }
        let mut secrets = fields.secrets;
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Ok(TaskEnvelope {
            task_id,
            task_name,
            provider: fields.providertype.or(fields.provider_name),
            automator: fields.action_type,
            automators: fields.automators,
            secrets,
            raw,
        })
    }

    /// The task as submitted, on one line: line breaks between JSON tokens (as in a
    /// pretty-printed file) are turned into spaces, since the protocol frames messages by
    /// line. JSON strings cannot contain raw line breaks, so nothing else changes.
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }
}

/// `raw` with its line breaks (all of them whitespace between tokens) made spaces.
fn one_line(raw: Box<RawValue>) -> Box<RawValue> {
    if !raw.get().contains(['\n', '\r']) {
        return raw;
    }
    let flat = raw.get().replace(['\n', '\r'], " ");
    // Replacing whitespace with whitespace keeps the JSON valid.
    RawValue::from_string(flat).unwrap_or(raw)
}

/// A member name, borrowed from the task's text when it has no escapes. (serde's own
/// `Cow<str>` always allocates, and this runs for every key of every task.)
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Shortest credential value worth scrubbing: shorter ones would garble ordinary text.
pub const MIN_SECRET_LEN: usize = 3;

/// Whether a key names a credential: `password`, `api_key`, `rackspace_api_key`,
/// `secret_access_key`, `token`, `private_key`, `credentials`, ...
pub fn is_secret_key(key: &str) -> bool {
    // Case-insensitive, without allocating, in one pass over the key (each marker is tried
    // only where its first letter is): this runs for every key of every task.
    let key = key.as_bytes();
    let at = |i: usize, m: &[u8]| key.get(i..i + m.len()).is_some_and(|w| w.eq_ignore_ascii_case(m));
    (0..key.len()).any(|i| match key[i].to_ascii_lowercase() {
        b'p' => at(i, b"pass") || at(i, b"private"),
        b's' => at(i, b"secret"),
        b't' => at(i, b"token"),
        b'c' => at(i, b"credential"),
        b'k' => at(i, b"key"),
        _ => false,
    })
}

#[derive(Default)]
struct Fields {
    task_id: Option<Result<String, &'static str>>,
    task_name: Option<Result<String, &'static str>>,
    providertype: Option<String>,
    provider_name: Option<String>,
    action_type: Option<String>,
    automators: Option<Vec<String>>,
    secrets: Vec<String>,
    problem: Option<String>,
}

fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        // serde's own text would quote the offending value.
        Category::Data => "the task must be a JSON object".to_owned(),
        _ => format!("not valid JSON at line {} column {}", e.line(), e.column()),
    }
}

/// The `visit_*` methods for scalars (other than strings), each returning `$value`.
macro_rules! visit_scalars {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// The top-level object of a task.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut out = Fields::default();
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            match key.as_ref() {
                "taskId" => out.task_id = Some(map.next_value_seed(Loose)?),
                "taskName" => out.task_name = Some(map.next_value_seed(Loose)?),
                "config" => {
                    if !map.next_value_seed(ConfigSeed { out: &mut out })? {
                        out.problem = Some("\"config\" must be an object".into());
                    }
                }
                other => map.next_value_seed(Scan { secrets: &mut out.secrets, secret: is_secret_key(other) })?,
            }
        }
        Ok(out)
    }
}

/// A string, or the name of the JSON type found instead.
struct Loose;

impl<'de> DeserializeSeed<'de> for Loose {
    type Value = Result<String, &'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Result<String, &'static str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ok(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Ok(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err("an object"))
    }
}

/// A member read as a name (`providertype`, `action.type`, an automator): the string, or
/// `None` for any other type. An object or array found instead is still scanned for
/// secrets: a credential where a name was expected must not be skipped unseen.
struct Name<'a> {
    secrets: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Name<'_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Name<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }
    visit_scalars!(None);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Scan { secrets: self.secrets, secret: false }.visit_seq(seq)?;
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Scan { secrets: self.secrets, secret: false }.visit_map(map)?;
        Ok(None)
    }
}

/// Walks any value, collecting strings that sit under a credential-like key (directly, or
/// inside an array under one). Returns nothing; skips everything else.
struct Scan<'a> {
    secrets: &'a mut Vec<String>,
    secret: bool,
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.secret && v.len() >= MIN_SECRET_LEN {
            self.secrets.push(v.to_owned());
        }
        Ok(())
    }
    visit_scalars!(());
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Scan { secrets: &mut *self.secrets, secret: self.secret })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            map.next_value_seed(Scan { secrets: &mut *self.secrets, secret: is_secret_key(&key) })?;
        }
        Ok(())
    }
}

/// `config`: returns `false` when it is not an object.
struct ConfigSeed<'a> {
    out: &'a mut Fields,
}

impl<'de> DeserializeSeed<'de> for ConfigSeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ConfigSeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the config object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let out = self.out;
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            match key.as_ref() {
                "provider" => map.next_value_seed(Object {
                    secrets: &mut out.secrets,
                    wanted: &mut [("providertype", &mut out.providertype), ("name", &mut out.provider_name)],
                    nested: None,
                })?,
                "service" => map.next_value_seed(Object {
                    secrets: &mut out.secrets,
                    wanted: &mut [],
                    nested: Some(("action", &mut out.action_type)),
                })?,
                "automators" => out.automators = map.next_value_seed(StringList { secrets: &mut out.secrets })?,
                other => map.next_value_seed(Scan { secrets: &mut out.secrets, secret: is_secret_key(other) })?,
            }
        }
        Ok(true)
    }
    // Any other type: not an object. Skip it and report.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    visit_scalars!(false);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// An object from which some string members are wanted (`wanted`), optionally with one
/// nested object whose `type` member is wanted (`nested`: `service.action.type`).
/// Everything is scanned for secrets. A value of another type is skipped.
struct Object<'a, 'b> {
    secrets: &'a mut Vec<String>,
    wanted: &'b mut [(&'static str, &'a mut Option<String>)],
    nested: Option<(&'static str, &'a mut Option<String>)>,
}

impl<'de> DeserializeSeed<'de> for Object<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Object<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Object { secrets, wanted, mut nested } = self;
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            if let Some((_, slot)) = wanted.iter_mut().find(|(k, _)| *k == key.as_ref()) {
                if let Some(s) = map.next_value_seed(Name { secrets: &mut *secrets })? {
                    **slot = Some(s);
                }
            } else if let Some((_, slot)) = nested.as_mut().filter(|(n, _)| *n == key.as_ref()) {
                map.next_value_seed(Object {
                    secrets: &mut *secrets,
                    wanted: &mut [("type", &mut **slot)],
                    nested: None,
                })?;
            } else {
                map.next_value_seed(Scan { secrets: &mut *secrets, secret: is_secret_key(&key) })?;
            }
        }
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    visit_scalars!(());
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Scan { secrets: &mut *self.secrets, secret: false })?.is_some() {}
        Ok(())
    }
}

/// `config.automators`: the string members of an array; `None` when it is not an array.
struct StringList<'a> {
    secrets: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for StringList<'_> {
    type Value = Option<Vec<String>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StringList<'_> {
    type Value = Option<Vec<String>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of automator names")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut names = Vec::new();
        while let Some(item) = seq.next_element_seed(Name { secrets: &mut *self.secrets })? {
            if let Some(name) = item {
                names.push(name);
            }
        }
        Ok(Some(names))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Scan { secrets: self.secrets, secret: false }.visit_map(map)?;
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    visit_scalars!(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TaskEnvelope, InvalidTask> {
        TaskEnvelope::parse(RawValue::from_string(text.to_owned()).unwrap())
    }

    const START: &str = include_str!("../../protocol/tests/data/start-hbase-regionserver.json");
    const BOOTSTRAP: &str = include_str!("../../protocol/tests/data/bootstrap-coopr-fixture.json");

    #[test]
    fn reads_the_routing_fields_of_real_loom_tasks() {
        let t = parse(START).unwrap();
        assert_eq!(t.task_id, "00000001-002-071");
        assert_eq!(t.task_name, TaskName::Start);
        assert_eq!(t.automator.as_deref(), Some("chef"));
        assert_eq!(t.provider.as_deref(), Some("rackspace"));
        assert_eq!(t.automators, Some(vec!["chef".to_owned()]));
        assert_eq!(t.raw().get(), START.trim_end().replace('\n', " "), "kept byte for byte, on one line");
        assert_eq!(t.secrets, ["API_KEY"]);

        let b = parse(BOOTSTRAP).unwrap();
        assert_eq!(b.automators, Some(vec!["shell".to_owned(), "chef".to_owned()]));
        assert!(b.secrets.contains(&"123456789abcdef123456789abcdef00".to_owned()));
        assert!(b.secrets.contains(&"password".to_owned()), "ssh-auth.password");
    }

    #[test]
    fn provider_name_is_the_fallback_for_providertype() {
        let t = parse(r#"{"taskId":"t","taskName":"CREATE","config":{"provider":{"name":"aws"}}}"#).unwrap();
        assert_eq!(t.provider.as_deref(), Some("aws"));
    }

    #[test]
    fn secrets_are_found_anywhere_and_only_under_credential_keys() {
        let t = parse(
            r#"{"taskId":"t","taskName":"CREATE","config":{
                "provider":{"providertype":"ec2","provisioner":{"api_user":"AKIAEXAMPLE","api_password":"s3cr3t-pw","security_groups":["default"]}},
                "ssh-auth":{"user":"root","identityfile":"/k","password":"hunter2"},
                "extra":{"deep":{"tokens":["tok-one","tok-two"],"name":"not-secret"}}}}"#,
        )
        .unwrap();
        for s in ["s3cr3t-pw", "hunter2", "tok-one", "tok-two"] {
            assert!(t.secrets.iter().any(|x| x == s), "{s} in {:?}", t.secrets);
        }
        for s in ["AKIAEXAMPLE", "root", "not-secret", "default", "ec2"] {
            assert!(!t.secrets.iter().any(|x| x == s), "{s} in {:?}", t.secrets);
        }
    }

    #[test]
    fn secrets_where_a_name_was_expected_are_found_too() {
        // Found with the task_envelope_scrub fuzz target's check (every credential-keyed
        // string is a secret): an object or array where the envelope reads a name
        // (an automator, `providertype`, `action.type`) was skipped without a look.
        let t = parse(
            r#"{"taskId":"t","taskName":"BOOTSTRAP","config":{
                "automators":["shell",{"password":"pw-one"},["x",{"token":"tok-two"}]],
                "provider":{"providertype":{"api_key":"key-three"},"name":"aws"},
                "service":{"action":{"type":[{"secret":"sec-four"}]}}}}"#,
        )
        .unwrap();
        assert_eq!(t.automators, Some(vec!["shell".to_owned()]));
        assert_eq!(t.provider.as_deref(), Some("aws"));
        assert_eq!(t.automator, None);
        for s in ["pw-one", "tok-two", "key-three", "sec-four"] {
            assert!(t.secrets.iter().any(|x| x == s), "{s} in {:?}", t.secrets);
        }
    }

    #[test]
    fn keys_with_escapes_and_any_case_are_read_too() {
        let t = parse(
            r#"{"task\u0049d":"t","taskName":"CREATE","config":{"x":{"API_\u004bEY":"k-one","PassPhrase":"p-two","tokenish":1}}}"#,
        )
        .unwrap();
        assert_eq!(t.task_id, "t");
        assert_eq!(t.secrets, ["k-one", "p-two"]);
        for (key, secret) in [("api_key", true), ("Private_Key", true), ("oauthToken", true), ("monkey", true)] {
            assert_eq!(is_secret_key(key), secret, "{key}");
        }
        for key in ["name", "hostname", "ipaddress", "k", "pas", "secre", ""] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn errors_name_the_field_and_never_a_value() {
        let cases = [
            (r#"{"taskName":"CREATE"}"#, "\"taskId\" is missing"),
            (r#"{"taskId":7,"taskName":"CREATE"}"#, "\"taskId\" must be a string, found a number"),
            (r#"{"taskId":"t1","taskName":"MAKE"}"#, "task t1: \"taskName\": unknown task name \"MAKE\""),
            (r#"{"taskId":"t1"}"#, "task t1: \"taskName\" is missing"),
            (r#"{"taskId":"t1","taskName":"CREATE","config":"hunter2"}"#, "task t1: \"config\" must be an object"),
            (r#"["hunter2"]"#, "must be a JSON object"),
            (r#""hunter2""#, "must be a JSON object"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
