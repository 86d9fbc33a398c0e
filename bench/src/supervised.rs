//! The supervisor under test: a [`Supervisor`] (the library the daemon runs) with the
//! benchmark's no-op plugin registered as automator `noop`, driven the way the daemon
//! drives it: each task read by [`TaskEnvelope::parse`], then [`Supervisor::reserve`]
//! (route and slot) and [`Permit::send`](loom_supervisor::Permit::send) (the daemon
//! journals the task as running in between; the benchmark does not).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loom_protocol::PluginKind;
use loom_supervisor::Options;
use loom_supervisor::{Registry, Supervisor, TaskEnvelope};
use serde_json::value::RawValue;

use crate::cpu::{self, Throughput};

/// Loom's START task, as its server sent it.
const START: &str = include_str!("../../protocol/tests/data/start-hbase-regionserver.json");

/// A task generator: the `i`th task, as JSON.
pub type MakeTask = fn(usize) -> String;

/// A small task for automator `noop`.
pub fn tiny_task(i: usize) -> String {
    format!(
        r#"{{"taskId":"t{i}","taskName":"START","config":{{"service":{{"name":"s","action":{{"type":"noop","script":"x"}}}}}}}}"#
    )
}

/// Loom's START task (2 KB on one line), with a fresh task id and the automator `noop`.
pub fn start_task(i: usize) -> String {
    let one_line: String = START.split('\n').map(str::trim).collect::<Vec<_>>().join(" ");
    one_line
        .replacen("\"00000001-002-071\"", &format!("\"start-{i}\""), 1)
        .replace("\"type\": \"chef\"", "\"type\": \"noop\"")
}

/// A supervisor with one plugin, automator `noop`.
pub struct Bench {
    /// The supervisor.
    pub sup: Arc<Supervisor>,
    _dir: TempDir,
}

/// A folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty folder under `target/tmp` (beside this executable's profile folder):
    /// the supervisor refuses plugins under a folder every user can write, as /tmp is.
    ///
    /// # Errors
    /// When it cannot be made.
    pub fn new(what: &str) -> Result<TempDir, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        // target/<profile>/loom-bench -> target/tmp
        let base = exe.ancestors().nth(2).map_or_else(std::env::temp_dir, |t| t.join("tmp"));
        let dir = base.join(format!("loom-bench-{what}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Bench {
    /// A supervisor running `exe` (with `args`) as automator `noop` in `instances`
    /// processes, all started before this returns.
    ///
    /// # Errors
    /// When the registry cannot be written or read.
    pub fn new(exe: &Path, args: &[&str], instances: u32) -> Result<Bench, String> {
        let dir = TempDir::new("registry")?;
        let registry = Registry::load(&[write_registry(&dir.0, exe, args, instances)?]).map_err(|e| e.to_string())?;
        let sup =
            Arc::new(Supervisor::new(registry, Options { eager: true, log_level: loom_protocol::LogLevel::Info }));
        Ok(Bench { sup, _dir: dir })
    }

    /// Runs one task; an error carries the result's stderr.
    pub async fn call(&self, raw: Box<RawValue>) -> Result<(), String> {
        let task = TaskEnvelope::parse(raw).map_err(|e| format!("invalid task: {e}"))?;
        let result = match self.sup.reserve(&task).await {
            Ok(permit) => permit.send().await,
            Err(refused) => refused.into_result(),
        };
        if result.status == 0 { Ok(()) } else { Err(result.stderr) }
    }

    /// Microseconds per task, one task at a time (after a warm-up of 100).
    pub async fn sequential(&self, task: MakeTask, calls: usize) -> Result<f64, String> {
        let tasks = raw_tasks(task, calls + 100)?;
        let mut tasks = tasks.into_iter();
        for t in tasks.by_ref().take(100) {
            self.call(t).await?;
        }
        let began = Instant::now();
        for t in tasks {
            self.call(t).await?;
        }
        Ok(began.elapsed().as_secs_f64() * 1e6 / calls as f64)
    }

    /// Tasks per second with up to 1024 in flight, and the CPU time per task of this
    /// process (the supervisor) and the plugin's processes together.
    pub async fn pipelined(&self, task: MakeTask, calls: usize) -> Result<Throughput, String> {
        let tasks = raw_tasks(task, calls)?;
        let pids = self.pids();
        let cpu = || cpu::own() + pids.iter().map(|&p| cpu::process(p)).sum::<Duration>();
        let cpu_before = cpu();
        let began = Instant::now();
        let mut answers = futures_util::stream::iter(tasks.into_iter().map(|t| self.call(t))).buffer_unordered(1024);
        while let Some(answer) = answers.next().await {
            answer?;
        }
        Ok(Throughput::new(calls, began.elapsed(), cpu().saturating_sub(cpu_before)))
    }

    /// The process ids of the plugin's instances.
    pub fn pids(&self) -> Vec<u32> {
        let plugin = self.sup.plugin(PluginKind::Automator, "noop");
        plugin.map_or_else(Vec::new, |p| p.status().iter().filter_map(|s| s.pid).collect())
    }

    /// The process id of the plugin's first instance.
    pub fn pid(&self) -> Result<u32, String> {
        let plugin = self.sup.plugin(PluginKind::Automator, "noop").ok_or("the no-op plugin is not registered")?;
        plugin.status().first().and_then(|s| s.pid).ok_or_else(|| "the plugin has no process".into())
    }

    /// Milliseconds from SIGKILL of the plugin to the next task answered (the `i`th
    /// restart of this bench), after one task answered before the kill.
    pub async fn restart(&self, i: usize) -> Result<f64, String> {
        self.call(raw(&tiny_task(i))?).await?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()?).map_err(|e| e.to_string())?);
        let began = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(|e| e.to_string())?;
        // A task may still reach the dying process and fail; the next one is answered
        // by the new process.
        let mut n = 0;
        while self.call(raw(&tiny_task(1_000_000 + i * 1000 + n))?).await.is_err() {
            n += 1;
            if began.elapsed() > Duration::from_secs(30) {
                return Err("no answer 30 s after a restart".into());
            }
        }
        let ms = began.elapsed().as_secs_f64() * 1e3;
        // Past the restart policy's window, so that every restart is an immediate one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        Ok(ms)
    }

    /// [`Bench::restart`] `times` times.
    pub async fn restarts(&self, times: usize) -> Result<Vec<f64>, String> {
        let mut out = Vec::with_capacity(times);
        for i in 0..times {
            out.push(self.restart(i).await?);
        }
        Ok(out)
    }
}

/// Writes a plugins folder under `dir` with `exe` (and `args`) as automator `noop` in
/// `instances` processes; returns the folder.
///
/// # Errors
/// When it cannot be written.
pub fn write_registry(dir: &Path, exe: &Path, args: &[&str], instances: u32) -> Result<PathBuf, String> {
    write_plugin(dir, "noop", exe, args, instances)
}

/// [`write_registry`] with the plugin registered as automator `name`.
///
/// # Errors
/// When it cannot be written.
pub fn write_plugin(dir: &Path, name: &str, exe: &Path, args: &[&str], instances: u32) -> Result<PathBuf, String> {
    let folder = dir.join("automators").join(name);
    std::fs::create_dir_all(&folder).map_err(|e| format!("cannot make {}: {e}", folder.display()))?;
    let manifest = serde_json::json!({name: {
        "executable": exe, "args": args, "instances": instances,
        // As root (CI), the supervisor runs a plugin as root only when its manifest says so;
        // not root, the key changes nothing.
        "user": "root",
        "maxConcurrency": 4096, "queueCapacity": 1_000_000,
        // Crashes more than a second apart each count as the first in a while: the
        // restart measured is the immediate one, not the backoff of a crash loop.
        "restart": {"withinSecs": 1},
    }});
    std::fs::write(folder.join(format!("{name}.json")), manifest.to_string()).map_err(|e| e.to_string())?;
    Ok(dir.to_path_buf())
}

/// `text` as a task.
pub fn raw(text: &str) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text.to_owned()).map_err(|e| e.to_string())
}

/// Tasks 0..n, made ahead so that making them is not measured.
pub fn raw_tasks(task: MakeTask, n: usize) -> Result<Vec<Box<RawValue>>, String> {
    (0..n).map(|i| raw(&task(i))).collect()
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}
