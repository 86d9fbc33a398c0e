//! What plugins say reaches the supervisor's log, under their name, without credentials.

use loom_e2e::{Plugins, action, task};
use serde_json::{Value, json};

#[test]
fn log_notifications_and_stderr_appear_in_the_supervisor_log_with_plugin_and_task() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "chatty", json!({}));
    let run = plugins.run(&[action("t-log", "INSTALL", "chatty", json!({"action": "log"}))], &["--log-level", "debug"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for (level, text) in [
        ("DEBUG", "chatty says debug"),
        ("INFO", "chatty says info"),
        ("WARN", "chatty says warn"),
        ("ERROR", "chatty says error"),
    ] {
        let line =
            run.stderr.lines().find(|l| l.contains(text)).unwrap_or_else(|| panic!("{text} missing:\n{}", run.stderr));
        assert!(line.contains(level) && line.contains("plugin=chatty") && line.contains("task_id=t-log"), "{line}");
    }
    assert!(run.stderr.lines().any(|l| l.contains("progress: halfway") && l.contains("percent=50")), "{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l.contains("a line on stderr") && l.contains("plugin=chatty")),
        "{}",
        run.stderr
    );
    plugins.assert_no_leftovers();
}

#[test]
fn log_level_filters_plugin_events_too() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "chatty", json!({}));
    let run = plugins.run(&[action("t-log", "INSTALL", "chatty", json!({"action": "log"}))], &["--log-level", "warn"]);
    assert!(run.stderr.contains("chatty says warn") && run.stderr.contains("chatty says error"));
    assert!(!run.stderr.contains("chatty says info") && !run.stderr.contains("chatty says debug"), "{}", run.stderr);
    plugins.assert_no_leftovers();
}

#[test]
fn json_log_format_gives_one_object_per_line_with_the_fields() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "chatty", json!({}));
    let run =
        plugins.run(&[action("t-json", "INSTALL", "chatty", json!({"action": "log"}))], &["--log-format", "json"]);
    let events: Vec<Value> =
        run.stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    let warn = events.iter().find(|e| e["message"] == "chatty says warn").expect("the warn event");
    assert_eq!(warn["level"], "WARN");
    assert_eq!(warn["plugin"], "chatty");
    assert_eq!(warn["task_id"], "t-json");
    assert_eq!(warn["target"], "loom::plugin");
    let fields: Value = serde_json::from_str(warn["fields"].as_str().unwrap()).unwrap();
    assert_eq!(fields["level_seen"], "warn");
    plugins.assert_no_leftovers();
}

#[test]
fn credentials_in_a_task_never_reach_the_log() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "leaky", json!({}));
    plugins.add_test_plugin(
        "provider",
        "cloud",
        json!({"settings": {"handshake": "never"}, "handshakeTimeoutSecs": 0.3,
        "restart": {"maxRestarts": 0}}),
    );
    let secret = "hunter2-Sup3rSecret";
    let api_key = "AKIA-api-key-0123456789";
    let mut t = action("t-secret", "INSTALL", "leaky", json!({"action": "secret"}));
    t["config"]["ssh-auth"] = json!({"user": "root", "password": secret});
    let create =
        task("t-create", "CREATE", json!({"provider": {"providertype": "cloud", "provisioner": {"api_key": api_key}}}));
    let run = plugins.run(&[t, create], &["--log-level", "trace"]);
    let leaky = run.result("t-secret");
    assert_eq!(leaky["status"], 0, "{}", run.stderr);
    // Streamed output fills an empty stdout in the result, scrubbed like the log.
    assert_eq!(leaky["stdout"], "output with [redacted]\n", "{leaky}");
    assert!(!run.stderr.contains(secret), "the password leaked into the log:\n{}", run.stderr);
    assert!(!run.stderr.contains(api_key), "the API key leaked into the log:\n{}", run.stderr);
    // Every channel was exercised and scrubbed: log notification, stderr, stray stdout, output.
    for said in [
        "logging in with [redacted]",
        "stderr has the password [redacted]",
        "junk with the password [redacted]",
        "output with [redacted]",
    ] {
        assert!(run.stderr.contains(said), "{said:?} missing:\n{}", run.stderr);
    }
    let results = serde_json::to_string(&run.results).unwrap();
    assert!(!results.contains(api_key), "error messages must not quote task fields: {results}");
    plugins.assert_no_leftovers();
}

#[test]
fn a_handshake_offering_more_concurrency_than_the_manifest_allows_is_noted_once_with_both_numbers() {
    let plugins = Plugins::new();
    // The test plugin offers maxConcurrency 8; one manifest allows 2, the other 8.
    plugins.add_test_plugin("automator", "eager", json!({"maxConcurrency": 2}));
    plugins.add_test_plugin("automator", "allowed", json!({"maxConcurrency": 8}));
    let run = plugins.run(
        &[action("t-eager", "INSTALL", "eager", json!({})), action("t-allowed", "INSTALL", "allowed", json!({}))],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let notes: Vec<&str> = run.stderr.lines().filter(|l| l.contains("offers maxConcurrency")).collect();
    assert_eq!(notes.len(), 1, "one notice, for the plugin whose manifest allows less:\n{}", run.stderr);
    let note = notes[0];
    assert!(note.contains("INFO") && note.contains("plugin=eager"), "{note}");
    assert!(
        note.contains("offers maxConcurrency 8, but its manifest allows 2 (the manifest's \"maxConcurrency\", default 1): it gets 2"),
        "{note}"
    );
    plugins.assert_no_leftovers();
}
