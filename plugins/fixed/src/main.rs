//! `loom-plugin-fixed`: machines you already own.
//!
//! The provider's fields list the hosts (`config.provider.provisioner.hosts`, each with its
//! address, optional hostname and port, and `ssh-auth`). CREATE claims a free host, durably
//! (a claims file under an exclusive lock: two CREATEs never get the same host, also across
//! processes and restarts); CONFIRM logs in over SSH and returns the addresses, hostname
//! and host key; DELETE releases the host. DELETE of an unknown id succeeds.

mod claims;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loom_plugin_sdk::{Context, Map, Plugin, Provider, Task, TaskError, TaskOutcome, TaskResult, Value, json};
use loom_plugin_ssh::{Session, Target, host_keys_json};

use crate::claims::{Claim, Locked};

struct Fixed {
    state_file: PathBuf,
    connect_timeout: Duration,
    /// Claims are changed by one task of this process at a time; the file lock covers
    /// other processes.
    local: tokio::sync::Mutex<()>,
}

/// One host from the provider's fields.
struct Host {
    address: String,
    port: u16,
    hostname: Option<String>,
    ssh_auth: Map<String, Value>,
}

impl Host {
    fn key(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    fn providerid(&self) -> String {
        format!("fixed:{}", self.key())
    }

    /// The host's `ssh-auth`, with its port.
    fn ssh_auth(&self) -> Value {
        let mut auth = self.ssh_auth.clone();
        auth.insert("port".into(), self.port.into());
        Value::Object(auth)
    }
}

impl Provider for Fixed {
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        self.state_file = match settings.get("stateFile") {
            Some(Value::String(p)) if !p.is_empty() => std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p)),
            Some(_) => return Err(TaskError::new("settings.stateFile must be a path")),
            None => default_state_file(),
        };
        if let Some(v) = settings.get("connectTimeoutSecs") {
            self.connect_timeout = v
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| TaskError::new("settings.connectTimeoutSecs must be a number of seconds"))?;
        }
        Ok(())
    }

    async fn create(&self, task: Task, ctx: Context) -> TaskOutcome {
        let hosts = hosts(&task)?;
        let _one_at_a_time = self.local.lock().await;
        let (host, reused) = self.claim(&task, hosts).await?;
        ctx.info(format!(
            "{} {} for node {}",
            if reused { "kept" } else { "claimed" },
            host.key(),
            task.node_id.as_deref().unwrap_or("?")
        ));
        Ok(TaskResult::ok().with("providerid", host.providerid()).with("ssh-auth", host.ssh_auth()))
    }

    async fn confirm(&self, task: Task, ctx: Context) -> TaskOutcome {
        let host = self.host_of(&task)?;
        let mut target = Target::from_ssh_auth(host.address.clone(), &host.ssh_auth)?;
        target.port = host.port;
        ctx.progress(format!("logging in to {target:?}"), None);
        let session = tokio::select! {
            s = Session::connect(&target, self.connect_timeout) => s?,
            () = ctx.cancelled() => return Err(TaskError::new("cancelled while connecting")),
        };
        let keys = host_keys_json(session.host_key());
        session.close().await;
        let mut result = TaskResult::ok().with("ipaddress", host.address.clone()).with("ssh_host_keys", keys);
        result.hostname = Some(host.hostname.clone().unwrap_or_else(|| host.address.clone()));
        result.ipaddresses = Some(json!({"access_v4": host.address, "bind_v4": host.address}));
        Ok(result)
    }

    async fn delete(&self, task: Task, ctx: Context) -> TaskOutcome {
        let Some(id) = task.config.get("providerid").and_then(Value::as_str).map(str::to_owned) else {
            return Ok(TaskResult { stdout: "no providerid: nothing to release\n".into(), ..TaskResult::ok() });
        };
        let _one_at_a_time = self.local.lock().await;
        let path = self.state_file.clone();
        let released = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
            let mut locked = Locked::open(&path)?;
            let key = locked.claims.claims.iter().find(|(_, c)| c.providerid == id).map(|(k, _)| k.clone());
            if let Some(k) = &key {
                locked.claims.claims.remove(k);
                locked.save()?;
            }
            Ok(key)
        })
        .await
        .map_err(|e| TaskError::new(e.to_string()))?
        .map_err(TaskError::new)?;
        let stdout = match released {
            Some(k) => {
                ctx.info(format!("released {k}"));
                format!("released {k}\n")
            }
            None => "not claimed: nothing to release\n".to_owned(),
        };
        Ok(TaskResult { stdout, ..TaskResult::ok() })
    }
}

impl Fixed {
    /// Claims a free host for the task's node, or returns the one it already holds (Loom
    /// retries CREATE).
    async fn claim(&self, task: &Task, hosts: Vec<Host>) -> Result<(Host, bool), TaskError> {
        let path = self.state_file.clone();
        let (cluster, node) = (task.cluster_id.clone(), task.node_id.clone());
        let keys: Vec<String> = hosts.iter().map(Host::key).collect();
        let picked = tokio::task::spawn_blocking(move || -> Result<(usize, bool), String> {
            let mut locked = Locked::open(&path)?;
            let claims = &mut locked.claims.claims;
            if node.is_some()
                && let Some(i) = keys
                    .iter()
                    .position(|k| claims.get(k).is_some_and(|c| c.node_id == node && c.cluster_id == cluster))
            {
                return Ok((i, true));
            }
            let Some(i) = keys.iter().position(|k| !claims.contains_key(k)) else {
                return Err(format!(
                    "all {} hosts are claimed; DELETE a node to free one, or list more hosts",
                    keys.len()
                ));
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            claims.insert(
                keys[i].clone(),
                Claim { providerid: format!("fixed:{}", keys[i]), cluster_id: cluster, node_id: node, claimed_at: now },
            );
            locked.save()?;
            Ok((i, false))
        })
        .await
        .map_err(|e| TaskError::new(e.to_string()))?
        .map_err(TaskError::new)?;
        let (i, reused) = picked;
        let host = hosts.into_iter().nth(i).ok_or_else(|| TaskError::new("internal: host index out of range"))?;
        Ok((host, reused))
    }

    /// The host named by `config.providerid`, from the provider's fields.
    fn host_of(&self, task: &Task) -> Result<Host, TaskError> {
        let id = task
            .config
            .get("providerid")
            .and_then(Value::as_str)
            .ok_or_else(|| TaskError::new("config.providerid is missing: CONFIRM needs the id CREATE returned"))?;
        hosts(task)?
            .into_iter()
            .find(|h| h.providerid() == id)
            .ok_or_else(|| TaskError::new(format!("{id} is not among the hosts in config.provider.provisioner.hosts")))
    }
}

/// `config.provider.provisioner.hosts`.
fn hosts(task: &Task) -> Result<Vec<Host>, TaskError> {
    let list = task.provider_fields().and_then(|f| f.get("hosts")).and_then(Value::as_array).ok_or_else(|| {
        TaskError::new("config.provider.provisioner.hosts is missing: list the machines this provider hands out")
    })?;
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let at = |what: &str| TaskError::new(format!("config.provider.provisioner.hosts[{i}]: {what}"));
            let address = h
                .get("address")
                .or_else(|| h.get("ipaddress"))
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| at("address is missing"))?
                .to_owned();
            let port = match h.get("port").or_else(|| h.get("ssh-auth").and_then(|a| a.get("port"))) {
                None => 22,
                Some(p) => p
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| at("port must be a port number"))?,
            };
            let ssh_auth =
                h.get("ssh-auth").and_then(Value::as_object).cloned().ok_or_else(|| at("ssh-auth is missing"))?;
            let hostname = h.get("hostname").and_then(Value::as_str).map(str::to_owned);
            Ok(Host { address, port, hostname, ssh_auth })
        })
        .collect()
}

fn default_state_file() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/loom-provisioner/fixed-claims.json");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("loom-provisioner/fixed-claims.json")
}

fn main() -> ExitCode {
    let fixed = Fixed {
        state_file: PathBuf::new(),
        connect_timeout: Duration::from_secs(30),
        local: tokio::sync::Mutex::new(()),
    };
    Plugin::new("fixed", env!("CARGO_PKG_VERSION")).max_concurrency(16).serve_provider(fixed)
}
