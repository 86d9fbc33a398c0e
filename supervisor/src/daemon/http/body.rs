//! Reading a request's body within its limits: its size (`max_body_bytes`), its time
//! (`http.body_read_timeout_secs`) and the room it takes in the task budget
//! ([`crate::daemon::budget`]). The bytes are copied once, into a buffer of the declared size, and
//! become the JSON text that is kept (a task is forwarded as it was sent).

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{CONNECTION, CONTENT_LENGTH, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::value::RawValue;

use super::{ApiBody, Body, error};
use crate::daemon::budget::{Budget, BudgetError, Reservation};
use crate::wire::json::describe_json_error;

/// A body read whole, and the room it holds in the task budget.
pub(super) struct Received {
    pub bytes: Vec<u8>,
    pub reservation: Reservation,
}

/// The limits a body is read within.
pub(super) struct BodyLimits<'a> {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub budget: &'a Budget,
}

/// Reads the body: reserves its declared size (else `max_bytes`) in the budget, waiting
/// up to `timeout` for room, then reads it within `timeout`.
///
/// # Errors
/// The answer to give: 413 (too large), 503 (the budget stayed full), 408 (too slow),
/// 400 (the connection failed mid-body). After 408 and 503 the connection is closed, as
/// the rest of the body may still be on its way.
pub(super) async fn receive(req: Request<Body>, limits: BodyLimits<'_>) -> Result<Received, Response<ApiBody>> {
    let max = limits.max_bytes;
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than the limit of {max} bytes"));
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut reservation = match limits.budget.reserve(declared.unwrap_or(max), limits.timeout).await {
        Ok(r) => r,
        Err(e @ BudgetError::TooLarge { .. }) => return Err(error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())),
        Err(e @ BudgetError::Full { .. }) => {
            let mut r = closing(error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()));
            r.headers_mut().insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("5"));
            return Err(r);
        }
    };
    let read = collect(req.into_body(), max, declared.unwrap_or(0));
    let bytes = match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(ReadError::TooLarge)) => return Err(closing(too_large())),
        Ok(Err(ReadError::Failed(e))) => {
            return Err(error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}")));
        }
        Err(_) => {
            let secs = limits.timeout.as_secs_f64();
            let why = format!("the body did not arrive within {secs} s (http.body_read_timeout_secs)");
            return Err(closing(error(StatusCode::REQUEST_TIMEOUT, &why)));
        }
    };
    reservation.shrink_to(bytes.len());
    Ok(Received { bytes, reservation })
}

fn closing(mut r: Response<ApiBody>) -> Response<ApiBody> {
    r.headers_mut().insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    r
}

enum ReadError {
    TooLarge,
    Failed(hyper::Error),
}

/// The body's bytes, at most `max`, in one buffer sized for `expected`.
async fn collect(mut body: Body, max: usize, expected: usize) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::with_capacity(expected.min(max));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Failed)?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > max {
                return Err(ReadError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Why a body is not JSON text (a 400). Says where, never quoting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BodyError {
    /// Not UTF-8: the offset of the first bad byte.
    #[error("the body is not UTF-8 text (a bad byte at offset {0})")]
    NotUtf8(usize),
    /// Not one JSON value: what is wrong and where ([`describe_json_error`]).
    #[error("the body is {0}")]
    NotJson(String),
}

/// The body as JSON text, kept as it is (no tree is built; the buffer becomes the text
/// without a copy when it has no surrounding whitespace).
///
/// # Errors
/// [`BodyError`]: where the text stops being UTF-8 or JSON, never quoting it.
pub(super) fn json(bytes: Vec<u8>) -> Result<Box<RawValue>, BodyError> {
    let mut text = String::from_utf8(bytes).map_err(|e| BodyError::NotUtf8(e.utf8_error().valid_up_to()))?;
    let end = text.trim_end().len();
    text.truncate(end);
    let start = text.len() - text.trim_start().len();
    text.drain(..start);
    text.shrink_to_fit();
    RawValue::from_string(text).map_err(|e| BodyError::NotJson(describe_json_error(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_kept_as_sent_and_errors_say_where_not_what() {
        assert_eq!(json(b" {\"a\": [1, 2]}\n".to_vec()).unwrap().get(), "{\"a\": [1, 2]}");
        let cases: [(&[u8], &str); 5] = [
            (b"{\"pw\": \"hunter2\"", "JSON that ends too soon at line 1 column 16"),
            (b"{\"pw\" \"hunter2\"}", "not valid JSON at line 1 column 7 (expected `:`)"),
            (b"{\"pw\": \"hunter2\xff\"}", "not UTF-8 text (a bad byte at offset 15)"),
            (b"{\"pw\": \"hunter2\"} x", "not valid JSON at line 1 column 19 (trailing characters)"),
            (b"", "JSON that ends too soon"),
        ];
        for (body, want) in cases {
            let got = json(body.to_vec()).unwrap_err().to_string();
            assert!(got.contains(want), "{:?}: {got}", String::from_utf8_lossy(body));
            assert!(!got.contains("hunter2"), "{got}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(json(deep.into_bytes()).is_ok(), "kept as text: how deep it nests matters when it is read");
    }
}
