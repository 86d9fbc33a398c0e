//! The declared tasks, run as Loom ran them (what one returns flows into the next), and
//! the rules about task answers: status, members, credentials, idempotence.

use loom_protocol::{PluginKind, TaskName, methods};
use serde_json::{Map, Value};

use crate::cli::check::probes::Ctx;
use crate::cli::check::report::{Evidence, Verdict};
use crate::cli::check::subject::{Answer, Subject};
use crate::wire::redact::is_secret_key;

/// Each declared task in Loom's order; DELETE twice and for an unknown machine;
/// BOOTSTRAP twice; each idempotent task twice; an action in Coopr's form too.
pub async fn lifecycle(ctx: &mut Ctx<'_>) {
    let Some(declared) = ctx.declared.clone() else { return };
    let order: Vec<TaskName> = ctx.kind().tasks().iter().copied().filter(|t| declared.tasks.contains(t)).collect();
    not_applicable(ctx, &declared.tasks, &declared.idempotent);
    let mut learned = Map::new();
    let mut coopr_done = false;
    for name in order {
        if ctx.stop() {
            return;
        }
        let id = format!("check-{}", name.as_str().to_lowercase());
        let task = ctx.samples.task(name, &id, &learned);
        let Some(first) = run(ctx, task.clone(), &format!("the sample {name}")).await else { continue };
        if first.status == 0 {
            learned.extend(first.learned());
        }
        if declared.idempotent.contains(&name) {
            again(ctx, name, task, first.status).await;
        }
        match name {
            TaskName::Bootstrap => bootstrap_twice(ctx, &learned, first.status).await,
            TaskName::Delete => delete_twice(ctx, &learned, first.status).await,
            _ if ctx.kind() == PluginKind::Automator && !coopr_done => {
                coopr_done = true;
                coopr(ctx, name, first.status, &learned).await;
            }
            _ => {}
        }
    }
}

fn not_applicable(ctx: &mut Ctx<'_>, tasks: &[TaskName], idempotent: &[TaskName]) {
    let na = |why: &str| Verdict::NotApplicable(why.to_owned());
    if idempotent.is_empty() {
        ctx.set("P-4.1-idempotent", na("it lists no idempotentTasks"));
    }
    let provider = ctx.kind() == PluginKind::Provider;
    if provider && !tasks.contains(&TaskName::Delete) {
        ctx.set("P-4.2-delete-unknown", na("it does not handle DELETE"));
    }
    if !provider && !tasks.contains(&TaskName::Bootstrap) {
        ctx.set("P-4.2-bootstrap-twice", na("it does not handle BOOTSTRAP"));
    }
    if !provider && !tasks.iter().any(|t| *t != TaskName::Bootstrap) {
        ctx.set("P-4.2-coopr-action", na("it handles no service action"));
    }
}

/// A task's answer, as far as the other probes need it.
#[derive(Debug)]
pub struct Outcome {
    /// Its status (1 for an error answer).
    pub status: i64,
    /// The answer's `result` member (the task result object).
    pub body: Value,
    /// The task line and its answer, quoted for a report.
    pub lines: Evidence,
}

impl Outcome {
    /// Evidence for a failure: `detail`, with the task and its answer.
    fn evidence(&self, detail: String) -> Evidence {
        Evidence { detail, ..self.lines.clone() }
    }
}

impl Outcome {
    /// What later tasks of the node see: `result`'s keys, `hostname`, `ipaddresses`.
    fn learned(&self) -> Map<String, Value> {
        let mut m = self.body.get("result").and_then(Value::as_object).cloned().unwrap_or_default();
        for k in ["hostname", "ipaddresses"] {
            if let Some(v) = self.body.get(k) {
                m.insert(k.to_owned(), v.clone());
            }
        }
        m
    }
}

/// Sends `task` on the shared process and judges its answer. `None` when it has none
/// (the failure is recorded and the process replaced).
pub async fn run(ctx: &mut Ctx<'_>, task: Value, what: &str) -> Option<Outcome> {
    if ctx.stop() {
        return None;
    }
    let mut s = ctx.session().await?;
    let id = s.request(methods::TASK, task).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.task).await;
    let outcome = judge_answer(ctx, &s, id, &answer, what);
    if answer.missing() {
        let hint = if matches!(answer, Answer::Timeout(_)) { " (raise --task-timeout for a slow task)" } else { "" };
        ctx.missed("P-3-answer-once", &s, id, &answer, &format!("{what}{hint}"));
    }
    ctx.give_back(s, answer.missing()).await;
    outcome
}

/// Judges a task answer against the rules on results; its outcome.
pub fn judge_answer(ctx: &mut Ctx<'_>, s: &Subject, id: i64, answer: &Answer, what: &str) -> Option<Outcome> {
    let Answer::Got(message, _) = answer else { return None };
    let lines = ctx.evidence(s, Some(id), Some(answer), "");
    if message.get("error").is_some() {
        return Some(Outcome { status: 1, body: Value::Null, lines });
    }
    let body = message.get("result").cloned().unwrap_or(Value::Null);
    let status = body.get("status");
    let Some(status) = status.and_then(Value::as_i64).filter(|_| status.is_some_and(|v| v.is_i64() || v.is_u64()))
    else {
        ctx.fail_step("P-4.2-status-integer", s, id, answer, format!("{what} answered without an integer \"status\""));
        return Some(Outcome { status: 1, body, lines });
    };
    ctx.pass("P-4.2-status-integer", "every task answer had an integer status");
    match bad_member(&body) {
        Some(why) => {
            ctx.fail_step("P-4.2-result-members", s, id, answer, format!("{what}: {why}"));
        }
        None => ctx.pass("P-4.2-result-members", "every task answer's members had their types"),
    }
    match secret_outside_result(&body) {
        Some(key) => {
            ctx.fail_step(
                "P-4.2-credentials-in-result",
                s,
                id,
                answer,
                format!("{what}: the answer holds the credential key {key:?} outside \"result\""),
            );
        }
        None => ctx.pass("P-4.2-credentials-in-result", "no credential keys outside result"),
    }
    Some(Outcome { status, body, lines })
}

/// The first member of a task result of the wrong type.
fn bad_member(body: &Value) -> Option<String> {
    let Value::Object(m) = body else { return Some("the result is not an object".into()) };
    let typed = |k: &str, ok: fn(&Value) -> bool, want: &str| {
        m.get(k).filter(|v| !v.is_null() && !ok(v)).map(|_| format!("\"{k}\" is not {want}"))
    };
    typed("result", Value::is_object, "an object")
        .or_else(|| typed("stdout", Value::is_string, "a string"))
        .or_else(|| typed("stderr", Value::is_string, "a string"))
        .or_else(|| typed("hostname", Value::is_string, "a string"))
        .or_else(|| typed("ipaddresses", Value::is_object, "an object"))
        .or_else(|| typed("cancelled", Value::is_boolean, "true or false"))
}

/// The first credential-like key anywhere in a task result but under `result`.
fn secret_outside_result(body: &Value) -> Option<String> {
    fn walk(v: &Value) -> Option<String> {
        match v {
            Value::Object(m) => m.iter().find_map(|(k, v)| if is_secret_key(k) { Some(k.clone()) } else { walk(v) }),
            Value::Array(a) => a.iter().find_map(walk),
            _ => None,
        }
    }
    body.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "result")
        .find_map(|(k, v)| if is_secret_key(k) { Some(k.clone()) } else { walk(v) })
}

/// An idempotent task sent again with the same id: it must succeed again.
async fn again(ctx: &mut Ctx<'_>, name: TaskName, task: Value, first: i64) {
    let Some(second) = run(ctx, task, &format!("{name} a second time")).await else { return };
    match (first, second.status) {
        (0, 0) => ctx.pass("P-4.1-idempotent", format!("{name}, listed in idempotentTasks, succeeded twice")),
        (0, n) => ctx.fail(
            "P-4.1-idempotent",
            Evidence::says(format!(
                "{name} is listed in idempotentTasks; it succeeded, then answered status {n} when run again"
            )),
        ),
        (n, _) => ctx.untested("P-4.1-idempotent", format!("the sample {name} answered status {n} here; pass --task")),
    }
}

async fn bootstrap_twice(ctx: &mut Ctx<'_>, learned: &Map<String, Value>, first: i64) {
    if first != 0 {
        ctx.untested(
            "P-4.2-bootstrap-twice",
            format!("the sample BOOTSTRAP answered status {first} here; pass --task with one that works"),
        );
        return;
    }
    let task = ctx.samples.task(TaskName::Bootstrap, "check-bootstrap-again", learned);
    let Some(second) = run(ctx, task, "BOOTSTRAP a second time").await else { return };
    if second.status == 0 {
        ctx.pass("P-4.2-bootstrap-twice", "BOOTSTRAP succeeded twice on one node");
    } else {
        ctx.fail(
            "P-4.2-bootstrap-twice",
            Evidence::says(format!(
                "BOOTSTRAP succeeded, then answered status {} when run again on the same node",
                second.status
            )),
        );
    }
}

/// DELETE again, of the machine just deleted, and of one that never existed. When the
/// sample DELETE itself failed (the sample cannot reach a real cloud here, say), its
/// repetitions prove nothing: untested.
async fn delete_twice(ctx: &mut Ctx<'_>, learned: &Map<String, Value>, first: i64) {
    if first != 0 {
        ctx.untested(
            "P-4.2-delete-unknown",
            format!("the sample DELETE answered status {first} here; pass --task files whose CREATE and DELETE work (against a test account)"),
        );
        return;
    }
    let task = ctx.samples.task(TaskName::Delete, "check-delete-again", learned);
    if let Some(second) = run(ctx, task, "DELETE of a machine already deleted").await {
        if second.status != 0 {
            ctx.fail(
                "P-4.2-delete-unknown",
                Evidence::says(format!("DELETE of a machine it had just deleted answered status {}", second.status)),
            );
        }
    }
    let declared = ctx.declared.as_ref().map(|d| d.tasks.clone()).unwrap_or_default();
    let task = ctx.samples.harmless(ctx.kind(), &declared, "check-delete-unknown");
    let Some(unknown) = run(ctx, task, "DELETE of an unknown machine").await else { return };
    if unknown.status == 0 {
        ctx.pass("P-4.2-delete-unknown", "DELETE of a machine already gone and of an unknown one: status 0");
    } else {
        let e = unknown.evidence(format!("DELETE of a machine that never existed answered status {}", unknown.status));
        ctx.fail("P-4.2-delete-unknown", e);
    }
}

/// The first action task again, in Coopr's form: the same status expected. When the
/// sample fails in Loom's form too, equal statuses prove nothing: untested.
async fn coopr(ctx: &mut Ctx<'_>, name: TaskName, loom_status: i64, learned: &Map<String, Value>) {
    if loom_status != 0 {
        ctx.untested(
            "P-4.2-coopr-action",
            format!("the sample {name} answered status {loom_status} here; pass --task with one that works"),
        );
        return;
    }
    let task = ctx.samples.coopr_form(name, &format!("check-{}-coopr", name.as_str().to_lowercase()), learned);
    let Some(coopr) = run(ctx, task, &format!("{name} in Coopr's form")).await else { return };
    if coopr.status == loom_status {
        ctx.pass("P-4.2-coopr-action", format!("{name} answered status {loom_status} in Loom's and in Coopr's form"));
    } else {
        ctx.fail("P-4.2-coopr-action", coopr.evidence(format!(
            "{name} answered status {loom_status} with Loom's action {{type, script, data}} and status {} with Coopr's {{type, fields: {{script, args}}}}",
            coopr.status
        )));
    }
}
