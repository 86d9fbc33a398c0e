//! Signals while a command runs: SIGINT and SIGTERM interrupt it (the daemon handles its
//! own, with SIGHUP, in [`crate::daemon::serve`]).

/// Resolves on SIGINT or SIGTERM with the signal's name.
pub async fn interrupt() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
