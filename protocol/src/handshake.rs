//! The `handshake` request: the first exchange on every plugin connection.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::names::PluginKind;
use crate::names::TaskName;
use crate::notification::LogLevel;

/// Params of `handshake`, supervisor to plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeParams {
    /// Protocol versions the supervisor speaks; the plugin picks one.
    pub protocol_versions: Vec<u32>,
    /// The name the plugin is registered under.
    pub plugin: String,
    /// Whether it is registered as a provider or an automator.
    pub kind: PluginKind,
    /// The `settings` object of the plugin's manifest (`{}` when absent).
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// The most verbose level the supervisor will log; plugins need not send finer ones.
    #[serde(default)]
    pub log_level: LogLevel,
}

/// Result of `handshake`, plugin to supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeResult {
    /// The chosen version, one of `protocolVersions`.
    pub protocol_version: u32,
    /// The plugin's own name (informational; routing uses the registered name).
    pub name: String,
    /// The plugin's version (informational).
    pub version: String,
    /// The tasks this plugin handles; each must belong to its kind.
    pub tasks: Vec<TaskName>,
    /// How many tasks it runs at once; lowers the manifest's `maxConcurrency`, never raises it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Tasks that are safe to run twice: a daemon restarted while one ran re-runs it
    /// instead of failing it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotent_tasks: Vec<TaskName>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_the_spec() {
        let p = HandshakeParams {
            protocol_versions: vec![1],
            plugin: "aws".into(),
            kind: PluginKind::Provider,
            settings: Map::new(),
            log_level: LogLevel::Info,
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"protocolVersions":[1],"plugin":"aws","kind":"provider","settings":{},"logLevel":"info"})
        );
        let r: HandshakeResult = serde_json::from_str(
            r#"{"protocolVersion":1,"name":"aws","version":"1.0","tasks":["CREATE","CONFIRM","DELETE"],"maxConcurrency":4}"#,
        )
        .unwrap();
        assert_eq!(r.max_concurrency, Some(4));
        assert_eq!(r.tasks, PluginKind::Provider.tasks());
    }

    #[test]
    fn kinds_split_the_ten_tasks() {
        assert_eq!(PluginKind::Provider.tasks().len() + PluginKind::Automator.tasks().len(), 10);
        assert!(PluginKind::Automator.tasks().iter().all(|t| t.kind() == PluginKind::Automator));
        assert!(PluginKind::Provider.tasks().iter().all(|t| t.kind() == PluginKind::Provider));
    }
}
