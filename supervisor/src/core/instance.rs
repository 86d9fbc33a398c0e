//! The life of one plugin instance: start a process, handshake, serve, and when the
//! process ends, clean up and start another — at once the first time, with backoff after,
//! and not for a cool-down after too many crashes. This loop is where a crash is handled.
//!
//! It reports each phase to the plugin's [`Pool`], which hands the instance's slots to
//! tasks while it is ready.

use std::sync::Arc;
use std::time::Instant;

use loom_protocol::LogLevel;
use tokio::sync::mpsc;

use crate::core::manifest::PluginSpec;
use crate::core::pool::{Phase, Pool, Ready};
pub use crate::core::process::Control;
use crate::core::process::{End, PluginProcess};
use crate::core::restart::{Decision, RestartTracker};
use crate::log::secs;

/// Runs instance `slot` of the plugin `spec` describes until told to stop, reporting to
/// `pool`.
pub(crate) async fn supervise(
    pool: Arc<Pool>,
    spec: Arc<PluginSpec>,
    log_level: LogLevel,
    slot: usize,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut restarts = RestartTracker::new(spec.restart.clone());
    loop {
        pool.set_phase(slot, Phase::Starting);
        let crash = match serve_one(&pool, &spec, log_level, slot, &mut control).await {
            Served::Stopped => break,
            Served::Restarted => {
                restarts.reset();
                pool.restarted_on_request(slot);
                continue;
            }
            Served::Crashed(crash) => crash,
        };
        pool.set_crashed(slot, &crash);
        if let Next::Stop = back_off(&pool, &spec, slot, &mut restarts, crash, &mut control).await {
            break;
        }
    }
    pool.set_phase(slot, Phase::Stopped);
}

/// How one process's life ended.
enum Served {
    /// Told to stop; it was stopped.
    Stopped,
    /// Told to restart; it was stopped.
    Restarted,
    /// It could not start, failed its handshake, or ended on its own: why.
    Crashed(String),
}

/// Spawns one process, completes its handshake, serves tasks with it until something
/// ends it, and cleans up after it.
async fn serve_one(
    pool: &Arc<Pool>,
    spec: &Arc<PluginSpec>,
    log_level: LogLevel,
    slot: usize,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Served {
    let mut process = match PluginProcess::spawn(spec, slot).await {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("cannot start {}: {e}", spec.executable.display());
            tracing::error!(plugin = %spec.name, "{reason}");
            return Served::Crashed(reason);
        }
    };
    let handshake = match process.handshake(spec, log_level).await {
        Ok(hs) => hs,
        Err(cause) => {
            let reason = process.finish(&cause.to_string()).await;
            tracing::error!(plugin = %spec.name, pid = process.pid(), "handshake failed: {reason}");
            return Served::Crashed(reason);
        }
    };
    let capacity =
        handshake.max_concurrency.map_or(spec.max_concurrency, |n| spec.max_concurrency.min(n as usize)).max(1);
    if let Some(offered) = handshake.max_concurrency.filter(|&n| n as usize > spec.max_concurrency) {
        // Authors expect the plugin's own number to count; say where the limit comes from.
        tracing::info!(plugin = %spec.name, pid = process.pid(),
            "the plugin offers maxConcurrency {offered}, but its manifest allows {} (the manifest's \"maxConcurrency\", default 1): it gets {}",
            spec.max_concurrency, spec.max_concurrency);
    }
    let version = process.connection().loggable_name(&handshake.version);
    tracing::info!(plugin = %spec.name, pid = process.pid(), version = %version,
        "ready: {} tasks at once, handles {}", capacity,
        handshake.tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" "));
    let ready = Ready {
        conn: Arc::clone(process.connection()),
        capacity,
        declared: handshake.tasks,
        idempotent: handshake.idempotent_tasks,
    };
    let generation = pool.set_ready(slot, ready);

    let end = process.serve(control, generation, spec).await;
    // No new task may take this process from here on.
    pool.set_phase(slot, Phase::Stopping);
    match end {
        End::Stop => {
            process.stop_gracefully(spec.shutdown_grace).await;
            process.finish("was stopped").await;
            Served::Stopped
        }
        End::Restart => {
            tracing::info!(plugin = %spec.name, pid = process.pid(), "restarting on request");
            process.stop_gracefully(spec.shutdown_grace).await;
            process.finish("was restarted on request").await;
            Served::Restarted
        }
        crash => {
            let reason = process.finish(&crash.to_string()).await;
            tracing::error!(plugin = %spec.name, pid = process.pid(), "plugin process ended: {reason}");
            Served::Crashed(reason)
        }
    }
}

enum Next {
    Restart,
    Stop,
}

/// Records a crash and waits as the restart policy says: not at all, a backoff delay, or
/// a cool-down while marked failed. A stop order ends the wait.
async fn back_off(
    pool: &Pool,
    spec: &PluginSpec,
    slot: usize,
    restarts: &mut RestartTracker,
    reason: String,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Next {
    let name = &spec.name;
    let until = match restarts.record(Instant::now()) {
        Decision::RestartAfter(delay) if delay.is_zero() => return Next::Restart,
        Decision::RestartAfter(delay) => {
            tracing::info!(plugin = %name, "restarting in {}", secs(delay));
            Instant::now() + delay
        }
        Decision::GiveUp { crashes, until } => {
            let policy = restarts.policy();
            let why = format!(
                "the plugin is marked failed after {crashes} crashes within {} (maxRestarts {}); the last: {reason}",
                secs(policy.within),
                policy.max_restarts
            );
            tracing::error!(plugin = %name, "marked failed; tasks fail at once until it is tried again in {}", secs(policy.cool_down));
            pool.set_failed(slot, why, until);
            restarts.reset();
            until
        }
    };
    let sleep = tokio::time::sleep_until(until.into());
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return Next::Restart,
            order = control.recv() => match order {
                Some(Control::Stop) | None => return Next::Stop,
                Some(Control::Restart) => {
                    restarts.reset();
                    return Next::Restart;
                }
                // A kill order for a process that is already gone.
                Some(Control::Kill { .. }) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use loom_protocol::PluginKind::Automator;
    use serde_json::json;

    use crate::core::testing::{Plugins, action, within_a_minute};

    #[tokio::test]
    async fn a_crash_mid_task_fails_that_task_and_a_new_process_serves_the_next() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({}));
        let sup = plugins.supervisor();
        let first = sup.run(&action("t1", "INSTALL", "a", json!({}))).await;
        let pid = first.result["pid"].clone();
        let crashed = sup.run(&action("t2", "INSTALL", "a", json!({"action": "crash"}))).await;
        assert_eq!(crashed.status, 1);
        let cause = format!("automator \"a\", task t2 (INSTALL): the plugin process (pid {pid}) exited with code 3");
        assert!(crashed.stderr.starts_with(&cause), "{}", crashed.stderr);
        assert!(crashed.stderr.contains("about to crash: boom"), "with its last stderr lines: {}", crashed.stderr);

        let next = within_a_minute("the restarted instance", sup.run(&action("t3", "INSTALL", "a", json!({})))).await;
        assert_eq!(next.status, 0, "{next:?}");
        assert_ne!(next.result["pid"], pid, "a new process");
        let status = &sup.plugin(Automator, "a").expect("plugin a").status()[0];
        assert_eq!(status.restarts, 1);
        assert!(status.last_error.as_deref().is_some_and(|e| e.contains("exited with code 3")), "{status:?}");
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn tasks_wait_through_failed_starts_and_fail_when_the_plugin_is_marked_failed() {
        let plugins = Plugins::new();
        let policy = json!({"maxRestarts": 2, "backoffInitialMs": 10, "backoffMaxMs": 20});
        plugins.add(Automator, "a", json!({"env": {"TESTPLUGIN_EXIT_AT_START": "2"}, "restart": policy}));
        let sup = plugins.supervisor();
        let (t1, t2) = (action("t1", "INSTALL", "a", json!({})), action("t2", "START", "a", json!({})));
        let (r1, r2) = tokio::join!(sup.run(&t1), sup.run(&t2));
        for (r, task) in [(r1, "t1 (INSTALL)"), (r2, "t2 (START)")] {
            assert_eq!(r.status, 1);
            // They never reached a process: they waited until the restart limit was reached.
            let why = format!(
                "automator \"a\", task {task}: the plugin is marked failed after 3 crashes within 60 s (maxRestarts 2); the last: the plugin process (pid "
            );
            assert!(r.stderr.starts_with(&why), "{}", r.stderr);
            assert!(r.stderr.contains("exited with code 2 during the handshake"), "{}", r.stderr);
            assert!(r.stderr.contains("exiting at start as asked"), "{}", r.stderr);
        }
        sup.shutdown().await;
        let plugin = sup.plugin(Automator, "a").expect("plugin a");
        assert_eq!(plugin.status()[0].phase, crate::core::pool::Phase::Stopped, "the restart loop ended");
    }

    #[tokio::test]
    async fn tasks_waiting_while_the_plugin_crashes_at_start_run_on_the_process_that_comes_up() {
        let plugins = Plugins::new();
        let pids = plugins.file("pids");
        let env = json!({"TESTPLUGIN_PIDFILE": pids, "TESTPLUGIN_CRASH_STARTS": "2"});
        plugins.add(Automator, "a", json!({"env": env, "restart": {"backoffInitialMs": 10}}));
        let sup = plugins.supervisor();
        let (t1, t2) = (action("t1", "INSTALL", "a", json!({})), action("t2", "START", "a", json!({})));
        let (r1, r2) = within_a_minute("the third start", async { tokio::join!(sup.run(&t1), sup.run(&t2)) }).await;
        assert_eq!((r1.status, r2.status), (0, 0), "{r1:?} {r2:?}");
        assert_eq!(
            std::fs::read_to_string(&pids).unwrap_or_default().lines().count(),
            3,
            "two failed starts, then one"
        );
        sup.shutdown().await;
    }
}
