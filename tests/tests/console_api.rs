//! The daemon's side of the web console, over real HTTP: its files and their headers, the
//! token traded for a session cookie, the checks against cross-site requests, and the
//! endpoints only the console needed (task listings, the last hour's figures, plugin
//! instances' phases). The console itself is driven in a browser by `console.rs`.

use loom_e2e::{Plugins, Serve, action, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "s3cret-token-0123456789";

fn with_token(plugins: &Plugins) -> Serve {
    let token = plugins.file("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    loom_e2e::chmod(&token, 0o600);
    Serve::start(plugins, &format!("token_file = {:?}", token.display().to_string()))
}

fn csrf() -> (&'static str, &'static str) {
    ("x-loom-csrf", "1")
}

/// Logs in; the `Cookie` header value that carries the session.
fn login(serve: &Serve) -> String {
    let r = serve.raw("POST", "/v1/session", &[csrf()], &json!({"token": TOKEN}).to_string());
    assert_eq!(r.status, 204, "{r:?}");
    let cookie = r.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {r:?}")).to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    cookie.split(';').next().unwrap().to_owned()
}

#[test]
fn the_console_page_is_served_with_a_policy_that_runs_only_its_own_files() {
    let plugins = Plugins::new();
    let serve = with_token(&plugins);
    for (path, kind) in [("/", "text/html"), ("/console.js", "text/javascript"), ("/console.css", "text/css")] {
        let r = serve.raw("GET", path, &[], "");
        assert_eq!(r.status, 200, "{path} needs no token: {r:?}");
        assert!(r.header("content-type").is_some_and(|t| t.starts_with(kind)), "{path}: {r:?}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        // A browser's copy that is current costs no bytes.
        let etag = r.header("etag").unwrap().to_owned();
        let again = serve.raw("GET", path, &[("if-none-match", &etag)], "");
        assert_eq!((again.status, again.body.as_str()), (304, ""));
    }
    // API answers run nothing, whatever a plugin put in them.
    let r = serve.raw("GET", "/v1/session", &[], "");
    assert_eq!(r.header("content-security-policy"), Some("default-src 'none'; frame-ancestors 'none'"));
}

#[test]
fn the_token_is_traded_once_for_a_session_cookie_that_needs_the_csrf_header_to_change_anything() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let serve = with_token(&plugins);
    let session = serve.raw("GET", "/v1/session", &[], "").json();
    assert_eq!(session, json!({"authenticated": false, "tokenRequired": true}));
    assert_eq!(serve.raw("GET", "/v1/plugins", &[], "").status, 401);

    let wrong = serve.raw("POST", "/v1/session", &[csrf()], r#"{"token": "not-the-token-at-all"}"#);
    assert_eq!(wrong.status, 401);
    assert!(!wrong.body.contains("not-the-token-at-all"), "{wrong:?}");
    let forged = serve.raw("POST", "/v1/session", &[], &json!({"token": TOKEN}).to_string());
    assert_eq!(forged.status, 403, "a login a cross-site form could send: {forged:?}");
    assert!(forged.header("set-cookie").is_none());

    let cookie = login(&serve);
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = vec![("cookie", cookie.as_str())];
        h.extend_from_slice(extra);
        h
    };
    assert_eq!(serve.raw("GET", "/v1/session", &with(&[]), "").json()["authenticated"], true);
    assert_eq!(serve.raw("GET", "/v1/plugins", &with(&[]), "").status, 200, "reading needs only the cookie");
    let task = action("c1", "INSTALL", "a1", json!({})).to_string();
    let r = serve.raw("POST", "/v1/tasks", &with(&[]), &task);
    assert_eq!(r.status, 403, "changing needs the header too: {r:?}");
    assert!(r.body.contains("X-Loom-CSRF"), "{r:?}");
    let r = serve.raw("POST", "/v1/tasks", &with(&[csrf(), ("origin", "http://evil.example")]), &task);
    assert_eq!(r.status, 403, "another origin: {r:?}");
    let r = serve.raw("POST", "/v1/tasks", &with(&[csrf(), ("sec-fetch-site", "cross-site")]), &task);
    assert_eq!(r.status, 403, "another site: {r:?}");
    let r = serve.raw("POST", "/v1/tasks", &with(&[csrf()]), &task);
    assert_eq!(r.status, 202, "{r:?}");
    // The bearer token still works alone, as for every client but a browser.
    assert_eq!(serve.request("GET", "/v1/tasks/c1", None).0, 200);
    // A provider's result legitimately returns credentials; the console is never shown them.
    let returns =
        action("c2", "INSTALL", "a1", json!({"result": {"ssh-auth": {"user": "root", "password": "pw-back-4321"}}}));
    assert_eq!(serve.submit(&returns, true).0, 200);
    let (_, raw) = serve.request("GET", "/v1/tasks/c2", None);
    assert_eq!(
        raw["result"]["result"]["ssh-auth"]["password"], "pw-back-4321",
        "API clients get the result whole: {raw}"
    );
    let shown = serve.raw("GET", "/v1/tasks/c2", &with(&[]), "");
    assert!(!shown.body.contains("pw-back-4321"), "{shown:?}");
    assert_eq!(shown.json()["result"]["result"]["ssh-auth"]["user"], "root");
    let (_, masked) = serve.request("GET", "/v1/tasks/c2?masked=true", None);
    assert_eq!(masked["result"]["result"]["ssh-auth"]["password"], "[redacted]");

    let out = serve.raw("DELETE", "/v1/session", &with(&[csrf()]), "");
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")), "{out:?}");
    assert_eq!(serve.raw("GET", "/v1/plugins", &with(&[]), "").status, 401, "logged out");
    assert_eq!(serve.raw("GET", "/v1/plugins", &[("cookie", "loom_session=00ff")], "").status, 401);
    assert!(!serve.log_text().contains(TOKEN), "the token is in the log");
}

#[test]
fn a_daemon_without_a_token_refuses_cross_site_changes_and_rebound_names() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let serve = Serve::start(&plugins, "");
    assert_eq!(serve.raw("GET", "/v1/session", &[], "").json(), json!({"authenticated": true, "tokenRequired": false}));
    let task = action("o1", "INSTALL", "a1", json!({})).to_string();
    let cross =
        serve.raw("POST", "/v1/tasks", &[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "no-cors")], &task);
    assert_eq!(cross.status, 403, "{cross:?}");
    let other = serve.raw("POST", "/v1/tasks", &[("origin", "http://evil.example")], &task);
    assert_eq!(other.status, 403, "{other:?}");
    let rebound = serve.raw("GET", "/v1/plugins", &[("host", "evil.example"), ("sec-fetch-mode", "cors")], "");
    assert_eq!(rebound.status, 403, "{rebound:?}");
    assert_eq!(serve.request("GET", "/v1/tasks/o1", None).0, 404, "nothing was accepted");
    // What a cross-site form could post, in a browser too old to say where it came from.
    for form in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = serve.raw("POST", "/v1/tasks", &[("content-type", form)], &task);
        assert_eq!(r.status, 403, "{form}: {r:?}");
        assert!(r.body.contains("Content-Type: application/json"), "{r:?}");
    }
    assert_eq!(serve.request("GET", "/v1/tasks/o1", None).0, 404, "nothing was accepted");
    let r = serve.raw("POST", "/v1/tasks", &[("content-type", "application/json")], &task);
    assert_eq!(r.status, 202, "a client that is no browser: {r:?}");
}

fn listed(serve: &Serve, query: &str) -> (Vec<String>, Value) {
    let (code, v) = serve.request("GET", &format!("/v1/tasks?{query}"), None);
    assert_eq!(code, 200, "{query}: {v}");
    let ids = v["tasks"].as_array().unwrap().iter().map(|t| t["taskId"].as_str().unwrap().to_owned()).collect();
    (ids, v["next"].clone())
}

#[test]
fn tasks_are_listed_newest_first_filtered_and_paged_and_the_hour_counts_them() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    plugins.add_test_plugin("automator", "a2", json!({}));
    let serve = Serve::start(&plugins, "");
    let mut all = Vec::new();
    for i in 0..6 {
        let (plugin, status) = if i % 2 == 0 { ("a1", 0) } else { ("a2", 3) };
        let mut t =
            action(&format!("l{i}"), if i < 3 { "INSTALL" } else { "START" }, plugin, json!({"status": status}));
        t["clusterId"] = json!(if i < 4 { "c-7" } else { "c-8" });
        assert_eq!(serve.submit(&t, true).0, 200);
        all.push(format!("l{i}"));
    }
    let newest_first: Vec<String> = all.iter().rev().cloned().collect();
    assert_eq!(listed(&serve, "").0, newest_first);
    assert_eq!(listed(&serve, "plugin=a1").0, ["l4", "l2", "l0"]);
    assert_eq!(listed(&serve, "name=START&cluster=c-7").0, ["l3"]);
    assert_eq!(listed(&serve, "state=done&cluster=c-8").0, ["l5", "l4"]);
    assert!(listed(&serve, "state=queued").0.is_empty());
    let (page, next) = listed(&serve, "limit=4");
    assert_eq!(page, newest_first[..4]);
    let (rest, end) = listed(&serve, &format!("limit=4&before={}", next.as_str().unwrap()));
    assert_eq!((rest, end), (newest_first[4..].to_vec(), Value::Null));
    let (_, v) = serve.request("GET", "/v1/tasks?limit=1", None);
    let first = &v["tasks"][0];
    assert_eq!(
        (first["plugin"].as_str(), first["status"].as_i64(), first["clusterId"].as_str()),
        (Some("a2"), Some(3), Some("c-8"))
    );
    assert!(first.get("result").is_none() && first.get("config").is_none(), "a listing holds no bodies: {first}");
    let (_, one) = serve.request("GET", "/v1/tasks/l5", None);
    assert_eq!((one["plugin"].as_str(), one["clusterId"].as_str()), (Some("a2"), Some("c-8")), "{one}");
    let (code, v) = serve.request("GET", "/v1/tasks?state=finished", None);
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().starts_with("state:"), "{v}");

    let (code, stats) = serve.request("GET", "/v1/stats", None);
    assert_eq!(code, 200);
    let minutes = stats["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let sum = |field: &str| minutes.iter().map(|m| m[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("finished"), sum("failed")), (6, 3), "{stats}");
    assert_eq!(stats["journal"]["ok"], true);
    assert!(stats["version"].is_string() && stats["uptimeSecs"].is_u64(), "{stats}");
}

#[test]
fn plugin_instances_say_busy_and_backing_off_with_the_crash_and_its_stderr() {
    let plugins = Plugins::new();
    let gate = plugins.file("gate");
    plugins.add_test_plugin("automator", "a1", json!({}));
    let serve = Serve::start(&plugins, "");
    let instance = |serve: &Serve| -> Value {
        let (_, v) = serve.request("GET", "/v1/plugins", None);
        v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "a1").unwrap()["instances"][0].clone()
    };
    let waiting = action("b1", "INSTALL", "a1", json!({"action": "wait-file", "path": gate}));
    assert_eq!(serve.submit(&waiting, false).0, 202);
    assert!(wait_until(Duration::from_secs(60), || instance(&serve)["phase"] == "busy"), "{}", instance(&serve));
    std::fs::write(&gate, "").unwrap();
    assert_eq!(serve.submit(&waiting, true).1["result"]["status"], 0);
    let (_, v) = serve.submit(&action("b2", "INSTALL", "a1", json!({"action": "crash"})), true);
    assert_ne!(v["result"]["status"], 0, "{v}");
    let crashed = instance(&serve);
    assert!(crashed["restarts"].as_u64() >= Some(1), "{crashed}");
    let stderr: Vec<&str> = crashed["lastStderr"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(stderr.iter().any(|l| l.contains("about to crash: boom")), "{crashed}");
    assert!(!crashed["lastError"].as_str().unwrap_or_default().contains("boom"), "stderr apart: {crashed}");
    // A restart asked for is counted apart from the crashes.
    let crashes = crashed["restarts"].clone();
    assert_eq!(crashed["requestedRestarts"], 0);
    assert_eq!(serve.request("POST", "/v1/plugins/a1/restart", None).0, 202);
    assert!(wait_until(Duration::from_secs(60), || instance(&serve)["requestedRestarts"] == 1), "{}", instance(&serve));
    assert_eq!(instance(&serve)["restarts"], crashes);
}
