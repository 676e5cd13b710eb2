//! The `cache` stages: [`lookup`] (before `balance`: serve a hit, a 304, or a stale entry;
//! coalesce concurrent misses) and [`store`] (on the response: buffer a cacheable response
//! up to the route's `max_entry_size`, keep it, wake the requests waiting for it).
//!
//! The store is a [`moka`] cache bounded by bytes (`[cache] max_size`, each entry weighed by
//! its key, head and body), shared by every caching route and kept across reloads.
//!
//! **Keys.** An entry is named by `GET host/path?query` (lowercase host without port; HEAD
//! is answered from the GET entry), e.g. `GET api.example.com/v1/users/7?expand=1`. That is
//! the key the control plane purges by (exactly, or by a prefix of `host/path`, or of the
//! path alone when the prefix starts with `/`). Internally the route's name, the caller's
//! identity (routes with `key_by_identity`) and, for a response with `Vary`, the values of
//! the request headers it names are part of the key as well.
//!
//! **What is stored** (RFC 9111): only for GET, a status the route lists, and neither
//! `no-store`, `private` nor `Set-Cookie` in the response, nor `Vary: *`; a `no-cache`
//! response only with a validator (`ETag` or `Last-Modified`), to be revalidated each time.
//! Freshness: `s-maxage`, else `max-age`, else `Expires` - `Date`, else the route's `ttl`
//! (with `override_ttl`, the route's `ttl` always). The response's `Age` counts.
//!
//! **What is served.** Fresh: `X-Cache: HIT` with `Age`. Within `stale-while-revalidate`:
//! `STALE`, while one background request refreshes the entry. Within `stale-if-error`: the
//! request goes upstream, and if that fails (unreachable, timeout, 5xx) the stale entry is
//! served (`STALE`). `must-revalidate`, `proxy-revalidate` and `s-maxage` rule out stale
//! serving. An entry that may not be served as it is (stale, or `no-cache`) but has a
//! validator is revalidated: the request goes upstream with `If-None-Match` /
//! `If-Modified-Since`, and a 304 refreshes the entry's head and freshness and serves its
//! body (`X-Cache: REVALIDATED`). A request's `no-store` bypasses the cache; its `no-cache` or
//! `max-age=0` skips the lookup (the answer is stored). `If-None-Match` / `If-Modified-Since` are answered
//! from the entry (304); on a miss they are not sent upstream, so the full response can be
//! stored, and are evaluated against it.
//!
//! **Never one caller's response to another** (RFC 9111 3.5): a request with
//! `Authorization`, `Cookie` or a client certificate bypasses a route's cache unless the route
//! keys by identity, and then only a verified identity (set by authentication) gets an entry.
//!
//! **Coalescing.** Concurrent misses for one key wait for the first (the leader): when its
//! response is stored they are served from it; when it could not be stored (too large,
//! private, an error) each goes upstream itself.

mod body;
mod key;
mod lock;
mod policy;
mod store;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::BodyExt as _;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::Bytes,
    header::{
        AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, COOKIE, DATE, ETAG, EXPIRES, HeaderName,
        HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, VARY,
    },
};
use prometheus_client::metrics::counter::Counter;

use crate::config::CacheConfig;

use super::{
    Flow, RequestCtx, Routed,
    body::{ProxyBody, empty, full},
    error::{ErrorKind, ProxyError},
    observe::ProxyMetrics,
};
use body::Prefixed;
use key::{variant_key, vary_names};
use lock::Leader;
pub use policy::Directives;
use policy::storable;
use store::Entry;
pub use store::{PurgeTarget, Store};

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What `lookup` leaves for `store` and for the error path.
pub struct CacheState {
    base: Arc<str>,
    /// The client's conditional fields, held back from the upstream.
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    head: bool,
    /// A stale entry to serve if the upstream fails.
    stale: Option<Arc<Entry>>,
    /// Set when this request fetches for the others.
    leader: Option<Leader>,
    /// The request's headers named by a `Vary` (compared again when storing).
    request_headers: HeaderMap,
    /// The entry this request revalidates (its validators went upstream).
    revalidate: Option<Arc<Entry>>,
    /// The lookup's result is counted when the answer is known (stale, revalidated, miss).
    deferred: bool,
}

/// A caching route's lookup counters, resolved once per snapshot (no label work per request).
pub struct Counters {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    bypass: Counter,
    revalidated: Counter,
}

impl Counters {
    pub fn for_route(metrics: &ProxyMetrics, route: &str) -> Counters {
        let counter = |result: &str| {
            metrics
                .cache
                .get_or_create(&vec![
                    ("route", route.to_owned()),
                    ("result", result.to_owned()),
                ])
                .clone()
        };
        Counters {
            hit: counter("hit"),
            miss: counter("miss"),
            stale: counter("stale"),
            bypass: counter("bypass"),
            revalidated: counter("revalidated"),
        }
    }
}

#[derive(Clone, Copy)]
enum Lookup {
    Hit,
    Miss,
    Stale,
    Bypass,
    Revalidated,
}

fn count(routed: &Routed<'_>, result: Lookup) {
    let Some(counters) = &routed.snapshot.cache_counters[routed.index] else {
        return;
    };
    match result {
        Lookup::Hit => counters.hit.inc(),
        Lookup::Miss => counters.miss.inc(),
        Lookup::Stale => counters.stale.inc(),
        Lookup::Bypass => counters.bypass.inc(),
        Lookup::Revalidated => counters.revalidated.inc(),
    };
}

/// The cache lookup stage. Needs `route` to have run; see the module docs for the rules.
pub async fn lookup(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    req: &mut Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let route = routed.route;
    let Some(config) = &route.cache else {
        return Ok(Flow::Continue);
    };
    let head = req.method() == Method::HEAD;
    // A WebSocket handshake is a GET, but never one to answer from (or wait on) the cache.
    if !(head || req.method() == Method::GET) || ctx.class.websocket {
        return Ok(Flow::Continue);
    }
    let directives = Directives::parse(req.headers());
    // A client certificate is a credential too: the upstream sees it (XFCC) and may answer
    // per caller.
    let credentials = req.headers().contains_key(AUTHORIZATION)
        || req.headers().contains_key(COOKIE)
        || ctx.connection.client_cert.is_some();
    let identity = match (config.key_by_identity, &ctx.identity) {
        (true, Some(identity)) => Some(identity.name.as_str()),
        (true, None) if !credentials => Some(""),
        (false, _) if !credentials => None,
        // Credentials, but no verified identity to key them by.
        _ => {
            count(routed, Lookup::Bypass);
            ctx.cache_bypass = true;
            return Ok(Flow::Continue);
        }
    };
    if directives.no_store {
        count(routed, Lookup::Bypass);
        ctx.cache_bypass = true;
        return Ok(Flow::Continue);
    }
    let host = routed.host_name().unwrap_or_default();
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let route_name = &route.name;
    let base: Arc<str> = match identity {
        Some(identity) => format!("GET {host}{target}\n{route_name}\nidentity={identity}"),
        None => format!("GET {host}{target}\n{route_name}"),
    }
    .into();
    let mut state = CacheState {
        base: base.clone(),
        if_none_match: req.headers_mut().remove(IF_NONE_MATCH),
        if_modified_since: req.headers_mut().remove(IF_MODIFIED_SINCE),
        head,
        stale: None,
        leader: None,
        // Filled on the way upstream: a hit does not need it.
        request_headers: HeaderMap::new(),
        revalidate: None,
        deferred: false,
    };
    let store = &routed.snapshot.cache;
    let skip_lookup = directives.no_cache || directives.max_age == Some(0);
    if !skip_lookup && let Some(entry) = store.find(&base, req.headers()).await {
        let age = entry.age();
        let stale_ok = !entry.must_revalidate;
        if entry.fresh() {
            count(routed, Lookup::Hit);
            return Ok(Flow::Respond(state.respond(&entry, "HIT")));
        }
        if stale_ok && age < entry.fresh_for + entry.stale_while_revalidate {
            count(routed, Lookup::Stale);
            if !head && let Ok(leader) = store.in_flight.lead_or_wait(&base) {
                state.request_headers = req.headers().clone();
                refresh(routed, ctx, req, state.clone_for_refresh(leader, &entry));
            }
            return Ok(Flow::Respond(state.respond(&entry, "STALE")));
        }
        if !head && entry.has_validators() {
            state.revalidate = Some(entry.clone());
        }
        if stale_ok && age < entry.fresh_for + entry.stale_if_error {
            state.stale = Some(entry);
        }
    }
    // HEAD misses go upstream as they are, unstored (their answer has no body to keep).
    if !head {
        // How long the leader may take: its upstream's timeout, or the aggregate's.
        let wait = match &route.aggregate {
            Some(aggregate) => aggregate.timeout,
            None => routed.upstream.config.request_timeout,
        } + Duration::from_secs(1);
        match store.in_flight.lead_or_wait(&base) {
            Ok(leader) => {
                // A leader that finished between our lookup and now has stored its entry.
                if !skip_lookup
                    && let Some(entry) = store.find(&base, req.headers()).await
                    && entry.fresh()
                {
                    drop(leader);
                    count(routed, Lookup::Hit);
                    return Ok(Flow::Respond(state.respond(&entry, "HIT")));
                }
                state.leader = Some(leader);
            }
            Err(mut waiting) => {
                let outcome = tokio::time::timeout(wait, waiting.wait_for(Option::is_some)).await;
                if let Ok(Ok(outcome)) = outcome
                    && let Some(Some(entry)) = outcome.clone()
                    && *entry.key == *variant_key(&base, &vary_names(&entry.headers), req.headers())
                {
                    count(routed, Lookup::Hit);
                    return Ok(Flow::Respond(state.respond(&entry, "HIT")));
                }
            }
        }
    }
    // With a stale entry in reserve or one to revalidate, the answer decides what to count.
    state.deferred = state.stale.is_some() || state.revalidate.is_some();
    if !state.deferred {
        count(routed, Lookup::Miss);
    }
    if let Some(entry) = &state.revalidate {
        entry.add_validators(req.headers_mut());
    }
    state.request_headers = req.headers().clone();
    ctx.cache = Some(state);
    Ok(Flow::Continue)
}

/// Starts the background refresh of a stale entry (stale-while-revalidate).
fn refresh(routed: &Routed<'_>, ctx: &RequestCtx, req: &Request<ProxyBody>, state: CacheState) {
    let mut fresh = ctx.for_refresh(state);
    let mut request = Request::new(empty());
    *request.uri_mut() = req.uri().clone();
    *request.headers_mut() = req.headers().clone();
    if let Some(entry) = fresh
        .cache
        .as_ref()
        .and_then(|state| state.revalidate.as_ref())
    {
        entry.add_validators(request.headers_mut());
    }
    // The task owns what the request borrowed: the snapshot, and where the request goes.
    let snapshot = routed.snapshot.clone();
    let (index, host, path) = (
        routed.index,
        routed.host.clone(),
        routed.upstream_path.clone(),
    );
    tokio::spawn(async move {
        let routed = Routed::new(&snapshot, index, host, path);
        // What any request gets on its way upstream (forwarding fields, the route's edits).
        if let Err(error) = super::headers::prepare_request(&routed, &mut fresh, &mut request) {
            tracing::debug!("background cache refresh failed: {error}");
            return;
        }
        let fetched = super::fetch(&routed, &mut fresh, request).await;
        match fetched {
            Ok(response) => {
                if let Ok(response) = store(&routed, &mut fresh, response).await {
                    // Drives nothing: the refreshed entry is buffered, or the body is dropped.
                    drop(response);
                }
            }
            Err(error) => tracing::debug!("background cache refresh failed: {error}"),
        }
    });
}

/// On an upstream failure: the stale entry, if the request kept one (stale-if-error).
pub fn on_error(routed: &Routed<'_>, ctx: &mut RequestCtx) -> Option<Response<ProxyBody>> {
    let state = ctx.cache.as_mut()?;
    let Some(entry) = state.stale.take() else {
        if state.deferred {
            count(routed, Lookup::Miss);
        }
        return None;
    };
    let response = state.respond(&entry, "STALE");
    count(routed, Lookup::Stale);
    Some(response)
}

/// The response stage: stores a cacheable response (buffered up to the route's
/// `max_entry_size`) and answers from the stored entry; anything else streams through.
pub async fn store(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // A state is only left on routes that cache.
    let (Some(mut state), Some(config)) = (ctx.cache.take(), &routed.route.cache) else {
        return Ok(with_x_cache(response, ctx.cache_bypass.then_some("BYPASS")));
    };
    if response.status().is_server_error()
        && let Some(entry) = state.stale.take()
    {
        count(routed, Lookup::Stale);
        return Ok(state.respond(&entry, "STALE"));
    }
    if response.status() == StatusCode::NOT_MODIFIED
        && let Some(entry) = state.revalidate.take()
    {
        // A background refresh is no lookup: only the client's request is counted.
        if state.deferred {
            count(routed, Lookup::Revalidated);
        }
        return Ok(revalidated(routed, config, state, &entry, response).await);
    }
    if state.deferred {
        count(routed, Lookup::Miss);
    }
    let Some(plan) = storable(config, &response, state.head) else {
        return Ok(with_x_cache(response, Some("MISS")));
    };
    let max = config.max_entry_size;
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return Ok(with_x_cache(response, Some("MISS")));
    }
    let (parts, mut body) = response.into_parts();
    let mut buffered: Vec<Bytes> = Vec::new();
    let mut size = 0u64;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                return Err(ProxyError {
                    sent: true,
                    ..ProxyError::new(
                        ErrorKind::UpstreamFailed,
                        format!("reading the upstream's response body: {error}"),
                    )
                });
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not kept
        };
        size += data.len() as u64;
        buffered.push(data);
        if size > max {
            // Too large to keep: what was read, then the rest, streamed.
            let body = Prefixed {
                prefix: buffered.into(),
                rest: body,
            };
            let response = Response::from_parts(parts, body.boxed());
            return Ok(with_x_cache(response, Some("MISS")));
        }
    }
    let body = match buffered.len() {
        1 => buffered.pop().expect("one chunk"),
        _ => Bytes::from(buffered.concat()),
    };
    let key: Arc<str> = match plan.vary.is_empty() {
        true => state.base.clone(),
        false => variant_key(&state.base, &plan.vary, &state.request_headers).into(),
    };
    let entry = Arc::new(Entry {
        status: parts.status,
        headers: parts.headers,
        body,
        stored: Instant::now(),
        initial_age: plan.initial_age,
        fresh_for: plan.fresh_for,
        stale_while_revalidate: plan.stale_while_revalidate,
        stale_if_error: plan.stale_if_error,
        must_revalidate: plan.must_revalidate,
        no_cache: plan.no_cache,
        key,
    });
    routed
        .snapshot
        .cache
        .insert(&state.base, plan.vary, entry.clone())
        .await;
    if let Some(leader) = state.leader.take() {
        leader.finish(Some(entry.clone()));
    }
    Ok(state.respond(&entry, "MISS"))
}

fn with_x_cache(
    mut response: Response<ProxyBody>,
    value: Option<&'static str>,
) -> Response<ProxyBody> {
    if let Some(value) = value {
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(value));
    }
    response
}

/// The upstream's 304 to a revalidation: the entry's head updated with the 304's fields
/// (RFC 9111 4.3.4), its freshness recomputed, its body kept; stored again if it still may be.
async fn revalidated(
    routed: &Routed<'_>,
    config: &CacheConfig,
    mut state: CacheState,
    entry: &Entry,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let mut headers = entry.headers.clone();
    for name in response.headers().keys() {
        if name == CONTENT_LENGTH {
            continue;
        }
        headers.remove(name);
        for value in response.headers().get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut updated = Response::new(empty());
    *updated.status_mut() = entry.status;
    *updated.headers_mut() = headers;
    let plan = storable(config, &updated, false);
    let (parts, _) = updated.into_parts();
    let refreshed = Arc::new(Entry {
        status: entry.status,
        headers: parts.headers,
        body: entry.body.clone(),
        stored: Instant::now(),
        initial_age: plan
            .as_ref()
            .map_or(Duration::ZERO, |plan| plan.initial_age),
        fresh_for: plan.as_ref().map_or(Duration::ZERO, |plan| plan.fresh_for),
        stale_while_revalidate: plan
            .as_ref()
            .map_or(Duration::ZERO, |plan| plan.stale_while_revalidate),
        stale_if_error: plan
            .as_ref()
            .map_or(Duration::ZERO, |plan| plan.stale_if_error),
        must_revalidate: plan.as_ref().is_none_or(|plan| plan.must_revalidate),
        no_cache: plan.as_ref().is_none_or(|plan| plan.no_cache),
        key: entry.key.clone(),
    });
    match plan {
        Some(plan) => {
            routed
                .snapshot
                .cache
                .insert(&state.base, plan.vary, refreshed.clone())
                .await;
            if let Some(leader) = state.leader.take() {
                leader.finish(Some(refreshed.clone()));
            }
        }
        // It may no longer be stored (no-store now): served this once, then gone.
        None => routed.snapshot.cache.remove(&entry.key).await,
    }
    state.respond(&refreshed, "REVALIDATED")
}

impl CacheState {
    fn clone_for_refresh(&self, leader: Leader, entry: &Arc<Entry>) -> CacheState {
        CacheState {
            base: self.base.clone(),
            if_none_match: None,
            if_modified_since: None,
            head: false,
            stale: None,
            leader: Some(leader),
            request_headers: self.request_headers.clone(),
            revalidate: entry.has_validators().then(|| entry.clone()),
            deferred: false,
        }
    }

    /// The client's answer from `entry`: the response, or 304 when its conditional fields
    /// match; `Age` and `X-Cache` added.
    fn respond(&self, entry: &Entry, result: &'static str) -> Response<ProxyBody> {
        let not_modified = entry.status == StatusCode::OK && self.not_modified(entry);
        let mut response = if not_modified {
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [CACHE_CONTROL, DATE, ETAG, EXPIRES, VARY, LAST_MODIFIED] {
                for value in entry.headers.get_all(&name) {
                    response.headers_mut().append(name.clone(), value.clone());
                }
            }
            response
        } else {
            let body = match self.head {
                true => empty(),
                false => full(entry.body.clone()),
            };
            let mut response = Response::new(body);
            *response.status_mut() = entry.status;
            *response.headers_mut() = entry.headers.clone();
            response
        };
        let headers = response.headers_mut();
        headers.insert(AGE, HeaderValue::from(entry.age().as_secs()));
        headers.insert(X_CACHE, HeaderValue::from_static(result));
        response
    }

    /// RFC 9110 13.2.2: If-None-Match decides when present, else If-Modified-Since.
    fn not_modified(&self, entry: &Entry) -> bool {
        if let Some(condition) = &self.if_none_match {
            let Some(etag) = entry.headers.get(ETAG).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            let Ok(condition) = condition.to_str() else {
                return false;
            };
            let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
            return condition.trim() == "*"
                || condition.split(',').any(|tag| opaque(tag) == opaque(etag));
        }
        let since = self
            .if_modified_since
            .as_ref()
            .and_then(|value| httpdate::parse_http_date(value.to_str().ok()?).ok());
        let modified = entry
            .headers
            .get(LAST_MODIFIED)
            .and_then(|value| httpdate::parse_http_date(value.to_str().ok()?).ok());
        matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use hyper::body::{Body, Frame};

    use super::super::{body::BoxError, snapshot::Snapshot};
    use super::*;

    /// Header fields from (name, value) pairs; the cache's other test modules use it too.
    pub(super) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn response(status: u16, pairs: &[(&'static str, &str)]) -> Response<ProxyBody> {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        *response.headers_mut() = headers(pairs);
        response
    }

    /// A one-route snapshot whose route caches with `cache`.
    fn snapshot(cache: &str) -> Arc<Snapshot> {
        let config = crate::config::Config::parse(&format!(
            "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n\
             [[routes]]\nname = \"r\"\nupstream = \"u\"\ncache = {{ {cache} }}\n"
        ))
        .unwrap();
        Arc::new(Snapshot::build(&config.proxy, Default::default()))
    }

    /// Its one route, matched for host `a.test`.
    fn routed(snapshot: &Arc<Snapshot>) -> Routed<'_> {
        let path = hyper::http::uri::PathAndQuery::from_static("/");
        Routed::new(snapshot, 0, Some("a.test".parse().unwrap()), path)
    }

    /// A request's context, with this verified caller.
    fn context(identity: Option<&str>) -> RequestCtx {
        let connection = Arc::new(super::super::ConnectionInfo {
            client: "127.0.0.1:1".parse().unwrap(),
            scheme: "http",
            client_cert: None,
            _slot: Arc::new(tokio::sync::Semaphore::new(1))
                .try_acquire_owned()
                .unwrap(),
        });
        let mut ctx = RequestCtx::new(connection, &Request::new(empty()));
        ctx.identity = identity.map(|name| super::super::Identity {
            name: name.to_owned(),
            groups: Vec::new(),
        });
        ctx
    }

    fn get(authorization: &str) -> Request<ProxyBody> {
        let mut req = Request::new(empty());
        *req.uri_mut() = "/me".parse().unwrap();
        req.headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        req
    }

    /// What the pipeline would answer: the cache's response, or `None` (goes upstream).
    async fn look(
        routed: &Routed<'_>,
        ctx: &mut RequestCtx,
        authorization: &str,
    ) -> Option<String> {
        match lookup(routed, ctx, &mut get(authorization)).await.unwrap() {
            Flow::Respond(response) => {
                Some(response.headers()[X_CACHE].to_str().unwrap().to_owned())
            }
            Flow::Continue => None,
        }
    }

    #[tokio::test]
    async fn identity_keyed_entries_are_per_caller() {
        let snapshot = snapshot("ttl = \"60s\", key_by_identity = true");
        let routed = routed(&snapshot);
        // Alice's response is stored under her identity...
        let mut alice = context(Some("alice"));
        assert_eq!(look(&routed, &mut alice, "Bearer a").await, None);
        let stored = store(&routed, &mut alice, response(200, &[]))
            .await
            .unwrap();
        assert_eq!(stored.headers()[X_CACHE], "MISS");
        let mut again = context(Some("alice"));
        assert_eq!(
            look(&routed, &mut again, "Bearer a").await.as_deref(),
            Some("HIT")
        );
        // ...and never served to Bob, who shares the snapshot and the URL.
        let mut bob = context(Some("bob"));
        assert_eq!(look(&routed, &mut bob, "Bearer b").await, None);
        assert!(
            bob.cache.is_some(),
            "Bob's miss goes upstream and may be stored"
        );
        // Credentials without a verified identity are not cached at all.
        let mut unverified = context(None);
        assert_eq!(look(&routed, &mut unverified, "Bearer a").await, None);
        assert!(unverified.cache.is_none() && unverified.cache_bypass);
    }

    #[tokio::test]
    async fn a_client_certificate_is_a_credential() {
        let shown = |identity: Option<&str>| {
            let mut ctx = context(identity);
            let connection = Arc::get_mut(&mut ctx.connection).unwrap();
            connection.client_cert = Some(crate::proxy::client_cert::ClientCert {
                identity: Some("CN=alice".into()),
                xfcc: HeaderValue::from_static("Hash=00"),
            });
            ctx
        };
        let plain = || {
            let mut req = Request::new(empty());
            *req.uri_mut() = "/me".parse().unwrap();
            req
        };
        // Not keyed by identity: whoever showed a certificate goes around the cache.
        let shared = snapshot("ttl = \"60s\"");
        let mut ctx = shown(None);
        let flow = lookup(&routed(&shared), &mut ctx, &mut plain())
            .await
            .unwrap();
        assert!(matches!(flow, Flow::Continue));
        assert!(ctx.cache.is_none() && ctx.cache_bypass);
        // Keyed by identity: the certificate's caller gets entries of its own.
        let keyed = snapshot("ttl = \"60s\", key_by_identity = true");
        let mut ctx = shown(Some("CN=alice"));
        let flow = lookup(&routed(&keyed), &mut ctx, &mut plain())
            .await
            .unwrap();
        assert!(matches!(flow, Flow::Continue));
        assert!(ctx.cache.is_some() && !ctx.cache_bypass);
    }

    #[tokio::test]
    async fn responses_over_the_entry_cap_stream_through_whole_and_unstored() {
        let snapshot = snapshot("ttl = \"60s\", max_entry_size = 8");
        let routed = routed(&snapshot);
        let mut ctx = context(None);
        let plain = || {
            let mut req = Request::new(empty());
            *req.uri_mut() = "/big".parse().unwrap();
            req
        };
        assert!(matches!(
            lookup(&routed, &mut ctx, &mut plain()).await.unwrap(),
            Flow::Continue
        ));
        // No Content-Length: the cap is found while buffering, and what was read goes first.
        let body = Chunks(
            ["0123", "4567", "89ab", "cdef"]
                .into_iter()
                .map(|chunk| Bytes::from_static(chunk.as_bytes()))
                .collect(),
        );
        let mut response = Response::new(body.boxed());
        *response.status_mut() = StatusCode::OK;
        let passed = store(&routed, &mut ctx, response).await.unwrap();
        assert_eq!(passed.headers()[X_CACHE], "MISS");
        let bytes = passed.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"0123456789abcdef");
        let mut again = context(None);
        assert!(matches!(
            lookup(&routed, &mut again, &mut plain()).await.unwrap(),
            Flow::Continue
        ));
    }

    /// A body of several data frames and no known length, as a streamed upstream response.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    #[test]
    fn conditional_requests_compare_validators() {
        let entry = Entry {
            status: StatusCode::OK,
            headers: headers(&[
                ("etag", "\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ]),
            body: Bytes::new(),
            stored: Instant::now(),
            initial_age: Duration::ZERO,
            fresh_for: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            no_cache: false,
            key: "k".into(),
        };
        let state = |inm: Option<&str>, ims: Option<&str>| CacheState {
            base: "k".into(),
            if_none_match: inm.map(|v| HeaderValue::from_str(v).unwrap()),
            if_modified_since: ims.map(|v| HeaderValue::from_str(v).unwrap()),
            head: false,
            stale: None,
            leader: None,
            request_headers: HeaderMap::new(),
            revalidate: None,
            deferred: false,
        };
        assert!(state(Some("\"v0\", W/\"v1\""), None).not_modified(&entry));
        assert!(!state(Some("\"v2\""), Some("Sun, 06 Nov 1994 08:49:37 GMT")).not_modified(&entry));
        assert!(state(None, Some("Sun, 06 Nov 1994 08:49:37 GMT")).not_modified(&entry));
        assert!(!state(None, Some("Sat, 05 Nov 1994 08:49:37 GMT")).not_modified(&entry));
        assert!(!state(None, None).not_modified(&entry));
        let response = state(Some("*"), None).respond(&entry, "HIT");
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[ETAG], "\"v1\"");
        assert_eq!(response.headers()[X_CACHE], "HIT");
    }
}
