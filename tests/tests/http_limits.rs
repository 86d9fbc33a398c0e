//! The API cannot be taken down by connections alone: a cap with eviction of idle and slow
//! connections, timeouts for idle connections, slow headers and slow bodies, and accept
//! errors that back off instead of flooding the log. Anyone who can reach the listener can
//! open connections, so none of these needs a token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use loom_e2e::{Plugins, Serve, action};
use serde_json::json;

fn plugins() -> Plugins {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    plugins
}

/// This test process may open thousands of connections.
fn allow_many_open_files(n: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < n {
        setrlimit(Resource::RLIMIT_NOFILE, n.max(soft), n.max(hard)).expect("raise the open-files limit (root)");
    }
}

fn addr(serve: &Serve) -> String {
    serve.url.trim_start_matches("http://").to_owned()
}

fn connect(addr: &str) -> TcpStream {
    let a = addr.parse().expect("an address");
    TcpStream::connect_timeout(&a, Duration::from_secs(20)).unwrap_or_else(|e| panic!("connect to the daemon: {e}"))
}

/// Reads until the daemon closes the connection (within 60 s); what it sent.
fn read_until_closed(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                panic!("the daemon kept the connection open: {e}; got so far {:?}", String::from_utf8_lossy(&got))
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn two_thousand_idle_and_slow_connections_do_not_lock_out_clients() {
    allow_many_open_files(8192);
    let plugins = plugins();
    // Long timeouts, so that only the cap and its eviction keep the API answering; an
    // open-files limit of 1024, so that without a cap the daemon runs out of descriptors.
    let config = "[http]\nheader_read_timeout_secs = 600\nbody_read_timeout_secs = 600\nidle_timeout_secs = 600\n";
    let serve = Serve::start_with_open_files(&plugins, config, (1024, 1024));
    let addr = addr(&serve);

    let mut hostile = Vec::new();
    for i in 0..2000 {
        let mut s = connect(&addr);
        let sent: &[u8] = match i % 4 {
            0 => b"",
            1 => b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
            2 => b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"taskId\"",
            _ => b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        };
        // The daemon may already have closed it (evicted): that is its right.
        let _ = s.write_all(sent);
        hostile.push(s);
    }

    let mut latencies = Vec::new();
    for round in 0..10 {
        let began = Instant::now();
        let (code, v) = serve.request("GET", "/healthz", None);
        assert_eq!(code, 200, "{v}");
        let id = format!("t{round}");
        let (code, v) = serve.submit(&action(&id, "START", "a1", json!({})), true);
        assert_eq!((code, &v["result"]["status"]), (200, &json!(0)), "{v}");
        latencies.push(began.elapsed());
    }
    latencies.sort();
    eprintln!(
        "health check and task, with 2,000 hostile connections open: median {:?}, max {:?}",
        latencies[5], latencies[9]
    );
    assert!(latencies[9] < Duration::from_secs(5), "{latencies:?}");
    let log = serve.log_text();
    assert!(!log.contains("accepting a connection failed"), "the cap keeps descriptors free:\n{log}");
    drop(hostile);
}

#[test]
fn slow_headers_and_slow_bodies_are_cut_short_long_before_the_idle_timeout() {
    let plugins = plugins();
    let config = "[http]\nheader_read_timeout_secs = 1\nbody_read_timeout_secs = 1\nidle_timeout_secs = 600\n";
    let serve = Serve::start(&plugins, config);
    let addr = addr(&serve);

    // Connected and silent for a while, then one byte: the header clock starts then.
    let mut late_header = connect(&addr);
    let mut slow_header = connect(&addr);
    slow_header.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut slow_body = connect(&addr);
    slow_body
        .write_all(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"task")
        .unwrap();
    // A request handled for longer than the header and body timeouts is not cut short.
    let (code, v) = serve.submit(&action("slow", "START", "a1", json!({"action": "sleep", "ms": 3000})), true);
    assert_eq!((code, &v["result"]["status"]), (200, &json!(0)), "{v}");
    late_header.write_all(b"G").unwrap();

    // read_until_closed waits 60 s at most: far less than the idle timeout.
    assert_eq!(read_until_closed(slow_header), "", "headers that never end: closed");
    assert_eq!(read_until_closed(late_header), "", "a request begun late: its headers timed too");
    let answer = read_until_closed(slow_body);
    assert!(answer.starts_with("HTTP/1.1 408"), "a body that never ends: 408, then closed: {answer}");
    assert!(answer.contains("body_read_timeout_secs"), "{answer}");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let plugins = plugins();
    let config = "[http]\nheader_read_timeout_secs = 600\nidle_timeout_secs = 2\n";
    let serve = Serve::start(&plugins, config);
    let addr = addr(&serve);
    let idle = connect(&addr);
    let mut kept_alive = connect(&addr);
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // A request handled for longer than the idle timeout is not cut short.
    let (code, v) = serve.submit(&action("slow", "START", "a1", json!({"action": "sleep", "ms": 4000})), true);
    assert_eq!((code, &v["result"]["status"]), (200, &json!(0)), "{v}");
    assert_eq!(read_until_closed(idle), "", "an idle connection is closed");
    let answer = read_until_closed(kept_alive);
    assert!(answer.starts_with("HTTP/1.1 200"), "answered, then closed when idle: {answer}");
}

#[test]
fn at_a_low_open_files_limit_the_daemon_answers_and_its_log_stays_small() {
    allow_many_open_files(4096);
    let plugins = plugins();
    let serve = Serve::start_with_open_files(&plugins, "", (64, 64));
    let addr = addr(&serve);
    let hostile: Vec<TcpStream> = (0..300).map(|_| connect(&addr)).collect();
    for round in 0..5 {
        let (code, v) = serve.request("GET", "/healthz", None);
        assert_eq!(code, 200, "round {round}: {v}");
    }
    let (code, v) = serve.submit(&action("t1", "START", "a1", json!({})), true);
    assert_eq!((code, &v["result"]["status"]), (200, &json!(0)), "{v}");
    drop(hostile);
    let log = serve.log_text();
    assert!(log.lines().count() < 50, "{} log lines:\n{}", log.lines().count(), &log[..log.len().min(4000)]);
    assert!(log.contains("http.max_connections lowered to 32"), "{log}");
}

#[test]
fn the_daemon_raises_its_open_files_limit_and_its_plugins_keep_the_one_it_was_given() {
    let plugins = plugins();
    let serve = Serve::start_with_open_files(&plugins, "", (1024, 8192));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(line.split_whitespace().nth(3), Some("8192"), "the daemon's soft limit: {line}");
    let pid = || serve.request("GET", "/v1/plugins", None).1["plugins"][0]["instances"][0]["pid"].clone();
    let before = pid();
    // A restart spawns the plugin after the daemon raised its own limit.
    let (code, _) = serve.request("POST", "/v1/plugins/a1/restart", None);
    assert_eq!(code, 202);
    assert!(loom_e2e::wait_until(Duration::from_secs(30), || {
        let now = pid();
        now.is_u64() && now != before
    }));
    let (code, v) = serve.submit(&action("who-after", "START", "a1", json!({"action": "whoami"})), true);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"]["result"]["whoami"]["openFiles"], json!([1024, 8192]), "{v}");
}
