//! Ruby plugins (Loom's and Coopr's classes), which run through `loom-ruby-host`: where
//! the host is, the command that runs one, and which of the Ruby libraries their code
//! needs are not installed.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long reading the plugins' libraries may take before it is given up (the plugins
/// then load as if nothing were missing, and the host reports what is when it starts).
const NEEDS_TIMEOUT: Duration = Duration::from_secs(30);

/// The command that runs a Ruby plugin: `ruby loom-ruby-host --class C --dir D
/// --concurrency N`, or why it cannot run here.
///
/// # Errors
/// When `ruby` or the host cannot be found, saying what to install or set.
pub fn command(dir: &Path, classname: &str, concurrency: usize) -> Result<(PathBuf, Vec<String>), String> {
    let ruby = which::which("ruby").map_err(|_| {
        format!("Ruby plugin (classname {classname:?}): `ruby` is not on PATH; install Ruby (apt-get install ruby)")
    })?;
    let host = host().ok_or_else(|| {
        format!(
            "Ruby plugin (classname {classname:?}): the Ruby host loom-ruby-host was not found next to loom-provisioner, \
             in ../share/loom-provisioner/, in the checkout's plugins/ruby-host/ or on PATH; set $LOOM_RUBY_HOST"
        )
    })?;
    let args = vec![
        host.display().to_string(),
        "--class".into(),
        classname.to_owned(),
        "--dir".into(),
        dir.display().to_string(),
        "--concurrency".into(),
        concurrency.to_string(),
    ];
    Ok((ruby, args))
}

/// Where `loom-ruby-host` is: `$LOOM_RUBY_HOST`, next to this binary, in
/// `../share/loom-provisioner/` from it, in a checkout's `plugins/ruby-host/` (from
/// `target/<profile>/`), or on PATH.
pub fn host() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOOM_RUBY_HOST").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let exe_dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    [
        exe_dir.join("loom-ruby-host"),
        exe_dir.join("../share/loom-provisioner/loom-ruby-host"),
        exe_dir.join("../../plugins/ruby-host/loom-ruby-host"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .map(|p| std::path::absolute(&p).unwrap_or(p))
    .or_else(|| which::which("loom-ruby-host").ok())
}

/// The host's own Ruby files: `lib/**/*.rb` beside it, which it loads (and which are
/// checked like the plugin's before it starts).
pub fn host_files(host: &Path) -> Vec<PathBuf> {
    let Some(lib) = std::fs::canonicalize(host).ok().and_then(|h| h.parent().map(|d| d.join("lib"))) else {
        return Vec::new();
    };
    rb_files(&lib, 8)
}

/// Every `*.rb` under `dir`, `depth` folders down at most, links followed, sorted; at most
/// 10,000.
pub fn rb_files(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, level)) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            // Links followed, as Ruby follows them when it loads a file: a linked file or
            // folder is checked like any other (the depth bounds a loop of links).
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() && level < depth {
                stack.push((path, level + 1));
            } else if meta.is_file() && path.extension().is_some_and(|x| x == "rb") && out.len() < 10_000 {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// For each of `dirs` (plugin folders), the Ruby libraries its code needs that are not
/// installed, each said with the gem and the package that provides it. Asks the host
/// (`ruby loom-ruby-host --needs DIR...`, one process for all, with `env`: see the
/// registry), which reads the plugins' files and never runs them.
///
/// # Errors
/// When the host could not be run or did not answer in time; nothing is known then.
pub fn missing_libraries(
    ruby: &Path,
    host: &Path,
    dirs: &[PathBuf],
    env: &[(String, String)],
) -> Result<HashMap<PathBuf, Vec<String>>, String> {
    let mut child = Command::new(ruby)
        .arg(host)
        .arg("--needs")
        .args(dirs)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", ruby.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let read = (&mut stdout).take(16 << 20).read_to_end(&mut text);
        let _ = tx.send(read.map(|_| text));
    });
    let answer = rx.recv_timeout(NEEDS_TIMEOUT);
    if answer.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let text = match answer {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return Err(format!("reading its answer: {e}")),
        Err(_) => return Err(format!("no answer within {} s", NEEDS_TIMEOUT.as_secs())),
    };
    serde_json::from_slice(&text).map_err(|e| format!("its answer is not the expected JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rb_files_go_down_folders_to_the_depth_given() {
        let d = tempfile::tempdir().unwrap();
        for rel in ["a.rb", "lib/b.rb", "lib/x/c.rb", "lib/x/notes.txt"] {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let rel = |v: Vec<PathBuf>| {
            v.iter().map(|p| p.strip_prefix(d.path()).unwrap().display().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(rel(rb_files(d.path(), 4)), ["a.rb", "lib/b.rb", "lib/x/c.rb"]);
        assert_eq!(rel(rb_files(d.path(), 1)), ["a.rb", "lib/b.rb"]);
        // Linked files and folders are followed, as Ruby follows them; a loop ends at the depth.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("d.rb"), "").unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("d.rb"), d.path().join("linked.rb")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join("linkdir")).unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("lib/loop")).unwrap();
        let found = rel(rb_files(d.path(), 3));
        for want in ["linked.rb", "linkdir/d.rb", "lib/loop/a.rb"] {
            assert!(found.iter().any(|f| f == want), "{want} in {found:?}");
        }
    }
}
