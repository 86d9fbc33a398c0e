//! What a task's code can do besides computing its result: log, report progress, stream
//! output, and notice cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use loom_protocol::writer::Outgoing;
use loom_protocol::{LogLevel, LogParams, Message, Notification, OutputParams, OutputStream, ProgressParams, methods};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// The channel to the supervisor, in two lanes. The task lane carries answers and
/// `output` notifications, in order (a task's streamed output must arrive before its
/// answer); the log lane carries `log` and `progress`. The log lane goes to the log
/// channel when the supervisor gave one (`LOOM_LOG_FD`), else it shares stdout and the
/// task lane goes first (see `loom_protocol::writer::write_prioritized`). Either way a
/// task that logs heavily cannot hold back other tasks' answers.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    tasks: UnboundedSender<Outgoing>,
    logs: UnboundedSender<Outgoing>,
    level: Arc<AtomicU8>,
}

impl Outbox {
    pub(crate) fn new(tasks: UnboundedSender<Outgoing>, logs: UnboundedSender<Outgoing>) -> Self {
        Outbox { tasks, logs, level: Arc::new(AtomicU8::new(LogLevel::Info as u8)) }
    }

    /// Queues an answer on the task lane.
    pub(crate) fn answer(&self, response: loom_protocol::Response) {
        let _ = self.tasks.send(Outgoing::Line(Message::Response(response).to_line()));
    }

    /// Queues a notification on the task lane (it stays in order with answers).
    pub(crate) fn notify_in_order(&self, method: &str, params: &impl Serialize) {
        let _ = self.tasks.send(Outgoing::Line(Message::Notification(Notification::new(method, params)).to_line()));
    }

    /// Queues a notification on the log lane.
    pub(crate) fn notify(&self, method: &str, params: &impl Serialize) {
        let _ = self.logs.send(Outgoing::Line(Message::Notification(Notification::new(method, params)).to_line()));
    }

    /// Sets the most detailed level worth sending (from the handshake).
    pub(crate) fn set_level(&self, level: LogLevel) {
        self.level.store(level as u8, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self, level: LogLevel) -> bool {
        level as u8 >= self.level.load(Ordering::Relaxed)
    }

    pub(crate) fn log(
        &self,
        level: LogLevel,
        message: String,
        task_id: Option<String>,
        fields: Option<Map<String, Value>>,
    ) {
        if self.enabled(level) {
            self.notify(methods::LOG, &LogParams { level, message, task_id, fields });
        }
    }
}

/// Handed to each task: its id, the plugin's settings, and the ways to talk to the
/// supervisor while the task runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    task_id: String,
    settings: Arc<Map<String, Value>>,
    outbox: Outbox,
    cancel: CancellationToken,
}

impl Context {
    pub(crate) fn new(
        task_id: String,
        settings: Arc<Map<String, Value>>,
        outbox: Outbox,
        cancel: CancellationToken,
    ) -> Self {
        Context { inner: Arc::new(Inner { task_id, settings, outbox, cancel }) }
    }

    /// The task's `taskId`.
    pub fn task_id(&self) -> &str {
        &self.inner.task_id
    }

    /// The `settings` object of the plugin's manifest, from the handshake.
    pub fn settings(&self) -> &Map<String, Value> {
        &self.inner.settings
    }

    /// Sends a log record about this task to the supervisor's log.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.inner.outbox.log(level, message.into(), Some(self.inner.task_id.clone()), None);
    }

    /// Sends a log record with structured fields.
    pub fn log_with(&self, level: LogLevel, message: impl Into<String>, fields: Map<String, Value>) {
        self.inner.outbox.log(level, message.into(), Some(self.inner.task_id.clone()), Some(fields));
    }

    /// `log` at debug level.
    pub fn debug(&self, message: impl Into<String>) {
        self.log(LogLevel::Debug, message);
    }

    /// `log` at info level.
    pub fn info(&self, message: impl Into<String>) {
        self.log(LogLevel::Info, message);
    }

    /// `log` at warn level.
    pub fn warn(&self, message: impl Into<String>) {
        self.log(LogLevel::Warn, message);
    }

    /// `log` at error level.
    pub fn error(&self, message: impl Into<String>) {
        self.log(LogLevel::Error, message);
    }

    /// Reports progress: what the task is doing and, when known, how far along it is (0-100).
    pub fn progress(&self, message: impl Into<String>, percent: Option<f64>) {
        let params = ProgressParams { task_id: self.inner.task_id.clone(), message: message.into(), percent };
        self.inner.outbox.notify(methods::PROGRESS, &params);
    }

    /// Streams a chunk of a command's output. The supervisor logs it live and, when the
    /// result's own `stdout`/`stderr` is empty, fills it with the streamed text (the tail).
    pub fn output(&self, stream: OutputStream, data: impl Into<String>) {
        let params = OutputParams { task_id: self.inner.task_id.clone(), stream, data: data.into() };
        self.inner.outbox.notify_in_order(methods::OUTPUT, &params);
    }

    /// Whether the supervisor asked to cancel this task (it timed out, or was abandoned).
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when the task is cancelled; race it against the work with `tokio::select!`.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// The task's cancellation token, to hand to code that takes one.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }
}
