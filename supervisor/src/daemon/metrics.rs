//! Metrics in Prometheus' text format: tasks by plugin, task name and outcome (those of
//! the task API and those of cluster operations alike); task durations as histograms;
//! cluster operations by kind and outcome; plus gauges read from the plugins, the journal
//! and this process when scraped ([`Readings`], [`process`]).
//!
//! Written by hand: a few dozen series with fixed names, and the format's escaping is
//! one function ([`esc`]); `promtool check metrics` reads it in the tests.

mod process;
pub mod recent;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::cluster::outcome::Outcome;
use crate::cluster::progress::{Event, Progress};
use crate::cluster::store::ClusterState;
use crate::core::router::Table;
use crate::journal::Counts;
use crate::journal::Health;

/// A per-plugin series: name, type, help, and how to read it off a plugin.
type PluginGauge = (&'static str, &'static str, &'static str, fn(&crate::core::plugin::Plugin) -> u64);

/// Upper bounds of the duration buckets, in seconds: from a no-op to Loom's 1800 s.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// Counters and histograms updated as tasks finish.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// The last hour by minute, for the console.
    pub recent: recent::Recent,
}

#[derive(Default)]
struct Inner {
    /// (plugin, task name, outcome) -> count.
    tasks: BTreeMap<(String, String, &'static str), u64>,
    /// (plugin, task name) -> histogram.
    durations: BTreeMap<(String, String), Histogram>,
    /// HTTP requests by status code.
    http: BTreeMap<u16, u64>,
    /// (operation, outcome) -> cluster operations ended.
    cluster_ops: BTreeMap<(&'static str, &'static str), u64>,
}

/// What is read when `/metrics` is scraped, besides the counters.
pub struct Readings<'a> {
    /// The plugins.
    pub table: &'a Table,
    /// The task API's tasks in the journal by state, when the journal answered.
    pub journal: Option<Counts>,
    /// Whether the journal can write.
    pub journal_health: &'a Health,
    /// Tasks accepted and not finished.
    pub in_flight: usize,
    /// Clusters by state, when the journal answered.
    pub clusters: Option<Vec<(ClusterState, u64)>>,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Records a finished task.
    pub fn task(&self, plugin: &str, task: &str, status: i64, took: Duration) {
        self.recent.finished(crate::journal::now_ms(), status);
        let mut m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outcome = if status == 0 { "success" } else { "failure" };
        *m.tasks.entry((plugin.to_owned(), task.to_owned(), outcome)).or_default() += 1;
        let h = m.durations.entry((plugin.to_owned(), task.to_owned())).or_default();
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Records an ended cluster operation.
    pub fn cluster_operation(&self, outcome: &Outcome) {
        let mut m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let how = if outcome.ok() { "success" } else { "failure" };
        *m.cluster_ops.entry((outcome.operation, how)).or_default() += 1;
    }

    /// Records an HTTP answer.
    pub fn http(&self, status: u16) {
        let mut m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.http.entry(status).or_default() += 1;
    }

    /// Everything, in the text exposition format.
    pub fn render(&self, now: &Readings<'_>) -> String {
        let m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        header(&mut out, "loom_build_info", "gauge", "Always 1: the version and commit of this build.");
        let _ =
            writeln!(out, "loom_build_info{{version=\"{}\",commit=\"{}\"}} 1", esc(crate::VERSION), esc(crate::COMMIT));
        header(&mut out, "loom_tasks_total", "counter", "Tasks finished, by plugin, task name and outcome.");
        for ((plugin, task, outcome), n) in &m.tasks {
            let _ = writeln!(
                out,
                "loom_tasks_total{{plugin=\"{}\",task=\"{task}\",outcome=\"{outcome}\"}} {n}",
                esc(plugin)
            );
        }
        header(
            &mut out,
            "loom_task_duration_seconds",
            "histogram",
            "Task durations, from hand-over to the plugin to the result.",
        );
        for ((plugin, task), h) in &m.durations {
            let labels = format!("plugin=\"{}\",task=\"{task}\"", esc(plugin));
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(out, "loom_task_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "loom_task_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "loom_task_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "loom_task_duration_seconds_count{{{labels}}} {}", h.count);
        }
        // Per plugin, read now.
        let gauges: [PluginGauge; 4] = [
            ("loom_plugin_restarts_total", "counter", "Plugin process restarts after crashes.", |p| {
                p.status().iter().map(|s| s.restarts).sum()
            }),
            ("loom_plugin_queue_depth", "gauge", "Tasks waiting for a free slot of the plugin.", |p| p.queued() as u64),
            ("loom_plugin_in_flight", "gauge", "Tasks running in the plugin's processes.", |p| {
                p.status().iter().map(|s| s.in_flight as u64).sum()
            }),
            ("loom_plugin_instances_ready", "gauge", "Plugin processes ready for tasks.", |p| {
                p.status().iter().filter(|s| s.phase == crate::core::pool::Phase::Ready).count() as u64
            }),
        ];
        for (name, kind, help, read) in gauges {
            header(&mut out, name, kind, help);
            for p in now.table.plugins() {
                let _ = writeln!(out, "{name}{{plugin=\"{}\",kind=\"{}\"}} {}", esc(p.name()), p.kind(), read(p));
            }
        }
        header(&mut out, "loom_tasks_in_flight", "gauge", "Tasks accepted and not finished.");
        let _ = writeln!(out, "loom_tasks_in_flight {}", now.in_flight);
        header(
            &mut out,
            "loom_cluster_operations_total",
            "counter",
            "Cluster operations ended, by operation and outcome.",
        );
        for ((operation, outcome), n) in &m.cluster_ops {
            let _ =
                writeln!(out, "loom_cluster_operations_total{{operation=\"{operation}\",outcome=\"{outcome}\"}} {n}");
        }
        if let Some(clusters) = &now.clusters {
            header(&mut out, "loom_clusters", "gauge", "Clusters in the journal, by state.");
            for state in ClusterState::ALL {
                let n = clusters.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
                let _ = writeln!(out, "loom_clusters{{state=\"{}\"}} {n}", state.as_str());
            }
        }
        if let Some(c) = now.journal {
            header(&mut out, "loom_journal_tasks", "gauge", "Tasks in the journal, by state.");
            for (state, n) in [("queued", c.queued), ("running", c.running), ("done", c.done)] {
                let _ = writeln!(out, "loom_journal_tasks{{state=\"{state}\"}} {n}");
            }
        }
        header(
            &mut out,
            "loom_journal_write_failures_total",
            "counter",
            "Journal writes that failed (a full disk, a read-only file system).",
        );
        let _ = writeln!(out, "loom_journal_write_failures_total {}", now.journal_health.failures());
        header(
            &mut out,
            "loom_journal_writable",
            "gauge",
            "1 while the journal's last write succeeded, 0 while it cannot write.",
        );
        let _ = writeln!(out, "loom_journal_writable {}", u8::from(now.journal_health.problem().is_none()));
        header(&mut out, "loom_http_responses_total", "counter", "HTTP answers by status code.");
        for (code, n) in &m.http {
            let _ = writeln!(out, "loom_http_responses_total{{code=\"{code}\"}} {n}");
        }
        process::render(&mut out);
        out
    }
}

/// A cluster operation's [`Progress`] in the daemon: `inner`'s, and every task and the
/// operation's end counted in [`Metrics`].
pub struct Counted<'a, P> {
    /// Counts.
    pub metrics: &'a Metrics,
    /// Shows.
    pub inner: P,
}

impl<P: Progress> Progress for Counted<'_, P> {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::TaskFinished { plugin, task, status, elapsed, .. } => {
                self.metrics.task(plugin, task.as_str(), *status, *elapsed);
            }
            Event::Finished { outcome } => self.metrics.cluster_operation(outcome),
            _ => {}
        }
        self.inner.event(event);
    }

    fn wants_output(&self) -> bool {
        self.inner.wants_output()
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// `loom_fleet_queue_depth{plugin=...}`: tasks queued in the journal, across the fleet,
/// by each plugin they need (`queued`: the needs, a JSON array, and a count). A task that
/// needs several plugins (a BOOTSTRAP) counts under each.
pub fn render_fleet_queue(out: &mut String, queued: &[(String, u64)]) {
    let mut by_plugin: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (needs, n) in queued {
        let needs: Vec<String> = serde_json::from_str(needs).unwrap_or_default();
        if needs.is_empty() {
            *by_plugin.entry("none".to_owned()).or_default() += n;
        }
        for need in needs {
            *by_plugin.entry(need).or_default() += n;
        }
    }
    header(out, "loom_fleet_queue_depth", "gauge", "Tasks queued in the journal across the fleet, by plugin needed.");
    for (plugin, n) in by_plugin {
        let _ = writeln!(out, "loom_fleet_queue_depth{{plugin=\"{}\"}} {n}", esc(&plugin));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_split_by_outcome() {
        let m = Metrics::default();
        m.task("shell", "INSTALL", 0, Duration::from_millis(30));
        m.task("shell", "INSTALL", 2, Duration::from_secs(2));
        let table = crate::core::supervisor::Supervisor::new(
            crate::core::registry::Registry::default(),
            crate::core::supervisor::Options::default(),
        )
        .table();
        let readings =
            Readings { table: &table, journal: None, journal_health: &Health::default(), in_flight: 0, clusters: None };
        let text = m.render(&readings);
        assert!(text.contains("loom_tasks_total{plugin=\"shell\",task=\"INSTALL\",outcome=\"success\"} 1"), "{text}");
        assert!(text.contains("loom_tasks_total{plugin=\"shell\",task=\"INSTALL\",outcome=\"failure\"} 1"));
        assert!(text.contains("loom_task_duration_seconds_bucket{plugin=\"shell\",task=\"INSTALL\",le=\"0.05\"} 1"));
        assert!(text.contains("loom_task_duration_seconds_bucket{plugin=\"shell\",task=\"INSTALL\",le=\"5\"} 2"));
        assert!(text.contains("loom_task_duration_seconds_count{plugin=\"shell\",task=\"INSTALL\"} 2"));
        assert_eq!(esc("a\"b\\c"), "a\\\"b\\\\c");
        assert!(text.contains(&format!(
            "loom_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            crate::VERSION,
            crate::COMMIT
        )));
    }
}
