//! Clusters: describe one ([`spec`]), and `cluster up` provisions its machines and
//! installs, configures and starts its services, as Loom's server planned them and its
//! provisioner ran them; `cluster down` takes it all away.
//!
//! | | |
//! |---|---|
//! | the description, checked | [`spec`] |
//! | which tasks, in which order | [`plan`] (pure) |
//! | what an operation would do, checked before anything is sent | [`preview`] |
//! | running them: retries, recording each result | [`job`] |
//! | the task each step sends, results flowing into later tasks | [`task`] |
//! | how an operation ended, what to do next | [`outcome`] |
//! | what is recorded (in the daemon's journal) | [`store`] |
//! | one operation per cluster at a time | [`lock`] |
//! | showing progress, showing a cluster | [`progress`], [`view`] |
//!
//! Tasks go through the core's one way in (`Supervisor::reserve`, then `Permit::send`);
//! records go to the journal. Uses the journal, the core, the wire and the log; nothing
//! above (the `cluster` commands are in `cli/cluster.rs`, the API's in `daemon/http`).

pub mod job;
pub mod lock;
pub mod outcome;
pub mod plan;
pub mod preview;
pub mod progress;
mod remote;
pub mod spec;
pub mod store;
pub mod task;
pub mod view;

use std::path::PathBuf;

pub use job::JobError;
pub use plan::JobKind;
pub use spec::ClusterSpec;
pub use store::{ClusterState, ClusterStore};

/// Where `cluster` commands keep their journal unless told: the daemon's folder for root
/// (`/var/lib/loom-provisioner`), else `$XDG_STATE_HOME/loom-provisioner`
/// (`~/.local/state/loom-provisioner`).
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/loom-provisioner");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("loom-provisioner")
}

/// The folder of the cluster locks, inside the data folder.
pub fn lock_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("clusters")
}
