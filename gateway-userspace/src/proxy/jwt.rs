//! JWT verification for one `[[auth.jwt]]` provider: its keys (fixed, or a JWKS URL fetched
//! in the background and on an unknown `kid`), the `jsonwebtoken` validation built from the
//! config, and a bounded cache of verified tokens so a token is verified once, not on every
//! request.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind as JwtErrorKind, jwk::JwkSet};
use serde_json::{Map, Value};

use crate::{
    config::auth::{JwksUrl, JwtProvider, VerifyKeys, keys_from_jwks},
    tls_client,
};

/// Memory for verified tokens per provider (the token, its claims and bookkeeping, estimated);
/// beyond, the least recently used are evicted.
const TOKEN_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// A guess at the number of entries, for sizing the cache's tables.
const TOKEN_CACHE_ENTRIES: usize = 16_384;
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a token was refused; also the `reason` label of `gateway_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    TooLarge,
    Malformed,
    /// `alg: none`, an algorithm the provider does not allow, or one that does not fit the
    /// key's type (HS256 signed with an RSA public key as the secret).
    Algorithm,
    UnknownKid,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// A required claim (`exp`, `sub`, ...) is missing.
    MissingClaim,
}

impl JwtError {
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::TooLarge => "token_too_large",
            JwtError::Malformed => "malformed_token",
            JwtError::Algorithm => "bad_algorithm",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::Signature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::Issuer => "wrong_issuer",
            JwtError::Audience => "wrong_audience",
            JwtError::MissingClaim => "missing_claim",
        }
    }
}

/// A token that passed verification.
pub struct Verified {
    pub subject: String,
    /// From the provider's `groups_claim`.
    pub groups: Vec<String>,
    pub claims: Arc<Map<String, Value>>,
    exp: Option<u64>,
    /// The key set generation it was verified with: a key rotation re-verifies.
    generation: u64,
}

/// An entry's weight: the token, and its claims (decoded from about 3/4 of the token), with a
/// fixed overhead.
#[derive(Clone)]
struct TokenWeight;

impl quick_cache::Weighter<Box<str>, Arc<Verified>> for TokenWeight {
    fn weight(&self, token: &Box<str>, _: &Arc<Verified>) -> u64 {
        token.len() as u64 * 2 + 256
    }
}

/// The keys of a provider, shared across reloads when its key source stays the same.
struct KeyState {
    keys: ArcSwap<VerifyKeys>,
    generation: AtomicU64,
    url: Option<JwksUrl>,
    /// When the last fetch started; held while fetching, so concurrent unknown-kid requests
    /// wait for one fetch instead of each starting their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

/// Aborts the periodic JWKS refresh when the last provider using it is dropped.
struct RefreshTask(tokio::task::JoinHandle<()>);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Provider {
    pub config: JwtProvider,
    keys: Arc<KeyState>,
    validation: Validation,
    /// Keyed by the whole token: a hit is the same token, byte for byte.
    cache: quick_cache::sync::Cache<Box<str>, Arc<Verified>, TokenWeight>,
    _refresh: Option<Arc<RefreshTask>>,
}

impl Provider {
    /// Builds the runtime for `config`; keeps `previous`'s fetched keys (and its refresh
    /// task) when both fetch the same JWKS URL the same way, so a reload does not forget
    /// the last good key set.
    pub fn new(config: &JwtProvider, previous: Option<&Provider>) -> Provider {
        let reuse = previous.filter(|previous| {
            config.jwks_url.is_some() && previous.config.jwks_url == config.jwks_url
        });
        let (keys, refresh) = match reuse {
            Some(previous) => (previous.keys.clone(), previous._refresh.clone()),
            None => {
                let keys = Arc::new(KeyState {
                    keys: ArcSwap::from_pointee(config.keys.clone()),
                    generation: AtomicU64::new(0),
                    url: config.jwks_url.clone(),
                    last_fetch: tokio::sync::Mutex::new(None),
                    client: Client::builder(TokioExecutor::new())
                        .build(connector(config.jwks_url.as_ref(), &config.name)),
                });
                let refresh = config.jwks_url.as_ref().map(|url| {
                    let (state, period, name) = (keys.clone(), url.refresh, config.name.clone());
                    Arc::new(RefreshTask(tokio::spawn(async move {
                        loop {
                            state.refetch(&name, Duration::ZERO).await;
                            tokio::time::sleep(period).await;
                        }
                    })))
                });
                (keys, refresh)
            }
        };
        Provider {
            validation: validation(config),
            config: config.clone(),
            keys,
            cache: quick_cache::sync::Cache::with_weighter(
                TOKEN_CACHE_ENTRIES,
                TOKEN_CACHE_BYTES,
                TokenWeight,
            ),
            _refresh: refresh,
        }
    }

    /// Verifies `token` (signature, `exp`, `nbf`, `iss`, `aud`), from the cache when it was
    /// verified before with the current keys and has not expired since.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, JwtError> {
        if token.len() > self.config.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        let generation = self.keys.generation.load(Ordering::Acquire);
        if let Some(hit) = self.cache.get(token) {
            let now = jsonwebtoken::get_current_timestamp();
            let live = hit
                .exp
                .is_none_or(|exp| now <= exp + self.config.leeway.as_secs());
            if live && hit.generation == generation {
                return Ok(hit);
            }
            self.cache.remove(token);
        }
        let verified = Arc::new(self.verify_uncached(token, generation).await?);
        self.cache.insert(token.into(), verified.clone());
        Ok(verified)
    }

    async fn verify_uncached(&self, token: &str, generation: u64) -> Result<Verified, JwtError> {
        // `alg: none` and unknown algorithms fail here: the header does not parse.
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm);
        }
        let mut keys = self.keys.keys.load_full();
        let mut candidates = matching(&keys, header.kid.as_deref(), header.alg);
        if let Err(JwtError::UnknownKid) = candidates
            && self.keys.url.is_some()
        {
            // A key rotation we have not seen yet: fetch again (at most once per cooldown).
            let cooldown = self.keys.url.as_ref().map(|u| u.refetch_cooldown);
            self.keys
                .refetch(&self.config.name, cooldown.unwrap_or_default())
                .await;
            keys = self.keys.keys.load_full();
            candidates = matching(&keys, header.kid.as_deref(), header.alg);
        }
        // jsonwebtoken wants every listed algorithm to fit the key: list just this one
        // (already checked against the provider's and the key's algorithms).
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let mut last = JwtError::Signature;
        for key in candidates? {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    let subject = match data.claims.get("sub") {
                        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
                        _ => return Err(JwtError::MissingClaim),
                    };
                    let exp = data.claims.get("exp").and_then(Value::as_u64);
                    let groups = match self
                        .config
                        .groups_claim
                        .as_ref()
                        .and_then(|claim| data.claims.get(claim))
                    {
                        Some(Value::Array(items)) => items
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect(),
                        Some(Value::String(text)) => {
                            text.split_whitespace().map(str::to_owned).collect()
                        }
                        _ => Vec::new(),
                    };
                    return Ok(Verified {
                        subject,
                        groups,
                        claims: Arc::new(data.claims),
                        exp,
                        generation,
                    });
                }
                Err(error) => {
                    last = classify(error.kind());
                    // Only a bad signature may be another key's token; anything else is final.
                    if last != JwtError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// The keys that may have signed a token with this `kid` and `alg`.
fn matching<'a>(
    keys: &'a VerifyKeys,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Vec<&'a crate::config::auth::VerifyKey>, JwtError> {
    let by_kid: Vec<_> = keys
        .0
        .iter()
        .filter(|key| match (kid, &key.kid) {
            (Some(wanted), Some(kid)) => wanted == kid,
            _ => true,
        })
        .collect();
    if by_kid.is_empty() {
        return Err(JwtError::UnknownKid);
    }
    let fitting: Vec<_> = by_kid
        .into_iter()
        .filter(|key| key.algorithms.contains(&alg))
        .collect();
    if fitting.is_empty() {
        // The key exists but is of another type: HS/RS confusion or a mislabelled token.
        return Err(JwtError::Algorithm);
    }
    Ok(fitting)
}

fn classify(kind: &JwtErrorKind) -> JwtError {
    match kind {
        JwtErrorKind::ExpiredSignature => JwtError::Expired,
        JwtErrorKind::ImmatureSignature => JwtError::NotYetValid,
        JwtErrorKind::InvalidIssuer => JwtError::Issuer,
        JwtErrorKind::InvalidAudience => JwtError::Audience,
        JwtErrorKind::InvalidSignature => JwtError::Signature,
        JwtErrorKind::InvalidAlgorithm | JwtErrorKind::InvalidAlgorithmName => JwtError::Algorithm,
        JwtErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim,
        _ => JwtError::Malformed,
    }
}

/// `jsonwebtoken`'s defaults are lax (60 s leeway, `nbf` unchecked): set everything.
fn validation(config: &JwtProvider) -> Validation {
    let mut validation = Validation::new(config.algorithms[0]);
    validation.algorithms = config.algorithms.clone();
    validation.leeway = config.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &config.issuer {
        Some(issuer) => {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    if config.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&config.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation
}

impl KeyState {
    /// Fetches the JWKS unless the last fetch started less than `cooldown` ago. A failed
    /// fetch keeps the last good key set.
    async fn refetch(&self, provider: &str, cooldown: Duration) {
        let Some(url) = &self.url else { return };
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < cooldown) {
            return;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(&url.url)).await {
            Ok(Ok(keys)) => {
                let changed = {
                    let old = self.keys.load();
                    fingerprint(&old) != fingerprint(&keys)
                };
                if changed {
                    tracing::info!(provider, keys = keys.0.len(), "JWKS key set updated");
                    self.keys.store(Arc::new(keys));
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
            }
            Ok(Err(error)) => tracing::warn!(
                provider,
                url = %url.url,
                "JWKS fetch failed, keeping the last good key set: {error}"
            ),
            Err(_) => tracing::warn!(
                provider,
                url = %url.url,
                "JWKS fetch timed out after {FETCH_TIMEOUT:?}, keeping the last good key set"
            ),
        }
    }

    async fn fetch(&self, url: &hyper::Uri) -> Result<VerifyKeys, String> {
        let response = self
            .client
            .get(url.clone())
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|error| error.to_string())?;
        keys_from_jwks(&set).map(VerifyKeys)
    }
}

/// http and https (TLS 1.2/1.3 on ring), trusting `jwks_ca` when given, else the system's
/// root certificates.
fn connector(url: Option<&JwksUrl>, provider: &str) -> HttpsConnector<HttpConnector> {
    let https = url.is_some_and(|url| url.url.scheme_str() == Some("https"));
    let ca = url.and_then(|url| url.ca.as_deref());
    let roots = match https || ca.is_some() {
        true => tls_client::roots(ca),
        false => rustls::RootCertStore::empty(),
    };
    if https && roots.is_empty() {
        match ca {
            Some(_) => tracing::error!(provider, "jwks_ca holds no usable CA certificate"),
            None => tracing::error!(
                provider,
                "no system root certificates found for the https JWKS URL: set jwks_ca"
            ),
        }
    }
    let tls = tls_client::client_config(tls_client::ClientTls {
        roots,
        verify: true,
        client_cert: None,
        tls13_only: false,
    });
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// What identifies a key set, to tell whether a fetch changed anything.
fn fingerprint(keys: &VerifyKeys) -> Vec<(Option<String>, Vec<u8>)> {
    use jsonwebtoken::DecodingKeyKind;
    keys.0
        .iter()
        .map(|key| {
            let material = match key.key.kind() {
                DecodingKeyKind::SecretOrDer(bytes) => bytes.clone(),
                DecodingKeyKind::RsaModulusExponent { n, e } => [n.as_slice(), e].concat(),
            };
            (key.kid.clone(), material)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::config::auth::{ALL_ALGORITHMS, TokenSource, VerifyKey};

    const SECRET: &[u8] = b"a-test-secret-that-is-32-bytes-long!";

    fn provider() -> Provider {
        Provider::new(
            &JwtProvider {
                name: "t".into(),
                issuer: Some("iss".into()),
                audiences: vec![],
                algorithms: ALL_ALGORITHMS.to_vec(),
                keys: VerifyKeys(vec![VerifyKey {
                    kid: None,
                    key: jsonwebtoken::DecodingKey::from_secret(SECRET),
                    algorithms: vec![Algorithm::HS256],
                }]),
                jwks_url: None,
                leeway: Duration::from_secs(5),
                token: TokenSource::Bearer,
                forward_claims: vec![],
                groups_claim: None,
                max_token_bytes: 4096,
            },
            None,
        )
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_verified_token_is_served_from_the_cache() {
        let provider = provider();
        let now = jsonwebtoken::get_current_timestamp();
        let good = token(json!({ "sub": "a", "iss": "iss", "exp": now + 60 }));
        let first = provider.verify(&good).await.unwrap();
        let second = provider.verify(&good).await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &second),
            "the second check is a cache hit"
        );
        assert_eq!(first.subject, "a");
        // An entry whose `exp` (plus leeway) has passed is not served: the token is
        // verified again (here it is still valid, so a fresh entry replaces it).
        let stale = Arc::new(Verified {
            groups: vec![],
            subject: "stale".into(),
            claims: first.claims.clone(),
            exp: Some(now - 60),
            generation: 0,
        });
        provider.cache.insert(good.as_str().into(), stale.clone());
        let again = provider.verify(&good).await.unwrap();
        assert!(!Arc::ptr_eq(&again, &stale) && again.subject == "a");
        // So is an entry verified with an older key set.
        let rotated = Arc::new(Verified {
            groups: vec![],
            subject: "old-keys".into(),
            claims: first.claims.clone(),
            exp: Some(now + 60),
            generation: 7,
        });
        provider.cache.insert(good.as_str().into(), rotated);
        assert_eq!(provider.verify(&good).await.unwrap().subject, "a");
        // Refusals are never cached.
        let wrong = token(json!({ "sub": "c", "iss": "other", "exp": now + 60 }));
        assert_eq!(provider.verify(&wrong).await.err(), Some(JwtError::Issuer));
        assert!(provider.cache.get(wrong.as_str()).is_none());
    }
}
