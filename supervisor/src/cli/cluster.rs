//! `loom-provisioner cluster up | down | status | list | restart-services | reconfigure |
//! forget | plan`.
//!
//! With `--api URL` (or `$LOOM_API`) each command goes to a daemon instead ([`api`]).
//!
//! Exit codes: 0 done; 1 the operation failed or was interrupted (the cluster is
//! `incomplete`, see `cluster status`), or another operation holds the cluster; 2 a bad
//! spec, a missing plugin, a usage error: nothing was sent. `plan` and `--dry-run` (which
//! send nothing): 0 every check passed, 1 one failed, 2 a bad spec or usage.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use loom_protocol::LogLevel;
use serde_json::json;

use crate::cli::exit::Exit;
use crate::cluster::job::{self, Engine, JobError, Options};
use crate::cluster::lock::Locks;
use crate::cluster::outcome::next_steps;
use crate::cluster::plan::{JobKind, Scope};
use crate::cluster::preview;
use crate::cluster::progress::{Bars, Lines, Progress, Silent};
use crate::cluster::spec::ClusterSpec;
use crate::cluster::store::{ClusterRecord, ClusterState, ClusterStore};
use crate::cluster::view::ClusterView;
use crate::core::supervisor::{Options as SupervisorOptions, Supervisor};
use crate::journal::Journal;

mod api;
mod follow;

/// `loom-provisioner cluster ...`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Bring a cluster up from its spec, or resume one that stopped part way; a spec
    /// with fewer nodes takes the dropped ones away (scale-down).
    Up(UpArgs),
    /// Stop a cluster's services and delete its machines.
    Down(DownArgs),
    /// Show a cluster: state, nodes, addresses, endpoints, the last failure.
    Status(StatusArgs),
    /// List the clusters.
    List(ListArgs),
    /// STOP every started service, then START them (requirements first); with
    /// `--rolling`, a batch of nodes at a time.
    RestartServices(NamedArgs),
    /// BOOTSTRAP and CONFIGURE again, e.g. after changing the spec's config or scripts.
    Reconfigure(ReconfigureArgs),
    /// Forget a terminated cluster's history.
    Forget(ForgetArgs),
    /// Show what an operation would do, what changed since the last applied spec, and
    /// check what can be checked before anything is sent; sends nothing, records nothing.
    Plan(PlanArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// A plugins folder (repeatable) [default: the spec's pluginDirs, else those of the
    /// cluster's last operation].
    #[arg(long = "plugins-dir", value_name = "DIR")]
    plugins_dirs: Vec<PathBuf>,
    #[command(flatten)]
    run_as: crate::cli::plugins::RunAsArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Most tasks at once [default: the spec's parallel, else 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    parallel: Option<u32>,
    /// Attempts per task [default: the spec's attempts, else 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    attempts: Option<u32>,
    /// How to show progress on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Print the outcome and the cluster as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Only these nodes (id or hostname), node groups or services (repeatable, or
    /// comma-separated). A service picks its steps on the nodes that have it; a node or
    /// group picks every step of its nodes. `node:NAME`, `group:NAME`, `service:NAME`
    /// say which a name is; a plain name that is several, picking different steps, is
    /// refused. Steps outside the limit are not run; one the limit needs that is not
    /// done already is an error, and nothing is sent.
    #[arg(long, value_name = "NODE|GROUP|SERVICE", value_delimiter = ',')]
    limit: Vec<String>,
    /// `restart-services --rolling`: nodes per batch (set from [`NamedArgs`]).
    #[arg(skip)]
    rolling: Option<usize>,
    /// `--remove-nodes` of `up`, `reconfigure` and `plan` (set from their arguments).
    #[arg(skip)]
    remove_nodes: bool,
    /// Show the plan and run the checks (as `cluster plan`); send nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    remote: api::RemoteArgs,
}

#[derive(Args, Debug, Clone)]
struct DataArgs {
    /// The folder of the journal [default: /var/lib/loom-provisioner for root, else
    /// $XDG_STATE_HOME/loom-provisioner].
    #[arg(long, env = "LOOM_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProgressMode {
    /// Bars on a terminal, lines otherwise.
    Auto,
    /// Progress bars.
    Bars,
    /// Timestamped lines.
    Lines,
    /// Nothing.
    None,
}

#[derive(Args, Debug)]
struct UpArgs {
    /// The cluster's spec (JSON, or TOML by its extension).
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Let the spec drop nodes that have machines: they are stopped, removed and deleted
    /// (scale-down). Without it such a spec is refused, so that renaming a node group
    /// does not delete its machines.
    #[arg(long)]
    remove_nodes: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct DownArgs {
    /// The cluster's name, or its spec file.
    #[arg(value_name = "NAME|SPEC")]
    cluster: String,
    /// Delete the machines without stopping or removing their services.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct NamedArgs {
    /// The cluster's name, or its spec file.
    #[arg(value_name = "NAME|SPEC")]
    cluster: String,
    /// Restart node batch by node batch: STOP then START the services of `--batch`
    /// nodes, then of the next ones; a failure stops the roll.
    #[arg(long)]
    rolling: bool,
    /// Nodes per batch of a rolling restart.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "rolling",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ReconfigureArgs {
    /// The cluster's name, or its (changed) spec file: its config and actions are used
    /// from now on.
    #[arg(value_name = "NAME|SPEC")]
    cluster: String,
    /// Stop the services before CONFIGURE and start them after.
    #[arg(long)]
    restart: bool,
    /// Let the spec drop nodes that have machines: they are stopped, removed and deleted
    /// (scale-down). Without it such a spec is refused, so that renaming a node group
    /// does not delete its machines.
    #[arg(long)]
    remove_nodes: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The cluster's name, or its spec file.
    #[arg(value_name = "NAME|SPEC")]
    cluster: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Include every task attempt (with `--json`, or as a table).
    #[arg(long)]
    tasks: bool,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    api: crate::cli::client::ApiArgs,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    api: crate::cli::client::ApiArgs,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// The cluster's spec file, or (for an operation on the stored spec) its name.
    #[arg(value_name = "SPEC|NAME")]
    cluster: String,
    /// The operation to plan.
    #[arg(long, value_enum, default_value_t = PlanOp::Up)]
    op: PlanOp,
    /// With `--op down`: delete the machines without stopping or removing their services.
    #[arg(long)]
    force: bool,
    /// With `--op reconfigure`: stop the services before CONFIGURE and start them after.
    #[arg(long)]
    restart: bool,
    /// With `--op up` or `reconfigure`: as their `--remove-nodes` (the plan shows the
    /// nodes a spec drops either way; without it, the check fails).
    #[arg(long)]
    remove_nodes: bool,
    #[command(flatten)]
    common: Common,
}

/// The operations `cluster plan` previews.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum PlanOp {
    /// `cluster up`.
    Up,
    /// `cluster down`.
    Down,
    /// `cluster restart-services`.
    RestartServices,
    /// `cluster reconfigure`.
    Reconfigure,
}

#[derive(Args, Debug)]
struct ForgetArgs {
    /// The cluster's name.
    #[arg(value_name = "NAME")]
    cluster: String,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    api: crate::cli::client::ApiArgs,
}

/// `--limit` names are not empty (`--limit ''`, `--limit a,,b`, `--limit group:`).
///
/// # Errors
/// Says so.
fn check_limit(command: &ClusterCommand) -> Result<(), String> {
    let common = match command {
        ClusterCommand::Up(a) => &a.common,
        ClusterCommand::Down(a) => &a.common,
        ClusterCommand::RestartServices(a) => &a.common,
        ClusterCommand::Reconfigure(a) => &a.common,
        ClusterCommand::Plan(a) => &a.common,
        ClusterCommand::Status(_) | ClusterCommand::List(_) | ClusterCommand::Forget(_) => return Ok(()),
    };
    let name = |l: &str| {
        l.split_once(':')
            .filter(|(k, _)| ["node", "group", "service"].contains(k))
            .map_or(l, |(_, n)| n)
            .trim()
            .to_owned()
    };
    match common.limit.iter().find(|l| name(l).is_empty()) {
        Some(l) if l.is_empty() => Err("--limit: an empty name".into()),
        Some(l) => Err(format!("--limit {l}: an empty name")),
        None => Ok(()),
    }
}

/// Runs a `cluster` command.
pub async fn main(args: ClusterArgs, plugin_level: LogLevel) -> Exit {
    if let Err(e) = check_limit(&args.command) {
        eprintln!("loom-provisioner: {e}");
        return Exit::Usage;
    }
    if let Some(exit) = api::dispatch(&args.command).await {
        return exit;
    }
    let result = match args.command {
        ClusterCommand::Up(mut a) => {
            a.common.remove_nodes = a.remove_nodes;
            up(a, plugin_level).await
        }
        ClusterCommand::Down(a) => {
            named(&a.cluster, JobKind::Down { force: a.force }, a.common, false, plugin_level).await
        }
        ClusterCommand::RestartServices(mut a) => {
            a.common.rolling = a.rolling.then(|| usize::try_from(a.batch).unwrap_or(1));
            named(&a.cluster, JobKind::RestartServices, a.common, false, plugin_level).await
        }
        ClusterCommand::Reconfigure(mut a) => {
            a.common.remove_nodes = a.remove_nodes;
            named(&a.cluster, JobKind::Reconfigure { restart: a.restart }, a.common, true, plugin_level).await
        }
        ClusterCommand::Status(a) => status(a).await,
        ClusterCommand::List(a) => list(a).await,
        ClusterCommand::Forget(a) => forget(a).await,
        ClusterCommand::Plan(a) => plan(a, plugin_level).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("loom-provisioner: {e}");
        Exit::Usage
    })
}

fn open_store(data: &DataArgs) -> Result<(ClusterStore, Locks), String> {
    let dir = data.data_dir.clone().unwrap_or_else(crate::cluster::default_data_dir);
    let journal = Journal::open(&dir).map_err(|e| e.to_string())?;
    Ok((ClusterStore::new(journal), Locks::Files(crate::cluster::lock_dir(&dir))))
}

/// A spec file when `arg` names one, else `None` (it is a cluster name).
fn spec_file(arg: &str) -> Option<&Path> {
    let p = Path::new(arg);
    p.is_file().then_some(p)
}

async fn up(args: UpArgs, plugin_level: LogLevel) -> Result<Exit, String> {
    let mut spec = ClusterSpec::load(&args.spec).map_err(|e| e.to_string())?;
    let (store, locks) = open_store(&args.common.data)?;
    if spec.plugin_dirs.is_empty()
        && args.common.plugins_dirs.is_empty()
        && let Ok(stored) = job::stored_spec(&store, &spec.name).await
    {
        spec.plugin_dirs = stored.plugin_dirs;
    }
    let done = operate(&store, locks, spec, JobKind::Up, &args.common, plugin_level).await;
    if !args.common.dry_run {
        checkpoint(&store).await;
    }
    done
}

/// Checkpoints the journal before the command exits, so that what the operation deleted
/// (a terminated cluster's node configs, with their `ssh-auth`) is in none of its files.
async fn checkpoint(store: &ClusterStore) {
    if let Err(e) = store.journal().checkpoint().await {
        tracing::warn!("cannot checkpoint the journal: {e}");
    }
}

/// down, restart-services, reconfigure: on the stored spec, or (`use_file`) on a spec
/// file's.
async fn named(
    arg: &str,
    kind: JobKind,
    common: Common,
    use_file: bool,
    plugin_level: LogLevel,
) -> Result<Exit, String> {
    let (store, locks) = open_store(&common.data)?;
    let file = spec_file(arg).map(ClusterSpec::load).transpose().map_err(|e| e.to_string())?;
    let name = file.as_ref().map_or(arg, |s| s.name.as_str()).to_owned();
    let stored = match job::stored_spec(&store, &name).await {
        Ok(s) => s,
        Err(JobError::Unknown(_)) => {
            return Err(format!(
                "no cluster named {name:?} in {} (see `loom-provisioner cluster list`)",
                store.journal().place()
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut spec = match file {
        Some(mut f) if use_file => {
            if f.plugin_dirs.is_empty() {
                f.plugin_dirs = stored.plugin_dirs.clone();
            }
            f
        }
        _ => stored,
    };
    if spec.plugin_dirs.is_empty() && common.plugins_dirs.is_empty() {
        return Err("no plugins folder: give --plugins-dir".into());
    }
    if !common.plugins_dirs.is_empty() {
        spec.plugin_dirs.clear();
    }
    let done = operate(&store, locks, spec, kind, &common, plugin_level).await;
    if !common.dry_run {
        checkpoint(&store).await;
    }
    done
}

/// Runs one operation with its own supervisor, showing progress; Ctrl-C (or SIGTERM)
/// stops it, and the same command resumes.
async fn operate(
    store: &ClusterStore,
    locks: Locks,
    mut spec: ClusterSpec,
    kind: JobKind,
    common: &Common,
    plugin_level: LogLevel,
) -> Result<Exit, String> {
    if !common.plugins_dirs.is_empty() {
        spec.plugin_dirs = common.plugins_dirs.iter().map(|d| std::path::absolute(d).unwrap_or(d.clone())).collect();
    }
    if spec.plugin_dirs.is_empty() {
        return Err(format!("cluster {}: no plugins folder: give --plugins-dir, or pluginDirs in the spec", spec.name));
    }
    let registry = crate::cli::plugins::load_registry(&spec.plugin_dirs, &common.run_as)
        .ok_or("cannot read the plugins folders")?;
    let scope = Scope {
        limit: common.limit.clone(),
        rolling: common.rolling,
        remove_nodes: common.remove_nodes,
        ..Scope::default()
    };
    if common.dry_run {
        return show_preview(store, &spec, kind, &scope, &registry, common.json).await;
    }
    let supervisor = Supervisor::new(registry, SupervisorOptions { eager: false, log_level: plugin_level });
    let options = Options::resolve(&spec, common.parallel.and_then(|p| usize::try_from(p).ok()), common.attempts)
        .with_scope(scope);
    let progress = make_progress(common.progress);
    let engine = Engine { supervisor: &supervisor, store, locks: locks.clone() };
    let signal = crate::cli::signals::interrupt();
    tokio::pin!(signal);
    // The job's id once it is recorded: Ctrl-C after that leaves it incomplete.
    let started: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = async {
        let prepared = job::prepare(&engine, spec.clone(), kind, options).await?;
        let _ = started.set(prepared.job_id().to_owned());
        prepared.execute(progress.as_ref()).await
    };
    let result = tokio::select! {
        r = run => Ok(r),
        name = &mut signal => Err(name),
    };
    drop(progress);
    supervisor.shutdown().await;
    let outcome = match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(JobError::Busy(why))) => {
            eprintln!("loom-provisioner: {why}");
            return Ok(Exit::Failed);
        }
        Ok(Err(e)) => return Err(format!("cluster {}: nothing was done:\n{e}", spec.name)),
        Err(signal) => {
            let job = started.get().map(String::as_str);
            return interrupted(store, &locks, &spec.name, kind, job, signal, common.json).await;
        }
    };
    let view = ClusterView::load(store, &locks, &spec.name, false).await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    if common.json {
        let _ = writeln!(out, "{}", json!({"outcome": outcome, "cluster": view}));
    } else if let Some(view) = view {
        let _ = write!(out, "{}", view.text());
    }
    let _ = out.flush();
    Ok(Exit::ok_if(outcome.ok()))
}

/// Whether `record` is left by job `job` (`None`: none was recorded) cut short: the
/// cluster is in a transient state (`creating`, `deleting`, or `updating`, which is how
/// limited, rolling and scaling operations of any kind run) and its last job is `job`.
fn left_running_by(record: &ClusterRecord, job: Option<&str>) -> bool {
    record.state.is_transient() && job.is_some() && record.last_job.as_deref() == job
}

/// After Ctrl-C: the cluster is left incomplete (when `job`, the operation's job, had
/// started), with how to resume.
async fn interrupted(
    store: &ClusterStore,
    locks: &Locks,
    name: &str,
    kind: JobKind,
    job: Option<&str>,
    signal: &str,
    as_json: bool,
) -> Result<Exit, String> {
    let record = store.get(name).await.map_err(|e| e.to_string())?;
    if let Some(r) = record.filter(|r| left_running_by(r, job)) {
        let report = json!({
            "job": r.last_job, "operation": kind.as_str(), "failed": [], "interrupted": signal,
            "next": next_steps(name, kind.as_str(), None),
        });
        store.end(name, ClusterState::Incomplete, Some(&report)).await.map_err(|e| e.to_string())?;
    }
    eprintln!(
        "loom-provisioner: {signal}: cluster {name}: {} stopped; the tasks in flight were cancelled",
        kind.as_str()
    );
    if let Some(view) = ClusterView::load(store, locks, name, false).await.map_err(|e| e.to_string())? {
        let mut out = std::io::stdout().lock();
        let _ = if as_json { writeln!(out, "{}", json!({"cluster": view})) } else { write!(out, "{}", view.text()) };
    }
    Ok(Exit::Failed)
}

/// `cluster plan`: the operation's own command with `--dry-run`.
async fn plan(args: PlanArgs, plugin_level: LogLevel) -> Result<Exit, String> {
    let PlanArgs { cluster, op, force, restart, remove_nodes, mut common } = args;
    common.dry_run = true;
    common.remove_nodes = remove_nodes;
    match op {
        PlanOp::Up => match spec_file(&cluster) {
            Some(file) => up(UpArgs { spec: file.to_path_buf(), remove_nodes, common }, plugin_level).await,
            None => named(&cluster, JobKind::Up, common, false, plugin_level).await,
        },
        PlanOp::Down => named(&cluster, JobKind::Down { force }, common, false, plugin_level).await,
        PlanOp::RestartServices => named(&cluster, JobKind::RestartServices, common, false, plugin_level).await,
        PlanOp::Reconfigure => named(&cluster, JobKind::Reconfigure { restart }, common, true, plugin_level).await,
    }
}

/// Shows what `kind` would do on `spec` with the plugins of `registry` (none is
/// started); exit 0 when every check passes, 1 when one fails.
///
/// # Errors
/// The journal cannot be read, or `kind` is not `up` and the store has no such cluster.
async fn show_preview(
    store: &ClusterStore,
    spec: &ClusterSpec,
    kind: JobKind,
    scope: &Scope,
    registry: &crate::core::registry::Registry,
    as_json: bool,
) -> Result<Exit, String> {
    let plugins = preview::PluginView::of_registry(registry);
    let preview = preview::preview(store, spec, kind, scope, &plugins).await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    if as_json {
        let _ = writeln!(out, "{}", serde_json::to_string(&preview).unwrap_or_default());
    } else {
        let fancy = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let _ = write!(out, "{}", preview.text(fancy));
    }
    let _ = out.flush();
    Ok(Exit::ok_if(preview.ok))
}

fn make_progress(mode: ProgressMode) -> Box<dyn Progress> {
    let terminal = std::io::stderr().is_terminal();
    match mode {
        ProgressMode::Bars => Box::new(BarsHandle(Bars::stderr())),
        ProgressMode::Auto if terminal => Box::new(BarsHandle(Bars::stderr())),
        ProgressMode::Auto | ProgressMode::Lines => Box::new(Lines::stderr()),
        ProgressMode::None => Box::new(Silent),
    }
}

/// [`Bars`] behind an `Arc` (its log route holds another handle on the bars).
struct BarsHandle(Arc<Bars>);

impl Progress for BarsHandle {
    fn event(&self, event: &crate::cluster::progress::Event<'_>) {
        self.0.event(event);
    }

    fn wants_output(&self) -> bool {
        true
    }
}

async fn status(args: StatusArgs) -> Result<Exit, String> {
    let (store, locks) = open_store(&args.data)?;
    let name = match spec_file(&args.cluster) {
        Some(f) => ClusterSpec::load(f).map_err(|e| e.to_string())?.name,
        None => args.cluster.clone(),
    };
    let view = ClusterView::load(&store, &locks, &name, args.tasks).await.map_err(|e| e.to_string())?;
    let Some(view) = view else {
        return Err(format!("no cluster named {name:?} in {}", store.journal().place()));
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{}", serde_json::to_string(&view).unwrap_or_default());
    } else {
        let _ = write!(out, "{}", view.text());
        for t in view.tasks.iter().flatten() {
            let status = t.status.map_or_else(|| t.state.clone(), |s| s.to_string());
            let _ = writeln!(out, "  {}  {:<48} {:<8} {}", t.started_at, t.task_id, status, t.step);
        }
    }
    Ok(Exit::Success)
}

async fn list(args: ListArgs) -> Result<Exit, String> {
    let (store, locks) = open_store(&args.data)?;
    let records = store.list().await.map_err(|e| e.to_string())?;
    let mut views = Vec::new();
    for r in &records {
        if let Some(v) = ClusterView::load(&store, &locks, &r.name, false).await.map_err(|e| e.to_string())? {
            views.push(v);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{}", json!({ "clusters": views }));
    } else if views.is_empty() {
        let _ = writeln!(out, "no clusters in {}", store.journal().place());
    } else {
        let w = views.iter().map(|v| v.name.len()).max().unwrap_or(7).max(7);
        let _ = writeln!(out, "{:<w$}  {:>5}  {:<24}  state", "cluster", "nodes", "changed");
        for v in &views {
            let _ = writeln!(out, "{:<w$}  {:>5}  {:<24}  {}", v.name, v.nodes.len(), v.updated_at, v.state_text());
        }
    }
    Ok(Exit::Success)
}

async fn forget(args: ForgetArgs) -> Result<Exit, String> {
    let (store, _) = open_store(&args.data)?;
    match store.get(&args.cluster).await.map_err(|e| e.to_string())? {
        None => Err(format!("no cluster named {:?}", args.cluster)),
        Some(r) if r.state != ClusterState::Terminated => Err(format!(
            "cluster {} is {}, not terminated: take it down first (`loom-provisioner cluster down {}`)",
            r.name,
            r.state.as_str(),
            r.name
        )),
        Some(_) => {
            store.forget(&args.cluster).await.map_err(|e| e.to_string())?;
            checkpoint(&store).await;
            println!("cluster {} forgotten", args.cluster);
            Ok(Exit::Success)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn ctrl_c_leaves_incomplete_any_transient_state_of_this_job_only() {
        let record = |state, last: &str| ClusterRecord {
            name: "c".into(),
            spec: Value::Null,
            state,
            jobs: 2,
            last_job: Some(last.into()),
            report: None,
            created_at: String::new(),
            updated_at: String::new(),
        };
        // A limited `up` or `down` runs as `updating`, not `creating` / `deleting`.
        for state in [ClusterState::Updating, ClusterState::Creating, ClusterState::Deleting] {
            assert!(left_running_by(&record(state, "c.j2"), Some("c.j2")), "{state:?}");
        }
        assert!(!left_running_by(&record(ClusterState::Updating, "c.j3"), Some("c.j2")), "another job's");
        assert!(!left_running_by(&record(ClusterState::Active, "c.j2"), Some("c.j2")), "it had ended");
        assert!(!left_running_by(&record(ClusterState::Updating, "c.j2"), None), "nothing was recorded");
    }
}
