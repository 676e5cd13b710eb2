//! L7 rate limits through the real binary: a burst above the limit gets 429 with
//! `Retry-After` and `RateLimit-*`, capacity comes back over time, limits keyed by identity
//! do not bleed across identities, several limits apply at once, and limiter state survives
//! a reload that does not change the route.

use crate::proxy_support;

use std::time::{Duration, Instant};

use crate::proxy_support::{Proxy, Reply, RustClient, upstream_toml};
use gateway_tests::upstream::Upstream;

fn hash(key: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

fn number(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {reply:?}"))
}

fn routes(upstream: &Upstream, extra: &str) -> String {
    format!(
        "{}[[consumers]]\nname = \"alice\"\napi_keys = [\"{}\"]\n\
         [[consumers]]\nname = \"bob\"\napi_keys = [\"{}\"]\n\
         [[routes]]\nname = \"by-ip\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/ip\" }}\n\
         rate_limits = [{{ key = \"ip\", rate = \"5/10s\" }}]\n\
         [[routes]]\nname = \"by-identity\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/id\" }}\n\
         auth = {{ api_key = {{}} }}\n\
         rate_limits = [{{ key = \"identity\", rate = \"3/min\" }}]\n\
         [[routes]]\nname = \"two-limits\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/two\" }}\n\
         rate_limits = [{{ key = \"ip\", rate = \"100/s\", burst = 50 }}, {{ key = \"header:x-tenant\", rate = \"4/day\" }}]\n\
         {extra}",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        hash("alice-key-0001"),
        hash("bob-key-0002"),
    )
}

#[test]
fn a_burst_gets_429_with_headers_and_capacity_comes_back() {
    let upstream = Upstream::start("app");
    let proxy = Proxy::start(&routes(&upstream, ""));
    let client = RustClient::http1();
    // 5/10s: a burst of 5, then one more every 2 s (slow enough that a loaded machine still
    // sends the burst faster than it refills).
    let mut remaining = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let reply = client.get(&proxy.url("/ip"), &[]);
        match reply.status {
            200 => {
                assert_eq!(number(&reply, "ratelimit-limit"), 5);
                remaining.push(number(&reply, "ratelimit-remaining"));
            }
            429 => {
                refused = Some(reply);
                break;
            }
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    let refused = refused.expect("8 requests at once on a 5/10s limit: one is refused");
    assert!(remaining.len() >= 5, "{remaining:?}");
    assert_eq!(remaining[..4], [4, 3, 2, 1], "counts down: {remaining:?}");
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    assert_eq!(refused.json()["error"]["status"], 429);
    assert!(
        (1..=2).contains(&number(&refused, "retry-after")),
        "{refused:?}"
    );
    assert_eq!(number(&refused, "ratelimit-limit"), 5);
    assert_eq!(number(&refused, "ratelimit-remaining"), 0);
    assert!(number(&refused, "ratelimit-reset") >= 1);
    let hits = upstream.hits();
    assert_eq!(
        hits,
        remaining.len(),
        "refused requests never reach the upstream"
    );
    // Capacity comes back: one request per 2 s (polling bounded to 8 s).
    let deadline = Instant::now() + Duration::from_secs(8);
    std::thread::sleep(Duration::from_millis(2100));
    loop {
        let reply = client.get(&proxy.url("/ip"), &[]);
        if reply.status == 200 {
            assert_eq!(number(&reply, "ratelimit-limit"), 5);
            break;
        }
        assert!(Instant::now() < deadline, "still limited: {reply:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn identity_limits_do_not_bleed_across_identities() {
    let upstream = Upstream::start("app");
    let proxy = Proxy::start(&routes(&upstream, ""));
    let client = RustClient::http1();
    let get = |key: &str| client.get(&proxy.url("/id"), &[("x-api-key", key)]);
    for expected in [2, 1, 0] {
        let reply = get("alice-key-0001");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(number(&reply, "ratelimit-remaining"), expected);
    }
    let reply = get("alice-key-0001");
    assert_eq!(reply.status, 429, "{reply:?}");
    // 3/min: one request back after 20 s.
    assert!(
        (19..=20).contains(&number(&reply, "retry-after")),
        "{reply:?}"
    );
    // Bob has his own budget, from the same address.
    let reply = get("bob-key-0002");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(number(&reply, "ratelimit-remaining"), 2);
    // A bad key is a 401, not a count against anyone.
    assert_eq!(get("nobody").status, 401);
}

#[test]
fn several_limits_apply_and_state_survives_a_reload() {
    let upstream = Upstream::start("app");
    let proxy = Proxy::start(&routes(&upstream, ""));
    let client = RustClient::http1();
    let get = |tenant: &str| client.get(&proxy.url("/two"), &[("x-tenant", tenant)]);
    for expected in [3, 2, 1, 0] {
        let reply = get("acme");
        assert_eq!(reply.status, 200, "{reply:?}");
        // The tightest limit (4/day per tenant) is the one reported.
        assert_eq!(number(&reply, "ratelimit-limit"), 4);
        assert_eq!(number(&reply, "ratelimit-remaining"), expected);
    }
    let reply = get("acme");
    assert_eq!(reply.status, 429);
    assert!(number(&reply, "retry-after") > 3600, "{reply:?}");
    assert_eq!(get("globex").status, 200, "another tenant is not limited");
    // A reload that adds a route keeps this route's limiter: acme stays limited.
    proxy.reload(&routes(
        &upstream,
        "[[routes]]\nname = \"new\"\nupstream = \"app\"\nmatch = { path_prefix = \"/new\" }\n",
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(&proxy.url("/new"), &[]).status != 200 {
        assert!(Instant::now() < deadline, "{}", proxy.gateway.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get("acme").status, 429, "limiter state survived the reload");
}

#[test]
fn refusals_and_identities_are_counted_in_metrics() {
    let upstream = Upstream::start("app");
    let metrics = format!("127.0.0.1:{}", proxy_support::free_port());
    let proxy = Proxy::start(&routes(
        &upstream,
        &format!("[metrics]\naddress = \"{metrics}\"\n"),
    ));
    let client = RustClient::http1();
    for _ in 0..4 {
        client.get(&proxy.url("/id"), &[("x-api-key", "alice-key-0001")]);
    }
    assert_eq!(
        client
            .get(&proxy.url("/id"), &[("x-api-key", "wrong")])
            .status,
        401
    );
    assert_eq!(client.get(&proxy.url("/id"), &[]).status, 401);
    let limited = "gateway_rate_limited_total{route=\"by-identity\"}";
    let bad_key = "gateway_auth_failures_total{reason=\"invalid_api_key\"}";
    let missing = "gateway_auth_failures_total{reason=\"missing_credential\"}";
    let metered = "gateway_metered_requests_total{consumer=\"alice\",route=\"by-identity\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    let values = loop {
        let body = proxy_support::curl(&[&format!("http://{metrics}/metrics")]).body;
        let values = gateway_tests::scrape::samples(&body);
        if values.get(metered) == Some(&4.0) || Instant::now() >= deadline {
            break values;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(values.get(limited), Some(&1.0), "{values:#?}");
    assert_eq!(values.get(bad_key), Some(&1.0), "{values:#?}");
    assert_eq!(values.get(missing), Some(&1.0), "{values:#?}");
    assert_eq!(values.get(metered), Some(&4.0), "{values:#?}");
}
