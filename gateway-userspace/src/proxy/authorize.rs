//! The `authorize` stage: may this caller use this route? Source address allow/deny first
//! (it needs no identity), then the client certificate's identity (`client_certs`, 403
//! `client_cert_not_allowed`), then scopes, claim values and consumer groups. Failures are 403:
//! `insufficient_scope` (RFC 6750) for what the credential lacks, `source_denied` for the
//! address.

use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use serde_json::Value;

use super::{
    Flow, RequestCtx, Routed, client_cert,
    error::{ErrorKind, ProxyError},
};

pub fn authorize(routed: &Routed<'_>, ctx: &mut RequestCtx) -> Result<Flow, ProxyError> {
    let Some(rules) = &routed.route.authorize else {
        return Ok(Flow::Continue);
    };
    let ip = ctx.connection.client.ip().to_canonical();
    if rules.deny.iter().any(|net| net.contains(&ip))
        || (!rules.allow.is_empty() && !rules.allow.iter().any(|net| net.contains(&ip)))
    {
        routed.snapshot.handles.metrics.auth_failed("source_denied");
        return Err(ProxyError::new(
            ErrorKind::SourceDenied,
            format!("{ip} is not allowed on route {}", routed.route.name),
        ));
    }
    if !rules.client_certs.is_empty() {
        // `auth.client_cert` (required for this key) ran first: the identity is there.
        let identity = client_cert::identity(ctx).unwrap_or_default();
        if !rules.client_certs.iter().any(|allowed| allowed == identity) {
            routed
                .snapshot
                .handles
                .metrics
                .auth_failed("client_cert_not_allowed");
            return Err(ProxyError::new(
                ErrorKind::ClientCertDenied,
                format!(
                    "client certificate {identity:?} is not allowed on route {}",
                    routed.route.name
                ),
            ));
        }
    }
    let claims = ctx.claims.as_deref();
    let granted: Vec<&str> = claims
        .map(|claims| {
            let mut scopes = Vec::new();
            // `scope` is a space-separated string (RFC 8693); `scp` is often an array.
            for name in ["scope", "scp"] {
                match claims.get(name) {
                    Some(Value::String(text)) => scopes.extend(text.split_whitespace()),
                    Some(Value::Array(items)) => {
                        scopes.extend(items.iter().filter_map(Value::as_str))
                    }
                    _ => {}
                }
            }
            scopes
        })
        .unwrap_or_default();
    let missing_scope = rules
        .scopes
        .iter()
        .any(|scope| !granted.contains(&scope.as_str()));
    let claim_mismatch = rules.claims.iter().any(|(name, wanted)| {
        match claims.and_then(|claims| claims.get(name)) {
            Some(Value::String(text)) => text == wanted,
            Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(wanted)),
            Some(Value::Number(number)) => number.to_string() == *wanted,
            Some(Value::Bool(flag)) => flag.to_string() == *wanted,
            _ => false,
        }
        .then_some(())
        .is_none()
    });
    let group_missing = !rules.groups.is_empty()
        && !ctx
            .identity
            .as_ref()
            .is_some_and(|identity| identity.groups.iter().any(|g| rules.groups.contains(g)));
    if missing_scope || claim_mismatch || group_missing {
        let reason = match (missing_scope, claim_mismatch) {
            (true, _) => "insufficient_scope",
            (_, true) => "claim_mismatch",
            _ => "group_not_allowed",
        };
        routed.snapshot.handles.metrics.auth_failed(reason);
        let mut challenge = "Bearer realm=\"gateway\", error=\"insufficient_scope\"".to_owned();
        if missing_scope {
            challenge.push_str(&format!(", scope=\"{}\"", rules.scopes.join(" ")));
        }
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            ctx.response_headers.push((WWW_AUTHENTICATE, value));
        }
        return Err(ProxyError::new(
            ErrorKind::InsufficientScope,
            format!(
                "{reason} for {} on route {}",
                ctx.identity.as_ref().map_or("?", |identity| &identity.name),
                routed.route.name
            ),
        ));
    }
    Ok(Flow::Continue)
}
