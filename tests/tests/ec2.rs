//! The `ec2` provider against moto's EC2 server: the full cycle for several nodes at once,
//! and each way AWS can say no.

use loom_e2e::{Moto, Nodes, Plugins, bin_dir, task};
use serde_json::{Value, json};

const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";

fn add_ec2(plugins: &Plugins) {
    plugins.add(
        "provider",
        "ec2",
        json!({"executable": bin_dir().join("loom-plugin-ec2"), "maxConcurrency": 8,
               "settings": {"pollSecs": 0.2, "confirmTimeoutSecs": 30, "maxAttempts": 2}}),
    );
}

fn provider(endpoint: &str, key: &str) -> Value {
    json!({"name": "ec2", "providertype": "ec2", "provisioner": {
        "api_user": key, "api_password": SECRET, "aws_region": "us-east-1", "endpoint": endpoint,
        "ssh_keypair": "loom", "ssh_key_resource": "/etc/loom/keys/loom.pem", "ssh_user": "admin",
        "security_groups": ["default"]}})
}

#[test]
fn create_confirm_delete_several_instances_at_once() {
    let moto = Moto::start(&[]);
    let plugins = Plugins::new();
    add_ec2(&plugins);
    let mut nodes = Nodes::new(3, |i| {
        json!({"hostname": format!("web-{i}.example"), "flavor": "t3.small", "image": "ami-12c6146b",
               "provider": provider(&moto.endpoint, "AKIAIOSFODNN7EXAMPLE")})
    });
    let created = nodes.phase(&plugins, "create", "CREATE", |_| json!({}));
    let ids: Vec<String> = nodes.configs.iter().map(|c| c["providerid"].as_str().unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| id.starts_with("i-")), "{ids:?}");
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 3, "three instances");
    for c in &nodes.configs {
        assert_eq!(c["ssh-auth"], json!({"user": "admin", "identityfile": "/etc/loom/keys/loom.pem"}));
    }
    let confirmed = nodes.phase(&plugins, "confirm", "CONFIRM", |_| json!({}));
    for c in &nodes.configs {
        let addrs = &c["ipaddresses"];
        assert!(addrs["access_v4"].as_str().is_some_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok()), "{c}");
        assert!(addrs["bind_v4"].as_str().is_some_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok()), "{c}");
        assert!(c["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    }
    let deleted = nodes.phase(&plugins, "delete", "DELETE", |_| json!({}));
    // Deleted means terminated: CONFIRM now refuses them.
    let after = plugins.run(&nodes.tasks("again", "CONFIRM", |_| json!({})), &[]);
    for (i, id) in ids.iter().enumerate() {
        let why = after.result(&format!("again-{i}"))["stderr"].as_str().unwrap().to_owned();
        assert!(
            why.contains(id.as_str()) && (why.contains("is terminated") || why.contains("is shutting-down")),
            "{why}"
        );
    }
    // The secret key went into signatures only.
    for run in [&created, &confirmed, &deleted, &after] {
        assert!(!run.stderr.contains(SECRET), "the secret key reached the log");
        assert!(!serde_json::to_string(&run.results).unwrap().contains(SECRET), "the secret key reached a result");
    }
    plugins.assert_no_leftovers();
}

#[test]
fn bad_credentials_unknown_instances_and_missing_fields_are_named() {
    let open = Moto::start(&[]);
    // This one checks credentials, and knows none.
    let strict = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let plugins = Plugins::new();
    add_ec2(&plugins);
    let create = |id: &str, provider: Value| {
        task(
            id,
            "CREATE",
            json!({"hostname": "h", "flavor": "t3.small", "image": "ami-12c6146b", "provider": provider}),
        )
    };
    let mut no_user = provider(&open.endpoint, "x");
    no_user["provisioner"].as_object_mut().unwrap().remove("api_user");
    let mut no_flavor = create("noflavor", provider(&open.endpoint, "AKIAIOSFODNN7EXAMPLE"));
    no_flavor["config"].as_object_mut().unwrap().remove("flavor");
    let unknown = "i-0123456789abcdef0";
    let tasks = vec![
        create("badcreds", provider(&strict.endpoint, "AKIANOTAREALKEY00000")),
        create("nouser", no_user),
        no_flavor,
        task(
            "confirm-unknown",
            "CONFIRM",
            json!({"providerid": unknown, "provider": provider(&open.endpoint, "AKIAIOSFODNN7EXAMPLE")}),
        ),
        task(
            "delete-unknown",
            "DELETE",
            json!({"providerid": unknown, "provider": provider(&open.endpoint, "AKIAIOSFODNN7EXAMPLE")}),
        ),
    ];
    let run = plugins.run(&tasks, &[]);
    let r = |id: &str| run.result(id).clone();
    let bad = r("badcreds");
    assert_eq!(bad["status"], 201, "AWS refused the CREATE: nothing was created (Coopr's 201): {bad}");
    let why = bad["stderr"].as_str().unwrap();
    assert!(
        why.contains("AWS did not accept the credentials (api_user/api_password)") && why.contains("AuthFailure"),
        "{why}"
    );
    assert!(why.contains("nothing was created"), "{why}");
    assert!(r("nouser")["stderr"].as_str().unwrap().contains("config.provider.provisioner.api_user is missing"));
    assert!(r("noflavor")["stderr"].as_str().unwrap().contains("config.flavor (the instance type"));
    assert_eq!(r("confirm-unknown")["status"], 1);
    assert!(r("confirm-unknown")["stderr"].as_str().unwrap().contains(&format!("instance {unknown} does not exist")));
    assert_eq!(r("delete-unknown")["status"], 0, "DELETE is idempotent");
    assert!(!run.stderr.contains(SECRET) && !serde_json::to_string(&run.results).unwrap().contains(SECRET));
    plugins.assert_no_leftovers();
}

/// A proxy in front of moto that answers the first `refuse` requests the way EC2 answers
/// when it throttles (HTTP 503, `RequestLimitExceeded`) and forwards the rest.
fn throttling_proxy(upstream: &str, refuse: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}/", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (upstream, counter) = (upstream.clone(), counter.clone());
            std::thread::spawn(move || {
                let mut conn = conn;
                // Read one request: the head, then Content-Length bytes of body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                if counter.fetch_add(1, Ordering::SeqCst) < refuse {
                    let body = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors></Response>";
                    let _ = write!(
                        conn,
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                // One request per connection upstream, so the answer ends with the connection.
                let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
                let mut up = std::net::TcpStream::connect(&upstream).unwrap();
                up.write_all(head.as_bytes()).unwrap();
                up.write_all(&buf[head_end..]).unwrap();
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer);
                let _ = conn.write_all(&answer);
            });
        }
    });
    (addr, seen)
}

#[test]
fn throttling_is_retried_with_backoff_and_gives_up_after_max_attempts() {
    let moto = Moto::start(&[]);
    let plugins = Plugins::new();
    add_ec2(&plugins); // maxAttempts 2
    plugins.add(
        "provider",
        "patient",
        json!({"executable": bin_dir().join("loom-plugin-ec2"), "settings": {"pollSecs": 0.2, "maxAttempts": 5}}),
    );
    let (throttled_twice, seen_twice) = throttling_proxy(&moto.endpoint, 2);
    let (always_throttled, _) = throttling_proxy(&moto.endpoint, usize::MAX);
    let create = |id: &str, plugin: &str, endpoint: &str| {
        let mut p = provider(endpoint, "AKIAIOSFODNN7EXAMPLE");
        p["providertype"] = json!(plugin);
        task(id, "CREATE", json!({"hostname": "h", "flavor": "t3.small", "image": "ami-12c6146b", "provider": p}))
    };
    let run = plugins
        .run(&[create("patient", "patient", &throttled_twice), create("gives-up", "ec2", &always_throttled)], &[]);
    let patient = run.result("patient");
    assert_eq!(patient["status"], 0, "two throttled answers, then success: {patient}");
    assert!(patient["result"]["providerid"].as_str().unwrap().starts_with("i-"));
    assert_eq!(seen_twice.load(std::sync::atomic::Ordering::SeqCst), 3, "two refused, the third went through");
    let gave_up = run.result("gives-up");
    assert_eq!(gave_up["status"], 1, "a throttled CREATE may not have been refused outright: {gave_up}");
    let why = gave_up["stderr"].as_str().unwrap();
    assert!(why.contains("Request limit exceeded. (RequestLimitExceeded)"), "{why}");
    plugins.assert_no_leftovers();
}
