//! Floods and odd input from a plugin: the log stays small and says what it held back, the
//! task channel is not slowed, and odd lines fail or skip at once instead of hanging a task.

use std::time::Duration;

use loom_e2e::{Plugins, action};
use serde_json::json;

/// The number just before `what` in `text`.
fn count_before(text: &str, what: &str) -> usize {
    let at = text.find(what).unwrap_or_else(|| panic!("{what:?} missing from {text}"));
    text[..at].split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {text}"))
}

#[test]
fn a_plugin_flooding_stderr_and_unknown_answers_gets_a_small_log_with_the_counts_and_its_task_runs() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "flooder", json!({"timeouts": {"INSTALL": 600}}));
    let (stderr_lines, unknown_answers) = (200_000, 20_000);
    let flood = json!({"stderrLines": stderr_lines, "unknownAnswers": unknown_answers});
    let run = plugins.run(&[action("t-flood", "INSTALL", "flooder", flood)], &[]);
    assert_eq!(run.code, Some(0), "{}", run.result("t-flood"));
    assert_eq!(run.result("t-flood")["status"], 0);

    // Without the budget: 220,000 lines.
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines.len() < 2_000, "{} log lines; the last: {:?}", lines.len(), lines.last());
    let summaries: Vec<&str> = lines.iter().copied().filter(|l| l.contains("suppressed in the last")).collect();
    assert!(!summaries.is_empty(), "no summary in the log:\n{}", run.stderr);
    assert!(summaries.iter().all(|s| s.contains("from plugin flooder")), "{summaries:?}");
    // Every line is either in the log or counted in a summary.
    let logged = lines.iter().filter(|l| l.contains("flood line") && l.contains("plugin=flooder")).count();
    let held: usize = summaries.iter().map(|s| count_before(s, " stderr lines and")).sum();
    assert_eq!(logged + held, stderr_lines, "{logged} logged, {held} held back: {summaries:?}");
    let logged = lines.iter().filter(|l| l.contains("ignored an answer to unknown request id")).count();
    let held: usize = summaries.iter().map(|s| count_before(s, " protocol warnings from")).sum();
    assert_eq!(logged + held, unknown_answers, "{logged} logged, {held} held back: {summaries:?}");
    plugins.assert_no_leftovers();
}

#[test]
fn a_crash_after_a_stderr_flood_still_shows_the_last_stderr_lines() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "crashy", json!({}));
    let crash = json!({"action": "crash", "code": 3, "stderrLines": 20_000});
    let run = plugins.run(&[action("t-crash", "INSTALL", "crashy", crash)], &[]);
    let why = run.result("t-crash")["stderr"].as_str().unwrap_or_default().to_owned();
    // Logged or not, every stderr line is kept for the crash message.
    for last in ["flood line 19999 on stderr", "about to crash: boom"] {
        assert!(why.contains(last), "{last:?} missing from {why}");
    }
    let logged = run.stderr.lines().filter(|l| l.contains("flood line") && l.contains("stream=\"stderr\"")).count();
    assert!(logged < 1_000, "{logged} of the 20,000 stderr lines logged: over the log budget, not logged");
    plugins.assert_no_leftovers();
}

#[test]
fn an_over_long_line_on_the_log_channel_is_skipped_and_the_task_and_later_lines_go_on() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "longlog", json!({"maxLineBytes": 4096, "timeouts": {"INSTALL": 600}}));
    let long = json!({"action": "fd3-longline", "bytes": 100_000});
    let run = plugins.run(&[action("t-fd3", "INSTALL", "longlog", long)], &[]);
    // A regression leaves the task to its 600 s timeout: the harness gives up after 60 s.
    assert_eq!(run.result("t-fd3")["status"], 0, "{}", run.stderr);
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("skipped a line longer than 4096 bytes on the log channel")
                && l.contains("plugin=longlog")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.lines().any(|l| l.contains("after the long line") && l.contains("task_id=t-fd3")),
        "the line after the long one reached the log:\n{}",
        run.stderr
    );
    plugins.assert_no_leftovers();
}

#[test]
fn an_answer_that_is_not_utf8_fails_its_task_at_once_with_the_reason() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "garbled", json!({"timeouts": {"INSTALL": 600}}));
    let run = plugins.run(&[action("t-utf8", "INSTALL", "garbled", json!({"action": "bad-utf8"}))], &[]);
    let r = run.result("t-utf8");
    assert_eq!(r["status"], 1, "{r}");
    let why = r["stderr"].as_str().unwrap_or_default();
    for part in [
        "automator \"garbled\"",
        "task t-utf8 (INSTALL)",
        "the plugin's answer is not UTF-8 text (a bad byte at offset ",
    ] {
        assert!(why.contains(part), "{part:?} missing from {why}");
    }
    // A regression leaves the task to its 600 s timeout: the harness gives up after 60 s.
    assert!(run.elapsed < Duration::from_secs(60), "{:?}", run.elapsed);
    plugins.assert_no_leftovers();
}
