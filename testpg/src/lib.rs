//! A throwaway PostgreSQL server for tests.
//!
//! [`TestPg::start`] runs `initdb` and `pg_ctl start` in a fresh temporary folder: a private
//! server that listens on a Unix socket in that folder (no TCP port, no global name a
//! parallel test run could collide with), trusts user `loom`, and does not fsync (the tests
//! do not survive power loss, they test the code above). [`TestPg::start_with`] adds a
//! password (SCRAM), TLS, a listener on a free loopback port, and fsync (for benchmarks). [`TestPg::shared`] is one
//! server for the whole test binary, stopped when it exits.
//!
//! As root the folder belongs to `nobody` and the server runs as `nobody` (PostgreSQL refuses
//! to run as root); otherwise as the current user.
//!
//! The binaries are found in `$LOOM_PG_BIN`, then on `PATH`, then in the highest
//! `/usr/lib/postgresql/*/bin` (where Debian puts them, off `PATH`). When there are none,
//! [`TestPg::start`] prints why the tests that use it are skipped and returns `None`; with
//! `CI` set it panics instead, so that CI never skips silently. Any other failure panics
//! with the server's log: this is a test helper, and a panic fails the test.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::{Gid, Uid, User};

/// The database superuser of every test server.
pub const USER: &str = "loom";

/// How long `pg_ctl` waits for the server to start or stop, in seconds: far beyond the
/// second it takes, so that a loaded machine does not fail a test.
const WAIT_SECONDS: &str = "120";

/// What a server started by [`TestPg::start_with`] adds to the default one.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Require this password (SCRAM-SHA-256) from user [`USER`], on the socket and over TCP.
    pub password: Option<String>,
    /// Turn TLS on with this certificate and key (PEM files; copied into the server's
    /// folder). Implies `tcp`: PostgreSQL speaks TLS over TCP only.
    pub ssl: Option<(PathBuf, PathBuf)>,
    /// Listen on a free port on 127.0.0.1 too ([`TestPg::port`]).
    pub tcp: bool,
    /// Sync every commit to disk (`fsync` on), as a production server does: for the
    /// benchmark, which compares the journal on PostgreSQL with SQLite's, which syncs
    /// every commit. Off by default: the tests do not survive power loss.
    pub fsync: bool,
}

/// A private PostgreSQL server; stopped (`-m immediate`) and its folder removed on drop.
pub struct TestPg {
    folder: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    tcp: bool,
    password: Option<String>,
    fsync: bool,
    owner: Option<(Uid, Gid)>,
    databases: AtomicU32,
}

impl TestPg {
    /// A new private server on a Unix socket, trusting user [`USER`].
    ///
    /// `None` (with one line on stderr saying why) when the PostgreSQL binaries are not
    /// installed and `CI` is not set.
    ///
    /// # Panics
    /// When the binaries are missing and `CI` is set, or the server does not start.
    pub fn start() -> Option<TestPg> {
        TestPg::start_with(Options::default())
    }

    /// A new private server with `options`; see [`TestPg::start`].
    ///
    /// # Panics
    /// As [`TestPg::start`]; also when a certificate or key cannot be copied.
    pub fn start_with(options: Options) -> Option<TestPg> {
        let bin = match find_bin() {
            Ok(bin) => bin,
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("PostgreSQL is required in CI: {why}")
            }
            Err(why) => {
                eprintln!("loom-testpg: skipping the tests that need PostgreSQL: {why}");
                return None;
            }
        };
        let tcp = options.tcp || options.ssl.is_some();
        let folder = tempfile::Builder::new()
            .prefix("loom-testpg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a folder for PostgreSQL: {e}"));
        let pg = TestPg {
            folder,
            bin,
            port: if tcp { free_port() } else { 5432 },
            tcp,
            password: options.password,
            fsync: options.fsync,
            owner: server_user(),
            databases: AtomicU32::new(0),
        };
        pg.own(pg.folder.path());
        pg.init(options.ssl.as_ref());
        pg.start_again();
        Some(pg)
    }

    /// One server for the whole test binary, started on first use and stopped when the
    /// process exits. `None` as [`TestPg::start`].
    ///
    /// # Panics
    /// As [`TestPg::start`], in every test that calls it.
    pub fn shared() -> Option<&'static TestPg> {
        static SHARED: OnceLock<Option<TestPg>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(Some(pg)) = SHARED.get() {
                pg.shut_down();
            }
        }
        SHARED
            .get_or_init(|| {
                let pg = TestPg::start()?;
                // Statics are never dropped, and the test harness leaves through
                // `process::exit`, which runs atexit handlers.
                // SAFETY: `stop_shared` is a plain function that does not unwind (it only
                // runs `pg_ctl` and removes a folder; both report failures by return value).
                if unsafe { libc::atexit(stop_shared) } != 0 {
                    panic!("registering the shared PostgreSQL server's stop at exit failed");
                }
                Some(pg)
            })
            .as_ref()
    }

    /// Creates a new, empty database (`t_<n>`, unique on this server) and returns its name.
    ///
    /// # Panics
    /// When `CREATE DATABASE` fails.
    pub fn create_database(&self) -> String {
        let name = format!("t_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Creates a new database (as [`TestPg::create_database`]) and returns its URL on the
    /// Unix socket: `postgresql:///t_<n>?host=<socket dir>&user=loom` (and `&port=` when the
    /// server listens on TCP too). The URL carries no password.
    pub fn database(&self) -> String {
        let name = self.create_database();
        self.socket_url(&name)
    }

    /// The URL of database `name` on the Unix socket, without a password.
    pub fn socket_url(&self, name: &str) -> String {
        let mut url =
            format!("postgresql:///{name}?host={}&user={USER}", percent_encode(&self.socket_dir().to_string_lossy()));
        if self.port != 5432 {
            let _ = write!(url, "&port={}", self.port);
        }
        url
    }

    /// Runs `sql` in database `db` through `psql` and returns its output (unaligned, no
    /// headers).
    ///
    /// # Panics
    /// When `psql` fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"]).arg(self.socket_dir()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            USER,
            "-d",
            db,
            "-c",
            sql,
        ]);
        if let Some(password) = &self.password {
            psql.env("PGPASSWORD", password);
        }
        let out = run(&mut psql);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Restarts the server (`pg_ctl restart -m fast`): every connection is closed.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn restart(&self) {
        self.pg_ctl(["restart", "-m", "fast"], true);
    }

    /// Stops the server (`pg_ctl stop -m fast`); [`TestPg::start_again`] brings it back.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn stop(&self) {
        self.pg_ctl(["stop", "-m", "fast"], false);
    }

    /// Starts the server (again, after [`TestPg::stop`]), on the same socket and port.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn start_again(&self) {
        self.pg_ctl(["start"], true);
    }

    /// The folder holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.folder.path()
    }

    /// The folder of the PostgreSQL binaries in use (`initdb`, `pg_ctl`, `psql`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The server's data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    /// The port: a free one on 127.0.0.1 when the server listens on TCP, otherwise 5432
    /// (which then only names the socket file).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs (the first line of `postmaster.pid`).
    pub fn pid(&self) -> Option<i32> {
        let pidfile = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// `initdb` into `data/`, then the certificate and key into it when TLS is asked.
    fn init(&self, ssl: Option<&(PathBuf, PathBuf)>) {
        let mut initdb = self.as_server(self.bin.join("initdb"));
        initdb.arg("-D").arg(self.data_dir()).args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"]);
        match &self.password {
            Some(password) => {
                let file = self.folder.path().join("pwfile");
                std::fs::write(&file, password).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
                self.own(&file);
                initdb
                    .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", file.display()));
            }
            None => {
                initdb.args(["-A", "trust"]);
            }
        }
        run(&mut initdb);
        let _ = std::fs::remove_file(self.folder.path().join("pwfile"));
        if let Some((cert, key)) = ssl {
            // The server's default names, in its data folder; the key must be its own and
            // readable by it alone.
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let to = self.data_dir().join(to);
                std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copying {} for PostgreSQL: {e}", from.display()));
                self.own(&to);
            }
        }
    }

    /// Runs `pg_ctl` with `args`, the data folder, a log, waiting for it to finish; with
    /// the server's options when `start` (they are not remembered for a plain start).
    fn pg_ctl<const N: usize>(&self, args: [&str; N], start: bool) {
        let mut pg_ctl = self.as_server(self.bin.join("pg_ctl"));
        pg_ctl.args(args).arg("-D").arg(self.data_dir()).arg("-l").arg(self.log()).args(["-w", "-t", WAIT_SECONDS]);
        if start {
            pg_ctl.arg("-o").arg(self.server_options());
        }
        let out = pg_ctl.output().unwrap_or_else(|e| panic!("running pg_ctl: {e}"));
        if !out.status.success() {
            panic!(
                "pg_ctl {} failed ({}): {}{}\nserver log:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
    }

    /// The options `pg_ctl` passes to the server (through a shell: quoted).
    fn server_options(&self) -> String {
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        let mut options = format!(
            "-k {} -p {} -c listen_addresses='{listen}' -c max_connections=500 -c fsync={}",
            shell_quote(&self.socket_dir().to_string_lossy()),
            self.port,
            if self.fsync { "on" } else { "off" },
        );
        if self.data_dir().join("server.crt").exists() {
            options.push_str(" -c ssl=on");
        }
        options
    }

    /// Stops the server at once, for good, and removes its folder; errors are ignored (it
    /// runs on drop and at exit).
    fn shut_down(&self) {
        if self.pid().is_some() {
            let _ = self
                .as_server(self.bin.join("pg_ctl"))
                .args(["stop", "-m", "immediate", "-w", "-t", WAIT_SECONDS, "-D"])
                .arg(self.data_dir())
                .output();
        }
        let _ = std::fs::remove_dir_all(self.folder.path());
    }

    /// A command that runs as the server's user, in the server's folder.
    fn as_server(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.folder.path()).env_remove("PGDATA");
        if let Some((uid, gid)) = self.owner {
            // std drops root's supplementary groups before setuid.
            std::os::unix::process::CommandExt::uid(&mut command, uid.as_raw());
            std::os::unix::process::CommandExt::gid(&mut command, gid.as_raw());
        }
        command
    }

    /// Gives `path` to the server's user (when it is not us), readable by it alone.
    fn own(&self, path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = if path.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    fn log(&self) -> PathBuf {
        self.folder.path().join("log")
    }

    /// The end of the server's log, for a failure's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The folder holding `initdb`, `pg_ctl` and `postgres`: `$LOOM_PG_BIN`, else the folder
/// `initdb` on `PATH` really is in (Debian links them from elsewhere), else the highest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bin() -> Result<PathBuf, String> {
    let complete = |dir: &Path| ["initdb", "pg_ctl", "postgres", "psql"].iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = std::env::var_os("LOOM_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(format!("LOOM_PG_BIN={} lacks initdb, pg_ctl, postgres or psql", dir.display()))
        };
    }
    if let Some(dir) = which::which("initdb")
        .ok()
        .and_then(|initdb| initdb.canonicalize().ok())
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
        .filter(|dir| complete(dir))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        "no initdb, pg_ctl, postgres and psql in $LOOM_PG_BIN, on PATH or in \
         /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
            .to_string()
    })
}

/// `nobody` when we are root (PostgreSQL refuses to run as root), else nobody else.
fn server_user() -> Option<(Uid, Gid)> {
    if !Uid::effective().is_root() {
        return None;
    }
    match User::from_name("nobody") {
        Ok(Some(nobody)) => Some((nobody.uid, nobody.gid)),
        other => panic!("PostgreSQL cannot run as root, and there is no user nobody: {other:?}"),
    }
}

/// A port on 127.0.0.1 that nothing listens on now (the kernel's choice).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("finding a free port on 127.0.0.1: {e}"))
}

/// Runs `command`; its output, or a panic with it when it fails.
fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("running {:?}: {e}", command.get_program()));
    if !out.status.success() {
        panic!(
            "{:?} failed ({}): {}{}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `text` in single quotes for `/bin/sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `text` with everything but unreserved characters and `/` percent-encoded, for a URL's
/// query.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}
