//! RFC 9111 as pure functions: the `Cache-Control` directives, whether and how long a
//! response may be stored.

use std::time::{Duration, SystemTime};

use hyper::{
    HeaderMap, Response,
    header::{
        AGE, CACHE_CONTROL, DATE, ETAG, EXPIRES, HeaderName, LAST_MODIFIED, PRAGMA, SET_COOKIE,
        VARY,
    },
};

use crate::config::CacheConfig;

use super::{super::body::ProxyBody, key::vary_names};

/// How a cacheable response is kept.
pub(super) struct Plan {
    pub(super) vary: Vec<HeaderName>,
    pub(super) initial_age: Duration,
    pub(super) fresh_for: Duration,
    pub(super) stale_while_revalidate: Duration,
    pub(super) stale_if_error: Duration,
    pub(super) must_revalidate: bool,
    pub(super) no_cache: bool,
}

/// Whether (and how long) a response may be stored; `None`: it may not.
pub(super) fn storable(
    config: &CacheConfig,
    response: &Response<ProxyBody>,
    head: bool,
) -> Option<Plan> {
    let headers = response.headers();
    if head || !config.statuses.contains(&response.status().as_u16()) {
        return None;
    }
    let directives = Directives::parse(headers);
    let validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    if directives.no_store
        || directives.private
        || (directives.no_cache && !validators)
        || headers.contains_key(SET_COOKIE)
    {
        return None;
    }
    let vary = vary_names(headers);
    if vary.iter().any(|name| name.as_str() == "*")
        || headers.get_all(VARY).iter().any(|v| v == "*")
    {
        return None;
    }
    let date = headers
        .get(DATE)
        .and_then(|value| httpdate::parse_http_date(value.to_str().ok()?).ok())
        .unwrap_or_else(SystemTime::now);
    let expires = headers.get(EXPIRES).map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|text| httpdate::parse_http_date(text).ok())
            // An invalid Expires (e.g. "0") means already expired (RFC 9111 5.3).
            .map_or(Duration::ZERO, |at| {
                at.duration_since(date).unwrap_or_default()
            })
    });
    let stated = directives
        .s_maxage
        .or(directives.max_age)
        .map(Duration::from_secs)
        .or(expires);
    let fresh_for = match config.override_ttl {
        true => config.ttl,
        false => stated.or(config.ttl),
    }?;
    let initial_age = headers
        .get(AGE)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let stale_while_revalidate = directives
        .stale_while_revalidate
        .map(Duration::from_secs)
        .or(config.stale_while_revalidate)
        .unwrap_or_default();
    let stale_if_error = directives
        .stale_if_error
        .map(Duration::from_secs)
        .or(config.stale_if_error)
        .unwrap_or_default();
    let plan = Plan {
        vary,
        initial_age,
        fresh_for,
        stale_while_revalidate,
        stale_if_error,
        must_revalidate: directives.must_revalidate
            || directives.no_cache
            || directives.s_maxage.is_some(),
        no_cache: directives.no_cache,
    };
    let usable = plan.fresh_for + plan.stale_while_revalidate.max(plan.stale_if_error);
    (usable > plan.initial_age).then_some(plan)
}

/// The `Cache-Control` directives the cache acts on (request or response). Public for the
/// fuzz target `cache_control`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    pub fn parse(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(value) = value.to_str() else {
                // Unreadable: take the safe side.
                directives.no_store = true;
                continue;
            };
            for (name, argument) in split_directives(value) {
                let seconds = || argument.as_deref()?.parse::<u64>().ok();
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => directives.no_store = true,
                    "no-cache" => directives.no_cache = true,
                    "private" => directives.private = true,
                    "must-revalidate" | "proxy-revalidate" => directives.must_revalidate = true,
                    // An invalid max-age is stale at once (RFC 9111 4.2.1).
                    "max-age" => directives.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => directives.s_maxage = Some(seconds().unwrap_or(0)),
                    "stale-while-revalidate" => directives.stale_while_revalidate = seconds(),
                    "stale-if-error" => directives.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        // HTTP/1.0's `Pragma: no-cache`, for requests without Cache-Control.
        if headers.get_all(CACHE_CONTROL).iter().next().is_none()
            && headers
                .get(PRAGMA)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        {
            directives.no_cache = true;
        }
        directives
    }
}

/// The directives of one `Cache-Control` value: (name, argument), the argument unquoted.
/// Commas inside a quoted argument (`no-cache="a, b"`) belong to it (RFC 9110 5.6.4, 5.6.2),
/// so text in quotes never reads as a directive of its own. An unterminated quote runs to
/// the end of the value.
fn split_directives(value: &str) -> Vec<(&str, Option<String>)> {
    let mut directives = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let end = rest.find([',', '=']).unwrap_or(rest.len());
        let name = rest[..end].trim();
        let mut argument = None;
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (text, remaining) = match after.strip_prefix('"') {
                Some(quoted) => unquote(quoted),
                None => {
                    let end = after.find(',').unwrap_or(after.len());
                    (after[..end].trim_end().to_owned(), &after[end..])
                }
            };
            argument = Some(text);
            // Anything between a closing quote and the next comma is malformed: dropped.
            rest = remaining.find(',').map_or("", |at| &remaining[at..]);
        }
        rest = rest.strip_prefix(',').unwrap_or(rest);
        if !name.is_empty() {
            directives.push((name, argument));
        }
    }
    directives
}

/// A quoted-string's content (the opening quote already consumed), with `\x` escapes
/// resolved, and what follows its closing quote.
fn unquote(quoted: &str) -> (String, &str) {
    let mut text = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return (text, &quoted[at + 1..]),
            '\\' => text.extend(chars.next().map(|(_, escaped)| escaped)),
            _ => text.push(c),
        }
    }
    (text, "")
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::super::tests::headers;
    use super::*;
    use crate::proxy::body::empty;

    #[test]
    fn cache_control_parses() {
        let parsed = Directives::parse(&headers(&[
            ("cache-control", "public, max-age=60, s-maxage=\"120\""),
            ("cache-control", "stale-while-revalidate=5, Must-Revalidate"),
        ]));
        assert_eq!(
            parsed,
            Directives {
                must_revalidate: true,
                max_age: Some(60),
                s_maxage: Some(120),
                stale_while_revalidate: Some(5),
                ..Directives::default()
            }
        );
        let invalid = Directives::parse(&headers(&[("cache-control", "max-age=soon")]));
        assert_eq!(invalid.max_age, Some(0));
        let pragma = Directives::parse(&headers(&[("pragma", "no-cache")]));
        assert!(pragma.no_cache);
    }

    #[test]
    fn split_directives_keeps_quoted_commas_inside_the_argument() {
        let some = |text: &str| Some(text.to_owned());
        type Directive<'a> = (&'a str, Option<String>);
        let cases: &[(&str, &[Directive])] = &[
            ("", &[]),
            (" , ,", &[]),
            ("public", &[("public", None)]),
            ("max-age=60", &[("max-age", some("60"))]),
            ("max-age = 60 ", &[("max-age", some("60"))]),
            ("s-maxage=\"120\"", &[("s-maxage", some("120"))]),
            (
                "no-cache=\"a, b\", max-age=5",
                &[("no-cache", some("a, b")), ("max-age", some("5"))],
            ),
            (
                "private=\"set-cookie, no-store\"",
                &[("private", some("set-cookie, no-store"))],
            ),
            (
                "no-cache=\"x,max-age=9999\",s-maxage=1",
                &[
                    ("no-cache", some("x,max-age=9999")),
                    ("s-maxage", some("1")),
                ],
            ),
            (
                "no-cache=\"a\\\", no-store\", public",
                &[("no-cache", some("a\", no-store")), ("public", None)],
            ),
            // Unterminated: the rest is the argument, never a directive.
            (
                "no-cache=\"a, no-store",
                &[("no-cache", some("a, no-store"))],
            ),
            (
                "no-cache=\"a\"junk, public",
                &[("no-cache", some("a")), ("public", None)],
            ),
            ("max-age=", &[("max-age", some(""))]),
            ("=5, public", &[("public", None)]),
            ("a=1=2, b", &[("a", some("1=2")), ("b", None)]),
        ];
        for (value, expected) in cases {
            assert_eq!(split_directives(value), *expected, "{value:?}");
        }
    }

    #[test]
    fn quoted_arguments_never_set_directives() {
        for hidden in [
            "no-store",
            "max-age=0",
            "s-maxage=0",
            "private",
            "must-revalidate",
        ] {
            for (before, after) in [("", ""), ("x, ", ""), ("", ", y"), (" ", " ")] {
                let value = format!("public, no-cache=\"{before}{hidden}{after}\", max-age=60");
                let parsed = Directives::parse(&headers(&[("cache-control", &value)]));
                let expected = Directives {
                    no_cache: true,
                    max_age: Some(60),
                    ..Directives::default()
                };
                assert_eq!(parsed, expected, "{value:?}");
            }
        }
    }

    proptest::proptest! {
        /// Whatever a quoted argument holds, the directives after it are read the same.
        #[test]
        fn quoted_text_is_opaque(inside in "[ -~]{0,40}") {
            let escaped = inside.replace('\\', "\\\\").replace('"', "\\\"");
            let value = format!("no-cache=\"{escaped}\", max-age=7");
            let directives = split_directives(&value);
            proptest::prop_assert_eq!(
                directives,
                vec![("no-cache", Some(inside.clone())), ("max-age", Some("7".to_owned()))]
            );
        }
    }

    fn config(ttl: Option<u64>, override_ttl: bool) -> CacheConfig {
        CacheConfig {
            ttl: ttl.map(Duration::from_secs),
            override_ttl,
            max_entry_size: 1024,
            statuses: vec![200, 404],
            stale_while_revalidate: None,
            stale_if_error: Some(Duration::from_secs(30)),
            key_by_identity: false,
        }
    }

    fn response(status: u16, pairs: &[(&'static str, &str)]) -> Response<ProxyBody> {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        *response.headers_mut() = headers(pairs);
        response
    }

    #[test]
    fn freshness_follows_rfc_9111() {
        let fresh = |config: &CacheConfig, pairs: &[(&'static str, &str)]| {
            storable(config, &response(200, pairs), false).map(|plan| plan.fresh_for.as_secs())
        };
        let route = config(Some(10), false);
        assert_eq!(fresh(&route, &[]), Some(10));
        assert_eq!(fresh(&route, &[("cache-control", "max-age=60")]), Some(60));
        assert_eq!(
            fresh(&route, &[("cache-control", "max-age=60, s-maxage=5")]),
            Some(5)
        );
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(100));
        assert_eq!(
            fresh(&route, &[("date", &date), ("expires", &expires)]),
            Some(100)
        );
        assert_eq!(fresh(&config(None, false), &[]), None);
        assert_eq!(
            fresh(&config(Some(7), true), &[("cache-control", "max-age=60")]),
            Some(7)
        );
        for refused in ["no-store", "private", "no-cache", "private=\"x\""] {
            assert_eq!(
                fresh(&route, &[("cache-control", refused)]),
                None,
                "{refused}"
            );
        }
        // no-cache with a validator: kept, to be revalidated on every use.
        let plan = storable(
            &route,
            &response(200, &[("cache-control", "no-cache"), ("etag", "\"1\"")]),
            false,
        )
        .unwrap();
        assert!(plan.no_cache && plan.must_revalidate);
        assert_eq!(fresh(&route, &[("set-cookie", "a=b")]), None);
        assert_eq!(fresh(&route, &[("vary", "*")]), None);
        assert!(storable(&route, &response(500, &[]), false).is_none());
        assert!(storable(&route, &response(200, &[]), true).is_none());
        let plan = storable(
            &route,
            &response(404, &[("vary", "Accept, accept-language")]),
            false,
        )
        .unwrap();
        assert_eq!(plan.vary, ["accept", "accept-language"]);
    }
}
