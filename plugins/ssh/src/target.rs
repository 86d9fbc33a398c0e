//! Where to connect and how to log in, as a Loom task says it.

use std::path::PathBuf;

use loom_plugin_sdk::{Map, Task, Value};

use crate::{HostKeys, SshError};

/// A machine to log in to.
#[derive(Clone)]
pub struct Target {
    /// Address or name.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// How to authenticate.
    pub auth: Auth,
    /// Host keys the server must present (none: record on first contact).
    pub host_keys: HostKeys,
}

/// How to authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// A password.
    Password(String),
    /// A private key file, with its passphrase if it has one.
    KeyFile(PathBuf, Option<String>),
    /// A private key given inline (OpenSSH or PEM text), with its passphrase.
    Key(String, Option<String>),
}

impl std::fmt::Debug for Target {
    // Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.addr())
    }
}

impl Target {
    /// `host:port`, bracketed for IPv6.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the login user is root (then no `sudo`).
    pub fn is_root(&self) -> bool {
        self.user == "root"
    }

    /// Reads the target from a task's config: the address from
    /// `ipaddresses.access_v4`, else `ipaddress`; the login from `ssh-auth` (`user`, then
    /// `password`, `identityfile` or `privatekey`, optional `passphrase` and `port`);
    /// pinned keys from `ssh_host_keys`.
    ///
    /// # Errors
    /// [`SshError::Config`] saying which key is missing or malformed.
    pub fn from_task(task: &Task) -> Result<Target, SshError> {
        let c = &task.config;
        let host = c
            .get("ipaddresses")
            .and_then(|a| a.get("access_v4"))
            .and_then(Value::as_str)
            .or_else(|| c.get("ipaddress").and_then(Value::as_str))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                SshError::Config(
                    "the task has no address: config.ipaddresses.access_v4 and config.ipaddress are both missing (did CONFIRM run?)".into(),
                )
            })?
            .to_owned();
        let auth = c.get("ssh-auth").and_then(Value::as_object).ok_or_else(|| {
            SshError::Config("the task has no config.ssh-auth (the provider's CREATE puts it there)".into())
        })?;
        let mut target = Target::from_ssh_auth(host, auth)?;
        target.host_keys = HostKeys::from_json(c.get("ssh_host_keys"))?;
        Ok(target)
    }

    /// A target from an `ssh-auth` object and an address.
    ///
    /// # Errors
    /// [`SshError::Config`] saying which key is missing or malformed.
    pub fn from_ssh_auth(host: String, auth: &Map<String, Value>) -> Result<Target, SshError> {
        let text = |k: &str| auth.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let user = text("user").ok_or_else(|| SshError::Config("ssh-auth.user is missing".into()))?;
        let passphrase = text("passphrase");
        let method = if let Some(path) = text("identityfile") {
            Auth::KeyFile(PathBuf::from(path), passphrase)
        } else if let Some(key) = text("privatekey").or_else(|| text("private_key")) {
            Auth::Key(key, passphrase)
        } else if let Some(pw) = text("password") {
            Auth::Password(pw)
        } else {
            return Err(SshError::Config(
                "ssh-auth has neither password, identityfile nor privatekey: there is no way to log in".into(),
            ));
        };
        let port = match auth.get("port") {
            None => 22,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| SshError::Config("ssh-auth.port must be a port number".into()))?,
        };
        Ok(Target { host, port, user, auth: method, host_keys: HostKeys::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(config: Value) -> Task {
        serde_json::from_value(serde_json::json!({"taskId": "t", "taskName": "INSTALL", "config": config})).unwrap()
    }

    #[test]
    fn reads_loom_and_coopr_addresses_and_every_auth_method() {
        let t = Target::from_task(&task(serde_json::json!({
            "ipaddress": "10.0.0.1", "ipaddresses": {"access_v4": "203.0.113.9"},
            "ssh-auth": {"user": "root", "password": "pw", "port": 2222}})))
        .unwrap();
        assert_eq!((t.addr(), t.user.as_str()), ("203.0.113.9:2222".to_owned(), "root"));
        assert!(matches!(t.auth, Auth::Password(_)));
        assert!(t.is_root());
        let t = Target::from_task(&task(serde_json::json!({
            "ipaddress": "10.0.0.1", "ssh-auth": {"user": "admin", "identityfile": "/k", "password": "ignored"}})))
        .unwrap();
        assert_eq!(t.addr(), "10.0.0.1:22");
        assert!(matches!(t.auth, Auth::KeyFile(ref p, None) if p == std::path::Path::new("/k")));
        assert_eq!(format!("{t:?}"), "admin@10.0.0.1:22");
    }

    #[test]
    fn says_what_is_missing_without_quoting_secrets() {
        let cases = [
            (serde_json::json!({"ssh-auth": {"user": "u", "password": "hunter2"}}), "no address"),
            (serde_json::json!({"ipaddress": "h"}), "no config.ssh-auth"),
            (serde_json::json!({"ipaddress": "h", "ssh-auth": {"password": "hunter2"}}), "ssh-auth.user is missing"),
            (serde_json::json!({"ipaddress": "h", "ssh-auth": {"user": "u"}}), "no way to log in"),
            (
                serde_json::json!({"ipaddress": "h", "ssh-auth": {"user": "u", "password": "hunter2", "port": "x"}}),
                "port",
            ),
        ];
        for (config, want) in cases {
            let err = Target::from_task(&task(config)).err().unwrap().to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains("hunter2"));
        }
    }
}
