//! Harness for the end-to-end tests: builds the real binaries, lays out plugin folders,
//! runs `loom-provisioner` as a process, and finds processes a test left behind.
//!
//! One module per concern, everything re-exported here (tests `use loom_e2e::...`):
//!
//! - `build`: the workspace, its binaries built once, temporary folders the supervisor
//!   trusts ([`bin_dir`], [`provisioner`], [`tempdir`]).
//! - `process`: a command run to its end within a deadline, and /proc scans for what is
//!   alive, left behind or a zombie ([`run_with_input`], [`processes_with_env`],
//!   [`wait_until`]).
//! - `cgroups`: what the machine offers for cgroups (root, cgroup v2, controllers), and the
//!   plugin cgroups left in the tree ([`cgroups_unavailable`], [`plugin_cgroups`]).
//! - `net`: a free loopback port, a bare HTTP GET ([`http_get`]).
//! - `tasks`: tasks as Loom sends them ([`task`], [`action`], [`merge`]).
//! - `plugins`: a plugins folder of the test's own, with a marker in every plugin's
//!   environment, and `loom-provisioner run` on it ([`Plugins`], [`Run`]).
//! - `nodes`: Loom's server between phases ([`Nodes`]).
//! - `machines`: the `local` provider and `shell` automator, the example web app
//!   ([`add_local_and_shell`], [`webapp`]).
//! - `moto`, `sshd`, `sudo`: outside services ([`Moto`], [`PasswordSshd`], [`SudoUser`]).
//! - `daemon`: `loom-provisioner serve` and its API ([`Serve`]).
//! - `cluster`: `loom-provisioner cluster` on local machines ([`ClusterRig`]).
//! - `ruby`: Ruby plugins, from fixtures or written by a test ([`Plugins::copy_fixture`]).
//! - `storm`: the kill storm: `storm-plugin` under the daemon while a thread SIGKILLs its
//!   processes, and what is counted from outside ([`StormPlugin`], [`Killer`], [`Outcomes`]).
//!
//! Modules use only those listed before them (`plugins` runs cleanups that `machines`
//! registers, rather than knowing about machines).

mod build;
mod cgroups;
mod cluster;
mod daemon;
mod machines;
mod moto;
mod net;
mod nodes;
mod plugins;
mod process;
mod promtool;
mod ruby;
mod sshd;
mod storm;
mod sudo;
mod tasks;

pub use build::{bin_dir, checkout_commit, chmod, provisioner, tempdir, test_plugin, workspace};
pub use cgroups::{cgroups_unavailable, controller_unavailable, plugin_cgroups, skip, v2_folder};
pub use cluster::{ClusterRig, ClusterRun};
pub use daemon::{Raw, Serve, on_postgres, socket_activated};
pub use machines::{add_local_and_shell, machine_processes, webapp};
pub use moto::Moto;
pub use net::http_get;
pub use nodes::Nodes;
pub use plugins::{Plugins, Run};
pub use process::{
    alive, processes_with_env, run_with_input, run_with_stderr, wait_or_kill, wait_until, zombie_children,
};
pub use promtool::{metric_sum, promtool_check};
pub use sshd::PasswordSshd;
pub use storm::{KILLED_IN_FLIGHT, Killer, Kills, Outcomes, StormPlugin, instances, metric, submit_all, wait_all};
pub use sudo::SudoUser;
pub use tasks::{action, merge, task};
