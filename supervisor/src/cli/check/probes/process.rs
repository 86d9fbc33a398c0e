//! The process's life: end of file before and after the handshake, requests before the
//! handshake, `shutdown` and the exit after it.

use loom_protocol::{PROTOCOL_VERSIONS, codes, methods};
use serde_json::json;

use crate::cli::check::probes::Ctx;
use crate::cli::check::report::Evidence;
use crate::cli::check::subject::Subject;
use crate::core::process::describe_exit;
use crate::log::secs;

/// A fresh process, no handshake, stdin closed at once: it must exit (P-1-eof-exit).
pub async fn eof_before_handshake(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.spawn().await else { return };
    s.close_stdin();
    expect_exit(ctx, &mut s, "with stdin closed before any message").await;
    ctx.retire(s).await;
}

/// Waits for the exit after end of file and judges P-1-eof-exit and P-1-eof-exit-zero.
async fn expect_exit(ctx: &mut Ctx<'_>, s: &mut Subject, when: &str) {
    let limit = ctx.opts.step;
    match s.wait_exit(limit).await {
        Some(status) if status.code() == Some(0) => {
            ctx.pass("P-1-eof-exit", format!("exited {when}"));
            ctx.pass("P-1-eof-exit-zero", "exited with code 0 at end of file");
        }
        Some(status) => {
            ctx.pass("P-1-eof-exit", format!("exited {when}"));
            ctx.fail("P-1-eof-exit-zero", Evidence::says(format!("{} at end of file {when}", describe_exit(status))));
        }
        None => ctx.fail(
            "P-1-eof-exit",
            Evidence::says(format!(
                "still running {} after its stdin closed {when} (raise --timeout if it is slow)",
                secs(limit)
            )),
        ),
    }
}

/// A fresh process: a task before the handshake (error -32004 expected), then the
/// handshake (it must still work), then end of file while idle (exit expected).
pub async fn before_handshake(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.spawn().await else { return };
    let tasks = ctx.declared.as_ref().map(|d| d.tasks.clone()).unwrap_or_default();
    let task = ctx.samples.harmless(ctx.kind(), &tasks, "check-before-handshake");
    let id = s.request(methods::TASK, task).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
    match answer.error_code() {
        Some(codes::NOT_INITIALIZED) => ctx.pass("P-4.1-before-handshake", "a task before the handshake: error -32004"),
        _ if answer.missing() => {
            ctx.missed("P-3-answer-once", &s, id, &answer, "a task sent before the handshake");
            ctx.untested(
                "P-4.1-before-handshake",
                "the task before the handshake was not answered (see P-3-answer-once)",
            );
            ctx.retire(s).await;
            return;
        }
        _ => {
            ctx.fail_step(
                "P-4.1-before-handshake",
                &s,
                id,
                &answer,
                format!("a task before the handshake {}; expected error -32004", answer.describe()),
            );
        }
    }
    let params = ctx.handshake_params(PROTOCOL_VERSIONS);
    let hid = s.request(methods::HANDSHAKE, params).await;
    let hs = ctx.wait(&mut s, hid, ctx.opts.step).await;
    if hs.result().is_none() {
        ctx.fail_step(
            "P-4.1-before-handshake",
            &s,
            hid,
            &hs,
            format!("after a task before the handshake, the handshake {}", hs.describe()),
        );
        ctx.retire(s).await;
        return;
    }
    s.close_stdin();
    expect_exit(ctx, &mut s, "after the handshake, with no task in hand").await;
    ctx.retire(s).await;
}

/// On the shared process, last: `shutdown` answered with `{}`, then the exit once stdin
/// closes.
pub async fn shutdown(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.session().await else { return };
    let id = s.request(methods::SHUTDOWN, json!({})).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.step).await;
    if !answer.result().is_some_and(serde_json::Value::is_object) {
        ctx.fail_step(
            "P-4.4-shutdown",
            &s,
            id,
            &answer,
            format!("shutdown {}; expected the result {{}}", answer.describe()),
        );
        ctx.retire(s).await;
        return;
    }
    s.close_stdin();
    let limit = ctx.opts.step;
    match s.wait_exit(limit).await {
        Some(status) => {
            ctx.pass("P-4.4-shutdown", "answered shutdown and exited when stdin closed");
            if status.code() == Some(0) {
                ctx.pass("P-1-eof-exit-zero", "exited with code 0");
            } else {
                ctx.fail(
                    "P-1-eof-exit-zero",
                    Evidence::says(format!("{} after shutdown and end of file", describe_exit(status))),
                );
            }
        }
        None => ctx.fail(
            "P-4.4-shutdown",
            Evidence::says(format!("answered shutdown, but still running {} after stdin closed", secs(limit))),
        ),
    }
    ctx.retire(s).await;
}
