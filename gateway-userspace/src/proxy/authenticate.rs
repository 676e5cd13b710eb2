//! The `authenticate` stage: who is calling. A route's `auth` accepts an API key, a JWT, or
//! either; the verified caller becomes `ctx.identity` (and, for a JWT, `ctx.claims`) for
//! every later stage. Failures are 401 with `WWW-Authenticate` (RFC 6750) and are counted by
//! reason.

use hyper::{
    Request,
    header::{AUTHORIZATION, COOKIE, HeaderValue, WWW_AUTHENTICATE},
    http::uri::PathAndQuery,
};
use serde_json::Value;
use sha2::Digest as _;

use crate::config::auth::TokenSource;

use super::{
    Flow, Identity, RequestContext,
    body::ProxyBody,
    error::{ErrorKind, ProxyError},
    observe,
};

pub async fn authenticate(
    ctx: &mut RequestContext,
    req: &mut Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let Some(auth) = ctx.route().auth.clone() else {
        return Ok(Flow::Continue);
    };
    let provider = auth.jwt.map(|index| ctx.snapshot.providers[index].clone());
    // Claim headers are the gateway's to set: a client must not be able to send its own.
    if let Some(provider) = &provider {
        for (_, header) in &provider.config.forward_claims {
            req.headers_mut().remove(header);
        }
    }
    if let Some(source) = &auth.api_key
        && let Some(key) = credential(req, source)
    {
        let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        let Some(&consumer) = ctx.snapshot.auth.api_keys.get(&digest) else {
            return Err(fail(ctx, "invalid_api_key", true));
        };
        let consumer = &ctx.snapshot.auth.consumers[consumer];
        ctx.identity = Some(Identity {
            name: consumer.name.clone(),
            groups: consumer.groups.clone(),
        });
        if auth.strip_credential {
            strip(ctx, req, source);
        }
        return Ok(Flow::Continue);
    }
    let Some(provider) = provider else {
        return Err(fail(ctx, "missing_credential", false));
    };
    let Some(token) = credential(req, &provider.config.token) else {
        return Err(fail(ctx, "missing_credential", false));
    };
    let verified = match provider.verify(&token).await {
        Ok(verified) => verified,
        Err(error) => return Err(fail(ctx, error.reason(), true)),
    };
    for (claim, header) in &provider.config.forward_claims {
        let value = match verified.claims.get(claim) {
            Some(Value::String(text)) => HeaderValue::from_str(text).ok(),
            Some(Value::Array(items)) => {
                let texts: Vec<String> = items
                    .iter()
                    .map(|item| match item {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                HeaderValue::from_str(&texts.join(",")).ok()
            }
            Some(other) => HeaderValue::from_str(&other.to_string()).ok(),
            None => None,
        };
        if let Some(value) = value {
            req.headers_mut().insert(header.clone(), value);
        }
    }
    ctx.identity = Some(Identity {
        name: verified.subject.clone(),
        groups: verified.groups.clone(),
    });
    ctx.claims = Some(verified.claims.clone());
    if auth.strip_credential {
        strip(ctx, req, &provider.config.token);
    }
    Ok(Flow::Continue)
}

/// Counts the failure and builds the 401. `invalid`: a credential was presented and is bad
/// (RFC 6750 `error="invalid_token"`); otherwise none was presented (no error code).
fn fail(ctx: &mut RequestContext, reason: &'static str, invalid: bool) -> ProxyError {
    observe::METRICS
        .auth_failures
        .get_or_create(&vec![("reason", reason.to_owned())])
        .inc();
    let challenge = if invalid {
        format!("Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"{reason}\"")
    } else {
        "Bearer realm=\"gateway\"".to_owned()
    };
    ctx.response_headers.push((
        WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("ASCII challenge"),
    ));
    ProxyError::new(ErrorKind::Unauthorized, reason)
}

/// The credential `source` names, if the request has one.
fn credential(req: &Request<ProxyBody>, source: &TokenSource) -> Option<String> {
    let found = match source {
        TokenSource::Bearer => req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            }),
        TokenSource::Header(name) => req
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.trim().to_owned()),
        TokenSource::Cookie(name) => cookies(req)
            .find(|(cookie, _)| cookie == name)
            .map(|(_, value)| value.to_owned()),
        TokenSource::Query(name) => req.uri().query().and_then(|query| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.to_owned())
        }),
    };
    found.filter(|value| !value.is_empty())
}

fn cookies(req: &Request<ProxyBody>) -> impl Iterator<Item = (&str, &str)> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim()))
        })
}

/// Removes the credential so the upstream never sees it.
fn strip(ctx: &mut RequestContext, req: &mut Request<ProxyBody>, source: &TokenSource) {
    match source {
        TokenSource::Bearer => {
            req.headers_mut().remove(AUTHORIZATION);
        }
        TokenSource::Header(name) => {
            req.headers_mut().remove(name);
        }
        TokenSource::Cookie(name) => {
            let kept: Vec<String> = cookies(req)
                .filter(|(cookie, _)| cookie != name)
                .map(|(cookie, value)| format!("{cookie}={value}"))
                .collect();
            req.headers_mut().remove(COOKIE);
            if let Ok(value) = HeaderValue::from_str(&kept.join("; "))
                && !kept.is_empty()
            {
                req.headers_mut().insert(COOKIE, value);
            }
        }
        TokenSource::Query(name) => {
            let Some(path) = &ctx.upstream_path else {
                return;
            };
            let Some(query) = path.query() else { return };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split('=').next() != Some(name.as_str()))
                .collect();
            let rebuilt = match kept.is_empty() {
                true => path.path().to_owned(),
                false => format!("{}?{}", path.path(), kept.join("&")),
            };
            if let Ok(rebuilt) = rebuilt.parse::<PathAndQuery>() {
                ctx.upstream_path = Some(rebuilt);
            }
        }
    }
}
