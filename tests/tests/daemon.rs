//! `loom-provisioner serve` as a real process: the HTTP API, the journal's promise across
//! `kill -9`, reload, drain, systemd notifications, auth and bad bodies, and load.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use loom_e2e::{Plugins, Serve, action, provisioner, task, wait_until};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn runlog(plugins: &Plugins) -> std::path::PathBuf {
    plugins.file("runlog")
}

/// Task id -> how many times a plugin started it.
fn runs(plugins: &Plugins) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in std::fs::read_to_string(runlog(plugins)).unwrap_or_default().lines() {
        *m.entry(line.split_whitespace().next().unwrap_or_default().to_owned()).or_default() += 1;
    }
    m
}

fn test_plugin(plugins: &Plugins, kind: &str, name: &str, extra: Value) {
    let mut m = json!({"env": {"TESTPLUGIN_RUNLOG": runlog(plugins)}});
    loom_e2e::merge(&mut m, extra);
    plugins.add_test_plugin(kind, name, m);
}

fn pid_of(serve: &Serve, name: &str) -> Option<u64> {
    let (_, v) = serve.request("GET", "/v1/plugins", None);
    v["plugins"].as_array()?.iter().find(|p| p["name"] == name)?["instances"][0]["pid"].as_u64()
}

#[test]
fn tasks_over_http_are_journaled_answered_and_never_run_twice() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({}));
    let serve = Serve::start(&plugins, "");

    let t1 = action("t1", "INSTALL", "a1", json!({"action": "sleep", "ms": 200}));
    let (code, v) = serve.submit(&t1, false);
    assert_eq!((code, v.clone()), (202, json!({"taskId": "t1", "state": "queued"})));
    // The same id again, waiting: the first run's result, and no second run.
    let (code, v) = serve.submit(&t1, true);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "done");
    assert_eq!(v["result"]["status"], 0);
    assert_eq!(v["result"]["result"]["handledBy"], "a1");
    let (code, v) = serve.request("GET", "/v1/tasks/t1", None);
    assert_eq!((code, v["state"].as_str(), v["attempts"].as_u64()), (200, Some("done"), Some(1)));
    assert!(v["submittedAt"].as_str().unwrap().ends_with('Z') && v["finishedAt"].is_string());

    let (code, v) = serve.submit(&action("t2", "START", "a1", json!({"status": 4})), true);
    assert_eq!((code, v["result"]["status"].as_i64()), (200, Some(4)));
    assert_eq!(runs(&plugins), BTreeMap::from([("t1".to_owned(), 1), ("t2".to_owned(), 1)]));
    assert_eq!(serve.request("GET", "/v1/tasks/nope", None).0, 404);

    let metrics = serve.metrics();
    for line in [
        "loom_tasks_total{plugin=\"a1\",task=\"INSTALL\",outcome=\"success\"} 1",
        "loom_tasks_total{plugin=\"a1\",task=\"START\",outcome=\"failure\"} 1",
        "loom_task_duration_seconds_count{plugin=\"a1\",task=\"INSTALL\"} 1",
        "loom_plugin_instances_ready{plugin=\"a1\",kind=\"automator\"} 1",
        "loom_journal_tasks{state=\"done\"} 2",
        "loom_clusters{state=\"active\"} 0",
        &format!(
            "loom_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            loom_e2e::checkout_commit()
        ),
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    for name in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds", "process_max_fds"] {
        assert!(loom_e2e::metric_sum(&metrics, name) > 0.0, "{name} missing:\n{metrics}");
    }

    // Plugins, and an operator's restart.
    let before = pid_of(&serve, "a1").unwrap();
    let (code, v) = serve.request("POST", "/v1/plugins/a1/restart", None);
    assert_eq!((code, v), (202, json!({"restarting": ["automator a1"]})));
    assert!(wait_until(Duration::from_secs(20), || pid_of(&serve, "a1").is_some_and(|p| p != before)));
    let (_, v) = serve.request("GET", "/v1/plugins", None);
    assert_eq!(v["plugins"][0]["instances"][0]["phase"], "ready");
    assert_eq!(v["plugins"][0]["instances"][0]["restarts"], 0, "an operator's restart is not a crash");
    assert_eq!(serve.request("POST", "/v1/plugins/nope/restart", None).0, 404);
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn after_kill_9_every_result_is_kept_and_interrupted_tasks_are_settled() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({"maxConcurrency": 1}));
    test_plugin(&plugins, "provider", "p1", json!({"settings": {"idempotentTasks": ["CONFIRM"]}}));
    let mut serve = Serve::start(&plugins, "");
    let marker = plugins.file("confirm-marker");

    let (code, _) = serve.submit(&action("finished", "START", "a1", json!({})), true);
    assert_eq!(code, 200);
    // Running at the crash: a non-idempotent INSTALL, and a CONFIRM its plugin declares
    // idempotent. Queued behind the INSTALL (a1 takes one task at a time): a REMOVE.
    serve.submit(&action("running", "INSTALL", "a1", json!({"action": "hang"})), false);
    serve.submit(
        &task(
            "confirm",
            "CONFIRM",
            json!({"provider": {"providertype": "p1"}, "test": {"action": "hang-once", "marker": marker}}),
        ),
        false,
    );
    serve.submit(&action("queued", "REMOVE", "a1", json!({})), false);
    assert!(wait_until(Duration::from_secs(20), || {
        let r = runs(&plugins);
        r.contains_key("running") && r.contains_key("confirm")
    }));
    assert_eq!(serve.request("GET", "/v1/tasks/queued", None).1["state"], "queued", "waiting for a1, not yet sent");
    let plugin_pids: Vec<u64> = ["a1", "p1"].iter().filter_map(|n| pid_of(&serve, n)).collect();

    serve.kill9();
    assert!(
        wait_until(Duration::from_secs(10), || plugin_pids.iter().all(|p| !loom_e2e::alive(*p as i32))),
        "the plugins died with their supervisor"
    );
    serve.spawn();

    let get = |id: &str| serve.request("GET", &format!("/v1/tasks/{id}"), None).1;
    assert_eq!(get("finished")["result"]["status"], 0, "a finished result survives");
    let running = get("running");
    assert_eq!(running["state"], "done");
    assert_eq!(running["result"]["status"], 1);
    let why = running["result"]["stderr"].as_str().unwrap();
    assert!(why.contains("supervisor restarted while the task ran") && why.contains("not run again"), "{why}");
    // The idempotent CONFIRM and the queued REMOVE run (again) after the restart.
    let (_, confirm) = serve.submit(&task("confirm", "CONFIRM", json!({})), true);
    assert_eq!((confirm["result"]["status"].as_i64(), confirm["attempts"].as_u64()), (Some(0), Some(2)), "{confirm}");
    let (_, queued) = serve.submit(&action("queued", "REMOVE", "a1", json!({})), true);
    assert_eq!((queued["result"]["status"].as_i64(), queued["attempts"].as_u64()), (Some(0), Some(1)), "{queued}");
    let r = runs(&plugins);
    assert_eq!((r["running"], r["confirm"], r["queued"]), (1, 2, 1), "{r:?}");
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn sighup_adds_removes_and_replaces_plugins_without_dropping_a_task() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "keep", json!({}));
    test_plugin(&plugins, "automator", "change", json!({}));
    test_plugin(&plugins, "automator", "remove", json!({}));
    let serve = Serve::start(&plugins, "");
    let (changed_pid, removed_pid) = (pid_of(&serve, "change").unwrap(), pid_of(&serve, "remove").unwrap());
    let kept_pid = pid_of(&serve, "keep").unwrap();

    // In flight across the reload, on the plugins that go away.
    serve.submit(&action("on-removed", "INSTALL", "remove", json!({"action": "sleep", "ms": 1500})), false);
    serve.submit(&action("on-changed", "INSTALL", "change", json!({"action": "sleep", "ms": 1500})), false);
    assert!(wait_until(Duration::from_secs(20), || runs(&plugins).len() == 2));

    std::fs::remove_dir_all(plugins.path().join("automators/remove")).unwrap();
    test_plugin(&plugins, "automator", "add", json!({}));
    test_plugin(&plugins, "automator", "change", json!({"settings": {"version": 2}}));
    serve.signal(Signal::SIGHUP);
    let reloading = serve.wait_notification(|m| m.contains("RELOADING=1"), Duration::from_secs(10));
    assert!(reloading.is_some_and(|m| m.contains("MONOTONIC_USEC=")));
    assert!(serve.wait_notification(|m| m.contains("READY=1"), Duration::from_secs(30)).is_some());

    for id in ["on-removed", "on-changed"] {
        let (_, v) = serve.submit(&action(id, "INSTALL", "x", json!({})), true);
        assert_eq!(v["result"]["status"], 0, "{id} finished on the plugin it started on: {v}");
    }
    let (code, v) = serve.submit(&action("to-removed", "INSTALL", "remove", json!({})), true);
    if loom_e2e::on_postgres() {
        // A fleet keeps it queued until a daemon that runs the plugin joins.
        assert_eq!((code, v["state"].as_str()), (202, Some("queued")), "{v}");
        assert_eq!(v["waiting"], "no live daemon runs automator:remove", "{v}");
    } else {
        assert!(v["result"]["stderr"].as_str().unwrap().contains("no automator named \"remove\""), "{v}");
    }
    let (_, v) = serve.submit(&action("to-added", "INSTALL", "add", json!({})), true);
    assert_eq!(v["result"]["status"], 0, "{v}");
    let (_, v) = serve.submit(&action("to-changed", "INSTALL", "change", json!({})), true);
    assert_ne!(v["result"]["result"]["pid"], json!(changed_pid), "a changed plugin is replaced");
    assert_eq!(pid_of(&serve, "keep"), Some(kept_pid), "an unchanged plugin keeps running");
    assert!(wait_until(Duration::from_secs(20), || !loom_e2e::alive(removed_pid as i32)
        && !loom_e2e::alive(changed_pid as i32)));
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn sigterm_drains_tasks_in_flight_then_stops() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({}));
    let mut serve = Serve::start(&plugins, "drain_grace_secs = 30");
    serve.submit(&action("slow", "INSTALL", "a1", json!({"action": "sleep", "ms": 1500})), false);
    assert!(wait_until(Duration::from_secs(20), || runs(&plugins).contains_key("slow")));
    serve.signal(Signal::SIGTERM);
    assert!(serve.wait_notification(|m| m.contains("STOPPING=1"), Duration::from_secs(10)).is_some());
    let (code, v) = serve.submit(&action("late", "INSTALL", "a1", json!({})), false);
    assert_eq!(code, 503, "{v}");
    assert_eq!(serve.request("GET", "/healthz", None).0, 503);
    assert_eq!(serve.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(serve.log_text().contains("stopped"));
    serve.spawn();
    let (_, v) = serve.request("GET", "/v1/tasks/slow", None);
    assert_eq!(
        (v["state"].as_str(), v["result"]["status"].as_i64()),
        (Some("done"), Some(0)),
        "it finished during the drain: {v}"
    );
    assert_eq!(serve.request("GET", "/v1/tasks/late", None).0, 404, "refused, so never accepted");
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn a_task_still_queued_when_the_grace_runs_out_runs_after_the_next_start() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "one", json!({"maxConcurrency": 1, "timeouts": {"INSTALL": 60}}));
    let mut serve = Serve::start(&plugins, "drain_grace_secs = 0.5");
    serve.submit(&action("busy", "INSTALL", "one", json!({"action": "hang"})), false);
    serve.submit(&action("waiting", "START", "one", json!({})), false);
    assert!(wait_until(Duration::from_secs(20), || runs(&plugins).contains_key("busy")));
    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait_exit(Duration::from_secs(60)), Some(0));
    serve.spawn();
    let (_, busy) = serve.request("GET", "/v1/tasks/busy", None);
    assert_eq!(busy["result"]["status"], 1, "it was running when the plugins stopped: {busy}");
    let (_, waiting) = serve.submit(&action("waiting", "START", "one", json!({})), true);
    assert_eq!((waiting["result"]["status"].as_i64(), waiting["attempts"].as_u64()), (Some(0), Some(1)), "{waiting}");
    assert_eq!(runs(&plugins).get("waiting"), Some(&1));
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn ready_follows_every_handshake_and_the_watchdog_is_fed() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "slow1", json!({"settings": {"handshakeDelayMs": 700}}));
    test_plugin(&plugins, "provider", "slow2", json!({"instances": 2, "settings": {"handshakeDelayMs": 500}}));
    let serve = Serve::start_with(&plugins, "", &[("WATCHDOG_USEC", "200000")]);
    // Serve::start returned on READY=1: by then every instance had answered its handshake.
    let (_, v) = serve.request("GET", "/v1/plugins", None);
    let phases: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["instances"].as_array().unwrap())
        .map(|i| i["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["ready", "ready", "ready"]);
    assert!(serve.ready_message.contains("STATUS=2 plugins ready, 0 starting, 0 failed"), "{}", serve.ready_message);
    assert!(
        serve.wait_notification(|m| m == "WATCHDOG=1", Duration::from_secs(5)).is_some(),
        "watchdog pings every 100 ms"
    );
    drop(serve);
    plugins.assert_no_leftovers();
}

/// Tasks (four at a time, 1.5 s each) and `/healthz` over `span`: so that the count of
/// tasks in flight, and with it the daemon's status line (sent every 5 s when it changed),
/// keeps changing. Each task must succeed and `/healthz` answer 200.
fn keep_busy(serve: &Serve, plugin: &str, span: Duration) {
    let began = std::time::Instant::now();
    let mut round = 0;
    while began.elapsed() < span {
        let tasks: Vec<Value> = (0..4)
            .map(|i| action(&format!("busy-{round}-{i}"), "INSTALL", plugin, json!({"action": "sleep", "ms": 1500})))
            .collect();
        for t in &tasks {
            let (code, v) = serve.submit(t, false);
            assert_eq!(code, 202, "{v}");
        }
        assert_eq!(serve.request("GET", "/healthz", None).0, 200);
        for t in &tasks {
            let (_, v) = serve.submit(t, true);
            assert_eq!(v["result"]["status"], 0, "{v}");
        }
        round += 1;
    }
}

#[test]
fn a_notify_socket_nobody_reads_stops_nothing_and_loses_only_status_lines() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({"maxConcurrency": 4}));
    // Its queue full from the start; a watchdog ping every second on top.
    let serve = Serve::start_with_unread_notify(&plugins, "", &[("WATCHDOG_USEC", "2000000")]);
    // Over two status intervals and more, every notification finding the socket full.
    keep_busy(&serve, "a1", Duration::from_secs(12));
    // A reload still happens: the daemon's main task does not wait on the socket (it used
    // to wait there from READY=1 on, forever).
    test_plugin(&plugins, "automator", "added", json!({}));
    serve.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(60), || pid_of(&serve, "added").is_some()),
        "the reload did not happen; log:\n{}",
        serve.log_text()
    );
    // Read again: what is not a status line arrives, in order.
    serve.read_notifications();
    let mut ours = Vec::new();
    while ours.len() < 3 {
        let m = serve.next_notification(Duration::from_secs(60)).expect("READY, RELOADING, READY within a minute");
        let kind = m.lines().next().unwrap_or_default().to_owned();
        if !kind.starts_with("TEST-FILLER=") && kind != "WATCHDOG=1" && !kind.starts_with("STATUS=") {
            ours.push(kind);
        }
    }
    assert_eq!(ours, ["READY=1", "RELOADING=1", "READY=1"]);
    assert!(serve.wait_notification(|m| m == "WATCHDOG=1", Duration::from_secs(60)).is_some(), "the watchdog is fed");
    let log = serve.log_text();
    assert_eq!(log.matches("status lines are dropped while it cannot take them").count(), 1, "{log}");
    assert!(!log.contains("could not notify systemd"), "{log}");
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn the_daemon_stops_though_its_notify_socket_is_never_read() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({}));
    let mut serve = Serve::start_with_unread_notify(&plugins, "", &[]);
    let (_, v) = serve.submit(&action("t1", "INSTALL", "a1", json!({})), true);
    assert_eq!(v["result"]["status"], 0, "{v}");
    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait_exit(Duration::from_secs(60)), Some(0), "log:\n{}", serve.log_text());
    let log = serve.log_text();
    assert!(log.contains("exiting without having notified systemd at"), "{log}");
    assert!(log.contains("of READY=1, STOPPING=1: it did not take them"), "{log}");
    plugins.assert_no_leftovers();
}

#[test]
fn tokens_sizes_and_bodies_are_checked() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({}));
    let token = plugins.file("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    loom_e2e::chmod(&token, 0o600);
    let serve =
        Serve::start(&plugins, &format!("token_file = {:?}\nmax_body_bytes = 1024", token.display().to_string()));

    assert_eq!(serve.request_with("GET", "/v1/plugins", None, None).0, 401);
    assert_eq!(serve.request_with("GET", "/v1/plugins", None, Some("wrong-token-0123456789")).0, 401);
    assert_eq!(serve.request_with("POST", "/v1/tasks", Some("{}"), None).0, 401);
    assert_eq!(serve.request_with("GET", "/healthz", None, None).0, 200, "health needs no token");
    assert_eq!(serve.request("GET", "/v1/plugins", None).0, 200);

    let big = action("big", "INSTALL", "a1", json!({"padding": "x".repeat(2000)}));
    let (code, v) = serve.submit(&big, false);
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("limit of 1024 bytes"));
    let (code, v) = serve.request("POST", "/v1/tasks", Some("{\"taskId\": \"x\", "));
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("the body is JSON that ends too soon at line 1 column 15"), "{v}");
    let (code, v) = serve.request("POST", "/v1/tasks", Some("{\"taskName\": \"INSTALL\"}"));
    assert_eq!((code, v["error"].as_str()), (400, Some("invalid task: \"taskId\" is missing")));
    assert_eq!(serve.request("GET", "/v2/nothing", None).0, 404);
    assert_eq!(serve.request("POST", "/healthz", Some("")).0, 405);
    assert_eq!(serve.request("GET", "/v1/tasks/big", None).0, 404, "a refused body is not accepted");
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn a_thousand_concurrent_submissions_are_each_answered_once() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({"instances": 2, "maxConcurrency": 16}));
    let serve = std::sync::Arc::new(Serve::start(&plugins, ""));
    let threads: Vec<_> = (0..40)
        .map(|t| {
            let serve = std::sync::Arc::clone(&serve);
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        let id = format!("load-{t}-{i}");
                        let (code, v) = serve.submit(&action(&id, "INSTALL", "a1", json!({})), true);
                        assert_eq!(code, 200, "{id}: {v}");
                        assert_eq!(v["taskId"], id);
                        assert_eq!(v["result"]["status"], 0, "{v}");
                        id
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answered: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(answered.len(), 1000);
    assert_eq!(answered.iter().collect::<HashSet<_>>().len(), 1000);
    let r = runs(&plugins);
    assert_eq!(r.len(), 1000);
    assert!(r.values().all(|n| *n == 1), "each ran exactly once");
    let (_, m) = serve.request("GET", "/metrics", None);
    assert!(m.as_str().unwrap().contains("loom_tasks_total{plugin=\"a1\",task=\"INSTALL\",outcome=\"success\"} 1000"));
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn bad_configurations_exit_2_naming_file_line_and_key() {
    let dir = loom_e2e::tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    loom_e2e::chmod(&token, 0o644);
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    loom_e2e::chmod(&open, 0o777);
    let cases = [
        (
            "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\nretention_hours = \"a week\"\n",
            ":3: retention_hours: invalid type",
        ),
        (
            "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\nlisten = \"0.0.0.0:55056\"\n",
            ":3: listen: 0.0.0.0:55056 is not a loopback address",
        ),
        ("plugin_dirs = [\"p\"]\n", "missing field `data_dir`"),
        (
            "plugin_dirs = [\"/no/such/plugins\"]\ndata_dir = \"d\"\nlisten = \"127.0.0.1:0\"\n",
            "plugins folder /no/such/plugins",
        ),
        (
            "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n[defaults]\nuser = \"root\"\n",
            ":4: defaults.user: `user` under [defaults] in the daemon's configuration names root",
        ),
        (
            "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\ntoken_file = \"token\"\n",
            &format!(":3: token_file: {} is readable by every user (mode 0644); fix: chmod 0600", token.display()),
        ),
        (
            "plugin_dirs = [\"p\"]\ndata_dir = \"open\"\nlisten = \"127.0.0.1:0\"\n",
            &format!("data folder: {} is writable by its group and every user (mode 0777)", open.display()),
        ),
    ];
    for (text, want) in cases {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(provisioner()).args(["serve", "--config"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains(&path.display().to_string()) || want.starts_with("plugins folder") || want.starts_with("data"),
            "{err}"
        );
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let out =
        std::process::Command::new(provisioner()).args(["serve", "--config", "/no/such/config.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/config.toml: cannot read the configuration"));
}

#[test]
fn submit_and_status_talk_to_the_daemon_over_a_unix_socket() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({}));
    let socket = plugins.path().join("api.sock");
    let mut serve = Serve::start_listening(&plugins, &format!("unix:{}", socket.display()), "", &[]);

    let api = format!("unix:{}", socket.display());
    let input = format!(
        "{}\n{}\n",
        action("s1", "INSTALL", "a1", json!({})),
        action("s2", "START", "a1", json!({"status": 3}))
    );
    let tasks = plugins.file("tasks.jsonl");
    std::fs::write(&tasks, input).unwrap();
    let out = std::process::Command::new(provisioner())
        .args(["submit", "--wait", "--api", &api])
        .arg(&tasks)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "one task failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((lines[0]["taskId"].as_str(), lines[0]["status"].as_i64()), (Some("s1"), Some(0)));
    assert_eq!((lines[1]["taskId"].as_str(), lines[1]["status"].as_i64()), (Some("s2"), Some(3)));

    let out = std::process::Command::new(provisioner()).args(["status", "--api", &api]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(text.contains("automator a1") && text.contains("ready"), "{text}");
    let out = std::process::Command::new(provisioner()).args(["status", "s1", "--api", &api]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "done");
    let out =
        std::process::Command::new(provisioner()).args(["status", "--api", "http://127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon at http://127.0.0.1:1"));

    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!socket.exists(), "the socket is removed on exit");
    plugins.assert_no_leftovers();
}

#[test]
fn finished_results_are_pruned_after_the_retention() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "automator", "a1", json!({}));
    // 0.0005 h = 1.8 s.
    let mut serve = Serve::start(&plugins, "retention_hours = 0.0005");
    let (code, _) = serve.submit(&action("old", "INSTALL", "a1", json!({})), true);
    assert_eq!(code, 200);
    serve.kill9();
    // Time must pass for a result to become old; nothing signals that.
    std::thread::sleep(Duration::from_secs(2));
    serve.spawn();
    assert_eq!(serve.request("GET", "/v1/tasks/old", None).0, 404);
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn a_task_accepted_while_the_plugins_start_is_neither_failed_as_interrupted_nor_run_twice() {
    // The API answers as soon as the daemon listens, before its plugins have finished
    // their handshakes and before it has dealt with what its last run left unfinished:
    // a task accepted then is this run's.
    let plugins = Plugins::new();
    let runlog = plugins.file("runlog");
    test_plugin(
        &plugins,
        "automator",
        "slow-start",
        json!({"env": {"TESTPLUGIN_RUNLOG": runlog}, "handshakeTimeoutSecs": 60,
               "settings": {"handshakeDelayMs": 8000}}),
    );
    let serve = Serve::start_with_unread_notify(&plugins, "", &[]);
    let (code, v) = serve.submit(&action("early", "INSTALL", "slow-start", json!({})), false);
    assert_eq!(code, 202, "{v}");
    let done =
        wait_until(Duration::from_secs(120), || serve.request("GET", "/v1/tasks/early", None).1["state"] == "done");
    assert!(done, "log:\n{}", serve.log_text());
    let (_, v) = serve.request("GET", "/v1/tasks/early", None);
    assert_eq!(v["result"]["status"], 0, "{v}");
    // Wait until the daemon is ready (the last run's work dealt with), then count runs.
    assert!(wait_until(Duration::from_secs(60), || serve.log_text().contains("ready: 1 plugins ready")));
    let runs = std::fs::read_to_string(&runlog).unwrap_or_default();
    assert_eq!(runs.lines().filter(|l| l.starts_with("early ")).count(), 1, "run once: {runs}");
    assert!(!serve.log_text().contains("supervisor restarted while the task ran"), "{}", serve.log_text());
}
