//! Log flood: task latency while the same plugin process sends a flood of log lines, and
//! whether every line reached the log.
//!
//! The supervisor's real log path is used (its `tracing` subscriber, the log thread of
//! `loom_supervisor::log::pump`); the formatted lines go to a counter instead of stderr.

use crate::figure::median;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::supervised::{Bench, raw, tiny_task};

/// Lines of the flood the log has written, counted by [`install_log_sink`]'s route.
static FLOOD_LINES: AtomicU64 = AtomicU64::new(0);

/// Installs the supervisor's logging with plugin lines at info, routed to a sink that
/// counts the flood's lines and passes everything else to stderr.
pub fn install_log_sink() -> Result<(), String> {
    let filter = loom_supervisor::log::parse_filter("warn,loom::plugin=info").map_err(|e| e.to_string())?;
    loom_supervisor::log::init(loom_supervisor::log::Format::Human, filter);
    loom_supervisor::log::route_stderr(Some(Arc::new(|bytes: &[u8]| {
        let flood = bytes.windows(11).filter(|w| w == b"flood line ").count() as u64;
        if flood > 0 {
            FLOOD_LINES.fetch_add(flood, Ordering::Relaxed);
        } else {
            use std::io::Write;
            let _ = std::io::stderr().write_all(bytes);
        }
    })));
    Ok(())
}

/// One round: per-call latencies without and during the flood (microseconds, medians),
/// the lines the log got, and the flood's rate (lines per second).
pub struct Round {
    pub quiet_us: f64,
    pub flooded_us: f64,
    pub received: u64,
    pub lines_per_sec: f64,
    pub calls_during: usize,
}

/// Runs one round against a fresh supervisor with one process of the plugin.
pub async fn round(exe: &std::path::Path, lines: u64, quiet_calls: usize) -> Result<Round, String> {
    let bench = Arc::new(Bench::new(exe, &[], 1)?);
    let mut quiet = Vec::with_capacity(quiet_calls);
    for i in 0..quiet_calls {
        quiet.push(timed(&bench, i).await?);
    }
    loom_supervisor::log::pump::flush(Duration::from_secs(30));
    FLOOD_LINES.store(0, Ordering::Relaxed);
    let task = format!(
        r#"{{"taskId":"flood","taskName":"INSTALL","config":{{"flood":{lines},"service":{{"name":"s","action":{{"type":"noop","script":"x"}}}}}}}}"#
    );
    let flooder = Arc::clone(&bench);
    let began = Instant::now();
    let flood = tokio::spawn(async move { flooder.call(raw(&task)?).await });
    // The flood lasts until the log has every line (the plugin queues them faster than
    // any log takes them); tasks run one after another all that time.
    let mut flooded = Vec::new();
    while FLOOD_LINES.load(Ordering::Relaxed) < lines && began.elapsed() < Duration::from_secs(60) {
        flooded.push(timed(&bench, 100_000 + flooded.len()).await?);
    }
    let delivered = began.elapsed();
    flood.await.map_err(|e| format!("the flood task panicked: {e}"))??;
    // Whatever is still on its way is read before the process is gone, then written.
    bench.sup.shutdown().await;
    loom_supervisor::log::pump::flush(Duration::from_secs(30));
    let received = FLOOD_LINES.load(Ordering::Relaxed);
    Ok(Round {
        quiet_us: median(&mut quiet),
        flooded_us: median(&mut flooded),
        received,
        lines_per_sec: received as f64 / delivered.as_secs_f64(),
        calls_during: flooded.len(),
    })
}

async fn timed(bench: &Bench, i: usize) -> Result<f64, String> {
    let task = raw(&tiny_task(i))?;
    let began = Instant::now();
    bench.call(task).await?;
    Ok(began.elapsed().as_secs_f64() * 1e6)
}
