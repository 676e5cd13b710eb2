//! `[[auth.jwt]]`: token providers (a PEM public key, a shared secret from the environment,
//! a JWKS file or URL), the claims they check and forward, and where a token is read from.

use std::{collections::HashMap, fmt, path::PathBuf, time::Duration};

use hyper::header::HeaderName;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::config::{
    Problems,
    units::{duration, duration_or_zero},
};

#[derive(Debug, Clone)]
pub struct JwtProvider {
    pub name: String,
    pub issuer: Option<String>,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Algorithms a token may use (intersected with what each key can do).
    pub algorithms: Vec<Algorithm>,
    /// Keys known at load time (PEM, secret, JWKS file); a JWKS URL starts empty.
    pub keys: VerifyKeys,
    /// Fetched at start, every `refresh`, and on an unknown `kid`.
    pub jwks_url: Option<JwksUrl>,
    pub leeway: Duration,
    pub token: TokenSource,
    /// Claim -> header sent upstream.
    pub forward_claims: Vec<(String, HeaderName)>,
    /// A claim (an array of strings, or a space-separated string) holding the caller's
    /// groups, for `authorize.groups`.
    pub groups_claim: Option<String>,
    pub max_token_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    pub url: hyper::Uri,
    pub refresh: Duration,
    /// At most one fetch per this long on unknown `kid`s: a flood of made-up kids must not
    /// turn into a flood of fetches.
    pub refetch_cooldown: Duration,
    /// https: trust only these CA certificates (`jwks_ca`); `None`: the system's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
}

/// One key a token may be verified with.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// Keys, with a Debug that never prints key material (a shared secret is in here).
#[derive(Clone, Default)]
pub struct VerifyKeys(pub Vec<VerifyKey>);

impl fmt::Debug for VerifyKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self.0.iter().map(|key| &key.kid).collect();
        write!(f, "VerifyKeys({} keys, kids {kids:?})", self.0.len())
    }
}

/// Where a credential is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    pub(super) name: String,
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Vec<String>,
    public_key: Option<PathBuf>,
    secret_env: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_ca: Option<PathBuf>,
    leeway: Option<String>,
    refresh: Option<String>,
    refetch_cooldown: Option<String>,
    token: Option<RawTokenSource>,
    #[serde(default)]
    forward_claims: HashMap<String, String>,
    groups_claim: Option<String>,
    max_token_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawTokenSource {
    pub(super) header: Option<String>,
    pub(super) cookie: Option<String>,
    pub(super) query: Option<String>,
}

/// Longest token accepted unless `max_token_bytes` says otherwise.
const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(10);

pub(super) fn compile_provider(
    raw: RawJwt,
    key: &str,
    problems: &mut Problems,
) -> Option<JwtProvider> {
    let mut algorithms = Vec::new();
    for (index, name) in raw.algorithms.iter().enumerate() {
        match name.parse::<Algorithm>() {
            Ok(alg) => algorithms.push(alg),
            Err(_) => problems.add(
                format!("{key}.algorithms[{index}]"),
                format!("{name:?} is not one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA"),
            ),
        }
    }
    if algorithms.is_empty() {
        algorithms = ALL_ALGORITHMS.to_vec();
    }
    let sources = [
        raw.public_key.is_some(),
        raw.secret_env.is_some(),
        raw.jwks_file.is_some(),
        raw.jwks_url.is_some(),
    ];
    if sources.iter().filter(|given| **given).count() != 1 {
        problems.add(
            key,
            "set exactly one of public_key, secret_env, jwks_file and jwks_url",
        );
        return None;
    }
    let mut keys = Vec::new();
    let mut jwks_url = None;
    if let Some(path) = &raw.public_key {
        let key = format!("{key}.public_key");
        match std::fs::read(path) {
            Ok(pem) => match pem_key(&pem) {
                Some((decoding, family)) => keys.push(VerifyKey {
                    kid: None,
                    key: decoding,
                    algorithms: family.algorithms().to_vec(),
                }),
                None => problems.add(
                    key,
                    format!(
                        "{} holds no RSA, EC or Ed25519 public key in PEM form",
                        path.display()
                    ),
                ),
            },
            Err(error) => problems.add(key, format!("cannot read {}: {error}", path.display())),
        }
    } else if let Some(variable) = &raw.secret_env {
        match std::env::var(variable) {
            Ok(secret) if secret.len() >= 32 => keys.push(VerifyKey {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
            }),
            Ok(_) => problems.add(
                format!("{key}.secret_env"),
                format!("the secret in ${variable} is shorter than 32 bytes"),
            ),
            Err(_) => problems.add(
                format!("{key}.secret_env"),
                format!("the environment variable ${variable} is not set"),
            ),
        }
    } else if let Some(path) = &raw.jwks_file {
        let key = format!("{key}.jwks_file");
        match std::fs::read(path) {
            Ok(text) => match serde_json::from_slice::<JwkSet>(&text) {
                Ok(set) => match keys_from_jwks(&set) {
                    Ok(found) => keys = found,
                    Err(error) => problems.add(key, format!("{}: {error}", path.display())),
                },
                Err(error) => {
                    problems.add(key, format!("{} is not a JWK set: {error}", path.display()))
                }
            },
            Err(error) => problems.add(key, format!("cannot read {}: {error}", path.display())),
        }
    } else if let Some(url) = &raw.jwks_url {
        match url.parse::<hyper::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some() =>
            {
                let ca = raw.jwks_ca.as_ref().and_then(|path| {
                    crate::tls_client::read_ca(path)
                        .map_err(|why| problems.add(format!("{key}.jwks_ca"), why))
                        .ok()
                });
                jwks_url = Some(JwksUrl {
                    ca,
                    url: uri,
                    refresh: duration(raw.refresh.clone(), &format!("{key}.refresh"), problems)
                        .unwrap_or(DEFAULT_REFRESH),
                    refetch_cooldown: duration(
                        raw.refetch_cooldown.clone(),
                        &format!("{key}.refetch_cooldown"),
                        problems,
                    )
                    .unwrap_or(DEFAULT_REFETCH_COOLDOWN),
                })
            }
            Ok(_) => problems.add(
                format!("{key}.jwks_url"),
                format!("{url:?} is not an http:// or https:// URL"),
            ),
            Err(_) => problems.add(format!("{key}.jwks_url"), format!("{url:?} is not a URL")),
        }
    }
    if jwks_url.is_none()
        && (raw.refresh.is_some() || raw.refetch_cooldown.is_some() || raw.jwks_ca.is_some())
    {
        problems.add(
            format!("{key}.refresh"),
            "refresh, refetch_cooldown and jwks_ca need jwks_url",
        );
    }
    let leeway =
        duration_or_zero(raw.leeway, &format!("{key}.leeway"), problems).unwrap_or(DEFAULT_LEEWAY);
    let token = raw
        .token
        .map(|token| token.compile(&format!("{key}.token"), problems))
        .unwrap_or(TokenSource::Bearer);
    let mut forward_claims: Vec<(String, HeaderName)> = Vec::new();
    for (claim, header) in raw.forward_claims {
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(name)
                if !crate::http::HOP_BY_HOP.contains(&name.as_str())
                    && !RESERVED_FORWARD.contains(&name.as_str()) =>
            {
                forward_claims.push((claim, name))
            }
            _ => problems.add(
                format!("{key}.forward_claims.{claim}"),
                format!("{header:?} is not a header name that can be forwarded"),
            ),
        }
    }
    forward_claims.sort_by(|a, b| a.0.cmp(&b.0));
    Some(JwtProvider {
        name: raw.name,
        issuer: raw.issuer,
        audiences: raw.audiences,
        algorithms,
        keys: VerifyKeys(keys),
        jwks_url,
        leeway,
        token,
        forward_claims,
        groups_claim: raw.groups_claim,
        max_token_bytes: raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES),
    })
}

/// Header fields a claim may not be forwarded in: the proxy sets them itself.
const RESERVED_FORWARD: [&str; 8] = [
    "host",
    "content-length",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

pub const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A public key in PEM form, whatever its type.
fn pem_key(pem: &[u8]) -> Option<(DecodingKey, AlgorithmFamily)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, AlgorithmFamily::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, AlgorithmFamily::Ec));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|key| (key, AlgorithmFamily::Ed))
}

/// The signature-verification keys of a JWK set. Keys for encryption and of unsupported
/// types are skipped; a set with no usable key at all is an error.
pub fn keys_from_jwks(set: &JwkSet) -> Result<Vec<VerifyKey>, String> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithms: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms().to_vec(),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                vec![Algorithm::EdDSA]
            }
            // Symmetric keys are never published in a JWKS: refuse them (HS/RS confusion).
            _ => continue,
        };
        // The key's own `alg` narrows what it may verify.
        let algorithms = match jwk.common.key_algorithm.map(key_algorithm) {
            Some(Some(alg)) if algorithms.contains(&alg) => vec![alg],
            Some(_) => continue,
            None => algorithms,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            key,
            algorithms,
        });
    }
    if keys.is_empty() {
        return Err("no usable signature key (RSA, EC P-256/P-384 or Ed25519)".into());
    }
    Ok(keys)
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    alg.to_string().parse().ok()
}

impl RawTokenSource {
    pub(super) fn compile(self, key: &str, problems: &mut Problems) -> TokenSource {
        match (self.header, self.cookie, self.query) {
            (None, None, None) => TokenSource::Bearer,
            (Some(header), None, None) => match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) if name == hyper::header::AUTHORIZATION => TokenSource::Bearer,
                Ok(name) => TokenSource::Header(name),
                Err(_) => {
                    problems.add(
                        format!("{key}.header"),
                        format!("{header:?} is not a header name"),
                    );
                    TokenSource::Bearer
                }
            },
            (None, Some(cookie), None) if !cookie.is_empty() => TokenSource::Cookie(cookie),
            (None, None, Some(query)) if !query.is_empty() => TokenSource::Query(query),
            _ => {
                problems.add(key, "set one non-empty of header, cookie and query");
                TokenSource::Bearer
            }
        }
    }
}
