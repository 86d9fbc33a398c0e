//! Several daemons on one PostgreSQL journal (issue 14): tasks accepted by any daemon run
//! on a daemon that has their plugin, a daemon's death is survived (its tasks taken over
//! by the others within its lease), and a task no live daemon can run waits, saying why,
//! until one that can joins.
//!
//! Each test has a database of its own on the test binary's throwaway PostgreSQL
//! (`loom-testpg`). Counted from outside: results over HTTP, task starts in each plugin's
//! own record, rows in the journal's tables.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loom_e2e::{ClusterRig, Plugins, Serve, StormPlugin, action, wait_until};
use loom_testpg::TestPg;
use serde_json::{Value, json};

/// A short lease, so that the failover test takes seconds; the default is 12 s.
const LEASE_SECS: u64 = 4;
const HEARTBEAT_SECS: u64 = 1;

fn journal(url: &str, name: &str) -> String {
    format!("[journal]\nurl = {url:?}\nname = {name:?}\nlease_secs = {LEASE_SECS}\nheartbeat_secs = {HEARTBEAT_SECS}\n")
}

/// One number from the journal's database.
fn count(pg: &TestPg, db: &str, sql: &str) -> u64 {
    pg.psql(db, sql).trim().parse().unwrap_or_else(|_| panic!("{sql}: not a number"))
}

fn database_of(url: &str) -> String {
    url.trim_start_matches("postgresql:///").split('?').next().unwrap().to_owned()
}

/// A daemon of the storm fleet: two storm plugins, one declaring START idempotent.
struct Member {
    serve: Arc<Serve>,
    plain: StormPlugin,
    idem: StormPlugin,
    _plugins: Plugins,
}

fn member(url: &str, name: &str) -> Member {
    let plugins = Plugins::new();
    let slots = json!({"instances": 2, "maxConcurrency": 8});
    let plain = StormPlugin::add(&plugins, "storm-plain", &[], slots.clone());
    let idem = StormPlugin::add(&plugins, "storm-idem", &["START"], slots);
    let serve = Arc::new(Serve::start(&plugins, &journal(url, name)));
    Member { serve, plain, idem, _plugins: plugins }
}

/// Task id -> starts, over every daemon's processes of `pick`'s plugin.
fn starts(members: &[Member], pick: fn(&Member) -> &StormPlugin) -> HashMap<String, usize> {
    let mut all = HashMap::new();
    for m in members {
        for (id, n) in pick(m).starts() {
            *all.entry(id).or_default() += n;
        }
    }
    all
}

#[test]
fn three_daemons_share_ten_thousand_tasks_and_survive_the_death_of_one() {
    let Some(pg) = TestPg::shared() else { return };
    let url = pg.database();
    let db = database_of(&url);
    let members: Vec<Member> = ["d0", "d1", "d2"].iter().map(|n| member(&url, n)).collect();

    let n = 10_000;
    let tasks: Arc<Vec<Value>> = Arc::new(
        (0..n)
            .map(|i| {
                let plugin = if i % 2 == 0 { &members[0].plain } else { &members[0].idem };
                plugin.task(&format!("t-{i}"))
            })
            .collect(),
    );
    // Submitted round-robin to the three daemons by four clients; d1 is SIGKILLed once a
    // third of the tasks are in. Submissions to it fail from then on (not accepted).
    let accepted: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let d1_dead = Arc::new(AtomicBool::new(false));
    let serves: Vec<Arc<Serve>> = members.iter().map(|m| Arc::clone(&m.serve)).collect();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (tasks, accepted, next, serves, d1_dead) =
                (Arc::clone(&tasks), Arc::clone(&accepted), Arc::clone(&next), serves.clone(), Arc::clone(&d1_dead));
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(task) = tasks.get(i) else { return };
                    let serve = &serves[i % 3];
                    if i % 3 == 1 && d1_dead.load(Ordering::SeqCst) {
                        continue;
                    }
                    let (code, _) = serve.try_submit(task, false).unwrap_or((0, Value::Null));
                    if code == 202 {
                        accepted.lock().unwrap().push(i);
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(300), || next.load(Ordering::SeqCst) >= n / 3), "a third submitted");
    // It has tasks running: each daemon claims what it accepted.
    let killed_at = Instant::now();
    d1_dead.store(true, Ordering::SeqCst);
    members[1].serve.signal(nix::sys::signal::Signal::SIGKILL);
    for c in clients {
        c.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() > n / 2, "most were accepted: {}", accepted.len());

    // d1's tasks are taken over within its lease (and a heartbeat of the others).
    let owned_by_d1 = "SELECT count(*) FROM loom.tasks t JOIN loom.daemons d ON d.id = t.owner \
                       WHERE d.name = 'd1' AND t.state <> 'done'";
    assert!(
        wait_until(Duration::from_secs(120), || count(pg, &db, owned_by_d1) == 0),
        "d1's tasks were never taken over"
    );
    let took = killed_at.elapsed();
    println!("d1's tasks taken over {took:?} after its SIGKILL (lease {LEASE_SECS} s)");

    // Every accepted task ends exactly once, on the survivors.
    for i in &accepted {
        let (code, v) = members[[0, 2][i % 2]].serve.submit(&tasks[*i], true);
        assert_eq!((code, v["state"].as_str()), (200, Some("done")), "{}: {v}", tasks[*i]["taskId"]);
    }
    assert_eq!(count(pg, &db, "SELECT count(*) FROM loom.tasks WHERE state <> 'done'"), 0, "nothing left queued");
    let plain = starts(&members, |m| &m.plain);
    let idem = starts(&members, |m| &m.idem);
    let mut failed_with_d1 = 0;
    for i in &accepted {
        let id = format!("t-{i}");
        if i % 2 == 0 {
            assert!(plain.get(&id).copied().unwrap_or(0) <= 1, "{id} (not idempotent) ran twice");
        }
        let (_, v) = members[0].serve.request("GET", &format!("/v1/tasks/{id}"), None);
        if v["result"]["status"] != 0 {
            let why = v["result"]["stderr"].as_str().unwrap_or_default();
            assert!(i % 2 == 0, "{id}: an idempotent task failed: {why}");
            assert!(why.contains("daemon d1 (host ") && why.contains("not run again"), "{id}: {why}");
            failed_with_d1 += 1;
        }
    }
    let reruns = accepted.iter().filter(|i| *i % 2 == 1 && idem.get(&format!("t-{i}")).is_some_and(|n| *n > 1)).count();
    println!(
        "{} accepted; {failed_with_d1} failed with d1 (not idempotent); {reruns} idempotent ones run again",
        accepted.len()
    );
    assert!(took < Duration::from_secs(LEASE_SECS + 30), "taken over after {took:?}");
}

#[test]
fn tasks_go_to_a_daemon_that_has_their_plugin_and_wait_for_one_when_none_has() {
    let Some(pg) = TestPg::shared() else { return };
    let url = pg.database();
    let with_plugin = |name: &str, plugin: &str| {
        let plugins = Plugins::new();
        plugins.add("automator", plugin, json!({"executable": loom_e2e::test_plugin()}));
        let serve = Serve::start(&plugins, &journal(&url, name));
        (serve, plugins)
    };
    let (alpha, _a) = with_plugin("da", "alpha");
    let (beta, _b) = with_plugin("db", "beta");
    let pid_of = |serve: &Serve, plugin: &str| {
        let (_, v) = serve.request("GET", "/v1/plugins", None);
        let p = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == plugin).cloned().unwrap();
        p["instances"][0]["pid"].as_u64().unwrap()
    };

    // Submitted to the daemon without the plugin, run by the one with it.
    let (code, v) = beta.submit(&action("for-alpha", "INSTALL", "alpha", json!({})), true);
    assert_eq!((code, v["result"]["status"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(v["result"]["result"]["pid"].as_u64(), Some(pid_of(&alpha, "alpha")), "{v}");
    let (_, v) = alpha.submit(&action("for-beta", "INSTALL", "beta", json!({})), true);
    assert_eq!(v["result"]["result"]["pid"].as_u64(), Some(pid_of(&beta, "beta")), "{v}");

    // Every daemon's plugins, from any daemon.
    let (_, v) = alpha.request("GET", "/v1/plugins", None);
    let names: Vec<&str> = v["daemons"].as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["da", "db"], "{v}");

    // Nobody runs gamma: it waits, saying why, on whichever daemon is asked.
    let (code, v) = alpha.submit(&action("for-gamma", "INSTALL", "gamma", json!({})), true);
    assert_eq!((code, v["state"].as_str()), (202, Some("queued")), "{v}");
    assert_eq!(v["waiting"], "no live daemon runs automator:gamma", "{v}");
    let (_, v) = beta.request("GET", "/v1/tasks/for-gamma", None);
    assert_eq!(v["waiting"], "no live daemon runs automator:gamma", "{v}");
    let (_, metrics) = beta.request("GET", "/metrics", None);
    assert!(metrics.as_str().unwrap().contains("loom_fleet_queue_depth{plugin=\"automator:gamma\"} 1"), "{metrics}");

    // A daemon with gamma joins: it runs it.
    let (gamma, _g) = with_plugin("dg", "gamma");
    let done =
        wait_until(Duration::from_secs(60), || beta.request("GET", "/v1/tasks/for-gamma", None).1["state"] == "done");
    assert!(done, "the task for gamma never ran");
    let (_, v) = beta.request("GET", "/v1/tasks/for-gamma", None);
    assert_eq!(v["result"]["result"]["pid"].as_u64(), Some(pid_of(&gamma, "gamma")), "{v}");
    assert!(v.get("waiting").is_none(), "{v}");
}

#[test]
fn a_cluster_operation_is_held_by_one_daemon_and_finished_by_another_when_it_dies() {
    let Some(pg) = TestPg::shared() else { return };
    let url = pg.database();
    let rig = ClusterRig::new(json!({}));
    let mut daemons: Vec<Serve> =
        (1..=3).map(|i| Serve::start_named(&rig.plugins, &format!("d{i}"), &journal(&url, &format!("d{i}")))).collect();
    // Two nodes; CONFIGURE waits for a gate file, so the operation is caught midway.
    let spec = json!({
        "name": "shared",
        "provider": {"name": "local"},
        "nodeGroups": [{"name": "n", "count": 2, "services": ["svc"]}],
        "services": {"svc": {"actions": {
            "install": {"type": "shell", "script": "record.sh", "data": "install"},
            "configure": {"type": "shell", "script": "record.sh", "data": "configure-{n} wait"}}}}
    });
    let (code, body) = daemons[0].request("POST", "/v1/clusters", Some(&spec.to_string()));
    assert_eq!(code, 202, "{body:#}");
    assert!(
        wait_until(Duration::from_secs(180), || rig.runlog().iter().filter(|l| l.contains("configure-")).count() == 2),
        "{:?}",
        rig.runlog()
    );
    // One operation per cluster in the whole fleet.
    for d in &daemons {
        let (code, body) = d.request("POST", "/v1/clusters", Some(&spec.to_string()));
        assert_eq!(code, 409, "{body:#}");
        assert!(body["error"].as_str().unwrap().contains("daemon d1 on "), "{body:#}");
    }

    daemons[0].kill9();
    std::fs::write(rig.work.join("gate"), "").unwrap();
    // Another daemon takes the cluster once d1's lease ran out, and finishes `up`.
    assert!(
        wait_until(Duration::from_secs(180), || daemons[2].request("GET", "/v1/clusters/shared", None).1["state"]
            == "active"),
        "not resumed: {}\n{}",
        daemons[1].log_text(),
        daemons[2].log_text()
    );
    let resumed_by = daemons[1..].iter().filter(|d| d.log_text().contains("resuming up after a restart")).count();
    assert_eq!(resumed_by, 1, "resumed by exactly one daemon");
    let (_, status) = daemons[2].request("GET", "/v1/clusters/shared?tasks=true", None);
    let installs = status["tasks"].as_array().unwrap().iter().filter(|t| t["taskName"] == "INSTALL").count();
    assert_eq!(installs, 2, "INSTALL ran once per node: {status:#}");
    let (code, _) = daemons[1].request("DELETE", "/v1/clusters/shared?wait=true", None);
    assert_eq!(code, 200);
    assert!(rig.machines_left().is_empty());
    daemons.clear();
}

#[test]
fn the_daemons_ride_out_a_postgresql_restart_and_answer_503_while_it_is_away() {
    // A server of its own: this test restarts it.
    let Some(pg) = TestPg::start() else { return };
    let url = pg.database();
    let db = database_of(&url);
    let members: Vec<Member> = ["r0", "r1"].iter().map(|n| member(&url, n)).collect();
    let n = 2_000;
    let tasks: Arc<Vec<Value>> = Arc::new((0..n).map(|i| members[0].idem.task(&format!("r-{i}"))).collect());
    let accepted: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
    let unanswered = Arc::new(AtomicUsize::new(0));
    let serves: Vec<Arc<Serve>> = members.iter().map(|m| Arc::clone(&m.serve)).collect();
    let client = {
        let (tasks, accepted, unanswered) = (Arc::clone(&tasks), Arc::clone(&accepted), Arc::clone(&unanswered));
        std::thread::spawn(move || {
            for (i, task) in tasks.iter().enumerate() {
                match serves[i % 2].try_submit(task, false) {
                    Some((202, _)) => accepted.lock().unwrap().push(i),
                    Some((503, v)) => assert!(v["error"].as_str().is_some(), "{v}"),
                    Some((code, v)) => panic!("{code}: {v}"),
                    None => {
                        unanswered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    assert!(wait_until(Duration::from_secs(120), || accepted.lock().unwrap().len() >= n / 4));
    pg.restart();
    client.join().unwrap();
    assert_eq!(unanswered.load(Ordering::SeqCst), 0, "every request was answered");

    // While the server is away: 503 at once (not a hang), and unhealthy.
    pg.stop();
    let (code, v) = members[0].serve.submit(&members[0].idem.task("while-away"), false);
    assert_eq!(code, 503, "{v}");
    assert!(!v["error"].as_str().unwrap().contains("password"), "{v}");
    assert!(
        wait_until(Duration::from_secs(60), || members[1].serve.request("GET", "/healthz", None).0 == 503),
        "healthy without its journal"
    );
    pg.start_again();
    assert!(
        wait_until(Duration::from_secs(60), || members[1].serve.request("GET", "/healthz", None).0 == 200),
        "never healthy again"
    );

    // Nothing accepted is lost; each ends once.
    let accepted = accepted.lock().unwrap().clone();
    for i in &accepted {
        let (code, v) = members[i % 2].serve.submit(&tasks[*i], true);
        assert_eq!((code, v["result"]["status"].as_i64()), (200, Some(0)), "{v}");
    }
    // A 503 may hide a commit whose answer the restart cut off: such a task runs too.
    assert!(
        wait_until(Duration::from_secs(60), || count(
            &pg,
            &db,
            "SELECT count(*) FROM loom.tasks WHERE state <> 'done'"
        ) == 0),
        "left undone"
    );
    assert!(count(&pg, &db, "SELECT count(*) FROM loom.tasks") >= accepted.len() as u64);
    println!("{} of {n} accepted across a restart", accepted.len());
}

#[test]
fn a_daemons_sqlite_journal_moves_to_postgresql_with_its_tasks_and_clusters() {
    let Some(pg) = TestPg::shared() else { return };
    let url = pg.database();
    let rig = ClusterRig::new(json!({}));
    rig.plugins.add_test_plugin("automator", "a1", json!({"maxConcurrency": 1}));
    // One daemon on SQLite: a cluster, a finished task, one running and one queued
    // behind it when the daemon dies.
    let mut alone = Serve::start_named(&rig.plugins, "alone", "");
    let spec = json!({
        "name": "moved",
        "provider": {"name": "local"},
        "nodeGroups": [{"name": "n", "count": 1, "services": ["svc"]}],
        "services": {"svc": {"actions": {"install": {"type": "shell", "script": "record.sh", "data": "install"}}}}
    });
    let (code, body) = alone.request("POST", "/v1/clusters?wait=true", Some(&spec.to_string()));
    assert_eq!((code, body["outcome"]["state"].as_str()), (200, Some("active")), "{body:#}");
    let (code, _) = alone.submit(&action("finished", "START", "a1", json!({})), true);
    assert_eq!(code, 200);
    alone.submit(&action("running", "INSTALL", "a1", json!({"action": "hang"})), false);
    alone.submit(&action("queued", "REMOVE", "a1", json!({})), false);
    assert!(
        wait_until(Duration::from_secs(60), || alone.request("GET", "/v1/tasks/running", None).1["state"] == "running")
    );
    alone.kill9();

    let migrate = |to: &str| {
        let from = format!("sqlite://{}", alone.data_dir.display());
        std::process::Command::new(loom_e2e::provisioner())
            .args(["journal", "migrate", "--from", &from, "--to", to])
            .output()
            .unwrap()
    };
    let out = migrate(&url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("copied 3 tasks, 1 clusters, 1 cluster nodes"), "{stdout}");
    let again = migrate(&url);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds 3 tasks and 1 clusters"), "{again:?}");

    // A daemon on PostgreSQL has the history, runs what was queued, and takes over what
    // was running as a restart would.
    let fleet = Serve::start_named(&rig.plugins, "fleet", &journal(&url, "f1"));
    let (_, v) = fleet.request("GET", "/v1/tasks/finished", None);
    assert_eq!((v["state"].as_str(), v["result"]["status"].as_i64()), (Some("done"), Some(0)), "{v}");
    let (code, v) = fleet.submit(&action("queued", "REMOVE", "a1", json!({})), true);
    assert_eq!((code, v["result"]["status"].as_i64()), (200, Some(0)), "{v}");
    let (_, v) = fleet.submit(&action("running", "INSTALL", "a1", json!({})), true);
    let why = v["result"]["stderr"].as_str().unwrap_or_default();
    assert!(why.contains("supervisor restarted while the task ran") && why.contains("not run again"), "{v}");
    let (_, cluster) = fleet.request("GET", "/v1/clusters/moved", None);
    assert_eq!(cluster["state"], "active", "{cluster:#}");
    let (code, _) = fleet.request("DELETE", "/v1/clusters/moved?wait=true", None);
    assert_eq!(code, 200);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn a_clusters_steps_run_on_the_daemons_that_have_their_plugins() {
    let Some(pg) = TestPg::shared() else { return };
    let url = pg.database();
    let rig = ClusterRig::new(json!({}));
    // The owner of the operation has the provider only; another daemon the automator.
    let (providers, automators) = (Plugins::new(), Plugins::new());
    for (to, what) in [(&providers, "providers/local"), (&automators, "automators/shell")] {
        let target = to.path().join(what);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let copied =
            std::process::Command::new("cp").arg("-r").arg(rig.plugins.path().join(what)).arg(&target).status();
        assert!(copied.unwrap().success());
    }
    let owner = Serve::start_named(&providers, "owner", &journal(&url, "owner"));
    let worker = Serve::start_named(&automators, "worker", &journal(&url, "worker"));
    let spec = json!({
        "name": "split",
        "provider": {"name": "local"},
        "nodeGroups": [{"name": "n", "count": 1, "services": ["svc"]}],
        "services": {"svc": {"actions": {"install": {"type": "shell", "script": "record.sh", "data": "install"}}}}
    });
    let (code, body) = owner.request("POST", "/v1/clusters?wait=true", Some(&spec.to_string()));
    assert_eq!((code, body["outcome"]["state"].as_str()), (200, Some("active")), "{body:#}\n{}", owner.log_text());
    assert_eq!(rig.runlog().iter().filter(|l| l.ends_with(" install")).count(), 1, "{:?}", rig.runlog());
    // The automator's steps ran on the worker: its journal records them as its tasks.
    let (_, status) = owner.request("GET", "/v1/clusters/split?tasks=true", None);
    let install = status["tasks"].as_array().unwrap().iter().find(|t| t["taskName"] == "INSTALL").cloned().unwrap();
    let (_, task) = worker.request("GET", &format!("/v1/tasks/{}", install["taskId"].as_str().unwrap()), None);
    assert_eq!((task["state"].as_str(), task["result"]["status"].as_i64()), (Some("done"), Some(0)), "{task}");
    let (code, _) = owner.request("DELETE", "/v1/clusters/split?wait=true", None);
    assert_eq!(code, 200);
    assert!(rig.machines_left().is_empty());
}
