//! The Loom plugin protocol, version 1: JSON-RPC 2.0 messages, one per line, over a plugin
//! process's stdin (supervisor to plugin) and stdout (plugin to supervisor).
//!
//! This crate is deliberately small, in the manner of rust-analyzer's `lsp-server`:
//!
//! - [`message`]: the envelope. One [`Message`] enum (request, response, notification) with
//!   [`Message::decode`] and [`Message::encode`]. Params and results stay raw JSON
//!   ([`serde_json::value::RawValue`]) so that a task is forwarded byte for byte and only
//!   the side that needs a typed view pays for one.
//! - [`codec`]: the newline framing with a line-length limit, as a `tokio-util` codec, and
//!   [`writer`]: one task that batches queued lines into as few writes as possible.
//! - [`handshake`], [`task`], [`notification`]: the typed params and results of each method.
//! - [`methods`] and [`codes`]: method names and error codes.
//! - [`backoff`]: exponential backoff with jitter, shared by the supervisor's restarts and
//!   the bundled plugins' retries.
//!
//! `PROTOCOL.md` next to this crate is the normative specification; these types follow it.

pub mod backoff;
pub mod codec;
pub mod handshake;
pub mod message;
pub mod names;
pub mod notification;
pub mod task;
pub mod writer;

pub use codec::{CodecError, LineCodec, Overflow};
pub use handshake::{HandshakeParams, HandshakeResult};
pub use message::{DecodeError, Message, Notification, Request, RequestId, Response, ResponseError};
pub use names::{PluginKind, TaskName, UnknownTaskName};
pub use notification::{CancelParams, LogLevel, LogParams, OutputParams, OutputStream, ProgressParams};
pub use task::{Config, Task, TaskResult};

/// The protocol versions this crate speaks. A handshake agrees on one of them.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];

/// PROTOCOL.md, the specification, as text: `check` quotes the rule it reports from it.
pub const SPEC: &str = include_str!("../PROTOCOL.md");

/// The environment variable that tells a plugin which protocol version to expect.
pub const ENV_PROTOCOL: &str = "LOOM_PLUGIN_PROTOCOL";
/// The environment variable that carries the plugin's registered name.
pub const ENV_PLUGIN_NAME: &str = "LOOM_PLUGIN_NAME";
/// The environment variable that names the log channel's file descriptor (always 3 from
/// this supervisor): a pipe on which a plugin may send its `log` and `progress`
/// notifications instead of stdout, so that they never queue in front of answers.
pub const ENV_LOG_FD: &str = "LOOM_LOG_FD";
/// The log channel's file descriptor in the plugin.
pub const LOG_FD: i32 = 3;

/// Default limit on one line (one message), in bytes, excluding the newline.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Method names, as they appear in the `method` field.
pub mod methods {
    /// Supervisor to plugin, request: the first message on every connection.
    pub const HANDSHAKE: &str = "handshake";
    /// Supervisor to plugin, request: run one Loom task.
    pub const TASK: &str = "task";
    /// Supervisor to plugin, request: liveness check, answered with `{}`.
    pub const PING: &str = "ping";
    /// Supervisor to plugin, request: finish up; stdin closes right after the answer.
    pub const SHUTDOWN: &str = "shutdown";
    /// Supervisor to plugin, notification: stop working on a task.
    pub const CANCEL: &str = "cancel";
    /// Plugin to supervisor, notification: a log record.
    pub const LOG: &str = "log";
    /// Plugin to supervisor, notification: progress of a task.
    pub const PROGRESS: &str = "progress";
    /// Plugin to supervisor, notification: live output of a command a task runs.
    pub const OUTPUT: &str = "output";
}

/// JSON-RPC error codes used by the protocol.
pub mod codes {
    /// The line was not valid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON was not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method is not known to the receiver.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params did not match the method.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The receiver failed while handling the request.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Handshake: none of the offered protocol versions is supported.
    pub const UNSUPPORTED_PROTOCOL: i64 = -32001;
    /// A `task` request named a task the plugin does not handle.
    pub const TASK_NOT_SUPPORTED: i64 = -32002;
    /// A request arrived after `shutdown`.
    pub const SHUTTING_DOWN: i64 = -32003;
    /// A request other than `handshake` arrived before the handshake.
    pub const NOT_INITIALIZED: i64 = -32004;
}
