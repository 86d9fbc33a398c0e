//! When the log cannot keep up with a plugin, its lines are dropped and counted, the
//! reader never waits, and the count is logged once per interval, however the drops fall;
//! nothing accepted is lost. Its own test process: it installs the global log subscriber
//! and stalls the log on purpose.

// Tests fail by unwrapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use loom_supervisor::inputs::Connection;
use loom_supervisor::log::{self as logging, pump as logpump};
use tokio::io::AsyncWriteExt;

/// Once set, the log's destination takes lines as fast as they come.
static OPEN: AtomicBool = AtomicBool::new(false);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static NOTICES: AtomicU64 = AtomicU64::new(0);
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Until [`OPEN`], the log's destination takes one flood line per permit, and says when it
/// has begun writing the next one (so the line before has left the log's backlog).
struct Gate {
    entered: Mutex<Sender<()>>,
    permits: Mutex<Receiver<()>>,
}

static GATE: OnceLock<Gate> = OnceLock::new();

/// Installs the stalled log; returns the news of each line begun, and the permits.
fn install_stalling_log() -> (Receiver<()>, Sender<()>) {
    let (entered_tx, entered) = channel();
    let (permit, permits) = channel();
    assert!(GATE.set(Gate { entered: Mutex::new(entered_tx), permits: Mutex::new(permits) }).is_ok());
    logging::init(logging::Format::Human, logging::parse_filter("info").unwrap());
    logging::route_stderr(Some(Arc::new(|bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        if text.contains("flood line") {
            if !OPEN.load(Ordering::Acquire) {
                let gate = GATE.get().unwrap();
                gate.entered.lock().unwrap().send(()).unwrap();
                gate.permits.lock().unwrap().recv().unwrap();
            }
            DELIVERED.fetch_add(1, Ordering::Relaxed);
        } else if text.contains("dropped") {
            WARNINGS.lock().unwrap().push(text.into_owned());
        } else if text.contains("ignored a line on the log channel") {
            NOTICES.fetch_add(1, Ordering::Relaxed);
        }
    })));
    (entered, permit)
}

/// A log notification of about 4 KiB; all of them cost the log's budget the same.
fn log_line(i: usize) -> String {
    let message = format!("flood line {i:06} {}", "x".repeat(4000));
    format!(
        "{}\n",
        serde_json::json!({"jsonrpc": "2.0", "method": "log", "params": {"level": "info", "message": message}})
    )
}

fn within_a_minute(began: Instant, what: &str) {
    assert!(began.elapsed() < Duration::from_secs(60), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_drops_and_counts_lines_reports_them_once_and_never_stalls_the_reader() {
    let (entered, permit) = install_stalling_log();
    let (sup_stdin, _plugin_stdin) = tokio::io::duplex(1 << 16);
    let (mut plugin_log, sup_log) = tokio::io::duplex(1 << 16);
    let (conn, _writer) = Connection::new(Arc::from("flooder"), 7, sup_stdin, Arc::default());
    let reader = conn.spawn_log_reader(sup_log, 1 << 20);
    let dropped = || conn.stats().dropped_log_lines.load(Ordering::Relaxed);

    // About 4 KiB a line: the 32 MiB backlog takes some 8,000 of these.
    let mut sent = 12_000;
    let began = Instant::now();
    for i in 0..sent {
        plugin_log.write_all(log_line(i).as_bytes()).await.unwrap();
    }
    // A line that is not JSON-RPC is counted by the reader itself: once it is, every
    // line before it has been read, with the log still stalled.
    plugin_log.write_all(b"not json\n").await.unwrap();
    while conn.stats().junk_lines.load(Ordering::Relaxed) == 0 {
        within_a_minute(began, "the reader stalled behind the log");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(dropped() > 0 && dropped() < sent as u64, "dropped {} of {sent}", dropped());
    assert_eq!(DELIVERED.load(Ordering::Relaxed), 0, "the log was stalled");
    entered.recv_timeout(Duration::from_secs(60)).unwrap();

    // The log at the margin: each time it writes one line, the plugin sends two, and one
    // of them is dropped. Counting each gap in the flood as it closed gave a warning per
    // line ("1 log lines were dropped", 311,557 times in an audit).
    for _ in 0..100 {
        permit.send(()).unwrap();
        entered.recv_timeout(Duration::from_secs(60)).unwrap();
        let before = dropped();
        for _ in 0..2 {
            plugin_log.write_all(log_line(sent).as_bytes()).await.unwrap();
            sent += 1;
        }
        while dropped() == before {
            within_a_minute(began, "the reader stalled behind the log");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(dropped(), before + 1, "one of the two fits in the room one line left");
    }
    OPEN.store(true, Ordering::Release);
    permit.send(()).unwrap();

    // The log caught up; the plugin's process ends: a summary with every drop not yet
    // reported. One per 10 s at most in all (this test usually takes a few seconds).
    plugin_log.write_all(log_line(sent).as_bytes()).await.unwrap();
    sent += 1;
    drop(plugin_log);
    reader.await.unwrap();
    conn.fail_all("exited");
    logpump::flush(Duration::from_secs(30));
    let dropped = dropped();
    let flood_dropped = dropped - (1 - NOTICES.load(Ordering::Relaxed));
    assert_eq!(DELIVERED.load(Ordering::Relaxed), sent as u64 - flood_dropped, "every accepted line was written");
    let warnings = WARNINGS.lock().unwrap();
    let intervals = began.elapsed().as_secs() / 10 + 1;
    assert!(!warnings.is_empty() && warnings.len() as u64 <= intervals, "no report per gap: {warnings:?}");
    assert!(warnings.iter().all(|w| w.contains("from plugin flooder")), "names the plugin: {warnings:?}");
    assert_eq!(warnings.iter().map(|w| count_before(w, " log lines dropped")).sum::<u64>(), dropped, "{warnings:?}");
}

/// The number just before `what` in `text`.
fn count_before(text: &str, what: &str) -> u64 {
    let at = text.find(what).unwrap_or_else(|| panic!("{what:?} missing from {text}"));
    text[..at].split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {text}"))
}
