//! The bundled plugins, as shipped (their manifests, their executables), pass `check`,
//! and `plugins` finds them all in the checkout's plugins tree.

use std::process::Command;
use std::time::Duration;

use loom_e2e::{Plugins, bin_dir, provisioner, run_with_input, workspace};
use serde_json::{Value, json};

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(provisioner());
    cmd.args(args).env("PATH", format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default()));
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
    assert_eq!(v["problems"], json!([]), "{out}");
}

#[test]
fn each_bundled_plugin_passes_check() {
    let plugins = Plugins::new();
    let state = tempfile::tempdir().unwrap();
    // The shipped manifests, with state kept in a temporary folder rather than /var/lib.
    let overrides = [
        ("automator", "shell", json!({})),
        ("provider", "local", json!({"stateDir": state.path().join("local")})),
        ("provider", "fixed", json!({"stateFile": state.path().join("fixed.json")})),
        ("provider", "ec2", json!({"maxAttempts": 1})),
    ];
    for (kind, name, settings) in overrides {
        let shipped: Value = serde_json::from_str(
            &std::fs::read_to_string(workspace().join(format!("plugins/{name}/{name}.json"))).unwrap(),
        )
        .unwrap();
        let mut manifest = shipped[name].clone();
        manifest["executable"] = json!(bin_dir().join(format!("loom-plugin-{name}")));
        for (k, v) in settings.as_object().unwrap() {
            manifest["settings"][k] = v.clone();
        }
        let path = plugins.add(kind, name, manifest);
        let (code, out, err) = cli(&["check", path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{name}:\n{out}\n{err}");
        assert!(out.contains(" 0 failed"), "{name}: {out}");
    }
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
