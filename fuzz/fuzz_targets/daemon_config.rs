//! The daemon's configuration parser (`config::parse(path, text)`), on `config.toml` text.
//!
//! Input: the text of a configuration file (UTF-8, as `config::load` requires). The file
//! is taken to live in a scratch folder that holds a valid token file, `token`. Checked:
//! - an accepted configuration has at least one plugins folder, absolute paths (relative
//!   ones are taken from the file's folder), a token of at least 16 characters whenever it
//!   listens off loopback, and a queue of at least one place;
//! - an error names the file and, when it gives a line, a line of the file; it never shows
//!   the token read from `token_file`;
//! - nothing panics.
//!
//! `token_file` makes the parser read a file: inputs that point it anywhere but at a
//! regular file of at most 1 MiB outside /proc, /sys and /dev are skipped, since reading
//! /dev/zero or a FIFO would only measure the machine (the daemon's administrator writes
//! this file; see the README).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loom_fuzz::scratch_dir;
use loom_supervisor::inputs::{Listen, config};

/// The token in the scratch folder's token file.
const TOKEN: &str = "fuzz-token-5f0c1d2e3a4b";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = config_path();
    if !token_file_is_safe(text, path) {
        return;
    }
    match config::parse(path, text) {
        Ok(c) => {
            assert!(!c.plugin_dirs.is_empty(), "plugin_dirs");
            assert!(c.plugin_dirs.iter().all(|d| d.is_absolute()), "plugin_dirs {:?}", c.plugin_dirs);
            assert!(c.data_dir.is_absolute(), "data_dir {:?}", c.data_dir);
            match &c.listen {
                Listen::Unix(p) => assert!(p.is_absolute(), "socket {p:?}"),
                Listen::Tcp(addr) => {
                    assert!(addr.ip().is_loopback() || c.token.is_some(), "{addr} without a token")
                }
            }
            if let Some(token) = &c.token {
                assert!(token.as_str().len() >= 16, "a token of {} characters", token.as_str().len());
            }
            assert!(c.defaults.queue_capacity >= 1, "queue_capacity");
        }
        Err(e) => {
            assert_eq!(e.path, path);
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.matches('\n').count() + 1, "line {line}");
            }
            let shown = e.to_string();
            assert!(shown.starts_with(&path.display().to_string()), "{shown}");
            assert!(!shown.contains(TOKEN), "an error shows the token");
        }
    }
});

/// `config.toml` in a scratch folder that holds `token`.
fn config_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = scratch_dir("daemon_config");
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("scratch token file");
        dir.join("config.toml")
    })
}

/// Whether `token_file`, if the text names one, is a small regular file to read.
fn token_file_is_safe(text: &str, config: &Path) -> bool {
    let Ok(table) = toml::from_str::<toml::Table>(text) else { return true };
    let Some(name) = table.get("token_file").and_then(toml::Value::as_str) else { return true };
    let base = config.parent().unwrap_or(Path::new("/"));
    let Ok(real) = base.join(name).canonicalize() else { return true };
    let special = ["/proc", "/sys", "/dev"].iter().any(|p| real.starts_with(p));
    !special && std::fs::metadata(&real).is_ok_and(|m| m.is_file() && m.len() <= 1 << 20)
}
