//! The routes compiled for lookup: candidates are found by host (exact map, wildcard suffix
//! map, any host) and then by path (exact map, whole-segment prefix map), so a request
//! checks the few routes that can match, not every route. Regex and any-path routes are
//! checked one by one. Precedence is unchanged: of every route that matches, the first in
//! config order wins, as the linear scan it replaces ([`route::matches`] over each route)
//! found it.

use std::collections::HashMap;

use hyper::{HeaderMap, Method};

use crate::config::{HostMatch, PathMatch, RouteMatch};

use super::route::matches;

/// Route indexes by what they match on; every list is in config (precedence) order.
#[derive(Default)]
pub struct RouteTable {
    matchers: Vec<RouteMatch>,
    /// `host = "api.example.com"`.
    exact_hosts: HashMap<Box<str>, PathIndex>,
    /// `host = "*.example.com"`, by `.example.com`.
    suffix_hosts: HashMap<Box<str>, PathIndex>,
    /// No host condition.
    any_host: PathIndex,
}

/// Route indexes of one host bucket, by what they match the path on.
#[derive(Default)]
struct PathIndex {
    exact: HashMap<Box<str>, Vec<usize>>,
    prefix: HashMap<Box<str>, Vec<usize>>,
    /// Any path, or a regex: checked one by one.
    scanned: Vec<usize>,
}

impl RouteTable {
    /// Compiles the matchers of the routes, in precedence order.
    pub fn new<'a>(matchers: impl IntoIterator<Item = &'a RouteMatch>) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, matcher) in matchers.into_iter().enumerate() {
            let bucket = match &matcher.host {
                HostMatch::Exact(host) => {
                    table.exact_hosts.entry(host.as_str().into()).or_default()
                }
                // Stored as `.example.com`; anything else would not be found by label.
                HostMatch::Suffix(suffix) if suffix.starts_with('.') => table
                    .suffix_hosts
                    .entry(suffix.as_str().into())
                    .or_default(),
                HostMatch::Suffix(_) | HostMatch::Any => &mut table.any_host,
            };
            bucket.add(index, &matcher.path);
            table.matchers.push(matcher.clone());
        }
        table
    }

    /// The index of the first route that takes a request with this (lowercase, port-less)
    /// host, path, method and headers.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<usize> {
        let mut best = None;
        let mut consider = |index: &PathIndex| {
            index.first(path, &mut best, |route| {
                matches(&self.matchers[route], host, path, method, headers)
            });
        };
        if let Some(host) = host {
            if let Some(index) = self.exact_hosts.get(host) {
                consider(index);
            }
            // `.b.example.com`, `.example.com`, `.com` of `a.b.example.com`: one label at
            // least before the suffix.
            if !self.suffix_hosts.is_empty() {
                for (at, _) in host.match_indices('.').filter(|&(at, _)| at > 0) {
                    if let Some(index) = self.suffix_hosts.get(&host[at..]) {
                        consider(index);
                    }
                }
            }
        }
        consider(&self.any_host);
        best
    }
}

impl PathIndex {
    fn add(&mut self, route: usize, path: &PathMatch) {
        let list = match path {
            PathMatch::Exact(exact) => self.exact.entry(exact.as_str().into()).or_default(),
            PathMatch::Prefix(prefix) => self.prefix.entry(prefix.as_str().into()).or_default(),
            PathMatch::Any | PathMatch::Regex(_) => &mut self.scanned,
        };
        list.push(route);
    }

    /// Lowers `best` to the first route of this bucket that `takes` the request, if one
    /// comes before it.
    fn first(&self, path: &str, best: &mut Option<usize>, takes: impl Fn(usize) -> bool) {
        let mut scan = |routes: &[usize]| {
            let bound = *best;
            let earlier = routes
                .iter()
                .take_while(|&&route| bound.is_none_or(|b| route < b));
            if let Some(&route) = earlier.into_iter().find(|&&route| takes(route)) {
                *best = Some(route);
            }
        };
        if let Some(routes) = self.exact.get(path) {
            scan(routes);
        }
        if !self.prefix.is_empty() {
            for cut in prefix_cuts(path) {
                if let Some(routes) = self.prefix.get(&path[..cut]) {
                    scan(routes);
                }
            }
        }
        scan(&self.scanned);
    }
}

/// Where a whole-segment prefix of `path` may end ([`PathMatch::prefix_matches`]): after a
/// '/' (a prefix ending in '/'), before a '/', or at the end.
fn prefix_cuts(path: &str) -> impl Iterator<Item = usize> + '_ {
    let bytes = path.as_bytes();
    (0..=bytes.len()).filter(move |&cut| {
        cut == bytes.len() || bytes[cut] == b'/' || (cut > 0 && bytes[cut - 1] == b'/')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};
    use proptest::prelude::*;
    use regex::Regex;

    /// The scan the table replaces: the oracle.
    fn linear(
        matchers: &[RouteMatch],
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<usize> {
        matchers
            .iter()
            .position(|matcher| matches(matcher, host, path, method, headers))
    }

    const HOSTS: [&str; 5] = ["a.test", "b.a.test", "c.b.a.test", "test", "other.example"];
    const PATHS: [&str; 12] = [
        "/",
        "/v1",
        "/v1/",
        "/v1/users",
        "/v1/users/7",
        "/v10",
        "/v1/users/",
        "/v2/x",
        "/a/b/c",
        "/a",
        "",
        "/v1//users",
    ];

    fn host_match() -> impl Strategy<Value = HostMatch> {
        prop_oneof![
            Just(HostMatch::Any),
            prop::sample::select(&HOSTS[..]).prop_map(|host| HostMatch::Exact(host.into())),
            prop::sample::select(&[".a.test", ".test", ".b.a.test", ".example", "a.test"][..])
                .prop_map(|suffix| HostMatch::Suffix(suffix.into())),
        ]
    }

    fn path_match() -> impl Strategy<Value = PathMatch> {
        let paths = &PATHS[..];
        prop_oneof![
            Just(PathMatch::Any),
            prop::sample::select(paths).prop_map(|path| PathMatch::Exact(path.into())),
            prop::sample::select(paths).prop_map(|path| PathMatch::Prefix(path.into())),
            prop::sample::select(&["/v1/.*", "/v[0-9]+", "/a/.*/c", ".*"][..]).prop_map(
                |pattern| PathMatch::Regex(Regex::new(&format!("^(?:{pattern})$")).unwrap())
            ),
        ]
    }

    fn route_match() -> impl Strategy<Value = RouteMatch> {
        (
            host_match(),
            path_match(),
            prop::sample::subsequence(vec![Method::GET, Method::POST], 0..=2),
            any::<bool>(),
        )
            .prop_map(|(host, path, methods, header)| RouteMatch {
                host,
                path,
                methods,
                headers: header
                    .then(|| {
                        (
                            HeaderName::from_static("x-v"),
                            HeaderValue::from_static("2"),
                        )
                    })
                    .into_iter()
                    .collect(),
            })
    }

    proptest! {
        /// Many routes with overlapping hosts and prefixes: the table picks the route the
        /// linear scan picks, for every request.
        #[test]
        fn the_table_picks_what_the_linear_scan_picks(
            matchers in prop::collection::vec(route_match(), 0..40),
        ) {
            let table = RouteTable::new(&matchers);
            let mut versioned = HeaderMap::new();
            versioned.insert("x-v", HeaderValue::from_static("2"));
            let requests_hosts = HOSTS.iter().copied().map(Some).chain([None, Some("x.test")]);
            for host in requests_hosts {
                for path in PATHS {
                    for method in [Method::GET, Method::POST, Method::DELETE] {
                        for headers in [&HeaderMap::new(), &versioned] {
                            prop_assert_eq!(
                                table.find(host, path, &method, headers),
                                linear(&matchers, host, path, &method, headers),
                                "{:?} {:?} {}", host, path, method
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn prefix_cuts_are_segment_ends() {
        let cuts = |path: &str| prefix_cuts(path).collect::<Vec<_>>();
        assert_eq!(cuts("/v1/users"), [0, 1, 3, 4, 9]);
        assert_eq!(cuts(""), [0]);
        assert_eq!(cuts("/"), [0, 1]);
        assert_eq!(cuts("//"), [0, 1, 2]);
    }
}
