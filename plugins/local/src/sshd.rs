//! One machine's sshd: keys, configuration, start, readiness, stop.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::machine::{Folder, Machine, Network};

/// The environment variable every SSH session of a machine carries (sshd's `SetEnv`), so
/// that DELETE can find what the machine's scripts left running.
pub const MACHINE_ENV: &str = "LOOM_LOCAL_MACHINE";

/// Creates the machine's host key and login key with `ssh-keygen`.
pub async fn make_keys(keygen: &Path, folder: &Folder) -> Result<(), String> {
    for (path, comment) in [(folder.host_key(), "loom-local host"), (folder.client_key(), "loom-local login")] {
        let out = Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", keygen.display()))?;
        if !out.status.success() {
            return Err(format!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    let public = std::fs::read(folder.client_key().with_extension("pub")).map_err(|e| e.to_string())?;
    std::fs::write(folder.authorized_keys(), public).map_err(|e| e.to_string())
}

/// The sshd configuration: key login only, for the machine's user, on its address.
/// An `extra` line replaces the default with the same keyword (sshd takes the first value
/// of some keywords and the last of others, so each keyword appears once).
pub fn config(folder: &Folder, m: &Machine, extra: &[String]) -> String {
    let listen = match m.network {
        Network::Loopback => format!("{}:{}", m.address, m.port),
        Network::Netns => format!("0.0.0.0:{}", m.port),
    };
    let defaults = [
        format!("ListenAddress {listen}"),
        format!("HostKey {}", folder.host_key().display()),
        format!("PidFile {}", folder.pid_file().display()),
        format!("AuthorizedKeysFile {}", folder.authorized_keys().display()),
        format!("AllowUsers {}", m.user),
        "PasswordAuthentication no".into(),
        "KbdInteractiveAuthentication no".into(),
        "PubkeyAuthentication yes".into(),
        "PermitRootLogin prohibit-password".into(),
        "UsePAM no".into(),
        "StrictModes no".into(),
        format!("SetEnv {MACHINE_ENV}={}", m.id),
        // Many tasks log in at once; sshd's default of 10 drops the rest.
        "MaxStartups 100".into(),
        "MaxSessions 100".into(),
        "Subsystem sftp internal-sftp".into(),
        "LogLevel INFO".into(),
    ];
    let keyword = |line: &str| line.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
    let overridden: Vec<String> = extra.iter().map(|l| keyword(l)).collect();
    let mut text = format!("# Written by loom-plugin-local for machine {}.\n", m.id);
    for line in defaults.iter().filter(|l| !overridden.contains(&keyword(l))).chain(extra) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Starts sshd (it detaches into the background once its configuration checks out).
/// `prefix` runs it inside a network namespace.
pub async fn start(sshd: &Path, folder: &Folder, prefix: &[String]) -> Result<(), String> {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(sshd);
            c
        }
        None => Command::new(sshd),
    };
    cmd.arg("-f").arg(folder.sshd_config()).arg("-E").arg(folder.log()).stdin(std::process::Stdio::null());
    let out = cmd.output().await.map_err(|e| format!("cannot run {}: {e}", sshd.display()))?;
    if !out.status.success() {
        let mut why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if why.is_empty() {
            why = folder.log_tail();
        }
        return Err(format!("sshd did not start: {why}"));
    }
    Ok(())
}

/// The pid sshd wrote, once it has.
pub fn pid(folder: &Folder) -> Option<i32> {
    std::fs::read_to_string(folder.pid_file()).ok()?.trim().parse().ok()
}

/// Waits until `addr` greets with an SSH banner, or `limit` passes, or sshd dies.
pub async fn wait_ready(folder: &Folder, addr: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match banner(addr).await {
            Ok(b) if b.starts_with("SSH-") => return Ok(()),
            Ok(b) => format!("unexpected greeting {:?}", b.chars().take(40).collect::<String>()),
            Err(e) => e,
        };
        if let Some(p) = pid(folder)
            && !crate::procs::alive(p)
        {
            return Err(format!("sshd (pid {p}) exited: {}", folder.log_tail()));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "sshd did not answer on {addr} within {} s ({last}); its log: {}",
                limit.as_secs(),
                folder.log_tail()
            ));
        }
        // A listening socket gives no signal to a process that is not its owner: try again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn banner(addr: &str) -> Result<String, String> {
    let connect = tokio::net::TcpStream::connect(addr);
    let mut stream = tokio::time::timeout(Duration::from_secs(1), connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .map_err(|_| "no greeting".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A free TCP port on 127.0.0.1. (sshd binds it right after; the window is small, and a
/// lost race shows up as sshd's bind error in CONFIRM.)
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}
