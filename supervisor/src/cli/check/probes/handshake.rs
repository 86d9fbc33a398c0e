//! The handshake: its result, version negotiation, and unknown members ignored.

use loom_protocol::{TaskName, codes, methods};
use serde_json::{Value, json};

use crate::cli::check::probes::{Ctx, Declared};
use crate::cli::check::subject::Answer;

/// The shared process's handshake, offering versions 1 and 2 (2 does not exist: the
/// plugin must choose 1). Judges the result (P-4.1-handshake, P-4.1-tasks-kind,
/// P-4.1-version-choice) and keeps the declarations for the other probes.
pub async fn main(ctx: &mut Ctx<'_>) {
    if ctx.stop() {
        return;
    }
    let Some(mut s) = ctx.spawn().await else { return };
    let id = s.request(methods::HANDSHAKE, ctx.handshake_params(&[1, 2])).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
    let Some(result) = answer.result().cloned() else {
        let hint = if matches!(answer, Answer::Timeout(_)) { " (raise --timeout if it starts slowly)" } else { "" };
        ctx.fail_step("P-4.1-handshake", &s, id, &answer, format!("the handshake {}{hint}", answer.describe()));
        ctx.retire(s).await;
        return;
    };
    match judge(&result) {
        Ok((declared, summary)) => {
            ctx.pass("P-4.1-handshake", summary);
            match result.get("protocolVersion").and_then(Value::as_u64) {
                Some(1) => ctx.pass("P-4.1-version-choice", "offered [1, 2], chose 1"),
                other => {
                    ctx.fail_step(
                        "P-4.1-version-choice",
                        &s,
                        id,
                        &answer,
                        format!(
                            "offered [1, 2], chose {}; only version 1 exists",
                            other.map_or("nothing".to_owned(), |v| v.to_string())
                        ),
                    );
                }
            }
            let wrong: Vec<&str> =
                declared.tasks.iter().filter(|t| t.kind() != ctx.kind()).map(|t| t.as_str()).collect();
            if let Some(why) = &declared.tasks_problem {
                ctx.fail_step("P-4.1-tasks-kind", &s, id, &answer, why.clone());
            } else if wrong.is_empty() {
                ctx.pass("P-4.1-tasks-kind", "every declared task is of its kind");
            } else {
                ctx.fail_step(
                    "P-4.1-tasks-kind",
                    &s,
                    id,
                    &answer,
                    format!("a {} declared {}", ctx.kind(), wrong.join(", ")),
                );
            }
            if declared.max_concurrency > ctx.spec.max_concurrency as u64 {
                ctx.notes.push(format!(
                    "the plugin offers maxConcurrency {}, and its manifest allows {}: the supervisor sends it at most {} task(s) at once (raise `maxConcurrency` in the manifest)",
                    declared.max_concurrency, ctx.spec.max_concurrency, ctx.spec.max_concurrency
                ));
            }
            if declared.tasks.is_empty() {
                ctx.gave_up = Some("the plugin declared no task it handles (see P-4.1-tasks-kind)".into());
            }
            ctx.declared = Some(declared);
            ctx.give_back(s, false).await;
        }
        Err(why) => {
            ctx.fail_step("P-4.1-handshake", &s, id, &answer, why);
            ctx.retire(s).await;
        }
    }
}

/// Checks a handshake result; the declarations and a summary, or what is wrong.
fn judge(r: &Value) -> Result<(Declared, String), String> {
    let missing = |k: &str| format!("the handshake result has no {k:?}");
    r.get("protocolVersion").and_then(Value::as_u64).ok_or_else(|| missing("protocolVersion (an integer)"))?;
    let name = r.get("name").and_then(Value::as_str).ok_or_else(|| missing("name (a string)"))?;
    let version = r.get("version").and_then(Value::as_str).ok_or_else(|| missing("version (a string)"))?;
    let tasks = r.get("tasks").and_then(Value::as_array).ok_or_else(|| missing("tasks (an array)"))?;
    // What is wrong with the list is P-4.1-tasks-kind's to report; the known names go on.
    let names: Vec<TaskName> = tasks.iter().filter_map(|t| t.as_str()?.parse().ok()).collect();
    let tasks_problem = if tasks.is_empty() {
        Some("\"tasks\" is empty; a plugin declares the tasks it handles".to_owned())
    } else {
        task_names(tasks).err().map(|t| format!("\"tasks\" names {t}, which is not a Loom task"))
    };
    let max = match r.get("maxConcurrency") {
        None | Some(Value::Null) => 1,
        Some(v) => v.as_u64().filter(|n| *n >= 1).ok_or("\"maxConcurrency\" is not an integer of at least 1")?,
    };
    let idempotent = match r.get("idempotentTasks") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => task_names(a).map_err(|t| format!("\"idempotentTasks\" names {t}"))?,
        Some(_) => return Err("\"idempotentTasks\" is not an array".into()),
    };
    let summary = format!(
        "{name} {version}, tasks {}, maxConcurrency {max}",
        names.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" ")
    );
    Ok((Declared { tasks: names, max_concurrency: max, idempotent, tasks_problem }, summary))
}

fn task_names(list: &[Value]) -> Result<Vec<TaskName>, String> {
    list.iter()
        .map(|t| {
            t.as_str().and_then(|s| s.parse::<TaskName>().ok()).ok_or_else(|| crate::cli::check::subject::short(t))
        })
        .collect()
}

/// A fresh process offered only version 2: error -32001 expected (P-4.1-version-none).
pub async fn version_none(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.spawn().await else { return };
    let id = s.request(methods::HANDSHAKE, ctx.handshake_params(&[2])).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
    if answer.error_code() == Some(codes::UNSUPPORTED_PROTOCOL) {
        ctx.pass("P-4.1-version-none", "offered [2] alone: error -32001");
    } else if answer.missing() {
        ctx.missed("P-4.1-version-none", &s, id, &answer, "a handshake offering [2] alone");
    } else {
        ctx.fail_step(
            "P-4.1-version-none",
            &s,
            id,
            &answer,
            format!("offered [2] alone, {}; expected error -32001", answer.describe()),
        );
    }
    ctx.retire(s).await;
}

/// A fresh process whose handshake, a ping and a task carry members the plugin cannot
/// know: the same answers as without them expected (P-3-unknown-members).
pub async fn unknown_members(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.spawn().await else { return };
    let mut params = ctx.handshake_params(&[1]);
    params["loomCheckExtra"] = json!({"a": [1, {"b": null}]});
    let id = s
        .request_with(methods::HANDSHAKE, |id| {
            json!({"jsonrpc": "2.0", "id": id, "method": "handshake", "params": params, "loomCheckEnvelope": true})
        })
        .await;
    let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
    if answer.result().is_none() {
        ctx.fail_step(
            "P-3-unknown-members",
            &s,
            id,
            &answer,
            format!("a handshake with unknown members {}", answer.describe()),
        );
        ctx.retire(s).await;
        return;
    }
    let id = s
        .request_with(methods::PING, |id| {
            json!({"jsonrpc": "2.0", "id": id, "method": "ping", "params": {"loomCheckExtra": 1}, "loomCheckEnvelope": "x"})
        })
        .await;
    let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
    if answer.result().is_none() {
        refused(ctx, &s, id, &answer, "a ping with unknown members");
        ctx.retire(s).await;
        return;
    }
    let tasks = ctx.declared.as_ref().map(|d| d.tasks.clone()).unwrap_or_default();
    let mut task = ctx.samples.harmless(ctx.kind(), &tasks, "check-unknown-members");
    task["loomCheckExtra"] = json!({"x": 1});
    task["config"]["loomCheckExtra"] = json!([1, 2]);
    let id = s.request(methods::TASK, task).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.task).await;
    // A task may fail for reasons of its own (error answers count as status 1); only
    // "invalid request" or "invalid params" say the unknown members were refused.
    match answer.error_code() {
        Some(codes::INVALID_REQUEST | codes::INVALID_PARAMS) => {
            refused(ctx, &s, id, &answer, "a task with unknown members")
        }
        _ if answer.missing() => ctx.missed("P-3-unknown-members", &s, id, &answer, "a task with unknown members"),
        _ => ctx
            .pass("P-3-unknown-members", "a handshake, a ping and a task with unknown members were answered as usual"),
    }
    ctx.retire(s).await;
}

fn refused(ctx: &mut Ctx<'_>, s: &crate::cli::check::subject::Subject, id: i64, answer: &Answer, what: &str) {
    if answer.missing() {
        ctx.missed("P-3-unknown-members", s, id, answer, what);
    } else {
        ctx.fail_step("P-3-unknown-members", s, id, answer, format!("{what} {}", answer.describe()));
    }
}
