//! The rules of PROTOCOL.md that `check` enforces: one entry per rule id written in the
//! spec (`[P-4.2-delete-unknown]`), with its level. The sentence a report quotes is read
//! from the spec itself, so the two cannot drift apart; a test holds the set of ids in
//! the spec and here equal.

use serde::Serialize;

/// MUST rules fail a plugin; SHOULD rules warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// MUST, MUST NOT.
    Must,
    /// SHOULD.
    Should,
}

/// Which plugins a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Applies {
    /// Every plugin.
    Both,
    /// Providers only.
    Provider,
    /// Automators only.
    Automator,
}

/// One rule.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rule {
    /// Its id in PROTOCOL.md.
    pub id: &'static str,
    /// MUST or SHOULD.
    pub level: Level,
    /// Which plugins it is about.
    pub applies: Applies,
}

impl Rule {
    /// The spec's section: "4.2" for `P-4.2-delete-unknown`.
    pub fn section(&self) -> &'static str {
        self.id.trim_start_matches("P-").split('-').next().unwrap_or("")
    }

    /// The sentence of PROTOCOL.md the id follows, whitespace folded.
    pub fn sentence(&self) -> String {
        sentence_before(loom_protocol::SPEC, self.id).unwrap_or_else(|| format!("({} is not in PROTOCOL.md)", self.id))
    }
}

const fn must(id: &'static str) -> Rule {
    Rule { id, level: Level::Must, applies: Applies::Both }
}

const fn should(id: &'static str) -> Rule {
    Rule { id, level: Level::Should, applies: Applies::Both }
}

const fn only(rule: Rule, applies: Applies) -> Rule {
    Rule { applies, ..rule }
}

/// Every rule, in the order of PROTOCOL.md.
pub static RULES: &[Rule] = &[
    must("P-1-eof-exit"),
    must("P-1-eof-answers"),
    should("P-1-eof-exit-zero"),
    must("P-1-fd3-stdout"),
    must("P-2-one-line"),
    must("P-2-utf8"),
    must("P-2-no-batches"),
    must("P-2-line-limit"),
    must("P-2-stdout-messages"),
    must("P-3-id-copied"),
    must("P-3-answer-once"),
    must("P-3-no-requests"),
    must("P-3-unknown-notification"),
    must("P-3-unknown-members"),
    must("P-3-unknown-method"),
    should("P-3-parse-error"),
    must("P-4.1-handshake"),
    must("P-4.1-tasks-kind"),
    must("P-4.1-version-choice"),
    must("P-4.1-version-none"),
    should("P-4.1-before-handshake"),
    must("P-4.1-concurrency"),
    must("P-4.1-idempotent"),
    must("P-4.2-undeclared-task"),
    should("P-4.2-undeclared-code"),
    should("P-4.2-invalid-params"),
    must("P-4.2-status-integer"),
    must("P-4.2-result-members"),
    must("P-4.2-answer-limits"),
    must("P-4.2-credentials-private"),
    must("P-4.2-credentials-in-result"),
    only(must("P-4.2-delete-unknown"), Applies::Provider),
    only(must("P-4.2-bootstrap-twice"), Applies::Automator),
    only(should("P-4.2-coopr-action"), Applies::Automator),
    must("P-4.3-ping"),
    should("P-4.3-ping-busy"),
    must("P-4.4-shutdown"),
    should("P-4.4-refuse-after-shutdown"),
    should("P-4.4-shutdown-in-flight"),
    must("P-4.5-cancel-running"),
    should("P-4.5-cancelled-answer"),
    must("P-4.5-cancel-unknown"),
    must("P-5-notifications"),
    should("P-5.3-output-running"),
];

/// The sentence that ends just before `[id]` in `spec`: back to the previous sentence's
/// end, a bullet, a table cell or a paragraph break.
fn sentence_before(spec: &str, id: &str) -> Option<String> {
    let at = spec.find(&format!("[{id}]"))?;
    let before = spec[..at].trim_end();
    let body = before.strip_suffix('.').unwrap_or(before);
    let starts = [". ", ".\n", "\n\n", "\n- ", "| ", "? ", "! "];
    let start = starts.iter().filter_map(|s| body.rfind(s).map(|i| i + s.len())).max().unwrap_or(0);
    let mut text = before[start..].split_whitespace().collect::<Vec<_>>().join(" ");
    // The id of the sentence before, when two rules follow each other.
    while text.starts_with("[P-")
        && let Some(end) = text.find("] ")
    {
        text = text[end + 2..].to_owned();
    }
    Some(text.trim_start_matches("- ").to_owned())
}

/// Every rule id written in `spec`.
#[cfg(test)]
fn ids_in(spec: &str) -> Vec<&str> {
    let mut ids = Vec::new();
    let mut rest = spec;
    while let Some(i) = rest.find("[P-") {
        let tail = &rest[i + 1..];
        let end = tail.find(']').unwrap_or(0);
        let id = &tail[..end];
        if end > 0 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            ids.push(id);
        }
        rest = &tail[end..];
    }
    ids
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_spec_and_check_name_the_same_rules_once_each() {
        let in_spec = ids_in(loom_protocol::SPEC);
        let unique: BTreeSet<&str> = in_spec.iter().copied().collect();
        assert_eq!(unique.len(), in_spec.len(), "an id is written twice in PROTOCOL.md: {in_spec:?}");
        let checked: BTreeSet<&str> = RULES.iter().map(|r| r.id).collect();
        assert_eq!(checked.len(), RULES.len(), "an id is twice in RULES");
        assert_eq!(
            unique,
            checked,
            "only in PROTOCOL.md: {:?}; only in check: {:?}",
            unique.difference(&checked).collect::<Vec<_>>(),
            checked.difference(&unique).collect::<Vec<_>>()
        );
    }

    #[test]
    fn each_rule_quotes_a_sentence_of_its_level() {
        for r in RULES {
            let s = r.sentence();
            let words = match r.level {
                Level::Must => ["MUST"].as_slice(),
                Level::Should => ["SHOULD"].as_slice(),
            };
            assert!(words.iter().any(|w| s.contains(w)), "{}: the sentence {s:?} does not say {words:?}", r.id);
            assert!(s.len() < 400, "{}: the sentence is too long to quote: {s:?}", r.id);
        }
    }

    #[test]
    fn every_rfc_word_of_the_spec_has_an_id() {
        // A paragraph (or bullet) saying MUST or SHOULD without an id is a rule `check`
        // does not know about.
        // Sections 1 to 5 hold the plugin's rules; the others describe the supervisor,
        // the check and its verdicts, in the same words.
        let spec = loom_protocol::SPEC;
        let rules_part = &spec[spec.find("\n## 1.").unwrap_or(0)..spec.find("\n## 6.").unwrap_or(spec.len())];
        for block in rules_part.split("\n\n").flat_map(|p| p.split("\n- ")) {
            if block.trim_start().starts_with("```") {
                continue;
            }
            let words = block.matches("MUST").count() + block.matches("SHOULD").count();
            assert!(words <= ids_in(block).len(), "a MUST or SHOULD without a rule id in PROTOCOL.md: {block:?}");
        }
    }

    #[test]
    fn sentences_are_cut_at_their_start() {
        let spec = "Intro. A plugin MUST exit. [P-1-x]\n\n- first\n- It SHOULD be so. [P-1-y] It MUST go. [P-1-z]";
        assert_eq!(sentence_before(spec, "P-1-z").as_deref(), Some("It MUST go."));
        assert_eq!(sentence_before(spec, "P-1-x").as_deref(), Some("A plugin MUST exit."));
        assert_eq!(sentence_before(spec, "P-1-y").as_deref(), Some("It SHOULD be so."));
    }
}
