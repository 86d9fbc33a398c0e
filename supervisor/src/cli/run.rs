//! `run`: tasks read from a file or stdin, run through plugins started here, one result
//! line each on stdout; and `submit`, which reads tasks the same way and sends them to a
//! daemon ([`crate::cli::client`]).

use std::collections::HashSet;
use std::io::{BufRead, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use loom_protocol::{LogLevel, TaskResult};
use serde_json::value::RawValue;

use crate::cli::exit::Exit;
use crate::cli::input::TaskProblem;
use crate::cli::plugins::{RunAsArgs, load_registry};
use crate::cli::signals::interrupt;
use crate::cli::stream::print_line;
use crate::core::supervisor::{Options, Supervisor, TaskReport};
use crate::wire::envelope::TaskEnvelope;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A folder with providers/ and automators/ (repeatable).
    #[arg(long = "plugins-dir", required = true, value_name = "DIR")]
    pub(crate) plugins_dirs: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) run_as: RunAsArgs,
    /// How many tasks to run at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,
    /// The tasks; "-" or nothing for stdin. A regular file is read and checked whole before
    /// any task runs; a pipe, terminal or socket is read as tasks arrive, each running as
    /// soon as it is read and its result printed when it ends.
    #[arg(value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The tasks; "-" or nothing for stdin.
    #[arg(value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
    /// Wait for each task and print its result line (as `run` does); exit 1 if any failed.
    #[arg(long)]
    pub(crate) wait: bool,
    #[command(flatten)]
    pub(crate) api: crate::cli::client::ApiArgs,
}

pub async fn run(args: RunArgs, plugin_level: LogLevel) -> Exit {
    let Some(registry) = load_registry(&args.plugins_dirs, &args.run_as) else {
        return Exit::Usage;
    };
    let source = args.input.as_deref().filter(|p| *p != Path::new("-"));
    let name = source.map_or_else(|| "<stdin>".to_owned(), |p| p.display().to_string());
    let input = match open_input(source) {
        Ok(input) => input,
        Err(source) => {
            eprintln!("loom-provisioner: {}", TaskProblem::Unreadable { input: name, source });
            return Exit::Usage;
        }
    };
    let concurrency = args.concurrency as usize;
    match input {
        Input::File(file) => {
            let tasks = match read_all(&name, file) {
                Ok(tasks) => tasks,
                Err(errors) => {
                    for e in errors {
                        eprintln!("loom-provisioner: {e}");
                    }
                    return Exit::Usage;
                }
            };
            let sup = Supervisor::new(registry, Options { eager: false, log_level: plugin_level });
            let exit = run_batch(&sup, &tasks, concurrency).await;
            sup.shutdown().await;
            exit
        }
        Input::Stream(reader) => {
            let items = crate::cli::stream::spawn_reader(name.clone(), reader, concurrency);
            let sup = Supervisor::new(registry, Options { eager: false, log_level: plugin_level });
            let exit = crate::cli::stream::run_stream(&sup, &name, items, concurrency).await;
            sup.shutdown().await;
            exit
        }
    }
}

/// Where `run` reads its tasks.
enum Input {
    /// A regular file: read whole and checked before anything runs.
    File(std::fs::File),
    /// A pipe, terminal or socket: read as tasks arrive ([`crate::cli::stream`]).
    Stream(Box<dyn BufRead + Send>),
}

/// Opens `source` (stdin when `None`) and tells a regular file from a stream.
///
/// # Errors
/// The file cannot be opened, or its type cannot be read.
fn open_input(source: Option<&Path>) -> std::io::Result<Input> {
    let file = match source {
        Some(path) => std::fs::File::open(path)?,
        None => std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?),
    };
    if file.metadata()?.is_file() {
        Ok(Input::File(file))
    } else {
        Ok(Input::Stream(Box::new(std::io::BufReader::with_capacity(64 * 1024, file))))
    }
}

/// Reads a regular file whole and checks every task ([`parse_tasks`]).
fn read_all(name: &str, mut file: std::fs::File) -> Result<Vec<TaskEnvelope>, Vec<TaskProblem>> {
    let mut data = Vec::new();
    if let Err(source) = file.read_to_end(&mut data) {
        return Err(vec![TaskProblem::Unreadable { input: name.to_owned(), source }]);
    }
    parse_tasks(name, &data)
}

/// Runs checked tasks, at most `concurrency` at once, printing each result line when its
/// task ends.
///
/// # Cancellation
/// On SIGINT or SIGTERM the tasks still running are cancelled (each gets a `cancel`) and
/// every task without a result gets a line saying it was interrupted.
async fn run_batch(sup: &Supervisor, tasks: &[TaskEnvelope], concurrency: usize) -> Exit {
    let accepted: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
    let mut results =
        futures_util::stream::iter(tasks.iter().map(|task| async move {
            TaskReport { task_id: Some(task.task_id.clone()), result: sup.run(task).await }
        }))
        .buffer_unordered(concurrency);

    let mut reported = HashSet::new();
    let mut all_ok = true;
    // Created once, so that a signal between two results is not missed.
    let signal = interrupt();
    tokio::pin!(signal);
    let interrupted = loop {
        tokio::select! {
            next = results.next() => match next {
                Some(report) => {
                    all_ok &= report.result.status == 0;
                    if let Some(id) = &report.task_id {
                        reported.insert(id.clone());
                    }
                    print_line(&report);
                }
                None => break None,
            },
            name = &mut signal => break Some(name),
        }
    };
    // Dropping the stream cancels the tasks still running (each gets a `cancel`).
    drop(results);
    if let Some(signal) = interrupted {
        tracing::warn!("{signal}: cancelling the tasks still running and stopping the plugins");
        for id in accepted.iter().filter(|id| !reported.contains(*id)) {
            all_ok = false;
            let why = format!("interrupted by {signal} before the task finished; it was cancelled");
            print_line(&TaskReport { task_id: Some(id.clone()), result: TaskResult::failed(why) });
        }
    }
    Exit::ok_if(all_ok)
}

pub async fn submit(args: SubmitArgs) -> Exit {
    let api = match crate::cli::client::Api::resolve(&args.api) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            return Exit::Usage;
        }
    };
    let source = args.input.as_deref().filter(|p| *p != Path::new("-"));
    match read_tasks(source) {
        Ok(tasks) => crate::cli::client::submit(&api, tasks, args.wait).await,
        Err(errors) => {
            for e in errors {
                eprintln!("loom-provisioner: {e}");
            }
            Exit::Usage
        }
    }
}

/// Reads every task from `source` (stdin when `None`) and checks each. All problems are
/// reported together, each with its line, and nothing runs unless there are none.
fn read_tasks(source: Option<&Path>) -> Result<Vec<TaskEnvelope>, Vec<TaskProblem>> {
    let name = source.map_or_else(|| "<stdin>".to_owned(), |p| p.display().to_string());
    let mut data = Vec::new();
    let read = match source {
        Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut data)),
        None => std::io::stdin().lock().read_to_end(&mut data),
    };
    if let Err(source) = read {
        return Err(vec![TaskProblem::Unreadable { input: name, source }]);
    }
    parse_tasks(&name, &data)
}

/// Splits `data` into JSON documents (whitespace- or newline-separated) and reads each as
/// a task.
///
/// # Errors
/// Every [`TaskProblem`] found, in input order: bad tasks and repeated ids (reading goes
/// on past them), JSON that breaks off (reading stops there), or no tasks at all.
pub fn parse_tasks(name: &str, data: &[u8]) -> Result<Vec<TaskEnvelope>, Vec<TaskProblem>> {
    // Line numbers for messages, counted incrementally (the input may be large).
    let (mut counted_to, mut line) = (0usize, 1usize);
    let mut line_at = |offset: usize| {
        let offset = offset.min(data.len()).max(counted_to);
        line += data[counted_to..offset].iter().filter(|b| **b == b'\n').count();
        counted_to = offset;
        line
    };
    let mut tasks = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut stream = serde_json::Deserializer::from_slice(data).into_iter::<Box<RawValue>>();
    loop {
        let start = stream.byte_offset();
        let Some(next) = stream.next() else { break };
        let raw = match next {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(TaskProblem::NotJson { input: name.to_owned(), line: e.line(), column: e.column() });
                break;
            }
        };
        // The document starts after any whitespace that preceded it.
        let skipped = data[start..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        let line = line_at(start + skipped);
        match TaskEnvelope::parse(raw) {
            Ok(task) if !seen.insert(task.task_id.clone()) => {
                errors.push(TaskProblem::Duplicate { input: name.to_owned(), line, task_id: task.task_id });
            }
            Ok(task) => tasks.push(task),
            Err(source) => errors.push(TaskProblem::Invalid { input: name.to_owned(), line, source }),
        }
    }
    if tasks.is_empty() && errors.is_empty() {
        errors.push(TaskProblem::Empty { input: name.to_owned() });
    }
    if errors.is_empty() { Ok(tasks) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_pretty_document_or_many_lines() {
        let start = include_str!("../../../protocol/tests/data/start-hbase-regionserver.json");
        let tasks = parse_tasks("f", start.as_bytes()).unwrap();
        assert_eq!(tasks.len(), 1);
        let lines = "{\"taskId\":\"a\",\"taskName\":\"CREATE\"}\n\n{\"taskId\":\"b\",\"taskName\":\"DELETE\"}\n";
        let ids: Vec<_> = parse_tasks("f", lines.as_bytes()).unwrap().into_iter().map(|t| t.task_id).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn every_bad_task_is_reported_with_its_line() {
        let input = "{\"taskId\":\"a\",\"taskName\":\"CREATE\"}\n{\"taskId\":\"b\"}\n{\"taskId\":\"a\",\"taskName\":\"DELETE\"}\n{\"taskId\":\"c\",\"taskName\":\"NOPE\"}\n";
        let errors: Vec<String> =
            parse_tasks("in.json", input.as_bytes()).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("in.json: line 2: task b: \"taskName\" is missing"), "{errors:?}");
        assert!(errors[1].contains("line 3: task a appears more than once"), "{errors:?}");
        assert!(errors[2].contains("line 4: task c: \"taskName\" must be one of CREATE,"), "{errors:?}");
        assert!(!errors[2].contains("NOPE"), "the submitted value is not quoted: {errors:?}");
    }

    #[test]
    fn broken_json_stops_reading_and_says_where() {
        let errors: Vec<String> =
            parse_tasks("in.json", b"{\"taskId\":\"a\",\"taskName\":\"CREATE\"}\n{\"taskId\": oops}\n")
                .unwrap_err()
                .iter()
                .map(|e| e.to_string())
                .collect();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("in.json: line 2 column"), "{errors:?}");
        let errors: Vec<String> = parse_tasks("e", b"  \n").unwrap_err().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors, vec!["e: no tasks in the input".to_owned()]);
    }
}
