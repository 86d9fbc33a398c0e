//! The JSON Schema files of `protocol/schema/` against the specification and the Rust types:
//!
//! - every ```json block of PROTOCOL.md and every `>`/`<` line of its example sessions
//!   validates against the schema of what it is (read at test time, so examples added to
//!   the spec are covered; one that nothing recognises fails the test);
//! - each schema's `examples` deserialize into the `loom_protocol` types, and what those
//!   types write back validates again;
//! - messages that break the spec are rejected, and unknown members never are;
//! - every file is a valid draft 2020-12 schema that uses only keywords listed here.
#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use boon::{Compiler, SchemaIndex, Schemas};
use loom_protocol::{
    CancelParams, HandshakeParams, HandshakeResult, LogParams, Message, OutputParams, ProgressParams, ResponseError,
    Task, TaskResult,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// Where every file's `$id` lives: an identifier, never fetched (`.invalid` cannot resolve).
const ID_BASE: &str = "https://loom-provisioner.invalid/protocol/1/";

/// What a schema file validates; one file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Envelope,
    Error,
    HandshakeParams,
    HandshakeResult,
    TaskParams,
    TaskResult,
    Ping,
    Shutdown,
    CancelParams,
    LogParams,
    ProgressParams,
    OutputParams,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Envelope,
        Kind::Error,
        Kind::HandshakeParams,
        Kind::HandshakeResult,
        Kind::TaskParams,
        Kind::TaskResult,
        Kind::Ping,
        Kind::Shutdown,
        Kind::CancelParams,
        Kind::LogParams,
        Kind::ProgressParams,
        Kind::OutputParams,
    ];

    fn file(self) -> &'static str {
        match self {
            Kind::Envelope => "envelope.schema.json",
            Kind::Error => "error.schema.json",
            Kind::HandshakeParams => "handshake-params.schema.json",
            Kind::HandshakeResult => "handshake-result.schema.json",
            Kind::TaskParams => "task-params.schema.json",
            Kind::TaskResult => "task-result.schema.json",
            Kind::Ping => "ping.schema.json",
            Kind::Shutdown => "shutdown.schema.json",
            Kind::CancelParams => "cancel-params.schema.json",
            Kind::LogParams => "log-params.schema.json",
            Kind::ProgressParams => "progress-params.schema.json",
            Kind::OutputParams => "output-params.schema.json",
        }
    }

    /// The schema of a request's or notification's params, by method.
    fn of_params(method: &str) -> Option<Kind> {
        Some(match method {
            "handshake" => Kind::HandshakeParams,
            "task" => Kind::TaskParams,
            "ping" => Kind::Ping,
            "shutdown" => Kind::Shutdown,
            "cancel" => Kind::CancelParams,
            "log" => Kind::LogParams,
            "progress" => Kind::ProgressParams,
            "output" => Kind::OutputParams,
            _ => return None,
        })
    }

    /// The schema of a success answer's result, by the method of its request.
    fn of_result(method: &str) -> Option<Kind> {
        Some(match method {
            "handshake" => Kind::HandshakeResult,
            "task" => Kind::TaskResult,
            "ping" => Kind::Ping,
            "shutdown" => Kind::Shutdown,
            _ => return None,
        })
    }

    /// The value read into this kind's `loom_protocol` type and written back out.
    fn through_rust(self, value: &Value) -> Result<Value, String> {
        let text = value.to_string();
        match self {
            Kind::Envelope => {
                let message = Message::decode(text.as_bytes()).map_err(|e| e.to_string())?;
                serde_json::from_slice(&message.to_line()).map_err(|e| e.to_string())
            }
            Kind::Error => via::<ResponseError>(&text),
            Kind::HandshakeParams => via::<HandshakeParams>(&text),
            Kind::HandshakeResult => via::<HandshakeResult>(&text),
            Kind::TaskParams => via::<Task>(&text),
            Kind::TaskResult => via::<TaskResult>(&text),
            // No type of their own: the supervisor sends and reads `{}` as a JSON object.
            Kind::Ping | Kind::Shutdown => via::<Map<String, Value>>(&text),
            Kind::CancelParams => via::<CancelParams>(&text),
            Kind::LogParams => via::<LogParams>(&text),
            Kind::ProgressParams => via::<ProgressParams>(&text),
            Kind::OutputParams => via::<OutputParams>(&text),
        }
    }
}

fn via<T: DeserializeOwned + Serialize>(text: &str) -> Result<Value, String> {
    let typed: T = serde_json::from_str(text).map_err(|e| format!("into {}: {e}", std::any::type_name::<T>()))?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

/// Every schema file, compiled. Compiling checks each against the draft 2020-12
/// meta-schema (boon refuses a schema that is not valid against its meta-schema).
struct Catalogue {
    schemas: Schemas,
    index: BTreeMap<Kind, SchemaIndex>,
    docs: BTreeMap<Kind, Value>,
}

impl Catalogue {
    fn load() -> Catalogue {
        let mut compiler = Compiler::new();
        let mut schemas = Schemas::new();
        let (mut index, mut docs) = (BTreeMap::new(), BTreeMap::new());
        for kind in Kind::ALL {
            let path = schema_dir().join(kind.file());
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", kind.file()));
            let id = format!("{ID_BASE}{}", kind.file());
            assert_eq!(doc["$id"], json!(id), "{}: $id", kind.file());
            compiler.add_resource(&id, doc.clone()).unwrap();
            let compiled = compiler.compile(&id, &mut schemas).unwrap_or_else(|e| panic!("{}: {e:#}", kind.file()));
            index.insert(kind, compiled);
            docs.insert(kind, doc);
        }
        Catalogue { schemas, index, docs }
    }

    fn validate(&self, kind: Kind, value: &Value) -> Result<(), String> {
        self.schemas.validate(value, self.index[&kind]).map_err(|e| format!("not a valid {}: {e:#}", kind.file()))
    }

    fn examples(&self, kind: Kind) -> &[Value] {
        self.docs[&kind]["examples"].as_array().map(Vec::as_slice).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// PROTOCOL.md: its fenced blocks, the heading each is under, and what each one is.

/// A fenced block of PROTOCOL.md.
struct Block {
    /// 1-based line of its opening fence.
    line: usize,
    lang: String,
    /// The nearest heading above it.
    heading: String,
    body: Vec<String>,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PROTOCOL.md line {} (under \"{}\")", self.line, self.heading)
    }
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut open: Option<Block> = None;
    for (n, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match open.take() {
            Some(block) if fence => out.push(block),
            Some(mut block) => {
                block.body.push(line.to_owned());
                open = Some(block);
            }
            None if fence => {
                let lang = line.trim_start().trim_start_matches('`').trim().to_owned();
                open = Some(Block { line: n + 1, lang, heading: heading.clone(), body: Vec::new() });
            }
            None if line.starts_with('#') => heading = line.trim_start_matches('#').trim().to_owned(),
            None => {}
        }
    }
    assert!(open.is_none(), "PROTOCOL.md ends inside a fenced block");
    out
}

/// The method a heading names in backquotes (`### 4.2 \`task\` (request)`), if any.
fn heading_method(heading: &str) -> Option<&str> {
    heading.split('`').skip(1).step_by(2).find(|word| Kind::of_params(word).is_some())
}

/// Whether a value is one kind of non-message.
type IsNot = fn(&Value) -> bool;

/// Blocks of PROTOCOL.md that are not messages, each told by a stable feature. A block
/// neither here nor recognised as a message fails the test: add it here only when it
/// truly is not something a plugin or the supervisor sends.
const NOT_MESSAGES: &[(&str, IsNot)] = &[
    ("a plugin manifest (section 8)", |v| {
        v.as_object().is_some_and(|m| {
            m.len() == 1 && m.values().all(|p| p.get("executable").is_some() || p.get("classname").is_some())
        })
    }),
    ("a `check --json` report", |v| v.get("rules").is_some_and(Value::is_array) && v.get("counts").is_some()),
    ("`check --list-rules --json`", |v| {
        v.as_array().is_some_and(|rules| {
            !rules.is_empty()
                && rules
                    .iter()
                    .all(|r| r["id"].as_str().is_some_and(|id| id.starts_with("P-")) && r.get("applies").is_some())
        })
    }),
    ("a task's `loom-check` config (section 10), or the `config` holding it", |v| {
        v.get("taskId").is_none() && (v.get("loom-check").is_some() || v["config"].get("loom-check").is_some())
    }),
];

/// What a JSON value of a ```json block is.
enum Found {
    /// A whole message (it has `jsonrpc`, `id`, `method`, `result` or `error`).
    Message,
    /// The params or the result of one method, or an error object.
    Part(Kind),
    /// One of [`NOT_MESSAGES`].
    NotAMessage,
}

fn identify(value: &Value, heading: &str) -> Option<Found> {
    if NOT_MESSAGES.iter().any(|(_, is)| is(value)) {
        return Some(Found::NotAMessage);
    }
    let has = |key: &str| value.get(key).is_some();
    // Members that only one part has (a task result has a `result` too: these come first).
    let by_member = [
        ("protocolVersions", Kind::HandshakeParams),
        ("protocolVersion", Kind::HandshakeResult),
        ("taskName", Kind::TaskParams),
        ("status", Kind::TaskResult),
        ("code", Kind::Error),
    ];
    if let Some((_, kind)) = by_member.iter().find(|(key, _)| has(key)) {
        return Some(Found::Part(*kind));
    }
    if ["jsonrpc", "id", "method", "result", "error"].iter().any(|k| has(k)) {
        return Some(Found::Message);
    }
    // The notifications' params, and ping's and shutdown's: told by their heading.
    match heading_method(heading)? {
        "handshake" | "task" => None,
        method => Kind::of_params(method).map(Found::Part),
    }
}

/// Checks one PROTOCOL.md example; `seen` collects the kinds validated.
struct Checker<'a> {
    catalogue: &'a Catalogue,
    seen: BTreeSet<Kind>,
    failures: Vec<String>,
}

impl Checker<'_> {
    fn check(&mut self, kind: Kind, value: &Value) -> Result<(), String> {
        self.seen.insert(kind);
        self.catalogue.validate(kind, value)
    }

    /// A whole message: its envelope, then its params or its result. `method_of_answer`
    /// is the method of the request an answer answers, when known.
    fn check_message(&mut self, value: &Value, method_of_answer: Option<&str>) -> Result<(), String> {
        self.check(Kind::Envelope, value)?;
        if let Some(method) = value["method"].as_str() {
            return match Kind::of_params(method) {
                Some(kind) => self.check(kind, &value["params"]),
                None => Ok(()), // a method the receiver answers with -32601 or ignores
            };
        }
        if let Some(error) = value.get("error") {
            return self.check(Kind::Error, error);
        }
        let result = &value["result"];
        let kind = match method_of_answer {
            Some(method) => Kind::of_result(method),
            None => match identify(result, "") {
                Some(Found::Part(kind)) => Some(kind),
                _ if result == &json!({}) => Some(Kind::Ping),
                _ => None,
            },
        };
        let kind = kind.ok_or("an answer whose result is of no known method")?;
        self.check(kind, result)
    }

    fn json_block(&mut self, block: &Block) {
        let text = block.body.join("\n");
        for (n, value) in serde_json::Deserializer::from_str(&text).into_iter::<Value>().enumerate() {
            let outcome = match value {
                Err(e) => Err(format!("not JSON: {e}")),
                Ok(value) => match identify(&value, &block.heading) {
                    None => Err("not recognised as a message, the part of one, or a listed non-message".into()),
                    Some(Found::NotAMessage) => Ok(()),
                    Some(Found::Message) => self.check_message(&value, None),
                    Some(Found::Part(kind)) => self.check(kind, &value),
                },
            };
            if let Err(why) = outcome {
                self.failures.push(format!("{block}, value {}: {why}", n + 1));
            }
        }
    }

    /// An example session: `>` lines are written by the supervisor, `<` lines by the plugin.
    fn session(&mut self, block: &Block) {
        let mut asked: HashMap<i64, String> = HashMap::new();
        for (n, line) in block.body.iter().enumerate() {
            let (from_supervisor, text) = match line.trim_start().split_at_checked(2) {
                Some(("> ", text)) => (true, text),
                Some(("< ", text)) => (false, text),
                _ => continue, // commentary
            };
            if let Err(why) = self.session_line(from_supervisor, text, &mut asked) {
                self.failures.push(format!("{block}, session line {}: {why}", n + 1));
            }
        }
    }

    fn session_line(
        &mut self,
        from_supervisor: bool,
        text: &str,
        asked: &mut HashMap<i64, String>,
    ) -> Result<(), String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let (method, id) = (value["method"].as_str(), value["id"].as_i64());
        match (from_supervisor, method, id) {
            (true, Some(method), Some(id)) => {
                asked.insert(id, method.to_owned());
                self.check_message(&value, None)
            }
            (true, Some(_), None) | (false, Some(_), None) => self.check_message(&value, None),
            (false, Some(_), Some(_)) => Err("a plugin sends no requests".into()),
            (true, None, _) => Err("the supervisor sends no answers".into()),
            (false, None, id) => {
                let method = match id {
                    Some(id) => {
                        Some(asked.remove(&id).ok_or("an answer to no request of the session, or a second one")?)
                    }
                    None if value["id"].is_null() => None, // an error about a line whose id could not be read
                    None => return Err("an answer whose id is not an integer".into()),
                };
                self.check_message(&value, method.as_deref())
            }
        }
    }
}

fn is_session(block: &Block) -> bool {
    block.body.iter().map(|l| l.trim_start()).any(|l| l.starts_with("> {") || l.starts_with("< {"))
}

#[test]
fn every_example_of_the_spec_validates() {
    let catalogue = Catalogue::load();
    let markdown = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md")).unwrap();
    let mut checker = Checker { catalogue: &catalogue, seen: BTreeSet::new(), failures: Vec::new() };
    let (mut sessions, mut json_blocks) = (0, 0);
    for block in blocks(&markdown) {
        if is_session(&block) {
            sessions += 1;
            checker.session(&block);
        } else if block.lang.eq_ignore_ascii_case("json") {
            json_blocks += 1;
            checker.json_block(&block);
        }
    }
    assert!(checker.failures.is_empty(), "{}", checker.failures.join("\n"));
    assert!(sessions >= 1 && json_blocks >= 7, "found {sessions} sessions and {json_blocks} json blocks");
    let unseen: Vec<_> = Kind::ALL.iter().filter(|k| !checker.seen.contains(k)).map(|k| k.file()).collect();
    assert!(unseen.is_empty(), "no example of PROTOCOL.md exercises {unseen:?}");
}

#[test]
fn an_example_nothing_recognises_fails() {
    let catalogue = Catalogue::load();
    let markdown = r#"### 4.7 `frobnicate`

```json
{"widget": 1}
```

## 6. Session

```
> {"jsonrpc":"2.0","id":1,"method":"task","params":{"taskId":"t","taskName":"STOP"}}
< {"jsonrpc":"2.0","id":2,"result":{}}
< {"jsonrpc":"2.0","id":1,"result":{"status":"0"}}
```
"#;
    let mut checker = Checker { catalogue: &catalogue, seen: BTreeSet::new(), failures: Vec::new() };
    for block in blocks(markdown) {
        if is_session(&block) {
            checker.session(&block);
        } else {
            checker.json_block(&block);
        }
    }
    let failures = checker.failures.join("\n");
    assert_eq!(checker.failures.len(), 3, "{failures}");
    assert!(failures.contains("line 3 (under \"4.7 `frobnicate`\"), value 1: not recognised"), "{failures}");
    assert!(failures.contains("session line 2: an answer to no request"), "{failures}");
    assert!(failures.contains("session line 3: not a valid task-result.schema.json"), "{failures}");
}

// ---------------------------------------------------------------------------------------
// The schemas' own examples, through the Rust types.

#[test]
fn each_schemas_examples_validate_and_round_trip_through_the_rust_types() {
    let catalogue = Catalogue::load();
    for kind in Kind::ALL {
        let examples = catalogue.examples(kind);
        assert!(examples.len() >= 2, "{}: several examples", kind.file());
        for (n, example) in examples.iter().enumerate() {
            let at = format!("{} example {}", kind.file(), n + 1);
            catalogue.validate(kind, example).unwrap_or_else(|e| panic!("{at}: {e}"));
            let again = kind.through_rust(example).unwrap_or_else(|e| panic!("{at}: the Rust type refuses it: {e}"));
            catalogue.validate(kind, &again).unwrap_or_else(|e| panic!("{at}, written back by Rust as {again}: {e}"));
        }
    }
}

#[test]
fn what_the_rust_types_write_validates() {
    // The other direction, from values built in Rust rather than read: every default and
    // optional member the types write out must be one the schema accepts.
    let catalogue = Catalogue::load();
    let cases: Vec<(Kind, Value)> = vec![
        (Kind::TaskResult, serde_json::to_value(TaskResult::ok()).unwrap()),
        (
            Kind::TaskResult,
            serde_json::to_value(TaskResult::failed("no such image").with("providerid", "i-1")).unwrap(),
        ),
        (Kind::Error, serde_json::to_value(ResponseError::new(-32601, "unknown method")).unwrap()),
        (
            Kind::LogParams,
            serde_json::to_value(LogParams {
                level: loom_protocol::LogLevel::Warn,
                message: "m".into(),
                task_id: None,
                fields: None,
            })
            .unwrap(),
        ),
        (
            Kind::ProgressParams,
            serde_json::to_value(ProgressParams { task_id: "t1".into(), message: "half".into(), percent: Some(50.0) })
                .unwrap(),
        ),
        (Kind::CancelParams, serde_json::to_value(CancelParams { task_id: "t1".into() }).unwrap()),
    ];
    for (kind, value) in cases {
        catalogue.validate(kind, &value).unwrap_or_else(|e| panic!("{value}: {e}"));
    }
    for level in ["trace", "debug", "info", "warn", "error"] {
        let params: HandshakeParams = serde_json::from_value(
            json!({"protocolVersions": [1], "plugin": "p", "kind": "automator", "settings": {}, "logLevel": level}),
        )
        .unwrap();
        catalogue.validate(Kind::HandshakeParams, &serde_json::to_value(params).unwrap()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Exactly as strict as the spec.

#[test]
fn messages_that_break_the_spec_are_rejected() {
    let catalogue = Catalogue::load();
    let long_id = "t".repeat(257);
    let at_limit = "t".repeat(256);
    let hello = |versions: Value| {
        let mut params = json!({"plugin": "p", "kind": "provider", "settings": {}, "logLevel": "info"});
        params["protocolVersions"] = versions;
        params
    };
    // (schema, a valid value, the same value with one mistake, the mistake)
    let cases: Vec<(Kind, Value, Value, &str)> = vec![
        (Kind::TaskResult, json!({"status": 0}), json!({"status": "0"}), "status as a string"),
        (Kind::TaskResult, json!({"status": 1}), json!({"status": 1.5}), "status not an integer"),
        (Kind::TaskResult, json!({"status": 0}), json!({"result": {}}), "no status"),
        (
            Kind::TaskResult,
            json!({"status": 0, "result": {}}),
            json!({"status": 0, "result": []}),
            "result not an object",
        ),
        (Kind::TaskParams, json!({"taskId": "t1", "taskName": "CREATE"}), json!({"taskName": "CREATE"}), "no taskId"),
        (Kind::TaskParams, json!({"taskId": "t1", "taskName": "CREATE"}), json!({"taskId": "t1"}), "no taskName"),
        (
            Kind::TaskParams,
            json!({"taskId": "a.b", "taskName": "START"}),
            json!({"taskId": "a b", "taskName": "START"}),
            "a space in taskId",
        ),
        (
            Kind::TaskParams,
            json!({"taskId": at_limit, "taskName": "START"}),
            json!({"taskId": long_id, "taskName": "START"}),
            "taskId of 257",
        ),
        (
            Kind::TaskParams,
            json!({"taskId": "t", "taskName": "START"}),
            json!({"taskId": "", "taskName": "START"}),
            "empty taskId",
        ),
        (
            Kind::TaskParams,
            json!({"taskId": "t", "taskName": "START"}),
            json!({"taskId": "t", "taskName": "start"}),
            "lower-case taskName",
        ),
        (
            Kind::TaskParams,
            json!({"taskId": "t", "taskName": "START", "config": {}}),
            json!({"taskId": "t", "taskName": "START", "config": "x"}),
            "config not an object",
        ),
        (Kind::CancelParams, json!({"taskId": "t1"}), json!({}), "cancel without taskId"),
        (
            Kind::ProgressParams,
            json!({"taskId": "t", "message": "m", "percent": 100}),
            json!({"taskId": "t", "message": "m", "percent": 101}),
            "percent 101",
        ),
        (
            Kind::ProgressParams,
            json!({"taskId": "t", "message": "m", "percent": 0}),
            json!({"taskId": "t", "message": "m", "percent": -1}),
            "percent -1",
        ),
        (
            Kind::LogParams,
            json!({"level": "fatal", "message": "m"}),
            json!({"level": "verbose", "message": "m"}),
            "an unknown level",
        ),
        (Kind::LogParams, json!({"level": "info", "message": "m"}), json!({"level": "info"}), "log without message"),
        (
            Kind::OutputParams,
            json!({"taskId": "t", "stream": "stderr", "data": ""}),
            json!({"taskId": "t", "stream": "stdin", "data": ""}),
            "stream stdin",
        ),
        (
            Kind::HandshakeResult,
            json!({"protocolVersion": 1, "name": "n", "version": "1", "tasks": ["DELETE"], "maxConcurrency": 1}),
            json!({"protocolVersion": 1, "name": "n", "version": "1", "tasks": ["DELETE"], "maxConcurrency": 0}),
            "maxConcurrency 0",
        ),
        (
            Kind::HandshakeResult,
            json!({"protocolVersion": 1, "name": "n", "version": "1", "tasks": ["DELETE"]}),
            json!({"protocolVersion": 1, "name": "n", "version": "1", "tasks": []}),
            "no tasks",
        ),
        (
            Kind::HandshakeResult,
            json!({"protocolVersion": 1, "name": "n", "version": "1", "tasks": ["DELETE"]}),
            json!({"protocolVersion": "1", "name": "n", "version": "1", "tasks": ["DELETE"]}),
            "protocolVersion as a string",
        ),
        (Kind::HandshakeParams, hello(json!([1])), hello(json!([])), "no protocol versions"),
        (Kind::HandshakeParams, hello(json!([1, 2])), hello(json!([1, "2"])), "a version as a string"),
        (
            Kind::Error,
            json!({"code": -32601, "message": "m"}),
            json!({"code": "-32601", "message": "m"}),
            "code as a string",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
            json!([{"jsonrpc": "2.0", "id": 1, "result": {}}]),
            "a batch array",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": ""}}),
            "result and error",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
            json!({"jsonrpc": "1.0", "id": 1, "result": {}}),
            "jsonrpc 1.0",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
            json!({"id": 1, "result": {}}),
            "no jsonrpc",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1}),
            "neither result nor error",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}),
            json!({"jsonrpc": "2.0", "id": "1", "method": "ping", "params": {}}),
            "a string id",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "method": "log", "params": {}}),
            json!({"jsonrpc": "2.0", "id": 9, "method": "log", "params": {}}),
            "log as a request",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 9, "method": "task", "params": {}}),
            json!({"jsonrpc": "2.0", "method": "task", "params": {}}),
            "task as a notification",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "m"}}),
            json!({"jsonrpc": "2.0", "id": null, "result": {}}),
            "a null id on a success",
        ),
        (
            Kind::Envelope,
            json!({"jsonrpc": "2.0", "id": 2, "result": {"status": 0}}),
            json!({"jsonrpc": "2.0", "id": 2, "result": 0}),
            "a result that is no object",
        ),
    ];
    for (kind, valid, invalid, mistake) in cases {
        assert_eq!(catalogue.validate(kind, &valid), Ok(()), "{mistake}: the valid twin {valid}");
        assert!(catalogue.validate(kind, &invalid).is_err(), "{mistake}: {invalid} passed {}", kind.file());
    }
}

#[test]
fn unknown_members_are_accepted_everywhere() {
    // "Unknown members of any object MUST be ignored": no schema may close an object.
    let catalogue = Catalogue::load();
    for kind in Kind::ALL {
        for example in catalogue.examples(kind) {
            let mut extended = example.clone();
            extended.as_object_mut().unwrap().insert("x-member-from-the-future".into(), json!({"any": [1]}));
            catalogue.validate(kind, &extended).unwrap_or_else(|e| panic!("{extended}: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The schema files themselves.

/// The keywords the schemas may use. The meta-schema accepts any unknown keyword, so a
/// misspelt one (`requried`) would silently accept everything: each keyword is listed.
/// `additionalProperties` and `unevaluatedProperties` are missing on purpose (above).
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "title",
    "description",
    "examples",
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "items",
    "minItems",
    "minimum",
    "maximum",
    "pattern",
    "oneOf",
    "anyOf",
    "not",
];

/// Every keyword of `schema` that is not in [`KEYWORDS`], with where it is.
fn unknown_keywords(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        return out.push(format!("{at}: a schema must be an object here"));
    };
    for (key, value) in map {
        let here = format!("{at}/{key}");
        if !KEYWORDS.contains(&key.as_str()) {
            out.push(format!("{here}: keyword not in the list"));
        }
        match key.as_str() {
            "properties" | "$defs" => {
                for (name, sub) in value.as_object().into_iter().flatten() {
                    unknown_keywords(sub, &format!("{here}/{name}"), out);
                }
            }
            "items" | "not" => unknown_keywords(value, &here, out),
            "oneOf" | "anyOf" => {
                for (n, sub) in value.as_array().into_iter().flatten().enumerate() {
                    unknown_keywords(sub, &format!("{here}/{n}"), out);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_schema_file_is_a_valid_2020_12_schema_with_known_keywords() {
    let catalogue = Catalogue::load(); // compiling meta-validates each
    let on_disk: BTreeSet<String> = std::fs::read_dir(schema_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let known: BTreeSet<String> = Kind::ALL.iter().map(|k| k.file().to_owned()).collect();
    assert_eq!(on_disk, known, "every schema file is tested, and every tested one exists");
    let mut problems = Vec::new();
    for (kind, doc) in &catalogue.docs {
        assert_eq!(doc["$schema"], "https://json-schema.org/draft/2020-12/schema", "{}", kind.file());
        unknown_keywords(doc, kind.file(), &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_meta_schema_is_checked() {
    // The control for the test above: boon refuses a schema that breaks the meta-schema.
    let mut compiler = Compiler::new();
    let id = format!("{ID_BASE}broken.schema.json");
    let broken =
        json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "integer", "minimum": "one"});
    compiler.add_resource(&id, broken).unwrap();
    assert!(compiler.compile(&id, &mut Schemas::new()).is_err());
    let mut problems = Vec::new();
    unknown_keywords(&json!({"type": "object", "requried": ["a"]}), "t", &mut problems);
    assert_eq!(problems, vec!["t/requried: keyword not in the list"]);
}

#[test]
fn definitions_repeated_across_files_are_the_same() {
    // Each file stands alone (only local `$ref`s), so shared definitions are repeated.
    let catalogue = Catalogue::load();
    let mut first: HashMap<&str, (&str, &Value)> = HashMap::new();
    for (kind, doc) in &catalogue.docs {
        for (name, def) in doc["$defs"].as_object().into_iter().flatten() {
            match first.get(name.as_str()) {
                Some((file, earlier)) => assert_eq!(*earlier, def, "$defs/{name} of {file} and {}", kind.file()),
                None => {
                    first.insert(name, (kind.file(), def));
                }
            }
        }
        let refs = doc.to_string();
        assert!(
            !refs.contains("\"$ref\":\"http") && !refs.contains(".schema.json#"),
            "{}: no cross-file $ref",
            kind.file()
        );
    }
    assert!(first.contains_key("taskId") && first.contains_key("errorObject"));
}
