//! The Python and Node SDKs (plugin-sdk/python, plugin-sdk/node): their examples pass
//! `check` and run real tasks under the real binary, and the SDKs keep the promises `check`
//! cannot see (through tests/plugins/sdk/probe.{py,mjs}).
//!
//! Node tests are skipped, saying so, only when `node` is not installed (`.ci/run`
//! installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use loom_e2e::{Plugins, chmod, provisioner, run_with_input, task, tempdir, workspace};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
}

impl Lang {
    /// The examples' names: (provider, automator), and the executables' extension.
    fn examples(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Lang::Python => ("pyfile", "pyshell", "py"),
            Lang::Node => ("nodefile", "nodeshell", "mjs"),
        }
    }

    fn folder(self) -> PathBuf {
        workspace().join("plugin-sdk").join(match self {
            Lang::Python => "python",
            Lang::Node => "node",
        })
    }

    /// The example of `kind`: its folder and its executable.
    fn example(self, kind: &str) -> (PathBuf, PathBuf) {
        let (provider, automator, ext) = self.examples();
        let name = if kind == "provider" { provider } else { automator };
        let dir = self.folder().join("examples").join(format!("{kind}s")).join(name);
        let exe = dir.join(format!("{name}.{ext}"));
        (dir, exe)
    }

    fn probe(self) -> PathBuf {
        workspace().join("tests/plugins/sdk").join(match self {
            Lang::Python => "probe.py",
            Lang::Node => "probe.mjs",
        })
    }

    /// False (and says why) when this language's interpreter is missing: Node only.
    fn available(self) -> bool {
        if let Lang::Node = self
            && Command::new("node").arg("--version").output().is_err()
        {
            eprintln!("SKIPPED: `node` is not installed, so the Node SDK is not tested (.ci/run installs nodejs)");
            return false;
        }
        true
    }
}

/// A folder every user can write, for the state the examples keep in $TMPDIR (they run as
/// nobody under `check` as root).
fn shared_tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    chmod(&tmp, 0o777);
    (dir, tmp)
}

/// `loom-provisioner check DIR --json`: its exit code and report.
fn check(dir: &Path, tmp: &Path) -> (Option<i32>, Value, String) {
    let mut cmd = Command::new(provisioner());
    cmd.arg("check").arg(dir).arg("--json");
    // The manifests name no user: as root (CI), run them as nobody.
    cmd.env("LOOM_PLUGIN_USER", "nobody").env("TMPDIR", tmp);
    let out = run_with_input(cmd, "", Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("check --json printed {stdout:?}: {e}\n{stderr}"));
    (out.status.code(), report, stderr)
}

/// Every rule passes or does not apply: no fail, no warn, nothing untested (the SDK
/// answers the check protocol's wait tasks, so every long-task rule is tested).
fn assert_passes_every_rule(lang: Lang, kind: &str) {
    let (dir, _) = lang.example(kind);
    let (_keep, tmp) = shared_tmp();
    let (code, report, stderr) = check(&dir, &tmp);
    let rules = report["rules"].as_array().unwrap_or_else(|| panic!("no `rules` in the report: {report:#}\n{stderr}"));
    let not_passed: Vec<String> = rules
        .iter()
        .filter(|r| r["verdict"] != "pass" && r["verdict"] != "n/a")
        .map(|r| format!("{} {}: {}", r["id"], r["verdict"], r["detail"]))
        .collect();
    assert!(not_passed.is_empty(), "{lang:?} {kind}: {not_passed:#?}\n{report:#}");
    assert!(rules.iter().any(|r| r["verdict"] == "pass"), "{report:#}");
    for count in ["fail", "warn", "untested"] {
        assert_eq!(report["counts"][count], 0, "{count}: {report:#}");
    }
    assert_eq!((code, &report["passed"], &report["kind"]), (Some(0), &json!(true), &json!(kind)), "{report:#}");
}

#[test]
fn the_python_examples_pass_every_rule_of_check() {
    assert_passes_every_rule(Lang::Python, "provider");
    assert_passes_every_rule(Lang::Python, "automator");
}

#[test]
fn the_node_examples_pass_every_rule_of_check() {
    if Lang::Node.available() {
        assert_passes_every_rule(Lang::Node, "provider");
        assert_passes_every_rule(Lang::Node, "automator");
    }
}

/// A plugins folder with `lang`'s example of `kind` registered under its name, keeping its
/// state in a folder of the test's own.
fn with_example(lang: Lang, kind: &str) -> (Plugins, String, PathBuf) {
    let p = Plugins::new();
    let (_, exe) = lang.example(kind);
    let name = exe.file_stem().unwrap().to_str().unwrap().to_owned();
    let tmp = p.file("tmp");
    std::fs::create_dir(&tmp).unwrap();
    p.add(kind, &name, json!({"executable": exe, "maxConcurrency": 4, "env": {"TMPDIR": tmp}}));
    (p, name, tmp)
}

fn provider_runs_a_machine_through_its_life(lang: Lang) {
    let (p, name, tmp) = with_example(lang, "provider");
    let provider = json!({"provider": {"name": name, "providertype": name}});
    let created = p.run(&[task("c", "CREATE", json!({"hostname": "web-1.local"}).merged(&provider))], &[]);
    let r = created.result("c");
    assert_eq!(r["status"], 0, "{r}\n{}", created.stderr);
    let id = r["result"]["providerid"].as_str().unwrap().to_owned();
    let machine = tmp.join(format!("loom-{name}-machines")).join(&id);
    assert_eq!(std::fs::read_to_string(&machine).unwrap(), "web-1.local");

    let on_it = json!({"providerid": id}).merged(&provider);
    let run = p.run(
        &[task("f", "CONFIRM", on_it.clone()), task("d", "DELETE", on_it.clone()), task("d2", "DELETE", on_it.clone())],
        &["--concurrency", "1"],
    );
    let confirmed = run.result("f");
    assert_eq!((&confirmed["status"], &confirmed["hostname"]), (&json!(0), &json!("web-1.local")), "{confirmed}");
    assert_eq!(confirmed["result"]["ipaddress"], "127.0.0.1");
    assert_eq!((&run.result("d")["status"], &run.result("d2")["status"]), (&json!(0), &json!(0)), "{}", run.stderr);
    assert!(!machine.exists(), "DELETE left the machine");

    // A machine that was never made: CONFIRM fails and says which, DELETE succeeds.
    let unknown = json!({"providerid": "m-unknown"}).merged(&provider);
    let run = p.run(&[task("u1", "CONFIRM", unknown.clone()), task("u2", "DELETE", unknown)], &[]);
    assert_eq!(run.result("u1")["status"], 1);
    assert!(run.result("u1")["stderr"].as_str().unwrap().contains("no machine m-unknown"), "{}", run.result("u1"));
    assert_eq!(run.result("u2")["status"], 0);
    p.assert_no_leftovers();
}

#[test]
fn the_python_provider_runs_a_machine_through_its_life() {
    provider_runs_a_machine_through_its_life(Lang::Python);
}

#[test]
fn the_node_provider_runs_a_machine_through_its_life() {
    if Lang::Node.available() {
        provider_runs_a_machine_through_its_life(Lang::Node);
    }
}

fn automator_runs_scripts_in_both_forms(lang: Lang) {
    let (p, name, tmp) = with_example(lang, "automator");
    let script = p.file("args.sh");
    std::fs::write(&script, "printf '%s|' \"$#\" \"$@\" > \"$LOOM_TASK_ID.out\"; echo ran $LOOM_TASK_ID; exit 3\n")
        .unwrap();
    let action = |a: Value| json!({"service": {"name": "web", "action": a}});
    let run = p.run(
        &[
            task("b", "BOOTSTRAP", json!({"automators": [name]})),
            task("b2", "BOOTSTRAP", json!({"automators": [name]})),
            // Loom: data is one argument.
            task("loom", "INSTALL", action(json!({"type": name, "script": script, "data": "8080 x"}))),
            // Coopr: args are shell words.
            task("coopr", "CONFIGURE", action(json!({"type": name, "fields": {"script": script, "args": "a 'b c'"}}))),
            // Neither a file: shell text.
            task("text", "START", action(json!({"type": name, "script": "echo hello; echo oops >&2"}))),
            task("none", "STOP", action(json!({"type": name}))),
        ],
        &["--concurrency", "1"],
    );
    let work = tmp.join(format!("loom-{name}"));
    for b in ["b", "b2"] {
        assert_eq!(run.result(b)["status"], 0, "BOOTSTRAP runs twice: {}", run.result(b));
    }
    for (id, args) in [("loom", "1|8080 x|"), ("coopr", "2|a|b c|")] {
        let r = run.result(id);
        assert_eq!((&r["status"], &r["stdout"]), (&json!(3), &json!(format!("ran {id}\n"))), "{r}");
        assert_eq!(std::fs::read_to_string(work.join(format!("{id}.out"))).unwrap(), args);
    }
    let text = run.result("text");
    assert_eq!((&text["status"], &text["stdout"], &text["stderr"]), (&json!(0), &json!("hello\n"), &json!("oops\n")));
    let none = run.result("none");
    assert!(none["status"] == 1 && none["stderr"].as_str().unwrap().contains("the action has no script"), "{none}");
    p.assert_no_leftovers();
}

#[test]
fn the_python_automator_runs_scripts_in_loom_and_coopr_form() {
    automator_runs_scripts_in_both_forms(Lang::Python);
}

#[test]
fn the_node_automator_runs_scripts_in_loom_and_coopr_form() {
    if Lang::Node.available() {
        automator_runs_scripts_in_both_forms(Lang::Node);
    }
}

/// The probe of `lang`, registered as automator "probe"; START times out after 1 s (the
/// supervisor then sends `cancel`) and the answer has 10 s to come.
fn probe(lang: Lang) -> Plugins {
    let p = Plugins::new();
    p.add(
        "automator",
        "probe",
        json!({"executable": lang.probe(), "maxConcurrency": 4, "timeouts": {"START": 1}, "cancelGraceSecs": 10}),
    );
    p
}

fn probe_task(id: &str, name: &str, what: &str) -> Value {
    task(id, name, json!({"service": {"name": "s", "action": {"type": "probe", "script": "x"}}, "probe": what}))
}

fn a_raising_handler_fails_only_its_task(lang: Lang) {
    let p = probe(lang);
    let mut tasks = vec![probe_task("before", "INSTALL", "ok"), probe_task("boom", "CONFIGURE", "raise")];
    if let Lang::Node = lang {
        tasks.push(probe_task("rejected", "INITIALIZE", "reject"));
    }
    tasks.push(probe_task("after", "REMOVE", "ok"));
    let run = p.run(&tasks, &["--concurrency", "1"]);
    let boom = run.result("boom");
    assert_eq!((&boom["status"], &boom["stderr"]), (&json!(1), &json!("probe failed on purpose")), "{boom}");
    if let Lang::Node = lang {
        let rejected = run.result("rejected");
        assert_eq!((&rejected["status"], &rejected["stderr"]), (&json!(1), &json!("probe rejected on purpose")));
    }
    assert_eq!(run.result("before")["result"]["pid"], run.result("after")["result"]["pid"], "same process");
    p.assert_no_leftovers();
}

#[test]
fn python_a_raising_handler_fails_only_its_task_with_the_message() {
    a_raising_handler_fails_only_its_task(Lang::Python);
}

#[test]
fn node_a_throwing_or_rejecting_handler_fails_only_its_task_with_the_message() {
    if Lang::Node.available() {
        a_raising_handler_fails_only_its_task(Lang::Node);
    }
}

fn stray_prints_go_to_stderr(lang: Lang) {
    let p = probe(lang);
    let run = p.run(&[probe_task("t", "INSTALL", "print"), probe_task("t2", "REMOVE", "ok")], &["--concurrency", "1"]);
    assert_eq!(run.result("t")["status"], 0, "{}", run.stderr);
    assert_eq!(run.result("t")["result"]["pid"], run.result("t2")["result"]["pid"], "same process");
    let strays: &[&str] = match lang {
        Lang::Python => &["a stray print from a handler", "a stray write on fd 1", "a stray line from a command"],
        Lang::Node => &["a stray print from a handler", "a stray write on process.stdout"],
    };
    for stray in strays {
        assert!(
            run.stderr.lines().any(|l| l.contains(stray) && l.contains("stream=\"stderr\"")),
            "{stray:?} is not in the plugin's stderr:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("not JSON"), "something reached the protocol channel: {}", run.stderr);
    p.assert_no_leftovers();
}

#[test]
fn python_print_in_a_handler_goes_to_stderr_not_the_protocol() {
    stray_prints_go_to_stderr(Lang::Python);
}

#[test]
fn node_console_log_in_a_handler_goes_to_stderr_not_the_protocol() {
    if Lang::Node.available() {
        stray_prints_go_to_stderr(Lang::Node);
    }
}

fn cancel_reaches_the_handler_and_the_command(lang: Lang) {
    let p = probe(lang);
    let run = p.run(&[probe_task("slow", "START", "wait-cancel"), probe_task("cmd", "START", "run-cancel")], &[]);
    let slow = run.result("slow");
    assert_eq!(
        (&slow["status"], &slow["result"]["partial"], &slow["cancelled"]),
        (&json!(7), &json!(true), &json!(true)),
        "{slow}"
    );
    let why = slow["stderr"].as_str().unwrap();
    assert!(
        why.contains("stopped: cancelled=True")
            && why.contains("timed out after 1 s; cancelled: the plugin stopped it when asked"),
        "{why}"
    );
    // The command the task ran was killed (a leftover `sleep` would carry the test's marker).
    let cmd = run.result("cmd");
    assert_eq!((&cmd["status"], &cmd["cancelled"]), (&json!(137), &json!(true)), "{cmd}");
    assert!(cmd["stdout"].as_str().unwrap().contains("started"), "{cmd}");
    p.assert_no_leftovers();
}

#[test]
fn python_cancel_reaches_the_handler_and_kills_its_command() {
    cancel_reaches_the_handler_and_the_command(Lang::Python);
}

#[test]
fn node_cancel_reaches_the_handler_and_kills_its_command() {
    if Lang::Node.available() {
        cancel_reaches_the_handler_and_the_command(Lang::Node);
    }
}

/// Runs the probe of `lang` by hand (no supervisor): a handshake and one task that logs,
/// stdin then closed. Returns what it wrote on stdout and on fd 3, and its exit code.
fn talk_to_probe(lang: Lang, with_log_channel: bool) -> (String, String, Option<i32>) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (log_read, log_write) = nix::unistd::pipe().unwrap();
    let mut log_read = std::fs::File::from(log_read);
    let mut cmd = Command::new(lang.probe());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).env_remove("LOOM_LOG_FD");
    if with_log_channel {
        let fd = log_write.as_raw_fd();
        cmd.env("LOOM_LOG_FD", "3");
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
    let task = json!({"jsonrpc": "2.0", "id": 2, "method": "task", "params": probe_task("t", "INSTALL", "ok")});
    let mut stdin = child.stdin.take().unwrap();
    write!(stdin, "{handshake}\n{task}\n").unwrap();
    drop(stdin);
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let code = child.wait().unwrap().code();
    let mut log = String::new();
    log_read.read_to_string(&mut log).unwrap();
    (out, log, code)
}

fn log_lines_take_the_log_channel_when_given(lang: Lang) {
    let (out, log, code) = talk_to_probe(lang, true);
    assert_eq!(code, Some(0), "exit 0 at the end of stdin");
    assert!(out.contains(r#""id":2"#) && out.contains(r#""status":0"#), "the answer is on stdout: {out}");
    assert!(!out.contains(r#""method":"log""#), "no log line on stdout: {out}");
    assert!(log.contains(r#""method":"log""#) && log.contains("a log line from the probe"), "{log}");

    // Started without the variable, it logs on stdout, as PROTOCOL.md's base case.
    let (out, log, _) = talk_to_probe(lang, false);
    assert!(out.contains(r#""id":2"#) && out.contains("a log line from the probe"), "{out}");
    assert!(log.is_empty(), "{log}");
}

#[test]
fn python_log_lines_take_the_log_channel_when_given_and_answers_stay_on_stdout() {
    log_lines_take_the_log_channel_when_given(Lang::Python);
}

#[test]
fn node_log_lines_take_the_log_channel_when_given_and_answers_stay_on_stdout() {
    if Lang::Node.available() {
        log_lines_take_the_log_channel_when_given(Lang::Node);
    }
}

trait Merged {
    fn merged(self, other: &Value) -> Value;
}

impl Merged for Value {
    fn merged(mut self, other: &Value) -> Value {
        loom_e2e::merge(&mut self, other.clone());
        self
    }
}
