//! The throwaway server starts, answers, restarts, stops, and leaves nothing running.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use loom_testpg::{Options, TestPg};

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses, which may hold spaces.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits (generously: a loaded machine) until process `pid` has ended; false if it never
/// does. A process that is not our child gives no signal when it ends, hence the polling.
fn ends(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ended(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_server_answers_on_its_socket_and_leaves_nothing_when_dropped() {
    let Some(pg) = TestPg::start() else { return };
    assert_eq!(pg.psql("postgres", "SELECT 1").trim(), "1");
    let url = pg.database();
    assert!(url.starts_with("postgresql:///t_0?host=/"), "{url}");
    assert!(url.ends_with("&user=loom"), "{url}");
    assert_eq!(pg.psql("t_0", "SELECT current_database()").trim(), "t_0");
    assert_eq!(pg.create_database(), "t_1");
    assert!(pg.socket_dir().join(".s.PGSQL.5432").exists());
    // No TCP listener: nothing but the socket.
    assert_eq!(pg.psql("postgres", "SHOW listen_addresses").trim(), "");
    let pid = pg.pid().expect("the server runs");
    let folder = pg.socket_dir().to_path_buf();
    drop(pg);
    assert!(ends(pid), "postgres {pid} still runs after drop");
    assert!(!folder.exists(), "{} is left behind", folder.display());
}

#[test]
fn data_survives_restart_and_stop_then_start_again() {
    let Some(pg) = TestPg::start() else { return };
    let db = pg.create_database();
    pg.psql(&db, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)");
    let before = pg.pid().expect("the server runs");
    pg.restart();
    assert!(ends(before), "the old server {before} still runs after restart");
    assert_eq!(pg.psql(&db, "SELECT n FROM kept").trim(), "7");
    let pid = pg.pid().expect("the server runs again");
    pg.stop();
    assert!(pg.pid().is_none());
    assert!(ends(pid));
    let refused = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-h"])
        .arg(pg.socket_dir())
        .args(["-U", "loom", "-d", "postgres", "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a stopped server answered");
    pg.start_again();
    assert_eq!(pg.psql(&db, "SELECT n FROM kept").trim(), "7");
}

/// Run by `the_shared_server_is_stopped_when_the_test_binary_exits` in a child process.
#[test]
#[ignore = "run by another test, in a process of its own"]
fn child_uses_the_shared_server() {
    let Some(pg) = TestPg::shared() else { return };
    assert!(std::ptr::eq(pg, TestPg::shared().unwrap()), "one server per binary");
    assert_eq!(pg.psql("postgres", "SELECT 1").trim(), "1");
    println!("SHARED {} {}", pg.pid().unwrap(), pg.socket_dir().display());
}

#[test]
fn the_shared_server_is_stopped_when_the_test_binary_exits() {
    if TestPg::start().is_none() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_uses_the_shared_server", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find_map(|l| l.strip_prefix("SHARED ")).expect(&stdout);
    let (pid, folder) = line.split_once(' ').unwrap();
    assert!(ends(pid.parse().unwrap()), "the shared server {pid} outlived its test binary");
    assert!(!Path::new(folder).exists(), "{folder} is left behind");
}

#[test]
fn commits_are_synced_to_disk_only_when_asked() {
    let Some(pg) = TestPg::start() else { return };
    assert_eq!(pg.psql("postgres", "SHOW fsync").trim(), "off");
    drop(pg);
    let Some(pg) = TestPg::start_with(Options { fsync: true, ..Options::default() }) else { return };
    assert_eq!(pg.psql("postgres", "SHOW fsync").trim(), "on");
    pg.restart();
    assert_eq!(pg.psql("postgres", "SHOW fsync").trim(), "on", "after a restart");
}

#[test]
fn a_password_is_required_when_one_is_set() {
    let Some(pg) =
        TestPg::start_with(Options { password: Some("s3cret p@ss".into()), tcp: true, ..Options::default() })
    else {
        return;
    };
    // create_database passes the password; a database made means it was accepted.
    let db = pg.create_database();
    for (host, password) in [(pg.socket_dir().to_string_lossy().into_owned(), "wrong"), ("127.0.0.1".into(), "wrong")] {
        let out = Command::new(pg.bin_dir().join("psql"))
            .args(["-X", "-w", "-h", &host, "-p", &pg.port().to_string(), "-U", "loom", "-d", &db, "-c", "SELECT 1"])
            .env("PGPASSWORD", password)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{host} let a wrong password in");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("password authentication failed"), "{host}: {stderr}");
    }
}

#[test]
fn tls_is_offered_over_tcp_when_a_certificate_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let Ok(made) = made else {
        assert!(std::env::var_os("CI").is_none(), "openssl is required in CI");
        return;
    };
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let Some(pg) = TestPg::start_with(Options { ssl: Some((cert, key)), ..Options::default() }) else {
        return;
    };
    assert_ne!(pg.port(), 5432);
    let out = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "loom", "-d", "postgres"])
        .args(["-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
        .env("PGSSLMODE", "require")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
}
