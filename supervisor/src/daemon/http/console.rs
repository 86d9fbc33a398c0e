//! The console's endpoints: its files at `/` ([`crate::daemon::console`]) and
//! `/v1/session`, where a browser trades the token for a session cookie.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /`, `/console.js`, `/console.css` | the console's files (no token needed: they hold no data) |
//! | `GET /v1/session` | 200 `{"authenticated","tokenRequired"}` |
//! | `POST /v1/session` (body `{"token": "..."}`, header `X-Loom-CSRF`) | 204 and `Set-Cookie: loom_session=...; HttpOnly; SameSite=Strict`, 401 a wrong token |
//! | `DELETE /v1/session` | 204, the session ended and the cookie cleared |

use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::guard::{Caller, constant_time_eq};
use super::server::Body;
use super::{ApiBody, error, full, json_response, read_body};
use crate::daemon::console;
use crate::daemon::service::Daemon;
use crate::daemon::session;

/// A login body is one short token.
const MAX_LOGIN_BYTES: usize = 8 * 1024;

/// The console file at `path` (`""` for the page), with its CSP; 304 when the browser's
/// copy is current.
pub(super) fn asset<B>(req: &Request<B>, path: &str) -> Response<ApiBody> {
    let Some(asset) = console::find(path) else { return error(StatusCode::NOT_FOUND, "no such file") };
    let etag = console::etag(asset);
    let fresh = req.headers().get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag);
    let mut r = if fresh {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(full(Bytes::from_static(asset.bytes)))
    };
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(hyper::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(console::CSP));
    // Revalidated on every load: a browser never runs the script of an older daemon.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    r
}

/// `/v1/session`: what the caller's session is, a login, or a logout.
pub(super) async fn session(daemon: &Daemon, req: Request<Body>, caller: Option<Caller>) -> Response<ApiBody> {
    let token = daemon.config().token;
    match *req.method() {
        Method::POST => login(daemon, req).await,
        Method::DELETE => {
            if let Some(Caller::Session(id)) = &caller {
                daemon.sessions.close(id);
            }
            with_cookie(no_content(), &format!("{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict", session::COOKIE))
        }
        _ => {
            json_response(StatusCode::OK, &json!({"authenticated": caller.is_some(), "tokenRequired": token.is_some()}))
        }
    }
}

async fn login(daemon: &Daemon, req: Request<Body>) -> Response<ApiBody> {
    let Some(token) = daemon.config().token else {
        return json_response(StatusCode::OK, &json!({"authenticated": true, "tokenRequired": false}));
    };
    let body = match read_body(daemon, req, MAX_LOGIN_BYTES).await {
        Ok(b) => b.bytes,
        Err(r) => return r,
    };
    let given = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(serde_json::Value::as_str).map(str::to_owned));
    let Some(given) = given else {
        return error(StatusCode::BAD_REQUEST, "the body must be {\"token\": \"...\"}");
    };
    if !constant_time_eq(given.trim().as_bytes(), token.as_str().as_bytes()) {
        tracing::warn!("a console login gave a wrong token");
        return error(StatusCode::UNAUTHORIZED, "that is not the daemon's token");
    }
    match daemon.sessions.open(&token) {
        Ok(id) => {
            let cookie = format!(
                "{}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
                session::COOKIE,
                session::LIFETIME.as_secs()
            );
            with_cookie(no_content(), &cookie)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn no_content() -> Response<ApiBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn with_cookie(mut r: Response<ApiBody>, cookie: &str) -> Response<ApiBody> {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}
