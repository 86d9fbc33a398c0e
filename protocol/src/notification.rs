//! Params of the notifications: `log`, `progress` and `output` (plugin to supervisor) and
//! `cancel` (supervisor to plugin).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A log level. Ruby's and Python's spellings (`warning`, `fatal`, `critical`) are
/// accepted on input and read as the nearest level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Something unexpected that the plugin handled.
    #[serde(alias = "warning")]
    Warn,
    /// Something failed.
    #[serde(alias = "fatal", alias = "critical")]
    Error,
}

impl LogLevel {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `log`: a record for the supervisor's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogParams {
    /// Its level.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// The task it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Structured context, logged as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Map<String, Value>>,
}

/// `progress`: how far a task has come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressParams {
    /// The task.
    pub task_id: String,
    /// What it is doing now.
    pub message: String,
    /// 0 to 100, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// Which stream an `output` chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output of the command.
    Stdout,
    /// Standard error of the command.
    Stderr,
}

/// `output`: live output of a command that a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputParams {
    /// The task.
    pub task_id: String,
    /// Which stream.
    pub stream: OutputStream,
    /// The chunk, as text (not necessarily whole lines).
    pub data: String,
}

/// `cancel`: stop working on a task and answer it soon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelParams {
    /// The task to cancel.
    pub task_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_accept_other_languages_spellings() {
        for (text, level) in
            [("\"warning\"", LogLevel::Warn), ("\"fatal\"", LogLevel::Error), ("\"trace\"", LogLevel::Trace)]
        {
            assert_eq!(serde_json::from_str::<LogLevel>(text).unwrap(), level);
        }
        assert!(LogLevel::Trace < LogLevel::Error);
    }

    #[test]
    fn wire_names_match_the_spec() {
        let log: LogParams =
            serde_json::from_str(r#"{"level":"info","message":"m","taskId":"t","fields":{"k":1}}"#).unwrap();
        assert_eq!(log.task_id.as_deref(), Some("t"));
        let out: OutputParams = serde_json::from_str(r#"{"taskId":"t","stream":"stderr","data":"x"}"#).unwrap();
        assert_eq!(out.stream, OutputStream::Stderr);
        let p = ProgressParams { task_id: "t".into(), message: "half".into(), percent: Some(50.0) };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"taskId":"t","message":"half","percent":50.0}"#);
    }
}
