//! `run` on a pipe, a terminal or a socket: tasks are read as they arrive and each runs as
//! soon as it is read (at most `--concurrency` at once); its result line is printed when it
//! ends. A regular file is read whole and checked first instead ([`super::run`]).
//!
//! Input that is not a task does not stop the others: its cause and line go to stderr (never
//! its text: tasks carry credentials) and stdout gets a result line for it, with `status` 1,
//! `taskId` when it could be read (else `null`) and `line`, so that a consumer can match it.
//! The exit code is then 1.
//!
//! When stdout goes away (its reader closed it), no more input is read: results could not
//! be delivered. The tasks running finish, and `run` exits 1 saying so on stderr.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use loom_protocol::TaskResult;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::cli::exit::Exit;
use crate::cli::input::TaskProblem;
use crate::core::supervisor::{Supervisor, TaskReport};
use crate::wire::envelope::TaskEnvelope;

/// The longest task (or line) read: the daemon's default body limit. Longer input is
/// skipped up to its end of line, and reported.
pub const MAX_TASK_BYTES: usize = crate::daemon::config::DEFAULT_MAX_BODY_BYTES;

/// What the reading thread hands over.
#[derive(Debug)]
pub(crate) enum Item {
    /// A task, and the line it starts on.
    Task(TaskEnvelope, usize),
    /// Input that is not a task; nothing after it on its line is read as a task.
    Bad(TaskProblem, usize, Option<String>),
}

/// Reads `input` on a thread of its own, sending what it reads; it blocks while the
/// channel is full (backpressure: nothing more is read while `capacity` items wait).
///
/// # Errors and cancellation
/// A read error is sent as [`Item::Bad`] and ends the reading. When the receiver is
/// dropped the thread stops at its next item; a thread blocked in `read` ends with the
/// process.
pub(crate) fn spawn_reader(name: String, input: Box<dyn BufRead + Send>, capacity: usize) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    std::thread::spawn(move || {
        let mut splitter = Splitter::new(name);
        let mut input = input;
        let mut line = Vec::new();
        loop {
            let items = match read_line_bounded(&mut input, &mut line, MAX_TASK_BYTES) {
                Ok(Some(complete)) => splitter.line(&line, complete),
                Ok(None) => splitter.end(),
                Err(source) => vec![splitter.unreadable(source)],
            };
            let last = items.iter().any(|i| matches!(i, Item::Bad(TaskProblem::Unreadable { .. }, ..)));
            for item in items {
                if tx.blocking_send(item).is_err() {
                    return;
                }
            }
            if last || splitter.ended {
                return;
            }
        }
    });
    rx
}

/// Reads one line (with its `\n`) into `line`, keeping at most `max` bytes of it.
/// `Ok(Some(true))` for a line within the bound, `Ok(Some(false))` for a longer one (its
/// rest was read and dropped), `Ok(None)` at the end of the input.
///
/// # Errors
/// The read error; interrupted reads are retried.
fn read_line_bounded(input: &mut dyn BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut within = true;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((!line.is_empty() || !within).then_some(within));
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if within && line.len() + take <= max {
            line.extend_from_slice(&buf[..take]);
        } else {
            within = false;
            line.clear();
        }
        input.consume(take);
        if done {
            return Ok(Some(within));
        }
    }
}

/// Cuts lines into JSON documents. A document may span lines (a pretty-printed task):
/// lines are gathered while brackets are open, then parsed. A line that starts with `{` at
/// its first column while a document is open begins a new one: the open one was cut short
/// and is reported (a producer's truncated line does not swallow the next task). Nothing
/// gathered grows past [`MAX_TASK_BYTES`].
struct Splitter {
    name: String,
    /// Lines read so far.
    lines: usize,
    /// The document being gathered, and the line it starts on.
    pending: Vec<u8>,
    pending_line: usize,
    /// Brackets open in `pending`.
    nesting: Nesting,
    ended: bool,
}

/// Brackets open outside strings, counted as bytes arrive.
#[derive(Default)]
struct Nesting {
    depth: i64,
    in_string: bool,
    escaped: bool,
}

impl Nesting {
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth -= 1,
                _ => {}
            }
        }
    }

    /// Whether more lines are needed (a string cannot go on past its line).
    fn open(&self) -> bool {
        self.depth > 0 && !self.in_string
    }
}

impl Splitter {
    fn new(name: String) -> Splitter {
        Splitter { name, lines: 0, pending: Vec::new(), pending_line: 0, nesting: Nesting::default(), ended: false }
    }

    /// One more line; `complete` is false for a line longer than the bound (dropped).
    fn line(&mut self, line: &[u8], complete: bool) -> Vec<Item> {
        self.lines += 1;
        let mut items = Vec::new();
        if self.has_pending() && line.first() == Some(&b'{') {
            items.extend(self.unfinished());
        }
        if !self.has_pending() {
            self.clear();
            self.pending_line = self.lines;
        }
        if !complete || self.pending.len() + line.len() > MAX_TASK_BYTES {
            let at = self.pending_line;
            self.clear();
            let why = format!("longer than {MAX_TASK_BYTES} bytes; skipped");
            items.push(self.bad(TaskProblem::TooLong { input: self.name.clone(), line: at, why }, at));
            return items;
        }
        self.pending.extend_from_slice(line);
        self.nesting.scan(line);
        if !self.nesting.open() {
            items.extend(self.documents());
        }
        items
    }

    /// The end of the input: a document left open is reported.
    fn end(&mut self) -> Vec<Item> {
        self.ended = true;
        self.unfinished().into_iter().collect()
    }

    fn has_pending(&self) -> bool {
        !self.pending.iter().all(u8::is_ascii_whitespace)
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.nesting = Nesting::default();
    }

    /// The document gathered so far, reported as cut short (nothing when there is none).
    fn unfinished(&mut self) -> Option<Item> {
        if !self.has_pending() {
            return None;
        }
        let at = self.pending_line;
        self.clear();
        Some(self.bad(TaskProblem::Unfinished { input: self.name.clone(), line: at }, at))
    }

    fn unreadable(&mut self, source: std::io::Error) -> Item {
        self.ended = true;
        Item::Bad(TaskProblem::Unreadable { input: self.name.clone(), source }, self.lines + 1, None)
    }

    /// The complete documents in `pending`; an unfinished one stays.
    fn documents(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        let pending = &self.pending;
        let line_of = |offset: usize| self.pending_line + pending[..offset].iter().filter(|b| **b == b'\n').count();
        let mut stream = serde_json::Deserializer::from_slice(pending).into_iter::<Box<RawValue>>();
        let mut used = 0;
        loop {
            let start = stream.byte_offset();
            let at = line_of(start + pending[start..].iter().take_while(|b| b.is_ascii_whitespace()).count());
            match stream.next() {
                None => {
                    used = pending.len();
                    break;
                }
                Some(Ok(raw)) => {
                    used = stream.byte_offset();
                    items.push(match TaskEnvelope::parse(raw) {
                        Ok(task) => Item::Task(task, at),
                        Err(source) => {
                            let id = source.task_id.clone();
                            Item::Bad(TaskProblem::Invalid { input: self.name.clone(), line: at, source }, at, id)
                        }
                    });
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    let (line, column) = (self.pending_line + e.line().saturating_sub(1), e.column());
                    let problem = TaskProblem::NotJsonLine { input: self.name.clone(), line, column };
                    items.push(self.bad(problem, line));
                    used = pending.len();
                    break;
                }
            }
        }
        let next_line = line_of(used);
        self.pending.drain(..used);
        self.pending_line = next_line;
        self.nesting = Nesting::default();
        self.nesting.scan(&self.pending);
        items
    }

    fn bad(&self, problem: TaskProblem, line: usize) -> Item {
        Item::Bad(problem, line, None)
    }
}

/// Runs what `items` brings, at most `concurrency` tasks at once, printing each result
/// line when its task ends and a line for each bad input; returns when the input has ended
/// and every task has.
///
/// # Cancellation
/// On SIGINT or SIGTERM the tasks running are cancelled (each plugin gets a `cancel`), and
/// each of them, and each task read but not started, gets a result line saying so.
pub(crate) async fn run_stream(
    sup: &Supervisor,
    name: &str,
    mut items: mpsc::Receiver<Item>,
    concurrency: usize,
) -> Exit {
    let mut running = FuturesUnordered::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let (mut all_ok, mut any, mut input_done) = (true, false, false);
    let mut output = Output::default();
    let signal = crate::cli::signals::interrupt();
    tokio::pin!(signal);
    let interrupted = loop {
        if input_done && running.is_empty() {
            break None;
        }
        let room = !input_done && running.len() < concurrency;
        tokio::select! {
            name = &mut signal => break Some(name),
            Some(report) = running.next(), if !running.is_empty() => {
                let report: TaskReport = report;
                if let Some(id) = &report.task_id {
                    in_flight.remove(id);
                }
                all_ok &= report.result.status == 0;
                output.print(&report);
            }
            item = items.recv(), if room => match item {
                None => input_done = true,
                Some(Item::Task(task, line)) if in_flight.contains(&task.task_id) => {
                    let problem = TaskProblem::Running { input: name.to_owned(), line, task_id: task.task_id };
                    all_ok = false;
                    report_bad(&mut output, &problem, line, None);
                }
                Some(Item::Task(task, _)) => {
                    any = true;
                    in_flight.insert(task.task_id.clone());
                    running.push(start(sup, task));
                }
                Some(Item::Bad(problem @ TaskProblem::Unreadable { .. }, ..)) => {
                    all_ok = false;
                    eprintln!("loom-provisioner: {problem}");
                }
                Some(Item::Bad(problem, line, id)) => {
                    all_ok = false;
                    report_bad(&mut output, &problem, line, id);
                }
            },
        }
        if output.gone && !input_done {
            eprintln!(
                "loom-provisioner: stdout was closed: no more of {name} is read; the {} task(s) running finish first",
                running.len()
            );
            input_done = true;
        }
    };
    all_ok &= !output.gone;
    drop(running);
    if let Some(signal) = interrupted {
        tracing::warn!("{signal}: cancelling the tasks still running and stopping the plugins");
        all_ok = false;
        for id in in_flight {
            let why = format!("interrupted by {signal} before the task finished; it was cancelled");
            print_line(&TaskReport { task_id: Some(id), result: TaskResult::failed(why) });
        }
        while let Ok(item) = items.try_recv() {
            if let Item::Task(task, _) = item {
                let why = format!("interrupted by {signal} before the task started; it did not run");
                print_line(&TaskReport { task_id: Some(task.task_id), result: TaskResult::failed(why) });
            }
        }
    } else if !any && all_ok {
        eprintln!("loom-provisioner: {}", TaskProblem::Empty { input: name.to_owned() });
        return Exit::Usage;
    }
    Exit::ok_if(all_ok)
}

/// Runs one task; dropping the future cancels it (its plugin gets a `cancel`).
async fn start(sup: &Supervisor, task: TaskEnvelope) -> TaskReport {
    let result = sup.run(&task).await;
    TaskReport { task_id: Some(task.task_id), result }
}

/// Bad input: its cause on stderr, and a failed result line with its `line`.
fn report_bad(output: &mut Output, problem: &TaskProblem, line: usize, task_id: Option<String>) {
    let text = problem.to_string();
    eprintln!("loom-provisioner: {text}");
    let result = TaskResult::failed(format!("not run: {text}"));
    output.print(&BadLine { task_id, line, result });
}

/// stdout, remembering whether a write failed (its reader is gone: `EPIPE`).
#[derive(Default)]
struct Output {
    gone: bool,
}

impl Output {
    fn print(&mut self, report: &impl serde::Serialize) {
        if !self.gone && write_line(report).is_err() {
            self.gone = true;
        }
    }
}

#[derive(serde::Serialize)]
struct BadLine {
    #[serde(rename = "taskId")]
    task_id: Option<String>,
    line: usize,
    #[serde(flatten)]
    result: TaskResult,
}

/// One result line on stdout, flushed at once; a failed write is not reported (for the
/// batch path and interruptions, where nothing else would be done about it).
pub(crate) fn print_line(report: &impl serde::Serialize) {
    let _ = write_line(report);
}

/// One result line on stdout, flushed at once.
///
/// # Errors
/// The write's (`EPIPE` once stdout's reader is gone: Rust ignores `SIGPIPE`).
fn write_line(report: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, report)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &str) -> Vec<String> {
        let mut s = Splitter::new("in".into());
        let mut out = Vec::new();
        for line in input.split_inclusive('\n') {
            out.extend(s.line(line.as_bytes(), true));
        }
        out.extend(s.end());
        out.iter()
            .map(|i| match i {
                Item::Task(t, line) => format!("{line}:{}", t.task_id),
                Item::Bad(p, line, id) => format!("{line}:bad:{id:?}:{p}"),
            })
            .collect()
    }

    #[test]
    fn lines_and_pretty_documents_are_cut_with_their_lines() {
        let got = split(
            "{\"taskId\":\"a\",\"taskName\":\"CREATE\"}\n\n{\n \"taskId\": \"b\",\n \"taskName\": \"DELETE\"\n}\n{\"taskId\":\"c\",\"taskName\":\"CREATE\"} {\"taskId\":\"d\",\"taskName\":\"CREATE\"}\n",
        );
        assert_eq!(got, ["1:a", "3:b", "7:c", "7:d"]);
    }

    #[test]
    fn bad_lines_are_reported_and_reading_goes_on() {
        let got = split("oops secret\n{\"taskId\":\"b\"}\n{\"taskId\":\"c\",\"taskName\":\"CREATE\"}\n{\"taskId\":");
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].starts_with("1:bad:None:in: line 1 column"), "{got:?}");
        assert!(!got[0].contains("secret"), "{got:?}");
        assert!(got[1].starts_with("2:bad:Some(\"b\"):in: line 2: task b: \"taskName\" is missing"), "{got:?}");
        assert_eq!(got[2], "3:c");
        assert!(got[3].starts_with("4:bad:None:in: line 4: a JSON document that is not finished"), "{got:?}");
    }

    #[test]
    fn a_truncated_line_does_not_swallow_the_next_task() {
        let got = split("{\"taskId\": \"a\", \"config\": {\"x\": \"}{\"\n{\"taskId\":\"b\",\"taskName\":\"CREATE\"}\n");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("1:bad:None:in: line 1: a JSON document that is not finished"), "{got:?}");
        assert_eq!(got[1], "2:b");
    }

    #[test]
    fn a_long_line_is_dropped_without_keeping_it() {
        let text = format!("{}\n{{\"taskId\":\"a\",\"taskName\":\"CREATE\"}}\n", "x".repeat(100));
        let mut input = std::io::BufReader::with_capacity(8, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(read_line_bounded(&mut input, &mut line, 50).unwrap(), Some(false));
        assert!(line.is_empty());
        assert_eq!(read_line_bounded(&mut input, &mut line, 50).unwrap(), Some(true));
        assert!(line.starts_with(b"{\"taskId\""));
        assert_eq!(read_line_bounded(&mut input, &mut line, 50).unwrap(), None);
    }
}
