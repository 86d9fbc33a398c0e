//! `GET /v1/events` on a real daemon: tasks, cluster operations and their steps, output
//! (credentials scrubbed), plugin phases; resuming with `Last-Event-ID` and `?since=`,
//! `reset` for an unknown id, the cap on streams, the end at a drain.
//!
//! The stream is read with a raw HTTP/1.1 client (chunked transfer, SSE framing), until
//! the event a test waits for; 60 s is a failure bound only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use loom_e2e::{ClusterRig, Plugins, Serve, action, task};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// How long a test waits for an event before it fails.
const LIMIT: Duration = Duration::from_secs(60);

/// One message of the stream.
#[derive(Debug, Clone)]
struct Msg {
    id: String,
    event: String,
    data: Value,
}

/// An open event stream.
struct Events {
    stream: TcpStream,
    /// Bytes read and not yet taken apart into chunks.
    raw: Vec<u8>,
    /// The body so far, not yet split into messages.
    body: String,
    /// Every byte of body text read, for the tests that look at all of it.
    all: String,
    ended: bool,
    /// The last chunk was read (or the connection closed): no more messages.
    done: bool,
}

/// The daemon's `host:port`.
fn addr(serve: &Serve) -> String {
    serve.url.trim_start_matches("http://").to_owned()
}

/// Sends `GET <path>` with `headers`; the status and the stream after the headers.
fn open(serve: &Serve, path: &str, headers: &[(&str, &str)]) -> (u16, Events) {
    let mut stream = TcpStream::connect(addr(serve)).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut events =
        Events { stream, raw: Vec::new(), body: String::new(), all: String::new(), ended: false, done: false };
    let head = events.head();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status == 200 {
        for h in ["content-type: text/event-stream", "cache-control: no-store", "x-accel-buffering: no"] {
            assert!(head.to_ascii_lowercase().contains(h), "{h} missing: {head}");
        }
        // The opening comment: the subscription is in place from here on.
        events.fill_until(|e| e.body.contains(": events of run"));
    }
    (status, events)
}

impl Events {
    /// Reads the response's head.
    fn head(&mut self) -> String {
        while !self.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            self.read_more();
        }
        let end = self.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end);
        head
    }

    fn read_more(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        let n = self.stream.read(&mut buf).unwrap_or_else(|e| panic!("reading the stream: {e}; so far:\n{}", self.all));
        if n == 0 {
            self.ended = true;
        }
        self.raw.extend_from_slice(&buf[..n]);
    }

    /// Moves whole chunks from `raw` to `body`; whether the last chunk was seen.
    fn unchunk(&mut self) -> bool {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else { return false };
            let size = usize::from_str_radix(String::from_utf8_lossy(&self.raw[..line_end]).trim(), 16).unwrap();
            if size == 0 {
                return true;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return false;
            }
            let text = String::from_utf8(self.raw[start..start + size].to_vec()).unwrap();
            self.body.push_str(&text);
            self.all.push_str(&text);
            self.raw.drain(..start + size + 2);
        }
    }

    /// Reads until `done` holds; panics when the stream ends first.
    fn fill_until(&mut self, done: impl Fn(&Events) -> bool) {
        loop {
            let last = self.unchunk();
            if done(self) {
                return;
            }
            assert!(!last && !self.ended, "the stream ended; so far:\n{}", self.all);
            self.read_more();
        }
    }

    /// The next message (comments skipped); `None` when the stream ended.
    fn next(&mut self) -> Option<Msg> {
        loop {
            if let Some(end) = self.body.find("\n\n") {
                let block: String = self.body.drain(..end + 2).collect();
                match parse(&block) {
                    Some(msg) => return Some(msg),
                    None => continue,
                }
            }
            if self.done {
                return None;
            }
            if self.unchunk() || self.ended {
                self.done = true;
                continue;
            }
            if !self.body.contains("\n\n") {
                self.read_more();
            }
        }
    }

    /// Messages until one satisfies `pred` (the last one returned); panics when the
    /// stream ends or `LIMIT` passes first.
    fn until(&mut self, pred: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        let deadline = Instant::now() + LIMIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let m = self.next().unwrap_or_else(|| panic!("the stream ended; so far:\n{}", self.all));
            let done = pred(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
        panic!("not seen within {LIMIT:?}; so far:\n{}", self.all)
    }
}

/// One SSE block; `None` for a comment.
fn parse(block: &str) -> Option<Msg> {
    let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_owned();
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = v.to_owned();
        }
    }
    if event.is_empty() {
        return None;
    }
    Some(Msg { id, event, data: serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}")) })
}

fn is(m: &Msg, event: &str, task_id: &str) -> bool {
    m.event == event && m.data["taskId"] == task_id
}

fn test_plugin(plugins: &Plugins, name: &str) {
    plugins.add_test_plugin("automator", name, json!({}));
}

#[test]
fn tasks_are_streamed_and_a_reconnect_gets_exactly_what_it_missed() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "a1");
    let serve = Serve::start(&plugins, "");
    let (status, mut a) = open(&serve, "/v1/events", &[]);
    assert_eq!(status, 200);
    serve.submit(&action("t1", "INSTALL", "a1", json!({"action": "sleep", "ms": 50})), false);
    let seen = a.until(|m| is(m, "task.finished", "t1"));
    let started = seen.iter().find(|m| is(m, "task.started", "t1")).expect("task.started before task.finished");
    assert_eq!(started.data, json!({"taskId": "t1", "name": "INSTALL", "plugin": "a1", "clusterId": "cluster-1"}));
    let finished = &seen.last().unwrap().data;
    assert_eq!((finished["status"].as_i64(), finished["outcome"].as_str()), (Some(0), Some("ok")), "{finished}");
    assert_eq!((finished["name"].as_str(), finished["plugin"].as_str()), (Some("INSTALL"), Some("a1")));
    assert!(finished["durationMs"].is_u64(), "{finished}");
    let (_, failed) = serve.submit(&action("t2", "START", "a1", json!({"status": 4})), true);
    assert_eq!(failed["result"]["status"], 4);
    let seen2 = a.until(|m| is(m, "task.finished", "t2"));
    assert_eq!(seen2.last().unwrap().data["outcome"], "failed");

    // Ids rise, none twice; a reconnect from t1's start gets exactly what followed it.
    let all: Vec<Msg> = seen.iter().chain(&seen2).cloned().collect();
    let n = |m: &Msg| m.id.rsplit_once('-').unwrap().1.parse::<u64>().unwrap();
    assert!(all.windows(2).all(|w| n(&w[1]) == n(&w[0]) + 1), "{all:?}");
    let from = all.iter().position(|m| m.id == started.id).unwrap();
    let missed: Vec<String> = all[from + 1..].iter().map(|m| m.id.clone()).collect();
    for (path, headers) in [
        ("/v1/events".to_owned(), vec![("Last-Event-ID", started.id.as_str())]),
        (format!("/v1/events?since={}", started.id), vec![]),
    ] {
        let (status, mut b) = open(&serve, &path, &headers);
        assert_eq!(status, 200);
        let again: Vec<String> = b.until(|m| is(m, "task.finished", "t2")).into_iter().map(|m| m.id).collect();
        assert_eq!(again, missed, "{path}");
    }

    // An id of another run, or no id of this daemon: reset, then the live events.
    for id in ["0123456789ab-3", "nonsense"] {
        let (_, mut c) = open(&serve, "/v1/events", &[("Last-Event-ID", id)]);
        let reset = c.next().unwrap();
        assert_eq!((reset.event.as_str(), reset.data["reason"].as_str()), ("reset", Some("the daemon restarted")));
        assert_eq!(reset.id, all.last().unwrap().id, "goes on from the newest");
    }
    // The route is found by its decoded path, like every other.
    assert_eq!(open(&serve, "/v1/%65vents", &[]).0, 200);
}

#[test]
fn credentials_never_reach_the_stream_and_output_is_scrubbed() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "leaky");
    let serve = Serve::start(&plugins, "");
    let (_, mut a) = open(&serve, "/v1/events", &[]);
    let config = json!({
        "service": {"name": "svc", "action": {"type": "leaky", "script": "true", "data": ""}},
        "test": {"action": "leak"},
        "ssh-auth": {"user": "root", "password": "SECRET-ssh-password-31337"},
        "provider": {"name": "cloud", "fields": {"api_password": "SECRET-provider-key-4242"}},
    });
    serve.submit(&task("leak1", "INSTALL", config), false);
    let seen = a.until(|m| is(m, "task.finished", "leak1"));
    let output: Vec<&Msg> = seen.iter().filter(|m| is(m, "step.output", "leak1")).collect();
    assert!(!output.is_empty(), "no output events: {}", a.all);
    assert!(output.iter().all(|m| m.data["cluster"].is_null()), "an API task has no cluster");
    assert!(output.iter().any(|m| m.data["stream"] == "stderr") && output.iter().any(|m| m.data["stream"] == "stdout"));
    let text: String = output.iter().map(|m| m.data["data"].as_str().unwrap()).collect();
    assert!(text.contains("[redacted]"), "{text}");
    for secret in ["SECRET-ssh-password-31337", "SECRET-provider-key-4242", "31337", "4242"] {
        assert!(!a.all.contains(secret), "{secret} is in the stream:\n{}", a.all);
    }
}

#[test]
fn plugin_phases_are_streamed_streams_are_capped_and_a_drain_ends_them() {
    let plugins = Plugins::new();
    test_plugin(&plugins, "a1");
    let mut serve = Serve::start(&plugins, "");
    let (_, mut a) = open(&serve, "/v1/events", &[]);
    let (code, _) = serve.request("POST", "/v1/plugins/a1/restart", None);
    assert_eq!(code, 202);
    let seen = a.until(|m| m.event == "plugin.state" && m.data["phase"] == "ready");
    let phases: Vec<&str> = seen.iter().filter_map(|m| m.data["phase"].as_str()).collect();
    assert!(phases.contains(&"stopping") && phases.contains(&"starting"), "{phases:?}");
    let ready = &seen.last().unwrap().data;
    assert_eq!((ready["plugin"].as_str(), ready["kind"].as_str()), (Some("a1"), Some("automator")), "{ready}");
    assert_eq!((ready["instance"].as_u64(), ready["restarts"].as_u64()), (Some(0), Some(0)), "{ready}");
    assert!(ready["pid"].as_u64().is_some_and(|p| p > 0), "{ready}");

    // 64 streams at once: `a` and 63 more; the 65th is refused.
    let more: Vec<Events> = (0..63).map(|_| open(&serve, "/v1/events", &[]).1).collect();
    let mut refused = TcpStream::connect(addr(&serve)).unwrap();
    refused.set_read_timeout(Some(LIMIT)).unwrap();
    refused.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    refused.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many event streams open (at most 64)"), "{answer}");
    drop(more);
    serve.submit(&action("t1", "INSTALL", "a1", json!({})), false);
    a.until(|m| is(m, "task.finished", "t1"));

    // A drain: the stream gets what the drain published (the plugin stopping), then ends.
    serve.signal(Signal::SIGTERM);
    let mut phases = Vec::new();
    while let Some(m) = a.next() {
        if m.event == "plugin.state" {
            phases.push(m.data["phase"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(phases.iter().any(|p| p == "stopped"), "{phases:?}\n{}", a.all);
    assert_eq!(serve.wait_exit(LIMIT), Some(0));
}

#[test]
fn a_cluster_up_streams_its_operation_steps_and_output() {
    let rig = ClusterRig::new(json!({}));
    let serve = Serve::start(&rig.plugins, "");
    let (_, mut a) = open(&serve, "/v1/events", &[]);
    let spec = ClusterRig::example(18700, 1);
    let (code, body) = serve.request("POST", "/v1/clusters", Some(&spec.to_string()));
    assert_eq!(code, 202, "{body:#}");
    let job = body["jobId"].as_str().unwrap().to_owned();
    let seen = a.until(|m| m.event == "op.finished" && m.data["jobId"] == job.as_str());
    let of_job = |name: &str| -> Vec<&Msg> {
        seen.iter().filter(|m| m.event == name && m.data["jobId"] == job.as_str()).collect()
    };
    let started = of_job("op.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].data, json!({"cluster": "local-demo", "jobId": job, "operation": "up"}));
    let finished = &seen.last().unwrap().data;
    assert_eq!(
        (finished["outcome"].as_str(), finished["state"].as_str()),
        (Some("done"), Some("active")),
        "{finished}"
    );

    // Every task the operation recorded: one step.started and one step.finished each.
    let (_, status) = serve.request("GET", "/v1/clusters/local-demo?tasks=true", None);
    let rows = status["tasks"].as_array().expect("tasks");
    let (steps_started, steps_finished) = (of_job("step.started"), of_job("step.finished"));
    assert_eq!(steps_started.len(), rows.len(), "{status:#}");
    assert_eq!(steps_finished.len(), rows.len());
    for row in rows {
        let id = row["taskId"].as_str().unwrap();
        let s = steps_started.iter().find(|m| m.data["taskId"] == id).unwrap_or_else(|| panic!("{id}"));
        let f = steps_finished.iter().find(|m| m.data["taskId"] == id).unwrap_or_else(|| panic!("{id}"));
        assert!(n(s) < n(f), "{id}: started before finished");
        assert_eq!(s.data["step"], row["step"], "{row}");
        assert_eq!(s.data["cluster"], "local-demo");
        for k in ["node", "service", "action", "attempt"] {
            assert!(s.data.get(k).is_some(), "{k} missing: {}", s.data);
            assert_eq!(s.data[k], f.data[k], "{k}");
        }
        assert_eq!((f.data["status"].as_i64(), f.data["outcome"].as_str()), (Some(0), Some("ok")), "{}", f.data);
        assert!(f.data["durationMs"].is_u64());
    }
    let output = of_job("step.output");
    assert!(!output.is_empty(), "no step.output: {}", a.all);
    assert!(output.iter().all(|m| m.data["cluster"] == "local-demo"));

    // A script that prints its task: the provider's password never reaches the stream.
    let secret = json!({
        "name": "secret",
        "provider": {"name": "local", "fields": {"api_user": "me", "api_password": "hunter2-very-secret"}},
        "nodeGroups": [{"name": "n", "count": 1, "services": ["svc"]}],
        "services": {"svc": {"actions": {"install": {"type": "shell", "script": "leak.sh", "data": "install"}}}},
        "attempts": 1
    });
    let (code, body) = serve.request("POST", "/v1/clusters", Some(&secret.to_string()));
    assert_eq!(code, 202, "{body:#}");
    let job = body["jobId"].as_str().unwrap().to_owned();
    let seen = a.until(|m| m.event == "op.finished" && m.data["jobId"] == job.as_str());
    assert_eq!(seen.last().unwrap().data["outcome"], "failed");
    let printed: String = seen
        .iter()
        .filter(|m| m.event == "step.output" && m.data["jobId"] == job.as_str())
        .map(|m| m.data["data"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(printed.contains("api_user"), "the script printed its task: {printed}");
    assert!(!a.all.contains("hunter2-very-secret"), "the password is in the stream:\n{}", a.all);

    for name in ["local-demo", "secret"] {
        let (code, body) = serve.request("DELETE", &format!("/v1/clusters/{name}?wait=true"), None);
        assert_eq!(code, 200, "{body:#}");
    }
    assert!(rig.machines_left().is_empty());
}

fn n(m: &Msg) -> u64 {
    m.id.rsplit_once('-').unwrap().1.parse().unwrap()
}
