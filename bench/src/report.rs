//! BENCHMARKS.md: the machine, every figure (min / median / max) and the goals.

use crate::figure::{Better, Figure, Figures, Goal, Verdict};

pub const FLOOR: &str = "raw pipe ping-pong, 100-byte line (floor)";
pub const TINY: &str = "sequential no-op task, tiny";
pub const START: &str = "sequential no-op task, Loom's START task";
pub const SUP_ONLY: &str = "supervisor alone: tiny task to a plugin that does nothing (no JSON parser)";
pub const SDK_ONLY: &str = "Rust SDK plugin alone: tiny task from a blocking client";
pub const SUP_ONLY_START: &str = "supervisor alone: START task to a plugin that does nothing";
pub const SDK_ONLY_START: &str = "Rust SDK plugin alone: START task from a blocking client";
pub const PIPED: &str = "pipelined no-op tasks, 1 process";
pub const PIPED_START: &str = "pipelined START tasks, 1 process";
pub const PIPED_TWO: &str = "pipelined no-op tasks, 2 processes";
pub const RESTART: &str = "restart: SIGKILL to the next task answered";
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
pub const FLOOD_QUIET: &str = "sequential no-op task, no log flood";
pub const FLOODED: &str = "sequential no-op task, same process flooding the log";
pub const FLOOD_LOST: &str = "log lines of the flood missing from the log";
pub const FLOOD_RATE: &str = "log flood rate through the supervisor";
pub const FLOOD_CALLS: &str = "tasks answered during the flood";

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

/// The goals of issue 7, valued from this run's medians.
pub fn goals(f: &Figures) -> Vec<Goal> {
    let ratio = |a: f64, b: f64| a / b;
    let floor = ratio(f.median(TINY), f.median(FLOOR));
    vec![
        Goal {
            text: "sequential no-op round trip at most 2.0x the raw pipe floor",
            value: floor,
            shown: format!("{floor:.2}x"),
            bound: 2.0,
            better: Better::Lower,
        },
        {
            let ratio = ratio(f.median(crate::peers::RMCP), f.median(TINY));
            Goal {
                text: "sequential no-op round trip at least 2.5x faster than rmcp's",
                value: ratio,
                shown: format!("{ratio:.2}x faster"),
                bound: 2.5,
                better: Better::Higher,
            }
        },
        {
            let ratio = ratio(f.median(crate::peers::VSCODE), f.median(TINY));
            Goal {
                text: "sequential no-op round trip at least 8x faster than vscode-jsonrpc's",
                value: ratio,
                shown: format!("{ratio:.2}x faster"),
                bound: 8.0,
                better: Better::Higher,
            }
        },
        Goal {
            text: "pipelined no-op tasks to one process: at least 250,000/s",
            value: f.median(PIPED),
            shown: format!("{:.0}/s", f.median(PIPED)),
            bound: 250_000.0,
            better: Better::Higher,
        },
        Goal {
            text: "pipelined START tasks to one process: at least 100,000/s",
            value: f.median(PIPED_START),
            shown: format!("{:.0}/s", f.median(PIPED_START)),
            bound: 100_000.0,
            better: Better::Higher,
        },
        Goal {
            text: "restart of a Rust SDK plugin: median under 5 ms",
            value: f.median(RESTART),
            shown: format!("{:.1} ms", f.median(RESTART)),
            bound: 5.0,
            better: Better::Lower,
        },
        {
            let ratio = ratio(f.median(CLUSTER_20[2]), f.median(CLUSTER_20[0]));
            Goal {
                text: "cluster up of 20 local machines at least 5x faster than ansible-playbook doing the same work",
                value: ratio,
                shown: format!("{ratio:.1}x faster (machines included)"),
                bound: 5.0,
                better: Better::Higher,
            }
        },
        Goal {
            text: "100 plugin instances: supervisor under 30 MB resident",
            value: f.median(RSS),
            shown: format!("{:.1} MB", f.median(RSS)),
            bound: 30.0,
            better: Better::Lower,
        },
        Goal {
            text: "100 plugin instances: no measurable CPU while idle (under 0.1% of a core)",
            value: f.median(IDLE_CPU),
            shown: format!("{:.3}%", f.median(IDLE_CPU)),
            bound: 0.1,
            better: Better::Lower,
        },
        {
            let ratio = ratio(f.median(FLOODED), f.median(FLOOD_QUIET));
            Goal {
                text: "a log flood raises task latency at most 2x",
                value: ratio,
                shown: format!("{ratio:.2}x"),
                bound: 2.0,
                better: Better::Lower,
            }
        },
        Goal {
            text: "no log line of the flood is lost",
            value: f.max(FLOOD_LOST),
            shown: format!("{:.0} lost (worst round)", f.max(FLOOD_LOST)),
            bound: 0.0,
            better: Better::Lower,
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
    if !f.median(RESTART_HEAVY).is_nan() {
        s.push_str(&format!(
            "- **Restart.** {:.1} ms from SIGKILL to the next answer (the first restart is immediate; most of it \
             is starting the process and its handshake). With 256 MiB more resident in the supervisor's process it \
             is {:.1} ms: plugins are started with fork and exec, because the parent-death signal and the log \
             channel must be set up in the child before exec, and fork copies the parent's page tables. The daemon \
             itself stays near 11 MB (above), so this matters only for a supervisor embedded in a large process.\n",
            f.median(RESTART),
            f.median(RESTART_HEAVY),
        ));
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
    if s.ends_with("goes\n\n") { String::new() } else { s }
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
    s.push_str("\n## Goals\n\n| goal | this run | met |\n|---|---|---|\n");
    for g in goals {
        let verdict = match g.verdict(f64::INFINITY) {
            Verdict::Met => "yes",
            Verdict::NotMeasured => "not measured",
            Verdict::Missed | Verdict::Gross => "**no**",
        };
        s.push_str(&format!("| {} | {} | {verdict} |\n", g.text, if g.value.is_nan() { "-" } else { &g.shown }));
    }
    s.push_str(&analysis(figures));
    s.push_str("\n![Sequential round trips](bench/latency.svg)\n");
    s
}
