//! The Rust SDK's promises, through a real SDK plugin (`sdk-probe`) under the real binary.

use loom_e2e::{Plugins, bin_dir, task};
use serde_json::{Value, json};

fn probe(id: &str, name: &str, what: &str) -> Value {
    task(id, name, json!({"service": {"name": "s", "action": {"type": "probe", "script": "x"}}, "probe": what}))
}

fn plugins() -> Plugins {
    let p = Plugins::new();
    p.add(
        "automator",
        "probe",
        json!({"executable": bin_dir().join("sdk-probe"), "maxConcurrency": 4,
        "timeouts": {"START": 0.5}, "cancelGraceSecs": 10}),
    );
    p
}

#[test]
fn a_panic_fails_only_its_task_and_the_process_keeps_serving() {
    let p = plugins();
    let run = p.run(
        &[probe("before", "INSTALL", "ok"), probe("boom", "CONFIGURE", "panic"), probe("after", "INITIALIZE", "ok")],
        &["--concurrency", "1"],
    );
    let boom = run.result("boom");
    assert_eq!(boom["status"], 1);
    assert!(boom["stderr"].as_str().unwrap().contains("the plugin panicked: probe panicked on purpose"), "{boom}");
    assert_eq!(run.result("before")["result"]["pid"], run.result("after")["result"]["pid"], "same process");
    p.assert_no_leftovers();
}

#[test]
fn println_in_plugin_code_goes_to_stderr_not_the_protocol() {
    let p = plugins();
    let run = p.run(&[probe("t", "INSTALL", "println"), probe("t2", "START", "ok")], &["--concurrency", "1"]);
    assert_eq!(run.result("t")["status"], 0, "{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l.contains("a stray println from plugin code") && l.contains("stream=\"stderr\"")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not JSON"), "nothing reached the protocol channel: {}", run.stderr);
    p.assert_no_leftovers();
}

#[test]
fn tracing_events_are_forwarded_with_the_task_id() {
    let p = plugins();
    let run = p.run(&[probe("traced", "INSTALL", "tracing")], &[]);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("a tracing event from inside the task"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(line.contains("WARN") && line.contains("task_id=traced") && line.contains("\"answer\":42"), "{line}");
    p.assert_no_leftovers();
}

#[test]
fn cancel_reaches_the_task_and_its_error_keeps_status_and_result_keys() {
    let p = plugins();
    let run = p.run(&[probe("slow", "START", "wait-cancel")], &[]);
    let r = run.result("slow");
    assert_eq!(r["status"], 7, "{r}");
    assert_eq!(r["result"]["partial"], true);
    assert_eq!(r["cancelled"], true, "a failure after its cancel says so: {r}");
    let why = r["stderr"].as_str().unwrap();
    assert!(
        why.contains("stopped: cancelled")
            && why.contains("timed out after 0.5 s; cancelled: the plugin stopped it when asked"),
        "{why}"
    );
    p.assert_no_leftovers();
}

#[test]
fn errors_become_failed_results_and_undeclared_tasks_are_refused() {
    let p = plugins();
    let run =
        p.run(&[probe("e", "INSTALL", "error"), probe("io", "INSTALL", "io-error"), probe("r", "REMOVE", "ok")], &[]);
    let e = run.result("e");
    assert_eq!(
        (e["status"].as_i64(), e["stderr"].as_str(), e["result"]["kept"].as_str()),
        (Some(1), Some("a plain failure"), Some("yes"))
    );
    let io = run.result("io")["stderr"].as_str().unwrap().to_owned();
    assert!(io.contains("No such file or directory"), "{io}");
    let r = run.result("r")["stderr"].as_str().unwrap().to_owned();
    assert!(r.contains("does not handle REMOVE") && r.contains("BOOTSTRAP, INSTALL"), "{r}");
    p.assert_no_leftovers();
}

/// Runs `sdk-probe` by hand (no supervisor): a handshake and one "tracing" task, stdin
/// then closed. Returns what it wrote on stdout and on fd 3.
fn talk_to_probe(with_log_channel: bool) -> (String, String) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (log_read, log_write) = nix::unistd::pipe().unwrap();
    let mut log_read = std::fs::File::from(log_read);
    let mut cmd = std::process::Command::new(bin_dir().join("sdk-probe"));
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    if with_log_channel {
        let fd = log_write.as_raw_fd();
        cmd.env(loom_protocol::ENV_LOG_FD, "3");
        // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
        unsafe {
            cmd.pre_exec(
                move || if nix::libc::dup2(fd, 3) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) },
            );
        }
    }
    let mut child = cmd.spawn().unwrap();
    drop(log_write);
    let handshake = json!({"jsonrpc": "2.0", "id": 1, "method": "handshake",
        "params": {"protocolVersions": [1], "plugin": "probe", "kind": "automator", "logLevel": "info"}});
    let task = json!({"jsonrpc": "2.0", "id": 2, "method": "task", "params": probe("t", "INSTALL", "tracing")});
    let mut stdin = child.stdin.take().unwrap();
    write!(stdin, "{handshake}\n{task}\n").unwrap();
    drop(stdin);
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    let mut log = String::new();
    log_read.read_to_string(&mut log).unwrap();
    (out, log)
}

#[test]
fn log_lines_take_the_log_channel_when_given_and_answers_stay_on_stdout() {
    let (out, log) = talk_to_probe(true);
    assert!(out.contains(r#""id":2"#) && out.contains(r#""status":0"#), "the answer is on stdout: {out}");
    assert!(!out.contains(r#""method":"log""#), "no log line on stdout: {out}");
    assert!(log.contains(r#""method":"log""#) && log.contains("a tracing event from inside the task"), "{log}");

    // A plugin started without the variable logs on stdout, as PROTOCOL.md's base case.
    let (out, log) = talk_to_probe(false);
    assert!(out.contains(r#""id":2"#) && out.contains("a tracing event from inside the task"), "{out}");
    assert!(log.is_empty(), "{log}");
}
