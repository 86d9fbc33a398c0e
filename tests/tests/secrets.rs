//! Planted credentials never leave the supervisor. Recognisable values sit in every task
//! field that can hold one; a plugin (`testplugin.py`, action `leak`) echoes each through
//! every channel it has; the test then searches everything the supervisor produced —
//! `run`'s output and log, the daemon's API answers, `/metrics`, its log and its journal
//! files (after the tasks end, and after a clean stop), and `cluster up`'s output, report,
//! status and journal — for any of them. Credentials a provider returns under `result`
//! (where they legitimately travel) are kept, and the test checks that they are.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loom_e2e::{Plugins, Serve, action, provisioner, run_with_input, task, wait_until};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// The longest log line a plugin may cause (its 1 MB answer id must not become one).
const LONGEST_LOG_LINE: usize = 64 * 1024;

/// Recognisable credential values, unique to one test.
struct Planted {
    unique: String,
    /// How many values are planted.
    count: usize,
    /// Every planted value as text (the number too), with the other forms it may be
    /// printed in: JSON-escaped, and each line of a multi-line one.
    needles: Vec<String>,
    pin: u64,
}

impl Planted {
    fn new() -> Planted {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let unique = format!("{}x{nanos}", std::process::id());
        // 13+ digits, so that it is recognisable in text (and the plugin finds it). Not the
        // clock's own digits: those are in `unique`, which names tasks and clusters and is
        // no secret (a pin of 7 and nanos' last 12 digits was a substring of it whenever
        // the 13th digit was a 7).
        let pin = 7_000_000_000_000 + ((nanos / 7 + 123_456_789) % 1_000_000_000_000) as u64;
        let mut p = Planted { unique, count: Planted::FIELDS.len() + 1, needles: vec![pin.to_string()], pin };
        for field in Planted::FIELDS {
            let value = p.value(field);
            let escaped = serde_json::to_string(&value).unwrap();
            p.needles.push(escaped[1..escaped.len() - 1].to_owned());
            p.needles.extend(value.lines().map(str::to_owned));
            p.needles.push(value);
        }
        p.needles.sort();
        p.needles.dedup();
        p
    }

    const FIELDS: [&'static str; 13] = [
        "ssh-password",
        "ssh-privatekey",
        "ssh-passphrase",
        "api_key",
        "secret_access_key",
        "provider-password",
        "rackspace_api_key",
        "credentials-pw",
        "credentials-deep",
        "credentials-list",
        "tokens-0",
        "tokens-1",
        "keys-object",
    ];

    /// The value planted in `field`. A private key has several lines, as real ones do, and
    /// a password has characters JSON escapes.
    fn value(&self, field: &str) -> String {
        let u = &self.unique;
        match field {
            "ssh-privatekey" => format!("SECRET-{field}-{u}\nSECRET-{field}-line-2-{u}\n"),
            "provider-password" => format!("SECRET-{field}-\"q\\b-{u}"),
            _ => format!("SECRET-{field}-{u}"),
        }
    }

    /// The provider part of a task's config.
    fn provider(&self, name: &str) -> Value {
        json!({"name": name, "providertype": name, "provisioner": {
            "api_user": "me",
            "api_key": self.value("api_key"),
            "secret_access_key": self.value("secret_access_key"),
            "password": self.value("provider-password"),
            "auth": {"rackspace_username": "me", "rackspace_api_key": self.value("rackspace_api_key")},
        }})
    }

    /// Credential-bearing config keys, other than the provider's.
    fn credentials(&self) -> Value {
        json!({
            "ssh-auth": {"user": "root", "password": self.value("ssh-password"),
                         "privatekey": self.value("ssh-privatekey"), "passphrase": self.value("ssh-passphrase")},
            "credentials": {"pw": self.value("credentials-pw"), "nested": {"deep": self.value("credentials-deep")},
                            "list": [self.value("credentials-list")], "pin": self.pin},
            "tokens": [self.value("tokens-0"), self.value("tokens-1")],
            "keys": [{"value": self.value("keys-object")}],
        })
    }

    /// Adds every planted field to a task.
    fn plant(&self, mut t: Value, provider: &str) -> Value {
        loom_e2e::merge(&mut t["config"], self.credentials());
        t["config"]["provider"] = self.provider(provider);
        t
    }

    /// The planted values found in `text`, with where.
    fn hits(&self, what: &str, text: &str) -> Vec<String> {
        self.needles.iter().filter(|n| text.contains(n.as_str())).map(|n| format!("{n} in {what}")).collect()
    }

    /// The first halves of planted values found in `text`: what a log shows when a value
    /// split across two `output` chunks is let out chunk by chunk.
    fn halves(&self, what: &str, text: &str) -> Vec<String> {
        self.needles
            .iter()
            .filter(|n| n.starts_with("SECRET-"))
            .map(|n| &n[..n.len() / 2])
            .filter(|half| text.contains(half))
            .map(|half| format!("{half}... in {what}"))
            .collect()
    }

    /// The planted values found in any file of `dir` (the journal and its -wal and -shm).
    fn hits_in_files(&self, dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            let name = e.file_name().to_string_lossy().into_owned();
            for n in &self.needles {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    found.push(format!("{n} in {name}"));
                }
            }
        }
        found
    }

    /// A password a provider returns under `result`: kept there, by design.
    fn returned(&self) -> String {
        format!("RETURNED-provider-password-{}", self.unique)
    }
}

fn longest_line(text: &str) -> usize {
    text.lines().map(str::len).max().unwrap_or(0)
}

/// The four tasks: an action that leaks and answers, one that leaks and answers with an
/// error, a CREATE whose provider returns credentials under `result`, and a BOOTSTRAP
/// naming an automator after a credential (routing errors and metrics labels).
fn tasks(p: &Planted, prefix: &str) -> Vec<Value> {
    let leak = p.plant(action(&format!("{prefix}-leak"), "INSTALL", "leaky", json!({"action": "leak"})), "cloud");
    let error =
        p.plant(action(&format!("{prefix}-error"), "CONFIGURE", "leaky", json!({"action": "leak-error"})), "cloud");
    let returned = json!({"ssh-auth": {"user": "root", "password": p.returned()}});
    let create = p.plant(
        task(&format!("{prefix}-create"), "CREATE", json!({"test": {"action": "leak", "result": returned}})),
        "cloud",
    );
    let mut boot = p.plant(task(&format!("{prefix}-boot"), "BOOTSTRAP", json!({"test": {"action": "leak"}})), "cloud");
    boot["config"]["automators"] = json!(["leaky", p.value("ssh-password")]);
    vec![leak, error, create, boot]
}

fn register(plugins: &Plugins) {
    plugins.add_test_plugin("automator", "leaky", json!({}));
    plugins.add_test_plugin("provider", "cloud", json!({}));
}

/// The planted values in the four results.
fn result_hits(p: &Planted, prefix: &str, result_of: &impl Fn(&str) -> Value) -> Vec<String> {
    ["leak", "error", "create", "boot"]
        .iter()
        .flat_map(|t| p.hits(&format!("the result of {prefix}-{t}"), &result_of(&format!("{prefix}-{t}")).to_string()))
        .collect()
}

/// Every channel of the four results was exercised (the scrubbed marks are there), and
/// the provider's returned password is kept under `result`.
fn check_results(p: &Planted, prefix: &str, result_of: &impl Fn(&str) -> Value) {
    for t in ["leak", "error", "create", "boot"] {
        let r = result_of(&format!("{prefix}-{t}"));
        assert!(r["stderr"].as_str().unwrap_or_default().contains("[redacted]"), "{t}: {r:#}");
    }
    let leak = result_of(&format!("{prefix}-leak"));
    assert_eq!(leak["stdout"].as_str().unwrap().matches("[redacted]").count(), p.count, "{leak:#}");
    assert!(leak["note"].as_str().unwrap().starts_with("extra member [redacted]"), "{leak:#}");
    // The error answer's result is built from the output streamed in chunks, each value
    // split in two: reassembled, then scrubbed.
    let error = result_of(&format!("{prefix}-error"));
    let streamed = error["stdout"].as_str().unwrap();
    assert_eq!(streamed.matches("chunk [redacted]").count(), p.count, "{error:#}");
    let create = result_of(&format!("{prefix}-create"));
    assert_eq!(create["result"]["ssh-auth"]["password"], p.returned(), "{create:#}");
}

#[test]
fn planted_credentials_reach_no_output_of_run() {
    let p = Planted::new();
    let plugins = Plugins::new();
    register(&plugins);
    let run = plugins.run(&tasks(&p, "r"), &["--log-level", "trace"]);
    let result_of = |id: &str| run.result(id).clone();
    let mut hits = result_hits(&p, "r", &result_of);
    hits.extend(p.hits("run's log", &run.stderr));
    hits.extend(p.halves("run's log", &run.stderr));
    assert!(hits.is_empty(), "planted credentials leaked:\n{}\nlog:\n{}", hits.join("\n"), run.stderr);
    check_results(&p, "r", &result_of);
    // Every plugin channel reached the log, scrubbed.
    for said in
        ["leaking [redacted]", "progress: progress [redacted]", "stderr line [redacted]", "junk line [redacted]"]
    {
        assert!(run.stderr.contains(said), "{said:?} missing from the log:\n{}", run.stderr);
    }
    assert!(longest_line(&run.stderr) < LONGEST_LOG_LINE, "a log line of {} bytes", longest_line(&run.stderr));
    plugins.assert_no_leftovers();
}

#[test]
fn planted_credentials_reach_no_api_answer_metric_log_or_journal_file_of_the_daemon() {
    let p = Planted::new();
    let plugins = Plugins::new();
    register(&plugins);
    let mut serve = Serve::start_with(&plugins, "", &[("LOOM_LOG", "trace")]);
    let mut answers = Vec::new();
    for t in tasks(&p, "s") {
        let (code, v) = serve.submit(&t, true);
        assert_eq!(code, 200, "{v}");
        answers.push(v);
    }
    let fetched: Vec<(String, Value)> = ["leak", "error", "create", "boot"]
        .iter()
        .map(|t| {
            let (code, v) = serve.request("GET", &format!("/v1/tasks/s-{t}"), None);
            assert_eq!(code, 200, "{v}");
            (format!("s-{t}"), v["result"].clone())
        })
        .collect();
    let result_of = |id: &str| fetched.iter().find(|(i, _)| i == id).map(|(_, v)| v.clone()).unwrap();
    let mut hits = result_hits(&p, "s", &result_of);
    for v in &answers {
        hits.extend(p.hits("a ?wait=true answer", &v.to_string()));
    }
    let (_, metrics) = serve.request("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap().to_owned();
    hits.extend(p.hits("/metrics", &metrics));
    let (_, listing) = serve.request("GET", "/v1/plugins", None);
    hits.extend(p.hits("/v1/plugins", &listing.to_string()));

    // The tasks are done: their bodies leave every journal file within a bounded time.
    let data = serve.data_dir.clone();
    wait_until(Duration::from_secs(20), || p.hits_in_files(&data).is_empty());
    hits.extend(p.hits_in_files(&data).into_iter().map(|h| format!("{h} (tasks done)")));
    // A clean stop leaves nothing either.
    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait_exit(Duration::from_secs(60)), Some(0), "{}", serve.log_text());
    hits.extend(p.hits_in_files(&data).into_iter().map(|h| format!("{h} (after a clean stop)")));
    let log = serve.log_text();
    hits.extend(p.hits("the daemon's log", &log));
    hits.extend(p.halves("the daemon's log", &log));
    assert!(hits.is_empty(), "planted credentials leaked:\n{}\nlog:\n{log}", hits.join("\n"));
    assert!(log.contains("leaking [redacted]"), "{log}");
    check_results(&p, "s", &result_of);
    // Labels come from the registry: the automator named after a credential is not one.
    assert!(
        metrics.contains("loom_tasks_total{plugin=\"leaky\",task=\"BOOTSTRAP\",outcome=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(longest_line(&log) < LONGEST_LOG_LINE, "a log line of {} bytes", longest_line(&log));
    // The journal still has the results, with the provider's returned password.
    let journal = std::fs::read(data.join("journal.sqlite3")).unwrap();
    let returned = p.returned();
    assert!(journal.windows(returned.len()).any(|w| w == returned.as_bytes()), "the result was not kept");
    plugins.assert_no_leftovers();
}

#[test]
fn planted_credentials_reach_no_output_report_status_or_journal_of_cluster_up() {
    let p = Planted::new();
    let plugins = Plugins::new();
    plugins.add_test_plugin("provider", "tcloud", json!({}));
    plugins.add_test_plugin("automator", "tauto", json!({}));
    let name = format!("sec{}", p.unique.replace('x', "-")).chars().take(40).collect::<String>();
    // (`ssh-auth` comes from the provider in a cluster; a spec may not set it.)
    let mut group_config = p.credentials();
    group_config.as_object_mut().unwrap().remove("ssh-auth");
    group_config["test"] = json!({"action": "leak", "statusByTask": {"INSTALL": 3}});
    let provider = p.provider("tcloud");
    let spec = json!({
        "name": name,
        "provider": {"name": "tcloud", "fields": provider["provisioner"]},
        "nodeGroups": [{"name": "n", "count": 1, "services": ["svc"], "config": group_config}],
        "services": {"svc": {"actions": {"install": {"type": "tauto", "script": "install.sh", "data": "x"},
                                          "remove": {"type": "tauto", "script": "remove.sh", "data": "x"}}}},
        "attempts": 1
    });
    let spec_file = plugins.file("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let data = plugins.path().join("data");
    let cluster = |args: &[&str]| {
        let mut cmd = std::process::Command::new(provisioner());
        cmd.args(["--log-level", "trace", "cluster"]).args(args).arg("--data-dir").arg(&data);
        if matches!(args.first(), Some(&("up" | "down"))) {
            cmd.arg("--plugins-dir").arg(plugins.path()).args(["--progress", "lines", "--json"]);
        }
        run_with_input(cmd, "", Duration::from_secs(120))
    };
    let mut hits = Vec::new();
    let up = cluster(&["up", spec_file.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&up.stdout), String::from_utf8_lossy(&up.stderr));
    assert_eq!(up.status.code(), Some(1), "INSTALL fails on purpose:\n{stdout}\n{stderr}");
    hits.extend(p.hits("cluster up's output and report", &stdout));
    hits.extend(p.hits("cluster up's log", &stderr));
    let status = cluster(&["status", &name, "--json", "--tasks"]);
    hits.extend(p.hits("cluster status", &String::from_utf8_lossy(&status.stdout)));
    let down = cluster(&["down", &name]);
    assert_eq!(down.status.code(), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    hits.extend(p.hits("cluster down's output", &String::from_utf8_lossy(&down.stdout)));
    hits.extend(p.hits("cluster down's log", &String::from_utf8_lossy(&down.stderr)));
    // Taken down: what the journal keeps of the cluster holds no credential.
    hits.extend(p.hits_in_files(&data).into_iter().map(|h| format!("{h} (cluster terminated)")));
    assert!(hits.is_empty(), "planted credentials leaked:\n{}\n{stderr}", hits.join("\n"));
    // The failed step's report quotes its stderr, scrubbed.
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let failed = &report["outcome"]["failed"][0];
    assert!(failed["stderr"].as_str().unwrap().contains("answer stderr [redacted]"), "{report:#}");
    assert!(longest_line(&stderr) < LONGEST_LOG_LINE, "a log line of {} bytes", longest_line(&stderr));
    plugins.assert_no_leftovers();
}
