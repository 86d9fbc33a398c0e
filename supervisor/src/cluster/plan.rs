//! Plans: which tasks a cluster operation runs, and which must finish before which.
//! Pure functions of the spec and of what is recorded about each step; [`super::job`]
//! runs them.
//!
//! The orders are Loom's server's:
//!
//! - **up**: per node CREATE, CONFIRM; every node's BOOTSTRAP after every CONFIRM (so each
//!   task from BOOTSTRAP on carries every node's address in `config.nodes`); per service
//!   and node INSTALL, CONFIGURE, INITIALIZE, START (those it defines), after its node's
//!   BOOTSTRAP; INSTALL after the INSTALL of every required service on every node, and
//!   INITIALIZE and START after the START (or last action) of every required service.
//!   Steps already done are left out, so an `up` after a failure resumes; a node with
//!   steps left gets its BOOTSTRAP again (idempotent), so fixed scripts are uploaded.
//! - **down**: STOP of each started service, dependents first; REMOVE where the service
//!   defines it; then DELETE of each machine the provider made.
//! - **restart-services**: STOP (dependents first), then START (requirements first).
//! - **reconfigure**: BOOTSTRAP, CONFIGURE; with restart BOOTSTRAP, STOP, CONFIGURE, START.
//!
//! Within a [`Scope`] ([`build`]):
//!
//! - **rolling restart** ([`rolling_restart`]): the restart node batch by node batch.
//! - **limit** ([`Selection`], [`limit`]): only the picked steps, in the same order; a step
//!   left out that a kept one needs must be done already (else the plan is refused), but
//!   a STOP, REMOVE or DELETE left out only ordered a teardown and is not needed. A
//!   `reconfigure` keeps the BOOTSTRAP of the nodes whose service steps it picks.
//!   A plain name with meanings that pick different steps is refused.
//! - **scale-down** ([`removal`]): an `up` or `reconfigure` whose spec drops nodes that
//!   have anything recorded first takes them away (STOP, REMOVE, DELETE, from the stored
//!   spec; only with [`Scope::remove_nodes`] when any has a machine); then the operation; then (for `up`) BOOTSTRAP and CONFIGURE of the remaining
//!   nodes, so that their `config.nodes` no longer lists them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use loom_protocol::TaskName;
use serde_json::{Map, Value};

use super::spec::{ClusterSpec, NodeSpec};

/// One task of one node (and service, for service actions).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    /// The task.
    pub task: TaskName,
    /// The node's id.
    pub node: String,
    /// The service, for INSTALL..REMOVE.
    pub service: Option<String>,
}

impl StepKey {
    /// A node task.
    pub fn node(task: TaskName, node: &str) -> StepKey {
        StepKey { task, node: node.to_owned(), service: None }
    }

    /// A service task.
    pub fn service(task: TaskName, node: &str, service: &str) -> StepKey {
        StepKey { task, node: node.to_owned(), service: Some(service.to_owned()) }
    }

    /// How it is stored: `INSTALL demo-web-1 web`.
    pub fn encode(&self) -> String {
        match &self.service {
            Some(s) => format!("{} {} {s}", self.task, self.node),
            None => format!("{} {}", self.task, self.node),
        }
    }

    /// Reads [`StepKey::encode`]'s form.
    pub fn decode(s: &str) -> Option<StepKey> {
        let mut parts = s.split(' ');
        let task = TaskName::from_str(parts.next()?).ok()?;
        let node = parts.next()?.to_owned();
        let service = parts.next().map(str::to_owned);
        parts.next().is_none().then_some(StepKey { task, node, service })
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            Some(s) => write!(f, "{} {s} on {}", self.task, self.node),
            None => write!(f, "{} {}", self.task, self.node),
        }
    }
}

/// A cluster operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Create or resume.
    Up,
    /// Stop and delete (with `force`, delete only).
    Down {
        /// Skip STOP and REMOVE.
        force: bool,
    },
    /// STOP, then START.
    RestartServices,
    /// BOOTSTRAP, CONFIGURE (with `restart`: BOOTSTRAP, STOP, CONFIGURE, START).
    Reconfigure {
        /// Stop and start the services around CONFIGURE.
        restart: bool,
    },
}

impl JobKind {
    /// `up`, `down`, `restart-services`, `reconfigure`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Up => "up",
            JobKind::Down { .. } => "down",
            JobKind::RestartServices => "restart-services",
            JobKind::Reconfigure { .. } => "reconfigure",
        }
    }
}

/// What is recorded about a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Sent at least once, never succeeded.
    Attempted,
    /// Succeeded (and not undone since: a STOP undoes START, a REMOVE the service, a
    /// DELETE the node).
    Done,
}

/// Marks of every step of a cluster.
pub type Marks = HashMap<StepKey, Mark>;

/// The steps of one operation.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// In an order that respects `after`.
    pub steps: Vec<Step>,
    /// Things the operator should know (e.g. a machine that cannot be deleted).
    pub notes: Vec<String>,
    /// A rolling restart's batches of node ids, in order (empty otherwise).
    pub batches: Vec<Vec<String>>,
}

/// One step and what must finish before it.
#[derive(Debug, Clone)]
pub struct Step {
    /// The task.
    pub key: StepKey,
    /// Indexes (in [`Plan::steps`]) of the steps it waits for.
    pub after: Vec<usize>,
    /// Why its failure does not fail the operation, when it does not: `down`'s STOP of a
    /// service whose START never succeeded, REMOVE of one whose INSTALL never did (the
    /// machine goes anyway). Such a step is tried once.
    pub tolerated: Option<String>,
}

impl Plan {
    /// The step with `key`.
    pub fn find(&self, key: &StepKey) -> Option<usize> {
        self.steps.iter().position(|s| s.key == *key)
    }

    /// The order its steps may run in, none started yet.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(&self.steps)
    }
}

/// The order of a plan's steps by their `after` edges (Kahn's algorithm, one step at a
/// time), from [`Plan::schedule`]: which steps may start now, told when each finished. Of
/// the steps that may start, the one earliest in [`Plan::steps`] comes first. Sorting a
/// plan and running one ([`super::job`]) both go by it.
///
/// A step never reported [`done`](Schedule::done) (it failed) holds back every step
/// waiting for it; so do the steps of a cycle, which are never ready. An edge to a step
/// that is not in the plan is ignored, and so is a step reported done twice.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Per step, how many of the steps it waits for have not finished.
    waiting: Vec<usize>,
    /// Per step, the steps that wait for it.
    followers: Vec<Vec<usize>>,
    /// Per step, whether it was reported done.
    finished: Vec<bool>,
    /// Steps that may start and have not been handed out.
    ready: BTreeSet<usize>,
}

impl Schedule {
    fn new(steps: &[Step]) -> Schedule {
        let n = steps.len();
        let mut waiting = vec![0; n];
        let mut followers = vec![Vec::new(); n];
        for (i, s) in steps.iter().enumerate() {
            for &a in s.after.iter().filter(|&&a| a < n) {
                waiting[i] += 1;
                followers[a].push(i);
            }
        }
        let ready = (0..n).filter(|&i| waiting[i] == 0).collect();
        Schedule { waiting, followers, finished: vec![false; n], ready }
    }

    /// A step that may start now (each is handed out once), or `None` when none may
    /// until one that was handed out is [`done`](Schedule::done).
    pub fn next_ready(&mut self) -> Option<usize> {
        self.ready.pop_first()
    }

    /// Step `i` finished: the steps waiting only for it may start.
    pub fn done(&mut self, i: usize) {
        match self.finished.get_mut(i) {
            Some(finished) if !*finished => *finished = true,
            _ => return,
        }
        for &f in &self.followers[i] {
            self.waiting[f] -= 1;
            if self.waiting[f] == 0 {
                self.ready.insert(f);
            }
        }
    }
}

/// Builds a plan: steps added in order, edges between them.
#[derive(Default)]
struct Graph {
    plan: Plan,
    index: HashMap<StepKey, usize>,
}

impl Graph {
    fn add(&mut self, key: StepKey) {
        if !self.index.contains_key(&key) {
            self.index.insert(key.clone(), self.plan.steps.len());
            self.plan.steps.push(Step { key, after: Vec::new(), tolerated: None });
        }
    }

    /// Adds a step whose failure does not fail the operation, saying why.
    fn add_tolerated(&mut self, key: StepKey, why: String) {
        self.add(key.clone());
        if let Some(&i) = self.index.get(&key) {
            self.plan.steps[i].tolerated = Some(why);
        }
    }

    /// `later` waits for `first`, when both are in the plan.
    fn edge(&mut self, first: &StepKey, later: &StepKey) {
        if let (Some(&f), Some(&l)) = (self.index.get(first), self.index.get(later))
            && f != l
            && !self.plan.steps[l].after.contains(&f)
        {
            self.plan.steps[l].after.push(f);
        }
    }

    /// The plan, its steps sorted so that each comes after those it waits for (keeping
    /// the order they were added in otherwise).
    fn finish(self) -> Plan {
        let Graph { plan, .. } = self;
        let n = plan.steps.len();
        // Always taking the earliest-added ready step.
        let mut schedule = plan.schedule();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = schedule.next_ready() {
            order.push(i);
            schedule.done(i);
        }
        // The builders add edges only forward in dependency order, so there is no cycle;
        // were there one, its steps are kept at the end rather than lost.
        let mut placed = vec![false; n];
        order.iter().for_each(|&i| placed[i] = true);
        order.extend((0..n).filter(|&i| !placed[i]));
        let mut new_index = vec![0; n];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut steps: Vec<Option<Step>> = plan.steps.into_iter().map(Some).collect();
        let sorted = order
            .iter()
            .filter_map(|&old| steps[old].take())
            .map(|mut s| {
                s.after = s.after.iter().map(|&a| new_index[a]).collect();
                s.after.sort_unstable();
                s
            })
            .collect();
        Plan { steps: sorted, notes: plan.notes, batches: plan.batches }
    }

    /// Adds `plan`'s steps for which `keep` holds, each waiting for the kept steps it
    /// waited for directly or through steps left out.
    fn absorb(&mut self, plan: &Plan, keep: &dyn Fn(&StepKey) -> bool) {
        for s in plan.steps.iter().filter(|s| keep(&s.key)) {
            match &s.tolerated {
                Some(why) => self.add_tolerated(s.key.clone(), why.clone()),
                None => self.add(s.key.clone()),
            }
        }
        for (i, s) in plan.steps.iter().enumerate().filter(|(_, s)| keep(&s.key)) {
            for a in kept_ancestors(plan, i, keep) {
                self.edge(&plan.steps[a].key, &s.key);
            }
        }
    }

    /// Every step whose task is `then` waits for every step whose task is `first`.
    fn stage(&mut self, first: TaskName, then: TaskName) {
        let firsts: Vec<StepKey> =
            self.plan.steps.iter().filter(|s| s.key.task == first).map(|s| s.key.clone()).collect();
        let thens: Vec<StepKey> =
            self.plan.steps.iter().filter(|s| s.key.task == then).map(|s| s.key.clone()).collect();
        for t in &thens {
            for f in &firsts {
                self.edge(f, t);
            }
        }
    }
}

/// The steps `i` waits for that `keep` holds for, looking through those it does not.
fn kept_ancestors(plan: &Plan, i: usize, keep: &dyn Fn(&StepKey) -> bool) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<usize> = plan.steps.get(i).map(|s| s.after.clone()).unwrap_or_default();
    while let Some(a) = stack.pop() {
        let Some(step) = plan.steps.get(a) else { continue };
        if !seen.insert(a) {
            continue;
        }
        if keep(&step.key) {
            found.insert(a);
        } else {
            stack.extend(&step.after);
        }
    }
    found
}

/// `plan` without the steps `keep` does not hold for; the kept steps keep their order.
fn retain(plan: Plan, keep: &dyn Fn(&StepKey) -> bool) -> Plan {
    let mut g = Graph::default();
    g.absorb(&plan, keep);
    g.plan.notes = plan.notes;
    g.plan.batches = plan.batches;
    g.finish()
}

/// `first`, then `second`: each step of `second` that `first` lacks waits for every step
/// of `first`; a step in both runs once, where `first` put it.
fn then(first: Plan, second: Plan) -> Plan {
    let mut g = Graph::default();
    g.absorb(&first, &|_| true);
    let firsts: Vec<StepKey> = first.steps.iter().map(|s| s.key.clone()).collect();
    let fresh: HashSet<&StepKey> = second.steps.iter().map(|s| &s.key).filter(|k| !g.index.contains_key(*k)).collect();
    g.absorb(&second, &|k| fresh.contains(k));
    for k in &fresh {
        for f in &firsts {
            g.edge(f, k);
        }
    }
    g.plan.notes = first.notes.into_iter().chain(second.notes).collect();
    g.plan.batches = if first.batches.is_empty() { second.batches } else { first.batches };
    g.finish()
}

/// The service actions `up` runs, in order.
const UP_ACTIONS: [TaskName; 4] = [TaskName::Install, TaskName::Configure, TaskName::Initialize, TaskName::Start];

/// Where each service runs: service name -> nodes.
fn placement(spec: &ClusterSpec, nodes: &[NodeSpec]) -> HashMap<String, Vec<String>> {
    let mut at: HashMap<String, Vec<String>> = HashMap::new();
    for n in nodes {
        for s in spec.services_of(n) {
            at.entry(s.clone()).or_default().push(n.id.clone());
        }
    }
    at
}

/// Services that require `service`.
fn dependents<'a>(spec: &'a ClusterSpec, service: &str) -> impl Iterator<Item = &'a String> {
    spec.services.iter().filter(move |(_, s)| s.requires.iter().any(|r| r == service)).map(|(name, _)| name)
}

/// The last action `up` runs for `service`: what "started" means for its dependents.
fn ready_action(spec: &ClusterSpec, service: &str) -> Option<TaskName> {
    let s = spec.services.get(service)?;
    UP_ACTIONS.into_iter().rev().find(|t| s.actions.contains_key(t))
}

/// Bringing the cluster up, leaving out what is done.
pub fn up(spec: &ClusterSpec, marks: &Marks) -> Plan {
    let nodes = spec.nodes();
    let at = placement(spec, &nodes);
    let done = |k: &StepKey| marks.get(k) == Some(&Mark::Done);
    let mut g = Graph::default();
    let mut service_steps: Vec<StepKey> = Vec::new();
    for n in &nodes {
        for s in spec.services_of(n) {
            let Some(svc) = spec.services.get(s) else { continue };
            for t in UP_ACTIONS.into_iter().filter(|t| svc.actions.contains_key(t)) {
                service_steps.push(StepKey::service(t, &n.id, s));
            }
        }
    }
    let pending_services: HashSet<&String> = service_steps.iter().filter(|k| !done(k)).map(|k| &k.node).collect();
    for n in &nodes {
        for t in [TaskName::Create, TaskName::Confirm] {
            let k = StepKey::node(t, &n.id);
            if !done(&k) {
                g.add(k);
            }
        }
    }
    for n in &nodes {
        let confirm = StepKey::node(TaskName::Confirm, &n.id);
        if !done(&confirm) || pending_services.contains(&n.id) {
            g.add(StepKey::node(TaskName::Bootstrap, &n.id));
        }
    }
    for k in service_steps.iter().filter(|k| !done(k)) {
        g.add(k.clone());
    }
    for n in &nodes {
        let create = StepKey::node(TaskName::Create, &n.id);
        let confirm = StepKey::node(TaskName::Confirm, &n.id);
        let bootstrap = StepKey::node(TaskName::Bootstrap, &n.id);
        g.edge(&create, &confirm);
        for m in &nodes {
            g.edge(&StepKey::node(TaskName::Confirm, &m.id), &bootstrap);
        }
        for s in spec.services_of(n) {
            let Some(svc) = spec.services.get(s) else { continue };
            let mut previous: Option<StepKey> = None;
            for t in UP_ACTIONS.into_iter().filter(|t| svc.actions.contains_key(t)) {
                let key = StepKey::service(t, &n.id, s);
                g.edge(&bootstrap, &key);
                if let Some(p) = &previous {
                    g.edge(p, &key);
                }
                for r in &svc.requires {
                    let on = at.get(r).map(Vec::as_slice).unwrap_or_default();
                    let needed = match t {
                        TaskName::Install => Some(TaskName::Install),
                        TaskName::Initialize | TaskName::Start => ready_action(spec, r),
                        _ => None,
                    };
                    for (m, needed) in on.iter().flat_map(|m| needed.map(|t| (m, t))) {
                        g.edge(&StepKey::service(needed, m, r), &key);
                    }
                }
                previous = Some(key);
            }
        }
    }
    g.finish()
}

/// Whether any service step of (`service`, `node`) is recorded.
fn touched(marks: &Marks, node: &str, service: &str) -> bool {
    marks.keys().any(|k| k.node == node && k.service.as_deref() == Some(service))
}

/// Taking the cluster down: STOP and REMOVE what ran (unless `force`), then DELETE every
/// machine whose CREATE answered with a `providerid`.
pub fn down(spec: &ClusterSpec, marks: &Marks, learned: &HashMap<String, Map<String, Value>>, force: bool) -> Plan {
    let nodes = spec.nodes();
    let at = placement(spec, &nodes);
    let mut g = Graph::default();
    if !force {
        for n in &nodes {
            for s in spec.services_of(n) {
                let Some(svc) = spec.services.get(s) else { continue };
                // A step whose counterpart was tried but never succeeded is still tried
                // (it may clean up half a start or install), and its failure is only
                // noted: the script may not be there at all.
                let mark = |task| marks.get(&StepKey::service(task, &n.id, s)).copied();
                if svc.actions.contains_key(&TaskName::Stop) {
                    let start = if svc.actions.contains_key(&TaskName::Start) {
                        mark(TaskName::Start)
                    } else {
                        touched(marks, &n.id, s).then_some(Mark::Done)
                    };
                    match start {
                        Some(Mark::Done) => g.add(StepKey::service(TaskName::Stop, &n.id, s)),
                        Some(Mark::Attempted) => g.add_tolerated(
                            StepKey::service(TaskName::Stop, &n.id, s),
                            format!("{s} never started on {}", n.id),
                        ),
                        None => {}
                    }
                }
                if touched(marks, &n.id, s) && svc.actions.contains_key(&TaskName::Remove) {
                    let key = StepKey::service(TaskName::Remove, &n.id, s);
                    let installed =
                        !svc.actions.contains_key(&TaskName::Install) || mark(TaskName::Install) == Some(Mark::Done);
                    if installed {
                        g.add(key);
                    } else {
                        g.add_tolerated(key, format!("{s} was never installed on {}", n.id));
                    }
                }
            }
        }
    }
    for n in &nodes {
        if learned.get(&n.id).is_some_and(|l| l.contains_key("providerid")) {
            g.add(StepKey::node(TaskName::Delete, &n.id));
        } else if marks.contains_key(&StepKey::node(TaskName::Create, &n.id)) {
            g.plan.notes.push(format!(
                "CREATE of {} never answered with a providerid, so there is nothing to DELETE for it; if the provider made a machine anyway, look for hostname {}",
                n.id, n.hostname
            ));
        }
    }
    for n in &nodes {
        let delete = StepKey::node(TaskName::Delete, &n.id);
        for s in spec.services_of(n) {
            let stop = StepKey::service(TaskName::Stop, &n.id, s);
            let remove = StepKey::service(TaskName::Remove, &n.id, s);
            g.edge(&stop, &remove);
            g.edge(&stop, &delete);
            g.edge(&remove, &delete);
            for d in dependents(spec, s) {
                for m in at.get(d).map(Vec::as_slice).unwrap_or_default() {
                    g.edge(&StepKey::service(TaskName::Stop, m, d), &stop);
                    g.edge(&StepKey::service(TaskName::Stop, m, d), &remove);
                    g.edge(&StepKey::service(TaskName::Remove, m, d), &remove);
                }
            }
        }
    }
    g.finish()
}

/// Services that are started (START done) and can be stopped and started.
fn started(spec: &ClusterSpec, marks: &Marks) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in spec.nodes() {
        for s in spec.services_of(&n) {
            let Some(svc) = spec.services.get(s) else { continue };
            let start = StepKey::service(TaskName::Start, &n.id, s);
            if marks.get(&start) == Some(&Mark::Done) && svc.actions.contains_key(&TaskName::Stop) {
                out.push((n.id.clone(), s.clone()));
            }
        }
    }
    out
}

/// Orders STOPs (dependents first) and STARTs (requirements first) among `pairs`.
fn stop_start_edges(g: &mut Graph, spec: &ClusterSpec, pairs: &[(String, String)]) {
    for (n, s) in pairs {
        let Some(svc) = spec.services.get(s) else { continue };
        for (m, d) in pairs.iter().filter(|(_, d)| dependents(spec, s).any(|x| x == d)) {
            g.edge(&StepKey::service(TaskName::Stop, m, d), &StepKey::service(TaskName::Stop, n, s));
        }
        for (m, r) in pairs.iter().filter(|(_, r)| svc.requires.contains(r)) {
            g.edge(&StepKey::service(TaskName::Start, m, r), &StepKey::service(TaskName::Start, n, s));
        }
    }
}

/// STOP every started service, then START them again.
pub fn restart_services(spec: &ClusterSpec, marks: &Marks) -> Plan {
    let pairs = started(spec, marks);
    let mut g = Graph::default();
    for (n, s) in &pairs {
        g.add(StepKey::service(TaskName::Stop, n, s));
    }
    for (n, s) in &pairs {
        g.add(StepKey::service(TaskName::Start, n, s));
    }
    g.stage(TaskName::Stop, TaskName::Start);
    stop_start_edges(&mut g, spec, &pairs);
    g.finish()
}

/// BOOTSTRAP every confirmed node and CONFIGURE every installed service; with
/// `restart`, stop the started services before and start them after.
pub fn reconfigure(spec: &ClusterSpec, marks: &Marks, restart: bool) -> Plan {
    let mut g = Graph::default();
    let nodes: Vec<NodeSpec> = spec
        .nodes()
        .into_iter()
        .filter(|n| marks.get(&StepKey::node(TaskName::Confirm, &n.id)) == Some(&Mark::Done))
        .collect();
    for n in &nodes {
        g.add(StepKey::node(TaskName::Bootstrap, &n.id));
    }
    let pairs: Vec<(String, String)> = if restart {
        started(spec, marks).into_iter().filter(|(n, _)| nodes.iter().any(|x| x.id == *n)).collect()
    } else {
        Vec::new()
    };
    for (n, s) in &pairs {
        g.add(StepKey::service(TaskName::Stop, n, s));
    }
    for n in &nodes {
        for s in spec.services_of(n) {
            let configurable = spec.services.get(s).is_some_and(|svc| svc.actions.contains_key(&TaskName::Configure));
            if configurable && touched(marks, &n.id, s) {
                g.add(StepKey::service(TaskName::Configure, &n.id, s));
            }
        }
    }
    for (n, s) in &pairs {
        g.add(StepKey::service(TaskName::Start, n, s));
    }
    g.stage(TaskName::Bootstrap, TaskName::Stop);
    g.stage(TaskName::Bootstrap, TaskName::Configure);
    g.stage(TaskName::Stop, TaskName::Configure);
    g.stage(TaskName::Configure, TaskName::Start);
    g.stage(TaskName::Stop, TaskName::Start);
    stop_start_edges(&mut g, spec, &pairs);
    g.finish()
}

/// Restarting the started services node batch by node batch, `batch` nodes at a time
/// (in the spec's order): per batch STOP (dependents first), then START (requirements
/// first), of the services on its nodes; the next batch's STOPs wait for every START of
/// the batch before. Services of other batches are not ordered against a batch's.
pub fn rolling_restart(spec: &ClusterSpec, marks: &Marks, batch: usize) -> Plan {
    let pairs = started(spec, marks);
    let mut order: Vec<&String> = Vec::new();
    for (n, _) in &pairs {
        if !order.contains(&n) {
            order.push(n);
        }
    }
    let batches: Vec<Vec<String>> =
        order.chunks(batch.max(1)).map(|c| c.iter().map(|n| (*n).clone()).collect()).collect();
    let mut g = Graph::default();
    let mut previous: Vec<StepKey> = Vec::new();
    for nodes in &batches {
        let in_batch: Vec<(String, String)> = pairs.iter().filter(|(n, _)| nodes.contains(n)).cloned().collect();
        let stops: Vec<StepKey> = in_batch.iter().map(|(n, s)| StepKey::service(TaskName::Stop, n, s)).collect();
        let starts: Vec<StepKey> = in_batch.iter().map(|(n, s)| StepKey::service(TaskName::Start, n, s)).collect();
        stops.iter().chain(&starts).for_each(|k| g.add(k.clone()));
        for (stop, start) in stops.iter().flat_map(|stop| starts.iter().map(move |start| (stop, start))) {
            g.edge(stop, start);
        }
        for (p, stop) in previous.iter().flat_map(|p| stops.iter().map(move |s| (p, s))) {
            g.edge(p, stop);
        }
        stop_start_edges(&mut g, spec, &in_batch);
        previous = starts;
    }
    g.plan.batches = batches;
    g.finish()
}

/// How much of the cluster an operation touches, and how; [`Scope::default`] is all of
/// it, as before.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `--limit` names: node ids, hostnames, node group names, service names, each
    /// maybe prefixed `node:`, `group:`, `service:` (see [`Selection`]); empty: every
    /// node and service.
    pub limit: Vec<String>,
    /// `restart-services --rolling`: nodes per batch ([`rolling_restart`]).
    pub rolling: Option<usize>,
    /// For `up` and `reconfigure`: the spec the cluster last ran with. Its nodes that the
    /// new spec drops, and that have anything recorded, are taken away first
    /// ([`removal`]).
    pub previous: Option<ClusterSpec>,
    /// `--remove-nodes` (`removeNodes=true`): a spec may drop nodes that have machines
    /// (a `providerid`); without it [`build`] refuses ([`removal_refused`]), so that a
    /// renamed node group does not delete the old group's machines.
    pub remove_nodes: bool,
}

/// The nodes and services `--limit` names pick. A node id, a hostname or a node group
/// name picks whole nodes: every step of theirs. A service name picks that service's
/// steps on the nodes that have it, and no node step (CREATE, CONFIRM, BOOTSTRAP,
/// DELETE). A name may say what it is: `node:NAME` (id or hostname), `group:NAME`,
/// `service:NAME`; a plain name that is more than one of these picks what each picks,
/// as long as they pick the same steps of the plan ([`build`] refuses it otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Whole nodes, by id.
    pub nodes: BTreeSet<String>,
    /// Services, on every node that has them.
    pub services: BTreeSet<String>,
    /// Single steps besides: for `reconfigure`, the BOOTSTRAP of each node a service
    /// limit touches ([`build`]), so that its changed scripts are there for CONFIGURE.
    pub steps: BTreeSet<StepKey>,
}

/// The kinds of thing a `--limit` name may name, with their prefixes.
const LIMIT_KINDS: [&str; 3] = ["node", "group", "service"];

/// What one `--limit` name picks: per kind it names (`node`, `group`, `service`), that
/// kind's selection.
#[derive(Debug, Clone)]
pub struct Named {
    /// The name as given.
    pub name: String,
    /// One selection per kind it names, in the order node, group, service.
    pub meanings: Vec<(&'static str, Selection)>,
}

impl Selection {
    /// What `names` pick in `spec` (a name may be given as `a,b`): the union of what each
    /// name picks, every meaning of a plain name included.
    ///
    /// # Errors
    /// One problem per name that is empty or is no node id, hostname, node group or
    /// service (of the kind its prefix says).
    pub fn resolve(spec: &ClusterSpec, names: &[String]) -> Result<Selection, Vec<String>> {
        let mut sel = Selection::default();
        for named in Selection::resolve_each(spec, names)? {
            for (_, s) in named.meanings {
                sel.nodes.extend(s.nodes);
                sel.services.extend(s.services);
            }
        }
        Ok(sel)
    }

    /// What each of `names` picks in `spec`, per kind of thing it names.
    ///
    /// # Errors
    /// As [`Selection::resolve`].
    pub fn resolve_each(spec: &ClusterSpec, names: &[String]) -> Result<Vec<Named>, Vec<String>> {
        let nodes = spec.nodes();
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for given in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
            let (kind, name) = match given.split_once(':') {
                Some((k, n)) if LIMIT_KINDS.contains(&k) => (Some(k), n.trim()),
                _ => (None, given),
            };
            if name.is_empty() {
                problems
                    .push(format!("--limit: an empty name{}", if given.is_empty() { "" } else { " after the prefix" }));
                continue;
            }
            let mut meanings = Vec::new();
            let by_node: BTreeSet<String> =
                nodes.iter().filter(|n| n.id == name || n.hostname == name).map(|n| n.id.clone()).collect();
            if !by_node.is_empty() {
                meanings.push(("node", Selection { nodes: by_node, ..Selection::default() }));
            }
            if let Some(group) = spec.node_groups.iter().position(|g| g.name == name) {
                let ids = nodes.iter().filter(|n| n.group == group).map(|n| n.id.clone()).collect();
                meanings.push(("group", Selection { nodes: ids, ..Selection::default() }));
            }
            if spec.services.contains_key(name) {
                let services = BTreeSet::from([name.to_owned()]);
                meanings.push(("service", Selection { services, ..Selection::default() }));
            }
            if let Some(kind) = kind {
                meanings.retain(|(k, _)| *k == kind);
            }
            if meanings.is_empty() {
                let what = match kind {
                    Some("node") => "node id or hostname",
                    Some("group") => "node group",
                    Some(_) => "service",
                    None => "node, hostname, node group or service",
                };
                problems.push(format!("--limit {given}: cluster {} has no {what} named {name:?}", spec.name));
                continue;
            }
            out.push(Named { name: given.to_owned(), meanings });
        }
        if problems.is_empty() { Ok(out) } else { Err(problems) }
    }

    /// Whether the step is picked.
    pub fn covers(&self, key: &StepKey) -> bool {
        self.nodes.contains(&key.node)
            || key.service.as_ref().is_some_and(|s| self.services.contains(s))
            || self.steps.contains(key)
    }

    /// For `reconfigure`: also the BOOTSTRAP (in `plan`) of every node whose service
    /// steps it picks. A BOOTSTRAP done before counts as satisfying the CONFIGURE after
    /// it, so without this a changed script would not be uploaded before it runs.
    #[must_use]
    pub fn widened(mut self, kind: JobKind, plan: &Plan) -> Selection {
        if matches!(kind, JobKind::Reconfigure { .. }) {
            let bootstraps: Vec<StepKey> = plan
                .steps
                .iter()
                .filter(|s| s.key.service.is_some() && self.covers(&s.key))
                .map(|s| StepKey::node(TaskName::Bootstrap, &s.key.node))
                .filter(|k| plan.find(k).is_some())
                .collect();
            self.steps.extend(bootstraps);
        }
        self
    }
}

/// `plan` cut to what `sel` picks. A kept step that waits for a step left out needs that
/// step done already (its mark), unless the step left out only orders a teardown (STOP,
/// REMOVE, DELETE: dependents stop first).
///
/// # Errors
/// One problem per step left out that a kept step needs and that is not done.
pub fn limit(plan: Plan, sel: &Selection, marks: &Marks) -> Result<Plan, Vec<String>> {
    let keep = |k: &StepKey| sel.covers(k);
    let teardown = |k: &StepKey| matches!(k.task, TaskName::Stop | TaskName::Remove | TaskName::Delete);
    let mut problems = BTreeSet::new();
    for s in plan.steps.iter().filter(|s| keep(&s.key)) {
        for a in &s.after {
            let Some(needed) = plan.steps.get(*a).map(|n| &n.key) else { continue };
            if !keep(needed) && !teardown(needed) && marks.get(needed) != Some(&Mark::Done) {
                problems.insert(format!(
                    "--limit: {} needs {needed}, which is outside the limit and not done: run it first (widen --limit, or run without it)",
                    s.key
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.into_iter().collect());
    }
    let mut plan = retain(plan, &keep);
    let touched: HashSet<&String> = plan.steps.iter().map(|s| &s.key.node).collect();
    let batches: Vec<Vec<String>> = plan
        .batches
        .iter()
        .map(|b| b.iter().filter(|n| touched.contains(n)).cloned().collect::<Vec<_>>())
        .filter(|b| !b.is_empty())
        .collect();
    plan.batches = batches;
    Ok(plan)
}

/// The nodes of `previous` that `spec` drops and that have anything recorded (a mark, or
/// something a task returned): those a scale-down takes away.
pub fn dropped_nodes(
    spec: &ClusterSpec,
    previous: &ClusterSpec,
    marks: &Marks,
    learned: &HashMap<String, Map<String, Value>>,
) -> Vec<String> {
    let kept: HashSet<String> = spec.nodes().into_iter().map(|n| n.id).collect();
    previous
        .nodes()
        .into_iter()
        .map(|n| n.id)
        .filter(|id| !kept.contains(id))
        .filter(|id| marks.keys().any(|k| k.node == *id) || learned.get(id).is_some_and(|l| !l.is_empty()))
        .collect()
}

/// Taking `removed` nodes (of `previous`, the spec the cluster last ran with) out of a
/// live cluster: their STOP, REMOVE, DELETE as [`down`] plans them (dependents on other
/// nodes are not stopped first: they stay). [`build`] runs the rest of the operation
/// after it, then BOOTSTRAP and CONFIGURE of the remaining nodes, whose `config.nodes`
/// no longer lists them.
pub fn removal(
    previous: &ClusterSpec,
    removed: &[String],
    marks: &Marks,
    learned: &HashMap<String, Map<String, Value>>,
) -> Plan {
    retain(down(previous, marks, learned, false), &|k| removed.contains(&k.node))
}

/// Why dropping `removed` nodes (of `previous`) is refused: some have machines (a
/// `providerid`, and no DELETE done since) and `remove_nodes` (`--remove-nodes`, `removeNodes=true`) was not
/// given. Names those nodes, how to opt in, and, when a dropped node's group is gone
/// from `spec` altogether, that the group looks renamed.
pub fn removal_refused(
    spec: &ClusterSpec,
    previous: &ClusterSpec,
    removed: &[String],
    marks: &Marks,
    learned: &HashMap<String, Map<String, Value>>,
    remove_nodes: bool,
) -> Option<String> {
    if remove_nodes {
        return None;
    }
    // A machine whose DELETE succeeded (a scale-down that failed later) is gone, unless a
    // CREATE was recorded since (a DELETE undoes every mark of its node).
    let gone = |id: &str| {
        marks.get(&StepKey::node(TaskName::Delete, id)) == Some(&Mark::Done)
            && !marks.contains_key(&StepKey::node(TaskName::Create, id))
    };
    let machines: Vec<&String> = removed
        .iter()
        .filter(|id| learned.get(*id).is_some_and(|l| l.contains_key("providerid")))
        .filter(|id| !gone(id))
        .collect();
    if machines.is_empty() {
        return None;
    }
    let gone: BTreeSet<&str> = previous
        .nodes()
        .iter()
        .filter(|n| machines.contains(&&n.id))
        .filter_map(|n| previous.node_groups.get(n.group))
        .map(|g| g.name.as_str())
        .filter(|name| !spec.node_groups.iter().any(|g| g.name == *name))
        .collect();
    let ids: Vec<&str> = machines.iter().map(|s| s.as_str()).collect();
    let mut why = format!(
        "nodeGroups: this spec of cluster {} drops nodes that have machines ({}): they would be stopped, removed and deleted; to take them away, give --remove-nodes (API: removeNodes=true)",
        spec.name,
        ids.join(", ")
    );
    if !gone.is_empty() {
        let groups: Vec<&str> = gone.into_iter().collect();
        why.push_str(&format!(
            "; node group {} is no longer in the spec at all: it looks renamed (node ids are <cluster>-<group>-<n>, so a renamed group's machines would be replaced by new ones): keep its old name to keep them",
            groups.join(", ")
        ));
    }
    Some(why)
}

/// The plan for `kind` within `scope`.
///
/// # Errors
/// The problems, one per line, when `scope` cannot be planned: an unknown `--limit`
/// name, a step outside the limit that one inside needs and that is not done, a limit
/// given while the spec drops nodes, or dropped nodes with machines without
/// `remove_nodes`. Nothing is planned then.
pub fn build(
    kind: JobKind,
    spec: &ClusterSpec,
    marks: &Marks,
    learned: &HashMap<String, Map<String, Value>>,
    scope: &Scope,
) -> Result<Plan, Vec<String>> {
    let plan = match (kind, scope.rolling) {
        (JobKind::Up, _) => up(spec, marks),
        (JobKind::Down { force }, _) => down(spec, marks, learned, force),
        (JobKind::RestartServices, None) => restart_services(spec, marks),
        (JobKind::RestartServices, Some(batch)) => rolling_restart(spec, marks, batch),
        (JobKind::Reconfigure { restart }, _) => reconfigure(spec, marks, restart),
    };
    let removed = match (&scope.previous, kind) {
        (Some(previous), JobKind::Up | JobKind::Reconfigure { .. }) => dropped_nodes(spec, previous, marks, learned),
        _ => Vec::new(),
    };
    if let (Some(previous), false) = (&scope.previous, removed.is_empty()) {
        if let Some(problem) = removal_refused(spec, previous, &removed, marks, learned, scope.remove_nodes) {
            return Err(vec![problem]);
        }
        if !scope.limit.is_empty() {
            return Err(vec![format!(
                "--limit cannot be used while the spec drops nodes ({}): run without --limit to take them away first",
                removed.join(", ")
            )]);
        }
        let removal = removal(previous, &removed, marks, learned);
        return Ok(match kind {
            JobKind::Up => then(then(removal, plan), reconfigure(spec, marks, false)),
            _ => then(removal, plan),
        });
    }
    if scope.limit.is_empty() {
        return Ok(plan);
    }
    let named = Selection::resolve_each(spec, &scope.limit)?;
    let ambiguous: Vec<String> = named.iter().filter_map(|n| ambiguity(kind, spec, &plan, n)).collect();
    if !ambiguous.is_empty() {
        return Err(ambiguous);
    }
    let sel = Selection::resolve(spec, &scope.limit)?.widened(kind, &plan);
    limit(plan, &sel, marks)
}

/// Why a plain `--limit` name that names more than one kind of thing (a node group and a
/// service, say) is refused: its meanings pick different steps of `plan`.
fn ambiguity(kind: JobKind, spec: &ClusterSpec, plan: &Plan, named: &Named) -> Option<String> {
    let picks = |s: &Selection| -> BTreeSet<&StepKey> {
        let s = s.clone().widened(kind, plan);
        plan.steps.iter().map(|st| &st.key).filter(|k| s.covers(k)).collect()
    };
    let first = named.meanings.first().map(|(_, s)| picks(s))?;
    if named.meanings.iter().all(|(_, s)| picks(s) == first) {
        return None;
    }
    let kinds: Vec<&str> = named.meanings.iter().map(|(k, _)| *k).collect();
    let prefixed: Vec<String> = kinds.iter().map(|k| format!("{k}:{}", named.name)).collect();
    Some(format!(
        "--limit {0}: cluster {1} has a {2} named {0:?}, which pick different steps: say which, with {3}",
        named.name,
        spec.name,
        kinds.join(" and a "),
        prefixed.join(" or ")
    ))
}

/// What a successful step undoes: keys whose marks go (a STOP un-starts, a REMOVE
/// un-installs, a DELETE forgets the node).
pub fn undone_by(key: &StepKey, marks: &Marks) -> Vec<StepKey> {
    match (key.task, &key.service) {
        (TaskName::Stop, Some(s)) => vec![StepKey::service(TaskName::Start, &key.node, s)],
        (TaskName::Remove, Some(s)) => {
            marks.keys().filter(|k| k.node == key.node && k.service.as_deref() == Some(s.as_str())).cloned().collect()
        }
        (TaskName::Delete, _) => marks.keys().filter(|k| k.node == key.node).cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn spec() -> ClusterSpec {
        spec_of(json!([
            {"name": "db", "services": ["db"]},
            {"name": "app", "count": 2, "services": ["app"]}
        ]))
    }

    fn spec_of(groups: Value) -> ClusterSpec {
        let sh = |script: &str| json!({"type": "shell", "script": script});
        ClusterSpec::from_value(
            &json!({
                "name": "c",
                "provider": {"name": "local"},
                "nodeGroups": groups,
                "services": {
                    "db": {"actions": {"install": sh("i"), "configure": sh("c"), "start": sh("s"), "stop": sh("x"), "remove": sh("r")}},
                    "app": {"requires": ["db"], "actions": {"install": sh("i"), "initialize": sh("n"), "start": sh("s"), "stop": sh("x")}}
                }
            }),
            "t",
            Path::new("/"),
        )
        .unwrap()
    }

    fn k(s: &str) -> StepKey {
        StepKey::decode(s).unwrap()
    }

    /// Whether `later` waits, directly or not, for `first`.
    fn waits(plan: &Plan, later: &str, first: &str) -> bool {
        let (Some(l), Some(f)) = (plan.find(&k(later)), plan.find(&k(first))) else {
            panic!("{later} or {first} not in the plan");
        };
        let mut stack = vec![l];
        let mut seen = HashSet::new();
        while let Some(i) = stack.pop() {
            if i == f {
                return true;
            }
            if seen.insert(i) {
                stack.extend(&plan.steps[i].after);
            }
        }
        false
    }

    fn all_done(plan: &Plan) -> Marks {
        plan.steps.iter().map(|s| (s.key.clone(), Mark::Done)).collect()
    }

    #[test]
    fn up_orders_tasks_as_loom_did() {
        let plan = up(&spec(), &Marks::new());
        assert_eq!(plan.steps.len(), 3 * 3 + 3 + 2 * 3);
        assert!(waits(&plan, "BOOTSTRAP c-db-1", "CONFIRM c-app-2"));
        assert!(waits(&plan, "CONFIRM c-app-1", "CREATE c-app-1"));
        assert!(!waits(&plan, "CONFIRM c-app-1", "CREATE c-app-2"));
        assert!(waits(&plan, "INSTALL c-app-1 app", "INSTALL c-db-1 db"));
        assert!(waits(&plan, "INITIALIZE c-app-2 app", "START c-db-1 db"));
        assert!(waits(&plan, "START c-app-2 app", "INITIALIZE c-app-2 app"));
        assert!(!waits(&plan, "INSTALL c-app-1 app", "START c-db-1 db"));
        assert!(!waits(&plan, "START c-app-1 app", "START c-app-2 app"));
        // Every step comes after the ones it waits for.
        for (i, s) in plan.steps.iter().enumerate() {
            assert!(s.after.iter().all(|a| *a < i), "{} is before one of its requirements", s.key);
        }
    }

    #[test]
    fn up_after_a_failure_leaves_out_what_is_done_and_bootstraps_again() {
        let full = up(&spec(), &Marks::new());
        let mut marks = all_done(&full);
        marks.insert(k("CONFIGURE c-db-1 db"), Mark::Attempted);
        marks.remove(&k("START c-db-1 db"));
        let plan = up(&spec(), &marks);
        let keys: Vec<String> = plan.steps.iter().map(|s| s.key.encode()).collect();
        assert_eq!(keys, ["BOOTSTRAP c-db-1", "CONFIGURE c-db-1 db", "START c-db-1 db"]);
        assert!(waits(&plan, "CONFIGURE c-db-1 db", "BOOTSTRAP c-db-1"));
        assert!(up(&spec(), &all_done(&full)).steps.is_empty());
    }

    #[test]
    fn down_stops_dependents_first_then_deletes_machines_with_a_providerid() {
        let full = up(&spec(), &Marks::new());
        let mut marks = all_done(&full);
        marks.remove(&k("START c-app-2 app"));
        let learned: HashMap<String, Map<String, Value>> = ["c-db-1", "c-app-1"]
            .iter()
            .map(|n| ((*n).to_owned(), json!({"providerid": "x"}).as_object().unwrap().clone()))
            .collect();
        let plan = down(&spec(), &marks, &learned, false);
        let keys: HashSet<String> = plan.steps.iter().map(|s| s.key.encode()).collect();
        let expected: HashSet<String> =
            ["STOP c-db-1 db", "REMOVE c-db-1 db", "STOP c-app-1 app", "DELETE c-db-1", "DELETE c-app-1"]
                .map(str::to_owned)
                .into();
        assert_eq!(keys, expected);
        assert!(waits(&plan, "STOP c-db-1 db", "STOP c-app-1 app"));
        assert!(waits(&plan, "DELETE c-db-1", "REMOVE c-db-1 db"));
        assert_eq!(plan.notes.len(), 1, "c-app-2 was created but has no providerid: {:?}", plan.notes);
        let forced = down(&spec(), &marks, &learned, true);
        assert!(forced.steps.iter().all(|s| s.key.task == TaskName::Delete));
        assert!(plan.steps.iter().all(|s| s.tolerated.is_none()));
    }

    #[test]
    fn down_after_a_failed_install_tries_remove_without_counting_on_it() {
        let full = up(&spec(), &Marks::new());
        let mut marks = all_done(&full);
        // db failed to install on c-db-1, so nothing after it ran there.
        marks.retain(|key, _| !(key.node == "c-db-1" && key.service.is_some()));
        marks.insert(k("INSTALL c-db-1 db"), Mark::Attempted);
        let learned = HashMap::new();
        let plan = down(&spec(), &marks, &learned, false);
        let step = |plan: &Plan, key: &str| plan.steps.iter().find(|s| s.key == k(key)).cloned();
        let remove = step(&plan, "REMOVE c-db-1 db").expect("REMOVE is still tried");
        assert_eq!(remove.tolerated.as_deref(), Some("db was never installed on c-db-1"));
        assert!(step(&plan, "STOP c-db-1 db").is_none(), "never started: nothing to stop");
        assert!(step(&plan, "STOP c-app-1 app").is_some_and(|s| s.tolerated.is_none()));
        // A START that was tried and failed: STOP is tried, its failure only noted.
        marks.insert(k("INSTALL c-db-1 db"), Mark::Done);
        marks.insert(k("START c-db-1 db"), Mark::Attempted);
        let plan = down(&spec(), &marks, &learned, false);
        let stop = step(&plan, "STOP c-db-1 db").unwrap();
        assert_eq!(stop.tolerated.as_deref(), Some("db never started on c-db-1"));
        assert!(step(&plan, "REMOVE c-db-1 db").unwrap().tolerated.is_none());
    }

    #[test]
    fn restart_and_reconfigure_are_staged() {
        let marks = all_done(&up(&spec(), &Marks::new()));
        let plan = restart_services(&spec(), &marks);
        assert_eq!(plan.steps.len(), 6);
        assert!(waits(&plan, "START c-db-1 db", "STOP c-app-2 app"));
        assert!(waits(&plan, "STOP c-db-1 db", "STOP c-app-1 app"));
        assert!(waits(&plan, "START c-app-1 app", "START c-db-1 db"));
        let plan = reconfigure(&spec(), &marks, false);
        let keys: Vec<String> = plan.steps.iter().map(|s| s.key.encode()).collect();
        assert_eq!(keys, ["BOOTSTRAP c-db-1", "BOOTSTRAP c-app-1", "BOOTSTRAP c-app-2", "CONFIGURE c-db-1 db"]);
        let plan = reconfigure(&spec(), &marks, true);
        assert!(waits(&plan, "CONFIGURE c-db-1 db", "STOP c-app-1 app"));
        assert!(waits(&plan, "START c-app-2 app", "CONFIGURE c-db-1 db"));
    }

    /// A plan of steps waiting for the steps at the given indexes.
    fn graph(after: &[&[usize]]) -> Plan {
        let steps = after
            .iter()
            .enumerate()
            .map(|(i, a)| Step {
                key: StepKey::node(TaskName::Create, &format!("n{i}")),
                after: a.to_vec(),
                tolerated: None,
            })
            .collect();
        Plan { steps, notes: Vec::new(), batches: Vec::new() }
    }

    /// Every step the schedule hands out now.
    fn drain(s: &mut Schedule) -> Vec<usize> {
        std::iter::from_fn(|| s.next_ready()).collect()
    }

    #[test]
    fn a_schedule_hands_out_a_step_once_all_it_waits_for_are_done_earliest_first() {
        let plan = graph(&[&[], &[0], &[0, 1], &[], &[3]]);
        let mut s = plan.schedule();
        assert_eq!(drain(&mut s), [0, 3]);
        s.done(3);
        assert_eq!(drain(&mut s), [4]);
        s.done(0);
        assert_eq!(drain(&mut s), [1], "2 still waits for 1");
        s.done(0);
        assert_eq!(drain(&mut s), Vec::<usize>::new(), "a step reported twice releases nothing more");
        s.done(1);
        assert_eq!(drain(&mut s), [2]);
        s.done(2);
        s.done(4);
        assert_eq!(s.next_ready(), None);
    }

    #[test]
    fn a_failed_step_holds_back_its_followers_and_a_cycle_never_runs() {
        // 1 fails (never done); 2 and 3 wait for each other; 4 waits for a step not in the plan.
        let plan = graph(&[&[], &[0], &[1, 3], &[2], &[9], &[1]]);
        let mut s = plan.schedule();
        let mut ran = Vec::new();
        while let Some(i) = s.next_ready() {
            ran.push(i);
            if i != 1 {
                s.done(i);
            }
        }
        assert_eq!(ran, [0, 1, 4]);
        s.done(42);
        assert_eq!(s.next_ready(), None);
    }

    #[test]
    fn a_plan_is_sorted_by_its_schedule_and_a_cycle_is_kept_at_the_end() {
        let mut g = Graph::default();
        for n in ["a", "b", "c", "d"] {
            g.add(StepKey::node(TaskName::Create, n));
        }
        let key = |n: &str| StepKey::node(TaskName::Create, n);
        g.edge(&key("c"), &key("a"));
        g.edge(&key("c"), &key("b"));
        g.edge(&key("b"), &key("d"));
        g.edge(&key("d"), &key("b"));
        let plan = g.finish();
        let order: Vec<&str> = plan.steps.iter().map(|s| s.key.node.as_str()).collect();
        assert_eq!(order, ["c", "a", "b", "d"]);
        assert_eq!(plan.steps[1].after, [0]);
        assert_eq!(plan.steps[2].after, [0, 3]);
    }

    #[test]
    fn what_a_step_undoes() {
        let marks = all_done(&up(&spec(), &Marks::new()));
        assert_eq!(undone_by(&k("STOP c-db-1 db"), &marks), [k("START c-db-1 db")]);
        assert_eq!(undone_by(&k("REMOVE c-db-1 db"), &marks).len(), 3);
        assert_eq!(undone_by(&k("DELETE c-app-1"), &marks).len(), 3 + 3);
        assert_eq!(k("INSTALL c-db-1 db").to_string(), "INSTALL db on c-db-1");
    }

    fn keys(plan: &Plan) -> Vec<String> {
        plan.steps.iter().map(|s| s.key.encode()).collect()
    }

    fn scoped(limit: &[&str]) -> Scope {
        Scope { limit: limit.iter().map(|l| (*l).to_owned()).collect(), ..Scope::default() }
    }

    fn made(nodes: &[&str]) -> HashMap<String, Map<String, Value>> {
        nodes.iter().map(|n| ((*n).to_owned(), json!({"providerid": "x"}).as_object().unwrap().clone())).collect()
    }

    #[test]
    fn a_rolling_restart_stops_and_starts_one_batch_after_the_other() {
        let marks = all_done(&up(&spec(), &Marks::new()));
        let plan = rolling_restart(&spec(), &marks, 1);
        assert_eq!(plan.batches, [vec!["c-db-1"], vec!["c-app-1"], vec!["c-app-2"]]);
        assert_eq!(
            keys(&plan),
            [
                "STOP c-db-1 db",
                "START c-db-1 db",
                "STOP c-app-1 app",
                "START c-app-1 app",
                "STOP c-app-2 app",
                "START c-app-2 app"
            ]
        );
        assert!(waits(&plan, "STOP c-app-1 app", "START c-db-1 db"));
        assert!(waits(&plan, "STOP c-app-2 app", "START c-app-1 app"));
        assert!(!waits(&plan, "STOP c-db-1 db", "STOP c-app-1 app"), "no edge back to a later batch");
        let plan = rolling_restart(&spec(), &marks, 2);
        assert_eq!(plan.batches, [vec!["c-db-1", "c-app-1"], vec!["c-app-2"]]);
        assert!(waits(&plan, "STOP c-db-1 db", "STOP c-app-1 app"), "dependents stop first within a batch");
        assert!(waits(&plan, "START c-app-1 app", "START c-db-1 db"), "requirements start first");
        assert!(waits(&plan, "STOP c-app-2 app", "START c-app-1 app"));
        assert!(!waits(&plan, "START c-app-1 app", "STOP c-app-2 app"));
        let built = build(
            JobKind::RestartServices,
            &spec(),
            &marks,
            &HashMap::new(),
            &Scope { rolling: Some(1), ..Scope::default() },
        )
        .unwrap();
        assert_eq!(built.batches.len(), 3);
    }

    #[test]
    fn a_limit_keeps_the_steps_it_picks_and_needs_what_it_leaves_out_done() {
        let marks = all_done(&up(&spec(), &Marks::new()));
        let none = HashMap::new();
        let restart = |limit: &[&str]| build(JobKind::RestartServices, &spec(), &marks, &none, &scoped(limit));
        assert_eq!(keys(&restart(&["c-app-1"]).unwrap()), ["STOP c-app-1 app", "START c-app-1 app"]);
        // By hostname, comma list, group: the same nodes.
        let host = spec().nodes()[1].hostname.clone();
        assert_eq!(keys(&restart(&[host.as_str()]).unwrap()).len(), 2);
        assert_eq!(keys(&restart(&["c-db-1,c-app-2"]).unwrap()).len(), 4);
        let e = restart(&["c-app-1", "nosuch"]).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("\"nosuch\""), "{e:?}");
        // A group picks its nodes' steps; a service its own steps, and no node step.
        let plan = build(JobKind::Reconfigure { restart: false }, &spec(), &marks, &none, &scoped(&["db"])).unwrap();
        assert_eq!(keys(&plan), ["BOOTSTRAP c-db-1", "CONFIGURE c-db-1 db"]);
        let data = spec_of(json!([{"name": "data", "services": ["db", "app"]}]));
        let marks_data = all_done(&up(&data, &Marks::new()));
        let plan = build(JobKind::Reconfigure { restart: false }, &data, &marks_data, &none, &scoped(&["db"])).unwrap();
        assert_eq!(keys(&plan), ["BOOTSTRAP c-data-1", "CONFIGURE c-data-1 db"]);
        // A rolling restart within a limit keeps only the batches it touches.
        let scope = Scope { rolling: Some(1), ..scoped(&["app"]) };
        let plan = build(JobKind::RestartServices, &spec(), &marks, &none, &scope).unwrap();
        assert_eq!(plan.batches, [vec!["c-app-1"], vec!["c-app-2"]]);
        assert!(waits(&plan, "STOP c-app-2 app", "START c-app-1 app"));
        // up: a step the limit needs that is not done is refused, naming it.
        let fresh = Marks::new();
        let e = build(JobKind::Up, &spec(), &fresh, &none, &scoped(&["c-app-1"])).unwrap_err();
        assert!(e.iter().any(|p| p.contains("CONFIRM c-db-1") && p.contains("outside the limit")), "{e:?}");
        // up of one node once the others are done: only its steps.
        let mut marks = marks.clone();
        marks.retain(|k, _| k.node != "c-app-2");
        let plan = build(JobKind::Up, &spec(), &marks, &none, &scoped(&["c-app-2"])).unwrap();
        assert!(plan.steps.iter().all(|s| s.key.node == "c-app-2"), "{:?}", keys(&plan));
        assert!(plan.find(&k("CREATE c-app-2")).is_some());
    }

    #[test]
    fn a_name_that_is_a_group_and_a_service_must_say_which_when_they_differ() {
        // Group db (node c-db-1) runs service db, and so does group app's nodes.
        let shared = spec_of(json!([
            {"name": "db", "services": ["db"]},
            {"name": "app", "count": 1, "services": ["db", "app"]}
        ]));
        let marks = all_done(&up(&shared, &Marks::new()));
        let learned = made(&["c-db-1", "c-app-1"]);
        let down = |limit: &[&str]| build(JobKind::Down { force: false }, &shared, &marks, &learned, &scoped(limit));
        let e = down(&["db"]).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("--limit db: cluster c has a group and a service named \"db\""), "{e:?}");
        assert!(e[0].contains("group:db or service:db"), "{e:?}");
        // With a prefix: the group is its node, whole; the service is its steps everywhere.
        let plan = down(&["group:db"]).unwrap();
        assert_eq!(keys(&plan), ["STOP c-db-1 db", "REMOVE c-db-1 db", "DELETE c-db-1"]);
        let plan = down(&["service:db"]).unwrap();
        assert!(plan.find(&k("STOP c-app-1 db")).is_some() && plan.find(&k("DELETE c-db-1")).is_none());
        let plan = down(&["node:c-app-1"]).unwrap();
        assert!(plan.steps.iter().all(|s| s.key.node == "c-app-1") && plan.find(&k("DELETE c-app-1")).is_some());
        // A prefix names only that kind.
        let e = down(&["group:c-app-1", "service:nosuch", "node:app"]).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("no node group named \"c-app-1\""), "{e:?}");
        assert!(e[2].contains("no node id or hostname named \"app\""), "{e:?}");
        // Empty names.
        for limit in ["", "a,,b", "group:"] {
            let e = down(&[limit]).unwrap_err();
            assert!(e.iter().any(|p| p.starts_with("--limit: an empty name")), "{limit:?}: {e:?}");
        }
        // Where the meanings coincide (group db runs exactly service db on spec()), a
        // plain name still works: a restart, a reconfigure.
        let marks = all_done(&up(&spec(), &Marks::new()));
        let none = HashMap::new();
        let plan = build(JobKind::RestartServices, &spec(), &marks, &none, &scoped(&["db"])).unwrap();
        assert_eq!(keys(&plan), ["STOP c-db-1 db", "START c-db-1 db"]);
        let plan = build(JobKind::Reconfigure { restart: false }, &spec(), &marks, &none, &scoped(&["db"])).unwrap();
        assert_eq!(keys(&plan), ["BOOTSTRAP c-db-1", "CONFIGURE c-db-1 db"]);
        // app has no CONFIGURE: its group's BOOTSTRAPs are not its service's nothing.
        let e = build(JobKind::Reconfigure { restart: false }, &spec(), &marks, &none, &scoped(&["app"]));
        assert!(e.unwrap_err()[0].contains("group:app or service:app"));
    }

    #[test]
    fn reconfigure_of_a_service_bootstraps_the_nodes_it_runs_on() {
        let data = spec_of(json!([
            {"name": "one", "services": ["db"]},
            {"name": "two", "count": 2, "services": ["app"]}
        ]));
        let marks = all_done(&up(&data, &Marks::new()));
        let none = HashMap::new();
        let scope = scoped(&["service:db"]);
        let plan = build(JobKind::Reconfigure { restart: false }, &data, &marks, &none, &scope).unwrap();
        assert_eq!(keys(&plan), ["BOOTSTRAP c-one-1", "CONFIGURE c-one-1 db"]);
        assert!(waits(&plan, "CONFIGURE c-one-1 db", "BOOTSTRAP c-one-1"));
        let plan = build(JobKind::Reconfigure { restart: true }, &data, &marks, &none, &scope).unwrap();
        assert_eq!(keys(&plan), ["BOOTSTRAP c-one-1", "STOP c-one-1 db", "CONFIGURE c-one-1 db", "START c-one-1 db"]);
        // Other operations keep no node step for a service.
        let e = build(JobKind::Up, &data, &Marks::new(), &none, &scoped(&["service:db"])).unwrap_err();
        assert!(e.iter().any(|p| p.contains("needs BOOTSTRAP c-one-1, which is outside the limit")), "{e:?}");
    }

    #[test]
    fn down_of_one_node_stops_its_services_and_deletes_only_its_machine() {
        let marks = all_done(&up(&spec(), &Marks::new()));
        let learned = made(&["c-db-1", "c-app-1", "c-app-2"]);
        let plan = build(JobKind::Down { force: false }, &spec(), &marks, &learned, &scoped(&["c-app-2"])).unwrap();
        assert_eq!(keys(&plan), ["STOP c-app-2 app", "DELETE c-app-2"]);
        // The db's STOP waits for its dependents' STOPs only to order a teardown.
        let plan = build(JobKind::Down { force: false }, &spec(), &marks, &learned, &scoped(&["c-db-1"])).unwrap();
        assert_eq!(keys(&plan), ["STOP c-db-1 db", "REMOVE c-db-1 db", "DELETE c-db-1"]);
    }

    #[test]
    fn a_spec_that_drops_nodes_takes_them_away_then_reconfigures_the_rest() {
        let old = spec();
        let marks = all_done(&up(&old, &Marks::new()));
        let learned = made(&["c-db-1", "c-app-1", "c-app-2"]);
        let smaller = spec_of(json!([
            {"name": "db", "services": ["db"]},
            {"name": "app", "count": 1, "services": ["app"]}
        ]));
        let scope = Scope { previous: Some(old.clone()), remove_nodes: true, ..Scope::default() };
        let plan = build(JobKind::Up, &smaller, &marks, &learned, &scope).unwrap();
        assert_eq!(
            keys(&plan),
            ["STOP c-app-2 app", "DELETE c-app-2", "BOOTSTRAP c-db-1", "BOOTSTRAP c-app-1", "CONFIGURE c-db-1 db"]
        );
        assert!(waits(&plan, "BOOTSTRAP c-db-1", "DELETE c-app-2"));
        let plan = build(JobKind::Reconfigure { restart: true }, &smaller, &marks, &learned, &scope).unwrap();
        assert!(waits(&plan, "STOP c-db-1 db", "DELETE c-app-2"));
        assert!(waits(&plan, "START c-app-1 app", "CONFIGURE c-db-1 db"));
        assert!(plan.find(&k("STOP c-app-2 app")).is_some());
        // Nothing recorded for the dropped node: nothing to take away.
        let mut clean = marks.clone();
        clean.retain(|k, _| k.node != "c-app-2");
        let plan = build(JobKind::Up, &smaller, &clean, &made(&["c-db-1", "c-app-1"]), &scope).unwrap();
        assert!(plan.steps.is_empty(), "{:?}", keys(&plan));
        // With a limit: refused.
        let e = build(
            JobKind::Up,
            &smaller,
            &marks,
            &learned,
            &Scope { previous: Some(old), remove_nodes: true, ..scoped(&["db"]) },
        );
        assert!(e.unwrap_err()[0].contains("drops nodes (c-app-2)"));
    }

    #[test]
    fn dropping_nodes_that_have_machines_needs_remove_nodes() {
        let old = spec();
        let marks = all_done(&up(&old, &Marks::new()));
        let learned = made(&["c-db-1", "c-app-1", "c-app-2"]);
        let smaller = spec_of(json!([
            {"name": "db", "services": ["db"]},
            {"name": "app", "count": 1, "services": ["app"]}
        ]));
        let scope = Scope { previous: Some(old.clone()), ..Scope::default() };
        for kind in [JobKind::Up, JobKind::Reconfigure { restart: false }] {
            let e = build(kind, &smaller, &marks, &learned, &scope).unwrap_err();
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].contains("drops nodes that have machines (c-app-2)"), "{e:?}");
            assert!(e[0].contains("--remove-nodes") && e[0].contains("removeNodes=true"), "{e:?}");
            assert!(!e[0].contains("renamed"), "app is still there: {e:?}");
        }
        // A renamed group: every node of the old one would go; the problem says so.
        let renamed = spec_of(json!([
            {"name": "db", "services": ["db"]},
            {"name": "application", "count": 2, "services": ["app"]}
        ]));
        let e = build(JobKind::Up, &renamed, &marks, &learned, &scope).unwrap_err();
        assert!(e[0].contains("(c-app-1, c-app-2)"), "{e:?}");
        assert!(e[0].contains("node group app is no longer in the spec") && e[0].contains("renamed"), "{e:?}");
        // Dropped nodes without a machine (nothing made yet, or deleted) need no flag.
        let plan = build(JobKind::Up, &smaller, &marks, &made(&["c-db-1", "c-app-1"]), &scope).unwrap();
        assert!(plan.find(&k("STOP c-app-2 app")).is_some(), "{:?}", keys(&plan));
        let mut deleted = marks.clone();
        deleted.retain(|k, _| k.node != "c-app-2");
        deleted.insert(k("DELETE c-app-2"), Mark::Done);
        assert!(build(JobKind::Up, &smaller, &deleted, &learned, &scope).is_ok());
        // Made again since (`down --limit`, then `up`): a machine again.
        deleted.insert(k("CREATE c-app-2"), Mark::Done);
        assert!(build(JobKind::Up, &smaller, &deleted, &learned, &scope).is_err());
    }

    #[test]
    fn a_spec_may_drop_a_node_and_add_another_at_once() {
        let old = spec();
        let marks = all_done(&up(&old, &Marks::new()));
        let learned = made(&["c-db-1", "c-app-1", "c-app-2"]);
        let changed = spec_of(json!([
            {"name": "db", "services": ["db"]},
            {"name": "app", "count": 1, "services": ["app"]},
            {"name": "web", "count": 1, "services": ["app"]}
        ]));
        let scope = Scope { previous: Some(old), remove_nodes: true, ..Scope::default() };
        let plan = build(JobKind::Up, &changed, &marks, &learned, &scope).unwrap();
        assert!(waits(&plan, "CREATE c-web-1", "DELETE c-app-2"));
        assert!(waits(&plan, "START c-web-1 app", "BOOTSTRAP c-web-1"));
        // The remaining nodes are reconfigured once the new one is there.
        assert!(waits(&plan, "BOOTSTRAP c-app-1", "CONFIRM c-web-1"));
        assert!(waits(&plan, "CONFIGURE c-db-1 db", "BOOTSTRAP c-app-1"));
        // Sorted: every step after those it waits for (no cycle).
        for (i, s) in plan.steps.iter().enumerate() {
            assert!(s.after.iter().all(|a| *a < i), "{} is before one of its requirements", s.key);
        }
    }
}
