//! The daemon's configuration: `config.toml`.
//!
//! Every error names the file and, when it is about one, the line and key: TOML syntax
//! and type errors come from the parser with their position; the checks made here point
//! at the key's span.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::core::manifest::{Defaults, RestartPolicy};
use crate::core::runas::{Origin, RunAs};
use crate::log::Format;

/// Loom's provisioner listened on 55056.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:55056";

/// `max_body_bytes` when not set.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// `max_pending_task_bytes` when not set.
pub const DEFAULT_MAX_PENDING_TASK_BYTES: usize = 64 * 1024 * 1024;

/// The daemon's settings, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Plugins folders, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// Where the API listens.
    pub listen: Listen,
    /// Where the journal lives.
    pub data_dir: PathBuf,
    /// The bearer token, read from `token_file`.
    pub token: Option<Token>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Bytes of request bodies being read and of tasks accepted and not finished held
    /// at once ([`crate::daemon::budget`]).
    pub max_pending_task_bytes: usize,
    /// How long finished tasks are kept.
    pub retention: Duration,
    /// How long SIGTERM waits for tasks in flight.
    pub drain_grace: Duration,
    /// Log format (the command line may override it).
    pub log_format: Option<Format>,
    /// Log filter (the command line may override it).
    pub log_level: Option<String>,
    /// Values for keys manifests leave out.
    pub defaults: Defaults,
    /// The API's connection limits (`[http]`).
    pub http: HttpLimits,
    /// The journal: SQLite in `data_dir`, or a PostgreSQL server shared by a fleet
    /// (`[journal]`).
    pub journal: crate::journal::Settings,
}

/// The API's connection limits (`[http]`); see [`crate::daemon::http`] for what each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most connections open at once (`max_connections`).
    pub max_connections: usize,
    /// From the first byte of a request to the end of its headers (`header_read_timeout_secs`).
    pub header_read_timeout: Duration,
    /// For a request's whole body (`body_read_timeout_secs`).
    pub body_read_timeout: Duration,
    /// Between requests on a kept-alive connection, and before the first one (`idle_timeout_secs`).
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The API's bearer token. `Debug` shows `Token([redacted])`, so that no printed
/// configuration shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A token with this text, for tests.
    #[cfg(test)]
    pub fn for_tests(text: &str) -> Token {
        Token(text.to_owned())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "http://{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An address that is neither a TCP address nor a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is neither an address like 127.0.0.1:55056 nor a Unix socket path like unix:/run/loom-provisioner/api.sock"
)]
pub struct ListenError {
    /// The address as read, without `http://` and a trailing `/`.
    pub text: String,
}

impl Listen {
    /// Reads `127.0.0.1:55056`, `[::1]:55056`, `unix:/run/x.sock` or `/run/x.sock`.
    ///
    /// # Errors
    /// [`ListenError`] when `text` is neither.
    pub fn parse(text: &str) -> Result<Listen, ListenError> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(Listen::Unix(PathBuf::from(text)));
        }
        let text = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
        text.parse().map(Listen::Tcp).map_err(|_| ListenError { text: text.to_owned() })
    }
}

/// A bad or missing configuration.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the key.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    plugin_dirs: Spanned<Vec<PathBuf>>,
    listen: Option<Spanned<String>>,
    data_dir: Spanned<PathBuf>,
    token_file: Option<Spanned<PathBuf>>,
    max_body_bytes: Option<Spanned<usize>>,
    max_pending_task_bytes: Option<Spanned<usize>>,
    retention_hours: Option<Spanned<f64>>,
    drain_grace_secs: Option<Spanned<f64>>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    journal: RawJournal,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    url: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    name: Option<Spanned<String>>,
    lease_secs: Option<Spanned<f64>>,
    heartbeat_secs: Option<Spanned<f64>>,
    max_claimed: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_connections: Option<Spanned<usize>>,
    header_read_timeout_secs: Option<Spanned<f64>>,
    body_read_timeout_secs: Option<Spanned<f64>>,
    idle_timeout_secs: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<Spanned<String>>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    task_timeout_secs: Option<Spanned<f64>>,
    handshake_timeout_secs: Option<Spanned<f64>>,
    shutdown_grace_secs: Option<Spanned<f64>>,
    cancel_grace_secs: Option<Spanned<f64>>,
    ping_interval_secs: Option<Spanned<f64>>,
    ping_timeout_secs: Option<Spanned<f64>>,
    queue_capacity: Option<usize>,
    restart: Option<RawRestart>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    max_restarts: Option<u32>,
    within_secs: Option<Spanned<f64>>,
    backoff_initial_ms: Option<Spanned<f64>>,
    backoff_max_ms: Option<Spanned<f64>>,
    cool_down_secs: Option<Spanned<f64>>,
}

/// Reads and checks `path`.
///
/// # Errors
/// [`ConfigError`] naming the file, the line and the key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse(path, &text)
}

/// Checks `text`, the contents of `path`.
///
/// # Errors
/// [`ConfigError`] naming the file, the line and the key.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
        path: path.to_path_buf(),
        line: span.map(|s| line_of(s.start)),
        // An error may quote keys from the file; it is shown on one line.
        message: crate::wire::redact::printable(&message).into_owned(),
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_owned();
        match e.span().and_then(|s| key_at(text, s.start)) {
            Some(key) if !message.contains(&format!("`{key}`")) => err(e.span(), format!("{key}: {message}")),
            _ => err(e.span(), message),
        }
    })?;
    // Relative paths are relative to the configuration file.
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };

    if raw.plugin_dirs.get_ref().is_empty() {
        return Err(err(Some(raw.plugin_dirs.span()), "plugin_dirs is empty: name at least one plugins folder".into()));
    }
    let listen = match &raw.listen {
        None => Listen::parse(DEFAULT_LISTEN).map_err(|m| err(None, m.to_string()))?,
        Some(l) => Listen::parse(l.get_ref()).map_err(|m| err(Some(l.span()), format!("listen: {m}")))?,
    };
    let token = match &raw.token_file {
        None => None,
        Some(t) => {
            let file = resolve(t.get_ref());
            // Checked before it is read: it must be a regular file (a FIFO would hang the
            // start, `/dev/zero` fill the memory) that others cannot read.
            if std::fs::metadata(&file).is_ok() {
                check_token_file(&file).map_err(|m| err(Some(t.span()), m))?;
            }
            let token = read_token(&file).map_err(|m| err(Some(t.span()), m))?;
            Some(Token(token))
        }
    };
    if let Listen::Tcp(addr) = &listen
        && !addr.ip().is_loopback()
        && token.is_none()
    {
        let span = raw.listen.as_ref().map(Spanned::span);
        return Err(err(
            span,
            format!("listen: {addr} is not a loopback address, so token_file must be set (bearer-token auth)"),
        ));
    }
    let secs = |v: &Option<Spanned<f64>>, key: &str, unit: f64| -> Result<Option<Duration>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s) => Duration::try_from_secs_f64(*s.get_ref() * unit)
                .map(Some)
                .map_err(|_| err(Some(s.span()), format!("{key} must be a number of at least 0"))),
        }
    };
    let log_format = match &raw.log.format {
        None => None,
        Some(f) => match f.get_ref().as_str() {
            "human" => Some(Format::Human),
            "json" => Some(Format::Json),
            _ => return Err(err(Some(f.span()), "log.format must be \"human\" or \"json\"".into())),
        },
    };
    if let Some(level) = &raw.log.level {
        crate::log::parse_filter(level).map_err(|e| err(None, format!("log.level: {e}")))?;
    }

    let mut d = Defaults::default();
    let rd = &raw.defaults;
    d.task_timeout = secs(&rd.task_timeout_secs, "defaults.task_timeout_secs", 1.0)?.unwrap_or(d.task_timeout);
    d.handshake_timeout =
        secs(&rd.handshake_timeout_secs, "defaults.handshake_timeout_secs", 1.0)?.unwrap_or(d.handshake_timeout);
    d.shutdown_grace = secs(&rd.shutdown_grace_secs, "defaults.shutdown_grace_secs", 1.0)?.unwrap_or(d.shutdown_grace);
    d.cancel_grace = secs(&rd.cancel_grace_secs, "defaults.cancel_grace_secs", 1.0)?.unwrap_or(d.cancel_grace);
    if let Some(p) = secs(&rd.ping_interval_secs, "defaults.ping_interval_secs", 1.0)? {
        d.ping_interval = (!p.is_zero()).then_some(p);
    }
    d.ping_timeout = secs(&rd.ping_timeout_secs, "defaults.ping_timeout_secs", 1.0)?.unwrap_or(d.ping_timeout);
    d.queue_capacity = rd.queue_capacity.unwrap_or(d.queue_capacity).max(1);
    d.run_as = default_run_as(rd).map_err(|(span, m)| err(span, m))?;
    if let Some(r) = &rd.restart {
        let base = RestartPolicy::default();
        d.restart = RestartPolicy {
            max_restarts: r.max_restarts.unwrap_or(base.max_restarts),
            within: secs(&r.within_secs, "defaults.restart.within_secs", 1.0)?.unwrap_or(base.within),
            backoff_initial: secs(&r.backoff_initial_ms, "defaults.restart.backoff_initial_ms", 0.001)?
                .unwrap_or(base.backoff_initial),
            backoff_max: secs(&r.backoff_max_ms, "defaults.restart.backoff_max_ms", 0.001)?.unwrap_or(base.backoff_max),
            cool_down: secs(&r.cool_down_secs, "defaults.restart.cool_down_secs", 1.0)?.unwrap_or(base.cool_down),
        };
    }

    let http = {
        let base = HttpLimits::default();
        let positive = |v: &Option<Spanned<f64>>, key: &str| -> Result<Option<Duration>, ConfigError> {
            match secs(v, key, 1.0)? {
                Some(d) if d.is_zero() => Err(err(v.as_ref().map(Spanned::span), format!("{key} must be more than 0"))),
                d => Ok(d),
            }
        };
        let max_connections = match &raw.http.max_connections {
            Some(n) if *n.get_ref() == 0 => {
                return Err(err(Some(n.span()), "http.max_connections must be at least 1".into()));
            }
            Some(n) => *n.get_ref(),
            None => base.max_connections,
        };
        HttpLimits {
            max_connections,
            header_read_timeout: positive(&raw.http.header_read_timeout_secs, "http.header_read_timeout_secs")?
                .unwrap_or(base.header_read_timeout),
            body_read_timeout: positive(&raw.http.body_read_timeout_secs, "http.body_read_timeout_secs")?
                .unwrap_or(base.body_read_timeout),
            idle_timeout: positive(&raw.http.idle_timeout_secs, "http.idle_timeout_secs")?.unwrap_or(base.idle_timeout),
        }
    };

    let journal = {
        let rj = &raw.journal;
        let base = crate::journal::Settings::default();
        // The URL may hold a password: no message quotes it.
        if let Some(url) = &rj.url {
            let u = url.get_ref();
            let conninfo = u.contains('=') && !u.contains("://");
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://") || conninfo) {
                return Err(err(
                    Some(url.span()),
                    "journal.url must be a PostgreSQL URL (postgres://... or postgresql://...) or key=value connection string; leave it out for SQLite in data_dir".into(),
                ));
            }
        }
        if let Some(name) = &rj.name {
            let n = name.get_ref();
            if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(err(
                    Some(name.span()),
                    "journal.name must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
                ));
            }
        }
        let positive = |v: &Option<Spanned<f64>>, key: &str| -> Result<Option<Duration>, ConfigError> {
            match secs(v, key, 1.0)? {
                Some(d) if d.is_zero() => Err(err(v.as_ref().map(Spanned::span), format!("{key} must be more than 0"))),
                d => Ok(d),
            }
        };
        let lease = positive(&rj.lease_secs, "journal.lease_secs")?.unwrap_or(base.lease);
        let heartbeat = positive(&rj.heartbeat_secs, "journal.heartbeat_secs")?.unwrap_or(base.heartbeat);
        if heartbeat * 2 > lease {
            let span = rj.heartbeat_secs.as_ref().or(rj.lease_secs.as_ref()).map(Spanned::span);
            return Err(err(
                span,
                format!(
                    "journal.heartbeat_secs ({}) must be at most half of journal.lease_secs ({}): a lease must outlast a missed heartbeat",
                    heartbeat.as_secs_f64(),
                    lease.as_secs_f64()
                ),
            ));
        }
        let max_claimed = match &rj.max_claimed {
            Some(n) if *n.get_ref() == 0 => {
                return Err(err(Some(n.span()), "journal.max_claimed must be at least 1".into()));
            }
            Some(n) => *n.get_ref(),
            None => base.max_claimed,
        };
        crate::journal::Settings {
            url: rj.url.as_ref().map(|u| u.get_ref().clone()),
            password_file: rj.password_file.as_ref().map(|p| resolve(p.get_ref())),
            name: rj.name.as_ref().map(|n| n.get_ref().clone()),
            lease,
            heartbeat,
            max_claimed,
        }
    };

    let max_body_bytes = raw.max_body_bytes.as_ref().map_or(DEFAULT_MAX_BODY_BYTES, |b| *b.get_ref());
    let max_pending_task_bytes =
        raw.max_pending_task_bytes.as_ref().map_or(DEFAULT_MAX_PENDING_TASK_BYTES, |b| *b.get_ref());
    if max_pending_task_bytes < max_body_bytes {
        let span = raw.max_pending_task_bytes.as_ref().or(raw.max_body_bytes.as_ref()).map(Spanned::span);
        return Err(err(
            span,
            format!(
                "max_pending_task_bytes ({max_pending_task_bytes}) must be at least max_body_bytes ({max_body_bytes}): one task of the largest size must fit"
            ),
        ));
    }

    Ok(Config {
        path: path.to_path_buf(),
        plugin_dirs: raw.plugin_dirs.get_ref().iter().map(|p| resolve(p)).collect(),
        listen: match listen {
            Listen::Unix(p) => Listen::Unix(resolve(&p)),
            tcp => tcp,
        },
        data_dir: resolve(raw.data_dir.get_ref()),
        token,
        max_body_bytes,
        max_pending_task_bytes,
        retention: secs(&raw.retention_hours, "retention_hours", 3600.0)?.unwrap_or(Duration::from_secs(7 * 24 * 3600)),
        drain_grace: secs(&raw.drain_grace_secs, "drain_grace_secs", 1.0)?.unwrap_or(Duration::from_secs(60)),
        log_format,
        log_level: raw.log.level.clone(),
        defaults: d,
        http,
        journal,
    })
}

/// Longest token file read: a token is one line.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The token in `file`, trimmed: at least 16 characters, from at most 4 KiB of text.
fn read_token(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("token_file: cannot read {}: {e}", file.display());
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(cannot)?
        .take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "token_file: {} holds more than {MAX_TOKEN_FILE_BYTES} bytes; a token is one line",
            file.display()
        ));
    }
    let token = text.trim();
    if token.len() < 16 {
        return Err(format!("token_file: {} holds a token of fewer than 16 characters", file.display()));
    }
    Ok(token.to_owned())
}

/// The token file, like a private key, must not be readable by other users, nor writable
/// by anyone but root or the daemon's user (on its whole path, [`crate::core::trust`]): whoever
/// reads it can use the API.
fn check_token_file(file: &Path) -> Result<(), String> {
    crate::core::trust::check(file, crate::core::trust::Kind::Secret).map(drop).map_err(|e| format!("token_file: {e}"))
}

/// `[defaults] user` and `group`: whom plugins run as when their manifest names nobody
/// (when the daemon runs as root). Each must exist, and neither may be root.
fn default_run_as(rd: &RawDefaults) -> Result<RunAs, (Option<std::ops::Range<usize>>, String)> {
    let name = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().clone());
    let span = |v: &Option<Spanned<String>>| v.as_ref().map(Spanned::span);
    let user = RunAs::defaults(name(&rd.user), None, Origin::Config);
    crate::core::runas::check_defaults(&user).map_err(|m| (span(&rd.user), format!("defaults.user: {m}")))?;
    let group = RunAs::defaults(None, name(&rd.group), Origin::Config);
    crate::core::runas::check_defaults(&group).map_err(|m| (span(&rd.group), format!("defaults.group: {m}")))?;
    Ok(RunAs { user: user.user, group: group.group })
}

/// The dotted key whose line holds `offset` (`defaults.restart.max_restarts`), if that
/// line is a `key = value` line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let table = text[..start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')))
        .map(|t| format!("{}.", t.trim_matches(['[', ']'])))
        .unwrap_or_default();
    Some(format!("{table}{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/loom/config.toml"), text)
    }

    #[test]
    fn a_minimal_config_gets_loom_defaults() {
        let c = parse_text("plugin_dirs = [\"plugins\"]\ndata_dir = \"/var/lib/loom\"\n").unwrap();
        assert_eq!(c.listen, Listen::Tcp("127.0.0.1:55056".parse().unwrap()));
        assert_eq!(c.plugin_dirs, [PathBuf::from("/etc/loom/plugins")], "relative to the file");
        assert_eq!(c.defaults, Defaults::default());
        assert_eq!(c.drain_grace, Duration::from_secs(60));
        assert_eq!(c.http, HttpLimits::default());
    }

    #[test]
    fn every_key_is_read() {
        let c = parse_text(
            r#"
plugin_dirs = ["/a", "b"]
listen = "unix:/run/loom.sock"
data_dir = "data"
max_body_bytes = 1024
max_pending_task_bytes = 4096
retention_hours = 0.5
drain_grace_secs = 3
[log]
format = "json"
level = "debug"
[defaults]
task_timeout_secs = 60
handshake_timeout_secs = 2
ping_interval_secs = 0
queue_capacity = 5
[defaults.restart]
max_restarts = 2
backoff_initial_ms = 10
[http]
max_connections = 50
header_read_timeout_secs = 2.5
body_read_timeout_secs = 30
idle_timeout_secs = 5
"#,
        )
        .unwrap();
        assert_eq!(c.listen, Listen::Unix("/run/loom.sock".into()));
        assert_eq!(c.data_dir, PathBuf::from("/etc/loom/data"));
        assert_eq!((c.max_body_bytes, c.max_pending_task_bytes, c.retention), (1024, 4096, Duration::from_secs(1800)));
        assert_eq!(c.log_format, Some(Format::Json));
        assert_eq!(c.defaults.task_timeout, Duration::from_secs(60));
        assert_eq!(c.defaults.ping_interval, None);
        assert_eq!(c.defaults.restart.max_restarts, 2);
        assert_eq!(c.defaults.restart.backoff_initial, Duration::from_millis(10));
        assert_eq!(
            c.http,
            HttpLimits {
                max_connections: 50,
                header_read_timeout: Duration::from_millis(2500),
                body_read_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let cases = [
            ("plugin_dirs = [\"p\"]\n", "missing field `data_dir`", None),
            ("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\nretention_hours = \"long\"\n", "retention_hours", Some(3)),
            ("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\nlistne = \"x\"\n", "unknown field `listne`", Some(3)),
            (
                "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\nlisten = \"0.0.0.0:80\"\n",
                "not a loopback address, so token_file",
                Some(3),
            ),
            ("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\nlisten = \"somewhere\"\n", "listen:", Some(3)),
            ("plugin_dirs = []\ndata_dir = \"d\"\n", "plugin_dirs is empty", Some(1)),
            ("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n[log]\nformat = \"xml\"\n", "log.format", Some(4)),
            (
                "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\ntoken_file = \"/no/such/token\"\n",
                "token_file: cannot read /no/such/token",
                Some(3),
            ),
            ("plugin_dirs = [\"p\"\n", "", Some(1)),
            (
                "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\nmax_pending_task_bytes = 1000\n",
                "max_pending_task_bytes (1000) must be at least max_body_bytes (16777216)",
                Some(3),
            ),
            ("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n[http]\nmax_connections = 0\n", "http.max_connections", Some(4)),
            (
                "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n[http]\nidle_timeout_secs = 0\n",
                "http.idle_timeout_secs must be more than 0",
                Some(4),
            ),
            (
                "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n[defaults.restart]\nmax_restarts = -1\n",
                "defaults.restart.max_restarts:",
                Some(4),
            ),
        ];
        for (text, want, line) in cases {
            let e = parse_text(text).unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with("/etc/loom/config.toml"), "{shown}");
            assert!(shown.contains(want), "{text:?}: {shown}");
            if line.is_some() {
                assert_eq!(e.line, line, "{text:?}: {shown}");
            }
        }
    }

    #[test]
    fn errors_show_keys_without_control_characters() {
        let e = parse_text("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n\"bad\\u001b[2Jkey\" = 1\n").unwrap_err();
        assert!(!e.to_string().chars().any(char::is_control), "{e}");
        assert!(e.to_string().contains("\\u{1b}"), "{e}");
    }

    #[test]
    fn the_shipped_example_parses() {
        let c =
            parse(Path::new("/etc/loom-provisioner/config.toml"), include_str!("../../../dist/config.toml")).unwrap();
        assert_eq!(c.http, HttpLimits::default(), "dist/config.toml shows the defaults");
        assert_eq!(c.defaults, Defaults::default());
    }

    #[test]
    fn the_default_user_is_read_and_never_root() {
        let base = "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n[defaults]\n";
        let c = parse_text(&format!("{base}user = \"nobody\"\ngroup = \"daemon\"\n")).unwrap();
        assert_eq!(c.defaults.run_as.describe().as_deref(), Some("nobody:daemon"));
        assert_eq!(c.defaults.run_as.user.unwrap().origin, Origin::Config);
        for (text, want, line) in [
            ("user = \"root\"\n", "defaults.user: `user` under [defaults] in the daemon's configuration names root", 4),
            ("user = \"0\"\n", "names root", 4),
            ("user = \"nobody\"\ngroup = \"root\"\n", "defaults.group:", 5),
            ("user = \"no-such-user-x\"\n", "does not exist", 4),
        ] {
            let e = parse_text(&format!("{base}{text}")).unwrap_err();
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = crate::core::trust::test_dir();
        let token = d.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        let text = format!("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\ntoken_file = {:?}\n", token.display().to_string());
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse_text(&text).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("token_file:") && e.message.contains("readable by every user"), "{e}");
        assert!(e.message.contains(&format!("fix: chmod 0600 {}", token.display())), "{e}");
        assert!(!e.to_string().contains("0123456789abcdef"), "never the token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(parse_text(&text).unwrap_err().message.contains("writable by its group"));
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse_text(&text).unwrap();
        assert_eq!(c.token.as_ref().map(Token::as_str), Some("0123456789abcdef0123"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "Debug never shows the token");
        std::fs::write(&token, "x".repeat(5000)).unwrap();
        assert!(parse_text(&text).unwrap_err().message.contains("holds more than 4096 bytes"));
        // A FIFO would hang the start, reading it: refused before.
        std::fs::remove_file(&token).unwrap();
        nix::unistd::mkfifo(&token, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = parse_text(&text).unwrap_err();
        assert!(e.message.contains("token_file:") && e.message.contains("regular file"), "{e}");
    }

    #[test]
    fn listen_forms() {
        assert_eq!(Listen::parse("[::1]:9").unwrap(), Listen::Tcp("[::1]:9".parse().unwrap()));
        assert_eq!(Listen::parse("/run/a.sock").unwrap(), Listen::Unix("/run/a.sock".into()));
        assert_eq!(Listen::parse("http://127.0.0.1:1/").unwrap().to_string(), "http://127.0.0.1:1");
    }

    #[test]
    fn the_journal_section_is_checked_and_never_quotes_the_url() {
        let base = "plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n[journal]\n";
        let c = parse_text(&format!(
            "{base}url = \"postgres://loom:s3cret@db/loom\"\nname = \"prov-a\"\nlease_secs = 20\nheartbeat_secs = 5\n"
        ))
        .unwrap();
        assert_eq!(c.journal.url.as_deref(), Some("postgres://loom:s3cret@db/loom"));
        assert_eq!((c.journal.lease, c.journal.heartbeat), (Duration::from_secs(20), Duration::from_secs(5)));
        assert_eq!(
            parse_text("plugin_dirs = [\"p\"]\ndata_dir = \"d\"\n").unwrap().journal,
            crate::journal::Settings::default()
        );
        for (text, says) in [
            ("url = \"mysql://root:s3cret@db\"\n", "journal.url must be a PostgreSQL URL"),
            ("url = \"postgres://db/loom\"\nheartbeat_secs = 7\n", "at most half of journal.lease_secs"),
            ("name = \"a b\"\n", "journal.name must be"),
            ("max_claimed = 0\n", "journal.max_claimed must be at least 1"),
            ("lease_secs = 0\n", "journal.lease_secs must be more than 0"),
        ] {
            let e = parse_text(&format!("{base}{text}")).unwrap_err();
            assert!(e.message.contains(says), "{text}: {}", e.message);
            assert!(!e.message.contains("s3cret") && e.line.is_some(), "{text}: {e:?}");
        }
    }
}
