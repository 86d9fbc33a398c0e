//! The `fixed` provider: durable claims, and machines you own running the web service.

use loom_e2e::{Nodes, Plugins, add_local_and_shell, bin_dir, http_get, task};
use serde_json::{Value, json};

fn add_fixed(plugins: &Plugins, state_file: &std::path::Path, instances: u32) {
    plugins.add(
        "provider",
        "fixed",
        json!({"executable": bin_dir().join("loom-plugin-fixed"), "instances": instances, "maxConcurrency": 4,
               "settings": {"stateFile": state_file, "connectTimeoutSecs": 5}}),
    );
}

fn provider(hosts: &Value) -> Value {
    json!({"name": "fixed", "providertype": "fixed", "provisioner": {"hosts": hosts}})
}

fn create(id: &str, node: &str, hosts: &Value) -> Value {
    let mut t = task(id, "CREATE", json!({"provider": provider(hosts)}));
    t["nodeId"] = json!(node);
    t
}

#[test]
fn a_host_is_claimed_once_across_processes_and_restarts() {
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    let claims = state.path().join("claims.json");
    // Two processes, so the claims file's lock is what keeps them apart.
    add_fixed(&plugins, &claims, 2);
    let hosts = json!([
        {"address": "192.0.2.10", "hostname": "a.example", "ssh-auth": {"user": "root", "password": "pw-a"}},
        {"address": "192.0.2.11", "port": 2222, "ssh-auth": {"user": "admin", "identityfile": "/k"}},
    ]);
    let run = plugins.run(&[create("c0", "n0", &hosts), create("c1", "n1", &hosts), create("c2", "n2", &hosts)], &[]);
    let ok: Vec<&Value> = run.results.iter().filter(|r| r["status"] == 0).collect();
    assert_eq!(ok.len(), 2, "{:#?}", run.results);
    assert_ne!(ok[0]["result"]["providerid"], ok[1]["result"]["providerid"], "never the same host twice");
    let failed = run.results.iter().find(|r| r["status"] != 0).unwrap();
    assert!(failed["stderr"].as_str().unwrap().contains("all 2 hosts are claimed"), "{failed}");
    let by_port: Vec<_> = ok.iter().map(|r| r["result"]["ssh-auth"]["port"].as_u64().unwrap()).collect();
    assert!(by_port.contains(&22) && by_port.contains(&2222), "the port travels in ssh-auth: {by_port:?}");

    // A new supervisor: the claims are still there.
    let again = plugins.run(&[create("c3", "n3", &hosts)], &[]);
    assert_ne!(again.result("c3")["status"], 0);
    // A retried CREATE for a node that holds a host gets the same host.
    let holder = ok[0]["taskId"].as_str().unwrap().replace('c', "n");
    let retry = plugins.run(&[create("r", &holder, &hosts)], &[]);
    assert_eq!(retry.result("r")["result"]["providerid"], ok[0]["result"]["providerid"]);

    // DELETE frees the host; DELETE of an unknown id succeeds.
    let freed = ok[1]["result"]["providerid"].clone();
    let del = plugins.run(
        &[
            task("d1", "DELETE", json!({"provider": provider(&hosts), "providerid": freed})),
            task("d2", "DELETE", json!({"provider": provider(&hosts), "providerid": "fixed:198.51.100.1:22"})),
        ],
        &[],
    );
    assert_eq!(del.result("d1")["status"], 0);
    assert_eq!(del.result("d2")["status"], 0, "{}", del.result("d2"));
    let after = plugins.run(&[create("c4", "n4", &hosts)], &[]);
    assert_eq!(after.result("c4")["result"]["providerid"], freed);
    // Credentials go to the result (the automator needs them) but never to the log.
    assert!(!run.stderr.contains("pw-a") && !after.stderr.contains("pw-a"));
    plugins.assert_no_leftovers();
}

#[test]
fn hosts_you_own_run_the_web_service_and_bad_logins_are_named() {
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    add_local_and_shell(&plugins, state.path(), json!({}));
    add_fixed(&plugins, &state.path().join("claims.json"), 1);
    // Two "owned" machines: sshds made by the local provider.
    let mut local = Nodes::new(2, |i| json!({"hostname": format!("owned-{i}"), "provider": {"providertype": "local"}}));
    local.phase(&plugins, "lc", "CREATE", |_| json!({}));
    local.phase(&plugins, "lf", "CONFIRM", |_| json!({}));
    let hosts: Vec<Value> = local
        .configs
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"address": "127.0.0.1", "hostname": format!("owned-{i}.example"), "ssh-auth": c["ssh-auth"]}))
        .collect();
    let hosts = Value::Array(hosts);

    let mut nodes = Nodes::new(
        2,
        |i| json!({"hostname": format!("web-{i}.local"), "provider": provider(&hosts), "automators": ["shell"]}),
    );
    nodes.phase(&plugins, "create", "CREATE", |_| json!({}));
    nodes.phase(&plugins, "confirm", "CONFIRM", |_| json!({}));
    let mut names: Vec<String> = nodes.configs.iter().map(|c| c["hostname"].as_str().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["owned-0.example", "owned-1.example"], "CONFIRM names each host as listed");
    assert!(nodes.configs.iter().all(|c| c["ssh_host_keys"]["ed25519"].is_string()));
    let port = |i: usize| 18280 + u16::try_from(i).unwrap();
    nodes.start_webapp(&plugins, port);
    for i in 0..2 {
        assert_eq!(
            http_get(&format!("127.0.0.1:{}", port(i))).unwrap().trim(),
            format!("hello from owned-{i}.example")
        );
    }
    nodes.remove_webapp(&plugins, port);
    nodes.phase(&plugins, "delete", "DELETE", |_| json!({}));

    // A host whose password is wrong, and one where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bad = json!([
        {"address": "127.0.0.1", "port": local.configs[0]["ssh-auth"]["port"], "ssh-auth": {"user": "root", "password": "wrong-password"}},
        {"address": "127.0.0.1", "port": closed, "ssh-auth": {"user": "root", "password": "x"}},
    ]);
    let confirm = |id: &str, providerid: String| {
        task(id, "CONFIRM", json!({"provider": provider(&bad), "providerid": providerid}))
    };
    let pw_port = local.configs[0]["ssh-auth"]["port"].as_u64().unwrap();
    let run = plugins.run(
        &[confirm("pw", format!("fixed:127.0.0.1:{pw_port}")), confirm("down", format!("fixed:127.0.0.1:{closed}"))],
        &[],
    );
    let pw = run.result("pw")["stderr"].as_str().unwrap();
    assert!(
        pw.contains(&format!("authentication as root on 127.0.0.1:{pw_port} failed: the server refused the password")),
        "{pw}"
    );
    let down = run.result("down")["stderr"].as_str().unwrap();
    assert!(down.contains(&format!("cannot connect to 127.0.0.1:{closed}: connection refused")), "{down}");
    assert!(!run.stderr.contains("wrong-password"));

    local.phase(&plugins, "ld", "DELETE", |_| json!({}));
    plugins.assert_no_leftovers();
}
