//! The workspace and what is built from it: paths, the binaries (built once per test
//! process, so that no test runs a stale one), and temporary folders the supervisor
//! trusts.
//!
//! The supervisor refuses plugins under a folder every user can write (/tmp included), so
//! temporary folders live in the build's `target/tmp` ([`tempdir`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The folder with the workspace's binaries, built (or rebuilt) once per test process, in
/// the test's own profile, so that tests never run stale binaries.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<this test> -> target/<profile>
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
        // The folder is named after the profile, but "debug" for the dev profile. (Built
        // without it, a release test ran the last release build of the daemon, however old.)
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(name) => name.to_owned(),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bins", "--profile", &profile])
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        dir
    })
}

/// A temporary folder the supervisor trusts: under `target/tmp` of this build (owned by
/// whoever builds, not writable by others), not under /tmp. Mode 0755, so that plugins
/// running as another user can reach what a test puts there.
pub fn tempdir() -> tempfile::TempDir {
    // target/<profile>/deps/<this test> -> target/tmp
    let exe = std::env::current_exe().expect("current_exe");
    let base = exe.ancestors().nth(3).expect("target dir").join("tmp");
    std::fs::create_dir_all(&base).expect("target/tmp");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    chmod(dir.path(), 0o755);
    dir
}

/// Sets `path`'s permission bits.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// The `loom-provisioner` binary.
pub fn provisioner() -> PathBuf {
    bin_dir().join("loom-provisioner")
}

/// The misbehaving test plugin.
pub fn test_plugin() -> PathBuf {
    workspace().join("tests/plugins/testplugin.py")
}

/// Nanoseconds since the epoch: part of names that tests running in parallel (and test
/// processes started one after another) must not share.
pub(crate) fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// This checkout's commit as the binaries built from it name it (`--version`,
/// `loom_build_info`): 12 hex digits, or "unknown" outside git.
pub fn checkout_commit() -> String {
    let out =
        std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(workspace()).output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}
