//! `loom-provisioner check`: the conformance suite of PROTOCOL.md, for plugin authors in
//! any language.
//!
//! Every rule of the spec has an id (`[P-4.2-delete-unknown]`) and a check that can fail
//! ([`rules`]). The probes ([`probes`]) drive processes of the plugin line by line
//! ([`subject`]), recording every line both ways ([`transcript`]); the rules about
//! framing, ids and credentials are judged from those records afterwards. The report
//! ([`report`]) gives each rule pass, fail (a MUST), warn (a SHOULD), untested or n/a,
//! with what was sent, what came back and the spec's sentence.
//!
//! Every step has a timeout of a few seconds (`--timeout`), tasks their own
//! (`--task-timeout`); a missing answer is the failure it is, the process that missed it
//! is replaced, and a plugin that stops answering ends the run early.

mod probes;
pub mod report;
pub mod rules;
mod sample;
mod subject;
mod transcript;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loom_protocol::{LogLevel, PluginKind, TaskName};
use serde_json::{Value, json};

use crate::cli::check::probes::{Ctx, Options};
use crate::cli::check::report::{Report, Timeouts};
use crate::cli::check::rules::RULES;
use crate::cli::check::sample::Samples;
use crate::cli::exit::Exit;
use crate::cli::plugins::load_registry;
use crate::core::manifest::{self, Defaults, Entry, PluginSpec};
use crate::core::manifest_shape;
use crate::core::registry::Availability;
use crate::core::registry::kind_of_folder;
use crate::wire::envelope::TaskEnvelope;

/// Arguments of `check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The plugin: an executable, its manifest (.json), its folder, or a registered name
    /// (with --plugins-dir).
    #[arg(value_name = "PATH|NAME", required_unless_present = "list_rules")]
    pub target: Option<String>,
    /// Where to look up a plugin given by name (repeatable).
    #[arg(long = "plugins-dir", value_name = "DIR")]
    pub plugins_dirs: Vec<PathBuf>,
    /// The plugin's kind, when it cannot be told from a manifest's folder.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// A sample task to use for its task name instead of the built-in one (repeatable).
    #[arg(long = "task", value_name = "FILE")]
    pub tasks: Vec<PathBuf>,
    /// A task of yours that runs for a few seconds, to test cancel on a plugin that does
    /// not run the check protocol's wait task (PROTOCOL.md section 10).
    #[arg(long = "slow-task", value_name = "FILE")]
    pub slow_task: Option<PathBuf>,
    /// How long each protocol step (handshake, ping, ...) may take, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
    /// How long each sample task may take, in seconds.
    #[arg(long = "task-timeout", default_value_t = 10.0)]
    pub task_timeout: f64,
    /// Fail on SHOULD rules too (warnings).
    #[arg(long)]
    pub strict: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the rules (id, level, section, sentence) and exit.
    #[arg(long = "list-rules")]
    pub list_rules: bool,
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

/// Runs `check` and prints the report. Exit 0 when no MUST rule fails (nor, with
/// `--strict`, a SHOULD rule), 1 when one does, 2 when the plugin cannot be found or an
/// argument is wrong.
pub async fn main(args: CheckArgs, log_level: LogLevel) -> Exit {
    if args.list_rules {
        print!("{}", list_rules(args.json));
        return Exit::Success;
    }
    match prepare(&args) {
        Ok((spec, samples, opts)) => {
            let report = run(&spec, &samples, &opts, args.strict, log_level).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", report::render(&report));
            }
            Exit::ok_if(report.passed)
        }
        Err(e) => {
            eprintln!("loom-provisioner check: {e}");
            Exit::Usage
        }
    }
}

fn prepare(args: &CheckArgs) -> Result<(PluginSpec, Samples, (Duration, Duration)), String> {
    let spec = resolve(args)?;
    let mut user = BTreeMap::new();
    let mut secrets = Vec::new();
    for path in &args.tasks {
        let (task, found) = read_sample(path)?;
        secrets.extend(found);
        user.insert(task.0, task.1);
    }
    let slow = match &args.slow_task {
        Some(path) => {
            let (task, found) = read_sample(path)?;
            secrets.extend(found);
            Some(task.1)
        }
        None => None,
    };
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let seconds = |v: f64, flag: &str| {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3600))
            .ok_or_else(|| format!("{flag} must be a number of seconds above 0, at most 3600"))
    };
    let opts = (seconds(args.timeout, "--timeout")?, seconds(args.task_timeout, "--task-timeout")?);
    Ok((spec.clone(), Samples::new(&spec.name, user, slow, secrets), opts))
}

/// Runs every probe against `spec` and builds the report.
pub async fn run(
    spec: &PluginSpec,
    samples: &Samples,
    timeouts: &(Duration, Duration),
    strict: bool,
    log_level: LogLevel,
) -> Report {
    let started = Instant::now();
    let opts = Options { step: timeouts.0, task: timeouts.1, log_level };
    let mut ctx = Ctx::new(spec, &opts, samples);
    ctx.run().await;
    let untested = ctx.gave_up.clone().unwrap_or_else(|| "not reached".to_owned());
    let head = (spec.name.clone(), spec.kind, spec.executable.clone());
    let t = Timeouts { step_secs: opts.step.as_secs_f64(), task_secs: opts.task.as_secs_f64() };
    report::build(head, &ctx.verdicts, ctx.notes, t, started.elapsed().as_secs_f64(), strict, &untested)
}

/// The rules as text (id, level, sentence) or JSON.
fn list_rules(as_json: bool) -> String {
    if as_json {
        let rules: Vec<Value> = RULES
            .iter()
            .map(|r| json!({"id": r.id, "level": r.level, "section": r.section(), "spec": r.sentence(), "applies": r.applies}))
            .collect();
        return format!("{}\n", serde_json::to_string_pretty(&rules).unwrap_or_default());
    }
    let width = RULES.iter().map(|r| r.id.len()).max().unwrap_or(0);
    RULES
        .iter()
        .map(|r| {
            let level = match r.level {
                rules::Level::Must => "MUST  ",
                rules::Level::Should => "SHOULD",
            };
            format!("{:width$}  {level}  {}\n", r.id, r.sentence())
        })
        .collect()
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
    let target = args.target.as_deref().unwrap_or_default();
    let path = Path::new(target);
    let kind = args.kind.map(PluginKind::from);
    if !path.exists() {
        if args.plugins_dirs.is_empty() {
            return Err(format!(
                "{target:?} is not a file or folder; to check a registered plugin by name, add --plugins-dir"
            ));
        }
        let reg = load_registry(&args.plugins_dirs, &args.run_as).ok_or("cannot read the plugins folders")?;
        let found: Vec<_> =
            reg.plugins.iter().filter(|p| p.name == target && kind.is_none_or(|k| k == p.kind)).collect();
        return match found.as_slice() {
            [one] => match &one.availability {
                Availability::Runnable(spec) => Ok((**spec).clone()),
                Availability::NotRunnable(why) => Err(format!("{} {:?} cannot run: {why}", one.kind, one.name)),
            },
            [] => Err(format!("no plugin named {target:?} is registered")),
            _ => Err(format!("both a provider and an automator are named {target:?}; add --kind")),
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

/// The one plugin the manifest at `path` declares (of `kind`, when given), in either
/// shape ([`crate::core::manifest_shape`]).
fn spec_from_manifest(path: &Path, kind: Option<PluginKind>, defaults: &Defaults) -> Result<PluginSpec, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let doc = crate::wire::json::read_value(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let folder_kind = kind.or_else(|| path.parent()?.parent().and_then(kind_of_folder));
    let declared = manifest_shape::declared(&doc, folder_kind).map_err(|e| {
        let hint = if folder_kind.is_none() { "; add --kind" } else { "" };
        format!("{}: {e}{hint}", path.display())
    })?;
    let plugins: Vec<_> = declared.plugins.iter().filter(|p| kind.is_none_or(|k| k == p.kind)).collect();
    let [one] = plugins[..] else {
        let names: Vec<&str> = plugins.iter().map(|p| p.name).collect();
        return Err(match names.as_slice() {
            [] => format!("{}: declares no plugin to check", path.display()),
            _ => format!(
                "{}: declares {} plugins ({}); check one by name: check NAME --plugins-dir <the folder above providers/ and automators/>",
                path.display(),
                names.len(),
                names.join(", ")
            ),
        });
    };
    let name = one.name;
    match manifest::parse_entry_with(name, one.kind, path, one.body, defaults).entry {
        Ok(Entry::Runnable(spec)) => Ok(*spec),
        Ok(Entry::NotRunnable(why)) => Err(format!("{}: {name:?}: {why}", path.display())),
        Err(p) => Err(format!("{}: key {:?}: {}", path.display(), p.key, p.message)),
    }
}

/// A task file: its name and body, and its credential values (to keep out of the report).
fn read_sample(path: &Path) -> Result<((TaskName, Value), Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let raw = serde_json::value::RawValue::from_string(text.trim().to_owned())
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    let task = TaskEnvelope::parse(raw).map_err(|e| format!("{}: {e}", path.display()))?;
    let body: Value = serde_json::from_str(task.raw().get()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(((task.task_name, body), task.secrets.clone()))
}
