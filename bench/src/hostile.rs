//! Memory under hostile input: the real daemon while 40 clients each send a 15 MB task
//! and its plugin answers every task with a million-key result (11 MB on one line), then
//! after the burst. Issue 11's goal: under 200 MB resident during it, back within 2x the
//! idle size after it.
//!
//! The daemon runs with its default memory settings; a client whose task does not fit in
//! the daemon's task budget gets 503 and tries again a second later, as a client should.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::footprint::{rss_kb, start_daemon};
use crate::supervised::TempDir;

/// What one round measured.
pub struct Round {
    /// Resident memory before the burst, MB.
    pub idle_mb: f64,
    /// The most resident memory seen during the burst (sampled every 20 ms), MB.
    pub peak_mb: f64,
    /// Resident memory once the burst is over and the daemon's housekeeping has run, MB.
    pub after_mb: f64,
    /// Tasks answered (every one, eventually: 503s are retried).
    pub answered: usize,
}

/// The burst's shape.
pub struct Burst {
    /// Concurrent clients, one task each.
    pub clients: usize,
    /// Bytes of padding in each task.
    pub task_bytes: usize,
    /// Keys in each result the plugin answers.
    pub result_keys: u64,
}

/// Starts the daemon on `exe`, measures its idle size, sends the burst while sampling its
/// memory, then waits for it to settle.
pub fn round(daemon: &Path, exe: &Path, burst: &Burst) -> Result<Round, String> {
    let dir = TempDir::new("hostile")?;
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let mut proc = start_daemon(daemon, exe, 1, &dir, &format!("127.0.0.1:{port}"))?;
    let pid = proc.0.id();
    std::thread::sleep(Duration::from_secs(1));
    let idle_mb = rss_kb(pid)? / 1024.0;

    let peak_kb = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak_kb, done) = (Arc::clone(&peak_kb), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(kb) = rss_kb(pid) {
                    peak_kb.fetch_max(kb as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let clients: Vec<_> = (0..burst.clients)
        .map(|i| {
            let body = task(i, burst.task_bytes, burst.result_keys);
            std::thread::spawn(move || submit(port, &body))
        })
        .collect();
    let answered = clients.into_iter().filter_map(|c| c.join().ok()).filter(Result::is_ok).count();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    // The daemon gives memory back from its housekeeping tick (every 5 s).
    let settled = Instant::now();
    let mut after_mb = rss_kb(pid)? / 1024.0;
    while settled.elapsed() < Duration::from_secs(12) && after_mb > 2.0 * idle_mb {
        std::thread::sleep(Duration::from_millis(500));
        after_mb = rss_kb(pid)? / 1024.0;
    }
    proc.stop();
    Ok(Round { idle_mb, peak_mb: peak_kb.load(Ordering::Relaxed) as f64 / 1024.0, after_mb, answered })
}

/// A START task for the plugin, `pad` bytes of padding, asking for a result of `keys` keys.
fn task(i: usize, pad: usize, keys: u64) -> String {
    format!(
        r#"{{"taskId":"hostile-{i}","taskName":"START","config":{{"service":{{"action":{{"type":"noop"}}}},"resultKeys":{keys},"pad":"{}"}}}}"#,
        "x".repeat(pad)
    )
}

/// POSTs `body` with `wait=true` until it is answered (503: the budget is full, try again
/// in a second).
fn submit(port: u16, body: &str) -> Result<(), String> {
    for _ in 0..600 {
        let status = post(port, body)?;
        match status {
            200 => return Ok(()),
            503 => std::thread::sleep(Duration::from_secs(1)),
            other => return Err(format!("the daemon answered {other}")),
        }
    }
    Err("never accepted".into())
}

/// One request on its own connection; the status. A connection the daemon closed while
/// the body was on its way (it refused the task before reading it) counts as a 503.
fn post(port: u16, body: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let head = format!(
        "POST /v1/tasks?wait=true HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).is_err() {
        return Ok(503);
    }
    let mut answer = Vec::new();
    if s.read_to_end(&mut answer).is_err() && answer.is_empty() {
        return Ok(503);
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| "no HTTP status".to_owned())
}
