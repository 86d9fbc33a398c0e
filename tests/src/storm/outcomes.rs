//! What became of one plugin's tasks in a storm: their results over HTTP, beside the
//! plugin's own record of the tasks it started and the processes the storm killed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::StormPlugin;
use crate::daemon::Serve;

/// The failure of a task that was in flight on a process the storm killed, with the
/// process's pid as `N`. Nothing else may fail a task in the storm.
pub const KILLED_IN_FLIGHT: &str = "the plugin process (pid N) was killed by signal N (SIGKILL)";

/// The outcome of one plugin's tasks.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// The plugin.
    pub plugin: String,
    /// Tasks submitted.
    pub submitted: usize,
    /// Finished with status 0.
    pub succeeded: usize,
    /// Finished with another status, by cause (digits as `N`, so that causes group).
    pub failed: BTreeMap<String, usize>,
    /// Failed tasks by how many times they were sent (their result's `attempts`).
    pub failed_by_sends: BTreeMap<u64, usize>,
    /// Failed tasks the plugin never started: read by a process killed before it started
    /// them (a line it never read whole goes to the next process instead).
    pub failed_unstarted: usize,
    /// Failed tasks whose failure is not [`KILLED_IN_FLIGHT`] on a process the storm
    /// killed: a crash failed a task that was not on the dead process.
    pub failed_elsewhere: Vec<String>,
    /// The most failures one kill caused: over the pids the failures name, their number
    /// divided by the kills of a process with that pid, rounded up.
    pub most_failed_per_kill: usize,
    /// Accepted and never finished, or not found.
    pub lost: Vec<String>,
    /// Started more than once by the daemon, as its journal says (`attempts` over 1; 0 is
    /// a task refused before it was sent).
    pub journaled_twice: Vec<String>,
    /// Started by the plugin more often than the supervisor sent them (its `attempts`, 1
    /// when absent): run twice behind its back.
    pub run_too_often: Vec<String>,
    /// Sent again after a crash (`attempts` 2 or more in the result).
    pub resent: usize,
}

impl Outcomes {
    /// Reads the result of each task in `ids` (`GET /v1/tasks/{id}`) and the plugin's
    /// record; `killed` are the processes the storm killed (pid: times).
    pub fn read(serve: &Serve, plugin: &StormPlugin, ids: &[String], killed: &HashMap<u32, usize>) -> Outcomes {
        let starts = plugin.starts();
        let mut o = Outcomes { plugin: plugin.name.clone(), submitted: ids.len(), ..Outcomes::default() };
        let mut failed_on: HashMap<u32, usize> = HashMap::new();
        for id in ids {
            let (code, v) = serve.request("GET", &format!("/v1/tasks/{id}"), None);
            if code != 200 || v["state"] != "done" {
                o.lost.push(format!("{id}: {code} {v}"));
                continue;
            }
            if v["attempts"].as_u64().is_none_or(|a| a > 1) {
                o.journaled_twice.push(format!("{id}: {v}"));
            }
            let result = &v["result"];
            let sent = result["attempts"].as_u64().unwrap_or(1);
            o.resent += usize::from(sent > 1);
            let started = starts.get(id).copied().unwrap_or(0);
            if started as u64 > sent {
                o.run_too_often.push(format!("{id}: started {started} times, sent {sent}"));
            }
            if result["status"] == 0 {
                o.succeeded += 1;
                continue;
            }
            let stderr = result["stderr"].as_str().unwrap_or_default();
            let why = cause(stderr);
            match dead_process(stderr).filter(|pid| killed.contains_key(pid)) {
                Some(pid) if why == KILLED_IN_FLIGHT => *failed_on.entry(pid).or_default() += 1,
                _ => o.failed_elsewhere.push(format!("{id}: {stderr}")),
            }
            *o.failed.entry(why).or_default() += 1;
            *o.failed_by_sends.entry(sent).or_default() += 1;
            o.failed_unstarted += usize::from(started == 0);
        }
        o.most_failed_per_kill = failed_on
            .iter()
            .map(|(pid, n)| n.div_ceil(killed.get(pid).copied().unwrap_or(1).max(1)))
            .max()
            .unwrap_or(0);
        o
    }

    /// Succeeded, in percent of submitted.
    pub fn success_percent(&self) -> f64 {
        100.0 * self.succeeded as f64 / self.submitted.max(1) as f64
    }

    /// Failed tasks.
    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }
}

impl fmt::Display for Outcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: succeeded {} of {} ({:.2}%); lost {}, run more often than sent {}, journaled twice {}; sent again \
             after a crash {}",
            self.plugin,
            self.succeeded,
            self.submitted,
            self.success_percent(),
            self.lost.len(),
            self.run_too_often.len(),
            self.journaled_twice.len(),
            self.resent
        )?;
        writeln!(
            f,
            "    failed {}: by times sent {:?}; never started by the plugin {}; not on a killed process {}; at most {} \
             per kill",
            self.failures(),
            self.failed_by_sends,
            self.failed_unstarted,
            self.failed_elsewhere.len(),
            self.most_failed_per_kill
        )?;
        for (why, n) in &self.failed {
            writeln!(f, "    {n} x {why}")?;
        }
        Ok(())
    }
}

/// The process a failure names: "the plugin process (pid N) ...".
fn dead_process(stderr: &str) -> Option<u32> {
    const NAMED: &str = "the plugin process (pid ";
    let rest = &stderr[stderr.find(NAMED)? + NAMED.len()..];
    rest[..rest.find(')')?].parse().ok()
}

/// A failed task's cause: the first line of its stderr after the plugin and task it names,
/// with each run of digits as `N`, so that one cause on many processes and tasks is one.
pub fn cause(stderr: &str) -> String {
    let first = stderr.lines().next().unwrap_or_default();
    // After "automator \"x\", task ID (START): ".
    let why = first.split_once("): ").map_or(first, |(_, why)| why);
    let mut out = String::new();
    for c in why.chars().take(300) {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('N') {
            out.push('N');
        }
    }
    out
}
