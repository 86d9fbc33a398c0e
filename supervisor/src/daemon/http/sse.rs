//! `GET /v1/events`: the daemon's events ([`crate::daemon::events`]) as server-sent
//! events.
//!
//! Each message is `id: <run>-<n>\nevent: <name>\ndata: <one line of JSON>\n\n`. A client
//! resumes with the `Last-Event-ID` header (browsers send it when they reconnect) or
//! `?since=<id>`: it gets every event after that id, none twice. When the events after
//! it are no longer kept (too old; a reader too slow), or the id is of an earlier run of
//! the daemon (or no id of it), the stream starts with `event: reset` (data
//! `{"reason": ...}`, its id the newest event's): the client reloads its state and goes on
//! from there. A comment line (`: keepalive`) is sent every [`KEEPALIVE`] so proxies and
//! clients see the stream is alive, and a dead client is noticed.
//!
//! Limits: [`MAX_STREAMS`] streams at once (503 beyond). A stream holds no queue of its
//! own beyond the bus's ring: a reader that falls behind reads the missed events from the
//! ring, and is reset when they are gone; what is written waits in the connection's write
//! buffer (hyper's, bounded) and a frame is at most [`FRAME_BYTES`] plus one event. The
//! stream ends when the daemon drains, once the events published before are sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};

use super::{ApiBody, Body, error, path, query_value};
use crate::daemon::events::{Bus, Cursor, Event, Next, Reset, Resume, StreamPlace};
use crate::daemon::service::Daemon;

/// Streams open at once.
pub const MAX_STREAMS: usize = 64;
/// How often a quiet stream says it is alive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// The most bytes of backlog put in one frame.
const FRAME_BYTES: usize = 64 * 1024;

/// Answers `GET /v1/events`: 200 and the stream, or 503 when [`MAX_STREAMS`] are open.
pub(super) fn events(daemon: &Daemon, req: &Request<Body>) -> Response<ApiBody> {
    let Some(place) = daemon.events.open_stream(MAX_STREAMS) else {
        let why = format!("too many event streams open (at most {MAX_STREAMS}); try again later");
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &why);
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let since = resume_from(req);
    let sub = daemon.events.subscribe(since.as_ref());
    let bus = Arc::clone(&daemon.events);
    let mut first = format!(": events of run {}\n\n", bus.run());
    if let Some(reset) = sub.reset {
        first.push_str(&reset_message(&bus, sub.cursor.last(), reset));
    }
    let stream = Stream {
        bus,
        cursor: sub.cursor,
        backlog: sub.backlog.into(),
        first: Some(first),
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
        _place: place,
    };
    let frames = futures_util::stream::unfold(stream, |mut s| async move {
        let text = s.next_text().await?;
        Some((Ok(Frame::data(Bytes::from(text))), s))
    });
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Where the client resumes: `Last-Event-ID`, else `?since=`. An id that is not of the
/// `<run>-<n>` form is unknown: the client is reset.
fn resume_from(req: &Request<Body>) -> Option<Resume> {
    let header = req.headers().get("last-event-id").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let given = header.or_else(|| query_value(req, "since").map(|v| path::decode(v).unwrap_or_default()))?;
    let given = given.trim();
    if given.is_empty() {
        return None;
    }
    Some(Resume::parse(given).unwrap_or(Resume { run: String::new(), n: 0 }))
}

/// One client's stream.
struct Stream {
    bus: Arc<Bus>,
    cursor: Cursor,
    backlog: VecDeque<Arc<Event>>,
    /// The opening comment, and the reset if any.
    first: Option<String>,
    keepalive: tokio::time::Interval,
    _place: StreamPlace,
}

impl Stream {
    /// The next text to send; `None` when the stream ends (the bus closed).
    ///
    /// # Cancellation
    /// Dropping the future loses nothing ([`Cursor::next`]).
    async fn next_text(&mut self) -> Option<String> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if !self.backlog.is_empty() {
            return Some(self.backlog_frame());
        }
        tokio::select! {
            next = self.cursor.next(&self.bus) => match next {
                Next::Event(e) => Some(message(&self.bus, &e)),
                Next::Reset(why) => Some(reset_message(&self.bus, self.cursor.last(), why)),
                Next::Closed => None,
            },
            _ = self.keepalive.tick() => Some(": keepalive\n\n".to_owned()),
        }
    }

    /// Backlog events, up to [`FRAME_BYTES`] (at least one).
    fn backlog_frame(&mut self) -> String {
        let mut text = String::new();
        while let Some(e) = self.backlog.front() {
            if !text.is_empty() && text.len() + e.data.len() > FRAME_BYTES {
                break;
            }
            text.push_str(&message(&self.bus, e));
            self.backlog.pop_front();
        }
        text
    }
}

/// One event as a message. The data is one line of JSON (serde_json escapes newlines in
/// strings), so one `data:` line carries it.
fn message(bus: &Bus, e: &Event) -> String {
    format!("id: {}\nevent: {}\ndata: {}\n\n", bus.id(e.n), e.name, e.data)
}

/// A `reset` message: its id is where the client goes on from once it has reloaded.
fn reset_message(bus: &Bus, at: u64, why: Reset) -> String {
    let data = serde_json::json!({"reason": why.why(), "run": bus.run()});
    format!("id: {}\nevent: reset\ndata: {data}\n\n", bus.id(at))
}
