//! `check` against the catalogue of broken plugins (tests/plugins/conformance/base.py):
//! each `LOOM_BREAK=<rule id>` fails exactly that rule (a MUST fails, a SHOULD warns), the
//! correct plugin passes every rule on both kinds, PROTOCOL.md's own section 7 sample
//! fails none, and `check` reaches a verdict on every rule quickly against plugins that
//! answer nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loom_e2e::{Plugins, bin_dir, chmod, provisioner, run_with_input, workspace};
use serde_json::{Value, json};

/// How long one `check` may take before the test gives up on it (its own deadline is 30 s).
const CHECK_LIMIT: Duration = Duration::from_secs(90);

/// How many `check` runs the catalogue runs at once: enough to finish the ~45 cases in under
/// a minute (they mostly wait on timeouts), few enough that a loaded two-core machine keeps the wait tasks' timing.
fn threads() -> usize {
    std::env::var("LOOM_CONFORMANCE_THREADS").ok().and_then(|n| n.parse().ok()).unwrap_or(8)
}

fn base_py() -> PathBuf {
    workspace().join("tests/plugins/conformance/base.py")
}

/// What `check` printed and how it ended.
struct Checked {
    code: Option<i32>,
    report: Value,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Checked {
    /// Rule id -> verdict.
    fn verdicts(&self) -> Vec<(String, String)> {
        self.report["rules"]
            .as_array()
            .unwrap_or_else(|| panic!("no rules in the report:\n{}\n{}", self.stdout, self.stderr))
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_owned(), r["verdict"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// The ids whose verdict is one of `verdicts`.
    fn with_verdict(&self, verdicts: &[&str]) -> BTreeSet<String> {
        self.verdicts().into_iter().filter(|(_, v)| verdicts.contains(&v.as_str())).map(|(id, _)| id).collect()
    }

    /// The report's entry for `id`, for failure messages.
    fn rule(&self, id: &str) -> Value {
        self.report["rules"].as_array().and_then(|r| r.iter().find(|r| r["id"] == id)).cloned().unwrap_or(Value::Null)
    }

    /// The rules that did not pass, with what `check` said, for failure messages.
    fn not_passed(&self) -> String {
        let rules = self.report["rules"].as_array().cloned().unwrap_or_default();
        let lines: Vec<String> = rules
            .iter()
            .filter(|r| r["verdict"] != "pass")
            .map(|r| format!("  {} {}: {}", r["verdict"], r["id"], r["detail"]))
            .collect();
        lines.join("\n")
    }
}

/// Runs `loom-provisioner check <args> --json`.
fn check(args: &[&str]) -> Checked {
    let mut cmd = Command::new(provisioner());
    cmd.arg("check").args(args).arg("--json");
    cmd.env("PATH", format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default()));
    let started = Instant::now();
    let out = run_with_input(cmd, "", CHECK_LIMIT);
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    Checked { code: out.status.code(), report, stdout, stderr, elapsed }
}

/// A rule as `check --list-rules --json` lists it.
#[derive(Debug, Clone)]
struct Rule {
    id: String,
    must: bool,
    kinds: Vec<&'static str>,
}

fn rules() -> Vec<Rule> {
    let mut cmd = Command::new(provisioner());
    cmd.args(["check", "--list-rules", "--json"]);
    let out = run_with_input(cmd, "", CHECK_LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("check --list-rules --json prints JSON");
    let rules: Vec<Rule> = listed
        .as_array()
        .expect("a list of rules")
        .iter()
        .map(|r| Rule {
            id: r["id"].as_str().expect("id").to_owned(),
            must: match r["level"].as_str() {
                Some("MUST") => true,
                Some("SHOULD") => false,
                other => panic!("rule {r}: level {other:?}"),
            },
            kinds: match r["applies"].as_str() {
                Some("both") => vec!["provider", "automator"],
                Some("provider") => vec!["provider"],
                Some("automator") => vec!["automator"],
                other => panic!("rule {r}: applies {other:?}"),
            },
        })
        .collect();
    assert!(rules.len() >= 40, "check lists {} rules", rules.len());
    rules
}

/// The rule ids base.py's catalogue (its `BREAKS` table) has a mode for.
fn modes() -> BTreeSet<String> {
    let text = std::fs::read_to_string(base_py()).expect("read base.py");
    let table = text.split("BREAKS = {").nth(1).and_then(|t| t.split("\n}").next()).expect("base.py's BREAKS table");
    table
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('"')?.split_once("\":").map(|(id, _)| id.to_owned()))
        .collect()
}

/// Registers base.py as `kind` in a folder of its own, breaking `mode` (none: ""), its
/// machines kept in that folder.
fn base(plugins: &Plugins, kind: &str, mode: &str) -> PathBuf {
    let name = "base";
    let mut env = json!({"TMPDIR": plugins.path()});
    if !mode.is_empty() {
        env["LOOM_BREAK"] = json!(mode);
    }
    plugins.add(kind, name, json!({"executable": base_py(), "maxConcurrency": 4, "env": env}))
}

#[test]
fn every_rule_has_a_broken_plugin_in_the_catalogue() {
    let ids: BTreeSet<String> = rules().into_iter().map(|r| r.id).collect();
    let modes = modes();
    let missing: Vec<_> = ids.difference(&modes).collect();
    let stale: Vec<_> = modes.difference(&ids).collect();
    assert!(missing.is_empty(), "rules without a LOOM_BREAK mode in base.py: {missing:?}");
    assert!(stale.is_empty(), "base.py breaks rules check does not have: {stale:?}");
}

#[test]
fn the_correct_plugin_passes_every_rule_on_both_kinds() {
    for kind in ["provider", "automator"] {
        let plugins = Plugins::new();
        let manifest = base(&plugins, kind, "");
        let run = check(&[manifest.to_str().unwrap()]);
        println!("check on base.py as a {kind}: {:.1} s", run.elapsed.as_secs_f64());
        assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
        assert_eq!(run.report["kind"], kind);
        assert_eq!(run.report["passed"], true);
        let other: Vec<_> = run.verdicts().into_iter().filter(|(_, v)| v != "pass" && v != "n/a").collect();
        assert!(other.is_empty(), "base.py as a {kind}: {other:?}\n{}", run.not_passed());
        plugins.assert_no_leftovers();
    }
}

/// One case of the catalogue: `rule` broken on `kind`.
struct Case {
    rule: Rule,
    kind: &'static str,
}

/// How long `check` may take on a plugin that breaks one rule (its slowest, around 13 s,
/// wait for a step's timeout while a wait task runs).
const BROKEN_LIMIT_SECS: f64 = 30.0;

/// Checks one broken plugin; `Err` says what went wrong.
fn check_broken(case: &Case) -> Result<f64, String> {
    let plugins = Plugins::new();
    let manifest = base(&plugins, case.kind, &case.rule.id);
    let run = check(&[manifest.to_str().unwrap()]);
    let id = &case.rule.id;
    let flagged = run.with_verdict(&["fail", "warn"]);
    let (want_verdict, want_code) = if case.rule.must { ("fail", 1) } else { ("warn", 0) };
    let verdict = run.rule(id)["verdict"].as_str().unwrap_or("(none)").to_owned();
    let mut problems = Vec::new();
    if flagged != BTreeSet::from([id.clone()]) {
        problems.push(format!("rules failed or warned: {flagged:?}"));
    }
    if verdict != want_verdict {
        problems.push(format!("verdict {verdict}, expected {want_verdict}"));
    }
    if run.code != Some(want_code) {
        problems.push(format!("exit code {:?}, expected {want_code}", run.code));
    }
    let left = plugins.leftovers();
    if !left.is_empty() {
        problems.push(format!("processes left behind: {left:?}"));
    }
    // Its steps have timeouts of 3 s (10 s for tasks) and a broken answer ends its wait:
    // a wrong id or bad bytes once kept check waiting past 90 s.
    let elapsed = run.report["elapsedSecs"].as_f64().unwrap_or(f64::MAX);
    if elapsed > BROKEN_LIMIT_SECS {
        problems.push(format!("check took {elapsed:.1} s, more than {BROKEN_LIMIT_SECS} s"));
    }
    if problems.is_empty() {
        return Ok(run.elapsed.as_secs_f64());
    }
    Err(format!(
        "{id} on a {}: {} ({:.1} s)\n{}\n{}",
        case.kind,
        problems.join("; "),
        run.elapsed.as_secs_f64(),
        run.not_passed(),
        if run.report.is_null() { format!("stdout: {}\nstderr: {}", run.stdout, run.stderr) } else { String::new() }
    ))
}

#[test]
fn check_fails_each_broken_plugin_for_its_rule_and_no_other() {
    let cases: Vec<Case> = rules()
        .into_iter()
        .enumerate()
        // A rule about both kinds is broken on one of them, taking turns: the probes are
        // the same for both, and the suite stays short.
        .map(|(i, rule)| Case { kind: rule.kinds[i % rule.kinds.len()], rule })
        .collect();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let durations = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads() {
            s.spawn(|| {
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match check_broken(case) {
                        Ok(secs) => durations.lock().unwrap().push((secs, format!("{} ({})", case.rule.id, case.kind))),
                        Err(why) => failures.lock().unwrap().push(why),
                    }
                }
            });
        }
    });
    let mut durations = durations.into_inner().unwrap();
    durations.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!(
        "{} cases in {:.1} s on {} threads; slowest checks: {:?}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        threads(),
        &durations[..durations.len().min(5)]
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// PROTOCOL.md's section 7 sample: the ```python block after "## 7.".
fn section_7_sample() -> String {
    let spec = std::fs::read_to_string(workspace().join("protocol/PROTOCOL.md")).expect("read PROTOCOL.md");
    let section = spec.split("\n## 7.").nth(1).expect("PROTOCOL.md has a section 7");
    let code = section.split("```python\n").nth(1).expect("section 7 has a ```python block");
    code.split("\n```").next().expect("the block ends").to_owned() + "\n"
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    chmod(path, 0o755);
}

#[test]
fn the_sample_of_protocol_md_section_7_fails_no_rule() {
    let plugins = Plugins::new();
    let manifest = plugins.add("automator", "tiny", json!({"executable": "tiny.py"}));
    write_executable(&manifest.with_file_name("tiny.py"), &section_7_sample());
    let run = check(&[manifest.to_str().unwrap()]);
    println!("check on the section 7 sample: {:.1} s\n{}", run.elapsed.as_secs_f64(), run.not_passed());
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.report["passed"], true);
    let failed = run.with_verdict(&["fail"]);
    assert!(failed.is_empty(), "{failed:?}\n{}", run.not_passed());
    plugins.assert_no_leftovers();
}

/// Asserts that `run` gave every rule of `ids` a verdict, within 30 s.
fn assert_quick_and_complete(what: &str, run: &Checked, ids: &BTreeSet<String>) {
    println!("check on {what}: {:.1} s (elapsedSecs {})", run.elapsed.as_secs_f64(), run.report["elapsedSecs"]);
    assert!(!run.report.is_null(), "{what}: no report:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(1), "{what}: {}", run.not_passed());
    let judged: BTreeSet<String> = run.verdicts().into_iter().map(|(id, _)| id).collect();
    assert_eq!(&judged, ids, "{what}: rules without a verdict");
    let known = ["pass", "fail", "warn", "untested", "n/a"];
    assert!(run.verdicts().iter().all(|(_, v)| known.contains(&v.as_str())), "{what}: {:?}", run.verdicts());
    assert!(run.elapsed < Duration::from_secs(30), "{what}: check took {:?}", run.elapsed);
}

#[test]
fn check_reaches_every_verdict_within_30_s_on_a_plugin_that_answers_nothing() {
    let ids: BTreeSet<String> = rules().into_iter().map(|r| r.id).collect();
    let plugins = Plugins::new();
    let silent = plugins.add("provider", "silent", json!({"executable": "silent.sh"}));
    write_executable(&silent.with_file_name("silent.sh"), "#!/bin/sh\nexec sleep 600\n");
    let run = check(&[silent.to_str().unwrap()]);
    assert_quick_and_complete("a plugin that never answers", &run, &ids);
    assert_eq!(run.rule("P-4.1-handshake")["verdict"], "fail", "{}", run.not_passed());

    let hangs = base(&plugins, "automator", "hang-all");
    let run = check(&[hangs.to_str().unwrap()]);
    assert_quick_and_complete("a plugin that answers the handshake, then nothing", &run, &ids);
    assert_eq!(run.rule("P-4.1-handshake")["verdict"], "pass", "{}", run.not_passed());
    plugins.assert_no_leftovers();
}
