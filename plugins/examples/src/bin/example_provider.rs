//! `example-provider`: machines on this host, for trying the supervisor out.
//!
//! CREATE hands out a new machine id; CONFIRM waits `settings.confirmDelayMs` (default 0,
//! honouring `cancel`) and answers this host's loopback address; DELETE forgets the id
//! and succeeds for unknown ids too, as Loom's DELETE must. Nothing is really allocated:
//! every "machine" is this host, reached as `settings.sshUser` (default: `$USER`).

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loom_plugin_sdk::{Context, Map, Plugin, Provider, Task, TaskError, TaskOutcome, TaskResult, Value, json};

#[derive(Default)]
struct ExampleProvider {
    next: AtomicU64,
    machines: Mutex<HashSet<String>>,
    ssh_user: String,
    confirm_delay: Duration,
}

impl Provider for ExampleProvider {
    fn setup(&mut self, settings: &Map<String, Value>) -> Result<(), TaskError> {
        self.ssh_user = match settings.get("sshUser") {
            Some(Value::String(u)) => u.clone(),
            Some(_) => return Err(TaskError::new("settings.sshUser must be a string")),
            None => std::env::var("USER").unwrap_or_else(|_| "root".into()),
        };
        self.confirm_delay = match settings.get("confirmDelayMs") {
            Some(v) => Duration::from_millis(
                v.as_u64().ok_or_else(|| TaskError::new("settings.confirmDelayMs must be a whole number"))?,
            ),
            None => Duration::ZERO,
        };
        Ok(())
    }

    async fn create(&self, task: Task, ctx: Context) -> TaskOutcome {
        let hostname = task.config.get("hostname").and_then(Value::as_str).unwrap_or("localhost").to_owned();
        let id = format!("example-{}-{}", std::process::id(), self.next.fetch_add(1, Ordering::Relaxed));
        ctx.info(format!("allocated {id} for {hostname}"));
        self.lock().insert(id.clone());
        Ok(TaskResult::ok().with("providerid", id).with("ssh-auth", json!({ "user": self.ssh_user })))
    }

    async fn confirm(&self, task: Task, ctx: Context) -> TaskOutcome {
        let id = task.config.get("providerid").and_then(Value::as_str).unwrap_or_default().to_owned();
        if !self.confirm_delay.is_zero() {
            ctx.progress(format!("waiting for {id} to boot"), Some(0.0));
            tokio::select! {
                () = tokio::time::sleep(self.confirm_delay) => {}
                () = ctx.cancelled() => return Err(TaskError::new(format!("cancelled while waiting for {id}"))),
            }
        }
        ctx.progress(format!("{id} is up"), Some(100.0));
        let hostname = task.config.get("hostname").and_then(Value::as_str).unwrap_or("localhost").to_owned();
        let mut result = TaskResult::ok().with("ipaddress", "127.0.0.1");
        result.hostname = Some(hostname);
        result.ipaddresses = Some(json!({"access_v4": "127.0.0.1", "bind_v4": "127.0.0.1"}));
        Ok(result)
    }

    async fn delete(&self, task: Task, ctx: Context) -> TaskOutcome {
        let id = task.config.get("providerid").and_then(Value::as_str).unwrap_or_default();
        if self.lock().remove(id) {
            ctx.info(format!("released {id}"));
        } else {
            ctx.debug(format!("{id:?} is not known here; nothing to delete"));
        }
        Ok(TaskResult::ok())
    }
}

impl ExampleProvider {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.machines.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn main() -> ExitCode {
    Plugin::new("example-provider", env!("CARGO_PKG_VERSION"))
        .max_concurrency(64)
        .serve_provider(ExampleProvider::default())
}
