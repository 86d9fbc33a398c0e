//! Loom's routing rules.
//!
//! - CREATE, CONFIRM, DELETE go to the provider named by `config.provider.providertype`
//!   (else `config.provider.name`).
//! - INSTALL, CONFIGURE, INITIALIZE, START, STOP, REMOVE go to the automator named by
//!   `config.service.action.type`.
//! - BOOTSTRAP goes to every automator in `config.automators` (every registered automator
//!   when absent), one after the other in that order; their results merge, and the first
//!   non-zero status wins.

use std::sync::Arc;

use loom_protocol::{PluginKind, TaskName, TaskResult};

use crate::core::plugin::{BeforeSend, Plugin};
use crate::core::registry::Availability;
use crate::core::supervisor::Table;
use crate::wire::envelope::TaskEnvelope;

/// Where a task goes.
pub(crate) enum Route {
    /// To one plugin.
    One(Arc<Plugin>),
    /// BOOTSTRAP: to each automator in order; an entry is the reason when it cannot run.
    Bootstrap(Vec<(String, Result<Arc<Plugin>, String>)>),
    /// Nowhere: the reason.
    Refused(String),
}

pub(crate) fn route(sup: &Table, task: &TaskEnvelope) -> Route {
    let context = format!("task {} ({})", task.task_id, task.task_name);
    match task.task_name {
        TaskName::Create | TaskName::Confirm | TaskName::Delete => match &task.provider {
            Some(name) => match find(sup, PluginKind::Provider, name) {
                Ok(p) => Route::One(p),
                Err(why) => Route::Refused(format!("{context}: {why}")),
            },
            None => Route::Refused(format!(
                "{context}: names no provider: config.provider.providertype and config.provider.name are both missing"
            )),
        },
        TaskName::Bootstrap => {
            let names: Vec<String> = match &task.automators {
                Some(list) => list.clone(),
                None => sup.registry.names(PluginKind::Automator).into_iter().map(str::to_owned).collect(),
            };
            let targets = names
                .into_iter()
                .map(|n| {
                    let target = find(sup, PluginKind::Automator, &n).map_err(|why| format!("{context}: {why}"));
                    (n, target)
                })
                .collect();
            Route::Bootstrap(targets)
        }
        _ => match &task.automator {
            Some(name) => match find(sup, PluginKind::Automator, name) {
                Ok(p) => Route::One(p),
                Err(why) => Route::Refused(format!("{context}: {why}")),
            },
            None => Route::Refused(format!("{context}: names no automator: config.service.action.type is missing")),
        },
    }
}

/// The runnable plugin, or why there is none, listing what is registered.
fn find(sup: &Table, kind: PluginKind, name: &str) -> Result<Arc<Plugin>, String> {
    if let Some(p) = sup.plugin(kind, name) {
        return Ok(Arc::clone(p));
    }
    if let Some(reg) = sup.registry.get(kind, name)
        && let Availability::NotRunnable(why) = &reg.availability
    {
        return Err(format!("{kind} {name:?} is registered but cannot run: {why}"));
    }
    let known = sup.registry.names(kind);
    let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
    Err(format!("no {kind} named {name:?} is registered (registered {kind}s: {known})"))
}

/// Runs BOOTSTRAP on each automator in order and merges the results: result keys by
/// shallow overwrite in order, output concatenated under a header per automator, the
/// first non-zero status.
pub(crate) async fn bootstrap(
    task: &TaskEnvelope,
    targets: Vec<(String, Result<Arc<Plugin>, String>)>,
    mut before_send: Option<BeforeSend<'_>>,
) -> TaskResult {
    let mut merged = TaskResult::ok();
    if targets.is_empty() {
        merged.stdout = "no automators to bootstrap\n".into();
        return merged;
    }
    let several = targets.len() > 1;
    for (name, target) in targets {
        let r = match target {
            // The hook runs before the first automator only: the task has started then.
            Ok(plugin) => plugin.run_task_with(task, before_send.take()).await,
            Err(why) => TaskResult::failed(why),
        };
        if merged.status == 0 && r.status != 0 {
            merged.status = r.status;
        }
        merged.result.extend(r.result);
        merged.extra.extend(r.extra);
        merged.hostname = r.hostname.or(merged.hostname);
        merged.ipaddresses = r.ipaddresses.or(merged.ipaddresses);
        append_section(&mut merged.stdout, several, &name, &r.stdout);
        append_section(&mut merged.stderr, several, &name, &r.stderr);
    }
    merged
}

fn append_section(out: &mut String, several: bool, name: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    if several {
        out.push_str(&format!("==> {name} <==\n"));
    }
    out.push_str(text);
    if !text.ends_with('\n') {
        out.push('\n');
    }
}
