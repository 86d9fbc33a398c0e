//! What an installed provisioner relies on: systemd socket activation
//! (`dist/loom-provisioner.socket`), and the man pages and shell completions the Debian
//! package installs, made by `loom-provisioner man` and `loom-provisioner completions`.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use loom_e2e::{Plugins, Serve, action, provisioner, socket_activated, tempdir};
use nix::sys::signal::Signal;
use serde_json::json;

#[test]
fn a_socket_activated_daemon_serves_on_the_passed_socket_and_plugins_do_not_inherit_it() {
    let plugins = Plugins::new();
    plugins.add_test_plugin("automator", "a1", json!({}));
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socket_inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd())).unwrap().ino();
    // The configuration names a Unix socket: if the daemon bound `listen` instead of using
    // the passed socket, this file would appear.
    let unused = plugins.path().join("unused.sock");
    let mut serve = Serve::start_activated(&plugins, socket, &format!("unix:{}", unused.display()), "", &[]);

    assert_eq!(serve.request("GET", "/healthz", None).0, 200);
    let (code, v) = serve.submit(&action("t1", "INSTALL", "a1", json!({})), true);
    assert_eq!((code, v["result"]["status"].as_i64()), (200, Some(0)), "{v}");
    assert!(!unused.exists(), "listen was bound although a socket was passed");
    let log = serve.log_text();
    assert!(log.contains("socket activation: serving on the socket systemd passed, not on listen"), "{log}");

    let (_, v) = serve.request("GET", "/v1/plugins", None);
    let plugin = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "a1").unwrap();
    let pid = plugin["instances"][0]["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for name in ["LISTEN_PID=", "LISTEN_FDS="] {
        assert!(!environ.split('\0').any(|kv| kv.starts_with(name)), "the plugin inherited {name}: {environ:?}");
    }
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    assert!(!held.contains(&format!("socket:[{socket_inode}]")), "the plugin holds the API's socket: {held:?}");

    serve.signal(Signal::SIGTERM);
    assert_eq!(serve.wait_exit(Duration::from_secs(60)), Some(0), "{}", serve.log_text());
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_tcp_socket_is_refused_saying_why() {
    let dir = tempdir();
    let file = std::fs::File::create(dir.path().join("not-a-socket")).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let unbound =
        std::net::TcpStream::connect(std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
            .unwrap();
    for (fd, expected) in [
        (file.as_raw_fd(), "is not a socket"),
        (udp.as_raw_fd(), "not a stream socket"),
        (unbound.as_raw_fd(), "is not listening"),
    ] {
        // Refused before the configuration is read.
        let out = socket_activated(fd).args(["serve", "--config", "/nonexistent"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("socket activation: fd 3 (LISTEN_FDS=1)") && stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("ListenStream="), "says what the unit needs: {stderr}");
    }

    // A socket on every address, and no token: refused as `listen` would be.
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "plugin_dirs = [\".\"]\ndata_dir = \"data\"\n").unwrap();
    let open = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let out = socket_activated(open.as_raw_fd()).args(["serve", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not a loopback address, so token_file must be set in") && stderr.contains("config.toml"),
        "{stderr}"
    );
}

#[test]
fn man_pages_and_completions_name_the_subcommands() {
    let dir = tempdir();
    let out = Command::new(provisioner()).args(["man", "--out"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in [
        "loom-provisioner.1",
        "loom-provisioner-serve.1",
        "loom-provisioner-cluster.1",
        "loom-provisioner-cluster-up.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page} was not written");
        assert!(String::from_utf8_lossy(&out.stdout).contains(page), "{page} not listed");
    }
    let top = std::fs::read_to_string(dir.path().join("loom-provisioner.1")).unwrap();
    assert!(top.contains(".TH loom-provisioner 1"), "{top}");
    for sub in ["loom\\-provisioner\\-serve(1)", "loom\\-provisioner\\-cluster(1)"] {
        assert!(top.contains(sub), "the top page does not point at {sub}:\n{top}");
    }
    let serve = std::fs::read_to_string(dir.path().join("loom-provisioner-serve.1")).unwrap();
    assert!(serve.contains("\\-\\-config"), "{serve}");

    let completions = |shell: &str| {
        let out = Command::new(provisioner()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = completions("bash");
    for word in ["serve", "cluster", "completions"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    // Sourced by bash, it registers a completion for the command.
    let script = dir.path().join("loom-provisioner.bash");
    std::fs::write(&script, &bash).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p loom-provisioner")
        .arg("bash")
        .arg(&script)
        .output()
        .unwrap();
    let registered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && registered.contains("loom-provisioner"),
        "{registered}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(completions("zsh").starts_with("#compdef loom-provisioner"));
    let fish = completions("fish");
    assert!(
        fish.contains("complete -c loom-provisioner") && fish.contains("serve") && fish.contains("cluster"),
        "{fish}"
    );

    let out = Command::new(provisioner()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}
