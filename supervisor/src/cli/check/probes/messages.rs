//! Messages on a live process: ping, an unknown method, unknown notifications, a line
//! that is not JSON, `cancel` of an unknown task, unreadable task params, tasks the
//! plugin did not declare.

use loom_protocol::{PluginKind, codes, methods};
use serde_json::{Value, json};

use crate::cli::check::probes::Ctx;
use crate::cli::check::subject::Subject;

/// `ping`, an unknown method, unknown notifications, a line that is not JSON and a
/// `cancel` for a task never sent, each followed by a ping to see the plugin is still
/// there.
pub async fn protocol_steps(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.session().await else { return };
    let ok = steps(ctx, &mut s).await;
    ctx.give_back(s, !ok).await;
}

async fn steps(ctx: &mut Ctx<'_>, s: &mut Subject) -> bool {
    let step = ctx.opts.step;
    let id = s.request(methods::PING, json!({})).await;
    let answer = ctx.wait(s, id, step).await;
    match answer.result() {
        Some(Value::Object(_)) => ctx.pass("P-4.3-ping", "answered {}"),
        Some(_) => {
            ctx.fail_step(
                "P-4.3-ping",
                s,
                id,
                &answer,
                format!("ping {}; expected the result {{}}", answer.describe()),
            );
        }
        None if answer.missing() => {
            ctx.missed("P-4.3-ping", s, id, &answer, "ping");
            return false;
        }
        None => {
            ctx.fail_step(
                "P-4.3-ping",
                s,
                id,
                &answer,
                format!("ping {}; expected the result {{}}", answer.describe()),
            );
        }
    }

    let id = s.request("loom.check/no-such-method", json!({})).await;
    let answer = ctx.wait(s, id, step).await;
    match answer.error_code() {
        Some(codes::METHOD_NOT_FOUND) => ctx.pass("P-3-unknown-method", "answered error -32601"),
        _ if answer.missing() => {
            ctx.missed("P-3-unknown-method", s, id, &answer, "an unknown method");
            return false;
        }
        _ => {
            ctx.fail_step(
                "P-3-unknown-method",
                s,
                id,
                &answer,
                format!("an unknown method {}; expected error -32601", answer.describe()),
            );
        }
    }

    s.notify("loom.check/no-such-notification", json!({"loomCheck": true})).await;
    s.send_raw(br#"{"jsonrpc":"2.0","method":"loom.check/no-params"}"#.to_vec()).await;
    if !alive(ctx, s, "P-3-unknown-notification", "two unknown notifications").await {
        return false;
    }
    s.send_raw(b"this line is not JSON {".to_vec()).await;
    if !alive(ctx, s, "P-3-parse-error", "a line that is not JSON").await {
        return false;
    }
    s.notify(methods::CANCEL, json!({"taskId": "check-never-sent"})).await;
    alive(ctx, s, "P-4.5-cancel-unknown", "a cancel for a task never sent").await
}

/// After something the plugin must ignore: a ping must still be answered.
async fn alive(ctx: &mut Ctx<'_>, s: &mut Subject, rule: &'static str, what: &str) -> bool {
    let id = s.request(methods::PING, json!({})).await;
    let answer = ctx.wait(s, id, ctx.opts.step).await;
    if answer.missing() {
        ctx.missed(rule, s, id, &answer, &format!("after {what}, the next ping"));
        return false;
    }
    ctx.pass(rule, format!("ignored {what}; the next ping was answered"));
    true
}

/// After the tasks ran: a `cancel` for one the plugin already answered must be ignored
/// too.
pub async fn cancel_answered(ctx: &mut Ctx<'_>) {
    let Some(first) =
        ctx.declared.as_ref().and_then(|d| ctx.kind().tasks().iter().find(|t| d.tasks.contains(t)).copied())
    else {
        return;
    };
    // Only where the task was answered: a fresh process never saw it.
    let Some(mut s) = ctx.live_session() else {
        ctx.untested("P-4.5-cancel-unknown", "the process that ran the tasks did not last");
        return;
    };
    let task_id = format!("check-{}", first.as_str().to_lowercase());
    s.notify(methods::CANCEL, json!({"taskId": task_id})).await;
    let ok = alive(ctx, &mut s, "P-4.5-cancel-unknown", "a cancel for a task already answered").await;
    ctx.give_back(s, !ok).await;
}

/// A `task` whose params are not a task (`taskId` a number): error -32602 expected.
pub async fn invalid_params(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.session().await else { return };
    let id = s.request(methods::TASK, json!({"taskId": 7, "taskName": 7})).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
    let poisoned = answer.missing();
    match answer.error_code() {
        Some(codes::INVALID_PARAMS) => ctx.pass("P-4.2-invalid-params", "a task with unreadable params: error -32602"),
        _ if poisoned => ctx.missed("P-3-answer-once", &s, id, &answer, "a task with unreadable params"),
        _ => {
            ctx.fail_step(
                "P-4.2-invalid-params",
                &s,
                id,
                &answer,
                format!("a task with unreadable params {}; expected error -32602", answer.describe()),
            );
        }
    }
    ctx.give_back(s, poisoned).await;
}

/// Tasks the plugin did not declare (one of its kind, if any, and one of the other
/// kind): an error or a non-zero status (P-4.2-undeclared-task), error -32002 best
/// (P-4.2-undeclared-code).
pub async fn undeclared(ctx: &mut Ctx<'_>) {
    let Some(declared) = ctx.declared.clone() else { return };
    let other_kind = match ctx.kind() {
        PluginKind::Provider => PluginKind::Automator,
        PluginKind::Automator => PluginKind::Provider,
    };
    // One it did not declare: a plugin that declares the other kind's tasks is
    // P-4.1-tasks-kind's to report.
    let other = other_kind.tasks().iter().copied().find(|t| !declared.tasks.contains(t));
    let own = ctx.kind().tasks().iter().copied().find(|t| !declared.tasks.contains(t));
    for (i, name) in own.into_iter().chain(other).enumerate() {
        if ctx.stop() {
            return;
        }
        let Some(mut s) = ctx.session().await else { return };
        let task = ctx.samples.task(name, &format!("check-undeclared-{i}"), &serde_json::Map::new());
        let id = s.request(methods::TASK, task).await;
        let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
        let what = format!("{name}, which it did not declare,");
        let status = answer.result().and_then(|r| r.get("status")).and_then(Value::as_i64);
        match (answer.error_code(), status) {
            (Some(codes::TASK_NOT_SUPPORTED), _) => {
                ctx.pass("P-4.2-undeclared-task", format!("{what} answered error -32002"));
                ctx.pass("P-4.2-undeclared-code", "error -32002");
            }
            (Some(_), _) | (None, Some(1..) | Some(..=-1)) => {
                ctx.pass("P-4.2-undeclared-task", format!("{what} {}", answer.describe()));
                ctx.fail_step(
                    "P-4.2-undeclared-code",
                    &s,
                    id,
                    &answer,
                    format!("{what} {}; expected error -32002", answer.describe()),
                );
            }
            _ if answer.missing() => {
                ctx.missed("P-3-answer-once", &s, id, &answer, &format!("the task {name}, which it did not declare"));
                ctx.give_back(s, true).await;
                continue;
            }
            _ => {
                ctx.fail_step(
                    "P-4.2-undeclared-task",
                    &s,
                    id,
                    &answer,
                    format!("{what} {}; expected error -32002", answer.describe()),
                );
            }
        }
        ctx.give_back(s, false).await;
    }
}
