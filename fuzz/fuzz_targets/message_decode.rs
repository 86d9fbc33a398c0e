//! The message decoder (`Message::decode`) and the typed params and results behind it.
//!
//! Input: one line (everything up to the first `\n`; the codec never hands the decoder a
//! newline). Checked:
//! - a decoded message encodes to one line that decodes to the same message, and encodes
//!   the same through the codec's `Encoder`; its typed view (a task, a task result, a
//!   handshake, a log/progress/output/cancel notification), when it has one, survives being
//!   written out and read back;
//! - a decode error names a category and a position only, never text from the line;
//! - nothing panics.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use loom_protocol::{
    CancelParams, DecodeError, HandshakeParams, HandshakeResult, LineCodec, LogParams, Message, OutputParams, Overflow,
    ProgressParams, Task, TaskResult, methods,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::Encoder;

fuzz_target!(|data: &[u8]| {
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    match Message::decode(line) {
        Ok(msg) => {
            check_round_trip(&msg);
            check_typed_view(&msg);
        }
        Err(e) => check_error_text(&e),
    }
});

/// The parts of a message that a re-encoding must keep.
#[derive(Debug, PartialEq)]
enum Parts {
    Request { id: String, method: String, params: Option<String> },
    Notification { method: String, params: Option<String> },
    Response { id: Option<String>, outcome: Result<String, String> },
}

fn parts(msg: &Message) -> Parts {
    let raw = |p: &Option<Box<serde_json::value::RawValue>>| p.as_ref().map(|p| p.get().to_owned());
    match msg {
        Message::Request(r) => {
            Parts::Request { id: format!("{:?}", r.id), method: r.method.clone(), params: raw(&r.params) }
        }
        Message::Notification(n) => Parts::Notification { method: n.method.clone(), params: raw(&n.params) },
        Message::Response(r) => Parts::Response {
            id: r.id.as_ref().map(|id| format!("{id:?}")),
            outcome: r.outcome.as_ref().map(|v| v.get().to_owned()).map_err(|e| format!("{e:?}")),
        },
    }
}

fn check_round_trip(msg: &Message) {
    let line = msg.to_line();
    assert_eq!(line.last(), Some(&b'\n'), "an encoded message ends with a newline");
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "an encoded message is one line");
    let again = Message::decode(&line[..line.len() - 1]).expect("an encoded message decodes");
    assert_eq!(parts(&again), parts(msg), "decode(encode(m)) == m");
    assert_eq!(again.to_line(), line, "encoding is stable");

    let mut framed = BytesMut::new();
    LineCodec::new(usize::MAX, Overflow::Error).encode(msg, &mut framed).expect("encoding into memory succeeds");
    assert_eq!(&framed[..], &line[..], "the codec's Encoder writes what Message::encode writes");
}

/// Reads a message's params or result as the type its method implies, and checks that
/// whatever is accepted reads back the same after being written out.
fn check_typed_view(msg: &Message) {
    match msg {
        Message::Request(r) => {
            let Some(params) = &r.params else { return };
            match r.method.as_str() {
                methods::TASK => round_trip::<Task>(params.get()),
                methods::HANDSHAKE => round_trip::<HandshakeParams>(params.get()),
                _ => {}
            }
        }
        Message::Notification(n) => {
            let Some(params) = &n.params else { return };
            match n.method.as_str() {
                methods::LOG => round_trip::<LogParams>(params.get()),
                methods::PROGRESS => round_trip::<ProgressParams>(params.get()),
                methods::OUTPUT => round_trip::<OutputParams>(params.get()),
                methods::CANCEL => round_trip::<CancelParams>(params.get()),
                _ => {}
            }
        }
        Message::Response(r) => {
            if let Ok(result) = &r.outcome {
                round_trip::<TaskResult>(result.get());
                round_trip::<HandshakeResult>(result.get());
            }
        }
    }
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(text: &str) {
    let Ok(value) = serde_json::from_str::<T>(text) else { return };
    let written = serde_json::to_string(&value).expect("an accepted value serializes");
    let again: T = serde_json::from_str(&written).expect("what was written reads back");
    assert_eq!(again, value, "read, written, read again: {written}");
}

/// A decode error is a fixed text with at most a line and a column in it: strip the
/// numbers and it must be one of the texts the decoder can produce.
fn check_error_text(e: &DecodeError) {
    let DecodeError::NotJson(detail) = e else { return };
    let shape: String = detail.chars().filter(|c| !c.is_ascii_digit()).collect();
    let known = ["I/O error", "syntax error", "unexpected JSON shape", "unexpected end of input"]
        .map(|what| format!("{what} at line  column "));
    assert!(known.contains(&shape), "a decode error says more than where and what: {detail:?}");
}
