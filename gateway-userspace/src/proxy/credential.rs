//! Reading the one credential a request presents, as the upstream would read it. Pure
//! functions over the header fields and the raw query (the fuzz target calls them).
//!
//! Every place a route accepts a credential from is searched, and every value counts: two
//! `Authorization` fields, the API-key header twice, the token cookie twice, the query
//! parameter twice, or one value in each of two places is [`Ambiguous`] (400), decided
//! before anything is verified: the gateway must not verify one and forward another.
//! Values are read the way upstream frameworks read them:
//! - a header field whose name differs only by `_` for `-` (`x_api_key`) is the same field
//!   to CGI/WSGI-style servers (`HTTP_X_API_KEY`), so it counts as another value;
//! - query names and values are form-decoded (`%XX`, `+` as a space); a `;` inside the
//!   pair that holds the credential is ambiguous (some servers split pairs on `;` too);
//! - cookie names and values are percent-decoded (`%XX`, `+` kept), as frameworks that
//!   decode cookies read them: `sess%69on` is `session`, so it counts as another value.

use hyper::{
    HeaderMap,
    header::{AUTHORIZATION, COOKIE, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
};

use crate::config::auth::TokenSource;

use cookie::Cookie;

use super::normalise::percent_decode;

/// More than one credential value: why, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Ambiguous(pub &'static str);

/// The request's one credential among `sources` (the places a route accepts one from,
/// in order): which source it came from and its value. `None` when there is none, or it
/// is empty, or `Authorization` holds another scheme than Bearer.
pub fn extract(
    headers: &HeaderMap,
    query: Option<&str>,
    sources: &[&TokenSource],
) -> Result<Option<(usize, String)>, Ambiguous> {
    let mut found = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        // Two sources may name the same place (`api_key = { header = "authorization" }`
        // next to a JWT's Bearer): read it once.
        if sources[..index].contains(source) {
            continue;
        }
        for value in values(headers, query, source)? {
            found.push((index, value));
        }
    }
    match found.len() {
        0 | 1 => Ok(found.pop().filter(|(_, value)| !value.is_empty())),
        _ => Err(Ambiguous(
            match found.iter().all(|(i, _)| *i == found[0].0) {
                true => "the credential is given more than once",
                false => "credentials in more than one place",
            },
        )),
    }
}

/// Every value the request holds for `source`. An `Authorization` field of another scheme
/// counts as an empty one: it is still a second `Authorization`.
fn values(
    headers: &HeaderMap,
    query: Option<&str>,
    source: &TokenSource,
) -> Result<Vec<String>, Ambiguous> {
    let text = |value: &HeaderValue| value.to_str().unwrap_or("").trim().to_owned();
    Ok(match source {
        TokenSource::Bearer => headers
            .get_all(AUTHORIZATION)
            .iter()
            .map(|value| bearer(value).unwrap_or_default())
            .collect(),
        TokenSource::Header(name) => headers
            .iter()
            .filter(|(field, _)| same_field(field, name))
            .map(|(_, value)| text(value))
            .collect(),
        TokenSource::Cookie(name) => cookies(headers)
            .filter(|cookie| is_named(cookie, name))
            .map(|cookie| percent_decode(cookie.value(), false))
            .collect(),
        TokenSource::Query(name) => {
            let mut found = Vec::new();
            for pair in query.unwrap_or("").split('&') {
                let parts: Vec<&str> = pair.split(';').collect();
                for part in &parts {
                    let (key, value) = part.split_once('=').unwrap_or((part, ""));
                    if percent_decode(key, true) != *name {
                        continue;
                    }
                    if parts.len() > 1 {
                        return Err(Ambiguous("a \";\" next to the credential in the query"));
                    }
                    found.push(percent_decode(value, true));
                }
            }
            found
        }
    })
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &HeaderValue) -> Option<String> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Whether `field` is `name` to an upstream that maps `_` to `-` (CGI, WSGI, Rack).
pub fn same_field(field: &HeaderName, name: &HeaderName) -> bool {
    field == name
        || (field.as_str().len() == name.as_str().len()
            && field
                .as_str()
                .bytes()
                .zip(name.as_str().bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-') || (a == b'-' && b == b'_')))
}

/// Removes `name` and the fields an upstream would take for it.
pub fn remove_field(headers: &mut HeaderMap, name: &HeaderName) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|field| same_field(field, name))
        .cloned()
        .collect();
    for field in doomed {
        headers.remove(field);
    }
}

/// The request's cookies, as sent (a pair without `=` is no cookie).
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = Cookie<'_>> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
}

/// Whether `cookie` is called `name` once percent-decoded.
fn is_named(cookie: &Cookie<'_>, name: &str) -> bool {
    percent_decode(cookie.name(), false) == name
}

/// Removes every value of `source`: from the header fields, and from `path`'s query (the
/// one the upstream gets).
pub fn strip(headers: &mut HeaderMap, path: &mut PathAndQuery, source: &TokenSource) {
    match source {
        TokenSource::Bearer => {
            headers.remove(AUTHORIZATION);
        }
        TokenSource::Header(name) => remove_field(headers, name),
        TokenSource::Cookie(name) => {
            let kept: Vec<String> = cookies(headers)
                .filter(|cookie| !is_named(cookie, name))
                .map(|cookie| format!("{}={}", cookie.name(), cookie.value()))
                .collect();
            headers.remove(COOKIE);
            if let Ok(value) = HeaderValue::from_str(&kept.join("; "))
                && !kept.is_empty()
            {
                headers.insert(COOKIE, value);
            }
        }
        TokenSource::Query(name) => {
            let current = &*path;
            let Some(query) = current.query() else { return };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
                    percent_decode(key, true) != *name
                })
                .collect();
            let rebuilt = match kept.is_empty() {
                true => current.path().to_owned(),
                false => format!("{}?{}", current.path(), kept.join("&")),
            };
            if let Ok(rebuilt) = rebuilt.parse::<PathAndQuery>() {
                *path = rebuilt;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn one_credential_or_ambiguous() {
        let key = TokenSource::Header(HeaderName::from_static("x-api-key"));
        let cookie = TokenSource::Cookie("session".into());
        let query = TokenSource::Query("token".into());
        let bearer = TokenSource::Bearer;
        let one = |fields: &[(&str, &str)], q: Option<&str>, sources: &[&TokenSource]| {
            extract(&headers(fields), q, sources)
        };
        let found = |index: usize, value: &str| Ok(Some((index, value.to_owned())));
        // One value, read as the upstream reads it.
        assert_eq!(
            one(&[("authorization", "Bearer abc")], None, &[&bearer]),
            found(0, "abc")
        );
        assert_eq!(one(&[("x-api-key", " k ")], None, &[&key]), found(0, "k"));
        assert_eq!(
            one(&[("cookie", "a=1; session=s")], None, &[&cookie]),
            found(0, "s")
        );
        assert_eq!(
            one(&[], Some("a=1&to%6Ben=a%2Bb+c"), &[&query]),
            found(0, "a+b c")
        );
        assert_eq!(
            one(&[("x-api-key", "k")], Some("other=1"), &[&key, &query]),
            found(0, "k")
        );
        assert_eq!(one(&[], Some("token="), &[&query]), Ok(None));
        // Cookies: split by the cookie crate, names and values percent-decoded.
        for (field, value) in [
            ("session=s", "s"),
            (" session = s ", "s"),
            ("a=1;session=s;b", "s"),
            ("sess%69on=s", "s"),
            ("session=a%2Bb+c", "a+b+c"),
            ("session=a%zz", "a%zz"),
            ("session=x=y", "x=y"),
            ("other=1; Session=no; session=s", "s"),
        ] {
            assert_eq!(
                one(&[("cookie", field)], None, &[&cookie]),
                found(0, value),
                "{field}"
            );
        }
        for none in ["", "session", "sessions=a", "a=session", ";;", "session="] {
            assert_eq!(
                one(&[("cookie", none)], None, &[&cookie]),
                Ok(None),
                "{none}"
            );
        }
        assert_eq!(
            one(&[("authorization", "Basic eA==")], None, &[&bearer]),
            Ok(None)
        );
        assert_eq!(one(&[], None, &[&bearer, &bearer]), Ok(None));
        // More than one, in every way.
        let ambiguous = [
            (
                vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
                None,
                vec![&bearer],
            ),
            (
                vec![("authorization", "Bearer a"), ("authorization", "Basic b")],
                None,
                vec![&bearer],
            ),
            (
                vec![("x-api-key", "a"), ("x-api-key", "b")],
                None,
                vec![&key],
            ),
            (
                vec![("x-api-key", "a"), ("x_api_key", "b")],
                None,
                vec![&key],
            ),
            (
                vec![("x_api_key", "a"), ("x_api_key", "")],
                None,
                vec![&key],
            ),
            (
                vec![("cookie", "session=a; session=b")],
                None,
                vec![&cookie],
            ),
            (
                vec![("cookie", "session=a"), ("cookie", "session=b")],
                None,
                vec![&cookie],
            ),
            (
                vec![("cookie", "session=a; sess%69on=b")],
                None,
                vec![&cookie],
            ),
            (
                vec![("cookie", "%73ession=a"), ("cookie", " session = b ")],
                None,
                vec![&cookie],
            ),
            (
                vec![("cookie", "session=a; SESSION=x; session=")],
                None,
                vec![&cookie],
            ),
            (
                vec![("cookie", "session=a")],
                Some("token=b"),
                vec![&cookie, &query],
            ),
            (vec![], Some("token=a&token=b"), vec![&query]),
            (vec![], Some("token=a&tok%65n=b"), vec![&query]),
            (vec![], Some("token=a&token"), vec![&query]),
            (vec![], Some("x=1;token=a"), vec![&query]),
            (vec![], Some("token=a;b"), vec![&query]),
            (
                vec![("x-api-key", "a")],
                Some("token=b"),
                vec![&key, &query],
            ),
            (
                vec![("x-api-key", "a"), ("authorization", "Bearer b")],
                None,
                vec![&key, &bearer],
            ),
            (
                vec![("authorization", "Bearer b")],
                Some("token=c"),
                vec![&bearer, &query],
            ),
        ];
        for (fields, q, sources) in ambiguous {
            assert!(
                one(&fields, q, &sources).is_err(),
                "{fields:?} {q:?} {sources:?}"
            );
        }
    }

    #[test]
    fn strip_removes_every_form() {
        let mut map = headers(&[("x_api_key", "a"), ("x-api-key", "b"), ("x-other", "c")]);
        let mut path = PathAndQuery::from_static("/p?a=1&tok%65n=x&token=y&b=2");
        strip(
            &mut map,
            &mut path,
            &TokenSource::Header(HeaderName::from_static("x-api-key")),
        );
        assert_eq!(map.len(), 1);
        strip(&mut map, &mut path, &TokenSource::Query("token".into()));
        assert_eq!(path.as_str(), "/p?a=1&b=2");
        let session = TokenSource::Cookie("session".into());
        let mut map = headers(&[("cookie", "a=1; session=s; sess%69on=t; b=2")]);
        strip(&mut map, &mut path, &session);
        assert_eq!(map[COOKIE], "a=1; b=2");
        let mut map = headers(&[("cookie", "session=s")]);
        strip(&mut map, &mut path, &session);
        assert!(!map.contains_key(COOKIE));
    }
}
