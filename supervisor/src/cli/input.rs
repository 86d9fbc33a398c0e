//! What can be wrong with the tasks' input of `run` and `submit`, read whole
//! ([`super::run`]) or as it arrives ([`super::stream`]); each names the input and the
//! line, never the text (tasks carry credentials).

use crate::wire::envelope::InvalidTask;

/// One problem with the tasks' input, naming the input (a file, or `<stdin>`) and, for a
/// task, its line.
#[derive(Debug, thiserror::Error)]
pub enum TaskProblem {
    /// The input cannot be read.
    #[error("{input}: cannot read: {source}")]
    Unreadable {
        /// The file, or `<stdin>`.
        input: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON from here on; nothing after it was read.
    #[error("{input}: line {line} column {column}: not valid JSON; nothing after it was read")]
    NotJson {
        /// The file, or `<stdin>`.
        input: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// A task whose id an earlier task has.
    #[error("{input}: line {line}: task {task_id} appears more than once")]
    Duplicate {
        /// The file, or `<stdin>`.
        input: String,
        /// The task's first line.
        line: usize,
        /// Its id.
        task_id: String,
    },
    /// A document that is not a usable task.
    #[error("{input}: line {line}: {source}")]
    Invalid {
        /// The file, or `<stdin>`.
        input: String,
        /// The document's first line.
        line: usize,
        /// Why.
        source: InvalidTask,
    },
    /// Streamed input: not JSON at this line; reading goes on at the next line.
    #[error("{input}: line {line} column {column}: not valid JSON")]
    NotJsonLine {
        /// `<stdin>`, or the pipe's name.
        input: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// Streamed input: a document or line longer than the bound.
    #[error("{input}: line {line}: {why}")]
    TooLong {
        /// `<stdin>`, or the pipe's name.
        input: String,
        /// Where it starts.
        line: usize,
        /// How long it may be.
        why: String,
    },
    /// Streamed input: a document cut short by the end of the input or by a new one.
    #[error(
        "{input}: line {line}: a JSON document that is not finished (the input ends, or a line starting with {{ comes first)"
    )]
    Unfinished {
        /// `<stdin>`, or the pipe's name.
        input: String,
        /// Where the document starts.
        line: usize,
    },
    /// Streamed input: a task whose id a task still running has.
    #[error("{input}: line {line}: task {task_id} is still running; this one was not run")]
    Running {
        /// `<stdin>`, or the pipe's name.
        input: String,
        /// The task's first line.
        line: usize,
        /// Its id.
        task_id: String,
    },
    /// Nothing but whitespace.
    #[error("{input}: no tasks in the input")]
    Empty {
        /// The file, or `<stdin>`.
        input: String,
    },
}
