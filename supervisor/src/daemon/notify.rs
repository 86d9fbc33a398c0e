//! systemd's notification protocol: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`,
//! `RELOADING=1`, as datagrams to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.
//!
//! Sending never waits: it is called from the async runtime, and a send to a socket
//! systemd does not read (its queue full) would block a runtime thread for as long, until
//! the API stops answering. So the socket is non-blocking, and what cannot be sent at once
//! is handled by kind:
//!
//! - a `STATUS=` line alone is dropped: the next one replaces it (a warning the first
//!   time);
//! - anything else (`READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`,
//!   `EXTEND_TIMEOUT_USEC=`) is tried again by a thread of its own, for up to
//!   [`RETRY_FOR`], and an error is logged for each one that still could not be sent.
//!   Those sent later wait behind it, so that systemd sees them in order; a `WATCHDOG=1`
//!   already waiting stands for the next one. Before the daemon exits,
//!   [`Notifier::settle`] gives them a few seconds more and logs those still not sent.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a notification other than a status line is tried again.
pub const RETRY_FOR: Duration = Duration::from_secs(120);

/// The longest pause between two tries (the first is 50 ms, then doubling).
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The most notifications waiting to be tried again; beyond, new ones are dropped (logged
/// once). They are few: one per start, reload and stop, and one watchdog ping.
const MOST_WAITING: usize = 32;

/// Where to send notifications, if anywhere.
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// Non-blocking.
    socket: UnixDatagram,
    target: Target,
    state: Mutex<State>,
    /// Signalled when no notification is left waiting.
    settled: Condvar,
}

/// `$NOTIFY_SOCKET`: a path, or a name in the abstract namespace.
enum Target {
    Path(String),
    Abstract(SocketAddr, String),
}

#[derive(Default)]
struct State {
    /// Notifications for the retrying thread, oldest first (the one being tried included).
    waiting: VecDeque<String>,
    /// Whether the retrying thread runs (it ends when `waiting` is empty).
    retrying: bool,
    /// Whether dropping a status line was logged.
    warned_status: bool,
    /// Whether dropping a notification because [`MOST_WAITING`] wait was logged.
    warned_full: bool,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
        Notifier { inner: target.and_then(|t| Inner::new(&t)) }
    }

    /// Sends `state` (lines of `KEY=value`) without waiting. Errors are logged, not
    /// returned: a missing or slow listener must not stop the daemon. What cannot be sent
    /// at once is dropped if it is a status line, else tried again off the runtime (see
    /// the module's documentation).
    pub fn send(&self, state: &str) {
        let Some(inner) = &self.inner else { return };
        let status_only = state.lines().all(|l| l.starts_with("STATUS="));
        let mut st = inner.lock();
        // Behind a notification waiting to be tried again, in order. A status line would
        // overtake it, and the status that one carries would then replace this newer one:
        // dropped instead, as when the socket is full (the next status line replaces it).
        if !st.waiting.is_empty() {
            if status_only {
                return inner.status_dropped(&mut st, "a notification before it waits to be sent again");
            }
            return Inner::retry(inner, &mut st, state);
        }
        match inner.send_now(state) {
            Ok(()) => {}
            Err(e) if status_only => inner.status_dropped(&mut st, &e.to_string()),
            Err(_) => Inner::retry(inner, &mut st, state),
        }
    }

    /// Waits (blocking the thread) up to `limit` for the notifications still being tried
    /// again, and logs an error naming those that were not sent by then. For the end of
    /// the daemon's life, when the process is about to exit with them.
    pub fn settle(&self, limit: Duration) {
        let Some(inner) = &self.inner else { return };
        let st = inner.lock();
        let (st, _) = inner
            .settled
            .wait_timeout_while(st, limit, |st| !st.waiting.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        if !st.waiting.is_empty() {
            let names: Vec<&str> = st.waiting.iter().map(|m| first_line(m)).collect();
            tracing::error!(
                "exiting without having notified systemd at {} of {}: it did not take them",
                inner.target.describe(),
                names.join(", ")
            );
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic time systemd asks for.
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `STATUS=...`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

impl Inner {
    /// A status line was not sent because of `why`: warned about once.
    fn status_dropped(&self, st: &mut State, why: &str) {
        if !std::mem::replace(&mut st.warned_status, true) {
            tracing::warn!(
                "cannot notify systemd at {}: {why}; status lines are dropped while it cannot take them, each replaced by the next (logged once)",
                self.target.describe()
            );
        }
    }

    /// A non-blocking socket for `target`, or `None` (logged) when none can be made.
    fn new(target: &str) -> Option<Arc<Inner>> {
        let target = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                match SocketAddr::from_abstract_name(name) {
                    Ok(addr) => Target::Abstract(addr, target.to_owned()),
                    Err(e) => {
                        tracing::warn!("NOTIFY_SOCKET names no usable socket: {e}; systemd will not be notified");
                        return None;
                    }
                }
            }
            None => Target::Path(target.to_owned()),
        };
        match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(socket) => Some(Arc::new(Inner { socket, target, state: Mutex::default(), settled: Condvar::new() })),
            Err(e) => {
                tracing::warn!("cannot create a socket for systemd notifications: {e}");
                None
            }
        }
    }

    /// One try, never waiting.
    fn send_now(&self, message: &str) -> io::Result<()> {
        match &self.target {
            Target::Path(path) => self.socket.send_to(message.as_bytes(), path).map(drop),
            Target::Abstract(addr, _) => self.socket.send_to_addr(message.as_bytes(), addr).map(drop),
        }
    }

    /// Queues `message` for the retrying thread, starting it if need be.
    fn retry(inner: &Arc<Inner>, st: &mut State, message: &str) {
        if message == "WATCHDOG=1" && st.waiting.iter().any(|m| m == message) {
            return;
        }
        if st.waiting.len() >= MOST_WAITING {
            if !std::mem::replace(&mut st.warned_full, true) {
                tracing::error!(
                    "cannot notify systemd at {}: {MOST_WAITING} notifications wait to be tried again; dropping the next ones (logged once)",
                    inner.target.describe()
                );
            }
            return;
        }
        st.waiting.push_back(message.to_owned());
        if st.retrying {
            return;
        }
        let retrier = Arc::clone(inner);
        let spawned = std::thread::Builder::new().name("systemd-notify".into()).spawn(move || retrier.retry_waiting());
        match spawned {
            Ok(_) => st.retrying = true,
            Err(e) => {
                tracing::error!("cannot notify systemd of {}: no thread to try it again: {e}", first_line(message));
                st.waiting.clear();
            }
        }
    }

    /// The retrying thread: tries each waiting notification, oldest first, until it is sent
    /// or [`RETRY_FOR`] has passed (logged); ends when none is left.
    fn retry_waiting(&self) {
        loop {
            let Some(message) = self.lock().waiting.front().cloned() else { return };
            let outcome = self.try_for(&message, RETRY_FOR);
            let mut st = self.lock();
            st.waiting.pop_front();
            if let Err(e) = outcome {
                tracing::error!(
                    "could not notify systemd of {} at {} within {} s: {e}",
                    first_line(&message),
                    self.target.describe(),
                    RETRY_FOR.as_secs()
                );
            }
            if st.waiting.is_empty() {
                st.retrying = false;
                self.settled.notify_all();
                return;
            }
        }
    }

    /// Tries `message` until it is sent or `limit` has passed; the last error then.
    fn try_for(&self, message: &str, limit: Duration) -> io::Result<()> {
        let began = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match self.send_now(message) {
                Ok(()) => return Ok(()),
                Err(e) if began.elapsed() + pause > limit => return Err(e),
                Err(_) => std::thread::sleep(pause),
            }
            pause = (pause * 2).min(RETRY_PAUSE);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can panic half-way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Target {
    /// For log lines: the path, or `@name`.
    fn describe(&self) -> &str {
        match self {
            Target::Path(path) | Target::Abstract(_, path) => path,
        }
    }
}

/// "READY=1", "WATCHDOG=1": what a notification is, for a log line.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

/// Half the watchdog period systemd set (`$WATCHDOG_USEC`, for this process per
/// `$WATCHDOG_PID`), or `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier(path: &std::path::Path) -> Notifier {
        Notifier { inner: Inner::new(&path.display().to_string()) }
    }

    /// What `listener` holds, oldest first, waiting up to a minute for `last`.
    fn read_until(listener: &UnixDatagram, last: &str) -> Vec<String> {
        listener.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.last().is_none_or(|m: &String| !m.starts_with(last)) {
            let len = listener.recv(&mut buf).expect("a notification within a minute");
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        got
    }

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = notifier(&path);
        n.ready("3 plugins ready");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=3 plugins ready");
        n.reloading();
        let len = listener.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..len]).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }

    #[test]
    fn a_socket_nobody_reads_never_blocks_and_loses_only_status_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // Filled to the brim, as systemd's would be if it stopped reading.
        let filler = UnixDatagram::unbound().unwrap();
        filler.set_nonblocking(true).unwrap();
        let mut filled = 0;
        while filler.send_to(format!("FILLER={filled}").as_bytes(), &path).is_ok() {
            filled += 1;
        }
        assert!(filled > 0);
        // Sent from a thread, so that a send that blocks fails the test instead of hanging it.
        let (done, sent) = std::sync::mpsc::channel();
        let n = notifier(&path);
        std::thread::spawn(move || {
            n.ready("ready");
            for i in 0..100 {
                n.status(&format!("{i} tasks in flight"));
            }
            n.watchdog();
            n.watchdog();
            n.stopping("draining");
            done.send(n).unwrap();
        });
        let n = sent.recv_timeout(Duration::from_secs(60)).expect("every send returned at once");
        // Read again: what was not a status line arrives, in order, and nothing else.
        let got = read_until(&listener, "STOPPING=1");
        let ours: Vec<&str> = got.iter().skip(filled).map(String::as_str).collect();
        assert_eq!(ours, ["READY=1\nSTATUS=ready", "WATCHDOG=1", "STOPPING=1\nSTATUS=draining"]);
        // Once the queue has room and nothing waits to be sent again, status lines go
        // again. (STOPPING=1 is read here a moment before the retrying thread, whose send
        // it was, marks it sent: until then a status line is still dropped.)
        n.settle(Duration::from_secs(60));
        n.status("after");
        assert_eq!(read_until(&listener, "STATUS=after"), ["STATUS=after"]);
    }

    #[test]
    fn without_a_socket_nothing_happens() {
        Notifier { inner: None }.ready("x");
    }
}
