//! The kill storm (issue 13): `loom-provisioner serve` runs thousands of tasks on two
//! plugins of two instances each while a thread SIGKILLs one process of each plugin every
//! 20 ms. One plugin declares the task idempotent, the other does not.
//!
//! Counted from outside, whatever the host's speed: every task has exactly one result,
//! none is lost, none runs more often than it was sent (so a task that is not idempotent
//! runs at most once), only tasks in flight on a killed process fail (at most its eight
//! slots' worth per kill), an idempotent task fails only after being sent twice, the
//! restarts in `/metrics` are the kills, every killed process is reaped within a second,
//! and no plugin process is left once the daemon stops.
//!
//! How many tasks succeed does depend on the host's speed: a task fails when a kill finds
//! it in flight, so the share that fails grows with the time a task spends at the plugin
//! process, which a debug build on a loaded machine stretches several times. The goals
//! (at least 75% without idempotence, 99% with it) are therefore asserted by the storm of
//! `bench/chaos.sh`, in a release build: `.ci/run` runs it with 5,000 tasks after the
//! suite, and 20,000 is its full size. The suite's storm prints the same figures. (Under a
//! load average of 10, this debug storm measured 62.8% and 87.6%; the release one at 5,000
//! tasks, beside a running suite, 88.6% and 100%.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use loom_e2e::{
    KILLED_IN_FLIGHT, Killer, Kills, Outcomes, Plugins, Serve, StormPlugin, alive, instances, metric, submit_all,
    wait_all, wait_until,
};
use serde_json::{Value, json};

/// The storm's cadence: one SIGKILL per plugin every 20 ms.
const EVERY: Duration = Duration::from_millis(20);
/// Clients submitting at once, then waiting at once.
const SUBMITTERS: usize = 4;
const WAITERS: usize = 16;
/// Slots per process: no kill can fail more tasks than this.
const SLOTS: usize = 8;

/// Two instances of eight slots, and the permissive policy: restarts without limit and a
/// backoff of 1 ms growing to 5 ms at most. (With the default policy's backoff, up to
/// 30 s, the plugin would spend the storm waiting; with one of up to 50 ms, both
/// instances are often down at once, and the storm kills the one that comes back within
/// 20 ms of its start, with its eight new tasks: RELIABILITY.md has the figures.)
fn permissive() -> Value {
    json!({"instances": 2, "maxConcurrency": SLOTS,
           "restart": {"maxRestarts": 1_000_000, "backoffInitialMs": 1, "backoffMaxMs": 5}})
}

/// What one storm did, for one plugin.
struct Counted {
    outcomes: Outcomes,
    /// Kills that hit one of its live processes.
    hits: u64,
    /// `loom_plugin_restarts_total`.
    restarts: Option<u64>,
    /// `loom_tasks_total` over both outcomes: results recorded.
    finished: u64,
}

/// What one storm did.
struct Storm {
    plain: Counted,
    idempotent: Counted,
    kills: Kills,
    /// Processes of the plugins alive after the daemon stopped.
    leftovers: Vec<String>,
    /// The figures, printed.
    report: String,
}

/// Runs a storm of `n` tasks, half on each plugin, submitted `rate` a second (flat out
/// when `None`), until every task has its result; then stops the daemon.
fn storm(n: usize, rate: Option<f64>) -> Storm {
    let plugins = Plugins::new();
    let plain = StormPlugin::add(&plugins, "storm-plain", &[], permissive());
    let idem = StormPlugin::add(&plugins, "storm-idem", &["START"], permissive());
    let serve = Arc::new(Serve::start(&plugins, ""));
    // Interleaved, so that both plugins are busy for the whole storm.
    let ids: Vec<String> = (0..n).map(|i| format!("t-{i}")).collect();
    let tasks: Vec<Value> = ids.iter().enumerate().map(|(i, id)| [&plain, &idem][i % 2].task(id)).collect();

    let began = Instant::now();
    let killer = Killer::start(&plugins, &[&plain, &idem], EVERY);
    submit_all(&serve, &tasks, rate, SUBMITTERS);
    let submitted = began.elapsed();
    wait_all(&serve, &tasks, WAITERS);
    let kills = killer.stop();
    let took = began.elapsed();

    let mut report = format!(
        "storm: {n} tasks, {}; 2 plugins (one declaring START idempotent) of 2 instances x {SLOTS} slots; one SIGKILL \
         per plugin every {EVERY:?}\n  {:.1} s ({:.1} s to submit); ticks with no live process to kill {:?}; longest \
         a killed process stayed unreaped {:?}\n",
        rate.map_or("submitted flat out".to_owned(), |r| format!("{r} a second")),
        took.as_secs_f64(),
        submitted.as_secs_f64(),
        kills.idle_ticks,
        kills.longest_unreaped
    );
    let counted = [(&plain, 0), (&idem, 1)].map(|(plugin, i)| {
        let ids: Vec<String> = ids.iter().skip(i).step_by(2).cloned().collect();
        count(&serve, plugin, &ids, &kills, kills.hits[i])
    });
    for c in &counted {
        report.push_str(&format!(
            "  {}    kills that hit a live process {}, restarts in /metrics {:?}, results in /metrics {}\n",
            c.outcomes, c.hits, c.restarts, c.finished
        ));
    }
    drop(Arc::into_inner(serve).expect("no client thread left"));
    let leftovers = plugins.leftovers();
    report.push_str(&format!("  plugin processes left after the daemon stopped: {}\n", leftovers.len()));
    eprint!("{report}");
    let [plain, idempotent] = counted;
    Storm { plain, idempotent, kills, leftovers, report }
}

/// Counts what became of `plugin`'s tasks `ids`, once every kill has been seen as a crash.
fn count(serve: &Serve, plugin: &StormPlugin, ids: &[String], kills: &Kills, hits: u64) -> Counted {
    // Every instance ready on a live process (the storm is over: it stays alive): each
    // killed process has been replaced, so its crash is counted. (Not "a pid the storm did
    // not kill": a long storm goes round the pids.) A condition nothing signals to the test.
    let recovered = wait_until(Duration::from_secs(60), || {
        let is = instances(serve, &plugin.name);
        !is.is_empty() && is.iter().all(|(phase, pid)| phase == "ready" && pid.is_some_and(|p| alive(p as i32)))
    });
    assert!(recovered, "{} did not come back after the storm: {:?}", plugin.name, instances(serve, &plugin.name));
    let finished = ["success", "failure"]
        .iter()
        .map(|outcome| {
            let (_, text) = serve.request("GET", "/metrics", None);
            let series =
                format!("loom_tasks_total{{plugin=\"{}\",task=\"START\",outcome=\"{outcome}\"}} ", plugin.name);
            text.as_str()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix(&series)))
                .map_or(0, |v| v.parse().unwrap_or(0))
        })
        .sum();
    Counted {
        outcomes: Outcomes::read(serve, plugin, ids, &kills.killed),
        hits,
        restarts: metric(serve, "loom_plugin_restarts_total", &plugin.name),
        finished,
    }
}

/// The promises that hold whatever the host's speed.
fn assert_kept_the_promises(s: &Storm) {
    let report = &s.report;
    for c in [&s.plain, &s.idempotent] {
        let o = &c.outcomes;
        assert!(o.lost.is_empty(), "lost: {:?}\n{report}", o.lost);
        assert_eq!(c.finished, o.submitted as u64, "each task finished exactly once\n{report}");
        assert!(o.journaled_twice.is_empty(), "journaled twice: {:?}\n{report}", o.journaled_twice);
        assert!(o.run_too_often.is_empty(), "run more often than sent: {:?}\n{report}", o.run_too_often);
        assert!(
            o.failed_elsewhere.is_empty(),
            "failed, not in flight on a killed process: {:?}\n{report}",
            o.failed_elsewhere
        );
        assert!(o.most_failed_per_kill <= SLOTS, "a kill failed more than its process's slots\n{report}");
        assert!(c.hits > 0, "the storm killed nothing\n{report}");
        assert_eq!(
            c.restarts,
            Some(c.hits),
            "every kill of a live process is one restart, and nothing else is\n{report}"
        );
    }
    assert_eq!(s.plain.outcomes.resent, 0, "a task not declared idempotent is never sent again\n{report}");
    assert!(
        s.idempotent.outcomes.failed_by_sends.keys().all(|sent| *sent == 2),
        "an idempotent task fails only after a second send (retryOnCrash 1)\n{report}"
    );
    assert!(s.kills.unreaped.is_empty(), "killed processes never reaped: {:?}\n{report}", s.kills.unreaped);
    assert!(s.kills.longest_unreaped < Duration::from_secs(1), "a zombie older than a second\n{report}");
    assert!(s.leftovers.is_empty(), "plugin processes left: {:?}\n{report}", s.leftovers);
}

#[test]
fn a_kill_storm_loses_nothing_runs_nothing_twice_and_fails_only_the_tasks_on_a_killed_process() {
    // Flat out: the queue is deep for the whole storm, so tasks keep waiting in it while
    // processes die in their handshakes, and nothing may fail them but a kill in flight.
    assert_kept_the_promises(&storm(5_000, None));
}

#[test]
#[ignore = "the full-size storm: bench/chaos.sh runs it in a release build (its goals depend on the host's speed)"]
fn the_full_size_kill_storm_meets_the_goals_of_a_crash_failing_only_its_tasks() {
    let n = std::env::var("LOOM_STORM_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rate = std::env::var("LOOM_STORM_RATE").ok().and_then(|v| v.parse().ok()).filter(|r: &f64| *r > 0.0);
    let s = storm(n, rate);
    assert_kept_the_promises(&s);
    let report = &s.report;
    assert!(s.plain.outcomes.success_percent() >= 75.0, "goal: 75% succeed without idempotence\n{report}");
    assert!(s.idempotent.outcomes.success_percent() >= 99.0, "goal: 99% succeed with idempotence\n{report}");
}

#[test]
fn with_the_default_policy_the_storm_marks_the_plugin_failed_and_its_tasks_say_so() {
    let plugins = Plugins::new();
    let plugin = StormPlugin::add(&plugins, "storm-default", &[], json!({"instances": 2, "maxConcurrency": SLOTS}));
    let serve = Arc::new(Serve::start(&plugins, ""));
    let tasks: Vec<Value> = (0..1_000).map(|i| plugin.task(&format!("t-{i}"))).collect();

    let killer = Killer::start(&plugins, &[&plugin], EVERY);
    submit_all(&serve, &tasks, None, SUBMITTERS);
    // The default policy gives up after 5 restarts within 60 s, whether or not the tasks
    // are done by then: the storm goes on until both instances are marked failed.
    let failed = wait_until(Duration::from_secs(60), || {
        instances(&serve, &plugin.name).iter().all(|(phase, _)| phase == "failed")
    });
    let kills = killer.stop();
    assert!(failed, "not marked failed: {:?}", instances(&serve, &plugin.name));
    let late: Vec<Value> = (0..10).map(|i| plugin.task(&format!("late-{i}"))).collect();
    submit_all(&serve, &late, None, SUBMITTERS);
    let all: Vec<Value> = tasks.into_iter().chain(late).collect();
    wait_all(&serve, &all, WAITERS);

    let ids: Vec<String> = all.iter().map(|t| t["taskId"].as_str().unwrap_or_default().to_owned()).collect();
    let o = Outcomes::read(&serve, &plugin, &ids, &kills.killed);
    let restarts = metric(&serve, "loom_plugin_restarts_total", &plugin.name);
    let report = format!("{o}    kills that hit a live process {}, restarts in /metrics {restarts:?}\n", kills.hits[0]);
    eprint!("{report}");
    assert!(o.lost.is_empty() && o.run_too_often.is_empty() && o.journaled_twice.is_empty(), "{report}");
    // Six crashes per instance: five restarts allowed, the sixth marks it failed.
    assert_eq!((kills.hits[0], restarts), (12, Some(12)), "{report}");
    // In flight on a killed process, or waiting when the plugin was marked failed (and
    // sent after): nothing else, and the latter say why.
    let marked =
        format!("the plugin is marked failed after N crashes within N s (maxRestarts N); the last: {KILLED_IN_FLIGHT}");
    for (why, n) in &o.failed {
        assert!(
            why == KILLED_IN_FLIGHT || why.starts_with(&marked),
            "{n} tasks failed for another reason: {why}\n{report}"
        );
    }
    let said_so = ids.iter().filter(|id| id.starts_with("late-")).all(|id| {
        let (_, v) = serve.request("GET", &format!("/v1/tasks/{id}"), None);
        v["result"]["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("marked failed after 6 crashes within 60 s (maxRestarts 5)"))
    });
    assert!(said_so, "tasks sent to the failed plugin fail at once, saying why\n{report}");
    drop(Arc::into_inner(serve).expect("no client thread left"));
    plugins.assert_no_leftovers();
}
