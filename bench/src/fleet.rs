//! The fleet (issue 14): real daemons (`loom-provisioner serve`) on one throwaway
//! PostgreSQL server, beside one daemon on its SQLite journal, all with the no-op plugin
//! and all on this machine. Measured side by side in every round:
//!
//! - **throughput**: tasks accepted per second over the HTTP API (many clients posting
//!   without `wait`, spread over the daemons), tasks done per second end to end (from the
//!   first post until the journal counts every task done), and the CPU time per task of
//!   every process involved (daemons, plugins, PostgreSQL, the clients), for one daemon on
//!   SQLite, one on PostgreSQL, and two and three on one PostgreSQL;
//! - **claim-to-send**: a task posted (with `wait`) to a daemon that does not run its
//!   plugin, claimed and sent by another (woken by `LISTEN/NOTIFY`): the record's
//!   `startedAt` minus `submittedAt` (ms), beside the same for a task the accepting daemon
//!   runs itself; medians over tasks sent one at a time.
//!
//! Then **failover**, a few times: two daemons with the default lease (12 s) and heartbeat
//! (3 s), SIGKILL of the one running idempotent tasks that take a while, and the time from
//! the kill until every one of them is running again on the other (its `startedAt`).
//!
//! PostgreSQL runs with `fsync` on (the tests' throwaway server runs without; the daemon's
//! SQLite journal syncs every commit, so PostgreSQL must too for a fair comparison). The server
//! and every daemon are stopped however the section ends, an interrupt included
//! ([`stop_everything`]).

use crate::figure::median;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loom_testpg::TestPg;
use serde_json::Value;

use crate::cpu;
use crate::figure::Figure;
use crate::footprint::{Reaped, start_serve};
use crate::http::Conn;
use crate::report;
use crate::supervised::{TempDir, write_plugin};

/// How much the section does.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Rounds of throughput and claim-to-send, each over every configuration.
    pub rounds: usize,
    /// Tasks per throughput measurement.
    pub tasks: usize,
    /// Concurrent API clients (a multiple of 6: spread evenly over 1, 2 and 3 daemons).
    pub clients: usize,
    /// Tasks each way per claim-to-send round.
    pub claims: usize,
    /// Failover rounds.
    pub failovers: usize,
}

/// What the section measured.
pub struct Measured {
    /// The figures, named as in [`report`].
    pub figures: Vec<Figure>,
    /// `SELECT version()` of the server used.
    pub postgres: String,
}

/// The daemon configurations compared, in [`report::FLEET_ACCEPTED`]'s order: daemons, and
/// whether they share PostgreSQL.
const CONFIGS: [(usize, bool); 4] = [(1, false), (1, true), (2, true), (3, true)];

/// Idempotent tasks running on the daemon that is killed in a failover round.
const SLOW_TASKS: usize = 4;

/// How long each of them takes: far longer than a failover.
const SLOW_MS: u64 = 120_000;

/// The daemon's default heartbeat interval (`[journal] heartbeat_secs`).
const HEARTBEAT: Duration = Duration::from_secs(3);

/// The section's PostgreSQL server; [`stop_everything`] may empty it from another thread.
static SERVER: Mutex<Option<TestPg>> = Mutex::new(None);

/// The daemons running now (their pids), and whether the section was stopped: a daemon
/// started after that is stopped at once.
static DAEMONS: Mutex<(Vec<u32>, bool)> = Mutex::new((Vec::new(), false));

/// Stops what the section started, at once (SIGKILL for the daemons, `pg_ctl stop -m
/// immediate` for the server): for an interrupt, when the section's own clean-up will not
/// run. Errors are ignored.
pub fn stop_everything() {
    let mut daemons = DAEMONS.lock().unwrap_or_else(PoisonError::into_inner);
    daemons.1 = true;
    for pid in daemons.0.drain(..) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    drop(daemons);
    drop(SERVER.lock().unwrap_or_else(PoisonError::into_inner).take());
}

/// Runs the section: `Ok(None)` when PostgreSQL is not installed (and `CI` is not set).
///
/// # Errors
/// When a daemon or the server fails, or a measurement comes out wrong (a task not done,
/// or run twice); everything started is stopped first.
pub fn measure(daemon: &Path, exe: &Path, plan: &Plan) -> Result<Option<Measured>, String> {
    let Some(server) = Server::start()? else { return Ok(None) };
    let postgres = server.version()?;
    let env = Env::new(daemon, exe)?;
    let mut accepted = report::FLEET_ACCEPTED.map(|name| Figure::new(name, "tasks/s"));
    let mut done = report::FLEET_DONE.map(|name| Figure::new(name, "tasks/s"));
    let mut cpu = report::FLEET_CPU.map(|name| Figure::new(name, report::CPU_UNIT));
    let [mut remote, mut local, mut remote_wait, mut local_wait] =
        [report::CLAIM_REMOTE, report::CLAIM_LOCAL, report::WAIT_REMOTE, report::WAIT_LOCAL]
            .map(|name| Figure::new(name, "ms"));
    for round in 0..plan.rounds {
        for (i, &(daemons, shared)) in CONFIGS.iter().enumerate() {
            eprintln!("loom-bench: fleet round {}: {}", round + 1, report::FLEET_ACCEPTED[i]);
            let t = throughput(&env, &server, daemons, shared, plan)?;
            accepted[i].rounds.push(t.accepted);
            done[i].rounds.push(t.done.per_sec);
            cpu[i].rounds.push(t.done.cpu_us);
        }
        let c = claim_to_send(&env, &server, plan.claims)?;
        remote.rounds.push(c.remote);
        local.rounds.push(c.local);
        remote_wait.rounds.push(c.remote_wait);
        local_wait.rounds.push(c.local_wait);
    }
    let mut failover_secs = Figure::new(report::FAILOVER, "s");
    for round in 0..plan.failovers {
        eprintln!("loom-bench: fleet failover {} of {}", round + 1, plan.failovers);
        failover_secs.rounds.push(failover(&env, &server, phases(round, plan.failovers))?);
    }
    let mut figures: Vec<Figure> = accepted.into_iter().chain(done).chain(cpu).collect();
    figures.extend([remote, local, remote_wait, local_wait, failover_secs]);
    Ok(Some(Measured { figures, postgres }))
}

/// The server in [`SERVER`] while this lives; stopped and removed when it is dropped.
struct Server;

impl Server {
    /// Starts a throwaway server with `fsync` on; `None` when PostgreSQL is not installed.
    fn start() -> Result<Option<Server>, String> {
        // loom-testpg is a test helper: it fails by panicking, with the server's log.
        let options = loom_testpg::Options { fsync: true, ..loom_testpg::Options::default() };
        let started = std::panic::catch_unwind(|| TestPg::start_with(options)).map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
            format!("cannot start PostgreSQL: {}", why.unwrap_or_default())
        })?;
        let Some(pg) = started else { return Ok(None) };
        let mut slot = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
        if DAEMONS.lock().unwrap_or_else(PoisonError::into_inner).1 {
            return Err("stopped".into());
        }
        *slot = Some(pg);
        drop(slot);
        let server = Server;
        if server.psql("SHOW fsync")?.trim() != "on" {
            return Err("PostgreSQL runs with fsync off".into());
        }
        Ok(Some(server))
    }

    /// Runs `f` on the server, unless it was stopped.
    fn with<T>(&self, what: &str, f: impl FnOnce(&TestPg) -> T) -> Result<T, String> {
        let slot = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
        let pg = slot.as_ref().ok_or("the PostgreSQL server was stopped")?;
        std::panic::catch_unwind(AssertUnwindSafe(|| f(pg))).map_err(|_| format!("PostgreSQL: {what} failed"))
    }

    fn psql(&self, sql: &str) -> Result<String, String> {
        self.with(sql, |pg| pg.psql("postgres", sql))
    }

    /// The postmaster's pid (its backends are its children).
    fn pid(&self) -> Result<u32, String> {
        let pid = self.with("reading postmaster.pid", TestPg::pid)?.ok_or("PostgreSQL is not running")?;
        u32::try_from(pid).map_err(|e| e.to_string())
    }

    fn version(&self) -> Result<String, String> {
        Ok(self.psql("SELECT version()")?.trim().to_owned())
    }

    /// The URL of a new, empty database.
    fn database(&self) -> Result<String, String> {
        self.with("CREATE DATABASE", TestPg::database)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(SERVER.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}

/// The daemon's executable and the plugins folders the section's daemons run on.
struct Env {
    daemon: PathBuf,
    /// The no-op plugin as automator `noop`.
    noop: PathBuf,
    /// The same executable as automator `other`: a daemon that cannot run `noop` tasks.
    other: PathBuf,
    /// The no-op plugin as automator `noop`, declaring START idempotent.
    idempotent: PathBuf,
    _dir: TempDir,
}

impl Env {
    fn new(daemon: &Path, exe: &Path) -> Result<Env, String> {
        let dir = TempDir::new("fleet-plugins")?;
        Ok(Env {
            daemon: daemon.to_path_buf(),
            noop: write_plugin(&dir.0.join("noop"), "noop", exe, &[], 1)?,
            other: write_plugin(&dir.0.join("other"), "other", exe, &[], 1)?,
            idempotent: write_plugin(&dir.0.join("idempotent"), "noop", exe, &["--idempotent"], 1)?,
            _dir: dir,
        })
    }
}

/// A daemon of the section, on a Unix socket, its log in a file; stopped (SIGTERM) and
/// its folder removed when dropped.
struct Daemon {
    name: String,
    proc: Reaped,
    api: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    /// Starts a daemon named `name` on `plugins`, on the journal at `url` (SQLite in its
    /// data folder when `None`), and waits for its `READY=1`.
    fn start(env: &Env, name: &str, plugins: &Path, url: Option<&str>) -> Result<Daemon, String> {
        let dir = TempDir::new("fleet")?;
        let api = dir.0.join("api.sock");
        let log = dir.0.join("serve.log");
        let stderr = std::fs::File::create(&log).map_err(|e| format!("cannot make {}: {e}", log.display()))?;
        // A stop waits at most a second for running tasks (a failover's sleep for minutes).
        let mut extra = "drain_grace_secs = 1\n".to_owned();
        if let Some(url) = url {
            extra.push_str(&format!("[journal]\nurl = {url:?}\nname = {name:?}\n"));
        }
        let listen = format!("unix:{}", api.display());
        let proc = start_serve(&env.daemon, plugins, &dir, &listen, &extra, Stdio::from(stderr))
            .map_err(|e| format!("daemon {name}: {e}; its log:\n{}", tail(&log)))?;
        let mut daemons = DAEMONS.lock().unwrap_or_else(PoisonError::into_inner);
        daemons.0.push(proc.0.id());
        let stopped = daemons.1;
        drop(daemons);
        let mut daemon = Daemon { name: name.to_owned(), proc, api, log, _dir: dir };
        if stopped {
            daemon.kill();
            return Err("stopped".into());
        }
        Ok(daemon)
    }

    fn conn(&self) -> Conn {
        Conn::new(&self.api)
    }

    /// The end of its log, for an error (its folder goes with it).
    fn log_tail(&self) -> String {
        format!("daemon {}'s log:\n{}", self.name, tail(&self.log))
    }

    /// SIGKILL, as a machine dies; then reaped.
    fn kill(&mut self) {
        self.forget();
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
    }

    /// Takes it off [`DAEMONS`] before it is reaped: a pid listed there is always still
    /// this child's (a reaped child's pid may be another process's by then).
    fn forget(&self) {
        let pid = self.proc.0.id();
        DAEMONS.lock().unwrap_or_else(PoisonError::into_inner).0.retain(|p| *p != pid);
    }
}

impl Drop for Daemon {
    /// Then `Reaped` stops it with SIGTERM, unless it was reaped already.
    fn drop(&mut self) {
        self.forget();
    }
}

/// The last lines of a daemon's log, for an error.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A no-op START task for automator `noop`.
fn task(id: &str) -> String {
    format!(
        r#"{{"taskId":"{id}","taskName":"START","config":{{"service":{{"name":"s","action":{{"type":"noop"}}}}}}}}"#
    )
}

/// One throughput measurement.
struct Throughput {
    /// Tasks accepted per second.
    accepted: f64,
    /// Tasks done per second, and the CPU time per task of every process involved.
    done: cpu::Throughput,
}

/// Tasks accepted and done per second with `daemons` daemons (on one PostgreSQL when
/// `shared`, else one on SQLite), `plan.clients` clients spread over them.
fn throughput(env: &Env, server: &Server, daemons: usize, shared: bool, plan: &Plan) -> Result<Throughput, String> {
    let url = if shared { Some(server.database()?) } else { None };
    let fleet = (0..daemons)
        .map(|i| Daemon::start(env, &format!("d{i}"), &env.noop, url.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    // Every process involved: this one (the clients), the daemons with their plugins, and
    // the server with its backends.
    let mut roots: Vec<u32> = fleet.iter().map(|d| d.proc.0.id()).collect();
    if shared {
        roots.push(server.pid()?);
    }
    let cpu_time = || cpu::own() + roots.iter().map(|&p| cpu::tree(p)).sum::<Duration>();
    let n = plan.tasks;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    // Every client connected before the clock starts.
    let start = Arc::new(Barrier::new(plan.clients + 1));
    let clients: Vec<_> = (0..plan.clients)
        .map(|c| {
            let (mut conn, next, failed, start) =
                (fleet[c % daemons].conn(), Arc::clone(&next), Arc::clone(&failed), Arc::clone(&start));
            std::thread::spawn(move || {
                let ready = conn.request("GET", "/healthz", None);
                start.wait();
                ready?;
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    submit(&mut conn, &task(&format!("t{i}")))
                        .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    start.wait();
    let (began, cpu_before) = (Instant::now(), cpu_time());
    for c in clients {
        c.join().map_err(|_| "an API client panicked".to_owned())??;
    }
    let accepted = began.elapsed().as_secs_f64();
    let mut conn = fleet[0].conn();
    while journal_done(&mut conn)? < n as u64 {
        if began.elapsed() > Duration::from_secs(600) {
            let logs: Vec<String> = fleet.iter().map(Daemon::log_tail).collect();
            return Err(format!("{n} tasks were not all done 10 minutes after they were posted; {}", logs.join("\n")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (finished, cpu_used) = (began.elapsed(), cpu_time().saturating_sub(cpu_before));
    // Each task ran exactly once, and succeeded, on some daemon.
    let mut ran = 0;
    for d in &fleet {
        ran += successes(&mut d.conn())?;
    }
    if ran != n as u64 {
        return Err(format!("{n} tasks were done, but the daemons ran {ran} successfully"));
    }
    Ok(Throughput { accepted: n as f64 / accepted, done: cpu::Throughput::new(n, finished, cpu_used) })
}

/// Posts `body` without `wait` until it is accepted (503, the daemon's budget is full:
/// again a moment later).
fn submit(conn: &mut Conn, body: &str) -> Result<(), String> {
    for _ in 0..3000 {
        match conn.request("POST", "/v1/tasks", Some(body))? {
            // 200: accepted by an earlier try whose answer was lost.
            (202 | 200, _) => return Ok(()),
            (503, _) => std::thread::sleep(Duration::from_millis(10)),
            (code, answer) => return Err(format!("a task was answered {code}: {answer}")),
        }
    }
    Err("a task was refused with 503 for 30 s".into())
}

/// Tasks done in the journal (the fleet's, on PostgreSQL), from `/metrics`.
fn journal_done(conn: &mut Conn) -> Result<u64, String> {
    let text = metrics(conn)?;
    metric_sum(&text, "loom_journal_tasks{", "state=\"done\"").ok_or_else(|| "no loom_journal_tasks in /metrics".into())
}

/// Tasks this daemon's plugins ran and that succeeded, from `/metrics`.
fn successes(conn: &mut Conn) -> Result<u64, String> {
    Ok(metric_sum(&metrics(conn)?, "loom_tasks_total{", "outcome=\"success\"").unwrap_or(0))
}

fn metrics(conn: &mut Conn) -> Result<String, String> {
    match conn.request("GET", "/metrics", None)? {
        (200, text) => Ok(text),
        (code, text) => Err(format!("/metrics answered {code}: {text}")),
    }
}

/// The sum of the samples of the metric whose lines start with `prefix` and have the
/// label `label`; `None` when there is none.
fn metric_sum(text: &str, prefix: &str, label: &str) -> Option<u64> {
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Medians of one claim-to-send round.
struct Claims {
    /// startedAt - submittedAt of a task posted to a daemon without its plugin, ms.
    remote: f64,
    /// The same for a task posted to the daemon that runs it, ms.
    local: f64,
    /// The client's `POST ?wait=true` round trip for the first, ms.
    remote_wait: f64,
    /// And for the second, ms.
    local_wait: f64,
}

/// `claims` tasks each way, one at a time and alternating: posted with `wait` to a daemon
/// that does not run `noop` (another daemon claims and sends them), and to the one that
/// does.
fn claim_to_send(env: &Env, server: &Server, claims: usize) -> Result<Claims, String> {
    let url = server.database()?;
    let runner = Daemon::start(env, "runner", &env.noop, Some(&url))?;
    let acceptor = Daemon::start(env, "acceptor", &env.other, Some(&url))?;
    let (mut to_runner, mut to_acceptor) = (runner.conn(), acceptor.conn());
    // Connections, prepared statements and the plugin warm.
    for i in 0..20 {
        waited(&mut to_acceptor, &format!("warm-a{i}"))?;
        waited(&mut to_runner, &format!("warm-r{i}"))?;
    }
    let (mut remote, mut local, mut remote_wait, mut local_wait) = (vec![], vec![], vec![], vec![]);
    for i in 0..claims {
        let (took, wait) = waited(&mut to_acceptor, &format!("remote{i}"))?;
        remote.push(took);
        remote_wait.push(wait);
        let (took, wait) = waited(&mut to_runner, &format!("local{i}"))?;
        local.push(took);
        local_wait.push(wait);
    }
    Ok(Claims {
        remote: median(&mut remote),
        local: median(&mut local),
        remote_wait: median(&mut remote_wait),
        local_wait: median(&mut local_wait),
    })
}

/// Posts task `id` with `wait=true`; its startedAt - submittedAt and the round trip, ms.
fn waited(conn: &mut Conn, id: &str) -> Result<(f64, f64), String> {
    let began = Instant::now();
    let (code, answer) = conn.request("POST", "/v1/tasks?wait=true", Some(&task(id)))?;
    let wait = began.elapsed().as_secs_f64() * 1e3;
    let record: Value = serde_json::from_str(&answer).map_err(|e| format!("task {id}: the answer is not JSON: {e}"))?;
    if code != 200 || record["result"]["status"] != 0 {
        return Err(format!("task {id} was answered {code}: {answer}"));
    }
    let (submitted, started) = (stamp(&record, "submittedAt")?, stamp(&record, "startedAt")?);
    Ok(((started - submitted) as f64, wait))
}

/// Where in a heartbeat interval round `round` of `rounds` starts the survivor and kills
/// the victim (fractions of it), spread evenly over the interval and apart from each
/// other: how long a failover takes depends on both (the lease runs out a lease after the
/// victim's last heartbeat; a survivor's next heartbeat takes its tasks over).
fn phases(round: usize, rounds: usize) -> (f64, f64) {
    let at = |slot: usize| (slot as f64 + 0.5) / rounds as f64;
    // A stride prime to the number of rounds pairs each kill with another start.
    let stride = (2..=rounds).find(|s| gcd(*s, rounds) == 1).unwrap_or(1);
    (at(round * stride % rounds), at(round))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Seconds from SIGKILL of a daemon running [`SLOW_TASKS`] idempotent tasks to all of
/// them started again on the other daemon (default lease and heartbeat). The survivor
/// starts `phases.0` of a heartbeat interval after the victim, and the victim is killed
/// `phases.1` of one after a heartbeat (two intervals after its start, by then running
/// the tasks).
fn failover(env: &Env, server: &Server, (start, kill): (f64, f64)) -> Result<f64, String> {
    let url = server.database()?;
    let mut victim = Daemon::start(env, "victim", &env.idempotent, Some(&url))?;
    // The daemon's first heartbeat is its joining, just before READY=1.
    let victim_ready = Instant::now();
    std::thread::sleep(HEARTBEAT.mul_f64(start));
    let survivor = Daemon::start(env, "survivor", &env.idempotent, Some(&url))?;
    let mut conn = victim.conn();
    let ids: Vec<String> = (0..SLOW_TASKS).map(|i| format!("slow{i}")).collect();
    for id in &ids {
        let body = format!(
            r#"{{"taskId":"{id}","taskName":"START","config":{{"service":{{"name":"s","action":{{"type":"noop"}}}},"sleepMs":{SLOW_MS}}}}}"#
        );
        submit(&mut conn, &body)?;
    }
    // Posted to the victim, which runs the plugin and has room: it claims them at once.
    let running = poll(Duration::from_secs(60), || {
        ids.iter().try_fold(true, |all, id| Ok(all && get(&mut conn, id)?["state"] == "running"))
    })?;
    if !running {
        return Err("the slow tasks were not all running 60 s after they were posted".into());
    }
    let kill_at = victim_ready + HEARTBEAT * 2 + HEARTBEAT.mul_f64(kill);
    std::thread::sleep(kill_at.saturating_duration_since(Instant::now()));
    let killed = now_ms();
    victim.kill();
    let mut conn = survivor.conn();
    let mut again: Vec<Option<i64>> = vec![None; ids.len()];
    let restarted = poll(Duration::from_secs(120), || {
        for (id, at) in ids.iter().zip(again.iter_mut()) {
            if at.is_none() {
                let record = get(&mut conn, id)?;
                if record["attempts"].as_u64().is_some_and(|a| a >= 2) {
                    *at = Some(stamp(&record, "startedAt")?);
                }
            }
        }
        Ok(again.iter().all(Option::is_some))
    })?;
    let last = again.iter().flatten().max().copied();
    match last {
        Some(last) if restarted => Ok((last - killed) as f64 / 1e3),
        _ => Err(format!("the killed daemon's tasks were not all started again within 120 s; {}", survivor.log_tail())),
    }
}

/// Calls `check` every 100 ms until it says true or `limit` has passed; whether it did.
fn poll(limit: Duration, mut check: impl FnMut() -> Result<bool, String>) -> Result<bool, String> {
    let began = Instant::now();
    loop {
        if check()? {
            return Ok(true);
        }
        if began.elapsed() > limit {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /v1/tasks/{id}`.
fn get(conn: &mut Conn, id: &str) -> Result<Value, String> {
    match conn.request("GET", &format!("/v1/tasks/{id}"), None)? {
        (200, answer) => serde_json::from_str(&answer).map_err(|e| format!("task {id}: the answer is not JSON: {e}")),
        (code, answer) => Err(format!("GET /v1/tasks/{id} answered {code}: {answer}")),
    }
}

/// A time of a task record (`2026-11-25T08:30:00.123Z`), in ms since the epoch.
fn stamp(record: &Value, field: &str) -> Result<i64, String> {
    record[field].as_str().and_then(rfc3339_ms).ok_or_else(|| format!("a task record without {field}: {record}"))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (as the journal writes it) in ms since the epoch.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| s.get(range)?.parse::<i64>().ok();
    if s.len() != 24 || !s.ends_with('Z') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, min, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + min * 60 + sec) * 1000) + ms)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_record_times_read_as_the_journal_writes_them() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(rfc3339_ms("2026-11-25T08:30:00.123Z"), Some(1_795_595_400_123));
        assert_eq!(rfc3339_ms("2000-02-29T00:00:00.000Z"), Some(951_782_400_000));
        assert_eq!(rfc3339_ms("2000-03-01T00:00:00.001Z"), Some(951_868_800_001));
        for bad in ["", "2026-11-25T08:30:00Z", "2026-11-25T08:30:00.123+01:00", "x026-11-25T08:30:00.123Z"] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn metrics_are_summed_over_matching_samples() {
        let text = "# TYPE loom_tasks_total counter\n\
                    loom_tasks_total{plugin=\"noop\",task=\"START\",outcome=\"success\"} 7\n\
                    loom_tasks_total{plugin=\"noop\",task=\"INSTALL\",outcome=\"success\"} 3\n\
                    loom_tasks_total{plugin=\"noop\",task=\"START\",outcome=\"failure\"} 2\n\
                    loom_journal_tasks{state=\"queued\"} 4\n\
                    loom_journal_tasks{state=\"done\"} 12\n";
        assert_eq!(metric_sum(text, "loom_tasks_total{", "outcome=\"success\""), Some(10));
        assert_eq!(metric_sum(text, "loom_journal_tasks{", "state=\"done\""), Some(12));
        assert_eq!(metric_sum(text, "loom_journal_tasks{", "state=\"running\""), None);
    }

    #[test]
    fn failover_rounds_spread_the_start_and_the_kill_over_a_heartbeat() {
        let five: Vec<(f64, f64)> = (0..5).map(|r| phases(r, 5)).collect();
        let (mut starts, mut kills): (Vec<f64>, Vec<f64>) = five.iter().copied().unzip();
        assert_eq!(kills, [0.1, 0.3, 0.5, 0.7, 0.9]);
        assert_ne!(starts, kills, "every kill paired with its own start");
        starts.sort_by(f64::total_cmp);
        kills.sort_by(f64::total_cmp);
        assert_eq!(starts, kills, "the starts cover the interval as evenly");
        assert_eq!(phases(0, 1), (0.5, 0.5));
        assert_eq!((0..4).map(|r| phases(r, 4).0).collect::<Vec<_>>(), [0.125, 0.875, 0.625, 0.375]);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
