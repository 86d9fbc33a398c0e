//! The daemon's client: `loom-provisioner submit` and `loom-provisioner status`, over the
//! HTTP API on TCP or a Unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::cli::exit::Exit;
use crate::daemon::config::{ConfigError, DEFAULT_LISTEN, Listen, ListenError};

/// Where the daemon is and how to talk to it.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The API: `http://HOST:PORT` or `unix:/path/to/api.sock` (default: the daemon
    /// configuration's `listen` with --config, else 127.0.0.1:55056; `cluster` commands
    /// run here, not on a daemon, unless --api, $LOOM_API or --config is given).
    #[arg(long, env = "LOOM_API", value_name = "URL")]
    pub api: Option<String>,
    /// A file holding the bearer token (default: the configuration's `token_file`).
    #[arg(long, env = "LOOM_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The daemon's configuration, to read `listen` and `token_file` from.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why the API's address or token could not be worked out. Each message names the flag,
/// file or setting.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The daemon's configuration (`--config`) is unreadable or bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--api` (or `LOOM_API`) is not an address.
    #[error("--api: {0}")]
    Api(ListenError),
    /// The built-in address ([`DEFAULT_LISTEN`]) is not one; a test checks it is.
    #[error(transparent)]
    Default(ListenError),
    /// The token file (`--token-file`, `LOOM_TOKEN_FILE`) cannot be read.
    #[error("token file {}: {source}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a request to the daemon got no answer. Each message names the address.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The address cannot be connected to (nothing listens, no permission).
    #[error("cannot reach the daemon at {target}: {source} (is `loom-provisioner serve` running? see --api)")]
    Unreachable {
        /// The address.
        target: Listen,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed while the request was sent or the answer read.
    #[error("{target}: {source}")]
    Http {
        /// The address.
        target: Listen,
        /// Why.
        source: hyper::Error,
    },
    /// The answer is longer than [`MAX_ANSWER_BYTES`]; it was not read further.
    #[error("{target}: the answer is longer than {MAX_ANSWER_BYTES} bytes")]
    TooLarge {
        /// The address.
        target: Listen,
    },
    /// The request could not be built (a path that is not a URI path).
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
}

/// The most of an answer read; a longer one is an error ([`CallError::TooLarge`]).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// A resolved API endpoint.
pub struct Api {
    target: Listen,
    token: Option<String>,
}

impl Api {
    /// From the command line, the environment and the daemon's configuration.
    ///
    /// # Errors
    /// [`ResolveError`]: a bad address, an unreadable token or configuration; the text
    /// names it.
    pub fn resolve(args: &ApiArgs) -> Result<Api, ResolveError> {
        let config = match &args.config {
            Some(path) => Some(crate::daemon::config::load(path)?),
            None => None,
        };
        let target = match (&args.api, &config) {
            (Some(url), _) => Listen::parse(url).map_err(ResolveError::Api)?,
            (None, Some(c)) => c.listen.clone(),
            (None, None) => Listen::parse(DEFAULT_LISTEN).map_err(ResolveError::Default)?,
        };
        let token = match (&args.token_file, &config) {
            (Some(file), _) => Some(read_token(file)?),
            (None, Some(c)) => c.token.as_ref().map(|t| t.as_str().to_owned()),
            (None, None) => None,
        };
        Ok(Api { target, token })
    }

    /// Sends one request; returns the status and the body (at most [`MAX_ANSWER_BYTES`]).
    ///
    /// # Errors
    /// [`CallError`], when the daemon cannot be reached or the connection fails; the text
    /// names the address.
    ///
    /// # Cancellation
    /// Dropping the future closes the connection; the daemon may have received the request.
    pub async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Vec<u8>), CallError> {
        let resp = self.open(method, path, body).await?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect().await;
        let body = match body {
            Ok(b) => b.to_bytes(),
            Err(e) => match e.downcast::<hyper::Error>() {
                Ok(e) => return Err(self.failed(*e)),
                Err(_) => return Err(CallError::TooLarge { target: self.target.clone() }),
            },
        };
        Ok((status, body.to_vec()))
    }

    /// Sends one request; returns the answer with its body not yet read (an event stream).
    ///
    /// # Errors
    /// As [`Api::call`].
    ///
    /// # Cancellation
    /// As [`Api::call`]; dropping the answer closes the connection.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CallError> {
        let io: Box<dyn crate::daemon::http::AsyncIo> = match &self.target {
            Listen::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await.map_err(|e| self.unreachable(e))?),
            Listen::Unix(path) => {
                Box::new(tokio::net::UnixStream::connect(path).await.map_err(|e| self.unreachable(e))?)
            }
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| self.failed(e))?;
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header(HOST, "loom-provisioner");
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        sender.send_request(req).await.map_err(|e| self.failed(e))
    }

    /// Where the daemon is, as `--api` takes it.
    pub fn target(&self) -> &Listen {
        &self.target
    }

    fn unreachable(&self, source: std::io::Error) -> CallError {
        CallError::Unreachable { target: self.target.clone(), source }
    }

    fn failed(&self, source: hyper::Error) -> CallError {
        CallError::Http { target: self.target.clone(), source }
    }
}

fn read_token(file: &Path) -> Result<String, ResolveError> {
    std::fs::read_to_string(file)
        .map(|t| t.trim().to_owned())
        .map_err(|source| ResolveError::Token { path: file.to_path_buf(), source })
}

/// `submit`: sends each task; with `wait`, prints each result line as `run` does.
pub async fn submit(api: &Api, tasks: Vec<crate::wire::envelope::TaskEnvelope>, wait: bool) -> Exit {
    let mut all_ok = true;
    for task in tasks {
        let path = if wait { "/v1/tasks?wait=true" } else { "/v1/tasks" };
        let (status, body) = match api.call(Method::POST, path, Some(task.raw().get().as_bytes().to_vec())).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("loom-provisioner: {e}");
                return Exit::Usage;
            }
        };
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match status {
            200 | 202 if wait => match v.get("result") {
                Some(result) => {
                    all_ok &= result["status"] == 0;
                    println!("{result}");
                }
                None => {
                    all_ok = false;
                    println!("{v}");
                }
            },
            200 | 202 => println!("{v}"),
            _ => {
                all_ok = false;
                let why = v.get("error").and_then(Value::as_str).unwrap_or("no reason given");
                eprintln!("loom-provisioner: task {}: the daemon answered {status}: {why}", task.task_id);
                if matches!(status, 400 | 401 | 413) {
                    return Exit::Usage;
                }
            }
        }
    }
    Exit::ok_if(all_ok)
}

/// `status`: the daemon's health and plugins, or one task.
pub async fn status(api: &Api, task: Option<&str>, json: bool) -> Exit {
    let path = match task {
        Some(id) => format!("/v1/tasks/{id}"),
        None => "/v1/plugins".to_owned(),
    };
    let (code, body) = match api.call(Method::GET, &path, None).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loom-provisioner: {e}");
            return Exit::Usage;
        }
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if code != 200 {
        eprintln!(
            "loom-provisioner: the daemon answered {code}: {}",
            v.get("error").and_then(Value::as_str).unwrap_or("")
        );
        return if code == 404 { Exit::Failed } else { Exit::Usage };
    }
    if json || task.is_some() {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Exit::Success;
    }
    let health =
        api.call(Method::GET, "/healthz", None).await.ok().and_then(|(_, b)| serde_json::from_slice::<Value>(&b).ok());
    if let Some(h) = health {
        println!(
            "{}: {}",
            api.target,
            h.get("summary").and_then(Value::as_str).or_else(|| h["status"].as_str()).unwrap_or("")
        );
    }
    for p in v["plugins"].as_array().into_iter().flatten() {
        let name = format!("{} {}", p["kind"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or(""));
        if p["runnable"] == false {
            println!("  {name:<28} not runnable: {}", p["reason"].as_str().unwrap_or(""));
            continue;
        }
        for (i, inst) in p["instances"].as_array().into_iter().flatten().enumerate() {
            let pid = inst["pid"].as_u64().map_or("-".to_owned(), |p| p.to_string());
            let last = inst["lastError"]
                .as_str()
                .map(|e| format!("  last error: {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default();
            println!(
                "  {name:<28} #{i} {:<10} pid {pid:<8} restarts {:<3} in flight {:<3} queued {}{last}",
                inst["phase"].as_str().unwrap_or(""),
                inst["restarts"],
                inst["inFlight"],
                p["queued"]
            );
        }
    }
    Exit::Success
}
