//! Harness for the end-to-end tests: builds the real binaries, lays out plugin folders,
//! runs `loom-provisioner` as a process, and finds processes a test left behind.
//!
//! Every plugin a test registers gets `LOOM_TEST_MARKER=<unique>` in its environment,
//! which its children inherit; [`Plugins::leftovers`] scans /proc for that marker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The folder with the workspace's binaries, built (or rebuilt) once per test process so
/// that tests never run stale binaries.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        // target/<profile>/deps/<this test> -> target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
    })
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// The `loom-provisioner` binary.
pub fn provisioner() -> PathBuf {
    bin_dir().join("loom-provisioner")
}

/// The misbehaving test plugin.
pub fn test_plugin() -> PathBuf {
    workspace().join("tests/plugins/testplugin.py")
}

/// A task as Loom sent it, with `config`.
pub fn task(id: &str, name: &str, config: Value) -> Value {
    json!({"taskId": id, "jobId": "job-1", "clusterId": "cluster-1", "taskName": name, "nodeId": "node-1", "config": config})
}

/// A service-action task for automator `automator`, with `test` behaviour for the test plugin.
pub fn action(id: &str, name: &str, automator: &str, test: Value) -> Value {
    task(
        id,
        name,
        json!({"service": {"name": "svc", "action": {"type": automator, "script": "true", "data": ""}}, "test": test}),
    )
}

/// A temporary plugins folder.
pub struct Plugins {
    dir: tempfile::TempDir,
    marker: String,
    /// State folders of `local` providers, to clean up after a failed test.
    local_states: std::sync::Mutex<Vec<PathBuf>>,
}

/// What a `run` printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: Option<i32>,
    /// The result lines, parsed, in the order printed.
    pub results: Vec<Value>,
    /// The supervisor's log.
    pub stderr: String,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Run {
    /// The result for `task_id`.
    pub fn result(&self, task_id: &str) -> &Value {
        self.results
            .iter()
            .find(|r| r["taskId"] == task_id)
            .unwrap_or_else(|| panic!("no result for {task_id}; results {:#?}\nlog:\n{}", self.results, self.stderr))
    }
}

impl Default for Plugins {
    fn default() -> Self {
        Self::new()
    }
}

impl Plugins {
    /// An empty plugins folder with a unique marker.
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let marker = format!("{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos());
        Plugins { dir: tempfile::tempdir().expect("tempdir"), marker, local_states: Default::default() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Registers a plugin of `kind` ("provider"/"automator") named `name` with `manifest`;
    /// the test marker is added to its `env`.
    pub fn add(&self, kind: &str, name: &str, mut manifest: Value) -> PathBuf {
        let folder = self.dir.path().join(format!("{kind}s")).join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        let env = manifest.as_object_mut().expect("object").entry("env").or_insert_with(|| json!({}));
        env["LOOM_TEST_MARKER"] = json!(self.marker);
        let path = folder.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&json!({ name: manifest })).expect("json")).expect("write");
        path
    }

    /// Registers the test plugin under `name`, with `extra` manifest keys.
    pub fn add_test_plugin(&self, kind: &str, name: &str, extra: Value) -> PathBuf {
        let mut manifest = json!({"executable": test_plugin(), "maxConcurrency": 8, "shutdownGraceSecs": 2});
        merge(&mut manifest, extra);
        self.add(kind, name, manifest)
    }

    /// A file in the plugins folder (for pid files).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `loom-provisioner run` on `tasks` (one JSON object per line on stdin).
    pub fn run(&self, tasks: &[Value], args: &[&str]) -> Run {
        let input: String = tasks.iter().map(|t| format!("{t}\n")).collect();
        self.run_input(&input, args)
    }

    /// Runs `loom-provisioner run` with `input` on stdin. Panics after 60 s.
    pub fn run_input(&self, input: &str, args: &[&str]) -> Run {
        self.run_env(input, args, &[])
    }

    /// Like [`Plugins::run_input`], with extra environment for the supervisor.
    pub fn run_env(&self, input: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(provisioner());
        cmd.arg("run").arg("--plugins-dir").arg(self.path()).args(args).envs(env.iter().copied());
        let started = Instant::now();
        let out = run_with_input(cmd, input, Duration::from_secs(60));
        Run {
            code: out.status.code(),
            results: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("result line {l:?}: {e}")))
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Starts `loom-provisioner run` on `tasks` without waiting for it; stdin is written
    /// and closed, stdout is piped, stderr discarded.
    pub fn spawn_run(&self, tasks: &[Value]) -> std::process::Child {
        let mut child = Command::new(provisioner())
            .args(["run", "--plugins-dir"])
            .arg(self.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn loom-provisioner");
        let mut stdin = child.stdin.take().expect("stdin");
        for t in tasks {
            writeln!(stdin, "{t}").expect("write a task");
        }
        child
    }

    /// Processes still alive (zombies included) that carry this folder's marker.
    pub fn leftovers(&self) -> Vec<String> {
        processes_with_env("LOOM_TEST_MARKER", &self.marker)
    }

    /// Asserts that no process of this folder's plugins is left.
    pub fn assert_no_leftovers(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "processes left behind: {left:#?}");
    }
}

impl Drop for Plugins {
    /// After a failed test, kills what it left behind so later tests start clean. (A
    /// passing test has already asserted that nothing is left.)
    fn drop(&mut self) {
        let mut pids = pids_with_env("LOOM_TEST_MARKER", &self.marker);
        let mut namespaces = Vec::new();
        for state in self.local_states.lock().map(|s| s.clone()).unwrap_or_default() {
            for e in std::fs::read_dir(state).into_iter().flatten().flatten() {
                pids.extend(pids_with_env("LOOM_LOCAL_MACHINE", &e.file_name().to_string_lossy()));
                let record: Option<Value> =
                    std::fs::read(e.path().join("machine.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
                if let Some(ns) = record.as_ref().and_then(|r| r["netns"].as_str()) {
                    let out = Command::new("ip").args(["netns", "pids", ns]).output();
                    pids.extend(out.iter().flat_map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .split_whitespace()
                            .filter_map(|p| p.parse().ok())
                            .collect::<Vec<i32>>()
                    }));
                    namespaces.push(ns.to_owned());
                }
            }
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        for ns in namespaces {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn pids_with_env(key: &str, value: &str) -> Vec<i32> {
    processes_with_env(key, value).iter().filter_map(|p| p.split_whitespace().nth(1)?.parse().ok()).collect()
}

/// Runs `cmd` with `input` on stdin and waits up to `limit`; kills it and panics after.
pub fn run_with_input(mut cmd: Command, input: &str, limit: Duration) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn loom-provisioner");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            panic!("loom-provisioner did not finish within {limit:?}");
        }
    };
    let _ = writer.join();
    out
}

/// Pids and command lines of live processes whose environment has `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<String> {
    let needle = format!("{key}={value}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|s| s.chars().all(|c| c.is_ascii_digit())) else { continue };
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let state = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next().unwrap_or('?')))
                .unwrap_or('?');
            found.push(format!("pid {pid} state {state}: {cmdline}"));
        }
    }
    found
}

/// Zombie children of this process.
pub fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for e in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit(')').next() else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str()) {
            found.push(stat);
        }
    }
    found
}

/// Polls `cond` until it holds or `limit` passes. For conditions no signal reports, such
/// as a process that is not our child disappearing.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| !r.trim().starts_with('Z')))
        .unwrap_or(false)
}

/// Shallow-merges the members of `extra` into `base`.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Per-node configs built up from results the way Loom's server did: each result's
/// `result` keys overwrite the node's config at the top level; `hostname` and
/// `ipaddresses` update it on success.
pub struct Nodes {
    /// Each node's config.
    pub configs: Vec<Value>,
}

impl Nodes {
    /// `n` nodes, node `i` starting from `base(i)`.
    pub fn new(n: usize, base: impl Fn(usize) -> Value) -> Nodes {
        Nodes { configs: (0..n).map(base).collect() }
    }

    /// One `name` task per node, id `<prefix>-<i>`, with `extra(i)` on top of its config.
    pub fn tasks(&self, prefix: &str, name: &str, extra: impl Fn(usize) -> Value) -> Vec<Value> {
        self.configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut config = c.clone();
                merge(&mut config, extra(i));
                let mut t = task(&format!("{prefix}-{i}"), name, config);
                t["nodeId"] = json!(format!("node-{i}"));
                t
            })
            .collect()
    }

    /// Merges the results of the tasks `<prefix>-<i>` of `run` into the nodes.
    pub fn absorb(&mut self, run: &Run, prefix: &str) {
        for (i, config) in self.configs.iter_mut().enumerate() {
            let r = run.result(&format!("{prefix}-{i}"));
            if let Some(keys) = r["result"].as_object() {
                for (k, v) in keys {
                    config[k] = v.clone();
                }
            }
            if r["status"] == 0 {
                for k in ["hostname", "ipaddresses"] {
                    if !r[k].is_null() {
                        config[k] = r[k].clone();
                    }
                }
            }
        }
    }

    /// Runs one phase on every node and merges the results; panics unless all succeed.
    pub fn phase(&mut self, plugins: &Plugins, prefix: &str, name: &str, extra: impl Fn(usize) -> Value) -> Run {
        let run = plugins.run(&self.tasks(prefix, name, extra), &[]);
        for (i, _) in self.configs.iter().enumerate() {
            let r = run.result(&format!("{prefix}-{i}"));
            assert_eq!(r["status"], 0, "{name} on node {i} failed: {r:#}\nlog:\n{}", run.stderr);
        }
        self.absorb(&run, prefix);
        run
    }
}

/// A service action of the example web app (`examples/webapp`) for the `shell` automator.
pub fn webapp(script: &str, port: u16) -> Value {
    json!({"service": {"name": "webapp", "action": {"type": "shell", "script": script, "data": port.to_string()}}})
}

impl Nodes {
    /// BOOTSTRAP, then INSTALL, CONFIGURE and START of the example web app on port
    /// `port(i)` of node `i`; panics unless every step succeeds.
    pub fn start_webapp(&mut self, plugins: &Plugins, port: impl Fn(usize) -> u16) {
        self.phase(plugins, "bootstrap", "BOOTSTRAP", |_| json!({}));
        for (step, script) in [("install", "install.sh"), ("configure", "configure.sh"), ("start", "start.sh")] {
            let run = self.phase(plugins, step, &step.to_uppercase(), |i| webapp(script, port(i)));
            // The command's output comes back in the result.
            assert!(
                run.results.iter().all(|r| !r["stdout"].as_str().unwrap_or_default().is_empty()),
                "{:#?}",
                run.results
            );
        }
    }

    /// STOP and REMOVE of the web app.
    pub fn remove_webapp(&mut self, plugins: &Plugins, port: impl Fn(usize) -> u16) {
        self.phase(plugins, "stop", "STOP", |i| webapp("stop.sh", port(i)));
        self.phase(plugins, "remove", "REMOVE", |i| webapp("remove.sh", port(i)));
    }
}

/// `GET /` on `addr`, the body.
pub fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

/// Registers the `local` provider (state in `state_dir`) and the `shell` automator with
/// the test web app's scripts.
pub fn add_local_and_shell(plugins: &Plugins, state_dir: &Path, local_settings: Value) {
    if let Ok(mut states) = plugins.local_states.lock() {
        states.push(state_dir.to_path_buf());
    }
    // The example web app's scripts plus the tests' own (a failing one, a slow one).
    let scripts = plugins.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir scripts");
    for dir in ["examples/webapp", "tests/fixtures/scripts"] {
        for e in std::fs::read_dir(workspace().join(dir)).expect("scripts folder").flatten() {
            std::fs::copy(e.path(), scripts.join(e.file_name())).expect("copy a script");
        }
    }
    let mut settings = json!({"stateDir": state_dir});
    merge(&mut settings, local_settings);
    plugins.add(
        "provider",
        "local",
        json!({"executable": bin_dir().join("loom-plugin-local"), "maxConcurrency": 8, "settings": settings}),
    );
    plugins.add(
        "automator",
        "shell",
        json!({"executable": bin_dir().join("loom-plugin-shell"), "maxConcurrency": 16,
               "settings": {"scripts": scripts, "workDir": state_dir.join("work"),
                            "connectTimeoutSecs": 5}}),
    );
}

/// Live processes started inside local machine `id`.
pub fn machine_processes(id: &str) -> Vec<String> {
    processes_with_env("LOOM_LOCAL_MACHINE", id)
}

/// A `moto_server` (PyPI `moto[server]`) on a free loopback port, for the EC2 API.
/// Stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT/`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto with extra environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0` to check
    /// credentials) and waits until it says it is serving.
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server on PATH (pip install 'moto[server]')");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Running on") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("moto_server did not start within 60 s");
        }
        Moto { child, endpoint: format!("http://127.0.0.1:{port}/") }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An sshd that accepts password logins for one user, on a free loopback port. Needs
/// root. Stopped when dropped.
pub struct PasswordSshd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    /// Its host public key, `ssh-ed25519 AAAA...`.
    pub host_key: String,
}

impl PasswordSshd {
    /// Starts it for `user` and waits until it accepts connections.
    pub fn start(user: &str) -> PasswordSshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("host_key");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen");
        assert!(ok.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nPidFile {}\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\nAllowUsers {user}\n",
                key.display(),
                dir.path().join("pid").display()
            ),
        )
        .expect("write sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.path().join("log"))
            .spawn()
            .expect("start sshd (install openssh-server)");
        let listening =
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(
            listening,
            "sshd did not listen: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        let host_key = std::fs::read_to_string(key.with_extension("pub")).expect("host key");
        let host_key = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        PasswordSshd { child, _dir: dir, port, host_key }
    }
}

impl Drop for PasswordSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A system user with a password and password-less sudo, for the tests' lifetime. Needs
/// root. Removed (with its home) when dropped.
pub struct SudoUser {
    /// The name.
    pub name: String,
    /// The password.
    pub password: String,
}

impl SudoUser {
    /// Creates `name` with a random password and `NOPASSWD: ALL` in /etc/sudoers.d.
    pub fn create(name: &str) -> SudoUser {
        let _ = Command::new("userdel").args(["-r", name]).output();
        let ok = Command::new("useradd").args(["-m", "-s", "/bin/sh", name]).status().expect("useradd");
        assert!(ok.success(), "useradd {name}");
        let password = format!("Pw-{}-{}", std::process::id(), nanos() % 1_000_000);
        let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn().expect("chpasswd");
        writeln!(chpasswd.stdin.take().expect("stdin"), "{name}:{password}").expect("write");
        assert!(chpasswd.wait().expect("chpasswd").success());
        let sudoers = format!("/etc/sudoers.d/loom-test-{name}");
        std::fs::write(&sudoers, format!("{name} ALL=(ALL) NOPASSWD: ALL\n")).expect("sudoers");
        SudoUser { name: name.to_owned(), password }
    }
}

impl Drop for SudoUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/etc/sudoers.d/loom-test-{}", self.name));
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
    }
}
