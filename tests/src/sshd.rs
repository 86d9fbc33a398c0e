//! A real OpenSSH server that accepts password logins, for tests of the SSH client's
//! password path.

use std::process::Command;
use std::time::Duration;

use crate::net::free_port;
use crate::process::wait_until;

/// An sshd that accepts password logins for one user, on a free loopback port. Needs
/// root. Stopped when dropped.
pub struct PasswordSshd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    /// Its host public key, `ssh-ed25519 AAAA...`.
    pub host_key: String,
}

impl PasswordSshd {
    /// Starts it for `user` and waits until it accepts connections.
    pub fn start(user: &str) -> PasswordSshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("host_key");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen");
        assert!(ok.success());
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nPidFile {}\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\nAllowUsers {user}\n",
                key.display(),
                dir.path().join("pid").display()
            ),
        )
        .expect("write sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.path().join("log"))
            .spawn()
            .expect("start sshd (install openssh-server)");
        let listening =
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(
            listening,
            "sshd did not listen: {}",
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        let host_key = std::fs::read_to_string(key.with_extension("pub")).expect("host key");
        let host_key = host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        PasswordSshd { child, _dir: dir, port, host_key }
    }
}

impl Drop for PasswordSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
