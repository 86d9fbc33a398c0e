//! `loom-provisioner cluster ... --api URL` (or `$LOOM_API`): the command is sent to a
//! daemon's `/v1/clusters` endpoints instead of running here, and its answer is shown as the
//! local command shows its outcome, with the same exit codes: 0 done; 1 the operation failed,
//! another holds the cluster, or the daemon could not finish it; 2 a bad spec or name, a
//! refused token, no daemon at the address: nothing was done.
//!
//! Operations wait for the end by default (`?wait=true`); `--no-wait` returns once the
//! daemon has accepted the operation, printing its id. `cluster plan` and `--dry-run` ask
//! for the plan (`POST /v1/clusters/{name}/plan`), shown as the daemon's JSON; exit 1 when
//! one of its checks failed.

use crate::daemon::http::path::encode;
use std::io::Write;

use hyper::Method;
use serde_json::Value;

use super::{ClusterCommand, Common, JobKind, PlanOp, ProgressMode, follow, spec_file};
use crate::cli::client::{Api, ApiArgs};
use crate::cli::events::EventStream;
use crate::cli::exit::Exit;
use crate::cluster::progress::{Lines, Progress, Silent};
use crate::cluster::spec::ClusterSpec;
use crate::cluster::view::ClusterView;

/// Where the daemon is, for the commands that change a cluster.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct RemoteArgs {
    #[command(flatten)]
    pub(super) api: ApiArgs,
    /// With --api: return once the daemon has accepted the operation (its id is printed)
    /// instead of waiting for its end. Ignored without --api.
    #[arg(long)]
    pub(super) no_wait: bool,
}

/// Whether the command goes to a daemon: `--api`, `$LOOM_API` or `--config` was given.
fn wanted(api: &ApiArgs) -> bool {
    api.api.is_some() || api.config.is_some()
}

/// A request to a daemon, built from the command line.
struct Request {
    method: Method,
    /// The path, without the query.
    path: String,
    /// `name=value` pairs.
    query: Vec<String>,
    body: Option<Vec<u8>>,
    /// The cluster an operation runs on, whose progress is shown while waiting.
    cluster: Option<String>,
}

/// What was asked, to show the answer as the local command would.
#[derive(Clone, Copy)]
enum Shown {
    /// An operation: its outcome and the cluster.
    Operation { json: bool, progress: ProgressMode },
    /// One cluster (`--tasks`: with its task table).
    Status { json: bool, tasks: bool },
    /// Every cluster.
    List { json: bool },
    /// What an operation would do (`cluster plan`, `--dry-run`).
    Plan { json: bool },
}

/// Runs `command` against a daemon when it names one, else returns `None` (it runs here).
///
/// # Errors
/// Every error is printed and becomes the exit code.
///
/// # Cancellation
/// On SIGINT or SIGTERM the command stops waiting and exits 1; an operation the daemon has
/// accepted goes on there (see `cluster status --api`).
pub(super) async fn dispatch(command: &ClusterCommand) -> Option<Exit> {
    let api_args = match command {
        ClusterCommand::Up(a) => &a.common.remote.api,
        ClusterCommand::Down(a) => &a.common.remote.api,
        ClusterCommand::RestartServices(a) => &a.common.remote.api,
        ClusterCommand::Reconfigure(a) => &a.common.remote.api,
        ClusterCommand::Status(a) => &a.api,
        ClusterCommand::List(a) => &a.api,
        ClusterCommand::Forget(a) => &a.api,
        ClusterCommand::Plan(a) => &a.common.remote.api,
    };
    if !wanted(api_args) {
        return None;
    }
    let built = Api::resolve(api_args).map_err(|e| e.to_string()).and_then(|api| Ok((api, request(command)?)));
    let (api, (request, shown)) = match built {
        Ok(b) => b,
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            return Some(Exit::Usage);
        }
    };
    Some(send(&api, request, shown).await)
}

/// The request for `command`, and how to show its answer.
///
/// # Errors
/// A spec file that cannot be read or is not valid, a flag that only works here, or a
/// command the API does not have; the text says which.
fn request(command: &ClusterCommand) -> Result<(Request, Shown), String> {
    match command {
        ClusterCommand::Up(a) => {
            let (name, body) = spec_body(&a.spec)?;
            let common = Common { remove_nodes: a.remove_nodes, ..a.common.clone() };
            operation(&name, JobKind::Up, &common, Some(body))
        }
        ClusterCommand::Down(a) => {
            operation(&cluster_name(&a.cluster)?, JobKind::Down { force: a.force }, &a.common, None)
        }
        ClusterCommand::RestartServices(a) => {
            let mut common = a.common.clone();
            common.rolling = a.rolling.then(|| usize::try_from(a.batch).unwrap_or(1));
            operation(&cluster_name(&a.cluster)?, JobKind::RestartServices, &common, None)
        }
        ClusterCommand::Reconfigure(a) => {
            let kind = JobKind::Reconfigure { restart: a.restart };
            let common = Common { remove_nodes: a.remove_nodes, ..a.common.clone() };
            match spec_file(&a.cluster) {
                Some(file) => {
                    let (name, body) = spec_body(file)?;
                    operation(&name, kind, &common, Some(body))
                }
                None => operation(&a.cluster, kind, &common, None),
            }
        }
        ClusterCommand::Plan(a) => {
            let kind = match a.op {
                PlanOp::Up => JobKind::Up,
                PlanOp::Down => JobKind::Down { force: a.force },
                PlanOp::RestartServices => JobKind::RestartServices,
                PlanOp::Reconfigure => JobKind::Reconfigure { restart: a.restart },
            };
            let sends_spec = matches!(kind, JobKind::Up | JobKind::Reconfigure { .. });
            let common = Common { remove_nodes: a.remove_nodes, ..a.common.clone() };
            match spec_file(&a.cluster) {
                Some(file) if sends_spec => {
                    let (name, body) = spec_body(file)?;
                    plan(&name, kind, &common, Some(body))
                }
                _ => plan(&cluster_name(&a.cluster)?, kind, &common, None),
            }
        }
        ClusterCommand::Status(a) => {
            let query = if a.tasks { vec!["tasks=true".to_owned()] } else { Vec::new() };
            let path = cluster_path(&cluster_name(&a.cluster)?, "");
            Ok((
                Request { method: Method::GET, path, query, body: None, cluster: None },
                Shown::Status { json: a.json, tasks: a.tasks },
            ))
        }
        ClusterCommand::List(a) => {
            let request = Request {
                method: Method::GET,
                path: "/v1/clusters".into(),
                query: Vec::new(),
                body: None,
                cluster: None,
            };
            Ok((request, Shown::List { json: a.json }))
        }
        ClusterCommand::Forget(_) => Err("cluster forget is not available over the API: run it where the daemon's \
             journal is, with --data-dir (and without --api)"
            .into()),
    }
}

/// The spec file's cluster name and the spec as JSON, read and checked here.
fn spec_body(file: &std::path::Path) -> Result<(String, Vec<u8>), String> {
    let spec = ClusterSpec::load(file).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&spec.to_value()).map_err(|e| e.to_string())?;
    Ok((spec.name, body))
}

/// An operation's request (with `--dry-run`: its plan's); the flags that only work here
/// are refused.
fn operation(name: &str, kind: JobKind, common: &Common, body: Option<Vec<u8>>) -> Result<(Request, Shown), String> {
    if common.dry_run {
        return plan(name, kind, common, body);
    }
    local_only(common)?;
    let (method, path) = match kind {
        JobKind::Up => (Method::POST, "/v1/clusters".to_owned()),
        JobKind::Down { .. } => (Method::DELETE, cluster_path(name, "")),
        JobKind::RestartServices => (Method::POST, cluster_path(name, "/restart-services")),
        JobKind::Reconfigure { .. } => (Method::POST, cluster_path(name, "/reconfigure")),
    };
    let request = Request { method, path, query: operation_query(kind, common), body, cluster: Some(name.to_owned()) };
    Ok((request, Shown::Operation { json: common.json, progress: common.progress }))
}

/// `POST /v1/clusters/{name}/plan?op=...`: what `kind` would do, sending nothing.
fn plan(name: &str, kind: JobKind, common: &Common, body: Option<Vec<u8>>) -> Result<(Request, Shown), String> {
    local_only(common)?;
    let mut query = vec![format!("op={}", kind.as_str())];
    query.extend(kind_query(kind));
    query.extend(scope_query(common));
    let request = Request { method: Method::POST, path: cluster_path(name, "/plan"), query, body, cluster: None };
    Ok((request, Shown::Plan { json: common.json }))
}

/// The query an operation's flags become. A flag the API takes as a query parameter is
/// one more line here.
fn operation_query(kind: JobKind, common: &Common) -> Vec<String> {
    let mut query = Vec::new();
    if !common.remote.no_wait {
        query.push("wait=true".to_owned());
    }
    query.extend(kind_query(kind));
    query.extend(scope_query(common));
    query
}

/// `--limit`, `--rolling` and `--batch` as the API takes them: `limit=` per name,
/// `rolling=true&batch=N`.
fn scope_query(common: &Common) -> Vec<String> {
    let mut query: Vec<String> = common.limit.iter().map(|l| format!("limit={}", encode(l))).collect();
    if let Some(batch) = common.rolling {
        query.push("rolling=true".to_owned());
        query.push(format!("batch={batch}"));
    }
    if common.remove_nodes {
        query.push("removeNodes=true".to_owned());
    }
    query
}

/// The query parameters of the operation's own flags (`--force`, `--restart`).
fn kind_query(kind: JobKind) -> Option<String> {
    match kind {
        JobKind::Down { force: true } => Some("force=true".to_owned()),
        JobKind::Reconfigure { restart: true } => Some("restart=true".to_owned()),
        _ => None,
    }
}

/// Refuses the flags that choose how the operation runs here: the daemon uses its own
/// plugins, users and limits.
fn local_only(common: &Common) -> Result<(), String> {
    let given = [
        (!common.plugins_dirs.is_empty(), "--plugins-dir"),
        (common.parallel.is_some(), "--parallel"),
        (common.attempts.is_some(), "--attempts"),
    ];
    match given.iter().find(|(set, _)| *set) {
        Some((_, flag)) => {
            Err(format!("{flag} is not available over the API: the daemon runs the operation with its own settings"))
        }
        None => Ok(()),
    }
}

/// The cluster's name: `arg`, or the name in the spec file `arg` names.
fn cluster_name(arg: &str) -> Result<String, String> {
    match spec_file(arg) {
        Some(file) => Ok(ClusterSpec::load(file).map_err(|e| e.to_string())?.name),
        None => Ok(arg.to_owned()),
    }
}

/// `/v1/clusters/{name}{rest}`, the name percent-encoded.
fn cluster_path(name: &str, rest: &str) -> String {
    format!("/v1/clusters/{}{rest}", encode(name))
}

/// Sends `request` and shows the answer; see [`dispatch`].
async fn send(api: &Api, request: Request, shown: Shown) -> Exit {
    let path = if request.query.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, request.query.join("&"))
    };
    let waits = request.query.iter().any(|q| q == "wait=true");
    let progress: Box<dyn Progress> = match shown {
        Shown::Operation { progress, .. } if waits && !matches!(progress, ProgressMode::None) => {
            eprintln!("loom-provisioner: sent to the daemon at {}; waiting for the operation to end", api.target());
            Box::new(Lines::stderr())
        }
        _ => Box::new(Silent),
    };
    // Subscribed before the operation is sent, so that none of its steps is missed. A
    // daemon without the events endpoint still runs the operation; only progress is lost.
    let events = match (&request.cluster, waits) {
        (Some(_), true) => EventStream::open(api)
            .await
            .inspect_err(|e| eprintln!("loom-provisioner: progress cannot be shown: {e}"))
            .ok(),
        _ => None,
    };
    let cluster = request.cluster.clone().unwrap_or_default();
    let watching = async {
        if let Some(events) = events {
            follow::follow(events, &cluster, progress.as_ref()).await;
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    let signal = crate::cli::signals::interrupt();
    tokio::pin!(signal);
    let answer = tokio::select! {
        a = api.call(request.method, &path, request.body) => a,
        never = watching => match never {},
        name = &mut signal => {
            eprintln!(
                "loom-provisioner: {name}: stopped waiting; an operation the daemon accepted goes on there \
                 (see `loom-provisioner cluster status --api {}`)",
                api.target()
            );
            return Exit::Failed;
        }
    };
    let (status, body) = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            return Exit::Usage;
        }
    };
    // An answer that is not JSON is shown as the status alone.
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match status {
        200 => show(&value, shown),
        202 => accepted(&value, shown),
        _ => refused(api, status, &value),
    }
}

/// A 200: the outcome and the cluster, one cluster, or the list.
fn show(value: &Value, shown: Shown) -> Exit {
    let mut out = std::io::stdout().lock();
    let exit = match shown {
        Shown::Operation { json, .. } => {
            let outcome = value.get("outcome").unwrap_or(&Value::Null);
            if json {
                let _ = writeln!(out, "{value}");
            } else {
                summary(outcome);
                if let Some(view) = view_of(value.get("cluster")) {
                    let _ = write!(out, "{}", view.text());
                }
            }
            Exit::ok_if(outcome_ok(outcome))
        }
        Shown::Status { json: true, .. } | Shown::List { json: true } => {
            let _ = writeln!(out, "{value}");
            Exit::Success
        }
        Shown::Status { tasks, .. } => {
            if let Some(view) = view_of(Some(value)) {
                let _ = write!(out, "{}", view.text());
            }
            if tasks {
                for t in value.get("tasks").and_then(Value::as_array).into_iter().flatten() {
                    let text = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    let status =
                        t.get("status").and_then(Value::as_i64).map_or_else(|| text("state"), |s| s.to_string());
                    let _ =
                        writeln!(out, "  {}  {:<48} {:<8} {}", text("startedAt"), text("taskId"), status, text("step"));
                }
            }
            Exit::Success
        }
        Shown::List { .. } => {
            list_text(&mut out, value);
            Exit::Success
        }
        Shown::Plan { json } => {
            // The plan's text is the local command's; the daemon answers JSON, shown as such.
            let text = if json { value.to_string() } else { serde_json::to_string_pretty(value).unwrap_or_default() };
            let _ = writeln!(out, "{text}");
            Exit::ok_if(value.get("ok").and_then(Value::as_bool).unwrap_or(false))
        }
    };
    let _ = out.flush();
    exit
}

/// The cluster table `cluster list` prints.
fn list_text(out: &mut impl Write, value: &Value) {
    let views: Vec<ClusterView> = value
        .get("clusters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| view_of(Some(v)))
        .collect();
    if views.is_empty() {
        let _ = writeln!(out, "no clusters");
        return;
    }
    let w = views.iter().map(|v| v.name.len()).max().unwrap_or(7).max(7);
    let _ = writeln!(out, "{:<w$}  {:>5}  {:<24}  state", "cluster", "nodes", "changed");
    for v in &views {
        let _ = writeln!(out, "{:<w$}  {:>5}  {:<24}  {}", v.name, v.nodes.len(), v.updated_at, v.state_text());
    }
}

fn view_of(value: Option<&Value>) -> Option<ClusterView> {
    serde_json::from_value(value?.clone()).ok()
}

/// Whether the daemon's outcome says every step succeeded.
fn outcome_ok(outcome: &Value) -> bool {
    let failed = outcome.get("failed").and_then(Value::as_array).map(Vec::len);
    let not_run = outcome.get("notRun").and_then(Value::as_u64);
    failed == Some(0) && not_run == Some(0)
}

/// The outcome's line and notes on stderr, as the local progress shows them.
fn summary(outcome: &Value) {
    let text = |k: &str| outcome.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let count = |k: &str| outcome.get(k).and_then(Value::as_u64).unwrap_or(0);
    let failed = outcome.get("failed").and_then(Value::as_array).map_or(0, Vec::len);
    eprintln!(
        "cluster {}: {} {} ended {}: {} of {} steps succeeded, {failed} failed, {} not run",
        text("cluster"),
        text("operation"),
        text("jobId"),
        text("state"),
        count("succeeded"),
        count("steps"),
        count("notRun"),
    );
    for note in outcome.get("notes").and_then(Value::as_array).into_iter().flatten() {
        eprintln!("  note: {}", note.as_str().unwrap_or(""));
    }
}

/// A 202: the operation was accepted; its id.
fn accepted(value: &Value, shown: Shown) -> Exit {
    let text = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut out = std::io::stdout().lock();
    if matches!(shown, Shown::Operation { json: true, .. }) {
        let _ = writeln!(out, "{value}");
    } else {
        let _ = writeln!(
            out,
            "cluster {}: {} accepted as {} (state {}); follow it with `loom-provisioner cluster status {} --api ...`",
            text("cluster"),
            text("operation"),
            text("jobId"),
            text("state"),
            text("cluster"),
        );
    }
    let _ = out.flush();
    Exit::Success
}

/// Any other status: the daemon's message (and problems) with the status; the exit code
/// the local command gives for the same cause.
fn refused(api: &Api, status: u16, value: &Value) -> Exit {
    let why = value.get("error").and_then(Value::as_str).unwrap_or("no reason given");
    eprintln!("loom-provisioner: the daemon at {} answered {status}: {why}", api.target());
    for p in value.get("problems").and_then(Value::as_array).into_iter().flatten() {
        eprintln!("  {}", p.as_str().unwrap_or(""));
    }
    exit_for(status)
}

/// 409 (busy) and 5xx (the operation could not finish) are failures, as a busy or failed
/// local operation; anything else (400, 401, 404, ...) means nothing was done: usage.
fn exit_for(status: u16) -> Exit {
    match status {
        409 | 500..=599 => Exit::Failed,
        _ => Exit::Usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ClusterCommand,
    }

    /// The method, path with query, and whether a body is sent, for `args`.
    fn built(args: &[&str]) -> Result<(Method, String, bool), String> {
        let cli = <Cli as clap::Parser>::try_parse_from([&["cluster"], args].concat()).map_err(|e| e.to_string())?;
        let (r, _) = request(&cli.command)?;
        Ok((r.method, format!("{}?{}", r.path, r.query.join("&")), r.body.is_some()))
    }

    #[test]
    fn flags_become_the_endpoints_query() {
        let api = ["--api", "http://127.0.0.1:1"];
        let with = |args: &[&'static str]| [args, &api[..]].concat();
        assert_eq!(
            built(&with(&["down", "c1", "--force"])),
            Ok((Method::DELETE, "/v1/clusters/c1?wait=true&force=true".into(), false))
        );
        assert_eq!(
            built(&with(&["reconfigure", "c1", "--restart", "--no-wait"])),
            Ok((Method::POST, "/v1/clusters/c1/reconfigure?restart=true".into(), false))
        );
        assert_eq!(
            built(&with(&["restart-services", "c1"])),
            Ok((Method::POST, "/v1/clusters/c1/restart-services?wait=true".into(), false))
        );
        assert_eq!(
            built(&with(&["status", "c1", "--tasks"])),
            Ok((Method::GET, "/v1/clusters/c1?tasks=true".into(), false))
        );
        assert!(
            built(&with(&["down", "c1", "--plugins-dir", "/p"]))
                .is_err_and(|e| e.contains("--plugins-dir is not available"))
        );
        assert_eq!(
            built(&with(&["restart-services", "c1", "--rolling", "--batch", "2", "--limit", "web,db 1"])),
            Ok((
                Method::POST,
                "/v1/clusters/c1/restart-services?wait=true&limit=web&limit=db%201&rolling=true&batch=2".into(),
                false
            ))
        );
        assert_eq!(
            built(&with(&["down", "c1", "--force", "--dry-run"])),
            Ok((Method::POST, "/v1/clusters/c1/plan?op=down&force=true".into(), false))
        );
        assert_eq!(
            built(&with(&["plan", "c1", "--op", "reconfigure", "--restart"])),
            Ok((Method::POST, "/v1/clusters/c1/plan?op=reconfigure&restart=true".into(), false))
        );
        assert!(built(&with(&["forget", "c1"])).is_err_and(|e| e.contains("not available over the API")));
        assert_eq!(
            built(&with(&["reconfigure", "c1", "--remove-nodes", "--no-wait"])),
            Ok((Method::POST, "/v1/clusters/c1/reconfigure?removeNodes=true".into(), false))
        );
        assert_eq!(
            built(&with(&["plan", "c1", "--op", "reconfigure", "--remove-nodes"])),
            Ok((Method::POST, "/v1/clusters/c1/plan?op=reconfigure&removeNodes=true".into(), false))
        );
    }

    #[test]
    fn an_empty_limit_name_is_a_usage_error() {
        let check = |args: &[&str]| {
            let cli =
                <Cli as clap::Parser>::try_parse_from([&["cluster"], args].concat()).map_err(|e| e.to_string())?;
            super::super::check_limit(&cli.command)
        };
        assert_eq!(check(&["down", "c1", "--limit", ""]), Err("--limit: an empty name".to_owned()));
        assert_eq!(check(&["down", "c1", "--limit", "a,,b"]), Err("--limit: an empty name".to_owned()));
        assert_eq!(
            check(&["restart-services", "c1", "--limit", "group:"]),
            Err("--limit group:: an empty name".to_owned())
        );
        assert_eq!(check(&["down", "c1", "--limit", "group:db,service:web,c1-db-1"]), Ok(()));
        assert_eq!(check(&["status", "c1"]), Ok(()));
    }

    #[test]
    fn names_are_encoded_in_paths() {
        assert_eq!(cluster_path("demo-1", "/reconfigure"), "/v1/clusters/demo-1/reconfigure");
        assert_eq!(cluster_path("a b/c", ""), "/v1/clusters/a%20b%2Fc");
    }

    #[test]
    fn outcomes_and_statuses_map_to_the_local_exit_codes() {
        assert!(outcome_ok(&serde_json::json!({"failed": [], "notRun": 0})));
        assert!(!outcome_ok(&serde_json::json!({"failed": [{}], "notRun": 0})));
        assert!(!outcome_ok(&Value::Null));
        assert_eq!(exit_for(409), Exit::Failed);
        assert_eq!(exit_for(503), Exit::Failed);
        assert_eq!(exit_for(401), Exit::Usage);
        assert_eq!(exit_for(400), Exit::Usage);
    }
}
