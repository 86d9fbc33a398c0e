//! The floors: a raw pipe ping-pong of a 100-byte line with a child, blocking I/O; the
//! Rust SDK plugin driven the same way (no supervisor), to split a round trip's cost
//! between the two sides; and the plugin started from scratch by this harness, the least
//! a restart can cost.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use crate::cpu::{self, Throughput};

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

/// Lines per second through `exe --echo` with many in flight, and the CPU time per line
/// of both ends: a thread writes `lines` 100-byte lines (buffered, as the supervisor's
/// writer sends what is queued in one write) while this one reads the echoes. The
/// pipelined counterpart of [`pipe_floor`], measured beside the supervisor's pipelined
/// tasks.
///
/// # Errors
/// When the child cannot be started or stops echoing.
pub fn pipe_throughput(exe: &Path, lines: usize) -> Result<Throughput, String> {
    let cpu_before = cpu::own() + cpu::reaped_children();
    let (mut child, to, mut from) = spawn_piped(exe, &["--echo"])?;
    let began = Instant::now();
    let writer = std::thread::spawn(move || {
        let line = format!("{}\n", "x".repeat(99));
        let mut to = std::io::BufWriter::with_capacity(64 << 10, to);
        (0..lines).try_for_each(|_| to.write_all(line.as_bytes())).and_then(|()| to.flush())
    });
    let mut back = String::new();
    let mut read = 0;
    let outcome = loop {
        if read == lines {
            break Ok(began.elapsed());
        }
        back.clear();
        match from.read_line(&mut back) {
            Ok(0) => break Err("the echo child closed its stdout".to_owned()),
            Ok(_) => read += 1,
            Err(e) => break Err(format!("echo child: {e}")),
        }
    };
    // On an early end the child is killed, so that a writer blocked on a full pipe ends.
    if outcome.is_err() {
        let _ = child.kill();
    }
    let written = writer.join().map_err(|_| "the writer thread panicked".to_owned())?;
    // The child exits once the writer has closed its stdin; waiting for it counts its CPU.
    let _ = child.wait();
    let wall = outcome?;
    written.map_err(|e| format!("echo child: {e}"))?;
    let cpu = (cpu::own() + cpu::reaped_children()).saturating_sub(cpu_before);
    Ok(Throughput::new(lines, wall, cpu))
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
    call(HANDSHAKE)?;
    let requests: Vec<String> = (0..calls + calls / 10).map(|i| task_request(i, task)).collect();
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

/// Milliseconds from starting the SDK plugin `exe` to its answer to a first task, the
/// handshake in between: what starting a plugin costs without a supervisor, and so the
/// least a restart can cost. The child is forked as the supervisor forks its plugins (a
/// `pre_exec` hook rules out `posix_spawn`), so that fork's share (copying this process's
/// page tables) is in both figures.
///
/// # Errors
/// When the plugin cannot be started or answers something else.
pub fn fresh_start(exe: &Path) -> Result<f64, String> {
    let began = Instant::now();
    let mut cmd = Command::new(exe);
    // SAFETY: the hook runs in the forked child before exec and makes one
    // async-signal-safe system call (prctl), as the supervisor's own hook does.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let (mut child, mut to, mut from) = piped(cmd, exe)?;
    let mut back = String::new();
    for line in [HANDSHAKE.to_owned(), task_request(0, crate::supervised::tiny_task)] {
        back.clear();
        to.write_all(line.as_bytes()).and_then(|()| to.flush()).map_err(|e| format!("SDK plugin: {e}"))?;
        match from.read_line(&mut back) {
            Ok(0) => return Err("the SDK plugin closed its stdout".into()),
            Ok(_) if back.contains("\"error\"") => {
                return Err(format!("the SDK plugin answered an error: {}", back.trim()));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("SDK plugin: {e}")),
        }
    }
    let ms = began.elapsed().as_secs_f64() * 1e3;
    drop(to);
    let _ = child.wait();
    Ok(ms)
}

/// The handshake a supervisor sends, as one line.
const HANDSHAKE: &str = "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"handshake\",\"params\":{\"protocolVersions\":[1],\"plugin\":\"noop\",\"kind\":\"automator\"}}\n";

/// The `i`th task request (id `i + 1`), the task made by `task`, as one line.
fn task_request(i: usize, task: crate::supervised::MakeTask) -> String {
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"task\",\"params\":{}}}\n", i + 1, task(i))
}

/// Starts `exe` with `args`, its stdin and stdout piped to this process.
fn spawn_piped(exe: &Path, args: &[&str]) -> Result<(Child, ChildStdin, BufReader<ChildStdout>), String> {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    piped(cmd, exe)
}

/// Starts `cmd` (running `exe`) with its stdin and stdout piped to this process.
fn piped(mut cmd: Command, exe: &Path) -> Result<(Child, ChildStdin, BufReader<ChildStdout>), String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    match (child.stdin.take(), child.stdout.take()) {
        (Some(to), Some(from)) => Ok((child, to, BufReader::new(from))),
        _ => Err(format!("{} has no pipes", exe.display())),
    }
}
