//! The floor: a raw pipe ping-pong of a 100-byte line with a child, blocking I/O; and the
//! Rust SDK plugin driven the same way (no supervisor), to split a round trip's cost
//! between the two sides.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Microseconds per round trip of a 100-byte line to `exe --echo` and back.
///
/// # Errors
/// When the child cannot be started or stops echoing.
pub fn pipe_floor(exe: &Path, calls: usize) -> Result<f64, String> {
    let (mut child, mut to, mut from) = spawn_piped(exe, &["--echo"])?;
    let line = format!("{}\n", "x".repeat(99));
    let mut back = String::new();
    let mut once = || -> Result<(), String> {
        back.clear();
        to.write_all(line.as_bytes()).and_then(|()| to.flush()).map_err(|e| format!("echo child: {e}"))?;
        match from.read_line(&mut back) {
            Ok(0) => Err("the echo child closed its stdout".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("echo child: {e}")),
        }
    };
    for _ in 0..calls / 10 {
        once()?;
    }
    let began = Instant::now();
    for _ in 0..calls {
        once()?;
    }
    let per_call = began.elapsed().as_secs_f64() * 1e6 / calls as f64;
    drop(to);
    let _ = child.wait();
    Ok(per_call)
}

/// Microseconds per task (made by `task`) sent to the SDK plugin `exe` by a blocking
/// client that writes each request and reads its answer (after the handshake), without
/// a supervisor.
///
/// # Errors
/// When the plugin cannot be started or answers something else.
pub fn sdk_direct(exe: &Path, task: crate::supervised::MakeTask, calls: usize) -> Result<f64, String> {
    let (mut child, mut to, mut from) = spawn_piped(exe, &[])?;
    let mut back = String::new();
    let mut call = |line: &str| -> Result<(), String> {
        back.clear();
        to.write_all(line.as_bytes()).and_then(|()| to.flush()).map_err(|e| format!("SDK plugin: {e}"))?;
        match from.read_line(&mut back) {
            Ok(0) => Err("the SDK plugin closed its stdout".into()),
            Ok(_) if back.contains("\"error\"") => Err(format!("the SDK plugin answered an error: {}", back.trim())),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("SDK plugin: {e}")),
        }
    };
    call(
        "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"handshake\",\"params\":{\"protocolVersions\":[1],\"plugin\":\"noop\",\"kind\":\"automator\"}}\n",
    )?;
    let request =
        |i: usize| format!("{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"task\",\"params\":{}}}\n", i + 1, task(i));
    let requests: Vec<String> = (0..calls + calls / 10).map(request).collect();
    for r in &requests[calls..] {
        call(r)?;
    }
    let began = Instant::now();
    for r in &requests[..calls] {
        call(r)?;
    }
    let per_call = began.elapsed().as_secs_f64() * 1e6 / calls as f64;
    drop(to);
    let _ = child.wait();
    Ok(per_call)
}

/// Starts `exe` with `args`, its stdin and stdout piped to this process.
fn spawn_piped(exe: &Path, args: &[&str]) -> Result<(Child, ChildStdin, BufReader<ChildStdout>), String> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    match (child.stdin.take(), child.stdout.take()) {
        (Some(to), Some(from)) => Ok((child, to, BufReader::new(from))),
        _ => Err(format!("{} has no pipes", exe.display())),
    }
}
