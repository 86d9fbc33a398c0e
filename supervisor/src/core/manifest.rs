//! One plugin's manifest entry (`{"executable": ..., ...}` or `{"classname": ...}`), read into a
//! [`PluginSpec`]; which entries a file holds is [`crate::core::manifest_shape`]'s.
//!
//! Manifests are read field by field rather than through `#[derive(Deserialize)]` so that
//! every error names the key and says what was expected, and so that no error ever quotes
//! a value (manifests hold `env` and `settings`, which may hold credentials).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loom_protocol::{PluginKind, TaskName};
use serde_json::{Map, Value};

use crate::core::runas::RunAs;

/// Everything the supervisor needs to run one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    /// The registered name; tasks are routed by it.
    pub name: String,
    /// Provider or automator.
    pub kind: PluginKind,
    /// The manifest file this came from (for `check` on a bare executable: the executable).
    pub manifest: PathBuf,
    /// The plugin's folder: the manifest's folder, and the plugin's working directory.
    pub dir: PathBuf,
    /// The executable, resolved to a path.
    pub executable: PathBuf,
    /// Arguments passed to the executable.
    pub args: Vec<String>,
    /// Extra environment for the plugin, on top of the supervisor's small allowlist.
    pub env: BTreeMap<String, String>,
    /// Whether `env` may set variables that change which code runs ([`CODE_ENV`]).
    pub allow_loader_env: bool,
    /// The executable's SHA-256, checked before every start.
    pub sha256: Option<[u8; 32]>,
    /// Whom it runs as (when the supervisor is root).
    pub run_as: RunAs,
    /// How many processes to run.
    pub instances: usize,
    /// Tasks in flight per process (the handshake may lower it).
    pub max_concurrency: usize,
    /// Per-task timeouts.
    pub timeouts: Timeouts,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
    /// When and how fast to restart after a crash.
    pub restart: RestartPolicy,
    /// Sent in the handshake.
    pub settings: Map<String, Value>,
    /// Each step of a graceful stop (shutdown request, stdin EOF, SIGTERM) waits this long.
    pub shutdown_grace: Duration,
    /// After a timed-out task's `cancel`, how long to wait for its answer before killing.
    pub cancel_grace: Duration,
    /// How often to ping an idle process; `None` disables pings.
    pub ping_interval: Option<Duration>,
    /// How long a ping may take before the process counts as hung.
    pub ping_timeout: Duration,
    /// How many tasks may wait when every process is busy; more submissions wait for room.
    pub queue_capacity: usize,
    /// The longest a task waits in the queue for a slot; `None`: as long as the plugin
    /// lives (until it is marked failed).
    pub queue_timeout: Option<Duration>,
    /// How many times a task the plugin declared idempotent is sent again when the
    /// process it was on ended before answering.
    pub retry_on_crash: u32,
    /// The longest line the plugin may write on stdout.
    pub max_line_bytes: usize,
    /// What each process of the plugin may use (`limits`).
    pub limits: Limits,
    /// `keepDescendants`: what the plugin starts may outlive it (a provider whose machines
    /// are local processes): it gets no cgroup, and a stop or a crash ends only its
    /// process group.
    pub keep_descendants: bool,
    /// For a seed-style Ruby plugin run through the Ruby host: its class.
    pub ruby_class: Option<String>,
}

/// Per-task timeouts: `{"default": 1800, "CREATE": 600, ...}` in the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// For tasks without their own entry.
    pub default: Duration,
    /// Per task name.
    pub per_task: BTreeMap<TaskName, Duration>,
}

impl Timeouts {
    /// The timeout for `task`.
    pub fn get(&self, task: TaskName) -> Duration {
        self.per_task.get(&task).copied().unwrap_or(self.default)
    }
}

/// The restart policy: `{"maxRestarts", "withinSecs", "backoffInitialMs", "backoffMaxMs", "coolDownSecs"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// Restarts allowed within `within` before the plugin is marked failed.
    pub max_restarts: u32,
    /// The window over which restarts are counted.
    pub within: Duration,
    /// Delay before the second restart in a row; the first is immediate.
    pub backoff_initial: Duration,
    /// Upper bound of the delay.
    pub backoff_max: Duration,
    /// How long a failed plugin stays failed before it is tried again.
    pub cool_down: Duration,
}

/// What one plugin process (with everything it starts) may use: `limits` in the manifest.
/// Memory, processes and CPU are enforced through the process's cgroup
/// ([`crate::core::cgroup`]) where the controller is available; open files and core size
/// are resource limits set in the child before exec, everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memoryMax`: bytes of memory (no swap beyond it); past it the kernel kills.
    pub memory_max: Option<u64>,
    /// `pidsMax`: processes and threads at once; past it `fork` fails.
    pub pids_max: Option<u64>,
    /// `cpuWeight`: the share of CPU time against other plugins, 1 to 10000 (100 is even).
    pub cpu_weight: Option<u64>,
    /// `openFiles`: the open-files limit (soft and hard).
    pub open_files: Option<u64>,
    /// `coreSize`: the largest core dump, bytes (soft and hard); 0 turns them off.
    pub core_size: Option<u64>,
}

impl Limits {
    /// Whether any limit needs a cgroup controller.
    pub fn needs_cgroup(&self) -> bool {
        self.memory_max.is_some() || self.pids_max.is_some() || self.cpu_weight.is_some()
    }
}

/// The smallest `memoryMax`: below it no interpreter starts, and a bare number meant as
/// MiB ("512") is caught.
pub const MIN_MEMORY_MAX: u64 = 1 << 20;
/// The largest size accepted (cgroup v1 takes a signed 64-bit number).
pub const MAX_SIZE: u64 = 1 << 62;
/// The kernel's ceiling on pids (`PID_MAX_LIMIT`).
pub const MAX_PIDS: u64 = 4_194_304;
/// The kernel's ceiling on `fs.nr_open`, the most open files a process may be allowed.
pub const MAX_OPEN_FILES: u64 = 1_073_741_816;

/// A size as people read it, exactly: in the largest unit that divides it ("512 MiB",
/// "1536 KiB", "1000 bytes"), never rounded.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 6] =
        [(1 << 60, "EiB"), (1 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match UNITS.iter().find(|(unit, _)| bytes >= *unit && bytes % unit == 0) {
        Some((unit, name)) => format!("{} {name}", bytes / unit),
        None if bytes == 1 => "1 byte".to_owned(),
        None => format!("{bytes} bytes"),
    }
}

/// Defaults, as documented in the README.
pub mod defaults {
    use std::time::Duration;
    /// Loom's server timed tasks out after 1800 s.
    pub const TASK_TIMEOUT: Duration = Duration::from_secs(1800);
    /// Handshake timeout.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Each step of a graceful stop.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    /// Between `cancel` and kill for a timed-out task.
    pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
    /// Ping interval for idle processes.
    pub const PING_INTERVAL: Duration = Duration::from_secs(30);
    /// Ping timeout.
    pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
    /// Restarts allowed within the window.
    pub const MAX_RESTARTS: u32 = 5;
    /// The restart window.
    pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
    /// First backoff delay.
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
    /// Largest backoff delay.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
    /// How long a failed plugin stays failed.
    pub const COOL_DOWN: Duration = Duration::from_secs(60);
    /// Waiting tasks per plugin.
    pub const QUEUE_CAPACITY: usize = 1024;
    /// Sends again of an idempotent task whose process ended under it.
    pub const RETRY_ON_CRASH: u32 = 1;
}

/// Values for keys a manifest leaves out: the built-in defaults, or the daemon's
/// configuration (`[defaults]` in config.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Per-task timeout.
    pub task_timeout: Duration,
    /// Handshake timeout.
    pub handshake_timeout: Duration,
    /// Each step of a graceful stop.
    pub shutdown_grace: Duration,
    /// Between a timed-out task's cancel and the kill.
    pub cancel_grace: Duration,
    /// Idle ping interval; `None` disables pings.
    pub ping_interval: Option<Duration>,
    /// Ping timeout.
    pub ping_timeout: Duration,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Waiting tasks per plugin.
    pub queue_capacity: usize,
    /// Whom plugins run as when their manifest names no user (when the supervisor is root).
    pub run_as: RunAs,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            task_timeout: defaults::TASK_TIMEOUT,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            cancel_grace: defaults::CANCEL_GRACE,
            ping_interval: Some(defaults::PING_INTERVAL),
            ping_timeout: defaults::PING_TIMEOUT,
            restart: RestartPolicy::default(),
            queue_capacity: defaults::QUEUE_CAPACITY,
            run_as: RunAs::default(),
        }
    }
}

/// What a manifest entry describes.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A plugin the supervisor can run (seed-style Ruby plugins included: they run
    /// through the Ruby host).
    Runnable(Box<PluginSpec>),
    /// A well-formed entry that cannot run here; the text says why (no Ruby, say).
    NotRunnable(String),
}

/// A problem with one key of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    /// Dotted path of the key, e.g. `restart.maxRestarts`; empty for the entry itself.
    pub key: String,
    /// What is wrong, never quoting the value.
    pub message: String,
}

/// The result of reading one manifest entry: the entry, or why it cannot be used, plus
/// warnings (such as unknown keys) that do not stop it.
#[derive(Debug)]
pub struct Parsed {
    /// The entry, or the first error.
    pub entry: Result<Entry, KeyProblem>,
    /// Non-fatal findings.
    pub warnings: Vec<KeyProblem>,
}

const KNOWN_KEYS: &[&str] = &[
    "executable",
    "args",
    "env",
    "instances",
    "maxConcurrency",
    "timeouts",
    "handshakeTimeoutSecs",
    "restart",
    "settings",
    "shutdownGraceSecs",
    "cancelGraceSecs",
    "pingIntervalSecs",
    "pingTimeoutSecs",
    "queueCapacity",
    "queueTimeoutSecs",
    "retryOnCrash",
    "maxLineBytes",
    "classname",
    "description",
    // Loom's and Coopr's entries: the type's name and what their server showed and
    // uploaded (its fields, its resource types). Not used here.
    "name",
    "parameters",
    "resourceTypes",
    "user",
    "group",
    "sha256",
    "allowLoaderEnv",
    "limits",
    "keepDescendants",
];

/// Variables a manifest's `env` may set only with `"allowLoaderEnv": true`, besides every
/// `LD_*` one: they change which code runs — the dynamic loader's and the C library's
/// (`GCONV_PATH` loads modules, `GLIBC_TUNABLES` has been an exploit vector), the
/// interpreters' module paths, and `PATH` (which `#!/usr/bin/env` and every command a
/// plugin starts go through; the executable itself is always found with the supervisor's
/// own `PATH`).
pub const CODE_ENV: &[&str] = &[
    "PATH",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "PYTHONPATH",
    "PYTHONHOME",
    "RUBYLIB",
    "RUBYOPT",
    "PERL5LIB",
    "PERL5OPT",
    "NODE_OPTIONS",
];

/// Whether `name` is a variable [`CODE_ENV`] covers (with every `LD_*`).
pub fn changes_code(name: &str) -> bool {
    name.starts_with("LD_") || CODE_ENV.contains(&name)
}

const LIMIT_KEYS: &[&str] = &["memoryMax", "pidsMax", "cpuWeight", "openFiles", "coreSize"];

const RESTART_KEYS: &[&str] = &["maxRestarts", "withinSecs", "backoffInitialMs", "backoffMaxMs", "coolDownSecs"];

/// Reads one entry `name: body` of the manifest at `manifest`, with the built-in defaults.
pub fn parse_entry(name: &str, kind: PluginKind, manifest: &Path, body: &Value) -> Parsed {
    parse_entry_with(name, kind, manifest, body, &Defaults::default())
}

/// Reads one entry `name: body` of the manifest at `manifest`; keys it leaves out take
/// their values from `d`.
pub fn parse_entry_with(name: &str, kind: PluginKind, manifest: &Path, body: &Value, d: &Defaults) -> Parsed {
    let mut warnings = Vec::new();
    let entry = parse_body(name, kind, manifest, body, d, &mut warnings);
    Parsed { entry, warnings }
}

fn parse_body(
    name: &str,
    kind: PluginKind,
    manifest: &Path,
    body: &Value,
    d: &Defaults,
    warnings: &mut Vec<KeyProblem>,
) -> Result<Entry, KeyProblem> {
    check_name(name)?;
    let Some(obj) = body.as_object() else {
        return Err(problem("", format!("the entry for {name:?} must be an object, found {}", type_name(body))));
    };
    warn_unknown(obj, KNOWN_KEYS, "", warnings);
    let f = Fields { obj, prefix: "" };

    let executable = f.string("executable")?;
    let classname = f.string("classname")?;
    let sha256 = f.sha256("sha256")?;
    if sha256.is_some() && executable.is_none() {
        return Err(problem("sha256", "is the SHA-256 of an \"executable\", and this entry has none"));
    }
    let allow_loader_env = f.boolean("allowLoaderEnv")?.unwrap_or(false);
    let env = f.string_map("env")?;
    check_env(&env, allow_loader_env, warnings)?;
    let run_as = RunAs::merge(f.account("user")?, f.account("group")?, &d.run_as);
    // Absolute, because the plugin runs with its folder as working directory.
    let dir = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let max_concurrency = f.count("maxConcurrency", 1, 65_536)?.unwrap_or(1);
    let (executable, args, ruby_class) = match (executable, classname) {
        (Some(executable), _) => (resolve_executable(&dir, &executable)?, f.string_list("args")?, None),
        (None, Some(classname)) => match crate::core::ruby::command(&dir, &classname, max_concurrency) {
            Ok((ruby, args)) => (ruby, args, Some(classname)),
            Err(why) => return Ok(Entry::NotRunnable(why)),
        },
        (None, None) => {
            return Err(problem("executable", "missing: a plugin needs an \"executable\" (or a Ruby \"classname\")"));
        }
    };

    let restart = match obj.get("restart") {
        None => d.restart.clone(),
        Some(Value::Object(r)) => {
            warn_unknown(r, RESTART_KEYS, "restart.", warnings);
            let rf = Fields { obj: r, prefix: "restart." };
            let default = d.restart.clone();
            RestartPolicy {
                max_restarts: rf.count("maxRestarts", 0, 1_000_000)?.map_or(default.max_restarts, |n| n as u32),
                within: rf.secs("withinSecs")?.unwrap_or(default.within),
                backoff_initial: rf.millis("backoffInitialMs")?.unwrap_or(default.backoff_initial),
                backoff_max: rf.millis("backoffMaxMs")?.unwrap_or(default.backoff_max),
                cool_down: rf.secs("coolDownSecs")?.unwrap_or(default.cool_down),
            }
        }
        Some(other) => {
            return Err(problem("restart", format!("expected an object, found {}", type_name(other))));
        }
    };

    let limits = match obj.get("limits") {
        None => Limits::default(),
        Some(Value::Object(l)) => {
            warn_unknown(l, LIMIT_KEYS, "limits.", warnings);
            let lf = Fields { obj: l, prefix: "limits." };
            let as_u64 = |n: Option<usize>| n.map(|n| n as u64);
            Limits {
                memory_max: lf.size("memoryMax", MIN_MEMORY_MAX)?,
                pids_max: as_u64(lf.count("pidsMax", 1, MAX_PIDS)?),
                cpu_weight: as_u64(lf.count("cpuWeight", 1, 10_000)?),
                open_files: as_u64(lf.count("openFiles", 1, MAX_OPEN_FILES)?),
                core_size: lf.size("coreSize", 0)?,
            }
        }
        Some(other) => {
            return Err(problem("limits", format!("expected an object, found {}", type_name(other))));
        }
    };

    Ok(Entry::Runnable(Box::new(PluginSpec {
        name: name.to_owned(),
        kind,
        manifest: manifest.to_path_buf(),
        executable,
        args,
        env,
        allow_loader_env,
        sha256,
        run_as,
        instances: f.count("instances", 1, 256)?.unwrap_or(1),
        max_concurrency,
        timeouts: f.timeouts("timeouts", kind, d.task_timeout)?,
        handshake_timeout: f.secs("handshakeTimeoutSecs")?.unwrap_or(d.handshake_timeout),
        restart,
        settings: match obj.get("settings") {
            None => Map::new(),
            Some(Value::Object(s)) => s.clone(),
            Some(other) => {
                return Err(problem("settings", format!("expected an object, found {}", type_name(other))));
            }
        },
        shutdown_grace: f.secs("shutdownGraceSecs")?.unwrap_or(d.shutdown_grace),
        cancel_grace: f.secs("cancelGraceSecs")?.unwrap_or(d.cancel_grace),
        ping_interval: match f.secs("pingIntervalSecs")? {
            Some(i) if i.is_zero() => None,
            Some(i) => Some(i),
            None => d.ping_interval,
        },
        ping_timeout: f.secs("pingTimeoutSecs")?.unwrap_or(d.ping_timeout),
        queue_capacity: f.count("queueCapacity", 1, 10_000_000)?.unwrap_or(d.queue_capacity),
        queue_timeout: f.secs("queueTimeoutSecs")?.filter(|t| !t.is_zero()),
        retry_on_crash: f.count("retryOnCrash", 0, 10)?.map_or(defaults::RETRY_ON_CRASH, |n| n as u32),
        max_line_bytes: f
            .count("maxLineBytes", 1024, 256 * 1024 * 1024)?
            .unwrap_or(loom_protocol::DEFAULT_MAX_LINE_BYTES),
        limits,
        keep_descendants: f.boolean("keepDescendants")?.unwrap_or(false),
        dir,
        ruby_class,
    })))
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: defaults::MAX_RESTARTS,
            within: defaults::RESTART_WINDOW,
            backoff_initial: defaults::BACKOFF_INITIAL,
            backoff_max: defaults::BACKOFF_MAX,
            cool_down: defaults::COOL_DOWN,
        }
    }
}

/// Plugin names end up in log fields, environment variables and error messages: keep them
/// to a safe alphabet.
fn check_name(name: &str) -> Result<(), KeyProblem> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(problem(
            "",
            "the plugin name must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' or '.', not starting with '.'",
        ))
    }
}

/// `executable` is relative to the manifest's folder when a file of that name is there,
/// else (when it has no slash) looked up on PATH — the supervisor's own PATH, never one
/// from the manifest's `env`. A relative name must stay inside the folder once links are
/// followed; an absolute one may be anywhere (and is checked where it leads).
fn resolve_executable(dir: &Path, executable: &str) -> Result<PathBuf, KeyProblem> {
    use std::os::unix::fs::PermissionsExt;
    if executable.is_empty() {
        return Err(problem("executable", "is empty"));
    }
    let local = dir.join(executable);
    let path = match std::fs::symlink_metadata(&local) {
        Ok(_) => {
            check_local(&local)?;
            if Path::new(executable).is_relative() {
                check_inside(dir, &local, executable)?;
            }
            local
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !executable.contains('/') => {
            let found = which::which(executable).map_err(|_| {
                problem("executable", format!("{executable:?} is neither in {} nor on PATH", dir.display()))
            })?;
            std::path::absolute(&found).unwrap_or(found)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(problem("executable", format!("{} does not exist", local.display())));
        }
        Err(e) => return Err(problem("executable", format!("cannot read {}: {e}", local.display()))),
    };
    let mode = std::fs::metadata(&path)
        .map_err(|e| problem("executable", format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o111 == 0 {
        return Err(problem("executable", format!("{} is not executable (chmod +x it)", path.display())));
    }
    Ok(path)
}

/// An executable that exists in the folder must be a file: say precisely what it is
/// instead (a folder, a link to nothing).
fn check_local(local: &Path) -> Result<(), KeyProblem> {
    match std::fs::metadata(local) {
        Ok(md) if md.is_file() => Ok(()),
        Ok(md) if md.is_dir() => {
            Err(problem("executable", format!("{} is a folder, not an executable file", local.display())))
        }
        Ok(_) => Err(problem("executable", format!("{} is not a regular file", local.display()))),
        Err(e) => match std::fs::read_link(local) {
            Ok(target) if e.kind() == std::io::ErrorKind::NotFound => Err(problem(
                "executable",
                format!("{} is a symbolic link to {}, which does not exist", local.display(), target.display()),
            )),
            _ => Err(problem("executable", format!("cannot read {}: {e}", local.display()))),
        },
    }
}

/// A name relative to the plugin's folder may not lead out of it (`../`, or a link
/// pointing elsewhere): copying or reviewing a plugin folder must show everything it runs.
fn check_inside(dir: &Path, local: &Path, executable: &str) -> Result<(), KeyProblem> {
    let fail = |e: std::io::Error| problem("executable", format!("cannot resolve {}: {e}", local.display()));
    let folder = std::fs::canonicalize(dir).map_err(fail)?;
    let target = std::fs::canonicalize(local).map_err(fail)?;
    if target.starts_with(&folder) {
        return Ok(());
    }
    Err(problem(
        "executable",
        format!(
            "{executable:?} leads out of the plugin's folder {} (to {}); keep the executable inside the folder, or name it by its absolute path",
            dir.display(),
            target.display()
        ),
    ))
}

/// `env` may not set what changes which code runs ([`changes_code`]) unless the manifest
/// opts in with `"allowLoaderEnv": true`; then each such variable is a warning, logged at
/// every registration.
fn check_env(env: &BTreeMap<String, String>, allowed: bool, warnings: &mut Vec<KeyProblem>) -> Result<(), KeyProblem> {
    for name in env.keys().filter(|k| changes_code(k)) {
        let key = format!("env.{name}");
        if !allowed {
            return Err(problem(
                &key,
                format!(
                    "{name} changes which code the plugin runs (the dynamic loader's, the C library's and interpreters' \
                     variables, and PATH, need an explicit opt-in); remove it, or add \"allowLoaderEnv\": true to the manifest"
                ),
            ));
        }
        warnings.push(problem(
            &key,
            format!("sets {name}, which changes which code the plugin runs; allowed by \"allowLoaderEnv\": true"),
        ));
    }
    Ok(())
}

/// "512M" -> 536870912; digits with an optional K, M, G or T (powers of 1024). `None`
/// for anything else, or a size that does not fit in 64 bits.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 10),
        b'M' => (&text[..text.len() - 1], 20),
        b'G' => (&text[..text.len() - 1], 30),
        b'T' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn problem(key: &str, message: impl Into<String>) -> KeyProblem {
    KeyProblem { key: key.to_owned(), message: message.into() }
}

fn warn_unknown(obj: &Map<String, Value>, known: &[&str], prefix: &str, warnings: &mut Vec<KeyProblem>) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        let hint = known
            .iter()
            .find(|k| k.eq_ignore_ascii_case(key))
            .map(|k| format!("; did you mean {k:?}?"))
            .unwrap_or_default();
        warnings.push(problem(&format!("{prefix}{key}"), format!("unknown key, ignored{hint}")));
    }
}

/// "a string", "an object", ...: a JSON value's type, for messages that must not quote it.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the keys of one JSON object, with errors naming `prefix + key`.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl Fields<'_> {
    fn err(&self, key: &str, expected: &str, found: &Value) -> KeyProblem {
        problem(&format!("{}{key}", self.prefix), format!("expected {expected}, found {}", type_name(found)))
    }

    fn string(&self, key: &str) -> Result<Option<String>, KeyProblem> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(key, "a string", v)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, KeyProblem> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, "true or false", v)),
        }
    }

    /// A user or group: a name of letters, digits, `_`, `-` and `.` (and a final `$`, as
    /// Samba's machine accounts have), or a number.
    fn account(&self, key: &str) -> Result<Option<String>, KeyProblem> {
        let Some(name) = self.string(key)? else { return Ok(None) };
        let body = name.strip_suffix('$').unwrap_or(&name);
        let ok = !body.is_empty()
            && name.len() <= 64
            && !name.starts_with('-')
            && body.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(Some(name))
        } else {
            Err(problem(&format!("{}{key}", self.prefix), format!("expected a {key} name or number")))
        }
    }

    /// 64 hexadecimal digits.
    fn sha256(&self, key: &str) -> Result<Option<[u8; 32]>, KeyProblem> {
        let Some(text) = self.string(key)? else { return Ok(None) };
        let mut out = [0u8; 32];
        let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
        let ok = text.len() == 64
            && text.as_bytes().chunks(2).zip(out.iter_mut()).all(|(pair, byte)| {
                match (digit(pair[0]), digit(pair[1])) {
                    (Some(hi), Some(lo)) => {
                        *byte = hi << 4 | lo;
                        true
                    }
                    _ => false,
                }
            });
        if ok {
            Ok(Some(out))
        } else {
            Err(problem(
                &format!("{}{key}", self.prefix),
                "expected 64 hexadecimal digits, the executable's SHA-256 (as `sha256sum FILE` prints it)",
            ))
        }
    }

    fn string_list(&self, key: &str) -> Result<Vec<String>, KeyProblem> {
        match self.obj.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| self.err(&format!("{key}[{i}]"), "a string", v))
                })
                .collect(),
            Some(v) => Err(self.err(key, "an array of strings", v)),
        }
    }

    fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, KeyProblem> {
        match self.obj.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(self.err(&format!("{key}.{k}"), "a string", other)),
                })
                .collect(),
            Some(v) => Err(self.err(key, "an object of strings", v)),
        }
    }

    /// A whole number from `min` to `max`: the upper bounds keep a manifest from asking
    /// for a million processes or a line buffer the size of the machine.
    fn count(&self, key: &str, min: u64, max: u64) -> Result<Option<usize>, KeyProblem> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                _ => Err(self.err(key, &format!("a whole number from {min} to {max}"), v)),
            },
        }
    }

    /// A size in bytes, at least `min`: a whole number of bytes, or a string of digits
    /// with an optional unit K, M, G or T (powers of 1024, as systemd's `MemoryMax=`).
    fn size(&self, key: &str, min: u64) -> Result<Option<u64>, KeyProblem> {
        let expected = || {
            format!(
                "a size from {} to {}: a whole number of bytes, or a string such as \"512M\" (K, M, G or T: powers of 1024)",
                size_text(min),
                size_text(MAX_SIZE)
            )
        };
        let Some(value) = self.obj.get(key) else { return Ok(None) };
        let bytes = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => parse_size(s),
            _ => None,
        };
        match bytes {
            Some(b) if (min..=MAX_SIZE).contains(&b) => Ok(Some(b)),
            _ => Err(self.err(key, &expected(), value)),
        }
    }

    /// Seconds, whole or fractional, at least 0.
    fn secs(&self, key: &str) -> Result<Option<Duration>, KeyProblem> {
        self.duration(key, 1.0)
    }

    fn millis(&self, key: &str) -> Result<Option<Duration>, KeyProblem> {
        self.duration(key, 0.001)
    }

    fn duration(&self, key: &str, unit_secs: f64) -> Result<Option<Duration>, KeyProblem> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .and_then(|n| Duration::try_from_secs_f64(n * unit_secs).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, "a number of at least 0", v)),
        }
    }

    fn timeouts(&self, key: &str, kind: PluginKind, default: Duration) -> Result<Timeouts, KeyProblem> {
        let mut t = Timeouts { default, per_task: BTreeMap::new() };
        let m = match self.obj.get(key) {
            None => return Ok(t),
            Some(Value::Object(m)) => m,
            Some(v) => return Err(self.err(key, "an object of seconds per task name", v)),
        };
        let inner = Fields { obj: m, prefix: "timeouts." };
        for name in m.keys() {
            let d = inner.secs(name)?.unwrap_or(default);
            if d.is_zero() {
                return Err(problem(&format!("timeouts.{name}"), "must be more than 0 seconds"));
            }
            if name == "default" {
                t.default = d;
                continue;
            }
            let task: TaskName = name
                .parse()
                .map_err(|e: loom_protocol::UnknownTaskName| problem(&format!("timeouts.{name}"), e.to_string()))?;
            if task.kind() != kind {
                return Err(problem(
                    &format!("timeouts.{name}"),
                    format!("{task} is a {} task, and this plugin is a {kind}", task.kind()),
                ));
            }
            t.per_task.insert(task, d);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Parsed {
        // `sh` is on PATH everywhere.
        parse_entry("demo", PluginKind::Automator, Path::new("/nonexistent/demo/demo.json"), &body)
    }

    fn spec(body: Value) -> PluginSpec {
        match parse(body).entry {
            Ok(Entry::Runnable(s)) => *s,
            other => panic!("not runnable: {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_loom() {
        let s = spec(json!({"executable": "sh"}));
        assert_eq!(s.instances, 1);
        assert_eq!(s.max_concurrency, 1);
        assert_eq!(s.timeouts.get(TaskName::Install), Duration::from_secs(1800));
        assert_eq!(s.handshake_timeout, Duration::from_secs(10));
        assert_eq!(s.restart.max_restarts, 5);
        assert_eq!(s.restart.within, Duration::from_secs(60));
        assert!(s.executable.is_absolute());
        assert_eq!(s.dir, Path::new("/nonexistent/demo"));
        assert_eq!((s.queue_timeout, s.retry_on_crash), (None, 1), "wait while the plugin lives; retry once");
    }

    #[test]
    fn every_key_is_read() {
        let s = spec(json!({
            "executable": "sh", "args": ["-c", "x"], "env": {"A": "1"}, "instances": 3,
            "maxConcurrency": 8, "timeouts": {"default": 60, "INSTALL": 0.5},
            "handshakeTimeoutSecs": 2, "settings": {"k": "v"}, "shutdownGraceSecs": 1,
            "cancelGraceSecs": 0.25, "pingIntervalSecs": 0, "pingTimeoutSecs": 3, "queueCapacity": 7,
            "maxLineBytes": 4096, "queueTimeoutSecs": 90, "retryOnCrash": 3,
            "restart": {"maxRestarts": 2, "withinSecs": 10, "backoffInitialMs": 5, "backoffMaxMs": 50, "coolDownSecs": 1}
        }));
        assert_eq!(s.args, ["-c", "x"]);
        assert_eq!(s.env.get("A").map(String::as_str), Some("1"));
        assert_eq!((s.instances, s.max_concurrency, s.queue_capacity, s.max_line_bytes), (3, 8, 7, 4096));
        assert_eq!(s.timeouts.get(TaskName::Install), Duration::from_millis(500));
        assert_eq!(s.timeouts.get(TaskName::Start), Duration::from_secs(60));
        assert_eq!(s.ping_interval, None);
        assert_eq!(s.cancel_grace, Duration::from_millis(250));
        assert_eq!((s.queue_timeout, s.retry_on_crash), (Some(Duration::from_secs(90)), 3));
        assert_eq!(spec(json!({"executable": "sh", "queueTimeoutSecs": 0})).queue_timeout, None, "0: no limit");
        assert_eq!(s.restart.backoff_max, Duration::from_millis(50));
        assert_eq!(s.restart.cool_down, Duration::from_secs(1));
        assert_eq!(s.settings.get("k"), Some(&json!("v")));
    }

    #[test]
    fn errors_name_the_key_and_never_the_value() {
        let cases = [
            (json!({"executable": "sh", "instances": "hunter2"}), "instances", "whole number"),
            (json!({"executable": "sh", "instances": 0}), "instances", "from 1 to 256"),
            (json!({"executable": "sh", "instances": 1_000_000}), "instances", "from 1 to 256"),
            (json!({"executable": "sh", "maxLineBytes": u64::MAX}), "maxLineBytes", "from 1024 to 268435456"),
            (json!({"executable": "sh", "env": {"TOKEN": 42}}), "env.TOKEN", "a string"),
            (json!({"executable": "sh", "restart": {"maxRestarts": -1}}), "restart.maxRestarts", "whole number"),
            (json!({"executable": "sh", "timeouts": {"CREATE": 5}}), "timeouts.CREATE", "is a provider task"),
            (json!({"executable": "sh", "timeouts": {"BUILD": 5}}), "timeouts.BUILD", "unknown task name"),
            (json!({"executable": "no-such-binary-hunter2"}), "executable", "nor on PATH"),
            (json!({"args": []}), "executable", "missing"),
            (json!({"executable": "sh", "settings": "hunter2"}), "settings", "an object"),
        ];
        for (body, key, text) in cases {
            let err = parse(body.clone()).entry.expect_err(&body.to_string());
            assert_eq!(err.key, key, "{body}");
            assert!(err.message.contains(text), "{body}: {}", err.message);
            assert!(!err.message.contains("hunter2") || key == "executable", "{}", err.message);
        }
    }

    #[test]
    fn limits_are_read_with_sizes_in_bytes_or_with_a_unit() {
        assert_eq!(spec(json!({"executable": "sh"})).limits, Limits::default(), "no limits unless asked");
        let s = spec(json!({"executable": "sh", "limits": {
            "memoryMax": "512M", "pidsMax": 64, "cpuWeight": 50, "openFiles": 256, "coreSize": 0}}));
        let want = Limits {
            memory_max: Some(512 << 20),
            pids_max: Some(64),
            cpu_weight: Some(50),
            open_files: Some(256),
            core_size: Some(0),
        };
        assert_eq!(s.limits, want);
        assert!(s.limits.needs_cgroup());
        let rlimits_only = spec(json!({"executable": "sh", "limits": {"openFiles": 10, "coreSize": "1K"}})).limits;
        assert!(!rlimits_only.needs_cgroup());
        assert_eq!(rlimits_only.core_size, Some(1024));
        for (text, bytes) in [("2G", 2u64 << 30), ("1T", 1 << 40), ("3145728", 3 << 20), ("4096K", 4 << 20)] {
            let s = spec(json!({"executable": "sh", "limits": {"memoryMax": text}}));
            assert_eq!(s.limits.memory_max, Some(bytes), "{text}");
        }
        assert_eq!(
            spec(json!({"executable": "sh", "limits": {"memoryMax": 1 << 20}})).limits.memory_max,
            Some(1 << 20)
        );
    }

    #[test]
    fn bad_limits_name_the_key_and_what_is_expected_never_the_value() {
        let cases = [
            (json!("512X"), "limits.memoryMax", "such as \"512M\""),
            (json!("hunter2"), "limits.memoryMax", "found a string"),
            (json!("-5M"), "limits.memoryMax", "a size from 1 MiB"),
            (json!("M"), "limits.memoryMax", "a size from 1 MiB"),
            (json!(" 5M"), "limits.memoryMax", "a size from 1 MiB"),
            (json!(512), "limits.memoryMax", "a size from 1 MiB to 4 EiB"),
            (json!("99999999999T"), "limits.memoryMax", "a size"),
            (json!(1.5), "limits.memoryMax", "found a number"),
        ];
        for (value, key, text) in cases {
            let err = parse(json!({"executable": "sh", "limits": {"memoryMax": value}})).entry.expect_err(key);
            assert_eq!(err.key, key, "{value}");
            assert!(err.message.contains(text), "{value}: {}", err.message);
            assert!(!err.message.contains("hunter2") && !err.message.contains("512X"), "{}", err.message);
        }
        for (limits, key, text) in [
            (json!({"pidsMax": 0}), "limits.pidsMax", "from 1 to 4194304"),
            (json!({"cpuWeight": 10001}), "limits.cpuWeight", "from 1 to 10000"),
            (json!({"openFiles": "many"}), "limits.openFiles", "whole number"),
            (json!({"coreSize": true}), "limits.coreSize", "a size from 0 bytes"),
            (json!([1]), "limits", "expected an object, found an array"),
        ] {
            let err = parse(json!({"executable": "sh", "limits": limits})).entry.expect_err(key);
            assert_eq!(err.key, key, "{limits}");
            assert!(err.message.contains(text), "{limits}: {}", err.message);
        }
        let p = parse(json!({"executable": "sh", "limits": {"memorymax": "1G"}}));
        assert!(p.entry.is_ok());
        assert_eq!(p.warnings[0].key, "limits.memorymax");
        assert!(p.warnings[0].message.contains("did you mean \"memoryMax\""), "{:?}", p.warnings);
    }

    #[test]
    fn sizes_are_written_exactly_in_the_largest_unit_that_divides_them() {
        assert_eq!(size_text(512 << 20), "512 MiB");
        assert_eq!(size_text(1536 << 10), "1536 KiB");
        assert_eq!(size_text(3 << 30), "3 GiB");
        assert_eq!(size_text(1 << 40), "1 TiB");
        assert_eq!(size_text(MAX_SIZE), "4 EiB");
        assert_eq!(size_text(1000), "1000 bytes");
        assert_eq!((size_text(0), size_text(1)), ("0 bytes".to_owned(), "1 byte".to_owned()));
    }

    #[test]
    fn unknown_keys_warn_with_a_hint_but_load() {
        let p = parse(json!({"executable": "sh", "maxconcurrency": 4, "restart": {"max": 1}}));
        assert!(matches!(p.entry, Ok(Entry::Runnable(_))));
        let keys: Vec<_> = p.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["maxconcurrency", "restart.max"]);
        assert!(p.warnings[0].message.contains("did you mean \"maxConcurrency\""));
    }

    #[test]
    fn seed_style_ruby_entries_run_through_the_ruby_host() {
        // Where Ruby and the host are found it runs through them; elsewhere it says why not.
        match parse(json!({"classname": "MyProvider", "maxConcurrency": 2})).entry {
            Ok(Entry::Runnable(s)) => {
                assert_eq!(s.ruby_class.as_deref(), Some("MyProvider"));
                assert!(s.executable.ends_with("ruby"), "{:?}", s.executable);
                assert_eq!(s.args[1..], ["--class", "MyProvider", "--dir", "/nonexistent/demo", "--concurrency", "2"]);
            }
            Ok(Entry::NotRunnable(why)) => assert!(why.contains("MyProvider") && why.contains("Ruby"), "{why}"),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["", "a b", "../x", ".hidden", "x;rm"] {
            let p = parse_entry(name, PluginKind::Provider, Path::new("/x/y.json"), &json!({"executable": "sh"}));
            assert!(p.entry.is_err(), "{name:?}");
        }
    }

    #[test]
    fn loader_variables_need_the_opt_in_and_then_warn() {
        for var in ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GCONV_PATH", "GLIBC_TUNABLES", "PATH", "PYTHONPATH"] {
            let err = parse(json!({"executable": "sh", "env": {var: "/x"}})).entry.expect_err(var);
            assert_eq!(err.key, format!("env.{var}"));
            assert!(err.message.contains("add \"allowLoaderEnv\": true"), "{}", err.message);
            let p = parse(json!({"executable": "sh", "env": {var: "/x"}, "allowLoaderEnv": true}));
            assert!(p.entry.is_ok(), "{var}");
            assert!(p.warnings.iter().any(|w| w.key == format!("env.{var}") && w.message.contains("allowLoaderEnv")));
        }
        // Names that only look alike are ordinary variables.
        let p = parse(json!({"executable": "sh", "env": {"ld_preload": "x", "OLD_PATH": "x", "MY_LD_X": "x"}}));
        assert!(p.entry.is_ok() && p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(!spec(json!({"executable": "sh"})).allow_loader_env);
        let err = parse(json!({"executable": "sh", "allowLoaderEnv": "yes"})).entry.unwrap_err();
        assert_eq!(err.key, "allowLoaderEnv");
    }

    #[test]
    fn keep_descendants_is_off_unless_the_manifest_says_true() {
        assert!(!spec(json!({"executable": "sh"})).keep_descendants);
        assert!(spec(json!({"executable": "sh", "keepDescendants": true})).keep_descendants);
        let err = parse(json!({"executable": "sh", "keepDescendants": "yes"})).entry.unwrap_err();
        assert_eq!(err.key, "keepDescendants");
        assert!(parse(json!({"executable": "sh", "keepDescendants": false})).warnings.is_empty());
    }

    #[test]
    fn sha256_user_and_group_are_read_and_checked() {
        let digest = "00ff".repeat(16);
        let s = spec(json!({"executable": "sh", "sha256": digest.to_uppercase(), "user": "nobody", "group": "daemon"}));
        assert_eq!(s.sha256.map(|d| (d[0], d[1])), Some((0x00, 0xff)));
        assert_eq!(s.run_as.describe().as_deref(), Some("nobody:daemon"));
        for bad in ["abc", "+f".repeat(32).as_str(), &"g".repeat(64), &"0".repeat(65)] {
            let err = parse(json!({"executable": "sh", "sha256": bad})).entry.unwrap_err();
            assert!(err.key == "sha256" && err.message.contains("64 hexadecimal digits"), "{bad}: {err:?}");
        }
        let err = parse(json!({"classname": "C", "sha256": digest})).entry.unwrap_err();
        assert_eq!(err.key, "sha256");
        for bad in ["", "-x", "a b", "x;y", "../x"] {
            let err = parse(json!({"executable": "sh", "user": bad})).entry.unwrap_err();
            assert_eq!(err.key, "user", "{bad:?}");
        }
        assert_eq!(parse(json!({"executable": "sh", "group": 5})).entry.unwrap_err().key, "group");
        // The daemon's default applies to manifests that name nobody.
        let d = Defaults {
            run_as: RunAs::defaults(Some("nobody".into()), None, crate::core::runas::Origin::Config),
            ..Defaults::default()
        };
        let p = parse_entry_with("x", PluginKind::Automator, Path::new("/x/x.json"), &json!({"executable": "sh"}), &d);
        let Ok(Entry::Runnable(s)) = p.entry else { panic!() };
        assert_eq!(s.run_as.describe().as_deref(), Some("nobody"));
    }

    #[test]
    fn executables_that_are_not_files_are_named_precisely() {
        let d = crate::core::trust::test_dir();
        let manifest = d.path().join("x.json");
        let at = |exe: &str| {
            parse_entry("x", PluginKind::Automator, &manifest, &json!({"executable": exe})).entry.unwrap_err().message
        };
        std::fs::create_dir(d.path().join("folder")).unwrap();
        assert_eq!(at("folder"), format!("{} is a folder, not an executable file", d.path().join("folder").display()));
        std::os::unix::fs::symlink("gone", d.path().join("dangling")).unwrap();
        assert_eq!(
            at("dangling"),
            format!("{} is a symbolic link to gone, which does not exist", d.path().join("dangling").display())
        );
        assert!(at("no-such-command-x").contains("is neither in"));
        assert!(at("sub/none").ends_with("does not exist"));

        // Relative names stay inside the folder; absolute ones may point anywhere.
        let outside = crate::core::trust::test_dir();
        let exe = outside.path().join("run");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&exe, d.path().join("link")).unwrap();
        assert!(at("link").contains("leads out of the plugin's folder"), "{}", at("link"));
        let up = format!("../{}/run", outside.path().file_name().unwrap().to_string_lossy());
        assert!(at(&up).contains("leads out of the plugin's folder"), "{}", at(&up));
        let p = parse_entry("x", PluginKind::Automator, &manifest, &json!({"executable": exe}));
        assert!(matches!(p.entry, Ok(Entry::Runnable(_))), "{:?}", p.entry);
    }
}
