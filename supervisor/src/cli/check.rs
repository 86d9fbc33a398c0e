//! `loom-provisioner check`: a protocol conformance suite for one plugin executable, for
//! plugin authors in any language.
//!
//! It starts the plugin the way the supervisor does and checks: the handshake; `ping`;
//! an unknown method answered with error -32601; an unknown notification ignored; each
//! declared task answered with a well-formed result; a task outside the declared ones
//! answered; `cancel` followed by an answer; well-formed notifications; nothing but
//! JSON-RPC on stdout; `shutdown` answered and an exit once stdin closes; and, in a
//! second process, an exit on stdin EOF without `shutdown`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use loom_protocol::{LogLevel, PluginKind, TaskName, TaskResult, codes, methods};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::cli::exit::Exit;
use crate::cli::plugins::load_registry;
use crate::core::manifest::{self, Defaults, Entry, PluginSpec};
use crate::core::process::PluginProcess;
use crate::core::registry::Availability;
use crate::core::registry::kind_of_folder;
use crate::log::secs;
use crate::wire::connection::Outcome;
use crate::wire::envelope::TaskEnvelope;

/// Arguments of `check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The plugin: an executable, its manifest (.json), its folder, or a registered name
    /// (with --plugins-dir).
    #[arg(value_name = "PATH|NAME")]
    pub target: String,
    /// Where to look up a plugin given by name (repeatable).
    #[arg(long = "plugins-dir", value_name = "DIR")]
    pub plugins_dirs: Vec<PathBuf>,
    /// The plugin's kind, when it cannot be told from a manifest's folder.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// A sample task to use for its task name instead of the built-in one (repeatable).
    #[arg(long = "task", value_name = "FILE")]
    pub tasks: Vec<PathBuf>,
    /// How long each answer may take, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run_as: crate::cli::plugins::RunAsArgs,
}

/// `--kind`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    /// CREATE, CONFIRM, DELETE.
    Provider,
    /// BOOTSTRAP, INSTALL, CONFIGURE, INITIALIZE, START, STOP, REMOVE.
    Automator,
}

impl From<KindArg> for PluginKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Provider => PluginKind::Provider,
            KindArg::Automator => PluginKind::Automator,
        }
    }
}

/// The outcome of the suite.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The plugin's name.
    pub plugin: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Its executable.
    pub executable: PathBuf,
    /// Whether every check passed.
    pub passed: bool,
    /// Each check, in order.
    pub checks: Vec<Check>,
}

/// One check.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

impl Report {
    fn record(&mut self, name: impl Into<String>, result: Result<String, String>) -> bool {
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        self.passed &= passed;
        self.checks.push(Check { name: name.into(), passed, detail });
        passed
    }
}

/// Runs `check` and prints the report. Exit 0 when all checks pass, 1 when one fails,
/// 2 when the plugin cannot be found.
pub async fn main(args: CheckArgs, log_level: LogLevel) -> Exit {
    let spec = match resolve(&args) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("loom-provisioner check: {e}");
            return Exit::Usage;
        }
    };
    let mut samples = BTreeMap::new();
    for path in &args.tasks {
        match read_sample(path) {
            Ok((name, raw)) => {
                samples.insert(name, raw);
            }
            Err(e) => {
                eprintln!("loom-provisioner check: {e}");
                return Exit::Usage;
            }
        }
    }
    let Ok(timeout) = Duration::try_from_secs_f64(args.timeout) else {
        eprintln!("loom-provisioner check: --timeout must be a number of seconds of at least 0");
        return Exit::Usage;
    };
    let report = run_suite(&spec, &samples, timeout, log_level).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", render(&report));
    }
    Exit::ok_if(report.passed)
}

/// The report as text, a line per check.
pub fn render(report: &Report) -> String {
    let mut s = format!("check: {} {:?} ({})\n", report.kind, report.plugin, report.executable.display());
    for c in &report.checks {
        let mark = if c.passed { "PASS" } else { "FAIL" };
        let detail = c.detail.replace('\n', "\n        ");
        s.push_str(&format!("  {mark}  {}: {detail}\n", c.name));
    }
    let failed = report.checks.iter().filter(|c| !c.passed).count();
    s.push_str(&format!("{} passed, {failed} failed\n", report.checks.len() - failed));
    s
}

/// Finds the plugin `args.target` names, builds its spec, and checks that it may run
/// ([`crate::core::vet`]).
fn resolve(args: &CheckArgs) -> Result<PluginSpec, String> {
    let spec = find(args)?;
    match crate::core::vet::vet(&spec) {
        Ok(vetted) => {
            if let Some(note) = vetted.note {
                tracing::warn!(plugin = %spec.name, "{note}");
            }
            Ok(spec)
        }
        Err(why) => Err(format!("{} {:?} cannot run: {why}", spec.kind, spec.name)),
    }
}

fn find(args: &CheckArgs) -> Result<PluginSpec, String> {
    let defaults = args.run_as.defaults();
    crate::core::runas::check_defaults(&defaults.run_as).map_err(|e| e.to_string())?;
    let path = Path::new(&args.target);
    let kind = args.kind.map(PluginKind::from);
    if !path.exists() {
        if args.plugins_dirs.is_empty() {
            return Err(format!(
                "{:?} is not a file or folder; to check a registered plugin by name, add --plugins-dir",
                args.target
            ));
        }
        let reg = load_registry(&args.plugins_dirs, &args.run_as).ok_or("cannot read the plugins folders")?;
        let found: Vec<_> =
            reg.plugins.iter().filter(|p| p.name == args.target && kind.is_none_or(|k| k == p.kind)).collect();
        return match found.as_slice() {
            [one] => match &one.availability {
                Availability::Runnable(spec) => Ok((**spec).clone()),
                Availability::NotRunnable(why) => Err(format!("{} {:?} cannot run: {why}", one.kind, one.name)),
            },
            [] => Err(format!("no plugin named {:?} is registered", args.target)),
            _ => Err(format!("both a provider and an automator are named {:?}; add --kind", args.target)),
        };
    }
    let manifest_path = if path.is_dir() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Some(path.join(format!("{name}.json")))
    } else if path.extension().is_some_and(|e| e == "json") {
        Some(path.to_path_buf())
    } else {
        None
    };
    match manifest_path {
        Some(m) => spec_from_manifest(&m, kind, &defaults),
        None => {
            let kind = kind.ok_or("say which kind of plugin this is: --kind provider or --kind automator")?;
            let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = abs.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());
            let name: String =
                name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
            let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
            let body = json!({ "executable": abs.to_string_lossy() });
            let parsed = manifest::parse_entry_with(&name, kind, &dir.join(format!("{name}.json")), &body, &defaults);
            match parsed.entry {
                // No manifest: the file that defines the plugin, to check, is the executable.
                Ok(Entry::Runnable(spec)) => Ok(PluginSpec { manifest: spec.executable.clone(), ..*spec }),
                Ok(Entry::NotRunnable(why)) => Err(why),
                Err(p) => Err(format!("{}: {}", path.display(), p.message)),
            }
        }
    }
}

fn spec_from_manifest(path: &Path, kind: Option<PluginKind>, defaults: &Defaults) -> Result<PluginSpec, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let doc = crate::wire::json::read_value(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let kind = kind
        .or_else(|| path.parent()?.parent().and_then(kind_of_folder))
        .ok_or_else(|| format!("{}: cannot tell the plugin's kind from its folder; add --kind", path.display()))?;
    let entries =
        doc.as_object().ok_or_else(|| format!("{}: expected {{\"<plugin name>\": {{...}}}}", path.display()))?;
    let [(name, body)] = entries.iter().collect::<Vec<_>>()[..] else {
        return Err(format!("{}: expected exactly one plugin entry", path.display()));
    };
    match manifest::parse_entry_with(name, kind, path, body, defaults).entry {
        Ok(Entry::Runnable(spec)) => Ok(*spec),
        Ok(Entry::NotRunnable(why)) => Err(format!("{}: {name:?}: {why}", path.display())),
        Err(p) => Err(format!("{}: key {:?}: {}", path.display(), p.key, p.message)),
    }
}

fn read_sample(path: &Path) -> Result<(TaskName, Box<RawValue>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let raw = RawValue::from_string(text.trim().to_owned())
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    let task = TaskEnvelope::parse(raw).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw = RawValue::from_string(task.raw().get().to_owned()).map_err(|e| e.to_string())?;
    Ok((task.task_name, raw))
}

/// A plausible task of `name` for `plugin`, shaped as Loom sent them, with `learned`
/// (earlier results) on top of its config.
pub fn sample_task(plugin: &str, name: TaskName, task_id: &str, learned: &Map<String, Value>) -> Box<RawValue> {
    let mut task = json!({
        "taskId": task_id,
        "jobId": "check-job",
        "clusterId": "check-cluster",
        "taskName": name,
        "nodeId": "check-node",
        "config": {
            "cluster": {},
            "hostname": "check-node.local",
            "flavor": "small",
            "image": "check-image",
            "automators": [plugin],
            "provider": {"name": plugin, "providertype": plugin, "provisioner": {}},
            "providerid": "check-provider-id",
            "ipaddress": "127.0.0.1",
            "ssh-auth": {"user": "loom", "password": "check-password"},
            "service": {"name": "check-service", "action": {"type": plugin, "script": "echo loom-check", "data": ""}},
            "nodes": {}
        }
    });
    if let Some(config) = task["config"].as_object_mut() {
        config.extend(learned.clone());
    }
    serde_json::value::to_raw_value(&task).unwrap_or_else(|_| unreachable!("a json! value serializes"))
}

/// Runs the whole suite against `spec`.
pub async fn run_suite(
    spec: &PluginSpec,
    samples: &BTreeMap<TaskName, Box<RawValue>>,
    timeout: Duration,
    log_level: LogLevel,
) -> Report {
    let mut report = Report {
        plugin: spec.name.clone(),
        kind: spec.kind,
        executable: spec.executable.clone(),
        passed: true,
        checks: Vec::new(),
    };
    let mut process = match PluginProcess::spawn(spec, 0).await {
        Ok(p) => p,
        Err(e) => {
            report.record("start", Err(format!("cannot start: {e}")));
            return report;
        }
    };
    match process.handshake(spec, log_level).await {
        Ok(hs) => {
            let detail = format!(
                "protocol {}, {} {}, tasks {}, maxConcurrency {}",
                hs.protocol_version,
                hs.name,
                hs.version,
                hs.tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" "),
                hs.max_concurrency.map_or("not given".to_owned(), |n| n.to_string())
            );
            report.record("handshake", Ok(detail));
            if session(&mut report, &mut process, spec, &hs.tasks, samples, timeout).await {
                shutdown(&mut report, &mut process, spec).await;
            }
        }
        Err(why) => {
            report.record("handshake", Err(why.to_string()));
        }
    }
    process.finish("was stopped by the conformance check").await;
    eof_without_shutdown(&mut report, spec, log_level).await;
    report
}

/// The checks on a live connection. Returns false when the process ended on the way.
async fn session(
    report: &mut Report,
    p: &mut PluginProcess,
    spec: &PluginSpec,
    declared: &[TaskName],
    samples: &BTreeMap<TaskName, Box<RawValue>>,
    timeout: Duration,
) -> bool {
    let conn = std::sync::Arc::clone(p.connection());
    macro_rules! ask {
        ($call:expr) => {
            match p.answer_or_end($call, timeout).await {
                Ok(outcome) => Ok(outcome),
                Err(Some(end)) => {
                    report.record("process", Err(format!("the plugin process {end}")));
                    return false;
                }
                Err(None) => Err(format!("no answer within {}", secs(timeout))),
            }
        };
    }

    let ping = ask!(conn.request(methods::PING, &json!({})));
    report.record(
        "ping",
        ping.and_then(|o| match o {
            Outcome::Result(raw) if raw.get().trim_start().starts_with('{') => Ok("answered {}".into()),
            other => Err(format!("expected the result {{}}, got {}", describe(&other))),
        }),
    );

    let unknown = ask!(conn.request("loom.check/no-such-method", &json!({})));
    report.record(
        "unknown method",
        unknown.and_then(|o| match o {
            Outcome::Error(e) if e.code == codes::METHOD_NOT_FOUND => Ok("answered error -32601".into()),
            other => Err(format!("expected error -32601 (method not found), got {}", describe(&other))),
        }),
    );

    conn.notify("loom.check/no-such-notification", &json!({}));
    let after = ask!(conn.request(methods::PING, &json!({})));
    report.record("unknown notification", after.map(|_| "ignored; the next ping was answered".into()));

    // What earlier tasks returned flows into later ones, as Loom's server did: CONFIRM
    // and DELETE get the machine CREATE made, so the check leaves nothing behind.
    let mut learned = Map::new();
    for (i, &name) in declared.iter().enumerate() {
        let id = format!("check-{}-{i}", name.as_str().to_lowercase());
        let raw = samples.get(&name).map_or_else(|| sample_task(&spec.name, name, &id, &learned), |r| r.clone());
        let Ok(task) = TaskEnvelope::parse(raw) else {
            continue;
        };
        let answer = ask!(conn.request_task(&task, Box::new(())));
        if let Ok(Outcome::Result(raw)) = &answer
            && let Ok(r) = serde_json::from_str::<TaskResult>(raw.get())
            && r.status == 0
        {
            learned.extend(r.result);
            learned.extend(r.hostname.map(|h| ("hostname".to_owned(), Value::String(h))));
            learned.extend(r.ipaddresses.map(|a| ("ipaddresses".to_owned(), a)));
        }
        report.record(format!("task {name}"), answer.and_then(describe_task_answer));
    }

    if let Some(undeclared) = spec.kind.tasks().iter().find(|t| !declared.contains(t)) {
        let raw = sample_task(&spec.name, *undeclared, "check-undeclared", &Map::new());
        if let Ok(task) = TaskEnvelope::parse(raw) {
            let answer = ask!(conn.request_task(&task, Box::new(())));
            report.record(
                format!("undeclared task {undeclared}"),
                answer.and_then(|o| match o {
                    Outcome::Error(e) => Ok(format!("answered error {}: {}", e.code, e.message)),
                    Outcome::Result(raw) => match serde_json::from_str::<TaskResult>(raw.get()) {
                        Ok(r) if r.status != 0 => Ok(format!("answered status {}", r.status)),
                        Ok(_) => Err("answered status 0 for a task it did not declare; expected error -32002".into()),
                        Err(_) => Err("answered with an invalid result".into()),
                    },
                    Outcome::Lost(why) | Outcome::NotSent(why) | Outcome::Unreadable(why) => Err(why.to_string()),
                }),
            );
        }
    }

    // The last declared task (DELETE, for a provider: it must not create anything).
    if let Some(&last) = declared.last() {
        let id = "check-cancel";
        let raw = samples.get(&last).cloned().unwrap_or_else(|| sample_task(&spec.name, last, id, &learned));
        if let Ok(task) = TaskEnvelope::parse(raw) {
            let call = conn.request_task(&task, Box::new(()));
            conn.cancel(&task.task_id);
            let answer = ask!(call);
            report.record(
                "cancel",
                answer.and_then(describe_task_answer).map(|d| format!("answered after cancel ({d})")),
            );
        }
    }

    let stats = conn.stats();
    let bad = stats.bad_notifications.load(Ordering::Relaxed);
    report.record(
        "notifications",
        if bad == 0 {
            Ok("all well-formed".into())
        } else {
            Err(format!("{bad} notification(s) had params that do not match PROTOCOL.md"))
        },
    );
    let (junk, unknown_ids, requests) = (
        stats.junk_lines.load(Ordering::Relaxed),
        stats.unknown_answers.load(Ordering::Relaxed),
        stats.plugin_requests.load(Ordering::Relaxed),
    );
    report.record(
        "stdout",
        if junk + unknown_ids + requests == 0 {
            Ok("nothing but JSON-RPC".into())
        } else {
            Err(format!(
                "{junk} line(s) that are not JSON-RPC, {unknown_ids} answer(s) to unknown ids, {requests} request(s) to the supervisor (print diagnostics to stderr)"
            ))
        },
    );
    true
}

async fn shutdown(report: &mut Report, p: &mut PluginProcess, spec: &PluginSpec) {
    let grace = spec.shutdown_grace;
    let call = p.connection().request(methods::SHUTDOWN, &json!({}));
    let answered = match p.answer_or_end(call, grace).await {
        Ok(Outcome::Result(_)) => Ok("answered".to_owned()),
        Ok(other) => Err(format!("expected the result {{}}, got {}", describe(&other))),
        Err(Some(end)) => Err(format!("the plugin process {end} before answering")),
        Err(None) => Err(format!("no answer within {}", secs(grace))),
    };
    if !report.record("shutdown", answered) {
        return;
    }
    p.connection().close_stdin();
    let exited = match p.wait_exit(grace).await {
        true => match p.exit_status().and_then(|s| s.code()) {
            Some(0) => Ok("exited with code 0 once stdin closed".to_owned()),
            _ => Err(format!(
                "the plugin process {} after shutdown; expected exit code 0",
                p.exit_status().map(crate::core::process::describe_exit).unwrap_or_default()
            )),
        },
        false => Err(format!("still running {} after shutdown and stdin EOF", secs(grace))),
    };
    report.record("exit after shutdown", exited);
}

async fn eof_without_shutdown(report: &mut Report, spec: &PluginSpec, log_level: LogLevel) {
    let Ok(mut p) = PluginProcess::spawn(spec, 0).await else {
        return;
    };
    if p.handshake(spec, log_level).await.is_ok() {
        p.connection().close_stdin();
        let exited = if p.wait_exit(spec.shutdown_grace).await {
            Ok("exited once stdin closed".to_owned())
        } else {
            Err(format!("still running {} after stdin EOF (a plugin must exit on EOF)", secs(spec.shutdown_grace)))
        };
        report.record("exit on stdin EOF", exited);
    }
    p.finish("was stopped by the conformance check").await;
}

fn describe_task_answer(outcome: Outcome) -> Result<String, String> {
    match outcome {
        Outcome::Result(raw) => match serde_json::from_str::<TaskResult>(raw.get()) {
            Ok(r) => {
                let keys: Vec<&str> = r.result.keys().map(String::as_str).collect();
                let keys = if keys.is_empty() { String::new() } else { format!(", result keys {}", keys.join(" ")) };
                Ok(format!("status {}{keys}", r.status))
            }
            Err(e) => Err(format!(
                "invalid result: expected {{\"status\": <integer>, \"result\": {{...}}, \"stdout\": \"...\", \"stderr\": \"...\"}} (line {} column {})",
                e.line(),
                e.column()
            )),
        },
        Outcome::Error(e) => Ok(format!("answered error {}: {} (counts as status 1)", e.code, e.message)),
        Outcome::Lost(why) | Outcome::NotSent(why) | Outcome::Unreadable(why) => Err(why.to_string()),
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Result(raw) => {
            let text: String = raw.get().chars().take(80).collect();
            format!("the result {text}")
        }
        Outcome::Error(e) => format!("error {}: {}", e.code, e.message),
        Outcome::Lost(why) | Outcome::NotSent(why) | Outcome::Unreadable(why) => why.to_string(),
    }
}
