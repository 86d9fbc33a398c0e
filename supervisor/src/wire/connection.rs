//! The JSON-RPC channel to one plugin process: calls out, answers and notifications in.
//!
//! A [`Connection`] writes calls into the plugin's stdin ([`crate::wire::outbound`]: directly,
//! or through a writer task that batches them) and owns a tolerant reader of its stdout. The reader is where a misbehaving plugin
//! meets the supervisor, so it gives up on nothing it can survive:
//!
//! - a line that is not JSON-RPC is logged (credentials scrubbed) and skipped;
//! - an answer with an unknown id is logged and dropped;
//! - an answer that is not UTF-8 fails the call it answers at once, with the reason (its
//!   id is read leniently), rather than leave it to its timeout;
//! - a request from the plugin is answered with "method not found";
//! - `output` for a task that is not running on this process is dropped;
//! - only a line over the size limit ends the channel ([`ReaderEnd::Violation`]), because
//!   the framing can no longer be trusted; the instance then restarts the process. On the
//!   log channel (fd 3), which carries no answers, an over-long line is skipped instead
//!   and reading goes on at the next line.
//!
//! Each of these mistakes, and each stderr line, is logged only within the plugin's log
//! budget ([`crate::log::limit`]): beyond it they are counted and summarised once per
//! interval, never waited for, so a flood cannot fill the disk or slow the task channel.
//!
//! Calls in flight are kept in a map from request id to a oneshot sender. When the process
//! ends, [`Connection::fail_all`] answers every one of them with the reason, so no caller
//! ever waits on a dead process: [`Outcome::Lost`] for a call whose line may have reached
//! the plugin, [`Outcome::NotSent`] for one whose line never reached it whole (see
//! [`crate::wire::outbound`]), which the caller may send to another process.
//!
//! Everything the plugin says reaches the log through [`Connection::loggable`] or
//! [`Connection::loggable_name`]: credentials scrubbed ([`crate::wire::redact`]), length bounded.
//! A task's live output is scrubbed as a stream ([`StreamScrubber`]), so a credential split
//! across two `output` chunks is still found.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use loom_protocol::{
    CodecError, LineCodec, LogLevel, LogParams, Message, Notification, OutputParams, OutputStream, Overflow,
    ProgressParams, Request, RequestId, Response, ResponseError, codes, methods,
};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, FramedRead};

use crate::log::limit::{self, LogLimiter};
use crate::log::pump::{self, Kind, PLUGIN_TARGET};
use crate::wire::capture::{CapturedOutput, LastLines};
use crate::wire::envelope::TaskEnvelope;
pub use crate::wire::outbound::WriterEnd;
use crate::wire::outbound::{Mark, Outbound};
use crate::wire::redact::{self, Redactor, StreamScrubber};

/// Longest stderr line logged as one line; longer ones are cut. Also the most of any
/// plugin-provided text (a log message, its fields, an output chunk) in one log line.
const STDERR_LINE_BYTES: usize = 16 * 1024;

/// The most of a plugin-provided name or id (a task id, a request id, a method name) quoted
/// in a log line.
const LOG_NAME_BYTES: usize = 200;

/// Requests from the plugin are answered ("method not found") only while less than this
/// is waiting in its stdin.
const REFUSALS_BACKLOG: usize = 1024 * 1024;

/// How much of a stray stdout line is quoted in the warning.
const JUNK_QUOTE_CHARS: usize = 200;

/// A reader's buffer: enough for most lines; a longer one grows it for that line only.
const READ_BUFFER: usize = 64 * 1024;

/// Gives back a read buffer that a long line grew, keeping what follows that line. (The
/// buffer would otherwise keep the longest line's size for the life of the process.)
fn shrink_after_long_line(buf: &mut bytes::BytesMut) {
    if buf.capacity() > 16 * READ_BUFFER && buf.len() <= READ_BUFFER {
        let mut fresh = bytes::BytesMut::with_capacity(READ_BUFFER);
        fresh.extend_from_slice(buf);
        *buf = fresh;
    }
}

/// The channel to one plugin process.
pub struct Connection {
    plugin: Arc<str>,
    pid: u32,
    outbound: Outbound,
    state: Mutex<State>,
    next_id: AtomicI64,
    redactor: Arc<Redactor>,
    stats: Stats,
    /// The plugin's log budget, shared with its other processes.
    limiter: Arc<LogLimiter>,
    /// Whether a task is in flight; changes only when that does.
    busy: watch::Sender<bool>,
}

/// A piece of a task's live output (credentials scrubbed), for [`watch_output`].
#[derive(Debug, Clone)]
pub struct OutputLine {
    /// The task.
    pub task_id: String,
    /// Which of its streams.
    pub stream: OutputStream,
    /// The text, as the plugin sent it (usually whole lines).
    pub data: String,
}

static OUTPUT_WATCHERS: std::sync::OnceLock<tokio::sync::broadcast::Sender<Arc<OutputLine>>> =
    std::sync::OnceLock::new();

/// Every task's live output, from every plugin, from now on; `cluster up` shows each
/// node's latest line. A watcher that falls behind misses lines (it gets `Lagged`), and
/// nothing is sent while nobody watches.
pub fn watch_output() -> tokio::sync::broadcast::Receiver<Arc<OutputLine>> {
    OUTPUT_WATCHERS.get_or_init(|| tokio::sync::broadcast::channel(1024).0).subscribe()
}

/// Counters of what the reader put up with.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines on stdout that were not JSON-RPC.
    pub junk_lines: AtomicU64,
    /// Answers whose id matched no call.
    pub unknown_answers: AtomicU64,
    /// Notifications whose params did not match their method.
    pub bad_notifications: AtomicU64,
    /// Requests the plugin sent to the supervisor.
    pub plugin_requests: AtomicU64,
    /// Log lines dropped because the log could not keep up (see [`crate::log::pump`]).
    pub dropped_log_lines: AtomicU64,
}

#[derive(Default)]
struct State {
    calls: HashMap<i64, Pending>,
    /// How many of `calls` are tasks.
    task_calls: usize,
    /// taskId to request id, to route `output` and `progress` and to send `cancel`.
    tasks: HashMap<String, i64>,
    /// Set once the process is gone; later calls fail at once with it.
    closed: Option<Arc<str>>,
}

struct Pending {
    reply: oneshot::Sender<Reply>,
    task: Option<TaskCall>,
    /// Where the call's line starts in the stream to the plugin.
    mark: Mark,
}

struct TaskCall {
    task_id: String,
    secrets: Vec<String>,
    output: CapturedOutput,
    /// Live output on its way out, stdout's then stderr's.
    live: [StreamScrubber; 2],
    /// Dropped when the call ends, whichever way: holds the caller's slot.
    held: Held,
}

/// What a task call keeps alive until it ends: the caller's slot lease. Erased because
/// the slot belongs to a higher layer ([`crate::core::pool`]) that this one cannot name.
pub type Held = Box<dyn Send>;

/// How a call ended.
#[derive(Debug)]
pub struct Reply {
    /// The answer, or why there will be none.
    pub outcome: Outcome,
    /// For task calls: the live output the plugin streamed for the task.
    pub output: Option<CapturedOutput>,
}

/// The answer to a call.
#[derive(Debug)]
pub enum Outcome {
    /// A `result`.
    Result(Box<RawValue>),
    /// An `error`.
    Error(ResponseError),
    /// The process went away while the call was in flight (its line may have reached the
    /// plugin); the text says how.
    Lost(Arc<str>),
    /// The process went away before the call's line reached it whole (the connection was
    /// closed, a write failed, or the line was still queued or unread in the pipe): the
    /// plugin cannot have acted on it. The text says how the process ended.
    NotSent(Arc<str>),
    /// The plugin answered, but its answer cannot be read (it is not UTF-8); the text
    /// says why.
    Unreadable(Arc<str>),
}

/// Why the stdout reader stopped.
#[derive(Debug)]
pub enum ReaderEnd {
    /// The plugin closed its stdout (usually: it exited).
    Eof,
    /// The plugin broke the framing; the process must be restarted.
    Violation(String),
    /// Reading failed.
    Io(std::io::Error),
}

impl Connection {
    /// Wraps a process's stdin; spawns the writer task (returned, to watch for its end).
    ///
    /// Must be called within a tokio runtime.
    pub fn new(
        plugin: Arc<str>,
        pid: u32,
        stdin: impl AsyncWrite + Unpin + Send + 'static,
        redactor: Arc<Redactor>,
    ) -> (Arc<Connection>, JoinHandle<WriterEnd>) {
        let (outbound, writer) = Outbound::new(stdin);
        (Connection::with(plugin, pid, outbound, redactor), writer)
    }

    /// As [`Connection::new`], for stdin that is a pipe: calls are then written straight
    /// into it when nothing is queued (see [`crate::wire::outbound`]).
    pub fn for_pipe(
        plugin: Arc<str>,
        pid: u32,
        stdin: tokio::net::unix::pipe::Sender,
        redactor: Arc<Redactor>,
    ) -> (Arc<Connection>, JoinHandle<WriterEnd>) {
        let (outbound, writer) = Outbound::pipe(stdin);
        (Connection::with(plugin, pid, outbound, redactor), writer)
    }

    fn with(plugin: Arc<str>, pid: u32, outbound: Outbound, redactor: Arc<Redactor>) -> Arc<Connection> {
        Arc::new(Connection {
            limiter: limit::for_plugin(&plugin),
            plugin,
            pid,
            outbound,
            state: Mutex::new(State::default()),
            next_id: AtomicI64::new(1),
            redactor,
            stats: Stats::default(),
            busy: watch::Sender::new(false),
        })
    }

    /// Spawns the reader of the process's stdout, with lines limited to `max_line` bytes.
    pub fn spawn_reader(
        self: &Arc<Self>,
        stdout: impl AsyncRead + Unpin + Send + 'static,
        max_line: usize,
    ) -> JoinHandle<ReaderEnd> {
        let conn = Arc::clone(self);
        tokio::spawn(async move {
            let mut lines = FramedRead::with_capacity(stdout, LineCodec::new(max_line, Overflow::Error), READ_BUFFER);
            while let Some(item) = lines.next().await {
                match item {
                    Ok(line) => {
                        conn.handle_line(&line);
                        drop(line);
                        shrink_after_long_line(lines.read_buffer_mut());
                    }
                    Err(loom_protocol::CodecError::LineTooLong { limit }) => {
                        return ReaderEnd::Violation(format!(
                            "protocol violation: wrote a line longer than {limit} bytes on stdout"
                        ));
                    }
                    Err(loom_protocol::CodecError::Io(e)) => return ReaderEnd::Io(e),
                }
            }
            ReaderEnd::Eof
        })
    }

    /// Spawns the reader of the process's stderr: each line is logged at info level under
    /// the plugin's name (credentials scrubbed), within the plugin's log budget
    /// ([`crate::log::limit`]), and the last ones are kept in `last`, every one of them.
    pub fn spawn_stderr_reader(
        self: &Arc<Self>,
        stderr: impl AsyncRead + Unpin + Send + 'static,
        last: Arc<Mutex<LastLines>>,
    ) -> JoinHandle<()> {
        let conn = Arc::clone(self);
        tokio::spawn(async move {
            let mut lines = FramedRead::new(stderr, LineCodec::new(STDERR_LINE_BYTES, Overflow::Truncate));
            let logged = pump::enabled(LogLevel::Info);
            while let Some(Ok(line)) = lines.next().await {
                let cut = line.len() >= STDERR_LINE_BYTES;
                let text = String::from_utf8_lossy(&line);
                let mut text = conn.redactor.scrub(text.trim_end_matches('\r')).into_owned();
                if cut {
                    // The line was cut at the limit: a credential may have been cut in two,
                    // and its first part is not a known value. Drop whatever could begin one.
                    text.truncate(conn.redactor.partial_start(&text));
                    text.push_str(" [cut]");
                }
                if let Ok(mut last) = last.lock() {
                    last.push(text.clone());
                }
                if logged && conn.limiter.allow_stderr(text.len()) {
                    conn.log(LogLevel::Info, Kind::Stderr, text, None, None);
                }
            }
        })
    }

    /// Spawns the reader of the log channel (the plugin's fd 3): `log` and `progress`
    /// notifications, handled as on stdout. Anything else there is logged and skipped. An
    /// over-long line is skipped too, up to the next newline, with a warning: the channel
    /// carries no answers, so nothing is lost but that line, and the plugin's next write
    /// must not fail. Only a read error ends this reader (the task channel is not affected).
    pub fn spawn_log_reader(
        self: &Arc<Self>,
        log: impl AsyncRead + Unpin + Send + 'static,
        max_line: usize,
    ) -> JoinHandle<()> {
        let conn = Arc::clone(self);
        tokio::spawn(async move {
            let codec = SkipLongLines(LineCodec::new(max_line, Overflow::Error));
            let mut lines = FramedRead::with_capacity(log, codec, READ_BUFFER);
            while let Some(item) = lines.next().await {
                match item {
                    Ok(Frame::Line(line)) => conn.handle_log_line(&line),
                    Ok(Frame::TooLong { limit }) => {
                        conn.stats.junk_lines.fetch_add(1, Ordering::Relaxed);
                        conn.note(LogLevel::Warn, || {
                            format!("skipped a line longer than {limit} bytes on the log channel (fd 3); reading goes on after it")
                        });
                    }
                    Err(e) => {
                        tracing::warn!(target: PLUGIN_TARGET, plugin = %conn.plugin, pid = conn.pid,
                            "stopped reading the log channel: {e}");
                        return;
                    }
                }
                shrink_after_long_line(lines.read_buffer_mut());
            }
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The credential scrubber for this process's output.
    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    /// Plugin-provided text on its way into a log line or a message: credentials scrubbed,
    /// then cut to 16 KiB (as a stderr line).
    pub fn loggable(&self, text: &str) -> String {
        redact::bound(&self.redactor.scrub(text), STDERR_LINE_BYTES).into_owned()
    }

    /// A plugin-provided name or id on its way into a log line: credentials scrubbed, cut
    /// to 200 bytes, control characters escaped (so it stays on its line as a field).
    pub fn loggable_name(&self, text: &str) -> String {
        let scrubbed = self.redactor.scrub(text);
        redact::printable(&redact::bound(&scrubbed, LOG_NAME_BYTES)).into_owned()
    }

    /// What the reader has put up with so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().calls.len()
    }

    /// Whether a task is in flight, now and as it changes: the value changes only when a
    /// task is sent to an idle process or the last task in flight ends.
    pub fn watch_busy(&self) -> watch::Receiver<bool> {
        self.busy.subscribe()
    }

    /// Counts a task call in or out, and tells [`Connection::watch_busy`] when that makes
    /// the process busy or idle. Called under the state lock.
    fn count_task(&self, st: &mut State, started: bool) {
        st.task_calls = if started { st.task_calls + 1 } else { st.task_calls.saturating_sub(1) };
        let busy = st.task_calls > 0;
        self.busy.send_if_modified(|b| std::mem::replace(b, busy) != busy);
    }

    /// Sends a request; the answer arrives through the returned [`Call`].
    pub fn request(self: &Arc<Self>, method: &str, params: &impl Serialize) -> Call {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = Message::Request(Request::new(id, method, params)).to_line();
        self.start_call(id, line, None)
    }

    /// Sends a `task` request with the task's bytes as they were submitted
    /// ([`Request::line_with_params`]). `held` is whatever the caller needs kept alive while
    /// the call is in flight (the core's slot lease, [`crate::core`] being above this
    /// layer, hence the erased type): it is dropped when the call ends (answered, or failed
    /// by [`Connection::fail_all`]), even if the returned [`Call`] was dropped earlier.
    pub fn request_task(self: &Arc<Self>, task: &TaskEnvelope, held: Held) -> Call {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = Request::line_with_params(id, methods::TASK, task.raw());
        self.redactor.add(&task.secrets);
        let call = TaskCall {
            task_id: task.task_id.clone(),
            secrets: task.secrets.clone(),
            output: CapturedOutput::default(),
            live: Default::default(),
            held,
        };
        self.start_call(id, line, Some(call))
    }

    /// Sends a notification.
    pub fn notify(&self, method: &str, params: &impl Serialize) {
        let line = Message::Notification(Notification::new(method, params)).to_line();
        self.outbound.send(line);
    }

    /// Sends `cancel` for `task_id`.
    pub fn cancel(&self, task_id: &str) {
        self.notify(methods::CANCEL, &loom_protocol::CancelParams { task_id: task_id.to_owned() });
    }

    /// Closes the plugin's stdin once everything queued before has been written.
    pub fn close_stdin(&self) {
        self.outbound.close();
    }

    /// Ends every call in flight with `reason`, and every later call at once, and logs what
    /// the plugin's log budget held back so far ([`LogLimiter::flush`]). Called when the
    /// process is gone. Writing to it stops here: a call whose line had reached the plugin
    /// whole ends [`Outcome::Lost`], any other [`Outcome::NotSent`].
    pub fn fail_all(&self, reason: &str) {
        let reason: Arc<str> = Arc::from(reason);
        let (drained, reach) = {
            let mut st = self.lock();
            st.closed = Some(reason.clone());
            st.tasks.clear();
            st.task_calls = 0;
            self.busy.send_if_modified(|b| std::mem::replace(b, false));
            // Under the lock, so that no call is written between the two.
            let reach = self.outbound.stop();
            (st.calls.drain().map(|(_, p)| p).collect::<Vec<Pending>>(), reach)
        };
        for p in drained {
            let outcome =
                if reach.reached(p.mark) { Outcome::Lost(reason.clone()) } else { Outcome::NotSent(reason.clone()) };
            self.finish(p, outcome);
        }
        self.limiter.flush();
    }

    fn start_call(self: &Arc<Self>, id: i64, line: Vec<u8>, task: Option<TaskCall>) -> Call {
        let (tx, rx) = oneshot::channel();
        let task_id = task.as_ref().map(|t| t.task_id.clone());
        let mut pending = Pending { reply: tx, task, mark: Mark::default() };
        let refused = {
            let mut st = self.lock();
            match st.closed.clone() {
                Some(reason) => Some((pending, reason)),
                None => {
                    if let Some(t) = &task_id {
                        st.tasks.insert(t.clone(), id);
                        self.count_task(&mut st, true);
                    }
                    // Sent under the lock (never waiting), so that `fail_all` finds the
                    // call with the mark of its line, and registered before the answer can
                    // arrive.
                    pending.mark = self.outbound.send(line);
                    st.calls.insert(id, pending);
                    None
                }
            }
        };
        if let Some((pending, reason)) = refused {
            self.finish(pending, Outcome::NotSent(reason));
        }
        Call { rx, conn: Arc::clone(self), task_id, done: false }
    }

    /// Delivers `outcome` for a call already removed from the map. Runs without the lock,
    /// because dropping the guard may hand the caller's slot to another task.
    fn finish(&self, pending: Pending, outcome: Outcome) {
        let (output, held) = match pending.task {
            Some(mut t) => {
                // What the stream scrubbers held back is let out now that the stream ended.
                for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                    let rest = t.live[stream_index(stream)].finish(&self.redactor);
                    t.output.push(stream, &rest);
                    self.show_output(&t.task_id, stream, rest);
                }
                self.redactor.release(&t.secrets);
                (Some(t.output), Some(t.held))
            }
            None => (None, None),
        };
        let _ = pending.reply.send(Reply { outcome, output });
        drop(held);
    }

    fn handle_line(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match Message::decode(line) {
            Ok(Message::Response(r)) => self.handle_answer(r),
            Ok(Message::Notification(n)) => self.handle_notification(n),
            Ok(Message::Request(r)) => {
                self.stats.plugin_requests.fetch_add(1, Ordering::Relaxed);
                self.note(LogLevel::Warn, || {
                    format!(
                        "sent a request ({:?}); plugins may only send notifications and answers",
                        self.loggable_name(&r.method)
                    )
                });
                // Answered only while the plugin reads its stdin, and without echoing an id
                // of any length: a plugin that floods requests must not fill our memory.
                if self.outbound.queued_bytes() < REFUSALS_BACKLOG {
                    let id = match r.id {
                        RequestId::String(s) if s.len() > LOG_NAME_BYTES => None,
                        id => Some(id),
                    };
                    let answer = Response::err(
                        id,
                        ResponseError::new(codes::METHOD_NOT_FOUND, "the supervisor does not accept requests"),
                    );
                    self.outbound.send(Message::Response(answer).to_line());
                }
            }
            Err(e) => {
                if let Err(bad) = std::str::from_utf8(line)
                    && self.fail_unreadable_answer(line, bad.valid_up_to())
                {
                    return;
                }
                self.stats.junk_lines.fetch_add(1, Ordering::Relaxed);
                self.note(LogLevel::Warn, || {
                    let text = String::from_utf8_lossy(line);
                    let text = self.redactor.scrub(&text);
                    let quote: String = text.chars().take(JUNK_QUOTE_CHARS).collect();
                    let more = if text.chars().count() > JUNK_QUOTE_CHARS { "..." } else { "" };
                    format!("ignored a line on stdout that is {e}: {quote:?}{more}")
                });
            }
        }
    }

    /// A line that is not UTF-8 cannot be a message, but if it is an answer to a call in
    /// flight, that call fails at once with the reason instead of waiting for its timeout.
    /// Its id is read from the line with the bad bytes replaced. Returns false when the line
    /// answers no call in flight (it is junk then).
    fn fail_unreadable_answer(&self, line: &[u8], bad_at: usize) -> bool {
        let lenient = String::from_utf8_lossy(line);
        let Ok(Message::Response(r)) = Message::decode(lenient.as_bytes()) else {
            return false;
        };
        let Some(pending) = self.take_call(r.id.as_ref()) else {
            return false;
        };
        let why = format!("the plugin's answer is not UTF-8 text (a bad byte at offset {bad_at})");
        self.note(LogLevel::Warn, || format!("failed the call it answered: {why}"));
        self.finish(pending, Outcome::Unreadable(Arc::from(why)));
        true
    }

    fn handle_log_line(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match Message::decode(line) {
            Ok(Message::Notification(n)) => self.handle_notification(n),
            Ok(_) => {
                self.stats.junk_lines.fetch_add(1, Ordering::Relaxed);
                self.note(LogLevel::Warn, || {
                    "ignored a request or answer on the log channel: only notifications belong there".to_owned()
                });
            }
            Err(e) => {
                self.stats.junk_lines.fetch_add(1, Ordering::Relaxed);
                self.note(LogLevel::Warn, || format!("ignored a line on the log channel that is {e}"));
            }
        }
    }

    fn handle_answer(&self, r: Response) {
        let Some(pending) = self.take_call(r.id.as_ref()) else {
            self.stats.unknown_answers.fetch_add(1, Ordering::Relaxed);
            self.note(LogLevel::Warn, || {
                let id = r.id.as_ref().map_or_else(|| "null".to_owned(), |id| self.loggable_name(&id.to_string()));
                format!("ignored an answer to unknown request id {id}")
            });
            return;
        };
        let outcome = match r.outcome {
            Ok(result) => Outcome::Result(result),
            Err(error) => Outcome::Error(error),
        };
        self.finish(pending, outcome);
    }

    /// Takes the call in flight that `id` answers, if there is one.
    fn take_call(&self, id: Option<&RequestId>) -> Option<Pending> {
        let Some(RequestId::Number(id)) = id else {
            return None;
        };
        let mut st = self.lock();
        let p = st.calls.remove(id);
        if let Some(task) = p.as_ref().and_then(|p| p.task.as_ref()) {
            if st.tasks.get(&task.task_id) == Some(id) {
                st.tasks.remove(&task.task_id);
            }
            self.count_task(&mut st, false);
        }
        p
    }

    fn handle_notification(&self, n: Notification) {
        let params = n.params.as_deref().map_or("null", RawValue::get);
        match n.method.as_str() {
            methods::LOG => match serde_json::from_str::<LogParams>(params) {
                Ok(p) => self.emit_log(p),
                Err(e) => self.bad_notification(methods::LOG, &e),
            },
            methods::PROGRESS => match serde_json::from_str::<ProgressParams>(params) {
                Ok(p) if pump::enabled(LogLevel::Info) => {
                    let task_id = Some(self.loggable_name(&p.task_id));
                    let line = self.line(LogLevel::Info, Kind::Progress, self.loggable(&p.message), task_id, None);
                    self.submit(pump::Line { percent: p.percent, ..line });
                }
                Ok(_) => {}
                Err(e) => self.bad_notification(methods::PROGRESS, &e),
            },
            methods::OUTPUT => match serde_json::from_str::<OutputParams>(params) {
                Ok(p) => self.capture_output(p),
                Err(e) => self.bad_notification(methods::OUTPUT, &e),
            },
            other => {
                self.note(LogLevel::Debug, || format!("ignored unknown notification {:?}", self.loggable_name(other)));
            }
        }
    }

    /// Takes a chunk of a running task's live output: scrubbed as a stream (a credential
    /// split across chunks is still found), kept for its result, shown to watchers and
    /// the debug log. Output for a task not running here has nowhere to go: it is dropped.
    fn capture_output(&self, p: OutputParams) {
        let shown = {
            let mut st = self.lock();
            let id = st.tasks.get(&p.task_id).copied();
            match id.and_then(|id| st.calls.get_mut(&id)).and_then(|c| c.task.as_mut()) {
                Some(task) => {
                    let piece = task.live[stream_index(p.stream)].push(&p.data, &self.redactor);
                    task.output.push(p.stream, &piece);
                    Some(piece)
                }
                None => None,
            }
        };
        match shown {
            Some(piece) => self.show_output(&p.task_id, p.stream, piece),
            None => self.note(LogLevel::Debug, || {
                format!(
                    "ignored output for task {:?}, which is not running on this process",
                    self.loggable_name(&p.task_id)
                )
            }),
        }
    }

    /// Shows a scrubbed piece of a task's output to watchers and the debug log.
    fn show_output(&self, task_id: &str, stream: OutputStream, data: String) {
        if data.is_empty() {
            return;
        }
        if pump::enabled(LogLevel::Debug) {
            let name = match stream {
                OutputStream::Stdout => "stdout",
                OutputStream::Stderr => "stderr",
            };
            let text = redact::bound(data.trim_end(), STDERR_LINE_BYTES).into_owned();
            let line = self.line(LogLevel::Debug, Kind::Output, text, Some(self.loggable_name(task_id)), None);
            self.submit(pump::Line { stream: Some(name), ..line });
        }
        if let Some(tx) = OUTPUT_WATCHERS.get()
            && tx.receiver_count() > 0
        {
            let _ = tx.send(Arc::new(OutputLine { task_id: task_id.to_owned(), stream, data }));
        }
    }

    fn emit_log(&self, p: LogParams) {
        if !pump::enabled(p.level) {
            return;
        }
        let message = self.loggable(&p.message);
        let fields = p.fields.map(|f| self.loggable(&serde_json::Value::Object(f).to_string()));
        let task_id = p.task_id.map(|t| self.loggable_name(&t));
        self.log(p.level, Kind::Log, message, task_id, fields);
    }

    /// Hands a scrubbed line to the log thread.
    fn log(&self, level: LogLevel, kind: Kind, message: String, task_id: Option<String>, fields: Option<String>) {
        self.submit(self.line(level, kind, message, task_id, fields));
    }

    fn line(
        &self,
        level: LogLevel,
        kind: Kind,
        message: String,
        task_id: Option<String>,
        fields: Option<String>,
    ) -> pump::Line {
        pump::Line {
            plugin: Arc::clone(&self.plugin),
            pid: self.pid,
            level,
            task_id,
            fields,
            kind,
            message,
            percent: None,
            stream: None,
        }
    }

    /// Queues a line for the log; counts it if the log is too far behind to take it (the
    /// count is reported in the plugin's next summary, [`crate::log::limit`]).
    fn submit(&self, line: pump::Line) {
        if !pump::submit(line) {
            self.stats.dropped_log_lines.fetch_add(1, Ordering::Relaxed);
            self.limiter.dropped(1);
        }
    }

    /// Logs the supervisor's note about a mistake of the plugin, at `level`, if the log
    /// takes that level and the plugin's log budget has room; otherwise it is only counted.
    /// `message` is built only when the note is logged (a flood costs no formatting).
    fn note(&self, level: LogLevel, message: impl FnOnce() -> String) {
        if pump::enabled(level) && self.limiter.allow_protocol() {
            self.log(level, Kind::Notice, message(), None, None);
        }
    }

    /// `method` is one of ours (the notification's name was recognised).
    fn bad_notification(&self, method: &'static str, e: &serde_json::Error) {
        self.stats.bad_notifications.fetch_add(1, Ordering::Relaxed);
        self.note(LogLevel::Warn, || {
            format!("ignored a {method:?} notification with bad params (line {} column {})", e.line(), e.column())
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing under this lock can panic half-way; recover rather than poison the plugin.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The log channel's frames: a line, or the news that an over-long one was skipped.
enum Frame {
    Line(bytes::BytesMut),
    TooLong { limit: usize },
}

/// [`LineCodec`] for a channel that goes on after an over-long line: the line becomes a
/// [`Frame::TooLong`] item instead of an error. (After an error, `FramedRead` returns
/// `None` once and reads again before decoding what it has buffered, so a line already
/// read would wait for the plugin's next write.)
struct SkipLongLines(LineCodec);

impl Decoder for SkipLongLines {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.0.decode(buf) {
            Ok(line) => Ok(line.map(Frame::Line)),
            Err(CodecError::LineTooLong { limit }) => Ok(Some(Frame::TooLong { limit })),
            Err(e) => Err(e),
        }
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.0.decode_eof(buf) {
            Ok(line) => Ok(line.map(Frame::Line)),
            Err(CodecError::LineTooLong { limit }) => Ok(Some(Frame::TooLong { limit })),
            Err(e) => Err(e),
        }
    }
}

fn stream_index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

/// One call in flight. Await [`Call::wait`]; it can be awaited again after a timeout.
///
/// Dropping an unanswered task call sends `cancel` for the task; the call's slot stays
/// taken until the plugin answers or the process ends.
pub struct Call {
    rx: oneshot::Receiver<Reply>,
    conn: Arc<Connection>,
    task_id: Option<String>,
    done: bool,
}

impl Call {
    /// Waits for the answer.
    ///
    /// # Cancellation
    /// Cancel-safe: if the future is dropped (for example by a timeout), the call stays in
    /// flight and `wait` can be called again.
    pub async fn wait(&mut self) -> Reply {
        if self.done {
            return Reply { outcome: Outcome::Lost(Arc::from("the answer was already taken")), output: None };
        }
        let reply = (&mut self.rx).await.unwrap_or_else(|_| Reply {
            outcome: Outcome::Lost(Arc::from("the connection to the plugin was dropped")),
            output: None,
        });
        self.done = true;
        reply
    }

    /// The connection the call went out on.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done
            && let Some(task_id) = &self.task_id
        {
            self.conn.cancel(task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    /// A connection whose "plugin" is the test: it reads what the supervisor wrote from
    /// `from_sup` and writes the plugin's stdout into `to_sup`.
    fn pair() -> (Arc<Connection>, BufReader<DuplexStream>, DuplexStream, JoinHandle<ReaderEnd>) {
        let (sup_stdin, plugin_stdin) = tokio::io::duplex(1 << 16);
        let (plugin_stdout, sup_stdout) = tokio::io::duplex(1 << 16);
        let (conn, _writer) = Connection::new(Arc::from("test"), 1, sup_stdin, Arc::default());
        let reader = conn.spawn_reader(sup_stdout, 1024);
        (conn, BufReader::new(plugin_stdin), plugin_stdout, reader)
    }

    async fn next_request(from_sup: &mut BufReader<DuplexStream>) -> Request {
        let mut line = String::new();
        from_sup.read_line(&mut line).await.unwrap();
        match Message::decode(line.as_bytes()).unwrap() {
            Message::Request(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn result_text(reply: Reply) -> String {
        match reply.outcome {
            Outcome::Result(r) => r.get().to_owned(),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn junk_unknown_ids_and_plugin_requests_do_not_break_the_channel() {
        let (conn, mut from_sup, mut to_sup, _reader) = pair();
        let mut call = conn.request("ping", &serde_json::json!({}));
        let req = next_request(&mut from_sup).await;
        let id = match req.id {
            RequestId::Number(n) => n,
            RequestId::String(_) => panic!(),
        };
        let script = format!(
            "oops: a stray debug print\n\
             {{\"jsonrpc\":\"2.0\",\"id\":999999,\"result\":\"stray\"}}\n\
             {{\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"log\",\"params\":{{}}}}\n\
             \n\
             {{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":{{\"level\":42}}}}\n\
             {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{}}}}\n"
        );
        to_sup.write_all(script.as_bytes()).await.unwrap();
        assert_eq!(result_text(call.wait().await), "{}");
        let s = conn.stats();
        assert_eq!(s.junk_lines.load(Ordering::Relaxed), 1);
        assert_eq!(s.unknown_answers.load(Ordering::Relaxed), 1);
        assert_eq!(s.plugin_requests.load(Ordering::Relaxed), 1);
        assert_eq!(s.bad_notifications.load(Ordering::Relaxed), 1);
        // The plugin's request was answered with "method not found".
        let mut line = String::new();
        from_sup.read_line(&mut line).await.unwrap();
        let Message::Response(r) = Message::decode(line.as_bytes()).unwrap() else { panic!("{line}") };
        assert_eq!(r.id, Some(RequestId::String("s1".into())));
        assert_eq!(r.outcome.unwrap_err().code, codes::METHOD_NOT_FOUND);
    }

    #[tokio::test]
    async fn a_request_with_a_huge_id_is_refused_without_echoing_it() {
        let (_conn, mut from_sup, mut to_sup, _reader) = pair();
        let id = "i".repeat(900);
        to_sup
            .write_all(format!("{{\"jsonrpc\":\"2.0\",\"id\":\"{id}\",\"method\":\"x\"}}\n").as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        from_sup.read_line(&mut line).await.unwrap();
        let Message::Response(r) = Message::decode(line.as_bytes()).unwrap() else { panic!("{line}") };
        assert_eq!((r.id, r.outcome.unwrap_err().code), (None, codes::METHOD_NOT_FOUND));
        assert!(line.len() < 200, "{}", line.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_that_floods_requests_without_reading_cannot_fill_our_memory() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(write_end).unwrap();
        let (conn, _writer) = Connection::for_pipe(Arc::from("test"), 1, stdin, Arc::default());
        let (plugin_stdout, sup_stdout) = tokio::io::duplex(1 << 16);
        let reader = conn.spawn_reader(sup_stdout, 1024);
        let mut to_sup = plugin_stdout;
        // Never read: `read_end` stays open and full.
        let id = "r".repeat(150);
        for i in 0..40_000 {
            let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":\"{id}{i}\",\"method\":\"x\"}}\n");
            to_sup.write_all(line.as_bytes()).await.unwrap();
        }
        drop(to_sup);
        assert!(matches!(reader.await.unwrap(), ReaderEnd::Eof));
        let queued = conn.outbound.queued_bytes();
        assert!(queued < REFUSALS_BACKLOG + 1024, "{queued} bytes of answers queued");
        assert!(queued > REFUSALS_BACKLOG / 2, "answered while the plugin could still read: {queued}");
        drop(read_end);
    }

    #[tokio::test]
    async fn a_credential_cut_in_two_by_the_stderr_line_limit_leaves_no_part_behind() {
        let redactor = Arc::new(Redactor::default());
        let secret = "SECRET-cut-in-two-0123456789".to_owned();
        redactor.add(std::slice::from_ref(&secret));
        let (sup_stdin, _plugin_stdin) = tokio::io::duplex(1 << 16);
        let (conn, _writer) = Connection::new(Arc::from("test"), 1, sup_stdin, redactor);
        let (mut plugin_stderr, sup_stderr) = tokio::io::duplex(1 << 16);
        let last = Arc::new(Mutex::new(LastLines::default()));
        let reader = conn.spawn_stderr_reader(sup_stderr, Arc::clone(&last));
        // The value straddles the 16 KiB cut: its first half is in the line, its second not.
        let line = format!("{}{secret} and more\n", "x".repeat(STDERR_LINE_BYTES - 10));
        plugin_stderr.write_all(line.as_bytes()).await.unwrap();
        plugin_stderr.write_all(b"next line\n").await.unwrap();
        drop(plugin_stderr);
        reader.await.unwrap();
        let kept = last.lock().unwrap().render().unwrap();
        assert!(!kept.contains("SECRET-cut"), "a part of the value is left: ...{}", &kept[kept.len() - 80..]);
        assert!(kept.contains("[cut]") && kept.contains("next line"), "{}", &kept[kept.len() - 80..]);
    }

    #[tokio::test]
    async fn answers_out_of_order_reach_their_callers() {
        let (conn, mut from_sup, mut to_sup, _reader) = pair();
        let mut a = conn.request("ping", &1);
        let mut b = conn.request("ping", &2);
        let (ra, rb) = (next_request(&mut from_sup).await, next_request(&mut from_sup).await);
        for (r, v) in [(rb, "\"b\""), (ra, "\"a\"")] {
            to_sup
                .write_all(
                    &Message::Response(Response::ok(r.id, &serde_json::from_str::<serde_json::Value>(v).unwrap()))
                        .to_line(),
                )
                .await
                .unwrap();
        }
        assert_eq!(result_text(a.wait().await), "\"a\"");
        assert_eq!(result_text(b.wait().await), "\"b\"");
    }

    #[tokio::test]
    async fn an_over_long_line_ends_the_reader_with_a_violation() {
        let (_conn, _from_sup, mut to_sup, reader) = pair();
        to_sup.write_all(&vec![b'x'; 2000]).await.unwrap();
        match reader.await.unwrap() {
            ReaderEnd::Violation(why) => assert!(why.contains("longer than 1024 bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_answer_that_is_not_utf8_fails_its_call_at_once() {
        let (conn, mut from_sup, mut to_sup, _reader) = pair();
        let mut call = conn.request("ping", &serde_json::json!({}));
        let id = match next_request(&mut from_sup).await.id {
            RequestId::Number(n) => n,
            RequestId::String(_) => panic!(),
        };
        let mut answer = format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"stdout\":\"a ").into_bytes();
        let offset = answer.len();
        answer.extend_from_slice(b"\xff byte\"}}\n");
        // Not UTF-8 and answering nothing: junk.
        to_sup.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":424242,\"result\":\"\xfe\"}\n").await.unwrap();
        to_sup.write_all(&answer).await.unwrap();
        // Without the fix the call waits for an answer that never comes.
        let reply = tokio::time::timeout(std::time::Duration::from_secs(60), call.wait()).await;
        match reply.expect("the call failed at once").outcome {
            Outcome::Unreadable(why) => assert_eq!(
                &*why,
                format!("the plugin's answer is not UTF-8 text (a bad byte at offset {offset})").as_str()
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(conn.stats().junk_lines.load(Ordering::Relaxed), 1, "the answer to no call is junk");
        assert_eq!(conn.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_over_long_line_on_the_log_channel_is_skipped_and_reading_goes_on() {
        let (sup_stdin, _plugin_stdin) = tokio::io::duplex(1 << 16);
        let (mut plugin_log, sup_log) = tokio::io::duplex(1 << 16);
        let (conn, _writer) = Connection::new(Arc::from("test-fd3"), 1, sup_stdin, Arc::default());
        let reader = conn.spawn_log_reader(sup_log, 1024);
        // The long line and the next one arrive in one write: the next one must be read
        // without waiting for more.
        let mut bytes = vec![b'x'; 5000];
        bytes.extend_from_slice(b"\n{\"jsonrpc\":\"2.0\",\"method\":\"log\",\"params\":{\"level\":42}}\n");
        plugin_log.write_all(&bytes).await.unwrap();
        let began = std::time::Instant::now();
        while conn.stats().bad_notifications.load(Ordering::Relaxed) == 0 {
            assert!(!reader.is_finished(), "the log reader stopped");
            assert!(began.elapsed() < std::time::Duration::from_secs(60), "the line after the long one was not read");
            tokio::task::yield_now().await;
        }
        assert_eq!(conn.stats().junk_lines.load(Ordering::Relaxed), 1, "the long line is counted");
        // An over-long last line without a newline is skipped too; then the end.
        plugin_log.write_all(&[b'y'; 3000]).await.unwrap();
        drop(plugin_log);
        reader.await.unwrap();
        assert_eq!(conn.stats().junk_lines.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn fail_all_answers_every_call_and_later_ones_too() {
        let (conn, _from_sup, _to_sup, _reader) = pair();
        let released = Arc::new(AtomicU64::new(0));
        struct Guard(Arc<AtomicU64>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let task = TaskEnvelope::parse(
            RawValue::from_string(r#"{"taskId":"t1","taskName":"START","config":{}}"#.into()).unwrap(),
        )
        .unwrap();
        let mut call = conn.request_task(&task, Box::new(Guard(released.clone())));
        assert_eq!(conn.in_flight(), 1);
        conn.fail_all("exited with code 3");
        let reply = call.wait().await;
        assert!(matches!(&reply.outcome, Outcome::Lost(why) if &**why == "exited with code 3"));
        assert!(reply.output.is_some());
        assert_eq!(released.load(Ordering::SeqCst), 1, "the slot guard was dropped");
        let mut late = conn.request("ping", &());
        assert!(
            matches!(late.wait().await.outcome, Outcome::NotSent(why) if &*why == "exited with code 3"),
            "never written"
        );
    }

    #[tokio::test]
    async fn output_notifications_are_captured_per_task_and_scrubbed() {
        let (conn, mut from_sup, mut to_sup, _reader) = pair();
        let task = TaskEnvelope::parse(
            RawValue::from_string(
                r#"{"taskId":"t9","taskName":"INSTALL","config":{"ssh-auth":{"password":"hunter2"}}}"#.into(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut call = conn.request_task(&task, Box::new(()));
        let req = next_request(&mut from_sup).await;
        assert_eq!(req.method, "task");
        assert_eq!(req.params.unwrap().get(), task.raw().get(), "the task is forwarded byte for byte");
        let lines = [
            r#"{"jsonrpc":"2.0","method":"output","params":{"taskId":"t9","stream":"stdout","data":"installing\n"}}"#,
            r#"{"jsonrpc":"2.0","method":"output","params":{"taskId":"t9","stream":"stderr","data":"pw hunter2\n"}}"#,
            r#"{"jsonrpc":"2.0","method":"output","params":{"taskId":"other","stream":"stdout","data":"not mine\n"}}"#,
        ];
        for l in lines {
            to_sup.write_all(format!("{l}\n").as_bytes()).await.unwrap();
        }
        to_sup
            .write_all(&Message::Response(Response::ok(req.id, &serde_json::json!({"status":0}))).to_line())
            .await
            .unwrap();
        let reply = call.wait().await;
        let out = reply.output.unwrap();
        assert_eq!(out.stdout.into_string(), "installing\n");
        assert_eq!(out.stderr.into_string(), "pw [redacted]\n");
    }

    #[tokio::test]
    async fn a_credential_split_across_output_chunks_is_never_shown_or_kept() {
        let (conn, mut from_sup, mut to_sup, _reader) = pair();
        let mut watch = watch_output();
        let task = TaskEnvelope::parse(
            RawValue::from_string(
                r#"{"taskId":"t-split","taskName":"INSTALL","config":{"ssh-auth":{"password":"hunter2-split"}}}"#
                    .into(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut call = conn.request_task(&task, Box::new(()));
        let req = next_request(&mut from_sup).await;
        for data in ["pw hunt", "er2-sp", "lit ok\nlast hunt"] {
            let params = serde_json::json!({"taskId": "t-split", "stream": "stdout", "data": data});
            to_sup.write_all(&Message::Notification(Notification::new("output", &params)).to_line()).await.unwrap();
        }
        to_sup
            .write_all(&Message::Response(Response::ok(req.id, &serde_json::json!({"status":0}))).to_line())
            .await
            .unwrap();
        let out = call.wait().await.output.unwrap();
        assert_eq!(out.stdout.into_string(), "pw [redacted] ok\nlast hunt");
        // What watchers saw, piece by piece: never a part of the value.
        let mut shown = Vec::new();
        while shown.concat() != "pw [redacted] ok\nlast hunt" {
            let line = watch.recv().await.unwrap();
            if line.task_id == "t-split" {
                shown.push(line.data.clone());
            }
        }
        // A possible start of the value is held back until the next chunk (or the answer)
        // shows what it is.
        assert_eq!(shown, ["pw ", "[redacted] ok\nlast ", "hunt"]);
    }
}
