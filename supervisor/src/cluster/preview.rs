//! A plan before acting: what an operation would do, in which order, what changed since
//! the spec the cluster last ran with, and the checks that can be made before anything is
//! sent (`cluster plan`, `--dry-run`, `POST /v1/clusters/{name}/plan`).
//!
//! A preview reads what the store knows about the cluster (one read: no lock, no job, no
//! mark) and the registered plugins (none is started): it sends nothing and changes
//! nothing. Its steps are [`super::plan`]'s, built from the same marks as the operation
//! would build them, so they are the steps the operation runs, in its order.
//!
//! The checks, each `ok`, `failed` or `skipped` with a message naming the plugin, service,
//! file or field (never a credential's value):
//!
//! - **nodes**: the spec does not drop machines that exist ([`job::check_nodes`]), nor
//!   nodes with machines without `--remove-nodes` ([`plan::removal_refused`]; the plan
//!   shows their removal either way);
//! - **plugins**: every plugin the steps go to is registered and runnable (as
//!   [`job::prepare`] checks it);
//! - **scripts**: each action's script is in the folder the automator uploads
//!   (its manifest's `settings.scripts`, relative to its folder);
//! - **credentials**: the provider's credential fields and every `ssh-auth` the spec gives
//!   are filled in (an `identityfile` is a file here), and every node an automator reaches
//!   has an `ssh-auth` (recorded, or to come from the provider in this plan);
//! - **placeholders**: every `{placeholder}` of the actions sent resolves (`{ipaddress}`
//!   once the provider made the machine).
//!
//! The diff of config and services shows key paths only, never values.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use loom_protocol::{PluginKind, TaskName};
use serde::Serialize;
use serde_json::{Map, Value};

use super::job::{self, JobError, NeededPlugin};
use super::plan::{self, JobKind, Mark, Marks, Plan};
use super::spec::{self, ClusterSpec, NodeSpec, PLACEHOLDERS};
use super::store::{ClusterState, ClusterStore, Snapshot};
use super::task::node_config;
use crate::core::registry::{Availability, Registry};
use crate::wire::redact::{MASK, is_secret_key, printable};

/// Most changed key paths listed per node (and for the whole spec).
const MAX_PATHS: usize = 64;

/// Whether the plugin of a kind and name can take tasks here.
pub type Runnable<'a> = Box<dyn Fn(PluginKind, &str) -> bool + Send + Sync + 'a>;

/// The plugins as seen from where the operation would run.
pub struct PluginView<'a> {
    /// What is registered.
    pub registry: &'a Registry,
    /// Whether the plugin of this kind and name can take tasks here.
    pub runnable: Runnable<'a>,
    /// `kind:name` keys other live daemons of the fleet run (empty outside a fleet).
    pub elsewhere: BTreeSet<String>,
}

impl<'a> PluginView<'a> {
    /// The plugins of a registry no supervisor runs (`cluster plan`): those it has as
    /// runnable; none elsewhere.
    pub fn of_registry(registry: &'a Registry) -> PluginView<'a> {
        PluginView {
            registry,
            runnable: Box::new(|kind, name| registered_runnable(registry, kind, name)),
            elsewhere: BTreeSet::new(),
        }
    }
}

/// Whether `registry` has a runnable plugin of `kind` named `name`.
pub fn registered_runnable(registry: &Registry, kind: PluginKind, name: &str) -> bool {
    registry.get(kind, name).is_some_and(|r| matches!(r.availability, Availability::Runnable(_)))
}

/// What an operation would do; [`Preview::text`] for people, JSON (serde) for programs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The cluster.
    pub cluster: String,
    /// `up`, `down`, `restart-services`, `reconfigure`.
    pub operation: &'static str,
    /// `down --force`.
    pub force: bool,
    /// `reconfigure --restart`.
    pub restart: bool,
    /// The cluster's state now (`None`: not known yet).
    pub state: Option<&'static str>,
    /// Its last operation's job id.
    pub last_job: Option<String>,
    /// The steps in schedule order (each after those it waits for).
    pub steps: Vec<PreviewStep>,
    /// How many waves: the steps of one wave may run at once.
    pub waves: usize,
    /// Every node of the spec, then the nodes it drops (`removed`), with their steps.
    pub nodes: Vec<NodePreview>,
    /// What changed since the spec of the cluster's last operation.
    pub changes: Changes,
    /// The pre-flight checks.
    pub checks: Vec<Check>,
    /// Things to know (the plan's notes).
    pub notes: Vec<String>,
    /// No check failed.
    pub ok: bool,
}

/// One step of a preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewStep {
    /// As stored: `INSTALL demo-web-1 web`.
    pub step: String,
    /// The task.
    pub task: &'static str,
    /// The node.
    pub node: String,
    /// The service, for service actions.
    pub service: Option<String>,
    /// Indexes (in [`Preview::steps`]) of the steps it waits for.
    pub after: Vec<usize>,
    /// 1 for steps that wait for nothing, else one more than the latest wave it waits for.
    pub wave: usize,
    /// Why its failure would not fail the operation, when it would not.
    pub tolerated: Option<String>,
}

/// A node and its steps.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePreview {
    /// Its id.
    pub id: String,
    /// `new` (no machine made yet), `existing`, or `removed` (a node the spec drops,
    /// which a scale-down takes away).
    pub status: &'static str,
    /// Indexes of its steps in [`Preview::steps`].
    pub steps: Vec<usize>,
}

/// What changed since the spec the cluster last ran with.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Changes {
    /// The job whose spec is compared with (`None`: no spec applied yet).
    pub since: Option<String>,
    /// Key paths of the whole spec that changed.
    pub spec: Vec<KeyChange>,
    /// Nodes the new spec adds.
    pub nodes_added: Vec<String>,
    /// Nodes the new spec no longer has.
    pub nodes_removed: Vec<String>,
    /// Nodes in both specs whose config or services changed.
    pub nodes: Vec<NodeChanges>,
}

/// A node's changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeChanges {
    /// The node.
    pub node: String,
    /// Services it now runs.
    pub services_added: Vec<String>,
    /// Services it no longer runs.
    pub services_removed: Vec<String>,
    /// Key paths of its task `config` that changed (`cluster.greeting`).
    pub config: Vec<KeyChange>,
    /// Key paths of its services' definitions that changed (`services.web.actions.start.data`).
    pub services: Vec<KeyChange>,
}

/// A key path that changed; never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    /// `cluster.greeting`, `nodeGroups[1].count`; `...` when more were left out.
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
}

/// One pre-flight check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `nodes`, `plugins`, `scripts`, `credentials`, `placeholders`.
    pub check: &'static str,
    /// `ok`, `failed` or `skipped` (could not be told from here).
    pub status: &'static str,
    /// What was checked and, if it failed, why.
    pub message: String,
}

impl Check {
    fn new(check: &'static str, status: &'static str, message: &str) -> Check {
        Check { check, status, message: printable(message).into_owned() }
    }

    fn ok(check: &'static str, message: &str) -> Check {
        Check::new(check, "ok", message)
    }

    fn failed(check: &'static str, message: &str) -> Check {
        Check::new(check, "failed", message)
    }

    fn skipped(check: &'static str, message: &str) -> Check {
        Check::new(check, "skipped", message)
    }
}

/// Previews `kind` on `spec` from what `store` knows of the cluster (one read; no lock is
/// taken, nothing is recorded or sent).
///
/// # Errors
/// [`JobError::Unknown`] for an operation other than `up` on a cluster the store does
/// not know; [`JobError::Journal`] when the read fails.
pub async fn preview(
    store: &ClusterStore,
    spec: &ClusterSpec,
    kind: JobKind,
    scope: &plan::Scope,
    plugins: &PluginView<'_>,
) -> Result<Preview, JobError> {
    let snapshot = store.snapshot(&spec.name).await?;
    if kind != JobKind::Up && snapshot.is_none() {
        return Err(JobError::Unknown(spec.name.clone()));
    }
    Ok(build(spec, kind, snapshot.as_ref(), scope, plugins))
}

/// The preview of `kind` on `spec`, given what is known of the cluster (`known`, `None`
/// for a new one): the plan [`job::prepare`] would build, and the checks.
///
/// Within `scope` (`--limit`, `--rolling`): a limit that cannot be planned is a failed
/// `limit` check, with no steps. As in [`job::prepare`], the stored spec is `scope`'s
/// `previous` for `up` and `reconfigure` (a spec that drops nodes previews their removal).
pub fn build(
    spec: &ClusterSpec,
    kind: JobKind,
    known: Option<&Snapshot>,
    scope: &plan::Scope,
    plugins: &PluginView<'_>,
) -> Preview {
    let empty = (HashMap::new(), Marks::new());
    let live = known.filter(|s| s.cluster.state != ClusterState::Terminated || kind != JobKind::Up);
    let (learned, marks) = live.map_or((&empty.0, &empty.1), |s| (&s.learned, &s.marks));
    let mut scope = scope.clone();
    scope.previous = match (live, kind) {
        (Some(s), JobKind::Up | JobKind::Reconfigure { .. }) => {
            ClusterSpec::from_value(&s.cluster.spec, "stored", Path::new("/")).ok()
        }
        _ => None,
    };
    let previous = scope.previous.as_ref();
    let mut checks = Vec::new();
    // The nodes a spec drops are shown (and their steps) with or without
    // `--remove-nodes`; without it, when they have machines, the `nodes` check fails.
    let dropped = previous.map(|p| plan::dropped_nodes(spec, p, marks, learned)).unwrap_or_default();
    if let Some(why) =
        previous.and_then(|p| plan::removal_refused(spec, p, &dropped, marks, learned, scope.remove_nodes))
    {
        checks.push(Check::failed("nodes", &why));
    }
    let shown = plan::Scope { remove_nodes: true, ..scope.clone() };
    let plan = plan::build(kind, spec, marks, learned, &shown).unwrap_or_else(|problems| {
        checks.extend(problems.iter().map(|p| Check::failed("limit", p)));
        Plan::default()
    });
    let steps = steps_of(&plan);
    let nodes = spec.nodes();
    if let Err(JobError::Refused(problems)) = job::check_nodes(spec, previous, learned) {
        checks.extend(problems.iter().map(|p| Check::failed("nodes", p)));
    }
    checks.extend(plugin_checks(spec, previous, &plan, plugins));
    checks.extend(script_checks(spec, &plan, plugins.registry));
    checks.extend(credential_checks(spec, &plan, learned));
    checks.extend(placeholder_checks(spec, &plan, &nodes, learned));
    let stored = known.and_then(|s| ClusterSpec::from_value(&s.cluster.spec, "stored", Path::new("/")).ok());
    let since = known.and_then(|s| s.cluster.last_job.clone());
    let steps_of_node =
        |id: &str| steps.iter().enumerate().filter(|(_, s)| s.node == id).map(|(i, _)| i).collect::<Vec<_>>();
    let node_previews = nodes
        .iter()
        .map(|n| NodePreview {
            id: n.id.clone(),
            status: if exists(&n.id, learned, marks) { "existing" } else { "new" },
            steps: steps_of_node(&n.id),
        })
        .chain(dropped.iter().map(|id| NodePreview { id: id.clone(), status: "removed", steps: steps_of_node(id) }))
        .collect();
    let (force, restart) = match kind {
        JobKind::Down { force } => (force, false),
        JobKind::Reconfigure { restart } => (false, restart),
        _ => (false, false),
    };
    Preview {
        cluster: spec.name.clone(),
        operation: kind.as_str(),
        force,
        restart,
        state: known.map(|s| s.cluster.state.as_str()),
        last_job: since.clone(),
        waves: steps.iter().map(|s| s.wave).max().unwrap_or(0),
        steps,
        nodes: node_previews,
        changes: diff(stored.as_ref(), spec, since),
        ok: checks.iter().all(|c| c.status != "failed"),
        checks,
        notes: plan.notes,
    }
}

/// Whether node `id` has a machine (or had its CREATE succeed).
fn exists(id: &str, learned: &HashMap<String, Map<String, Value>>, marks: &Marks) -> bool {
    learned.get(id).is_some_and(|l| l.contains_key("providerid"))
        || marks.get(&plan::StepKey::node(TaskName::Create, id)) == Some(&Mark::Done)
}

/// The plan's steps with their waves.
fn steps_of(plan: &Plan) -> Vec<PreviewStep> {
    let mut waves: Vec<usize> = Vec::with_capacity(plan.steps.len());
    plan.steps
        .iter()
        .map(|s| {
            // The plan is sorted: what a step waits for comes before it.
            let wave = 1 + s.after.iter().filter_map(|&a| waves.get(a).copied()).max().unwrap_or(0);
            waves.push(wave);
            PreviewStep {
                step: s.key.encode(),
                task: s.key.task.as_str(),
                node: s.key.node.clone(),
                service: s.key.service.clone(),
                after: s.after.clone(),
                wave,
                tolerated: s.tolerated.clone(),
            }
        })
        .collect()
}

/// Each plugin the plan needs: registered and runnable, or why not.
fn plugin_checks(
    spec: &ClusterSpec,
    previous: Option<&ClusterSpec>,
    plan: &Plan,
    plugins: &PluginView<'_>,
) -> Vec<Check> {
    job::needed_plugins(spec, previous, plan)
        .iter()
        .map(|need| match job::plugin_problem(need, plugins.registry, &plugins.runnable, &plugins.elsewhere) {
            Some(problem) => Check::failed("plugins", &problem),
            None => {
                let NeededPlugin { kind, name, at } = need;
                let where_ = if (plugins.runnable)(*kind, name) { "is registered" } else { "runs on another daemon" };
                Check::ok("plugins", &format!("{at}: {kind} plugin {name:?} {where_}"))
            }
        })
        .collect()
}

/// Where automator `name` takes scripts from (its `settings.scripts`, relative to its
/// folder); `Err` when it is not runnable here (the plugins check says so).
fn scripts_folder(registry: &Registry, name: &str) -> Result<Option<PathBuf>, ()> {
    match registry.get(PluginKind::Automator, name).map(|r| &r.availability) {
        Some(Availability::Runnable(p)) => {
            let folder = p.settings.get("scripts").and_then(Value::as_str).map(|s| p.dir.join(s));
            // Shown without `..` when it exists.
            Ok(folder.map(|f| f.canonicalize().unwrap_or(f)))
        }
        _ => Err(()),
    }
}

/// The script an action runs: Loom's `script` or Coopr's `fields.script`.
fn script_of(action: &Map<String, Value>) -> Option<&str> {
    action
        .get("script")
        .and_then(Value::as_str)
        .or_else(|| action.get("fields").and_then(|f| f.get("script")).and_then(Value::as_str))
}

/// Each script the plan's actions run is in the folder its automator uploads.
fn script_checks(spec: &ClusterSpec, plan: &Plan, registry: &Registry) -> Vec<Check> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for key in plan.steps.iter().map(|s| &s.key) {
        let Some(service) = &key.service else { continue };
        let Some(action) = spec.services.get(service).and_then(|s| s.actions.get(&key.task)) else { continue };
        let Some(automator) = action.get("type").and_then(Value::as_str) else { continue };
        let Some(script) = script_of(action) else { continue };
        if !seen.insert((automator.to_owned(), script.to_owned())) {
            continue;
        }
        let at = format!("services.{service}.actions.{}", key.task.as_str().to_ascii_lowercase());
        if let Ok(folder) = scripts_folder(registry, automator) {
            out.push(script_check(&at, automator, script, folder.as_deref()));
        }
    }
    out
}

/// Whether `script` (of the action at `at`) is in `folder`.
fn script_check(at: &str, automator: &str, script: &str, folder: Option<&Path>) -> Check {
    let Some(folder) = folder else {
        return Check::skipped(
            "scripts",
            &format!("{at}: automator {automator:?} has no settings.scripts: {script} must already be on the machines"),
        );
    };
    if Path::new(script).is_absolute() || script.contains('{') {
        return Check::skipped("scripts", &format!("{at}: {script} is looked up on the machines"));
    }
    // Not looked up: the answer would tell an API client which files exist outside the
    // scripts folder on the daemon's host.
    if Path::new(script).components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Check::skipped(
            "scripts",
            &format!("{at}: the script names a path outside the scripts folder; not checked"),
        );
    }
    if !folder.is_dir() {
        return Check::failed(
            "scripts",
            &format!("{at}: the scripts folder of automator {automator:?} ({}) is not a folder", folder.display()),
        );
    }
    if folder.join(script).is_file() {
        Check::ok("scripts", &format!("{at}: {script} is in {}", folder.display()))
    } else {
        Check::failed(
            "scripts",
            &format!(
                "{at}: {script} is not in {} (settings.scripts of automator {automator:?}, uploaded by BOOTSTRAP)",
                folder.display()
            ),
        )
    }
}

/// The credentials the plan's tasks carry are there.
fn credential_checks(spec: &ClusterSpec, plan: &Plan, learned: &HashMap<String, Map<String, Value>>) -> Vec<Check> {
    let mut out = Vec::new();
    let has = |task: TaskName, node: &str| plan.steps.iter().any(|s| s.key.task == task && s.key.node == node);
    if plan.steps.iter().any(|s| s.key.task.kind() == PluginKind::Provider) {
        out.extend(fields_checks("provider.fields", &spec.provider.fields));
    }
    let mut actions = BTreeSet::new();
    for key in plan.steps.iter().map(|s| &s.key) {
        let Some(service) = &key.service else { continue };
        let at = format!("services.{service}.actions.{}.fields", key.task.as_str().to_ascii_lowercase());
        let fields = spec.services.get(service).and_then(|s| s.actions.get(&key.task)).and_then(|a| a.get("fields"));
        if let Some(Value::Object(f)) = fields
            && actions.insert(at.clone())
        {
            out.extend(fields_checks(&at, f));
        }
    }
    let mut reached = BTreeSet::new();
    for key in plan.steps.iter().map(|s| &s.key).filter(|k| k.task.kind() == PluginKind::Automator) {
        if !reached.insert(key.node.clone()) {
            continue;
        }
        let at = format!("node {}: ssh-auth", key.node);
        match learned.get(&key.node).and_then(|l| l.get("ssh-auth")) {
            Some(auth) => out.extend(ssh_auth_checks(&at, auth)),
            None if has(TaskName::Create, &key.node) || has(TaskName::Confirm, &key.node) => {
                out.push(Check::ok("credentials", &format!("{at}: comes from the provider when it makes the machine")));
            }
            None => out.push(Check::failed(
                "credentials",
                &format!("{at}: none recorded, and this plan does not make the machine (its provider gave none)"),
            )),
        }
    }
    out
}

/// The credential-named fields under `fields` (at `at`) are filled in, and so is every
/// `ssh-auth` in them: one check for the fields, one per `ssh-auth`.
fn fields_checks(at: &str, fields: &Map<String, Value>) -> Vec<Check> {
    let mut secrets = Vec::new();
    let mut auths = Vec::new();
    walk(fields, at, &mut secrets, &mut auths);
    let mut out = Vec::new();
    let empty: Vec<&String> = secrets.iter().filter(|(_, v)| is_blank(v)).map(|(p, _)| p).collect();
    let masked: Vec<&String> = secrets.iter().filter(|(_, v)| v.as_str() == Some(MASK)).map(|(p, _)| p).collect();
    for p in &empty {
        out.push(Check::failed("credentials", &format!("{p}: is empty")));
    }
    for p in &masked {
        out.push(Check::failed(
            "credentials",
            &format!("{p}: was redacted when the cluster was terminated: give the spec file again"),
        ));
    }
    if !secrets.is_empty() && empty.is_empty() && masked.is_empty() {
        let names: Vec<&str> = secrets.iter().map(|(p, _)| p.as_str()).collect();
        out.push(Check::ok("credentials", &format!("present: {}", names.join(", "))));
    }
    for (p, auth) in auths {
        out.extend(ssh_auth_checks(&p, auth));
    }
    out
}

/// Collects the credential-named leaves (path, value) and the `ssh-auth` objects under
/// `o`, at most [`MAX_PATHS`] of each.
fn walk<'v>(
    o: &'v Map<String, Value>,
    at: &str,
    secrets: &mut Vec<(String, &'v Value)>,
    auths: &mut Vec<(String, &'v Value)>,
) {
    for (k, v) in o {
        let p = format!("{at}.{k}");
        if k == "ssh-auth" {
            if auths.len() < MAX_PATHS {
                auths.push((p, v));
            }
            continue;
        }
        match v {
            Value::Object(inner) => walk(inner, &p, secrets, auths),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(inner) = item {
                        walk(inner, &format!("{p}[{i}]"), secrets, auths);
                    }
                }
            }
            _ if is_secret_key(k) && secrets.len() < MAX_PATHS => secrets.push((p, v)),
            _ => {}
        }
    }
}

fn is_blank(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
}

/// An `ssh-auth` (at `at`) has a user and a way to log in; its `identityfile` is a file
/// on this host.
fn ssh_auth_checks(at: &str, auth: &Value) -> Vec<Check> {
    let Value::Object(a) = auth else {
        return vec![Check::failed("credentials", &format!("{at}: must be an object"))];
    };
    let filled = |k: &str| a.get(k).is_some_and(|v| !is_blank(v));
    let mut out = Vec::new();
    if !filled("user") {
        out.push(Check::failed("credentials", &format!("{at}.user: is missing")));
    }
    let ways: Vec<&str> = ["password", "identityfile", "privatekey"].into_iter().filter(|k| filled(k)).collect();
    if ways.is_empty() {
        out.push(Check::failed("credentials", &format!("{at}: has none of password, identityfile, privatekey")));
    }
    if ways.iter().any(|k| a.get(*k).and_then(Value::as_str) == Some(MASK)) {
        out.push(Check::failed("credentials", &format!("{at}: was redacted when the cluster was terminated")));
    }
    if let Some(file) = a.get("identityfile").and_then(Value::as_str).filter(|f| !f.is_empty())
        && !Path::new(file).is_file()
    {
        out.push(Check::failed("credentials", &format!("{at}.identityfile: {file} is not a file on this host")));
    }
    if out.is_empty() {
        out.push(Check::ok("credentials", &format!("{at}: user and {} present", ways.join(", "))));
    }
    out
}

/// Every placeholder of the actions the plan sends resolves, now or once the provider
/// made the node's machine (`{ipaddress}`).
fn placeholder_checks(
    spec: &ClusterSpec,
    plan: &Plan,
    nodes: &[NodeSpec],
    learned: &HashMap<String, Map<String, Value>>,
) -> Vec<Check> {
    let (mut actions, mut later) = (0, 0);
    let mut out = Vec::new();
    let empty = Map::new();
    let makes = |node: &str| plan.steps.iter().any(|s| s.key.node == node && s.key.task.kind() == PluginKind::Provider);
    for key in plan.steps.iter().map(|s| &s.key) {
        let (Some(service), Some(node)) = (&key.service, nodes.iter().find(|n| n.id == key.node)) else { continue };
        let Some(action) = spec.services.get(service).and_then(|s| s.actions.get(&key.task)) else { continue };
        actions += 1;
        let l = learned.get(&node.id).unwrap_or(&empty);
        let var = |k: &str| spec.var(node, k, l);
        let left: BTreeSet<String> =
            texts(action).iter().flat_map(|t| placeholders_in(&spec::render(t, &var))).collect();
        if left.is_empty() {
            continue;
        }
        let names: Vec<String> = left.iter().map(|n| format!("{{{n}}}")).collect();
        let at = format!("services.{service}.actions.{}", key.task.as_str().to_ascii_lowercase());
        if makes(&node.id) {
            later += 1;
        } else {
            out.push(Check::failed(
                "placeholders",
                &format!("{at} on {}: {} has no value (no address recorded for the node)", node.id, names.join(", ")),
            ));
        }
    }
    if out.is_empty() && actions > 0 {
        let when = if later > 0 { format!(" ({later} once the machines are made)") } else { String::new() };
        out.push(Check::ok("placeholders", &format!("the placeholders of the {actions} actions sent resolve{when}")));
    }
    out
}

/// The texts of an action a task fills placeholders in: all but `type`, strings and
/// arrays of strings, one level into `fields`.
fn texts(action: &Map<String, Value>) -> Vec<&str> {
    fn strings(v: &Value) -> Vec<&str> {
        match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    action
        .iter()
        .filter(|(k, _)| *k != "type")
        .flat_map(|(k, v)| match (k.as_str(), v) {
            ("fields", Value::Object(f)) => f.values().flat_map(strings).collect(),
            _ => strings(v),
        })
        .collect()
}

/// Known placeholder names still in `text` (`{ipaddress}`, `{n+1}`).
fn placeholders_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let inner = &after[..close];
        let name = inner.split_once('+').map_or(inner, |(n, _)| n);
        if PLACEHOLDERS.contains(&name) {
            found.push(name.to_owned());
        }
        rest = after;
    }
    found
}

/// What changed from `old` (the spec of job `since`) to `new`: paths only.
pub fn diff(old: Option<&ClusterSpec>, new: &ClusterSpec, since: Option<String>) -> Changes {
    let Some(old) = old else { return Changes { since, ..Changes::default() } };
    let mut changes = Changes { since, spec: paths(&old.to_value(), &new.to_value(), ""), ..Changes::default() };
    let old_nodes = old.nodes();
    let new_nodes = new.nodes();
    for n in &new_nodes {
        match old_nodes.iter().find(|o| o.id == n.id) {
            None => changes.nodes_added.push(n.id.clone()),
            Some(o) => {
                let c = node_changes(old, o, new, n);
                if c != (NodeChanges { node: n.id.clone(), ..NodeChanges::default() }) {
                    changes.nodes.push(c);
                }
            }
        }
    }
    changes.nodes_removed =
        old_nodes.iter().filter(|o| !new_nodes.iter().any(|n| n.id == o.id)).map(|o| o.id.clone()).collect();
    changes
}

/// How node `n` of `new` differs from node `o` of `old` (the same id).
fn node_changes(old: &ClusterSpec, o: &NodeSpec, new: &ClusterSpec, n: &NodeSpec) -> NodeChanges {
    let (was, is) = (old.services_of(o), new.services_of(n));
    let config = |spec: &ClusterSpec, node: &NodeSpec| {
        let mut c = node_config(spec, node, None);
        c.remove("services");
        c.remove("automators");
        Value::Object(c)
    };
    let mut services = Vec::new();
    for s in is.iter().filter(|s| was.contains(s)) {
        let (Some(a), Some(b)) = (old.services.get(s), new.services.get(s)) else { continue };
        let at = format!("services.{s}");
        services.extend(paths(&service_value(a), &service_value(b), &at));
    }
    services.truncate(MAX_PATHS + 1);
    NodeChanges {
        node: n.id.clone(),
        services_added: is.iter().filter(|s| !was.contains(s)).cloned().collect(),
        services_removed: was.iter().filter(|s| !is.contains(s)).cloned().collect(),
        config: paths(&config(old, o), &config(new, n), ""),
        services,
    }
}

fn service_value(s: &spec::ServiceSpec) -> Value {
    let actions: Map<String, Value> =
        s.actions.iter().map(|(t, a)| (t.as_str().to_ascii_lowercase(), Value::Object(a.clone()))).collect();
    serde_json::json!({"actions": actions, "requires": s.requires, "endpoint": s.endpoint})
}

/// The key paths under `at` where `old` and `new` differ, at most [`MAX_PATHS`] (then a
/// last `...`). A value the store redacted ([`MASK`]) is taken as unchanged: it cannot be
/// compared.
pub fn paths(old: &Value, new: &Value, at: &str) -> Vec<KeyChange> {
    let mut out = Vec::new();
    walk_diff(old, new, at, &mut out);
    if out.len() > MAX_PATHS {
        out.truncate(MAX_PATHS);
        out.push(KeyChange { path: "...".into(), change: "changed" });
    }
    out
}

fn walk_diff(old: &Value, new: &Value, at: &str, out: &mut Vec<KeyChange>) {
    if out.len() > MAX_PATHS {
        return;
    }
    let key = |k: &str| printable(&if at.is_empty() { k.to_owned() } else { format!("{at}.{k}") }).into_owned();
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk_diff(x, y, &key(k), out),
                    (None, Some(_)) => out.push(KeyChange { path: key(k), change: "added" }),
                    (Some(_), None) => out.push(KeyChange { path: key(k), change: "removed" }),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk_diff(x, y, &format!("{at}[{i}]"), out);
            }
        }
        (Value::String(s), _) if s == MASK => {}
        (a, b) if a != b => out.push(KeyChange { path: printable(at).into_owned(), change: "changed" }),
        _ => {}
    }
}

/// Signs for the text: fancy (a terminal without `NO_COLOR`) or plain ASCII.
struct Signs {
    then: &'static str,
    ok: &'static str,
    failed: &'static str,
    skipped: &'static str,
}

const FANCY: Signs = Signs { then: " → ", ok: "✓", failed: "✗", skipped: "-" };
const PLAIN: Signs = Signs { then: " -> ", ok: "ok", failed: "FAILED", skipped: "skipped" };

impl Preview {
    /// For people: the steps per node (each with its wave), the changes, the checks and
    /// the notes; `fancy` uses arrows and ✓/✗, else plain ASCII.
    pub fn text(&self, fancy: bool) -> String {
        let signs = if fancy { &FANCY } else { &PLAIN };
        let mut out = String::new();
        let mut head = format!("cluster {}: {}", self.cluster, self.operation);
        if self.force {
            head.push_str(" --force");
        }
        if self.restart {
            head.push_str(" --restart");
        }
        let _ = write!(out, "{head} ({} steps, {} waves)", self.steps.len(), self.waves);
        match (self.state, &self.last_job) {
            (Some(state), Some(job)) => {
                let _ = writeln!(out, "; now {state} (last job {job})");
            }
            (Some(state), None) => {
                let _ = writeln!(out, "; now {state}");
            }
            _ => out.push('\n'),
        }
        for node in &self.nodes {
            self.node_text(node, signs, &mut out);
        }
        if !self.steps.is_empty() {
            out.push_str("  [n]: the step's wave; the steps of a wave may run at once\n");
        }
        self.changes.text(&mut out);
        out.push_str("checks:\n");
        if self.checks.is_empty() {
            out.push_str("  (nothing to check: no step)\n");
        }
        for c in &self.checks {
            let sign = match c.status {
                "ok" => signs.ok,
                "failed" => signs.failed,
                _ => signs.skipped,
            };
            let _ = writeln!(out, "  {sign} {}: {}", c.check, c.message);
        }
        if !self.notes.is_empty() {
            out.push_str("notes:\n");
            for n in &self.notes {
                let _ = writeln!(out, "  {}", printable(n));
            }
        }
        out
    }

    /// `node ID (status)`, then its node steps on one line and each service's on one.
    fn node_text(&self, node: &NodePreview, signs: &Signs, out: &mut String) {
        let _ = writeln!(out, "node {} ({})", node.id, node.status);
        if node.steps.is_empty() {
            out.push_str("  nothing to do\n");
            return;
        }
        // Groups: the node's own steps, then each service's, in the order they start.
        let mut groups: Vec<(Option<&str>, Vec<&PreviewStep>)> = Vec::new();
        for s in node.steps.iter().filter_map(|&i| self.steps.get(i)) {
            match groups.iter_mut().find(|(g, _)| *g == s.service.as_deref()) {
                Some((_, steps)) => steps.push(s),
                None => groups.push((s.service.as_deref(), vec![s])),
            }
        }
        for (service, steps) in groups {
            let chain: Vec<String> = steps
                .iter()
                .map(|s| {
                    let tolerated = if s.tolerated.is_some() { " (failure tolerated)" } else { "" };
                    format!("{}[{}]{tolerated}", s.task, s.wave)
                })
                .collect();
            let label = service.map(|s| format!("{s}: ")).unwrap_or_default();
            let _ = writeln!(out, "  {label}{}", chain.join(signs.then));
        }
    }
}

impl Changes {
    fn text(&self, out: &mut String) {
        let Some(since) = &self.since else {
            out.push_str("changes: no spec applied yet\n");
            return;
        };
        let _ = writeln!(out, "changes since the last applied spec (job {since}):");
        if self.spec.is_empty() {
            out.push_str("  none\n");
            return;
        }
        let _ = writeln!(out, "  spec: {}", list(&self.spec));
        for n in &self.nodes_added {
            let _ = writeln!(out, "  + node {n}");
        }
        for n in &self.nodes_removed {
            let _ = writeln!(out, "  - node {n}");
        }
        for n in &self.nodes {
            let _ = writeln!(out, "  ~ node {}", n.node);
            for s in &n.services_added {
                let _ = writeln!(out, "      + service {s}");
            }
            for s in &n.services_removed {
                let _ = writeln!(out, "      - service {s}");
            }
            if !n.config.is_empty() {
                let _ = writeln!(out, "      config: {}", list(&n.config));
            }
            if !n.services.is_empty() {
                let _ = writeln!(out, "      services: {}", list(&n.services));
            }
        }
    }
}

/// `~ a.b, + c, - d`.
fn list(changes: &[KeyChange]) -> String {
    let sign = |c: &str| match c {
        "added" => "+",
        "removed" => "-",
        _ => "~",
    };
    changes.iter().map(|c| format!("{} {}", sign(c.change), c.path)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::ClusterRecord;
    use serde_json::json;

    fn spec_value(dir: &Path) -> Value {
        let sh = |script: &str, data: &str| json!({"type": "shell", "script": script, "data": data});
        json!({
            "name": "c",
            "provider": {"name": "local", "fields": {"api_password": "hunter2", "region": "x"}},
            "config": {"greeting": "hi", "port": 1},
            "nodeGroups": [
                {"name": "db", "services": ["db"]},
                {"name": "app", "count": 2, "services": ["app"]}
            ],
            "services": {
                "db": {"actions": {"install": sh("db.sh", "i"), "start": sh("db.sh", "s"), "stop": sh("db.sh", "x")}},
                "app": {"requires": ["db"], "actions": {"install": sh("app.sh", "{ipaddress}"), "start": sh("app.sh", "{n+80}")}}
            },
            "pluginDirs": [dir.display().to_string()]
        })
    }

    fn spec(v: &Value) -> ClusterSpec {
        ClusterSpec::from_value(v, "t", Path::new("/")).unwrap()
    }

    /// A plugins folder with `local` and `shell` (its scripts folder holding `scripts`).
    fn registry(dir: &Path, scripts: &[&str]) -> Registry {
        let bin = dir.join("bin");
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        for s in scripts {
            std::fs::write(dir.join("scripts").join(s), "").unwrap();
        }
        for (kind, name, settings) in
            [("providers", "local", json!({})), ("automators", "shell", json!({"scripts": "../../../scripts"}))]
        {
            let d = dir.join("plugins").join(kind).join(name);
            std::fs::create_dir_all(&d).unwrap();
            let mut manifest = json!({"executable": bin, "settings": settings});
            if nix::unistd::geteuid().is_root() {
                manifest["user"] = json!("root");
            }
            let manifest = json!({ name: manifest });
            std::fs::write(d.join(format!("{name}.json")), manifest.to_string()).unwrap();
        }
        Registry::load(&[dir.join("plugins")]).unwrap()
    }

    fn view(registry: &Registry) -> PluginView<'_> {
        PluginView::of_registry(registry)
    }

    fn failed(p: &Preview) -> Vec<String> {
        p.checks.iter().filter(|c| c.status == "failed").map(|c| format!("{}: {}", c.check, c.message)).collect()
    }

    #[test]
    fn a_script_outside_the_scripts_folder_is_not_looked_up() {
        let dir = crate::core::trust::test_dir();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        let scripts = dir.path().join("scripts");
        let check = script_check("svc.install", "shell", "../secret", Some(&scripts));
        assert_eq!(check.status, "skipped", "{check:?}");
        assert!(!check.message.contains(&dir.path().display().to_string()), "{check:?}");
        assert_eq!(script_check("svc.install", "shell", "nope.sh", Some(&scripts)).status, "failed");
    }

    #[test]
    fn a_new_cluster_previews_the_up_plan_in_waves_with_every_check_passing() {
        let dir = crate::core::trust::test_dir();
        let reg = registry(dir.path(), &["db.sh", "app.sh"]);
        let s = spec(&spec_value(dir.path()));
        let p = build(&s, JobKind::Up, None, &plan::Scope::default(), &view(&reg));
        assert!(p.ok, "{:#?}", p.checks);
        let expected = plan::up(&s, &Marks::new());
        let keys: Vec<String> = expected.steps.iter().map(|s| s.key.encode()).collect();
        assert_eq!(p.steps.iter().map(|s| s.step.clone()).collect::<Vec<_>>(), keys);
        let wave = |k: &str| p.steps.iter().find(|s| s.step == k).map(|s| s.wave).unwrap();
        assert_eq!(wave("CREATE c-db-1"), 1);
        assert_eq!(wave("CONFIRM c-app-2"), 2);
        assert_eq!(wave("BOOTSTRAP c-db-1"), 3);
        assert_eq!(wave("INSTALL c-db-1 db"), 4);
        assert_eq!(wave("INSTALL c-app-1 app"), 5);
        assert_eq!(p.waves, wave("START c-app-1 app"));
        for (i, step) in p.steps.iter().enumerate() {
            assert!(step.after.iter().all(|&a| a < i && p.steps[a].wave < step.wave), "{step:?}");
        }
        assert_eq!(p.nodes.iter().map(|n| n.status).collect::<Vec<_>>(), ["new"; 3]);
        assert!(p.changes.since.is_none());
        let checks: Vec<&str> = p.checks.iter().map(|c| c.check).collect();
        for c in ["plugins", "scripts", "credentials", "placeholders"] {
            assert!(checks.contains(&c), "no {c} check: {:#?}", p.checks);
        }
        let all = serde_json::to_string(&p).unwrap();
        assert!(!all.contains("hunter2"), "{all}");
        assert!(all.contains("provider.fields.api_password"), "{all}");
    }

    #[test]
    fn failed_checks_name_the_plugin_the_script_and_the_field() {
        let dir = crate::core::trust::test_dir();
        let reg = registry(dir.path(), &["db.sh"]);
        let mut v = spec_value(dir.path());
        v["provider"]["fields"]["api_password"] = json!("");
        v["services"]["db"]["actions"]["configure"] = json!({"type": "chef", "script": "x"});
        let p = build(&spec(&v), JobKind::Up, None, &plan::Scope::default(), &view(&reg));
        assert!(!p.ok);
        let f = failed(&p);
        assert!(
            f.iter()
                .any(|m| m
                    .starts_with("plugins: services.db.actions.configure.type: no automator plugin named \"chef\"")),
            "{f:#?}"
        );
        assert!(f.iter().any(|m| m.starts_with("scripts: services.app.actions.install: app.sh is not in ")), "{f:#?}");
        assert!(f.iter().any(|m| m == "credentials: provider.fields.api_password: is empty"), "{f:#?}");
        assert_eq!(f.len(), 3, "{f:#?}");
    }

    fn known(
        s: &ClusterSpec,
        state: ClusterState,
        marks: Marks,
        learned: HashMap<String, Map<String, Value>>,
    ) -> Snapshot {
        Snapshot {
            cluster: ClusterRecord {
                name: s.name.clone(),
                spec: s.to_value(),
                state,
                jobs: 1,
                last_job: Some("c.j1".into()),
                report: None,
                created_at: String::new(),
                updated_at: String::new(),
            },
            learned,
            marks,
            interrupted: Vec::new(),
        }
    }

    #[test]
    fn an_active_cluster_previews_down_reconfigure_and_the_ssh_auth_it_recorded() {
        let dir = crate::core::trust::test_dir();
        let reg = registry(dir.path(), &["db.sh", "app.sh"]);
        let s = spec(&spec_value(dir.path()));
        let marks: Marks = plan::up(&s, &Marks::new()).steps.iter().map(|st| (st.key.clone(), Mark::Done)).collect();
        let key = dir.path().join("id");
        std::fs::write(&key, "k").unwrap();
        let learned: HashMap<String, Map<String, Value>> = s
            .nodes()
            .iter()
            .map(|n| {
                let auth = json!({"providerid": "p", "ipaddress": "10.0.0.1",
                                  "ssh-auth": {"user": "root", "identityfile": key}});
                (n.id.clone(), auth.as_object().cloned().unwrap())
            })
            .collect();
        let snap = known(&s, ClusterState::Active, marks, learned.clone());
        let p = build(&s, JobKind::Down { force: false }, Some(&snap), &plan::Scope::default(), &view(&reg));
        assert!(p.ok, "{:#?}", p.checks);
        assert_eq!(p.operation, "down");
        assert_eq!(p.state, Some("active"));
        assert!(p.steps.iter().any(|st| st.step == "DELETE c-db-1"));
        assert!(p.checks.iter().any(|c| c.message == "node c-db-1: ssh-auth: user and identityfile present"));
        assert!(p.changes.spec.is_empty() && p.changes.nodes.is_empty(), "{:#?}", p.changes);
        // A key file that is gone, with the address still recorded.
        std::fs::remove_file(&key).unwrap();
        let snap = known(&s, ClusterState::Active, snap.marks.clone(), learned);
        let p = build(&s, JobKind::Reconfigure { restart: true }, Some(&snap), &plan::Scope::default(), &view(&reg));
        let f = failed(&p);
        assert!(f.iter().any(|m| m.starts_with("credentials: node c-db-1: ssh-auth.identityfile: ")), "{f:#?}");
        assert!(p.restart && p.text(false).starts_with("cluster c: reconfigure --restart ("));
    }

    #[test]
    fn a_preview_plans_within_the_limit_and_previews_a_scale_down() {
        let dir = crate::core::trust::test_dir();
        let reg = registry(dir.path(), &["db.sh", "app.sh"]);
        let s = spec(&spec_value(dir.path()));
        let marks: Marks = plan::up(&s, &Marks::new()).steps.iter().map(|st| (st.key.clone(), Mark::Done)).collect();
        let learned: HashMap<String, Map<String, Value>> = s
            .nodes()
            .iter()
            .map(|n| (n.id.clone(), json!({"providerid": "p", "ipaddress": "10.0.0.1"}).as_object().cloned().unwrap()))
            .collect();
        let snap = known(&s, ClusterState::Active, marks, learned);
        let scope = |limit: &str| plan::Scope { limit: vec![limit.to_owned()], ..plan::Scope::default() };
        let p = build(&s, JobKind::RestartServices, Some(&snap), &scope("c-db-1"), &view(&reg));
        let steps: Vec<&str> = p.steps.iter().map(|st| st.step.as_str()).collect();
        assert_eq!(steps, ["STOP c-db-1 db", "START c-db-1 db"]);
        let p = build(&s, JobKind::RestartServices, Some(&snap), &scope("nosuch"), &view(&reg));
        assert!(p.steps.is_empty() && !p.ok);
        assert!(failed(&p).iter().any(|m| m.starts_with("limit: --limit nosuch:")), "{:#?}", failed(&p));
        // A spec with one app node fewer: its removal, then the rest reconfigured.
        let mut smaller = spec_value(dir.path());
        smaller["nodeGroups"][1]["count"] = json!(1);
        let removing = plan::Scope { remove_nodes: true, ..plan::Scope::default() };
        let p = build(&spec(&smaller), JobKind::Up, Some(&snap), &removing, &view(&reg));
        assert!(p.steps.iter().any(|st| st.step == "DELETE c-app-2"), "{:#?}", p.steps);
        assert!(p.steps.iter().any(|st| st.step == "BOOTSTRAP c-app-1"), "{:#?}", p.steps);
        assert!(!failed(&p).iter().any(|m| m.starts_with("nodes:")), "{:#?}", failed(&p));
        // The dropped node is listed, marked removed, with its steps, in text and JSON.
        let removed = p.nodes.iter().find(|n| n.id == "c-app-2").expect("c-app-2 is listed");
        assert_eq!(removed.status, "removed");
        let of_removed: Vec<&str> = removed.steps.iter().map(|&i| p.steps[i].step.as_str()).collect();
        assert_eq!(of_removed, ["DELETE c-app-2"]);
        let text = p.text(false);
        assert!(text.contains("node c-app-2 (removed)\n  DELETE["), "{text}");
        let json = serde_json::to_value(&p).unwrap();
        assert!(json["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "c-app-2" && n["status"] == "removed"));
        // Without --remove-nodes: the same plan shown, and the nodes check fails saying how.
        let p = build(&spec(&smaller), JobKind::Up, Some(&snap), &plan::Scope::default(), &view(&reg));
        assert!(p.steps.iter().any(|st| st.step == "DELETE c-app-2") && !p.ok, "{:#?}", p.steps);
        let f = failed(&p);
        assert!(
            f.iter().any(|m| m.starts_with("nodes: ") && m.contains("(c-app-2)") && m.contains("--remove-nodes")),
            "{f:#?}"
        );
    }

    #[test]
    fn placeholders_without_a_value_fail_unless_the_plan_makes_the_machine() {
        let dir = crate::core::trust::test_dir();
        let reg = registry(dir.path(), &["db.sh", "app.sh"]);
        let s = spec(&spec_value(dir.path()));
        // Machines made, nothing installed, no address recorded for c-app-1.
        let mut marks = Marks::new();
        let mut learned = HashMap::new();
        for n in s.nodes() {
            for t in [TaskName::Create, TaskName::Confirm] {
                marks.insert(plan::StepKey::node(t, &n.id), Mark::Done);
            }
            let mut l = json!({"providerid": "p", "ssh-auth": {"user": "u", "password": "pw"}});
            if n.id != "c-app-1" {
                l["ipaddress"] = json!("10.0.0.2");
            }
            learned.insert(n.id.clone(), l.as_object().cloned().unwrap());
        }
        let snap = known(&s, ClusterState::Incomplete, marks, learned);
        let p = build(&s, JobKind::Up, Some(&snap), &plan::Scope::default(), &view(&reg));
        assert_eq!(
            failed(&p),
            [
                "placeholders: services.app.actions.install on c-app-1: {ipaddress} has no value (no address recorded for the node)"
            ]
        );
        assert!(!serde_json::to_string(&p).unwrap().contains("\"pw\""));
    }

    #[test]
    fn the_diff_shows_key_paths_per_node_never_values() {
        let old = spec(&spec_value(Path::new("/p")));
        let mut v = spec_value(Path::new("/p"));
        v["config"]["greeting"] = json!("hello");
        v["provider"]["fields"]["api_password"] = json!("s3cret");
        v["nodeGroups"][1]["count"] = json!(3);
        v["nodeGroups"][0]["services"] = json!(["db", "app"]);
        v["services"]["app"]["actions"]["start"]["data"] = json!("{n+90}");
        let new = spec(&v);
        let c = diff(Some(&old), &new, Some("c.j4".into()));
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("hunter2") && !text.contains("hello"), "{text}");
        assert_eq!(c.nodes_added, ["c-app-3"]);
        assert!(c.nodes_removed.is_empty());
        let db = c.nodes.iter().find(|n| n.node == "c-db-1").unwrap();
        assert_eq!(db.services_added, ["app"]);
        let changed: Vec<&str> = db.config.iter().map(|k| k.path.as_str()).collect();
        assert_eq!(changed, ["cluster.greeting", "provider.provisioner.api_password"]);
        let app = c.nodes.iter().find(|n| n.node == "c-app-1").unwrap();
        assert_eq!(app.services, [KeyChange { path: "services.app.actions.start.data".into(), change: "changed" }]);
        // A value the store redacted is not taken as a change.
        let mut masked = old.to_value();
        masked["provider"]["fields"]["api_password"] = json!(MASK);
        let masked = spec(&masked);
        assert!(diff(Some(&masked), &old, None).spec.is_empty());
        // Removed nodes, and a bound on the paths listed.
        let c = diff(Some(&new), &old, None);
        assert_eq!(c.nodes_removed, ["c-app-3"]);
        let wide: Map<String, Value> = (0..200).map(|i| (format!("k{i}"), json!(i))).collect();
        let listed = paths(&json!({}), &Value::Object(wide), "config");
        assert_eq!(listed.len(), MAX_PATHS + 1);
        assert_eq!(listed[0], KeyChange { path: "config.k0".into(), change: "added" });
    }

    #[test]
    fn the_tree_groups_steps_per_node_with_their_waves_then_changes_and_checks() {
        let dir = crate::core::trust::test_dir();
        let reg = registry(dir.path(), &["db.sh"]);
        let s = spec(&spec_value(dir.path()));
        let p = build(&s, JobKind::Up, None, &plan::Scope::default(), &view(&reg));
        let text = p.text(false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("cluster c: up ({} steps, {} waves)", p.steps.len(), p.waves));
        assert_eq!(lines[1], "node c-db-1 (new)");
        assert_eq!(lines[2], "  CREATE[1] -> CONFIRM[2] -> BOOTSTRAP[3]");
        assert_eq!(lines[3], "  db: INSTALL[4] -> START[5]");
        assert_eq!(lines[4], "node c-app-1 (new)");
        assert!(text.contains("\nchanges: no spec applied yet\nchecks:\n"), "{text}");
        assert!(text.contains("\n  FAILED scripts: services.app.actions.install: app.sh is not in "), "{text}");
        assert!(text.contains("\n  ok plugins: provider.name: provider plugin \"local\" is registered\n"), "{text}");
        assert!(text.is_ascii(), "{text}");
        let fancy = p.text(true);
        assert!(fancy.contains("  CREATE[1] → CONFIRM[2] → BOOTSTRAP[3]\n") && fancy.contains("\n  ✗ scripts: "));
        // Changes in the tree.
        let mut v = spec_value(dir.path());
        v["config"]["greeting"] = json!("hello");
        let mut c = diff(Some(&s), &spec(&v), Some("c.j2".into()));
        c.nodes_added.push("c-app-9".into());
        let mut out = String::new();
        c.text(&mut out);
        assert!(out.starts_with("changes since the last applied spec (job c.j2):\n  spec: ~ config.greeting\n  + node c-app-9\n  ~ node c-db-1\n      config: ~ cluster.greeting\n"), "{out}");
    }
}
