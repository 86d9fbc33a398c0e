//! Cluster level: `loom-provisioner cluster up` of N `local` machines with the `shell`
//! automator running `bench/cluster/app.sh` (install, configure, start), against
//! ansible-playbook (`bench/cluster/playbook.yml`) running the same script over SSH on
//! the same machines. Both get the same parallelism ([`PARALLEL`] slots: more only
//! thrashes 2 cores, for both) and run as the same user; ansible with fact gathering off
//! and pipelining on, its fastest setup.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::supervised::TempDir;

/// The programs a round needs.
pub struct Tools {
    provisioner: PathBuf,
    local: PathBuf,
    shell: PathBuf,
    ansible: PathBuf,
    scripts: PathBuf,
}

/// Seconds one round took.
pub struct Round {
    /// `cluster up`, machines included.
    pub loom_up: f64,
    /// Of that, the services' steps: first BOOTSTRAP started to last START finished.
    pub loom_services: f64,
    /// ansible-playbook, from start to exit.
    pub ansible: f64,
    /// Milliseconds one remote command (`true`) takes on an open SSH connection to a
    /// machine: sshd's session plus the login shell's start-up, which every step of
    /// both tools pays.
    pub command_ms: f64,
}

/// Tasks at once, for both tools (Loom's default `parallel`; ansible's `--forks`).
pub const PARALLEL: u32 = 8;

/// Where a Python virtual environment with ansible-core is made when `ansible-playbook`
/// is not on PATH.
const ANSIBLE_VENV: &str = "/tmp/loom-bench-ansible";

impl Tools {
    /// Finds the binaries next to `bin` and ansible-playbook (installing ansible-core
    /// from PyPI into a virtual environment if needed).
    ///
    /// # Errors
    /// When a binary is missing or ansible-core cannot be installed.
    pub fn prepare(sibling: impl Fn(&str, &str) -> Result<PathBuf, String>) -> Result<Tools, String> {
        let scripts = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster"));
        if !scripts.join("app.sh").is_file() {
            return Err(format!("{} has no app.sh", scripts.display()));
        }
        Ok(Tools {
            provisioner: sibling("loom-provisioner", "loom-supervisor")?,
            local: sibling("loom-plugin-local", "loom-plugin-local")?,
            shell: sibling("loom-plugin-shell", "loom-plugin-shell")?,
            ansible: ansible_playbook()?,
            scripts,
        })
    }
}

fn ansible_playbook() -> Result<PathBuf, String> {
    if let Ok(found) = which::which("ansible-playbook") {
        return Ok(found);
    }
    let venv = PathBuf::from(ANSIBLE_VENV);
    let exe = venv.join("bin/ansible-playbook");
    if !exe.is_file() {
        eprintln!("loom-bench: installing ansible-core from PyPI into {ANSIBLE_VENV}");
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
        run(Command::new(venv.join("bin/pip")).args(["-q", "install", "ansible-core"]), "pip install ansible-core")?;
    }
    Ok(exe)
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stdout: Vec<&str> = stdout.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("{what} failed ({}):\n{}\n{}", out.status, stdout.join("\n"), tail.join("\n")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Brings up `nodes` machines with Loom, runs the playbook on them, takes them down.
///
/// # Errors
/// When either side fails or did not do the work.
pub fn round(tools: &Tools, nodes: u32, tag: &str) -> Result<Round, String> {
    let dir = TempDir::new("cluster")?;
    let name = format!("bench{nodes}-{tag}");
    let plugins = dir.0.join("plugins");
    write_json(
        &plugins.join("providers/local/local.json"),
        &json!({"local": {"executable": tools.local, "user": "root", "maxConcurrency": 64, "keepDescendants": true,
            "timeouts": {"CREATE": 120, "CONFIRM": 120, "DELETE": 120}, "settings": {"network": "loopback"}}}),
    )?;
    write_json(
        &plugins.join("automators/shell/shell.json"),
        &json!({"shell": {"executable": tools.shell, "user": "root", "maxConcurrency": 64, "timeouts": {"default": 300},
            "settings": {"scripts": tools.scripts, "sudo": false}}}),
    )?;
    let loom_root = dir.0.join("apps-loom");
    // Coopr's `fields.args`: passed as shell words.
    let action = |a: &str| json!({"type": "shell", "fields": {"script": "app.sh", "args": format!("{a} {{node}} {}", loom_root.display())}});
    let spec = dir.0.join("spec.json");
    write_json(
        &spec,
        &json!({"name": name, "provider": {"name": "local", "fields": {}}, "pluginDirs": [plugins],
            "parallel": PARALLEL.min(nodes),
            "nodeGroups": [{"name": "app", "count": nodes, "hostname": "app-{n}.bench", "services": ["app"]}],
            "services": {"app": {"actions": {"install": action("install"), "configure": action("configure"), "start": action("start")}}}}),
    )?;
    let data = dir.0.join("data");
    let loom = |args: &[&str]| {
        let mut cmd = Command::new(&tools.provisioner);
        cmd.args(["cluster"]).args(args).env("LOOM_DATA_DIR", &data).stderr(Stdio::piped());
        cmd
    };
    let began = Instant::now();
    let up = run(loom(&["up"]).arg(&spec).args(["--progress", "none", "--json"]), "loom-provisioner cluster up");
    let loom_up = began.elapsed().as_secs_f64();
    // Whatever happens next, the machines go.
    let _down = Down(loom(&["down", &name, "--force", "--progress", "none"]));
    let up: Value = serde_json::from_str(&up?).map_err(|e| format!("cluster up printed no JSON: {e}"))?;
    let failed = up["outcome"]["failed"].as_array().map_or(0, Vec::len);
    if failed > 0 {
        return Err(format!("cluster up: {failed} steps failed: {}", up["outcome"]["failed"]));
    }
    let status = run(&mut loom(&["status", &name, "--json", "--tasks"]), "loom-provisioner cluster status")?;
    let status: Value = serde_json::from_str(&status).map_err(|e| format!("cluster status printed no JSON: {e}"))?;
    let loom_services = services_span(&status)?;

    let inventory = dir.0.join("inventory.ini");
    std::fs::write(&inventory, inventory_of(&status)?).map_err(|e| e.to_string())?;
    let ansible_root = dir.0.join("apps-ansible");
    let control = dir.0.join("cp");
    std::fs::create_dir_all(&control).map_err(|e| e.to_string())?;
    let began = Instant::now();
    run(
        Command::new(&tools.ansible)
            .arg("-i")
            .arg(&inventory)
            .args(["-f", &PARALLEL.min(nodes).to_string()])
            .arg(tools.scripts.join("playbook.yml"))
            .arg("-e")
            .arg(format!("scripts={} root={}", tools.scripts.display(), ansible_root.display()))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &control)
            .env("ANSIBLE_LOCAL_TEMP", dir.0.join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False"),
        "ansible-playbook",
    )?;
    let ansible = began.elapsed().as_secs_f64();

    for root in [&loom_root, &ansible_root] {
        let done = (1..=nodes).filter(|n| root.join(format!("{name}-app-{n}/app.pid")).is_file()).count();
        if done != nodes as usize {
            return Err(format!("only {done} of {nodes} nodes were set up under {}", root.display()));
        }
    }
    let command_ms = remote_command_ms(&status, &dir.0)?;
    Ok(Round { loom_up, loom_services, ansible, command_ms })
}

/// The median of ten `ssh ... true` on one multiplexed OpenSSH connection to the first
/// machine (the connection is opened first, so only the command is timed).
fn remote_command_ms(status: &Value, dir: &Path) -> Result<f64, String> {
    let node = status["nodes"].get(0).ok_or("cluster status has no nodes")?;
    let port = node["ssh"]["port"].as_u64().ok_or("a node has no SSH port")?.to_string();
    let key = node["ssh"]["identityfile"].as_str().ok_or("a node has no identity file")?;
    let host = format!("{}@{}", node["ssh"]["user"].as_str().unwrap_or("root"), node["address"].as_str().unwrap_or(""));
    let control = dir.join("cm");
    let ssh = |extra: &[&str]| {
        let mut cmd = Command::new("ssh");
        cmd.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=error"])
            .args(["-o", "BatchMode=yes", "-i", key, "-p", &port, "-o"])
            .arg(format!("ControlPath={}", control.display()))
            .args(extra)
            .arg(&host)
            .arg("true");
        cmd
    };
    run(&mut ssh(&["-o", "ControlMaster=yes", "-o", "ControlPersist=30", "-f"]), "ssh (opening a connection)")?;
    let mut times = Vec::new();
    for _ in 0..10 {
        let began = Instant::now();
        run(&mut ssh(&[]), "ssh true")?;
        times.push(began.elapsed().as_secs_f64() * 1e3);
    }
    let _ = run(&mut ssh(&["-O", "exit"]), "ssh -O exit");
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs its command when dropped (the cluster's teardown).
struct Down(Command);

impl Drop for Down {
    fn drop(&mut self) {
        if let Err(e) = run(&mut self.0, "loom-provisioner cluster down") {
            eprintln!("loom-bench: {e}");
        }
    }
}

fn write_json(path: &Path, value: &Value) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    std::fs::write(path, value.to_string()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Seconds from the first service step's start to the last one's end.
fn services_span(status: &Value) -> Result<f64, String> {
    let steps: Vec<&Value> = status["tasks"]
        .as_array()
        .ok_or("cluster status has no tasks")?
        .iter()
        .filter(|t| matches!(t["taskName"].as_str(), Some("BOOTSTRAP" | "INSTALL" | "CONFIGURE" | "START")))
        .collect();
    let first = steps.iter().filter_map(|t| t["startedMs"].as_i64()).min().ok_or("no service steps")?;
    let last = steps.iter().filter_map(|t| t["finishedMs"].as_i64()).max().ok_or("no service steps")?;
    Ok((last - first) as f64 / 1e3)
}

/// An INI inventory of the cluster's machines, named by node id.
fn inventory_of(status: &Value) -> Result<String, String> {
    let mut ini = String::from("[all]\n");
    for node in status["nodes"].as_array().ok_or("cluster status has no nodes")? {
        let field = |v: &Value, what: &str| v.as_str().map(str::to_owned).ok_or(format!("a node has no {what}"));
        let ssh = &node["ssh"];
        ini.push_str(&format!(
            "{} ansible_host={} ansible_port={} ansible_user={} ansible_ssh_private_key_file={}\n",
            field(&node["id"], "id")?,
            field(&node["address"], "address")?,
            ssh["port"].as_u64().ok_or("a node has no SSH port")?,
            field(&ssh["user"], "SSH user")?,
            field(&ssh["identityfile"], "identity file")?,
        ));
    }
    Ok(ini)
}
