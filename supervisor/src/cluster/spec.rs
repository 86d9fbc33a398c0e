//! A cluster description, as `cluster up` reads it (JSON, or TOML by the `.toml`
//! extension), checked whole before anything is created.
//!
//! ```json
//! {
//!   "name": "demo",
//!   "provider": {"name": "local", "fields": {"network": "loopback"}},
//!   "config": {"greeting": "hello"},
//!   "nodeGroups": [
//!     {"name": "store", "count": 1, "services": ["store"]},
//!     {"name": "web", "count": 2, "hostname": "web-{n}.demo.local", "services": ["web"]}
//!   ],
//!   "services": {
//!     "store": {"actions": {"install": {"type": "shell", "script": "store.sh", "data": "install"}}},
//!     "web": {"requires": ["store"], "endpoint": "http://{ipaddress}:{n+18080}/",
//!             "actions": {"start": {"type": "shell", "script": "web.sh", "data": "start {n+18080}"}}}
//!   }
//! }
//! ```
//!
//! Every problem is reported, each as `FILE: path.in[1].the.spec: problem`; values are
//! never quoted, since provider fields carry credentials.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use loom_protocol::TaskName;
use serde_json::{Map, Value};

use crate::wire::json::read_value;

/// Most nodes one cluster may have.
pub const MAX_NODES: u64 = 1000;

/// The service actions a spec may define, in the order `cluster up` runs them, then the
/// two `cluster down` runs.
pub const ACTIONS: [TaskName; 6] =
    [TaskName::Install, TaskName::Configure, TaskName::Initialize, TaskName::Start, TaskName::Stop, TaskName::Remove];

/// A checked cluster description.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// The cluster's name: lower-case letters, digits and `-`.
    pub name: String,
    /// The provider plugin and its fields (`config.provider.provisioner` in tasks).
    pub provider: ProviderSpec,
    /// Cluster-wide configuration (`config.cluster` in tasks).
    pub config: Map<String, Value>,
    /// The machines, group by group.
    pub node_groups: Vec<NodeGroup>,
    /// The services, by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Plugins folders, absolute (given relative to the spec file).
    pub plugin_dirs: Vec<PathBuf>,
    /// Tasks run at once, when the spec sets it.
    pub parallel: Option<usize>,
    /// Attempts per task, when the spec sets it.
    pub attempts: Option<u32>,
}

/// The provider part.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSpec {
    /// The provider plugin's name.
    pub name: String,
    /// Its fields.
    pub fields: Map<String, Value>,
}

/// A group of alike machines.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeGroup {
    /// Its name (part of each node's id).
    pub name: String,
    /// How many machines.
    pub count: u32,
    /// Hostname pattern; see [`render`] for the placeholders.
    pub hostname: String,
    /// The provider's machine size.
    pub flavor: Option<String>,
    /// The provider's machine image.
    pub image: Option<String>,
    /// Services on each machine, in order.
    pub services: Vec<String>,
    /// More top-level `config` keys for its tasks.
    pub config: Map<String, Value>,
}

/// A service: its actions and what it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// The action object per task (`{"type", "script", "data"}` as Loom, or
    /// `{"type", "fields": {...}}` as Coopr).
    pub actions: BTreeMap<TaskName, Map<String, Value>>,
    /// Services that must be installed before this one is installed, and started before
    /// it is initialized and started.
    pub requires: Vec<String>,
    /// Where it answers, as a pattern (shown by `cluster up` and `cluster status`).
    pub endpoint: Option<String>,
}

impl ServiceSpec {
    /// The automator type of `task`'s action, if the service defines it.
    pub fn automator(&self, task: TaskName) -> Option<&str> {
        self.actions.get(&task).and_then(|a| a.get("type")).and_then(Value::as_str)
    }
}

/// One machine of the cluster, expanded from its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// `<cluster>-<group>-<n>`: the node's id everywhere.
    pub id: String,
    /// Its group's index in `nodeGroups`.
    pub group: usize,
    /// 1-based within its group.
    pub n: u32,
    /// 0-based within the cluster.
    pub index: u32,
    /// Loom's node number: 1000 + index.
    pub nodenum: u32,
    /// Its hostname.
    pub hostname: String,
}

/// The language a spec is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    /// JSON (any file not ending in `.toml`).
    Json,
    /// TOML (a file ending in `.toml`).
    Toml,
}

/// Why a spec was refused: every problem found. Shown one line per problem, each as
/// `origin: problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.origin, .problems))]
pub struct SpecError {
    /// Where the spec came from (a file name, or "request body").
    pub origin: String,
    /// `path: problem`, one per problem.
    pub problems: Vec<String>,
}

/// `origin: problem` for each problem, one per line.
fn lines(origin: &str, problems: &[String]) -> String {
    problems.iter().map(|p| format!("{origin}: {p}")).collect::<Vec<_>>().join("\n")
}

impl ClusterSpec {
    /// Reads and checks a spec file: TOML when it ends in `.toml`, JSON otherwise.
    /// Relative `pluginDirs` are taken from the file's folder.
    ///
    /// # Errors
    /// [`SpecError`] naming the file and each problem.
    pub fn load(path: &Path) -> Result<ClusterSpec, SpecError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError { origin: origin.clone(), problems: vec![format!("cannot read: {e}")] })?;
        let format = if path.extension().is_some_and(|e| e == "toml") { SpecFormat::Toml } else { SpecFormat::Json };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::path::absolute(&base).unwrap_or(base);
        ClusterSpec::from_text(&text, format, &origin, &base)
    }

    /// Reads and checks a spec's text in `format`; relative `pluginDirs` are taken from
    /// `base`. What [`ClusterSpec::load`] does once it has read the file.
    ///
    /// # Errors
    /// [`SpecError`] with `origin` and the syntax error (with its line), or each problem.
    pub fn from_text(text: &str, format: SpecFormat, origin: &str, base: &Path) -> Result<ClusterSpec, SpecError> {
        let fail = |p: String| SpecError { origin: origin.to_owned(), problems: vec![p] };
        let value = match format {
            SpecFormat::Toml => toml::from_str::<Value>(text).map_err(|e| fail(toml_error(text, &e)))?,
            SpecFormat::Json => read_value(text.as_bytes()).map_err(|e| fail(e.to_string()))?,
        };
        ClusterSpec::from_value(&value, origin, base)
    }

    /// Checks a spec given as JSON; relative `pluginDirs` are taken from `base`.
    ///
    /// # Errors
    /// [`SpecError`] with `origin` and each problem.
    pub fn from_value(value: &Value, origin: &str, base: &Path) -> Result<ClusterSpec, SpecError> {
        let mut c = Checker::default();
        let spec = c.spec(value, base);
        match spec {
            Some(spec) if c.problems.is_empty() => Ok(spec),
            _ => Err(SpecError { origin: origin.to_owned(), problems: c.problems }),
        }
    }

    /// The spec as JSON, in the form [`ClusterSpec::from_value`] reads (with absolute
    /// `pluginDirs`): how it is stored.
    pub fn to_value(&self) -> Value {
        let groups: Vec<Value> = self
            .node_groups
            .iter()
            .map(|g| {
                let mut o = Map::new();
                o.insert("name".into(), g.name.clone().into());
                o.insert("count".into(), g.count.into());
                o.insert("hostname".into(), g.hostname.clone().into());
                if let Some(f) = &g.flavor {
                    o.insert("flavor".into(), f.clone().into());
                }
                if let Some(i) = &g.image {
                    o.insert("image".into(), i.clone().into());
                }
                o.insert("services".into(), g.services.clone().into());
                if !g.config.is_empty() {
                    o.insert("config".into(), Value::Object(g.config.clone()));
                }
                Value::Object(o)
            })
            .collect();
        let services: Map<String, Value> = self
            .services
            .iter()
            .map(|(name, s)| {
                let actions: Map<String, Value> = s
                    .actions
                    .iter()
                    .map(|(t, a)| (t.as_str().to_ascii_lowercase(), Value::Object(a.clone())))
                    .collect();
                let mut o = Map::new();
                o.insert("actions".into(), Value::Object(actions));
                if !s.requires.is_empty() {
                    o.insert("requires".into(), s.requires.clone().into());
                }
                if let Some(e) = &s.endpoint {
                    o.insert("endpoint".into(), e.clone().into());
                }
                (name.clone(), Value::Object(o))
            })
            .collect();
        let mut o = Map::new();
        o.insert("name".into(), self.name.clone().into());
        o.insert(
            "provider".into(),
            serde_json::json!({"name": self.provider.name, "fields": Value::Object(self.provider.fields.clone())}),
        );
        if !self.config.is_empty() {
            o.insert("config".into(), Value::Object(self.config.clone()));
        }
        o.insert("nodeGroups".into(), Value::Array(groups));
        o.insert("services".into(), Value::Object(services));
        if !self.plugin_dirs.is_empty() {
            let dirs: Vec<Value> = self.plugin_dirs.iter().map(|d| d.display().to_string().into()).collect();
            o.insert("pluginDirs".into(), Value::Array(dirs));
        }
        if let Some(p) = self.parallel {
            o.insert("parallel".into(), p.into());
        }
        if let Some(a) = self.attempts {
            o.insert("attempts".into(), a.into());
        }
        Value::Object(o)
    }

    /// Every node, group by group.
    pub fn nodes(&self) -> Vec<NodeSpec> {
        let mut nodes = Vec::new();
        let mut index = 0u32;
        for (gi, g) in self.node_groups.iter().enumerate() {
            for n in 1..=g.count {
                let mut node = NodeSpec {
                    id: format!("{}-{}-{n}", self.name, g.name),
                    group: gi,
                    n,
                    index,
                    nodenum: 1000 + index,
                    hostname: String::new(),
                };
                node.hostname = render(&g.hostname, &|k| self.var(&node, k, &Map::new()));
                nodes.push(node);
                index += 1;
            }
        }
        nodes
    }

    /// The services of `node`, in its group's order.
    pub fn services_of(&self, node: &NodeSpec) -> &[String] {
        self.node_groups.get(node.group).map_or(&[], |g| g.services.as_slice())
    }

    /// The automator types `node`'s services use, in order of first use.
    pub fn automators_of(&self, node: &NodeSpec) -> Vec<String> {
        let mut seen = Vec::<String>::new();
        for s in self.services_of(node) {
            for a in self.services.get(s).into_iter().flat_map(|s| s.actions.values()) {
                if let Some(t) = a.get("type").and_then(Value::as_str)
                    && !seen.iter().any(|x| x == t)
                {
                    seen.push(t.to_owned());
                }
            }
        }
        seen
    }

    /// A placeholder's value for `node`, whose learned config is `learned`.
    pub fn var(&self, node: &NodeSpec, key: &str, learned: &Map<String, Value>) -> Option<Var> {
        let group = self.node_groups.get(node.group)?;
        Some(match key {
            "cluster" => Var::Text(self.name.clone()),
            "group" => Var::Text(group.name.clone()),
            "node" => Var::Text(node.id.clone()),
            "n" => Var::Number(i64::from(node.n)),
            "index" => Var::Number(i64::from(node.index)),
            "nodenum" => Var::Number(i64::from(node.nodenum)),
            "hostname" => Var::Text(
                learned.get("hostname").and_then(Value::as_str).map_or_else(|| node.hostname.clone(), str::to_owned),
            ),
            "ipaddress" => Var::Text(address(learned)?),
            _ => return None,
        })
    }
}

/// The address tasks use to reach a node: `ipaddresses.access_v4`, else `ipaddress`.
pub fn address(learned: &Map<String, Value>) -> Option<String> {
    learned
        .get("ipaddresses")
        .and_then(|a| a.get("access_v4"))
        .and_then(Value::as_str)
        .or_else(|| learned.get("ipaddress").and_then(Value::as_str))
        .map(str::to_owned)
}

/// A placeholder's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// Text.
    Text(String),
    /// A number, which `{name+K}` may offset.
    Number(i64),
}

/// Placeholders a pattern may use.
pub const PLACEHOLDERS: [&str; 8] = ["cluster", "group", "node", "n", "index", "nodenum", "hostname", "ipaddress"];

/// Fills `{name}` and `{name+K}` (numbers only) in `pattern`. Anything else in braces,
/// such as JSON (`{"a": 1}`), and names with no value yet are left as they are.
pub fn render(pattern: &str, var: &dyn Fn(&str) -> Option<Var>) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let filled = after.find('}').and_then(|close| {
            let inner = &after[..close];
            fill(inner, var).map(|v| (v, close))
        });
        match filled {
            Some((value, close)) => {
                out.push_str(&value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn fill(inner: &str, var: &dyn Fn(&str) -> Option<Var>) -> Option<String> {
    let (name, offset) = match inner.split_once('+') {
        Some((n, k)) => (n, Some(k.trim().parse::<i64>().ok()?)),
        None => (inner, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    match (var(name)?, offset) {
        (Var::Text(t), None) => Some(t),
        (Var::Number(n), None) => Some(n.to_string()),
        (Var::Number(n), Some(k)) => Some(n.saturating_add(k).to_string()),
        (Var::Text(_), Some(_)) => None,
    }
}

/// Names in `{...}` that look like placeholders but are not known ones.
fn unknown_placeholders(pattern: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let inner = &after[..close];
        let name = inner.split_once('+').map_or(inner, |(n, _)| n);
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !PLACEHOLDERS.contains(&name)
        {
            unknown.push(name.to_owned());
        }
        rest = after;
    }
    unknown
}

/// `{name}` used with `+K` on a text placeholder.
fn offset_on_text(pattern: &str) -> Option<String> {
    ["cluster", "group", "node", "hostname", "ipaddress"]
        .into_iter()
        .find(|n| pattern.contains(&format!("{{{n}+")))
        .map(str::to_owned)
}

fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("not valid TOML at line {line}: {message}")
        }
        None => format!("not valid TOML: {message}"),
    }
}

/// Walks the JSON, collecting problems with their paths.
#[derive(Default)]
struct Checker {
    problems: Vec<String>,
}

use crate::core::manifest::type_name as kind;

/// A name usable in ids, hostnames and file names.
fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with(['.', '-'])
}

impl Checker {
    /// Records a problem, shown whole with unprintable characters escaped: the path holds
    /// the spec's keys, and the text may quote its names (a group's, a hostname).
    fn problem(&mut self, path: &str, what: impl fmt::Display) {
        self.problems.push(crate::wire::redact::printable(&format!("{path}: {what}")).into_owned());
    }

    fn object<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(o) => Some(o),
            other => {
                self.problem(path, format!("must be an object, found {}", kind(other)));
                None
            }
        }
    }

    fn keys(&mut self, o: &Map<String, Value>, path: &str, known: &[&str]) {
        for k in o.keys().filter(|k| !known.contains(&k.as_str())) {
            let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            self.problem(&at, format!("unknown key (known: {})", known.join(", ")));
        }
    }

    fn string(&mut self, o: &Map<String, Value>, key: &str, path: &str, required: bool) -> Option<String> {
        let at = join(path, key);
        match o.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                self.problem(&at, "is empty");
                None
            }
            Some(other) => {
                self.problem(&at, format!("must be a string, found {}", kind(other)));
                None
            }
            None if required => {
                self.problem(&at, "is missing");
                None
            }
            None => None,
        }
    }

    fn positive(&mut self, o: &Map<String, Value>, key: &str, path: &str, max: u64) -> Option<u64> {
        let at = join(path, key);
        let v = o.get(key)?;
        match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Some(n),
            _ => {
                let found = if v.is_number() { "a number out of range".to_owned() } else { kind(v).to_owned() };
                self.problem(&at, format!("must be an integer from 1 to {max}, found {found}"));
                None
            }
        }
    }

    fn strings(&mut self, o: &Map<String, Value>, key: &str, path: &str) -> Vec<String> {
        let at = join(path, key);
        match o.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if !s.is_empty() => {
                            if out.contains(s) {
                                self.problem(&format!("{at}[{i}]"), "is listed twice");
                            } else {
                                out.push(s.clone());
                            }
                        }
                        other => self.problem(&format!("{at}[{i}]"), format!("must be a name, found {}", kind(other))),
                    }
                }
                out
            }
            Some(other) => {
                self.problem(&at, format!("must be an array of names, found {}", kind(other)));
                Vec::new()
            }
        }
    }

    fn optional_object(&mut self, o: &Map<String, Value>, key: &str, path: &str) -> Map<String, Value> {
        match o.get(key) {
            None => Map::new(),
            Some(v) => self.object(v, &join(path, key)).cloned().unwrap_or_default(),
        }
    }

    fn pattern(&mut self, pattern: &str, path: &str) {
        for name in unknown_placeholders(pattern) {
            self.problem(path, format!("unknown placeholder {{{name}}} (known: {})", PLACEHOLDERS.join(", ")));
        }
        if let Some(name) = offset_on_text(pattern) {
            self.problem(path, format!("{{{name}+...}}: only n, index and nodenum take an offset"));
        }
    }

    fn spec(&mut self, v: &Value, base: &Path) -> Option<ClusterSpec> {
        let top = self.object(v, "(top level)")?;
        self.keys(
            top,
            "",
            &[
                "name",
                "provider",
                "config",
                "nodeGroups",
                "services",
                "pluginDirs",
                "parallel",
                "attempts",
                "description",
            ],
        );
        let name = self.string(top, "name", "", true);
        if let Some(n) = &name
            && !is_label(n, 40)
        {
            self.problem("name", "must be 1 to 40 lower-case letters, digits and '-' (not first or last)");
        }
        let provider = self.provider(top.get("provider"));
        let config = self.optional_object(top, "config", "");
        let services = self.services(top.get("services"));
        let node_groups = self.node_groups(top.get("nodeGroups"), &services);
        let plugin_dirs = self.strings(top, "pluginDirs", "").into_iter().map(|d| base.join(d)).collect();
        let parallel = self.positive(top, "parallel", "", 1024).and_then(|n| usize::try_from(n).ok());
        let attempts = self.positive(top, "attempts", "", 100).and_then(|n| u32::try_from(n).ok());
        let spec = ClusterSpec {
            name: name?,
            provider: provider?,
            config,
            node_groups,
            services,
            plugin_dirs,
            parallel,
            attempts,
        };
        self.whole(&spec);
        Some(spec)
    }

    fn provider(&mut self, v: Option<&Value>) -> Option<ProviderSpec> {
        let Some(v) = v else {
            self.problem("provider", "is missing");
            return None;
        };
        let o = self.object(v, "provider")?;
        self.keys(o, "provider", &["name", "fields"]);
        let name = self.string(o, "name", "provider", true)?;
        let fields = self.optional_object(o, "fields", "provider");
        Some(ProviderSpec { name, fields })
    }

    fn services(&mut self, v: Option<&Value>) -> BTreeMap<String, ServiceSpec> {
        let mut out = BTreeMap::new();
        let Some(v) = v else { return out };
        let Some(o) = self.object(v, "services") else { return out };
        for (name, s) in o {
            let path = format!("services.{name}");
            if !is_service_name(name) {
                self.problem(&path, "a service name must be letters, digits, '-', '_' and '.'");
            }
            let Some(so) = self.object(s, &path) else { continue };
            self.keys(so, &path, &["actions", "requires", "endpoint", "description"]);
            let actions = self.actions(so.get("actions"), &path);
            let requires = self.strings(so, "requires", &path);
            let endpoint = self.string(so, "endpoint", &path, false);
            if let Some(e) = &endpoint {
                self.pattern(e, &join(&path, "endpoint"));
            }
            out.insert(name.clone(), ServiceSpec { actions, requires, endpoint });
        }
        out
    }

    fn actions(&mut self, v: Option<&Value>, path: &str) -> BTreeMap<TaskName, Map<String, Value>> {
        let mut out = BTreeMap::new();
        let at = join(path, "actions");
        let Some(v) = v else {
            self.problem(&at, "is missing (a service needs at least one action)");
            return out;
        };
        let Some(o) = self.object(v, &at) else { return out };
        if o.is_empty() {
            self.problem(&at, "is empty (a service needs at least one action)");
        }
        for (key, action) in o {
            let path = format!("{at}.{key}");
            let Some(task) = ACTIONS.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(key)) else {
                self.problem(&path, "unknown action (known: install, configure, initialize, start, stop, remove)");
                continue;
            };
            let Some(a) = self.object(action, &path) else { continue };
            self.keys(a, &path, &["type", "script", "data", "fields"]);
            self.string(a, "type", &path, true);
            match (a.get("script"), a.get("fields")) {
                (Some(_), Some(_)) => self.problem(&path, "give either script (and data) or fields, not both"),
                (Some(_), None) => {
                    self.string(a, "script", &path, true);
                    if let Some(d) = self.string(a, "data", &path, false) {
                        self.pattern(&d, &join(&path, "data"));
                    }
                }
                (None, Some(f)) => {
                    if let Some(f) = self.object(f, &join(&path, "fields")) {
                        for (k, v) in f {
                            if let Some(s) = v.as_str() {
                                self.pattern(s, &format!("{path}.fields.{k}"));
                            }
                        }
                    }
                }
                (None, None) => self.problem(&path, "needs a script (Loom) or fields (Coopr)"),
            }
            out.insert(task, a.clone());
        }
        out
    }

    fn node_groups(&mut self, v: Option<&Value>, services: &BTreeMap<String, ServiceSpec>) -> Vec<NodeGroup> {
        let mut out = Vec::new();
        let Some(v) = v else {
            self.problem("nodeGroups", "is missing");
            return out;
        };
        let Value::Array(items) = v else {
            self.problem("nodeGroups", format!("must be an array, found {}", kind(v)));
            return out;
        };
        if items.is_empty() {
            self.problem("nodeGroups", "is empty");
        }
        let mut names = HashSet::new();
        for (i, g) in items.iter().enumerate() {
            let path = format!("nodeGroups[{i}]");
            let Some(o) = self.object(g, &path) else { continue };
            self.keys(o, &path, &["name", "count", "hostname", "flavor", "image", "services", "config"]);
            let name = self.string(o, "name", &path, true);
            if let Some(n) = &name {
                if !is_label(n, 30) {
                    self.problem(&join(&path, "name"), "must be lower-case letters, digits and '-'");
                } else if !names.insert(n.clone()) {
                    self.problem(&join(&path, "name"), "another group has this name");
                }
            }
            let count = match o.get("count") {
                None => Some(1),
                Some(_) => self.positive(o, "count", &path, MAX_NODES),
            };
            let hostname = self.string(o, "hostname", &path, false).unwrap_or_else(|| "{node}".into());
            self.pattern(&hostname, &join(&path, "hostname"));
            if hostname.contains("{ipaddress}") || hostname.contains("{hostname}") {
                self.problem(&join(&path, "hostname"), "cannot use {ipaddress} or {hostname}");
            }
            let flavor = self.string(o, "flavor", &path, false);
            let image = self.string(o, "image", &path, false);
            let group_services = self.strings(o, "services", &path);
            for (j, s) in group_services.iter().enumerate() {
                if !services.contains_key(s) {
                    self.problem(&format!("{path}.services[{j}]"), format!("no service {s:?} in services"));
                }
            }
            let config = self.optional_object(o, "config", &path);
            for k in config.keys().filter(|k| RESERVED.contains(&k.as_str())) {
                self.problem(&format!("{path}.config.{k}"), "is set by loom-provisioner; it cannot be given here");
            }
            if let (Some(name), Some(count)) = (name, count) {
                let count = u32::try_from(count).unwrap_or(u32::MAX);
                out.push(NodeGroup { name, count, hostname, flavor, image, services: group_services, config });
            }
        }
        out
    }

    /// Checks that need the whole spec.
    fn whole(&mut self, spec: &ClusterSpec) {
        let total: u64 = spec.node_groups.iter().map(|g| u64::from(g.count)).sum();
        if total > MAX_NODES {
            self.problem("nodeGroups", format!("{total} nodes in all; at most {MAX_NODES}"));
        }
        let placed: BTreeSet<&str> =
            spec.node_groups.iter().flat_map(|g| g.services.iter().map(String::as_str)).collect();
        for (name, s) in &spec.services {
            for (i, r) in s.requires.iter().enumerate() {
                let at = format!("services.{name}.requires[{i}]");
                if !spec.services.contains_key(r) {
                    self.problem(&at, format!("no service {r:?} in services"));
                } else if r == name {
                    self.problem(&at, "a service cannot require itself");
                } else if placed.contains(name.as_str()) && !placed.contains(r.as_str()) {
                    self.problem(&at, format!("no node group runs {r:?}"));
                }
            }
        }
        if let Some(cycle) = find_cycle(&spec.services) {
            // Shown whole through `problem`, which escapes what is unprintable.
            self.problem("services", format!("requires form a cycle: {}", cycle.join(" -> ")));
        }
        if total <= MAX_NODES {
            let mut seen = HashSet::new();
            for node in spec.nodes() {
                if !seen.insert(node.hostname.clone()) {
                    let g = &spec.node_groups[node.group];
                    self.problem(
                        &format!("nodeGroups[{}].hostname", node.group),
                        format!(
                            "two nodes would be named {:?}: use {{n}} in the pattern of group {}",
                            node.hostname, g.name
                        ),
                    );
                    break;
                }
            }
        }
    }
}

/// Keys a task's `config` gets from loom-provisioner itself.
const RESERVED: [&str; 10] = [
    "cluster",
    "nodes",
    "service",
    "provider",
    "automators",
    "services",
    "nodenum",
    "hostname",
    "providerid",
    "ssh-auth",
];

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// A cycle among `requires`, as a path of names, if there is one.
fn find_cycle(services: &BTreeMap<String, ServiceSpec>) -> Option<Vec<String>> {
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, ServiceSpec>,
        stack: &mut Vec<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| *s == name) {
            let mut cycle: Vec<String> = stack[pos..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if !done.insert(name) {
            return None;
        }
        stack.push(name);
        for r in services.get(name).map(|s| s.requires.as_slice()).unwrap_or_default() {
            if r != name
                && let Some(c) = visit(r, services, stack, done)
            {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = HashSet::new();
    services.keys().find_map(|name| visit(name, services, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Value {
        json!({
            "name": "demo",
            "provider": {"name": "local", "fields": {"api_password": "hunter2"}},
            "config": {"greeting": "hi"},
            "nodeGroups": [
                {"name": "store", "services": ["store"]},
                {"name": "web", "count": 2, "hostname": "web-{n}.{cluster}.local", "services": ["web"]}
            ],
            "services": {
                "store": {"actions": {"install": {"type": "shell", "script": "store.sh", "data": "install"},
                                      "start": {"type": "shell", "script": "store.sh", "data": "start"}}},
                "web": {"requires": ["store"], "endpoint": "http://{ipaddress}:{n+18080}/",
                        "actions": {"start": {"type": "shell", "fields": {"script": "web.sh", "args": "{n+18080}"}}}}
            },
            "pluginDirs": ["plugins"]
        })
    }

    fn check(v: &Value) -> Result<ClusterSpec, Vec<String>> {
        ClusterSpec::from_value(v, "demo.json", Path::new("/specs")).map_err(|e| e.problems)
    }

    #[test]
    fn expands_nodes_with_ids_numbers_and_hostnames() {
        let spec = check(&example()).unwrap();
        let nodes = spec.nodes();
        let ids: Vec<_> = nodes.iter().map(|n| (n.id.as_str(), n.hostname.as_str(), n.nodenum)).collect();
        assert_eq!(
            ids,
            [
                ("demo-store-1", "demo-store-1", 1000),
                ("demo-web-1", "web-1.demo.local", 1001),
                ("demo-web-2", "web-2.demo.local", 1002)
            ]
        );
        assert_eq!(spec.plugin_dirs, [PathBuf::from("/specs/plugins")]);
        assert_eq!(spec.automators_of(&nodes[1]), ["shell"]);
        assert_eq!(spec.services["web"].automator(TaskName::Start), Some("shell"));
    }

    #[test]
    fn round_trips_through_its_stored_form() {
        let spec = check(&example()).unwrap();
        let again = ClusterSpec::from_value(&spec.to_value(), "db", Path::new("/elsewhere")).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn renders_placeholders_and_leaves_json_alone() {
        let var = |k: &str| match k {
            "n" => Some(Var::Number(2)),
            "ipaddress" => Some(Var::Text("10.0.0.5".into())),
            _ => None,
        };
        assert_eq!(render("http://{ipaddress}:{n+18080}/", &var), "http://10.0.0.5:18082/");
        assert_eq!(render(r#"{"loom": {"n": {n}}}"#, &var), r#"{"loom": {"n": 2}}"#);
        assert_eq!(render("{unknown} {ipaddress+1} {", &var), "{unknown} {ipaddress+1} {");
    }

    #[test]
    fn every_problem_is_reported_with_its_path_and_no_value() {
        let mut v = example();
        v["name"] = json!("Demo!");
        v["nodeGroups"][1]["count"] = json!("two");
        v["nodeGroups"][0]["services"] = json!(["store", "cache"]);
        v["services"]["web"]["actions"]["strat"] = json!({"type": "shell", "script": "x"});
        v["services"]["store"]["requires"] = json!(["web"]);
        v["services"]["web"]["endpoint"] = json!("http://{address}/");
        v["provider"]["fields"] = json!("hunter2");
        v["extra"] = json!(1);
        let problems = check(&v).unwrap_err();
        let expected = [
            "extra: unknown key",
            "name: must be 1 to 40 lower-case",
            "provider.fields: must be an object, found a string",
            "services.web.actions.strat: unknown action",
            "services.web.endpoint: unknown placeholder {address}",
            "nodeGroups[0].services[1]: no service \"cache\" in services",
            "nodeGroups[1].count: must be an integer from 1 to 1000, found a string",
            "services: requires form a cycle: store -> web -> store",
        ];
        for e in expected {
            assert!(problems.iter().any(|p| p.starts_with(e)), "missing {e:?} in {problems:#?}");
        }
        assert!(!problems.iter().any(|p| p.contains("hunter2")), "{problems:#?}");
        let err = SpecError { origin: "demo.json".into(), problems }.to_string();
        assert!(err.lines().all(|l| l.starts_with("demo.json: ")), "{err}");
    }

    #[test]
    fn names_quoted_in_a_problem_are_shown_without_control_characters() {
        // Found by the cluster_spec fuzz target: a group name with DEL in a hostname clash.
        let mut v = example();
        v["nodeGroups"][1]["name"] = json!("w\u{7f}b");
        v["nodeGroups"][1]["hostname"] = json!("web.local");
        let problems = check(&v).unwrap_err();
        assert!(problems.iter().all(|p| !p.chars().any(char::is_control)), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("group w\\u{7f}b")), "{problems:?}");
    }

    #[test]
    fn keys_are_shown_without_line_breaks_or_terminal_escapes() {
        // Found with the cluster_spec fuzz target's check that each problem is one line:
        // keys went into problems as they were, so a key could start a new line (a forged
        // log line) or carry terminal escapes.
        let mut v = example();
        v["bad\nkey"] = json!(1);
        v["services"]["x\u{1b}[2J"] =
            json!({"requires": ["y\u{202e}"], "actions": {"start": {"type": "t", "script": "s"}}});
        v["services"]["y\u{202e}"] =
            json!({"requires": ["x\u{1b}[2J"], "actions": {"start": {"type": "t", "script": "s"}}});
        let problems = check(&v).unwrap_err();
        assert!(problems.iter().all(|p| !p.chars().any(|c| c.is_control() || c == '\u{202e}')), "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with("bad\\nkey: unknown key")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with("services.x\\u{1b}[2J: a service name")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("cycle: x\\u{1b}[2J -> y\\u{202e} -> x")), "{problems:#?}");
    }

    #[test]
    fn hostnames_must_differ_and_requirements_must_be_placed() {
        let mut v = example();
        v["nodeGroups"][1]["hostname"] = json!("web.local");
        v["nodeGroups"][0]["services"] = json!([]);
        let problems = check(&v).unwrap_err();
        assert!(
            problems.iter().any(|p| p.starts_with("nodeGroups[1].hostname: two nodes would be named")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p == "services.web.requires[0]: no node group runs \"store\""), "{problems:?}");
    }

    #[test]
    fn reads_toml_files_and_names_the_line_of_a_syntax_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "name = \"t\"\nprovider = { name = \"local\" }\n[[nodeGroups]]\nname = \"a\"\ncount = 2\nservices = [\"s\"]\n[services.s.actions.install]\ntype = \"shell\"\nscript = \"i.sh\"\n",
        )
        .unwrap();
        let spec = ClusterSpec::load(&path).unwrap();
        assert_eq!(spec.nodes().len(), 2);
        std::fs::write(&path, "name = \"t\"\nprovider = {\n").unwrap();
        let e = ClusterSpec::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: not valid TOML at line 2", path.display())), "{e}");
    }

    #[test]
    fn a_json_syntax_error_names_the_file_and_place_never_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, "{\"name\": \"t\",\n \"provider\": {\"fields\": {\"pw\" \"hunter2\"}}}").unwrap();
        let e = ClusterSpec::load(&path).unwrap_err().to_string();
        assert_eq!(e, format!("{}: not valid JSON: expected `:` at line 2 column 31", path.display()));
    }

    #[test]
    fn a_refusal_shows_one_line_per_problem_each_with_its_origin() {
        let e = SpecError { origin: "s.json".into(), problems: vec!["name: is missing".into(), "services: x".into()] };
        assert_eq!(e.to_string(), "s.json: name: is missing\ns.json: services: x");
        let e: &dyn std::error::Error = &e;
        assert!(e.source().is_none());
    }
}
