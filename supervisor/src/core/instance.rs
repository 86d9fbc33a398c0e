//! The life of one plugin instance: start a process, handshake, serve, and when the
//! process ends, clean up and start another — at once the first time, with backoff after,
//! and not for a cool-down after too many crashes. This loop is where a crash is handled.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::core::plugin::{Phase, Plugin, secs};
pub use crate::core::process::Control;
use crate::core::process::{End, PluginProcess};
use crate::core::restart::{Decision, RestartTracker};

/// Runs instance `slot` of `plugin` until told to stop.
pub(crate) async fn supervise(plugin: Arc<Plugin>, slot: usize, mut control: mpsc::UnboundedReceiver<Control>) {
    let spec = Arc::clone(plugin.spec());
    let mut restarts = RestartTracker::new(spec.restart.clone());
    loop {
        plugin.set_phase(slot, Phase::Starting);
        let mut process = match PluginProcess::spawn(&spec).await {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", spec.executable.display());
                tracing::error!(plugin = %spec.name, "{reason}");
                plugin.set_crashed(slot, &reason, true);
                match back_off(&plugin, slot, &mut restarts, reason, &mut control).await {
                    Next::Restart => continue,
                    Next::Stop => break,
                }
            }
        };

        let handshake = match process.handshake(&spec, plugin.log_level()).await {
            Ok(hs) => hs,
            Err(cause) => {
                let reason = process.finish(&cause).await;
                tracing::error!(plugin = %spec.name, pid = process.pid(), "handshake failed: {reason}");
                plugin.set_crashed(slot, &reason, true);
                match back_off(&plugin, slot, &mut restarts, reason, &mut control).await {
                    Next::Restart => continue,
                    Next::Stop => break,
                }
            }
        };
        let capacity =
            handshake.max_concurrency.map_or(spec.max_concurrency, |n| spec.max_concurrency.min(n as usize)).max(1);
        let version = process.connection().loggable_name(&handshake.version);
        tracing::info!(plugin = %spec.name, pid = process.pid(), version = %version,
            "ready: {} tasks at once, handles {}", capacity,
            handshake.tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" "));
        let generation = plugin.set_ready(
            slot,
            Arc::clone(process.connection()),
            capacity,
            handshake.tasks,
            handshake.idempotent_tasks,
        );

        let end = process.serve(&mut control, generation, &spec).await;
        // No new task may take this process from here on.
        plugin.set_phase(slot, Phase::Stopping);
        match end {
            End::Stop => {
                process.stop_gracefully(spec.shutdown_grace).await;
                process.finish("was stopped").await;
                break;
            }
            End::Restart => {
                tracing::info!(plugin = %spec.name, pid = process.pid(), "restarting on request");
                process.stop_gracefully(spec.shutdown_grace).await;
                process.finish("was restarted on request").await;
                restarts.reset();
            }
            crash => {
                let reason = process.finish(&crash.to_string()).await;
                tracing::error!(plugin = %spec.name, pid = process.pid(), "plugin process ended: {reason}");
                plugin.set_crashed(slot, &reason, false);
                match back_off(&plugin, slot, &mut restarts, reason, &mut control).await {
                    Next::Restart => {}
                    Next::Stop => break,
                }
            }
        }
    }
    plugin.set_phase(slot, Phase::Stopped);
}

enum Next {
    Restart,
    Stop,
}

/// Records a crash and waits as the restart policy says: not at all, a backoff delay, or
/// a cool-down while marked failed. A stop order ends the wait.
async fn back_off(
    plugin: &Plugin,
    slot: usize,
    restarts: &mut RestartTracker,
    reason: String,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Next {
    let name = plugin.name();
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
            plugin.set_failed(slot, why, until);
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
