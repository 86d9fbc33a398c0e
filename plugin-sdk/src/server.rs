//! The plugin's side of the protocol: read requests, run tasks concurrently, answer.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::{FutureExt, StreamExt};
use loom_protocol::writer::{Outgoing, write_lines, write_prioritized};
use loom_protocol::{
    CancelParams, HandshakeParams, HandshakeResult, LineCodec, Message, Overflow, PROTOCOL_VERSIONS, PluginKind,
    Request, Response, ResponseError, Task, TaskName, TaskResult, codes, methods,
};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::context::{Context, Outbox};
use crate::plugin::{Automator, Provider, TaskOutcome};
use crate::{Plugin, check, forward, stdio};

pub(crate) type BoxFuture = Pin<Box<dyn std::future::Future<Output = TaskOutcome> + Send>>;

/// A provider or an automator, behind one interface.
pub(crate) trait Dispatch: Send + Sync + 'static {
    const KIND: PluginKind;
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), crate::TaskError>;
    fn run(self: Arc<Self>, task: Task, ctx: Context) -> BoxFuture;
}

pub(crate) struct AsProvider<P>(pub P);
pub(crate) struct AsAutomator<A>(pub A);

impl<P: Provider> Dispatch for AsProvider<P> {
    const KIND: PluginKind = PluginKind::Provider;
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), crate::TaskError> {
        self.0.setup(settings)
    }
    fn run(self: Arc<Self>, task: Task, ctx: Context) -> BoxFuture {
        Box::pin(async move {
            match task.task_name {
                TaskName::Create => self.0.create(task, ctx).await,
                TaskName::Confirm => self.0.confirm(task, ctx).await,
                TaskName::Delete => self.0.delete(task, ctx).await,
                other => Err(crate::TaskError::new(format!("a provider does not handle {other}"))),
            }
        })
    }
}

impl<A: Automator> Dispatch for AsAutomator<A> {
    const KIND: PluginKind = PluginKind::Automator;
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), crate::TaskError> {
        self.0.setup(settings)
    }
    fn run(self: Arc<Self>, task: Task, ctx: Context) -> BoxFuture {
        Box::pin(async move {
            match task.task_name {
                TaskName::Bootstrap => self.0.bootstrap(task, ctx).await,
                TaskName::Install => self.0.install(task, ctx).await,
                TaskName::Configure => self.0.configure(task, ctx).await,
                TaskName::Initialize => self.0.initialize(task, ctx).await,
                TaskName::Start => self.0.start(task, ctx).await,
                TaskName::Stop => self.0.stop(task, ctx).await,
                TaskName::Remove => self.0.remove(task, ctx).await,
                other => Err(crate::TaskError::new(format!("an automator does not handle {other}"))),
            }
        })
    }
}

enum Phase<D> {
    /// Before the handshake; the handler has not been set up.
    Waiting(D),
    /// Serving tasks.
    Serving { handler: Arc<D>, settings: Arc<Map<String, Value>> },
    /// A setup error made the handshake fail; the process should exit.
    Broken,
}

/// Serves the protocol on the process's stdio until stdin closes. Returns the exit code.
pub(crate) async fn serve<D: Dispatch>(info: Plugin, handler: D) -> std::process::ExitCode {
    let io = match stdio::take() {
        Ok(io) => io,
        Err(e) => {
            eprintln!("{}: cannot set up the protocol on stdin/stdout: {e}", info.name);
            return std::process::ExitCode::FAILURE;
        }
    };
    let (tasks_tx, tasks_rx) = mpsc::unbounded_channel();
    let (logs_tx, logs_rx) = mpsc::unbounded_channel();
    let log = io.log.unwrap_or_else(|refused| {
        eprintln!("{}: {refused}; log lines go to stdout", info.name);
        None
    });
    let writers = match log {
        // Log lines on their own pipe: they never share stdout with answers.
        Some(log) => vec![tokio::spawn(write_lines(tasks_rx, io.output)), tokio::spawn(write_lines(logs_rx, log))],
        None => vec![tokio::spawn(write_prioritized(tasks_rx, logs_rx, io.output))],
    };
    let outbox = Outbox::new(tasks_tx.clone(), logs_tx.clone());
    if info.forward_tracing {
        forward::connect(outbox.clone());
        use tracing_subscriber::layer::SubscriberExt;
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(forward::ForwardLayer));
    }

    let mut server = Server {
        info,
        outbox,
        phase: Phase::Waiting(handler),
        running: Arc::new(Mutex::new(HashMap::new())),
        tracker: TaskTracker::new(),
        shutting_down: false,
        check_mode: check::enabled(),
    };
    let mut lines = FramedRead::new(io.input, LineCodec::new(loom_protocol::DEFAULT_MAX_LINE_BYTES, Overflow::Error));
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) => server.handle_line(&line),
            Err(loom_protocol::CodecError::LineTooLong { limit }) => {
                eprintln!("{}: skipped a message longer than {limit} bytes", server.info.name);
            }
            Err(loom_protocol::CodecError::Io(e)) => {
                eprintln!("{}: reading stdin failed: {e}", server.info.name);
                break;
            }
        }
    }
    // Stdin is closed: the supervisor is done with us. Cancel what still runs, let it
    // answer, flush, exit.
    server.cancel_all();
    server.tracker.close();
    server.tracker.wait().await;
    drop(server);
    // Answers first (the writer sharing stdout drains the task lane before it closes).
    let _ = tasks_tx.send(Outgoing::Close);
    let _ = logs_tx.send(Outgoing::Close);
    for writer in writers {
        let _ = writer.await;
    }
    std::process::ExitCode::SUCCESS
}

struct Server<D> {
    info: Plugin,
    outbox: Outbox,
    phase: Phase<D>,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
    tracker: TaskTracker,
    shutting_down: bool,
    /// Started by `loom-provisioner check` (`LOOM_CHECK=1`): wait tasks are answered here.
    check_mode: bool,
}

impl<D: Dispatch> Server<D> {
    fn handle_line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match Message::decode(line) {
            Ok(Message::Request(req)) => self.handle_request(req),
            Ok(Message::Notification(n)) if n.method == methods::CANCEL => {
                let params = n.params.as_deref().map_or("null", |p| p.get());
                if let Ok(p) = serde_json::from_str::<CancelParams>(params)
                    && let Some(token) = lock(&self.running).get(&p.task_id)
                {
                    token.cancel();
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("{}: ignored a line on stdin that is {e}", self.info.name);
                self.reply(Response::err(None, ResponseError::new(codes::PARSE_ERROR, e.to_string())));
            }
        }
    }

    fn reply(&self, response: Response) {
        self.outbox.answer(response);
    }

    fn handle_request(&mut self, req: Request) {
        let params = req.params.as_deref().map_or("null", |p| p.get());
        let id = req.id.clone();
        match req.method.as_str() {
            methods::HANDSHAKE => {
                let answer = self.handshake(params);
                self.reply(match answer {
                    Ok(result) => Response::ok(id, &result),
                    Err(e) => Response::err(Some(id), e),
                });
            }
            methods::TASK => self.start_task(id, params),
            methods::PING => self.reply(Response::ok(id, &json!({}))),
            methods::SHUTDOWN => {
                self.shutting_down = true;
                self.reply(Response::ok(id, &json!({})));
            }
            other => self.reply(Response::err(
                Some(id),
                ResponseError::new(codes::METHOD_NOT_FOUND, format!("unknown method {other:?}")),
            )),
        }
    }

    fn handshake(&mut self, params: &str) -> Result<HandshakeResult, ResponseError> {
        let p: HandshakeParams = serde_json::from_str(params).map_err(|e| {
            ResponseError::new(
                codes::INVALID_PARAMS,
                format!("bad handshake params at line {} column {}", e.line(), e.column()),
            )
        })?;
        let Some(version) = p.protocol_versions.iter().copied().filter(|v| PROTOCOL_VERSIONS.contains(v)).max() else {
            return Err(ResponseError::new(
                codes::UNSUPPORTED_PROTOCOL,
                format!(
                    "this plugin speaks protocol versions {PROTOCOL_VERSIONS:?}, the supervisor offered {:?}",
                    p.protocol_versions
                ),
            ));
        };
        self.outbox.set_level(p.log_level);
        let phase = std::mem::replace(&mut self.phase, Phase::Broken);
        let (handler, settings) = match phase {
            Phase::Waiting(mut handler) => {
                if let Err(e) = handler.setup(&p.settings) {
                    return Err(ResponseError::new(codes::INTERNAL_ERROR, format!("setup failed: {}", e.message)));
                }
                (Arc::new(handler), Arc::new(p.settings))
            }
            // A second handshake: keep serving with the first setup.
            Phase::Serving { handler, settings } => (handler, settings),
            Phase::Broken => {
                return Err(ResponseError::new(codes::INTERNAL_ERROR, "an earlier setup failed; restart the plugin"));
            }
        };
        self.phase = Phase::Serving { handler, settings };
        Ok(HandshakeResult {
            protocol_version: version,
            name: self.info.name.clone(),
            version: self.info.version.clone(),
            tasks: self.declared(),
            max_concurrency: self.info.max_concurrency,
            idempotent_tasks: self.info.idempotent.clone(),
        })
    }

    fn declared(&self) -> Vec<TaskName> {
        self.info.tasks.clone().unwrap_or_else(|| D::KIND.tasks().to_vec())
    }

    fn start_task(&mut self, id: loom_protocol::RequestId, params: &str) {
        let Phase::Serving { handler, settings } = &self.phase else {
            return self
                .reply(Response::err(Some(id), ResponseError::new(codes::NOT_INITIALIZED, "task before handshake")));
        };
        if self.shutting_down {
            return self.reply(Response::err(Some(id), ResponseError::new(codes::SHUTTING_DOWN, "shutting down")));
        }
        let task: Task = match serde_json::from_str(params) {
            Ok(t) => t,
            Err(e) => {
                let why = format!("invalid task at line {} column {}", e.line(), e.column());
                return self.reply(Response::err(Some(id), ResponseError::new(codes::INVALID_PARAMS, why)));
            }
        };
        if !self.declared().contains(&task.task_name) {
            let why = format!("this plugin does not handle {}", task.task_name);
            return self.reply(Response::err(Some(id), ResponseError::new(codes::TASK_NOT_SUPPORTED, why)));
        }
        let token = CancellationToken::new();
        let task_id = task.task_id.clone();
        // The check protocol's wait task never reaches the plugin's code.
        let work: BoxFuture = match self.check_mode.then(|| check::wait_of(&task)).flatten() {
            Some(Ok(wait)) => Box::pin(check::wait(wait, token.clone()).map(Ok)),
            Some(Err(why)) => Box::pin(std::future::ready(Ok(TaskResult::failed(why)))),
            None => {
                let ctx = Context::new(task_id.clone(), Arc::clone(settings), self.outbox.clone(), token.clone());
                Arc::clone(handler).run(task, ctx)
            }
        };
        let span = tracing::info_span!("task", task_id = %task_id);
        let mut run = Box::pin(AssertUnwindSafe(work).catch_unwind().instrument(span));
        // Polled once here first: a task that needs no I/O (a no-op, a quick check) is
        // answered without a spawn or a trip through the scheduler. One that is not done
        // is spawned; its first poll there registers the real waker (the no-op one used
        // here is never woken, and readiness is checked again on every poll).
        let first = run.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        if let Poll::Ready(outcome) = first {
            return self.outbox.answer(Response::ok(id, &result_of(outcome)));
        }
        lock(&self.running).insert(task_id.clone(), token.clone());
        let (outbox, running) = (self.outbox.clone(), Arc::clone(&self.running));
        self.tracker.spawn(async move {
            let mut result = result_of(run.await);
            if token.is_cancelled() {
                check::mark_cancelled(&mut result);
            }
            lock(&running).remove(&task_id);
            outbox.answer(Response::ok(id, &result));
        });
    }

    fn cancel_all(&self) {
        for token in lock(&self.running).values() {
            token.cancel();
        }
    }
}

/// The task's result: its own, its error's, or a failure saying it panicked.
fn result_of(outcome: Result<TaskOutcome, Box<dyn std::any::Any + Send>>) -> TaskResult {
    match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => e.into_result(),
        Err(panic) => TaskResult::failed(format!("the plugin panicked: {}", panic_message(&panic))),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loom_protocol::PluginKind;
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::TaskError;

    /// A provider whose every task waits for its cancel, then fails saying it ran.
    struct UntilCancelled;

    impl Dispatch for UntilCancelled {
        const KIND: PluginKind = PluginKind::Provider;
        fn setup(&mut self, _: &Map<String, Value>) -> Result<(), TaskError> {
            Ok(())
        }
        fn run(self: Arc<Self>, _task: Task, ctx: Context) -> BoxFuture {
            Box::pin(async move {
                ctx.cancelled().await;
                Err(TaskError::new("the handler ran"))
            })
        }
    }

    /// A serving server (handshake done) and the task lane's receiving end.
    fn server(check_mode: bool) -> (Server<UntilCancelled>, UnboundedReceiver<Outgoing>) {
        let (tasks_tx, tasks_rx) = mpsc::unbounded_channel();
        let (logs_tx, _) = mpsc::unbounded_channel();
        let server = Server {
            info: Plugin::new("t", "1"),
            outbox: Outbox::new(tasks_tx, logs_tx),
            phase: Phase::Serving { handler: Arc::new(UntilCancelled), settings: Arc::new(Map::new()) },
            running: Arc::new(Mutex::new(HashMap::new())),
            tracker: TaskTracker::new(),
            shutting_down: false,
            check_mode,
        };
        (server, tasks_rx)
    }

    /// The next answer's `result`. (The deadline only keeps a broken build from hanging.)
    async fn next_result(rx: &mut UnboundedReceiver<Outgoing>) -> Value {
        let Some(Outgoing::Line(line)) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.unwrap() else {
            panic!("the task lane closed")
        };
        serde_json::from_slice::<Value>(&line).unwrap()["result"].clone()
    }

    fn wait_task(server: &mut Server<UntilCancelled>) {
        let task = json!({"jsonrpc": "2.0", "id": 5, "method": "task", "params": {"taskId": "w", "taskName": "DELETE",
            "config": {"loom-check": {"waitSecs": 300}}}});
        server.handle_line(task.to_string().as_bytes());
    }

    fn cancel(server: &mut Server<UntilCancelled>) {
        server.handle_line(br#"{"jsonrpc":"2.0","method":"cancel","params":{"taskId":"w"}}"#);
    }

    #[tokio::test]
    async fn under_check_a_wait_task_is_answered_by_the_sdk_and_its_cancel_at_once() {
        let (mut server, mut rx) = server(true);
        wait_task(&mut server);
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "a 300 s wait task answered before its cancel");
        cancel(&mut server);
        let result = next_result(&mut rx).await;
        assert_eq!(result, json!({"status": 1, "result": {}, "stdout": "", "stderr": "cancelled", "cancelled": true}));
    }

    #[tokio::test]
    async fn without_check_the_key_is_plain_config_and_a_cancelled_failure_says_cancelled() {
        let (mut server, mut rx) = server(false);
        wait_task(&mut server);
        cancel(&mut server);
        let result = next_result(&mut rx).await;
        assert_eq!(
            (&result["stderr"], &result["status"], &result["cancelled"]),
            (&json!("the handler ran"), &json!(1), &json!(true))
        );
    }
}
