//! Harness for the end-to-end tests: builds the real binaries, lays out plugin folders,
//! runs `loom-provisioner` as a process, and finds processes a test left behind.
//!
//! Every plugin a test registers gets `LOOM_TEST_MARKER=<unique>` in its environment,
//! which its children inherit; [`Plugins::leftovers`] scans /proc for that marker.
//!
//! The supervisor refuses plugins under a folder every user can write (/tmp included), so
//! temporary folders live in the build's `target/tmp` ([`tempdir`]); and as root it runs a
//! plugin only as the user its manifest names, so [`Plugins::add`] names root unless the
//! test names someone.

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

/// A temporary folder the supervisor trusts: under `target/tmp` of this build (owned by
/// whoever builds, not writable by others), not under /tmp. Mode 0755, so that plugins
/// running as another user can reach what a test puts there.
pub fn tempdir() -> tempfile::TempDir {
    // target/<profile>/deps/<this test> -> target/tmp
    let exe = std::env::current_exe().expect("current_exe");
    let base = exe.ancestors().nth(3).expect("target dir").join("tmp");
    std::fs::create_dir_all(&base).expect("target/tmp");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    chmod(dir.path(), 0o755);
    dir
}

/// Sets `path`'s permission bits.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Adds `"user": "root"` to a manifest entry that names no user, when the tests run as
/// root (as CI does): the supervisor runs nobody as root unless the manifest says so.
fn as_root_unless_named(entry: &mut Value) {
    if nix::unistd::geteuid().is_root()
        && let Some(e) = entry.as_object_mut()
    {
        e.entry("user").or_insert_with(|| json!("root"));
    }
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
        Plugins { dir: tempdir(), marker, local_states: Default::default() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Registers a plugin of `kind` ("provider"/"automator") named `name` with `manifest`;
    /// the test marker is added to its `env`, and `"user": "root"` when running as root
    /// and the manifest names no user.
    pub fn add(&self, kind: &str, name: &str, mut manifest: Value) -> PathBuf {
        let folder = self.dir.path().join(format!("{kind}s")).join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        as_root_unless_named(&mut manifest);
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
            // The machines' own sshd listeners carry neither marker: find them by their
            // configuration's path.
            pids.extend(pids_with_cmdline(&state.display().to_string()));
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

/// Processes whose command line contains `needle`.
fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(needle).then_some(pid)
        })
        .collect()
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
    let scripts = plugins.path().join("scripts");
    let shell = json!({"scripts": scripts, "workDir": state_dir.join("work"), "connectTimeoutSecs": 5});
    register_local_and_shell(plugins, state_dir, &["examples/webapp", "tests/fixtures/scripts"], local_settings, shell);
}

/// Registers the `local` provider (state in `state_dir`, `local_settings` on top) and
/// the `shell` automator (`shell_settings`), with the scripts of the workspace folders
/// `script_dirs` copied into `<plugins>/scripts`.
fn register_local_and_shell(
    plugins: &Plugins,
    state_dir: &Path,
    script_dirs: &[&str],
    local_settings: Value,
    shell_settings: Value,
) {
    if let Ok(mut states) = plugins.local_states.lock() {
        states.push(state_dir.to_path_buf());
    }
    let scripts = plugins.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir scripts");
    for dir in script_dirs {
        for e in std::fs::read_dir(workspace().join(dir)).expect("scripts folder").flatten() {
            std::fs::copy(e.path(), scripts.join(e.file_name())).expect("copy a script");
        }
    }
    let mut settings = json!({"stateDir": state_dir});
    merge(&mut settings, local_settings);
    plugins.add(
        "provider",
        "local",
        json!({"executable": bin_dir().join("loom-plugin-local"), "maxConcurrency": 16, "settings": settings}),
    );
    plugins.add(
        "automator",
        "shell",
        json!({"executable": bin_dir().join("loom-plugin-shell"), "maxConcurrency": 32, "settings": shell_settings}),
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

/// `loom-provisioner serve` as a real process, with a notify socket of its own. Killed
/// when dropped.
pub struct Serve {
    child: Option<std::process::Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its data folder.
    pub data_dir: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
    notify: std::os::unix::net::UnixDatagram,
    notify_path: PathBuf,
    /// The READY=1 notification of the last start.
    pub ready_message: String,
    token: Option<String>,
    env: Vec<(String, String)>,
    /// The open-files limits (soft, hard) the daemon starts with, when set.
    open_files: Option<(u64, u64)>,
    agent: ureq::Agent,
}

impl Serve {
    /// Starts `serve` on the plugins of `plugins` with `extra` lines appended to its
    /// configuration, and waits for READY=1 on its notify socket.
    pub fn start(plugins: &Plugins, extra: &str) -> Serve {
        Serve::start_with(plugins, extra, &[])
    }

    /// [`Serve::start`] with extra environment.
    pub fn start_with(plugins: &Plugins, extra: &str, env: &[(&str, &str)]) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        Serve::start_listening(plugins, &format!("127.0.0.1:{port}"), extra, env)
    }

    /// [`Serve::start_with`], listening on `listen` (an address or `unix:/path`; then
    /// [`Serve::request`] is not available).
    pub fn start_listening(plugins: &Plugins, listen: &str, extra: &str, env: &[(&str, &str)]) -> Serve {
        let mut serve = Serve::start_listening_later(plugins, listen, extra, env);
        serve.spawn();
        serve
    }

    /// The daemon, configured but not started: [`Serve::spawn`] starts it.
    fn start_listening_later(plugins: &Plugins, listen: &str, extra: &str, env: &[(&str, &str)]) -> Serve {
        let dir = plugins.path().join("serve");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let config = dir.join("config.toml");
        let data_dir = dir.join("data");
        let text = format!(
            "plugin_dirs = [{:?}]\nlisten = {listen:?}\ndata_dir = {:?}\n{extra}\n",
            plugins.path().display().to_string(),
            data_dir.display().to_string()
        );
        std::fs::write(&config, text).expect("write config");
        let token = extra
            .lines()
            .find_map(|l| l.trim().strip_prefix("token_file = "))
            .map(|f| std::fs::read_to_string(f.trim().trim_matches('"')).expect("token file").trim().to_owned());
        let notify_path = dir.join(format!("notify-{}", nanos()));
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Serve {
            child: None,
            url: format!("http://{listen}"),
            config,
            data_dir,
            log: dir.join("serve.log"),
            notify,
            notify_path,
            ready_message: String::new(),
            token,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            open_files: None,
            agent,
        }
    }

    /// [`Serve::start`] with the daemon's open-files limit (soft and hard) set to
    /// `open_files` (soft, hard), as `ulimit -Sn` and `ulimit -Hn` would.
    pub fn start_with_open_files(plugins: &Plugins, extra: &str, open_files: (u64, u64)) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let mut serve = Serve::start_listening_later(plugins, &format!("127.0.0.1:{port}"), extra, &[]);
        serve.open_files = Some(open_files);
        serve.spawn();
        serve
    }

    /// Starts the process (again) and waits for READY=1.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut command = Command::new(provisioner());
        command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((soft, hard)) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = command.spawn().expect("start loom-provisioner serve");
        self.child = Some(child);
        self.ready_message = self
            .wait_notification(|m| m.contains("READY=1"), Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no READY=1 within 60 s; log:\n{}", self.log_text()));
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// The next notification, within `limit`.
    pub fn next_notification(&self, limit: Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(limit)).ok()?;
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Notifications until one satisfies `pred` (returned), or `None` after `limit`.
    pub fn wait_notification(&self, pred: impl Fn(&str) -> bool, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let m = self.next_notification(left)?;
            if pred(&m) {
                return Some(m);
            }
        }
        None
    }

    /// An HTTP request with the configured token; the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.request_with(method, path, body, self.token.as_deref())
    }

    /// An HTTP request with `token` (or none).
    pub fn request_with(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let auth = token.map(|t| format!("Bearer {t}"));
        let result = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send(body.unwrap_or_default())
            }
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POST /v1/tasks.
    pub fn submit(&self, task: &Value, wait: bool) -> (u16, Value) {
        let path = if wait { "/v1/tasks?wait=true" } else { "/v1/tasks" };
        self.request("POST", path, Some(&task.to_string()))
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal the daemon");
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit (at most `limit`) and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => status.ok().and_then(|s| s.code()),
            Err(_) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                panic!("the daemon did not exit within {limit:?}; log:\n{}", self.log_text());
            }
        }
    }
}

impl Drop for Serve {
    /// Stops the daemon as systemd would (SIGTERM), so that it stops its plugins before
    /// the test looks for leftovers; SIGKILL if it does not exit within 30 s.
    fn drop(&mut self) {
        let Some(child) = self.child.as_ref() else { return };
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().expect("checked above");
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Plugins {
    /// Copies the fixture plugin folder `tests/fixtures/<rel>` (e.g. `ruby/providers/machines`)
    /// to `<kind>s/<name>/` here, adding the test marker to its manifest's `env`.
    pub fn copy_fixture(&self, rel: &str) -> PathBuf {
        let from = workspace().join("tests/fixtures").join(rel);
        let mut parts = rel.rsplit('/');
        let name = parts.next().expect("a folder");
        let kind_dir = parts.next().expect("providers or automators");
        let to = self.dir.path().join(kind_dir).join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for e in std::fs::read_dir(&from).expect("fixture folder").flatten() {
            let target = to.join(e.file_name());
            if e.path().extension().is_some_and(|x| x == "json") {
                let mut doc: Value = serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("json");
                for entry in doc.as_object_mut().expect("object").values_mut() {
                    entry["env"] = json!({"LOOM_TEST_MARKER": self.marker});
                    as_root_unless_named(entry);
                }
                std::fs::write(target, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
            } else {
                std::fs::copy(e.path(), target).expect("copy");
            }
        }
        to
    }

    /// Writes a seed-style Ruby plugin: `<kind>s/<name>/<name>.rb` with `code`, and its
    /// manifest naming `classname`.
    pub fn add_ruby(&self, kind: &str, name: &str, classname: &str, code: &str) -> PathBuf {
        let manifest = self.add(kind, name, json!({"classname": classname}));
        let folder = manifest.parent().expect("folder").to_path_buf();
        std::fs::write(folder.join(format!("{name}.rb")), code).expect("write the .rb");
        folder
    }
}

/// A world for `cluster` commands: the `local` provider and `shell` automator with the
/// example cluster's scripts and the tests' own (`tests/fixtures/cluster`), a journal of
/// its own. Machines, their work folder (`work/`, where scripts keep `runlog` and the
/// example keeps its `apps/`) and the journal live in the plugins folder.
pub struct ClusterRig {
    /// The plugins folder.
    pub plugins: Plugins,
    /// The journal's folder.
    pub data: PathBuf,
    /// The scripts BOOTSTRAP uploads (change one to "fix" it).
    pub scripts: PathBuf,
    /// The machines' shared work folder.
    pub work: PathBuf,
    /// The local provider's state folder.
    pub machines: PathBuf,
}

/// What a `cluster` command printed and how it exited.
#[derive(Debug)]
pub struct ClusterRun {
    /// Its exit code.
    pub code: Option<i32>,
    /// Its stdout, as JSON (`null` when it printed none).
    pub json: Value,
    /// Its stderr: progress lines and the log.
    pub stderr: String,
}

impl ClusterRig {
    /// A rig whose `local` provider has `local_settings` on top of its defaults.
    pub fn new(local_settings: Value) -> ClusterRig {
        let plugins = Plugins::new();
        let machines = plugins.path().join("machines");
        let scripts = plugins.path().join("scripts");
        let work = machines.join("work");
        let shell = json!({"scripts": scripts, "workDir": work, "sudo": false, "connectTimeoutSecs": 20});
        register_local_and_shell(
            &plugins,
            &machines,
            &["examples/local-cluster/scripts", "tests/fixtures/cluster"],
            local_settings,
            shell,
        );
        let data = plugins.path().join("data");
        ClusterRig { plugins, data, scripts, work, machines }
    }

    /// The example cluster (`examples/local-cluster.json`) with its ports moved from
    /// 18100.. to `port_base`.., and `web_nodes` web servers.
    pub fn example(port_base: u16, web_nodes: u32) -> Value {
        let text = std::fs::read_to_string(workspace().join("examples/local-cluster.json")).expect("example spec");
        let mut spec: Value =
            serde_json::from_str(&text.replace("18100", &port_base.to_string())).expect("example spec is JSON");
        spec["nodeGroups"][1]["count"] = json!(web_nodes);
        spec.as_object_mut().expect("object").remove("pluginDirs");
        spec
    }

    /// Writes `spec` to `<plugins>/<file>`.
    pub fn write_spec(&self, file: &str, spec: &Value) -> PathBuf {
        let path = self.plugins.path().join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(spec).expect("json")).expect("write the spec");
        path
    }

    /// `loom-provisioner cluster <args>` with this rig's journal (and, for operations,
    /// its plugins, plain progress lines and JSON output), not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(provisioner());
        cmd.arg("cluster").args(args).arg("--data-dir").arg(&self.data);
        if matches!(args.first(), Some(&("up" | "down" | "restart-services" | "reconfigure"))) {
            cmd.arg("--plugins-dir").arg(self.plugins.path()).args(["--progress", "lines", "--json"]);
        }
        cmd
    }

    /// Runs `loom-provisioner cluster <args>` to the end (5 minutes at most).
    pub fn cluster(&self, args: &[&str]) -> ClusterRun {
        let out = run_with_input(self.command(args), "", Duration::from_secs(300));
        let stdout = String::from_utf8_lossy(&out.stdout);
        ClusterRun {
            code: out.status.code(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `cluster status NAME --json --tasks`.
    pub fn status(&self, name: &str) -> Value {
        let run = self.cluster(&["status", name, "--json", "--tasks"]);
        assert_eq!(run.code, Some(0), "cluster status failed: {}", run.stderr);
        run.json
    }

    /// Lines of the scripts' run log (`<task id> <data>` per run).
    pub fn runlog(&self) -> Vec<String> {
        std::fs::read_to_string(self.work.join("runlog")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Folders of machines the local provider still has.
    pub fn machines_left(&self) -> Vec<String> {
        std::fs::read_dir(&self.machines)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("local-"))
            .collect()
    }
}
