//! Who may call a route, and how often: `[[auth.jwt]]` providers, `[[consumers]]` with API
//! keys, and the per-route `auth`, `authorize`, `rate_limits` and `cors` keys.
//!
//! Everything is checked and compiled here, once: PEM files are read and parsed, shared
//! secrets are taken from the environment (never from the file), API keys must be SHA-256
//! hashes, rates must parse. The runtime parts (JWKS fetching, limiter state, the verified
//! token cache) live in the proxy (proxy/jwt.rs, proxy/throttle.rs).
//!
//! One file a section: jwt.rs (`[[auth.jwt]]`), authorize.rs, throttle.rs (`rate_limits`),
//! cors.rs; this one holds the providers and consumers, and a route's `auth`.

mod authorize;
mod cors;
mod jwt;
mod throttle;

use std::collections::HashMap;

use hyper::header::HeaderName;
use serde::Deserialize;

use super::Problems;

pub use authorize::Authorize;
pub(super) use authorize::{RawAuthorize, compile_authorize};
pub use cors::Cors;
pub(super) use cors::{RawCors, compile_cors};
pub use jwt::{
    ALL_ALGORITHMS, JwksUrl, JwtProvider, TokenSource, VerifyKey, VerifyKeys, keys_from_jwks,
};
use jwt::{RawJwt, RawTokenSource, compile_provider};
pub use throttle::{DEFAULT_MAX_KEYS, LimitKey, RateLimitRule, parse_rate};
pub(super) use throttle::{RawRateLimit, compile_rate_limits};

/// The providers and consumers routes refer to.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub providers: Vec<JwtProvider>,
    pub consumers: Vec<Consumer>,
    /// SHA-256 of an API key -> index into `consumers`.
    pub api_keys: HashMap<[u8; 32], usize>,
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
    /// A verified client certificate (a `client_auth` listener) is required as well; alone,
    /// its identity is the caller.
    pub client_cert: bool,
    /// Remove the credential before forwarding.
    pub strip_credential: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    jwt: Vec<RawJwt>,
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
    client_cert: bool,
    #[serde(default)]
    strip_credential: bool,
}

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
    if jwt.is_none() && api_key.is_none() && !raw.client_cert && !problems_named(problems, key) {
        problems.add(
            key,
            "accepts no credential: set jwt, api_key or both, or client_cert = true",
        );
    }
    RouteAuth {
        jwt,
        api_key,
        client_cert: raw.client_cert,
        strip_credential: raw.strip_credential,
    }
}

fn problems_named(problems: &Problems, key: &str) -> bool {
    problems
        .0
        .iter()
        .any(|problem| problem.key.starts_with(key))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
