//! Who may call a route, and how often: `[[auth.jwt]]` providers, `[[consumers]]` with API
//! keys, and the per-route `auth`, `authorize`, `rate_limits` and `cors` keys.
//!
//! Everything is checked and compiled here, once: PEM files are read and parsed, shared
//! secrets are taken from the environment (never from the file), API keys must be SHA-256
//! hashes, rates must parse. The runtime parts (JWKS fetching, limiter state, the verified
//! token cache) live in the proxy (proxy/jwt.rs, proxy/throttle.rs).

use std::{collections::HashMap, fmt, path::PathBuf, time::Duration};

use hyper::{Method, header::HeaderName};
use ipnet::IpNet;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use serde::Deserialize;

use super::{
    Problems,
    firewall::parse_cidr,
    units::{duration, duration_or_zero},
};

// ---- The validated form ----

/// The providers and consumers routes refer to.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub providers: Vec<JwtProvider>,
    pub consumers: Vec<Consumer>,
    /// SHA-256 of an API key -> index into `consumers`.
    pub api_keys: HashMap<[u8; 32], usize>,
}

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

#[derive(Debug, Clone)]
pub struct Consumer {
    pub name: String,
    pub groups: Vec<String>,
}

/// A route's `auth`: which credentials it accepts (either one will do).
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// Index into [`AuthConfig::providers`].
    pub jwt: Option<usize>,
    pub api_key: Option<TokenSource>,
    /// Remove the credential before forwarding.
    pub strip_credential: bool,
}

/// A route's `authorize`: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Authorize {
    /// All of these must be in the token's `scope` (space separated) or `scp` claim.
    pub scopes: Vec<String>,
    /// Claim name -> required value (a string claim equal to it, or an array holding it).
    pub claims: Vec<(String, String)>,
    /// The caller must be in at least one of these consumer groups.
    pub groups: Vec<String>,
    /// Empty: any source not denied.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Ip,
    /// The verified identity; the client IP when there is none.
    Identity,
    /// A request header's value; the client IP when it is absent.
    Header(HeaderName),
}

/// One limit: `count` requests per `period`, with bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRule {
    pub key: LimitKey,
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
    /// Most distinct keys tracked; the least recently used are evicted beyond.
    pub max_keys: usize,
    /// Counted cluster-wide through `[cluster]`'s Redis instead of on this node alone.
    pub cluster: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Lowercase `scheme://host[:port]`; `None`: any origin (`"*"`).
    pub origins: Option<Vec<String>>,
    pub methods: Vec<Method>,
    /// Lowercase header names a request may send.
    pub headers: Vec<HeaderName>,
    pub expose: Vec<HeaderName>,
    pub credentials: bool,
    pub max_age: Option<Duration>,
}

// ---- The file's shape ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    jwt: Vec<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    name: String,
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
pub(super) struct RawTokenSource {
    header: Option<String>,
    cookie: Option<String>,
    query: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsumer {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    api_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteAuth {
    jwt: Option<String>,
    api_key: Option<RawTokenSource>,
    #[serde(default)]
    strip_credential: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorize {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: HashMap<String, String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    sources: RawSources,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    key: String,
    rate: String,
    burst: Option<u32>,
    max_keys: Option<usize>,
    #[serde(default)]
    cluster: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    origins: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose: Vec<String>,
    #[serde(default)]
    credentials: bool,
    max_age: Option<String>,
}

// ---- Compiling ----

/// Longest token accepted unless `max_token_bytes` says otherwise.
const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(10);
/// Distinct keys per limit unless `max_keys` says otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

pub(super) fn compile(
    raw: RawAuth,
    consumers: Vec<RawConsumer>,
    problems: &mut Problems,
) -> AuthConfig {
    let mut config = AuthConfig::default();
    for (index, raw) in raw.jwt.into_iter().enumerate() {
        let key = format!("auth.jwt[{index}]");
        if config.providers.iter().any(|other| other.name == raw.name) {
            problems.add(
                format!("{key}.name"),
                format!("{:?} is used twice", raw.name),
            );
        }
        if let Some(provider) = compile_provider(raw, &key, problems) {
            config.providers.push(provider);
        }
    }
    for (index, raw) in consumers.into_iter().enumerate() {
        let key = format!("consumers[{index}]");
        if raw.name.is_empty() || config.consumers.iter().any(|c| c.name == raw.name) {
            problems.add(
                format!("{key}.name"),
                format!("{:?} is empty or used twice", raw.name),
            );
        }
        for (k, hash) in raw.api_keys.iter().enumerate() {
            let key = format!("{key}.api_keys[{k}]");
            match parse_key_hash(hash) {
                Some(digest) => {
                    if config
                        .api_keys
                        .insert(digest, config.consumers.len())
                        .is_some()
                    {
                        problems.add(key, "this key is already given to a consumer");
                    }
                }
                None => problems.add(
                    key,
                    "must be \"sha256:<64 hex digits>\", the hash of the key, never the key \
                     itself (`gateway hash-key` prints one)",
                ),
            }
        }
        config.consumers.push(Consumer {
            name: raw.name,
            groups: raw.groups,
        });
    }
    config
}

/// `sha256:<hex>` -> the digest.
fn parse_key_hash(text: &str) -> Option<[u8; 32]> {
    let hex_digits = text.strip_prefix("sha256:")?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut digest).ok()?;
    Some(digest)
}

/// The form `[[consumers]] api_keys` takes: `sha256:<hex of SHA-256(key)>`.
pub fn hash_api_key(key: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

fn compile_provider(raw: RawJwt, key: &str, problems: &mut Problems) -> Option<JwtProvider> {
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
                    let key = format!("{key}.jwks_ca");
                    let pem = std::fs::read(path)
                        .map_err(|error| {
                            problems.add(&key, format!("cannot read {}: {error}", path.display()))
                        })
                        .ok()?;
                    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                        .filter_map(Result::ok)
                        .collect();
                    if certs.is_empty() {
                        problems.add(key, format!("{} holds no PEM certificate", path.display()));
                        return None;
                    }
                    Some(certs)
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
    fn compile(self, key: &str, problems: &mut Problems) -> TokenSource {
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

pub(super) fn compile_route_auth(
    raw: RawRouteAuth,
    key: &str,
    auth: &AuthConfig,
    problems: &mut Problems,
) -> RouteAuth {
    let jwt = raw.jwt.and_then(|name| {
        let found = auth.providers.iter().position(|p| p.name == name);
        if found.is_none() {
            problems.add(
                format!("{key}.jwt"),
                format!("unknown provider {name:?} (see [[auth.jwt]])"),
            );
        }
        found
    });
    let api_key = raw.api_key.map(|source| {
        // `api_key = {}`: the usual header (`{ header = "authorization" }`: a Bearer key).
        if source.header.is_none() && source.cookie.is_none() && source.query.is_none() {
            return TokenSource::Header(HeaderName::from_static("x-api-key"));
        }
        source.compile(&format!("{key}.api_key"), problems)
    });
    if api_key.is_some() && auth.consumers.is_empty() {
        problems.add(
            format!("{key}.api_key"),
            "no [[consumers]] are declared, so no API key can be accepted",
        );
    }
    if jwt.is_none() && api_key.is_none() && !problems_named(problems, key) {
        problems.add(key, "accepts no credential: set jwt, api_key or both");
    }
    RouteAuth {
        jwt,
        api_key,
        strip_credential: raw.strip_credential,
    }
}

fn problems_named(problems: &Problems, key: &str) -> bool {
    problems
        .0
        .iter()
        .any(|problem| problem.key.starts_with(key))
}

pub(super) fn compile_authorize(
    raw: RawAuthorize,
    key: &str,
    route_auth: Option<&RouteAuth>,
    auth: &AuthConfig,
    problems: &mut Problems,
) -> Authorize {
    let needs_identity = !raw.scopes.is_empty() || !raw.claims.is_empty();
    if needs_identity && route_auth.is_none_or(|a| a.jwt.is_none()) {
        problems.add(
            key,
            "scopes and claims need a token: set auth.jwt on this route",
        );
    }
    if !raw.groups.is_empty() && route_auth.is_none() {
        problems.add(
            format!("{key}.groups"),
            "groups need an authenticated caller: set auth on this route",
        );
    }
    // Groups can come from a token's groups claim; otherwise only consumers have them.
    let token_groups = route_auth
        .and_then(|a| a.jwt)
        .is_some_and(|index| auth.providers[index].groups_claim.is_some());
    for (index, group) in raw.groups.iter().enumerate() {
        if !token_groups && !auth.consumers.iter().any(|c| c.groups.contains(group)) {
            problems.add(
                format!("{key}.groups[{index}]"),
                format!("no consumer is in group {group:?}"),
            );
        }
    }
    let cidrs = |list: &[String], name: &str, problems: &mut Problems| -> Vec<IpNet> {
        list.iter()
            .enumerate()
            .filter_map(|(index, text)| {
                parse_cidr(text, &format!("{key}.sources.{name}[{index}]"), problems)
            })
            .collect()
    };
    let mut claims: Vec<_> = raw.claims.into_iter().collect();
    claims.sort();
    Authorize {
        scopes: raw.scopes,
        claims,
        groups: raw.groups,
        allow: cidrs(&raw.sources.allow, "allow", problems),
        deny: cidrs(&raw.sources.deny, "deny", problems),
    }
}

pub(super) fn compile_rate_limits(
    raw: Vec<RawRateLimit>,
    key: &str,
    problems: &mut Problems,
) -> Vec<RateLimitRule> {
    let mut rules = Vec::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let key = format!("{key}[{index}]");
        let limit_key = match raw.key.as_str() {
            "ip" => Some(LimitKey::Ip),
            "identity" => Some(LimitKey::Identity),
            other => match other
                .strip_prefix("header:")
                .map(|name| HeaderName::from_bytes(name.as_bytes()))
            {
                Some(Ok(name)) => Some(LimitKey::Header(name)),
                _ => {
                    problems.add(
                        format!("{key}.key"),
                        format!("{other:?}: use \"ip\", \"identity\" or \"header:<name>\""),
                    );
                    None
                }
            },
        };
        let Some((count, period)) = parse_rate(&raw.rate) else {
            problems.add(
                format!("{key}.rate"),
                format!(
                    "{:?} is not a rate: <count>/<s|sec|second|m|min|minute|h|hour|d|day> or <count>/<duration> (e.g. \"10/s\", \"100/10s\")",
                    raw.rate
                ),
            );
            continue;
        };
        let burst = raw.burst.unwrap_or(count);
        if burst == 0 {
            problems.add(format!("{key}.burst"), "must be at least 1");
        }
        let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if max_keys == 0 {
            problems.add(format!("{key}.max_keys"), "must be at least 1");
        }
        if let Some(limit_key) = limit_key {
            rules.push(RateLimitRule {
                key: limit_key,
                count,
                period,
                burst: burst.max(1),
                max_keys: max_keys.max(1),
                cluster: raw.cluster,
            });
        }
    }
    rules
}

const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);

/// `10/s`, `100/min`, `10000/day`, `5/10s`.
pub fn parse_rate(text: &str) -> Option<(u32, Duration)> {
    let (count, per) = text.split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|count| *count > 0)?;
    let per = per.trim();
    let period = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => humantime::parse_duration(other).ok()?,
    };
    // GCRA needs a non-zero interval between two requests, and its arithmetic (nanoseconds
    // in a u64) a period far below 584 years: a year is plenty.
    (period.as_nanos() / u128::from(count) > 0 && period <= MAX_PERIOD).then_some((count, period))
}

pub(super) fn compile_cors(raw: RawCors, key: &str, problems: &mut Problems) -> Cors {
    let origins = if raw.origins.iter().any(|origin| origin == "*") {
        if raw.credentials {
            problems.add(
                format!("{key}.origins"),
                "\"*\" cannot be used with credentials = true (browsers refuse it): list the origins",
            );
        }
        None
    } else {
        for (index, origin) in raw.origins.iter().enumerate() {
            let uri = origin.parse::<hyper::Uri>();
            let ok = uri.as_ref().is_ok_and(|uri| {
                uri.scheme().is_some()
                    && uri.authority().is_some()
                    && uri.path_and_query().is_none_or(|pq| pq.as_str() == "/")
                    && !origin.ends_with('/')
            });
            if !ok {
                problems.add(
                    format!("{key}.origins[{index}]"),
                    format!("{origin:?} is not an origin (scheme://host[:port]) or \"*\""),
                );
            }
        }
        if raw.origins.is_empty() {
            problems.add(
                format!("{key}.origins"),
                "list at least one origin or \"*\"",
            );
        }
        Some(
            raw.origins
                .iter()
                .map(|origin| origin.to_ascii_lowercase())
                .collect(),
        )
    };
    let mut methods = Vec::new();
    for (index, method) in raw.methods.iter().enumerate() {
        match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => problems.add(
                format!("{key}.methods[{index}]"),
                format!("{method:?} is not an HTTP method"),
            ),
        }
    }
    if methods.is_empty() {
        methods = vec![Method::GET, Method::HEAD, Method::POST];
    }
    let names = |list: &[String], name: &str, problems: &mut Problems| -> Vec<HeaderName> {
        list.iter()
            .enumerate()
            .filter_map(
                |(index, text)| match HeaderName::from_bytes(text.as_bytes()) {
                    Ok(header) => Some(header),
                    Err(_) => {
                        problems.add(
                            format!("{key}.{name}[{index}]"),
                            format!("{text:?} is not a header name"),
                        );
                        None
                    }
                },
            )
            .collect()
    };
    Cors {
        origins,
        methods,
        headers: names(&raw.headers, "headers", problems),
        expose: names(&raw.expose, "expose", problems),
        credentials: raw.credentials,
        max_age: duration(raw.max_age, &format!("{key}.max_age"), problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10/s"), Some((10, Duration::from_secs(1))));
        assert_eq!(
            parse_rate("10000/day"),
            Some((10_000, Duration::from_secs(86_400)))
        );
        assert_eq!(parse_rate("100/min"), Some((100, Duration::from_secs(60))));
        assert_eq!(parse_rate("5/10s"), Some((5, Duration::from_secs(10))));
        for bad in [
            "",
            "10",
            "0/s",
            "x/s",
            "10/fortnight",
            "-1/s",
            "10/",
            "1/1000years",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }

    /// The problems `Config::parse` reports for a config with one upstream and `extra`.
    fn problems(extra: &str) -> Vec<String> {
        let text = format!("[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n{extra}");
        match crate::config::Config::parse(&text) {
            Ok(_) => Vec::new(),
            Err(crate::config::ParseError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(error) => panic!("{error:?}"),
        }
    }

    fn assert_problem(extra: &str, expected: &str) {
        let found = problems(extra);
        assert!(
            found.iter().any(|problem| problem.contains(expected)),
            "{expected:?} not in {found:#?}"
        );
    }

    #[test]
    fn route_policies_are_checked() {
        let route = "[[routes]]\nname = \"r\"\nupstream = \"u\"\n";
        assert_problem(
            &format!("{route}cors = {{ origins = [\"*\"], credentials = true }}"),
            "routes[0].cors.origins: \"*\" cannot be used with credentials",
        );
        assert_problem(
            &format!("{route}cors = {{ origins = [\"https://a.example/x\"] }}"),
            "routes[0].cors.origins[0]",
        );
        assert_problem(
            &format!("{route}auth = {{ api_key = {{}} }}"),
            "routes[0].auth.api_key: no [[consumers]]",
        );
        assert_problem(
            &format!("{route}auth = {{}}"),
            "routes[0].auth: accepts no credential",
        );
        assert_problem(
            &format!("{route}authorize = {{ scopes = [\"a\"] }}"),
            "routes[0].authorize: scopes and claims need a token",
        );
        assert_problem(
            &format!("{route}authorize = {{ sources = {{ allow = [\"10.0.0.0/33\"] }} }}"),
            "routes[0].authorize.sources.allow[0]",
        );
        assert_problem(
            &format!("{route}rate_limits = [{{ key = \"cookie\", rate = \"1/s\" }}]"),
            "routes[0].rate_limits[0].key",
        );
        assert_problem(
            &format!("{route}rate_limits = [{{ key = \"ip\", rate = \"1/s\", burst = 0 }}]"),
            "routes[0].rate_limits[0].burst",
        );
        assert_problem(
            "[[auth.jwt]]\nname = \"a\"\npublic_key = \"/x.pem\"\nsecret_env = \"X\"",
            "auth.jwt[0]: set exactly one of",
        );
        assert_problem(
            "[[auth.jwt]]\nname = \"a\"\njwks_url = \"ftp://idp.example/jwks\"",
            "auth.jwt[0].jwks_url: \"ftp://idp.example/jwks\" is not an http:// or https:// URL",
        );
        assert_problem(
            "[[auth.jwt]]\nname = \"a\"\njwks_url = \"https://idp.example/jwks\"\njwks_ca = \"/nonexistent.pem\"",
            "auth.jwt[0].jwks_ca: cannot read /nonexistent.pem",
        );
        assert_problem(
            "[[auth.jwt]]\nname = \"a\"\njwks_url = \"http://127.0.0.1:1/j\"\nalgorithms = [\"none\"]",
            "auth.jwt[0].algorithms[0]",
        );
        assert_problem(
            "[[auth.jwt]]\nname = \"a\"\njwks_url = \"http://127.0.0.1:1/j\"\nforward_claims = { sub = \"host\" }",
            "auth.jwt[0].forward_claims.sub",
        );
        // A complete, valid policy parses.
        let valid = format!(
            "[[auth.jwt]]\nname = \"a\"\njwks_url = \"http://127.0.0.1:1/j\"\n\
             [[consumers]]\nname = \"c\"\ngroups = [\"g\"]\napi_keys = [\"{}\"]\n{route}\
             auth = {{ jwt = \"a\", api_key = {{}} }}\nauthorize = {{ groups = [\"g\"], scopes = [\"s\"] }}\n\
             rate_limits = [{{ key = \"header:x-t\", rate = \"5/10s\" }}]\n\
             cors = {{ origins = [\"https://app.example.com\"] }}\n",
            hash_api_key("k")
        );
        assert_eq!(problems(&valid), Vec::<String>::new());
    }

    #[test]
    fn api_key_hashes() {
        let hash = hash_api_key("secret-key");
        assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64);
        assert!(parse_key_hash(&hash).is_some());
        assert!(parse_key_hash("secret-key").is_none());
        assert!(parse_key_hash("sha256:abcd").is_none());
    }
}
