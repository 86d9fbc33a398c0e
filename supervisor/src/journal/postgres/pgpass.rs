//! Passwords from files: the `password_file` of `[journal]`, and libpq's password file
//! (`PGPASSFILE`, else `~/.pgpass`).
//!
//! Both must be readable by their owner only (no group or other bits, as libpq asks of
//! `.pgpass`): a password others can read is a password others know. Errors name the file
//! and the cause, never a line of it.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Longest file read: a password file is a line or a few dozen; a huge one is a mistake,
/// and reading it whole would cost memory for nothing.
const MOST: u64 = 1 << 20;

/// The first line of `file`, without its line ending.
///
/// # Errors
/// The cause (the file is missing, not a regular file, readable by group or others, not
/// UTF-8, too long, or its first line is empty); the caller names the file.
pub(super) fn read_password_file(file: &Path) -> Result<String, String> {
    let text = read_private(file)?;
    let line = text.split('\n').next().unwrap_or_default();
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err("its first line is empty".to_string());
    }
    Ok(line.to_string())
}

/// libpq's password file: `$PGPASSFILE`, else `$HOME/.pgpass`; `env` reads the environment.
pub(super) fn pgpass_path(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    match env("PGPASSFILE") {
        Some(file) if !file.is_empty() => Some(PathBuf::from(file)),
        _ => env("HOME").filter(|home| !home.is_empty()).map(|home| PathBuf::from(home).join(".pgpass")),
    }
}

/// What a password file says for one connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// The password of the first matching line.
    Found(String),
    /// No such file, or no line matches.
    NotFound,
    /// The file is there but cannot be used (the cause): libpq ignores such a file with a
    /// warning, and so do we.
    Ignored(String),
}

/// The connection a password is looked up for. `host` is the host name, or the socket
/// folder of a Unix socket.
pub(super) struct Wanted<'a> {
    pub host: &'a str,
    pub unix_socket: bool,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// Looks up `wanted` in libpq's format: one `host:port:database:user:password` a line,
/// `*` matching anything in the first four fields, `\:` and `\\` escaping, `#` starting a
/// comment line. A Unix-socket connection matches its socket folder or `localhost` (libpq
/// maps only its built-in default socket folder to `localhost`; we have no built-in one, so
/// any socket folder does).
pub(super) fn lookup(file: &Path, wanted: &Wanted<'_>) -> Lookup {
    let text = match read_private(file) {
        Ok(text) => text,
        Err(_) if !file.exists() => return Lookup::NotFound,
        Err(cause) => return Lookup::Ignored(cause),
    };
    let port = wanted.port.to_string();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some([host, line_port, dbname, user, password]) = fields(line) else { continue };
        let host_matches = matches(&host, wanted.host) || (wanted.unix_socket && matches(&host, "localhost"));
        if host_matches && matches(&line_port, &port) && matches(&dbname, wanted.dbname) && matches(&user, wanted.user)
        {
            return Lookup::Found(password);
        }
    }
    Lookup::NotFound
}

/// A field of the file matches `value`: equal to it, or `*`.
fn matches(field: &str, value: &str) -> bool {
    field == "*" || field == value
}

/// The five fields of a line, unescaped; `None` for a line with fewer (libpq skips it).
/// The password is the rest of the line after the fourth unescaped `:`.
fn fields(line: &str) -> Option<[String; 5]> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => chars.next().unwrap_or('\\'),
            ':' if fields.len() < 5 => {
                fields.push(String::new());
                continue;
            }
            c => c,
        };
        fields.last_mut()?.push(c);
    }
    fields.try_into().ok()
}

/// `file`'s text, if it is a regular file that only its owner may read or write.
fn read_private(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".to_string());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "group or others may read or write it (mode {:04o}); chmod 0600 it",
            meta.permissions().mode() & 0o7777
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file).and_then(|f| f.take(MOST + 1).read_to_end(&mut bytes)).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MOST {
        return Err(format!("is longer than {MOST} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    fn wanted<'a>(host: &'a str, unix_socket: bool) -> Wanted<'a> {
        Wanted { host, unix_socket, port: 5432, dbname: "loom", user: "loom" }
    }

    #[test]
    fn a_password_file_gives_its_first_line_without_the_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["s3cret\nsecond line\n", "s3cret\r\n", "s3cret"] {
            let file = private(dir.path(), "pw", text, 0o600);
            assert_eq!(read_password_file(&file).unwrap(), "s3cret", "{text:?}");
        }
    }

    #[test]
    fn a_password_file_others_may_read_is_refused_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            let file = private(dir.path(), "pw", "s3cret\n", mode);
            let err = read_password_file(&file).unwrap_err();
            assert!(err.contains("group or others") && err.contains("chmod 0600"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let empty = private(dir.path(), "empty", "\nsecond\n", 0o600);
        assert_eq!(read_password_file(&empty).unwrap_err(), "its first line is empty");
        assert!(read_password_file(&dir.path().join("missing")).is_err());
        assert_eq!(read_password_file(dir.path()).unwrap_err(), "is not a regular file");
    }

    #[test]
    fn pgpassfile_comes_before_home() {
        let env = |pgpassfile: Option<&'static str>| {
            move |key: &str| match key {
                "PGPASSFILE" => pgpassfile.map(OsString::from),
                "HOME" => Some(OsString::from("/home/op")),
                _ => None,
            }
        };
        assert_eq!(pgpass_path(env(Some("/etc/loom/pgpass"))), Some(PathBuf::from("/etc/loom/pgpass")));
        assert_eq!(pgpass_path(env(None)), Some(PathBuf::from("/home/op/.pgpass")));
        assert_eq!(pgpass_path(env(Some(""))), Some(PathBuf::from("/home/op/.pgpass")));
        assert_eq!(pgpass_path(|_| None), None);
    }

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let file = private(
            dir.path(),
            "pgpass",
            "# a comment:*:*:*:nope\n\
             too:few:fields\n\
             db.example:5432:other:loom:not-this-db\n\
             db.example:5432:loom:loom:p\\:w\\\\d:with:colons\n\
             *:6543:*:*:any-host\n\
             localhost:5432:*:loom:local\n",
            0o600,
        );
        assert_eq!(lookup(&file, &wanted("db.example", false)), Lookup::Found(r"p:w\d:with:colons".into()));
        assert_eq!(
            lookup(&file, &Wanted { port: 6543, ..wanted("elsewhere", false) }),
            Lookup::Found("any-host".into())
        );
        assert_eq!(lookup(&file, &wanted("/run/postgresql", true)), Lookup::Found("local".into()));
        // A TCP host named like a socket folder is not a socket.
        assert_eq!(lookup(&file, &wanted("elsewhere", false)), Lookup::NotFound);
        assert_eq!(lookup(&dir.path().join("missing"), &wanted("db.example", false)), Lookup::NotFound);
    }

    #[test]
    fn a_pgpass_others_may_read_is_ignored_with_a_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = private(dir.path(), "pgpass", "*:*:*:*:s3cret\n", 0o644);
        match lookup(&file, &wanted("db.example", false)) {
            Lookup::Ignored(cause) => assert!(cause.contains("mode 0644") && !cause.contains("s3cret"), "{cause}"),
            other => panic!("{other:?}"),
        }
    }
}
