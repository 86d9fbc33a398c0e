//! Footprint: the real daemon (`loom-provisioner serve`) with 100 plugin instances, its
//! resident memory and its CPU use while nothing happens.
//!
//! Readiness is systemd's own signal: the harness listens on `$NOTIFY_SOCKET` and waits
//! for `READY=1`, which the daemon sends once every instance has finished its handshake.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::supervised::{TempDir, write_registry};

/// What one round measured.
pub struct Round {
    /// The daemon's resident memory, MB.
    pub rss_mb: f64,
    /// The daemon's CPU time over the idle window, as a share of one core (percent).
    pub idle_cpu_percent: f64,
    /// Context switches of the daemon's threads per second over the idle window.
    pub wakeups_per_sec: f64,
    /// Resident memory of one plugin process, MB (median of the instances).
    pub plugin_rss_mb: f64,
    /// Seconds from start to `READY=1`.
    pub ready_secs: f64,
}

/// Starts the daemon with `instances` processes of `exe`, waits for `READY=1`, then
/// watches it for `idle`.
pub fn round(daemon: &Path, exe: &Path, instances: u32, idle: Duration) -> Result<Round, String> {
    let dir = TempDir::new("footprint")?;
    let began = Instant::now();
    let mut daemon_proc =
        start_daemon(daemon, exe, instances, &dir, &format!("unix:{}", dir.0.join("api.sock").display()))?;
    let ready_secs = began.elapsed().as_secs_f64();
    let pid = daemon_proc.0.id();
    let (cpu0, switches0) = (cpu_ns(pid)?, switches(pid)?);
    let watch = Instant::now();
    std::thread::sleep(idle);
    let (cpu1, switches1) = (cpu_ns(pid)?, switches(pid)?);
    let window = watch.elapsed().as_secs_f64();
    let rss_mb = rss_kb(pid)? / 1024.0;
    let mut plugin_rss: Vec<f64> =
        children(pid)?.into_iter().filter_map(|p| rss_kb(p).ok()).map(|kb| kb / 1024.0).collect();
    plugin_rss.sort_by(f64::total_cmp);
    if plugin_rss.len() != instances as usize {
        return Err(format!("the daemon runs {} plugin processes, not {instances}", plugin_rss.len()));
    }
    daemon_proc.stop();
    Ok(Round {
        rss_mb,
        idle_cpu_percent: grown(&cpu0, &cpu1) as f64 / 1e9 / window * 100.0,
        wakeups_per_sec: grown(&switches0, &switches1) as f64 / window,
        plugin_rss_mb: plugin_rss[plugin_rss.len() / 2],
        ready_secs,
    })
}

/// Starts `loom-provisioner serve` in `dir` with `instances` processes of `exe`, listening
/// on `listen`, and waits for its `READY=1` on a notify socket of its own.
pub(crate) fn start_daemon(
    daemon: &Path,
    exe: &Path,
    instances: u32,
    dir: &TempDir,
    listen: &str,
) -> Result<Reaped, String> {
    let plugins = write_registry(&dir.0.join("plugins"), exe, &[], instances)?;
    start_serve(daemon, &plugins, dir, listen, "", Stdio::inherit())
}

/// Starts `loom-provisioner serve` in `dir` on the plugins folder `plugins`, listening on
/// `listen`, with `extra` (TOML: top-level keys, then tables) in its configuration and its
/// log to `stderr`,
/// and waits for its `READY=1` on a notify socket of its own.
///
/// # Errors
/// When it cannot be started, or says nothing for 60 s (it is then stopped).
pub(crate) fn start_serve(
    daemon: &Path,
    plugins: &Path,
    dir: &TempDir,
    listen: &str,
    extra: &str,
    stderr: Stdio,
) -> Result<Reaped, String> {
    let socket_path = dir.0.join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).map_err(|e| format!("cannot bind {}: {e}", socket_path.display()))?;
    notify.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let config = dir.0.join("config.toml");
    let text = format!(
        "plugin_dirs = [{:?}]\nlisten = {listen:?}\ndata_dir = {:?}\n{extra}\n[log]\nlevel = \"warn\"\n",
        plugins.display().to_string(),
        dir.0.join("data").display().to_string(),
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let child = Command::new(daemon)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", daemon.display()))?;
    let proc = Reaped(child, notify);
    wait_ready(&proc.1)?;
    Ok(proc)
}

/// The daemon, stopped with SIGTERM (and reaped) however the round ends, and its notify
/// socket: kept bound while it runs, so that its notifications are taken as systemd takes
/// them (with nothing bound there, its stop waits 5 s for `STOPPING=1` to be taken).
pub(crate) struct Reaped(pub(crate) Child, UnixDatagram);

impl Reaped {
    pub(crate) fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn wait_ready(notify: &UnixDatagram) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).map_err(|e| format!("no READY=1 from the daemon: {e}"))?;
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
            return Ok(());
        }
    }
}

/// A counter of each thread of a process, by thread id.
type PerThread = HashMap<OsString, u64>;

/// CPU time of each thread of `pid`, in nanoseconds (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: u32) -> Result<PerThread, String> {
    per_thread(pid, "schedstat", |text| text.split_whitespace().next().and_then(|v| v.parse().ok()))
}

/// Context switches of each thread of `pid`, voluntary and not.
fn switches(pid: u32) -> Result<PerThread, String> {
    per_thread(pid, "status", |text| {
        let field =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
        Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
    })
}

fn per_thread(pid: u32, file: &str, read: impl Fn(&str) -> Option<u64>) -> Result<PerThread, String> {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("cannot read /proc/{pid}/task: {e}"))?;
    Ok(tasks
        .flatten()
        .filter_map(|t| Some((t.file_name(), read(&std::fs::read_to_string(t.path().join(file)).ok()?)?)))
        .collect())
}

/// How much the threads' counters grew from `before` to `after`: a thread that started in
/// between counts from zero, one that ended is left out. (Its counter is gone with it: a
/// sum over the living threads would go backwards, as it did when the runtime's blocking
/// threads, busy starting the plugins, ended after their 10 s keep-alive within the window.
/// Such a thread has been idle that long, so it took no CPU in the window.)
fn grown(before: &PerThread, after: &PerThread) -> u64 {
    after.iter().map(|(tid, now)| now.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum()
}

pub(crate) fn rss_kb(pid: u32) -> Result<f64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

fn children(pid: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(counters: &[(&str, u64)]) -> PerThread {
        counters.iter().map(|(tid, n)| (OsString::from(tid), *n)).collect()
    }

    #[test]
    fn threads_that_end_in_the_window_do_not_count_against_it() {
        // 101 and 102 ended (with much time on them), 104 started, 100 and 103 grew.
        let before = threads(&[("100", 500), ("101", 90_000), ("102", 7_000), ("103", 20)]);
        let after = threads(&[("100", 530), ("103", 25), ("104", 4)]);
        assert_eq!(grown(&before, &after), 30 + 5 + 4);
        assert_eq!(grown(&after, &after), 0);
    }
}
