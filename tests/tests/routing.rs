//! Tasks reach the right plugin by Loom's rules, and results come back whole.

use loom_e2e::{Plugins, action, bin_dir, task};
use serde_json::json;

#[test]
fn a_rust_sdk_provider_answers_with_its_result_keys() {
    let plugins = Plugins::new();
    let exe = bin_dir().join("example-provider");
    plugins.add("provider", "example", json!({"executable": exe, "maxConcurrency": 4}));
    let provider = json!({"name": "example", "providertype": "example", "provisioner": {}});
    let run = plugins.run(
        &[
            task("c1", "CREATE", json!({"hostname": "web-1.local", "provider": provider})),
            task("f1", "CONFIRM", json!({"hostname": "web-1.local", "providerid": "x", "provider": provider})),
        ],
        &["--concurrency", "1"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let created = run.result("c1");
    assert_eq!(created["status"], 0);
    assert!(created["result"]["providerid"].as_str().unwrap().starts_with("example-"), "{created}");
    assert!(created["result"]["ssh-auth"]["user"].is_string(), "{created}");
    let confirmed = run.result("f1");
    assert_eq!(confirmed["hostname"], "web-1.local");
    assert_eq!(confirmed["ipaddresses"]["access_v4"], "127.0.0.1");
    assert_eq!(confirmed["result"]["ipaddress"], "127.0.0.1");
    plugins.assert_no_leftovers();
}

#[test]
fn all_ten_task_types_are_routed_by_lomms_rules() {
    let plugins = Plugins::new();
    for name in ["p1", "p2"] {
        plugins.add_test_plugin("provider", name, json!({}));
    }
    for name in ["a1", "a2"] {
        plugins.add_test_plugin("automator", name, json!({}));
    }
    let by_type = |t: &str| json!({"providertype": t, "name": "ignored-when-providertype-is-set"});
    let tasks = vec![
        task("create", "CREATE", json!({"provider": by_type("p1")})),
        task("confirm", "CONFIRM", json!({"provider": by_type("p2")})),
        // Without providertype, config.provider.name decides.
        task("delete", "DELETE", json!({"provider": {"name": "p2"}})),
        task("bootstrap", "BOOTSTRAP", json!({"automators": ["a2"]})),
        action("install", "INSTALL", "a1", json!({})),
        action("configure", "CONFIGURE", "a2", json!({})),
        action("initialize", "INITIALIZE", "a1", json!({})),
        action("start", "START", "a2", json!({})),
        action("stop", "STOP", "a1", json!({})),
        action("remove", "REMOVE", "a2", json!({})),
    ];
    let expected = [
        ("create", "p1"),
        ("confirm", "p2"),
        ("delete", "p2"),
        ("bootstrap", "a2"),
        ("install", "a1"),
        ("configure", "a2"),
        ("initialize", "a1"),
        ("start", "a2"),
        ("stop", "a1"),
        ("remove", "a2"),
    ];
    let run = plugins.run(&tasks, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.results.len(), 10);
    for (t, (id, plugin)) in tasks.iter().zip(expected) {
        let r = run.result(id);
        assert_eq!(r["status"], 0, "{r}");
        assert_eq!(r["result"]["handledBy"], plugin, "{id}: {r}");
        assert_eq!(r["result"]["taskName"], t["taskName"], "{id}: {r}");
    }
    plugins.assert_no_leftovers();
}

#[test]
fn a_task_for_an_unknown_plugin_fails_listing_what_is_registered() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "shell", json!({}));
    plugins.add_test_plugin("automator", "chef", json!({}));
    plugins.add_test_plugin("provider", "aws", json!({}));
    let run = plugins.run(
        &[
            action("t1", "INSTALL", "puppet", json!({})),
            task("t2", "CREATE", json!({"provider": {"providertype": "gce"}})),
            task("t3", "CREATE", json!({})),
        ],
        &[],
    );
    assert_eq!(run.code, Some(1));
    let install = run.result("t1")["stderr"].as_str().unwrap().to_owned();
    assert!(install.contains("task t1 (INSTALL)") && install.contains("\"puppet\""), "{install}");
    assert!(install.contains("registered automators: chef, shell"), "{install}");
    let create = run.result("t2")["stderr"].as_str().unwrap().to_owned();
    assert!(create.contains("no provider named \"gce\"") && create.contains("registered providers: aws"), "{create}");
    let none = run.result("t3")["stderr"].as_str().unwrap().to_owned();
    assert!(none.contains("names no provider"), "{none}");
    assert!(plugins.leftovers().is_empty());
}

#[test]
fn bootstrap_runs_every_listed_automator_in_order_and_merges_their_results() {
    let plugins = Plugins::new();
    for name in ["a1", "a2", "a3"] {
        plugins.add_test_plugin("automator", name, json!({}));
    }
    let test = json!({"byPlugin": {
        "a1": {"result": {"from_a1": true, "shared": "a1"}, "stdout": "a1 out"},
        "a2": {"result": {"from_a2": true, "shared": "a2"}, "stdout": "a2 out"},
        "a3": {"status": 5, "stderr": "a3 failed"},
    }});
    let run = plugins.run(
        &[
            task("ordered", "BOOTSTRAP", json!({"automators": ["a2", "a1"], "test": test})),
            task("failing", "BOOTSTRAP", json!({"automators": ["a3", "a1"], "test": test})),
            task("everyone", "BOOTSTRAP", json!({"test": {}})),
            task("unknown", "BOOTSTRAP", json!({"automators": ["a1", "nope"], "test": {}})),
        ],
        &[],
    );
    let ordered = run.result("ordered");
    assert_eq!(ordered["status"], 0, "{ordered}");
    assert_eq!(ordered["result"]["from_a1"], true);
    assert_eq!(ordered["result"]["from_a2"], true);
    assert_eq!(ordered["result"]["shared"], "a1", "results merge in order: the later automator wins");
    let stdout = ordered["stdout"].as_str().unwrap();
    let (a2, a1) = (stdout.find("==> a2 <==").unwrap(), stdout.find("==> a1 <==").unwrap());
    assert!(a2 < a1, "in the listed order: {stdout}");

    let failing = run.result("failing");
    assert_eq!(failing["status"], 5, "the first non-zero status wins: {failing}");
    assert_eq!(failing["result"]["from_a1"], true, "the later automator still ran: {failing}");
    assert!(failing["stderr"].as_str().unwrap().contains("a3 failed"));

    let everyone = run.result("everyone");
    assert_eq!(everyone["status"], 0);
    let out = everyone["stdout"].as_str().unwrap_or_default();
    // Every registered automator ran: each answer's result was merged (handledBy is the last).
    assert_eq!(everyone["result"]["handledBy"], "a3", "{everyone} {out}");

    let unknown = run.result("unknown");
    assert_eq!(unknown["status"], 1);
    assert!(unknown["stderr"].as_str().unwrap().contains("no automator named \"nope\""), "{unknown}");
    plugins.assert_no_leftovers();
}

#[test]
fn the_real_loom_start_task_goes_through_unchanged() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "chef", json!({}));
    let start =
        std::fs::read_to_string(loom_e2e::workspace().join("protocol/tests/data/start-hbase-regionserver.json"))
            .unwrap();
    let run = plugins.run_input(&start, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = run.result("00000001-002-071");
    assert_eq!(r["result"]["handledBy"], "chef");
    assert_eq!(r["result"]["taskName"], "START");
    plugins.assert_no_leftovers();
}

#[test]
fn many_tasks_in_flight_are_each_answered_once() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({"instances": 2, "maxConcurrency": 4, "queueCapacity": 3}));
    let tasks: Vec<_> =
        (0..40).map(|i| action(&format!("t{i}"), "INSTALL", "a1", json!({"action": "sleep", "ms": 20}))).collect();
    let run = plugins.run(&tasks, &["--concurrency", "40"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut ids: Vec<_> = run.results.iter().map(|r| r["taskId"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    let pids: std::collections::HashSet<_> = run.results.iter().map(|r| r["result"]["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 2, "both instances served");
    plugins.assert_no_leftovers();
}
