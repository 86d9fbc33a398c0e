//! The daemon: `loom-provisioner serve` as a real process with a configuration, a data
//! folder and a systemd notify socket of its own, and HTTP requests to its API.

use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::build::{nanos, provisioner};
use crate::net::free_port;
use crate::plugins::Plugins;
use crate::process::wait_or_kill;

/// `loom-provisioner serve` as a real process, with a notify socket of its own. Killed
/// when dropped.
pub struct Serve {
    child: Option<std::process::Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its data folder.
    pub data_dir: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
    notify: Notifications,
    notify_path: PathBuf,
    /// Datagrams the test put in the notify socket before the daemon started, to fill it.
    pub notify_filled: usize,
    /// The READY=1 notification of the last start.
    pub ready_message: String,
    token: Option<String>,
    env: Vec<(String, String)>,
    /// The open-files limits (soft, hard) the daemon starts with, when set.
    open_files: Option<(u64, u64)>,
    /// A socket passed as systemd's socket activation passes it (fd 3, LISTEN_FDS=1,
    /// LISTEN_PID the daemon's), when set.
    activation: Option<std::net::TcpListener>,
    agent: ureq::Agent,
}

impl Serve {
    /// Starts `serve` on the plugins of `plugins` with `extra` lines appended to its
    /// configuration, and waits for READY=1 on its notify socket.
    pub fn start(plugins: &Plugins, extra: &str) -> Serve {
        Serve::start_with(plugins, extra, &[])
    }

    /// [`Serve::start`] in a folder of its own, `<plugins>/<name>` (its configuration,
    /// data folder and log): for several daemons on one plugins folder.
    pub fn start_named(plugins: &Plugins, name: &str, extra: &str) -> Serve {
        let mut serve = Serve::configure(plugins, name, &format!("127.0.0.1:{}", free_port()), extra, &[]);
        serve.notify.read();
        serve.spawn();
        serve
    }

    /// [`Serve::start`] with extra environment.
    pub fn start_with(plugins: &Plugins, extra: &str, env: &[(&str, &str)]) -> Serve {
        Serve::start_listening(plugins, &format!("127.0.0.1:{}", free_port()), extra, env)
    }

    /// [`Serve::start_with`], listening on `listen` (an address or `unix:/path`; then
    /// [`Serve::request`] is not available).
    pub fn start_listening(plugins: &Plugins, listen: &str, extra: &str, env: &[(&str, &str)]) -> Serve {
        let mut serve = Serve::start_listening_later(plugins, listen, extra, env);
        serve.notify.read();
        serve.spawn();
        serve
    }

    /// The daemon, configured but not started: [`Serve::spawn`] starts it.
    fn start_listening_later(plugins: &Plugins, listen: &str, extra: &str, env: &[(&str, &str)]) -> Serve {
        Serve::configure(plugins, "serve", listen, extra, env)
    }

    /// The daemon in `<plugins>/<name>`, configured but not started.
    fn configure(plugins: &Plugins, name: &str, listen: &str, extra: &str, env: &[(&str, &str)]) -> Serve {
        let dir = plugins.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let config = dir.join("config.toml");
        let data_dir = dir.join("data");
        let text = format!(
            "plugin_dirs = [{:?}]\nlisten = {listen:?}\ndata_dir = {:?}\n{extra}\n{}",
            plugins.path().display().to_string(),
            data_dir.display().to_string(),
            journal_for_tests(extra),
        );
        std::fs::write(&config, text).expect("write config");
        let token = extra
            .lines()
            .find_map(|l| l.trim().strip_prefix("token_file = "))
            .map(|f| std::fs::read_to_string(f.trim().trim_matches('"')).expect("token file").trim().to_owned());
        let notify_path = dir.join(format!("notify-{}", nanos()));
        let notify = Notifications::bind(UnixDatagram::bind(&notify_path).expect("bind the notify socket"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Serve {
            child: None,
            url: format!("http://{listen}"),
            config,
            data_dir,
            log: dir.join("serve.log"),
            notify,
            notify_path,
            notify_filled: 0,
            ready_message: String::new(),
            token,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            open_files: None,
            activation: None,
            agent,
        }
    }

    /// [`Serve::start_with`], with a notify socket that nobody reads (unlike systemd) and
    /// that is full from the start: the test's own datagrams fill its queue, so that every
    /// notification of the daemon finds it full, as after a while of not reading it. Waits
    /// for `GET /healthz` to answer 200 instead of READY=1; [`Serve::read_notifications`]
    /// starts reading it.
    pub fn start_with_unread_notify(plugins: &Plugins, extra: &str, env: &[(&str, &str)]) -> Serve {
        let mut serve = Serve::start_listening_later(plugins, &format!("127.0.0.1:{}", free_port()), extra, env);
        serve.notify_filled = serve.notify.fill(&serve.notify_path);
        serve.spawn();
        serve
    }

    /// Starts reading the notify socket of [`Serve::start_with_unread_notify`], as
    /// systemd does.
    pub fn read_notifications(&self) {
        self.notify.read();
    }

    /// [`Serve::start`] with the daemon's open-files limit (soft and hard) set to
    /// `open_files` (soft, hard), as `ulimit -Sn` and `ulimit -Hn` would.
    pub fn start_with_open_files(plugins: &Plugins, extra: &str, open_files: (u64, u64)) -> Serve {
        let mut serve = Serve::start_listening_later(plugins, &format!("127.0.0.1:{}", free_port()), extra, &[]);
        serve.open_files = Some(open_files);
        serve.notify.read();
        serve.spawn();
        serve
    }

    /// [`Serve::start`] socket-activated, as `loom-provisioner.socket` starts it: the
    /// test binds `activation` (its address becomes [`Serve::url`]) and passes it as fd 3
    /// with `LISTEN_FDS=1` and `LISTEN_PID` set to the daemon's pid; the configuration's
    /// `listen` is `listen`, which the daemon must then leave alone. `env` is added to the
    /// daemon's environment.
    pub fn start_activated(
        plugins: &Plugins,
        activation: std::net::TcpListener,
        listen: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Serve {
        let mut serve = Serve::start_listening_later(plugins, listen, extra, env);
        serve.url = format!("http://{}", activation.local_addr().expect("the socket's address"));
        serve.activation = Some(activation);
        serve.notify.read();
        serve.spawn();
        serve
    }

    /// Starts the process (again) and waits for READY=1.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut command = match &self.activation {
            Some(socket) => {
                use std::os::fd::AsRawFd;
                socket_activated(socket.as_raw_fd())
            }
            None => Command::new(provisioner()),
        };
        command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((soft, hard)) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let logged_before = self.log_text().len();
        let child = command.spawn().expect("start loom-provisioner serve");
        self.child = Some(child);
        if !self.notify.is_read() {
            // Its own log must say it listens: the port was free when it was chosen, but a
            // daemon of another test may have taken it since, and would answer /healthz.
            let listening = format!("listening on {}", self.url);
            let up = crate::wait_until(Duration::from_secs(60), || {
                self.log_text().get(logged_before..).is_some_and(|new| new.contains(&listening))
                    && self.answers_healthz()
            });
            assert!(up, "not listening with /healthz answering 200 within 60 s; log:\n{}", self.log_text());
            return;
        }
        self.ready_message = self
            .wait_notification(|m| m.contains("READY=1"), Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no READY=1 within 60 s; log:\n{}", self.log_text()));
    }

    /// Whether `GET /healthz` answers 200 (false while nothing listens yet).
    fn answers_healthz(&self) -> bool {
        self.agent.get(format!("{}/healthz", self.url)).call().is_ok_and(|r| r.status() == 200)
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// The next notification, within `limit`.
    pub fn next_notification(&self, limit: Duration) -> Option<String> {
        self.notify.next(limit)
    }

    /// Notifications until one satisfies `pred` (returned), or `None` after `limit`.
    pub fn wait_notification(&self, pred: impl Fn(&str) -> bool, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let m = self.next_notification(left)?;
            if pred(&m) {
                return Some(m);
            }
        }
        None
    }

    /// `GET /metrics`, checked by Prometheus' own parser (`promtool check metrics`, from
    /// Debian's `prometheus`, which `.ci/run` installs): panics on any problem it reports.
    pub fn metrics(&self) -> String {
        let (code, text) = self.request("GET", "/metrics", None);
        let text = text.as_str().unwrap_or_else(|| panic!("/metrics answered {code} {text}")).to_owned();
        crate::promtool_check(&text);
        text
    }

    /// An HTTP request with the configured token; the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.request_with(method, path, body, self.token.as_deref())
    }

    /// An HTTP request with `token` (or none). `method` is sent as given; GET and DELETE
    /// send no body.
    pub fn request_with(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, Value) {
        let mut request = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.url));
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        // GET and DELETE carry no body; other methods send `body`, empty when none.
        let result = match method {
            "GET" | "DELETE" => request.body(()).map(|r| self.agent.run(r)),
            _ => request.body(body.unwrap_or_default()).map(|r| self.agent.run(r)),
        };
        let mut resp = result
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A request exactly as given: no token is added. The status, the answer's headers
    /// (names lowercase) and its body as text.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Raw {
        let mut request = ureq::http::Request::builder().method(method).uri(format!("{}{path}", self.url));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        // A connection of its own: the daemon closes one after refusing a request whose
        // body it did not read, and a pooled connection could be that one.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let result = match method {
            "GET" | "HEAD" => request.body(()).map(|r| agent.run(r)),
            _ => request.body(body).map(|r| agent.run(r)),
        };
        let mut resp = result
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        Raw { status: resp.status().as_u16(), headers, body: resp.body_mut().read_to_string().unwrap_or_default() }
    }

    /// POST /v1/tasks, `None` when no answer came (the daemon is gone).
    pub fn try_submit(&self, task: &Value, wait: bool) -> Option<(u16, Value)> {
        let path = if wait { "/v1/tasks?wait=true" } else { "/v1/tasks" };
        let request = ureq::http::Request::builder().method("POST").uri(format!("{}{path}", self.url));
        let request = match &self.token {
            Some(t) => request.header("authorization", format!("Bearer {t}")),
            None => request,
        };
        let mut resp = self.agent.run(request.body(task.to_string()).ok()?).ok()?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// POST /v1/tasks.
    pub fn submit(&self, task: &Value, wait: bool) -> (u16, Value) {
        let path = if wait { "/v1/tasks?wait=true" } else { "/v1/tasks" };
        self.request("POST", path, Some(&task.to_string()))
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal the daemon");
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit (at most `limit`) and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let status = wait_or_kill(child.id() as i32, limit, move || child.wait())
            .unwrap_or_else(|| panic!("the daemon did not exit within {limit:?}; log:\n{}", self.log_text()));
        status.ok().and_then(|s| s.code())
    }
}

/// An answer of [`Serve::raw`].
#[derive(Debug)]
pub struct Raw {
    /// Its status.
    pub status: u16,
    /// Its headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: String,
}

impl Raw {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `loom-provisioner` started as systemd starts a socket-activated service: `fd` (open in
/// this process for as long as the command is spawned) as fd 3 and `LISTEN_FDS=1`, through
/// `sh`, whose `exec` keeps its pid, so that `LISTEN_PID` can be set to the pid the daemon
/// will have (`$$`). Arguments are added after it.
pub fn socket_activated(fd: std::os::fd::RawFd) -> Command {
    use std::os::fd::AsFd;
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("sh");
    command.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""]).arg(provisioner());
    // SAFETY: between fork and exec only dup2 and fcntl run, both async-signal-safe; the
    // child's fd 3 is replaced on purpose (nothing in the child owns it), and the OwnedFd
    // dup2_raw returns is forgotten so that nothing closes it before exec.
    unsafe {
        command.pre_exec(move || {
            let socket = std::os::fd::BorrowedFd::borrow_raw(fd);
            if fd == 3 {
                // dup2 onto itself would keep close-on-exec set.
                nix::fcntl::fcntl(socket.as_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
            } else {
                std::mem::forget(nix::unistd::dup2_raw(socket, 3)?);
            }
            Ok(())
        });
    }
    command
}

/// The daemon's notifications, read as they come by a thread of their own (as systemd
/// reads its notify socket at once) and kept until a test asks for them; or, for the tests
/// of a socket that is not read, not read until the test says so.
struct Notifications {
    socket: UnixDatagram,
    received: Arc<(Mutex<VecDeque<String>>, Condvar)>,
    reading: std::sync::Once,
}

impl Notifications {
    /// `socket`, not read yet: [`Notifications::read`] starts reading it.
    fn bind(socket: UnixDatagram) -> Notifications {
        Notifications { socket, received: Arc::default(), reading: std::sync::Once::new() }
    }

    /// Fills the socket's queue with datagrams (`TEST-FILLER=n`) until it takes no more;
    /// returns how many.
    fn fill(&self, path: &std::path::Path) -> usize {
        let filler = UnixDatagram::unbound().expect("a socket");
        filler.set_nonblocking(true).expect("non-blocking");
        let mut n = 0;
        while filler.send_to(format!("TEST-FILLER={n}").as_bytes(), path).is_ok() {
            n += 1;
        }
        assert!(n > 0, "the notify socket took no datagram");
        n
    }

    /// Whether the socket is being read.
    fn is_read(&self) -> bool {
        self.reading.is_completed()
    }

    /// Reads the socket from now on, until [`Notifications`] is dropped.
    fn read(&self) {
        self.reading.call_once(|| self.spawn_reader());
    }

    fn spawn_reader(&self) {
        let (reader, queue) = (self.socket.try_clone().expect("clone the notify socket"), Arc::clone(&self.received));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the socket is shut down (0 bytes) or fails.
            while let Ok(n @ 1..) = reader.recv(&mut buf) {
                let (lock, arrived) = &*queue;
                lock.lock().expect("notifications").push_back(String::from_utf8_lossy(&buf[..n]).into_owned());
                arrived.notify_all();
            }
        });
    }

    /// The oldest notification not yet taken, waiting at most `limit` for one.
    fn next(&self, limit: Duration) -> Option<String> {
        let (lock, arrived) = &*self.received;
        let queue = lock.lock().expect("notifications");
        let (mut queue, _) = arrived.wait_timeout_while(queue, limit, |q| q.is_empty()).expect("notifications");
        queue.pop_front()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for Serve {
    /// Stops the daemon as systemd would (SIGTERM), so that it stops its plugins before
    /// the test looks for leftovers; SIGKILL if it does not exit within 30 s.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id() as i32;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        let _ = wait_or_kill(pid, Duration::from_secs(30), move || child.wait());
    }
}

/// Whether the daemons of this test run keep their journal on PostgreSQL
/// (`LOOM_TEST_JOURNAL=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("LOOM_TEST_JOURNAL").as_deref() == Ok("postgres")
}

/// With `LOOM_TEST_JOURNAL=postgres`, a `[journal]` section for a new database on the
/// test binary's throwaway PostgreSQL (unless `extra` has its own): the daemon's tests
/// then run against PostgreSQL instead of SQLite.
fn journal_for_tests(extra: &str) -> String {
    if !on_postgres() || extra.contains("[journal]") {
        return String::new();
    }
    let pg = loom_testpg::TestPg::shared().expect("LOOM_TEST_JOURNAL=postgres needs PostgreSQL installed");
    format!("[journal]\nurl = {:?}\n", pg.database())
}
