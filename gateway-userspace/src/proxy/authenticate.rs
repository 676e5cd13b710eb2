//! The `authenticate` stage: who is calling. A route's `auth` accepts an API key, a JWT, or
//! either; the verified caller becomes `ctx.identity` (and, for a JWT, `ctx.claims`) for
//! every later stage. Failures are 401 with `WWW-Authenticate` (RFC 6750) and are counted by
//! reason. `client_cert = true` needs a verified client certificate first (401
//! `client_cert_required` without one); alone, its identity is the caller. A request with
//! more than one credential is 400 before any is verified
//! (credential.rs reads them), and `strip_credential` removes the one that was.

use hyper::{
    Request,
    header::{HeaderValue, WWW_AUTHENTICATE},
};
use serde_json::Value;
use sha2::Digest as _;

use crate::config::auth::TokenSource;

use super::{
    Flow, Identity, RequestCtx, Routed,
    body::ProxyBody,
    client_cert, credential,
    error::{ErrorKind, ProxyError},
};

pub async fn authenticate(
    routed: &mut Routed<'_>,
    ctx: &mut RequestCtx,
    req: &mut Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let snapshot = routed.snapshot;
    let Some(auth) = &routed.route.auth else {
        return Ok(Flow::Continue);
    };
    if auth.client_cert {
        let Some(name) = client_cert::identity(ctx) else {
            return Err(no_client_cert(routed, ctx));
        };
        if auth.jwt.is_none() && auth.api_key.is_none() {
            // The certificate alone names the caller; a consumer of that name lends its groups.
            let consumer = snapshot.auth.consumers.iter().find(|c| c.name == name);
            ctx.identity = Some(Identity {
                name: name.to_owned(),
                groups: consumer.map(|c| c.groups.clone()).unwrap_or_default(),
            });
            return Ok(Flow::Continue);
        }
    }
    let provider = auth.jwt.map(|index| &snapshot.providers[index]);
    // Claim headers are the gateway's to set: a client must not be able to send its own,
    // nor one an upstream would read as it (`x_user` for `x-user`).
    if let Some(provider) = &provider {
        for (_, header) in &provider.config.forward_claims {
            credential::remove_field(req.headers_mut(), header);
        }
    }
    // Every place this route reads a credential from, API key first.
    let sources: Vec<&TokenSource> = auth
        .api_key
        .iter()
        .chain(provider.as_ref().map(|provider| &provider.config.token))
        .collect();
    // Exactly one credential, decided before anything is verified.
    let found = credential::extract(req.headers(), req.uri().query(), &sources)
        .map_err(|ambiguous| ambiguity(routed, ambiguous))?;
    let Some((index, value)) = found else {
        return Err(fail(routed, ctx, "missing_credential", false));
    };
    let source = sources[index].clone();
    if auth.api_key.is_some() && index == 0 {
        let digest: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
        let Some(&consumer) = snapshot.auth.api_keys.get(&digest) else {
            return Err(fail(routed, ctx, "invalid_api_key", true));
        };
        let consumer = &snapshot.auth.consumers[consumer];
        ctx.identity = Some(Identity {
            name: consumer.name.clone(),
            groups: consumer.groups.clone(),
        });
        if auth.strip_credential {
            credential::strip(req.headers_mut(), &mut routed.upstream_path, &source);
        }
        return Ok(Flow::Continue);
    }
    let provider = provider.expect("a second source is the JWT's");
    let verified = match provider.verify(&value).await {
        Ok(verified) => verified,
        Err(error) => return Err(fail(routed, ctx, error.reason(), true)),
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
        credential::strip(req.headers_mut(), &mut routed.upstream_path, &source);
    }
    Ok(Flow::Continue)
}

/// `auth.client_cert` and the connection showed no certificate (an `optional` listener), or
/// one without the SAN the listener's `client_auth.identity` reads: 401.
fn no_client_cert(routed: &Routed<'_>, ctx: &RequestCtx) -> ProxyError {
    routed
        .snapshot
        .handles
        .metrics
        .auth_failed("client_cert_required");
    let why = match &ctx.connection.client_cert {
        None => "no client certificate was presented in the TLS handshake",
        Some(_) => "the client certificate lacks the name client_auth.identity reads",
    };
    ProxyError::new(
        ErrorKind::ClientCertRequired,
        format!(
            "route {} needs a client certificate: {why}",
            routed.route.name
        ),
    )
}

/// More than one credential: 400, counted as an authentication failure. Not a 401: no
/// credential is wrong, the request is.
fn ambiguity(routed: &Routed<'_>, ambiguous: credential::Ambiguous) -> ProxyError {
    let metrics = &routed.snapshot.handles.metrics;
    metrics.auth_failed("ambiguous_credential");
    ProxyError::new(ErrorKind::BadRequest, format!("{ambiguous}"))
}

/// Counts the failure and builds the 401. `invalid`: a credential was presented and is bad
/// (RFC 6750 `error="invalid_token"`); otherwise none was presented (no error code).
fn fail(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    reason: &'static str,
    invalid: bool,
) -> ProxyError {
    routed.snapshot.handles.metrics.auth_failed(reason);
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
