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
