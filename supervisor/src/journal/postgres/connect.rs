//! Where the journal's PostgreSQL is and how to reach it: `[journal] url` (and
//! `password_file`) read into a [`Target`] that opens connections.
//!
//! The URL is libpq's: `postgres://user:password@host:port/db?param=value&...` or
//! `postgresql://`, a Unix socket as `postgresql:///db?host=/run/postgresql`, or a key/value
//! string (`host=db.example dbname=loom sslmode=verify-full`). Without a host, the Unix
//! socket in `/run/postgresql` (Debian's; libpq's built-in default differs by platform).
//!
//! # TLS (`sslmode`, `sslrootcert`)
//! `disable` never uses TLS. `prefer` (the default, as in libpq) uses TLS when the server
//! offers it, plain TCP when it does not. `require`, `verify-ca` and `verify-full` insist on
//! TLS. Whenever TLS is used, the server's certificate chain is verified: against the
//! certificates in `sslrootcert=FILE`, the system's bundle for `sslrootcert=system`, or
//! Mozilla's roots without `sslrootcert`; `verify-full` also checks the host name.
//!
//! This is stricter than libpq, on purpose: libpq's `prefer` and `require` accept any
//! certificate (so anyone on the path can read the journal, task bodies with their
//! credentials included), and its `prefer` falls back to plain TCP when the TLS handshake
//! fails. Ours fails instead, naming the cause: give the server's CA as `sslrootcert`, or
//! say `sslmode=disable` to go without TLS knowingly. `require` and `verify-ca` are the
//! same check here. On a Unix socket `sslmode` is ignored, as in libpq (PostgreSQL offers no
//! TLS there, and the socket's permissions guard it).
//!
//! # Password
//! From the URL (percent-encoded), else the first line of `password_file` (readable by its
//! owner only), else libpq's password file (`PGPASSFILE`, else `~/.pgpass`, looked up for the
//! first host). A password appears in no log, no error and no [`Target::place`].
//!
//! # Limits
//! `connect_timeout` defaults to 5 s, TCP keepalives detect a dead server in about 11 s
//! (`keepalives_idle` 5, `keepalives_interval` 2, `keepalives_retries` 3), and every
//! statement times out after [`STATEMENT_TIMEOUT`]: a server that hangs never hangs the
//! journal. Each can be changed in the URL (`options=-c statement_timeout=...` for the last).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::config::{Host, SslMode as CrateSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pgpass::{self, Lookup, Wanted};
use super::tls::{self, SslMode};

/// How long a statement may run before the server cancels it.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `application_name` connections show in `pg_stat_activity`, unless the URL says.
const APPLICATION_NAME: &str = "loom-provisioner";

/// The Unix socket folder when the URL names no host.
const DEFAULT_SOCKET_DIR: &str = "/run/postgresql";

/// Parameters this module reads itself: the client crate knows none of their values
/// (`sslmode`) or not the key at all (`sslrootcert`).
const OURS: [&str; 2] = ["sslmode", "sslrootcert"];

/// Why the journal's PostgreSQL cannot be reached. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// `[journal] url` cannot be read (the cause says which part).
    #[error("[journal] url: {0}")]
    Url(String),
    /// `[journal] password_file` cannot be used.
    #[error("[journal] password_file {}: {cause}", file.display())]
    PasswordFile { file: PathBuf, cause: String },
    /// The certificates of `sslrootcert` cannot be used.
    #[error("[journal] url: sslrootcert {}: {cause}", file.display())]
    RootCert { file: PathBuf, cause: String },
    /// The connection failed.
    #[error("connecting to PostgreSQL at {place}: {cause}")]
    Connect {
        /// [`Target::place`].
        place: String,
        /// What the client or the server said, any password taken out.
        cause: String,
        /// Whether trying again later may succeed (the server is away, starting, stopping
        /// or full) rather than never (a refused password, a bad certificate, no such
        /// database).
        transient: bool,
    },
}

impl ConnectError {
    /// Whether trying again later may succeed: see [`ConnectError::Connect`].
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, ConnectError::Connect { transient: true, .. })
    }
}

/// A PostgreSQL server and database, and how to connect to it. Its `Debug` shows only
/// [`Target::place`].
#[derive(Clone)]
pub(crate) struct Target {
    config: postgres::Config,
    /// Set when TLS may be used (a TCP host and a mode other than `disable`).
    tls: Option<rustls::ClientConfig>,
    /// Whether the URL sets `statement_timeout` itself (in `options`).
    own_statement_timeout: bool,
    place: String,
    /// The password as given and as percent-encoded in the URL: taken out of every error.
    secrets: Vec<String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Target").field(&self.place).finish()
    }
}

impl Target {
    /// From `[journal] url` and optional `password_file`; the password file named by
    /// `PGPASSFILE` (else `~/.pgpass`) is read here when neither gives a password.
    ///
    /// # Errors
    /// The URL cannot be read (a bad parameter or value: named, never its value), the
    /// password file cannot be used, or the `sslrootcert` file cannot.
    pub(crate) fn parse(url: &str, password_file: Option<&Path>) -> Result<Target, ConnectError> {
        Target::parse_with(url, password_file, pgpass::pgpass_path(|key| std::env::var_os(key)))
    }

    /// [`Target::parse`] with libpq's password file given (`None`: none).
    fn parse_with(url: &str, password_file: Option<&Path>, pgpass: Option<PathBuf>) -> Result<Target, ConnectError> {
        let split = split_ours(url)?;
        let secrets = split.secrets.clone();
        let scrub = |text: String| scrub(text, &secrets);
        let mut config: postgres::Config =
            split.rest.parse().map_err(|e: postgres::Error| ConnectError::Url(scrub(cause_of(&e))))?;
        let mode = match split.get("sslmode") {
            None => SslMode::Prefer,
            Some(name) => SslMode::from_name(name).ok_or_else(|| {
                ConnectError::Url("sslmode must be disable, prefer, require, verify-ca or verify-full".to_string())
            })?,
        };
        if config.get_hosts().is_empty() {
            config.host_path(DEFAULT_SOCKET_DIR);
        }
        if !split.given("application_name") {
            config.application_name(APPLICATION_NAME);
        }
        set_limits(&mut config, &split);
        let tcp = config.get_hosts().iter().any(|host| matches!(host, Host::Tcp(_)));
        let tls = if tcp && mode != SslMode::Disable {
            let rootcert = split.get("sslrootcert");
            let tls = tls::client_config(mode, rootcert).map_err(|e| match e.file {
                Some(file) => ConnectError::RootCert { file, cause: e.cause },
                None => ConnectError::Url(e.cause),
            })?;
            config.ssl_mode(if mode == SslMode::Prefer { CrateSslMode::Prefer } else { CrateSslMode::Require });
            Some(tls)
        } else {
            // Unix sockets only (where PostgreSQL offers no TLS), or TLS turned off.
            config.ssl_mode(CrateSslMode::Disable);
            None
        };
        let own_statement_timeout = config.get_options().is_some_and(|o| o.contains("statement_timeout"));
        let place = place_of(&config);
        let mut target = Target { config, tls, own_statement_timeout, place, secrets };
        target.find_password(password_file, pgpass)?;
        Ok(target)
    }

    /// For logs and errors: `postgres://user@host:port/db`, or
    /// `postgresql://user@/db?host=/run/postgresql` for a Unix socket; never a password or
    /// any other parameter.
    pub(crate) fn place(&self) -> &str {
        &self.place
    }

    /// A new connection, its statements limited to [`STATEMENT_TIMEOUT`] (unless the URL's
    /// `options` set `statement_timeout`).
    ///
    /// Blocks, up to the connect timeout for each host and address. Call it only from a
    /// thread that is not inside a tokio runtime: the client runs one of its own, and
    /// panics inside another.
    ///
    /// # Errors
    /// [`ConnectError::Connect`]: no host answered, TLS or the password was refused, or the
    /// server refused the connection; [`ConnectError::is_transient`] tells whether to try
    /// again.
    pub(crate) fn connect(&self) -> Result<postgres::Client, ConnectError> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(MakeRustlsConnect::new(tls.clone())),
            None => self.config.connect(postgres::NoTls),
        };
        let mut client = connected.map_err(|e| self.error(&e))?;
        if !self.own_statement_timeout {
            let ms = STATEMENT_TIMEOUT.as_millis();
            client.batch_execute(&format!("SET statement_timeout = {ms}")).map_err(|e| self.error(&e))?;
        }
        Ok(client)
    }

    /// `e` as a [`ConnectError::Connect`], without the password.
    fn error(&self, e: &postgres::Error) -> ConnectError {
        ConnectError::Connect {
            place: self.place.clone(),
            cause: scrub(cause_of(e), &self.secrets),
            transient: is_transient(e),
        }
    }

    /// Sets the password from `password_file` or libpq's password file when the URL has
    /// none.
    fn find_password(&mut self, password_file: Option<&Path>, pgpass: Option<PathBuf>) -> Result<(), ConnectError> {
        if self.config.get_password().is_some() {
            return Ok(());
        }
        if let Some(file) = password_file {
            let password = pgpass::read_password_file(file)
                .map_err(|cause| ConnectError::PasswordFile { file: file.to_path_buf(), cause })?;
            self.set_password(password);
            return Ok(());
        }
        let Some(file) = pgpass else { return Ok(()) };
        let (host, unix_socket) = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => (host.clone(), false),
            Some(Host::Unix(dir)) => (dir.to_string_lossy().into_owned(), true),
            None => return Ok(()),
        };
        let user = self.user();
        let dbname = self.config.get_dbname().map_or_else(|| user.clone(), str::to_string);
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let wanted = Wanted { host: &host, unix_socket, port, dbname: &dbname, user: &user };
        match pgpass::lookup(&file, &wanted) {
            Lookup::Found(password) => self.set_password(password),
            Lookup::NotFound => {}
            Lookup::Ignored(cause) => {
                tracing::warn!(file = %file.display(), "PostgreSQL password file ignored: {cause}");
            }
        }
        Ok(())
    }

    fn set_password(&mut self, password: String) {
        self.secrets.push(percent_encode(&password));
        self.config.password(password.as_bytes());
        self.secrets.push(password);
    }

    /// The user connections log in as: the URL's, else the process's (as the client does).
    fn user(&self) -> String {
        self.config.get_user().map(str::to_string).unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::effective())
                .ok()
                .flatten()
                .map(|user| user.name)
                .unwrap_or_default()
        })
    }
}

/// Connect timeout and keepalives, where the URL does not set them.
fn set_limits(config: &mut postgres::Config, split: &Split) {
    if !split.given("connect_timeout") {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if !split.given("keepalives_idle") {
        config.keepalives_idle(Duration::from_secs(5));
    }
    if !split.given("keepalives_interval") {
        config.keepalives_interval(Duration::from_secs(2));
    }
    if !split.given("keepalives_retries") {
        config.keepalives_retries(3);
    }
}

/// The URL split: the parameters this module reads, and the rest for the client crate.
struct Split {
    /// The URL or key/value string without our parameters.
    rest: String,
    /// Our parameters' values, decoded.
    ours: Vec<(&'static str, String)>,
    /// Every parameter key the URL gives (decoded).
    keys: Vec<String>,
    /// The password in the URL, as written and decoded.
    secrets: Vec<String>,
}

impl Split {
    fn get(&self, key: &str) -> Option<&str> {
        self.ours.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    fn given(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }
}

/// Takes our parameters out of `url` (a URL or a key/value string).
///
/// # Errors
/// A percent-escape or a quoted value that does not end: named, never the value.
fn split_ours(url: &str) -> Result<Split, ConnectError> {
    let url = url.trim();
    let Some(after_scheme) = ["postgres://", "postgresql://"].iter().find_map(|p| url.strip_prefix(p)) else {
        return split_key_value(url);
    };
    let scheme_len = url.len() - after_scheme.len();
    // The client crate takes everything up to the first '@' as user and password.
    let mut secrets = Vec::new();
    let creds_end = after_scheme.find('@');
    if let Some(creds) = creds_end.map(|end| &after_scheme[..end])
        && let Some((_, password)) = creds.split_once(':')
        && !password.is_empty()
    {
        secrets.push(password.to_string());
        secrets.push(percent_decode(password).map_err(|()| ConnectError::Url(bad_escape("the password")))?);
    }
    let query_at = after_scheme[creds_end.unwrap_or(0)..].find('?').map(|at| scheme_len + creds_end.unwrap_or(0) + at);
    let Some(query_at) = query_at else {
        return Ok(Split { rest: url.to_string(), ours: Vec::new(), keys: Vec::new(), secrets });
    };
    let (mut ours, mut keys, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    for pair in url[query_at + 1..].split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).map_err(|()| ConnectError::Url(bad_escape("a parameter's name")))?;
        if key == "password" {
            secrets.push(value.to_string());
            secrets.push(percent_decode(value).map_err(|()| ConnectError::Url(bad_escape("the password")))?);
        }
        match OURS.iter().find(|ours| **ours == key) {
            Some(ours_key) => {
                let value = percent_decode(value).map_err(|()| ConnectError::Url(bad_escape(ours_key)))?;
                ours.push((*ours_key, value));
            }
            None => kept.push(pair),
        }
        keys.push(key);
    }
    let mut rest = url[..query_at].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok(Split { rest, ours, keys, secrets })
}

/// [`split_ours`] for a key/value string: `key=value` pairs apart by white space, a value
/// in single quotes when it holds any, `\` escaping the next character (libpq's rules).
fn split_key_value(text: &str) -> Result<Split, ConnectError> {
    let (mut ours, mut keys, mut kept, mut secrets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace() && *c != '=')).collect();
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // Not naming what came before: it may be a URL of another kind, password and all.
            return Err(ConnectError::Url("neither a postgres:// URL nor key=value pairs".to_string()));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                None if quoted => return Err(ConnectError::Url(format!("the value of {key} has no closing quote"))),
                None => break,
                Some('\'') if quoted => break,
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => value.extend(chars.next()),
                Some(c) => value.push(c),
            }
        }
        if key == "password" {
            secrets.push(value.clone());
        }
        match OURS.iter().find(|ours| **ours == key) {
            Some(ours_key) => ours.push((*ours_key, value)),
            None => kept.push(format!("{key}='{}'", value.replace('\\', r"\\").replace('\'', r"\'"))),
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(ConnectError::Url("is empty".to_string()));
    }
    Ok(Split { rest: kept.join(" "), ours, keys, secrets })
}

fn bad_escape(what: &str) -> String {
    format!("{what} has a bad percent-escape (% and two hex digits)")
}

/// `text` with `%XX` escapes decoded.
fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// `text` percent-encoded as a URL's user information would carry it.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `text` with every secret replaced by `***`.
fn scrub(mut text: String, secrets: &[String]) -> String {
    // Longest first: a secret may hold a shorter one.
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// The redacted place of `config`: see [`Target::place`].
fn place_of(config: &postgres::Config) -> String {
    let user = config.get_user().map(|user| format!("{user}@")).unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    let ports = config.get_ports();
    let port_of = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts = config.get_hosts();
    let all_tcp = hosts.iter().all(|host| matches!(host, Host::Tcp(_)));
    if all_tcp {
        let hosts: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port_of(i)),
                Host::Tcp(name) => format!("{name}:{}", port_of(i)),
                Host::Unix(_) => String::new(),
            })
            .collect();
        return format!("postgres://{user}{}/{db}", hosts.join(","));
    }
    let hosts: Vec<String> = hosts
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let mut place = format!("postgresql://{user}/{db}?host={}", hosts.join(","));
    if ports.iter().any(|port| *port != 5432) {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        place.push_str(&format!("&port={}", ports.join(",")));
    }
    place
}

/// What went wrong, in one line: the server's message for a server error (with its
/// detail and hint), else the client's.
pub(super) fn cause_of(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut cause = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                cause.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                cause.push_str(&format!("; hint: {hint}"));
            }
            cause
        }
        None => {
            // The client's Display names the kind ("error connecting to server"); its
            // source chain says why.
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let text = inner.to_string();
                if !cause.contains(&text) {
                    cause.push_str(&format!(": {text}"));
                }
                source = inner.source();
            }
            cause
        }
    }
}

/// Whether `e` may pass: the server unreachable, starting, stopping or out of connections,
/// the connection lost or timed out; not TLS, authentication or a missing database.
fn is_transient(e: &postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        // 08: connection exception; 53: insufficient resources (too many connections);
        // 57P01-57P03: shutting down or starting up.
        return code.starts_with("08") || code.starts_with("53") || ["57P01", "57P02", "57P03"].contains(&code);
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    let mut io = false;
    while let Some(inner) = source {
        if inner.downcast_ref::<rustls::Error>().is_some() {
            return false;
        }
        if let Some(io_error) = inner.downcast_ref::<std::io::Error>() {
            if io_error.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) {
                return false;
            }
            io = true;
        }
        source = inner.source();
    }
    io
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use loom_testpg::{Options, TestPg};

    use super::*;

    /// A password with every character a URL treats specially.
    const ODD: &str = "p@ss:w/rd%";
    const ODD_ENCODED: &str = "p%40ss%3Aw%2Frd%25";

    fn parse(url: &str) -> Result<Target, ConnectError> {
        Target::parse_with(url, None, None)
    }

    fn place(url: &str) -> String {
        parse(url).unwrap().place().to_string()
    }

    /// Neither the password nor its encoded form in `text`.
    fn assert_secret_free(text: &str, secrets: &[&str]) {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
    }

    #[test]
    fn the_place_names_host_port_database_and_user_and_nothing_else() {
        assert_eq!(
            place("postgres://loom:s3cret@db.example:5433/journal?sslmode=disable&application_name=x"),
            "postgres://loom@db.example:5433/journal"
        );
        assert_eq!(place("postgresql://db.example/journal?sslmode=disable"), "postgres://db.example:5432/journal");
        assert_eq!(
            place("postgres://loom@a.example:5433,b.example:5434/j?sslmode=disable"),
            "postgres://loom@a.example:5433,b.example:5434/j"
        );
        assert_eq!(place("postgres://[::1]:5433/j?sslmode=disable"), "postgres://[::1]:5433/j");
        assert_eq!(place("postgresql:///journal?host=/run/postgresql"), "postgresql:///journal?host=/run/postgresql");
        assert_eq!(
            place("postgresql:///journal?host=/tmp/pg&port=5433&user=u"),
            "postgresql://u@/journal?host=/tmp/pg&port=5433"
        );
        // No host: Debian's socket folder.
        assert_eq!(place("postgresql:///journal"), "postgresql:///journal?host=/run/postgresql");
        assert_eq!(
            place("host=db.example port=6000 dbname=j user=loom password='s3 cret' sslmode=disable"),
            "postgres://loom@db.example:6000/j"
        );
    }

    #[test]
    fn our_parameters_are_taken_out_and_the_others_passed_on() {
        let split =
            split_ours("postgres://u:p%3F@h/d?sslmode=verify-full&connect_timeout=9&sslrootcert=%2Fca.pem").unwrap();
        assert_eq!(split.rest, "postgres://u:p%3F@h/d?connect_timeout=9");
        assert_eq!(split.get("sslmode"), Some("verify-full"));
        assert_eq!(split.get("sslrootcert"), Some("/ca.pem"));
        assert!(split.given("connect_timeout") && !split.given("keepalives_idle"));
        assert_eq!(split.secrets, ["p%3F", "p?"]);
        // A '?' in the password (encoded or not) is not the query.
        let split = split_ours("postgres://u:a?b@h/d").unwrap();
        assert_eq!(split.rest, "postgres://u:a?b@h/d");
        assert!(split.keys.is_empty());
        let split = split_ours(r"host=h dbname='my db' sslmode=require password='it\'s' sslrootcert=/ca.pem").unwrap();
        assert_eq!(split.rest, r"host='h' dbname='my db' password='it\'s'");
        assert_eq!((split.get("sslmode"), split.get("sslrootcert")), (Some("require"), Some("/ca.pem")));
        assert_eq!(split.secrets, ["it's"]);
        let target = parse(r"host=/tmp/x dbname='my db' password='it\'s'").unwrap();
        assert_eq!(target.config.get_dbname(), Some("my db"));
        assert_eq!(target.config.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn defaults_apply_where_the_url_is_silent() {
        let target = parse("postgres://h/d?sslmode=disable").unwrap();
        assert_eq!(target.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(target.config.get_application_name(), Some(APPLICATION_NAME));
        assert_eq!(target.config.get_keepalives_idle(), Duration::from_secs(5));
        assert!(!target.own_statement_timeout);
        let target = parse(
            "postgres://h/d?sslmode=disable&connect_timeout=20&application_name=mine&keepalives_idle=60\
             &options=-c%20statement_timeout%3D0",
        )
        .unwrap();
        assert_eq!(target.config.get_connect_timeout(), Some(&Duration::from_secs(20)));
        assert_eq!(target.config.get_application_name(), Some("mine"));
        assert_eq!(target.config.get_keepalives_idle(), Duration::from_secs(60));
        assert!(target.own_statement_timeout);
    }

    #[test]
    fn sslmode_decides_whether_tls_may_be_used() {
        for (mode, tls, crate_mode) in [
            ("disable", false, CrateSslMode::Disable),
            ("prefer", true, CrateSslMode::Prefer),
            ("require", true, CrateSslMode::Require),
            ("verify-ca", true, CrateSslMode::Require),
            ("verify-full", true, CrateSslMode::Require),
        ] {
            let target = parse(&format!("postgres://h/d?sslmode={mode}")).unwrap();
            assert_eq!(target.tls.is_some(), tls, "{mode}");
            assert_eq!(target.config.get_ssl_mode(), crate_mode, "{mode}");
        }
        // libpq's default.
        assert_eq!(parse("postgres://h/d").unwrap().config.get_ssl_mode(), CrateSslMode::Prefer);
        // Never on a Unix socket, whatever the mode.
        let target = parse("postgresql:///d?host=/run/postgresql&sslmode=verify-full").unwrap();
        assert!(target.tls.is_none());
        assert_eq!(target.config.get_ssl_mode(), CrateSslMode::Disable);
    }

    #[test]
    fn a_bad_url_is_refused_naming_the_part_never_the_password() {
        let cases = [
            ("postgres://u:s3cret@h/d?sslmode=allow", "sslmode must be"),
            ("postgres://u:s3cret@h/d?sslmode=verify-full&sslrootcert=/no/such/ca.pem", "sslrootcert /no/such/ca.pem"),
            ("postgres://u:s3cret@h/d?no_such_option=1", "no_such_option"),
            ("postgres://u:s3cret@h/d?port=s3cret", "port"),
            ("postgres://u:s3c%zzret@h/d", "the password has a bad percent-escape"),
            ("host=h password='s3cret", "no closing quote"),
            ("sqlite:///var/lib/loom/journal.db", "neither a postgres:// URL nor key=value pairs"),
            ("mysql://u:s3cret@h/d", "neither a postgres:// URL nor key=value pairs"),
            ("", "is empty"),
        ];
        for (url, expected) in cases {
            let err = parse(url).unwrap_err();
            let (display, debug) = (err.to_string(), format!("{err:?}"));
            assert!(display.contains(expected), "{url}: {display}");
            assert_secret_free(&display, &["s3cret", "s3c%zzret"]);
            assert_secret_free(&debug, &["s3cret", "s3c%zzret"]);
        }
    }

    #[test]
    fn a_target_shows_only_its_place() {
        let target = parse(&format!("postgres://loom:{ODD_ENCODED}@h:1/d?sslmode=disable")).unwrap();
        assert_eq!(format!("{target:?}"), "Target(\"postgres://loom@h:1/d\")");
        assert_secret_free(target.place(), &[ODD, ODD_ENCODED]);
    }

    #[test]
    fn the_unix_socket_url_connects_with_the_limits_set() {
        let Some(pg) = TestPg::shared() else { return };
        let target = Target::parse(&pg.database(), None).unwrap();
        assert!(target.place().starts_with("postgresql://loom@/t_"), "{}", target.place());
        let mut client = target.connect().unwrap();
        let row = client
            .query_one("SELECT current_setting('application_name'), current_setting('statement_timeout')", &[])
            .unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("loom-provisioner".into(), "30s".into()));
    }

    #[test]
    fn a_stopped_server_is_a_transient_failure() {
        let Some(pg) = TestPg::start() else { return };
        let target = Target::parse(&pg.database(), None).unwrap();
        pg.stop();
        let err = target.connect().err().expect("refused");
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().starts_with(&format!("connecting to PostgreSQL at {}: ", target.place())), "{err}");
        pg.start_again();
        target.connect().unwrap();
        // No such database: not transient.
        let err = Target::parse(&pg.socket_url("no_such_db"), None).unwrap().connect().err().expect("refused");
        assert!(!err.is_transient() && err.to_string().contains("3D000"), "{err}");
    }

    fn password_server() -> Option<TestPg> {
        TestPg::start_with(Options { password: Some(ODD.into()), tcp: true, ..Options::default() })
    }

    #[test]
    fn an_odd_password_percent_encoded_connects_and_a_wrong_one_is_never_shown() {
        let Some(pg) = password_server() else { return };
        let db = pg.create_database();
        let url = |password: &str| format!("postgres://loom:{password}@127.0.0.1:{}/{db}?sslmode=disable", pg.port());
        let mut client = Target::parse(&url(ODD_ENCODED), None).unwrap().connect().unwrap();
        let auth: String = client
            .query_one("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(auth, "scram-sha-256");
        // Wrong, and with the same odd characters (a cause that echoed it would show it).
        let wrong = "Wr0ng:p@ss/w%rd";
        let target = Target::parse(&url("Wr0ng%3Ap%40ss%2Fw%25rd"), None).unwrap();
        let err = target.connect().err().expect("refused");
        let (display, debug) = (err.to_string(), format!("{err:?}"));
        assert!(display.contains("28P01") && display.contains("password authentication failed"), "{display}");
        assert!(!err.is_transient());
        assert_secret_free(&display, &[wrong, "Wr0ng%3Ap%40ss%2Fw%25rd", ODD, ODD_ENCODED]);
        assert_secret_free(&debug, &[wrong, "Wr0ng%3Ap%40ss%2Fw%25rd", ODD, ODD_ENCODED]);
        assert_secret_free(&format!("{target:?}"), &[wrong, "Wr0ng%3Ap%40ss%2Fw%25rd"]);
    }

    #[test]
    fn an_error_echoing_the_password_has_it_taken_out() {
        let secrets = vec!["p%40ss".to_string(), "p@ss".to_string()];
        assert_eq!(scrub("url postgres://u:p%40ss@h and p@ss".into(), &secrets), "url postgres://u:***@h and ***");
    }

    #[test]
    fn a_password_file_readable_by_its_owner_only_is_used() {
        let Some(pg) = password_server() else { return };
        let url = pg.database();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, format!("{ODD}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Target::parse_with(&url, Some(&file), None).unwrap().connect().unwrap();
        // Without it: refused.
        assert!(Target::parse_with(&url, None, None).unwrap().connect().is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Target::parse_with(&url, Some(&file), None).unwrap_err();
        let display = err.to_string();
        assert!(
            display.starts_with(&format!("[journal] password_file {}: group or others", file.display())),
            "{display}"
        );
        assert_secret_free(&display, &[ODD]);
        assert_secret_free(&format!("{err:?}"), &[ODD]);
    }

    #[test]
    fn the_pgpass_file_gives_the_password_for_a_matching_line() {
        let Some(pg) = password_server() else { return };
        let db = pg.create_database();
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join("pgpass");
        let escaped = ODD.replace(':', r"\:");
        let port = pg.port();
        let lines = format!(
            "127.0.0.1:{port}:other_db:loom:wrong\n127.0.0.1:{port}:{db}:loom:{escaped}\nlocalhost:*:*:loom:{escaped}\n"
        );
        std::fs::write(&pgpass, lines).unwrap();
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tcp = format!("postgres://loom@127.0.0.1:{port}/{db}?sslmode=disable");
        Target::parse_with(&tcp, None, Some(pgpass.clone())).unwrap().connect().unwrap();
        // A Unix socket matches `localhost`.
        Target::parse_with(&pg.socket_url(&db), None, Some(pgpass.clone())).unwrap().connect().unwrap();
        // The URL's password comes first.
        let url = format!("postgres://loom:nope@127.0.0.1:{port}/{db}?sslmode=disable");
        assert!(Target::parse_with(&url, None, Some(pgpass.clone())).unwrap().connect().is_err());
        // A pgpass others can read is ignored, as libpq does.
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Target::parse_with(&tcp, None, Some(pgpass)).unwrap().connect().is_err());
    }

    /// A CA and a server certificate it signed for `localhost` only (not 127.0.0.1), made
    /// with the `openssl` command; `None` where it is missing (outside CI).
    struct Certificates {
        dir: tempfile::TempDir,
    }

    impl Certificates {
        fn make() -> Option<Certificates> {
            let dir = tempfile::tempdir().unwrap();
            let openssl = |args: &[&str]| {
                let out = Command::new("openssl").args(args).current_dir(dir.path()).output();
                match out {
                    Ok(out) => {
                        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                        true
                    }
                    Err(_) => {
                        assert!(std::env::var_os("CI").is_none(), "openssl is required in CI");
                        false
                    }
                }
            };
            let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
            let ca = [&ec[..], &["-x509", "-days", "2", "-subj", "/CN=loom test CA", "-keyout", "ca.key", "-out"]];
            let ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"];
            if !openssl(&[&["req"], &ca.concat()[..], &["ca.pem"], &ca_ext[..]].concat()) {
                return None;
            }
            std::fs::write(
                dir.path().join("server.ext"),
                "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            openssl(
                &[&["req"], &ec[..], &["-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"]]
                    .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ]);
            Some(Certificates { dir })
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn server(&self) -> Option<TestPg> {
            TestPg::start_with(Options {
                ssl: Some((self.path("server.crt"), self.path("server.key"))),
                ..Options::default()
            })
        }
    }

    /// Whether `client`'s connection is encrypted, as the server sees it.
    fn encrypted(client: &mut postgres::Client) -> bool {
        client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0)
    }

    #[test]
    fn tls_is_used_and_verified_as_sslmode_says() {
        let Some(certs) = Certificates::make() else { return };
        let Some(pg) = certs.server() else { return };
        let db = pg.create_database();
        let ca = certs.path("ca.pem");
        let url = |host: &str, query: &str| format!("postgres://loom@{host}:{}/{db}?{query}", pg.port());
        let connect = |host: &str, query: &str| Target::parse(&url(host, query), None).unwrap().connect();
        let with_ca = |mode: &str| format!("sslmode={mode}&sslrootcert={}", ca.display());

        for mode in ["prefer", "require", "verify-ca", "verify-full"] {
            let mut client = connect("localhost", &with_ca(mode)).unwrap();
            assert!(encrypted(&mut client), "{mode}");
        }
        assert!(!encrypted(&mut connect("localhost", "sslmode=disable").unwrap()));
        // The certificate names localhost, not 127.0.0.1: only verify-full minds.
        assert!(encrypted(&mut connect("127.0.0.1", &with_ca("verify-ca")).unwrap()));
        assert!(encrypted(&mut connect("127.0.0.1", &with_ca("require")).unwrap()));
        let err = connect("127.0.0.1", &with_ca("verify-full")).err().expect("refused");
        assert!(err.to_string().contains("not valid for name"), "{err}");
        assert!(!err.is_transient(), "{err}");
        // A CA we were not told of: refused even by require and prefer (stricter than libpq).
        for mode in ["prefer", "require", "verify-full"] {
            let err = connect("localhost", &format!("sslmode={mode}")).err().expect("refused");
            assert!(err.to_string().contains("UnknownIssuer"), "{mode}: {err}");
        }
    }

    #[test]
    fn require_against_a_server_without_tls_fails_clearly_and_prefer_goes_plain() {
        let Some(certs) = Certificates::make() else { return };
        let Some(pg) = TestPg::start_with(Options { tcp: true, ..Options::default() }) else { return };
        let db = pg.create_database();
        let url = |query: &str| format!("postgres://loom@localhost:{}/{db}?{query}", pg.port());
        let ca = certs.path("ca.pem");
        let err = Target::parse(&url(&format!("sslmode=require&sslrootcert={}", ca.display())), None)
            .unwrap()
            .connect()
            .err()
            .expect("refused");
        assert!(err.to_string().contains("server does not support TLS"), "{err}");
        let mut client = Target::parse(&url("sslmode=prefer"), None).unwrap().connect().unwrap();
        assert!(!encrypted(&mut client));
    }
}
