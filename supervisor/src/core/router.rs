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
use crate::core::pool::PhaseObserver;
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
    pub(crate) fn new(registry: Registry, log_level: LogLevel, observer: Option<&Arc<dyn PhaseObserver>>) -> Table {
        let plugins = registry
            .plugins
            .iter()
            .filter_map(|r| match &r.availability {
                Availability::Runnable(spec) => {
                    let plugin = Plugin::new(Arc::clone(spec), log_level);
                    if let Some(o) = observer {
                        plugin.observe(o);
                    }
                    Some(((r.kind, r.name.clone()), plugin))
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

/// The plugins a daemon must have to run `task`, by Loom's rules, as `kind:name` keys
/// (`provider:ec2`, `automator:shell`; `automator:*` for a BOOTSTRAP that names no
/// automators: it goes to whichever automators the daemon has). Read from the task
/// alone, so a daemon can tell which tasks another daemon can run. Empty when the task
/// names no plugin (any daemon refuses it the same way). A name holding one of the
/// task's credentials (a hostile task) is masked: the keys are stored and shown
/// (`waiting`), and no registered plugin has such a name anyway.
pub fn needs(task: &TaskEnvelope) -> Vec<String> {
    let mut needs = names_needed(task);
    for need in &mut needs {
        if let std::borrow::Cow::Owned(masked) = crate::wire::redact::scrub_values(need, &task.secrets) {
            *need = masked;
        }
    }
    needs
}

fn names_needed(task: &TaskEnvelope) -> Vec<String> {
    match task.task_name {
        TaskName::Create | TaskName::Confirm | TaskName::Delete => {
            task.provider.iter().map(|p| format!("{}:{p}", PluginKind::Provider)).collect()
        }
        TaskName::Bootstrap => match &task.automators {
            Some(list) => list.iter().map(|a| format!("{}:{a}", PluginKind::Automator)).collect(),
            None => vec![format!("{}:*", PluginKind::Automator)],
        },
        _ => task.automator.iter().map(|a| format!("{}:{a}", PluginKind::Automator)).collect(),
    }
}

impl Table {
    /// The plugin keys this table runs ([`needs`]' spelling), sorted: each runnable
    /// plugin, and `automator:*` when it has an automator.
    pub fn can(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.plugins.keys().map(|(kind, name)| format!("{kind}:{name}")).collect();
        if self.plugins.keys().any(|(kind, _)| *kind == PluginKind::Automator) {
            keys.push(format!("{}:*", PluginKind::Automator));
        }
        keys.sort_unstable();
        keys
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

#[cfg(test)]
mod tests {
    use loom_protocol::PluginKind::{Automator, Provider};
    use serde_json::{Value, json};

    use super::*;
    use crate::core::testing::{Plugins, action, task};

    /// Automators `a1` and `a2`, `bad` (registered, not runnable: a bad key), provider `p1`.
    fn plugins() -> Plugins {
        let plugins = Plugins::new();
        plugins.add(Automator, "a1", json!({})).add(Automator, "a2", json!({})).add(Provider, "p1", json!({}));
        plugins.add(Automator, "bad", json!({"instances": "two"}));
        plugins
    }

    fn table(plugins: &Plugins) -> Table {
        Table::new(plugins.registry(), LogLevel::Info, None)
    }

    /// Where a route goes: `kind name`, each BOOTSTRAP target as `name` or `name: why`, or
    /// `refused: why`.
    fn goes(route: &Route) -> String {
        match route {
            Route::One(p) => format!("{} {}", p.kind(), p.name()),
            Route::Bootstrap(targets) => targets
                .iter()
                .map(|(name, t)| match t {
                    Ok(p) => p.name().to_owned(),
                    Err(why) => format!("{name}: {why}"),
                })
                .collect::<Vec<_>>()
                .join("; "),
            Route::Refused(why) => format!("refused: {why}"),
        }
    }

    fn bootstrap(id: &str, config: Value) -> TaskEnvelope {
        task(id, "BOOTSTRAP", config)
    }

    #[test]
    fn providers_go_by_providertype_else_name_and_automators_by_action_type() {
        let (plugins, other) = (plugins(), json!({"providertype": "p1", "name": "elsewhere"}));
        let t = table(&plugins);
        assert_eq!(goes(&route(&t, &task("t1", "CREATE", json!({"provider": other})))), "provider p1");
        assert_eq!(goes(&route(&t, &task("t2", "CONFIRM", json!({"provider": {"name": "p1"}})))), "provider p1");
        assert_eq!(goes(&route(&t, &task("t3", "DELETE", json!({"provider": {"providertype": "p1"}})))), "provider p1");
        for name in ["INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"] {
            assert_eq!(goes(&route(&t, &action("t4", name, "a2", json!({})))), "automator a2", "{name}");
        }
        // A provider task does not go by the action type, nor an action by the provider.
        let both = json!({"provider": {"name": "p1"}, "service": {"action": {"type": "a1"}}});
        assert_eq!(goes(&route(&t, &task("t5", "CREATE", both.clone()))), "provider p1");
        assert_eq!(goes(&route(&t, &task("t6", "INSTALL", both))), "automator a1");
    }

    #[test]
    fn refusals_name_what_is_registered_and_quote_only_the_task_id_and_the_plugin_name() {
        let plugins = plugins();
        let t = table(&plugins);
        let secret = json!({"password": "SECRET-never-quoted"});
        let ghost = task("t1", "CREATE", json!({"provider": {"providertype": "ghost"}, "ssh-auth": secret}));
        let refusals = [
            (ghost, "task t1 (CREATE): no provider named \"ghost\" is registered (registered providers: p1)"),
            (
                task("t2", "DELETE", json!({"service": {"action": {"type": "a1"}}})),
                "task t2 (DELETE): names no provider: config.provider.providertype and config.provider.name are both missing",
            ),
            (
                task("t3", "INSTALL", json!({"provider": {"name": "p1"}})),
                "task t3 (INSTALL): names no automator: config.service.action.type is missing",
            ),
            (
                action("t4", "START", "p1", json!({})),
                "task t4 (START): no automator named \"p1\" is registered (registered automators: a1, a2, bad)",
            ),
        ];
        for (task, why) in refusals {
            assert_eq!(goes(&route(&t, &task)), format!("refused: {why}"));
        }
        let bad = goes(&route(&t, &action("t5", "STOP", "bad", json!({}))));
        assert!(bad.starts_with("refused: task t5 (STOP): automator \"bad\" is registered but cannot run: "), "{bad}");
        assert!(bad.contains("\"instances\""), "the reason names the key: {bad}");

        let empty = Table::new(Registry::default(), LogLevel::Info, None);
        let none = goes(&route(&empty, &action("t6", "INSTALL", "a1", json!({}))));
        assert_eq!(
            none,
            "refused: task t6 (INSTALL): no automator named \"a1\" is registered (registered automators: none)"
        );
    }

    #[test]
    fn bootstrap_goes_to_the_listed_automators_in_order_else_to_every_registered_one() {
        let plugins = plugins();
        let t = table(&plugins);
        let listed = route(&t, &bootstrap("b1", json!({"automators": ["a2", "ghost", "a1"]})));
        let ghost = "ghost: task b1 (BOOTSTRAP): no automator named \"ghost\" is registered (registered automators: a1, a2, bad)";
        assert_eq!(goes(&listed), format!("a2; {ghost}; a1"));

        let every = goes(&route(&t, &bootstrap("b2", json!({}))));
        assert!(
            every.starts_with("a1; a2; bad: task b2 (BOOTSTRAP): automator \"bad\" is registered but cannot run: "),
            "{every}"
        );

        let none = route(&t, &bootstrap("b3", json!({"automators": []})));
        assert!(matches!(&none, Route::Bootstrap(targets) if targets.is_empty()));
    }

    #[test]
    fn a_route_is_labelled_by_registered_plugins_only_sorted_and_deduplicated() {
        let plugins = plugins();
        let t = table(&plugins);
        let label = |task: &TaskEnvelope| route(&t, task).target();
        assert_eq!(label(&action("t1", "INSTALL", "a2", json!({}))), "a2");
        assert_eq!(label(&task("t2", "CREATE", json!({"provider": {"name": "p1"}}))), "p1");
        assert_eq!(label(&bootstrap("b1", json!({"automators": ["a2", "a1", "a2", "ghost", "bad"]}))), "a1+a2");
        assert_eq!(label(&bootstrap("b2", json!({"automators": ["ghost", "bad"]}))), "none");
        assert_eq!(label(&bootstrap("b3", json!({"automators": []}))), "none");
        assert_eq!(label(&action("t3", "INSTALL", "ghost", json!({}))), "none");
        assert_eq!(label(&task("t4", "CREATE", json!({}))), "none");
    }

    #[tokio::test]
    async fn a_route_is_idempotent_when_every_plugin_there_declared_the_task_so() {
        let plugins = Plugins::new();
        let declares = |tasks: Value| json!({"settings": {"idempotentTasks": tasks}});
        plugins.add(Automator, "a1", declares(json!(["INSTALL", "BOOTSTRAP"])));
        plugins.add(Automator, "a2", declares(json!(["BOOTSTRAP"])));
        let t = table(&plugins);
        for p in t.plugins() {
            p.start();
            p.wait_settled().await;
        }
        let idempotent = |task: &TaskEnvelope| route(&t, task).is_idempotent(task.task_name);
        assert!(idempotent(&action("t1", "INSTALL", "a1", json!({}))));
        assert!(!idempotent(&action("t2", "CONFIGURE", "a1", json!({}))), "not declared");
        assert!(!idempotent(&action("t3", "INSTALL", "a2", json!({}))), "declared by another plugin");
        assert!(idempotent(&bootstrap("b1", json!({"automators": ["a2", "a1"]}))));
        assert!(!idempotent(&bootstrap("b2", json!({"automators": ["a1", "ghost"]}))), "one cannot run");
        assert!(!idempotent(&bootstrap("b3", json!({"automators": []}))), "nothing runs it");
        assert!(!idempotent(&action("t4", "INSTALL", "ghost", json!({}))), "refused");
        for p in t.plugins() {
            p.stop().await;
        }
    }

    fn answered(status: i64, stdout: &str, stderr: &str) -> TaskResult {
        TaskResult { status, stdout: stdout.into(), stderr: stderr.into(), ..TaskResult::ok() }
    }

    #[test]
    fn a_merge_keeps_the_first_failure_and_lets_later_result_keys_overwrite() {
        let mut merged = Merged::new(3);
        let first = TaskResult { hostname: Some("h1".into()), ..answered(0, "", "") };
        merged.add("a", first.with("x", 1).with("y", 1));
        merged.add("b", answered(3, "", "").with("y", 2));
        merged.add("c", TaskResult { ipaddresses: Some(json!({"access_v4": "10.0.0.3"})), ..answered(5, "", "") });
        let r = merged.finish();
        assert_eq!(r.status, 3, "the first non-zero status");
        assert_eq!(Value::Object(r.result), json!({"x": 1, "y": 2}));
        assert_eq!(r.hostname.as_deref(), Some("h1"), "an automator that does not say keeps what an earlier one said");
        assert_eq!(r.ipaddresses, Some(json!({"access_v4": "10.0.0.3"})));
    }

    #[test]
    fn a_merge_heads_each_automators_output_only_when_there_are_several() {
        let mut two = Merged::new(2);
        two.add("a", answered(0, "one", ""));
        two.add("b", answered(0, "two\n", "oops"));
        let r = two.finish();
        assert_eq!(r.stdout, "==> a <==\none\n==> b <==\ntwo\n");
        assert_eq!(r.stderr, "==> b <==\noops\n", "no header over nothing");

        let mut one = Merged::new(1);
        one.add("a", answered(0, "one", ""));
        assert_eq!(one.finish().stdout, "one\n");

        let nothing = Merged::new(0).finish();
        assert_eq!((nothing.status, nothing.stdout.as_str()), (0, "no automators to bootstrap\n"));
    }

    #[test]
    fn a_daemon_needs_the_plugins_a_task_routes_to_and_never_its_credentials() {
        assert_eq!(needs(&action("t", "INSTALL", "shell", json!({}))), ["automator:shell"]);
        let create = task("t", "CREATE", json!({"provider": {"providertype": "ec2"}}));
        assert_eq!(needs(&create), ["provider:ec2"]);
        assert_eq!(needs(&task("t", "BOOTSTRAP", json!({}))), ["automator:*"]);
        // A hostile task naming an automator after its own password.
        let boot = task(
            "t",
            "BOOTSTRAP",
            json!({"automators": ["shell", "pw-SECRET-1"], "ssh-auth": {"user": "u", "password": "pw-SECRET-1"}}),
        );
        assert_eq!(needs(&boot), ["automator:shell", "automator:[redacted]"]);
        let table = table(&plugins());
        assert_eq!(table.can(), ["automator:*", "automator:a1", "automator:a2", "provider:p1"]);
    }
}
