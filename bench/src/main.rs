//! `loom-bench`: the supervisor's own costs, measured in one run beside a raw pipe floor
//! and peer JSON-RPC stacks measured in the same run (this machine is shared and noisy:
//! only ratios between figures of one run mean anything). Each figure is taken in several
//! rounds and shown as min / median / max over the rounds; the goals of issue 7 are
//! checked against medians. `--quick` is CI's gate: it fails only on goals that a slower
//! or busier host leaves alone (ratios of figures measured side by side in the run,
//! memory, counts), missed by more than [`figure::GROSS`].
//!
//! ```text
//! cargo build --release -p loom-bench && target/release/loom-bench [--quick] [--out BENCHMARKS.md]
//! ```
//!
//! Each section is one module: `floor` (raw pipe, and the plugin started from scratch),
//! `supervised` (sequential, pipelined, restart), `peers`, `footprint`, `flood`, `cluster`,
//! `fleet` (daemons on one PostgreSQL, beside one on SQLite; `http` is its API client);
//! `cpu` counts CPU time; `figure` holds the verdict rule; `report` and `chart` write the
//! results.

mod affinity;
mod chart;
mod cluster;
mod cpu;
mod figure;
mod fleet;
mod flood;
mod floor;
mod footprint;
mod hostile;
mod http;
mod peers;
mod report;
mod supervised;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use figure::{Figure, Figures};
use supervised::{Bench, MakeTask, start_task, tiny_task};

#[derive(Parser, Debug)]
#[command(name = "loom-bench", about = "Benchmarks the supervisor beside a raw pipe floor and its peers, in one run")]
struct Args {
    /// Fewer calls, no peers, no cluster, no fleet and no contrast restarts: CI's gate (well under a
    /// minute), which fails only when a goal free of the host's speed (a ratio of figures
    /// measured side by side, memory, a count) is missed by more than 3x.
    #[arg(long)]
    quick: bool,
    /// Only these sections (comma-separated): latency, pipelined, restart, flood, footprint, hostile, cluster, fleet.
    #[arg(long, value_delimiter = ',', value_name = "SECTIONS")]
    only: Vec<Section>,
    /// The peers to run beside the supervisor (the full run only).
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/peers"))]
    peers: PathBuf,
    /// Write the report (Markdown) here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the round-trip chart (SVG) here.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
}

/// A part of the benchmark that can be run alone with `--only`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    /// The floor, sequential round trips and the peers' (pinned to one core).
    Latency,
    /// Many tasks in flight, to one and to two plugin processes (every core).
    Pipelined,
    /// SIGKILL of a plugin to its next answer (pinned).
    Restart,
    /// Task latency while the plugin floods the log; lines lost (pinned).
    Flood,
    /// The daemon with 100 plugin instances: memory, and CPU while idle.
    Footprint,
    /// The daemon's memory while 40 clients send 15 MB tasks and its plugin answers
    /// million-key results, and after.
    Hostile,
    /// `cluster up` of 10 and 20 local machines against ansible-playbook (the full run only).
    Cluster,
    /// Daemons on one PostgreSQL beside one on SQLite: tasks/s accepted and done,
    /// claim-to-send latency, failover time (the full run only).
    Fleet,
}

/// How much each measurement does.
pub struct Size {
    rounds: usize,
    /// Run the peers beside the supervisor (from this folder).
    peers: Option<PathBuf>,
    calls: usize,
    pipelined: usize,
    restarts: usize,
    /// Also restart with a large supervisor process, and a Python plugin (no goal: for
    /// the report).
    contrast: bool,
    flood_lines: u64,
    idle: std::time::Duration,
    fleet: fleet::Plan,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let size = if args.quick {
        Size {
            rounds: 5,
            peers: None,
            calls: 2_000,
            pipelined: 20_000,
            restarts: 9,
            contrast: false,
            flood_lines: 20_000,
            idle: std::time::Duration::from_secs(2),
            fleet: fleet::Plan { rounds: 2, tasks: 2_000, clients: 12, claims: 30, failovers: 1 },
        }
    } else {
        Size {
            rounds: 7,
            peers: Some(args.peers.clone()),
            calls: 20_000,
            pipelined: 200_000,
            restarts: 21,
            contrast: true,
            flood_lines: 100_000,
            idle: std::time::Duration::from_secs(10),
            fleet: fleet::Plan { rounds: 5, tasks: 10_000, clients: 24, claims: 100, failovers: 5 },
        }
    };
    if let Err(e) = flood::install_log_sink() {
        eprintln!("loom-bench: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sections = if args.only.is_empty() {
        {
            let mut all = vec![
                Section::Latency,
                Section::Pipelined,
                Section::Restart,
                Section::Flood,
                Section::Footprint,
                Section::Hostile,
            ];
            if !args.quick {
                all.extend([Section::Cluster, Section::Fleet]);
            }
            all
        }
    } else {
        args.only.clone()
    };
    // Spawned, so that the calls run on a worker thread as a daemon's requests do
    // (`block_on` would poll them on the main thread, and every answer would cross threads).
    let measured = runtime.block_on(async move {
        let run = tokio::spawn(async move { run(&sections, &size).await });
        tokio::select! {
            measured = run => measured,
            signal = interrupted() => {
                // The fleet's PostgreSQL server runs in a session of its own: no terminal's
                // signal reaches it, and it would outlive the benchmark.
                fleet::stop_everything();
                eprintln!("loom-bench: {signal}: stopped");
                std::process::exit(130);
            }
        }
    });
    let figures = match measured.unwrap_or_else(|e| Err(format!("the benchmark panicked: {e}"))) {
        Ok(figures) => figures,
        Err(e) => {
            eprintln!("loom-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let goals = report::goals(&figures);
    let text = report::markdown(&figures, &goals, args.quick);
    print!("{text}");
    if let Some(out) = &args.out
        && let Err(e) = std::fs::write(out, &text)
    {
        eprintln!("loom-bench: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.chart
        && let Some(svg) =
            chart::latency_svg(&report::chart_bars(&figures), "Sequential round trip over a child's stdio (median, us)")
        && let Err(e) = std::fs::write(path, svg)
    {
        eprintln!("loom-bench: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if args.quick {
        eprintln!("loom-bench: {}", figure::verdict_line(&goals, figure::GROSS));
        if !figure::gate(&goals, figure::GROSS).is_empty() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Waits for SIGINT or SIGTERM; its name. Never returns when neither can be watched.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// `name` in the folder of this executable (where cargo builds every binary).
fn sibling(name: &str, package: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let path = exe.parent().unwrap_or(Path::new(".")).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: build it with `cargo build --release -p {package}`", path.display()))
    }
}

fn plugin_exe() -> Result<PathBuf, String> {
    sibling("bench-noop-plugin", "loom-bench")
}

async fn run(sections: &[Section], size: &Size) -> Result<Figures, String> {
    let exe = plugin_exe()?;
    let all_cores = affinity::startup_mask()?;
    let mut figures = Figures::default();
    for &section in sections {
        eprintln!("loom-bench: {section:?}...");
        // Latency is measured on one core (see `affinity`); throughput on all of them.
        let pinned = matches!(section, Section::Latency | Section::Restart | Section::Flood);
        if pinned {
            affinity::pin(Some(0), &all_cores)?;
        }
        let result = measure(section, &exe, size, &mut figures).await;
        if pinned {
            affinity::pin(None, &all_cores)?;
        }
        result?;
    }
    Ok(figures)
}

async fn measure(section: Section, exe: &Path, size: &Size, figures: &mut Figures) -> Result<(), String> {
    match section {
        Section::Latency => latency(exe, size, figures).await,
        Section::Pipelined => {
            pipelined(exe, size, figures).await?;
            // Hand the tasks' memory back to the system: a restart forks the process
            // (see BENCHMARKS.md), and the daemon does not carry this harness's heap.
            release_memory();
            Ok(())
        }
        Section::Restart => restart(exe, size, figures).await,
        Section::Flood => log_flood(exe, size, figures).await,
        Section::Footprint => {
            let (exe, size) = (exe.to_path_buf(), (size.rounds.min(3), size.idle));
            let rounds = blocking("the footprint measurement", move || footprint_rounds(&exe, size)).await?;
            rounds.into_iter().for_each(|f| figures.push(f));
            Ok(())
        }
        Section::Hostile => {
            let (exe, rounds) = (exe.to_path_buf(), if size.peers.is_some() { 3 } else { 1 });
            let measured = blocking("the hostile-input measurement", move || hostile_rounds(&exe, rounds)).await?;
            measured.into_iter().for_each(|f| figures.push(f));
            Ok(())
        }
        Section::Fleet => fleet_section(exe, &size.fleet, figures).await,
        Section::Cluster => {
            let rounds = size.rounds.min(5);
            let measured = blocking("the cluster measurement", move || cluster_rounds(rounds)).await?;
            measured.into_iter().for_each(|f| figures.push(f));
            Ok(())
        }
    }
}

/// Runs blocking measurement code (child processes, sleeps) on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("{what} panicked: {e}"))?
}

/// The floor, the supervisor's sequential round trips and the peers', side by side in
/// every round.
async fn latency(exe: &Path, size: &Size, figures: &mut Figures) -> Result<(), String> {
    let mut floor = Figure::new(report::FLOOR, "us");
    let mut tiny = Figure::new(report::TINY, "us");
    let mut start = Figure::new(report::START, "us");
    let mut sup_only = Figure::new(report::SUP_ONLY, "us");
    let mut sdk_only = Figure::new(report::SDK_ONLY, "us");
    let mut sup_only_start = Figure::new(report::SUP_ONLY_START, "us");
    let mut sdk_only_start = Figure::new(report::SDK_ONLY_START, "us");
    let peers = match &size.peers {
        Some(dir) => match peers::Peers::prepare(dir) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                figures.note(format!("The peers were not run: {e}."));
                None
            }
        },
        None => None,
    };
    let mut peer_figures: Vec<Figure> = peers::PEERS.iter().map(|p| Figure::new(p.name, "us")).collect();
    for _ in 0..size.rounds {
        floor.rounds.push(floor::pipe_floor(exe, size.calls)?);
        let one = Bench::new(exe, &[], 1)?;
        tiny.rounds.push(one.sequential(tiny_task, size.calls).await?);
        start.rounds.push(one.sequential(start_task, size.calls).await?);
        one.sup.shutdown().await;
        // The two sides apart: the supervisor with a plugin that does nothing, and the
        // SDK plugin with a client that does nothing.
        let raw = Bench::new(exe, &["--raw"], 1)?;
        sup_only.rounds.push(raw.sequential(tiny_task, size.calls).await?);
        sup_only_start.rounds.push(raw.sequential(start_task, size.calls).await?);
        raw.sup.shutdown().await;
        for (task, figure) in [(tiny_task as MakeTask, &mut sdk_only), (start_task, &mut sdk_only_start)] {
            let (exe_owned, calls) = (exe.to_path_buf(), size.calls);
            figure
                .rounds
                .push(blocking("the SDK measurement", move || floor::sdk_direct(&exe_owned, task, calls)).await?);
        }
        if let Some(peers) = &peers {
            for (i, figure) in peer_figures.iter_mut().enumerate() {
                let peers = Arc::clone(peers);
                // A peer that fails is reported and left out of this round; the run goes on.
                match blocking("a peer run", move || Ok(peers.run(&peers::PEERS[i]))).await? {
                    Ok(us) => figure.rounds.push(us),
                    Err(e) => eprintln!("loom-bench: {e}"),
                }
            }
        }
    }
    figures.push(floor);
    figures.push(tiny);
    figures.push(start);
    figures.push(sup_only);
    figures.push(sdk_only);
    figures.push(sup_only_start);
    figures.push(sdk_only_start);
    for mut f in peer_figures {
        f.note = "../shared/peers".into();
        figures.push(f);
    }
    Ok(())
}

/// A throughput as two figures: its rate, and the CPU time per item.
struct Rated(Figure, Figure);

impl Rated {
    fn new((rate, cpu): (&'static str, &'static str), unit: &'static str) -> Rated {
        Rated(Figure::new(rate, unit), Figure::new(cpu, report::CPU_UNIT))
    }

    fn push(&mut self, t: cpu::Throughput) {
        self.0.rounds.push(t.per_sec);
        self.1.rounds.push(t.cpu_us);
    }
}

/// The supervisor's pipelined tasks, each round beside the raw pipe's pipelined rate.
async fn pipelined(exe: &Path, size: &Size, figures: &mut Figures) -> Result<(), String> {
    let mut pipe = Rated::new(report::PIPE_RATE, "lines/s");
    let mut one_tiny = Rated::new(report::PIPED, "tasks/s");
    let mut one_start = Rated::new(report::PIPED_START, "tasks/s");
    let mut two_tiny = Rated::new(report::PIPED_TWO, "tasks/s");
    for _ in 0..size.rounds {
        let (exe_owned, lines) = (exe.to_path_buf(), size.pipelined);
        pipe.push(blocking("the pipe's rate", move || floor::pipe_throughput(&exe_owned, lines)).await?);
        let one = Bench::new(exe, &[], 1)?;
        one_tiny.push(one.pipelined(tiny_task, size.pipelined).await?);
        one_start.push(one.pipelined(start_task, size.pipelined / 2).await?);
        one.sup.shutdown().await;
        let two = Bench::new(exe, &[], 2)?;
        two_tiny.push(two.pipelined(tiny_task, size.pipelined).await?);
        two.sup.shutdown().await;
    }
    for Rated(rate, cpu) in [pipe, one_tiny, one_start, two_tiny] {
        figures.push(rate);
        figures.push(cpu);
    }
    Ok(())
}

/// Restarts of the Rust SDK plugin, each beside a start of the same plugin from scratch;
/// then, for contrast (the full run only), with a large supervisor process and in Python.
async fn restart(exe: &Path, size: &Size, figures: &mut Figures) -> Result<(), String> {
    let one = Bench::new(exe, &[], 1)?;
    let mut rust = Figure::new(report::RESTART, "ms");
    let mut fresh = Figure::new(report::FRESH_START, "ms");
    for i in 0..size.restarts {
        // Side by side: the same plugin started from scratch by this harness, the least a
        // restart can cost, in the same conditions a moment before.
        let exe = exe.to_path_buf();
        fresh.rounds.push(blocking("a fresh start", move || floor::fresh_start(&exe)).await?);
        rust.rounds.push(one.restart(i).await?);
    }
    figures.push(rust);
    figures.push(fresh);
    if !size.contrast {
        one.sup.shutdown().await;
        return Ok(());
    }
    // The same with 256 MiB more resident in the supervisor's process: a spawn forks it
    // (code must run in the child before exec), and fork copies the page tables.
    let ballast = vec![1u8; 256 << 20];
    let mut heavy = Figure::new(report::RESTART_HEAVY, "ms");
    heavy.rounds = one.restarts(size.restarts.div_ceil(3)).await?;
    drop(std::hint::black_box(ballast));
    release_memory();
    one.sup.shutdown().await;
    // For contrast: a Python plugin (the interpreter's start-up is most of it).
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/python/noop_plugin.py"));
    let python = Bench::new(&script, &[], 1)?;
    let mut py = Figure::new(report::RESTART_PYTHON, "ms");
    py.rounds = python.restarts(size.restarts.div_ceil(3)).await?;
    python.sup.shutdown().await;
    figures.push(heavy);
    figures.push(py);
    Ok(())
}

async fn log_flood(exe: &Path, size: &Size, figures: &mut Figures) -> Result<(), String> {
    let mut quiet = Figure::new(report::FLOOD_QUIET, "us");
    let mut flooded = Figure::new(report::FLOODED, "us");
    let mut lost = Figure::new(report::FLOOD_LOST, "lines");
    let mut rate = Figure::new(report::FLOOD_RATE, "lines/s");
    let mut during = Figure::new(report::FLOOD_CALLS, "tasks");
    for _ in 0..size.rounds {
        let r = flood::round(exe, size.flood_lines, size.calls).await?;
        quiet.rounds.push(r.quiet_us);
        flooded.rounds.push(r.flooded_us);
        lost.rounds.push(size.flood_lines.saturating_sub(r.received) as f64);
        rate.rounds.push(r.lines_per_sec);
        during.rounds.push(r.calls_during as f64);
    }
    for f in [quiet, flooded, lost, rate, during] {
        figures.push(f);
    }
    Ok(())
}

/// The daemon with 100 instances, `rounds` times, each watched for `idle` (blocking).
fn footprint_rounds(exe: &Path, (rounds, idle): (usize, std::time::Duration)) -> Result<Vec<Figure>, String> {
    let daemon = sibling("loom-provisioner", "loom-supervisor")?;
    let mut rss = Figure::new(report::RSS, "MB");
    let mut cpu = Figure::new(report::IDLE_CPU, "% of a core");
    let mut wakeups = Figure::new(report::WAKEUPS, "per s");
    let mut plugin = Figure::new(report::PLUGIN_RSS, "MB");
    let mut ready = Figure::new(report::READY, "s");
    for _ in 0..rounds {
        let r = footprint::round(&daemon, exe, 100, idle)?;
        rss.rounds.push(r.rss_mb);
        cpu.rounds.push(r.idle_cpu_percent);
        wakeups.rounds.push(r.wakeups_per_sec);
        plugin.rounds.push(r.plugin_rss_mb);
        ready.rounds.push(r.ready_secs);
    }
    Ok(vec![rss, cpu, wakeups, plugin, ready])
}

/// Issue 11's burst against the real daemon, `rounds` times (blocking).
fn hostile_rounds(exe: &Path, rounds: usize) -> Result<Vec<Figure>, String> {
    let daemon = sibling("loom-provisioner", "loom-supervisor")?;
    let burst = hostile::Burst { clients: 40, task_bytes: 15 * 1024 * 1024, result_keys: 1_000_000 };
    let mut idle = Figure::new(report::HOSTILE_IDLE, "MB");
    let mut peak = Figure::new(report::HOSTILE_PEAK, "MB");
    let mut after = Figure::new(report::HOSTILE_AFTER, "MB");
    for _ in 0..rounds {
        let r = hostile::round(&daemon, exe, &burst)?;
        if r.answered != burst.clients {
            return Err(format!("{} of {} hostile tasks were answered", r.answered, burst.clients));
        }
        idle.rounds.push(r.idle_mb);
        peak.rounds.push(r.peak_mb);
        after.rounds.push(r.after_mb);
    }
    Ok(vec![idle, peak, after])
}

/// `cluster up` against ansible-playbook on 10 and 20 machines, `rounds` times (blocking).
fn cluster_rounds(rounds: usize) -> Result<Vec<Figure>, String> {
    let tools = cluster::Tools::prepare(sibling)?;
    let mut out = Vec::new();
    let mut command = Figure::new(report::REMOTE_COMMAND, "ms");
    for (nodes, names) in [(10, report::CLUSTER_10), (20, report::CLUSTER_20)] {
        let mut up = Figure::new(names[0], "s");
        let mut services = Figure::new(names[1], "s");
        let mut ansible = Figure::new(names[2], "s");
        for round in 0..rounds {
            let r = cluster::round(&tools, nodes, &format!("{}-{round}", std::process::id()))?;
            up.rounds.push(r.loom_up);
            services.rounds.push(r.loom_services);
            ansible.rounds.push(r.ansible);
            command.rounds.push(r.command_ms);
        }
        out.extend([up, services, ansible]);
    }
    out.push(command);
    Ok(out)
}

/// The fleet on a throwaway PostgreSQL server; a note instead when PostgreSQL is not
/// installed.
async fn fleet_section(exe: &Path, plan: &fleet::Plan, figures: &mut Figures) -> Result<(), String> {
    let daemon = sibling("loom-provisioner", "loom-supervisor")?;
    let (exe, plan) = (exe.to_path_buf(), *plan);
    match blocking("the fleet measurement", move || fleet::measure(&daemon, &exe, &plan)).await? {
        Some(measured) => {
            measured.figures.into_iter().for_each(|f| figures.push(f));
            figures.set_fact("postgres", measured.postgres);
        }
        None => figures.note("The fleet was not measured: PostgreSQL is not installed (initdb, pg_ctl).".into()),
    }
    Ok(())
}

/// Returns freed heap memory to the system (glibc keeps it otherwise).
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
