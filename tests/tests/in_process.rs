//! The supervisor library driven directly, in this process: concurrency limits, state,
//! and no zombie children after shutdown.

use std::sync::Arc;

use loom_e2e::{Plugins, action, zombie_children};
use loom_protocol::PluginKind;
use loom_supervisor::Phase;
use loom_supervisor::{Options, Registry, Supervisor, TaskEnvelope};
use serde_json::{Value, json};

fn envelope(task: &Value) -> TaskEnvelope {
    TaskEnvelope::parse(serde_json::value::to_raw_value(task).unwrap()).unwrap()
}

fn supervisor(plugins: &Plugins, eager: bool) -> Arc<Supervisor> {
    let registry = Registry::load(&[plugins.path().to_path_buf()]).unwrap();
    Arc::new(Supervisor::new(registry, Options { eager, ..Options::default() }))
}

async fn run_all(sup: &Arc<Supervisor>, tasks: Vec<Value>) -> Vec<loom_protocol::TaskResult> {
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|t| {
            let sup = Arc::clone(sup);
            tokio::spawn(async move { sup.run(&envelope(&t)).await })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn max_inflight(results: &[loom_protocol::TaskResult]) -> i64 {
    results.iter().map(|r| r.result["inflight"].as_i64().unwrap()).max().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_is_never_exceeded_and_the_handshake_may_lower_it() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "two", json!({"maxConcurrency": 2}));
    plugins.add_test_plugin("automator", "lowered", json!({"maxConcurrency": 4, "settings": {"maxConcurrency": 1}}));
    let sup = supervisor(&plugins, false);
    let sleepy =
        |name: &str, i: usize| action(&format!("{name}-{i}"), "INSTALL", name, json!({"action": "sleep", "ms": 300}));

    let two = run_all(&sup, (0..6).map(|i| sleepy("two", i)).collect()).await;
    assert!(two.iter().all(|r| r.status == 0), "{two:?}");
    assert_eq!(max_inflight(&two), 2, "two at a time, never more");

    let lowered = run_all(&sup, (0..4).map(|i| sleepy("lowered", i)).collect()).await;
    assert_eq!(max_inflight(&lowered), 1, "the handshake's maxConcurrency 1 wins over the manifest's 4");

    sup.shutdown().await;
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
    plugins.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_report_their_state_and_leave_no_zombies_after_crashes() {
    let plugins = Plugins::new();
    plugins.add_test_plugin(
        "automator",
        "crashy",
        json!({"instances": 2, "timeouts": {"STOP": 0.5}, "cancelGraceSecs": 0.1}),
    );
    let sup = supervisor(&plugins, true);
    sup.wait_settled().await;
    let plugin = sup.plugin(PluginKind::Automator, "crashy").unwrap();
    let status = plugin.status();
    assert_eq!(status.len(), 2);
    assert!(status.iter().all(|s| s.phase == Phase::Ready && s.pid.is_some()), "{status:?}");

    let results = run_all(
        &sup,
        vec![
            action("c1", "INSTALL", "crashy", json!({"action": "crash"})),
            action("h1", "STOP", "crashy", json!({"action": "hang"})),
            action("c2", "INSTALL", "crashy", json!({"action": "crash"})),
        ],
    )
    .await;
    assert!(results.iter().all(|r| r.status != 0));
    sup.wait_settled().await;
    let status = plugin.status();
    assert!(status.iter().all(|s| s.phase == Phase::Ready), "restarted: {status:?}");
    assert!(status.iter().map(|s| s.restarts).sum::<u64>() >= 2, "{status:?}");
    assert!(
        status.iter().any(|s| s.last_error.as_deref().is_some_and(|e| e.contains("exited with code 3"))),
        "{status:?}"
    );

    let after = sup.run(&envelope(&action("ok", "START", "crashy", json!({})))).await;
    assert_eq!(after.status, 0, "{after:?}");

    sup.shutdown().await;
    assert!(plugin.status().iter().all(|s| s.phase == Phase::Stopped));
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
    plugins.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_task_is_cancelled_at_the_plugin() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "polite", json!({"maxConcurrency": 1}));
    let sup = supervisor(&plugins, true);
    sup.wait_settled().await;
    let hang = envelope(&action("h", "INSTALL", "polite", json!({"action": "hang", "honorCancel": true})));
    // Abandon the task after it is sent: the plugin gets `cancel`, answers, and its slot
    // (the only one) is free again for the next task.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(300), sup.run(&hang)).await;
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        sup.run(&envelope(&action("n", "START", "polite", json!({})))),
    )
    .await
    .expect("the abandoned task's slot was never freed: no cancel reached the plugin");
    assert_eq!(next.status, 0, "{next:?}");
    sup.shutdown().await;
    plugins.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_plugin_that_stops_answering_pings_is_restarted() {
    let plugins = Plugins::new();
    plugins.add_test_plugin(
        "automator",
        "deaf",
        // A ping goes to an idle process only, and its time runs only while no task is in
        // flight; the interval and timeout are still seconds, not tenths, as nothing here
        // needs them shorter.
        json!({"pingIntervalSecs": 2, "pingTimeoutSecs": 1, "settings": {"ignorePing": true},
               "restart": {"maxRestarts": 100}}),
    );
    let sup = supervisor(&plugins, false);
    let first = sup.run(&envelope(&action("t1", "INSTALL", "deaf", json!({})))).await;
    assert_eq!(first.status, 0);
    let plugin = sup.plugin(PluginKind::Automator, "deaf").unwrap();
    let restarted = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        plugin.wait_for(|s| s[0].restarts >= 1 && s[0].phase == Phase::Ready),
    )
    .await;
    assert!(restarted.is_ok(), "never restarted: {:?}", plugin.status());
    let why = plugin.status()[0].last_error.clone().unwrap_or_default();
    assert!(why.contains("did not answer a ping within 1 s"), "{why}");
    let second = sup.run(&envelope(&action("t2", "INSTALL", "deaf", json!({})))).await;
    assert_eq!(second.status, 0);
    assert_ne!(first.result["pid"], second.result["pid"]);
    sup.shutdown().await;
    plugins.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misbehaviour_leaves_neither_orphans_nor_zombies() {
    let plugins = Plugins::new();
    // Short deadlines only where a plugin is meant to miss them (the hang, the mute
    // handshake): a Python plugin starting on a loaded machine can take seconds.
    let quick = json!({"timeouts": {"INSTALL": 60}, "cancelGraceSecs": 0.1, "shutdownGraceSecs": 0.3,
                       "handshakeTimeoutSecs": 60, "maxLineBytes": 1024,
                       "restart": {"maxRestarts": 1, "backoffInitialMs": 5, "coolDownSecs": 60}});
    let with = |settings: Value| {
        let mut m = quick.clone();
        m["settings"] = settings;
        m
    };
    let missing = |settings: Value, key: &str, deadline: Value| {
        let mut m = with(settings);
        m[key] = deadline;
        m
    };
    plugins.add_test_plugin("automator", "crash", with(json!({})));
    plugins.add_test_plugin("automator", "hang", missing(json!({}), "timeouts", json!({"INSTALL": 0.5})));
    plugins.add_test_plugin("automator", "long", with(json!({})));
    plugins.add_test_plugin(
        "automator",
        "mute",
        missing(json!({"handshake": "never"}), "handshakeTimeoutSecs", json!(0.5)),
    );
    plugins.add_test_plugin("automator", "family", with(json!({"grandchild": true})));
    plugins.add_test_plugin("automator", "stubborn", with(json!({"ignoreSigterm": true, "ignoreEof": true})));
    let sup = supervisor(&plugins, true);
    let results = run_all(
        &sup,
        vec![
            action("c", "INSTALL", "crash", json!({"action": "crash"})),
            action("h", "INSTALL", "hang", json!({"action": "hang"})),
            action("l", "INSTALL", "long", json!({"action": "longline", "bytes": 5000})),
            action("m", "INSTALL", "mute", json!({})),
            action("f", "INSTALL", "family", json!({"action": "crash"})),
            action("s", "INSTALL", "stubborn", json!({})),
        ],
    )
    .await;
    let statuses: Vec<i64> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [1, 1, 1, 1, 1, 0], "{results:#?}");
    sup.shutdown().await;
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
    plugins.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_plugin_is_tried_again_after_its_cool_down() {
    let plugins = Plugins::new();
    let pidfile = plugins.file("pids");
    plugins.add_test_plugin(
        "automator",
        "flaky",
        json!({"env": {"TESTPLUGIN_PIDFILE": pidfile, "TESTPLUGIN_CRASH_STARTS": "2"},
               "restart": {"maxRestarts": 1, "backoffInitialMs": 5, "coolDownSecs": 1}}),
    );
    let sup = supervisor(&plugins, false);
    let first = sup.run(&envelope(&action("t1", "INSTALL", "flaky", json!({})))).await;
    // It waited through both failed starts (it never reached a process), and failed when
    // the plugin was marked failed, with the last start's cause.
    assert!(
        first.stderr.contains("marked failed after 2 crashes") && first.stderr.contains("crashing at start"),
        "{first:?}"
    );
    let plugin = sup.plugin(PluginKind::Automator, "flaky").unwrap();
    plugin.wait_for(|s| matches!(s[0].phase, Phase::Failed { .. })).await;
    let refused = sup.run(&envelope(&action("t2", "INSTALL", "flaky", json!({})))).await;
    assert!(refused.stderr.contains("marked failed after 2 crashes"), "{refused:?}");
    // After the cool-down it starts again, and this time it comes up.
    tokio::time::timeout(std::time::Duration::from_secs(20), plugin.wait_for(|s| s[0].phase == Phase::Ready))
        .await
        .expect("not tried again after the cool-down");
    let later = sup.run(&envelope(&action("t3", "INSTALL", "flaky", json!({})))).await;
    assert_eq!(later.status, 0, "{later:?}");
    sup.shutdown().await;
    plugins.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_replaces_the_process_without_counting_a_crash() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "steady", json!({}));
    let sup = supervisor(&plugins, true);
    let plugin = sup.plugin(PluginKind::Automator, "steady").unwrap();
    plugin.wait_settled().await;
    let before = plugin.status()[0].pid.unwrap();
    plugin.restart();
    plugin.wait_for(|s| s[0].phase == Phase::Ready && s[0].pid != Some(before)).await;
    assert_eq!(plugin.status()[0].restarts, 0, "not a crash");
    let r = sup.run(&envelope(&action("t", "INSTALL", "steady", json!({})))).await;
    assert_eq!(r.status, 0);
    assert_ne!(r.result["pid"], json!(before));
    sup.shutdown().await;
    plugins.assert_no_leftovers();
}
