//! Route precedence (most specific first) and the warnings for routes that an earlier one
//! always takes.

use std::cmp::Ordering;

use super::routes::{HostMatch, PathMatch, RouteConfig, RouteMatch};

/// Most specific first: exact host, then longer wildcard suffixes, then any host; within a
/// host class, exact path, then longer prefixes, then regex, then any path; then more
/// method/header constraints. `Ordering::Equal` keeps file order (the sort is stable).
pub(super) fn precedence(a: &RouteMatch, b: &RouteMatch) -> Ordering {
    fn host_rank(host: &HostMatch) -> (u8, std::cmp::Reverse<usize>) {
        match host {
            HostMatch::Exact(_) => (0, std::cmp::Reverse(0)),
            HostMatch::Suffix(suffix) => (1, std::cmp::Reverse(suffix.len())),
            HostMatch::Any => (2, std::cmp::Reverse(0)),
        }
    }
    fn path_rank(path: &PathMatch) -> (u8, std::cmp::Reverse<usize>) {
        match path {
            PathMatch::Exact(_) => (0, std::cmp::Reverse(0)),
            PathMatch::Prefix(prefix) => (1, std::cmp::Reverse(prefix.len())),
            PathMatch::Regex(_) => (2, std::cmp::Reverse(0)),
            PathMatch::Any => (3, std::cmp::Reverse(0)),
        }
    }
    let constraints = |m: &RouteMatch| usize::from(!m.methods.is_empty()) + m.headers.len();
    host_rank(&a.host)
        .cmp(&host_rank(&b.host))
        .then(path_rank(&a.path).cmp(&path_rank(&b.path)))
        .then(constraints(b).cmp(&constraints(a)))
}

/// Warns about every route that an earlier route (in precedence order) fully covers.
pub(super) fn report_shadowed(routes: &[RouteConfig], warnings: &mut Vec<String>) {
    for (at, route) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..at]
            .iter()
            .find(|earlier| covers(&earlier.matcher, &route.matcher))
        {
            warnings.push(format!(
                "{} ({:?}) can never match: every request it matches goes to {} ({:?}), which takes precedence",
                route.origin, route.name, earlier.origin, earlier.name
            ));
        }
    }
}

/// Whether every request `narrow` matches is also matched by `broad`. Conservative: `false`
/// when it cannot tell (regexes other than identical ones).
fn covers(broad: &RouteMatch, narrow: &RouteMatch) -> bool {
    let host = match (&broad.host, &narrow.host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
        (HostMatch::Suffix(a), HostMatch::Exact(b)) => b.ends_with(a.as_str()),
        (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
        _ => false,
    };
    let path = match (&broad.path, &narrow.path) {
        (PathMatch::Any, _) => true,
        (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
        (PathMatch::Prefix(a), PathMatch::Exact(b) | PathMatch::Prefix(b)) => {
            PathMatch::prefix_matches(a, b)
        }
        (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
        (PathMatch::Regex(a), PathMatch::Exact(b)) => a.is_match(b),
        _ => false,
    };
    let methods = broad.methods.is_empty()
        || (!narrow.methods.is_empty()
            && narrow
                .methods
                .iter()
                .all(|method| broad.methods.contains(method)));
    let headers = broad
        .headers
        .iter()
        .all(|pair| narrow.headers.contains(pair));
    host && path && methods && headers
}
