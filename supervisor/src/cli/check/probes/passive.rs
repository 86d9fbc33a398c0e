//! Rules judged from everything every process wrote, not by a probe of their own:
//! framing, ids, requests, notifications, limits and credentials.

use std::collections::{BTreeMap, BTreeSet};

use loom_protocol::{LogParams, OutputParams, ProgressParams, methods};
use serde_json::Value;

use crate::cli::check::probes::Ctx;
use crate::cli::check::report::{Evidence, Verdict};
use crate::cli::check::sample::Planted;
use crate::cli::check::transcript::{Joined, Kind, Line, MAX_LINES, Side, join_from};
use crate::wire::redact::is_secret_key;

/// At most this many JSON values in an answer (PROTOCOL.md 4.2).
const MAX_VALUES: usize = 100_000;

/// The passive rules, each with the first line that breaks it and how many do.
struct Findings<'a> {
    first: BTreeMap<&'static str, (String, String)>,
    count: BTreeMap<&'static str, usize>,
    /// The text of a line for the report (real credentials scrubbed).
    quote: &'a dyn Fn(&str) -> String,
    /// The fake credentials planted in the built-in tasks.
    planted: &'a Planted,
    /// The real ones: of the user's `--task` files and the manifest's settings.
    real: &'a [String],
}

impl Findings<'_> {
    fn add(&mut self, rule: &'static str, what: impl FnOnce() -> String, line: &Line) {
        *self.count.entry(rule).or_default() += 1;
        let quote = self.quote;
        self.first.entry(rule).or_insert_with(|| (what(), format!("{}: {}", line.side.name(), line.quote(300, quote))));
    }
}

const PASSIVE: [&str; 13] = [
    "P-1-fd3-stdout",
    "P-2-one-line",
    "P-2-utf8",
    "P-2-no-batches",
    "P-2-line-limit",
    "P-2-stdout-messages",
    "P-3-id-copied",
    "P-3-answer-once",
    "P-3-no-requests",
    "P-4.2-answer-limits",
    "P-4.2-credentials-private",
    "P-5-notifications",
    "P-5.3-output-running",
];

/// Judges the passive rules over every process's transcript.
pub fn judge(ctx: &mut Ctx<'_>) {
    let (mut first, count, lines_seen, dropped, tasks_answered) = {
        let quote = |t: &str| ctx.quote(t);
        let real: Vec<String> = ctx.secrets.iter().filter(|s| s.len() >= 6).cloned().collect();
        let mut f = Findings {
            first: BTreeMap::new(),
            count: BTreeMap::new(),
            quote: &quote,
            planted: &ctx.samples.planted,
            real: &real,
        };
        let (mut lines_seen, mut dropped, mut tasks_answered) = (0, 0, 0);
        for t in &ctx.transcripts {
            let lines = t.lock();
            lines_seen += lines.lines.len();
            dropped += lines.dropped;
            tasks_answered += scan(&lines.lines, &mut f);
        }
        (f.first, f.count, lines_seen, dropped, tasks_answered)
    };
    if dropped > 0 {
        ctx.notes.push(format!(
            "the plugin wrote more than {MAX_LINES} lines on one process; {dropped} were read but not kept, so answers among them were missed"
        ));
    }
    for rule in PASSIVE {
        match first.remove(rule) {
            Some((what, line)) => {
                let n = count.get(rule).copied().unwrap_or(1);
                let more = if n > 1 { format!(" ({n} times)") } else { String::new() };
                let e = Evidence { detail: format!("{what}{more}"), sent: vec![], received: vec![line] };
                ctx.set(rule, Verdict::Fail(e));
            }
            // Without a task answered, nothing carried the planted credentials back.
            None if tasks_answered == 0 && TASK_RULES.contains(&rule) => {
                ctx.untested(rule, "no task was answered");
            }
            None => ctx.pass(rule, format!("nothing against it in {lines_seen} lines")),
        }
    }
}

/// Passive rules that only tasks can break.
const TASK_RULES: [&str; 3] = ["P-4.2-credentials-private", "P-4.2-answer-limits", "P-5.3-output-running"];

/// One process's lines, in order; how many task answers it holds.
fn scan(lines: &[Line], f: &mut Findings<'_>) -> usize {
    let mut tasks_answered = 0;
    let mut sent: BTreeSet<String> = BTreeSet::new();
    let mut answered: BTreeSet<String> = BTreeSet::new();
    // Task requests sent and not answered yet: request id -> taskId.
    let mut running: BTreeMap<String, String> = BTreeMap::new();
    let mut skip_to = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.side == Side::Sent {
            note_sent(line, &mut sent, &mut running);
            continue;
        }
        if line.side == Side::Stderr {
            leak(&String::from_utf8_lossy(&line.bytes), "on stderr", line, f);
            continue;
        }
        if line.overlong {
            f.add("P-2-line-limit", || format!("a line on {} longer than maxLineBytes", line.side.name()), line);
            continue;
        }
        if i < skip_to || line.cut {
            // A line cut to the record's budget cannot be judged.
            continue;
        }
        match line.kind() {
            Kind::Blank => {}
            Kind::Answer { id, message } => {
                tasks_answered += usize::from(answer(line, id, &message, (&sent, &mut answered, &mut running), f));
            }
            Kind::Notification { method, params } => notification(line, &method, &params, &running, f),
            Kind::Request => f.add("P-3-no-requests", || "the plugin sent a request".into(), line),
            Kind::Batch => f.add("P-2-no-batches", || "a JSON array (a batch) on one line".into(), line),
            Kind::NotUtf8 { .. } => {
                f.add("P-2-utf8", || format!("a line on {} that is not UTF-8", line.side.name()), line);
                leak(&String::from_utf8_lossy(&line.bytes), "in a line that is not UTF-8", line, f);
            }
            Kind::TooDeep => f.add("P-4.2-answer-limits", || "a message nested deeper than 128 levels".into(), line),
            Kind::SeveralValues => f.add("P-2-one-line", || "several JSON values on one line".into(), line),
            Kind::Unfinished => {
                if let Joined::Value(_, end) = join_from(lines, i) {
                    skip_to = end + 1;
                }
                f.add("P-2-one-line", || "a message spread over several lines (pretty-printed)".into(), line);
            }
            Kind::Junk if line.side == Side::Stdout => {
                f.add("P-2-stdout-messages", || "a line on stdout that is not a JSON-RPC message".into(), line);
                leak(&String::from_utf8_lossy(&line.bytes), "on stdout", line, f);
            }
            Kind::Junk => leak(&String::from_utf8_lossy(&line.bytes), "on fd 3", line, f),
        }
    }
    tasks_answered
}

fn note_sent(line: &Line, sent: &mut BTreeSet<String>, running: &mut BTreeMap<String, String>) {
    let Ok(m) = serde_json::from_slice::<Value>(&line.bytes) else { return };
    let Some(id) = m.get("id") else { return };
    sent.insert(id.to_string());
    if m.get("method").and_then(Value::as_str) == Some(methods::TASK)
        && let Some(task_id) = m.get("params").and_then(|p| p.get("taskId")).and_then(Value::as_str)
    {
        running.insert(id.to_string(), task_id.to_owned());
    }
}

type Ids<'a> = (&'a BTreeSet<String>, &'a mut BTreeSet<String>, &'a mut BTreeMap<String, String>);

/// Judges one answer; whether it answers a task.
fn answer(line: &Line, id: Value, message: &Value, ids: Ids<'_>, f: &mut Findings<'_>) -> bool {
    let (sent, answered, running) = ids;
    let key = id.to_string();
    let parse_error =
        id.is_null() && message.get("error").and_then(|e| e.get("code")).and_then(Value::as_i64) == Some(-32700);
    if line.side == Side::Fd3 {
        f.add("P-1-fd3-stdout", || "an answer on fd 3; answers go on stdout".into(), line);
    }
    if !parse_error && !sent.contains(&key) {
        f.add("P-3-id-copied", || format!("an answer with the id {key}, which was never sent"), line);
    } else if !parse_error && !answered.insert(key.clone()) {
        f.add("P-3-answer-once", || format!("a second answer to the request with id {key}"), line);
    }
    let was_task = running.remove(&key).is_some();
    if count_values(message) > MAX_VALUES {
        f.add("P-4.2-answer-limits", || format!("an answer with more than {MAX_VALUES} JSON values"), line);
    }
    // A task answer's `result.result` is where credentials may go; members under
    // credential keys elsewhere are P-4.2-credentials-in-result's to report.
    let mut shown = message.clone();
    if was_task && let Some(r) = shown.get_mut("result").and_then(Value::as_object_mut) {
        r.remove("result");
    }
    drop_secret_keys(&mut shown);
    leak(&shown.to_string(), "in an answer outside \"result\"", line, f);
    was_task
}

fn drop_secret_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !is_secret_key(k));
            m.values_mut().for_each(drop_secret_keys);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_secret_keys),
        _ => {}
    }
}

fn notification(line: &Line, method: &str, params: &Value, running: &BTreeMap<String, String>, f: &mut Findings<'_>) {
    leak(&params.to_string(), &format!("in a {method:?} notification"), line, f);
    let well_formed = match method {
        methods::LOG => serde_json::from_value::<LogParams>(params.clone()).is_ok(),
        methods::PROGRESS => serde_json::from_value::<ProgressParams>(params.clone())
            .is_ok_and(|p| p.percent.is_none_or(|n| (0.0..=100.0).contains(&n))),
        methods::OUTPUT => serde_json::from_value::<OutputParams>(params.clone()).is_ok(),
        _ => true,
    };
    if !well_formed {
        f.add(
            "P-5-notifications",
            || format!("a {method:?} notification whose params do not match PROTOCOL.md section 5"),
            line,
        );
        return;
    }
    if method == methods::OUTPUT {
        if line.side == Side::Fd3 {
            // Its order against stdout is lost: only the rule about fd 3 judges it.
            f.add("P-1-fd3-stdout", || "an output notification on fd 3; output goes on stdout".into(), line);
            return;
        }
        let task = params.get("taskId").and_then(Value::as_str).unwrap_or_default();
        if !running.values().any(|t| t == task) {
            f.add("P-5.3-output-running", || "an output notification for a task that is not running".into(), line);
        }
    }
}

fn leak(text: &str, where_: &str, line: &Line, f: &mut Findings<'_>) {
    if let Some(place) = f.planted.found_in(text) {
        f.add("P-4.2-credentials-private", || format!("the planted {place} showed {where_}"), line);
    } else if f.real.iter().any(|s| text.contains(s.as_str())) {
        f.add(
            "P-4.2-credentials-private",
            || format!("a credential of a --task file or of the settings showed {where_}"),
            line,
        );
    }
}

/// JSON values at every depth: members, elements and scalars.
fn count_values(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_values).sum(),
        Value::Object(m) => m.values().map(count_values).sum(),
        _ => 0,
    }
}
