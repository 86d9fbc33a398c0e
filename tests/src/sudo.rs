//! A system user with a password and password-less sudo, as on a machine Loom's `shell`
//! automator logs into with a password.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::build::nanos;

/// A system user with a password and password-less sudo, for the tests' lifetime. Needs
/// root. Removed (with its home) when dropped.
pub struct SudoUser {
    /// The name.
    pub name: String,
    /// The password.
    pub password: String,
}

impl SudoUser {
    /// Creates `name` with a random password and `NOPASSWD: ALL` in /etc/sudoers.d.
    pub fn create(name: &str) -> SudoUser {
        let _ = Command::new("userdel").args(["-r", name]).output();
        let ok = Command::new("useradd").args(["-m", "-s", "/bin/sh", name]).status().expect("useradd");
        assert!(ok.success(), "useradd {name}");
        let password = format!("Pw-{}-{}", std::process::id(), nanos() % 1_000_000);
        let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn().expect("chpasswd");
        writeln!(chpasswd.stdin.take().expect("stdin"), "{name}:{password}").expect("write");
        assert!(chpasswd.wait().expect("chpasswd").success());
        let sudoers = format!("/etc/sudoers.d/loom-test-{name}");
        std::fs::write(&sudoers, format!("{name} ALL=(ALL) NOPASSWD: ALL\n")).expect("sudoers");
        SudoUser { name: name.to_owned(), password }
    }
}

impl Drop for SudoUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/etc/sudoers.d/loom-test-{}", self.name));
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
    }
}
