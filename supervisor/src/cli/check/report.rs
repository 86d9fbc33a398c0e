//! Verdicts per rule, and the report as text or JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use loom_protocol::PluginKind;
use serde::Serialize;

use crate::cli::check::rules::{Applies, Level, RULES, Rule};

/// What `check` found about one rule.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The plugin keeps the rule; what was seen.
    Pass(String),
    /// The plugin breaks it (a warning for a SHOULD).
    Fail(Evidence),
    /// It could not be tested; why.
    Untested(String),
    /// It is not about this plugin; why.
    NotApplicable(String),
}

impl Verdict {
    /// Which verdict wins when several probes judge a rule: a failure, then a pass, then
    /// "untested", then "n/a"; between two of a rank, the first.
    fn rank(&self) -> u8 {
        match self {
            Verdict::Fail(_) => 3,
            Verdict::Pass(_) => 2,
            Verdict::Untested(_) => 1,
            Verdict::NotApplicable(_) => 0,
        }
    }
}

/// Why a rule failed: what happened, what was sent and what came back.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// What went wrong, in a sentence.
    pub detail: String,
    /// The lines sent that matter (quoted, cut).
    pub sent: Vec<String>,
    /// The lines received that matter (quoted, cut).
    pub received: Vec<String>,
}

impl Evidence {
    /// Evidence with a detail only.
    pub fn says(detail: impl Into<String>) -> Evidence {
        Evidence { detail: detail.into(), ..Evidence::default() }
    }
}

/// The verdicts of a run so far.
#[derive(Debug, Default)]
pub struct Verdicts {
    by_rule: BTreeMap<&'static str, Verdict>,
}

impl Verdicts {
    /// Records `v` for `id`, unless a verdict of a higher rank is already there.
    pub fn set(&mut self, id: &'static str, v: Verdict) {
        match self.by_rule.get(id) {
            Some(old) if old.rank() >= v.rank() => {}
            _ => {
                self.by_rule.insert(id, v);
            }
        }
    }

    /// The verdict of `id`, if any yet.
    pub fn get(&self, id: &str) -> Option<&Verdict> {
        self.by_rule.get(id)
    }
}

/// One rule's line of the report.
#[derive(Debug, Serialize)]
pub struct RuleReport {
    /// Its id.
    pub id: &'static str,
    /// MUST or SHOULD.
    pub level: Level,
    /// Its section of PROTOCOL.md.
    pub section: &'static str,
    /// `pass`, `fail`, `warn` (a SHOULD that failed), `untested` or `n/a`.
    pub verdict: &'static str,
    /// What was seen.
    pub detail: String,
    /// Lines sent, for a failure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sent: Vec<String>,
    /// Lines received, for a failure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub received: Vec<String>,
    /// The sentence of PROTOCOL.md.
    pub spec: String,
}

/// Counts of each verdict.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// Rules kept.
    pub pass: usize,
    /// MUST rules broken.
    pub fail: usize,
    /// SHOULD rules broken.
    pub warn: usize,
    /// Rules not tested.
    pub untested: usize,
    /// Rules not about this plugin.
    pub na: usize,
}

/// The step and task timeouts, for the report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Each protocol step.
    pub step_secs: f64,
    /// Each sample task.
    pub task_secs: f64,
}

/// The outcome of `check`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The plugin's name.
    pub plugin: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Its executable.
    pub executable: PathBuf,
    /// No MUST rule failed (nor, with `--strict`, a SHOULD rule).
    pub passed: bool,
    /// How long the run took.
    pub elapsed_secs: f64,
    /// The timeouts used.
    pub timeouts: Timeouts,
    /// Verdicts counted.
    pub counts: Counts,
    /// Things an author should know that are not rules.
    pub notes: Vec<String>,
    /// Every rule, in the order of PROTOCOL.md.
    pub rules: Vec<RuleReport>,
}

/// Builds the report from the verdicts: a rule without one is "untested".
pub fn build(
    head: (String, PluginKind, PathBuf),
    verdicts: &Verdicts,
    notes: Vec<String>,
    timeouts: Timeouts,
    elapsed_secs: f64,
    strict: bool,
    untested: &str,
) -> Report {
    let (plugin, kind, executable) = head;
    let mut counts = Counts::default();
    let rules: Vec<RuleReport> = RULES
        .iter()
        .map(|r| {
            let v = match verdicts.get(r.id) {
                Some(v) => v.clone(),
                None if !applies(r, kind) => Verdict::NotApplicable(format!("a rule for {}s", other(kind))),
                None => Verdict::Untested(untested.to_owned()),
            };
            rule_report(r, v, &mut counts)
        })
        .collect();
    let passed = counts.fail == 0 && (!strict || counts.warn == 0);
    Report { plugin, kind, executable, passed, elapsed_secs, timeouts, counts, notes, rules }
}

/// Whether `rule` is about plugins of `kind`.
pub fn applies(rule: &Rule, kind: PluginKind) -> bool {
    match rule.applies {
        Applies::Both => true,
        Applies::Provider => kind == PluginKind::Provider,
        Applies::Automator => kind == PluginKind::Automator,
    }
}

fn other(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Provider => "automator",
        PluginKind::Automator => "provider",
    }
}

fn rule_report(r: &Rule, v: Verdict, counts: &mut Counts) -> RuleReport {
    let (verdict, detail, sent, received) = match v {
        Verdict::Pass(d) => {
            counts.pass += 1;
            ("pass", d, vec![], vec![])
        }
        Verdict::Fail(e) if r.level == Level::Must => {
            counts.fail += 1;
            ("fail", e.detail, e.sent, e.received)
        }
        Verdict::Fail(e) => {
            counts.warn += 1;
            ("warn", e.detail, e.sent, e.received)
        }
        Verdict::Untested(d) => {
            counts.untested += 1;
            ("untested", d, vec![], vec![])
        }
        Verdict::NotApplicable(d) => {
            counts.na += 1;
            ("n/a", d, vec![], vec![])
        }
    };
    RuleReport { id: r.id, level: r.level, section: r.section(), verdict, detail, sent, received, spec: r.sentence() }
}

/// The report as text: a line per rule, with the evidence under each failure.
pub fn render(report: &Report) -> String {
    let mut s = format!(
        "check: {} {:?} ({})   timeouts: step {} s, task {} s\n",
        report.kind,
        report.plugin,
        report.executable.display(),
        report.timeouts.step_secs,
        report.timeouts.task_secs
    );
    let width = RULES.iter().map(|r| r.id.len()).max().unwrap_or(0);
    for r in &report.rules {
        let mark = match r.verdict {
            "pass" => "PASS",
            "fail" => "FAIL",
            "warn" => "WARN",
            "untested" => "----",
            _ => "n/a ",
        };
        s.push_str(&format!("  {mark}  {:width$}  {}\n", r.id, r.detail.replace('\n', "\n        ")));
        if matches!(r.verdict, "fail" | "warn") {
            for line in &r.sent {
                s.push_str(&format!("        sent:     {line}\n"));
            }
            for line in &r.received {
                s.push_str(&format!("        received: {line}\n"));
            }
            s.push_str(&format!("        spec {}: \"{}\"\n", r.section, r.spec));
        }
    }
    for n in &report.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
    let c = &report.counts;
    s.push_str(&format!(
        "{} passed, {} failed, {} warnings, {} untested, {} n/a in {:.1} s\n",
        c.pass, c.fail, c.warn, c.untested, c.na, report.elapsed_secs
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_outranks_a_pass_and_a_pass_outranks_untested() {
        let mut v = Verdicts::default();
        v.set("P-4.3-ping", Verdict::Untested("x".into()));
        v.set("P-4.3-ping", Verdict::Pass("y".into()));
        assert!(matches!(v.get("P-4.3-ping"), Some(Verdict::Pass(_))));
        v.set("P-4.3-ping", Verdict::Fail(Evidence::says("z")));
        v.set("P-4.3-ping", Verdict::Pass("w".into()));
        assert!(matches!(v.get("P-4.3-ping"), Some(Verdict::Fail(e)) if e.detail == "z"));
    }

    #[test]
    fn a_failed_should_is_a_warning_and_does_not_fail_the_plugin() {
        let mut v = Verdicts::default();
        v.set("P-3-parse-error", Verdict::Fail(Evidence::says("exited")));
        let t = || Timeouts { step_secs: 3.0, task_secs: 10.0 };
        let head = || ("p".to_owned(), PluginKind::Provider, PathBuf::from("/p"));
        let r = build(head(), &v, vec![], t(), 1.0, false, "x");
        assert!(r.passed);
        assert_eq!(r.counts.warn, 1);
        assert!(!build(head(), &v, vec![], t(), 1.0, true, "x").passed, "--strict fails on a warning");
        let bootstrap = r.rules.iter().find(|r| r.id == "P-4.2-bootstrap-twice").unwrap();
        assert_eq!(bootstrap.verdict, "n/a");
    }
}
