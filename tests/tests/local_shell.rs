//! The `local` provider and the `shell` automator against real sshd processes: three
//! machines run a real web service; every failure mode says what went wrong.

use std::time::Duration;

use loom_e2e::{Nodes, Plugins, add_local_and_shell, http_get, machine_processes, webapp};
use serde_json::{Value, json};

fn base(i: usize) -> Value {
    json!({"hostname": format!("node-{i}.local"), "provider": {"name": "local", "providertype": "local"}, "automators": ["shell"]})
}

/// CREATE and CONFIRM `n` machines; returns their configs.
fn machines(plugins: &Plugins, n: usize) -> Nodes {
    let mut nodes = Nodes::new(n, base);
    nodes.phase(plugins, "create", "CREATE", |_| json!({}));
    nodes.phase(plugins, "confirm", "CONFIRM", |_| json!({}));
    nodes
}

/// A plugins folder with `local` (state in the returned folder) and `shell`, and `n`
/// machines created and confirmed.
fn local_machines(n: usize, local_settings: Value) -> (Plugins, tempfile::TempDir, Nodes) {
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    add_local_and_shell(&plugins, state.path(), local_settings);
    let nodes = machines(&plugins, n);
    (plugins, state, nodes)
}

fn ids(nodes: &Nodes) -> Vec<String> {
    nodes.configs.iter().map(|c| c["providerid"].as_str().unwrap().to_owned()).collect()
}

fn delete_all(plugins: &Plugins, nodes: &mut Nodes) {
    nodes.phase(plugins, "delete", "DELETE", |_| json!({}));
}

#[test]
fn three_local_machines_run_a_web_service_installed_by_the_shell_automator() {
    let (plugins, state, mut nodes) = local_machines(3, json!({}));
    let ids = ids(&nodes);
    for c in &nodes.configs {
        assert_eq!(c["ipaddresses"]["access_v4"], "127.0.0.1");
        assert!(c["ssh_host_keys"]["ed25519"].as_str().unwrap().starts_with("ssh-ed25519 "), "{c}");
    }
    let port = |i: usize| 18080 + u16::try_from(i).unwrap();

    nodes.start_webapp(&plugins, port);
    for i in 0..3 {
        let body = http_get(&format!("127.0.0.1:{}", port(i))).unwrap();
        assert_eq!(body.trim(), format!("hello from node-{i}.local"));
    }
    nodes.remove_webapp(&plugins, port);
    for i in 0..3 {
        assert!(http_get(&format!("127.0.0.1:{}", port(i))).is_err(), "node {i} still serves after STOP");
    }
    delete_all(&plugins, &mut nodes);

    for id in &ids {
        assert!(machine_processes(id).is_empty(), "{id}: {:?}", machine_processes(id));
    }
    let machine_dirs = std::fs::read_dir(state.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("local-"));
    assert_eq!(machine_dirs.count(), 0, "DELETE removes each machine's folder");
    plugins.assert_no_leftovers();
}

#[test]
fn delete_stops_whatever_the_machine_still_runs() {
    let (plugins, _state, mut nodes) = local_machines(1, json!({}));
    let id = ids(&nodes).remove(0);
    nodes.start_webapp(&plugins, |_| 18190);
    assert!(!machine_processes(&id).is_empty(), "the server runs inside the machine");
    // No STOP: DELETE alone must leave nothing running.
    delete_all(&plugins, &mut nodes);
    assert!(machine_processes(&id).is_empty(), "{:?}", machine_processes(&id));
    assert!(http_get("127.0.0.1:18190").is_err());
    plugins.assert_no_leftovers();
}

#[test]
fn each_ssh_failure_has_its_own_message() {
    let (plugins, _state, mut nodes) = local_machines(1, json!({}));
    nodes.phase(&plugins, "bootstrap", "BOOTSTRAP", |_| json!({}));
    let node = nodes.configs[0].clone();
    let port = node["ssh-auth"]["port"].as_u64().unwrap();

    // A port nobody listens on, and one that accepts but never speaks SSH.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();

    let with = |id: &str, script: &str, patch: Value| {
        let mut config = node.clone();
        loom_e2e::merge(&mut config, webapp(script, 0));
        loom_e2e::merge(&mut config, patch);
        loom_e2e::task(id, "INSTALL", config)
    };
    let other_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let tasks = vec![
        with(
            "password",
            "install.sh",
            json!({"ssh-auth": {"user": node["ssh-auth"]["user"], "password": "not-the-password", "port": port}}),
        ),
        with("refused", "install.sh", json!({"ssh-auth": {"user": "root", "password": "x", "port": closed}})),
        with("timeout", "install.sh", json!({"ssh-auth": {"user": "root", "password": "x", "port": mute_port}})),
        with("missing", "no-such-script.sh", json!({})),
        with("exit", "fail.sh", json!({})),
        with("hostkey", "install.sh", json!({"ssh_host_keys": {"ed25519": other_key}})),
        with("noaddr", "install.sh", json!({"ipaddress": null, "ipaddresses": null})),
    ];
    let run = plugins.run(&tasks, &["--log-level", "info,loom::plugin=debug"]);
    let stderr = |id: &str| run.result(id)["stderr"].as_str().unwrap().to_owned();
    // The command's output was streamed live into the log, under its task.
    assert!(
        run.stderr.lines().any(|l| l.contains("output: doing the work") && l.contains("task_id=exit")),
        "{}",
        run.stderr
    );
    let addr = format!("127.0.0.1:{port}");
    let expect = [
        (
            "password",
            format!(
                "authentication as {} on {addr} failed: the server refused the password (it accepts: publickey)",
                node["ssh-auth"]["user"].as_str().unwrap()
            ),
        ),
        ("refused", format!("cannot connect to 127.0.0.1:{closed}: connection refused")),
        ("timeout", format!("no SSH answer from 127.0.0.1:{mute_port} within 5 s")),
        ("missing", "INSTALL: script".to_owned()),
        ("exit", "INSTALL: script fail.sh exited with code 3".to_owned()),
        ("hostkey", format!("the host key of {addr} changed: expected SHA256:")),
        ("noaddr", "the task has no address".to_owned()),
    ];
    for (id, text) in expect {
        assert!(stderr(id).contains(&text), "{id}: expected {text:?} in {:?}", stderr(id));
        assert_ne!(run.result(id)["status"], 0, "{id}");
    }
    assert!(stderr("missing").contains("no-such-script.sh not found on"), "{}", stderr("missing"));
    assert_eq!(run.result("exit")["status"], 3, "the exit code is the status");
    assert!(
        stderr("exit").starts_with("something went wrong\n"),
        "the command's stderr comes first: {}",
        stderr("exit")
    );
    assert_eq!(run.result("exit")["stdout"], "doing the work\n");
    assert!(!run.stderr.contains("not-the-password"), "a password reached the log");
    drop(mute);
    delete_all(&plugins, &mut nodes);
    plugins.assert_no_leftovers();
}

#[test]
fn a_cancelled_action_kills_the_remote_command_and_its_children() {
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    add_local_and_shell(&plugins, state.path(), json!({}));
    // A short INSTALL timeout: the supervisor cancels the task after 2 s.
    plugins.add(
        "automator",
        "shell",
        json!({"executable": loom_e2e::bin_dir().join("loom-plugin-shell"), "timeouts": {"INSTALL": 2}, "cancelGraceSecs": 15,
               "settings": {"scripts": plugins.path().join("scripts"), "workDir": state.path().join("work")}}),
    );
    let mut nodes = machines(&plugins, 1);
    let id = ids(&nodes).remove(0);
    nodes.phase(&plugins, "bootstrap", "BOOTSTRAP", |_| json!({}));
    let run = plugins.run(&nodes.tasks("slow", "INSTALL", |_| webapp("slow.sh", 0)), &[]);
    let r = run.result("slow-0");
    assert_ne!(r["status"], 0);
    let why = r["stderr"].as_str().unwrap();
    assert!(
        why.contains("cancelled: stopped slow.sh")
            && why.contains("timed out after 2 s; cancelled: the plugin stopped it when asked"),
        "{why}"
    );
    assert!(
        loom_e2e::wait_until(Duration::from_secs(5), || machine_processes(&id)
            .iter()
            .all(|p| !p.contains("sleep 300"))),
        "the remote sleep survived: {:?}",
        machine_processes(&id)
    );
    delete_all(&plugins, &mut nodes);
    plugins.assert_no_leftovers();
}

#[test]
fn as_root_netns_machines_are_separate_hosts_on_a_bridge() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: network namespaces need root (CI runs as root)");
        return;
    }
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    // A bridge and subnet of this test's own, so parallel runs do not meet.
    let n = std::process::id() % 200 + 20;
    let bridge = format!("loomt{n}");
    add_local_and_shell(
        &plugins,
        state.path(),
        json!({"network": "netns", "bridge": bridge, "subnet": format!("10.{n}.0.0/16")}),
    );
    let mut nodes = machines(&plugins, 3);
    let addrs: Vec<String> =
        nodes.configs.iter().map(|c| c["ipaddresses"]["access_v4"].as_str().unwrap().to_owned()).collect();
    assert_eq!(addrs.iter().collect::<std::collections::HashSet<_>>().len(), 3, "one address each: {addrs:?}");
    assert!(addrs.iter().all(|a| a.starts_with(&format!("10.{n}."))), "{addrs:?}");
    assert!(nodes.configs.iter().all(|c| c["ssh-auth"]["port"] == 22), "sshd on port 22 in each");

    // The same port on every machine: they are separate hosts.
    nodes.start_webapp(&plugins, |_| 8080);
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(http_get(&format!("{a}:8080")).unwrap().trim(), format!("hello from node-{i}.local"));
    }
    let namespaces = || {
        String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .into_owned()
    };
    let ids = ids(&nodes);
    assert!(ids.iter().all(|id| namespaces().contains(&format!("loom-{}", id.trim_start_matches("local-")))));
    delete_all(&plugins, &mut nodes);
    for id in &ids {
        assert!(
            !namespaces().contains(&format!("loom-{}", id.trim_start_matches("local-"))),
            "{id}'s namespace outlived DELETE"
        );
    }
    let bridge_left =
        std::process::Command::new("ip").args(["link", "show", &bridge]).output().unwrap().status.success();
    assert!(!bridge_left, "the bridge goes with the last machine");
    plugins.assert_no_leftovers();
}

#[test]
fn as_root_password_logins_work_and_other_users_run_scripts_through_sudo() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: creating a user and an sshd with password logins needs root (CI runs as root)");
        return;
    }
    let user = loom_e2e::SudoUser::create("loomtest");
    let sshd = loom_e2e::PasswordSshd::start(&user.name);
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    add_local_and_shell(&plugins, state.path(), json!({}));
    // The default work folder for a non-root user: in the user's home.
    plugins.add(
        "automator",
        "shell",
        json!({"executable": loom_e2e::bin_dir().join("loom-plugin-shell"), "settings": {"scripts": plugins.path().join("scripts")}}),
    );
    let config = json!({"automators": ["shell"], "ipaddress": "127.0.0.1",
                        "ssh-auth": {"user": user.name, "password": user.password, "port": sshd.port},
                        "service": {"name": "s", "action": {"type": "shell", "script": "whoami.sh"}}});
    let boot = |id: &str| loom_e2e::task(id, "BOOTSTRAP", config.clone());
    let run = plugins
        .run(&[boot("b1"), boot("b2"), loom_e2e::task("who", "INSTALL", config.clone())], &["--concurrency", "1"]);
    for id in ["b1", "b2"] {
        assert_eq!(run.result(id)["status"], 0, "BOOTSTRAP is idempotent: {}", run.result(id));
    }
    let who = run.result("who");
    assert_eq!(who["status"], 0, "{who}");
    let out = who["stdout"].as_str().unwrap();
    assert!(out.starts_with("user=root task=/home/loomtest/.cache/loom/tasks/who.json"), "{out}");
    // No key was pinned, so the one seen on first contact comes back.
    assert_eq!(who["result"]["ssh_host_keys"]["ed25519"], sshd.host_key);
    assert!(!run.stderr.contains(&user.password), "the password reached the log");
    plugins.assert_no_leftovers();
}

#[test]
fn many_concurrent_actions_on_one_host_get_past_sshds_maxstartups() {
    // sshd drops unauthenticated connections beyond MaxStartups: with 2, twelve tasks at
    // once would mostly fail without the automator's retries.
    let (plugins, _state, mut nodes) = local_machines(1, json!({"sshdOptions": ["MaxStartups 2"]}));
    nodes.phase(&plugins, "bootstrap", "BOOTSTRAP", |_| json!({}));
    let one = nodes.tasks("x", "INSTALL", |_| webapp("fail.sh", 0)).remove(0);
    let tasks: Vec<Value> = (0..12)
        .map(|i| {
            let mut t = one.clone();
            t["taskId"] = json!(format!("many-{i}"));
            t
        })
        .collect();
    let run = plugins.run(&tasks, &["--concurrency", "12"]);
    for i in 0..12 {
        let r = run.result(&format!("many-{i}"));
        assert_eq!(r["status"], 3, "every task reached its script (fail.sh exits 3): {r}");
    }
    delete_all(&plugins, &mut nodes);
    plugins.assert_no_leftovers();
}

#[test]
fn a_nodes_tasks_share_one_ssh_login() {
    let (plugins, state, mut nodes) = local_machines(1, json!({}));
    let id = ids(&nodes)[0].clone();
    let log = state.path().join(&id).join("sshd.log");
    let logins = || std::fs::read_to_string(&log).unwrap().matches("Accepted publickey").count();
    let before = logins();
    // One `run`, so one shell plugin process: BOOTSTRAP, INSTALL, CONFIGURE, START in turn.
    let port = 18190;
    let mut tasks = nodes.tasks("bootstrap", "BOOTSTRAP", |_| json!({}));
    for (step, script) in [("install", "install.sh"), ("configure", "configure.sh"), ("start", "start.sh")] {
        tasks.extend(nodes.tasks(step, &step.to_uppercase(), |_| webapp(script, port)));
    }
    let run = plugins.run(&tasks, &["--concurrency", "1"]);
    for step in ["bootstrap", "install", "configure", "start"] {
        assert_eq!(run.result(&format!("{step}-0"))["status"], 0, "{step}: {}", run.stderr);
    }
    assert_eq!(http_get(&format!("127.0.0.1:{port}")).unwrap().trim(), "hello from node-0.local");
    assert_eq!(logins() - before, 1, "four tasks, one login:\n{}", std::fs::read_to_string(&log).unwrap());
    delete_all(&plugins, &mut nodes);
}
