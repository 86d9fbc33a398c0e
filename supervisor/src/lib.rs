//! The Loom provisioner's supervisor: runs every provider and automator plugin as a child
//! process and sends it tasks as JSON-RPC calls over its stdin/stdout (protocol v1, see
//! `protocol/PROTOCOL.md`). A plugin that crashes, hangs or misbehaves is killed and
//! restarted; its failure becomes a failed task result, never a supervisor failure.
//!
//! The folders are layers; each may use the ones below it and none above
//! (`supervisor/tests/layers.rs` checks it, and that no files import each other in a
//! circle):
//!
//! | layer | its one job |
//! |---|---|
//! | [`cli`] | the `loom-provisioner` command line: dispatch, exit codes, `run`, `plugins`, `check`, the daemon's client, `cluster` |
//! | `daemon` | `serve`: configuration, the service that journals and runs submitted work, the HTTP API, systemd, metrics |
//! | `cluster` | cluster specs, their plans, running them (`cluster up`/`down`), their records, progress |
//! | `journal` | the durable journal (SQLite) and every table's schema |
//! | `core` | plugins found, trusted and started; their instances supervised; tasks routed to a slot |
//! | `wire` | one plugin connection: the task envelope, calls over stdin/stdout, answers, output, scrubbing credentials |
//! | `log` | the supervisor's own log, and the pump that carries plugins' lines into it without blocking |
//!
//! A task's path: it is read and checked by `wire/envelope.rs` ([`TaskEnvelope`]);
//! [`Supervisor::reserve`] (`core/supervisor.rs`) routes it (`core/router.rs`: Loom's
//! rules, BOOTSTRAP fan-out) and takes a slot on its plugin (`core/pool.rs`: the queue,
//! back-pressure) and returns a [`Permit`]; the caller records that the task runs (the
//! daemon's journal, `daemon/service.rs`; a cluster's store, `cluster/job.rs`); then
//! [`Permit::send`] sends it (`core/plugin.rs`: the declared-task check, timeouts,
//! cancel, kill) over the wire (`wire/connection.rs`) and returns its result, scrubbed.
//! A process is started by `core/spawn.rs` and `core/process.rs`; when it crashes,
//! `core/instance.rs` cleans up and starts another, as `core/restart.rs`'s policy says.

pub mod cli;
mod cluster;
mod core;
mod daemon;
mod journal;
pub mod log;
mod wire;

pub use crate::core::plugin::Plugin;
pub use crate::core::pool::{InstanceStatus, Phase};
pub use crate::core::registry::Registry;
pub use crate::core::supervisor::{Options, Permit, Refused, Supervisor, TaskReport};
pub use crate::wire::envelope::TaskEnvelope;

/// The readers of outside input, for the fuzz targets and the tests that feed them
/// hostile input: tasks ([`TaskEnvelope`]) and the scrubbing of their credentials, a
/// plugin's output ([`inputs::Connection`]), manifests, the daemon's configuration,
/// cluster specs and their plans, and HTTP requests ([`inputs::serve_stream`]).
pub mod inputs {
    pub use crate::cluster::plan::{self, Plan, StepKey};
    pub use crate::cluster::spec::{ClusterSpec, MAX_NODES, SpecFormat};
    pub use crate::core::manifest::{Entry, KeyProblem, Parsed, PluginSpec, parse_entry};
    pub use crate::daemon::config::{self, Listen};
    pub use crate::daemon::http::serve_stream;
    pub use crate::daemon::service::Daemon;
    pub use crate::wire::connection::Connection;
    pub use crate::wire::redact::{MASK, MIN_SECRET_LEN, Redactor, is_secret_key};
}

/// This build's version (the crate's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this build was made from (12 hex digits; `$LOOM_COMMIT` for a build outside
/// git; "unknown" when neither said): in `--version` and `loom_build_info`.
pub const COMMIT: &str = env!("LOOM_COMMIT");
