//! Plugin log lines leave the read path here.
//!
//! Everything a plugin says for the log (log and progress notifications, output, stderr
//! lines) is read, scrubbed of credentials and then handed to [`submit`], which queues it
//! for one thread that formats it and writes it to the supervisor's log. The readers of a
//! plugin's pipes never wait on the log: a plugin that floods its log, or a log
//! destination that stalls (a full journald socket), cannot delay a task's answer.
//!
//! When the log cannot keep up, the queue fills to [`BUDGET_BYTES`]; lines beyond that are
//! **dropped and counted**, never blocked on: the count goes into the connection's
//! statistics and into the plugin's next summary ([`crate::log::limit`]), at most one line per
//! plugin per interval however the drops fall. Rate-limiting a plugin's log notifications
//! instead would throttle its task channel too, since log lines and answers may share its
//! stdout. (What a plugin says *by mistake*, its stderr and its protocol errors, is
//! rate-limited before it gets here: [`crate::log::limit`].)
//!
//! The supervisor's own warnings about a plugin (its protocol mistakes) go through here too,
//! so that a reader never waits on the log's destination for them either.
//!
//! [`flush`] waits until everything queued so far is written; the binary calls it before
//! it exits, so no accepted line is lost at shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use loom_protocol::LogLevel;

/// `tracing` target of everything a plugin says: log notifications, progress, stderr.
pub const PLUGIN_TARGET: &str = "loom::plugin";

/// Bytes of log text that may wait for the log thread before lines are dropped.
pub const BUDGET_BYTES: usize = 32 << 20;

/// One line for the log, already scrubbed.
#[derive(Debug)]
pub struct Line {
    /// The plugin's registered name.
    pub plugin: Arc<str>,
    /// Its process id.
    pub pid: u32,
    /// The level the plugin gave (stderr lines: info).
    pub level: LogLevel,
    /// The task it is about, if any.
    pub task_id: Option<String>,
    /// Structured fields, as JSON text.
    pub fields: Option<String>,
    /// What kind of line: `log`, `progress`, `output`, `stderr`.
    pub kind: Kind,
    /// The text.
    pub message: String,
    /// A progress notification's percentage.
    pub percent: Option<f64>,
    /// An output notification's stream.
    pub stream: Option<&'static str>,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `log` notification.
    Log,
    /// A `progress` notification (`percent` in the message).
    Progress,
    /// An `output` notification (logged at debug).
    Output,
    /// A line on the plugin's stderr.
    Stderr,
    /// The supervisor's note about the plugin's process (a protocol mistake).
    Notice,
    /// What was held back from the log for the plugin ([`crate::log::limit`]); not about one
    /// process, so `pid` is not shown.
    Summary,
}

enum Item {
    Line(Line),
    Flush(std::sync::mpsc::SyncSender<()>),
}

struct Pump {
    queue: Mutex<Sender<Item>>,
    queued_bytes: Arc<AtomicUsize>,
}

static PUMP: OnceLock<Option<Pump>> = OnceLock::new();

fn pump() -> Option<&'static Pump> {
    PUMP.get_or_init(|| {
        let (tx, rx) = channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&queued_bytes);
        let started = std::thread::Builder::new().name("loom-log".into()).spawn(move || drain(&rx, &counter));
        match started {
            Ok(_) => Some(Pump { queue: Mutex::new(tx), queued_bytes }),
            Err(e) => {
                // Without the thread, lines are written by the reader itself (see submit).
                tracing::error!("cannot start the log thread ({e}); plugin log lines are written inline");
                None
            }
        }
    })
    .as_ref()
}

/// What `line` counts against [`BUDGET_BYTES`]. A summary counts nothing: there is at
/// most one per plugin per interval, and it must not take the room of the lines it counts.
fn cost(line: &Line) -> usize {
    if line.kind == Kind::Summary {
        return 0;
    }
    line.message.len() + line.fields.as_ref().map_or(0, String::len) + 64
}

/// Queues `line` for the log. Returns `false` when it was dropped because the queue is
/// over [`BUDGET_BYTES`]: the caller counts it ([`crate::log::limit::LogLimiter::dropped`]).
/// A [`Kind::Summary`] is always taken (there is at most one per plugin per interval): it
/// carries the counts. Never blocks on the log's destination.
pub fn submit(line: Line) -> bool {
    let Some(pump) = pump() else {
        emit(&line);
        return true;
    };
    let size = cost(&line);
    if size > 0 && pump.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > BUDGET_BYTES {
        pump.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        return false;
    }
    let sent = pump.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).send(Item::Line(line));
    if let Err(std::sync::mpsc::SendError(Item::Line(line))) = sent {
        pump.queued_bytes.fetch_sub(size, Ordering::AcqRel);
        emit(&line);
    }
    true
}

/// Queues a summary of what was held back from the log for `plugin` (a warning).
pub fn summary(plugin: &Arc<str>, message: String) {
    submit(Line {
        plugin: Arc::clone(plugin),
        pid: 0,
        level: LogLevel::Warn,
        task_id: None,
        fields: None,
        kind: Kind::Summary,
        message,
        percent: None,
        stream: None,
    });
}

/// Waits until every line queued before this call is written, or `limit` has passed.
pub fn flush(limit: Duration) {
    let Some(pump) = PUMP.get().and_then(Option::as_ref) else { return };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let sent = pump.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).send(Item::Flush(tx));
    if sent.is_ok() {
        let _ = rx.recv_timeout(limit);
    }
}

fn drain(rx: &Receiver<Item>, queued_bytes: &AtomicUsize) {
    while let Ok(item) = rx.recv() {
        match item {
            Item::Line(line) => {
                emit(&line);
                queued_bytes.fetch_sub(cost(&line), Ordering::AcqRel);
            }
            Item::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Writes `line` to the log: one `tracing` event with target [`PLUGIN_TARGET`].
fn emit(line: &Line) {
    let (plugin, pid, message) = (&*line.plugin, line.pid, line.message.as_str());
    let task_id = line.task_id.as_deref().map(tracing::field::display);
    let fields = line.fields.as_deref().map(tracing::field::display);
    macro_rules! emit {
        ($level:expr) => {
            match line.kind {
                Kind::Log => tracing::event!(target: PLUGIN_TARGET, $level, plugin = %plugin, pid, task_id, fields, "{message}"),
                Kind::Progress => tracing::event!(target: PLUGIN_TARGET, $level, plugin = %plugin, pid, task_id,
                    percent = line.percent, "progress: {message}"),
                Kind::Output => tracing::event!(target: PLUGIN_TARGET, $level, plugin = %plugin, pid, task_id,
                    stream = line.stream, "output: {message}"),
                Kind::Stderr => tracing::event!(target: PLUGIN_TARGET, $level, plugin = %plugin, pid, stream = "stderr", "{message}"),
                Kind::Notice => tracing::event!(target: PLUGIN_TARGET, $level, plugin = %plugin, pid, "{message}"),
                Kind::Summary => tracing::event!(target: PLUGIN_TARGET, $level, plugin = %plugin, "{message}"),
            }
        };
    }
    match line.level {
        LogLevel::Trace => emit!(tracing::Level::TRACE),
        LogLevel::Debug => emit!(tracing::Level::DEBUG),
        LogLevel::Info => emit!(tracing::Level::INFO),
        LogLevel::Warn => emit!(tracing::Level::WARN),
        LogLevel::Error => emit!(tracing::Level::ERROR),
    }
}

/// Whether a plugin line at `level` would be logged at all (so the reader can skip the
/// work for lines the filter drops).
pub fn enabled(level: LogLevel) -> bool {
    match level {
        LogLevel::Trace => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::TRACE),
        LogLevel::Debug => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::DEBUG),
        LogLevel::Info => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::INFO),
        LogLevel::Warn => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::WARN),
        LogLevel::Error => tracing::enabled!(target: PLUGIN_TARGET, tracing::Level::ERROR),
    }
}
