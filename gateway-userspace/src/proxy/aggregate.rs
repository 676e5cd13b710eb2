//! The `aggregate` stage (in place of `balance` -> `forward` for a composite route): calls
//! every upstream endpoint of the route's `aggregate` concurrently and merges their JSON
//! bodies into one response.
//!
//! Each call is a GET to a target of its upstream (balanced, health-checked and pooled like
//! any request), with its path template filled from the route's named path captures and
//! the request's query, and with `X-Request-Id`, the route's `forward_headers` and the
//! caller's identity (`X-Gateway-Identity`, when authentication set one). A call fails when
//! it is not answered in `timeout`, answers other than 2xx, or sends a body that is over
//! `max_body` or not JSON. With `on_error = "fail"` one failure fails the request (502);
//! with `"partial"` the response carries what arrived and an `errors` member:
//! `[{"call": "orders", "error": "timed out after 1s"}]`.

use std::{sync::Arc, time::Duration};

use http_body_util::BodyExt as _;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    header::{CONTENT_TYPE, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
};
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use crate::config::{AggregateConfig, Merge, OnError, PathMatch, TemplatePart};

use super::{
    RequestCtx, Routed, balance,
    body::{ProxyBody, empty, full},
    error::{ErrorKind, ProxyError},
    forward,
    headers::X_REQUEST_ID,
    normalise::percent_decode,
    snapshot::Snapshot,
};

pub const X_GATEWAY_IDENTITY: HeaderName = HeaderName::from_static("x-gateway-identity");

/// Why one call gave nothing usable (said to the client: no internal addresses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the upstream answered {0}")]
    Status(u16),
    #[error("the upstream could not be reached")]
    Unreachable,
    #[error("no upstream target is available")]
    NoTarget,
    #[error("the body is over {0} bytes")]
    TooLarge(u64),
    #[error("the body is not JSON")]
    NotJson,
    #[error("the body is not a JSON object (merge = \"root\")")]
    NotObject,
}

/// Answers a composite route's request with the merged JSON of its calls.
pub async fn respond(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let route = routed.route;
    let config = route
        .aggregate
        .clone()
        .expect("respond is only called for aggregate routes");
    let paths = fill_paths(&config, &route.matcher.path, req.uri())?;
    let headers = call_headers(ctx, &config, req.headers());
    let key = balance::request_key(routed.upstream, ctx.connection.client.ip(), req.headers());
    let mut calls = JoinSet::new();
    for (index, path) in paths.into_iter().enumerate() {
        let snapshot = routed.snapshot.clone();
        let (config, headers) = (config.clone(), headers.clone());
        calls.spawn(async move {
            let result = tokio::time::timeout(
                config.timeout,
                call(&snapshot, &config, index, path, headers, key),
            )
            .await
            .unwrap_or(Err(CallError::Timeout(config.timeout)));
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<Value, CallError>>> = vec![None; config.calls.len()];
    while let Some(joined) = calls.join_next().await {
        let (index, result) = joined.map_err(|error| {
            ProxyError::new(ErrorKind::Internal, format!("aggregate call task: {error}"))
        })?;
        results[index] = Some(result);
    }
    let results = results
        .into_iter()
        .map(|result| result.expect("every call reported"));
    let merged = merge(&config, results)?;
    let body = serde_json::to_vec(&merged).expect("JSON values serialize");
    if body.len() as u64 > config.max_body {
        return Err(ProxyError {
            sent: true,
            ..ProxyError::new(
                ErrorKind::UpstreamFailed,
                format!("merged body of {} bytes over max_body", body.len()),
            )
        });
    }
    let mut response = Response::new(match req.method() == Method::HEAD {
        true => empty(),
        false => full(body),
    });
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Merges the calls' bodies (in call order); the policy decides about failures.
fn merge(
    config: &AggregateConfig,
    results: impl Iterator<Item = Result<Value, CallError>>,
) -> Result<Value, ProxyError> {
    let mut merged = Map::new();
    let mut errors = Vec::new();
    for (call, result) in config.calls.iter().zip(results) {
        let result = result.and_then(|value| match (config.merge, value) {
            (Merge::Keys, value) => Ok(vec![(call.name.clone(), value)]),
            (Merge::Root, Value::Object(members)) => Ok(members.into_iter().collect()),
            (Merge::Root, _) => Err(CallError::NotObject),
        });
        match result {
            Ok(members) => merged.extend(members),
            Err(error) => errors.push((call.name.clone(), error)),
        }
    }
    if errors.is_empty() {
        return Ok(Value::Object(merged));
    }
    match config.on_error {
        OnError::Fail => {
            let detail = errors
                .iter()
                .map(|(name, error)| format!("{name}: {error}"))
                .collect::<Vec<_>>()
                .join("; ");
            Err(ProxyError {
                sent: true,
                ..ProxyError::new(
                    ErrorKind::UpstreamFailed,
                    format!("aggregate calls failed: {detail}"),
                )
            })
        }
        OnError::Partial => {
            let listed = errors
                .into_iter()
                .map(
                    |(name, error)| serde_json::json!({ "call": name, "error": error.to_string() }),
                )
                .collect();
            merged.insert("errors".to_owned(), Value::Array(listed));
            Ok(Value::Object(merged))
        }
    }
}

/// One call: a target, the request, a 2xx, a JSON body within `max_body`.
async fn call(
    snapshot: &Arc<Snapshot>,
    config: &AggregateConfig,
    index: usize,
    path: PathAndQuery,
    headers: HeaderMap,
    key: u64,
) -> Result<Value, CallError> {
    let upstream = &snapshot.upstreams[config.calls[index].upstream];
    let target = balance::choose(upstream, key, &[]).ok_or(CallError::NoTarget)?;
    let mut req = Request::new(empty());
    *req.headers_mut() = headers;
    let response = forward::attempt(upstream, target, path, false, req)
        .await
        .map_err(|error| match error.kind {
            ErrorKind::UpstreamTimeout => CallError::Timeout(upstream.config.request_timeout),
            _ => CallError::Unreachable,
        })?;
    if !response.status().is_success() {
        return Err(CallError::Status(response.status().as_u16()));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| CallError::Unreachable)?;
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > config.max_body {
                return Err(CallError::TooLarge(config.max_body));
            }
            bytes.extend_from_slice(&data);
        }
    }
    serde_json::from_slice(&bytes).map_err(|_| CallError::NotJson)
}

/// The headers every call carries.
fn call_headers(ctx: &RequestCtx, config: &AggregateConfig, request: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in &config.forward_headers {
        for value in request.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    if let Some(identity) = &ctx.identity
        && let Ok(value) = HeaderValue::from_str(&identity.name)
    {
        headers.insert(X_GATEWAY_IDENTITY, value);
    }
    headers
}

/// Each call's path and query, its template filled in. A value that would change the
/// path's shape (`/`, `.`, `..` in the path part) is refused (400).
fn fill_paths(
    config: &AggregateConfig,
    route_path: &PathMatch,
    uri: &hyper::Uri,
) -> Result<Vec<PathAndQuery>, ProxyError> {
    let captures = match route_path {
        PathMatch::Regex(regex) => regex.captures(uri.path()),
        _ => None,
    };
    let query: Vec<(&str, &str)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    let bad = |detail: String| ProxyError::new(ErrorKind::BadRequest, detail);
    let mut paths = Vec::with_capacity(config.calls.len());
    for call in &config.calls {
        let mut text = String::new();
        for part in &call.path {
            let in_query = text.contains('?');
            let value = match part {
                TemplatePart::Literal(literal) => {
                    text.push_str(literal);
                    continue;
                }
                TemplatePart::Capture(name) => captures
                    .as_ref()
                    .and_then(|captures| captures.name(name))
                    .map_or("", |found| found.as_str()),
                TemplatePart::Query(name) => query
                    .iter()
                    .find(|(key, _)| key == name)
                    .map_or("", |(_, value)| *value),
            };
            // Judged decoded, as the upstream reads it: `%2e%2e` is `..`, `%2F` is `/`.
            let decoded = percent_decode(value, false);
            if !in_query
                && (decoded.contains(['/', '\\', ';', '?', '#'])
                    || decoded == "."
                    || decoded == ".."
                    || value.contains('?'))
            {
                return Err(bad(format!(
                    "aggregate call {:?}: {value:?} cannot go in a path segment",
                    call.name
                )));
            }
            text.push_str(value);
        }
        let path = text.parse::<PathAndQuery>().map_err(|_| {
            bad(format!(
                "aggregate call {:?}: {text:?} is not a valid path",
                call.name
            ))
        })?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(merge: &str, on_error: &str) -> Arc<AggregateConfig> {
        let config = Config::parse(&format!(
            "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n\
             [[routes]]\nname = \"p\"\nmatch = {{ path_regex = \"/p/(?P<id>[^/]+)\" }}\n\
             aggregate = {{ merge = \"{merge}\", on_error = \"{on_error}\", calls = [\
             {{ name = \"a\", upstream = \"u\", path = \"/a/{{id}}?x={{query.x}}\" }},\
             {{ name = \"b\", upstream = \"u\", path = \"/b?id={{id}}\" }}] }}\n"
        ))
        .unwrap();
        let route = &config.proxy.routes[0];
        assert_eq!(route.matcher.methods, [Method::GET, Method::HEAD]);
        route.aggregate.clone().unwrap()
    }

    fn regex() -> PathMatch {
        PathMatch::Regex(regex::Regex::new("^(?:/p/(?P<id>[^/]+))$").unwrap())
    }

    #[test]
    fn templates_fill_from_captures_and_query() {
        let config = config("keys", "fail");
        let uri: hyper::Uri = "/p/42?y=1&x=a%20b".parse().unwrap();
        let paths = fill_paths(&config, &regex(), &uri).unwrap();
        assert_eq!(paths[0].as_str(), "/a/42?x=a%20b");
        assert_eq!(paths[1].as_str(), "/b?id=42");
        // Values that would change the call path's shape, raw or encoded.
        for bad in [
            "..", ".", "%2e%2e", ".%2E", "%2e", "a%2Fb", "a%5cb", "a%3Bb", "a%3Fb",
        ] {
            let uri: hyper::Uri = format!("/p/{bad}").parse().unwrap();
            let error = fill_paths(&config, &regex(), &uri).unwrap_err();
            assert_eq!(error.kind, ErrorKind::BadRequest, "{bad}");
        }
    }

    #[test]
    fn merging_by_keys_root_and_policy() {
        let ok = |value: Value| Ok::<Value, CallError>(value);
        let keys = merge(
            &config("keys", "fail"),
            [ok(serde_json::json!({"n": 1})), ok(serde_json::json!([2]))].into_iter(),
        )
        .unwrap();
        assert_eq!(keys, serde_json::json!({"a": {"n": 1}, "b": [2]}));
        let root = merge(
            &config("root", "fail"),
            [
                ok(serde_json::json!({"n": 1, "m": 1})),
                ok(serde_json::json!({"m": 2})),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(root, serde_json::json!({"n": 1, "m": 2}));
        let failed = merge(
            &config("keys", "fail"),
            [ok(Value::Null), Err(CallError::Status(500))].into_iter(),
        )
        .unwrap_err();
        assert_eq!(failed.kind.status(), StatusCode::BAD_GATEWAY);
        let partial = merge(
            &config("root", "partial"),
            [
                ok(serde_json::json!([1])),
                Err(CallError::Timeout(Duration::from_secs(1))),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(
            partial,
            serde_json::json!({"errors": [
                {"call": "a", "error": "the body is not a JSON object (merge = \"root\")"},
                {"call": "b", "error": "timed out after 1s"},
            ]})
        );
    }
}
