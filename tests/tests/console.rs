//! The web console (`supervisor/src/daemon/console/assets`) in a real browser: a daemon
//! with a token, the `local` provider and the `shell` automator, driven by
//! `tests/console/console_test.py` through headless Chromium and chromedriver (W3C
//! WebDriver, with a client of the Python standard library's own: nothing to install
//! from PyPI). The script signs in, brings clusters up and down from the console, opens
//! their timelines, steps and nodes, restarts a plugin, and checks that the token never
//! travels again after the sign-in and that planted HTML stays text. Its screenshots go
//! to `target/console-screenshots/`.
//!
//! Chromium and chromedriver are required: without them the test fails saying what to
//! install (`.ci/run` installs them), it does not pass silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use loom_e2e::{ClusterRig, Serve, action, run_with_input, workspace};
use serde_json::{Value, json};

/// The first of `names` on PATH, or of `fallbacks` that exists.
fn find_program(names: &[&str], fallbacks: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names
        .iter()
        .flat_map(|n| std::env::split_paths(&path).map(move |dir| dir.join(n)))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// The example cluster with a `ticker` service on its store node, whose INSTALL prints a
/// line every 0.3 s, 30 in all (about 9 s), and after the 6th waits until the file
/// `release` exists (at most 5 min): the browser test creates it once it has seen that
/// line in the live box, so the step is still running however slow the machine is.
fn good_spec(release: &Path) -> Value {
    let mut spec = ClusterRig::example(18800, 2);
    spec["name"] = json!("console-demo");
    spec["nodeGroups"][0]["services"] = json!(["store", "ticker"]);
    spec["services"]["ticker"] = json!({"actions": {"install": {"type": "shell", "script": "ticker.sh",
                                                                "data": release.display().to_string()}}});
    spec
}

/// One node whose hostname is markup, with a service whose script prints markup and
/// fails (every attempt).
fn bad_spec() -> Value {
    json!({
        "name": "console-bad",
        "provider": {"name": "local", "fields": {}},
        "nodeGroups": [{"name": "odd", "count": 1, "hostname": "<img id=pwn src=x>odd-{n}", "services": ["planted"]}],
        "services": {"planted": {"actions": {"install": {"type": "shell", "script": "planted.sh", "data": "install"}}}}
    })
}

fn screenshots_dir() -> PathBuf {
    let dir = workspace().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir target/console-screenshots");
    dir
}

#[test]
fn the_console_works_in_a_browser() {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"], &["/usr/lib/chromium/chromium"]);
    let chromedriver = find_program(&["chromedriver"], &["/usr/lib/chromium/chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        panic!(
            "the console's browser test needs Chromium and chromedriver, and did not find them: \
             apt-get install chromium chromium-driver (.ci/run installs them)"
        );
    };

    let rig = ClusterRig::new(json!({}));
    for script in ["ticker.sh", "planted.sh"] {
        std::fs::copy(workspace().join("tests/console").join(script), rig.scripts.join(script)).expect("copy a script");
    }
    let token = rig.plugins.file("token");
    std::fs::write(&token, "console-test-token-4f1d2a9c7e\n").expect("write the token");
    loom_e2e::chmod(&token, 0o600);
    // A plugin for tasks sent over the API, so that the task list has some.
    rig.plugins.add_test_plugin("automator", "probe", json!({}));
    let serve = Serve::start(&rig.plugins, &format!("token_file = {:?}", token.display().to_string()));
    for (id, behaviour) in [("console-task-ok", json!({})), ("console-task-fails", json!({"status": 4}))] {
        let (code, v) = serve.submit(&action(id, "CONFIGURE", "probe", behaviour), true);
        assert_eq!(code, 200, "{v}\n{}", serve.log_text());
    }

    let specs = rig.plugins.path();
    // The ticker's release file: in the machines' shared folder, created by the test.
    let good = rig.write_spec("console-good.json", &good_spec(&rig.work.join("ticker-release")));
    let bad = rig.write_spec("console-bad.json", &bad_spec());
    let shots = screenshots_dir();
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/console/console_test.py"))
        .arg("--url")
        .arg(&serve.url)
        .arg("--token-file")
        .arg(&token)
        .arg("--good-spec")
        .arg(&good)
        .arg("--bad-spec")
        .arg(&bad)
        .arg("--screenshots")
        .arg(&shots)
        .arg("--chromium")
        .arg(&chromium)
        .arg("--chromedriver")
        .arg(&chromedriver)
        .current_dir(specs);
    let started = Instant::now();
    let out = run_with_input(cmd, "", Duration::from_secs(20 * 60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed ({:?} after {:?}; screenshots in {}):\n{stdout}\n{stderr}\n--- daemon log ---\n{}",
        out.status.code(),
        started.elapsed(),
        shots.display(),
        tail(&serve.log_text(), 200)
    );
    for name in ["03-clusters.png", "04-cluster.png", "07-plugins.png", "09-phone.png"] {
        assert!(Path::new(&shots).join(name).is_file(), "no screenshot {name}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
