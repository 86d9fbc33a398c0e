//! `GET /v1/stats`: what the console's health page shows, in one answer.

use hyper::{Response, StatusCode};
use serde_json::json;

use super::{ApiBody, json_response};
use crate::daemon::service::Daemon;

/// Version, uptime, the journal's state, tasks waiting and running, and the last hour by
/// minute ([`crate::daemon::metrics::recent`]).
pub(super) async fn stats(daemon: &Daemon) -> Response<ApiBody> {
    let now = crate::journal::now_ms();
    let problem = daemon.journal.health().problem();
    let counts = daemon.journal.counts().await.ok();
    let body = json!({
        "version": crate::VERSION,
        "commit": crate::COMMIT,
        "startedAt": crate::journal::rfc3339(daemon.started_ms),
        "uptimeSecs": (now - daemon.started_ms).max(0) / 1000,
        "draining": daemon.draining(),
        "journal": {"place": daemon.journal.place(), "ok": problem.is_none(), "problem": problem},
        "queue": {
            "inFlight": daemon.in_flight(),
            "queued": counts.map(|c| c.queued),
            "running": counts.map(|c| c.running),
        },
        "minutes": daemon.metrics.recent.last_hour(now),
    });
    json_response(StatusCode::OK, &body)
}
