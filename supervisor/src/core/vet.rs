//! The checks a plugin passes when it registers and again before each of its starts (a
//! file can change between a reload and a restart): its manifest, its executable and
//! every folder on their way are trusted ([`crate::core::trust`]); the executable matches the
//! manifest's `sha256`, when it has one; a Ruby plugin's host script and `*.rb` files are
//! trusted too; and whom it runs as is resolved ([`crate::core::runas`]).
//!
//! Everything here reads metadata, hashes a file or looks up a user: blocking work, run
//! on a blocking thread when a process is about to start ([`vet_blocking`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::core::manifest::PluginSpec;
use crate::core::runas::{self, Identity, Plan};
use crate::core::trust::{self, Kind};

/// What the checks found: whom to run the plugin as, and a warning for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vetted {
    /// The user to switch to; `None` to run as the supervisor's user.
    pub identity: Option<Identity>,
    /// Why a configured user is not used (the supervisor is not root).
    pub note: Option<String>,
}

/// Why a plugin must not run. Each message names the file or key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum VetError {
    /// A file it runs or reads (manifest, executable, script, Ruby file), or a folder on
    /// their way, cannot be trusted.
    #[error("refused to run it: {0}")]
    Untrusted(#[from] trust::Untrusted),
    /// The executable could not be read to check its `sha256`.
    #[error("cannot read {} to check its sha256: {source}", path.display())]
    Unreadable {
        /// The executable.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The executable does not match the manifest's `sha256`.
    #[error(
        "refused to run it: {} does not match the manifest's sha256 (the file's SHA-256 is {}); if this file is the one to run, put that in \"sha256\"",
        path.display(),
        hex(actual)
    )]
    Sha256Mismatch {
        /// The executable.
        path: PathBuf,
        /// Its SHA-256 (the manifest's is not repeated: it is in the manifest).
        actual: [u8; 32],
    },
    /// Whom it runs as cannot be resolved.
    #[error(transparent)]
    RunAs(#[from] runas::RunAsError),
    /// The blocking thread running the checks failed ([`vet_blocking`]).
    #[error("the checks before the start failed: {0}")]
    Aborted(tokio::task::JoinError),
}

/// Runs every check on `spec`.
///
/// # Errors
/// [`VetError`]: why the plugin must not run, naming the file or key and the fix.
pub fn vet(spec: &PluginSpec) -> Result<Vetted, VetError> {
    let refused = VetError::Untrusted;
    trust::check(&spec.manifest, Kind::File).map_err(refused)?;
    let exe = trust::check(&spec.executable, Kind::Executable).map_err(refused)?;
    if let Some(want) = &spec.sha256 {
        check_sha256(&exe, want)?;
    }
    // An interpreter's script (`"executable": "python3", "args": ["plugin.py"]`) is code
    // the plugin runs as much as its executable: every argument naming a file (from the
    // plugin's folder, its working directory) is checked like one. So is the Ruby host's.
    for arg in &spec.args {
        let path = spec.dir.join(arg);
        if path.is_file() {
            trust::check(&path, Kind::File).map_err(refused)?;
        }
    }
    if spec.ruby_class.is_some() {
        // The Ruby host runs the code of the *.rb files in the folder and below (what they
        // require_relative), and its own.
        let host = spec.args.first().map(Path::new);
        let host_files = host.map(crate::core::ruby::host_files).unwrap_or_default();
        for rb in crate::core::ruby::rb_files(&spec.dir, 8).iter().chain(&host_files) {
            trust::check(rb, Kind::File).map_err(refused)?;
        }
    }
    Ok(match runas::resolve(&spec.run_as)? {
        Plan::Switch(identity) => Vetted { identity: Some(identity), note: None },
        Plan::Stay { note } => Vetted { identity: None, note },
    })
}

/// [`vet`] on a blocking thread.
///
/// # Errors
/// As [`vet`], and [`VetError::Aborted`] when the thread running the checks panicked or
/// was cancelled.
///
/// # Cancellation
/// Dropping the future leaves the checks to finish on their thread; nothing is started.
pub async fn vet_blocking(spec: &PluginSpec) -> Result<Vetted, VetError> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || vet(&spec)).await.unwrap_or_else(|e| Err(VetError::Aborted(e)))
}

fn check_sha256(exe: &Path, want: &[u8; 32]) -> Result<(), VetError> {
    let got = sha256_of(exe).map_err(|source| VetError::Unreadable { path: exe.to_path_buf(), source })?;
    if &got == want {
        return Ok(());
    }
    Err(VetError::Sha256Mismatch { path: exe.to_path_buf(), actual: got })
}

/// The SHA-256 of the file at `path`.
///
/// # Errors
/// When it cannot be read.
pub fn sha256_of(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::{Entry, parse_entry_with};
    use loom_protocol::PluginKind;
    use serde_json::json;

    fn spec(dir: &Path, body: serde_json::Value) -> PluginSpec {
        let manifest = dir.join("p.json");
        std::fs::write(&manifest, "{}").unwrap();
        let mut body = body;
        body["user"] = json!("nobody");
        let d = crate::core::manifest::Defaults::default();
        match parse_entry_with("p", PluginKind::Automator, &manifest, &body, &d).entry {
            Ok(Entry::Runnable(s)) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_script_named_in_args_is_checked_like_the_executable() {
        use std::os::unix::fs::PermissionsExt;
        let d = crate::core::trust::test_dir();
        let script = d.path().join("plugin.py");
        std::fs::write(&script, "print('hi')\n").unwrap();
        let manifest = json!({"executable": "/bin/sh", "args": ["plugin.py", "--flag"]});
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(vet(&spec(d.path(), manifest.clone())).is_ok());
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o666)).unwrap();
        let why = vet(&spec(d.path(), manifest)).unwrap_err().to_string();
        assert!(why.contains(&script.display().to_string()) && why.contains("chmod go-w"), "{why}");
    }

    #[test]
    fn the_sha256_is_checked_against_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = crate::core::trust::test_dir();
        let exe = d.path().join("run");
        std::fs::write(&exe, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let abc = d.path().join("abc");
        std::fs::write(&abc, "abc").unwrap();
        // FIPS 180-2's test vector.
        assert_eq!(hex(&sha256_of(&abc).unwrap()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let digest = hex(&sha256_of(&exe).unwrap());
        let good = spec(d.path(), json!({"executable": "run", "sha256": digest}));
        assert!(vet(&good).is_ok());
        let bad = spec(d.path(), json!({"executable": "run", "sha256": "0".repeat(64)}));
        let why = vet(&bad).unwrap_err().to_string();
        assert!(why.contains(&format!("{} does not match the manifest's sha256", exe.display())), "{why}");
        assert!(why.contains(&digest), "the actual digest is named: {why}");
        // The file changes after registration: the next start is refused.
        std::fs::write(&exe, "#!/bin/sh\nexit 1\n").unwrap();
        assert!(vet(&good).unwrap_err().to_string().contains("does not match"));
    }
}
