//! Misbehaving plugins never take the supervisor down: each way a plugin can fail
//! becomes a failed task with a clear reason, and the plugin is restarted.

use std::time::Duration;

use loom_e2e::{Plugins, action, alive, wait_until};
use serde_json::{Value, json};

fn stderr_of(r: &Value) -> &str {
    r["stderr"].as_str().unwrap_or_default()
}

fn pid_of(r: &Value) -> i64 {
    r["result"]["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {r}"))
}

#[test]
fn a_crash_mid_task_fails_that_task_and_the_next_task_runs_on_a_new_process() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "crashy", json!({}));
    let run = plugins.run(
        &[
            action("before", "INSTALL", "crashy", json!({})),
            action("boom", "CONFIGURE", "crashy", json!({"action": "crash", "code": 3})),
            action("after", "START", "crashy", json!({})),
        ],
        &["--concurrency", "1"],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let boom = run.result("boom");
    assert_eq!(boom["status"], 1);
    let why = stderr_of(boom);
    for part in ["automator \"crashy\"", "task boom (CONFIGURE)", "exited with code 3", "about to crash: boom"] {
        assert!(why.contains(part), "{part:?} missing from {why}");
    }
    assert_eq!(run.result("after")["status"], 0, "{}", run.stderr);
    assert_ne!(pid_of(run.result("before")), pid_of(run.result("after")), "restarted");
    plugins.assert_no_leftovers();
}

#[test]
fn a_crash_fails_every_task_in_flight_on_that_process_at_once() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "crashy", json!({"maxConcurrency": 8, "timeouts": {"START": 20}}));
    let sleeper = |id: &str| action(id, "START", "crashy", json!({"action": "hang"}));
    let run = plugins.run(
        &[sleeper("s1"), sleeper("s2"), action("boom", "INSTALL", "crashy", json!({"action": "crash", "code": 9}))],
        &["--concurrency", "3"],
    );
    for id in ["s1", "s2", "boom"] {
        let r = run.result(id);
        assert_eq!(r["status"], 1, "{r}");
        let why = stderr_of(r);
        assert!(why.contains(&format!("task {id} (")) && why.contains("exited with code 9"), "{why}");
        assert!(why.contains("about to crash: boom"), "the last stderr lines: {why}");
    }
    assert!(run.elapsed < Duration::from_secs(30), "failed at once, not by timeout: {:?}", run.elapsed);
    plugins.assert_no_leftovers();
}

#[test]
fn a_hung_task_times_out_then_the_plugin_is_killed_and_restarted() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "hangs", json!({"timeouts": {"INSTALL": 1}, "cancelGraceSecs": 0.3}));
    let run = plugins.run(
        &[
            action("before", "START", "hangs", json!({})),
            action("stuck", "INSTALL", "hangs", json!({"action": "hang"})),
            action("after", "START", "hangs", json!({})),
        ],
        &["--concurrency", "1"],
    );
    let stuck = run.result("stuck");
    assert_eq!(stuck["status"], 1);
    let why = stderr_of(stuck);
    assert!(why.contains("task stuck (INSTALL)") && why.contains("timed out after 1 s"), "{why}");
    assert!(why.contains("killed and restarted"), "{why}");
    assert_eq!(run.result("after")["status"], 0, "{}", run.stderr);
    assert_ne!(pid_of(run.result("before")), pid_of(run.result("after")));
    plugins.assert_no_leftovers();
}

#[test]
fn a_task_that_stops_when_cancelled_fails_without_a_restart() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "polite", json!({"timeouts": {"INSTALL": 0.5}, "cancelGraceSecs": 5}));
    let run = plugins.run(
        &[
            action("before", "START", "polite", json!({})),
            action("stuck", "INSTALL", "polite", json!({"action": "hang", "honorCancel": true})),
            action("after", "START", "polite", json!({})),
        ],
        &["--concurrency", "1"],
    );
    let stuck = run.result("stuck");
    assert_eq!(stuck["status"], 2, "the plugin's own status is kept: {stuck}");
    let why = stderr_of(stuck);
    assert!(
        why.contains("cancelled as asked") && why.contains("timed out after 0.5 s; it stopped when cancelled"),
        "{why}"
    );
    assert_eq!(pid_of(run.result("before")), pid_of(run.result("after")), "no restart");
    plugins.assert_no_leftovers();
}

#[test]
fn junk_on_stdout_is_logged_and_skipped_and_the_plugin_keeps_running() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "noisy", json!({}));
    let run = plugins.run(
        &[action("junk", "INSTALL", "noisy", json!({"action": "junk"})), action("after", "START", "noisy", json!({}))],
        &["--concurrency", "1"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.result("junk")["status"], 0);
    assert_eq!(pid_of(run.result("junk")), pid_of(run.result("after")), "not restarted");
    let warning = run.stderr.lines().find(|l| l.contains("WARN") && l.contains("not JSON")).expect(&run.stderr);
    assert!(warning.contains("noisy") && warning.contains("this is not json, just a stray debug print"), "{warning}");
    plugins.assert_no_leftovers();
}

#[test]
fn an_over_long_line_is_a_protocol_violation_that_restarts_the_plugin() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "verbose", json!({"maxLineBytes": 4096}));
    let run = plugins.run(
        &[
            action("before", "START", "verbose", json!({})),
            action("long", "INSTALL", "verbose", json!({"action": "longline", "bytes": 10000})),
            action("after", "START", "verbose", json!({})),
        ],
        &["--concurrency", "1"],
    );
    let long = run.result("long");
    assert_eq!(long["status"], 1);
    assert!(stderr_of(long).contains("protocol violation: wrote a line longer than 4096 bytes"), "{long}");
    assert_eq!(run.result("after")["status"], 0, "{}", run.stderr);
    assert_ne!(pid_of(run.result("before")), pid_of(run.result("after")));
    plugins.assert_no_leftovers();
}

#[test]
fn a_plugin_that_never_answers_the_handshake_fails_its_tasks_with_the_reason() {
    let plugins = Plugins::new();
    plugins.add_test_plugin(
        "automator",
        "mute",
        json!({"handshakeTimeoutSecs": 0.5, "settings": {"handshake": "never"},
               "restart": {"maxRestarts": 1, "backoffInitialMs": 10, "coolDownSecs": 60}}),
    );
    let run = plugins.run(&[action("t1", "INSTALL", "mute", json!({}))], &[]);
    assert_eq!(run.code, Some(1));
    let why = stderr_of(run.result("t1"));
    assert!(why.contains("automator \"mute\"") && why.contains("task t1 (INSTALL)"), "{why}");
    assert!(why.contains("did not answer the handshake within 0.5 s"), "{why}");
    assert!(run.elapsed < Duration::from_secs(20), "did not wait on: {:?}", run.elapsed);
    plugins.assert_no_leftovers();
}

#[test]
fn a_handshake_error_or_exit_is_reported_with_the_plugins_words() {
    let plugins = Plugins::new();
    let quick = json!({"restart": {"maxRestarts": 0, "coolDownSecs": 60}});
    let mut refuses = quick.clone();
    refuses["settings"] = json!({"handshake": "error"});
    let mut exits = quick;
    exits["settings"] = json!({"handshake": "exit"});
    plugins.add_test_plugin("automator", "refuses", refuses);
    plugins.add_test_plugin("automator", "exits", exits);
    let run =
        plugins.run(&[action("r", "INSTALL", "refuses", json!({})), action("e", "INSTALL", "exits", json!({}))], &[]);
    let r = stderr_of(run.result("r"));
    assert!(r.contains("refused the handshake: setup failed: bad settings"), "{r}");
    let e = stderr_of(run.result("e"));
    assert!(e.contains("exited with code 3 during the handshake") && e.contains("exiting during the handshake"), "{e}");
    plugins.assert_no_leftovers();
}

#[test]
fn a_plugin_choosing_an_unknown_protocol_version_is_refused() {
    let plugins = Plugins::new();
    plugins.add_test_plugin(
        "automator",
        "future",
        json!({"settings": {"handshake": "version2"}, "restart": {"maxRestarts": 0}}),
    );
    let run = plugins.run(&[action("t", "INSTALL", "future", json!({}))], &[]);
    let why = stderr_of(run.result("t"));
    assert!(why.contains("chose protocol version 2, which the supervisor does not speak (it offered [1])"), "{why}");
    plugins.assert_no_leftovers();
}

#[test]
fn plugins_see_only_the_allowlisted_environment_plus_their_manifests() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "envy", json!({"env": {"FROM_MANIFEST": "yes"}}));
    let input = format!("{}\n", action("t", "INSTALL", "envy", json!({"action": "env"})));
    let run = plugins.run_env(&input, &[], &[("AWS_SECRET_ACCESS_KEY", "leak-me"), ("LOOM_TEST_UNLISTED", "1")]);
    let env = &run.result("t")["result"]["env"];
    assert_eq!(env["LOOM_PLUGIN_PROTOCOL"], "1");
    assert_eq!(env["LOOM_PLUGIN_NAME"], "envy");
    assert_eq!(env["FROM_MANIFEST"], "yes");
    assert!(env["HOME"].is_string() && env["PATH"].is_string(), "{env}");
    assert!(env.get("AWS_SECRET_ACCESS_KEY").is_none() && env.get("LOOM_TEST_UNLISTED").is_none(), "{env}");
    plugins.assert_no_leftovers();
}

#[test]
fn a_plugin_that_ignores_sigterm_is_killed_at_shutdown() {
    let plugins = Plugins::new();
    plugins.add_test_plugin(
        "automator",
        "stubborn",
        json!({"shutdownGraceSecs": 0.3, "settings": {"ignoreSigterm": true, "ignoreEof": true}}),
    );
    let run = plugins.run(&[action("t1", "INSTALL", "stubborn", json!({}))], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("sending SIGTERM") && run.stderr.contains("sending SIGKILL"), "{}", run.stderr);
    plugins.assert_no_leftovers();
}

#[test]
fn a_grandchild_holding_the_pipes_makes_nobody_wait_and_is_cleaned_up() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "parent", json!({"settings": {"grandchild": true}}));
    let run = plugins.run(
        &[
            action("t1", "INSTALL", "parent", json!({})),
            action("t2", "CONFIGURE", "parent", json!({"action": "crash"})),
            action("t3", "START", "parent", json!({})),
        ],
        &["--concurrency", "1"],
    );
    assert_eq!(run.result("t1")["status"], 0);
    assert!(stderr_of(run.result("t2")).contains("exited with code 3"));
    assert_eq!(run.result("t3")["status"], 0);
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    plugins.assert_no_leftovers();
}

#[test]
fn a_crash_loop_reaches_the_restart_limit_and_tasks_then_fail_fast() {
    let plugins = Plugins::new();
    let pidfile = plugins.file("pids");
    plugins.add_test_plugin(
        "automator",
        "loops",
        json!({
            "env": {"TESTPLUGIN_EXIT_AT_START": "1", "TESTPLUGIN_PIDFILE": pidfile},
            "restart": {"maxRestarts": 2, "withinSecs": 60, "backoffInitialMs": 10, "backoffMaxMs": 20, "coolDownSecs": 60}
        }),
    );
    let tasks: Vec<_> = (0..5).map(|i| action(&format!("t{i}"), "INSTALL", "loops", json!({}))).collect();
    let run = plugins.run(&tasks, &["--concurrency", "1"]);
    assert_eq!(run.code, Some(1));
    for i in 0..5 {
        assert_eq!(run.result(&format!("t{i}"))["status"], 1);
    }
    let first = stderr_of(run.result("t0"));
    // The first task waited through the failed starts and failed with the plugin.
    assert!(first.contains("marked failed after 3 crashes") && first.contains("exiting at start as asked"), "{first}");
    let last = stderr_of(run.result("t4"));
    assert!(last.contains("marked failed after 3 crashes within 60 s (maxRestarts 2)"), "{last}");
    assert!(last.contains("tried again in"), "{last}");
    let spawns = std::fs::read_to_string(&pidfile).unwrap().lines().count();
    assert_eq!(spawns, 3, "one start and maxRestarts restarts, then no more");
    plugins.assert_no_leftovers();
}

#[test]
fn plugins_die_with_a_killed_supervisor() {
    let plugins = Plugins::new();
    let pidfile = plugins.file("pids");
    // A plugin that would outlive stdin EOF and SIGTERM: only the parent-death signal
    // (SIGKILL) can end it when the supervisor dies.
    plugins.add_test_plugin(
        "automator",
        "orphan",
        json!({"env": {"TESTPLUGIN_PIDFILE": pidfile}, "settings": {"ignoreEof": true, "ignoreSigterm": true}}),
    );
    let mut child = plugins.spawn_run(&[action("t1", "INSTALL", "orphan", json!({"action": "hang"}))]);
    assert!(wait_until(Duration::from_secs(20), || pidfile.exists()), "the plugin never started");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(alive(pid));
    child.kill().unwrap(); // SIGKILL: no clean-up code runs in the supervisor
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)), "plugin {pid} outlived its supervisor");
    plugins.assert_no_leftovers();
}

#[test]
fn sigterm_during_run_reports_unfinished_tasks_and_stops_the_plugins() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "slow", json!({"cancelGraceSecs": 0.2}));
    let mut child = plugins.spawn_run(&[
        action("quick", "START", "slow", json!({})),
        action("stuck", "INSTALL", "slow", json!({"action": "hang"})),
    ]);
    // Once the quick task is answered, the plugin is up and the stuck task is in flight.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("\"quick\""), "{first}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let stuck: Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(stuck["taskId"], "stuck");
    assert_eq!(stuck["status"], 1);
    assert!(stuck["stderr"].as_str().unwrap().contains("interrupted by SIGTERM"), "{stuck}");
    plugins.assert_no_leftovers();
}
