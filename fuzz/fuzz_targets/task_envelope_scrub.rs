//! The task envelope (`TaskEnvelope::parse`) and the scrubber (`redact::Redactor`) that
//! keeps the task's credentials out of the log.
//!
//! Input: a task (JSON), optionally followed by a 0xFF byte (never part of UTF-8 text)
//! and free text, as a plugin might log it. Checked:
//! - an accepted task has a non-empty `taskId` equal to the document's, a known
//!   `taskName`, is forwarded as submitted with line breaks made spaces (one line, still the
//!   same JSON), and its secrets are each at least `MIN_SECRET_LEN` bytes, longest first,
//!   without repeats, and include every string of that length that sits directly under a
//!   credential-named key (or in an array there);
//! - once the task's secrets are added to a `Redactor`, no secret survives scrubbing of the
//!   task's own text, of the free text, or of the free text with the secrets spliced into
//!   it, neither while the task runs nor after it ends; text with no secret in it is left
//!   as it is;
//! - nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loom_fuzz::leaked;
use loom_protocol::TaskName;
use loom_supervisor::TaskEnvelope;
use loom_supervisor::inputs::{MIN_SECRET_LEN, is_secret_key};
use loom_supervisor::inputs::Redactor;
use serde_json::Value;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let (task, text) = match data.iter().position(|b| *b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // What the daemon's API and `run` hand to the envelope: any JSON value.
    let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(task) else { return };
    let submitted = raw.get().to_owned();
    let Ok(envelope) = TaskEnvelope::parse(raw) else { return };
    check_envelope(&envelope, &submitted);
    check_scrubbing(&envelope, &submitted, &String::from_utf8_lossy(text));
});

fn check_envelope(envelope: &TaskEnvelope, submitted: &str) {
    assert!(!envelope.task_id.is_empty(), "an accepted task has a taskId");
    let forwarded = envelope.raw().get();
    assert!(!forwarded.contains(['\n', '\r']), "a task is forwarded on one line");
    assert_eq!(forwarded, submitted.replace(['\n', '\r'], " "), "a task is forwarded as submitted");

    let secrets = &envelope.secrets;
    assert!(secrets.iter().all(|s| s.len() >= MIN_SECRET_LEN), "short secrets: {secrets:?}");
    assert!(
        secrets.windows(2).all(|w| w[0].len() > w[1].len() || (w[0].len() == w[1].len() && w[0] < w[1])),
        "secrets are sorted longest first without repeats: {secrets:?}"
    );

    // The same document as a tree (when serde_json reads it: it may refuse numbers out of
    // range that the envelope skips over).
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(submitted) else { return };
    assert_eq!(doc.get("taskId").and_then(Value::as_str), Some(envelope.task_id.as_str()), "taskId");
    let name = doc.get("taskName").and_then(Value::as_str).and_then(|n| n.parse::<TaskName>().ok());
    assert_eq!(name, Some(envelope.task_name), "taskName");
    let mut must = Vec::new();
    for (key, value) in &doc {
        credential_values(key, value, &mut must);
    }
    for s in must {
        assert!(secrets.contains(&s), "a credential value is missing from the secrets ({} bytes)", s.len());
    }
}

/// Strings of at least `MIN_SECRET_LEN` bytes directly under a credential-named key (or
/// in arrays under one), anywhere in `value`.
fn credential_values(key: &str, value: &Value, out: &mut Vec<String>) {
    fn walk(secret: bool, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) if secret && s.len() >= MIN_SECRET_LEN => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| walk(secret, v, out)),
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(is_secret_key(k), v, out)),
            _ => {}
        }
    }
    walk(is_secret_key(key), value, out);
}

fn check_scrubbing(envelope: &TaskEnvelope, submitted: &str, text: &str) {
    let secrets = &envelope.secrets;
    let redactor = Redactor::default();
    redactor.add(secrets);
    let spliced = splice(text, secrets);
    let texts = [submitted, envelope.raw().get(), text, spliced.as_str()];
    for t in texts {
        assert_scrubbed(&redactor, t, secrets, "while the task runs");
    }
    redactor.release(secrets);
    for t in texts {
        assert_scrubbed(&redactor, t, secrets, "after the task ended");
    }
}

fn assert_scrubbed(redactor: &Redactor, text: &str, secrets: &[String], when: &str) {
    let scrubbed = redactor.scrub(text);
    if let Some(secret) = leaked(&scrubbed, secrets) {
        panic!("a secret ({} bytes) survived scrubbing {when}", secret.len());
    }
    if !secrets.iter().any(|s| text.contains(s.as_str())) {
        assert_eq!(scrubbed, text, "text without a secret is left as it is");
    }
}

/// `text` with the secrets put between its pieces, in turn, so that secrets meet
/// arbitrary neighbours (and each other) in what is scrubbed.
fn splice(text: &str, secrets: &[String]) -> String {
    if secrets.is_empty() {
        return text.to_owned();
    }
    let mut out = String::new();
    for (i, piece) in text.split(' ').enumerate() {
        out.push_str(piece);
        out.push_str(&secrets[i % secrets.len()]);
    }
    out
}
