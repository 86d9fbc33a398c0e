//! When the log cannot keep up with a plugin, its lines are dropped and counted, the
//! reader never waits, and the count is logged; nothing accepted is lost. Its own test
//! process: it installs the global log subscriber and stalls the log on purpose.

// Tests fail by unwrapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loom_supervisor::connection::Connection;
use loom_supervisor::{logging, logpump};
use tokio::io::AsyncWriteExt;

static OPEN: AtomicBool = AtomicBool::new(false);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_stalling_log() {
    logging::init(logging::Format::Human, logging::parse_filter("info").unwrap());
    logging::route_stderr(Some(Arc::new(|bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        if text.contains("flood line") {
            // The log's destination is stuck until the test opens it.
            while !OPEN.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            DELIVERED.fetch_add(1, Ordering::Relaxed);
        } else if text.contains("were dropped") {
            WARNINGS.lock().unwrap().push(text.into_owned());
        }
    })));
}

fn log_line(i: usize) -> String {
    let message = format!("flood line {i} {}", "x".repeat(4000));
    format!(
        "{}\n",
        serde_json::json!({"jsonrpc": "2.0", "method": "log", "params": {"level": "info", "message": message}})
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_drops_and_counts_lines_and_never_stalls_the_reader() {
    install_stalling_log();
    let (sup_stdin, _plugin_stdin) = tokio::io::duplex(1 << 16);
    let (mut plugin_log, sup_log) = tokio::io::duplex(1 << 16);
    let (conn, _writer) = Connection::new(Arc::from("flooder"), 7, sup_stdin, Arc::default());
    let reader = conn.spawn_log_reader(sup_log, 1 << 20);

    // About 4 KiB a line: the 32 MiB budget takes some 8,000 of these.
    let sent = 12_000;
    let began = Instant::now();
    for i in 0..sent {
        plugin_log.write_all(log_line(i).as_bytes()).await.unwrap();
    }
    // A line that is not JSON-RPC is counted by the reader itself: once it is, every
    // line before it has been read, with the log still stalled.
    plugin_log.write_all(b"not json\n").await.unwrap();
    while conn.stats().junk_lines.load(Ordering::Relaxed) == 0 {
        assert!(began.elapsed() < Duration::from_secs(60), "the reader stalled behind the log");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = conn.stats().dropped_log_lines.load(Ordering::Relaxed);
    assert!(dropped > 0 && dropped < sent as u64, "dropped {dropped} of {sent}");
    assert_eq!(DELIVERED.load(Ordering::Relaxed), 0, "the log was stalled");

    // The log catches up; the next line carries the count of the dropped ones.
    OPEN.store(true, Ordering::Release);
    logpump::flush(Duration::from_secs(30));
    plugin_log.write_all(log_line(sent).as_bytes()).await.unwrap();
    drop(plugin_log);
    reader.await.unwrap();
    logpump::flush(Duration::from_secs(30));
    assert_eq!(conn.stats().dropped_log_lines.load(Ordering::Relaxed), dropped, "room again: the last line is taken");
    assert_eq!(DELIVERED.load(Ordering::Relaxed), sent as u64 + 1 - dropped, "every accepted line was written");
    let warnings = WARNINGS.lock().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(&format!("{dropped} log lines from this plugin were dropped")), "{}", warnings[0]);
    assert!(warnings[0].contains("flooder"), "names the plugin: {}", warnings[0]);
}
