//! Plugins are trusted only when they should be: files others can write are refused with
//! the fix, the executable's sha256 and the loader's variables are checked, and as root
//! each plugin runs as the user its manifest (or the configuration) names, never as root
//! unless its manifest says so. Most of these need root, as CI has.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use loom_e2e::{Plugins, Serve, action, chmod, provisioner, wait_until};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: running plugins as other users, and being refused for them, needs root (CI runs as root)");
    }
    root
}

fn whoami(plugins: &Plugins, name: &str, args: &[&str]) -> Value {
    let run = plugins.run(&[action("who", "INSTALL", name, json!({"action": "whoami"}))], args);
    let r = run.result("who");
    assert_eq!(r["status"], 0, "{r}\n{}", run.stderr);
    r["result"]["whoami"].clone()
}

/// A copy of the test plugin in the plugin's own folder, so the test can change it.
fn own_copy(plugins: &Plugins, kind: &str, name: &str, extra: Value) -> PathBuf {
    let folder = plugins.path().join(format!("{kind}s")).join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let exe = folder.join("plugin.py");
    std::fs::copy(loom_e2e::test_plugin(), &exe).unwrap();
    chmod(&exe, 0o755);
    let mut m = json!({"executable": "plugin.py", "shutdownGraceSecs": 2});
    loom_e2e::merge(&mut m, extra);
    plugins.add(kind, name, m);
    exe
}

/// Runs `script` with `sh` as user nobody, as the attacker.
fn as_nobody(script: &str) {
    let status = Command::new("/bin/sh").args(["-c", script]).uid(65534).gid(65534).status().unwrap();
    assert!(status.success(), "as nobody: {script}");
}

fn plugin_entry(serve: &Serve, name: &str) -> Value {
    let (_, v) = serve.request("GET", "/v1/plugins", None);
    v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null)
}

fn plugins_json(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(provisioner())
        .args(["plugins", "--json", "--plugins-dir"])
        .arg(dir)
        .args(args)
        .env_remove("LOOM_PLUGIN_USER")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn reason_of(listing: &Value, name: &str) -> String {
    let p = listing["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap();
    assert_eq!(p["runnable"], false, "{p}");
    p["reason"].as_str().unwrap().to_owned()
}

#[test]
fn plugins_run_as_the_user_their_manifest_names_with_no_new_privileges() {
    if !root() {
        return;
    }
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "as-nobody", json!({"user": "nobody"}));
    plugins.add_test_plugin("automator", "as-nobody-daemon", json!({"user": "nobody", "group": "daemon"}));
    plugins.add_test_plugin("automator", "as-root", json!({"user": "root"}));

    let who = whoami(&plugins, "as-nobody", &[]);
    assert_eq!(
        (&who["uid"], &who["euid"], &who["gid"], &who["egid"]),
        (&json!(65534), &json!(65534), &json!(65534), &json!(65534))
    );
    assert_eq!(who["groups"], json!([]), "supplementary groups are cleared: {who}");
    assert_eq!(who["noNewPrivs"], "1", "{who}");
    assert_eq!((&who["home"], &who["user"]), (&json!("/nonexistent"), &json!("nobody")), "{who}");
    assert!(who["cwd"].as_str().unwrap().ends_with("automators/as-nobody"), "{who}");

    let who = whoami(&plugins, "as-nobody-daemon", &[]);
    assert_eq!((&who["uid"], &who["gid"], &who["groups"]), (&json!(65534), &json!(1), &json!([])), "{who}");

    let who = whoami(&plugins, "as-root", &[]);
    assert_eq!((&who["uid"], &who["gid"], &who["groups"]), (&json!(0), &json!(0), &json!([])), "{who}");
    assert_eq!((&who["noNewPrivs"], &who["home"]), (&json!("1"), &json!("/root")), "{who}");
    plugins.assert_no_leftovers();
}

#[test]
fn as_root_a_plugin_runs_as_root_only_when_its_manifest_says_so() {
    if !root() {
        return;
    }
    let plugins = Plugins::new();
    // The harness names root in every manifest: take it out again.
    let manifest = plugins.add_test_plugin("automator", "anon", json!({}));
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    doc["anon"].as_object_mut().unwrap().remove("user");
    std::fs::write(&manifest, doc.to_string()).unwrap();
    let task = action("t", "INSTALL", "anon", json!({"action": "whoami"}));

    let run = plugins.run(std::slice::from_ref(&task), &[]);
    let stderr = run.result("t")["stderr"].as_str().unwrap().to_owned();
    assert!(stderr.contains("registered but cannot run") && stderr.contains("\"user\": \"root\""), "{stderr}");
    assert!(stderr.contains("[defaults]") && stderr.contains("--plugin-user"), "{stderr}");
    let listing = plugins_json(plugins.path(), &[]);
    assert!(reason_of(&listing, "anon").contains("name the user this plugin should run as"));

    // A default user for this command; root is not one a default may name.
    let who = whoami(&plugins, "anon", &["--plugin-user", "nobody", "--plugin-group", "daemon"]);
    assert_eq!((&who["uid"], &who["gid"]), (&json!(65534), &json!(1)), "{who}");
    let run = plugins.run(std::slice::from_ref(&task), &["--plugin-user", "root"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--plugin-user names root"), "{}", run.stderr);

    // The daemon's default: [defaults] user.
    let serve = Serve::start(&plugins, "[defaults]\nuser = \"nobody\"");
    let (_, v) = serve.submit(&task, true);
    assert_eq!(v["result"]["result"]["whoami"]["uid"], 65534, "{v}");
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn writable_plugin_files_are_refused_with_the_fix_and_the_others_still_run() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "good", json!({}));
    let writable = own_copy(&plugins, "automator", "writable", json!({}));
    chmod(&writable, 0o777);
    // A link to a writable file outside the plugins tree: the target is what runs.
    let outside = loom_e2e::tempdir();
    let target = outside.path().join("plugin.py");
    std::fs::copy(loom_e2e::test_plugin(), &target).unwrap();
    chmod(&target, 0o766);
    let link = plugins.path().join("automators/linked/plugin.py");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    plugins.add("automator", "linked", json!({"executable": link}));

    let listing = plugins_json(plugins.path(), &[]);
    let why = reason_of(&listing, "writable");
    assert!(
        why.contains(&format!("{} is writable by its group and every user (mode 0777)", writable.display())),
        "{why}"
    );
    assert!(why.ends_with(&format!("fix: chmod go-w {}", writable.display())), "{why}");
    let why = reason_of(&listing, "linked");
    assert!(why.contains(&format!("{} (on the way to {}", target.display(), link.display())), "{why}");
    assert!(why.ends_with(&format!("fix: chmod go-w {}", target.display())), "{why}");
    let problems = listing["problems"].to_string();
    assert!(problems.contains("chmod go-w"), "each refusal is listed as a problem too: {problems}");

    let run = plugins.run(
        &[
            action("ok", "INSTALL", "good", json!({})),
            action("no", "INSTALL", "writable", json!({})),
            action("nolink", "INSTALL", "linked", json!({})),
        ],
        &[],
    );
    assert_eq!(run.result("ok")["status"], 0, "{}", run.stderr);
    assert!(run.result("no")["stderr"].as_str().unwrap().contains("fix: chmod go-w"), "{}", run.result("no"));
    assert_eq!(run.result("nolink")["status"], 1);
    assert!(run.stderr.contains(&format!("fix: chmod go-w {}", writable.display())), "the log says it too");

    // Fixed as the message says, it runs.
    chmod(&writable, 0o755);
    let run = plugins.run(&[action("yes", "INSTALL", "writable", json!({}))], &[]);
    assert_eq!(run.result("yes")["status"], 0, "{}", run.stderr);

    if root() {
        std::os::unix::fs::chown(&writable, Some(65534), None).unwrap();
        let why = reason_of(&plugins_json(plugins.path(), &[]), "writable");
        assert!(why.contains("owned by nobody (uid 65534)") && why.contains("fix: chown root"), "{why}");
    }
    plugins.assert_no_leftovers();
}

#[test]
fn the_sha256_is_checked_at_registration_and_before_every_start() {
    let plugins = Plugins::new();
    let exe = own_copy(&plugins, "automator", "pinned", json!({}));
    // Computed by coreutils, not by the code under test.
    let sum = std::process::Command::new("sha256sum").arg(&exe).output().unwrap();
    let digest = String::from_utf8(sum.stdout).unwrap().split_whitespace().next().unwrap().to_owned();
    own_copy(&plugins, "automator", "pinned", json!({"sha256": digest}));
    let wrong = own_copy(&plugins, "automator", "wrong", json!({"sha256": "0".repeat(64)}));
    let serve = Serve::start(&plugins, "");

    let (_, v) = serve.submit(&action("t1", "INSTALL", "pinned", json!({})), true);
    assert_eq!(v["result"]["status"], 0, "{v}");
    let why = plugin_entry(&serve, "wrong")["reason"].as_str().unwrap().to_owned();
    assert!(why.contains(&format!("{} does not match the manifest's sha256", wrong.display())), "{why}");

    // Changed after registration (still root's, still 0755): the next start is refused.
    std::fs::write(&exe, format!("{}\n# changed\n", std::fs::read_to_string(&exe).unwrap())).unwrap();
    assert_eq!(serve.request("POST", "/v1/plugins/pinned/restart", None).0, 202);
    let refused = || {
        plugin_entry(&serve, "pinned")["instances"][0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("does not match the manifest's sha256"))
    };
    assert!(wait_until(Duration::from_secs(30), refused), "{:#}", plugin_entry(&serve, "pinned"));
    let (_, v) = serve.submit(&action("t2", "INSTALL", "pinned", json!({})), true);
    assert_eq!(v["result"]["status"], 1, "{v}");
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn loader_variables_need_an_explicit_opt_in_that_the_log_repeats() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "preload", json!({"env": {"LD_PRELOAD": "/nonexistent/evil.so"}}));
    plugins.add_test_plugin("automator", "path", json!({"env": {"PATH": "/nonexistent"}}));
    plugins.add_test_plugin("automator", "optin", json!({"env": {"LD_BIND_NOW": "1"}, "allowLoaderEnv": true}));

    let listing = plugins_json(plugins.path(), &[]);
    for name in ["preload", "path"] {
        let why = reason_of(&listing, name);
        assert!(
            why.contains("changes which code the plugin runs") && why.contains("\"allowLoaderEnv\": true"),
            "{why}"
        );
    }
    let run = plugins.run(&[action("t", "INSTALL", "optin", json!({"action": "env"}))], &[]);
    assert_eq!(run.result("t")["result"]["env"]["LD_BIND_NOW"], "1", "{}", run.stderr);
    let warning = run.stderr.lines().find(|l| l.contains("env.LD_BIND_NOW")).unwrap_or_default();
    assert!(warning.contains("WARN") && warning.contains("allowLoaderEnv"), "{}", run.stderr);
    plugins.assert_no_leftovers();
}

/// The demonstration: as `nobody`, rewrite a plugin executable that was left
/// writable (and a writable manifest), then get the plugin restarted. The daemon never
/// runs what nobody wrote.
#[test]
fn a_plugin_rewritten_by_another_user_never_runs() {
    if !root() {
        return;
    }
    let plugins = Plugins::new();
    let exe = own_copy(&plugins, "automator", "victim", json!({}));
    let manifest = plugins.add_test_plugin("automator", "config", json!({}));
    let marker = plugins.file("ran-as");
    let serve = Serve::start(&plugins, "");
    let (_, v) = serve.submit(&action("before", "INSTALL", "victim", json!({})), true);
    assert_eq!(v["result"]["status"], 0, "{v}");

    // The mistake, then the attack.
    chmod(&exe, 0o777);
    chmod(&manifest, 0o666);
    as_nobody(&format!("printf '#!/bin/sh\\nid -u > {}\\n' > {}", marker.display(), exe.display()));
    let evil = json!({"config": {"executable": "/bin/sh", "args": ["-c", format!("id -u > {}", marker.display())], "user": "root"}});
    as_nobody(&format!("printf '%s' '{evil}' > {}", manifest.display()));
    assert!(std::fs::read_to_string(&exe).unwrap().contains("id -u"), "nobody could write it");

    // A restart: the start is refused, and says why.
    assert_eq!(serve.request("POST", "/v1/plugins/victim/restart", None).0, 202);
    let refused = || {
        plugin_entry(&serve, "victim")["instances"][0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("fix: chmod go-w {}", exe.display())))
    };
    assert!(wait_until(Duration::from_secs(30), refused), "{:#}", plugin_entry(&serve, "victim"));

    // A reload: both are registered as not runnable, with the reason.
    serve.signal(Signal::SIGHUP);
    assert!(serve.wait_notification(|m| m.contains("RELOADING=1"), Duration::from_secs(10)).is_some());
    assert!(serve.wait_notification(|m| m.contains("READY=1"), Duration::from_secs(30)).is_some());
    for (name, file) in [("victim", &exe), ("config", &manifest)] {
        let entry = plugin_entry(&serve, name);
        assert_eq!(entry["runnable"], false, "{entry}");
        assert!(entry["reason"].as_str().unwrap().ends_with(&format!("fix: chmod go-w {}", file.display())), "{entry}");
        let (_, v) = serve.submit(&action(&format!("after-{name}"), "INSTALL", name, json!({})), true);
        assert!(v["result"]["stderr"].as_str().unwrap().contains("cannot run: refused to run it"), "{v}");
    }
    assert!(serve.log_text().contains(&format!("fix: chmod go-w {}", manifest.display())));
    assert!(!marker.exists(), "what nobody wrote ran, as uid {:?}", std::fs::read_to_string(&marker));
    drop(serve);
    plugins.assert_no_leftovers();
}

#[test]
fn plugins_running_as_another_user_still_die_with_a_killed_supervisor() {
    if !root() {
        return;
    }
    let plugins = Plugins::new();
    // Only the parent-death signal can end it: it ignores stdin EOF and SIGTERM. The kernel
    // clears that signal when credentials change, so it must be set after the switch.
    plugins.add_test_plugin(
        "automator",
        "orphan",
        json!({"user": "nobody", "settings": {"ignoreEof": true, "ignoreSigterm": true}}),
    );
    let mut child = plugins.spawn_run(&[
        action("first", "INSTALL", "orphan", json!({})),
        action("stuck", "START", "orphan", json!({"action": "hang"})),
    ]);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let pid = serde_json::from_str::<Value>(&first).unwrap()["result"]["pid"].as_i64().unwrap() as i32;
    assert!(loom_e2e::alive(pid));
    child.kill().unwrap(); // SIGKILL: no clean-up code runs in the supervisor
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(10), || !loom_e2e::alive(pid)), "plugin {pid} outlived its supervisor");
    plugins.assert_no_leftovers();
}

#[test]
fn a_ruby_plugins_code_is_checked_like_an_executable() {
    let plugins = Plugins::new();
    let code = "class Fine < Automator\n  def install(ssh, script, data)\n    @result['status'] = 0\n  end\nend\n";
    let folder = plugins.add_ruby("automator", "fine", "Fine", code);
    let helper = folder.join("helper.rb");
    std::fs::write(&helper, "# loaded too\n").unwrap();
    chmod(&helper, 0o666);
    let why = reason_of(&plugins_json(plugins.path(), &[]), "fine");
    assert!(why.ends_with(&format!("fix: chmod go-w {}", helper.display())), "{why}");
    chmod(&helper, 0o644);
    let run = plugins.run(&[action("t", "INSTALL", "fine", json!({}))], &[]);
    assert_eq!(run.result("t")["status"], 0, "{}", run.stderr);
    plugins.assert_no_leftovers();
}
