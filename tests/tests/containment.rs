//! No descendant escapes: each plugin process runs in a cgroup of its own, and everything
//! in it is killed when the plugin stops or crashes, whatever it did to leave the plugin's
//! process group (`setsid`, a double fork). Its `limits` hold for the whole tree: a fork
//! bomb meets `pidsMax`, a memory hog is killed at `memoryMax` and the crash says so.
//!
//! Tests that need cgroups skip with a message where the machine cannot have them (not
//! root, no cgroup v2); which ones apply is decided from the machine (`cgroups.rs`), not
//! from the supervisor.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use loom_e2e::{
    Plugins, action, alive, cgroups_unavailable, controller_unavailable, plugin_cgroups, provisioner, run_with_input,
    skip, v2_folder, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// What the supervisor logs when a plugin's pipes were held open past the drain limit.
const DRAIN_WAITED: &str = "still holds its pipes open";

fn pids(value: &Value) -> Vec<i32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("no pids in {value}"))
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect()
}

/// What follows `label` on its line of a crash message (the plugin's last stderr lines).
fn said<'a>(stderr: &'a str, label: &str) -> &'a str {
    stderr.lines().find_map(|l| l.split(label).nth(1)).unwrap_or_else(|| panic!("no {label:?} in {stderr}"))
}

#[test]
fn a_stop_kills_a_setsid_grandchild_and_a_daemon_without_waiting_for_the_pipes() {
    if let Some(why) = cgroups_unavailable() {
        return skip("a_stop_kills_a_setsid_grandchild_and_a_daemon", &why);
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "escapes-at-stop", json!({}));
    let run = plugins.run(
        &[
            action("family", "INSTALL", "escapes-at-stop", json!({"action": "family"})),
            action("where", "START", "escapes-at-stop", json!({"action": "whoami"})),
        ],
        &["--concurrency", "1"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let descendants = pids(&run.result("family")["result"]["descendants"]);
    assert_eq!(descendants.len(), 2);
    // The run has ended: the plugin was stopped, and its cgroup with it, at once.
    for pid in descendants {
        assert!(!alive(pid), "descendant {pid} outlived the stop");
    }
    plugins.assert_no_leftovers();
    assert!(!run.stderr.contains(DRAIN_WAITED), "the stop waited for the grandchild's pipes:\n{}", run.stderr);
    let cgroup = run.result("where")["result"]["whoami"]["cgroup"].as_str().unwrap().to_owned();
    assert!(
        cgroup.lines().any(|l| l.starts_with("0::") && l.contains("/loom-plugins/escapes-at-stop-0-")),
        "the plugin runs in a cgroup of its own: {cgroup}"
    );
    assert_eq!(plugin_cgroups("escapes-at-stop"), Vec::<std::path::PathBuf>::new(), "its cgroups are removed");
}

#[test]
fn a_crash_kills_what_the_plugin_started_before_its_tasks_fail() {
    if let Some(why) = cgroups_unavailable() {
        return skip("a_crash_kills_what_the_plugin_started", &why);
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "escapes-at-crash", json!({}));
    plugins.add_test_plugin("automator", "keeps-running", json!({"cancelGraceSecs": 0.2}));
    // The hung task keeps the run going after the crash: what dies then dies of the crash.
    let mut child = plugins.spawn_run(&[
        action("hung", "START", "keeps-running", json!({"action": "hang"})),
        action("crash", "INSTALL", "escapes-at-crash", json!({"action": "family", "thenCrash": true})),
    ]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let crash: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(crash["taskId"], "crash", "{crash}");
    let why = crash["stderr"].as_str().unwrap();
    assert!(why.contains("exited with code 3"), "{why}");
    // The task fails only once its process's cgroup is empty: no waiting here.
    for pid in said(why, "descendants: ").split_whitespace().map(|p| p.parse().unwrap()) {
        assert!(!alive(pid), "descendant {pid} outlived the crash of its plugin");
    }
    let cgroup = said(why, "cgroup: ");
    assert!(cgroup.contains("/loom-plugins/escapes-at-crash-0-"), "{why}");
    // (The plugin's next process, started at once, has a cgroup of its own.)
    assert!(!v2_folder(cgroup).exists(), "the crashed process's cgroup {cgroup} is removed");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{rest}");
    plugins.assert_no_leftovers();
}

#[test]
fn a_fork_bomb_is_contained_by_pids_max() {
    if let Some(why) = controller_unavailable("pids") {
        return skip("a_fork_bomb_is_contained_by_pids_max", &why);
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "fork-bomb", json!({"limits": {"pidsMax": 24}}));
    let run = plugins.run(&[action("bomb", "INSTALL", "fork-bomb", json!({"action": "forkbomb", "budget": 40}))], &[]);
    let bomb = &run.result("bomb")["result"];
    assert_eq!(bomb["refused"], true, "fork never failed: {bomb}\n{}", run.stderr);
    // The plugin, its threads and every descendant count: its own children are fewer.
    assert!(bomb["forked"].as_u64().unwrap() < 24, "{bomb}");
    plugins.assert_no_leftovers();
    assert_eq!(plugin_cgroups("fork-bomb"), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_memory_hog_is_killed_at_its_memory_limit_and_the_crash_says_so() {
    if let Some(why) = controller_unavailable("memory") {
        return skip("a_memory_hog_is_killed_at_its_memory_limit", &why);
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "memory-hog", json!({"limits": {"memoryMax": "64M"}}));
    let run = plugins.run(
        &[
            action("hog", "INSTALL", "memory-hog", json!({"action": "hog", "capMiB": 512})),
            action("after", "START", "memory-hog", json!({})),
        ],
        &["--concurrency", "1"],
    );
    let hog = run.result("hog");
    assert_eq!(hog["status"], 1, "{hog}");
    let why = hog["stderr"].as_str().unwrap();
    assert!(why.contains(") was killed: memory limit 64 MiB reached"), "{why}");
    assert_eq!(run.result("after")["status"], 0, "a new process serves: {}", run.stderr);
    plugins.assert_no_leftovers();
    assert_eq!(plugin_cgroups("memory-hog"), Vec::<std::path::PathBuf>::new());
}

#[test]
fn open_files_and_core_size_limits_are_set_before_exec() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "rlimited", json!({"limits": {"openFiles": 256, "coreSize": "1M"}}));
    plugins.add_test_plugin("automator", "unlimited", json!({}));
    let run = plugins.run(
        &[
            action("limited", "INSTALL", "rlimited", json!({"action": "whoami"})),
            action("default", "INSTALL", "unlimited", json!({"action": "whoami"})),
        ],
        &[],
    );
    let limited = &run.result("limited")["result"]["whoami"];
    assert_eq!(limited["openFiles"], json!([256, 256]), "{limited}");
    assert_eq!(limited["coreSize"], json!([1 << 20, 1 << 20]), "{limited}");
    let default = &run.result("default")["result"]["whoami"];
    assert_ne!(default["openFiles"], json!([256, 256]), "{default}");
    plugins.assert_no_leftovers();
}

#[test]
fn cgroups_left_by_a_killed_supervisor_are_emptied_and_removed_at_the_next_start() {
    if let Some(why) = cgroups_unavailable() {
        return skip("cgroups_left_by_a_killed_supervisor", &why);
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "left-behind", json!({}));
    let mut child = plugins.spawn_run(&[
        action("family", "INSTALL", "left-behind", json!({"action": "family"})),
        action("hung", "START", "left-behind", json!({"action": "hang"})),
    ]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let family: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    let descendants = pids(&family["result"]["descendants"]);
    // SIGKILL: the supervisor cleans nothing up; the plugin dies of its parent-death
    // signal, and the descendants that left its group live on in its cgroup.
    // (Another test's supervisor starting now may clean them up first: either way, they
    // must be gone once the next supervisor has started.)
    child.kill().unwrap();
    child.wait().unwrap();

    let next = plugins.run(&[action("next", "INSTALL", "left-behind", json!({}))], &[]);
    assert_eq!(next.result("next")["status"], 0, "{}", next.stderr);
    for pid in descendants {
        assert!(!alive(pid), "descendant {pid} of the killed supervisor's plugin lives on");
    }
    assert_eq!(plugin_cgroups("left-behind"), Vec::<std::path::PathBuf>::new());
    plugins.assert_no_leftovers();
}

#[test]
fn without_cgroups_the_supervisor_says_so_once_and_sweeps_the_process_group() {
    if !nix::unistd::geteuid().is_root() {
        // As root, the test becomes a user who cannot make cgroups; otherwise it already is
        // one, and every other test here skips: nothing to compare with.
        return skip("without_cgroups_the_supervisor_says_so_once", "not root (it runs the supervisor as nobody)");
    }
    let plugins = Plugins::new();
    let nobody = json!({"user": "nobody", "settings": {"grandchild": true}, "limits": {"pidsMax": 50}});
    plugins.add_test_plugin("automator", "no-cgroup-a", nobody.clone());
    plugins.add_test_plugin("automator", "no-cgroup-b", nobody);
    let tasks: String = ["no-cgroup-a", "no-cgroup-b", "no-cgroup-a"]
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}\n", action(&format!("t{i}"), "INSTALL", p, json!({"action": "crash"}))))
        .collect();
    let mut cmd = Command::new(provisioner());
    cmd.arg("run").arg("--plugins-dir").arg(plugins.path()).uid(65534).gid(65534);
    let out = run_with_input(cmd, &tasks, Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    let said = log.lines().filter(|l| l.contains("plugin processes are not put in cgroups")).count();
    assert_eq!(said, 1, "said once, whatever the number of plugins and restarts:\n{log}");
    let warned = log.lines().filter(|l| l.contains("limits.pidsMax is not enforced")).count();
    assert_eq!(warned, 2, "once per plugin:\n{log}");
    // The grandchildren stayed in their plugins' process groups: swept.
    assert!(wait_until(Duration::from_secs(10), || plugins.leftovers().is_empty()), "{:#?}", plugins.leftovers());
}

#[test]
fn a_plugin_whose_manifest_keeps_descendants_gets_no_cgroup_and_its_daemons_outlive_it() {
    // The `local` provider's machines are processes it starts: they must outlive it.
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "keeps-them", json!({"keepDescendants": true, "limits": {"pidsMax": 50}}));
    let run = plugins.run(
        &[
            action("family", "INSTALL", "keeps-them", json!({"action": "family"})),
            action("where", "START", "keeps-them", json!({"action": "whoami"})),
        ],
        &["--concurrency", "1"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let descendants = pids(&run.result("family")["result"]["descendants"]);
    let outlived: Vec<i32> = descendants.iter().copied().filter(|&pid| alive(pid)).collect();
    for &pid in &descendants {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert_eq!(outlived, descendants, "what left the process group outlives the plugin:\n{}", run.stderr);
    let cgroup = run.result("where")["result"]["whoami"]["cgroup"].as_str().unwrap().to_owned();
    assert!(!cgroup.contains("/loom-plugins/"), "no cgroup of its own: {cgroup}");
    let said = run.stderr.lines().filter(|l| l.contains("its manifest says keepDescendants")).count();
    assert_eq!(said, 1, "said once:\n{}", run.stderr);
    if cgroups_unavailable().is_none() {
        assert!(
            run.stderr.contains("limits.pidsMax is not enforced: the manifest says keepDescendants"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(plugin_cgroups("keeps-them"), Vec::<std::path::PathBuf>::new());
}

#[test]
fn the_local_provider_in_a_cgroup_of_its_own_refuses_to_create_machines_that_would_die_with_it() {
    if let Some(why) = cgroups_unavailable() {
        return skip("the_local_provider_in_a_cgroup_of_its_own_refuses", &why);
    }
    let plugins = Plugins::new();
    let state = plugins.path().join("machines");
    plugins.add(
        "provider",
        "local",
        json!({"executable": loom_e2e::bin_dir().join("loom-plugin-local"), "settings": {"stateDir": state}}),
    );
    let create = json!({"taskId": "c", "taskName": "CREATE", "clusterId": "1", "hostname": "n.local",
                        "config": {"hostname": "n.local", "provider": {"name": "local", "providertype": "local"}}});
    let run = plugins.run(&[create], &[]);
    let result = run.result("c");
    assert_eq!(result["status"], 1, "{result}");
    let why = result["stderr"].as_str().unwrap();
    assert!(why.contains("add \"keepDescendants\": true to its manifest"), "{why}");
    plugins.assert_no_leftovers();
}
