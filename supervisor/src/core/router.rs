//! The plugin table and Loom's routing rules: which registered plugin a task goes to.
//!
//! - CREATE, CONFIRM, DELETE go to the provider named by `config.provider.providertype`
//!   (else `config.provider.name`).
//! - INSTALL, CONFIGURE, INITIALIZE, START, STOP, REMOVE go to the automator named by
//!   `config.service.action.type`.
//! - BOOTSTRAP goes to every automator in `config.automators` (every registered automator
//!   when absent), one after the other in that order; their results merge, and the first
//!   non-zero status wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use loom_protocol::{LogLevel, PluginKind, TaskName, TaskResult};

use crate::core::plugin::Plugin;
use crate::core::registry::{Availability, Registry};
use crate::wire::envelope::TaskEnvelope;

/// The registered plugins at one moment. A routed task keeps the plugin it was given,
/// whatever replaces the table later.
pub struct Table {
    /// What was registered.
    pub registry: Registry,
    plugins: BTreeMap<(PluginKind, String), Arc<Plugin>>,
}

impl Table {
    /// A table with a plugin (not started) for every runnable plugin of `registry`.
    pub(crate) fn new(registry: Registry, log_level: LogLevel) -> Table {
        let plugins = registry
            .plugins
            .iter()
            .filter_map(|r| match &r.availability {
                Availability::Runnable(spec) => {
                    Some(((r.kind, r.name.clone()), Plugin::new(Arc::clone(spec), log_level)))
                }
                Availability::NotRunnable(_) => None,
            })
            .collect();
        Table { registry, plugins }
    }

    /// A table of `plugins` as they are.
    pub(crate) fn with(registry: Registry, plugins: BTreeMap<(PluginKind, String), Arc<Plugin>>) -> Table {
        Table { registry, plugins }
    }

    /// The runnable plugin of `kind` named `name`.
    pub fn plugin(&self, kind: PluginKind, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(&(kind, name.to_owned()))
    }

    /// Every runnable plugin.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Every runnable plugin, by kind and name.
    pub(crate) fn entries(&self) -> &BTreeMap<(PluginKind, String), Arc<Plugin>> {
        &self.plugins
    }
}

/// Where a task goes.
pub enum Route {
    /// To one plugin.
    One(Arc<Plugin>),
    /// BOOTSTRAP: to each automator in order; an entry is the reason when it cannot run.
    Bootstrap(Vec<Target>),
    /// Nowhere: the reason.
    Refused(String),
}

/// One automator of a BOOTSTRAP: its name, and its plugin or why it cannot run.
pub type Target = (String, Result<Arc<Plugin>, String>);

impl Route {
    /// The registered plugin (or, for BOOTSTRAP, the registered automators, sorted) the
    /// task goes to, by name; `none` when there is none. Never a name taken from the task
    /// alone: this is a metrics label, so it must not carry what a task says.
    pub fn target(&self) -> String {
        match self {
            Route::One(p) => p.name().to_owned(),
            Route::Bootstrap(targets) => {
                let mut names: Vec<&str> =
                    targets.iter().filter_map(|(_, p)| p.as_ref().ok()).map(|p| p.name()).collect();
                names.sort_unstable();
                names.dedup();
                if names.is_empty() { "none".into() } else { names.join("+") }
            }
            Route::Refused(_) => "none".into(),
        }
    }

    /// Whether every plugin the task goes to declared `task` safe to run twice.
    pub fn is_idempotent(&self, task: TaskName) -> bool {
        match self {
            Route::One(p) => p.is_idempotent(task),
            Route::Bootstrap(targets) => {
                !targets.is_empty() && targets.iter().all(|(_, p)| p.as_ref().is_ok_and(|p| p.is_idempotent(task)))
            }
            Route::Refused(_) => false,
        }
    }
}

/// Routes `task` by Loom's rules.
pub fn route(sup: &Table, task: &TaskEnvelope) -> Route {
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

/// The merged result of a BOOTSTRAP: result keys by shallow overwrite in order, output
/// concatenated under a header per automator, the first non-zero status.
pub(crate) struct Merged {
    result: TaskResult,
    several: bool,
}

impl Merged {
    /// A merge of the results of `automators` automators.
    pub(crate) fn new(automators: usize) -> Merged {
        let mut result = TaskResult::ok();
        if automators == 0 {
            result.stdout = "no automators to bootstrap\n".into();
        }
        Merged { result, several: automators > 1 }
    }

    /// Adds automator `name`'s result.
    pub(crate) fn add(&mut self, name: &str, r: TaskResult) {
        let merged = &mut self.result;
        if merged.status == 0 && r.status != 0 {
            merged.status = r.status;
        }
        merged.result.extend(r.result);
        merged.extra.extend(r.extra);
        merged.hostname = r.hostname.or(merged.hostname.take());
        merged.ipaddresses = r.ipaddresses.or(merged.ipaddresses.take());
        append_section(&mut merged.stdout, self.several, name, &r.stdout);
        append_section(&mut merged.stderr, self.several, name, &r.stderr);
    }

    /// The merged result.
    pub(crate) fn finish(self) -> TaskResult {
        self.result
    }
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
