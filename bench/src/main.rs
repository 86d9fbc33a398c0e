//! `loom-bench`: the supervisor's own costs, measured in one run beside a raw pipe floor
//! measured in the same run (this machine is shared and noisy: only ratios between
//! figures of one run mean anything). Each figure is taken in several rounds and shown
//! as min / median / max over the rounds.
//!
//! ```text
//! cargo build --release -p loom-bench && target/release/loom-bench [--quick] [--out BENCHMARKS.md]
//! ```
//!
//! Measured so far: the raw pipe floor; the sequential round trip of a no-op task through
//! the whole supervisor (tiny task, and Loom's real START task); pipelined throughput to
//! one and to two plugin processes; restart of a killed plugin until its next answer.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use loom_protocol::PluginKind;
use loom_supervisor::supervisor::Options;
use loom_supervisor::{Registry, Supervisor};
use serde_json::value::RawValue;

#[derive(Parser, Debug)]
#[command(name = "loom-bench", about = "Benchmarks the supervisor beside a raw pipe floor, in one run")]
struct Args {
    /// Fewer rounds and calls: a smoke test (well under a minute).
    #[arg(long)]
    quick: bool,
    /// Run everything on one core (this process, its threads and its children), as
    /// `../shared/peers/run.sh --pin` does: unpinned round trips on a 2-core machine
    /// are bimodal.
    #[arg(long)]
    pin: bool,
    /// Write the report (Markdown) here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Loom's START task, as its server sent it, with the automator made the benchmark's.
const START: &str = include_str!("../../protocol/tests/data/start-hbase-regionserver.json");

/// Figures of one measurement over its rounds.
struct Figure {
    name: &'static str,
    unit: &'static str,
    rounds: Vec<f64>,
}

impl Figure {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.rounds.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// How much each measurement does.
struct Size {
    rounds: usize,
    calls: usize,
    pipelined: usize,
    restarts: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let size = if args.quick {
        Size { rounds: 3, calls: 2_000, pipelined: 20_000, restarts: 5 }
    } else {
        Size { rounds: 7, calls: 20_000, pipelined: 200_000, restarts: 21 }
    };
    if args.pin {
        // Before any thread is made: threads and children inherit the mask.
        let mut one = nix::sched::CpuSet::new();
        if let Err(e) = one.set(0).and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one)) {
            eprintln!("loom-bench: cannot pin to core 0: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&size)) {
        Ok(figures) => {
            let report = report(&figures, &args);
            print!("{report}");
            if let Some(out) = &args.out
                && let Err(e) = std::fs::write(out, &report)
            {
                eprintln!("loom-bench: cannot write {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loom-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The folder of this executable, where `bench-noop-plugin` is built too.
fn plugin_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let path = exe.parent().unwrap_or(Path::new(".")).join("bench-noop-plugin");
    if path.is_file() { Ok(path) } else { Err(format!("{} is missing: build the loom-bench package", path.display())) }
}

async fn run(size: &Size) -> Result<Vec<Figure>, String> {
    let exe = plugin_exe()?;
    let mut floor = Figure { name: "raw pipe ping-pong, 100-byte line (floor)", unit: "us", rounds: vec![] };
    let mut tiny = Figure { name: TINY, unit: "us", rounds: vec![] };
    let mut start = Figure { name: "sequential no-op task, Loom's START task", unit: "us", rounds: vec![] };
    for _ in 0..size.rounds {
        // Side by side: each round measures the floor and the supervisor back to back.
        floor.rounds.push(pipe_floor(&exe, size.calls)?);
        let one = Bench::new(&exe, 1)?;
        tiny.rounds.push(one.sequential(&tiny_task, size.calls).await?);
        start.rounds.push(one.sequential(&start_task, size.calls).await?);
        one.sup.shutdown().await;
    }
    let mut piped_one = Figure { name: PIPED, unit: "tasks/s", rounds: vec![] };
    let mut piped_start = Figure { name: PIPED_START, unit: "tasks/s", rounds: vec![] };
    let mut piped_two = Figure { name: "pipelined no-op tasks, 2 processes", unit: "tasks/s", rounds: vec![] };
    for _ in 0..size.rounds {
        let one = Bench::new(&exe, 1)?;
        piped_one.rounds.push(one.pipelined(&tiny_task, size.pipelined).await?);
        piped_start.rounds.push(one.pipelined(&start_task, size.pipelined / 2).await?);
        one.sup.shutdown().await;
        let two = Bench::new(&exe, 2)?;
        piped_two.rounds.push(two.pipelined(&tiny_task, size.pipelined).await?);
        two.sup.shutdown().await;
    }
    let one = Bench::new(&exe, 1)?;
    let restart = Figure {
        name: "restart: SIGKILL to the next task answered",
        unit: "ms",
        rounds: one.restarts(size.restarts).await?,
    };
    one.sup.shutdown().await;
    Ok(vec![floor, tiny, start, piped_one, piped_start, piped_two, restart])
}

/// Per call, in microseconds: a 100-byte line to a child and back, blocking I/O.
fn pipe_floor(exe: &Path, calls: usize) -> Result<f64, String> {
    let mut child = Command::new(exe)
        .arg("--echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let (Some(mut to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the echo child has no pipes".into());
    };
    let mut from = BufReader::new(from);
    let line = format!("{}\n", "x".repeat(99));
    let mut back = String::new();
    let began = Instant::now();
    for _ in 0..calls {
        back.clear();
        to.write_all(line.as_bytes()).and_then(|()| to.flush()).map_err(|e| e.to_string())?;
        from.read_line(&mut back).map_err(|e| e.to_string())?;
    }
    let per_call = began.elapsed().as_secs_f64() * 1e6 / calls as f64;
    drop(to);
    let _ = child.wait();
    Ok(per_call)
}

fn tiny_task(i: usize) -> String {
    format!(
        r#"{{"taskId":"t{i}","taskName":"START","config":{{"service":{{"name":"s","action":{{"type":"noop","script":"x"}}}}}}}}"#
    )
}

fn start_task(i: usize) -> String {
    let one_line: String = START.split('\n').map(str::trim).collect::<Vec<_>>().join(" ");
    one_line
        .replacen("\"00000001-002-071\"", &format!("\"start-{i}\""), 1)
        .replace("\"type\": \"chef\"", "\"type\": \"noop\"")
}

/// A supervisor with the no-op plugin as automator `noop`.
struct Bench {
    sup: Arc<Supervisor>,
    _dir: TempDir,
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Bench {
    fn new(exe: &Path, instances: u32) -> Result<Bench, String> {
        let dir = std::env::temp_dir().join(format!("loom-bench-{}-{instances}-{}", std::process::id(), nanos()));
        let folder = dir.join("automators/noop");
        std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
        let manifest = serde_json::json!({"noop": {
            "executable": exe, "instances": instances, "maxConcurrency": 4096, "queueCapacity": 1_000_000,
            // Crashes more than a second apart each count as the first in a while: the
            // restart measured is the immediate one, not the backoff of a crash loop.
            "restart": {"withinSecs": 1},
        }});
        std::fs::write(folder.join("noop.json"), manifest.to_string()).map_err(|e| e.to_string())?;
        let registry = Registry::load(std::slice::from_ref(&dir)).map_err(|e| e.to_string())?;
        let sup =
            Arc::new(Supervisor::new(registry, Options { eager: true, log_level: loom_protocol::LogLevel::Warn }));
        Ok(Bench { sup, _dir: TempDir(dir) })
    }

    async fn call(&self, raw: Box<RawValue>) -> Result<(), String> {
        let report = self.sup.run_task(raw).await;
        if report.result.status == 0 { Ok(()) } else { Err(report.result.stderr) }
    }

    /// Per call, in microseconds, one task at a time (after a warm-up).
    async fn sequential(&self, task: &dyn Fn(usize) -> String, calls: usize) -> Result<f64, String> {
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

    /// Tasks per second with up to 1024 in flight.
    async fn pipelined(&self, task: &dyn Fn(usize) -> String, calls: usize) -> Result<f64, String> {
        let tasks = raw_tasks(task, calls)?;
        let began = Instant::now();
        let mut answers = futures_util::stream::iter(tasks.into_iter().map(|t| self.call(t))).buffer_unordered(1024);
        while let Some(answer) = answers.next().await {
            answer?;
        }
        Ok(calls as f64 / began.elapsed().as_secs_f64())
    }

    /// Milliseconds from SIGKILL of the plugin to the next task answered, per restart.
    async fn restarts(&self, times: usize) -> Result<Vec<f64>, String> {
        let plugin = self.sup.plugin(PluginKind::Automator, "noop").ok_or("the no-op plugin is not registered")?;
        let mut out = Vec::new();
        for i in 0..times {
            self.call(raw(&tiny_task(i))?).await?;
            let pid = plugin.status().first().and_then(|s| s.pid).ok_or("the plugin has no process")?;
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(|e| e.to_string())?);
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
            out.push(began.elapsed().as_secs_f64() * 1e3);
            // Past the restart policy's window, so that every restart is an immediate one.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        Ok(out)
    }
}

fn raw(text: &str) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text.to_owned()).map_err(|e| e.to_string())
}

fn raw_tasks(task: &dyn Fn(usize) -> String, n: usize) -> Result<Vec<Box<RawValue>>, String> {
    (0..n).map(|i| raw(&task(i))).collect()
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn report(figures: &[Figure], args: &Args) -> String {
    let floor = figures.first().map_or(f64::NAN, Figure::median);
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    // Counted from /proc: with --pin, this process may use only one of them.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map_or(0, |c| c.lines().filter(|l| l.starts_with("processor")).count());
    s.push_str(&format!(
        "Run by `loom-bench{}{}`{} on a {cores}-core machine ({host}); unix time {}. Figures are min / median / max over rounds; ratios use medians of this run.\n\n",
        if args.quick { " --quick" } else { "" },
        if args.pin { " --pin" } else { "" },
        if args.pin { " (everything pinned to core 0)" } else { "" },
        nanos() / 1_000_000_000
    ));
    s.push_str("| measurement | unit | min | median | max | ratio |\n|---|---|---|---|---|---|\n");
    for f in figures {
        let ratio = if f.unit == "us" { format!("{:.2}x the floor", f.median() / floor) } else { String::new() };
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {ratio} |\n",
            f.name,
            f.unit,
            f.min(),
            f.median(),
            f.max()
        ));
    }
    s.push_str("\n## Goals\n\n| goal | this run | met |\n|---|---|---|\n");
    let median = |name: &str| figures.iter().find(|f| f.name == name).map_or(f64::NAN, Figure::median);
    let goals: [(&str, String, bool); 4] = [
        (
            "sequential no-op round trip at most 2.0x the floor",
            format!("{:.2}x", median(TINY) / floor),
            median(TINY) / floor <= 2.0,
        ),
        (
            "pipelined no-op tasks to one process, at least 250,000/s",
            format!("{:.0}/s", median(PIPED)),
            median(PIPED) >= 250_000.0,
        ),
        (
            "pipelined START tasks to one process, at least 100,000/s",
            format!("{:.0}/s", median(PIPED_START)),
            median(PIPED_START) >= 100_000.0,
        ),
        (
            "restart of a Rust SDK plugin, median under 5 ms",
            format!("{:.1} ms", median(RESTART)),
            median(RESTART) < 5.0,
        ),
    ];
    for (goal, value, met) in goals {
        s.push_str(&format!("| {goal} | {value} | {} |\n", if met { "yes" } else { "**no**" }));
    }
    s.push_str(
        "\nNot measured yet by this harness: the peers (rmcp, TypeScript MCP, vscode-jsonrpc, Python MCP) in the same run, \
         footprint with 100 instances, the log flood, and `cluster up` against ansible-playbook.\n",
    );
    s
}

const TINY: &str = "sequential no-op task, tiny";
const PIPED: &str = "pipelined no-op tasks, 1 process";
const PIPED_START: &str = "pipelined START tasks, 1 process";
const RESTART: &str = "restart: SIGKILL to the next task answered";
