//! Everything one process of the plugin under test wrote and was sent, in the order it
//! happened, and what each line is.
//!
//! Three reader tasks (stdout, fd 3, stderr) and the writer append to one
//! [`Transcript`], so a line's position says what had been sent before it: that is how
//! an `output` notification is known to be about a task in flight, and how a late
//! answer is told from a duplicate. Memory is bounded whatever the plugin writes: a line
//! longer than the plugin's `maxLineBytes` keeps its first [`OVERLONG_KEPT`] bytes; past
//! [`KEPT_BYTES`] in all, lines keep only their first [`OVERLONG_KEPT`] bytes; past
//! [`MAX_LINES`] lines, the plugin's further lines are read and counted, not kept.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

/// What an over-long line keeps, and every line once [`KEPT_BYTES`] is reached.
pub const OVERLONG_KEPT: usize = 4096;

/// How many bytes of lines a transcript keeps in full.
pub const KEPT_BYTES: usize = 8 * 1024 * 1024;

/// How many lines a transcript keeps (a conformant plugin writes a few hundred).
pub const MAX_LINES: usize = 100_000;

/// Where a line went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `check` wrote it to the plugin's stdin.
    Sent,
    /// The plugin wrote it on stdout.
    Stdout,
    /// The plugin wrote it on fd 3, the log channel.
    Fd3,
    /// The plugin wrote it on stderr.
    Stderr,
}

impl Side {
    /// "stdout", "fd 3", ...
    pub fn name(self) -> &'static str {
        match self {
            Side::Sent => "stdin",
            Side::Stdout => "stdout",
            Side::Fd3 => "fd 3",
            Side::Stderr => "stderr",
        }
    }
}

/// One line, without its newline.
#[derive(Debug, Clone)]
pub struct Line {
    /// Where.
    pub side: Side,
    /// Its bytes (cut, when `cut`).
    pub bytes: Vec<u8>,
    /// Longer than the plugin's `maxLineBytes`.
    pub overlong: bool,
    /// Not kept in full (over-long, or the transcript was full).
    pub cut: bool,
}

impl Line {
    /// The line as text for a report: bad bytes replaced, `scrub` applied to the whole
    /// line (before any cut, so that no part of a credential is left), control
    /// characters escaped, cut to `max` characters.
    pub fn quote(&self, max: usize, scrub: impl Fn(&str) -> String) -> String {
        let text = scrub(&String::from_utf8_lossy(&self.bytes));
        let mut quoted = String::new();
        for c in text.chars().take(max) {
            if c.is_control() {
                quoted.extend(c.escape_default());
            } else {
                quoted.push(c);
            }
        }
        if self.cut || text.chars().count() > max {
            quoted.push_str(" ...");
        }
        quoted
    }

    /// What the line is.
    pub fn kind(&self) -> Kind {
        classify(&self.bytes)
    }
}

/// What a line on stdout or fd 3 is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Only whitespace: skipped by the supervisor, harmless.
    Blank,
    /// An answer: `id` plus `result` or `error`.
    Answer {
        /// Its id, as written.
        id: Value,
        /// The whole message.
        message: Value,
    },
    /// A notification: `method`, no `id`.
    Notification {
        /// Its method.
        method: String,
        /// Its params (`Null` when absent).
        params: Value,
    },
    /// A request: `method` and `id`. Plugins may not send any.
    Request,
    /// A JSON array.
    Batch,
    /// Not UTF-8. `lossy` is the message read with bad bytes replaced, when that parses.
    NotUtf8 {
        /// The line, bad bytes replaced, when that is JSON.
        lossy: Option<Value>,
    },
    /// JSON nested deeper than 128 levels.
    TooDeep,
    /// Two JSON values on one line.
    SeveralValues,
    /// The start of a JSON value that goes on past the line (pretty-printed).
    Unfinished,
    /// Anything else: not JSON, or JSON but not a JSON-RPC 2.0 message.
    Junk,
}

/// Classifies one line as `check` judges it (stricter than the supervisor's reader,
/// which only needs to route it).
pub fn classify(bytes: &[u8]) -> Kind {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Kind::Blank;
    }
    if std::str::from_utf8(bytes).is_err() {
        let lossy = String::from_utf8_lossy(bytes);
        return Kind::NotUtf8 { lossy: serde_json::from_str(&lossy).ok() };
    }
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    let value = match values.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) if e.is_eof() => return Kind::Unfinished,
        Some(Err(e)) if e.to_string().starts_with("recursion limit exceeded") => return Kind::TooDeep,
        Some(Err(_)) | None => return Kind::Junk,
    };
    if values.next().is_some() {
        return Kind::SeveralValues;
    }
    message_kind(value)
}

fn message_kind(value: Value) -> Kind {
    let Value::Object(obj) = &value else {
        return if value.is_array() { Kind::Batch } else { Kind::Junk };
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Kind::Junk;
    }
    let has_answer = obj.contains_key("result") || obj.contains_key("error");
    match (obj.get("method"), obj.get("id")) {
        (Some(Value::String(m)), None) if !has_answer => {
            Kind::Notification { method: m.clone(), params: obj.get("params").cloned().unwrap_or(Value::Null) }
        }
        (Some(_), Some(_)) if !has_answer => Kind::Request,
        (None, Some(id)) if has_answer => Kind::Answer { id: id.clone(), message: value.clone() },
        // An answer without its id: judged as one whose id is wrong.
        (None, None) if has_answer => Kind::Answer { id: Value::Null, message: value.clone() },
        _ => Kind::Junk,
    }
}

/// What the stdout lines from an unfinished one on make, joined.
#[derive(Debug, PartialEq)]
pub enum Joined {
    /// They make one value, ending at line index `end`.
    Value(Value, usize),
    /// Not yet: more lines may finish it.
    Open,
    /// They do not make JSON; only the first line is junk.
    Not,
}

/// Joins the stdout lines from index `first` (an [`Kind::Unfinished`] line) until they
/// make one JSON value: a message pretty-printed over several lines.
pub fn join_from(lines: &[Line], first: usize) -> Joined {
    let mut text = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(first).filter(|(_, l)| l.side == Side::Stdout).take(JOIN_LINES) {
        if text.len() + line.bytes.len() > JOIN_BYTES {
            return Joined::Not;
        }
        text.extend_from_slice(&line.bytes);
        text.push(b'\n');
        match serde_json::from_slice::<Value>(&text) {
            Ok(v) => return Joined::Value(v, i),
            Err(e) if e.is_eof() => {}
            Err(_) => return Joined::Not,
        }
    }
    if lines.iter().skip(first).filter(|l| l.side == Side::Stdout).count() >= JOIN_LINES {
        Joined::Not
    } else {
        Joined::Open
    }
}

/// How many lines, and bytes, a pretty-printed message may take before `check` stops
/// trying to join them (and reads them as lines that are not messages).
const JOIN_LINES: usize = 200;
const JOIN_BYTES: usize = 1024 * 1024;

/// The lines of one process, shared by its readers and its driver.
#[derive(Debug, Clone)]
pub struct Transcript {
    inner: Arc<Mutex<Lines>>,
    changed: watch::Sender<usize>,
}

/// The transcript's contents.
#[derive(Debug, Default)]
pub struct Lines {
    /// Every line so far.
    pub lines: Vec<Line>,
    kept: usize,
    /// Lines the plugin wrote past [`MAX_LINES`], not kept.
    pub dropped: usize,
    /// Whether the plugin closed its stdout (nothing more can be answered).
    pub stdout_closed: bool,
}

impl Default for Transcript {
    fn default() -> Self {
        Transcript { inner: Arc::default(), changed: watch::Sender::new(0) }
    }
}

impl Transcript {
    /// The lines so far. Hold the guard briefly: readers wait for it.
    pub fn lock(&self) -> MutexGuard<'_, Lines> {
        // A reader that panicked left whole lines behind: they are still good to read.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes on every change (a line, stdout closing).
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// Appends a line and wakes the waiters.
    pub fn push(&self, side: Side, bytes: Vec<u8>, overlong: bool) {
        let mut bytes = bytes;
        let mut lines = self.lock();
        if lines.lines.len() >= MAX_LINES && side != Side::Sent {
            lines.dropped += 1;
            return;
        }
        let cut = overlong || lines.kept + bytes.len() > KEPT_BYTES;
        if cut && bytes.len() > OVERLONG_KEPT {
            // A copy: truncating would keep the whole allocation of a long line.
            bytes = bytes[..OVERLONG_KEPT].to_vec();
        }
        lines.kept += bytes.len();
        lines.lines.push(Line { side, bytes, overlong, cut });
        let n = lines.lines.len();
        drop(lines);
        self.changed.send_replace(n);
    }

    fn close_stdout(&self) {
        self.lock().stdout_closed = true;
        self.changed.send_modify(|_| {});
    }

    /// Reads `pipe` line by line into the transcript until it closes or fails. A line
    /// longer than `max` is kept cut and marked over-long; reading goes on after it.
    pub fn spawn_reader(
        &self,
        side: Side,
        pipe: impl AsyncRead + Unpin + Send + 'static,
        max: usize,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut pipe = BufReader::with_capacity(64 * 1024, pipe);
            let mut line = Vec::new();
            let mut overlong = false;
            loop {
                let chunk = match pipe.fill_buf().await {
                    Ok([]) | Err(_) => break,
                    Ok(chunk) => chunk,
                };
                let (take, ends) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (chunk.len(), false),
                };
                let body = &chunk[..if ends { take - 1 } else { take }];
                let room = (max + 1).saturating_sub(line.len());
                line.extend_from_slice(&body[..body.len().min(room)]);
                if line.len() > max {
                    // Keep what a report needs, drop the rest as it comes.
                    overlong = true;
                    line.truncate(OVERLONG_KEPT.min(max));
                }
                pipe.consume(take);
                if ends {
                    if line.ends_with(b"\r") {
                        line.pop();
                    }
                    // Sized to the line: the buffer may have grown to a long one.
                    this.push(side, line.as_slice().to_vec(), std::mem::take(&mut overlong));
                    line.clear();
                    if line.capacity() > 1024 * 1024 {
                        line = Vec::new();
                    }
                }
            }
            if !line.is_empty() || overlong {
                this.push(side, line, overlong);
            }
            if side == Side::Stdout {
                this.close_stdout();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_apart() {
        assert!(matches!(classify(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#), Kind::Answer { .. }));
        assert!(matches!(classify(br#"{"jsonrpc":"2.0","method":"log","params":{}}"#), Kind::Notification { .. }));
        assert_eq!(classify(br#"{"jsonrpc":"2.0","id":1,"method":"x"}"#), Kind::Request);
        assert_eq!(classify(br#"[{"jsonrpc":"2.0","method":"log"}]"#), Kind::Batch);
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","method":"log"} {"jsonrpc":"2.0","method":"log"}"#),
            Kind::SeveralValues
        );
        assert_eq!(classify(b"{"), Kind::Unfinished);
        assert_eq!(classify(b"debug: started"), Kind::Junk);
        assert_eq!(classify(b"  "), Kind::Blank);
        assert!(matches!(
            classify(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"stdout\":\"\xff\"}}"),
            Kind::NotUtf8 { lossy: Some(_) }
        ));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(classify(deep.as_bytes()), Kind::TooDeep);
    }

    #[tokio::test]
    async fn overlong_lines_are_cut_and_reading_goes_on() {
        let t = Transcript::default();
        let (mut w, r) = tokio::io::duplex(1024);
        let reader = t.spawn_reader(Side::Stdout, r, 100);
        tokio::io::AsyncWriteExt::write_all(&mut w, &[b'x'; 300]).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut w, b"\nok\r\n").await.unwrap();
        drop(w);
        reader.await.unwrap();
        let lines = t.lock();
        assert_eq!(lines.lines.len(), 2);
        assert!(lines.lines[0].overlong && lines.lines[0].bytes.len() <= 100);
        assert_eq!(lines.lines[1].bytes, b"ok");
        assert!(!lines.lines[1].overlong && lines.stdout_closed);
    }
}
