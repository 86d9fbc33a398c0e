//! Metrics in Prometheus' text format: tasks by plugin, task name and outcome; task
//! durations as histograms; plus gauges read from the plugins and the journal when
//! scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

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
}

#[derive(Default)]
struct Inner {
    /// (plugin, task name, outcome) -> count.
    tasks: BTreeMap<(String, String, &'static str), u64>,
    /// (plugin, task name) -> histogram.
    durations: BTreeMap<(String, String), Histogram>,
    /// HTTP requests by status code.
    http: BTreeMap<u16, u64>,
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

    /// Records an HTTP answer.
    pub fn http(&self, status: u16) {
        let mut m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.http.entry(status).or_default() += 1;
    }

    /// Everything, in the text exposition format.
    pub fn render(&self, table: &Table, journal: Option<Counts>, journal_health: &Health, in_flight: usize) -> String {
        let m = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
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
            for p in table.plugins() {
                let _ = writeln!(out, "{name}{{plugin=\"{}\",kind=\"{}\"}} {}", esc(p.name()), p.kind(), read(p));
            }
        }
        header(&mut out, "loom_tasks_in_flight", "gauge", "Tasks accepted and not finished.");
        let _ = writeln!(out, "loom_tasks_in_flight {in_flight}");
        if let Some(c) = journal {
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
        let _ = writeln!(out, "loom_journal_write_failures_total {}", journal_health.failures());
        header(
            &mut out,
            "loom_journal_writable",
            "gauge",
            "1 while the journal's last write succeeded, 0 while it cannot write.",
        );
        let _ = writeln!(out, "loom_journal_writable {}", u8::from(journal_health.problem().is_none()));
        header(&mut out, "loom_http_responses_total", "counter", "HTTP answers by status code.");
        for (code, n) in &m.http {
            let _ = writeln!(out, "loom_http_responses_total{{code=\"{code}\"}} {n}");
        }
        out
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
        let text = m.render(&table, None, &Health::default(), 0);
        assert!(text.contains("loom_tasks_total{plugin=\"shell\",task=\"INSTALL\",outcome=\"success\"} 1"), "{text}");
        assert!(text.contains("loom_tasks_total{plugin=\"shell\",task=\"INSTALL\",outcome=\"failure\"} 1"));
        assert!(text.contains("loom_task_duration_seconds_bucket{plugin=\"shell\",task=\"INSTALL\",le=\"0.05\"} 1"));
        assert!(text.contains("loom_task_duration_seconds_bucket{plugin=\"shell\",task=\"INSTALL\",le=\"5\"} 2"));
        assert!(text.contains("loom_task_duration_seconds_count{plugin=\"shell\",task=\"INSTALL\"} 2"));
        assert_eq!(esc("a\"b\\c"), "a\\\"b\\\\c");
    }
}
