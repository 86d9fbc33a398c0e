//! The bundled plugins, as shipped (their manifests, their executables), pass `check`,
//! and `plugins` finds them all in the checkout's plugins tree.

use std::process::Command;
use std::time::Duration;

use loom_e2e::{Plugins, bin_dir, provisioner, run_with_input, workspace};
use serde_json::{Value, json};

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(provisioner());
    cmd.args(args).env("PATH", format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default()));
    // The shipped manifests name no user except `local`'s (root): as root (CI), the others
    // run as nobody.
    cmd.env("LOOM_PLUGIN_USER", "nobody");
    let out = run_with_input(cmd, "", Duration::from_secs(120));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_checkout_plugins_tree_registers_all_four() {
    let dir = workspace().join("plugins");
    let (code, out, err) = cli(&["plugins", "--plugins-dir", dir.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut found: Vec<(String, String, bool)> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["kind"].as_str().unwrap().into(), p["name"].as_str().unwrap().into(), p["runnable"].as_bool().unwrap())
        })
        .collect();
    found.sort();
    let want = [("automator", "shell"), ("provider", "ec2"), ("provider", "fixed"), ("provider", "local")];
    assert_eq!(found, want.map(|(k, n)| (k.to_owned(), n.to_owned(), true)), "{out}");
    // Only the local provider asks for root; the others get the default user (as root,
    // here nobody).
    for p in v["plugins"].as_array().unwrap() {
        let want = if p["name"] == "local" { "root" } else { "nobody" };
        assert_eq!(p["user"], want, "{p}");
    }
    assert_eq!(v["problems"], json!([]), "{out}");
}

#[test]
fn each_bundled_plugin_passes_check() {
    let plugins = Plugins::new();
    let state = loom_e2e::tempdir();
    // Only `local` needs root: the others pass as an unprivileged user, given a place to
    // write (the fixed provider's claims).
    let writable = state.path().join("writable");
    std::fs::create_dir(&writable).unwrap();
    loom_e2e::chmod(&writable, 0o777);
    // The shipped manifests, with state kept in a temporary folder rather than /var/lib.
    let overrides = [
        ("automator", "shell", json!({})),
        ("provider", "local", json!({"stateDir": state.path().join("local")})),
        ("provider", "fixed", json!({"stateFile": writable.join("fixed.json")})),
        ("provider", "ec2", json!({"maxAttempts": 1})),
    ];
    let mut paths = Vec::new();
    for (kind, name, settings) in overrides {
        let shipped: Value = serde_json::from_str(
            &std::fs::read_to_string(workspace().join(format!("plugins/{name}/{name}.json"))).unwrap(),
        )
        .unwrap();
        let mut manifest = shipped[name].clone();
        manifest["executable"] = json!(bin_dir().join(format!("loom-plugin-{name}")));
        if name != "local" {
            assert!(manifest.get("user").is_none(), "{name} asks for a user");
            manifest["user"] = json!("nobody");
        }
        for (k, v) in settings.as_object().unwrap() {
            manifest["settings"][k] = v.clone();
        }
        let path = plugins.add(kind, name, manifest);
        if name == "shell" {
            // The shipped manifest's `"scripts": "scripts"` is a folder beside it, as
            // README's install makes it.
            std::fs::create_dir(path.parent().unwrap().join("scripts")).unwrap();
        }
        paths.push((name, path));
    }
    // At once: each check mostly waits on its plugin's wait tasks.
    std::thread::scope(|s| {
        for (name, path) in &paths {
            s.spawn(move || {
                let (code, out, err) = cli(&["check", path.to_str().unwrap()]);
                assert_eq!(code, Some(0), "{name}:\n{out}\n{err}");
                assert!(out.contains(" 0 failed"), "{name}: {out}");
                println!("check {name}: {}", out.lines().last().unwrap_or_default());
            });
        }
    });
    // CREATE's machine flowed into CONFIRM and DELETE: the check left no machine behind.
    let left = std::fs::read_dir(state.path().join("local")).unwrap().flatten().filter(|e| e.path().is_dir()).count();
    assert_eq!(left, 0);
    plugins.assert_no_leftovers();
}

#[test]
fn the_readme_demo_brings_machines_up_and_down() {
    let out = Command::new("python3")
        .arg(workspace().join("examples/local-webapp.py"))
        .args(["--nodes", "2"])
        .env("PATH", format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("-> hello from web-0.local") && stdout.contains("-> hello from web-1.local"), "{stdout}");
    assert!(stdout.contains("DELETE     ok on 2 node(s)"), "{stdout}");
}
