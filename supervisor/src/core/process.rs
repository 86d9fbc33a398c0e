//! One running plugin process: spawn, handshake, serve until something ends it, stop.
//!
//! [`PluginProcess`] ties a child process to its [`Connection`] and its stderr reader.
//! Whatever ends a process (it exits, breaks the protocol, hangs, or is told to stop),
//! [`PluginProcess::finish`] runs the same clean-up: kill everything left in its cgroup
//! ([`crate::core::cgroup`]; where there is none, in its process group), read what is left
//! in its pipes (for a bounded time, because without a cgroup a grandchild that escaped
//! the group may hold them open forever), reap it, remove its cgroup, and fail every call
//! still in flight with the cause and the plugin's last stderr lines.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loom_protocol::{HandshakeParams, HandshakeResult, LogLevel, PROTOCOL_VERSIONS, PluginKind, TaskName, methods};
use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::core::cgroup::{Cgroup, Joining};
use crate::core::manifest::{PluginSpec, size_text};
use crate::core::spawn::{self, ChildSetup};
use crate::log::secs;
use crate::wire::capture::LastLines;
use crate::wire::connection::{Call, Connection, Outcome, ReaderEnd, Reply, WriterEnd};
use crate::wire::redact::Redactor;

/// After a pipe closes, how long to wait for the process's exit status.
const EXIT_AFTER_PIPE_CLOSED: Duration = Duration::from_millis(500);

/// How long to keep reading a dead process's pipes for its last words.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// How long the processes of a killed cgroup may take to be gone.
const CGROUP_EMPTY_LIMIT: Duration = Duration::from_secs(10);

/// After a SIGKILL that the supervisor did not send, how long to wait for the kernel to
/// count an out-of-memory kill (it counts after sending the signal).
const OOM_COUNT_WAIT: Duration = Duration::from_millis(50);

/// A running plugin process and its channel.
pub struct PluginProcess {
    name: Arc<str>,
    child: Child,
    pid: u32,
    conn: Arc<Connection>,
    reader: Option<JoinHandle<ReaderEnd>>,
    writer: Option<JoinHandle<WriterEnd>>,
    stderr: Option<JoinHandle<()>>,
    /// The reader of the log channel (fd 3).
    log: Option<JoinHandle<()>>,
    last_stderr: Arc<Mutex<LastLines>>,
    exit: Option<ExitStatus>,
    /// Its cgroup, where the supervisor can make one; removed by [`PluginProcess::finish`].
    cgroup: Option<Cgroup>,
    /// Whether its end was already put down to its memory limit.
    memory_limit_reported: bool,
}

/// Why a process stopped serving.
#[derive(Debug)]
pub enum End {
    /// It exited by itself.
    Exited(ExitStatus),
    /// It closed its stdout while running.
    StdoutClosed,
    /// Reading its stdout failed.
    StdoutFailed(String),
    /// It stopped reading its stdin.
    StdinFailed(String),
    /// It broke the protocol.
    Violation(String),
    /// It did not answer a ping in time.
    PingTimeout(Duration),
    /// The supervisor killed it (a task timed out).
    Killed(String),
    /// The kernel killed it: its cgroup reached its memory limit (bytes).
    MemoryLimit(u64),
    /// A graceful stop was requested.
    Stop,
    /// A graceful restart was requested.
    Restart,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Exited(status) => f.write_str(&describe_exit(*status)),
            End::StdoutClosed => f.write_str("closed its stdout"),
            End::StdoutFailed(e) => write!(f, "could not be read from: {e}"),
            End::StdinFailed(e) => write!(f, "stopped reading its stdin ({e})"),
            End::Violation(v) => f.write_str(v),
            End::PingTimeout(d) => write!(f, "did not answer a ping within {}", secs(*d)),
            End::Killed(why) => write!(f, "was killed: {why}"),
            End::MemoryLimit(bytes) => write!(f, "was killed: memory limit {} reached", size_text(*bytes)),
            End::Stop => f.write_str("was stopped"),
            End::Restart => f.write_str("was restarted on request"),
        }
    }
}

/// Why a handshake failed. Each message completes a sentence about the plugin ("the
/// plugin ... did not answer the handshake within 10 s"); nothing the plugin sent is
/// quoted unless it was scrubbed of credentials first.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The process ended before it answered.
    #[error("{0} during the handshake")]
    Ended(End),
    /// No answer in time (the manifest's `handshakeTimeoutSecs`).
    #[error("did not answer the handshake within {}", secs(*.0))]
    Timeout(Duration),
    /// The answer is not a handshake result: a missing field or an unknown task named
    /// (scrubbed), or where the problem is.
    #[error("answered the handshake with an invalid result ({0})")]
    InvalidResult(String),
    /// It answered `unsupported protocol`; its message, scrubbed.
    #[error("offers no common protocol version (the supervisor speaks {PROTOCOL_VERSIONS:?}): {0}")]
    NoCommonVersion(String),
    /// It answered with another error.
    #[error("refused the handshake: {message} (code {code})")]
    Refused {
        /// Its message, scrubbed.
        message: String,
        /// The JSON-RPC error code.
        code: i64,
    },
    /// The call was lost (the connection closed) or its answer could not be read.
    #[error("{0}")]
    Lost(Arc<str>),
    /// It chose a protocol version that was not offered.
    #[error("chose protocol version {0}, which the supervisor does not speak (it offered {PROTOCOL_VERSIONS:?})")]
    UnknownVersion(u32),
    /// It declared no tasks.
    #[error("declared no tasks in its handshake")]
    NoTasks,
    /// It declared a task of the other kind.
    #[error("declared {task}, which is a {} task, but it is registered as a {registered}", task.kind())]
    WrongKind {
        /// The task.
        task: TaskName,
        /// The plugin's kind.
        registered: PluginKind,
    },
    /// It declared `maxConcurrency` 0.
    #[error("declared maxConcurrency 0")]
    ZeroConcurrency,
}

/// Orders to an instance while it serves.
#[derive(Debug)]
pub enum Control {
    /// Kill the process of this generation (a task on it timed out).
    Kill {
        /// Which process; an order for an older one is ignored.
        generation: u64,
        /// Why, for the other tasks on it.
        reason: String,
    },
    /// Stop gracefully and do not restart.
    Stop,
    /// Stop gracefully and start again.
    Restart,
}

impl PluginProcess {
    /// Checks the plugin's files and whom it runs as ([`crate::core::vet`]), makes its
    /// cgroup (for instance `instance`, with its limits), spawns it and wires its pipes.
    ///
    /// # Errors
    /// When the checks refuse it (the text says why and how to fix it), its cgroup or its
    /// limits cannot be set up, or the executable cannot be started.
    pub async fn spawn(spec: &PluginSpec, instance: usize) -> io::Result<PluginProcess> {
        let vetted = crate::core::vet::vet_blocking(spec).await.map_err(io::Error::other)?;
        let identity = vetted.identity.as_ref();
        let mut setup = ChildSetup::with_rlimits(&spec.limits)?;
        let (cgroup, joining) = cgroup_for(spec, instance).await?;
        setup.cgroup_procs = joining.as_ref().map(|j| j.fds()).unwrap_or_default();
        // The log channel: a pipe whose write end becomes the plugin's fd 3.
        let (log_read, log_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let cmd = spawn::command(spec, identity);
        let mut child =
            spawn::spawn(cmd, Some(std::os::fd::AsFd::as_fd(&log_write)), setup).await.map_err(|e| match identity {
                Some(id) if e.kind() == io::ErrorKind::PermissionDenied => io::Error::new(
                    e.kind(),
                    format!(
                        "{e} (the plugin runs as user {}, who must be able to reach and run {} and enter {})",
                        id.user,
                        spec.executable.display(),
                        spec.dir.display()
                    ),
                ),
                _ => e,
            })?;
        drop(log_write);
        drop(joining);
        let spawn::Pipes { pid, stdin, stdout, stderr } = spawn::take_pipes(&mut child)?;
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin.into_owned_fd()?)?;
        let (conn, writer) = Connection::for_pipe(Arc::clone(&name), pid, stdin, Arc::new(Redactor::default()));
        let reader = conn.spawn_reader(stdout, spec.max_line_bytes);
        let last_stderr = Arc::new(Mutex::new(LastLines::default()));
        let stderr = conn.spawn_stderr_reader(stderr, Arc::clone(&last_stderr));
        let log =
            conn.spawn_log_reader(tokio::net::unix::pipe::Receiver::from_owned_fd(log_read)?, spec.max_line_bytes);
        match &cgroup {
            Some(c) => {
                tracing::debug!(plugin = %name, pid, "started {} in cgroup {}", spec.executable.display(), c.path().display())
            }
            None => tracing::debug!(plugin = %name, pid, "started {}", spec.executable.display()),
        }
        Ok(PluginProcess {
            name,
            child,
            pid,
            conn,
            reader: Some(reader),
            writer: Some(writer),
            stderr: Some(stderr),
            log: Some(log),
            last_stderr,
            exit: None,
            cgroup,
            memory_limit_reported: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The channel to the process.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Sends the handshake and checks the answer.
    ///
    /// # Errors
    /// [`HandshakeError`], whose text completes a sentence about the plugin: no answer in
    /// time, the process died, an error answer, no common protocol version, tasks of the
    /// wrong kind.
    pub async fn handshake(
        &mut self,
        spec: &PluginSpec,
        log_level: LogLevel,
    ) -> Result<HandshakeResult, HandshakeError> {
        let params = HandshakeParams {
            protocol_versions: PROTOCOL_VERSIONS.to_vec(),
            plugin: spec.name.clone(),
            kind: spec.kind,
            settings: spec.settings.clone(),
            log_level,
        };
        let call = self.conn.request(methods::HANDSHAKE, &params);
        let outcome = match self.answer_or_end(call, spec.handshake_timeout).await {
            Ok(outcome) => outcome,
            Err(Some(end)) => return Err(HandshakeError::Ended(end)),
            Err(None) => return Err(HandshakeError::Timeout(spec.handshake_timeout)),
        };
        let hs: HandshakeResult = match outcome {
            Outcome::Result(raw) => serde_json::from_str(raw.get()).map_err(|e| {
                let detail = e.to_string();
                let detail = if detail.starts_with("missing field") || detail.starts_with("unknown variant") {
                    // The variant is the plugin's text.
                    self.conn.loggable(&detail)
                } else {
                    format!("problem at line {} column {}", e.line(), e.column())
                };
                HandshakeError::InvalidResult(detail)
            })?,
            Outcome::Error(e) if e.code == loom_protocol::codes::UNSUPPORTED_PROTOCOL => {
                return Err(HandshakeError::NoCommonVersion(self.conn.loggable(&e.message)));
            }
            Outcome::Error(e) => {
                return Err(HandshakeError::Refused { message: self.conn.loggable(&e.message), code: e.code });
            }
            Outcome::Lost(why) | Outcome::NotSent(why) | Outcome::Unreadable(why) => {
                return Err(HandshakeError::Lost(why));
            }
        };
        check_handshake(spec, &hs)?;
        Ok(hs)
    }

    /// Waits for `call`'s answer, up to `limit`, while watching for the process to end.
    /// `Err(Some(end))`: the process ended first; `Err(None)`: the time ran out.
    pub async fn answer_or_end(&mut self, mut call: Call, limit: Duration) -> Result<Outcome, Option<End>> {
        tokio::select! {
            reply = tokio::time::timeout(limit, call.wait()) => reply.map(|r| r.outcome).map_err(|_| None),
            end = self.watch(None) => Err(Some(end)),
        }
    }

    /// Serves until something ends the process: it exits, breaks the protocol, stops
    /// answering pings while idle ([`Ping`]), or `control` says so.
    pub async fn serve(
        &mut self,
        control: &mut mpsc::UnboundedReceiver<Control>,
        generation: u64,
        spec: &PluginSpec,
    ) -> End {
        let mut ping_timer = spec.ping_interval.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut ping: Option<Ping> = None;
        loop {
            let tick = async {
                match ping_timer.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            let idle = ping.is_none();
            let pong = async {
                match ping.as_mut() {
                    Some(ping) => ping.answer(spec.ping_timeout).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                end = self.watch(Some((&mut *control, generation))) => return end,
                _ = tick, if idle => {
                    // A busy plugin may be single-threaded and unable to answer; its tasks'
                    // timeouts cover a hang then. Ping only when idle.
                    if self.conn.in_flight() == 0 {
                        let call = self.conn.request(methods::PING, &serde_json::json!({}));
                        ping = Some(Ping { call, busy: self.conn.watch_busy() });
                    }
                }
                reply = pong => {
                    ping = None;
                    match reply {
                        None => return End::PingTimeout(spec.ping_timeout),
                        Some(reply) => if let Outcome::Error(e) = reply.outcome {
                            tracing::warn!(plugin = %self.name, pid = self.pid, "answered ping with an error: {} (code {})",
                                self.conn.loggable(&e.message), e.code);
                        },
                    }
                }
            }
        }
    }

    /// Resolves when the process ends, or when `control` (if given) orders an end for
    /// this generation of the process. A process the kernel killed for its memory limit
    /// ends with [`End::MemoryLimit`].
    async fn watch(&mut self, control: Option<(&mut mpsc::UnboundedReceiver<Control>, u64)>) -> End {
        let end = self.watch_process(control).await;
        match end {
            End::Exited(status) => self.explain_exit(status).await,
            end => end,
        }
    }

    /// [`End::MemoryLimit`] when the process died of SIGKILL and its cgroup counts an
    /// out-of-memory kill, else [`End::Exited`].
    async fn explain_exit(&mut self, status: ExitStatus) -> End {
        use std::os::unix::process::ExitStatusExt;
        let Some(cgroup) = self.cgroup.as_ref().filter(|_| status.signal() == Some(Signal::SIGKILL as i32)) else {
            return End::Exited(status);
        };
        let Some((limit, kills)) = cgroup.memory_kills() else { return End::Exited(status) };
        let kills = if kills == 0 {
            // The kernel counts the kill after sending the signal.
            tokio::time::sleep(OOM_COUNT_WAIT).await;
            cgroup.memory_kills().map_or(0, |(_, n)| n)
        } else {
            kills
        };
        if kills == 0 {
            return End::Exited(status);
        }
        self.memory_limit_reported = true;
        End::MemoryLimit(limit)
    }

    async fn watch_process(&mut self, control: Option<(&mut mpsc::UnboundedReceiver<Control>, u64)>) -> End {
        let PluginProcess { child, reader, writer, exit, .. } = self;
        let reader_end = async {
            match reader.as_mut() {
                Some(r) => {
                    let end = r.await;
                    *reader = None;
                    end
                }
                None => std::future::pending().await,
            }
        };
        let writer_end = async {
            match writer.as_mut() {
                Some(w) => {
                    let end = w.await;
                    *writer = None;
                    end
                }
                None => std::future::pending().await,
            }
        };
        let control_end = async {
            let Some((control, generation)) = control else {
                return std::future::pending().await;
            };
            loop {
                match control.recv().await {
                    Some(Control::Kill { generation: g, reason }) if g == generation => return End::Killed(reason),
                    Some(Control::Kill { .. }) => continue,
                    Some(Control::Restart) => return End::Restart,
                    Some(Control::Stop) | None => return End::Stop,
                }
            }
        };
        let end = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => {
                    *exit = Some(status);
                    return End::Exited(status);
                }
                Err(e) => return End::StdoutFailed(format!("cannot wait for the process: {e}")),
            },
            end = reader_end => match end {
                Ok(ReaderEnd::Eof) => End::StdoutClosed,
                Ok(ReaderEnd::Violation(v)) => return End::Violation(v),
                Ok(ReaderEnd::Io(e)) => End::StdoutFailed(e.to_string()),
                Err(e) => End::StdoutFailed(format!("the reader task failed: {e}")),
            },
            end = writer_end => match end {
                Ok(WriterEnd::Failed(e)) => End::StdinFailed(e.to_string()),
                Ok(WriterEnd::Closed) => End::StdinFailed("stdin was closed".into()),
                Err(e) => End::StdinFailed(format!("the writer task failed: {e}")),
            },
            end = control_end => return end,
        };
        // A closed pipe usually means the process is exiting: its exit status says more.
        match tokio::time::timeout(EXIT_AFTER_PIPE_CLOSED, child.wait()).await {
            Ok(Ok(status)) => {
                *exit = Some(status);
                End::Exited(status)
            }
            _ => end,
        }
    }

    /// Stops the process politely, then less so: `shutdown` request, stdin closed,
    /// SIGTERM to every process in its cgroup (its group, without one), SIGKILL to all;
    /// each step waits up to `grace`.
    pub async fn stop_gracefully(&mut self, grace: Duration) {
        if self.exit.is_none() {
            let call = self.conn.request(methods::SHUTDOWN, &serde_json::json!({}));
            let _ = self.answer_or_end(call, grace).await;
        }
        self.conn.close_stdin();
        if self.wait_exit(grace).await {
            return;
        }
        tracing::warn!(plugin = %self.name, pid = self.pid, "did not exit within {} of shutdown and stdin EOF; sending SIGTERM", secs(grace));
        match &self.cgroup {
            Some(cgroup) => cgroup.signal(Signal::SIGTERM),
            None => spawn::signal_group(self.pid, Signal::SIGTERM),
        }
        if self.wait_exit(grace).await {
            return;
        }
        tracing::warn!(plugin = %self.name, pid = self.pid, "did not exit within {} of SIGTERM; sending SIGKILL", secs(grace));
        self.kill().await;
    }

    /// Kills its cgroup (its process group, without one) at once and reaps the process.
    pub async fn kill(&mut self) {
        match &self.cgroup {
            Some(cgroup) => cgroup.kill(),
            None => spawn::signal_group(self.pid, Signal::SIGKILL),
        }
        if !self.wait_exit(Duration::from_secs(10)).await {
            tracing::error!(plugin = %self.name, pid = self.pid, "still running 10 s after SIGKILL");
        }
    }

    /// Cleans up after the process ended (or kills it, if it still runs): kills what is
    /// left in its cgroup and removes it (without a cgroup: sweeps its process group),
    /// reads the rest of its pipes for a bounded time, and fails every call in flight
    /// with `cause` plus the last stderr lines. Returns that text.
    pub async fn finish(&mut self, cause: &str) -> String {
        if self.exit.is_none() {
            self.kill().await;
        }
        let cause = self.sweep(cause).await;
        let (mut reader, mut stderr, mut log) = (self.reader.take(), self.stderr.take(), self.log.take());
        let drained = tokio::time::timeout(DRAIN_LIMIT, async {
            if let Some(r) = reader.as_mut() {
                let _ = r.await;
            }
            for side in [stderr.as_mut(), log.as_mut()].into_iter().flatten() {
                let _ = side.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(plugin = %self.name, pid = self.pid,
                "a process outside the plugin's cgroup or process group still holds its pipes open; stopped reading them");
        }
        // Stop whichever reader is still blocked on a pipe held open elsewhere.
        let sides = [stderr, log].into_iter().flatten().map(|h| h.abort_handle());
        for h in reader.map(|h| h.abort_handle()).into_iter().chain(sides) {
            h.abort();
        }
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        let last = self.last_stderr.lock().ok().and_then(|l| l.render());
        let text = match last {
            Some(lines) => format!("the plugin process (pid {}) {cause}; its last stderr lines:\n{lines}", self.pid),
            None => format!("the plugin process (pid {}) {cause}", self.pid),
        };
        self.conn.fail_all(&text);
        text
    }

    /// Kills what the process left (everything in its cgroup, or its process group),
    /// waits until it is gone and removes the cgroup. Returns `cause`, with a note when
    /// the memory limit killed processes and the cause does not already say so.
    async fn sweep(&mut self, cause: &str) -> String {
        let Some(cgroup) = self.cgroup.take() else {
            // The leader is gone; anything left in its group is an orphan to be.
            spawn::signal_group(self.pid, Signal::SIGKILL);
            return cause.to_owned();
        };
        cgroup.kill();
        if !cgroup.wait_empty(CGROUP_EMPTY_LIMIT).await {
            tracing::error!(plugin = %self.name, pid = self.pid, "processes in cgroup {} are still there {} after SIGKILL",
                cgroup.path().display(), secs(CGROUP_EMPTY_LIMIT));
        }
        let note = match cgroup.memory_kills() {
            Some((limit, kills)) if kills > 0 && !self.memory_limit_reported => {
                format!("; its memory limit ({}) killed {kills} of its processes", size_text(limit))
            }
            _ => String::new(),
        };
        let path = cgroup.path().to_path_buf();
        if let Err(e) = cgroup.remove() {
            tracing::warn!(plugin = %self.name, pid = self.pid, "cannot remove cgroup {} yet ({e}); trying again in the background", path.display());
        }
        format!("{cause}{note}")
    }

    /// Waits up to `limit` for the process to exit; true if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        if self.exit.is_some() {
            return true;
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exit = Some(status);
                true
            }
            Ok(Err(e)) => {
                tracing::error!(plugin = %self.name, pid = self.pid, "cannot wait for the process: {e}");
                false
            }
            Err(_) => false,
        }
    }
}

/// A ping waiting for its answer. Its time runs only while no task is in flight on the
/// process: a task sent just after the ping may be read first, and a plugin that runs
/// tasks on the thread that reads stdin answers the ping only once the task is done. A
/// hang meanwhile is the task's timeout's to catch. Each time the process is idle again,
/// the ping has its full time from then.
struct Ping {
    call: Call,
    busy: watch::Receiver<bool>,
}

impl Ping {
    /// The answer, or `None` once the process has been idle for `limit` without one.
    ///
    /// # Cancellation
    /// Cancel-safe: the call stays in flight, and the next wait starts the time again if idle.
    async fn answer(&mut self, limit: Duration) -> Option<Reply> {
        loop {
            let busy = *self.busy.borrow_and_update();
            let time_out = async {
                match busy {
                    true => std::future::pending().await,
                    false => tokio::time::sleep(limit).await,
                }
            };
            tokio::select! {
                biased;
                reply = self.call.wait() => return Some(reply),
                () = time_out => return None,
                changed = self.busy.changed() => {
                    // The connection is gone only with the process; its end is near.
                    if changed.is_err() {
                        return tokio::time::timeout(limit, self.call.wait()).await.ok();
                    }
                }
            }
        }
    }
}

fn check_handshake(spec: &PluginSpec, hs: &HandshakeResult) -> Result<(), HandshakeError> {
    if !PROTOCOL_VERSIONS.contains(&hs.protocol_version) {
        return Err(HandshakeError::UnknownVersion(hs.protocol_version));
    }
    if hs.tasks.is_empty() {
        return Err(HandshakeError::NoTasks);
    }
    if let Some(&task) = hs.tasks.iter().find(|t| t.kind() != spec.kind) {
        return Err(HandshakeError::WrongKind { task, registered: spec.kind });
    }
    if hs.max_concurrency == Some(0) {
        return Err(HandshakeError::ZeroConcurrency);
    }
    Ok(())
}

/// The cgroup a new process of `spec` joins, and the descriptors that make it join;
/// `None` where the supervisor cannot make one or the manifest keeps its descendants.
///
/// # Errors
/// When the cgroup or its limits cannot be set up.
pub async fn cgroup_for(spec: &PluginSpec, instance: usize) -> io::Result<(Option<Cgroup>, Option<Joining>)> {
    if spec.keep_descendants {
        Cgroup::refused_by_manifest(&spec.name, &spec.limits);
        return Ok((None, None));
    }
    let (name, limits) = (spec.name.clone(), spec.limits.clone());
    let made = tokio::task::spawn_blocking(move || Cgroup::create(&name, instance, &limits))
        .await
        .map_err(|e| io::Error::other(format!("the cgroup set-up failed: {e}")))?
        .map_err(io::Error::other)?;
    Ok(made.map_or((None, None), |(c, j)| (Some(c), Some(j))))
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = Signal::try_from(sig).map(|s| format!(" ({s})")).unwrap_or_default();
            let core = if status.core_dumped() { ", core dumped" } else { "" };
            format!("was killed by signal {sig}{name}{core}")
        }
        None => format!("ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loom_protocol::PluginKind::Automator;
    use serde_json::json;

    use crate::core::pool::Phase;
    use crate::core::testing::{Plugins, action, within_a_minute};

    #[tokio::test]
    async fn when_the_process_dies_every_task_in_flight_on_it_fails_with_the_cause() {
        let plugins = Plugins::new();
        plugins.add(Automator, "a", json!({"maxConcurrency": 2}));
        let sup = plugins.supervisor();
        // The crash is sent once the plugin has read the hanging task (it makes the marker
        // then): a task the dead process never read would go to the next process instead.
        let marker = plugins.file("hanging");
        let hang = action("t1", "INSTALL", "a", json!({"action": "hang-once", "marker": marker}));
        let crash = action("t2", "START", "a", json!({"action": "crash", "code": 7}));
        let crash_once_hanging = async {
            while !marker.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sup.run(&crash).await
        };
        let (hung, crashed) =
            within_a_minute("the answers", async { tokio::join!(sup.run(&hang), crash_once_hanging) }).await;
        for (r, task) in [(hung, "t1 (INSTALL)"), (crashed, "t2 (START)")] {
            assert_eq!(r.status, 1);
            let why = format!("automator \"a\", task {task}: the plugin process (pid ");
            assert!(r.stderr.starts_with(&why), "{}", r.stderr);
            assert!(r.stderr.contains(") exited with code 7; its last stderr lines:\n"), "{}", r.stderr);
            assert!(r.stderr.contains("about to crash: boom"), "{}", r.stderr);
        }
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_ping_has_no_deadline_while_a_task_sent_after_it_runs() {
        let plugins = Plugins::new();
        let pings = plugins.file("pings");
        // Pings every second to an idle process, never answered, 3 s to answer; a task
        // sent just after one takes 7 s, on the thread the plugin does not read stdin with.
        let settings = json!({"ignorePing": true, "pingFile": pings});
        plugins.add(
            Automator,
            "a",
            json!({"pingIntervalSecs": 1, "pingTimeoutSecs": 3, "settings": settings, "restart": {"maxRestarts": 100}}),
        );
        let sup = plugins.supervisor();
        let first = sup.run(&action("t0", "START", "a", json!({}))).await;
        assert_eq!(first.status, 0, "{first:?}");
        let pinged = within_a_minute("a ping", async {
            loop {
                let pid = std::fs::read_to_string(&pings).ok().and_then(|t| t.lines().next()?.parse::<u64>().ok());
                if let Some(pid) = pid {
                    break pid;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(first.result["pid"], json!(pinged));
        let slow = action("t1", "START", "a", json!({"action": "sleep", "ms": 7000}));
        let r = within_a_minute("the task", sup.run(&slow)).await;
        // Before the fix: "did not answer a ping within 3 s", 3 s after the ping.
        assert_eq!(r.status, 0, "{r:?}");
        assert_eq!(r.result["pid"], json!(pinged), "answered by the process that was pinged");
        // Idle again, the ping has its 3 s from then, and the process that never answers
        // it is restarted.
        let plugin = sup.plugin(Automator, "a").expect("plugin a");
        within_a_minute("the restart", plugin.wait_for(|s| s[0].restarts >= 1)).await;
        let why = plugin.status()[0].last_error.clone().unwrap_or_default();
        assert!(why.contains("did not answer a ping within 3 s"), "{why}");
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_plugin_that_ignores_shutdown_eof_and_sigterm_is_killed_when_stopped() {
        let plugins = Plugins::new();
        let stubborn = json!({"ignoreEof": true, "ignoreSigterm": true});
        plugins.add(Automator, "a", json!({"settings": stubborn, "shutdownGraceSecs": 1}));
        let sup = plugins.supervisor();
        let r = sup.run(&action("t1", "INSTALL", "a", json!({}))).await;
        let pid = r.result["pid"].as_i64().expect("the plugin's pid");
        sup.shutdown().await;
        let plugin = sup.plugin(Automator, "a").expect("plugin a");
        assert_eq!(plugin.status()[0].phase, Phase::Stopped);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} was killed and reaped");
    }
}
