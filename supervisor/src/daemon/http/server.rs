//! Accepting and keeping the API's connections, within limits.
//!
//! Anyone who can reach the listener can open connections, token or not, so nothing here
//! trusts a client to finish what it started:
//!
//! - **A cap** on open connections ([`Limits::max_connections`], lowered to fit the
//!   process's open-files limit). At the cap, a new connection takes the place of the
//!   connection that has waited longest without a request being handled (idle, or still
//!   sending its headers); when every connection is busy with a request, the new one is
//!   answered 503 and closed. Idle and slow connections therefore never lock out a
//!   client that sends its request.
//! - **Timeouts**: a connection idle between requests for [`Limits::idle_timeout`], or
//!   whose request headers have not all arrived [`Limits::header_read_timeout`] after
//!   their first byte, is closed. (hyper's own `header_read_timeout` starts when it
//!   begins waiting for a request, so it cannot tell the two apart; this module keeps
//!   its own clock per connection.) The body has its own limit in the handlers
//!   ([`Limits::body_read_timeout`]).
//! - **Streams**: a request counts as being handled until its answer's body has been
//!   sent (or dropped), so an open `GET /v1/events` stream is never timed out as idle nor
//!   evicted; it ends when the daemon drains, which lets the graceful shutdown finish.
//! - **Accept errors** (the open-files limit reached: `EMFILE`) back off instead of
//!   spinning, free an idle connection, and are logged once per interval with a count.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Listener;
pub use crate::daemon::config::HttpLimits as Limits;
use crate::daemon::service::Daemon;

/// File descriptors kept for everything but API connections: the journal, the plugins'
/// pipes, the listener, the runtime.
const RESERVED_FDS: u64 = 256;

impl Limits {
    /// These limits with `max_connections` lowered so that connections alone cannot
    /// exhaust `open_files` (the process's limit).
    pub fn fitted(self, open_files: u64) -> Limits {
        let usable = open_files.saturating_sub(RESERVED_FDS).max(open_files / 2).max(1);
        let usable = usize::try_from(usable).unwrap_or(usize::MAX);
        Limits { max_connections: self.max_connections.min(usable), ..self }
    }
}

/// Raises the soft open-files limit to the hard one (the default soft limit of 1024
/// is too low for a server), and returns the soft limit in force. Plugins still start
/// with the limit the daemon was given ([`crate::core::spawn::keep_open_files_limit_for_plugins`]).
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limits = getrlimit(Resource::RLIMIT_NOFILE);
    if let Ok((soft, hard)) = limits {
        crate::core::spawn::keep_open_files_limit_for_plugins(soft, hard);
    }
    match limits {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Serves the API until `stop` fires, then waits (briefly) for open requests. The limits
/// are the daemon's configuration's (so a reload changes them for new connections),
/// fitted to `open_files`, the process's open-files limit.
pub async fn serve(listener: Listener, daemon: Arc<Daemon>, open_files: u64, stop: CancellationToken) {
    let table = Arc::new(Table::default());
    let tasks = TaskTracker::new();
    let mut errors = AcceptErrors::default();
    loop {
        // A descriptor is taken at accept: make room under the cap first.
        let limits = daemon.config().http.fitted(open_files);
        tokio::select! {
            () = stop.cancelled() => break,
            () = table.room(limits.max_connections) => {}
        }
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = accept(&listener) => a,
        };
        let io = match accepted {
            Ok(io) => {
                errors.recovered();
                io
            }
            Err(e) => {
                let exhausted = errors.failed(&e);
                if exhausted {
                    // Each idle connection holds a descriptor the listener needs.
                    table.evict_one();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(errors.backoff()) => {}
                    }
                }
                continue;
            }
        };
        let Some(activity) = table.admit(limits.max_connections) else {
            refuse(io);
            continue;
        };
        let daemon = Arc::clone(&daemon);
        let stop = stop.clone();
        let table = Arc::clone(&table);
        tasks.spawn(async move {
            keep(io, Arc::clone(&activity), daemon, limits, stop).await;
            table.remove(&activity);
        });
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
}

/// Serves one connection on any stream as the listener would, with the daemon's limits,
/// until it ends or times out: for tests and fuzzing, which drive the API without a
/// socket.
pub async fn serve_stream(io: impl AsyncIo + 'static, daemon: Arc<Daemon>) {
    let limits = daemon.config().http;
    let activity = Arc::new(Activity::new(0, Instant::now()));
    keep(Box::new(io), activity, daemon, limits, CancellationToken::new()).await;
}

/// Serves one connection until it ends, times out, is evicted, or the daemon stops.
async fn keep(
    io: Box<dyn AsyncIo>,
    activity: Arc<Activity>,
    daemon: Arc<Daemon>,
    limits: Limits,
    stop: CancellationToken,
) {
    let io = TokioIo::new(Tracked { inner: io, activity: Arc::clone(&activity) });
    let in_service = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let daemon = Arc::clone(&daemon);
        let receiving = !hyper::body::Body::is_end_stream(req.body());
        let busy = Busy::enter(Arc::clone(&in_service), receiving);
        let body_activity = receiving.then(|| Arc::clone(&in_service));
        let req = req.map(|inner| Body { inner, receiving: body_activity });
        async move {
            let response = super::handle(&daemon, req).await;
            // Busy until the body is sent or dropped, not only until the handler
            // returns: an event stream is a request in hand for as long as it is open
            // (no idle timeout, no eviction), and a drain waits for it to end.
            Ok::<_, std::convert::Infallible>(response.map(|inner| BusyBody { inner, busy: Some(busy) }))
        }
    });
    // A client may shut its side down once its request is sent (`nc -N`, scripts): it
    // still gets its answer.
    let conn = hyper::server::conn::http1::Builder::new().half_close(true).serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            () = activity.evict.notified() => return,
            // A request began to arrive: look at the deadline again.
            () = activity.reading.notified() => {}
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                if activity.expired(&limits, Instant::now()) {
                    return;
                }
            }
        }
    }
}

/// Answers 503 on a connection over the cap, without waiting for it, and closes it.
fn refuse(mut io: Box<dyn AsyncIo>) {
    const BODY: &str = "{\"error\":\"too many connections, all busy with requests; try again later\"}\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    // Best effort and bounded: a client that does not read gets nothing.
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(answer.as_bytes())).await;
    });
}

/// A connection's stream, TCP or Unix.
pub trait AsyncIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncIo for T {}

async fn accept(listener: &Listener) -> io::Result<Box<dyn AsyncIo>> {
    Ok(match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Listener::Unix(l, _) => Box::new(l.accept().await?.0),
    })
}

/// What a connection is doing, for its timeouts and for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Between requests (or before the first): nothing read since the last answer.
    Idle = 0,
    /// A request has begun to arrive; its headers are not complete.
    Reading = 1,
    /// A request is being handled.
    Busy = 2,
    /// A request is being handled and its body is still arriving (the handler reads it
    /// within `body_read_timeout`).
    Receiving = 3,
}

/// One connection's state, shared by its stream, its service and its watcher.
#[derive(Debug)]
struct Activity {
    id: u64,
    phase: AtomicU8,
    /// When the current phase began, in milliseconds since `epoch`.
    since: AtomicU64,
    epoch: Instant,
    evict: Notify,
    /// Fired when a request begins to arrive: the watcher's deadline moves from the idle
    /// timeout to the (shorter) header timeout.
    reading: Notify,
}

impl Activity {
    fn new(id: u64, epoch: Instant) -> Activity {
        let a = Activity {
            id,
            phase: AtomicU8::new(Phase::Idle as u8),
            since: AtomicU64::new(0),
            epoch,
            evict: Notify::new(),
            reading: Notify::new(),
        };
        a.enter(Phase::Idle);
        a
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Idle,
            1 => Phase::Reading,
            2 => Phase::Busy,
            _ => Phase::Receiving,
        }
    }

    fn enter(&self, phase: Phase) {
        self.since.store(millis(self.epoch, Instant::now()), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Bytes arrived: an idle connection starts reading a request.
    fn read_some(&self) {
        if self
            .phase
            .compare_exchange(Phase::Idle as u8, Phase::Reading as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.since.store(millis(self.epoch, Instant::now()), Ordering::Release);
            self.reading.notify_one();
        }
    }

    fn since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.since.load(Ordering::Acquire))
    }

    /// When to look again: the end of the current phase's allowance. A request being
    /// handled has no deadline here (its body has one in the handler), so it is looked
    /// at again after the idle timeout.
    fn deadline(&self, limits: &Limits) -> Instant {
        match self.phase() {
            Phase::Idle => self.since() + limits.idle_timeout,
            Phase::Reading => self.since() + limits.header_read_timeout,
            Phase::Busy | Phase::Receiving => Instant::now() + limits.idle_timeout,
        }
    }

    fn expired(&self, limits: &Limits, now: Instant) -> bool {
        matches!(self.phase(), Phase::Idle | Phase::Reading) && now >= self.deadline(limits)
    }

    /// Whether eviction may close it: a connection without a request in hand (idle, or
    /// still sending its headers). A request being handled, its body arriving or not, is
    /// not: it got past the token, and its body has its own time limit and budget, while
    /// a flood of new connections needs no token at all.
    fn evictable(&self) -> bool {
        matches!(self.phase(), Phase::Idle | Phase::Reading)
    }
}

fn millis(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// Marks a connection busy while a request is handled (receiving while its body
/// arrives); idle again when dropped (the handler finished or was cancelled).
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(activity: Arc<Activity>, receiving: bool) -> Busy {
        activity.enter(if receiving { Phase::Receiving } else { Phase::Busy });
        Busy(activity)
    }
}

/// A request's body, marking its connection busy (no longer receiving) once it has all
/// arrived.
pub struct Body {
    inner: Incoming,
    receiving: Option<Arc<Activity>>,
}

impl hyper::body::Body for Body {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_))))
            && let Some(activity) = self.receiving.take()
        {
            activity.enter(Phase::Busy);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response's body, keeping its connection busy until it has all been sent (or is
/// dropped: the client went away, or the connection was closed).
struct BusyBody {
    inner: super::ApiBody,
    busy: Option<Busy>,
}

impl hyper::body::Body for BusyBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.enter(Phase::Idle);
    }
}

/// The open connections, and the evicted ones whose descriptors are not closed yet.
#[derive(Debug)]
struct Table {
    epoch: Instant,
    inner: Mutex<TableInner>,
    /// Fired when a connection's task ends (its descriptor is closed).
    freed: Notify,
}

#[derive(Debug, Default)]
struct TableInner {
    next_id: u64,
    open: HashMap<u64, Arc<Activity>>,
    /// Evicted connections still holding their descriptor until their task notices.
    /// They count against the cap: under load a task may take a while to run, and
    /// accepting in the meantime would go past the open-files limit.
    closing: usize,
}

impl TableInner {
    fn in_use(&self) -> usize {
        self.open.len() + self.closing
    }

    fn evict(&mut self, victim: &Activity) {
        if self.open.remove(&victim.id).is_some() {
            self.closing += 1;
            victim.evict.notify_one();
        }
    }
}

impl Default for Table {
    fn default() -> Table {
        Table { epoch: Instant::now(), inner: Mutex::default(), freed: Notify::new() }
    }
}

impl Table {
    /// Registers a new connection; at `max`, first evicts the one that has waited
    /// longest without a request in hand. `None`: every connection is busy.
    fn admit(&self, max: usize) -> Option<Arc<Activity>> {
        let mut inner = self.lock();
        if inner.in_use() >= max {
            let victim = Self::longest_waiting(&inner)?;
            inner.evict(&victim);
        }
        inner.next_id += 1;
        let activity = Arc::new(Activity::new(inner.next_id, self.epoch));
        inner.open.insert(activity.id, Arc::clone(&activity));
        Some(activity)
    }

    /// Evicts the connection that has waited longest without a request in hand, if any.
    fn evict_one(&self) {
        let mut inner = self.lock();
        if let Some(victim) = Self::longest_waiting(&inner) {
            inner.evict(&victim);
        }
    }

    /// Waits until one more connection fits under `max` descriptors, evicted connections
    /// counted until they have closed. At the cap it evicts the connection that has
    /// waited longest without a request in hand and waits for a connection to close
    /// (evicting another every 100 ms that none does). Returns at once when every
    /// connection is busy and none is closing: the next one is then refused.
    ///
    /// # Cancellation
    /// Dropping the future leaves the evictions made; nothing else changes.
    async fn room(&self, max: usize) {
        loop {
            {
                let mut inner = self.lock();
                if inner.in_use() < max {
                    return;
                }
                match Self::longest_waiting(&inner) {
                    Some(victim) => inner.evict(&victim),
                    None if inner.closing == 0 => return,
                    None => {}
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.freed.notified()).await;
        }
    }

    fn longest_waiting(inner: &TableInner) -> Option<Arc<Activity>> {
        inner.open.values().filter(|a| a.evictable()).min_by_key(|a| a.since()).cloned()
    }

    /// Forgets a connection whose task has ended (open, or evicted and now closed).
    fn remove(&self, activity: &Activity) {
        let mut inner = self.lock();
        if inner.open.remove(&activity.id).is_none() {
            inner.closing = inner.closing.saturating_sub(1);
        }
        drop(inner);
        self.freed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        // Nothing under this lock panics half-way; a poisoned table is still consistent.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A connection's stream, noting when a request begins to arrive.
struct Tracked {
    inner: Box<dyn AsyncIo>,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How often accept errors are logged at most.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accept errors: counted, logged once per interval, and backed off from.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// Errors since the last line about them.
    unlogged: u64,
    last_logged: Option<Instant>,
    /// Consecutive resource errors, for the backoff.
    streak: u32,
}

impl AcceptErrors {
    /// Counts `e` and logs when due; whether it means the process ran out of resources
    /// (then the caller backs off).
    fn failed(&mut self, e: &io::Error) -> bool {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
        );
        self.streak = if exhausted { self.streak.saturating_add(1) } else { 0 };
        self.unlogged += 1;
        let due = self.last_logged.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL);
        if due {
            let hint =
                if exhausted { " (the open-files limit: raise LimitNOFILE or lower http.max_connections)" } else { "" };
            match self.unlogged {
                1 => tracing::warn!("accepting a connection failed: {e}{hint}"),
                n => tracing::warn!(
                    "accepting connections failed {n} times in the last {} s; the last: {e}{hint}",
                    ERROR_LOG_INTERVAL.as_secs()
                ),
            }
            self.unlogged = 0;
            self.last_logged = Some(Instant::now());
        }
        exhausted
    }

    /// How long to wait before accepting again: 10 ms, doubling to 1 s.
    fn backoff(&self) -> Duration {
        let exp = self.streak.saturating_sub(1).min(7);
        Duration::from_millis(10u64 << exp).min(Duration::from_secs(1))
    }

    /// A connection was accepted: the streak is over; errors not yet logged are.
    fn recovered(&mut self) {
        if self.unlogged > 0 {
            tracing::info!("accepting connections again, after {} more failures", self.unlogged);
            self.unlogged = 0;
        }
        self.streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
        }
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_makes_room() {
        let table = Table::default();
        let a = table.admit(2).unwrap();
        let b = table.admit(2).unwrap();
        let _busy = Busy::enter(Arc::clone(&a), false);
        let c = table.admit(2).expect("b is idle and makes room");
        let open: Vec<u64> = table.lock().open.keys().copied().collect();
        assert!(open.contains(&a.id) && open.contains(&c.id) && !open.contains(&b.id), "{open:?}");
        let _receiving = Busy::enter(Arc::clone(&c), true);
        assert!(table.admit(2).is_none(), "a request receiving its body is not evicted; all busy: refused");
        assert!(table.lock().open.contains_key(&c.id));
    }

    #[tokio::test]
    async fn an_evicted_connection_holds_its_place_until_it_has_closed() {
        let table = Arc::new(Table::default());
        let a = table.admit(2).unwrap();
        let b = table.admit(2).unwrap();
        let _busy = Busy::enter(Arc::clone(&a), false);
        // At the cap: room() tells b to go, and waits for it to be gone.
        let waiting = {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.room(2).await })
        };
        b.evict.notified().await;
        assert_eq!(table.lock().in_use(), 2, "b's descriptor is still open");
        assert!(!waiting.is_finished(), "no room until b's task ends");
        table.remove(&b);
        waiting.await.unwrap();
        assert_eq!(table.lock().in_use(), 1);
        // Every connection busy and none closing: no waiting (the next is refused).
        let c = table.admit(2).unwrap();
        let _c_busy = Busy::enter(Arc::clone(&c), false);
        table.room(2).await;
        assert!(table.admit(2).is_none());
    }

    #[test]
    fn idle_and_reading_connections_time_out_busy_ones_do_not() {
        let epoch = Instant::now();
        let a = Activity::new(1, epoch);
        let l = limits();
        let start = a.since();
        assert!(!a.expired(&l, start + Duration::from_secs(19)));
        assert!(a.expired(&l, start + Duration::from_secs(20)), "idle for the idle timeout");
        a.read_some();
        assert_eq!(a.phase(), Phase::Reading);
        let began = a.since();
        assert!(a.expired(&l, began + Duration::from_secs(5)), "headers not complete within the header timeout");
        let busy = Busy::enter(Arc::new(Activity::new(2, epoch)), false);
        assert!(!busy.0.expired(&l, Instant::now() + Duration::from_secs(3600)));
        let inner = Arc::clone(&busy.0);
        drop(busy);
        assert_eq!(inner.phase(), Phase::Idle, "idle again once the request is handled");
    }

    #[test]
    fn the_cap_fits_the_open_files_limit() {
        let l = Limits::default();
        assert_eq!(l.fitted(1_048_576).max_connections, 1024);
        assert_eq!(l.fitted(1024).max_connections, 768);
        assert_eq!(l.fitted(64).max_connections, 32);
    }

    #[test]
    fn accept_errors_back_off_and_are_logged_with_a_count() {
        let mut errors = AcceptErrors::default();
        let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
        assert!(errors.failed(&emfile));
        assert_eq!(errors.backoff(), Duration::from_millis(10));
        for _ in 0..20 {
            errors.failed(&emfile);
        }
        assert_eq!(errors.backoff(), Duration::from_secs(1), "capped");
        assert_eq!(errors.unlogged, 20, "logged once, then counted");
        assert!(!errors.failed(&io::Error::from_raw_os_error(nix::libc::ECONNABORTED)));
        errors.recovered();
        assert_eq!((errors.unlogged, errors.streak), (0, 0));
    }
}
