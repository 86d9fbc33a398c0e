//! The API's route table, written once: dispatch and the 405 answers (with their `Allow`
//! header) both come from [`ROUTES`].

use hyper::Method;

/// What an endpoint does; [`super`] runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Health,
    Metrics,
    SubmitTask,
    GetTask,
    ListPlugins,
    RestartPlugin,
    ClusterUp,
    ListClusters,
    GetCluster,
    ClusterDown,
    RestartServices,
    Reconfigure,
    ClusterPlan,
    ListTasks,
    Stats,
    Console,
    Session,
    Events,
}

/// Every endpoint: its method, its path (`*` stands for one segment, passed on), and what
/// it does.
pub(super) const ROUTES: &[(Method, &[&str], Endpoint)] = &[
    (Method::GET, &["healthz"], Endpoint::Health),
    (Method::GET, &["metrics"], Endpoint::Metrics),
    (Method::GET, &[], Endpoint::Console),
    (Method::GET, &["console.js"], Endpoint::Console),
    (Method::GET, &["console.css"], Endpoint::Console),
    (Method::GET, &["v1", "session"], Endpoint::Session),
    (Method::POST, &["v1", "session"], Endpoint::Session),
    (Method::DELETE, &["v1", "session"], Endpoint::Session),
    (Method::GET, &["v1", "stats"], Endpoint::Stats),
    (Method::GET, &["v1", "tasks"], Endpoint::ListTasks),
    (Method::POST, &["v1", "tasks"], Endpoint::SubmitTask),
    (Method::GET, &["v1", "tasks", "*"], Endpoint::GetTask),
    (Method::GET, &["v1", "plugins"], Endpoint::ListPlugins),
    (Method::POST, &["v1", "plugins", "*", "restart"], Endpoint::RestartPlugin),
    (Method::POST, &["v1", "clusters"], Endpoint::ClusterUp),
    (Method::GET, &["v1", "clusters"], Endpoint::ListClusters),
    (Method::GET, &["v1", "clusters", "*"], Endpoint::GetCluster),
    (Method::DELETE, &["v1", "clusters", "*"], Endpoint::ClusterDown),
    (Method::POST, &["v1", "clusters", "*", "restart-services"], Endpoint::RestartServices),
    (Method::POST, &["v1", "clusters", "*", "reconfigure"], Endpoint::Reconfigure),
    (Method::POST, &["v1", "clusters", "*", "plan"], Endpoint::ClusterPlan),
    (Method::GET, &["v1", "events"], Endpoint::Events),
];

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found<'p> {
    /// To `endpoint`, with the path's `*` segments in order.
    Endpoint(Endpoint, Vec<&'p str>),
    /// The path exists, not with this method: the methods it has (for `Allow`).
    WrongMethod(Vec<&'static str>),
    /// No such path.
    NoPath,
}

/// Finds the endpoint for `method` on the path's `segments`.
pub(super) fn find<'p>(method: &Method, segments: &[&'p str]) -> Found<'p> {
    let mut allowed = Vec::new();
    for (m, pattern, endpoint) in ROUTES {
        let Some(args) = matches(pattern, segments) else { continue };
        if m == method {
            return Found::Endpoint(*endpoint, args);
        }
        allowed.push(m.as_str());
    }
    if allowed.is_empty() { Found::NoPath } else { Found::WrongMethod(allowed) }
}

/// The `*` segments, when `segments` fits `pattern`.
fn matches<'p>(pattern: &[&str], segments: &[&'p str]) -> Option<Vec<&'p str>> {
    if pattern.len() != segments.len() {
        return None;
    }
    let mut args = Vec::new();
    for (p, s) in pattern.iter().zip(segments) {
        match *p {
            "*" => args.push(*s),
            literal if literal == *s => {}
            _ => return None,
        }
    }
    Some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_is_found_with_its_arguments() {
        for (method, pattern, endpoint) in ROUTES {
            let segments: Vec<&str> = pattern.iter().map(|p| if *p == "*" { "x y" } else { p }).collect();
            let args = vec!["x y"; pattern.iter().filter(|p| **p == "*").count()];
            assert_eq!(find(method, &segments), Found::Endpoint(*endpoint, args), "{method} {pattern:?}");
        }
    }

    #[test]
    fn a_known_path_with_another_method_lists_the_allowed_ones() {
        assert_eq!(find(&Method::PUT, &["v1", "clusters", "c"]), Found::WrongMethod(vec!["GET", "DELETE"]));
        assert_eq!(find(&Method::PUT, &["v1", "tasks"]), Found::WrongMethod(vec!["GET", "POST"]));
        assert_eq!(find(&Method::DELETE, &["v1", "clusters", "c", "reconfigure"]), Found::WrongMethod(vec!["POST"]));
    }

    #[test]
    fn an_unknown_path_is_not_found() {
        assert_eq!(find(&Method::GET, &["v1", "tasks", "a", "b"]), Found::NoPath);
        assert_eq!(find(&Method::GET, &["v2", "tasks"]), Found::NoPath);
        assert_eq!(find(&Method::GET, &["console.html"]), Found::NoPath);
    }
}
