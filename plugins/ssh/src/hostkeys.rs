//! Host keys as Loom tasks carry them: `ssh_host_keys`, an object from algorithm name to
//! the OpenSSH public key (`{"ed25519": "ssh-ed25519 AAAA..."}`; Coopr's `rsa` held only
//! the base64 part, which is accepted too).

use russh::keys::{HashAlg, PublicKey};
use serde_json::{Map, Value};

use crate::SshError;

/// The pinned host keys of a machine; empty when none were recorded.
#[derive(Debug, Clone, Default)]
pub struct HostKeys(pub Vec<PublicKey>);

impl HostKeys {
    /// Reads `ssh_host_keys`.
    ///
    /// # Errors
    /// [`SshError::Config`] naming the entry that is not a public key.
    pub fn from_json(v: Option<&Value>) -> Result<HostKeys, SshError> {
        let Some(v) = v else { return Ok(HostKeys::default()) };
        let Some(obj) = v.as_object() else {
            return Err(SshError::Config("ssh_host_keys must be an object of algorithm to public key".into()));
        };
        let mut keys = Vec::new();
        for (alg, text) in obj {
            let Some(text) = text.as_str() else {
                return Err(SshError::Config(format!("ssh_host_keys.{alg} must be a string")));
            };
            let key = if text.trim().contains(' ') {
                PublicKey::from_openssh(text.trim()).ok()
            } else {
                russh::keys::parse_public_key_base64(text.trim()).ok()
            };
            keys.push(key.ok_or_else(|| SshError::Config(format!("ssh_host_keys.{alg} is not an SSH public key")))?);
        }
        Ok(HostKeys(keys))
    }

    /// Whether `key` is pinned, or nothing is.
    pub fn accepts(&self, key: &PublicKey) -> bool {
        self.0.is_empty() || self.0.iter().any(|k| k.key_data() == key.key_data())
    }

    /// Fingerprints of the pinned keys, for messages.
    pub fn fingerprints(&self) -> String {
        self.0.iter().map(fingerprint).collect::<Vec<_>>().join(" or ")
    }
}

/// `SHA256:...`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// `{"<algorithm>": "<openssh public key>"}` for a result's `ssh_host_keys`.
pub fn host_keys_json(key: &PublicKey) -> Value {
    let alg = match key.algorithm().as_str() {
        "ssh-ed25519" => "ed25519".to_owned(),
        "ssh-rsa" => "rsa".to_owned(),
        other => other.trim_start_matches("ssh-").to_owned(),
    };
    let mut m = Map::new();
    let mut text = key.to_openssh().unwrap_or_default();
    // Drop the comment: it is the server's business.
    if let Some((alg_and_key, _)) = text.rsplit_once(' ').filter(|(head, _)| head.contains(' ')) {
        text = alg_and_key.to_owned();
    }
    m.insert(alg, Value::String(text));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn reads_openssh_and_bare_base64_and_refuses_junk() {
        let full = HostKeys::from_json(Some(&serde_json::json!({"ed25519": KEY}))).unwrap();
        let bare = HostKeys::from_json(Some(&serde_json::json!({"ed25519": KEY.split(' ').nth(1).unwrap()}))).unwrap();
        assert_eq!(full.0[0], bare.0[0]);
        assert!(full.accepts(&bare.0[0]));
        let err = HostKeys::from_json(Some(&serde_json::json!({"rsa": "not a key"}))).unwrap_err();
        assert!(err.to_string().contains("ssh_host_keys.rsa"));
        assert!(HostKeys::default().accepts(&full.0[0]), "nothing pinned: anything goes");
    }

    #[test]
    fn json_round_trips() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let v = host_keys_json(&key);
        assert_eq!(v, serde_json::json!({"ed25519": KEY}));
        assert!(HostKeys::from_json(Some(&v)).unwrap().accepts(&key));
        assert!(fingerprint(&key).starts_with("SHA256:"));
    }
}
