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

/// `run` with the chatty plugin's log task, stderr on `stderr`, with `env`.
fn chatty_run(plugins: &Plugins, stderr: std::process::Stdio, env: &[(&str, &str)]) -> std::process::Output {
    let input = format!("{}\n", action("t-log", "INSTALL", "chatty", json!({"action": "log"})));
    let mut cmd = std::process::Command::new(loom_e2e::provisioner());
    cmd.arg("run").arg("--plugins-dir").arg(plugins.path()).args(["--log-level", "debug"]);
    cmd.env_remove("NO_COLOR").env_remove("JOURNAL_STREAM").envs(env.iter().copied());
    loom_e2e::run_with_stderr(cmd, &input, stderr, std::time::Duration::from_secs(60))
}

/// Everything written to the other end of `ours` until every copy of its peer closes.
fn read_all_in_background(mut ours: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        // A terminal's master answers EIO once the last slave closes: that is its end.
        while let Ok(n @ 1..) = ours.read(&mut buf) {
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

#[test]
fn under_journald_lines_carry_their_syslog_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "chatty", json!({}));
    // systemd connects stderr to journald's stream socket and names it in JOURNAL_STREAM.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let theirs = std::fs::File::from(std::os::fd::OwnedFd::from(theirs));
    let meta = theirs.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let reader = read_all_in_background(ours);
    let out = chatty_run(&plugins, theirs.into(), &[("JOURNAL_STREAM", &stream)]);
    let log = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{log}");
    for (priority, text) in [
        ("<7>", "chatty says debug"),
        ("<6>", "chatty says info"),
        ("<4>", "chatty says warn"),
        ("<3>", "chatty says error"),
    ] {
        let line = log.lines().find(|l| l.contains(text)).unwrap_or_else(|| panic!("{text} missing:\n{log}"));
        let rest = line.strip_prefix(priority).unwrap_or_else(|| panic!("{line:?} does not start with {priority}"));
        // Straight to the level: journald adds its own time.
        let first = rest.split_whitespace().next().unwrap_or_default();
        assert!(["DEBUG", "INFO", "WARN", "ERROR"].contains(&first), "{line:?}");
    }
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");

    // The variable names another stream (stderr was redirected): the usual lines.
    let out = chatty_run(&plugins, std::process::Stdio::piped(), &[("JOURNAL_STREAM", &stream)]);
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log.lines().find(|l| l.contains("chatty says warn")).unwrap_or_else(|| panic!("{log}"));
    assert!(!line.starts_with('<') && line.starts_with(|c: char| c.is_ascii_digit()), "a timestamp first: {line:?}");
    plugins.assert_no_leftovers();
}

#[test]
fn colours_on_a_terminal_unless_no_color_is_set() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "chatty", json!({}));
    let on_terminal = |env: &[(&str, &str)]| {
        let pty = nix::pty::openpty(None, None).unwrap();
        let reader = read_all_in_background(std::fs::File::from(pty.master));
        let out = chatty_run(&plugins, std::fs::File::from(pty.slave).into(), env);
        let log = reader.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{log}");
        assert!(log.contains("chatty says warn"), "{log}");
        log
    };
    assert!(on_terminal(&[]).contains("\u{1b}["), "colours on a terminal");
    assert!(on_terminal(&[("NO_COLOR", "")]).contains("\u{1b}["), "an empty NO_COLOR does not count");
    let plain = on_terminal(&[("NO_COLOR", "1")]);
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
    plugins.assert_no_leftovers();
}
