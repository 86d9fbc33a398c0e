//! `GET /v1/tasks`: the task API's tasks, newest first, filtered and paged.

use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{ApiBody, error, journal_error, json_response, path};
use crate::daemon::service::Daemon;
use crate::journal::{Listing, MAX_LISTING};

/// A page of tasks: `?state=&plugin=&name=&cluster=&limit=&before=` (each filter an exact
/// match; `limit` 1 to 500, 50 by default; `before` the `next` of the previous page).
/// 400 for a bad `state` or `limit`, naming the parameter.
pub(super) async fn list<B>(daemon: &Daemon, req: &Request<B>) -> Response<ApiBody> {
    let listing = match listing(req.uri().query().unwrap_or_default()) {
        Ok(l) => l,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match daemon.journal.list(listing).await {
        Ok((tasks, next)) => json_response(StatusCode::OK, &json!({"tasks": tasks, "next": next})),
        Err(e) => journal_error(daemon, &e.to_string()),
    }
}

fn listing(query: &str) -> Result<Listing, String> {
    let mut l = Listing { limit: 50, ..Listing::default() };
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = path::decode(&v.replace('+', " ")).ok_or_else(|| format!("{k}: not valid percent-encoding"))?;
        let v = Some(v).filter(|v| !v.is_empty());
        match k {
            "state" => {
                if v.as_deref().is_some_and(|s| !matches!(s, "queued" | "running" | "done")) {
                    return Err("state: give queued, running or done".to_owned());
                }
                l.state = v;
            }
            "plugin" => l.plugin = v,
            "name" => l.name = v,
            "cluster" => l.cluster = v,
            "before" => l.before = v,
            "limit" => {
                l.limit = match v.as_deref().map(str::parse::<usize>) {
                    Some(Ok(n)) if (1..=MAX_LISTING).contains(&n) => n,
                    _ => return Err(format!("limit: give a number from 1 to {MAX_LISTING}")),
                };
            }
            _ => {}
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_becomes_a_listing_and_bad_values_are_named() {
        let l = listing("state=done&plugin=shell&name=INSTALL&cluster=c%201&limit=5&before=1_a").unwrap();
        assert_eq!(
            (l.state.as_deref(), l.plugin.as_deref(), l.name.as_deref(), l.cluster.as_deref(), l.limit),
            (Some("done"), Some("shell"), Some("INSTALL"), Some("c 1"), 5)
        );
        assert_eq!(listing("").unwrap().limit, 50);
        assert_eq!(listing("state=").unwrap().state, None, "an empty filter is no filter");
        assert!(listing("state=finished").unwrap_err().starts_with("state:"));
        assert!(listing("limit=0").unwrap_err().starts_with("limit:"));
        assert!(listing("limit=501").unwrap_err().starts_with("limit:"));
        assert!(listing("plugin=%zz").unwrap_err().starts_with("plugin:"));
    }
}
