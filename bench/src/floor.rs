//! The floor: a raw pipe ping-pong of a 100-byte line with a child, blocking I/O.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Microseconds per round trip of a 100-byte line to `exe --echo` and back.
///
/// # Errors
/// When the child cannot be started or stops echoing.
pub fn pipe_floor(exe: &Path, calls: usize) -> Result<f64, String> {
    let mut child = Command::new(exe)
        .arg("--echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let (Some(mut to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the echo child has no pipes".into());
    };
    let mut from = BufReader::new(from);
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
