//! The JSON-RPC 2.0 envelope.
//!
//! Every line on the wire is one [`Message`]. Decoding is tolerant where the JSON-RPC
//! specification allows it (a missing `"jsonrpc"` member is accepted; `params` may be
//! omitted) and strict where a mistake would be silently misrouted (a message with both
//! `result` and `error`, or with neither a `method` nor a `result`/`error`, is an error).
//! Encoding always writes `"jsonrpc":"2.0"` and a trailing newline.

use std::borrow::Cow;
use std::fmt;

use serde::de::Deserializer;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The id that ties a response to its request. The supervisor always sends integers;
/// strings are accepted because JSON-RPC allows them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// An integer id.
    Number(i64),
    /// A string id.
    String(String),
}

impl From<i64> for RequestId {
    fn from(n: i64) -> Self {
        RequestId::Number(n)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestId::Number(n) => write!(f, "{n}"),
            RequestId::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// One message on the wire.
#[derive(Debug, Clone)]
pub enum Message {
    /// A call that expects a [`Response`] with the same id.
    Request(Request),
    /// The answer to a request.
    Response(Response),
    /// A one-way message; never answered.
    Notification(Notification),
}

/// A call that expects a response.
#[derive(Debug, Clone)]
pub struct Request {
    /// Chosen by the sender, echoed in the response.
    pub id: RequestId,
    /// The method name, see [`crate::methods`].
    pub method: String,
    /// Raw JSON params; `None` when the member was omitted.
    pub params: Option<Box<RawValue>>,
}

/// A one-way message.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The method name, see [`crate::methods`].
    pub method: String,
    /// Raw JSON params; `None` when the member was omitted.
    pub params: Option<Box<RawValue>>,
}

/// The answer to a request: exactly one of a result or an error.
#[derive(Debug, Clone)]
pub struct Response {
    /// The id of the request this answers. `None` only for `"id": null`, which JSON-RPC
    /// reserves for errors about a request whose id could not be read.
    pub id: Option<RequestId>,
    /// The raw JSON result, or the error.
    pub outcome: Result<Box<RawValue>, ResponseError>,
}

/// The `error` member of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    /// See [`crate::codes`].
    pub code: i64,
    /// A short human-readable description.
    pub message: String,
    /// Anything else the sender wants to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ResponseError {
    /// An error with a code and a message and no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        ResponseError { code, message: message.into(), data: None }
    }
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

/// Why a line is not a message. The text never quotes the line itself: lines carry tasks,
/// and tasks carry credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or not UTF-8.
    #[error("not JSON ({0})")]
    NotJson(String),
    /// JSON, but not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(&'static str),
}

impl Message {
    /// Decodes one line (without its newline; surrounding whitespace is allowed).
    ///
    /// # Errors
    /// [`DecodeError`] when the line is not JSON or not a JSON-RPC 2.0 message. The error
    /// says where and what, never what the line contained.
    pub fn decode(line: &[u8]) -> Result<Message, DecodeError> {
        let wire: WireIn<'_> = serde_json::from_slice(line).map_err(describe_json_error)?;
        if let Some(version) = &wire.jsonrpc
            && version != "2.0"
        {
            return Err(DecodeError::NotJsonRpc("\"jsonrpc\" is not \"2.0\""));
        }
        match (wire.method, wire.result, wire.error) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err(DecodeError::NotJsonRpc("has both \"method\" and \"result\"/\"error\""))
            }
            (Some(method), None, None) => {
                let method = method.into_owned();
                Ok(match wire.id {
                    Some(Some(id)) => Message::Request(Request { id, method, params: wire.params }),
                    // A request with `"id": null` is treated as a notification, as the
                    // specification discourages null ids and nothing could answer it.
                    _ => Message::Notification(Notification { method, params: wire.params }),
                })
            }
            (None, Some(_), Some(_)) => Err(DecodeError::NotJsonRpc("has both \"result\" and \"error\"")),
            (None, Some(result), None) => {
                Ok(Message::Response(Response { id: wire.id.flatten(), outcome: Ok(result) }))
            }
            (None, None, Some(error)) => Ok(Message::Response(Response { id: wire.id.flatten(), outcome: Err(error) })),
            (None, None, None) => Err(DecodeError::NotJsonRpc("has no \"method\", \"result\" or \"error\"")),
        }
    }

    /// Appends this message as one line (JSON plus `\n`) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Serializing these types into a Vec cannot fail: every map key is a string and
        // RawValue is already valid JSON.
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }

    /// This message as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out);
        out
    }
}

impl Request {
    /// A request whose params are serialized from `params`.
    pub fn new(id: impl Into<RequestId>, method: impl Into<String>, params: &impl Serialize) -> Request {
        Request { id: id.into(), method: method.into(), params: to_raw(params) }
    }

    /// The line (newline included) of request `id` calling `method` with `params`, which
    /// are JSON text already: they are copied in as they are, neither parsed nor written
    /// again, so a task reaches its plugin as the bytes it was submitted as, for the cost
    /// of one copy. The same line as [`Message::to_line`] of the equivalent request.
    pub fn line_with_params(id: i64, method: &str, params: &RawValue) -> Vec<u8> {
        let params = params.get().as_bytes();
        let mut line = Vec::with_capacity(params.len() + method.len() + 48);
        line.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        line.extend_from_slice(id.to_string().as_bytes());
        line.extend_from_slice(br#","method":"#);
        // A &str always serializes.
        let _ = serde_json::to_writer(&mut line, method);
        line.extend_from_slice(br#","params":"#);
        line.extend_from_slice(params);
        line.extend_from_slice(b"}\n");
        line
    }
}

impl Notification {
    /// A notification whose params are serialized from `params`.
    pub fn new(method: impl Into<String>, params: &impl Serialize) -> Notification {
        Notification { method: method.into(), params: to_raw(params) }
    }
}

impl Response {
    /// A successful response whose result is serialized from `result`.
    pub fn ok(id: RequestId, result: &impl Serialize) -> Response {
        let raw = to_raw(result).unwrap_or_else(null_raw);
        Response { id: Some(id), outcome: Ok(raw) }
    }

    /// An error response.
    pub fn err(id: Option<RequestId>, error: ResponseError) -> Response {
        Response { id, outcome: Err(error) }
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Message::Request(r)
    }
}
impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Message::Response(r)
    }
}
impl From<Notification> for Message {
    fn from(n: Notification) -> Self {
        Message::Notification(n)
    }
}

/// Serializes into a raw JSON value. Only fails for types that cannot be JSON (maps with
/// non-string keys), which this protocol never sends; those become `None`.
fn to_raw(value: &impl Serialize) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value).ok()
}

fn null_raw() -> Box<RawValue> {
    // `Value::Null` always serializes.
    serde_json::value::to_raw_value(&Value::Null).unwrap_or_else(|_| unreachable!("null serializes"))
}

/// Describes a serde_json error by category and position only: its default text can quote
/// parts of the input (`invalid type: string "hunter2"`), and the input may be a task.
pub(crate) fn describe_json_error(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected JSON shape",
        Category::Eof => "unexpected end of input",
    };
    DecodeError::NotJson(format!("{what} at line {} column {}", e.line(), e.column()))
}

/// The shape read off the wire. `id` is `Option<Option<_>>` to tell `"id": null` from a
/// missing id; `result` keeps `null` as a present value.
#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Option<RequestId>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    params: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ResponseError>,
}

/// Deserializes a member that is present (even as `null`) into `Some`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("jsonrpc", "2.0")?;
        match self {
            Message::Request(r) => {
                map.serialize_entry("id", &r.id)?;
                map.serialize_entry("method", &r.method)?;
                if let Some(p) = &r.params {
                    map.serialize_entry("params", p)?;
                }
            }
            Message::Notification(n) => {
                map.serialize_entry("method", &n.method)?;
                if let Some(p) = &n.params {
                    map.serialize_entry("params", p)?;
                }
            }
            Message::Response(r) => {
                map.serialize_entry("id", &r.id)?;
                match &r.outcome {
                    Ok(result) => map.serialize_entry("result", result)?,
                    Err(error) => map.serialize_entry("error", error)?,
                }
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_with_raw_params_is_the_request_as_it_would_be_written() {
        let params = RawValue::from_string(r#"{"taskId":"t1","config":{"a":[1,2.50,"x\"y"]}}"#.to_owned()).unwrap();
        let line = Request::line_with_params(7, "task", &params);
        assert!(line.ends_with(b"}\n") && !line[..line.len() - 1].contains(&b'\n'));
        let Message::Request(r) = Message::decode(&line).unwrap() else { panic!("not a request") };
        assert_eq!((r.id, r.method.as_str()), (RequestId::Number(7), "task"));
        // The params' bytes, as given (2.50 stays 2.50).
        assert_eq!(r.params.unwrap().get(), params.get());
        let same = Message::Request(Request::new(7, "task", &params)).to_line();
        assert_eq!(line, same);
    }

    fn decode(s: &str) -> Result<Message, DecodeError> {
        Message::decode(s.as_bytes())
    }

    #[test]
    fn decodes_each_kind() {
        let Ok(Message::Request(r)) = decode(r#"{"jsonrpc":"2.0","id":7,"method":"task","params":{"a":1}}"#) else {
            panic!("request")
        };
        assert_eq!((r.id, r.method.as_str()), (RequestId::Number(7), "task"));
        assert_eq!(r.params.map(|p| p.get().to_owned()).as_deref(), Some(r#"{"a":1}"#));

        let Ok(Message::Notification(n)) = decode(r#"{"jsonrpc":"2.0","method":"log","params":{"level":"info"}}"#)
        else {
            panic!("notification")
        };
        assert_eq!(n.method, "log");

        let Ok(Message::Response(r)) = decode(r#"{"jsonrpc":"2.0","id":"x","result":{}}"#) else { panic!("response") };
        assert_eq!(r.id, Some(RequestId::String("x".into())));
        assert_eq!(r.outcome.map(|v| v.get().to_owned()), Ok("{}".to_owned()));

        let Ok(Message::Response(r)) = decode(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#)
        else {
            panic!("error response")
        };
        assert_eq!(r.outcome.err().map(|e| e.code), Some(-32601));
    }

    #[test]
    fn null_result_is_a_result_and_null_id_is_kept_as_none() {
        let Ok(Message::Response(r)) = decode(r#"{"jsonrpc":"2.0","id":null,"result":null}"#) else { panic!() };
        assert_eq!(r.id, None);
        assert_eq!(r.outcome.map(|v| v.get().to_owned()), Ok("null".to_owned()));
    }

    #[test]
    fn escaped_method_names_decode() {
        let Ok(Message::Notification(n)) = decode(r#"{"method":"l\u006fg"}"#) else { panic!() };
        assert_eq!(n.method, "log");
        assert!(n.params.is_none());
    }

    #[test]
    fn rejects_what_could_be_misrouted() {
        assert!(matches!(decode(r#"{"jsonrpc":"2.0","id":1}"#), Err(DecodeError::NotJsonRpc(_))));
        assert!(matches!(
            decode(r#"{"id":1,"result":1,"error":{"code":1,"message":""}}"#),
            Err(DecodeError::NotJsonRpc(_))
        ));
        assert!(matches!(decode(r#"{"jsonrpc":"1.0","method":"x"}"#), Err(DecodeError::NotJsonRpc(_))));
        assert!(matches!(decode("hello world"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode("[1,2]"), Err(DecodeError::NotJson(_))));
    }

    #[test]
    fn decode_errors_never_quote_the_input() {
        // A wrongly typed member whose value is a secret: serde's own message would quote it.
        let err = decode(r#"{"jsonrpc":"2.0","id":1,"error":{"code":"hunter2","message":"x"}}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = decode(r#"{"method": "hunter2-is-my-password" oops}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn encode_round_trips_and_ends_with_newline() {
        let msgs: Vec<Message> = vec![
            Request::new(1, "ping", &serde_json::json!({})).into(),
            Notification::new("cancel", &serde_json::json!({"taskId": "t1"})).into(),
            Response::ok(RequestId::String("a".into()), &serde_json::json!({"status": 0})).into(),
            Response::err(None, ResponseError::new(-32700, "bad")).into(),
        ];
        for m in msgs {
            let line = m.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let text = String::from_utf8(line.clone()).unwrap();
            assert!(text.starts_with(r#"{"jsonrpc":"2.0","#), "{text}");
            let again = Message::decode(&line).unwrap();
            assert_eq!(again.to_line(), line);
        }
    }
}
