//! Processes seen from outside: running a command to its end within a deadline, and
//! finding in /proc what is alive, what a test left behind, and zombies.
//!
//! Every plugin a test registers gets `LOOM_TEST_MARKER=<unique>` in its environment,
//! which its children inherit; [`processes_with_env`] finds them by it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` with `input` on stdin and waits up to `limit`; kills it and panics after.
pub fn run_with_input(cmd: Command, input: &str, limit: Duration) -> Output {
    run_with_stderr(cmd, input, Stdio::piped(), limit)
}

/// Like [`run_with_input`], with the child's stderr connected to `stderr` (a socket, a
/// terminal); the output's `stderr` is empty unless `stderr` is [`Stdio::piped`].
pub fn run_with_stderr(mut cmd: Command, input: &str, stderr: Stdio, limit: Duration) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let pid = child.id() as i32;
    let out = wait_or_kill(pid, limit, move || child.wait_with_output())
        .unwrap_or_else(|| panic!("{program} did not finish within {limit:?}"))
        .expect("wait");
    let _ = writer.join();
    out
}

/// Runs `wait`, which waits for process `pid`, on a thread of its own and returns what it
/// returns; if that takes longer than `limit`, kills `pid` (SIGKILL) and returns `None`.
pub fn wait_or_kill<T: Send + 'static>(
    pid: i32,
    limit: Duration,
    wait: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(wait());
    });
    let waited = rx.recv_timeout(limit).ok();
    if waited.is_none() {
        kill9(pid);
    }
    waited
}

/// Sends SIGKILL to `pid`, if it still exists.
pub(crate) fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// Pids and command lines of live processes whose environment has `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<String> {
    with_env(key, value)
        .into_iter()
        .map(|(pid, dir)| {
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let state = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| state_and_parent(&s))
                .map_or('?', |(state, _)| state);
            format!("pid {pid} state {state}: {cmdline}")
        })
        .collect()
}

/// Pids of live processes whose environment has `key=value`.
pub(crate) fn pids_with_env(key: &str, value: &str) -> Vec<i32> {
    with_env(key, value).into_iter().map(|(pid, _)| pid).collect()
}

/// Pids of processes whose command line contains `needle`.
pub(crate) fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    proc_entries()
        .filter_map(|(pid, dir)| {
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(needle).then_some(pid)
        })
        .collect()
}

/// Zombie children of this process (their `/proc/<pid>/stat` lines).
pub fn zombie_children() -> Vec<String> {
    let me = std::process::id() as i32;
    proc_entries()
        .filter_map(|(_, dir)| std::fs::read_to_string(dir.join("stat")).ok())
        .filter(|stat| state_and_parent(stat) == Some(('Z', me)))
        .collect()
}

/// Whether a process with this pid exists (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| state_and_parent(&s))
        .is_some_and(|(state, _)| state != 'Z')
}

/// Polls `cond` until it holds or `limit` passes. For conditions no signal reports, such
/// as a process that is not our child disappearing.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes in /proc: pid and folder.
fn proc_entries() -> impl Iterator<Item = (i32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
}

/// The processes whose environment has `key=value`.
fn with_env(key: &str, value: &str) -> Vec<(i32, PathBuf)> {
    let needle = format!("{key}={value}");
    proc_entries()
        .filter(|(_, dir)| {
            std::fs::read(dir.join("environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// The state letter and parent pid in the text of `/proc/<pid>/stat`: `pid (comm) S ppid
/// ...`, where the command may hold spaces and parentheses (hence the last `)`).
fn state_and_parent(stat: &str) -> Option<(char, i32)> {
    let mut fields = stat.rsplit(')').next()?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}
