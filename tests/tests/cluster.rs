//! `loom-provisioner cluster`: whole clusters of `local` machines brought up and taken
//! down with the `shell` automator, failures, retries, resuming after a failure and
//! after the supervisor is killed.
//!
//! Tests run in parallel: each has its own cluster name, journal, machines and ports.

use std::collections::HashMap;
use std::time::Duration;

use loom_e2e::{ClusterRig, Serve, http_get, machine_processes, wait_until};
use serde_json::{Value, json};

/// Each task attempt of a status, by task id.
fn tasks(status: &Value) -> Vec<Value> {
    status["tasks"].as_array().cloned().unwrap_or_default()
}

/// The attempts of one step (`"INSTALL demo-web-1 web"`), in order.
fn attempts_of(status: &Value, step: &str) -> Vec<Value> {
    tasks(status).into_iter().filter(|t| t["step"] == step).collect()
}

/// When a step's last successful attempt started and finished (ms).
fn times(status: &Value) -> HashMap<String, (i64, i64)> {
    let mut out = HashMap::new();
    for t in tasks(status) {
        if t["status"] == 0 && t["taskName"] == t["step"].as_str().unwrap_or("").split(' ').next().unwrap_or("") {
            let (s, f) = (t["startedMs"].as_i64().unwrap(), t["finishedMs"].as_i64().unwrap());
            out.insert(t["step"].as_str().unwrap().to_owned(), (s, f));
        }
    }
    out
}

/// Asserts that `later` started after `first` finished.
fn after(times: &HashMap<String, (i64, i64)>, later: &str, first: &str) {
    let (Some(l), Some(f)) = (times.get(later), times.get(first)) else {
        panic!("{later} or {first} did not run: {times:#?}");
    };
    assert!(l.0 >= f.1, "{later} started at {} before {first} finished at {}", l.0, f.1);
}

fn nodes(status: &Value) -> Vec<Value> {
    status["nodes"].as_array().cloned().unwrap_or_default()
}

fn endpoints(status: &Value) -> Vec<String> {
    nodes(status)
        .iter()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| e["url"].as_str().unwrap().trim_start_matches("http://").to_owned())
        .collect()
}

/// `GET` of `host:port/path`.
fn get(url: &str) -> std::io::Result<String> {
    let (addr, path) = url.split_once('/').unwrap_or((url, ""));
    if path.is_empty() {
        return http_get(addr);
    }
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// After `cluster down`: no machine, no process, no service folder, nothing answering.
fn assert_nothing_left(rig: &ClusterRig, providerids: &[String], urls: &[String]) {
    assert!(rig.machines_left().is_empty(), "machines left: {:?}", rig.machines_left());
    for id in providerids {
        assert!(machine_processes(id).is_empty(), "processes of {id} left: {:?}", machine_processes(id));
    }
    let apps = rig.work.join("apps");
    let left: Vec<_> = std::fs::read_dir(&apps).into_iter().flatten().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "service folders left in {}: {left:?}", apps.display());
    for u in urls {
        assert!(get(u).is_err(), "{u} still answers");
    }
    rig.plugins.assert_no_leftovers();
}

#[test]
fn the_example_comes_up_in_dependency_order_answers_and_goes_away() {
    let rig = ClusterRig::new(json!({}));
    let spec = rig.write_spec("demo.json", &ClusterRig::example(18200, 2));
    let up = rig.cluster(&["up", spec.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "cluster up failed:\n{}", up.stderr);
    assert_eq!(up.json["outcome"]["state"], "active", "{:#}", up.json);
    assert_eq!(up.json["outcome"]["steps"], 18, "3 nodes x CREATE, CONFIRM, BOOTSTRAP + 3 x INSTALL, CONFIGURE, START");

    // Every web server answers with the greeting it read from the store.
    let status = rig.status("local-demo");
    assert_eq!(status["state"], "active");
    let urls = endpoints(&status);
    assert_eq!(urls.len(), 3, "{status:#}");
    assert_eq!(get(&urls[0]).unwrap().trim(), "Hello from a Loom cluster");
    for (i, u) in urls[1..].iter().enumerate() {
        assert_eq!(get(u).unwrap().trim(), format!("Hello from a Loom cluster, served by web-{}.local-demo", i + 1));
    }

    // The order, from the recorded times.
    let t = times(&status);
    for n in ["store-1", "web-1", "web-2"] {
        after(&t, &format!("CONFIRM local-demo-{n}"), &format!("CREATE local-demo-{n}"));
        for m in ["store-1", "web-1", "web-2"] {
            after(&t, &format!("BOOTSTRAP local-demo-{n}"), &format!("CONFIRM local-demo-{m}"));
        }
    }
    for w in ["web-1", "web-2"] {
        after(&t, &format!("INSTALL local-demo-{w} web"), &format!("BOOTSTRAP local-demo-{w}"));
        after(&t, &format!("INSTALL local-demo-{w} web"), "INSTALL local-demo-store-1 store");
        after(&t, &format!("START local-demo-{w} web"), "START local-demo-store-1 store");
        after(&t, &format!("START local-demo-{w} web"), &format!("CONFIGURE local-demo-{w} web"));
    }
    // Results flowed: the store's CONFIGURE saw every node's address in config.nodes
    // (the web servers found the store through it, or they would not answer).
    let ids: Vec<String> = nodes(&status).iter().map(|n| n["providerid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 3);

    let down = rig.cluster(&["down", "local-demo"]);
    assert_eq!(down.code, Some(0), "cluster down failed:\n{}", down.stderr);
    let status = rig.status("local-demo");
    assert_eq!(status["state"], "terminated");
    let t = times(&status);
    for w in ["web-1", "web-2"] {
        after(&t, "STOP local-demo-store-1 store", &format!("STOP local-demo-{w} web"));
        after(&t, &format!("DELETE local-demo-{w}"), &format!("REMOVE local-demo-{w} web"));
    }
    after(&t, "DELETE local-demo-store-1", "REMOVE local-demo-store-1 store");
    assert_nothing_left(&rig, &ids, &urls);
}

#[test]
fn reconfigure_and_restart_services_run_their_plans() {
    let rig = ClusterRig::new(json!({}));
    let mut spec = ClusterRig::example(18300, 1);
    let path = rig.write_spec("demo.json", &spec);
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let pids = || -> Vec<String> {
        ["local-demo-store-1/store", "local-demo-web-1/web"]
            .iter()
            .map(|a| std::fs::read_to_string(rig.work.join("apps/local-demo").join(a).join("server.pid")).unwrap())
            .collect()
    };
    let first = pids();
    assert_eq!(get("127.0.0.1:18301/").unwrap().trim(), "Hello from a Loom cluster, served by web-1.local-demo");

    // A changed greeting, applied by CONFIGURE: the servers keep running.
    spec["config"]["greeting"] = json!("Hello again");
    rig.write_spec("demo.json", &spec);
    let run = rig.cluster(&["reconfigure", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(get("127.0.0.1:18301/").unwrap().trim(), "Hello again, served by web-1.local-demo");
    assert_eq!(pids(), first);
    let job = run.json["outcome"]["jobId"].as_str().unwrap().to_owned();
    let names = |status: &Value, job: &str| -> Vec<String> {
        tasks(status).iter().filter(|t| t["jobId"] == job).map(|t| t["step"].as_str().unwrap().to_owned()).collect()
    };
    let mut steps = names(&rig.status("local-demo"), &job);
    steps.sort();
    assert_eq!(
        steps,
        [
            "BOOTSTRAP local-demo-store-1",
            "BOOTSTRAP local-demo-web-1",
            "CONFIGURE local-demo-store-1 store",
            "CONFIGURE local-demo-web-1 web"
        ]
    );

    // restart-services: every service stopped (dependents first), then started.
    let run = rig.cluster(&["restart-services", "local-demo"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let second = pids();
    assert!(second.iter().zip(&first).all(|(a, b)| a != b), "{first:?} {second:?}");
    let t = times(&rig.status("local-demo"));
    after(&t, "STOP local-demo-store-1 store", "STOP local-demo-web-1 web");
    after(&t, "START local-demo-store-1 store", "STOP local-demo-store-1 store");
    after(&t, "START local-demo-web-1 web", "START local-demo-store-1 store");
    assert_eq!(get("127.0.0.1:18301/").unwrap().trim(), "Hello again, served by web-1.local-demo");

    // reconfigure --restart: BOOTSTRAP, STOP, CONFIGURE, START.
    let run = rig.cluster(&["reconfigure", "local-demo", "--restart"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(pids().iter().zip(&second).all(|(a, b)| a != b));
    let t = times(&rig.status("local-demo"));
    after(&t, "STOP local-demo-web-1 web", "BOOTSTRAP local-demo-web-1");
    after(&t, "CONFIGURE local-demo-store-1 store", "STOP local-demo-store-1 store");
    after(&t, "START local-demo-store-1 store", "CONFIGURE local-demo-web-1 web");
    assert_eq!(get("127.0.0.1:18301/").unwrap().trim(), "Hello again, served by web-1.local-demo");

    let down = rig.cluster(&["down", "local-demo"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

/// A spec of `n` nodes running service `svc`, whose actions run `scripts[action]`.
fn spec_with(name: &str, n: u32, actions: &[(&str, &str, &str)]) -> Value {
    let actions: serde_json::Map<String, Value> = actions
        .iter()
        .map(|(action, script, data)| ((*action).to_owned(), json!({"type": "shell", "script": script, "data": data})))
        .collect();
    json!({
        "name": name,
        "provider": {"name": "local"},
        "nodeGroups": [{"name": "n", "count": n, "services": ["svc"]}],
        "services": {"svc": {"actions": actions}}
    })
}

#[test]
fn a_script_failing_once_is_retried_and_the_cluster_comes_up() {
    let rig = ClusterRig::new(json!({}));
    let spec = rig.write_spec(
        "flaky.json",
        &spec_with("flaky", 2, &[("install", "flaky.sh", "install"), ("start", "record.sh", "start")]),
    );
    let up = rig.cluster(&["up", spec.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let status = rig.status("flaky");
    for n in ["flaky-n-1", "flaky-n-2"] {
        let tries = attempts_of(&status, &format!("INSTALL {n} svc"));
        let summary: Vec<_> = tries.iter().map(|t| (t["attempt"].as_u64(), t["status"].as_i64())).collect();
        assert_eq!(summary, [(Some(1), Some(3)), (Some(2), Some(0))], "{n}: {tries:#?}");
        assert!(tries[0]["stderr"].as_str().unwrap().contains("failing on purpose"), "{tries:#?}");
    }
    assert!(up.stderr.contains("FAILED with status 3") && up.stderr.contains("trying again"), "{}", up.stderr);
    let down = rig.cluster(&["down", "flaky"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn a_script_that_always_fails_leaves_the_cluster_incomplete_until_fixed_then_resumes() {
    let rig = ClusterRig::new(json!({}));
    let spec = rig.write_spec(
        "broken.json",
        &spec_with(
            "broken",
            2,
            &[
                ("install", "record.sh", "install"),
                ("configure", "broken.sh", "configure"),
                ("start", "record.sh", "start"),
            ],
        ),
    );
    let up = rig.cluster(&["up", spec.to_str().unwrap(), "--parallel", "1"]);
    assert_eq!(up.code, Some(1), "{}", up.stderr);
    let outcome = &up.json["outcome"];
    assert_eq!(outcome["state"], "incomplete");
    let failed = &outcome["failed"][0];
    assert_eq!(failed["step"], "CONFIGURE svc on broken-n-1", "{outcome:#}");
    assert_eq!((failed["attempts"].as_u64(), failed["status"].as_i64()), (Some(3), Some(4)));
    assert!(failed["stderr"].as_str().unwrap().contains("broken.sh: this script is broken"), "{failed:#}");
    assert!(failed["stdout"].as_str().unwrap().contains("configuring"), "{failed:#}");
    // No new step started after the failure: START never ran.
    let status = rig.status("broken");
    assert!(tasks(&status).iter().all(|t| t["taskName"] != "START"), "{status:#}");
    assert_eq!(status["state"], "incomplete");
    let next = status["report"]["next"].as_str().unwrap();
    assert!(next.contains("cluster up") && next.contains("cluster down broken"), "{next}");
    // The human status shows the failure, its output and what to do.
    let text = rig.command(&["status", "broken"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in
        ["incomplete", "FAILED CONFIGURE svc on broken-n-1 after 3 attempt(s)", "this script is broken", "next:"]
    {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    // Fix the script; `up` again resumes: what finished is not run again (but BOOTSTRAP,
    // idempotent, runs again on nodes with work left, so that fixed scripts are uploaded).
    let finished: Vec<String> = tasks(&status)
        .iter()
        .filter(|t| t["status"] == 0 && !t["step"].as_str().unwrap().starts_with("BOOTSTRAP"))
        .map(|t| t["step"].as_str().unwrap().to_owned())
        .collect();
    assert!(finished.contains(&"INSTALL broken-n-1 svc".to_owned()), "{finished:?}");
    let before = rig.runlog().len();
    std::fs::write(
        rig.scripts.join("broken.sh"),
        "#!/bin/sh\necho \"$LOOM_TASK_ID $1\" >> \"$(dirname \"$0\")/../runlog\"\necho fixed\n",
    )
    .unwrap();
    let up = rig.cluster(&["up", spec.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let status = rig.status("broken");
    assert_eq!(status["state"], "active");
    for step in &finished {
        let ok = attempts_of(&status, step).iter().filter(|t| t["status"] == 0).count();
        assert_eq!(ok, 1, "{step} ran again: {:#?}", attempts_of(&status, step));
    }
    let after_fix: Vec<String> = rig.runlog().into_iter().skip(before).collect();
    for step in finished.iter().filter(|s| s.ends_with(" svc")) {
        let mut parts = step.split(' ');
        let (task, node) = (parts.next().unwrap(), parts.next().unwrap());
        let prefix = format!("{node}.{task}.svc.");
        assert!(!after_fix.iter().any(|l| l.starts_with(&prefix)), "{step} ran again: {after_fix:?}");
    }
    // The fixed script was uploaded (BOOTSTRAP again) and ran, on both nodes.
    assert_eq!(after_fix.iter().filter(|l| l.ends_with(" configure")).count(), 2, "{after_fix:?}");

    let ids: Vec<String> = nodes(&status).iter().map(|n| n["providerid"].as_str().unwrap().to_owned()).collect();
    let down = rig.cluster(&["down", spec.to_str().unwrap()]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert_nothing_left(&rig, &ids, &[]);
}

#[test]
fn down_after_a_failed_install_is_not_failed_by_the_remove_of_what_was_never_installed() {
    let rig = ClusterRig::new(json!({}));
    let actions =
        [("install", "missing.sh", "install"), ("start", "record.sh", "start"), ("remove", "missing.sh", "remove")];
    let spec = rig.write_spec("halfway.json", &spec_with("halfway", 1, &actions));
    let up = rig.cluster(&["up", spec.to_str().unwrap(), "--attempts", "1"]);
    assert_eq!(up.code, Some(1), "{}", up.stderr);
    assert_eq!(up.json["outcome"]["failed"][0]["step"], "INSTALL svc on halfway-n-1", "{:#}", up.json);

    let down = rig.cluster(&["down", "halfway"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    let outcome = &down.json["outcome"];
    assert_eq!(outcome["state"], "terminated", "{outcome:#}");
    let notes: Vec<&str> = outcome["notes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(
        notes.iter().any(|n| n.starts_with("REMOVE svc on halfway-n-1 failed")
            && n.ends_with("not counted as a failure: svc was never installed on halfway-n-1")),
        "{notes:?}"
    );
    // It was tried (it may clean up half an install), and STOP was not: nothing started.
    let status = rig.status("halfway");
    assert!(tasks(&status).iter().any(|t| t["taskName"] == "REMOVE"), "{status:#}");
    assert!(tasks(&status).iter().all(|t| t["taskName"] != "STOP"), "{status:#}");
    assert!(rig.machines_left().is_empty());
}

#[test]
fn credentials_in_the_spec_never_reach_the_output_the_report_or_the_log() {
    let rig = ClusterRig::new(json!({}));
    let mut spec = spec_with("secret", 1, &[("install", "leak.sh", "install")]);
    spec["provider"]["fields"] = json!({"api_user": "me", "api_password": "hunter2-very-secret"});
    spec["attempts"] = json!(1);
    let path = rig.write_spec("secret.json", &spec);
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(1), "{}", up.stderr);
    let failed = &up.json["outcome"]["failed"][0];
    // The script printed the task: the provider's fields are there, the password is not.
    assert!(failed["stdout"].as_str().unwrap().contains("\"api_user\""), "{failed:#}");
    let status = rig.status("secret");
    let text = rig.command(&["status", "secret"]).output().unwrap();
    for (what, out) in [
        ("stdout", up.json.to_string()),
        ("stderr", up.stderr.clone()),
        ("status", status.to_string()),
        ("status text", String::from_utf8_lossy(&text.stdout).into_owned()),
    ] {
        assert!(!out.contains("hunter2-very-secret"), "the password is in {what}:\n{out}");
        assert!(out.contains("[redacted]") || what == "status text" || what == "stderr", "{what}: {out}");
    }
    let down = rig.cluster(&["down", "secret"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
}

#[test]
fn a_confirm_failing_once_is_retried_as_delete_create_confirm() {
    let rig = ClusterRig::new(json!({"failFirst": {"CONFIRM": 1}}));
    let spec = rig.write_spec("confirm.json", &spec_with("confirm", 1, &[("start", "record.sh", "start")]));
    let up = rig.cluster(&["up", spec.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let status = rig.status("confirm");
    let sent: Vec<(String, u64, i64)> = tasks(&status)
        .iter()
        .filter(|t| t["step"].as_str().unwrap().split(' ').next() != Some("BOOTSTRAP"))
        .filter(|t| ["CREATE", "CONFIRM", "DELETE"].contains(&t["taskName"].as_str().unwrap()))
        .map(|t| {
            (t["taskName"].as_str().unwrap().to_owned(), t["attempt"].as_u64().unwrap(), t["status"].as_i64().unwrap())
        })
        .collect();
    let expected: Vec<(String, u64, i64)> =
        [("CREATE", 1, 0), ("CONFIRM", 1, 1), ("DELETE", 2, 0), ("CREATE", 2, 0), ("CONFIRM", 2, 0)]
            .iter()
            .map(|(n, a, s)| ((*n).to_owned(), *a, *s))
            .collect();
    assert_eq!(sent, expected);
    // The first machine was deleted; only the second one is left, and it works.
    assert_eq!(rig.machines_left().len(), 1, "{:?}", rig.machines_left());
    let node = &nodes(&status)[0];
    assert_eq!(rig.machines_left()[0], node["providerid"].as_str().unwrap());
    assert_eq!(attempts_of(&status, "START confirm-n-1 svc")[0]["status"], 0);
    let down = rig.cluster(&["down", "confirm"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn a_supervisor_killed_mid_job_resumes_without_running_a_finished_task_twice() {
    let rig = ClusterRig::new(json!({}));
    // Every CONFIGURE waits for a gate: the supervisor is killed meanwhile.
    let spec = spec_with(
        "killed",
        3,
        &[
            ("install", "record.sh", "install"),
            ("configure", "record.sh", "configure-{n} wait"),
            ("start", "record.sh", "start"),
        ],
    );
    let path = rig.write_spec("killed.json", &spec);
    let mut child = rig
        .command(&["up", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || rig.runlog().iter().filter(|l| l.contains("configure-")).count() == 3),
        "the CONFIGUREs did not start: {:?}",
        rig.runlog()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let status = rig.status("killed");
    assert!(status["interrupted"].as_bool().unwrap(), "{status:#}");
    let interrupted: Vec<String> = tasks(&status)
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| t["taskId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(interrupted.len(), 3, "the three CONFIGUREs were running: {status:#}");
    let done_before: Vec<String> = tasks(&status)
        .iter()
        .filter(|t| t["state"] == "done")
        .map(|t| t["taskId"].as_str().unwrap().to_owned())
        .collect();

    std::fs::write(rig.work.join("gate"), "").unwrap();
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let status = rig.status("killed");
    assert_eq!(status["state"], "active");
    for t in tasks(&status) {
        let id = t["taskId"].as_str().unwrap();
        let sends = t["sends"].as_u64().unwrap();
        if interrupted.iter().any(|i| i == id) {
            assert_eq!(sends, 2, "{id} was interrupted and sent again, with the same id");
        } else {
            assert_eq!(sends, 1, "{id} was sent twice");
        }
    }
    // What had finished did not run again: each finished task id ran once in the scripts.
    let log = rig.runlog();
    for id in &done_before {
        assert!(log.iter().filter(|l| l.starts_with(&format!("{id} "))).count() <= 1, "{id} ran twice: {log:#?}");
    }
    for step in ["INSTALL", "START"] {
        assert_eq!(log.iter().filter(|l| l.contains(&format!(".{step}."))).count(), 3, "{log:#?}");
    }
    let ids: Vec<String> = nodes(&status).iter().map(|n| n["providerid"].as_str().unwrap().to_owned()).collect();
    let down = rig.cluster(&["down", "killed"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert_nothing_left(&rig, &ids, &[]);
}

/// README's first command: the example script, as a user runs it (but with the debug
/// build the tests already made, and a journal of its own).
#[test]
fn the_readme_example_script_brings_the_cluster_up_and_down() {
    let data = loom_e2e::tempdir();
    let script = loom_e2e::workspace().join("examples/local-cluster.sh");
    let run = |arg: &str| {
        let mut cmd = std::process::Command::new(&script);
        cmd.arg(arg).env("LOOM_BUILD_PROFILE", "debug").env("LOOM_DATA_DIR", data.path());
        loom_e2e::run_with_input(cmd, "", Duration::from_secs(600))
    };
    loom_e2e::bin_dir();
    let up = run("up");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(up.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&up.stderr));
    for line in [
        "http://127.0.0.1:18100/greeting    -> Hello from a Loom cluster",
        "http://127.0.0.1:18101/            -> Hello from a Loom cluster, served by web-1.local-demo",
        "http://127.0.0.1:18102/            -> Hello from a Loom cluster, served by web-2.local-demo",
        "Take it down with: examples/local-cluster.sh down",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    let down = run("down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(String::from_utf8_lossy(&down.stdout).contains("cluster local-demo: terminated"));
    for port in [18100, 18101, 18102] {
        assert!(http_get(&format!("127.0.0.1:{port}")).is_err(), "port {port} still answers");
    }
}

#[test]
fn ten_local_machines_come_up_in_one_command() {
    let rig = ClusterRig::new(json!({}));
    let spec = rig.write_spec("ten.json", &ClusterRig::example(28100, 9));
    let up = rig.cluster(&["up", spec.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let status = rig.status("local-demo");
    assert_eq!(nodes(&status).len(), 10);
    let urls = endpoints(&status);
    assert_eq!(urls.len(), 10);
    for u in &urls[1..] {
        assert!(get(u).unwrap().starts_with("Hello from a Loom cluster, served by web-"), "{u}");
    }
    let ids: Vec<String> = nodes(&status).iter().map(|n| n["providerid"].as_str().unwrap().to_owned()).collect();
    let down = rig.cluster(&["down", "local-demo"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert_nothing_left(&rig, &ids, &urls);
}

#[test]
fn a_bad_spec_or_a_missing_plugin_is_refused_before_anything_is_created() {
    let rig = ClusterRig::new(json!({}));
    let mut spec = ClusterRig::example(28300, 1);
    spec["nodeGroups"][0]["count"] = json!(0);
    spec["services"]["web"]["requires"] = json!(["stor"]);
    let path = rig.write_spec("bad.json", &spec);
    let run = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(2));
    let file = path.display().to_string();
    for line in [
        format!("{file}: nodeGroups[0].count: must be an integer from 1 to 1000"),
        format!("{file}: services.web.requires[0]: no service \"stor\" in services"),
    ] {
        assert!(run.stderr.contains(&line), "{line:?} not in:\n{}", run.stderr);
    }
    let mut spec = ClusterRig::example(28300, 1);
    spec["provider"]["name"] = json!("nimbus");
    spec["services"]["web"]["actions"]["start"]["type"] = json!("chef-solo");
    let path = rig.write_spec("missing.json", &spec);
    let run = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    for line in [
        "provider.name: no provider plugin named \"nimbus\" is registered (registered providers: local)",
        "services.web.actions.start.type: no automator plugin named \"chef-solo\" is registered",
    ] {
        assert!(run.stderr.contains(line), "{line:?} not in:\n{}", run.stderr);
    }
    assert!(rig.machines_left().is_empty());
    let list = rig.command(&["list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).starts_with("no clusters"), "{list:?}");
}

#[test]
fn the_daemon_runs_cluster_operations_over_its_api_and_resumes_them_after_a_crash() {
    let rig = ClusterRig::new(json!({}));
    let mut serve = Serve::start(&rig.plugins, "");
    let spec = ClusterRig::example(18400, 1);
    let (code, body) = serve.request("POST", "/v1/clusters?wait=true", Some(&spec.to_string()));
    assert_eq!(code, 200, "{body:#}\n{}", serve.log_text());
    assert_eq!(body["outcome"]["state"], "active", "{body:#}");
    let (code, cluster) = serve.request("GET", "/v1/clusters/local-demo", None);
    assert_eq!(code, 200);
    assert_eq!(endpoints(&cluster).len(), 2, "{cluster:#}");
    assert_eq!(get("127.0.0.1:18401/").unwrap().trim(), "Hello from a Loom cluster, served by web-1.local-demo");
    let (_, list) = serve.request("GET", "/v1/clusters", None);
    assert_eq!(list["clusters"][0]["name"], "local-demo");
    // Every task the operation sent is counted, with the operation and the cluster's state.
    let (_, status) = serve.request("GET", "/v1/clusters/local-demo?tasks=true", None);
    let metrics = serve.metrics();
    assert_eq!(loom_e2e::metric_sum(&metrics, "loom_tasks_total") as usize, tasks(&status).len(), "{metrics}");
    for line in [
        "loom_tasks_total{plugin=\"local\",task=\"CREATE\",outcome=\"success\"} 2",
        "loom_tasks_total{plugin=\"shell\",task=\"BOOTSTRAP\",outcome=\"success\"} 2",
        "loom_cluster_operations_total{operation=\"up\",outcome=\"success\"} 1",
        "loom_clusters{state=\"active\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    // Refusals: a bad spec, an unknown cluster, a cluster that is busy.
    let (code, body) = serve.request("POST", "/v1/clusters", Some(r#"{"name": "x", "nodeGroups": []}"#));
    assert_eq!(code, 400);
    let problems = body["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p == "provider: is missing"), "{body:#}");
    assert_eq!(serve.request("GET", "/v1/clusters/nope", None).0, 404);
    assert_eq!(serve.request("DELETE", "/v1/clusters/nope", None).0, 404);
    let (code, body) = serve.request("DELETE", "/v1/clusters/local-demo", None);
    assert_eq!((code, body["operation"].as_str()), (202, Some("down")), "{body:#}");
    let (code, body) = serve.request("POST", "/v1/clusters/local-demo/restart-services", None);
    assert_eq!(code, 409, "{body:#}");
    assert!(body["error"].as_str().unwrap().contains("is busy"), "{body:#}");
    assert!(
        wait_until(Duration::from_secs(120), || serve.request("GET", "/v1/clusters/local-demo", None).1["state"]
            == "terminated"),
        "down did not finish: {}",
        serve.log_text()
    );
    assert!(rig.machines_left().is_empty());

    // A daemon killed in the middle of `up` resumes it when it starts again.
    let gated = spec_with(
        "resumed",
        2,
        &[("install", "record.sh", "install"), ("configure", "record.sh", "configure-{n} wait")],
    );
    let (code, body) = serve.request("POST", "/v1/clusters", Some(&gated.to_string()));
    assert_eq!(code, 202, "{body:#}");
    assert!(
        wait_until(Duration::from_secs(120), || rig.runlog().iter().filter(|l| l.contains("configure-")).count() == 2),
        "{:?}",
        rig.runlog()
    );
    serve.kill9();
    std::fs::write(rig.work.join("gate"), "").unwrap();
    serve.spawn();
    assert!(
        wait_until(Duration::from_secs(120), || serve.request("GET", "/v1/clusters/resumed", None).1["state"]
            == "active"),
        "not resumed: {}",
        serve.log_text()
    );
    assert!(serve.log_text().contains("resuming up after a restart"), "{}", serve.log_text());
    let (_, status) = serve.request("GET", "/v1/clusters/resumed?tasks=true", None);
    let installs = tasks(&status).iter().filter(|t| t["taskName"] == "INSTALL").count();
    assert_eq!(installs, 2, "INSTALL ran once per node: {status:#}");
    let (code, _) = serve.request("DELETE", "/v1/clusters/resumed?wait=true", None);
    assert_eq!(code, 200);
    assert!(rig.machines_left().is_empty());
}

/// Puts a recorder in front of the `local` and `shell` plugins of `rig`: every line the
/// supervisor sends either of them (the handshake, each task) is appended to
/// `<plugins>/<name>.received`. Returns a count of the tasks received so far.
fn record_tasks(rig: &ClusterRig) -> impl Fn() -> usize + '_ {
    use std::os::unix::fs::PermissionsExt;
    for (kind, name) in [("providers", "local"), ("automators", "shell")] {
        let path = rig.plugins.path().join(kind).join(name).join(format!("{name}.json"));
        let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let real = manifest[name]["executable"].as_str().unwrap().to_owned();
        let log = rig.plugins.path().join(format!("{name}.received"));
        let wrapper = rig.plugins.path().join(format!("record-{name}"));
        std::fs::write(&wrapper, format!("#!/bin/sh\ntee -a '{}' | '{real}' \"$@\"\n", log.display())).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        manifest[name]["executable"] = json!(wrapper);
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    }
    move || {
        ["local", "shell"]
            .iter()
            .map(|n| std::fs::read_to_string(rig.plugins.path().join(format!("{n}.received"))).unwrap_or_default())
            .map(|text| text.lines().filter(|l| l.contains("\"taskName\"")).count())
            .sum()
    }
}

/// The steps of a plan (`cluster plan --json`), in order.
fn plan_steps(plan: &Value) -> Vec<String> {
    plan["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_plan_sends_nothing_changes_nothing_and_is_what_up_then_runs() {
    let rig = ClusterRig::new(json!({}));
    let received = record_tasks(&rig);
    let mut spec = ClusterRig::example(18500, 2);
    let path = rig.write_spec("demo.json", &spec);
    let file = path.to_str().unwrap();

    // Before the cluster exists: plan and up --dry-run agree; down has nothing to plan.
    let plan = rig.cluster(&["plan", file, "--plugins-dir", rig.plugins.path().to_str().unwrap(), "--json"]);
    assert_eq!(plan.code, Some(0), "{}", plan.stderr);
    let plan = plan.json;
    assert_eq!((plan["operation"].as_str(), plan["ok"].as_bool()), (Some("up"), Some(true)), "{plan:#}");
    assert_eq!(plan_steps(&plan).len(), 18);
    assert!(plan["changes"]["since"].is_null());
    for check in ["plugins", "scripts", "credentials", "placeholders"] {
        assert!(plan["checks"].as_array().unwrap().iter().any(|c| c["check"] == check), "no {check}: {plan:#}");
    }
    let dry = rig.cluster(&["up", file, "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert_eq!(dry.json["steps"], plan["steps"]);
    let down = rig.cluster(&["down", "local-demo", "--dry-run"]);
    assert_eq!(down.code, Some(2), "{}", down.stderr);
    assert!(down.stderr.contains("no cluster named \"local-demo\""), "{}", down.stderr);
    assert_eq!(received(), 0, "a plugin received a task");
    let list = rig.cluster(&["list", "--json"]);
    assert_eq!(list.json["clusters"], json!([]), "{:#}", list.json);
    assert!(rig.machines_left().is_empty());

    // The real up runs the plan's steps, each after those the plan says it waits for.
    let up = rig.cluster(&["up", file]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    assert!(received() >= 18, "the recorder saw {} tasks", received());
    let status = rig.status("local-demo");
    let job = up.json["outcome"]["jobId"].as_str().unwrap();
    let ran: std::collections::BTreeSet<String> =
        tasks(&status).iter().filter(|t| t["jobId"] == job).map(|t| t["step"].as_str().unwrap().to_owned()).collect();
    let planned: std::collections::BTreeSet<String> = plan_steps(&plan).into_iter().collect();
    assert_eq!(ran, planned);
    let t = times(&status);
    let steps = plan_steps(&plan);
    for (i, step) in plan["steps"].as_array().unwrap().iter().enumerate() {
        for a in step["after"].as_array().unwrap() {
            let a = a.as_u64().unwrap() as usize;
            assert!(a < i && plan["steps"][a]["wave"].as_u64() < step["wave"].as_u64(), "{step:#}");
            after(&t, &steps[i], &steps[a]);
        }
    }

    // Planning every operation on the active cluster sends nothing and changes nothing.
    let sent = received();
    let before = rig.status("local-demo");
    spec["config"]["greeting"] = json!("a greeting that is not shown");
    spec["nodeGroups"][1]["count"] = json!(3);
    let changed = rig.write_spec("changed.json", &spec);
    let run = rig.cluster(&["plan", changed.to_str().unwrap(), "--plugins-dir", rig.plugins.path().to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let text = String::from_utf8_lossy(
        &rig.command(&["plan", changed.to_str().unwrap(), "--plugins-dir", rig.plugins.path().to_str().unwrap()])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(text.starts_with("cluster local-demo: up ("), "{text}");
    assert!(text.contains("\nnode local-demo-web-3 (new)\n  CREATE[1] -> CONFIRM[2] -> BOOTSTRAP[3]\n"), "{text}");
    assert!(text.contains("\n  + node local-demo-web-3\n"), "{text}");
    assert!(text.contains("\n  ~ node local-demo-web-1\n      config: ~ cluster.greeting\n"), "{text}");
    assert!(!text.contains("not shown"), "{text}");
    for (op, expect) in [
        (vec!["down", "local-demo", "--dry-run"], "DELETE local-demo-web-2"),
        (vec!["down", "local-demo", "--dry-run", "--force"], "DELETE local-demo-store-1"),
        (vec!["reconfigure", changed.to_str().unwrap(), "--dry-run", "--restart"], "CONFIGURE local-demo-web-1 web"),
        (vec!["restart-services", "local-demo", "--dry-run"], "STOP local-demo-store-1 store"),
    ] {
        let run = rig.cluster(&op);
        assert_eq!(run.code, Some(0), "{op:?}: {}", run.stderr);
        assert!(plan_steps(&run.json).iter().any(|s| s == expect), "{op:?}: {:#}", run.json);
    }
    // A check that fails: exit 1, the script named.
    spec["services"]["web"]["actions"]["start"]["script"] = json!("missing.sh");
    let broken = rig.write_spec("broken.json", &spec);
    let run = rig.cluster(&["up", broken.to_str().unwrap(), "--dry-run"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let failed: Vec<&Value> =
        run.json["checks"].as_array().unwrap().iter().filter(|c| c["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{:#}", run.json);
    assert!(failed[0]["message"].as_str().unwrap().starts_with("services.web.actions.start: missing.sh is not in "));
    assert_eq!(received(), sent, "a plugin received a task");
    assert_eq!(rig.status("local-demo"), before);

    let down = rig.cluster(&["down", "local-demo"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn the_api_plans_without_sending_anything() {
    let rig = ClusterRig::new(json!({}));
    let serve = Serve::start(&rig.plugins, "");
    let spec = ClusterRig::example(18600, 1).to_string();
    let (code, plan) = serve.request("POST", "/v1/clusters/local-demo/plan", Some(&spec));
    assert_eq!(code, 200, "{plan:#}");
    assert_eq!((plan["ok"].as_bool(), plan_steps(&plan).len()), (Some(true), 12), "{plan:#}");
    assert_eq!(serve.request("POST", "/v1/clusters/local-demo/plan?op=down", None).0, 404);
    assert_eq!(serve.request("POST", "/v1/clusters/other/plan", Some(&spec)).0, 400);
    assert_eq!(serve.request("GET", "/v1/clusters", None).1["clusters"], json!([]));
    assert_eq!(loom_e2e::metric_sum(&serve.metrics(), "loom_tasks_total"), 0.0);

    let (code, body) = serve.request("POST", "/v1/clusters?wait=true", Some(&spec));
    assert_eq!(code, 200, "{body:#}");
    let (_, before) = serve.request("GET", "/v1/clusters/local-demo?tasks=true", None);
    let sent = loom_e2e::metric_sum(&serve.metrics(), "loom_tasks_total");
    let (code, plan) = serve.request("POST", "/v1/clusters/local-demo/plan?op=down&force=true", None);
    assert_eq!(code, 200, "{plan:#}");
    assert_eq!(plan_steps(&plan), ["DELETE local-demo-store-1", "DELETE local-demo-web-1"]);
    assert_eq!(plan["force"], true);
    let (code, plan) = serve.request("POST", "/v1/clusters/local-demo/plan?op=reconfigure&restart=true", None);
    assert_eq!((code, plan["ok"].as_bool()), (200, Some(true)), "{plan:#}");
    assert_eq!(plan["changes"]["spec"], json!([]));
    assert_eq!(serve.request("POST", "/v1/clusters/local-demo/plan?op=sideways", None).0, 400);
    assert_eq!(loom_e2e::metric_sum(&serve.metrics(), "loom_tasks_total"), sent);
    assert_eq!(serve.request("GET", "/v1/clusters/local-demo?tasks=true", None).1, before);

    let (code, _) = serve.request("DELETE", "/v1/clusters/local-demo?wait=true", None);
    assert_eq!(code, 200);
    assert!(rig.machines_left().is_empty());
}

/// The runs of job `job` (`j2`) in the run log, as `(node, task)`, in the order they
/// ran.
fn runs_of(rig: &ClusterRig, job: &str) -> Vec<(String, String)> {
    rig.runlog()
        .iter()
        .filter_map(|l| l.split(' ').next())
        .filter_map(|id| {
            let mut parts = id.split('.');
            let (node, task) = (parts.next()?, parts.next()?);
            id.rsplit('.')
                .next()
                .is_some_and(|tail| tail.starts_with(&format!("{job}a")))
                .then(|| (node.to_owned(), task.to_owned()))
        })
        .collect()
}

/// The ids in the `config.nodes` a node's last `nodes.sh` run saw.
fn nodes_seen(rig: &ClusterRig, node: &str) -> Vec<String> {
    std::fs::read_to_string(rig.work.join(format!("nodes-{node}")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn providerids(status: &Value) -> HashMap<String, String> {
    nodes(status)
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?.to_owned(), n["providerid"].as_str()?.to_owned())))
        .collect()
}

const RECORDED: [(&str, &str, &str); 5] = [
    ("install", "record.sh", "install"),
    ("configure", "nodes.sh", "configure"),
    ("start", "record.sh", "start"),
    ("stop", "record.sh", "stop"),
    ("remove", "record.sh", "remove"),
];

#[test]
fn a_spec_with_fewer_nodes_takes_the_dropped_node_away_and_reconfigures_the_rest() {
    let rig = ClusterRig::new(json!({}));
    let path = rig.write_spec("shrink.json", &spec_with("shrink", 3, &RECORDED));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let ids = providerids(&rig.status("shrink"));
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(nodes_seen(&rig, "shrink-n-1"), ["shrink-n-1", "shrink-n-2", "shrink-n-3"]);
    let gone = ids["shrink-n-3"].clone();
    assert!(rig.machines_left().contains(&gone));

    rig.write_spec("shrink.json", &spec_with("shrink", 2, &RECORDED));
    // Without --remove-nodes: refused, naming the node and the flag; nothing is deleted.
    let refused = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("(shrink-n-3)") && refused.stderr.contains("--remove-nodes"), "{}", refused.stderr);
    assert!(!refused.stderr.contains("renamed"), "{}", refused.stderr);
    assert!(rig.machines_left().contains(&gone));
    assert_eq!(nodes(&rig.status("shrink")).len(), 3);
    let refused = rig.cluster(&["reconfigure", path.to_str().unwrap()]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(rig.machines_left().contains(&gone));
    let up = rig.cluster(&["up", path.to_str().unwrap(), "--remove-nodes"]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    assert_eq!(up.json["outcome"]["state"], "active", "{:#}", up.json);
    // The dropped node's services were stopped and removed, then its machine deleted.
    let runs = runs_of(&rig, "j2");
    let at = |node: &str, task: &str| runs.iter().position(|(n, t)| n == node && t == task);
    let (stop, remove) = (at("shrink-n-3", "STOP"), at("shrink-n-3", "REMOVE"));
    assert!(stop.is_some() && remove.is_some() && stop < remove, "{runs:?}");
    assert!(!rig.machines_left().contains(&gone), "{:?}", rig.machines_left());
    assert!(machine_processes(&gone).is_empty(), "{:?}", machine_processes(&gone));
    // The others were configured again, after the DELETE, with config.nodes without it.
    for n in ["shrink-n-1", "shrink-n-2"] {
        assert!(at(n, "CONFIGURE") > remove, "{runs:?}");
        assert_eq!(nodes_seen(&rig, n), ["shrink-n-1", "shrink-n-2"]);
    }
    assert!(!runs.iter().any(|(n, t)| n != "shrink-n-3" && (t == "STOP" || t == "INSTALL")), "{runs:?}");
    let status = rig.status("shrink");
    let t = times(&status);
    after(&t, "BOOTSTRAP shrink-n-1", "DELETE shrink-n-3");
    // The cluster now has two nodes; the same spec again has nothing to do.
    assert_eq!(status["state"], "active");
    let left: Vec<String> = nodes(&status).iter().filter_map(|n| n["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(left, ["shrink-n-1", "shrink-n-2"], "{status:#}");
    let again = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!((again.code, again.json["outcome"]["steps"].as_u64()), (Some(0), Some(0)), "{:#}", again.json);

    // Growing again makes a new third node; its BOOTSTRAP sees every node.
    rig.write_spec("shrink.json", &spec_with("shrink", 3, &RECORDED));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    assert_eq!(nodes_seen(&rig, "shrink-n-3"), ["shrink-n-1", "shrink-n-2", "shrink-n-3"]);
    // reconfigure with a smaller spec takes a node away too.
    let third = providerids(&rig.status("shrink"))["shrink-n-3"].clone();
    rig.write_spec("shrink.json", &spec_with("shrink", 2, &RECORDED));
    let run = rig.cluster(&["reconfigure", path.to_str().unwrap(), "--remove-nodes"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(!rig.machines_left().contains(&third), "{:?}", rig.machines_left());
    assert_eq!(nodes_seen(&rig, "shrink-n-2"), ["shrink-n-1", "shrink-n-2"]);
    assert_eq!(nodes(&rig.status("shrink")).len(), 2);
    let down = rig.cluster(&["down", "shrink"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn limit_picks_the_nodes_an_operation_touches() {
    let rig = ClusterRig::new(json!({}));
    let path = rig.write_spec("limited.json", &spec_with("limited", 2, &RECORDED));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);

    let run = rig.cluster(&["restart-services", "limited", "--limit", "limited-n-2"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let runs = runs_of(&rig, "j2");
    let expected = [("limited-n-2", "STOP"), ("limited-n-2", "START")].map(|(n, t)| (n.to_owned(), t.to_owned()));
    assert_eq!(runs, expected);

    // An unknown name: nothing is sent, and the error names it.
    let run = rig.cluster(&["reconfigure", "limited", "--limit", "limited-n-2,nosuch"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("\"nosuch\""), "{}", run.stderr);

    // A service: its CONFIGURE on every node that has it, no BOOTSTRAP.
    let run = rig.cluster(&["reconfigure", "limited", "--limit", "svc"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let job = run.json["outcome"]["jobId"].as_str().unwrap().rsplit('.').next().unwrap().to_owned();
    let mut runs = runs_of(&rig, &job);
    runs.sort();
    let expected =
        [("limited-n-1", "CONFIGURE"), ("limited-n-2", "CONFIGURE")].map(|(n, t)| (n.to_owned(), t.to_owned()));
    assert_eq!(runs, expected);

    // down of one node: its machine goes, the cluster stays active with the other.
    let ids = providerids(&rig.status("limited"));
    let down = rig.cluster(&["down", "limited", "--limit", "limited-n-1"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert_eq!(down.json["outcome"]["state"], "active", "{:#}", down.json);
    assert_eq!(rig.machines_left(), [ids["limited-n-2"].clone()]);
    let status = rig.status("limited");
    assert_eq!(status["state"], "active");
    // `up` makes it again (it is still in the spec).
    let up = rig.cluster(&["up", path.to_str().unwrap(), "--limit", "limited-n-1"]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    assert_eq!(rig.machines_left().len(), 2);
    let down = rig.cluster(&["down", "limited"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn a_rolling_restart_goes_batch_by_batch_and_stops_at_a_failure() {
    let rig = ClusterRig::new(json!({}));
    let actions = [("start", "fails-on.sh", "start"), ("stop", "record.sh", "stop")];
    let path = rig.write_spec("rolling.json", &spec_with("rolling", 3, &actions));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let pair = |n: u32, t: &str| (format!("rolling-n-{n}"), t.to_owned());

    let run = rig.cluster(&["restart-services", "rolling", "--rolling"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected: Vec<_> = (1..=3).flat_map(|n| [pair(n, "STOP"), pair(n, "START")]).collect();
    assert_eq!(runs_of(&rig, "j2"), expected);

    // Batches of two: both STOPs of the first batch come before its STARTs, and the
    // third node only after.
    let run = rig.cluster(&["restart-services", "rolling", "--rolling", "--batch", "2"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let runs = runs_of(&rig, "j3");
    assert_eq!(runs.len(), 6, "{runs:?}");
    let mut first: Vec<_> = runs[..4].to_vec();
    first.sort();
    assert_eq!(first, [pair(1, "START"), pair(1, "STOP"), pair(2, "START"), pair(2, "STOP")]);
    assert!(runs[..2].iter().all(|(_, t)| t == "STOP"), "{runs:?}");
    assert_eq!(runs[4..], [pair(3, "STOP"), pair(3, "START")]);

    // START fails on the second node: the third is not touched.
    std::fs::write(rig.work.join("fail-rolling-n-2"), "").unwrap();
    let run = rig.cluster(&["restart-services", "rolling", "--rolling", "--attempts", "1"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let outcome = &run.json["outcome"];
    assert_eq!(outcome["failed"][0]["step"], "START svc on rolling-n-2", "{outcome:#}");
    assert_eq!(outcome["state"], "incomplete");
    let notes: Vec<&str> = outcome["notes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(
        notes.iter().any(|n| n.starts_with("rolling restart stopped in batch 2 of 3 (nodes rolling-n-2)")),
        "{notes:?}"
    );
    assert_eq!(runs_of(&rig, "j4"), [pair(1, "STOP"), pair(1, "START"), pair(2, "STOP"), pair(2, "START")]);
    std::fs::remove_file(rig.work.join("fail-rolling-n-2")).unwrap();
    let down = rig.cluster(&["down", "rolling"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn the_api_takes_limit_rolling_and_batch_and_a_smaller_spec() {
    let rig = ClusterRig::new(json!({}));
    let serve = Serve::start(&rig.plugins, "");
    let spec = |n| spec_with("api", n, &RECORDED).to_string();
    let (code, body) = serve.request("POST", "/v1/clusters?wait=true", Some(&spec(3)));
    assert_eq!(code, 200, "{body:#}\n{}", serve.log_text());
    let pair = |n: u32, t: &str| (format!("api-n-{n}"), t.to_owned());

    let (code, body) = serve.request("POST", "/v1/clusters/api/restart-services?wait=true&limit=api-n-2", None);
    assert_eq!((code, &body["outcome"]["state"]), (200, &json!("active")), "{body:#}");
    assert_eq!(runs_of(&rig, "j2"), [pair(2, "STOP"), pair(2, "START")]);

    let path = "/v1/clusters/api/restart-services?wait=true&rolling=true&batch=2&limit=api-n-1&limit=api-n-2,api-n-3";
    let (code, body) = serve.request("POST", path, None);
    assert_eq!(code, 200, "{body:#}");
    let runs = runs_of(&rig, "j3");
    assert_eq!(runs[4..], [pair(3, "STOP"), pair(3, "START")], "{runs:?}");

    let (code, body) = serve.request("DELETE", "/v1/clusters/api?limit=nosuch", None);
    assert_eq!(code, 400, "{body:#}");
    assert!(body["problems"][0].as_str().unwrap().contains("\"nosuch\""), "{body:#}");
    let (code, _) = serve.request("POST", "/v1/clusters/api/restart-services?rolling=true&batch=0", None);
    assert_eq!(code, 400);

    // A smaller spec: refused without removeNodes=true (nothing deleted), then the third
    // node goes.
    let (code, body) = serve.request("POST", "/v1/clusters?wait=true", Some(&spec(2)));
    assert_eq!(code, 400, "{body:#}");
    let problem = body["problems"][0].as_str().unwrap_or_default();
    assert!(problem.contains("(api-n-3)") && problem.contains("removeNodes=true"), "{body:#}");
    assert_eq!(rig.machines_left().len(), 3);
    let (code, body) = serve.request("POST", "/v1/clusters/api/plan?op=up", Some(&spec(2)));
    assert_eq!((code, &body["ok"]), (200, &json!(false)), "{body:#}");
    assert!(body["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "api-n-3" && n["status"] == "removed"));
    let (code, body) = serve.request("POST", "/v1/clusters?wait=true&removeNodes=true", Some(&spec(2)));
    assert_eq!((code, &body["outcome"]["state"]), (200, &json!("active")), "{body:#}");
    assert_eq!(nodes(&body["cluster"]).len(), 2, "{body:#}");
    assert_eq!(rig.machines_left().len(), 2);
    assert_eq!(nodes_seen(&rig, "api-n-1"), ["api-n-1", "api-n-2"]);
    let (code, _) = serve.request("DELETE", "/v1/clusters/api?wait=true", None);
    assert_eq!(code, 200);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn a_scale_down_that_fails_keeps_the_node_in_the_cluster_until_it_is_run_again() {
    let rig = ClusterRig::new(json!({}));
    let actions = [("start", "record.sh", "start"), ("stop", "fails-on.sh", "stop"), ("configure", "nodes.sh", "c")];
    let path = rig.write_spec("stuck.json", &spec_with("stuck", 2, &actions));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let second = providerids(&rig.status("stuck"))["stuck-n-2"].clone();

    std::fs::write(rig.work.join("fail-stuck-n-2"), "").unwrap();
    rig.write_spec("stuck.json", &spec_with("stuck", 1, &actions));
    let up = rig.cluster(&["up", path.to_str().unwrap(), "--attempts", "1", "--remove-nodes"]);
    assert_eq!(up.code, Some(1), "{}", up.stderr);
    assert_eq!(up.json["outcome"]["failed"][0]["step"], "STOP svc on stuck-n-2", "{:#}", up.json);
    // Still there, and still in the cluster's spec.
    assert!(rig.machines_left().contains(&second));
    let status = rig.status("stuck");
    assert_eq!(status["state"], "incomplete");
    assert_eq!(nodes(&status).len(), 2, "{status:#}");

    std::fs::remove_file(rig.work.join("fail-stuck-n-2")).unwrap();
    let up = rig.cluster(&["up", path.to_str().unwrap(), "--remove-nodes"]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    assert!(!rig.machines_left().contains(&second), "{:?}", rig.machines_left());
    assert_eq!(nodes(&rig.status("stuck")).len(), 1);
    assert_eq!(nodes_seen(&rig, "stuck-n-1"), ["stuck-n-1"]);
    let down = rig.cluster(&["down", "stuck"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

/// `spec_with`'s spec whose node groups are `groups` (name, count), each running `svc`.
fn spec_of_groups(name: &str, groups: &[(&str, u32)], actions: &[(&str, &str, &str)]) -> Value {
    let mut spec = spec_with(name, 1, actions);
    spec["nodeGroups"] =
        groups.iter().map(|(g, n)| json!({"name": g, "count": n, "services": ["svc"]})).collect::<Vec<_>>().into();
    spec
}

#[test]
fn a_renamed_group_is_refused_and_its_machines_stay() {
    let rig = ClusterRig::new(json!({}));
    let path = rig.write_spec("renamed.json", &spec_of_groups("renamed", &[("web", 2)], &RECORDED));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    let before = rig.machines_left();
    assert_eq!(before.len(), 2);

    rig.write_spec("renamed.json", &spec_of_groups("renamed", &[("frontend", 2)], &RECORDED));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(2), "{}", up.stderr);
    for part in
        ["(renamed-web-1, renamed-web-2)", "--remove-nodes", "node group web is no longer in the spec", "renamed"]
    {
        assert!(up.stderr.contains(part), "{part}: {}", up.stderr);
    }
    assert_eq!(rig.machines_left(), before);
    // The plan shows what would go, and fails its check.
    let plan = rig.cluster(&["plan", path.to_str().unwrap()]);
    assert_eq!(plan.code, Some(1), "{}", plan.stderr);
    let down = rig.cluster(&["down", "renamed"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty());
}

#[test]
fn a_scale_down_with_a_scale_up_that_fails_can_still_be_taken_down() {
    let rig = ClusterRig::new(json!({}));
    let actions = [("install", "fails-on.sh", "install"), ("configure", "nodes.sh", "c")];
    let path = rig.write_spec("mixed.json", &spec_of_groups("mixed", &[("a", 2)], &actions));
    let up = rig.cluster(&["up", path.to_str().unwrap()]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);

    // Drop mixed-a-2, add mixed-b-1, whose INSTALL fails.
    std::fs::write(rig.work.join("fail-mixed-b-1"), "").unwrap();
    rig.write_spec("mixed.json", &spec_of_groups("mixed", &[("a", 1), ("b", 1)], &actions));
    let up = rig.cluster(&["up", path.to_str().unwrap(), "--attempts", "1", "--remove-nodes"]);
    assert_eq!(up.code, Some(1), "{}", up.stderr);
    assert_eq!(up.json["outcome"]["failed"][0]["step"], "INSTALL svc on mixed-b-1", "{:#}", up.json);
    assert_eq!(rig.machines_left().len(), 2, "mixed-a-1 and mixed-b-1");
    // The new node is in the cluster while the scale-down is not done.
    let status = rig.status("mixed");
    let ids = providerids(&status);
    assert!(ids.contains_key("mixed-b-1"), "{status:#}");

    let down = rig.cluster(&["down", "mixed"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(rig.machines_left().is_empty(), "{:?}", rig.machines_left());
}

/// `loom-provisioner cluster <args>` as a client of a daemon (no journal or plugins of its
/// own): exit code, stdout, stderr.
fn cluster_client<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(loom_e2e::provisioner());
    cmd.arg("cluster").args(args).env_remove("LOOM_API").env_remove("LOOM_TOKEN_FILE").envs(env.iter().copied());
    let out = loom_e2e::run_with_input(cmd, "", Duration::from_secs(300));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn cluster_commands_with_api_run_on_the_daemon() {
    let rig = ClusterRig::new(json!({}));
    let token = rig.plugins.file("token");
    std::fs::write(&token, "cluster-api-token-0123456789\n").unwrap();
    loom_e2e::chmod(&token, 0o600);
    let serve = Serve::start(&rig.plugins, &format!("token_file = {:?}", token.display().to_string()));
    let spec = rig.write_spec(
        "viaapi.json",
        &spec_with(
            "viaapi",
            1,
            &[("install", "record.sh", "install"), ("start", "record.sh", "start"), ("stop", "record.sh", "stop")],
        ),
    );
    let token = token.to_str().unwrap();
    let api = ["--api", serve.url.as_str(), "--token-file", token];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(&api).map(|s| (*s).to_owned()).collect() };

    let (code, out, err) = cluster_client(&with(&["up", spec.to_str().unwrap(), "--json"]), &[]);
    assert_eq!(code, Some(0), "{out}\n{err}\n{}", serve.log_text());
    let up: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((up["outcome"]["operation"].as_str(), up["outcome"]["state"].as_str()), (Some("up"), Some("active")));
    assert!(rig.machines_left().len() == 1, "the daemon's local provider made the machine");

    let (code, out, err) = cluster_client(&with(&["status", "viaapi"]), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("cluster viaapi: active\n") && out.contains("viaapi-n-1"), "{out}");

    // A plan over the API sends nothing (the run log below has no extra STOP or START).
    let (code, out, err) = cluster_client(&with(&["restart-services", "viaapi", "--dry-run", "--json"]), &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["ok"], true, "{plan:#}");

    let (code, out, err) = cluster_client(&with(&["restart-services", "viaapi"]), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("cluster viaapi: active\n"), "{out}");
    assert!(err.contains("restart-services") && err.contains(", 0 failed, 0 not run"), "{err}");
    // Its steps as they ran on the daemon, from the daemon's events, as the local command shows them.
    for step in ["STOP", "START"] {
        assert!(err.contains(&format!("viaapi-n-1: {step} ")) && err.contains(" ok in "), "{step}: {err}");
    }
    let runs: Vec<String> = rig.runlog().iter().filter_map(|l| l.split(' ').nth(1).map(str::to_owned)).collect();
    assert_eq!(runs, ["install", "start", "stop", "start"], "{:?}", rig.runlog());

    // A wrong token: the daemon's message with its status, and exit 2; nothing was done.
    let bad = rig.plugins.file("bad-token");
    std::fs::write(&bad, "not-the-token-0123456789\n").unwrap();
    let (code, _, err) =
        cluster_client(&["down", "viaapi", "--api", &serve.url, "--token-file", bad.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("the daemon at {} answered 401: a bearer token is required", serve.url)), "{err}");
    assert!(!err.contains("not-the-token"), "{err}");

    // $LOOM_API and $LOOM_TOKEN_FILE in place of the flags.
    let env = [("LOOM_API", serve.url.as_str()), ("LOOM_TOKEN_FILE", token)];
    let (code, out, err) = cluster_client(&["list"], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().any(|l| l.starts_with("viaapi ") && l.ends_with(" active")), "{out}");
    let (code, out, err) = cluster_client(&["down", "viaapi", "--json"], &env);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let down: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(down["cluster"]["state"], "terminated", "{down:#}");
    assert!(rig.machines_left().is_empty());

    // What the API does not have, or that only works here, is refused before anything is sent.
    let (code, _, err) = cluster_client(&["forget", "viaapi"], &env);
    assert_eq!(code, Some(2));
    assert!(err.contains("cluster forget is not available over the API"), "{err}");
    let (code, _, err) = cluster_client(&["up", spec.to_str().unwrap(), "--parallel", "2"], &env);
    assert_eq!(code, Some(2));
    assert!(err.contains("--parallel is not available over the API"), "{err}");
    let (code, _, err) = cluster_client(&["status", "nope"], &env);
    assert_eq!(code, Some(2));
    assert!(err.contains("answered 404: no cluster named \"nope\""), "{err}");

    // --no-wait: the job id once accepted; a cluster that is busy: the daemon's 409, exit 1.
    let gated = rig.write_spec(
        "gated.json",
        &spec_with("gated", 1, &[("install", "record.sh", "install"), ("configure", "record.sh", "configure wait")]),
    );
    let (code, out, err) = cluster_client(&["up", gated.to_str().unwrap(), "--no-wait", "--json"], &env);
    assert_eq!(code, Some(0), "{err}");
    let accepted: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((accepted["operation"].as_str(), accepted["state"].as_str()), (Some("up"), Some("creating")));
    assert!(accepted["jobId"].as_str().is_some_and(|j| j.starts_with("gated.")), "{accepted}");
    let (code, _, err) = cluster_client(&["restart-services", "gated"], &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("answered 409") && err.contains("is busy"), "{err}");
    std::fs::write(rig.work.join("gate"), "").unwrap();
    let settled = || {
        let (_, out, _) = cluster_client(&["status", "gated", "--json"], &env);
        serde_json::from_str::<Value>(&out).is_ok_and(|v| v["state"] == "active" && v["busy"] == false)
    };
    assert!(wait_until(Duration::from_secs(120), settled), "up did not finish: {}", serve.log_text());
    let (code, _, err) = cluster_client(&["down", "gated"], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(rig.machines_left().is_empty());
}
