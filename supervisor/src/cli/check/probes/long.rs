//! Rules that need a task that runs long: cancel, ping while busy, end of file and
//! shutdown with a task in flight, concurrency. The long task is the check protocol's
//! wait task (PROTOCOL.md section 10); a plugin that does not run it gets "untested"
//! for these rules, never a pass.

use std::time::{Duration, Instant};

use loom_protocol::{codes, methods};
use serde_json::{Value, json};

use crate::cli::check::probes::Ctx;
use crate::cli::check::probes::tasks::judge_answer;
use crate::cli::check::report::Evidence;
use crate::cli::check::subject::{Answer, Subject};
use crate::log::secs;

const NEEDS_WAIT: [&str; 5] = [
    "P-4.5-cancel-running",
    "P-4.5-cancelled-answer",
    "P-4.3-ping-busy",
    "P-4.4-shutdown-in-flight",
    "P-4.1-concurrency",
];

/// The rules that a user's slow task (`--slow-task`) can test.
const SLOW_TASK_RULES: [&str; 3] = ["P-4.5-cancel-running", "P-4.5-cancelled-answer", "P-4.3-ping-busy"];

/// How long the calibration wait task waits: a real task of the plugin is unlikely to
/// take just as long and pass for one.
const CALIBRATE: f64 = 1.5;

/// How long the cancelled wait task would run: longer than any grace `check` gives it.
const CANCELLED_WAIT: f64 = 120.0;

/// The longest `check` waits for a cancelled task's answer, whatever the manifest's
/// `cancelGraceSecs`.
const MAX_CANCEL_GRACE: Duration = Duration::from_secs(30);

fn wait_task(ctx: &Ctx<'_>, id: &str, secs: f64) -> Value {
    let declared = ctx.declared.as_ref().map(|d| d.tasks.clone()).unwrap_or_default();
    ctx.samples.wait(ctx.kind(), &declared, id, secs)
}

/// A wait task of 1.5 s: answered with status 0 no sooner than that means the plugin
/// runs wait tasks.
pub async fn calibrate(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.session().await else { return };
    let started = Instant::now();
    let id = s.request(methods::TASK, wait_task(ctx, "check-wait-calibrate", CALIBRATE)).await;
    let answer = ctx.wait(&mut s, id, ctx.opts.task + Duration::from_secs_f64(CALIBRATE)).await;
    let took = started.elapsed();
    let outcome = judge_answer(ctx, &s, id, &answer, "a wait task");
    let waits = outcome.is_some_and(|o| o.status == 0) && took >= Duration::from_secs_f64(CALIBRATE);
    ctx.waits = Some(waits);
    if !waits {
        let slow = ctx.samples.slow.is_some();
        for rule in NEEDS_WAIT.iter().filter(|r| !slow || !SLOW_TASK_RULES.contains(r)) {
            ctx.untested(rule, "it does not run the check protocol's wait task (PROTOCOL.md section 10); no task ran long enough (or give --slow-task)");
        }
        if answer.missing() {
            ctx.missed("P-3-answer-once", &s, id, &answer, "a wait task of 1.5 s");
        }
    }
    ctx.give_back(s, answer.missing()).await;
}

fn waits(ctx: &Ctx<'_>) -> bool {
    ctx.waits == Some(true)
}

/// Sends a ping and waits for its answer: once it comes, every line sent before it has
/// been read. `None` when it does not come in the step's time.
async fn read_so_far(ctx: &mut Ctx<'_>, s: &mut Subject) -> Option<Duration> {
    let started = Instant::now();
    let id = s.request(methods::PING, json!({})).await;
    // Not counted as a miss: a plugin may answer a ping only between tasks (a SHOULD).
    let answer = s.answer(id, ctx.opts.step).await;
    (!answer.missing()).then(|| started.elapsed())
}

/// A long wait task, a ping while it runs (P-4.3-ping-busy), then `cancel`: its answer
/// must come after the cancel and within the cancel grace (P-4.5-cancel-running),
/// non-zero with `cancelled: true` (P-4.5-cancelled-answer).
pub async fn cancel_running(ctx: &mut Ctx<'_>) {
    let task = match (waits(ctx), &ctx.samples.slow) {
        (true, _) => wait_task(ctx, "check-wait-cancel", CANCELLED_WAIT),
        (false, Some(slow)) => {
            let mut t = slow.clone();
            t["taskId"] = json!("check-wait-cancel");
            t
        }
        (false, None) => return,
    };
    let Some(mut s) = ctx.session().await else { return };
    let id = s.request(methods::TASK, task).await;
    match read_so_far(ctx, &mut s).await {
        Some(took) => {
            ctx.pass("P-4.3-ping-busy", format!("a ping sent while a task ran was answered in {}", millis(took)))
        }
        None => {
            let e =
                Evidence::says(format!("a ping sent while a task ran was not answered within {}", secs(ctx.opts.step)));
            ctx.fail("P-4.3-ping-busy", e);
        }
    }
    let cancel_at = s.transcript.lock().lines.len();
    s.notify(methods::CANCEL, json!({"taskId": "check-wait-cancel"})).await;
    let grace = ctx.spec.cancel_grace.clamp(ctx.opts.step, MAX_CANCEL_GRACE);
    let answer = ctx.wait(&mut s, id, grace).await;
    if let Answer::Got(_, i) = &answer
        && *i < cancel_at
    {
        // The task ended by itself before it could be cancelled (a slow task too quick).
        ctx.untested("P-4.5-cancel-running", "the long task was answered before its cancel was sent");
        ctx.untested("P-4.5-cancelled-answer", "the long task was answered before its cancel was sent");
        ctx.give_back(s, false).await;
        return;
    }
    if answer.missing() {
        ctx.missed(
            "P-4.5-cancel-running",
            &s,
            id,
            &answer,
            &format!("a running task, cancelled (the grace is the manifest's cancelGraceSecs, {})", secs(grace)),
        );
        ctx.give_back(s, true).await;
        return;
    }
    ctx.pass("P-4.5-cancel-running", "a running task was answered soon after its cancel");
    let outcome = judge_answer(ctx, &s, id, &answer, "a cancelled task");
    let cancelled = answer.result().and_then(|r| r.get("cancelled")) == Some(&Value::Bool(true));
    match outcome {
        Some(o) if o.status != 0 && cancelled => {
            ctx.pass("P-4.5-cancelled-answer", "non-zero status and \"cancelled\": true")
        }
        _ => {
            ctx.fail_step(
                "P-4.5-cancelled-answer",
                &s,
                id,
                &answer,
                "a cancelled task's answer should have a non-zero status and \"cancelled\": true",
            );
        }
    }
    ctx.give_back(s, false).await;
}

/// A fresh process: a task in hand when stdin closes; its answer must still come, after
/// the end of file, then the exit (P-1-eof-answers). Without wait tasks, a quick task is
/// sent with the end of file right behind it; answered before the end of file was even
/// written, it proves nothing.
pub async fn eof_in_flight(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.fresh().await else { return };
    let declared = ctx.declared.as_ref().map(|d| d.tasks.clone()).unwrap_or_default();
    let (task, limit) = if waits(ctx) {
        (wait_task(ctx, "check-wait-eof", 1.0), ctx.opts.step + Duration::from_secs(1))
    } else {
        (ctx.samples.harmless(ctx.kind(), &declared, "check-eof"), ctx.opts.task)
    };
    let id = s.request(methods::TASK, task).await;
    if waits(ctx) {
        let _ = read_so_far(ctx, &mut s).await;
    }
    let closed_at = s.transcript.lock().lines.len();
    s.close_stdin();
    let answer = ctx.wait(&mut s, id, limit).await;
    if answer.missing() {
        ctx.missed("P-1-eof-answers", &s, id, &answer, "a task in hand when stdin closed");
        ctx.retire(s).await;
        return;
    }
    match s.wait_exit(ctx.opts.step).await {
        _ if matches!(answer, Answer::Got(_, i) if i < closed_at) => {
            ctx.untested(
                "P-1-eof-answers",
                "the quick task was answered before stdin closed (the plugin runs no wait task)",
            );
        }
        Some(_) => ctx.pass("P-1-eof-answers", "answered the task in hand after stdin closed, then exited"),
        None => ctx.fail(
            "P-1-eof-exit",
            Evidence::says(format!("answered its task, but still running {} after stdin closed", secs(ctx.opts.step))),
        ),
    }
    ctx.retire(s).await;
}

/// A fresh process with a task running: `shutdown` answered at once, not after the
/// task (P-4.4-shutdown-in-flight); a task after it refused with -32003
/// (P-4.4-refuse-after-shutdown); the running task still answered at end of file.
pub async fn shutdown_in_flight(ctx: &mut Ctx<'_>) {
    let Some(mut s) = ctx.fresh().await else { return };
    let running = waits(ctx);
    // Longer than a step, so that a plugin answering `shutdown` only after its tasks
    // misses the step's time; within the check protocol's 300 s.
    let wait = (ctx.opts.step.as_secs_f64() + 2.0).min(300.0);
    let task_id = if running {
        let id = s.request(methods::TASK, wait_task(ctx, "check-wait-shutdown", wait)).await;
        let _ = read_so_far(ctx, &mut s).await;
        Some(id)
    } else {
        None
    };
    let sid = s.request(methods::SHUTDOWN, json!({})).await;
    let answer = ctx.wait(&mut s, sid, ctx.opts.step).await;
    if answer.result().is_none() {
        let rule = if running { "P-4.4-shutdown-in-flight" } else { "P-4.4-shutdown" };
        ctx.missed(rule, &s, sid, &answer, if running { "shutdown with a task running" } else { "shutdown" });
        ctx.retire(s).await;
        return;
    }
    if let Some(task) = task_id {
        if s.answered(task) {
            ctx.fail_step(
                "P-4.4-shutdown-in-flight",
                &s,
                sid,
                &answer,
                "answered shutdown only after the task in flight",
            );
        } else {
            ctx.pass("P-4.4-shutdown-in-flight", "answered shutdown at once with a task running");
        }
    }
    let declared = ctx.declared.as_ref().map(|d| d.tasks.clone()).unwrap_or_default();
    let late = ctx.samples.harmless(ctx.kind(), &declared, "check-after-shutdown");
    let lid = s.request(methods::TASK, late).await;
    let answer = ctx.wait(&mut s, lid, ctx.opts.step).await;
    match answer.error_code() {
        Some(codes::SHUTTING_DOWN) => ctx.pass("P-4.4-refuse-after-shutdown", "a task after shutdown: error -32003"),
        _ if answer.missing() => ctx.missed("P-3-answer-once", &s, lid, &answer, "a task sent after shutdown"),
        _ => {
            ctx.fail_step(
                "P-4.4-refuse-after-shutdown",
                &s,
                lid,
                &answer,
                format!("a task after shutdown {}; expected error -32003", answer.describe()),
            );
        }
    }
    s.close_stdin();
    if let Some(id) = task_id {
        let answer = ctx.wait(&mut s, id, Duration::from_secs_f64(wait) + ctx.opts.step).await;
        if answer.missing() {
            ctx.missed("P-1-eof-answers", &s, id, &answer, "a task running at shutdown, after stdin closed");
        }
    }
    ctx.retire(s).await;
}

/// How long each concurrent wait task waits.
const CONCURRENT_WAIT: f64 = 3.0;

/// A fresh process, alone: as many wait tasks at once as it declares (at most 8); run
/// concurrently, all are answered in about one wait, not one after another
/// (P-4.1-concurrency).
pub async fn concurrency(ctx: &mut Ctx<'_>) {
    let n = ctx.declared.as_ref().map_or(1, |d| d.max_concurrency).min(8);
    if n <= 1 {
        ctx.pass("P-4.1-concurrency", "it declares maxConcurrency 1");
        return;
    }
    if !waits(ctx) {
        return;
    }
    let Some(mut s) = ctx.fresh().await else { return };
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            s.request(methods::TASK, wait_task(ctx, &format!("check-wait-concurrent-{i}"), CONCURRENT_WAIT)).await,
        );
    }
    let limit = Duration::from_secs_f64(CONCURRENT_WAIT * 2.0) + ctx.opts.step;
    let mut last = Duration::ZERO;
    for id in ids {
        let answer = ctx.wait(&mut s, id, limit.saturating_sub(started.elapsed())).await;
        if answer.missing() {
            ctx.missed("P-4.1-concurrency", &s, id, &answer, &format!("one of {n} wait tasks sent at once"));
            ctx.retire(s).await;
            return;
        }
        last = started.elapsed();
    }
    // Run one after another, they take n waits; at once, one (plus start-up). Each
    // must really have waited.
    if last.as_secs_f64() < CONCURRENT_WAIT {
        ctx.untested(
            "P-4.1-concurrency",
            format!("the wait tasks were answered in {:.1} s, before their wait", last.as_secs_f64()),
        );
    } else if last.as_secs_f64() < CONCURRENT_WAIT * 1.75 {
        ctx.pass(
            "P-4.1-concurrency",
            format!("{n} tasks of {CONCURRENT_WAIT} s sent at once were all answered in {:.1} s", last.as_secs_f64()),
        );
    } else {
        ctx.fail("P-4.1-concurrency", Evidence::says(format!(
            "it declares maxConcurrency {n}, but {n} tasks of {CONCURRENT_WAIT} s sent at once took {:.1} s: they did not run at the same time",
            last.as_secs_f64()
        )));
    }
    ctx.retire(s).await;
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
