//! One process of the plugin under test, driven line by line.
//!
//! `check` does not use the supervisor's [`crate::wire::connection::Connection`]: that
//! reader repairs, skips and routes what a plugin writes, and `check` must see exactly
//! what was written (a wrong id, a second answer, a pretty-printed answer, bad bytes) and
//! stop waiting the moment an answer can no longer come. The process is started as the
//! supervisor starts it (same command, environment, limits, cgroup and fd 3), plus
//! `LOOM_CHECK=1` (PROTOCOL.md section 10). Ending it kills everything it started: its
//! cgroup, or its process group where there is none.

use std::collections::BTreeMap;
use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};

use crate::cli::check::transcript::{Joined, Kind, Side, Transcript, join_from};
use crate::core::cgroup::Cgroup;
use crate::core::manifest::PluginSpec;
use crate::core::spawn::{self, ChildSetup};

/// The variable that tells a plugin it runs under `check` (PROTOCOL.md section 10).
pub const ENV_CHECK: &str = "LOOM_CHECK";

/// How an awaited answer came out.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The answer, and its line's index in the transcript.
    Got(Value, usize),
    /// Nothing within the time.
    Timeout(Duration),
    /// The process closed its stdout (exited) first.
    Ended,
    /// What must be its answer came, broken in a way another rule judges (the rule id):
    /// an answer to an id never sent while this was the only request waiting
    /// (P-3-id-copied), bad bytes (P-2-utf8), too deep (P-4.2-answer-limits), or spread
    /// over several lines (P-2-one-line). The line's index.
    Broken(usize, &'static str),
}

impl Answer {
    /// The `result` member of a success answer.
    pub fn result(&self) -> Option<&Value> {
        match self {
            Answer::Got(m, _) => m.get("result"),
            _ => None,
        }
    }

    /// The error code of an error answer.
    pub fn error_code(&self) -> Option<i64> {
        match self {
            Answer::Got(m, _) => m.get("error")?.get("code")?.as_i64(),
            _ => None,
        }
    }

    /// Whether nothing usable came back in time (the step is a "miss").
    pub fn missing(&self) -> bool {
        !matches!(self, Answer::Got(..))
    }

    /// A phrase for a report: "answered error -32601", "no answer within 3 s".
    pub fn describe(&self) -> String {
        match self {
            Answer::Got(m, _) => match (m.get("result"), m.get("error")) {
                (Some(r), _) => format!("answered the result {}", short(r)),
                (_, Some(e)) => format!(
                    "answered error {}{}",
                    e.get("code").map_or("(no code)".to_owned(), Value::to_string),
                    e.get("message").and_then(Value::as_str).map(|m| format!(" {:?}", cut(m, 120))).unwrap_or_default()
                ),
                _ => "answered".to_owned(),
            },
            Answer::Timeout(d) => format!("no answer within {}", crate::log::secs(*d)),
            Answer::Ended => "the process ended without answering".to_owned(),
            Answer::Broken(_, rule) => format!("its answer broke {rule}"),
        }
    }
}

/// JSON text cut to 200 characters.
pub fn short(v: &Value) -> String {
    cut(&v.to_string(), 200)
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_owned() } else { format!("{} ...", s.chars().take(max).collect::<String>()) }
}

/// A running process of the plugin.
pub struct Subject {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    /// What it wrote and was sent.
    pub transcript: Transcript,
    next_id: i64,
    /// Requests sent and not answered yet: id -> method.
    pending: BTreeMap<i64, String>,
    /// Every id sent.
    sent: Vec<i64>,
    /// Requests that could not be written (stdin closed): their answers never come.
    unsent: Vec<i64>,
    cgroup: Option<Cgroup>,
    /// Where in the transcript each awaited request's answer was found.
    answered_at: BTreeMap<i64, usize>,
    /// Where in the transcript each request was sent.
    sent_at: BTreeMap<i64, usize>,
    exit: Option<ExitStatus>,
    /// How long one write to its stdin may block (a plugin that does not read).
    write_limit: Duration,
}

impl Subject {
    /// Starts a process of `spec`.
    ///
    /// # Errors
    /// When the checks of [`crate::core::vet`] refuse it or it cannot be started.
    pub async fn start(spec: &PluginSpec, write_limit: Duration) -> io::Result<Subject> {
        let vetted = crate::core::vet::vet_blocking(spec).await.map_err(io::Error::other)?;
        let mut setup = ChildSetup::with_rlimits(&spec.limits)?;
        let (cgroup, joining) = crate::core::process::cgroup_for(spec, 0).await?;
        setup.cgroup_procs = joining.as_ref().map(|j| j.fds()).unwrap_or_default();
        let (log_read, log_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let mut cmd = spawn::command(spec, vetted.identity.as_ref());
        cmd.env(ENV_CHECK, "1");
        let mut child = spawn::spawn(cmd, Some(std::os::fd::AsFd::as_fd(&log_write)), setup).await?;
        drop(log_write);
        drop(joining);
        let spawn::Pipes { pid, stdin, stdout, stderr } = spawn::take_pipes(&mut child)?;
        let transcript = Transcript::default();
        let max = spec.max_line_bytes;
        transcript.spawn_reader(Side::Stdout, stdout, max);
        transcript.spawn_reader(Side::Stderr, stderr, max);
        transcript.spawn_reader(Side::Fd3, tokio::net::unix::pipe::Receiver::from_owned_fd(log_read)?, max);
        Ok(Subject {
            child,
            pid,
            stdin: Some(stdin),
            transcript,
            next_id: 1,
            pending: BTreeMap::new(),
            sent: Vec::new(),
            unsent: Vec::new(),
            cgroup,
            sent_at: BTreeMap::new(),
            answered_at: BTreeMap::new(),
            exit: None,
            write_limit,
        })
    }

    /// Writes one line (a newline is added). A write that fails or blocks past the write
    /// limit closes stdin: the plugin stopped reading.
    pub async fn send_raw(&mut self, mut line: Vec<u8>) -> bool {
        let Some(stdin) = self.stdin.as_mut() else { return false };
        // Recorded before it is written: the answer may be read before the write returns.
        self.transcript.push(Side::Sent, line.clone(), false);
        line.push(b'\n');
        let ok = matches!(tokio::time::timeout(self.write_limit, stdin.write_all(&line)).await, Ok(Ok(())));
        if !ok {
            self.stdin = None;
        }
        ok
    }

    /// Sends a request built by `build` from its id; returns the id.
    pub async fn request_with(&mut self, method: &str, build: impl FnOnce(i64) -> Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, method.to_owned());
        self.sent.push(id);
        self.sent_at.insert(id, self.transcript.lock().lines.len());
        let line = serde_json::to_vec(&build(id)).unwrap_or_default();
        if !self.send_raw(line).await {
            self.unsent.push(id);
        }
        id
    }

    /// Sends a request; returns its id.
    pub async fn request(&mut self, method: &str, params: Value) -> i64 {
        let m = method.to_owned();
        self.request_with(method, move |id| json!({"jsonrpc": "2.0", "id": id, "method": m, "params": params})).await
    }

    /// Sends a notification.
    pub async fn notify(&mut self, method: &str, params: Value) {
        let line = serde_json::to_vec(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
        self.send_raw(line.unwrap_or_default()).await;
    }

    /// Waits up to `limit` for the answer to `id`. Stops early when it can no longer come:
    /// the process closed its stdout, or an answer with an id never sent arrived while
    /// `id` was the only request waiting.
    ///
    /// # Cancellation
    /// Cancel-safe: the answer is read from the transcript, whenever it comes.
    pub async fn answer(&mut self, id: i64, limit: Duration) -> Answer {
        if self.unsent.contains(&id) {
            self.pending.remove(&id);
            return Answer::Ended;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let mut changes = self.transcript.watch();
        let mut from = 0;
        loop {
            changes.borrow_and_update();
            if let Some(found) = self.find_answer(id, &mut from) {
                self.pending.remove(&id);
                if let Answer::Got(_, i) = found {
                    self.answered_at.insert(id, i);
                }
                return found;
            }
            if self.transcript.lock().stdout_closed {
                return Answer::Ended;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Answer::Timeout(limit),
            }
        }
    }

    fn find_answer(&self, id: i64, from: &mut usize) -> Option<Answer> {
        let lines = self.transcript.lock();
        let only = self.pending.len() == 1;
        // Nothing before the request can answer it.
        *from = (*from).max(self.sent_at.get(&id).copied().unwrap_or(0));
        while let Some(line) = lines.lines.get(*from) {
            let i = *from;
            *from += 1;
            if line.side != Side::Stdout {
                continue;
            }
            if line.overlong && only {
                return Some(Answer::Broken(i, "P-2-line-limit"));
            }
            match line.kind() {
                Kind::Answer { id: got, .. } if got == json!(id) => {
                    return line_message(&line.bytes).map(|m| Answer::Got(m, i));
                }
                Kind::Answer { id: got, message } if only && !self.was_sent(&got) && !is_parse_error(&message) => {
                    return Some(Answer::Broken(i, "P-3-id-copied"));
                }
                // A second answer to a request answered before.
                Kind::Answer { id: got, .. }
                    if only && got.as_i64().and_then(|n| self.answered_at.get(&n)).is_some_and(|&first| first != i) =>
                {
                    return Some(Answer::Broken(i, "P-3-answer-once"));
                }
                // An answer that is not JSON-RPC 2.0 (no "jsonrpc" member, say).
                Kind::Junk
                    if serde_json::from_slice::<Value>(&line.bytes).is_ok_and(|m| m.get("id") == Some(&json!(id))) =>
                {
                    return Some(Answer::Broken(i, "P-2-stdout-messages"));
                }
                Kind::TooDeep if only => return Some(Answer::Broken(i, "P-4.2-answer-limits")),
                Kind::SeveralValues if only => return Some(Answer::Broken(i, "P-2-one-line")),
                Kind::Unfinished => match join_from(&lines.lines, i) {
                    Joined::Value(v, _) if v.get("id") == Some(&json!(id)) => {
                        return Some(Answer::Broken(i, "P-2-one-line"));
                    }
                    Joined::Value(_, end) => *from = end + 1,
                    Joined::Open => {
                        // Wait for the rest before reading past it.
                        *from = i;
                        return None;
                    }
                    Joined::Not => {}
                },
                Kind::NotUtf8 { lossy } => {
                    // Read leniently, as the supervisor does: its id when it parses, else
                    // whether it looks like an answer at all.
                    let answers_it = lossy.as_ref().and_then(|m| m.get("id")) == Some(&json!(id));
                    let looks_like_answer = match &lossy {
                        Some(m) => m.get("method").is_none() && (m.get("result").is_some() || m.get("error").is_some()),
                        None => {
                            let text = String::from_utf8_lossy(&line.bytes);
                            text.contains("\"result\"") || text.contains("\"error\":")
                        }
                    };
                    if answers_it || (only && looks_like_answer) {
                        return Some(Answer::Broken(i, "P-2-utf8"));
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn was_sent(&self, id: &Value) -> bool {
        id.as_i64().is_some_and(|n| self.sent.contains(&n)) && id.is_i64()
    }

    /// Whether an answer to `id` has arrived (read from the transcript, without waiting).
    pub fn answered(&self, id: i64) -> bool {
        let lines = self.transcript.lock();
        let from = self.sent_at.get(&id).copied().unwrap_or(0);
        lines
            .lines
            .iter()
            .skip(from)
            .any(|l| l.side == Side::Stdout && matches!(l.kind(), Kind::Answer { id: got, .. } if got == json!(id)))
    }

    /// The method of a request still waiting for its answer.
    pub fn method_of(&self, id: i64) -> Option<&str> {
        self.pending.get(&id).map(String::as_str)
    }

    /// Closes its stdin (end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `limit` for the process to exit; its status if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Ok(status)) = tokio::time::timeout(limit, self.child.wait()).await
        {
            self.exit = Some(status);
        }
        self.exit
    }

    /// Ends it: SIGKILL to its process group (whatever it started goes too), reaped.
    /// Returns its transcript.
    pub async fn finish(mut self) -> Transcript {
        match &self.cgroup {
            Some(cgroup) => cgroup.kill(),
            None => spawn::signal_group(self.pid, Signal::SIGKILL),
        }
        self.stdin = None;
        let _ = self.wait_exit(Duration::from_secs(10)).await;
        if let Some(cgroup) = self.cgroup.take() {
            if !cgroup.wait_empty(Duration::from_secs(10)).await {
                tracing::warn!(pid = self.pid, "processes of the checked plugin outlived SIGKILL");
            }
            if let Err(e) = cgroup.remove() {
                tracing::warn!(pid = self.pid, "cannot remove the checked plugin's cgroup yet: {e}");
            }
        }
        // Let the readers take what was left in the pipes; a descendant that left the
        // group may hold them open, so this is bounded.
        let started = Instant::now();
        let mut changes = self.transcript.watch();
        while !self.transcript.lock().stdout_closed && started.elapsed() < Duration::from_secs(2) {
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
        }
        self.transcript
    }
}

/// A JSON-RPC "parse error" answer with a null id: allowed for a line that was not JSON.
fn is_parse_error(message: &Value) -> bool {
    message.get("id") == Some(&Value::Null)
        && message.get("error").and_then(|e| e.get("code")).and_then(Value::as_i64) == Some(-32700)
}

fn line_message(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}
