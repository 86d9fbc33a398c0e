//! The daemon's HTTP API (JSON), on TCP or a Unix socket.
//!
//! | method and path ([`routes`]) | answer |
//! |---|---|
//! | `POST /v1/tasks[?wait=true]` | 202 `{"taskId","state":"queued"}`, or with `wait` 200 and the finished task; a known id: 200 and that task, never a second run |
//! | `GET /v1/tasks/{taskId}[?masked=true]` | 200 the task (`state`: queued, running, done; `result` when done; credentials masked by key with `masked` and always for the console's session), 404 |
//! | `GET /v1/tasks[?state=&plugin=&name=&cluster=&limit=&before=]` | 200 `{"tasks","next"}`: the task API's tasks newest first, no bodies ([`tasks`]) |
//! | `GET /v1/plugins` | 200 every plugin with its instances (phase, pid, restarts, in-flight, last error and stderr) |
//! | `POST /v1/plugins/{name}/restart` | 202, 404 |
//! | `POST /v1/clusters[?wait=true][&limit=L][&removeNodes=true]` (body: a cluster spec) | 202 `{"cluster","jobId","operation","state"}` once `up` is recorded; with `wait` 200 `{"outcome","cluster"}` when it ends; 400 a bad spec, a missing plugin, a bad limit, or dropped nodes with machines without `removeNodes=true` (with `problems`), 409 busy. A spec that drops nodes of a live cluster takes them away (scale-down) |
//! | `GET /v1/clusters` | 200 `{"clusters": [...]}` |
//! | `GET /v1/clusters/{name}[?tasks=true]` | 200 the cluster (as `cluster status --json`), 404 |
//! | `DELETE /v1/clusters/{name}[?force=true][&wait=true][&limit=L]` | 202 `down` started (as POST), 400, 404, 409 |
//! | `POST /v1/clusters/{name}/restart-services[?wait=true][&limit=L][&rolling=true[&batch=N]]` | 202, 400, 404, 409 |
//! | `POST /v1/clusters/{name}/reconfigure[?restart=true][&wait=true][&limit=L][&removeNodes=true]` (body: optionally the changed spec) | 202, 400, 404, 409 |
//! | `POST /v1/clusters/{name}/plan[?op=up\|down\|restart-services\|reconfigure][&force=true][&restart=true][&limit=L][&rolling=true[&batch=N]][&removeNodes=true]` (body: for `up` and `reconfigure`, optionally the spec; else the stored one) | 200 what the operation would do, sending nothing (as `cluster plan --json`; `ok` false when a check failed), 400, 404 |
//! | `GET /v1/stats` | 200 version, uptime, journal, queue, the last hour by minute ([`stats`]) |
//! | `GET /`, `/console.js`, `/console.css`, `/v1/session` | the web console and its login ([`console`]; no token needed) |
//! | `GET /v1/events[?since=ID]` (or `Last-Event-ID: ID`) | 200 `text/event-stream`: the daemon's events as they happen (tasks, cluster operations and their steps, output, plugin phases; see [`sse`] and README.md), resumable; 503 past 64 streams |
//! | `GET /healthz` | 200, or 503 while draining (no token needed) |
//! | `GET /metrics` | 200 Prometheus text |
//!
//! `limit` (repeatable, or comma-separated; percent-encoded) is the commands' `--limit`:
//! node ids, hostnames, node groups or services (`node:`, `group:`, `service:` prefixes);
//! `rolling` and `batch` (nodes per batch, default 1) are `restart-services --rolling
//! --batch N`; `removeNodes=true` is `--remove-nodes` (a spec may drop nodes that have
//! machines). A `batch` that is not a number
//! from 1 gets 400.
//!
//! With a token configured every path but `/healthz` and the console's needs
//! `Authorization: Bearer <token>` or the console's session cookie (401 without); what a
//! browser may have been made to send is refused (403, [`guard`]). Bodies over `max_body_bytes` get 413, bodies slower than
//! `http.body_read_timeout_secs` 408; JSON that does not parse gets 400 with the parser's
//! position; a task that is not valid gets 400 saying why. Connections are accepted and
//! kept within limits by [`server`].

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{ALLOW, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::cluster::plan::Scope;
use crate::cluster::view::ClusterView;
use crate::cluster::{ClusterSpec, JobError, JobKind};
use crate::core::registry::Availability;
use crate::daemon::config::Listen;
use crate::daemon::service::{ClusterOpError, Daemon, SubmitError, Submitted};

mod body;
mod console;
mod guard;
pub(crate) mod path;
mod routes;
mod server;
mod sse;
mod stats;
mod tasks;

use routes::{Endpoint, Found};
use server::Body;
pub use server::{AsyncIo, raise_open_files_limit, serve, serve_stream};

/// A bound listener.
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A Unix socket (the path is removed when the daemon stops).
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds `listen`. A stale Unix socket file (nobody accepting on it) is replaced; a new
    /// socket gets mode 0660 (its owner and group may talk to the daemon).
    ///
    /// # Errors
    /// [`BindError`]: the address is in use or not allowed, or the socket's mode cannot be
    /// set (the socket is removed then: it would be open to whoever the umask lets in).
    pub async fn bind(listen: &Listen) -> Result<Listener, BindError> {
        match listen {
            Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|source| BindError::Io { address: addr.to_string(), source }),
            Listen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && meta.file_type().is_socket()
                {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(BindError::Answering(path.clone()));
                    }
                    let _ = std::fs::remove_file(path);
                }
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let l = tokio::net::UnixListener::bind(path)
                    .map_err(|source| BindError::Io { address: path.display().to_string(), source })?;
                if let Err(source) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)) {
                    drop(l);
                    let _ = std::fs::remove_file(path);
                    return Err(BindError::Mode { path: path.clone(), source });
                }
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }
}

/// Why the API's address cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Binding failed: in use, not allowed, no such folder.
    #[error("cannot listen on {address}: {source}")]
    Io {
        /// The address or socket path.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// Another daemon accepts connections on the socket.
    #[error("cannot listen on {}: another daemon is answering there", .0.display())]
    Answering(std::path::PathBuf),
    /// The socket's mode could not be set to 0660.
    #[error("cannot give socket {} mode 0660: {source}", path.display())]
    Mode {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A response's body: whole (JSON, text), or streamed (`GET /v1/events`).
pub(super) type ApiBody = UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A body of `bytes`, whole.
fn full(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into()).boxed_unsync()
}

pub(super) async fn handle(daemon: &Arc<Daemon>, req: Request<Body>) -> Response<ApiBody> {
    let mut response = route(daemon, req).await;
    daemon.metrics.http(response.status().as_u16());
    secure(response.headers_mut());
    response
}

/// Headers on every answer: nothing is sniffed into another type, framed, or told where the
/// browser came from; an answer that is not the console's page may run nothing at all.
fn secure(headers: &mut hyper::HeaderMap) {
    use hyper::header::{
        CONTENT_SECURITY_POLICY, HeaderValue, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !headers.contains_key(CONTENT_SECURITY_POLICY) {
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    }
}

async fn route(daemon: &Arc<Daemon>, req: Request<Body>) -> Response<ApiBody> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let Some(decoded) = path::segments(&path) else {
        return error(StatusCode::BAD_REQUEST, "the path is not valid percent-encoded UTF-8");
    };
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let caller = guard::identify(daemon, &req);
    let public = matches!(segments.as_slice(), [] | ["healthz" | "console.js" | "console.css"] | ["v1", "session"]);
    let tcp = matches!(daemon.listening_on(), Listen::Tcp(_));
    if let Some(why) = guard::refusal(&req, caller.as_ref(), segments.as_slice() == ["v1", "session"], tcp) {
        return error(StatusCode::FORBIDDEN, why);
    }
    if !public && caller.is_none() {
        let mut r = error(StatusCode::UNAUTHORIZED, "a bearer token is required: Authorization: Bearer <token>");
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer realm=\"loom-provisioner\""));
        return r;
    }
    let (endpoint, args) = match routes::find(req.method(), &segments) {
        Found::Endpoint(endpoint, args) => (endpoint, args),
        Found::WrongMethod(allowed) => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("{} is not allowed on {path}", req.method()));
            if let Ok(allow) = hyper::header::HeaderValue::from_str(&allowed.join(", ")) {
                r.headers_mut().insert(ALLOW, allow);
            }
            return r;
        }
        Found::NoPath => return error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    };
    let arg = args.first().copied().unwrap_or_default();
    let wait = flag(&req, "wait");
    // Only the cluster operations read `limit`, `rolling` and `batch`.
    let operates = matches!(
        endpoint,
        Endpoint::ClusterUp
            | Endpoint::ClusterDown
            | Endpoint::RestartServices
            | Endpoint::Reconfigure
            | Endpoint::ClusterPlan
    );
    // `rolling` and `batch` belong to restart-services (and its plan) only: on `down` they
    // would make a full teardown a partial one.
    let rolls = endpoint == Endpoint::RestartServices
        || (endpoint == Endpoint::ClusterPlan && query_value(&req, "op") == Some("restart-services"));
    let scope = match scope(&req, rolls) {
        Ok(s) => s,
        Err(why) if operates => return error(StatusCode::BAD_REQUEST, &why),
        Err(_) => Scope::default(),
    };
    let scope = with_remove_nodes(scope, &req);
    match endpoint {
        Endpoint::Health => health(daemon),
        Endpoint::Metrics => metrics(daemon).await,
        Endpoint::SubmitTask => submit(daemon, req, wait).await,
        Endpoint::GetTask => match daemon.get(arg).await {
            // The console never shows a credential, even one a provider legitimately
            // returns in `result`: for its session (or `masked=true`) they are masked by key.
            Ok(Some(r)) if matches!(caller, Some(guard::Caller::Session(_))) || flag(&req, "masked") => {
                let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
                crate::wire::redact::mask_credentials(&mut v);
                json_response(StatusCode::OK, &v)
            }
            Ok(Some(r)) => json_response(StatusCode::OK, &r),
            Ok(None) => error(StatusCode::NOT_FOUND, &format!("no task {arg}")),
            Err(e) => journal_error(daemon, &e.to_string()),
        },
        Endpoint::ListPlugins => json_response(StatusCode::OK, &plugins(daemon).await),
        Endpoint::RestartPlugin => restart(daemon, arg),
        Endpoint::ClusterUp => match read_spec(daemon, req, None).await {
            Ok(spec) => cluster_op(daemon, spec, JobKind::Up, scope, wait).await,
            Err(r) => r,
        },
        Endpoint::ListClusters => cluster_list(daemon).await,
        Endpoint::GetCluster => cluster_get(daemon, arg, flag(&req, "tasks")).await,
        Endpoint::ClusterDown => match stored(daemon, arg).await {
            Ok(spec) => cluster_op(daemon, spec, JobKind::Down { force: flag(&req, "force") }, scope, wait).await,
            Err(r) => r,
        },
        Endpoint::RestartServices => match stored(daemon, arg).await {
            Ok(spec) => cluster_op(daemon, spec, JobKind::RestartServices, scope, wait).await,
            Err(r) => r,
        },
        Endpoint::Reconfigure => {
            let kind = JobKind::Reconfigure { restart: flag(&req, "restart") };
            let name = arg.to_owned();
            let spec = match stored(daemon, &name).await {
                Ok(spec) => read_spec(daemon, req, Some(spec)).await,
                Err(r) => Err(r),
            };
            match spec {
                Ok(spec) if spec.name == name => cluster_op(daemon, spec, kind, scope, wait).await,
                Ok(spec) => {
                    error(StatusCode::BAD_REQUEST, &format!("the spec is for cluster {:?}, not {name:?}", spec.name))
                }
                Err(r) => r,
            }
        }
        Endpoint::ClusterPlan => cluster_plan(daemon, req, arg, scope).await,
        Endpoint::Console => console::asset(&req, segments.first().copied().unwrap_or_default()),
        Endpoint::Session => console::session(daemon, req, caller).await,
        Endpoint::ListTasks => tasks::list(daemon, &req).await,
        Endpoint::Stats => stats::stats(daemon).await,
        Endpoint::Events => sse::events(daemon, &req),
    }
}

fn health(daemon: &Daemon) -> Response<ApiBody> {
    if daemon.draining() {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "draining"}));
    }
    if let Some(why) = daemon.journal.health().problem() {
        let journal = format!("{}: {why}", daemon.journal.place());
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "journal cannot write", "journal": journal}),
        );
    }
    json_response(StatusCode::OK, &json!({"status": "ok", "summary": daemon.status_line()}))
}

async fn metrics(daemon: &Daemon) -> Response<ApiBody> {
    let table = daemon.supervisor.table();
    let readings = crate::daemon::metrics::Readings {
        table: &table,
        journal: daemon.journal.counts().await.ok(),
        journal_health: daemon.journal.health(),
        in_flight: daemon.in_flight(),
        clusters: daemon.clusters.count_by_state().await.ok(),
    };
    let mut text = daemon.metrics.render(&readings);
    if let Ok(queued) = daemon.journal.queued_by_needs().await {
        crate::daemon::metrics::render_fleet_queue(&mut text, &queued);
    }
    let mut r = Response::new(full(text));
    r.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// Whether the query has `name`, `name=true` or `name=1`.
fn flag(req: &Request<Body>, name: &str) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == name || kv == format!("{name}=true") || kv == format!("{name}=1")))
}

/// The query's `limit` (repeatable, comma lists), and `rolling` and `batch` where `rolls`.
///
/// # Errors
/// Why (the answer is 400), naming the parameter, never its value: a `limit` that is not
/// valid percent-encoding or names nothing (`limit=` with an empty variable must not mean
/// the whole cluster), a `batch` that is not a number from 1, `rolling` or `batch` where
/// the operation does not restart services.
fn scope(req: &Request<Body>, rolls: bool) -> Result<Scope, String> {
    let pairs: Vec<(&str, &str)> =
        req.uri().query().unwrap_or_default().split('&').map(|kv| kv.split_once('=').unwrap_or((kv, ""))).collect();
    let mut limit = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| *k == "limit") {
        let v = path::decode(&v.replace('+', " ")).ok_or("limit: not valid percent-encoding")?;
        let names: Vec<&str> = v.split(',').map(str::trim).collect();
        if names.iter().any(|n| n.is_empty()) {
            return Err("limit: an empty name (give node ids, hostnames, groups or services)".to_owned());
        }
        limit.extend(names.into_iter().map(str::to_owned));
    }
    let batch = pairs.iter().find(|(k, _)| *k == "batch");
    let rolling = flag(req, "rolling");
    if !rolls && (rolling || batch.is_some()) {
        return Err("rolling and batch apply to restart-services only".to_owned());
    }
    let batch = match batch {
        Some((_, v)) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return Err("batch: give a number of nodes from 1".to_owned()),
        },
        None => 1,
    };
    Ok(Scope { limit, rolling: rolling.then_some(batch), ..Scope::default() })
}

/// `scope` with the query's `removeNodes=true` (`--remove-nodes`): a spec may drop
/// nodes that have machines, which are then stopped, removed and deleted.
fn with_remove_nodes(scope: Scope, req: &Request<Body>) -> Scope {
    Scope { remove_nodes: flag(req, "removeNodes"), ..scope }
}

/// Cluster specs are small; this keeps a spec's tree small too.
const MAX_SPEC_BYTES: usize = 1024 * 1024;

/// The body, within `limit` bytes, `http.body_read_timeout_secs` and the task budget;
/// else the answer to give (see [`body::receive`]).
async fn read_body(daemon: &Daemon, req: Request<Body>, limit: usize) -> Result<body::Received, Response<ApiBody>> {
    let config = daemon.config();
    let limits = body::BodyLimits { max_bytes: limit, timeout: config.http.body_read_timeout, budget: &daemon.budget };
    body::receive(req, limits).await.map_err(|mut r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE && limit == config.max_body_bytes {
            let why = format!("the body is larger than the limit of {limit} bytes (max_body_bytes)");
            r = error(StatusCode::PAYLOAD_TOO_LARGE, &why);
        }
        r
    })
}

async fn submit(daemon: &Arc<Daemon>, req: Request<Body>, wait: bool) -> Response<ApiBody> {
    let received = match read_body(daemon, req, daemon.config().max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let raw = match body::json(received.bytes) {
        Ok(raw) => raw,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why.to_string()),
    };
    match daemon.submit(raw, Some(received.reservation)).await {
        Ok(Submitted::New(id)) if wait => finished(daemon, &id).await,
        Ok(Submitted::New(id)) => {
            let mut r = json_response(StatusCode::ACCEPTED, &json!({"taskId": id, "state": "queued"}));
            if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("/v1/tasks/{}", path::encode(&id))) {
                r.headers_mut().insert(LOCATION, v);
            }
            r
        }
        Ok(Submitted::Existing(record)) if wait => finished(daemon, &record.task_id).await,
        Ok(Submitted::Existing(record)) => json_response(StatusCode::OK, &record),
        Err(e @ SubmitError::Invalid(_)) => error(StatusCode::BAD_REQUEST, &format!("invalid task: {e}")),
        Err(e @ SubmitError::Draining) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e @ SubmitError::Journal(_)) => journal_error(
            daemon,
            &format!("{e}; submitting it again is safe (a task id known to the journal never runs twice)"),
        ),
    }
}

async fn finished(daemon: &Daemon, id: &str) -> Response<ApiBody> {
    match daemon.wait(id).await {
        Ok(Some(r)) if r.state == crate::journal::State::Done => json_response(StatusCode::OK, &r),
        // Waiting for a daemon that runs its plugin: said at once, not after a timeout.
        Ok(Some(r)) => json_response(StatusCode::ACCEPTED, &r),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no task {id}")),
        Err(e) => journal_error(daemon, &e.to_string()),
    }
}

/// A cluster spec from the body; an empty body gives `default` (when there is one). Its
/// plugins are the daemon's, whatever `pluginDirs` says.
async fn read_spec(
    daemon: &Daemon,
    req: Request<Body>,
    default: Option<ClusterSpec>,
) -> Result<ClusterSpec, Response<ApiBody>> {
    let body = read_body(daemon, req, MAX_SPEC_BYTES.min(daemon.config().max_body_bytes)).await?.bytes;
    let mut spec = match (body.iter().all(u8::is_ascii_whitespace), default) {
        (true, Some(spec)) => spec,
        _ => {
            let value: Value = serde_json::from_slice(&body).map_err(|e| {
                error(StatusCode::BAD_REQUEST, &format!("the body is {}", crate::wire::json::describe_json_error(&e)))
            })?;
            ClusterSpec::from_value(&value, "request body", std::path::Path::new("/")).map_err(|e| {
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "invalid cluster spec", "problems": e.problems}),
                )
            })?
        }
    };
    spec.plugin_dirs = daemon.config().plugin_dirs;
    Ok(spec)
}

/// The spec cluster `name` last ran with.
async fn stored(daemon: &Daemon, name: &str) -> Result<ClusterSpec, Response<ApiBody>> {
    crate::cluster::job::stored_spec(&daemon.clusters, name).await.map_err(|e| job_error(&e))
}

fn job_error(e: &JobError) -> Response<ApiBody> {
    match e {
        JobError::Unknown(_) => error(StatusCode::NOT_FOUND, &e.to_string()),
        JobError::Busy(_) => error(StatusCode::CONFLICT, &e.to_string()),
        JobError::Refused(problems) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "the operation cannot run; nothing was done", "problems": problems}),
        ),
        JobError::Journal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn cluster_op(
    daemon: &Arc<Daemon>,
    spec: ClusterSpec,
    kind: JobKind,
    scope: Scope,
    wait: bool,
) -> Response<ApiBody> {
    let name = spec.name.clone();
    let job = match daemon.start_cluster_op_within(spec, kind, scope).await {
        Ok(job) => job,
        Err(ClusterOpError::Draining) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, &ClusterOpError::Draining.to_string());
        }
        Err(ClusterOpError::Job(e)) => return job_error(&e),
    };
    if wait {
        let outcome = daemon.wait_cluster(&name).await;
        let view = ClusterView::load(&daemon.clusters, &daemon.cluster_locks(), &name, false).await.ok().flatten();
        return match outcome {
            Some(Ok(outcome)) => json_response(StatusCode::OK, &json!({"outcome": outcome, "cluster": view})),
            Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the operation was cut short by a shutdown; it resumes at the next start",
            ),
        };
    }
    // As recorded: an operation on part of the cluster (a limit, a scale-down) runs as
    // `updating`.
    let state = match daemon.clusters.get(&name).await {
        Ok(Some(record)) => record.state,
        _ => crate::cluster::ClusterState::during(kind),
    }
    .as_str();
    let mut r = json_response(
        StatusCode::ACCEPTED,
        &json!({"cluster": name, "jobId": job, "operation": kind.as_str(), "state": state}),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("/v1/clusters/{}", path::encode(&name))) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// The value of `name` in the query, if given.
fn query_value<'r>(req: &'r Request<Body>, name: &str) -> Option<&'r str> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// `POST /v1/clusters/{name}/plan`: what `op` would do on cluster `name`, from the body's
/// spec (`up`, `reconfigure`) or the stored one; sends nothing, records nothing.
async fn cluster_plan(daemon: &Daemon, req: Request<Body>, name: &str, scope: Scope) -> Response<ApiBody> {
    let kind = match query_value(&req, "op").unwrap_or("up") {
        "up" => JobKind::Up,
        "down" => JobKind::Down { force: flag(&req, "force") },
        "restart-services" => JobKind::RestartServices,
        "reconfigure" => JobKind::Reconfigure { restart: flag(&req, "restart") },
        _ => return error(StatusCode::BAD_REQUEST, "op must be up, down, restart-services or reconfigure"),
    };
    let stored = match crate::cluster::job::stored_spec(&daemon.clusters, name).await {
        Ok(spec) => Some(spec),
        Err(JobError::Unknown(_)) if kind == JobKind::Up => None,
        Err(e) => return job_error(&e),
    };
    let spec = match kind {
        JobKind::Up | JobKind::Reconfigure { .. } => match read_spec(daemon, req, stored).await {
            Ok(spec) => spec,
            Err(r) => return r,
        },
        _ => match stored {
            Some(mut spec) => {
                spec.plugin_dirs = daemon.config().plugin_dirs;
                spec
            }
            None => return error(StatusCode::NOT_FOUND, &format!("no cluster named {name:?}")),
        },
    };
    if spec.name != name {
        return error(StatusCode::BAD_REQUEST, &format!("the spec is for cluster {:?}, not {name:?}", spec.name));
    }
    let table = daemon.supervisor.table();
    let elsewhere = if daemon.shared() {
        match daemon.journal.fleet_can().await {
            Ok(keys) => keys,
            Err(e) => return journal_error(daemon, &e.to_string()),
        }
    } else {
        Default::default()
    };
    let plugins = crate::cluster::preview::PluginView {
        registry: &table.registry,
        runnable: Box::new(|kind, name| table.plugin(kind, name).is_some()),
        elsewhere,
    };
    match crate::cluster::preview::preview(&daemon.clusters, &spec, kind, &scope, &plugins).await {
        Ok(preview) => json_response(StatusCode::OK, &preview),
        Err(e) => job_error(&e),
    }
}

async fn cluster_list(daemon: &Daemon) -> Response<ApiBody> {
    let records = match daemon.clusters.list().await {
        Ok(r) => r,
        Err(e) => return journal_error(daemon, &e.to_string()),
    };
    let mut views = Vec::new();
    for r in records {
        match ClusterView::load(&daemon.clusters, &daemon.cluster_locks(), &r.name, false).await {
            Ok(Some(v)) => views.push(v),
            Ok(None) => {}
            Err(e) => return journal_error(daemon, &e.to_string()),
        }
    }
    json_response(StatusCode::OK, &json!({"clusters": views}))
}

async fn cluster_get(daemon: &Daemon, name: &str, tasks: bool) -> Response<ApiBody> {
    match ClusterView::load(&daemon.clusters, &daemon.cluster_locks(), name, tasks).await {
        Ok(Some(v)) => json_response(StatusCode::OK, &v),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no cluster named {name:?}")),
        Err(e) => journal_error(daemon, &e.to_string()),
    }
}

/// This daemon's plugins (each marked with the daemon's name), and every daemon of the
/// fleet with the plugins its last heartbeat reported (with SQLite: this one).
async fn plugins(daemon: &Daemon) -> Value {
    let me = daemon.me();
    let daemons = match daemon.journal.peers().await {
        Ok(peers) => json!(peers),
        Err(e) => json!({"error": e.to_string()}),
    };
    let table = daemon.supervisor.table();
    let list: Vec<Value> = table
        .registry
        .plugins
        .iter()
        .map(|r| {
            let mut v = json!({"name": r.name, "kind": r.kind, "manifest": r.manifest, "daemon": me.name});
            match (&r.availability, table.plugin(r.kind, &r.name)) {
                (Availability::Runnable(spec), Some(p)) => {
                    v["runnable"] = json!(true);
                    v["executable"] = json!(spec.executable);
                    v["queued"] = json!(p.queued());
                    v["instances"] = p.status().into_iter().map(|s| instance(&s)).collect();
                }
                (Availability::NotRunnable(why), _) => {
                    v["runnable"] = json!(false);
                    v["reason"] = json!(why);
                }
                (Availability::Runnable(_), None) => {
                    v["runnable"] = json!(false);
                    v["reason"] = json!("not started");
                }
            }
            v
        })
        .collect();
    json!({"daemon": {"id": &*me.id, "name": me.name, "host": me.host}, "plugins": list, "daemons": daemons})
}

/// One instance as the API shows it: `phase` also tells `busy` (ready, with tasks in
/// flight) and `backing off` (crashed, waiting to start again); `retryAt` when a failed
/// plugin will be tried again; the crash's message apart from the plugin's last stderr
/// lines (`lastStderr`).
fn instance(s: &crate::core::pool::InstanceStatus) -> Value {
    use crate::core::pool::Phase;
    let phase = match &s.phase {
        Phase::Ready if s.in_flight > 0 => "busy",
        Phase::Restarting => "backing off",
        p => p.as_str(),
    };
    let (error, stderr) = match s.last_error.as_deref().map(|e| e.split_once("; its last stderr lines:\n")) {
        Some(Some((error, lines))) => (Some(error), lines.lines().collect::<Vec<_>>()),
        Some(None) => (s.last_error.as_deref(), Vec::new()),
        None => (None, Vec::new()),
    };
    let mut v = json!({"phase": phase, "pid": s.pid, "restarts": s.restarts,
                       "requestedRestarts": s.requested_restarts, "inFlight": s.in_flight,
                       "lastError": error, "lastStderr": stderr});
    if let Phase::Failed { until, reason } = &s.phase {
        let wait = until.saturating_duration_since(std::time::Instant::now());
        let at = crate::journal::now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
        v["retryAt"] = json!(crate::journal::rfc3339(at));
        v["reason"] = json!(reason);
    }
    v
}

fn restart(daemon: &Daemon, name: &str) -> Response<ApiBody> {
    let table = daemon.supervisor.table();
    let matching: Vec<_> = table.plugins().filter(|p| p.name() == name).collect();
    if matching.is_empty() {
        return error(StatusCode::NOT_FOUND, &format!("no runnable plugin named {name:?}"));
    }
    for p in &matching {
        tracing::info!(plugin = %p.name(), "restart requested over the API");
        p.restart();
    }
    let which: Vec<String> = matching.iter().map(|p| format!("{} {}", p.kind(), p.name())).collect();
    json_response(StatusCode::ACCEPTED, &json!({"restarting": which}))
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<ApiBody> {
    let mut text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    text.push(b'\n');
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<ApiBody> {
    json_response(status, &json!({"error": message}))
}

/// The journal failed: 503 with `Retry-After` while a shared journal's server is out of
/// reach (the daemon connects again by itself; nothing is accepted meanwhile), else 500.
fn journal_error(daemon: &Daemon, message: &str) -> Response<ApiBody> {
    if daemon.shared() && daemon.journal.health().problem().is_some() {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
        r.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("2"));
        return r;
    }
    error(StatusCode::INTERNAL_SERVER_ERROR, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A daemon without plugins, in a temporary folder (its config.toml written there, for
    /// reloads).
    fn daemon(dir: &std::path::Path) -> Arc<Daemon> {
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        let text = "plugin_dirs = [\"plugins\"]\ndata_dir = \"data\"\n[http]\nidle_timeout_secs = 1\n";
        std::fs::write(dir.join("config.toml"), text).unwrap();
        let config = crate::daemon::config::parse(&dir.join("config.toml"), text).unwrap();
        Daemon::start(config, loom_protocol::LogLevel::Warn).unwrap()
    }

    /// What the daemon answers to `request` sent on a stream, read until it closes.
    async fn exchange(daemon: &Arc<Daemon>, request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(serve_stream(server, Arc::clone(daemon)));
        client.write_all(request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        serving.await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_stream_is_served_like_a_connection() {
        let dir = crate::core::trust::test_dir();
        let daemon = daemon(dir.path());
        let ok = exchange(&daemon, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let missing = exchange(&daemon, b"GET /v1/tasks/nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let junk = exchange(&daemon, b"\x00\xff garbage\r\n\r\n").await;
        assert!(junk.is_empty() || junk.starts_with("HTTP/1.1 400"), "{junk}");
        daemon.drain(std::time::Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn paths_are_routed_and_authorized_by_their_decoded_segments() {
        let dir = crate::core::trust::test_dir();
        let daemon = daemon(dir.path());
        let ok = exchange(&daemon, b"GET /%68ealthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let wrong = exchange(&daemon, b"POST /v1/%65vents HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
        assert!(wrong.starts_with("HTTP/1.1 405") && wrong.contains("allow: GET"), "{wrong}");
        daemon.drain(std::time::Duration::from_secs(1)).await;
    }

    /// Reads from `client` until `want` has arrived; what arrived.
    async fn read_until(client: &mut tokio::io::DuplexStream, seen: &mut String, want: &str) {
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(60), client.read(&mut buf))
                .await
                .expect("in time")
                .unwrap();
            assert!(n > 0, "the stream ended before {want:?}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    #[tokio::test]
    async fn an_event_stream_stays_open_past_the_idle_timeout_and_ends_at_the_drain() {
        let dir = crate::core::trust::test_dir();
        let daemon = daemon(dir.path());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(serve_stream(server, Arc::clone(&daemon)));
        client.write_all(b"GET /v1/%65vents HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut seen = String::new();
        read_until(&mut client, &mut seen, ": events of run").await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        assert!(seen.contains("content-type: text/event-stream"), "{seen}");
        assert!(seen.contains("cache-control: no-store") && seen.contains("x-accel-buffering: no"), "{seen}");
        // The idle timeout is 1 s here: an open stream is a request in hand.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        daemon.events.publish("test.event", &json!({"a": 1}));
        let id = daemon.events.id(1);
        read_until(&mut client, &mut seen, &format!("id: {id}\nevent: test.event\ndata: {{\"a\":1}}\n\n")).await;
        daemon.drain(std::time::Duration::from_secs(1)).await;
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(60), client.read_to_end(&mut rest)).await.unwrap().unwrap();
        drop(client);
        serving.await.unwrap();
    }

    #[tokio::test]
    async fn cluster_scope_parameters_are_checked_before_anything_runs() {
        let dir = crate::core::trust::test_dir();
        let daemon = daemon(dir.path());
        let status = |answer: String| answer.get(9..12).unwrap_or_default().to_owned();
        let ask = |line: &str| format!("{line} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").into_bytes();
        // `limit=` from an empty variable must not mean the whole cluster.
        for line in
            ["DELETE /v1/clusters/c?limit=", "DELETE /v1/clusters/c?limit=a,,b", "DELETE /v1/clusters/c?limit=%20"]
        {
            let answer = exchange(&daemon, &ask(line)).await;
            assert_eq!(status(answer.clone()), "400", "{line}: {answer}");
            assert!(answer.contains("limit: an empty name"), "{answer}");
        }
        // `rolling` would make a `down` partial: only restart-services takes it.
        for line in [
            "DELETE /v1/clusters/c?rolling=true",
            "POST /v1/clusters?batch=2",
            "POST /v1/clusters/c/plan?op=down&rolling",
        ] {
            let answer = exchange(&daemon, &ask(line)).await;
            assert_eq!(status(answer.clone()), "400", "{line}: {answer}");
            assert!(answer.contains("rolling and batch apply to restart-services only"), "{answer}");
        }
        let answer = exchange(&daemon, &ask("POST /v1/clusters/c/restart-services?batch=0&rolling")).await;
        assert!(answer.contains("batch: give a number of nodes from 1"), "{answer}");
        // Taken where they belong: the unknown cluster is what is wrong then.
        for line in [
            "POST /v1/clusters/c/restart-services?rolling&batch=2&limit=n1",
            "POST /v1/clusters/c/plan?op=restart-services&rolling",
        ] {
            let answer = exchange(&daemon, &ask(line)).await;
            assert_eq!(status(answer.clone()), "404", "{line}: {answer}");
        }
        daemon.drain(std::time::Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_reload_keeps_the_token_while_the_api_is_served_off_loopback() {
        let dir = crate::core::trust::test_dir();
        let open = daemon(dir.path());
        // As when systemd passed a socket on every address: the configuration itself says
        // 127.0.0.1 and has no token.
        open.serving_on(Listen::Tcp("0.0.0.0:55056".parse().unwrap()));
        let err = open.reload().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("served on 0.0.0.0:55056, not a loopback address, so token_file must stay set"), "{err}");
        let loopback = daemon(&dir.path().join("other"));
        loopback.serving_on(Listen::Tcp("127.0.0.1:55056".parse().unwrap()));
        assert!(loopback.reload().is_ok());
        open.drain(std::time::Duration::from_secs(1)).await;
        loopback.drain(std::time::Duration::from_secs(1)).await;
    }
}
