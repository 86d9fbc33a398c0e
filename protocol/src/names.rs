//! The names the protocol is made of: the ten Loom task names, and the two kinds of
//! plugin that handle them. Everything else (tasks, handshakes, routing) refers to these.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The ten Loom task names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskName {
    /// Provider: ask the provider for a machine.
    Create,
    /// Provider: wait until the machine is ready; report its addresses.
    Confirm,
    /// Provider: destroy the machine. Idempotent.
    Delete,
    /// Automator: prepare a machine for the automator's later tasks. Idempotent.
    Bootstrap,
    /// Automator: run a service's install action.
    Install,
    /// Automator: run a service's configure action.
    Configure,
    /// Automator: run a service's initialize action.
    Initialize,
    /// Automator: run a service's start action.
    Start,
    /// Automator: run a service's stop action.
    Stop,
    /// Automator: run a service's remove action.
    Remove,
}

impl TaskName {
    /// Every task name, providers' first, in the order of a cluster's life.
    pub const ALL: [TaskName; 10] = [
        TaskName::Create,
        TaskName::Confirm,
        TaskName::Delete,
        TaskName::Bootstrap,
        TaskName::Install,
        TaskName::Configure,
        TaskName::Initialize,
        TaskName::Start,
        TaskName::Stop,
        TaskName::Remove,
    ];

    /// The wire spelling, e.g. `"CREATE"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskName::Create => "CREATE",
            TaskName::Confirm => "CONFIRM",
            TaskName::Delete => "DELETE",
            TaskName::Bootstrap => "BOOTSTRAP",
            TaskName::Install => "INSTALL",
            TaskName::Configure => "CONFIGURE",
            TaskName::Initialize => "INITIALIZE",
            TaskName::Start => "START",
            TaskName::Stop => "STOP",
            TaskName::Remove => "REMOVE",
        }
    }

    /// Which kind of plugin handles this task.
    pub fn kind(self) -> PluginKind {
        match self {
            TaskName::Create | TaskName::Confirm | TaskName::Delete => PluginKind::Provider,
            _ => PluginKind::Automator,
        }
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task name that is not one of the ten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown task name {name:?}; expected one of CREATE, CONFIRM, DELETE, BOOTSTRAP, INSTALL, CONFIGURE, INITIALIZE, START, STOP, REMOVE"
)]
pub struct UnknownTaskName {
    /// The name as given, cut to 64 characters.
    pub name: String,
}

impl FromStr for TaskName {
    type Err = UnknownTaskName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskName::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTaskName { name: s.chars().take(64).collect() })
    }
}

/// Provider plugins allocate machines; automator plugins run service actions on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Handles CREATE, CONFIRM, DELETE.
    Provider,
    /// Handles BOOTSTRAP, INSTALL, CONFIGURE, INITIALIZE, START, STOP, REMOVE.
    Automator,
}

impl PluginKind {
    /// The tasks a plugin of this kind may handle.
    pub fn tasks(self) -> &'static [TaskName] {
        match self {
            PluginKind::Provider => &TaskName::ALL[..3],
            PluginKind::Automator => &TaskName::ALL[3..],
        }
    }

    /// `"provider"` or `"automator"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Provider => "provider",
            PluginKind::Automator => "automator",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
