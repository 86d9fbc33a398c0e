//! The command line: exit codes, `plugins`, `check`, and bad input.

use std::io::Write;
use std::process::Command;

use loom_e2e::{Plugins, action, bin_dir, provisioner, run_with_input, workspace};
use serde_json::{Value, json};
use std::time::Duration;

fn cli(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(provisioner());
    cmd.args(args);
    // The bundled examples name their executables by command name: put ours on PATH.
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path);
    // Their manifests name no user: as root (CI), run them as nobody.
    cmd.env("LOOM_PLUGIN_USER", "nobody");
    let out = run_with_input(cmd, input, Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_python_example_passes_check() {
    let dir = workspace().join("plugins/examples/automators/pyexample");
    let (code, out, err) = cli(&["check", dir.to_str().unwrap(), "--json"], "");
    assert_eq!(code, Some(0), "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let not_passed: Vec<&Value> = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !matches!(r["verdict"].as_str(), Some("pass" | "n/a")))
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
}

#[test]
fn the_rust_examples_pass_check_by_name() {
    let dir = workspace().join("plugins/examples");
    for kind in ["provider", "automator"] {
        let (code, out, err) =
            cli(&["check", "example", "--kind", kind, "--plugins-dir", dir.to_str().unwrap(), "--json"], "");
        assert_eq!(code, Some(0), "{out}\n{err}");
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["passed"], true, "{report:#}");
        assert_eq!(report["kind"], kind);
    }
}

#[test]
fn check_fails_a_plugin_that_writes_junk_and_says_why() {
    let plugins = Plugins::new();
    let manifest = plugins.add_test_plugin("automator", "junky", json!({}));
    let sample = plugins.file("install.json");
    std::fs::write(&sample, action("s1", "INSTALL", "junky", json!({"action": "junk"})).to_string()).unwrap();
    let (code, out, _) = cli(&["check", manifest.to_str().unwrap(), "--task", sample.to_str().unwrap()], "");
    assert_eq!(code, Some(1), "{out}");
    let rule_line = out.lines().find(|l| l.contains("P-2-stdout-messages")).unwrap();
    assert!(
        rule_line.contains("FAIL") && rule_line.contains("a line on stdout that is not a JSON-RPC message"),
        "{out}"
    );
    assert!(out.contains("spec 2: \"Every line a plugin writes on stdout MUST be a message.\""), "{out}");
    plugins.assert_no_leftovers();
}

#[test]
fn the_quick_start_runs_the_bundled_examples() {
    let dir = workspace().join("plugins/examples");
    let tasks = [
        json!({"taskId": "q1", "taskName": "CREATE", "config": {"hostname": "demo-1", "provider": {"providertype": "example"}}}),
        action("q2", "INSTALL", "example", json!({})),
        action("q3", "START", "pyexample", json!({})),
    ];
    let input: String = tasks.iter().map(|t| format!("{t}\n")).collect();
    let (code, out, err) = cli(&["run", "--plugins-dir", dir.to_str().unwrap()], &input);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let results: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["status"] == 0), "{results:#?}");
}

#[test]
fn plugins_lists_what_is_registered_and_why_some_cannot_run() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "fine", json!({}));
    plugins.add("provider", "legacy", json!({"classname": "MyProvider"}));
    plugins.add("automator", "broken", json!({"executable": "sh", "instances": "many"}));
    let dir = plugins.path().to_str().unwrap().to_owned();

    let (code, out, _) = cli(&["plugins", "--plugins-dir", &dir], "");
    assert_eq!(code, Some(0));
    assert!(out.lines().any(|l| l.contains("fine") && l.contains("runnable")), "{out}");
    assert!(
        out.lines().any(|l| l.contains("legacy") && l.contains(" runnable ") && l.contains("Ruby class MyProvider")),
        "a seed-style manifest runs through the Ruby host: {out}"
    );
    assert!(out.contains("key \"instances\": expected a whole number from 1 to 256, found a string"), "{out}");

    let (code, out, _) = cli(&["plugins", "--plugins-dir", &dir, "--json"], "");
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<_> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["runnable"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, [("broken", false), ("fine", true), ("legacy", true)]);
    let problem = &v["problems"][0];
    assert_eq!(
        (problem["plugin"].as_str(), problem["key"].as_str(), problem["severity"].as_str()),
        (Some("broken"), Some("instances"), Some("error"))
    );
}

#[test]
fn a_bad_manifest_does_not_stop_the_others() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "good", json!({}));
    plugins.add("automator", "bad", json!({"executable": "no-such-plugin-binary"}));
    let run =
        plugins.run(&[action("t1", "INSTALL", "good", json!({})), action("t2", "INSTALL", "bad", json!({}))], &[]);
    assert_eq!(run.result("t1")["status"], 0);
    let why = run.result("t2")["stderr"].as_str().unwrap();
    assert!(why.contains("automator \"bad\" is registered but cannot run") && why.contains("bad.json"), "{why}");
    assert!(run.stderr.contains("bad.json: plugin \"bad\": key \"executable\""), "{}", run.stderr);
    plugins.assert_no_leftovers();
}

#[test]
fn bad_input_in_a_file_is_a_usage_error_that_names_the_line_and_runs_nothing() {
    let plugins = Plugins::new();
    let pidfile = plugins.file("pids");
    plugins.add_test_plugin("automator", "a1", json!({"env": {"TESTPLUGIN_PIDFILE": pidfile}}));
    let input =
        format!("{}\n{{\"taskId\": \"t2\", \"taskName\": \"UPGRADE\"}}\n", action("t1", "INSTALL", "a1", json!({})));
    let file = plugins.file("tasks.jsonl");
    std::fs::write(&file, &input).unwrap();
    // As an argument, and as stdin: a regular file either way.
    let run = plugins.run_input("", &[file.to_str().unwrap()]);
    let mut cmd = Command::new(provisioner());
    cmd.args(["run", "--plugins-dir", plugins.path().to_str().unwrap()]);
    cmd.stdin(std::fs::File::open(&file).unwrap());
    let on_stdin = cmd.output().unwrap();
    for (code, stdout, stderr, name) in [
        (run.code, run.results.len(), run.stderr.clone(), file.display().to_string()),
        (
            on_stdin.status.code(),
            on_stdin.stdout.len(),
            String::from_utf8_lossy(&on_stdin.stderr).into_owned(),
            "<stdin>".into(),
        ),
    ] {
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stdout, 0, "nothing ran: {stderr}");
        assert!(
            stderr.contains(&format!("{name}: line 2: task t2: \"taskName\" must be one of CREATE,"))
                && !stderr.contains("UPGRADE"),
            "{stderr}"
        );
    }
    assert!(!pidfile.exists(), "no plugin was started");
}

/// `run` behind a producer that keeps its pipe open: one result line per task as soon as
/// it ends; a bad line gets its own failed result line and the others run.
#[test]
fn run_streams_results_while_stdin_stays_open() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let mut child = spawn_run(&plugins);
    let mut stdin = child.stdin.take().unwrap();
    let lines = result_lines(child.stdout.take().unwrap());
    let next = || -> Value {
        let line = lines.recv_timeout(Duration::from_secs(60)).expect("a result line within 60 s");
        serde_json::from_str(&line).unwrap()
    };
    writeln!(stdin, "{}", action("s1", "INSTALL", "a1", json!({}))).unwrap();
    let first = next();
    assert_eq!((first["taskId"].as_str(), first["status"].as_i64()), (Some("s1"), Some(0)), "{first}");
    writeln!(stdin, "{{\"taskId\": \"s2\", \"taskName\": \"UPGRADE\", \"password\": \"hunter2\"}}").unwrap();
    let bad = next();
    assert_eq!((bad["taskId"].as_str(), bad["line"].as_u64(), bad["status"].as_i64()), (Some("s2"), Some(2), Some(1)));
    assert!(!bad.to_string().contains("hunter2") && !bad.to_string().contains("UPGRADE"), "{bad}");
    writeln!(stdin, "{}", action("s3", "START", "a1", json!({"status": 3}))).unwrap();
    let third = next();
    assert_eq!((third["taskId"].as_str(), third["status"].as_i64()), (Some("s3"), Some(3)), "{third}");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a task failed and a line was bad: {stderr}");
    assert!(stderr.contains("<stdin>: line 2: task s2: \"taskName\" must be one of CREATE,"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(lines.recv_timeout(Duration::from_secs(60)).is_err(), "no more result lines");
    plugins.assert_no_leftovers();
}

#[test]
fn run_stops_reading_when_its_stdout_is_closed() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let mut child = spawn_run(&plugins);
    let mut stdin = child.stdin.take().unwrap();
    // Nobody reads the results any more.
    drop(child.stdout.take());
    writeln!(stdin, "{}", action("s1", "INSTALL", "a1", json!({}))).unwrap();
    // stdin stays open: `run` ends because its results cannot be delivered.
    let stderr = child.stderr.take().unwrap();
    let pid = child.id() as i32;
    let status = loom_e2e::wait_or_kill(pid, Duration::from_secs(120), move || child.wait().unwrap())
        .expect("run ended within 120 s of its stdout closing, stdin still open");
    let stderr = std::io::read_to_string(stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stdout was closed: no more of <stdin> is read"), "{stderr}");
    drop(stdin);
    plugins.assert_no_leftovers();
}

/// `run` on `plugins`, with stdin, stdout and stderr piped.
fn spawn_run(plugins: &Plugins) -> std::process::Child {
    Command::new(provisioner())
        .args(["run", "--plugins-dir", plugins.path().to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The lines a reader yields, on a channel, read by a thread of their own.
fn result_lines(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn version_names_the_commit() {
    let (code, out, _) = cli(&["--version"], "");
    assert_eq!(code, Some(0));
    let commit = loom_e2e::checkout_commit();
    assert_eq!(out.trim(), format!("loom-provisioner {} (commit {commit})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let (code, _, err) = cli(&["run", "--plugins-dir", "/no/such/folder"], "{}");
    assert_eq!(code, Some(2));
    assert!(err.contains("/no/such/folder"), "{err}");
    let (code, _, err) = cli(&["run"], "");
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = cli(&["--log-level", "loud", "plugins", "--plugins-dir", "."], "");
    assert_eq!(code, Some(2));
    assert!(err.contains("\"loud\" is not a level"), "{err}");
    let (code, _, err) = cli(&["check", "/bin/true"], "");
    assert_eq!(code, Some(2));
    assert!(err.contains("--kind"), "{err}");
}

#[test]
fn exit_code_is_1_when_any_task_fails() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let run = plugins
        .run(&[action("ok", "INSTALL", "a1", json!({})), action("no", "INSTALL", "a1", json!({"status": 4}))], &[]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.result("no")["status"], 4);
    assert_eq!(run.result("ok")["status"], 0);
}
