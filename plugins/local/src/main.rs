//! `loom-plugin-local`: machines on this host, for trying Loom out and for tests.
//!
//! - CREATE makes a folder under the state folder with a new host key, a login key and an
//!   sshd configuration, and starts that sshd: on a free port of 127.0.0.1, or (as root,
//!   with `"network": "netns"`) on port 22 inside a new network namespace with its own
//!   address on a bridge. It returns `providerid` and `ssh-auth` (user, key file, port).
//! - CONFIRM waits until the sshd answers and returns the addresses, the hostname and the
//!   host key (`ssh_host_keys`), which the shell automator then pins.
//! - DELETE stops everything the machine runs (its sshd and every process started through
//!   it), removes the namespace and the folder. An unknown id is not an error.

mod machine;
mod netns;
mod procs;
mod sshd;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use loom_plugin_sdk::{Context, Map, Plugin, Provider, Task, TaskError, TaskOutcome, TaskResult, Value, json};
use tokio::sync::Mutex;

use crate::machine::{Folder, Machine, Network};
use crate::netns::Net;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

struct Local {
    state_dir: PathBuf,
    network: Network,
    net: Net,
    sshd: PathBuf,
    keygen: PathBuf,
    user: String,
    confirm_timeout: Duration,
    /// Extra sshd_config lines.
    sshd_options: Vec<String>,
    /// For exercising retries: how many times each task fails on purpose, per hostname.
    fail_first: HashMap<String, u64>,
    /// Serialises address allocation in netns mode within this process; a lock file does
    /// it across processes.
    allocating: Mutex<()>,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            state_dir: PathBuf::new(),
            network: Network::Loopback,
            net: Net { bridge: "loombr0".into(), base: Ipv4Addr::new(10, 213, 0, 0) },
            sshd: PathBuf::from("/usr/sbin/sshd"),
            keygen: PathBuf::from("ssh-keygen"),
            user: String::new(),
            confirm_timeout: CONFIRM_TIMEOUT,
            sshd_options: Vec::new(),
            fail_first: HashMap::new(),
            allocating: Mutex::new(()),
        }
    }
}

impl Provider for Local {
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        let root = nix::unistd::geteuid().is_root();
        let text = |k: &str| -> Result<Option<String>, TaskError> {
            match settings.get(k) {
                None => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(TaskError::new(format!("settings.{k} must be a non-empty string"))),
            }
        };
        self.state_dir = match text("stateDir")? {
            Some(d) => std::path::absolute(&d).unwrap_or_else(|_| PathBuf::from(d)),
            None => default_state_dir(root),
        };
        self.network = match text("network")?.as_deref() {
            None | Some("loopback") => Network::Loopback,
            Some("netns") if root => Network::Netns,
            Some("netns") => {
                return Err(TaskError::new(
                    "settings.network \"netns\" needs root: run the supervisor as root or use \"loopback\"",
                ));
            }
            Some(other) => {
                return Err(TaskError::new(format!(
                    "settings.network must be \"loopback\" or \"netns\", not {other:?}"
                )));
            }
        };
        if let Some(b) = text("bridge")? {
            if b.len() > 15 {
                return Err(TaskError::new("settings.bridge: an interface name has at most 15 characters"));
            }
            self.net.bridge = b;
        }
        if let Some(s) = text("subnet")? {
            let base: Ipv4Addr = s
                .trim_end_matches("/16")
                .parse()
                .map_err(|_| TaskError::new("settings.subnet must look like 10.213.0.0/16"))?;
            self.net.base = base;
        }
        self.sshd = match text("sshd")? {
            Some(p) => PathBuf::from(p),
            None => which::which("sshd").unwrap_or_else(|_| PathBuf::from("/usr/sbin/sshd")),
        };
        if !self.sshd.is_file() {
            return Err(TaskError::new(format!(
                "sshd not found at {}: install openssh-server (apt-get install openssh-server) or set settings.sshd",
                self.sshd.display()
            )));
        }
        self.keygen = which::which("ssh-keygen")
            .map_err(|_| TaskError::new("ssh-keygen not found on PATH: install openssh-client"))?;
        self.user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or_else(|| TaskError::new("cannot tell this process's user name"))?;
        if let Some(v) = settings.get("confirmTimeoutSecs") {
            self.confirm_timeout = v
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| TaskError::new("settings.confirmTimeoutSecs must be a number of seconds"))?;
        }
        self.sshd_options = match settings.get("sshdOptions") {
            None => Vec::new(),
            Some(Value::Array(lines)) => lines
                .iter()
                .map(|l| match l.as_str() {
                    Some(s) if !s.contains('\n') => Ok(s.to_owned()),
                    _ => Err(TaskError::new("settings.sshdOptions must be an array of sshd_config lines")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(TaskError::new("settings.sshdOptions must be an array of sshd_config lines")),
        };
        self.fail_first = match settings.get("failFirst") {
            None => HashMap::new(),
            Some(Value::Object(o)) => o
                .iter()
                .map(|(task, n)| match (task.as_str(), n.as_u64()) {
                    ("CREATE" | "CONFIRM" | "DELETE", Some(n)) => Ok((task.clone(), n)),
                    _ => Err(TaskError::new(
                        "settings.failFirst must map CREATE, CONFIRM or DELETE to a count, e.g. {\"CONFIRM\": 1}",
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(TaskError::new("settings.failFirst must be an object, e.g. {\"CONFIRM\": 1}")),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)
            .map_err(|e| TaskError::new(format!("cannot create the state folder {}: {e}", self.state_dir.display())))?;
        if root && !Path::new("/run/sshd").is_dir() {
            // sshd started as root wants its privilege separation folder.
            let _ = std::fs::DirBuilder::new().recursive(true).mode(0o755).create("/run/sshd");
        }
        Ok(())
    }

    async fn create(&self, task: Task, ctx: Context) -> TaskOutcome {
        self.planned_failure("CREATE", &task)?;
        refuse_a_cgroup_of_its_own()?;
        let id = new_id();
        let folder = Folder::new(&self.state_dir, &id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&folder.dir)
            .map_err(|e| TaskError::new(format!("cannot create {}: {e}", folder.dir.display())))?;
        match self.build(&task, &folder, &id, &ctx).await {
            Ok(m) => {
                ctx.info(format!("machine {id} is starting: sshd on {}:{}", m.address, m.port));
                let ssh_auth = json!({"user": m.user, "identityfile": folder.client_key(), "port": m.port});
                Ok(TaskResult::ok().with("providerid", id).with("ssh-auth", ssh_auth))
            }
            Err(e) => {
                // Nothing half-made may stay behind.
                self.destroy(&folder).await;
                Err(TaskError::new(format!("CREATE failed: {e}")).with_status(1))
            }
        }
    }

    async fn confirm(&self, task: Task, ctx: Context) -> TaskOutcome {
        self.planned_failure("CONFIRM", &task)?;
        let (folder, m) = self.machine(&task)?;
        let addr = format!("{}:{}", m.address, m.port);
        ctx.progress(format!("waiting for sshd on {addr}"), Some(0.0));
        tokio::select! {
            ready = sshd::wait_ready(&folder, &addr, self.confirm_timeout) => ready.map_err(TaskError::new)?,
            () = ctx.cancelled() => return Err(TaskError::new(format!("cancelled while waiting for {addr}"))),
        }
        let host_key = std::fs::read_to_string(folder.host_key().with_extension("pub"))
            .map_err(|e| TaskError::new(format!("cannot read the host key of {}: {e}", m.id)))?;
        let host_key = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let hostname = task.config.get("hostname").and_then(Value::as_str).map_or_else(|| m.id.clone(), str::to_owned);
        let mut result =
            TaskResult::ok().with("ipaddress", m.address.clone()).with("ssh_host_keys", json!({"ed25519": host_key}));
        result.hostname = Some(hostname);
        result.ipaddresses = Some(json!({"access_v4": m.address, "bind_v4": m.address}));
        Ok(result)
    }

    async fn delete(&self, task: Task, ctx: Context) -> TaskOutcome {
        self.planned_failure("DELETE", &task)?;
        let Some(id) = task.config.get("providerid").and_then(Value::as_str) else {
            return Ok(TaskResult { stdout: "no providerid: nothing to delete\n".into(), ..TaskResult::ok() });
        };
        let folder = self.folder_of(id)?;
        if !folder.dir.exists() {
            ctx.debug(format!("machine {id} is not known here: nothing to delete"));
            return Ok(TaskResult { stdout: format!("machine {id} does not exist\n"), ..TaskResult::ok() });
        }
        self.destroy(&folder).await;
        ctx.info(format!("machine {id} deleted"));
        Ok(TaskResult { stdout: format!("machine {id} deleted\n"), ..TaskResult::ok() })
    }
}

impl Local {
    /// `settings.failFirst`: fails the first N `task`s of each hostname, counting in
    /// `<stateDir>/faults/`, so that tests can watch retries happen.
    fn planned_failure(&self, task: &str, t: &Task) -> Result<(), TaskError> {
        let Some(&limit) = self.fail_first.get(task) else { return Ok(()) };
        let host = t.config.get("hostname").and_then(Value::as_str).unwrap_or("unnamed");
        let host: String =
            host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
        let dir = self.state_dir.join("faults");
        let file = dir.join(format!("{task}-{host}"));
        let done: u64 = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        if done >= limit {
            return Ok(());
        }
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(&file, (done + 1).to_string());
        Err(TaskError::new(format!("{task} of {host} failed on purpose ({} of {limit}, settings.failFirst)", done + 1)))
    }

    /// Everything CREATE does after making the folder.
    async fn build(&self, task: &Task, folder: &Folder, id: &str, ctx: &Context) -> Result<Machine, String> {
        sshd::make_keys(&self.keygen, folder).await?;
        let mut m = Machine {
            id: id.to_owned(),
            network: self.network,
            address: "127.0.0.1".into(),
            port: 22,
            user: self.user.clone(),
            netns: None,
            veth: None,
            cluster_id: task.cluster_id.clone(),
            node_id: task.node_id.clone(),
        };
        let mut prefix = Vec::new();
        match self.network {
            Network::Loopback => m.port = sshd::free_port()?,
            Network::Netns => {
                let _here = self.allocating.lock().await;
                let _everywhere = lock_file(&self.state_dir).await?;
                let taken: Vec<String> = machine::all(&self.state_dir).into_iter().map(|o| o.address).collect();
                let address = (0..0xFFFD)
                    .filter_map(|n| self.net.address(n))
                    .find(|a| !taken.contains(&a.to_string()))
                    .ok_or("no free address left on the bridge's network")?;
                let short = id.trim_start_matches("local-");
                let (ns, veth) = (format!("loom-{short}"), format!("lm{short}"));
                m.address = address.to_string();
                m.netns = Some(ns.clone());
                m.veth = Some(veth.clone());
                // Recorded before anything exists, so DELETE can clean up a half-made machine.
                folder.save(&m).map_err(|e| e.to_string())?;
                self.net.create(&ns, &veth, address).await?;
                prefix = vec!["ip".into(), "netns".into(), "exec".into(), ns];
            }
        }
        folder.save(&m).map_err(|e| e.to_string())?;
        std::fs::write(folder.sshd_config(), sshd::config(folder, &m, &self.sshd_options))
            .map_err(|e| e.to_string())?;
        ctx.debug(format!("starting {} for {id}", self.sshd.display()));
        sshd::start(&self.sshd, folder, &prefix).await?;
        Ok(m)
    }

    /// Stops every process of the machine, removes its namespace and its folder.
    async fn destroy(&self, folder: &Folder) {
        let record = folder.load().ok();
        let id = folder.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut pids = procs::with_env(sshd::MACHINE_ENV, &id);
        pids.extend(sshd::pid(folder));
        if let Some(ns) = record.as_ref().and_then(|m| m.netns.as_deref()) {
            pids.extend(netns::pids(ns).await);
        }
        pids.sort_unstable();
        pids.dedup();
        procs::stop(&pids, Duration::from_secs(2)).await;
        if let Some(m) = &record
            && let (Some(ns), Some(veth)) = (&m.netns, &m.veth)
        {
            netns::destroy(ns, veth).await;
        }
        let _ = std::fs::remove_dir_all(&folder.dir);
        if self.network == Network::Netns {
            self.remove_bridge_if_unused().await;
        }
    }

    /// The bridge goes with the last netns machine.
    async fn remove_bridge_if_unused(&self) {
        let _here = self.allocating.lock().await;
        let Ok(_everywhere) = lock_file(&self.state_dir).await else { return };
        if machine::all(&self.state_dir).iter().all(|m| m.network != Network::Netns) {
            netns::remove_bridge(&self.net.bridge).await;
        }
    }

    fn folder_of(&self, id: &str) -> Result<Folder, TaskError> {
        // The id names a folder: refuse anything that could climb out of the state folder.
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(TaskError::new(format!("providerid {id:?} is not a machine id of this provider")));
        }
        Ok(Folder::new(&self.state_dir, id))
    }

    fn machine(&self, task: &Task) -> Result<(Folder, Machine), TaskError> {
        let id = task
            .config
            .get("providerid")
            .and_then(Value::as_str)
            .ok_or_else(|| TaskError::new("config.providerid is missing: CONFIRM needs the id CREATE returned"))?;
        let folder = self.folder_of(id)?;
        let m = folder.load().map_err(|_| {
            TaskError::new(format!("unknown machine {id:?} (nothing under {})", self.state_dir.display()))
        })?;
        Ok((folder, m))
    }
}

/// An exclusive lock on the state folder, held until dropped.
async fn lock_file(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let path = state_dir.join(".lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn default_state_dir(root: bool) -> PathBuf {
    if root {
        return PathBuf::from("/var/lib/loom-local");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("loom-local")
}

/// `local-` and 8 hex digits, random.
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    format!("local-{:08x}", h.finish() as u32)
}

fn main() -> ExitCode {
    Plugin::new("local", env!("CARGO_PKG_VERSION")).max_concurrency(16).serve_provider(Local::default())
}

/// The folder a Loom supervisor makes for the cgroups of its plugins' processes.
const PLUGIN_CGROUPS: &str = "/loom-plugins/";

/// A machine is an sshd this process starts: in a cgroup of the provider's own, the
/// supervisor would kill it with the provider's process (at its stop, at a crash), long
/// before DELETE. Its manifest must say `keepDescendants`; refuse, saying so, rather than
/// hand out machines that vanish.
fn refuse_a_cgroup_of_its_own() -> Result<(), TaskError> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if in_plugin_cgroup(&cgroups) {
        return Err(TaskError::new(
            "CREATE refused: this provider runs in a cgroup of its own, which the supervisor kills with it, \
             machines included; add \"keepDescendants\": true to its manifest",
        )
        .with_status(1));
    }
    Ok(())
}

/// Whether `/proc/self/cgroup` puts this process in a cgroup made for one plugin process.
fn in_plugin_cgroup(proc_self_cgroup: &str) -> bool {
    proc_self_cgroup.lines().any(|l| l.split(':').nth(2).is_some_and(|path| path.contains(PLUGIN_CGROUPS)))
}

#[cfg(test)]
mod tests {
    use super::in_plugin_cgroup;

    #[test]
    fn a_cgroup_made_for_one_plugin_process_is_recognised_on_v2_and_beside_v1() {
        assert!(in_plugin_cgroup("0::/system.slice/loom-provisioner.service/loom-plugins/local-0-3-812\n"));
        assert!(in_plugin_cgroup("12:pids:/\n0::/user.slice/loom-plugins/local-0-0-99\n"));
        assert!(!in_plugin_cgroup("0::/system.slice/loom-provisioner.service/supervisor\n"));
        assert!(!in_plugin_cgroup("12:memory:/\n0::/\n"));
        assert!(!in_plugin_cgroup(""));
    }
}
