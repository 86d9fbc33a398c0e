//! The plugins Loom 0.9.7 and Coopr users have: written to those versions' APIs (one hash
//! per method, `ssh_exec!`, `Coopr::Plugin::*` made with `(env, task)`, manifests that
//! declare their types, fog), they run unchanged through loom-ruby-host, on `local`
//! machines reached on their own SSH port and on moto's EC2.

use std::process::Command;
use std::time::Duration;

use loom_e2e::{Moto, Nodes, Plugins, add_local_and_shell, bin_dir, provisioner, run_with_input, task};
use serde_json::{Value, json};

const SERVICE_ACTIONS: [&str; 6] = ["INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"];

/// A pinned key that is not the machine's.
const OTHER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOoLE1T1io/f1xB0y6l2BWGTXR94LTHv3Y4ohpjyM/Bl";

fn plugins_listing(plugins: &Plugins) -> String {
    let mut cmd = Command::new(provisioner());
    cmd.args(["plugins", "--plugins-dir", plugins.path().to_str().unwrap()]);
    let out = run_with_input(cmd, "", Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `local` machine, created and confirmed, bootstrapped with `automator`.
fn local_machine(plugins: &Plugins, name: &str, automator: &str) -> Nodes {
    let mut nodes = Nodes::new(1, |_| {
        json!({"hostname": format!("{name}.local"), "provider": {"name": "local", "providertype": "local"},
               "automators": [automator]})
    });
    nodes.phase(plugins, "create", "CREATE", |_| json!({}));
    nodes.phase(plugins, "confirm", "CONFIRM", |_| json!({}));
    let port = nodes.configs[0]["ssh-auth"]["port"].as_u64().expect("local gives a port");
    assert_ne!(port, 22, "the machine listens on a port of its own");
    nodes.phase(plugins, "bootstrap", "BOOTSTRAP", |_| json!({}));
    nodes
}

fn service(automator: &str, script: &str, args: &str) -> Value {
    json!({"service": {"name": "svc", "action": {"type": automator, "fields": {"script": script, "args": args}}}})
}

fn remove_cache(dir: &str, nodes: &Nodes) {
    let id = nodes.configs[0]["providerid"].as_str().unwrap_or("none");
    let _ = std::fs::remove_dir_all(format!("/tmp/{dir}/{id}"));
}

#[test]
fn a_loom_0_9_7_shell_automator_runs_every_action_over_ssh_on_the_machines_own_port() {
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    add_local_and_shell(&plugins, state.path(), json!({}));
    plugins.copy_fixture("ruby/automators/loom_shell");
    let mut nodes = local_machine(&plugins, "loom", "loom_shell");
    assert!(nodes.configs[0]["loom_shell_dir"].as_str().is_some(), "BOOTSTRAP's result: {}", nodes.configs[0]);

    // Each action in turn, with Loom 0.9.7's `fields`: the script sees them all in order.
    let mut seen = Vec::new();
    for name in SERVICE_ACTIONS {
        let action = name.to_lowercase();
        seen.push(action.clone());
        let run = nodes.phase(&plugins, &action, name, |_| service("loom_shell", "service.sh", &action));
        let r = run.result(&format!("{action}-0"));
        assert_eq!(
            r["stdout"].as_str().unwrap().trim_end(),
            format!("{action} done; state: {}", seen.join(" ")),
            "{r}"
        );
        assert_eq!(r["stderr"], "task json at hand\n", "the task was copied over with Net::SCP: {r}");
    }

    // A failing script fails the task with the script's own output.
    let run = plugins.run(&nodes.tasks("bad", "INSTALL", |_| service("loom_shell", "fail.sh", "")), &[]);
    let bad = run.result("bad-0");
    assert_eq!(bad["status"], 1, "{bad}");
    assert_eq!(bad["stdout"], "about to fail\n", "{bad}");
    let stderr = bad["stderr"].as_str().unwrap();
    assert!(stderr.starts_with("broken on purpose: no such package\n"), "{stderr}");
    assert!(stderr.contains("CommandExecutionError: Command execution failed (exit code 3)"), "{stderr}");

    // The host gives Net::SSH the key the provider recorded, and only that one.
    let run = plugins.run(
        &nodes.tasks("pinned", "START", |_| {
            let mut t = service("loom_shell", "service.sh", "start");
            t["ssh_host_keys"] = json!({"ed25519": OTHER_KEY});
            t
        }),
        &[],
    );
    let pinned = run.result("pinned-0");
    assert_eq!(pinned["status"], 1, "{pinned}");
    assert!(pinned["stderr"].as_str().unwrap().contains("is not the one its provider recorded"), "{pinned}");

    nodes.phase(&plugins, "delete", "DELETE", |_| json!({}));
    remove_cache("loom_shell_cache", &nodes);
    plugins.assert_no_leftovers();
}

#[test]
fn coopr_plugins_load_and_run_and_one_manifest_registers_each_of_its_types() {
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    add_local_and_shell(&plugins, state.path(), json!({}));
    // Coopr's resources live under <work_dir>/<tenant>/automatortypes/<type>/scripts.
    let work = tempfile::tempdir().unwrap();
    let scripts = work.path().join("acme/automatortypes/coopr_shell/scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    for s in ["service.sh", "fail.sh"] {
        std::fs::copy(
            loom_e2e::workspace().join("tests/fixtures/ruby/automators/loom_shell/scripts").join(s),
            scripts.join(s),
        )
        .unwrap();
    }
    let settings = json!({"settings": {"workDir": work.path(), "tenant": "acme"}});
    plugins.copy_fixture_with("ruby/automators/coopr_shell", &settings);
    plugins.copy_fixture_with("ruby/providers/coopr_clouds", &settings);

    let listing = plugins_listing(&plugins);
    for (name, class) in
        [("cloud_a", "CloudAProvider"), ("cloud_b", "CloudBProvider"), ("coopr_shell", "CooprShellAutomator")]
    {
        let line = listing.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} missing: {listing}"));
        assert!(line.contains(" runnable ") && line.contains(&format!("Ruby class {class}")), "{listing}");
    }
    assert!(!listing.contains("\"name\"") && !listing.contains("description"), "file keys are no plugins: {listing}");

    // Both types of one manifest, each by its own class, in its own working directory.
    let provider = |t: &str| json!({"name": t, "providertype": t, "provisioner": {"api_password": "s3cret-cloud"}});
    let config = |t: &str, id: &str| json!({"hostname": "h1", "flavor": "small", "image": "img", "providerid": id, "provider": provider(t)});
    let run =
        plugins.run(&[task("a", "CREATE", config("cloud_a", "")), task("b", "CREATE", config("cloud_b", ""))], &[]);
    assert_eq!(run.result("a")["result"]["providerid"], "cloudaprovider-h1", "{}", run.stderr);
    assert_eq!(run.result("b")["result"]["providerid"], "cloudbprovider-h1");
    assert_eq!(run.result("a")["result"]["ssh-auth"], json!({"user": "root", "password": "s3cret-cloud"}));
    assert!(work.path().join("acme/providertypes/cloud_a/cloudaprovider-h1.json").is_file());
    assert!(work.path().join("acme/providertypes/cloud_b/cloudbprovider-h1.json").is_file());
    let run = plugins.run(
        &[
            task("a", "CONFIRM", config("cloud_a", "cloudaprovider-h1")),
            task("b", "CONFIRM", config("cloud_b", "cloudbprovider-h1")),
        ],
        &[],
    );
    let a = run.result("a");
    assert_eq!(a["hostname"], "cloudaprovider-h1.cloud-a.example", "CONFIRM's hostname at the top: {a}");
    assert_eq!(a["ipaddresses"]["access_v4"], "10.0.0.7");
    assert_eq!(a["result"]["tenant"], "acme", "env[:tenant]");
    assert_eq!(run.result("b")["hostname"], "cloudbprovider-h1.cloud-b.example");

    // The automator over SSH on a local machine: host key verified, address from
    // ipaddresses.access_v4, scripts from the tenant's resources.
    let mut nodes = local_machine(&plugins, "coopr", "coopr_shell");
    let boot = &nodes.configs[0]["coopr_shell"];
    assert_eq!(boot["tenant"], "acme", "{boot}");
    assert!(boot["cwd"].as_str().unwrap().ends_with("acme/automatortypes/coopr_shell"), "{boot}");
    let run = nodes.phase(&plugins, "install", "INSTALL", |_| service("coopr_shell", "service.sh", "install"));
    let r = run.result("install-0");
    assert_eq!(r["stdout"], "install done; state: install \n", "{r}");
    assert_eq!(r["result"]["merged"], json!({"from": "plugin", "task": "INSTALL"}), "deeper_merge! from the base");
    let run = plugins.run(&nodes.tasks("bad", "CONFIGURE", |_| service("coopr_shell", "fail.sh", "")), &[]);
    let bad = run.result("bad-0");
    assert_eq!((bad["status"].as_i64(), bad["stdout"].as_str()), (Some(1), Some("about to fail\n")), "{bad}");
    assert!(bad["stderr"].as_str().unwrap().starts_with("broken on purpose: no such package\n"), "{bad}");
    assert!(bad["stderr"].as_str().unwrap().contains("Running shell command fail.sh"), "Coopr's message: {bad}");

    nodes.phase(&plugins, "delete", "DELETE", |_| json!({}));
    remove_cache("coopr_shell_cache", &nodes);
    plugins.assert_no_leftovers();
}

#[test]
fn a_fog_provider_creates_and_deletes_an_instance_on_moto() {
    let moto = Moto::start(&[]);
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/providers/fog_aws");
    // The bundled ec2 provider, to see the instance from outside the Ruby plugin.
    plugins.add(
        "provider",
        "ec2",
        json!({"executable": bin_dir().join("loom-plugin-ec2"), "settings": {"pollSecs": 0.2, "confirmTimeoutSecs": 30}}),
    );
    let fields = json!({"api_user": "AKIAIOSFODNN7EXAMPLE", "api_password": "fog-secret-Key/123",
                        "aws_region": "us-east-1", "aws_endpoint": moto.endpoint});
    let mut nodes = Nodes::new(1, |_| {
        json!({"hostname": "fog-1.example", "flavor": "t3.small", "image": "ami-12c6146b",
               "provider": {"name": "fog_aws", "providertype": "fog_aws", "provisioner": fields.clone()}})
    });
    nodes.phase(&plugins, "create", "CREATE", |_| json!({}));
    let id = nodes.configs[0]["providerid"].as_str().unwrap().to_owned();
    assert!(id.starts_with("i-"), "{id}");
    nodes.phase(&plugins, "confirm", "CONFIRM", |_| json!({}));
    assert_eq!(nodes.configs[0]["state"], "running");
    assert!(
        nodes.configs[0]["ipaddresses"]["access_v4"].as_str().is_some_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
    );
    nodes.phase(&plugins, "delete", "DELETE", |_| json!({}));

    let ec2 = json!({"name": "ec2", "providertype": "ec2", "provisioner": {
        "api_user": "AKIAIOSFODNN7EXAMPLE", "api_password": "x", "aws_region": "us-east-1", "endpoint": moto.endpoint}});
    let run = plugins.run(&[task("seen", "CONFIRM", json!({"providerid": id, "provider": ec2}))], &[]);
    let why = run.result("seen")["stderr"].as_str().unwrap().to_owned();
    assert!(why.contains("is terminated") || why.contains("is shutting-down"), "{why}");
    plugins.assert_no_leftovers();
}

#[test]
fn a_plugin_whose_gem_is_missing_is_listed_with_the_gem_and_its_package() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/providers/fog_joyent");
    plugins.copy_fixture("ruby/providers/coopr_clouds");
    let listing = plugins_listing(&plugins);
    let line = listing.lines().find(|l| l.contains("fog_joyent") && l.contains("not runnable")).unwrap_or("");
    assert!(
        line.contains("cannot load: the Ruby library fog/joyent (gem fog-joyent) is not installed: gem install fog-joyent (no Debian package provides it)"),
        "{listing}"
    );
    assert!(listing.lines().any(|l| l.contains("cloud_a") && l.contains(" runnable ")), "the others run: {listing}");
    // A task for it fails saying the same.
    let run = plugins
        .run(&[task("j", "CREATE", json!({"provider": {"name": "fog_joyent", "providertype": "fog_joyent"}}))], &[]);
    assert!(run.result("j")["stderr"].as_str().unwrap().contains("gem install fog-joyent"), "{}", run.result("j"));
}

#[test]
fn credentials_in_ruby_exceptions_do_not_come_back_outside_result() {
    let plugins = Plugins::new();
    plugins.copy_fixture("ruby/providers/coopr_clouds");
    // A quote, a backslash and `#{`: Ruby's inspect escapes them (`\#{` unlike JSON).
    let password = "pl4nted\"pa#{ss\\word";
    let config = json!({"hostname": "h1", "provider": {"name": "cloud_a", "providertype": "cloud_a",
                         "provisioner": {"api_password": password, "explode": true}}});
    // And a Loom-style plugin whose exception escapes with the task in its message.
    plugins.add_ruby(
        "provider",
        "leaky",
        "Leaky",
        "class Leaky < Provider\n  def initialize(task)\n    super(task)\n  end\n\n  def create(inputmap)\n    log.error \"failing for #{@task}\"\n    raise ArgumentError, \"bad task #{@task} #{inputmap['fields']}\"\n  end\nend\n",
    );
    let leaky = json!({"hostname": "h1", "provider": {"name": "leaky", "providertype": "leaky",
                        "provisioner": {"auth": {"secret_access_key": password}}}});
    let run = plugins.run(&[task("coopr", "CREATE", config), task("loom", "CREATE", leaky)], &[]);
    let escaped = serde_json::to_string(password).unwrap();
    let escaped = &escaped[1..escaped.len() - 1];
    for id in ["coopr", "loom"] {
        let r = run.result(id);
        assert_eq!(r["status"], 1, "{r}");
        let mut outside = r.clone();
        outside.as_object_mut().unwrap().remove("result");
        let text = outside.to_string();
        assert!(text.contains("[redacted]"), "the exception's text came back, scrubbed: {text}");
        for form in [password, escaped, "pl4nted"] {
            assert!(!text.contains(form), "{form} came back in {id}: {text}");
            assert!(!run.stderr.contains(form), "{form} reached the log");
        }
    }
    assert!(
        run.result("loom")["stderr"].as_str().unwrap().starts_with("ArgumentError: bad task"),
        "{}",
        run.result("loom")
    );
}

#[test]
fn loom_and_coopr_plugins_pass_check() {
    let plugins = Plugins::new();
    let loom = plugins.copy_fixture("ruby/automators/loom_shell");
    plugins.copy_fixture("ruby/providers/coopr_clouds");
    let dir = plugins.path().to_str().unwrap().to_owned();
    for args in [vec!["check", loom.to_str().unwrap()], vec!["check", "cloud_b", "--plugins-dir", &dir]] {
        let mut cmd = Command::new(provisioner());
        cmd.args(&args);
        let out = run_with_input(cmd, "", Duration::from_secs(300));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(" 0 failed"), "{text}");
    }
    // A file of several plugins names them when asked to check it as one.
    let mut cmd = Command::new(provisioner());
    cmd.args(["check", plugins.path().join("providers/coopr_clouds").to_str().unwrap()]);
    let out = run_with_input(cmd, "", Duration::from_secs(120));
    assert!(String::from_utf8_lossy(&out.stderr).contains("declares 2 plugins (cloud_a, cloud_b); check one by name"));
}
