//! The `loom-provisioner` command line: `run`, `plugins`, `check`.
//!
//! Exit codes: 0 when everything succeeded, 1 when a task (or a conformance check)
//! failed, 2 for usage and configuration errors.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub mod check;
pub mod client;
pub mod cluster;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use loom_protocol::{LogLevel, PluginKind, TaskResult};
use serde_json::value::RawValue;

use crate::core::manifest::Defaults;
use crate::core::registry::{Availability, Registry, Severity};
use crate::core::runas::{Origin, RunAs};
use crate::core::supervisor::{Options, Supervisor, TaskReport};
use crate::log::{self, Format};
use crate::wire::envelope::TaskEnvelope;

/// Exit code for usage and configuration errors.
const USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "loom-provisioner",
    version,
    about = "Runs Loom provisioner plugins out of process and sends them tasks"
)]
struct Cli {
    /// Log filter: a level (trace, debug, info, warn, error), optionally with per-target
    /// levels, e.g. "warn,loom::plugin=debug" [default: info, or the daemon's log.level].
    #[arg(long, global = true, env = "LOOM_LOG")]
    log_level: Option<String>,
    /// Log format on stderr [default: human, or the daemon's log.format].
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run tasks: one JSON document, or one JSON object per line; one result line each.
    Run(RunArgs),
    /// List the registered plugins and why any cannot run.
    Plugins(PluginsArgs),
    /// Run the protocol conformance suite against one plugin.
    Check(check::CheckArgs),
    /// Run the daemon: the HTTP task API, a durable journal, systemd notifications.
    Serve(ServeArgs),
    /// Send tasks to a running daemon (one JSON document, or one object per line).
    Submit(SubmitArgs),
    /// Show a running daemon's plugins, or one task.
    Status(StatusArgs),
    /// Bring clusters up and down from a spec: machines, then services, in order.
    Cluster(crate::cli::cluster::ClusterArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE", default_value = "/etc/loom-provisioner/config.toml")]
    config: PathBuf,
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// The tasks; "-" or nothing for stdin.
    #[arg(value_name = "FILE")]
    input: Option<PathBuf>,
    /// Wait for each task and print its result line (as `run` does); exit 1 if any failed.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    api: crate::cli::client::ApiArgs,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// A task id: show that task instead of the plugins.
    #[arg(value_name = "TASK_ID")]
    task: Option<String>,
    /// Print the daemon's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: crate::cli::client::ApiArgs,
}

/// Whom plugins run as, for the commands that start them from plugins folders (the
/// daemon reads `[defaults] user` and `group` from its configuration instead).
#[derive(Args, Debug, Clone, Default)]
pub struct RunAsArgs {
    /// When run as root: the user to run plugins as whose manifest names none (never
    /// root: only a plugin's own manifest can ask for that).
    #[arg(long, env = "LOOM_PLUGIN_USER", value_name = "USER")]
    pub plugin_user: Option<String>,
    /// When run as root: their group [default: the user's own].
    #[arg(long, env = "LOOM_PLUGIN_GROUP", value_name = "GROUP")]
    pub plugin_group: Option<String>,
}

impl RunAsArgs {
    /// The defaults these arguments give manifests.
    pub fn defaults(&self) -> Defaults {
        let run_as = RunAs::defaults(self.plugin_user.clone(), self.plugin_group.clone(), Origin::CommandLine);
        Defaults { run_as, ..Defaults::default() }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A folder with providers/ and automators/ (repeatable).
    #[arg(long = "plugins-dir", required = true, value_name = "DIR")]
    plugins_dirs: Vec<PathBuf>,
    #[command(flatten)]
    run_as: RunAsArgs,
    /// How many tasks to run at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// The tasks; "-" or nothing for stdin. The whole input is read and checked before
    /// any task runs.
    #[arg(value_name = "FILE")]
    input: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct PluginsArgs {
    /// A folder with providers/ and automators/ (repeatable).
    #[arg(long = "plugins-dir", required = true, value_name = "DIR")]
    plugins_dirs: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run_as: RunAsArgs,
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(USAGE) } else { ExitCode::SUCCESS };
        }
    };
    // The daemon's configuration is read first: it may set the log level and format.
    let config = match &cli.command {
        Command::Serve(args) => match crate::daemon::config::load(&args.config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("loom-provisioner: {e}");
                return ExitCode::from(USAGE);
            }
        },
        _ => None,
    };
    let level = cli
        .log_level
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.log_level.clone()))
        // A cluster operation shows its progress; the log is for what goes wrong.
        .unwrap_or_else(|| if matches!(cli.command, Command::Cluster(_)) { "warn".into() } else { "info".into() });
    let format = cli.log_format.or_else(|| config.as_ref().and_then(|c| c.log_format)).unwrap_or_default();
    let filter = match log::parse_filter(&level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let plugin_level = log::plugin_level(&filter);
    log::init(format, filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-provisioner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args, plugin_level).await,
            Command::Plugins(args) => plugins(&args),
            Command::Check(args) => check::main(args, plugin_level).await,
            Command::Serve(_) => match config {
                Some(config) => crate::daemon::serve::serve(config, plugin_level).await,
                None => ExitCode::from(USAGE),
            },
            Command::Submit(args) => submit(args).await,
            Command::Cluster(args) => crate::cli::cluster::main(args, plugin_level).await,
            Command::Status(args) => match crate::cli::client::Api::resolve(&args.api) {
                Ok(api) => crate::cli::client::status(&api, args.task.as_deref(), args.json).await,
                Err(e) => {
                    eprintln!("loom-provisioner: {e}");
                    ExitCode::from(USAGE)
                }
            },
        }
    });
    // Plugin log lines still queued for the log thread are written before exit.
    crate::log::pump::flush(std::time::Duration::from_secs(5));
    code
}

/// Loads the registry, logging each problem; `None` (after saying why) when a folder
/// cannot be read or `run_as` names a user that cannot be used.
pub fn load_registry(dirs: &[PathBuf], run_as: &RunAsArgs) -> Option<Registry> {
    let defaults = run_as.defaults();
    if let Err(e) = crate::core::runas::check_defaults(&defaults.run_as) {
        eprintln!("loom-provisioner: {e}");
        return None;
    }
    match Registry::load_with(dirs, &defaults) {
        Ok(reg) => {
            for p in &reg.problems {
                match p.severity {
                    Severity::Error => tracing::error!("{p}"),
                    Severity::Warning => tracing::warn!("{p}"),
                }
            }
            Some(reg)
        }
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            None
        }
    }
}

async fn run(args: RunArgs, plugin_level: LogLevel) -> ExitCode {
    let Some(registry) = load_registry(&args.plugins_dirs, &args.run_as) else {
        return ExitCode::from(USAGE);
    };
    let source = args.input.as_deref().filter(|p| *p != Path::new("-"));
    let tasks = match read_tasks(source) {
        Ok(tasks) => tasks,
        Err(errors) => {
            for e in errors {
                eprintln!("loom-provisioner: {e}");
            }
            return ExitCode::from(USAGE);
        }
    };
    let accepted: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
    let sup = Supervisor::new(registry, Options { eager: false, log_level: plugin_level });

    let mut results = futures_util::stream::iter(tasks.iter().map(|task| {
        let sup = &sup;
        async move { TaskReport { task_id: Some(task.task_id.clone()), result: sup.run(task).await } }
    }))
    .buffer_unordered(args.concurrency as usize);

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
                    print_report(&report);
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
            print_report(&TaskReport { task_id: Some(id.clone()), result: TaskResult::failed(why) });
        }
    }
    sup.shutdown().await;
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn submit(args: SubmitArgs) -> ExitCode {
    let api = match crate::cli::client::Api::resolve(&args.api) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let source = args.input.as_deref().filter(|p| *p != Path::new("-"));
    match read_tasks(source) {
        Ok(tasks) => crate::cli::client::submit(&api, tasks, args.wait).await,
        Err(errors) => {
            for e in errors {
                eprintln!("loom-provisioner: {e}");
            }
            ExitCode::from(USAGE)
        }
    }
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
pub(crate) async fn interrupt() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn print_report(report: &TaskReport) {
    let mut out = std::io::stdout().lock();
    // serde_json cannot fail on a TaskReport: string keys, plain values.
    let _ = serde_json::to_writer(&mut out, report);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Reads every task from `source` (stdin when `None`) and checks each. All problems are
/// reported together, each with its line, and nothing runs unless there are none.
fn read_tasks(source: Option<&Path>) -> Result<Vec<TaskEnvelope>, Vec<String>> {
    let name = source.map_or_else(|| "<stdin>".to_owned(), |p| p.display().to_string());
    let mut data = Vec::new();
    let read = match source {
        Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut data)),
        None => std::io::stdin().lock().read_to_end(&mut data),
    };
    if let Err(e) = read {
        return Err(vec![format!("{name}: cannot read: {e}")]);
    }
    parse_tasks(&name, &data)
}

/// Splits `data` into JSON documents (whitespace- or newline-separated) and reads each as
/// a task.
pub fn parse_tasks(name: &str, data: &[u8]) -> Result<Vec<TaskEnvelope>, Vec<String>> {
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
                errors.push(format!(
                    "{name}: line {} column {}: not valid JSON; nothing after it was read",
                    e.line(),
                    e.column()
                ));
                break;
            }
        };
        // The document starts after any whitespace that preceded it.
        let skipped = data[start..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        let line = line_at(start + skipped);
        match TaskEnvelope::parse(raw) {
            Ok(task) if !seen.insert(task.task_id.clone()) => {
                errors.push(format!("{name}: line {line}: task {} appears more than once", task.task_id));
            }
            Ok(task) => tasks.push(task),
            Err(e) => errors.push(format!("{name}: line {line}: {e}")),
        }
    }
    if tasks.is_empty() && errors.is_empty() {
        errors.push(format!("{name}: no tasks in the input"));
    }
    if errors.is_empty() { Ok(tasks) } else { Err(errors) }
}

fn plugins(args: &PluginsArgs) -> ExitCode {
    let Some(reg) = load_registry(&args.plugins_dirs, &args.run_as) else {
        return ExitCode::from(USAGE);
    };
    let text = if args.json { plugins_json(&reg) } else { plugins_table(&reg) };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    ExitCode::SUCCESS
}

fn plugins_table(reg: &Registry) -> String {
    let mut s = String::new();
    if reg.plugins.is_empty() {
        s.push_str("no plugins registered\n");
    }
    for p in &reg.plugins {
        match &p.availability {
            Availability::Runnable(spec) => {
                let what = match &spec.ruby_class {
                    Some(class) => format!("Ruby class {class}, through loom-ruby-host"),
                    None => spec.executable.display().to_string(),
                };
                // Not root, every plugin runs as the supervisor's own user, whatever is configured.
                let user = (nix::unistd::geteuid().is_root().then(|| spec.run_as.describe()).flatten())
                    .map(|u| format!(", as {u}"))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "{:<10} {:<24} runnable      {what} (instances {}, maxConcurrency {}{user})\n             manifest {}\n",
                    p.kind.as_str(),
                    p.name,
                    spec.instances,
                    spec.max_concurrency,
                    p.manifest.display()
                ));
            }
            Availability::NotRunnable(why) => s.push_str(&format!(
                "{:<10} {:<24} not runnable  {why}\n             manifest {}\n",
                p.kind.as_str(),
                p.name,
                p.manifest.display()
            )),
        }
    }
    if !reg.problems.is_empty() {
        s.push_str("\nproblems:\n");
        for p in &reg.problems {
            let sev = if p.severity == Severity::Error { "error" } else { "warning" };
            s.push_str(&format!("  {sev}: {p}\n"));
        }
    }
    s
}

fn plugins_json(reg: &Registry) -> String {
    use serde_json::json;
    let plugins: Vec<_> = reg
        .plugins
        .iter()
        .map(|p| match &p.availability {
            Availability::Runnable(spec) => json!({
                "name": p.name, "kind": p.kind, "manifest": p.manifest, "runnable": true,
                "executable": spec.executable, "args": spec.args, "instances": spec.instances,
                "maxConcurrency": spec.max_concurrency, "rubyClass": spec.ruby_class,
                "user": spec.run_as.user.as_ref().map(|u| &u.name),
                "group": spec.run_as.group.as_ref().map(|g| &g.name),
            }),
            Availability::NotRunnable(why) => json!({
                "name": p.name, "kind": p.kind, "manifest": p.manifest, "runnable": false, "reason": why,
            }),
        })
        .collect();
    let problems: Vec<_> = reg
        .problems
        .iter()
        .map(|p| {
            json!({
                "file": p.file, "plugin": p.plugin, "key": p.key, "message": p.message,
                "severity": if p.severity == Severity::Error { "error" } else { "warning" },
            })
        })
        .collect();
    format!("{}\n", json!({ "plugins": plugins, "problems": problems }))
}

/// The kind named by a folder called `providers` or `automators`, if any.
pub fn kind_of_folder(dir: &Path) -> Option<PluginKind> {
    match dir.file_name()?.to_str()? {
        "providers" => Some(PluginKind::Provider),
        "automators" => Some(PluginKind::Automator),
        _ => None,
    }
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
        let errors = parse_tasks("in.json", input.as_bytes()).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("in.json: line 2: task b: \"taskName\" is missing"), "{errors:?}");
        assert!(errors[1].contains("line 3: task a appears more than once"), "{errors:?}");
        assert!(errors[2].contains("line 4: task c: \"taskName\" must be one of CREATE,"), "{errors:?}");
        assert!(!errors[2].contains("NOPE"), "the submitted value is not quoted: {errors:?}");
    }

    #[test]
    fn broken_json_stops_reading_and_says_where() {
        let errors =
            parse_tasks("in.json", b"{\"taskId\":\"a\",\"taskName\":\"CREATE\"}\n{\"taskId\": oops}\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("in.json: line 2 column"), "{errors:?}");
        assert_eq!(parse_tasks("e", b"  \n").unwrap_err(), vec!["e: no tasks in the input".to_owned()]);
    }
}
