//! The Loom provisioner's supervisor: runs every provider and automator plugin as a child
//! process and sends it tasks as JSON-RPC calls over its stdin/stdout (protocol v1, see
//! `protocol/PROTOCOL.md`). A plugin that crashes, hangs or misbehaves is killed and
//! restarted; its failure becomes a failed task result, never a supervisor failure.
//!
//! Where things happen:
//!
//! | | |
//! |---|---|
//! | a task enters | [`Supervisor::run_task`] (`supervisor.rs`), read by [`envelope`] |
//! | it is routed | [`router`]: Loom's rules, BOOTSTRAP fan-out |
//! | it waits for and takes a slot | [`plugin::Plugin::run_task`] (`plugin.rs`): queue, timeouts |
//! | it goes over the wire | [`connection`]: tolerant reader, calls in flight; [`outbound`]: stdin |
//! | a process starts and stops | [`process`] and [`spawn`]: process groups, parent-death signal |
//! | a crash is handled | [`instance`]: the restart loop, with [`restart`]'s policy |
//! | plugins are found | [`registry`] and [`manifest`] |
//! | plugins are trusted, and run as whom | [`vet`]: files checked like sshd's StrictModes ([`trust`]), whom they run as ([`runas`]) |
//! | credentials are kept out of logs | [`redact`] |
//! | plugin log lines reach the log without blocking | [`logpump`] |
//! | a plugin's stderr and mistakes cannot flood the log | [`loglimit`] |
//! | plugin authors check their plugin | [`conformance`] |
//! | the daemon: config, journal, API, systemd | [`config`], [`journal`], [`daemon`], [`http`], [`serve`], [`notify`], [`metrics`] |
//! | the daemon's client (`submit`, `status`) | [`client`] |
//! | clusters: spec, plans, `cluster up`/`down` | [`cluster`] |

pub mod answer;
pub mod budget;
pub mod capture;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conformance;
pub mod connection;
pub mod daemon;
pub mod envelope;
pub mod http;
pub mod instance;
pub mod journal;
pub mod logging;
pub mod loglimit;
pub mod logpump;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod plugin;
pub mod process;
pub mod redact;
pub mod registry;
pub mod restart;
pub mod router;
pub mod runas;
pub mod serve;
pub mod spawn;
pub mod supervisor;
pub mod trust;
pub mod vet;

pub use envelope::TaskEnvelope;
pub use registry::Registry;
pub use supervisor::{Options, Supervisor, TaskReport};
