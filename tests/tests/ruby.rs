//! Loom's seed-style Ruby plugins run unchanged, out of process, through loom-ruby-host.

use std::process::Command;
use std::time::Duration;

use loom_e2e::{Plugins, Serve, action, bin_dir, provisioner, run_with_input, task};
use serde_json::{Value, json};

fn cli(args: &[&str], path: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(provisioner());
    cmd.args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = run_with_input(cmd, "", Duration::from_secs(120));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn provider(name: &str, fields: Value) -> Value {
    json!({"name": name, "providertype": name, "provisioner": fields})
}

#[test]
fn the_guides_two_skeletons_pass_check_and_run_every_task_type() {
    let plugins = Plugins::new();
    let p = plugins.copy_fixture("ruby/providers/my_provider");
    let a = plugins.copy_fixture("ruby/automators/my_automator");
    for folder in [&p, &a] {
        let (code, out, err) = cli(&["check", folder.to_str().unwrap()], None);
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert!(out.contains(" 0 failed"), "{out}");
    }
    let mut tasks: Vec<Value> = ["CREATE", "CONFIRM", "DELETE"]
        .iter()
        .map(|t| task(&t.to_lowercase(), t, json!({"flavor": "small", "image": "img", "hostname": "h", "provider": provider("my_provider", json!({}))})))
        .collect();
    tasks.push(task("bootstrap", "BOOTSTRAP", json!({"automators": ["my_automator"], "ssh-auth": {"user": "root"}})));
    for t in ["INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"] {
        tasks.push(action(&t.to_lowercase(), t, "my_automator", json!({})));
    }
    let run = plugins.run(&tasks, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.results.len(), 10);
    assert_eq!(run.result("create")["result"]["foo"], "bar", "the guide's CREATE sets result foo = bar");
    let (_, out, _) = cli(&["plugins", "--plugins-dir", plugins.path().to_str().unwrap()], None);
    assert!(
        out.contains("Ruby class MyProvider, through loom-ruby-host") && out.contains("Ruby class MyAutomator"),
        "{out}"
    );
    plugins.assert_no_leftovers();
}

#[test]
fn a_realistic_provider_keeps_state_from_create_to_delete() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/providers/machines");
    // The daemon keeps one plugin process, so the provider's memory lasts across tasks.
    let serve = Serve::start(&plugins, "[log]\nlevel = \"debug\"");
    let fields = json!({"region": "lab-1", "root_password": "hunter2-ruby"});
    let config = |providerid: &str| {
        json!({"hostname": "db-1.local", "flavor": "large", "image": "debian-12", "providerid": providerid,
               "provider": provider("machines", fields.clone())})
    };
    let run = |id: &str, name: &str, providerid: &str| {
        serve.submit(&task(id, name, config(providerid)), true).1["result"].clone()
    };

    let created = run("c", "CREATE", "");
    assert_eq!(created["status"], 0, "{created}");
    let id = created["result"]["providerid"].as_str().unwrap().to_owned();
    assert!(id.starts_with("m-"));
    assert_eq!(
        created["result"]["ssh-auth"],
        json!({"user": "root", "password": "hunter2-ruby"}),
        "nested keys sprang into being"
    );
    let confirmed = run("f", "CONFIRM", &id);
    assert_eq!(
        (confirmed["status"].as_i64(), confirmed["result"]["ipaddress"].as_str()),
        (Some(0), Some("10.0.0.7")),
        "{confirmed}"
    );
    assert_eq!(confirmed["result"]["hostname"], "db-1.local", "CONFIRM saw what CREATE stored");
    let deleted = run("d", "DELETE", &id);
    assert_eq!(
        (deleted["status"].as_i64(), deleted["stdout"].as_str()),
        (Some(0), Some(format!("deleted {id}").as_str()))
    );
    let gone = run("f2", "CONFIRM", &id);
    assert_eq!(gone["status"], 1);
    assert_eq!(gone["stderr"], format!("unknown machine {id}"));
    assert_eq!(run("d2", "DELETE", "never-created")["status"], 0, "DELETE of an unknown id succeeds");

    let log = serve.log_text();
    let line = log.lines().find(|l| l.contains("created m-")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("INFO")
            && line.contains("plugin=machines")
            && line.contains("task_id=c")
            && line.contains("(large, debian-12) in lab-1"),
        "{line}"
    );
    assert!(
        log.lines().any(|l| l.contains("DEBUG") && l.contains(&format!("confirming {id}"))),
        "log.debug reaches the log"
    );
    assert!(!log.contains("hunter2-ruby"), "the password reached the log");
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn an_automator_runs_commands_and_returns_their_output() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/automators/commands");
    let cmd = |id: &str, name: &str, script: &str| {
        task(
            id,
            name,
            json!({"ssh-auth": {"user": "deploy"}, "service": {"name": "s", "action": {"type": "commands", "script": script, "data": "v1"}}}),
        )
    };
    let run = plugins.run(
        &[
            cmd("ok", "INSTALL", "echo installing $LOOM_DATA; echo warning >&2"),
            cmd("init", "INITIALIZE", "echo init runs init"),
            cmd("bad", "START", "echo half; exit 7"),
            task("boot", "BOOTSTRAP", json!({"automators": ["commands"], "ssh-auth": {"user": "deploy"}})),
        ],
        &[],
    );
    let ok = run.result("ok");
    assert_eq!(
        (ok["status"].as_i64(), ok["stdout"].as_str(), ok["stderr"].as_str()),
        (Some(0), Some("installing v1\n"), Some("warning\n"))
    );
    assert_eq!(run.result("init")["stdout"], "init runs init\n", "INITIALIZE calls init");
    let bad = run.result("bad");
    assert_eq!((bad["status"].as_i64(), bad["stdout"].as_str()), (Some(7), Some("half\n")));
    assert_eq!(run.result("boot")["result"]["bootstrapped_for"], "deploy", "bootstrap gets ssh-auth");
    // `puts` in plugin code goes to stderr, not into the protocol.
    assert!(run.stderr.contains("a stray puts from plugin code") && !run.stderr.contains("not JSON"), "{}", run.stderr);
    plugins.assert_no_leftovers();
}

#[test]
fn a_raised_exception_fails_the_task_with_message_and_backtrace() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/automators/raiser");
    let run = plugins.run(
        &[action("r", "INSTALL", "raiser", json!({})), task("b", "BOOTSTRAP", json!({"automators": ["raiser"]}))],
        &[],
    );
    let r = run.result("r");
    assert_eq!((r["status"].as_i64(), r["stdout"].as_str()), (Some(1), Some("got this far")), "{r}");
    let stderr = r["stderr"].as_str().unwrap();
    assert!(stderr.starts_with("ArgumentError: the recipe is missing\n"), "{stderr}");
    assert!(stderr.contains("raiser.rb:12:in `helper'") && stderr.contains("raiser.rb:8:in `install'"), "{stderr}");
    assert_eq!(run.result("b")["status"], 0, "the process lives on");
    plugins.assert_no_leftovers();
}

#[test]
fn exit_or_abort_mid_task_fails_that_task_and_the_plugin_restarts() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/automators/quitter");
    let boot = |id: &str| task(id, "BOOTSTRAP", json!({"automators": ["quitter"]}));
    let quit = |id: &str, how: &str| {
        task(
            id,
            "INSTALL",
            json!({"service": {"name": "s", "action": {"type": "quitter", "script": "x", "data": how}}}),
        )
    };
    let run = plugins.run(
        &[boot("b1"), quit("exit", "exit"), boot("b2"), quit("abort", "abort"), boot("b3")],
        &["--concurrency", "1"],
    );
    let exit = run.result("exit");
    assert_eq!(exit["status"], 1);
    assert!(
        exit["stderr"].as_str().unwrap().contains("automator \"quitter\", task exit (INSTALL)")
            && exit["stderr"].as_str().unwrap().contains("exited with code 3"),
        "{exit}"
    );
    let abort = run.result("abort");
    let why = abort["stderr"].as_str().unwrap();
    assert!(why.contains("exited with code 1") && why.contains("quitter: giving up (abort)"), "{why}");
    let pids: Vec<i64> = ["b1", "b2", "b3"].iter().map(|b| run.result(b)["result"]["pid"].as_i64().unwrap()).collect();
    assert!(pids[0] != pids[1] && pids[1] != pids[2], "restarted after each: {pids:?}");
    plugins.assert_no_leftovers();
}

#[test]
fn loading_problems_name_the_file_and_the_cause_and_the_others_keep_running() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/automators/commands");
    let quick = |folder: &std::path::Path| {
        let manifest = folder.join(format!("{}.json", folder.file_name().unwrap().to_str().unwrap()));
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        for e in doc.as_object_mut().unwrap().values_mut() {
            e["restart"] = json!({"maxRestarts": 0, "coolDownSecs": 60});
        }
        std::fs::write(manifest, doc.to_string()).unwrap();
    };
    let syntax = plugins.add_ruby(
        "automator",
        "broken",
        "Broken",
        "class Broken < Automator\n  def install(a, b, c\n    @result['status'] = 0\n  end\nend\n",
    );
    let missing = plugins.add_ruby("automator", "missing", "NotThere", "class SomethingElse < Automator\nend\n");
    let wrong = plugins.add_ruby(
        "provider",
        "wrong",
        "WrongKind",
        "class WrongKind < Automator\n  def bootstrap(a)\n    @result['status'] = 0\n  end\nend\n",
    );
    for f in [&syntax, &missing, &wrong] {
        quick(f);
    }
    let run = plugins.run(
        &[
            action("s", "INSTALL", "broken", json!({})),
            action("m", "INSTALL", "missing", json!({})),
            task("w", "CREATE", json!({"provider": provider("wrong", json!({}))})),
            task(
                "fine",
                "INSTALL",
                json!({"service": {"name": "s", "action": {"type": "commands", "script": "echo still here"}}}),
            ),
        ],
        &[],
    );
    let why = |id: &str| run.result(id)["stderr"].as_str().unwrap().to_owned();
    assert!(
        why("s").contains("cannot load the Ruby plugin: broken.rb: syntax error") && why("s").contains("broken.rb:"),
        "{}",
        why("s")
    );
    assert!(why("m").contains("class NotThere is not defined by any of missing.rb"), "{}", why("m"));
    assert!(why("w").contains("class WrongKind (wrong.rb:1) extends Automator, but the plugin is registered as a provider: it must extend Provider"), "{}", why("w"));
    assert_eq!(run.result("fine")["stdout"], "still here\n", "another Ruby plugin is unaffected");
    plugins.assert_no_leftovers();
}

#[test]
fn without_ruby_a_ruby_plugin_is_listed_with_the_reason_and_the_others_run() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/providers/my_provider");
    plugins.add("automator", "native", json!({"executable": bin_dir().join("example-automator")}));
    // A PATH without ruby.
    let (code, out, _) = cli(&["plugins", "--plugins-dir", plugins.path().to_str().unwrap()], Some("/nonexistent"));
    assert_eq!(code, Some(0));
    let line = out.lines().find(|l| l.contains("my_provider")).unwrap();
    assert!(
        line.contains("not runnable") && line.contains("`ruby` is not on PATH; install Ruby (apt-get install ruby)"),
        "{out}"
    );
    assert!(out.contains("my_provider.json: plugin \"my_provider\""), "the problem names the file: {out}");
    assert!(out.lines().any(|l| l.contains("native") && l.contains(" runnable ")), "{out}");
}

#[test]
fn a_timed_out_ruby_task_is_cancelled_without_killing_the_plugin() {
    let plugins = Plugins::new();
    let folder = plugins.add_ruby(
        "automator",
        "sleeper",
        "Sleeper",
        "class Sleeper < Automator\n  def bootstrap(a)\n    @result['result']['pid'] = Process.pid\n    @result['status'] = 0\n  end\n\n  def install(a, s, d)\n    sleep 300\n    @result['status'] = 0\n  end\nend\n",
    );
    let manifest = folder.join("sleeper.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    doc["sleeper"]["timeouts"] = json!({"INSTALL": 1});
    std::fs::write(&manifest, doc.to_string()).unwrap();
    let boot = |id: &str| task(id, "BOOTSTRAP", json!({"automators": ["sleeper"]}));
    let run = plugins
        .run(&[boot("b1"), action("slow", "INSTALL", "sleeper", json!({})), boot("b2")], &["--concurrency", "1"]);
    let why = run.result("slow")["stderr"].as_str().unwrap().to_owned();
    assert!(
        why.contains("cancelled by the supervisor")
            && why.contains("timed out after 1 s; cancelled: the plugin stopped it when asked"),
        "{why}"
    );
    assert_eq!(run.result("b1")["result"]["pid"], run.result("b2")["result"]["pid"], "the same process");
    plugins.assert_no_leftovers();
}

#[test]
fn the_hosts_own_ruby_tests_pass() {
    let out = Command::new("ruby")
        .arg(loom_e2e::workspace().join("plugins/ruby-host/test/host_test.rb"))
        .output()
        .expect("ruby on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0 failures, 0 errors"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
