//! The probes: each sends what tests one or a few rules and records their verdicts.
//!
//! Probes run one after the other. Most share one process of the plugin (the
//! *session*); one whose state matters (before the handshake, at end of file, around
//! `shutdown`, concurrency) gets a fresh process. A step that gets no answer poisons the
//! session: it is killed and the next probe gets a fresh one, so one hung task costs one
//! failure, not every check after it. After three missed answers in a row, or past the
//! run's deadline, the remaining probes are skipped and their rules reported untested.

mod handshake;
mod long;
mod messages;
pub mod passive;
mod process;
mod tasks;

use std::time::{Duration, Instant};

use loom_protocol::{LogLevel, PROTOCOL_VERSIONS, PluginKind, TaskName, methods};
use serde_json::{Value, json};

use crate::cli::check::report::{Evidence, Verdict, Verdicts};
use crate::cli::check::sample::Samples;
use crate::cli::check::subject::{Answer, Subject};
use crate::cli::check::transcript::{Side, Transcript};
use crate::core::manifest::PluginSpec;
use crate::wire::redact::{MIN_SECRET_LEN, is_secret_key, scrub_values};

/// How `check` runs.
#[derive(Debug)]
pub struct Options {
    /// Each protocol step's timeout (`--timeout`).
    pub step: Duration,
    /// Each sample task's timeout (`--task-timeout`).
    pub task: Duration,
    /// The level the handshake asks for.
    pub log_level: LogLevel,
}

/// What the plugin declared in its handshake.
#[derive(Debug, Clone)]
pub struct Declared {
    /// `tasks`, the names it knows (unknown names dropped).
    pub tasks: Vec<TaskName>,
    /// `maxConcurrency`, 1 when absent.
    pub max_concurrency: u64,
    /// `idempotentTasks`.
    pub idempotent: Vec<TaskName>,
    /// What is wrong with `tasks`, if anything (empty, or names no Loom task).
    pub tasks_problem: Option<String>,
}

/// The state of one run.
pub struct Ctx<'a> {
    /// The plugin.
    pub spec: &'a PluginSpec,
    /// Timeouts.
    pub opts: &'a Options,
    /// The tasks to send.
    pub samples: &'a Samples,
    /// Verdicts so far.
    pub verdicts: Verdicts,
    /// Notes for the author.
    pub notes: Vec<String>,
    /// The handshake's declarations, once one succeeded.
    pub declared: Option<Declared>,
    /// Whether the plugin runs wait tasks (PROTOCOL.md section 10); `None` until known.
    pub waits: Option<bool>,
    /// Transcripts of the processes that ended, for the passive rules.
    pub transcripts: Vec<Transcript>,
    session: Option<Subject>,
    misses: u32,
    started: Instant,
    deadline: Duration,
    /// Why the remaining probes were skipped.
    pub gave_up: Option<String>,
    /// Real credentials to keep out of the report, longest first: the values of the
    /// user's `--task` files and of the manifest's settings under credential keys.
    secrets: Vec<String>,
}

/// Missed answers in a row after which the plugin is deemed to have stopped answering.
const MISSES_TO_GIVE_UP: u32 = 3;

impl<'a> Ctx<'a> {
    /// A run against `spec`.
    pub fn new(spec: &'a PluginSpec, opts: &'a Options, samples: &'a Samples) -> Ctx<'a> {
        Ctx {
            spec,
            opts,
            samples,
            verdicts: Verdicts::default(),
            notes: Vec::new(),
            declared: None,
            waits: None,
            transcripts: Vec::new(),
            session: None,
            misses: 0,
            started: Instant::now(),
            deadline: opts.step.saturating_mul(10).max(Duration::from_secs(60)),
            gave_up: None,
            secrets: secrets_of(samples, spec),
        }
    }

    /// Runs every probe in order and judges the passive rules.
    pub async fn run(&mut self) {
        process::eof_before_handshake(self).await;
        handshake::main(self).await;
        if self.declared.is_none() {
            self.gave_up.get_or_insert_with(|| "no handshake succeeded (see P-4.1-handshake)".into());
        }
        run_probes(self).await;
        if let Some(s) = self.session.take() {
            self.transcripts.push(s.finish().await);
        }
        passive::judge(self);
    }

    /// Whether the probes should stop: the plugin stopped answering, or time is up.
    pub fn stop(&mut self) -> bool {
        if self.gave_up.is_none() && self.started.elapsed() > self.deadline {
            self.gave_up = Some(format!("the run's deadline ({}) passed", crate::log::secs(self.deadline)));
        }
        self.gave_up.is_some()
    }

    /// Records a verdict, its text scrubbed of real credentials (it may quote what the
    /// plugin answered).
    pub fn set(&mut self, id: &'static str, v: Verdict) {
        let v = match v {
            Verdict::Pass(t) => Verdict::Pass(self.quote(&t)),
            Verdict::Untested(t) => Verdict::Untested(self.quote(&t)),
            Verdict::NotApplicable(t) => Verdict::NotApplicable(t),
            Verdict::Fail(e) => Verdict::Fail(Evidence {
                detail: self.quote(&e.detail),
                sent: e.sent.iter().map(|l| self.quote(l)).collect(),
                received: e.received.iter().map(|l| self.quote(l)).collect(),
            }),
        };
        self.verdicts.set(id, v);
    }

    /// Records a pass.
    pub fn pass(&mut self, id: &'static str, detail: impl Into<String>) {
        self.set(id, Verdict::Pass(detail.into()));
    }

    /// Records a failure.
    pub fn fail(&mut self, id: &'static str, e: Evidence) {
        self.set(id, Verdict::Fail(e));
    }

    /// Records "untested".
    pub fn untested(&mut self, id: &'static str, why: impl Into<String>) {
        self.set(id, Verdict::Untested(why.into()));
    }

    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        self.spec.kind
    }

    /// The handshake params `check` sends, offering `versions`.
    pub fn handshake_params(&self, versions: &[u32]) -> Value {
        json!({
            "protocolVersions": versions,
            "plugin": self.spec.name,
            "kind": self.spec.kind,
            "settings": self.spec.settings,
            "logLevel": self.opts.log_level,
        })
    }

    /// A new process, not handshaken. `None` (and a failed P-4.1-handshake) when it
    /// cannot start.
    pub async fn spawn(&mut self) -> Option<Subject> {
        match Subject::start(self.spec, self.opts.step).await {
            Ok(s) => Some(s),
            Err(e) => {
                self.fail("P-4.1-handshake", Evidence::says(format!("the plugin cannot be started: {e}")));
                self.gave_up.get_or_insert_with(|| format!("the plugin cannot be started: {e}"));
                None
            }
        }
    }

    /// A new process after a successful handshake; `None` when it cannot start or the
    /// handshake is not answered with a result (the main handshake probe judges that).
    pub async fn fresh(&mut self) -> Option<Subject> {
        let mut s = self.spawn().await?;
        let params = self.handshake_params(PROTOCOL_VERSIONS);
        let answer = self.ask(&mut s, methods::HANDSHAKE, params, self.opts.step).await;
        if answer.result().is_some() {
            return Some(s);
        }
        self.retire(s).await;
        None
    }

    /// The shared process: the live one, or a fresh one.
    pub async fn session(&mut self) -> Option<Subject> {
        match self.session.take() {
            Some(s) => Some(s),
            None => self.fresh().await,
        }
    }

    /// The shared process, if one is alive from earlier probes (never a fresh one).
    pub fn live_session(&mut self) -> Option<Subject> {
        self.session.take()
    }

    /// Gives the shared process back for the next probe, or, when `poisoned` (a step
    /// went unanswered, or its state is no longer known), ends it.
    pub async fn give_back(&mut self, s: Subject, poisoned: bool) {
        if poisoned {
            self.retire(s).await;
        } else {
            self.session = Some(s);
        }
    }

    /// Ends a process and keeps its transcript.
    pub async fn retire(&mut self, s: Subject) {
        self.transcripts.push(s.finish().await);
    }

    /// Sends a request and waits for its answer, counting misses.
    pub async fn ask(&mut self, s: &mut Subject, method: &str, params: Value, limit: Duration) -> Answer {
        let id = s.request(method, params).await;
        self.wait(s, id, limit).await
    }

    /// Waits for the answer to `id`, counting misses: after
    /// [`MISSES_TO_GIVE_UP`] in a row, the run gives up. An answered handshake does not
    /// break the row: a plugin that answers only handshakes has stopped answering.
    pub async fn wait(&mut self, s: &mut Subject, id: i64, limit: Duration) -> Answer {
        let handshake = s.method_of(id) == Some(methods::HANDSHAKE);
        let answer = s.answer(id, limit).await;
        if handshake && !answer.missing() {
            return answer;
        }
        if answer.missing() {
            self.misses += 1;
            if self.misses >= MISSES_TO_GIVE_UP {
                self.gave_up.get_or_insert_with(|| {
                    format!("the plugin stopped answering ({MISSES_TO_GIVE_UP} requests in a row went unanswered)")
                });
            }
        } else {
            self.misses = 0;
        }
        answer
    }

    /// Evidence for a step: `detail`, the line sent with `id` and the answer's line.
    pub fn evidence(
        &self,
        s: &Subject,
        id: Option<i64>,
        answer: Option<&Answer>,
        detail: impl Into<String>,
    ) -> Evidence {
        let lines = s.transcript.lock();
        let sent = id
            .and_then(|id| {
                lines.lines.iter().find(|l| {
                    l.side == Side::Sent
                        && serde_json::from_slice::<Value>(&l.bytes).ok().and_then(|m| m.get("id").cloned())
                            == Some(json!(id))
                })
            })
            .map(|l| l.quote(300, |t| self.quote(t)))
            .into_iter()
            .collect();
        let received = match answer {
            Some(Answer::Got(_, i) | Answer::Broken(i, _)) => {
                lines.lines.get(*i).map(|l| l.quote(300, |t| self.quote(t))).into_iter().collect()
            }
            _ => vec![],
        };
        Evidence { detail: detail.into(), sent, received }
    }

    /// Records a failure of rule `id` at a step: `detail`, with the request sent and the
    /// answer that came.
    pub fn fail_step(&mut self, id: &'static str, s: &Subject, sent: i64, answer: &Answer, detail: impl Into<String>) {
        let e = self.evidence(s, Some(sent), Some(answer), detail);
        self.fail(id, e);
    }

    /// Records a step whose answer is missing against rule `id`, unless the answer came
    /// but broke another rule that the passive checks report (a wrong id, bad bytes):
    /// one failure per bug.
    pub fn missed(&mut self, id: &'static str, s: &Subject, sent: i64, answer: &Answer, what: &str) {
        match answer {
            Answer::Broken(_, rule) => self.untested(id, format!("{what}: its answer broke {rule} (see there)")),
            _ => {
                let e = self.evidence(s, Some(sent), Some(answer), format!("{what}: {}", answer.describe()));
                self.fail(id, e);
            }
        }
    }

    /// `text` with the credentials of the user's own tasks and of the manifest's
    /// settings replaced; the planted ones are fake and shown, so that an author sees
    /// the leak.
    pub fn quote(&self, text: &str) -> String {
        scrub_values(text, &self.secrets).into_owned()
    }
}

fn secrets_of(samples: &Samples, spec: &PluginSpec) -> Vec<String> {
    fn walk(v: &Value, under_secret: bool, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, under_secret || is_secret_key(k), out)),
            Value::Array(a) => a.iter().for_each(|v| walk(v, under_secret, out)),
            Value::String(s) if under_secret && s.len() >= MIN_SECRET_LEN => out.push(s.clone()),
            _ => {}
        }
    }
    let mut secrets = samples.secrets.clone();
    walk(&Value::Object(spec.settings.clone()), false, &mut secrets);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

async fn run_probes(ctx: &mut Ctx<'_>) {
    macro_rules! probe {
        ($p:expr) => {
            if !ctx.stop() {
                $p(ctx).await;
            }
        };
    }
    probe!(process::before_handshake);
    probe!(handshake::version_none);
    probe!(handshake::unknown_members);
    probe!(messages::protocol_steps);
    probe!(messages::invalid_params);
    probe!(messages::undeclared);
    probe!(tasks::lifecycle);
    probe!(messages::cancel_answered);
    probe!(long::calibrate);
    probe!(long::cancel_running);
    probe!(long::eof_in_flight);
    probe!(long::shutdown_in_flight);
    probe!(long::concurrency);
    probe!(process::shutdown);
}
