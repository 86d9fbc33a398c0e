//! Records the commit the binary is built from, for `--version` and the
//! `loom_build_info` metric: `$LOOM_COMMIT` when set (a package built from a tarball),
//! else `git rev-parse`, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LOOM_COMMIT");
    let commit = std::env::var("LOOM_COMMIT").ok().filter(|c| !c.trim().is_empty()).or_else(from_git);
    println!("cargo:rustc-env=LOOM_COMMIT={}", commit.as_deref().map_or("unknown", str::trim));
}

/// The checkout's commit (12 hex digits), watching the files that change with it.
fn from_git() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // A new commit moves HEAD, or the branch HEAD names (loose or packed).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ]
    .into_iter()
    .flatten()
    {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}
