//! A composite route: `aggregate = { ... }` in place of `upstream = "..."`.
//!
//! ```toml
//! [[routes]]
//! name = "profile"
//! match = { path_regex = "/profile/(?P<id>[0-9]+)" }
//! aggregate = { merge = "keys", on_error = "partial", timeout = "2s", max_body = "1MiB",
//!               forward_headers = ["accept-language"], calls = [
//!   { name = "user",   upstream = "users",  path = "/users/{id}" },
//!   { name = "orders", upstream = "orders", path = "/orders?user={id}&limit={query.limit}" },
//! ] }
//! ```
//!
//! Path templates take `{NAME}`, a named capture group of the route's `match.path_regex`,
//! and `{query.NAME}`, that parameter of the request's query (as sent, still
//! percent-encoded; empty when absent). Every call is a GET to its upstream, sent
//! concurrently; each body must be JSON.

use std::time::Duration;

use hyper::header::HeaderName;
use serde::Deserialize;

use super::{
    Problems, UpstreamConfig,
    routes::PathMatch,
    units::{Size, duration, size},
};

#[derive(Debug, Clone)]
pub struct AggregateConfig {
    pub calls: Vec<AggregateCall>,
    pub merge: Merge,
    pub on_error: OnError,
    /// Per call: from sending it to having its whole body.
    pub timeout: Duration,
    /// Each call's body, and the merged response, at most this many bytes.
    pub max_body: u64,
    /// Request headers passed on to every call (besides `X-Request-Id`, and the caller's
    /// identity as `X-Gateway-Identity` once authentication sets one).
    pub forward_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone)]
pub struct AggregateCall {
    /// Its key in the merged body, and in `errors`.
    pub name: String,
    /// Index into the config's upstreams.
    pub upstream: usize,
    pub path: Vec<TemplatePart>,
}

/// A piece of a call's path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// A named capture of the route's path regex.
    Capture(String),
    /// A query parameter of the request.
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Merge {
    /// `{"user": {...}, "orders": [...]}`: each body under its call's name.
    #[default]
    Keys,
    /// The members of every body (each must be an object) in one object; later calls win.
    Root,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Any call failing fails the request (502).
    #[default]
    Fail,
    /// Answer with what arrived, and an `errors` member listing the calls that did not.
    Partial,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregate {
    #[serde(default)]
    calls: Vec<RawCall>,
    #[serde(default)]
    merge: Merge,
    #[serde(default)]
    on_error: OnError,
    timeout: Option<String>,
    max_body: Option<Size>,
    #[serde(default)]
    forward_headers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    name: String,
    upstream: String,
    path: String,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
const MAX_CALLS: usize = 32;

impl RawAggregate {
    /// `key` is the route's (`routes[2]`); `path` its compiled path match.
    pub(super) fn compile(
        self,
        key: &str,
        path: &PathMatch,
        upstreams: &[UpstreamConfig],
        problems: &mut Problems,
    ) -> AggregateConfig {
        let key = format!("{key}.aggregate");
        if self.calls.is_empty() || self.calls.len() > MAX_CALLS {
            problems.add(
                format!("{key}.calls"),
                format!("needs 1 to {MAX_CALLS} calls"),
            );
        }
        let captures: Vec<&str> = match path {
            PathMatch::Regex(regex) => regex.capture_names().flatten().collect(),
            _ => Vec::new(),
        };
        let mut calls: Vec<AggregateCall> = Vec::new();
        for (index, call) in self.calls.into_iter().enumerate() {
            let call_key = format!("{key}.calls[{index}]");
            if call.name.is_empty() || calls.iter().any(|other| other.name == call.name) {
                problems.add(
                    format!("{call_key}.name"),
                    format!("{:?} must be non-empty and unique", call.name),
                );
            }
            let upstream = upstreams.iter().position(|u| u.name == call.upstream);
            if upstream.is_none() {
                problems.add(
                    format!("{call_key}.upstream"),
                    format!("no upstream is named {:?}", call.upstream),
                );
            }
            let template = parse_template(&call.path, &format!("{call_key}.path"), problems);
            for part in &template {
                if let TemplatePart::Capture(name) = part
                    && !captures.contains(&name.as_str())
                {
                    problems.add(
                        format!("{call_key}.path"),
                        format!(
                            "{{{name}}} is not a named capture group of the route's \
                             match.path_regex (e.g. \"/profile/(?P<{name}>[^/]+)\")"
                        ),
                    );
                }
            }
            calls.push(AggregateCall {
                name: call.name,
                upstream: upstream.unwrap_or(0),
                path: template,
            });
        }
        let mut forward_headers = Vec::new();
        for (index, name) in self.forward_headers.iter().enumerate() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(parsed) => forward_headers.push(parsed),
                Err(_) => problems.add(
                    format!("{key}.forward_headers[{index}]"),
                    format!("{name:?} is not a valid header name"),
                ),
            }
        }
        AggregateConfig {
            calls,
            merge: self.merge,
            on_error: self.on_error,
            timeout: duration(self.timeout, &format!("{key}.timeout"), problems)
                .unwrap_or(DEFAULT_TIMEOUT),
            max_body: size(self.max_body, &format!("{key}.max_body"), problems)
                .unwrap_or(DEFAULT_MAX_BODY),
            forward_headers,
        }
    }
}

/// `/users/{id}?expand={query.expand}` into literals and placeholders.
fn parse_template(text: &str, key: &str, problems: &mut Problems) -> Vec<TemplatePart> {
    if !text.starts_with('/') {
        problems.add(key, format!("{text:?} must start with \"/\""));
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            problems.add(key, format!("{text:?}: a \"{{\" is not closed"));
            return parts;
        };
        let name = &rest[open + 1..open + close];
        let valid = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        match name.strip_prefix("query.") {
            Some(query) if valid(query) => parts.push(TemplatePart::Query(query.to_owned())),
            None if valid(name) => parts.push(TemplatePart::Capture(name.to_owned())),
            _ => problems.add(
                key,
                format!("{{{name}}} is not a placeholder ({{NAME}} or {{query.NAME}})"),
            ),
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        problems.add(key, format!("{text:?}: a \"}}\" is not opened"));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_owned()));
    }
    if parts.iter().any(|part| match part {
        TemplatePart::Literal(literal) => literal.contains(['#', ' ']),
        _ => false,
    }) {
        problems.add(key, format!("{text:?} is not a valid path and query"));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ParseError};

    const BASE: &str = "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"users\"\n[[upstreams]]\nname = \"orders\"\n";

    #[test]
    fn templates_parse() {
        let mut problems = Problems::default();
        let parts = parse_template("/u/{id}/x?e={query.expand}", "k", &mut problems);
        assert!(problems.0.is_empty());
        assert_eq!(
            parts,
            [
                TemplatePart::Literal("/u/".into()),
                TemplatePart::Capture("id".into()),
                TemplatePart::Literal("/x?e=".into()),
                TemplatePart::Query("expand".into()),
            ]
        );
    }

    #[test]
    fn aggregate_routes_compile_and_problems_name_the_key() {
        let config = Config::parse(&format!(
            "{BASE}[[routes]]\nname = \"p\"\nmatch = {{ path_regex = \"/p/(?P<id>[0-9]+)\" }}\n\
             aggregate = {{ merge = \"root\", on_error = \"partial\", timeout = \"1s\", calls = [\
             {{ name = \"user\", upstream = \"users\", path = \"/users/{{id}}\" }},\
             {{ name = \"orders\", upstream = \"orders\", path = \"/orders?u={{id}}\" }}] }}\n"
        ))
        .unwrap();
        let aggregate = config.proxy.routes[0].aggregate.as_ref().unwrap();
        assert_eq!(aggregate.calls.len(), 2);
        assert_eq!(aggregate.calls[1].upstream, 1);
        assert_eq!(
            (aggregate.merge, aggregate.on_error),
            (Merge::Root, OnError::Partial)
        );

        let Err(ParseError::Invalid(found)) = Config::parse(&format!(
            "{BASE}[[routes]]\nname = \"p\"\nupstream = \"users\"\nmatch = {{ path_prefix = \"/p\" }}\n\
             aggregate = {{ calls = [{{ name = \"a\", upstream = \"nope\", path = \"x/{{id}}\" }},\
             {{ name = \"a\", upstream = \"users\", path = \"/{{bad name}}\" }}] }}\n"
        )) else {
            panic!("expected problems");
        };
        let found: Vec<String> = found.iter().map(ToString::to_string).collect();
        for prefix in [
            "routes[0]: set upstream or aggregate, not both",
            "routes[0].aggregate.calls[0].upstream: no upstream is named \"nope\"",
            "routes[0].aggregate.calls[0].path: \"x/{id}\" must start with \"/\"",
            "routes[0].aggregate.calls[0].path: {id} is not a named capture group",
            "routes[0].aggregate.calls[1].name: \"a\" must be non-empty and unique",
            "routes[0].aggregate.calls[1].path: {bad name} is not a placeholder",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }
}
