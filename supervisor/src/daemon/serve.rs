//! `loom-provisioner serve`: the daemon's life under systemd.
//!
//! Start: journal, plugins, API listener; `READY=1` once every plugin finished its
//! handshake (and the journal's unfinished tasks were recovered). Then: `STATUS=` every few
//! seconds, `WATCHDOG=1` when systemd asks for it, old results pruned every hour.
//! SIGHUP: `RELOADING=1`, re-read the configuration and the plugins folders, `READY=1`.
//! SIGTERM or SIGINT: `STOPPING=1`, refuse new tasks, let those in flight finish (up to
//! `drain_grace_secs`), stop the plugins, exit 0.

use std::sync::Arc;
use std::time::Duration;

use loom_protocol::LogLevel;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::daemon::activation::Activated;
use crate::daemon::config::{Config, Listen};
use crate::daemon::http::{self, Listener};
use crate::daemon::service::{Daemon, StartError};

/// How long the daemon waits, before it exits, for systemd to take the notifications it
/// could not take at once.
const NOTIFY_SETTLE: Duration = Duration::from_secs(5);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The API's address could not be bound (in use, no permission, bad socket folder).
    #[error("{listen} (listen in {}): {source}", config.display())]
    Listen {
        /// The address.
        listen: String,
        /// The configuration file that named it.
        config: std::path::PathBuf,
        /// Why.
        source: http::BindError,
    },
    /// The socket systemd passed cannot be used as it is.
    #[error("socket activation: {0}")]
    Activated(String),
    /// The journal or the plugins folders could not be opened.
    #[error("{0}")]
    Start(StartError),
}

impl ServeError {
    /// Whether the daemon never started (a configuration or start-up problem), rather than
    /// failing while it ran.
    pub fn is_start_up(&self) -> bool {
        matches!(self, ServeError::Listen { .. } | ServeError::Activated(_) | ServeError::Start(_))
    }
}

/// Runs the daemon until SIGTERM or SIGINT, on the socket systemd passed (`activated`)
/// or else on the configuration's `listen`.
///
/// # Errors
/// [`ServeError`] when it cannot start; once it runs, it stops only on a signal.
pub async fn serve(config: Config, activated: Option<Activated>, plugin_level: LogLevel) -> Result<(), ServeError> {
    crate::daemon::memory::tune();
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    let (listener, listen) = match activated {
        Some(activated) => take_activated(activated, &config)?,
        None => {
            let listen = config.listen.clone();
            let listener = Listener::bind(&listen).await.map_err(|source| ServeError::Listen {
                listen: listen.to_string(),
                config: config.path.clone(),
                source,
            })?;
            (listener, listen)
        }
    };
    let daemon = Daemon::start(config, plugin_level).map_err(ServeError::Start)?;
    daemon.serving_on(listen.clone());
    let open_files = http::raise_open_files_limit();
    let fitted = daemon.config().http.fitted(open_files);
    if fitted.max_connections < daemon.config().http.max_connections {
        tracing::warn!(
            "http.max_connections lowered to {} to fit the open-files limit of {open_files} (raise LimitNOFILE to allow more)",
            fitted.max_connections
        );
    }
    // Before the API takes tasks: what is unfinished now is the last run's (or, in a
    // fleet, a dead daemon's).
    let left = daemon.join().await.unwrap_or_else(|e| {
        tracing::error!("cannot join the fleet or take over the journal's unfinished tasks: {e}");
        Vec::new()
    });
    let stop_http = CancellationToken::new();
    let http = tokio::spawn(http::serve(listener, Arc::clone(&daemon), open_files, stop_http.clone()));
    tracing::info!("listening on {listen}; journal {}", daemon.journal.place());

    daemon.supervisor.wait_settled().await;
    match daemon.recover(left).await {
        Ok((0, 0)) => {}
        Ok((rerun, failed)) => {
            tracing::info!("after the restart: {rerun} tasks run again, {failed} failed as interrupted")
        }
        Err(e) => tracing::error!("cannot recover the journal's unfinished tasks: {e}"),
    }
    daemon.run_fleet();
    match daemon.resume_clusters().await {
        Ok(0) => {}
        Ok(n) => tracing::info!("after the restart: {n} cluster operations resumed"),
        Err(e) => tracing::error!("cannot resume the clusters' operations: {e}"),
    }
    let retention = daemon.config().retention;
    prune(&daemon, retention).await;
    daemon.notifier.ready(&daemon.status_line());
    tracing::info!("ready: {}", daemon.status_line());

    let background = CancellationToken::new();
    tokio::spawn(housekeeping(Arc::clone(&daemon), background.clone()));

    loop {
        tokio::select! {
            _ = hup.recv() => reload(&daemon).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    daemon.notifier.stopping("draining");
    let grace = daemon.config().drain_grace;
    tracing::info!(
        "stopping: finishing {} tasks in flight (at most {} s), then stopping the plugins",
        daemon.in_flight(),
        grace.as_secs()
    );
    daemon.drain(grace).await;
    background.cancel();
    stop_http.cancel();
    let _ = http.await;
    // STOPPING=1 (or an earlier notification) may still wait for systemd to take it.
    let settling = Arc::clone(&daemon);
    let _ = tokio::task::spawn_blocking(move || settling.notifier.settle(NOTIFY_SETTLE)).await;
    tracing::info!("stopped");
    Ok(())
}

/// The socket systemd passed, as the API's listener, under the rules `listen` has: off
/// loopback only with a token.
fn take_activated(activated: Activated, config: &Config) -> Result<(Listener, Listen), ServeError> {
    let Activated { listener, address, unused } = activated;
    if !address.ip().is_loopback() && config.token.is_none() {
        return Err(ServeError::Activated(format!(
            "the socket is on {address}, not a loopback address, so token_file must be set in {} (bearer-token auth)",
            config.path.display()
        )));
    }
    if unused > 0 {
        tracing::warn!("socket activation: {unused} more sockets were passed; only the first (fd 3) is used");
    }
    if config.listen != Listen::Tcp(address) {
        tracing::info!("socket activation: serving on the socket systemd passed, not on listen ({})", config.listen);
    }
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map(|l| (Listener::Tcp(l), Listen::Tcp(address)))
        .map_err(|e| ServeError::Activated(format!("cannot use the socket on {address}: {e}")))
}

async fn reload(daemon: &Arc<Daemon>) {
    daemon.notifier.reloading();
    match daemon.reload() {
        Ok(report) => {
            tracing::info!(
                "reloaded: added {:?}, removed {:?}, replaced {:?}, unchanged {}",
                report.added,
                report.removed,
                report.replaced,
                report.unchanged.len()
            );
            daemon.supervisor.wait_settled().await;
        }
        Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
    }
    daemon.notifier.ready(&daemon.status_line());
}

/// Status lines, watchdog pings and pruning, until `stop`.
async fn housekeeping(daemon: Arc<Daemon>, stop: CancellationToken) {
    let watchdog = crate::daemon::notify::watchdog_interval();
    let mut watchdog_tick = watchdog.map(tokio::time::interval);
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    let mut prune_tick = tokio::time::interval(Duration::from_secs(3600));
    let mut last_status = String::new();
    // Memory taken by a burst of work goes back to the system once the burst is over.
    let trimmer = crate::daemon::memory::Trimmer::new(16 * 1024 * 1024);
    loop {
        let dog = async {
            match watchdog_tick.as_mut() {
                Some(t) => t.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            _ = dog => daemon.notifier.watchdog(),
            _ = status_tick.tick() => {
                trimmer.check();
                let waiting = u64::try_from(daemon.in_flight()).unwrap_or(u64::MAX);
                daemon.metrics.recent.sample(crate::journal::now_ms(), waiting);
                let status = daemon.status_line();
                if status != last_status {
                    daemon.notifier.status(&status);
                    last_status = status;
                }
            }
            _ = prune_tick.tick() => prune(&daemon, daemon.config().retention).await,
        }
    }
}

async fn prune(daemon: &Daemon, retention: Duration) {
    match daemon.journal.prune(retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("pruned {n} results older than {} h", retention.as_secs() / 3600),
        Err(e) => tracing::warn!("cannot prune old results: {e}"),
    }
}
