//! Who is asking, and whether a browser may be tricked into asking: the API's bearer
//! token, the console's session cookie, and the checks against cross-site requests.
//!
//! A browser sends cookies by itself, so a request that carries only the session cookie
//! could have been made by another site's page. Two checks stop that for everything that
//! changes something (any method but GET and HEAD):
//! - a request with the cookie must also carry [`CSRF_HEADER`]: a cross-site form cannot
//!   send a header, and a cross-site script cannot send one without CORS, which the daemon
//!   never grants;
//! - a request a browser marks as coming from another site (`Sec-Fetch-Site: cross-site`
//!   or `same-site`, or an `Origin` whose host is not the `Host` asked for) is refused
//!   whoever sends it: this also covers a daemon on loopback without a token, which needs
//!   no cookie at all. Clients other than browsers send neither header.
//!
//! A daemon without a token answers a browser only under a loopback `Host` (an IP address
//! or `localhost`): a page of another site whose name was pointed at 127.0.0.1 (DNS
//! rebinding) gets nothing.

use hyper::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use hyper::{Method, Request};

use crate::daemon::service::Daemon;
use crate::daemon::session;

/// The header the console sends with every request.
pub const CSRF_HEADER: &str = "x-loom-csrf";

/// How a request proved it may use the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Caller {
    /// No token is configured: everyone on loopback may.
    Open,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The console's session cookie, with the session's id.
    Session(String),
}

/// The caller, or `None` when a token is configured and the request has neither it nor a
/// valid session.
pub(super) fn identify<B>(daemon: &Daemon, req: &Request<B>) -> Option<Caller> {
    let Some(token) = daemon.config().token else { return Some(Caller::Open) };
    // RFC 9110: the scheme is case-insensitive; one or more spaces follow it.
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, given)| given.trim());
    if bearer.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_str().as_bytes())) {
        return Some(Caller::Bearer);
    }
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(session::from_cookie_header)
        .find(|id| daemon.sessions.valid(id, &token))
        .map(|id| Caller::Session(id.to_owned()))
}

/// Why the request must be refused (403) though its caller may use the API: it changes
/// something and a browser may have been made to send it, or it reaches a token-less
/// daemon under a name that is not loopback's.
pub(super) fn refusal<B>(req: &Request<B>, caller: Option<&Caller>, login: bool) -> Option<&'static str> {
    let headers = req.headers();
    let browser = headers.contains_key(ORIGIN) || headers.contains_key("sec-fetch-mode");
    if browser && caller == Some(&Caller::Open) && !loopback_host(host(req)) {
        return Some("this daemon has no token and answers browsers only at a loopback address or localhost");
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()).unwrap_or("");
    if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
        return Some("a request from another site's page cannot change anything");
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, h)| h);
        if origin_host.is_none_or(|h| !h.eq_ignore_ascii_case(host(req))) {
            return Some("a request from another origin cannot change anything");
        }
    }
    let with_cookie = matches!(caller, Some(Caller::Session(_)));
    if (with_cookie || login) && !headers.contains_key(CSRF_HEADER) {
        return Some("a request from the console must carry the X-Loom-CSRF header");
    }
    None
}

/// The `Host` asked for (the authority of an absolute-form request).
fn host<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(hyper::http::uri::Authority::as_str))
        .unwrap_or("")
}

/// Whether `host` (with or without a port) is `localhost` or a loopback IP address.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(ip, _)| ip)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Compares without leaking where the first difference is.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/v1/tasks");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn cross_site_requests_that_change_something_are_refused() {
        let open = Some(&Caller::Open);
        let host = ("host", "127.0.0.1:55056");
        assert_eq!(refusal(&request(Method::POST, &[host]), open, false), None, "curl");
        let cross = request(Method::POST, &[host, ("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "no-cors")]);
        assert!(refusal(&cross, open, false).is_some());
        let other_origin = request(Method::POST, &[host, ("origin", "http://evil.example")]);
        assert!(refusal(&other_origin, open, false).is_some());
        let same =
            request(Method::POST, &[host, ("origin", "http://127.0.0.1:55056"), ("sec-fetch-site", "same-origin")]);
        assert_eq!(refusal(&same, open, false), None);
        // Reading is not refused: the answer goes to the page's own origin only.
        assert_eq!(refusal(&request(Method::GET, &[host, ("sec-fetch-site", "cross-site")]), open, false), None);
    }

    #[test]
    fn a_cookie_needs_the_csrf_header_to_change_something() {
        let session = Caller::Session("id".into());
        let host = ("host", "daemon.example:55056");
        assert!(refusal(&request(Method::POST, &[host]), Some(&session), false).is_some());
        assert_eq!(refusal(&request(Method::POST, &[host, ("x-loom-csrf", "1")]), Some(&session), false), None);
        assert_eq!(refusal(&request(Method::GET, &[host]), Some(&session), false), None);
        assert_eq!(refusal(&request(Method::POST, &[host]), Some(&Caller::Bearer), false), None);
        assert!(refusal(&request(Method::POST, &[host]), None, true).is_some(), "logging in needs it too");
    }

    #[test]
    fn a_tokenless_daemon_answers_browsers_at_loopback_names_only() {
        let open = Some(&Caller::Open);
        let rebound = request(Method::GET, &[("host", "evil.example:55056"), ("sec-fetch-mode", "cors")]);
        assert!(refusal(&rebound, open, false).is_some());
        for host in ["127.0.0.1:55056", "localhost:55056", "[::1]:55056", "LOCALHOST"] {
            let r = request(Method::GET, &[("host", host), ("sec-fetch-mode", "navigate")]);
            assert_eq!(refusal(&r, open, false), None, "{host}");
        }
        assert_eq!(refusal(&request(Method::GET, &[("host", "evil.example")]), open, false), None, "not a browser");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
