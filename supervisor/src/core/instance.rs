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
                continue;
            }
            Served::Crashed(crash) => crash,
        };
        pool.set_crashed(slot, &crash.reason, crash.during_start);
        if let Next::Stop = back_off(&pool, &spec, slot, &mut restarts, crash.reason, &mut control).await {
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
    /// It could not start, failed its handshake, or ended on its own.
    Crashed(Crash),
}

struct Crash {
    reason: String,
    /// Before the handshake completed: the tasks waiting for it learn why.
    during_start: bool,
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
    let mut process = match PluginProcess::spawn(spec).await {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("cannot start {}: {e}", spec.executable.display());
            tracing::error!(plugin = %spec.name, "{reason}");
            return Served::Crashed(Crash { reason, during_start: true });
        }
    };
    let handshake = match process.handshake(spec, log_level).await {
        Ok(hs) => hs,
        Err(cause) => {
            let reason = process.finish(&cause.to_string()).await;
            tracing::error!(plugin = %spec.name, pid = process.pid(), "handshake failed: {reason}");
            return Served::Crashed(Crash { reason, during_start: true });
        }
    };
    let capacity =
        handshake.max_concurrency.map_or(spec.max_concurrency, |n| spec.max_concurrency.min(n as usize)).max(1);
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
            Served::Crashed(Crash { reason, during_start: false })
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
