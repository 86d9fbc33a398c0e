//! BENCHMARKS.md: the machine, every figure (min / median / max) and the goals.

use crate::figure::{Better, Figure, Figures, Goal, Verdict};

pub const FLOOR: &str = "raw pipe ping-pong, 100-byte line (floor)";
pub const TINY: &str = "sequential no-op task, tiny";
pub const START: &str = "sequential no-op task, Loom's START task";
pub const SUP_ONLY: &str = "supervisor alone: tiny task to a plugin that does nothing (no JSON parser)";
pub const SDK_ONLY: &str = "Rust SDK plugin alone: tiny task from a blocking client";
pub const SUP_ONLY_START: &str = "supervisor alone: START task to a plugin that does nothing";
pub const SDK_ONLY_START: &str = "Rust SDK plugin alone: START task from a blocking client";
/// The unit of CPU-time figures (no ratio to the floor in the table: not a round trip).
pub const CPU_UNIT: &str = "us of CPU";
pub const PIPE_RATE: (&str, &str) = (
    "raw pipe, 100-byte lines through an echo child, many in flight (floor)",
    "raw pipe, many in flight: CPU time per line, both ends",
);
pub const PIPED: (&str, &str) =
    ("pipelined no-op tasks, 1 process", "pipelined no-op tasks, 1 process: CPU time per task, supervisor and plugin");
pub const PIPED_START: (&str, &str) =
    ("pipelined START tasks, 1 process", "pipelined START tasks, 1 process: CPU time per task, supervisor and plugin");
pub const PIPED_TWO: (&str, &str) = (
    "pipelined no-op tasks, 2 processes",
    "pipelined no-op tasks, 2 processes: CPU time per task, supervisor and plugins",
);
pub const RESTART: &str = "restart: SIGKILL to the next task answered";
pub const FRESH_START: &str = "the same plugin started from scratch by the harness: spawn, handshake, first answer";
pub const RESTART_PYTHON: &str = "restart of a Python plugin (standard library only), for contrast";
pub const RESTART_HEAVY: &str = "restart, with 256 MiB more resident in the supervisor";
pub const RSS: &str = "daemon with 100 plugin instances: resident memory";
pub const IDLE_CPU: &str = "daemon with 100 plugin instances: CPU while idle";
pub const WAKEUPS: &str = "daemon with 100 plugin instances: context switches while idle";
pub const PLUGIN_RSS: &str = "one Rust SDK plugin process: resident memory";
pub const READY: &str = "daemon start to READY=1 with 100 instances";
pub const CLUSTER_10: [&str; 3] = [
    "10 machines: loom cluster up, machines included",
    "10 machines: loom cluster up, service steps only",
    "10 machines: ansible-playbook, the same scripts",
];
pub const CLUSTER_20: [&str; 3] = [
    "20 machines: loom cluster up, machines included",
    "20 machines: loom cluster up, service steps only",
    "20 machines: ansible-playbook, the same scripts",
];
pub const REMOTE_COMMAND: &str = "one remote command on an open SSH connection (sshd session, login shell)";
pub const HOSTILE_IDLE: &str = "daemon before the hostile burst: resident memory";
pub const HOSTILE_PEAK: &str =
    "daemon while 40 clients send 15 MB tasks and its plugin answers million-key results: peak resident memory";
pub const HOSTILE_AFTER: &str = "daemon after the hostile burst: resident memory";
pub const FLOOD_QUIET: &str = "sequential no-op task, no log flood";
pub const FLOODED: &str = "sequential no-op task, same process flooding the log";
pub const FLOOD_LOST: &str = "log lines of the flood missing from the log";
pub const FLOOD_RATE: &str = "log flood rate through the supervisor";
pub const FLOOD_CALLS: &str = "tasks answered during the flood";
/// The fleet's configurations, in the order of [`crate::fleet`]'s.
pub const FLEET_ACCEPTED: [&str; 4] = [
    "fleet: tasks accepted over the API, 1 daemon on SQLite",
    "fleet: tasks accepted over the API, 1 daemon on PostgreSQL",
    "fleet: tasks accepted over the API, 2 daemons on one PostgreSQL",
    "fleet: tasks accepted over the API, 3 daemons on one PostgreSQL",
];
pub const FLEET_DONE: [&str; 4] = [
    "fleet: tasks done end to end, 1 daemon on SQLite",
    "fleet: tasks done end to end, 1 daemon on PostgreSQL",
    "fleet: tasks done end to end, 2 daemons on one PostgreSQL",
    "fleet: tasks done end to end, 3 daemons on one PostgreSQL",
];
pub const FLEET_CPU: [&str; 4] = [
    "fleet: CPU time per task, every process (daemons, plugins, PostgreSQL, clients), 1 daemon on SQLite",
    "fleet: CPU time per task, every process, 1 daemon on PostgreSQL",
    "fleet: CPU time per task, every process, 2 daemons on one PostgreSQL",
    "fleet: CPU time per task, every process, 3 daemons on one PostgreSQL",
];
pub const CLAIM_REMOTE: &str =
    "fleet: claim-to-send, task accepted by a daemon without its plugin and sent by another (startedAt - submittedAt)";
pub const CLAIM_LOCAL: &str =
    "fleet: claim-to-send, task accepted and sent by the same daemon (startedAt - submittedAt)";
pub const WAIT_REMOTE: &str = "fleet: POST ?wait=true round trip, task run by another daemon";
pub const WAIT_LOCAL: &str = "fleet: POST ?wait=true round trip, task run by the accepting daemon";
pub const FAILOVER: &str =
    "fleet: SIGKILL of a daemon to its running idempotent tasks started again on another (lease 12 s, heartbeat 3 s)";

/// The round-trip chart's bars: the floor, this project's figures, the peers.
pub fn chart_bars(f: &Figures) -> Vec<crate::chart::Bar<'_>> {
    use crate::chart::{Bar, Kind};
    let ours: [(&str, &str, Kind); 6] = [
        (FLOOR, "raw pipe ping-pong (the floor)", Kind::Floor),
        (TINY, "Loom: supervisor + SDK plugin", Kind::Loom),
        (START, "Loom: Loom's 2 KB START task", Kind::Loom),
        (SUP_ONLY, "Loom: the supervisor alone", Kind::Loom),
        (SDK_ONLY, "Loom: the SDK plugin alone", Kind::Loom),
        (SDK_ONLY_START, "Loom: SDK plugin alone, START", Kind::Loom),
    ];
    let peers = crate::peers::PEERS.iter().map(|p| (p.name, p.name.trim_start_matches("peer: "), Kind::Peer));
    ours.into_iter()
        .chain(peers)
        .filter_map(|(name, label, kind)| f.0.iter().find(|x| x.name == name).map(|figure| Bar { figure, label, kind }))
        .collect()
}

/// The goals of issue 7 and the side-by-side forms the CI gate checks, valued from this
/// run's medians. A goal stated as a time or a rate on this host is reported only; the
/// gate checks its same-run counterpart (see [`Goal::gated`]).
pub fn goals(f: &Figures) -> Vec<Goal> {
    let ratio = |a: f64, b: f64| a / b;
    let floor = ratio(f.median(TINY), f.median(FLOOR));
    let piped_cpu = ratio(f.median(PIPED.1), f.median(PIPE_RATE.1));
    let start_cpu = ratio(f.median(PIPED_START.1), f.median(PIPE_RATE.1));
    // The fastest of each, not the medians: a restart is one ~2 ms event, and on a busy
    // host most of a typical one is other processes' turns on the core (bench/README.md);
    // that noise only ever adds, so the fastest is the code's own cost. A 20 ms sleep in
    // the restart path moves this ratio from about 1.2 to over 10.
    let restart = ratio(f.min(RESTART), f.min(FRESH_START));
    vec![
        Goal {
            text: "sequential no-op round trip at most 2.0x the raw pipe floor",
            key: "round trip / pipe floor",
            value: floor,
            shown: format!("{floor:.2}x"),
            bound: 2.0,
            better: Better::Lower,
            gated: true,
        },
        {
            let ratio = ratio(f.median(crate::peers::RMCP), f.median(TINY));
            Goal {
                text: "sequential no-op round trip at least 2.5x faster than rmcp's",
                key: "rmcp / round trip",
                value: ratio,
                shown: format!("{ratio:.2}x faster"),
                bound: 2.5,
                better: Better::Higher,
                gated: true,
            }
        },
        {
            let ratio = ratio(f.median(crate::peers::VSCODE), f.median(TINY));
            Goal {
                text: "sequential no-op round trip at least 8x faster than vscode-jsonrpc's",
                key: "vscode-jsonrpc / round trip",
                value: ratio,
                shown: format!("{ratio:.2}x faster"),
                bound: 8.0,
                better: Better::Higher,
                gated: true,
            }
        },
        Goal {
            text: "pipelined no-op tasks to one process: at least 250,000/s",
            key: "pipelined no-op tasks/s",
            value: f.median(PIPED.0),
            shown: format!("{:.0}/s", f.median(PIPED.0)),
            bound: 250_000.0,
            better: Better::Higher,
            gated: false,
        },
        Goal {
            text: "pipelined no-op tasks to one process: CPU time per task at most 4x the raw pipe's per line",
            key: "pipelined no-op CPU / pipe's",
            value: piped_cpu,
            shown: format!("{piped_cpu:.2}x"),
            bound: 4.0,
            better: Better::Lower,
            gated: true,
        },
        Goal {
            text: "pipelined START tasks to one process: at least 100,000/s",
            key: "pipelined START tasks/s",
            value: f.median(PIPED_START.0),
            shown: format!("{:.0}/s", f.median(PIPED_START.0)),
            bound: 100_000.0,
            better: Better::Higher,
            gated: false,
        },
        Goal {
            text: "pipelined START tasks to one process: CPU time per task at most 16x the raw pipe's per line",
            key: "pipelined START CPU / pipe's",
            value: start_cpu,
            shown: format!("{start_cpu:.1}x"),
            bound: 16.0,
            better: Better::Lower,
            gated: true,
        },
        Goal {
            text: "restart of a Rust SDK plugin: median under 5 ms",
            key: "restart",
            value: f.median(RESTART),
            shown: format!("{:.1} ms", f.median(RESTART)),
            bound: 5.0,
            better: Better::Lower,
            gated: false,
        },
        Goal {
            text: "restart of a Rust SDK plugin at most 2x the same plugin started from scratch beside it (fastest of each)",
            key: "restart / fresh start",
            value: restart,
            shown: format!("{restart:.2}x"),
            bound: 2.0,
            better: Better::Lower,
            gated: true,
        },
        {
            let ratio = ratio(f.median(CLUSTER_20[2]), f.median(CLUSTER_20[0]));
            Goal {
                text: "cluster up of 20 local machines at least 5x faster than ansible-playbook doing the same work",
                key: "ansible / cluster up",
                value: ratio,
                shown: format!("{ratio:.1}x faster (machines included)"),
                bound: 5.0,
                better: Better::Higher,
                gated: true,
            }
        },
        Goal {
            text: "100 plugin instances: supervisor under 30 MB resident",
            key: "daemon RSS",
            value: f.median(RSS),
            shown: format!("{:.1} MB", f.median(RSS)),
            bound: 30.0,
            better: Better::Lower,
            gated: true,
        },
        // CPU while idle is wake-ups times their cost: a host twice as slow doubles it,
        // still over 10x below what fails the gate.
        Goal {
            text: "100 plugin instances: no measurable CPU while idle (under 0.1% of a core)",
            key: "idle CPU",
            value: f.median(IDLE_CPU),
            shown: format!("{:.3}%", f.median(IDLE_CPU)),
            bound: 0.1,
            better: Better::Lower,
            gated: true,
        },
        {
            let ratio = ratio(f.median(FLOODED), f.median(FLOOD_QUIET));
            Goal {
                text: "a log flood raises task latency at most 2x",
                key: "flooded / quiet",
                value: ratio,
                shown: format!("{ratio:.2}x"),
                bound: 2.0,
                better: Better::Lower,
                gated: true,
            }
        },
        Goal {
            text: "40 clients sending 15 MB tasks, a plugin answering million-key results: daemon under 200 MB resident",
            key: "hostile peak RSS",
            value: f.max(HOSTILE_PEAK),
            shown: format!("{:.0} MB", f.max(HOSTILE_PEAK)),
            bound: 200.0,
            better: Better::Lower,
            gated: true,
        },
        {
            let ratio = ratio(f.max(HOSTILE_AFTER), f.median(HOSTILE_IDLE));
            Goal {
                text: "after that burst: back within 2x the idle resident memory",
                key: "after burst / idle RSS",
                value: ratio,
                shown: format!("{ratio:.2}x"),
                bound: 2.0,
                better: Better::Lower,
                gated: true,
            }
        },
        Goal {
            text: "a fleet with the default lease and heartbeat fails over within about 15 s (median)",
            key: "failover",
            value: f.median(FAILOVER),
            shown: format!("{:.1} s", f.median(FAILOVER)),
            bound: 15.0,
            better: Better::Lower,
            gated: false,
        },
        Goal {
            text: "no log line of the flood is lost",
            key: "lines lost",
            value: f.max(FLOOD_LOST),
            shown: format!("{:.0}", f.max(FLOOD_LOST)),
            bound: 0.0,
            better: Better::Lower,
            gated: true,
        },
    ]
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown CPU".to_owned(), |m| m.trim().to_owned());
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cores} cores ({model}), Linux {}, load average {} at the end", kernel.trim(), load.join(" "))
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown date".to_owned(), |s| s.trim().to_owned())
}

fn row(f: &Figure, floor: f64) -> String {
    let ratio = if f.unit == "us" && !floor.is_nan() { format!("{:.2}x", f.median() / floor) } else { String::new() };
    let digits = match f.median().abs() {
        m if m >= 1000.0 => 0,
        m if m < 1.0 => 3,
        _ => 1,
    };
    format!(
        "| {}{} | {} | {:.digits$} | {:.digits$} | {:.digits$} | {ratio} |\n",
        f.name,
        if f.note.is_empty() { String::new() } else { format!(" ({})", f.note) },
        f.unit,
        f.min(),
        f.median(),
        f.max(),
    )
}

/// Where the time goes: the figures behind the goals that are hard, computed from this
/// run (each paragraph only when its figures were measured).
fn analysis(f: &Figures) -> String {
    let floor = f.median(FLOOR);
    let x = |name: &str| f.median(name) / floor;
    let mut s = String::from("\n## Where the time goes\n\n");
    if !f.median(SUP_ONLY).is_nan() {
        s.push_str(&format!(
            "- **Sequential round trip.** A no-op task takes {:.1} us, {:.2}x the raw pipe floor of {:.1} us. \
             The two sides measured apart: the supervisor with a plugin that does nothing (blocking I/O, no JSON \
             parser) {:.1} us ({:.2}x), the Rust SDK plugin driven by a blocking client {:.1} us ({:.2}x): each \
             side adds about {:.1} and {:.1} us to the pipe (an epoll wake-up, reading and writing a JSON-RPC line, \
             and for the supervisor routing, a slot, an armed timeout and the result's checks).",
            f.median(TINY),
            x(TINY),
            floor,
            f.median(SUP_ONLY),
            x(SUP_ONLY),
            f.median(SDK_ONLY),
            x(SDK_ONLY),
            f.median(SUP_ONLY) - floor,
            f.median(SDK_ONLY) - floor,
        ));
        let peer = |name: &str| f.0.iter().find(|p| p.name.starts_with(name)).map(Figure::median);
        if let (Some(tokio), Some(hand)) = (peer("peer: tokio pipe"), peer("peer: hand-rolled")) {
            s.push_str(&format!(
                " For scale, in the same run: the same ping-pong between two tokio processes without any JSON takes \
                 {tokio:.1} us ({:.2}x), and the smallest hand-rolled JSON-RPC client and child (no routing, no \
                 timeouts, no SDK) {hand:.1} us ({:.2}x). A 2.0x bound is below what an async JSON-RPC pair achieves \
                 here at all.",
                tokio / floor,
                hand / floor
            ));
        }
        s.push('\n');
    }
    if !f.median(SDK_ONLY_START).is_nan() {
        s.push_str(&format!(
            "- **Loom's START task.** {:.1} us through the supervisor against {:.1} us for a tiny task. Its 2 KB \
             are read once by the supervisor, in one streaming pass for the routing fields and credentials \
             (the supervisor alone: {:.1} us, {:.1} us more than for a tiny task), and once by the SDK, which \
             keeps the `config` as text until the plugin first uses it (the SDK alone: {:.1} us, {:.1} us more). \
             Building the `serde_json` tree of the config up front used to cost the SDK about 8 us per START \
             task and capped one plugin process near 60,000 START tasks/s on this machine; a plugin that reads \
             its config still pays that, when it reads it.\n",
            f.median(START),
            f.median(TINY),
            f.median(SUP_ONLY_START),
            f.median(SUP_ONLY_START) - f.median(SUP_ONLY),
            f.median(SDK_ONLY_START),
            f.median(SDK_ONLY_START) - f.median(SDK_ONLY),
        ));
    }
    if !f.median(PIPED.1).is_nan() {
        s.push_str(&format!(
            "- **Pipelined.** {:.0} no-op tasks/s to one process ({:.0} START tasks/s), using {:.1} us of CPU per \
             task in the supervisor and the plugin together ({:.1} us for START), {:.1}x and {:.1}x the {:.2} us of \
             CPU the raw pipe takes per line measured beside them. The rates depend on the share of the two cores \
             that other processes leave; the CPU time per task barely does, so the CI gate checks that.\n",
            f.median(PIPED.0),
            f.median(PIPED_START.0),
            f.median(PIPED.1),
            f.median(PIPED_START.1),
            f.median(PIPED.1) / f.median(PIPE_RATE.1),
            f.median(PIPED_START.1) / f.median(PIPE_RATE.1),
            f.median(PIPE_RATE.1),
        ));
    }
    if !f.median(RESTART).is_nan() {
        s.push_str(&format!(
            "- **Restart.** {:.1} ms from SIGKILL to the next answer (fastest {:.1}, slowest {:.1}), against {:.1} ms \
             (fastest {:.1}) for the same plugin started from scratch by the harness just before each restart \
             (fork, exec, handshake, first answer: the least a restart can cost). The first restart is immediate, \
             with no backoff. On a busy host the spread is the host's: the restart's own CPU time is steady \
             (bench/README.md), while each of its dozen hand-offs between threads and processes (reaping, the \
             spawner thread, fork, exec, the handshake, the answer) can give another process on the core a turn \
             first; so the CI gate compares the fastest of each.",
            f.median(RESTART),
            f.min(RESTART),
            f.max(RESTART),
            f.median(FRESH_START),
            f.min(FRESH_START),
        ));
        if !f.median(RESTART_HEAVY).is_nan() {
            s.push_str(&format!(
                " With 256 MiB more resident in the supervisor's process it is {:.1} ms: plugins are started with \
                 fork and exec, because the parent-death signal and the log channel must be set up in the child \
                 before exec, and fork copies the parent's page tables. The daemon itself stays small{}, so \
                 this matters only for a supervisor embedded in a large process.",
                f.median(RESTART_HEAVY),
                if f.median(RSS).is_nan() { String::new() } else { format!(" ({:.0} MB above)", f.median(RSS)) },
            ));
        }
        s.push('\n');
    }
    if !f.median(FLOODED).is_nan() {
        s.push_str(&format!(
            "- **Log flood.** The plugin answering the tasks also sends {:.0} lines/s of log; the tasks' median \
             round trip goes from {:.1} to {:.1} us. Log lines travel on their own pipe (fd 3), so they never \
             queue in front of answers, and one log thread formats and writes them. When the log falls more \
             than 32 MiB behind, lines are **dropped and counted** (a warning gives the count), never waited \
             for: rate-limiting the plugin would slow its task channel too.\n",
            f.median(FLOOD_RATE),
            f.median(FLOOD_QUIET),
            f.median(FLOODED),
        ));
    }
    if !f.median(CLUSTER_20[0]).is_nan() {
        let command = f.median(REMOTE_COMMAND);
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        s.push_str(&format!(
            "- **Cluster.** 20 machines: `cluster up` {:.1} s (of which {:.1} s for the services' steps), \
             ansible-playbook {:.1} s for the same script on machines that already exist, both running 8 \
             steps at once. Every step of both \
             tools is at least one remote command, and one command on an open SSH connection costs {:.0} ms here \
             (sshd's session and the login shell's start-up: root's `.bashrc` on this host runs `pyenv init`). \
             The `shell` automator keeps one SSH login per machine for all its steps and runs each step as one \
             command, 4 per machine: 80 commands, about {:.1} s of CPU on {cores:.0} cores, so the login shell \
             alone accounts for about {:.1} s of Loom's time; ansible runs a Python module per task besides. \
             On a host with a light login shell both times shrink, Loom's far more.\n",
            f.median(CLUSTER_20[0]),
            f.median(CLUSTER_20[1]),
            f.median(CLUSTER_20[2]),
            command,
            80.0 * command / 1e3,
            80.0 * command / 1e3 / cores,
        ));
    }
    s.push_str(&fleet_analysis(f));
    if s.ends_with("goes\n\n") { String::new() } else { s }
}

/// The fleet's paragraph: the configurations side by side, claim-to-send, failover.
fn fleet_analysis(f: &Figures) -> String {
    let a = FLEET_ACCEPTED.map(|name| f.median(name));
    let d = FLEET_DONE.map(|name| f.median(name));
    let cpu = FLEET_CPU.map(|name| f.median(name));
    if a.iter().chain(&d).chain(&cpu).any(|v| v.is_nan()) {
        return String::new();
    }
    // Cores kept busy: tasks per second times CPU seconds per task.
    let busy: Vec<f64> = d.iter().zip(&cpu).map(|(rate, us)| rate * us / 1e6).collect();
    let postgres = f.fact("postgres").unwrap_or("PostgreSQL");
    let mut s = format!(
        "- **Fleet.** Everything on this one 2-core machine: the daemons, the no-op plugin's processes, \
         {postgres} (on a Unix socket, `fsync` on: the SQLite journal syncs every commit too) and the API's \
         clients (kept-alive HTTP on the daemons' Unix sockets) share the same two cores, so these figures \
         show what the shared journal costs and how that grows with daemons, not how far a fleet of machines \
         scales. Accepted over the API: {:.0} tasks/s on SQLite, {:.0} on PostgreSQL ({:.2}x SQLite), {:.0} \
         with 2 daemons and {:.0} with 3 on one PostgreSQL ({:.2}x and {:.2}x one). Done end to end: {:.0}, \
         {:.0} ({:.2}x), {:.0} and {:.0} ({:.2}x and {:.2}x). CPU time per task, every process counted: \
         {:.0} us on SQLite, {:.0} us on PostgreSQL ({:.1}x), {:.0} and {:.0} us with 2 and 3 daemons ({:.2}x \
         and {:.2}x one). One daemon on PostgreSQL keeps {:.2} of the 2 cores busy (on SQLite {:.2}): it \
         waits on its journal's one connection, where every statement of a batch (each operation under a \
         savepoint of its own) is a round trip to the server, where SQLite's are calls in the process. \
         More daemons put more connections to work at once: 2 and 3 keep {:.2} and {:.2} cores busy.",
        a[0],
        a[1],
        a[1] / a[0],
        a[2],
        a[3],
        a[2] / a[1],
        a[3] / a[1],
        d[0],
        d[1],
        d[1] / d[0],
        d[2],
        d[3],
        d[2] / d[1],
        d[3] / d[1],
        cpu[0],
        cpu[1],
        cpu[1] / cpu[0],
        cpu[2],
        cpu[3],
        cpu[2] / cpu[1],
        cpu[3] / cpu[1],
        busy[1],
        busy[0],
        busy[2],
        busy[3],
    );
    if !f.median(CLAIM_REMOTE).is_nan() {
        s.push_str(&format!(
            " A task posted to a daemon that does not run its plugin is claimed and sent by one that does \
             (woken by `LISTEN/NOTIFY`) {:.1} ms after it was accepted (the journal's times, to the \
             millisecond; median of the rounds' medians), against {:.1} ms when the accepting daemon runs it \
             itself; the client waiting for the result sees {:.1} ms against {:.1} ms.",
            f.median(CLAIM_REMOTE),
            f.median(CLAIM_LOCAL),
            f.median(WAIT_REMOTE),
            f.median(WAIT_LOCAL),
        ));
    }
    if !f.median(FAILOVER).is_nan() {
        s.push_str(&format!(
            " Failover: {:.1} s (fastest {:.1}, slowest {:.1}) from SIGKILL of a daemon to its running \
             idempotent tasks started again on the other, with the default lease of 12 s and heartbeat of 3 s: \
             the dead daemon's lease runs out 9 to 12 s after the kill (12 s after its last heartbeat), and the \
             survivor's next heartbeat, within 3 s, takes its tasks over; the rounds kill and start the \
             daemons at points spread over a heartbeat interval.",
            f.median(FAILOVER),
            f.min(FAILOVER),
            f.max(FAILOVER),
        ));
    }
    s.push('\n');
    s
}

/// The whole report.
pub fn markdown(figures: &Figures, goals: &[Goal], quick: bool) -> String {
    let floor = figures.median(FLOOR);
    let mut s = String::from("# Benchmarks\n\n");
    s.push_str(&format!(
        "Written by `loom-bench{}` on {}; {}. Latency figures are taken with the benchmark, the supervisor \
         and the plugins pinned to core 0 (unpinned back-to-back round trips on a 2-core machine are \
         bimodal); throughput figures use every core. Each figure is min / median / max over rounds; \
         ratios use medians of this run.\n\n",
        if quick { " --quick" } else { "" },
        date(),
        machine(),
    ));
    s.push_str("| measurement | unit | min | median | max | median / floor |\n|---|---|---|---|---|---|\n");
    for f in &figures.0 {
        s.push_str(&row(f, floor));
    }
    for note in &figures.1 {
        s.push_str(&format!("\n{note}\n"));
    }
    s.push_str(&format!(
        "\n## Goals\n\n`--quick` (CI) fails when a goal in the last column is missed by more than {gross}x; a time \
         or a rate on this host is reported only, since a slower or busier host moves it with no change to the \
         code (see bench/README.md).\n\n| goal | this run | met | CI fails beyond |\n|---|---|---|---|\n",
        gross = crate::figure::GROSS
    ));
    for g in goals {
        let verdict = match g.verdict(f64::INFINITY) {
            Verdict::Met => "yes",
            Verdict::NotMeasured => "not measured",
            Verdict::Missed | Verdict::Gross => "**no**",
        };
        let gate =
            if g.gated { crate::figure::number(g.limit(crate::figure::GROSS)) } else { "(reported only)".to_owned() };
        s.push_str(&format!(
            "| {} | {} | {verdict} | {gate} |\n",
            g.text,
            if g.value.is_nan() { "-" } else { &g.shown }
        ));
    }
    s.push_str(&analysis(figures));
    s.push_str("\n![Sequential round trips](bench/latency.svg)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure::{GROSS, gate};

    /// A quick run's figures as this code measures them on a quiet host, each with the
    /// same median over three rounds; `slow` scales every time up and every rate down,
    /// except the restart's, which is `restart_ms`.
    fn quick_run(slow: f64, restart_ms: f64) -> Figures {
        let times: [(&'static str, &'static str, f64); 13] = [
            (FLOOR, "us", 2.0),
            (TINY, "us", 5.5),
            (PIPE_RATE.1, CPU_UNIT, 1.3),
            (PIPED.1, CPU_UNIT, 3.8),
            (PIPED_START.1, CPU_UNIT, 15.0),
            (FRESH_START, "ms", 1.6),
            (FLOOD_QUIET, "us", 7.2),
            (FLOODED, "us", 7.5),
            (IDLE_CPU, "% of a core", 0.005),
            (PIPE_RATE.0, "lines/s", 1.0 / 750_000.0),
            (PIPED.0, "tasks/s", 1.0 / 277_000.0),
            (PIPED_START.0, "tasks/s", 1.0 / 113_000.0),
            (FLOOD_LOST, "lines", 0.0),
        ];
        let mut f = Figures::default();
        for (name, unit, value) in times {
            let mut figure = Figure::new(name, unit);
            // Rates are listed as their inverse, so that one factor slows everything.
            let v = if unit.ends_with("/s") { 1.0 / (value * slow) } else { value * slow };
            figure.rounds = vec![v; 3];
            f.push(figure);
        }
        for (name, unit, value) in [(RESTART, "ms", restart_ms), (RSS, "MB", 11.2)] {
            let mut figure = Figure::new(name, unit);
            figure.rounds = vec![value; 3];
            f.push(figure);
        }
        f
    }

    /// `f` with the rounds of figure `name` replaced.
    fn with(mut f: Figures, name: &str, rounds: &[f64]) -> Figures {
        if let Some(figure) = f.0.iter_mut().find(|x| x.name == name) {
            figure.rounds = rounds.to_vec();
        }
        f
    }

    fn failed(f: &Figures) -> Vec<&'static str> {
        gate(&goals(f), GROSS).iter().map(|g| g.key).collect()
    }

    #[test]
    fn a_healthy_run_passes_the_gate() {
        assert_eq!(failed(&quick_run(1.0, 2.4)), Vec::<&str>::new());
    }

    #[test]
    fn a_host_four_times_slower_passes_the_gate_where_absolute_goals_fail() {
        let f = quick_run(4.0, 2.4 * 4.0);
        assert_eq!(failed(&f), Vec::<&str>::new());
        // The goals stated as rates on this host are missed by more than 3x (and failed
        // the gate before issue 11); they are reported, not gated.
        let grossly_missed: Vec<&str> =
            goals(&f).into_iter().filter(|g| g.verdict(GROSS) == Verdict::Gross).map(|g| g.key).collect();
        assert_eq!(grossly_missed, ["pipelined no-op tasks/s", "pipelined START tasks/s"]);
        assert!(goals(&f).iter().filter(|g| !g.gated).all(|g| g.verdict(GROSS) != Verdict::Met));
    }

    #[test]
    fn twenty_more_milliseconds_in_the_restart_path_fail_the_gate() {
        assert_eq!(failed(&quick_run(1.0, 2.4 + 20.0)), ["restart / fresh start"]);
        // Also on a host twice as slow, where the fresh start takes twice as long.
        assert_eq!(failed(&quick_run(2.0, 4.8 + 20.0)), ["restart / fresh start"]);
    }

    #[test]
    fn on_a_busy_host_the_fastest_restart_and_fresh_start_decide() {
        // Nine restarts and fresh starts as a loaded 2-core host gave them (ms): other
        // processes' turns add to most of them, to the restarts more.
        let restarts = [2.4, 6.5, 10.8, 2.6, 7.9, 6.1, 2.9, 9.4, 6.5];
        let fresh = [1.9, 2.0, 10.6, 4.9, 2.0, 8.4, 6.6, 2.0, 5.1];
        let busy = with(with(quick_run(1.0, 0.0), RESTART, &restarts), FRESH_START, &fresh);
        assert!(failed(&busy).is_empty(), "{:?}", failed(&busy));
        // The same host with 20 ms more in every restart: caught, although the fresh
        // starts' median is 4.9 ms.
        let slower: Vec<f64> = restarts.iter().map(|r| r + 20.0).collect();
        let regressed = with(with(quick_run(1.0, 0.0), RESTART, &slower), FRESH_START, &fresh);
        assert_eq!(failed(&regressed), ["restart / fresh start"]);
    }

    #[test]
    fn the_restart_that_failed_ci_on_a_loaded_host_passes_beside_its_fresh_start() {
        // Issue 11: 19.8 ms failed the absolute bound of 5 ms (x3); the same load slowed
        // the fresh starts measured beside it.
        let f = quick_run(4.0, 19.8);
        assert!(failed(&f).is_empty(), "{:?}", failed(&f));
    }

    #[test]
    fn a_figure_missing_from_a_ratio_is_not_measured() {
        let f = Figures::default();
        assert!(goals(&f).iter().all(|g| g.verdict(GROSS) == Verdict::NotMeasured));
        assert!(failed(&f).is_empty());
    }

    #[test]
    fn the_fleet_paragraph_sets_the_configurations_side_by_side() {
        let mut f = Figures::default();
        let measured: [([&'static str; 4], &'static str, [f64; 4]); 3] = [
            (FLEET_ACCEPTED, "tasks/s", [8000.0, 1000.0, 1800.0, 2400.0]),
            (FLEET_DONE, "tasks/s", [7000.0, 950.0, 1700.0, 2300.0]),
            (FLEET_CPU, CPU_UNIT, [150.0, 600.0, 650.0, 800.0]),
        ];
        for (names, unit, values) in measured {
            for (name, value) in names.into_iter().zip(values) {
                let mut figure = Figure::new(name, unit);
                figure.rounds = vec![value * 0.9, value, value * 1.1];
                f.push(figure);
            }
        }
        let mut failover = Figure::new(FAILOVER, "s");
        failover.rounds = vec![13.5, 11.0, 12.0];
        f.push(failover);
        f.set_fact("postgres", "PostgreSQL 15.18".into());
        let text = markdown(&f, &goals(&f), false);
        for part in [
            "PostgreSQL 15.18 (on a Unix socket, `fsync` on",
            "8000 tasks/s on SQLite, 1000 on PostgreSQL (0.12x SQLite), 1800 with 2 daemons and 2400 with 3 on \
             one PostgreSQL (1.80x and 2.40x one)",
            "Done end to end: 7000, 950 (0.14x), 1700 and 2300 (1.79x and 2.42x)",
            "150 us on SQLite, 600 us on PostgreSQL (4.0x), 650 and 800 us with 2 and 3 daemons (1.08x and 1.33x",
            "keeps 0.57 of the 2 cores busy (on SQLite 1.05)",
            "2 and 3 keep 1.10 and 1.84 cores busy.",
            "Failover: 12.0 s (fastest 11.0, slowest 13.5)",
            "| a fleet with the default lease and heartbeat fails over within about 15 s (median) | 12.0 s | yes | \
             (reported only) |",
        ] {
            assert!(text.contains(part), "{part}\n{text}");
        }
        // Claim-to-send not measured: not mentioned.
        assert!(!text.contains("claimed and sent"), "{text}");
        // No fleet: no paragraph.
        let quick = quick_run(1.0, 2.4);
        assert!(!markdown(&quick, &goals(&quick), true).contains("**Fleet.**"));
    }

    #[test]
    fn cpu_figures_have_no_ratio_to_the_round_trip_floor() {
        let f = quick_run(1.0, 2.4);
        let table = markdown(&f, &goals(&f), true);
        let cpu_row = table.lines().find(|l| l.starts_with(&format!("| {}", PIPED.1))).unwrap_or_default();
        assert!(cpu_row.ends_with("|  |"), "{cpu_row}");
        assert!(table.contains("| restart of a Rust SDK plugin: median under 5 ms | 2.4 ms | yes | (reported only) |"));
    }
}
