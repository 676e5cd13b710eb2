//! The `cors` stage: a route's CORS policy. A preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here, before authentication (browsers send
//! no credentials on a preflight): 204 with the allowed methods and headers, or 403 when the
//! origin, method or a requested header is not allowed. An actual cross-origin request goes
//! on; the `Access-Control-Allow-*` headers are added to whatever response it gets (errors
//! too, so a browser app can read a 401 or 429).

use hyper::{
    Method, Request, Response, StatusCode,
    header::{
        ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
        ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
        ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD,
        HeaderMap, HeaderName, HeaderValue, ORIGIN, VARY,
    },
};

use crate::config::auth::Cors;

use super::{
    Flow, RequestCtx, Routed,
    body::{ProxyBody, empty},
    error::{ErrorKind, ProxyError},
};

/// Whether `req` is a CORS preflight (the route stage matches it by the method it asks for).
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(ORIGIN)
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

pub fn cors(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    req: &Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let Some(policy) = &routed.route.cors else {
        return Ok(Flow::Continue);
    };
    let Some(origin) = req.headers().get(ORIGIN) else {
        return Ok(Flow::Continue);
    };
    let allowed = allowed_origin(policy, origin);
    if is_preflight(req) {
        let reject = |why: String| Err(ProxyError::new(ErrorKind::CorsRejected, why));
        let Some(allow_origin) = allowed else {
            return reject(format!("preflight from origin {origin:?}"));
        };
        let method = req.headers()[ACCESS_CONTROL_REQUEST_METHOD].as_bytes();
        let method_ok = Method::from_bytes(method).is_ok_and(|method| {
            policy.methods.contains(&method)
                || matches!(method, Method::GET | Method::HEAD | Method::POST)
        });
        if !method_ok {
            return reject(format!(
                "preflight for method {:?}",
                String::from_utf8_lossy(method)
            ));
        }
        if let Some(name) = requested_headers(req.headers()).find(|name| {
            !policy
                .headers
                .iter()
                .any(|allowed| allowed.as_str() == name)
        }) {
            return reject(format!("preflight for header {name:?}"));
        }
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            joined(policy.methods.iter().map(Method::as_str)),
        );
        if !policy.headers.is_empty() {
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                joined(policy.headers.iter().map(HeaderName::as_str)),
            );
        }
        if policy.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(max_age) = policy.max_age {
            headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age.as_secs()));
        }
        headers.insert(
            VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        return Ok(Flow::Respond(response));
    }
    if policy.origins.is_some() {
        // The answer depends on Origin: caches must keep one per origin.
        ctx.response_headers
            .push((VARY, HeaderValue::from_static("origin")));
    }
    if let Some(allow_origin) = allowed {
        ctx.response_headers
            .push((ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin));
        if policy.credentials {
            ctx.response_headers.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if !policy.expose.is_empty() {
            ctx.response_headers.push((
                ACCESS_CONTROL_EXPOSE_HEADERS,
                joined(policy.expose.iter().map(HeaderName::as_str)),
            ));
        }
    }
    Ok(Flow::Continue)
}

/// The `Access-Control-Allow-Origin` value for `origin`, if the policy allows it.
fn allowed_origin(policy: &Cors, origin: &HeaderValue) -> Option<HeaderValue> {
    match &policy.origins {
        None => Some(HeaderValue::from_static("*")),
        Some(origins) => {
            let origin_text = origin.to_str().ok()?.to_ascii_lowercase();
            origins.contains(&origin_text).then(|| origin.clone())
        }
    }
}

/// Lowercase names from `Access-Control-Request-Headers`.
fn requested_headers(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
}

fn joined<'a>(items: impl Iterator<Item = &'a str>) -> HeaderValue {
    HeaderValue::from_str(&items.collect::<Vec<_>>().join(", "))
        .expect("method and header names are valid header values")
}
