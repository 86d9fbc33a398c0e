//! Keeping credentials in, at every boundary where text from a task or a plugin leaves the
//! supervisor.
//!
//! Tasks carry credentials (`ssh-auth`, provider API keys): the values that
//! [`crate::wire::envelope`] finds under credential-named keys. The supervisor never logs a task,
//! but a plugin may echo one anywhere: a log notification, a stderr line, streamed output,
//! its answer's `stdout`, `stderr` or error message, even an id or a method name. **One
//! rule** keeps them in: every occurrence of every known credential value is replaced by
//! [`MASK`], longest value first ([`scrub_values`]). It is applied
//!
//! - to every line taken from a plugin before it reaches the log, with the values of the
//!   tasks its process runs and ran recently ([`Redactor`]), and every plugin-provided
//!   field cut to a bounded length ([`bound`]);
//! - to live output as it streams, holding back the end of a chunk that could be the start
//!   of a value split across chunks ([`StreamScrubber`]);
//! - to a task's result, every member except `result` ([`scrub_result`]): `result` is where
//!   credentials legitimately travel back (`result.ssh-auth` from a provider), so it is
//!   kept as the plugin sent it. Since `run`, the API, the journal and `cluster` all take
//!   results from [`crate::Supervisor::run`], they all get it scrubbed.
//!
//! Where a credential must be kept but no longer used (a terminated cluster's spec), it is
//! replaced by [`MASK`] by key ([`mask_credentials`]), with the same notion of a
//! credential-named key.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use loom_protocol::TaskResult;
use serde_json::{Map, Value};

/// What replaces a credential.
pub const MASK: &str = "[redacted]";

/// Shortest credential value worth scrubbing: shorter ones would garble ordinary text.
pub const MIN_SECRET_LEN: usize = 3;

/// Whether a key names a credential: `password`, `api_key`, `rackspace_api_key`,
/// `secret_access_key`, `token`, `private_key`, `credentials`, ... A key that says
/// something *about* a key is not one: `ssh_keypair` and `ssh_key_resource` (Loom's AWS
/// provider fields, naming a key pair and an uploaded key), `ssh_host_keys` and
/// `public_key` (public), `key_name`, `key_id`.
pub fn is_secret_key(key: &str) -> bool {
    // Case-insensitive, without allocating, in one pass over the key (each marker is tried
    // only where its first letter is): this runs for every key of every task.
    let key = key.as_bytes();
    let at = |i: usize, m: &[u8]| key.get(i..i + m.len()).is_some_and(|w| w.eq_ignore_ascii_case(m));
    let mut names_a_key = false;
    let strong = (0..key.len()).any(|i| match key[i].to_ascii_lowercase() {
        b'p' => at(i, b"pass") || at(i, b"private"),
        b's' => at(i, b"secret"),
        b't' => at(i, b"token"),
        b'c' => at(i, b"credential"),
        b'k' => {
            names_a_key |= at(i, b"key");
            false
        }
        _ => false,
    });
    strong || (names_a_key && !is_about_a_key(key))
}

/// Whether a key that contains "key" names a public key, a key's name or id, or a key pair
/// or key resource: not a credential itself.
fn is_about_a_key(key: &[u8]) -> bool {
    const ABOUT: [&[u8]; 9] =
        [b"public", b"keypair", b"key_pair", b"resource", b"host_key", b"keyname", b"key_name", b"key_id", b"keyid"];
    let lower = |b: &u8| b.to_ascii_lowercase();
    ABOUT.iter().any(|m| key.windows(m.len()).any(|w| w.iter().map(lower).eq(m.iter().copied())))
}

/// How many values of finished tasks are remembered.
const RECENT: usize = 256;

/// Something that scrubs text: a task's own values ([`TaskSecrets`]) or a process's
/// ([`Redactor`]).
pub trait Scrub {
    /// `text` with every known credential replaced by [`MASK`].
    fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str>;
}

/// The rule: every stretch of `text` covered by an occurrence of a value in `longest_first`
/// (sorted longest first) replaced by [`MASK`]. Occurrences are found in the text as it
/// is, overlapping ones included, and masked as their union: with `abcd` and `cdef`
/// known, `abcdef` is masked whole (masking one value after the other would leave `ef`).
/// Borrows when there is nothing to replace.
pub fn scrub_values<'t>(text: &'t str, longest_first: &[String]) -> Cow<'t, str> {
    // Values longer than the text cannot be in it: skip them (short keys and values of a
    // large result are scrubbed one by one).
    let fits = longest_first.partition_point(|s| s.len() > text.len());
    let mut found: Vec<(usize, usize)> = Vec::new();
    for secret in longest_first[fits..].iter().filter(|s| !s.is_empty()) {
        let mut from = 0;
        while let Some(at) = text[from..].find(secret.as_str()) {
            let start = from + at;
            found.push((start, start + secret.len()));
            // The next occurrence may overlap this one: look again from its next character.
            from = start + text[start..].chars().next().map_or(1, char::len_utf8);
        }
    }
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    found.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut written = 0;
    let mut spans = found.into_iter().peekable();
    while let Some((start, mut end)) = spans.next() {
        // Sorted by start: whatever starts before this stretch ends is part of it.
        while let Some((_, next_end)) = spans.next_if(|(next, _)| *next < end) {
            end = end.max(next_end);
        }
        out.push_str(&text[written..start]);
        out.push_str(MASK);
        written = end;
    }
    out.push_str(&text[written..]);
    Cow::Owned(out)
}

/// One task's credential values, which must be sorted longest first (as
/// [`crate::TaskEnvelope::secrets`] holds them; see [`scrub_values`]).
#[derive(Debug, Clone, Copy)]
pub struct TaskSecrets<'a>(pub &'a [String]);

impl Scrub for TaskSecrets<'_> {
    fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        scrub_values(text, self.0)
    }
}

/// Scrubs every member of `result` except `result`: `stdout`, `stderr`, `hostname`,
/// `ipaddresses` and any other member, strings and member names at any depth; a number
/// that is a credential becomes the string [`MASK`].
pub fn scrub_result(result: &mut TaskResult, scrub: &impl Scrub) {
    scrub_string(&mut result.stdout, scrub);
    scrub_string(&mut result.stderr, scrub);
    if let Some(h) = result.hostname.as_mut() {
        scrub_string(h, scrub);
    }
    if let Some(ip) = result.ipaddresses.as_mut() {
        scrub_value(ip, scrub);
    }
    scrub_map(&mut result.extra, scrub);
}

fn scrub_string(s: &mut String, scrub: &impl Scrub) {
    if let Cow::Owned(clean) = scrub.scrub(s) {
        *s = clean;
    }
}

fn scrub_value(v: &mut Value, scrub: &impl Scrub) {
    match v {
        Value::String(s) => scrub_string(s, scrub),
        Value::Number(n) => {
            let text = n.to_string();
            if let Cow::Owned(clean) = scrub.scrub(&text) {
                *v = Value::String(clean);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| scrub_value(i, scrub)),
        Value::Object(map) => scrub_map(map, scrub),
        Value::Bool(_) | Value::Null => {}
    }
}

fn scrub_map(map: &mut Map<String, Value>, scrub: &impl Scrub) {
    // Member names are plugin text too; the map is rebuilt only when one changes.
    if map.keys().any(|k| matches!(scrub.scrub(k), Cow::Owned(_))) {
        *map = std::mem::take(map).into_iter().map(|(k, v)| (scrub.scrub(&k).into_owned(), v)).collect();
    }
    map.values_mut().for_each(|v| scrub_value(v, scrub));
}

/// Replaces, in place, every value under a credential-named key (at any depth, strings
/// and numbers, as [`crate::wire::envelope`] collects them) with [`MASK`].
pub fn mask_credentials(v: &mut Value) {
    fn walk(v: &mut Value, secret: bool) {
        match v {
            Value::String(_) | Value::Number(_) if secret => *v = Value::String(MASK.to_owned()),
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, secret)),
            Value::Object(map) => map.iter_mut().for_each(|(k, v)| walk(v, secret || is_secret_key(k))),
            _ => {}
        }
    }
    walk(v, false);
}

/// `text` cut to at most `max` bytes (at a character boundary), ending with how long it
/// was when it was cut. For plugin-provided text on its way into a log line.
pub fn bound(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... [{} bytes in all]", &text[..end], text.len()))
}

/// `text` with line breaks, terminal escapes and other unprintable characters written as
/// Rust escapes (`\n`, `\u{1b}`), quotes and backslashes left as they are: a
/// plugin-provided name or id shown as a log field, a key quoted in a configuration error,
/// a cluster spec's names in a problem, each stays on its one line and cannot move a
/// terminal's cursor.
pub fn printable(text: &str) -> Cow<'_, str> {
    let plain = |c: char| matches!(c, '\\' | '\'' | '"') || c.escape_debug().len() == 1;
    if text.chars().all(plain) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().map(|c| if plain(c) { c.to_string() } else { c.escape_debug().to_string() }).collect())
}

/// The credential values currently known for one plugin process: those of the tasks it
/// runs, and of the last [`RECENT`] it ran. Values of finished tasks stay known for a
/// while, because stderr is read independently of the protocol channel and may lag
/// behind the task's answer.
#[derive(Debug, Default)]
pub struct Redactor {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Values of running tasks, with how many tasks hold each.
    active: HashMap<String, usize>,
    /// Values of recently finished tasks, oldest first.
    recent: VecDeque<String>,
    /// Every value above once, longest first; rebuilt when they change.
    known: Vec<String>,
}

impl Inner {
    fn rebuild(&mut self) {
        let mut known: Vec<String> = self.active.keys().chain(self.recent.iter()).cloned().collect();
        known.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        known.dedup();
        self.known = known;
    }
}

impl Redactor {
    /// Starts scrubbing `secrets` (a task began).
    pub fn add(&self, secrets: &[String]) {
        if secrets.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for s in secrets {
            *inner.active.entry(s.clone()).or_default() += 1;
        }
        inner.rebuild();
    }

    /// A task holding `secrets` ended; they are still scrubbed for a while.
    pub fn release(&self, secrets: &[String]) {
        if secrets.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for s in secrets {
            if let Some(n) = inner.active.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    inner.active.remove(s);
                    inner.recent.push_back(s.clone());
                }
            }
        }
        while inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
        inner.rebuild();
    }

    /// `text` with every known value replaced by [`MASK`].
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        scrub_values(text, &self.lock().known)
    }

    /// Where the end of `text` that could be the start of a known value begins: the
    /// earliest position from which the rest of `text` is a proper prefix of one.
    /// `text.len()` when there is none.
    pub(crate) fn partial_start(&self, text: &str) -> usize {
        let bytes = text.as_bytes();
        let mut start = bytes.len();
        for secret in &self.lock().known {
            let secret = secret.as_bytes();
            // Only the last len-1 bytes can hold a proper prefix.
            let from = bytes.len().saturating_sub(secret.len().saturating_sub(1));
            if let Some(p) = (from..start).find(|&p| secret.starts_with(&bytes[p..])) {
                start = p;
            }
        }
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the sets inconsistent in a way that
        // matters; keep scrubbing.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Scrub for Redactor {
    fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        Redactor::scrub(self, text)
    }
}

/// Scrubs a stream that arrives in chunks (a task's `output`), so that a value split
/// across two chunks is still found. What comes out is scrubbed; the end of what came in
/// that could be the start of a known value is held back (at most the longest value's
/// length, less one byte) until the next chunk, or the end of the stream, shows what it is.
#[derive(Debug, Default)]
pub struct StreamScrubber {
    held: String,
}

impl StreamScrubber {
    /// Takes the next chunk; returns what can be let out now, scrubbed (maybe nothing).
    pub fn push(&mut self, chunk: &str, redactor: &Redactor) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(chunk);
        let mut text = match redactor.scrub(&text) {
            Cow::Owned(clean) => clean,
            Cow::Borrowed(_) => text,
        };
        let keep = redactor.partial_start(&text);
        self.held = text.split_off(keep);
        text
    }

    /// The end of the stream: what was held back, scrubbed.
    pub fn finish(&mut self, redactor: &Redactor) -> String {
        let held = std::mem::take(&mut self.held);
        redactor.scrub(&held).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_values_are_masked_as_their_union() {
        let known = |v: &[&str]| {
            let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
            v.sort_by_key(|s| std::cmp::Reverse(s.len()));
            v
        };
        // Found with the task_envelope_scrub fuzz target: one value after the other left "ef".
        assert_eq!(scrub_values("x abcdef y", &known(&["abcd", "cdef"])), "x [redacted] y");
        assert_eq!(scrub_values("aaaa", &known(&["aaa"])), "[redacted]", "overlapping occurrences of one value");
        assert_eq!(
            scrub_values("pw=hunter2-extended and hunter2", &known(&["hunter2", "hunter2-extended"])),
            "pw=[redacted] and [redacted]"
        );
        assert_eq!(
            scrub_values("abcdef", &known(&["abc", "def"])),
            "[redacted][redacted]",
            "touching, not overlapping"
        );
        assert_eq!(scrub_values("é-sécret-é", &known(&["sécret"])), "é-[redacted]-é");
        assert!(matches!(scrub_values("nothing here", &known(&["abc"])), Cow::Borrowed(_)));
    }
    use serde_json::json;

    #[test]
    fn scrubs_running_and_recent_values_longest_first() {
        let r = Redactor::default();
        assert_eq!(r.scrub("nothing known"), "nothing known");
        r.add(&["hunter2".into(), "hunter2-extended".into()]);
        assert_eq!(r.scrub("pw=hunter2-extended and hunter2"), "pw=[redacted] and [redacted]");
        r.release(&["hunter2".into(), "hunter2-extended".into()]);
        assert_eq!(r.scrub("late stderr: hunter2"), "late stderr: [redacted]");
    }

    #[test]
    fn shared_values_stay_active_until_every_holder_releases() {
        let r = Redactor::default();
        r.add(&["s3cret".into()]);
        r.add(&["s3cret".into()]);
        r.release(&["s3cret".into()]);
        assert_eq!(r.lock().active.get("s3cret"), Some(&1));
        r.release(&["s3cret".into()]);
        assert!(r.lock().active.is_empty());
        assert_eq!(r.scrub("s3cret"), MASK);
    }

    #[test]
    fn forgets_the_oldest_after_many_tasks() {
        let r = Redactor::default();
        for i in 0..(RECENT + 10) {
            let s = vec![format!("secret-{i:04}")];
            r.add(&s);
            r.release(&s);
        }
        assert_eq!(r.lock().recent.len(), RECENT);
        assert_eq!(r.scrub("secret-0000"), "secret-0000");
        assert_eq!(r.scrub(&format!("secret-{:04}", RECENT + 9)), MASK);
    }

    /// Feeds `chunks` through a stream scrubber; returns what came out, piece by piece.
    fn stream(r: &Redactor, chunks: &[&str]) -> Vec<String> {
        let mut s = StreamScrubber::default();
        let mut out: Vec<String> = chunks.iter().map(|c| s.push(c, r)).collect();
        out.push(s.finish(r));
        out
    }

    #[test]
    fn a_value_split_across_chunks_is_scrubbed_and_never_let_out_in_part() {
        let r = Redactor::default();
        r.add(&["hunter2-long".into(), "tok".into()]);
        let pieces = stream(&r, &["pw hunt", "er2-lo", "ng ok\nto", "k\n"]);
        assert_eq!(pieces.concat(), "pw [redacted] ok\n[redacted]\n");
        for p in &pieces {
            assert!(!p.contains("hunt") && !p.contains("er2") && !p.ends_with('t'), "{pieces:?}");
        }
        // Nothing that could start a value is held back: text flows at once.
        assert_eq!(stream(&r, &["plain text\n", "more\n"]), ["plain text\n", "more\n", ""]);
        // A prefix that turns out not to be one is let out with what follows.
        assert_eq!(stream(&r, &["a hunter", "3\n"]), ["a ", "hunter3\n", ""]);
        // The end of the stream lets out what was held.
        assert_eq!(stream(&r, &["ends with hunter2"]).concat(), "ends with hunter2");
    }

    #[test]
    fn held_back_text_never_splits_a_character() {
        let r = Redactor::default();
        r.add(&["é-secret".into()]);
        let pieces = stream(&r, &["x é", "-secret y"]);
        assert_eq!(pieces.concat(), "x [redacted] y");
    }

    #[test]
    fn results_are_scrubbed_everywhere_but_under_result() {
        let secrets = ["1234567890123".to_owned(), "hunter2".to_owned()];
        let mut r: TaskResult = serde_json::from_value(json!({
            "status": 1,
            "result": {"ssh-auth": {"password": "hunter2"}, "pin": 1234567890123_u64},
            "stdout": "out hunter2", "stderr": "err hunter2", "hostname": "h-hunter2",
            "ipaddresses": {"access_v4": "hunter2"},
            "note": {"deep": ["x hunter2"], "hunter2": 1, "pin": 1234567890123_u64}
        }))
        .unwrap();
        scrub_result(&mut r, &TaskSecrets(&secrets));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["result"], json!({"ssh-auth": {"password": "hunter2"}, "pin": 1234567890123_u64}));
        let mut rest = v.as_object().unwrap().clone();
        rest.remove("result");
        let rest = Value::Object(rest).to_string();
        assert!(!rest.contains("hunter2") && !rest.contains("1234567890123"), "{rest}");
        assert_eq!(v["stdout"], "out [redacted]");
        assert_eq!(v["note"]["[redacted]"], 1);
        assert_eq!(v["note"]["pin"], MASK);
    }

    #[test]
    fn masks_every_value_under_a_credential_named_key() {
        let mut v = json!({"provider": {"name": "p", "fields": {"api_user": "me", "api_key": "k1",
            "credentials": {"pw": "x", "list": ["y", {"z": 1}]}, "port": 22}}});
        mask_credentials(&mut v);
        assert_eq!(
            v,
            json!({"provider": {"name": "p", "fields": {"api_user": "me", "api_key": MASK,
                "credentials": {"pw": MASK, "list": [MASK, {"z": MASK}]}, "port": 22}}})
        );
    }

    #[test]
    fn bound_cuts_at_a_character_and_says_how_long_it_was() {
        assert_eq!(bound("short", 10), "short");
        assert_eq!(bound("ééé", 3), "é... [6 bytes in all]");
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(printable("plain"), "plain");
    }
}
