//! What the daemon does with input meant to hurt it: more task bytes than it holds, answers
//! too large to read into a tree, task ids that are not names, odd paths, odd JSON, and the
//! bearer scheme in any case.

use std::io::{Read, Write};
use std::time::Duration;

use loom_e2e::{Plugins, Serve, action, wait_until};
use serde_json::{Value, json};

fn serve(extra: &str) -> (Plugins, Serve) {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let serve = Serve::start(&plugins, extra);
    (plugins, serve)
}

/// A START task for a1 whose config carries `pad` bytes of padding.
fn padded(id: &str, test: Value, pad: usize) -> Value {
    let mut t = action(id, "START", "a1", test);
    t["config"]["pad"] = json!("x".repeat(pad));
    t
}

#[test]
fn tasks_held_in_memory_stay_within_the_budget() {
    let config = "max_body_bytes = 1048576\nmax_pending_task_bytes = 2097152\n[http]\nbody_read_timeout_secs = 3\n";
    let (_plugins, serve) = serve(config);
    let long = json!({"action": "sleep", "ms": 600_000});
    for id in ["big1", "big2"] {
        let (code, v) = serve.submit(&padded(id, long.clone(), 900_000), false);
        assert_eq!(code, 202, "{v}");
    }
    // Two of 900 KB are held; a third does not fit in 2 MiB, waits, and is refused.
    let (code, v) = serve.submit(&padded("big3", long.clone(), 900_000), false);
    assert_eq!(code, 503, "{v}");
    let why = v["error"].as_str().unwrap();
    assert!(why.contains("max_pending_task_bytes") && why.contains("try again later"), "{why}");
    assert_eq!(serve.request("GET", "/v1/tasks/big3", None).0, 404, "nothing refused was accepted");
    // A small one still fits.
    let (code, v) = serve.submit(&action("small", "START", "a1", json!({})), true);
    assert_eq!((code, &v["result"]["status"]), (200, &json!(0)), "{v}");
    // Once the big ones end, their room is given back.
    let (code, _) = serve.request("POST", "/v1/plugins/a1/restart", None);
    assert_eq!(code, 202);
    assert!(wait_until(Duration::from_secs(60), || serve.request("GET", "/v1/tasks/big2", None).1["state"] == "done"));
    assert!(wait_until(Duration::from_secs(60), || serve.request("GET", "/v1/tasks/big1", None).1["state"] == "done"));
    let (code, v) = serve.submit(&padded("big3", json!({}), 900_000), true);
    assert_eq!((code, &v["result"]["status"]), (200, &json!(0)), "{v}");
}

#[test]
fn an_answer_too_large_for_a_tree_fails_its_task() {
    let (_plugins, serve) = serve("");
    let keys: serde_json::Map<String, Value> = (0..100_001).map(|i| (format!("k{i}"), json!(i))).collect();
    let (code, v) = serve.submit(&action("many", "START", "a1", json!({"result": keys})), true);
    assert_eq!((code, &v["result"]["status"]), (200, &json!(1)), "{}", &v.to_string()[..300.min(v.to_string().len())]);
    let why = v["result"]["stderr"].as_str().unwrap();
    assert!(why.contains("more than 100000 JSON values"), "{why}");
    let few: serde_json::Map<String, Value> = (0..1000).map(|i| (format!("k{i}"), json!(i))).collect();
    let (code, v) = serve.submit(&action("few", "START", "a1", json!({"result": few})), true);
    assert_eq!(code, 200);
    assert_eq!((&v["result"]["status"], &v["result"]["result"]["k999"]), (&json!(0), &json!(999)));
}

#[test]
fn task_ids_are_names_and_paths_are_decoded() {
    let (_plugins, serve) = serve("");
    for bad in ["a/b", "a b", "50%", "a?b", "a#b", "café", &"x".repeat(300)] {
        let (code, v) = serve.submit(&action(bad, "START", "a1", json!({})), false);
        assert_eq!(code, 400, "{bad}: {v}");
        let why = v["error"].as_str().unwrap();
        assert!(why.contains("\"taskId\""), "{bad}: {why}");
        assert!(!why.contains(bad), "the id is not quoted: {why}");
    }
    let (code, _) = serve.submit(&action("job:7@node+1", "START", "a1", json!({})), true);
    assert_eq!(code, 200);
    let (code, v) = serve.request("GET", "/v1/tasks/job%3A7%40node%2B1", None);
    assert_eq!((code, v["taskId"].as_str()), (200, Some("job:7@node+1")), "{v}");
    assert_eq!(serve.request("GET", "/v1/tasks/%zz", None).0, 400);

    // Location is percent-encoded.
    let addr = serve.url.trim_start_matches("http://");
    let body = action("a:b", "START", "a1", json!({})).to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.to_ascii_lowercase().contains("location: /v1/tasks/a%3ab"), "{answer}");
}

#[test]
fn json_errors_say_what_is_wrong_without_quoting() {
    let (_plugins, serve) = serve("");
    let deep = format!(
        "{{\"taskId\":\"t\",\"taskName\":\"START\",\"config\":{{\"x\":{}{}}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let cases = [
        (deep, "nested deeper than 128 levels"),
        (r#"{"taskId":"t","taskName":"START","config":{"x":1e999999}}"#.to_owned(), "a number too large to read"),
        (r#"{"taskId":"t","taskName":"start"}"#.to_owned(), "must be one of CREATE"),
        (r#"{"taskId":"t","taskName":"START","config":{"pw":"hunter2""#.to_owned(), "ends too soon"),
        (r#"{"taskId":"t","taskName":"START","taskId":"hunter2"}"#.to_owned(), "\"taskId\" appears twice"),
        (
            r#"{"taskId":"t","taskName":"BOOTSTRAP","config":{"automators":[7]}}"#.to_owned(),
            "\"config.automators[0]\" must be an automator's name",
        ),
        (
            r#"{"taskId":"t","taskName":"START","config":{"service":{"action":{"type":7}}}}"#.to_owned(),
            "\"config.service.action.type\" must be a string, found a number",
        ),
    ];
    for (body, want) in cases {
        let (code, v) = serve.request("POST", "/v1/tasks", Some(&body));
        let why = v["error"].as_str().unwrap_or_default();
        assert_eq!(code, 400, "{why}");
        assert!(why.contains(want) && !why.contains("hunter2"), "{want}: {why}");
    }
}

#[test]
fn the_bearer_scheme_is_read_in_any_case() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let token_file = plugins.file("token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let serve = Serve::start(&plugins, &format!("token_file = {:?}\n", token_file.display().to_string()));
    let addr = serve.url.trim_start_matches("http://");
    let status = |auth: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET /v1/plugins HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.split_whitespace().nth(1).unwrap_or_default().to_owned()
    };
    for ok in ["Bearer 0123456789abcdef0123", "bearer 0123456789abcdef0123", "BEARER  0123456789abcdef0123"] {
        assert_eq!(status(&format!("Authorization: {ok}\r\n")), "200", "{ok}");
    }
    for bad in ["Basic 0123456789abcdef0123", "Bearer 0123456789abcdef012", "Bearer", ""] {
        assert_eq!(status(&format!("Authorization: {bad}\r\n")), "401", "{bad}");
    }
}
