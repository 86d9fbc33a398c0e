//! A submitted task, kept byte for byte, plus what the supervisor reads off it.
//!
//! The supervisor forwards tasks to plugins unchanged, so it never builds a JSON tree of
//! one. A single streaming pass ([`TaskEnvelope::parse`]) picks out the routing fields
//! (`taskId`, `taskName`, `config.provider.providertype`/`name`, `config.service.action.type`,
//! `config.automators`) and collects the values of credential-like keys anywhere in the
//! task (everything under such a key, at any depth), so that they can be scrubbed from
//! everything that leaves the supervisor ([`crate::wire::redact`]).
//!
//! Errors describe the problem by field name and JSON type only; they never quote a value.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use loom_protocol::TaskName;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::wire::json::describe_json_error;
use crate::wire::redact::{MIN_SECRET_LEN, is_secret_key};

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
    /// Values of credential-like keys, longest first, to scrub from everything that leaves
    /// the supervisor ([`crate::wire::redact`]).
    pub secrets: Vec<String>,
    /// Shared, so that the journal and the plugin's stdin take it without a copy.
    raw: Arc<Box<RawValue>>,
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
        let mut fields =
            de.deserialize_any(TopVisitor).map_err(|e| InvalidTask { task_id: None, message: describe(&e) })?;
        let mut secrets = std::mem::take(&mut fields.secrets);
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        // A message may quote the task (its id, an unknown task name): never a credential.
        let clean = |text: &str| crate::wire::redact::scrub_values(text, &secrets).into_owned();
        let fail = |message: String| InvalidTask {
            task_id: fields.task_id.clone().and_then(Result::ok).map(|id| clean(&id)),
            message: clean(&message),
        };
        let task_id = match fields.task_id.clone() {
            Some(Ok(id)) if !id.is_empty() => match check_task_id(&id) {
                Ok(()) => id,
                // The id is not quoted in the error (nor named: it is what is wrong).
                Err(why) => return Err(InvalidTask { task_id: None, message: why }),
            },
            Some(Ok(_)) => return Err(fail("\"taskId\" is an empty string".into())),
            Some(Err(ty)) => return Err(fail(format!("\"taskId\" must be a string, found {ty}"))),
            None => return Err(fail("\"taskId\" is missing".into())),
        };
        let task_name = match &fields.task_name {
            Some(Ok(name)) => name.parse::<TaskName>().map_err(|_| fail(unknown_task_name(name)))?,
            Some(Err(ty)) => {
                return Err(fail(format!("\"taskName\" must be a string, found {ty}")));
            }
            None => return Err(fail("\"taskName\" is missing".into())),
        };
        if let Some(problem) = fields.problem {
            return Err(fail(problem));
        }
        Ok(TaskEnvelope {
            task_id,
            task_name,
            provider: fields.providertype.or(fields.provider_name),
            automator: fields.action_type,
            automators: fields.automators,
            secrets,
            raw: Arc::new(raw),
        })
    }

    /// The task as submitted, on one line: line breaks between JSON tokens (as in a
    /// pretty-printed file) are turned into spaces, since the protocol frames messages by
    /// line. JSON strings cannot contain raw line breaks, so nothing else changes.
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    /// The same text, shared.
    pub fn shared_raw(&self) -> Arc<Box<RawValue>> {
        Arc::clone(&self.raw)
    }
}

/// `raw` with its line breaks (all of them whitespace between tokens) made spaces, in
/// place: a task may be megabytes.
fn one_line(raw: Box<RawValue>) -> Box<RawValue> {
    if !raw.get().contains(['\n', '\r']) {
        return raw;
    }
    let text: Box<str> = raw.into();
    let mut bytes = text.into_boxed_bytes().into_vec();
    for b in &mut bytes {
        if matches!(*b, b'\n' | b'\r') {
            *b = b' ';
        }
    }
    // ASCII for ASCII keeps the text UTF-8, and whitespace for whitespace keeps it the same
    // JSON, so neither step below can fail; `from_string` reuses the buffer.
    let text = String::from_utf8(bytes).unwrap_or_default();
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// Longest `taskId` accepted.
pub const MAX_TASK_ID_LEN: usize = 256;

/// A `taskId` is a name in URLs, file names and log lines: letters, digits and
/// `. _ - : @ + = , ~`, at most [`MAX_TASK_ID_LEN`] of them. Loom's ids
/// (`00000001-002-071`) and the cluster engine's (`web-1.INSTALL.web.j1a1`) fit.
fn check_task_id(id: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b".-_:@+=,~".contains(&b);
    if id.len() > MAX_TASK_ID_LEN {
        return Err(format!("\"taskId\" is {} bytes long; at most {MAX_TASK_ID_LEN} are accepted", id.len()));
    }
    match id.bytes().position(|b| !allowed(b)) {
        None => Ok(()),
        Some(at) => Err(format!(
            "\"taskId\" may hold only letters, digits and . _ - : @ + = , ~ (a character outside them at byte {at})"
        )),
    }
}

/// Why a `taskName` is not one of the ten, without quoting it.
fn unknown_task_name(name: &str) -> String {
    let names: Vec<&str> = TaskName::ALL.iter().map(|t| t.as_str()).collect();
    let hint = if name.to_ascii_uppercase().parse::<TaskName>().is_ok() { " (task names are upper case)" } else { "" };
    format!("\"taskName\" must be one of {}{hint}", names.join(", "))
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
    match e.classify() {
        // The visitors' own errors name a member and never a value; they start with its
        // quoted name, or with "the task". serde's own data errors ("invalid type: ...")
        // would quote the offending value.
        serde_json::error::Category::Data if is_own(&e.to_string()) => e.to_string(),
        serde_json::error::Category::Data => "the task must be a JSON object".to_owned(),
        _ => describe_json_error(e),
    }
}

/// Whether an error's text is one of the visitors' own.
fn is_own(text: &str) -> bool {
    text.starts_with('"') || text.starts_with("the task ")
}

/// The member names of one object seen so far, to refuse a name given twice. JSON parsers
/// disagree on which of two equal names wins (Python's the last, others the first), so the
/// supervisor could route by one value while the plugin acts on the other.
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<std::collections::HashSet<Cow<'de, str>>>,
}

/// Past this many members a set is faster than a scan.
const FEW_KEYS: usize = 16;

impl<'de> SeenKeys<'de> {
    // A `Cow` and not a `&str`: the key is kept, and a `Cow` clone borrows where a `&str` would allocate.
    #[allow(clippy::ptr_arg)]
    fn check<E: de::Error>(&mut self, key: &Cow<'de, str>) -> Result<(), E> {
        let repeated = match &mut self.many {
            Some(set) => !set.insert(key.clone()),
            None if self.few.len() < FEW_KEYS => {
                let repeated = self.few.contains(key);
                self.few.push(key.clone());
                repeated
            }
            None => {
                let mut set: std::collections::HashSet<_> = self.few.drain(..).collect();
                let repeated = !set.insert(key.clone());
                self.many = Some(set);
                repeated
            }
        };
        if repeated {
            let name: String = key.chars().take(64).flat_map(char::escape_default).collect();
            return Err(E::custom(format!("\"{name}\" appears twice in one object; each member name may appear once")));
        }
        Ok(())
    }
}

/// The name of a wrong JSON type, in a visitor's own error.
fn wrong_type<E: de::Error>(path: &str, expected: &str, found: &str) -> E {
    E::custom(format!("\"{path}\" must be {expected}, found {found}"))
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
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            seen.check(&key)?;
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

/// Walks any value, collecting the values that sit under a credential-like key: directly,
/// or anywhere inside an object or array under one (`"credentials": {"pw": "x"}`), at any
/// depth. Strings and numbers (as their decimal text) of at least [`MIN_SECRET_LEN`]
/// bytes are collected; booleans and `null` say nothing secret. Returns nothing; skips
/// everything else.
struct Scan<'a> {
    secrets: &'a mut Vec<String>,
    /// Whether this value is under a credential-like key.
    secret: bool,
}

/// Most credential values (counting the forms each may be printed in) one task may hold:
/// every line from the plugin is searched for each, and each is kept while the task runs,
/// so a task of a million tiny credentials would cost far more than its size.
pub const MAX_SECRETS: usize = 4096;

impl Scan<'_> {
    fn keep<E: de::Error>(self, text: impl FnOnce() -> String) -> Result<(), E> {
        if self.secret {
            let text = text();
            if text.len() >= MIN_SECRET_LEN {
                push_forms(self.secrets, text);
            }
            if self.secrets.len() > MAX_SECRETS {
                return Err(E::custom(format!(
                    "the task holds more than {MAX_SECRETS} credential values (counting the forms each may be printed in), the most one task may hold"
                )));
            }
        }
        Ok(())
    }
}

/// Collects `value` and the other forms a plugin may print it in: each of its lines (a
/// private key printed to stderr reaches the log line by line), and its JSON-escaped
/// forms, as serde and as Python's `json.dumps` write them (a plugin that prints its task
/// prints `pa\"ss` for `pa"ss`, `\u00e4` for `ä`, and a key's lines joined by `\n`), and
/// Ruby's `inspect` (`\#{` for `#{`).
fn push_forms(secrets: &mut Vec<String>, value: String) {
    if value.contains(['\n', '\r']) {
        let lines = value.lines().map(|l| l.trim_end_matches('\r')).filter(|l| l.len() >= MIN_SECRET_LEN);
        secrets.extend(lines.map(str::to_owned));
    }
    let escaped = serde_json::to_string(&value).unwrap_or_default();
    let escaped = escaped.get(1..escaped.len().saturating_sub(1)).unwrap_or_default();
    if escaped != value {
        secrets.push(escaped.to_owned());
    }
    let inspected = ruby_inspect(&value);
    if inspected != value && inspected != escaped {
        secrets.push(inspected);
    }
    if !value.is_ascii() {
        let ascii: String = escaped
            .chars()
            .map(|c| {
                if c.is_ascii() {
                    c.to_string()
                } else {
                    c.encode_utf16(&mut [0; 2]).iter().map(|u| format!("\\u{u:04x}")).collect()
                }
            })
            .collect();
        secrets.push(ascii);
    }
    secrets.push(value);
}

/// `value` as Ruby's `String#inspect` writes a UTF-8 string between its quotes (what an
/// exception message holding a task shows): `\"`, `\\`, `\n`, `\t`, `\r`, `\f`, `\v`,
/// `\b`, `\a`, `\e`, `\#` before `{`, `$` and `@`, `\uXXXX` for the other ASCII control
/// characters and DEL, the rest as it is.
fn ruby_inspect(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            '\u{8}' => out.push_str("\\b"),
            '\u{7}' => out.push_str("\\a"),
            '\u{1b}' => out.push_str("\\e"),
            '#' if matches!(chars.peek(), Some('{' | '$' | '@')) => out.push_str("\\#"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
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
        self.keep(|| v.to_owned())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.keep(|| v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.keep(|| v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.keep(|| v.to_string())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Scan { secrets: &mut *self.secrets, secret: self.secret })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            seen.check(&key)?;
            // Once under a credential-like key, everything below is a credential.
            let secret = self.secret || is_secret_key(&key);
            map.next_value_seed(Scan { secrets: &mut *self.secrets, secret })?;
        }
        Ok(())
    }
}

/// `config.nodes`: an object whose member names are node ids (`"demo-key-1": {...}`), data
/// rather than field names, so they mark nothing as a credential; what is inside each is
/// scanned as usual.
struct IdKeyed<'a> {
    secrets: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for IdKeyed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdKeyed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the nodes object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            seen.check(&key)?;
            map.next_value_seed(Scan { secrets: &mut *self.secrets, secret: false })?;
        }
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    visit_scalars!(());
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Scan { secrets: self.secrets, secret: false }.visit_seq(seq)
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
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            seen.check(&key)?;
            match key.as_ref() {
                "provider" => map.next_value_seed(Object {
                    path: "config.provider",
                    secrets: &mut out.secrets,
                    wanted: &mut [("providertype", &mut out.providertype), ("name", &mut out.provider_name)],
                    nested: None,
                })?,
                "service" => map.next_value_seed(Object {
                    path: "config.service",
                    secrets: &mut out.secrets,
                    wanted: &mut [],
                    nested: Some(("action", "config.service.action", &mut out.action_type)),
                })?,
                "automators" => out.automators = map.next_value_seed(StringList)?,
                "nodes" => map.next_value_seed(IdKeyed { secrets: &mut out.secrets })?,
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
/// Everything is scanned for secrets. A value of another type is skipped; a wanted member
/// that is not a string is an error naming it (under `path`).
struct Object<'a, 'b> {
    path: &'static str,
    secrets: &'a mut Vec<String>,
    wanted: &'b mut [(&'static str, &'a mut Option<String>)],
    /// The nested object's member name, its path, and where its `type` goes.
    nested: Option<(&'static str, &'static str, &'a mut Option<String>)>,
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
        let Object { path, secrets, wanted, mut nested } = self;
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key::<Key<'de>>()?.map(|k| k.0) {
            seen.check(&key)?;
            if let Some((name, slot)) = wanted.iter_mut().find(|(k, _)| *k == key.as_ref()) {
                match map.next_value_seed(Loose)? {
                    Ok(s) => **slot = Some(s),
                    Err(found) => return Err(wrong_type(&format!("{path}.{name}"), "a string", found)),
                }
            } else if let Some((_, inner, slot)) = nested.as_mut().filter(|(n, _, _)| *n == key.as_ref()) {
                map.next_value_seed(Object {
                    path: inner,
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

/// `config.automators`: an array of automator names; anything else is an error naming it.
struct StringList;

impl<'de> DeserializeSeed<'de> for StringList {
    type Value = Option<Vec<String>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StringList {
    type Value = Option<Vec<String>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of automator names")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut names = Vec::new();
        while let Some(item) = seq.next_element_seed(Loose)? {
            match item {
                Ok(name) => names.push(name),
                Err(found) => {
                    let at = format!("config.automators[{}]", names.len());
                    return Err(wrong_type(&at, "an automator's name (a string)", found));
                }
            }
        }
        Ok(Some(names))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(wrong_type("config.automators", "an array of automator names", "an object"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(wrong_type("config.automators", "an array of automator names", "a string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(wrong_type("config.automators", "an array of automator names", "a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(wrong_type("config.automators", "an array of automator names", "a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(wrong_type("config.automators", "an array of automator names", "a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(wrong_type("config.automators", "an array of automator names", "a number"))
    }
    // `"automators": null` is Loom's "not given": every registered automator.
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TaskEnvelope, InvalidTask> {
        TaskEnvelope::parse(RawValue::from_string(text.to_owned()).unwrap())
    }

    const START: &str = include_str!("../../../protocol/tests/data/start-hbase-regionserver.json");
    const BOOTSTRAP: &str = include_str!("../../../protocol/tests/data/bootstrap-coopr-fixture.json");

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
    fn a_task_with_too_many_credential_values_is_refused() {
        let many: Vec<String> = (0..MAX_SECRETS + 1).map(|i| format!("\"v{i:05}\"")).collect();
        let text = format!(r#"{{"taskId":"t","taskName":"START","config":{{"credentials":[{}]}}}}"#, many.join(","));
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("more than 4096 credential values"), "{e}");
        assert!(!e.message.contains("v00001"), "{e}");
        let few =
            format!(r#"{{"taskId":"t","taskName":"START","config":{{"credentials":[{}]}}}}"#, many[..100].join(","));
        assert_eq!(parse(&few).unwrap().secrets.len(), 100);
    }

    #[test]
    fn a_member_name_given_twice_is_refused_at_any_depth() {
        for text in [
            r#"{"taskId":"t1","taskName":"START","taskId":"t2"}"#,
            r#"{"taskId":"t","taskName":"START","config":{"service":{"action":{"type":"a","type":"b"}}}}"#,
            r#"{"taskId":"t","taskName":"START","config":{"x":[{"deep":{"k":1,"k":2}}]}}"#,
            r#"{"taskId":"t","taskName":"START","config":{"nodes":{"n1":{},"n1":{}}}}"#,
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.message.contains("appears twice in one object"), "{text}: {e}");
        }
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!(r#"{{"taskId":"t","taskName":"START","config":{{{},"k39":0}}}}"#, many.join(","));
        assert!(parse(&text).unwrap_err().message.contains("\"k39\" appears twice"));
        let text = format!(r#"{{"taskId":"t","taskName":"START","config":{{{}}}}}"#, many.join(","));
        assert!(parse(&text).is_ok(), "forty different names");
    }

    #[test]
    fn routing_fields_of_the_wrong_type_are_named() {
        let cases = [
            (r#"{"service":{"action":{"type":7}}}"#, "\"config.service.action.type\" must be a string, found a number"),
            (
                r#"{"provider":{"providertype":["ec2"]}}"#,
                "\"config.provider.providertype\" must be a string, found an array",
            ),
            (
                r#"{"automators":["shell",3]}"#,
                "\"config.automators[1]\" must be an automator's name (a string), found a number",
            ),
            (r#"{"automators":"shell"}"#, "\"config.automators\" must be an array of automator names, found a string"),
        ];
        for (config, want) in cases {
            let e = parse(&format!(r#"{{"taskId":"t","taskName":"BOOTSTRAP","config":{config}}}"#)).unwrap_err();
            assert!(e.message.contains(want), "{config}: {e}");
        }
        let t = parse(r#"{"taskId":"t","taskName":"BOOTSTRAP","config":{"automators":null}}"#).unwrap();
        assert_eq!(t.automators, None, "null: every automator, as Loom");
    }

    #[test]
    fn task_ids_are_names_of_bounded_length() {
        for ok in ["00000001-002-071", "web-1.INSTALL.web.j1a1", "a:b@c+d=e,f~g_h"] {
            assert_eq!(parse(&format!(r#"{{"taskId":"{ok}","taskName":"START"}}"#)).unwrap().task_id, ok);
        }
        let long = "x".repeat(MAX_TASK_ID_LEN + 1);
        for bad in ["a/b", "a b", "a%20", "a?b", "a#b", "caf\\u00e9", "a\\nb", "é", long.as_str()] {
            let e = parse(&format!(r#"{{"taskId":"{bad}","taskName":"START"}}"#)).unwrap_err();
            assert!(e.message.starts_with("\"taskId\""), "{bad}: {e}");
            assert_eq!(e.task_id, None, "{bad}: the id is not repeated");
        }
    }

    #[test]
    fn a_pretty_printed_task_is_put_on_one_line_in_place() {
        let t = parse("{\"taskId\":\"t\",\r\n \"taskName\":\"START\"\n}").unwrap();
        assert_eq!(t.raw().get(), "{\"taskId\":\"t\",   \"taskName\":\"START\" }");
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
    fn everything_under_a_credential_key_is_a_secret_at_any_depth_numbers_too() {
        let t = parse(
            r#"{"taskId":"t","taskName":"CREATE","config":{
                "credentials":{"pw":"pw-one","nested":{"deep":"deep-two","list":["item-three",{"x":"obj-four"}]},
                               "pin":12345678,"ratio":2.5,"on":true,"none":null,"ab":"ab"},
                "ssh-auth":{"user":"root","port":22,"password":"pass-five"},
                "api_token":9876543210,
                "service":{"action":{"type":"shell","secrets":{"db":"svc-six"}}},
                "plain":{"count":12345}}}"#,
        )
        .unwrap();
        for s in
            ["pw-one", "deep-two", "item-three", "obj-four", "12345678", "2.5", "pass-five", "9876543210", "svc-six"]
        {
            assert!(t.secrets.iter().any(|x| x == s), "{s} in {:?}", t.secrets);
        }
        // Too short to scrub (would garble text), not credentials, or not under one.
        for s in ["ab", "true", "null", "root", "22", "12345", "shell"] {
            assert!(!t.secrets.iter().any(|x| x == s), "{s} in {:?}", t.secrets);
        }
        assert_eq!(t.automator.as_deref(), Some("shell"));
    }

    #[test]
    fn the_forms_a_plugin_may_print_a_value_in_are_secrets_too() {
        let t = parse(
            r#"{"taskId":"t","taskName":"CREATE","config":{
                "ssh-auth":{"privatekey":"-----BEGIN KEY-----\nAAAAB3Nza\r\nCCDD==\n-----END KEY-----\n"},
                "password":"pa\"ss\\wörd😀"}}"#,
        )
        .unwrap();
        for s in [
            "-----BEGIN KEY-----\nAAAAB3Nza\r\nCCDD==\n-----END KEY-----\n",
            r"-----BEGIN KEY-----\nAAAAB3Nza\r\nCCDD==\n-----END KEY-----\n",
            "AAAAB3Nza",
            "CCDD==",
            "pa\"ss\\wörd😀",
            r#"pa\"ss\\wörd😀"#,
            r#"pa\"ss\\w\u00f6rd\ud83d\ude00"#,
        ] {
            assert!(t.secrets.iter().any(|x| x == s), "{s:?} in {:?}", t.secrets);
        }
    }

    #[test]
    fn rubys_inspect_form_of_a_value_is_a_secret_too() {
        let t =
            parse(r#"{"taskId":"t","taskName":"CREATE","config":{"password":"a\"b#{c}#$d#@e\u001b\u007f\u0001ü"}}"#)
                .unwrap();
        // What `{"password" => value}.inspect` shows inside an exception's message
        // (`ruby -e 'p "a\"b\#{c}\#$d\#@e\e\x7f\x01ü"'`).
        let inspected = r#"a\"b\#{c}\#$d\#@e\e\u007F\u0001ü"#;
        assert!(t.secrets.iter().any(|x| x == inspected), "{inspected:?} in {:?}", t.secrets);
    }

    #[test]
    fn node_ids_in_config_nodes_are_not_credential_keys() {
        let t = parse(
            r#"{"taskId":"t","taskName":"START","config":{"nodes":{
                "keystore-n-1":{"hostname":"keystore-n-1.local","nodenum":"1000"},
                "vault-n-1":{"hostname":"v.local","token":"node-token"}}}}"#,
        )
        .unwrap();
        assert_eq!(t.secrets, ["node-token"]);
    }

    #[test]
    fn a_credential_where_a_name_was_expected_is_refused_never_quoted() {
        // Found with the task_envelope_scrub fuzz target's check (every credential-keyed
        // string is a secret): an object or array where the envelope reads a name (an
        // automator, `providertype`, `action.type`) was skipped without a look. Such a task
        // is now refused, naming the member, before anything reads it.
        for config in [
            r#"{"automators":["shell",{"password":"pw-one"}]}"#,
            r#"{"provider":{"providertype":{"api_key":"key-three"},"name":"aws"}}"#,
            r#"{"service":{"action":{"type":[{"secret":"sec-four"}]}}}"#,
        ] {
            let e = parse(&format!(r#"{{"taskId":"t","taskName":"BOOTSTRAP","config":{config}}}"#)).unwrap_err();
            assert!(e.message.contains("must be") && !e.message.contains("pw-one"), "{config}: {e}");
            assert!(!e.message.contains("key-three") && !e.message.contains("sec-four"), "{e}");
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
        for (key, secret) in [
            ("api_key", true),
            ("Private_Key", true),
            ("oauthToken", true),
            ("monkey", true),
            ("ssh_key", true),
            ("private_key_name", true),
            ("ssh_keypair", false),
            ("ssh_key_resource", false),
            ("ssh_host_keys", false),
            ("PublicKey", false),
            ("key_name", false),
            ("access_key_id", false),
        ] {
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
            (r#"{"taskId":"t1","taskName":"hunter2"}"#, "task t1: \"taskName\" must be one of CREATE, CONFIRM,"),
            (r#"{"taskId":"t1","taskName":"create"}"#, "(task names are upper case)"),
            (r#"{"taskId":"","taskName":"CREATE"}"#, "\"taskId\" is an empty string"),
            (r#"{"taskId":"hunter2/x","taskName":"CREATE"}"#, "outside them at byte 7"),
            (r#"{"taskId":"t1","taskName":"CREATE","config":{"x":1e999999}}"#, "a number too large to read"),
            (r#"{"taskId":"t1"}"#, "task t1: \"taskName\" is missing"),
            (r#"{"taskId":"t1","taskName":"CREATE","config":"hunter2"}"#, "task t1: \"config\" must be an object"),
            (
                r#"{"taskId":"id-hunter2","taskName":"hunter2","x":{"password":"hunter2"}}"#,
                "task id-[redacted]: \"taskName\"",
            ),
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
