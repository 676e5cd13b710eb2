//! Response caching config: the store's size (`[cache]`) and each route's `cache = { ... }`.
//!
//! ```toml
//! [cache]
//! max_size = "256MiB"            # all entries together, bytes (default 64MiB)
//!
//! [[routes]]
//! name = "users"
//! upstream = "users"
//! cache = { ttl = "30s", max_entry_size = "1MiB", stale_while_revalidate = "10s",
//!           stale_if_error = "5m", statuses = [200, 404], key_by_identity = false }
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{
    Problems,
    units::{Size, duration, size},
};

/// `[cache]`: the in-memory store every caching route shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStoreConfig {
    /// Bytes of all entries together (keys, heads and bodies); least valuable go first.
    pub max_size: u64,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        CacheStoreConfig {
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

const DEFAULT_MAX_SIZE: u64 = 64 * 1024 * 1024;
const DEFAULT_MAX_ENTRY: u64 = 1024 * 1024;
/// The statuses RFC 9110 calls heuristically cacheable that an API gateway meets.
const DEFAULT_STATUSES: [u16; 5] = [200, 203, 301, 404, 410];

/// A route's `cache`: what it stores and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Freshness for responses that state none (no `max-age`, `s-maxage`, `Expires`);
    /// `None`: such responses are not stored.
    pub ttl: Option<Duration>,
    /// `ttl` replaces whatever freshness the response states (`no-store`, `private` and
    /// `no-cache` are still honoured).
    pub override_ttl: bool,
    /// Larger responses stream through uncached.
    pub max_entry_size: u64,
    /// Statuses that may be stored.
    pub statuses: Vec<u16>,
    /// Serve a stale entry this long past its freshness while one background request
    /// refreshes it (a response's own `stale-while-revalidate` takes precedence).
    pub stale_while_revalidate: Option<Duration>,
    /// Serve a stale entry this long past its freshness while the upstream fails (5xx,
    /// unreachable, timed out); a response's own `stale-if-error` takes precedence.
    pub stale_if_error: Option<Duration>,
    /// The key includes the caller's identity, so authenticated responses are cached per
    /// caller. Without it, requests with `Authorization` or `Cookie` bypass the cache.
    pub key_by_identity: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCacheStore {
    max_size: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    ttl: Option<String>,
    #[serde(default)]
    override_ttl: bool,
    max_entry_size: Option<Size>,
    statuses: Option<Vec<u16>>,
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
    #[serde(default)]
    key_by_identity: bool,
}

impl RawCacheStore {
    pub(super) fn compile(raw: Option<RawCacheStore>, problems: &mut Problems) -> CacheStoreConfig {
        let Some(raw) = raw else {
            return CacheStoreConfig::default();
        };
        let max_size = size(raw.max_size, "cache.max_size", problems).unwrap_or(DEFAULT_MAX_SIZE);
        if max_size < 1024 {
            problems.add("cache.max_size", format!("{max_size} bytes is too small"));
        }
        CacheStoreConfig { max_size }
    }
}

impl RawCache {
    /// `key` is the route's, e.g. `routes[2]`.
    pub(super) fn compile(
        self,
        key: &str,
        store: &CacheStoreConfig,
        problems: &mut Problems,
    ) -> CacheConfig {
        let ttl = duration(self.ttl, &format!("{key}.cache.ttl"), problems);
        if self.override_ttl && ttl.is_none() {
            problems.add(
                format!("{key}.cache.override_ttl"),
                "needs cache.ttl: the TTL that replaces the response's",
            );
        }
        let max_entry_size = size(
            self.max_entry_size,
            &format!("{key}.cache.max_entry_size"),
            problems,
        )
        .unwrap_or(DEFAULT_MAX_ENTRY.min(store.max_size));
        if max_entry_size == 0 || max_entry_size > store.max_size {
            problems.add(
                format!("{key}.cache.max_entry_size"),
                format!(
                    "{max_entry_size} bytes is out of range 1..={} (cache.max_size)",
                    store.max_size
                ),
            );
        }
        let statuses = self.statuses.unwrap_or_else(|| DEFAULT_STATUSES.to_vec());
        if statuses.is_empty() {
            problems.add(format!("{key}.cache.statuses"), "needs at least one status");
        }
        for (index, status) in statuses.iter().enumerate() {
            // 206 (partial) and 304 are never whole responses to store; 1xx are not final.
            if !(200..600).contains(status) || [206, 304].contains(status) {
                problems.add(
                    format!("{key}.cache.statuses[{index}]"),
                    format!("{status} is not a status whose response can be stored"),
                );
            }
        }
        CacheConfig {
            ttl,
            override_ttl: self.override_ttl,
            max_entry_size,
            statuses,
            stale_while_revalidate: duration(
                self.stale_while_revalidate,
                &format!("{key}.cache.stale_while_revalidate"),
                problems,
            ),
            stale_if_error: duration(
                self.stale_if_error,
                &format!("{key}.cache.stale_if_error"),
                problems,
            ),
            key_by_identity: self.key_by_identity,
        }
    }
}

/// The identity guard (RFC 9111 3.5): a route whose traffic is authenticated may only cache
/// if its key includes the caller's identity, or one caller's response would be served to
/// another. A route counts as authenticated when its match requires an `Authorization`
/// header (and, once routes carry `auth`, when it has `auth`: pass that as
/// `route_has_auth`).
pub fn check_identity_keying(
    route_has_auth: bool,
    requires_authorization: bool,
    cache: &CacheConfig,
    key: &str,
    problems: &mut Problems,
) {
    if (route_has_auth || requires_authorization) && !cache.key_by_identity {
        problems.add(
            format!("{key}.cache.key_by_identity"),
            "the route's traffic is authenticated: its cache must key by identity \
             (key_by_identity = true), or one caller's response would be served to another",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    const BASE: &str = "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(&format!("{BASE}{text}")) {
            Err(ParseError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn route_cache_compiles_with_defaults() {
        let config = Config::parse(&format!(
            "{BASE}[cache]\nmax_size = \"8MiB\"\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n\
             cache = {{ ttl = \"30s\", stale_if_error = \"1m\" }}\n"
        ))
        .unwrap();
        assert_eq!(config.proxy.cache.max_size, 8 * 1024 * 1024);
        let cache = config.proxy.routes[0].cache.as_ref().unwrap();
        assert_eq!(cache.ttl, Some(std::time::Duration::from_secs(30)));
        assert_eq!(cache.max_entry_size, 1024 * 1024);
        assert_eq!(cache.statuses, [200, 203, 301, 404, 410]);
        assert_eq!(cache.stale_if_error.unwrap().as_secs(), 60);
        assert!(!cache.key_by_identity && cache.stale_while_revalidate.is_none());
    }

    #[test]
    fn bad_cache_values_name_the_key() {
        let found = problems(
            "[cache]\nmax_size = \"1MiB\"\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n\
             cache = { ttl = \"soon\", override_ttl = true, max_entry_size = \"2MiB\", statuses = [206, 99] }\n",
        );
        for prefix in [
            "routes[0].cache.ttl: \"soon\" is not a duration",
            "routes[0].cache.override_ttl: needs cache.ttl",
            "routes[0].cache.max_entry_size: 2097152 bytes is out of range",
            "routes[0].cache.statuses[0]: 206 is not a status",
            "routes[0].cache.statuses[1]: 99 is not a status",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn authenticated_routes_must_key_by_identity() {
        let found = problems(
            "[[routes]]\nname = \"r\"\nupstream = \"u\"\n\
             match = { headers = { authorization = \"Bearer t\" } }\ncache = { ttl = \"1s\" }\n",
        );
        assert!(
            found.iter().any(|p| p.starts_with(
                "routes[0].cache.key_by_identity: the route's traffic is authenticated"
            )),
            "{found:#?}"
        );
        Config::parse(&format!(
            "{BASE}[[routes]]\nname = \"r\"\nupstream = \"u\"\n\
             match = {{ headers = {{ authorization = \"Bearer t\" }} }}\n\
             cache = {{ ttl = \"1s\", key_by_identity = true }}\n"
        ))
        .unwrap();
    }
}
