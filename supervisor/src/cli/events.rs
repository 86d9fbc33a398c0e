//! The daemon's event stream (`GET /v1/events`), read by a command: server-sent events
//! parsed into `(name, data)` pairs. Used by `cluster ... --api` to show an operation's
//! progress while it waits for the outcome.
//!
//! Bounded whatever the daemon sends: a line longer than [`MAX_LINE_BYTES`] is skipped with
//! its event, so memory stays at one line.

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;

use crate::cli::client::{Api, CallError};

/// The longest line kept (the daemon cuts output events at 8 KiB).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One event: its name (`step.started` ...) and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `event:`.
    pub name: String,
    /// `data:`, as JSON (`Null` when it is not).
    pub data: Value,
}

/// An open event stream.
pub struct EventStream {
    body: hyper::body::Incoming,
    parser: Parser,
}

/// Why the stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No answer.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The daemon answered with another status (an older daemon without the endpoint: 404).
    #[error("the daemon answered {0} to GET /v1/events")]
    Status(u16),
}

impl EventStream {
    /// Opens `GET /v1/events` and waits for the daemon's first line, so that every event
    /// published after this returns is received.
    ///
    /// # Errors
    /// [`OpenError`]: no daemon, or it answered with an error.
    pub async fn open(api: &Api) -> Result<EventStream, OpenError> {
        let resp = api.open(Method::GET, "/v1/events", None).await?;
        if resp.status() != 200 {
            return Err(OpenError::Status(resp.status().as_u16()));
        }
        let mut stream = EventStream { body: resp.into_body(), parser: Parser::default() };
        // The daemon's first frame is a comment naming its run: subscribed from here on.
        while !stream.parser.seen_anything && stream.fill().await {}
        Ok(stream)
    }

    /// The next event; `None` when the stream ended or failed.
    ///
    /// # Cancellation
    /// Safe: a partly read event stays buffered for the next call.
    pub async fn next(&mut self) -> Option<Received> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Some(event);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads one more frame into the parser; false at the end.
    async fn fill(&mut self) -> bool {
        match self.body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    self.parser.push(&data);
                }
                true
            }
            _ => false,
        }
    }
}

/// The text/event-stream format, line by line (only `event:` and `data:` are used).
#[derive(Default)]
struct Parser {
    buffer: BytesMut,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    name: String,
    data: String,
    /// The current event had an over-long line: dropped at its end.
    broken: bool,
    seen_anything: bool,
}

impl Parser {
    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        self.seen_anything = true;
    }

    fn next_event(&mut self) -> Option<Received> {
        while let Some(line) = self.next_line() {
            let Some(line) = line else {
                self.broken = true;
                continue;
            };
            if line.is_empty() {
                let (name, data) = (std::mem::take(&mut self.name), std::mem::take(&mut self.data));
                if std::mem::take(&mut self.broken) || name.is_empty() && data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                return Some(Received { name: if name.is_empty() { "message".into() } else { name }, data });
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut self.name),
                "data" if self.data.len() + value.len() <= MAX_LINE_BYTES => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                "data" => self.broken = true,
                _ => {}
            }
        }
        None
    }

    /// The next whole line: `Some(Some(text))`, `Some(None)` for an over-long line (skipped),
    /// `None` when no whole line is buffered.
    fn next_line(&mut self) -> Option<Option<String>> {
        let Some(end) = self.buffer.iter().position(|b| *b == b'\n') else {
            if self.buffer.len() > MAX_LINE_BYTES {
                self.buffer.clear();
                self.skipping = true;
            }
            return None;
        };
        let line = self.buffer.split_to(end);
        self.buffer.advance(1);
        if std::mem::take(&mut self.skipping) {
            return Some(None);
        }
        let text = String::from_utf8_lossy(&line);
        Some(Some(text.strip_suffix('\r').unwrap_or(&text).to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser) -> Vec<Received> {
        std::iter::from_fn(|| p.next_event()).collect()
    }

    #[test]
    fn events_are_parsed_across_frames_and_comments_are_skipped() {
        let mut p = Parser::default();
        p.push(b": events of run abc\n\nid: abc-1\nevent: step.started\nda");
        assert!(all(&mut p).is_empty());
        p.push(b"ta: {\"taskId\":\"t1\"}\n\n: keepalive\n\nevent: op.finished\r\ndata: {}\r\n\r\n");
        let got = all(&mut p);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].name.as_str(), &got[0].data["taskId"]), ("step.started", &Value::from("t1")));
        assert_eq!(got[1].name, "op.finished");
    }

    #[test]
    fn an_over_long_line_drops_its_event_and_memory_stays_bounded() {
        let mut p = Parser::default();
        p.push(b"event: step.output\ndata: ");
        for _ in 0..3 {
            p.push(&vec![b'x'; MAX_LINE_BYTES]);
            assert!(all(&mut p).is_empty());
            assert!(p.buffer.len() <= MAX_LINE_BYTES + 1);
        }
        p.push(b"\n\nevent: op.finished\ndata: {}\n\n");
        let got = all(&mut p);
        assert_eq!(got.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["op.finished"]);
    }
}
