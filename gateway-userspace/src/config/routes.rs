//! `[[routes]]`: what a route matches (host, path, methods, headers) and what it does with
//! a request (upstream or aggregate, cache, rewrite, header edits, auth, limits, CORS).

use std::{collections::HashMap, sync::Arc};

use hyper::{
    Method,
    header::{HeaderName, HeaderValue},
};
use regex::Regex;
use serde::Deserialize;

use super::{
    Problems,
    aggregate::{AggregateConfig, RawAggregate},
    auth::{self, AuthConfig, Authorize, Cors, RateLimitRule, RouteAuth},
    cache::{CacheConfig, CacheStoreConfig, RawCache, check_identity_keying},
    header_ops::{HeaderOps, RawHeaderOps, sorted_pairs},
    normalise::EscapedSlashes,
    proxy::check_name,
    upstreams::UpstreamConfig,
};

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Where it was declared, e.g. `routes[2]`.
    pub origin: String,
    pub matcher: RouteMatch,
    /// Index into [`ProxyConfig::upstreams`] (for an aggregate route: its first call's).
    pub upstream: usize,
    /// A composite route: calls several upstreams and merges their JSON (proxy/aggregate.rs).
    pub aggregate: Option<Arc<AggregateConfig>>,
    /// Response caching (proxy/cache.rs); `None`: not cached.
    pub cache: Option<CacheConfig>,
    /// Replaces the matched path prefix (empty: strips it).
    pub rewrite_prefix: Option<String>,
    /// Whether `%2F` and `%5C` in the path are refused (the default) or forwarded.
    pub escaped_slashes: EscapedSlashes,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Credentials the route requires (`None`: anyone may call it).
    pub auth: Option<RouteAuth>,
    pub authorize: Option<Authorize>,
    /// Every one applies; empty: no L7 rate limit.
    pub rate_limits: Vec<RateLimitRule>,
    pub cors: Option<Cors>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: HostMatch,
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// Every one must be present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostMatch {
    #[default]
    Any,
    /// Lowercase, no port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: one or more labels before it.
    Suffix(String),
}

#[derive(Debug, Clone, Default)]
pub enum PathMatch {
    #[default]
    Any,
    Exact(String),
    /// Whole segments: `/v1` matches `/v1` and `/v1/users`, not `/v10`.
    Prefix(String),
    /// Must match the whole path (anchored when compiled).
    Regex(Regex),
}

impl PathMatch {
    /// Whether `prefix` (a [`PathMatch::Prefix`]) matches `path`, segment-wise.
    pub fn prefix_matches(prefix: &str, path: &str) -> bool {
        match path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    upstream: Option<String>,
    aggregate: Option<RawAggregate>,
    cache: Option<RawCache>,
    #[serde(default)]
    strip_prefix: bool,
    rewrite_prefix: Option<String>,
    #[serde(default)]
    escaped_slashes: EscapedSlashes,
    #[serde(default)]
    request_headers: RawHeaderOps,
    #[serde(default)]
    response_headers: RawHeaderOps,
    auth: Option<auth::RawRouteAuth>,
    authorize: Option<auth::RawAuthorize>,
    #[serde(default)]
    rate_limits: Vec<auth::RawRateLimit>,
    cors: Option<auth::RawCors>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    host: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
}

pub(super) fn compile_routes(
    raw: Vec<RawRoute>,
    upstreams: &[UpstreamConfig],
    cache_store: &CacheStoreConfig,
    auth: &AuthConfig,
    problems: &mut Problems,
) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (index, route) in raw.into_iter().enumerate() {
        let key = format!("routes[{index}]");
        check_name(&route.name, &format!("{key}.name"), problems);
        if routes.iter().any(|other| other.name == route.name) {
            problems.add(
                format!("{key}.name"),
                format!("{:?} is used twice", route.name),
            );
        }
        let mut matcher = route.matcher.compile(&format!("{key}.match"), problems);
        if route.aggregate.is_some() {
            // Calls are GETs: a composite route answers GET and HEAD only.
            if matcher.methods.is_empty() {
                matcher.methods = vec![Method::GET, Method::HEAD];
            } else if matcher
                .methods
                .iter()
                .any(|method| method != Method::GET && method != Method::HEAD)
            {
                problems.add(
                    format!("{key}.match.methods"),
                    "an aggregate route answers GET and HEAD only",
                );
            }
        }
        let aggregate = route
            .aggregate
            .map(|aggregate| Arc::new(aggregate.compile(&key, &matcher.path, upstreams, problems)));
        let upstream = match (&route.upstream, &aggregate) {
            (Some(name), None) => {
                let found = upstreams.iter().position(|upstream| &upstream.name == name);
                if found.is_none() {
                    problems.add(
                        format!("{key}.upstream"),
                        format!("no upstream is named {name:?}"),
                    );
                }
                found
            }
            (None, Some(aggregate)) => aggregate.calls.first().map(|call| call.upstream),
            (Some(_), Some(_)) => {
                problems.add(&key, "set upstream or aggregate, not both");
                None
            }
            (None, None) => {
                problems.add(&key, "needs upstream (or aggregate)");
                None
            }
        };
        let route_auth = route
            .auth
            .map(|raw| auth::compile_route_auth(raw, &format!("{key}.auth"), auth, problems));
        let cache = route.cache.map(|cache| {
            let cache = cache.compile(&key, cache_store, problems);
            let requires_authorization = matcher
                .headers
                .iter()
                .any(|(name, _)| name == hyper::header::AUTHORIZATION);
            check_identity_keying(
                route_auth.is_some(),
                requires_authorization,
                &cache,
                &key,
                problems,
            );
            cache
        });
        let rewrite_prefix = match (route.strip_prefix, route.rewrite_prefix) {
            (true, Some(_)) => {
                problems.add(
                    format!("{key}.rewrite_prefix"),
                    "set strip_prefix or rewrite_prefix, not both",
                );
                None
            }
            (true, None) => Some(String::new()),
            (false, Some(prefix)) => {
                if !prefix.starts_with('/') {
                    problems.add(
                        format!("{key}.rewrite_prefix"),
                        format!("{prefix:?} must start with \"/\""),
                    );
                }
                Some(prefix)
            }
            (false, None) => None,
        };
        if rewrite_prefix.is_some() && aggregate.is_some() {
            problems.add(
                format!("{key}.rewrite_prefix"),
                "an aggregate route's calls name their own paths",
            );
        }
        if rewrite_prefix.is_some() && !matches!(matcher.path, PathMatch::Prefix(_)) {
            problems.add(
                format!(
                    "{key}.{}",
                    if route.strip_prefix {
                        "strip_prefix"
                    } else {
                        "rewrite_prefix"
                    }
                ),
                "needs match.path_prefix: there is no matched prefix to replace",
            );
        }
        let authorize = route.authorize.map(|raw| {
            let key = format!("{key}.authorize");
            auth::compile_authorize(raw, &key, route_auth.as_ref(), auth, problems)
        });
        routes.push(RouteConfig {
            rate_limits: auth::compile_rate_limits(
                route.rate_limits,
                &format!("{key}.rate_limits"),
                problems,
            ),
            cors: route
                .cors
                .map(|raw| auth::compile_cors(raw, &format!("{key}.cors"), problems)),
            auth: route_auth,
            authorize,
            origin: key.clone(),
            name: route.name,
            matcher,
            upstream: upstream.unwrap_or(0),
            aggregate,
            cache,
            rewrite_prefix,
            escaped_slashes: route.escaped_slashes,
            request_headers: route
                .request_headers
                .compile(&format!("{key}.request_headers"), problems),
            response_headers: route
                .response_headers
                .compile(&format!("{key}.response_headers"), problems),
        });
    }
    routes
}

impl RawMatch {
    fn compile(self, key: &str, problems: &mut Problems) -> RouteMatch {
        let host = match self.host {
            None => HostMatch::Any,
            Some(host) => compile_host(&host, &format!("{key}.host"), problems),
        };
        let given = [&self.path, &self.path_prefix, &self.path_regex]
            .iter()
            .filter(|value| value.is_some())
            .count();
        if given > 1 {
            problems.add(key, "set at most one of path, path_prefix and path_regex");
        }
        let path = if let Some(path) = self.path {
            check_path(&path, &format!("{key}.path"), problems);
            PathMatch::Exact(path)
        } else if let Some(prefix) = self.path_prefix {
            check_path(&prefix, &format!("{key}.path_prefix"), problems);
            PathMatch::Prefix(prefix)
        } else if let Some(pattern) = self.path_regex {
            match Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => PathMatch::Regex(regex),
                Err(error) => {
                    problems.add(
                        format!("{key}.path_regex"),
                        format!("{pattern:?} is not a valid regex: {error}"),
                    );
                    PathMatch::Any
                }
            }
        } else {
            PathMatch::Any
        };
        let mut methods = Vec::new();
        for (index, method) in self.methods.iter().enumerate() {
            let upper = method.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(parsed) if !method.is_empty() && !methods.contains(&parsed) => {
                    methods.push(parsed)
                }
                Ok(_) => problems.add(
                    format!("{key}.methods[{index}]"),
                    format!("{method:?} is listed twice"),
                ),
                Err(_) => problems.add(
                    format!("{key}.methods[{index}]"),
                    format!("{method:?} is not an HTTP method"),
                ),
            }
        }
        let mut headers = sorted_pairs(self.headers, &format!("{key}.headers"), problems);
        headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        RouteMatch {
            host,
            path,
            methods,
            headers,
        }
    }
}

pub(super) fn compile_host(host: &str, key: &str, problems: &mut Problems) -> HostMatch {
    let lower = host.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        problems.add(
            key,
            format!(
                "{host:?} is not a host name (e.g. \"api.example.com\" or \"*.example.com\"; no port, no other wildcards)"
            ),
        );
    }
    if wildcard {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(lower)
    }
}

fn check_path(path: &str, key: &str, problems: &mut Problems) {
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        problems.add(
            key,
            format!("{path:?} must start with \"/\" and hold no query, fragment or space"),
        );
    }
}
