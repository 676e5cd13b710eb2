//! The store: entries in a [`moka`] cache bounded by bytes (`[cache] max_size`, each entry
//! weighed by its key, head and body), shared by every caching route and kept across
//! reloads; and purging by key or prefix.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hyper::{
    HeaderMap, StatusCode,
    body::Bytes,
    header::{ETAG, HeaderName, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED},
};
use moka::Expiry;

use crate::config::CacheStoreConfig;

use super::{key::variant_key, lock::InFlight};

/// The shortest time a stale entry with a validator is kept for revalidation.
const REVALIDATABLE_FOR: Duration = Duration::from_secs(60);

/// Variant records and responses, by internal key.
type Entries = moka::future::Cache<Arc<str>, Arc<Stored>>;

/// The response cache: entries, and the misses being fetched.
pub struct Store {
    entries: Entries,
    /// `[cache] max_size` it was built with (a change needs a restart).
    pub max_size: u64,
    /// The misses being fetched (coalescing).
    pub(super) in_flight: Arc<InFlight>,
}

enum Stored {
    /// The response varies on these request headers: its entries are under the variant
    /// keys. Kept as long as the longest-lived variant.
    Vary {
        names: Vec<HeaderName>,
        keep: Duration,
    },
    Response(Arc<Entry>),
}

/// One stored response.
pub struct Entry {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) stored: Instant,
    /// Its age when stored (the upstream's `Age`).
    pub(super) initial_age: Duration,
    /// Freshness lifetime.
    pub(super) fresh_for: Duration,
    pub(super) stale_while_revalidate: Duration,
    pub(super) stale_if_error: Duration,
    /// `no-cache`, `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale;
    /// with `no_cache`, never served without revalidation.
    pub(super) must_revalidate: bool,
    pub(super) no_cache: bool,
    /// The variant key it is stored under: waiters compare theirs.
    pub(super) key: Arc<str>,
}

impl Entry {
    pub(super) fn age(&self) -> Duration {
        self.initial_age + self.stored.elapsed()
    }

    /// How long past its storing the entry is worth keeping: fresh, or stale but usable,
    /// or (with a validator) revalidatable for another freshness lifetime, a minute at least.
    fn keep(&self) -> Duration {
        let mut extra = self.stale_while_revalidate.max(self.stale_if_error);
        if self.has_validators() {
            extra = extra.max(self.fresh_for.max(REVALIDATABLE_FOR));
        }
        (self.fresh_for + extra).saturating_sub(self.initial_age)
    }

    fn weight(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 32)
                .sum::<usize>()
            + 128
    }
}

struct KeepFor;

impl Expiry<Arc<str>, Arc<Stored>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Stored>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match &**value {
            Stored::Vary { keep, .. } => *keep,
            Stored::Response(entry) => entry.keep(),
        })
    }

    fn expire_after_update(
        &self,
        key: &Arc<str>,
        value: &Arc<Stored>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

impl Store {
    pub fn new(config: &CacheStoreConfig) -> Arc<Store> {
        let entries = moka::future::Cache::builder()
            .max_capacity(config.max_size)
            .weigher(|key: &Arc<str>, value: &Arc<Stored>| {
                let size = key.len()
                    + match &**value {
                        Stored::Vary { names, .. } => names.len() * 32 + 64,
                        Stored::Response(entry) => entry.weight(),
                    };
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .build();
        Arc::new(Store {
            entries,
            max_size: config.max_size,
            in_flight: Arc::default(),
        })
    }

    /// The entry for `base` that fits these request headers (following a Vary record).
    pub(super) async fn find(&self, base: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        match &*self.entries.get(base).await? {
            Stored::Response(entry) => Some(entry.clone()),
            Stored::Vary { names, .. } => {
                let key = variant_key(base, names, headers);
                match &*self.entries.get(key.as_str()).await? {
                    Stored::Response(entry) => Some(entry.clone()),
                    Stored::Vary { .. } => None,
                }
            }
        }
    }

    pub(super) async fn insert(&self, base: &Arc<str>, vary: Vec<HeaderName>, entry: Arc<Entry>) {
        if vary.is_empty() {
            self.entries
                .insert(base.clone(), Arc::new(Stored::Response(entry)))
                .await;
            return;
        }
        let keep = match self.entries.get(base).await.as_deref() {
            Some(Stored::Vary { names, keep }) if *names == vary => (*keep).max(entry.keep()),
            _ => entry.keep(),
        };
        self.entries
            .insert(entry.key.clone(), Arc::new(Stored::Response(entry)))
            .await;
        self.entries
            .insert(base.clone(), Arc::new(Stored::Vary { names: vary, keep }))
            .await;
    }

    /// Removes one entry (a response that may no longer be stored).
    pub(super) async fn remove(&self, key: &str) {
        self.entries.invalidate(key).await;
    }

    /// Removes the entries named by `key` (exactly) or by `prefix`; returns how many
    /// responses went.
    pub async fn purge(&self, target: &PurgeTarget) -> usize {
        let matching: Vec<(Arc<str>, bool)> = self
            .entries
            .iter()
            .filter(|(key, _)| {
                let visible = key.split('\n').next().unwrap_or("");
                match target {
                    PurgeTarget::Key(exact) => visible == exact.trim(),
                    PurgeTarget::Prefix(prefix) => {
                        let host_path = visible.strip_prefix("GET ").unwrap_or(visible);
                        match prefix.starts_with('/') {
                            true => host_path
                                .find('/')
                                .is_some_and(|at| host_path[at..].starts_with(prefix.as_str())),
                            false => host_path.starts_with(prefix.as_str()),
                        }
                    }
                }
            })
            .map(|(key, value)| {
                let response = matches!(&*value, Stored::Response(_));
                (Arc::clone(&*key), response)
            })
            .collect();
        let mut purged = 0;
        for (key, response) in matching {
            self.entries.invalidate(&key).await;
            purged += usize::from(response);
        }
        purged
    }
}

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// `GET host/path?query`, as the cache names it.
    Key(String),
    /// A prefix of `host/path` (`api.example.com/v1/users`), or of the path alone
    /// (`/v1/users`, any host).
    Prefix(String),
}

impl Entry {
    /// Whether it may be served as it is, without asking the upstream.
    pub(super) fn fresh(&self) -> bool {
        !self.no_cache && self.age() < self.fresh_for
    }

    /// Its validators, as the conditional fields of a revalidation request.
    pub(super) fn add_validators(&self, headers: &mut HeaderMap) {
        if let Some(etag) = self.headers.get(ETAG) {
            headers.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = self.headers.get(LAST_MODIFIED) {
            headers.insert(IF_MODIFIED_SINCE, modified.clone());
        }
    }

    pub(super) fn has_validators(&self) -> bool {
        self.headers.contains_key(ETAG) || self.headers.contains_key(LAST_MODIFIED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn purge_by_key_and_prefix() {
        let store = Store::new(&CacheStoreConfig::default());
        let entry = |key: &str| {
            Arc::new(Entry {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"x"),
                stored: Instant::now(),
                initial_age: Duration::ZERO,
                fresh_for: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                must_revalidate: false,
                no_cache: false,
                key: key.into(),
            })
        };
        for key in [
            "GET a.test/v1/users/1\nr",
            "GET a.test/v1/users/2?x=1\nr",
            "GET b.test/v1/users/3\nr",
            "GET a.test/v1/orders/1\nr",
        ] {
            let key: Arc<str> = key.into();
            store.insert(&key, Vec::new(), entry(&key)).await;
        }
        let purged = store
            .purge(&PurgeTarget::Key("GET a.test/v1/users/1".into()))
            .await;
        assert_eq!(purged, 1);
        assert_eq!(
            store.purge(&PurgeTarget::Prefix("/v1/users".into())).await,
            2
        );
        assert_eq!(
            store.purge(&PurgeTarget::Prefix("a.test/v1".into())).await,
            1
        );
        assert!(
            store
                .find("GET a.test/v1/orders/1\nr", &HeaderMap::new())
                .await
                .is_none()
        );
    }
}
