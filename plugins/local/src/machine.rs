//! A machine's record and folder: `<stateDir>/<id>/machine.json` plus its keys, sshd
//! configuration, pid file and log.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How machines are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// An sshd on a free port of 127.0.0.1.
    Loopback,
    /// A network namespace with its own address on a bridge; sshd on port 22 (root only).
    Netns,
}

/// What CREATE recorded about a machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub id: String,
    pub network: Network,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// The network namespace (netns mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The host side of the machine's veth pair (netns mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth: Option<String>,
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub node_id: Option<String>,
}

/// The files of one machine.
pub struct Folder {
    pub dir: PathBuf,
}

impl Folder {
    pub fn new(state_dir: &Path, id: &str) -> Folder {
        Folder { dir: state_dir.join(id) }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("machine.json")
    }
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    pub fn authorized_keys(&self) -> PathBuf {
        self.dir.join("authorized_keys")
    }
    pub fn sshd_config(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("sshd.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    pub fn load(&self) -> std::io::Result<Machine> {
        let text = std::fs::read(self.record())?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }

    /// Writes the record atomically: a half-written record must never be read.
    pub fn save(&self, m: &Machine) -> std::io::Result<()> {
        let tmp = self.dir.join("machine.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(tmp, self.record())
    }

    /// The last lines of sshd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

/// Every machine recorded under `state_dir`.
pub fn all(state_dir: &Path) -> Vec<Machine> {
    let Ok(entries) = std::fs::read_dir(state_dir) else { return Vec::new() };
    entries.flatten().filter_map(|e| Folder { dir: e.path() }.load().ok()).collect()
}
