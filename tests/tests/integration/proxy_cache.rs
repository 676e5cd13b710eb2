//! The response cache, through the real binary with a real upstream that counts its hits:
//! HIT/MISS/STALE sequences, `Vary`, `no-store`, `private`, TTL expiry, 304 revalidation,
//! coalescing of 100 concurrent cold misses, stale-while-revalidate, stale-if-error with the
//! upstream down, purge through the CLI, and the identity guard. Every wait is bounded.

use crate::proxy_support;

use std::time::{Duration, Instant};

use crate::proxy_support::{IO_TIMEOUT, Proxy, Reply, RustClient, upstream_toml};
use gateway_tests::{gateway_cmd, upstream::Upstream};

/// One upstream `api` and one caching route over it, with `cache` as the route's table.
fn cached(cache: &str) -> (Upstream, Proxy) {
    let upstream = Upstream::start("api");
    let toml = format!(
        "{}[[routes]]\nname = \"api\"\nupstream = \"api\"\ncache = {{ {cache} }}\n",
        upstream_toml("api", &[(upstream.address(), 1)], "")
    );
    let proxy = Proxy::start(&toml);
    (upstream, proxy)
}

fn x_cache(reply: &Reply) -> &str {
    reply.header("x-cache")
}

/// Polls `check` every 50 ms until it holds or `IO_TIMEOUT` passes.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {IO_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn miss_then_hit_with_age_and_head_from_the_same_entry() {
    let (upstream, proxy) = cached("ttl = \"30s\"");
    upstream.set_headers_on("/a", &[("cache-control", "public, max-age=60")]);
    let client = RustClient::http1();
    let first = client.get(&proxy.url("/a?x=1"), &[]);
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "MISS");
    let second = client.get(&proxy.url("/a?x=1"), &[]);
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body, first.body, "a hit is the stored response");
    assert!(second.header("age").parse::<u64>().unwrap() < 60);
    assert_eq!(second.header("cache-control"), "public, max-age=60");
    let head = client.send("HEAD", &proxy.url("/a?x=1"), &[], Default::default());
    assert_eq!((head.status, x_cache(&head)), (200, "HIT"));
    assert!(head.body.is_empty());
    assert_eq!(upstream.hits_on("/a"), 1);
    // HTTP/2 clients get the same entry.
    let h2 = RustClient::http2().get(&proxy.url("/a?x=1"), &[]);
    assert_eq!((h2.status, x_cache(&h2)), (200, "HIT"));
    assert_eq!(h2.body, first.body);
    // The query is part of the key.
    let other = client.get(&proxy.url("/a?x=2"), &[]);
    assert_eq!(x_cache(&other), "MISS");
    assert_eq!(upstream.hits_on("/a"), 2);
    // A POST is never cached.
    let post = client.send("POST", &proxy.url("/a?x=1"), &[], Default::default());
    assert_eq!(post.status, 200);
    assert_eq!(upstream.hits_on("/a"), 3);
}

#[test]
fn vary_keys_the_entry_by_the_named_request_headers() {
    let (upstream, proxy) = cached("ttl = \"30s\"");
    upstream.set_headers_on("/v", &[("vary", "Accept-Language")]);
    let client = RustClient::http1();
    let get = |language: &str| client.get(&proxy.url("/v"), &[("accept-language", language)]);
    let fr = get("fr");
    assert_eq!(x_cache(&fr), "MISS");
    assert_eq!(x_cache(&get("de")), "MISS");
    let fr_again = get("fr");
    assert_eq!(x_cache(&fr_again), "HIT");
    assert_eq!(
        fr_again.json()["headers"]["accept-language"],
        "fr",
        "the fr variant is served to fr"
    );
    let de_again = get("de");
    assert_eq!(x_cache(&de_again), "HIT");
    assert_eq!(de_again.json()["headers"]["accept-language"], "de");
    assert_eq!(upstream.hits_on("/v"), 2);
}

#[test]
fn no_store_private_and_set_cookie_are_not_cached() {
    let (upstream, proxy) = cached("ttl = \"30s\"");
    upstream.set_headers_on("/no-store", &[("cache-control", "no-store")]);
    upstream.set_headers_on("/private", &[("cache-control", "private, max-age=60")]);
    upstream.set_headers_on("/cookie", &[("set-cookie", "session=1")]);
    let client = RustClient::http1();
    for path in ["/no-store", "/private", "/cookie"] {
        for _ in 0..2 {
            let reply = client.get(&proxy.url(path), &[]);
            assert_eq!((reply.status, x_cache(&reply)), (200, "MISS"), "{path}");
        }
        assert_eq!(
            upstream.hits_on(path),
            2,
            "{path} reached the upstream each time"
        );
    }
    // A request's own no-store goes around the cache.
    client.get(&proxy.url("/plain"), &[]);
    let around = client.get(&proxy.url("/plain"), &[("cache-control", "no-store")]);
    assert_eq!(x_cache(&around), "BYPASS");
    assert_eq!(upstream.hits_on("/plain"), 2);
    assert_eq!(x_cache(&client.get(&proxy.url("/plain"), &[])), "HIT");
}

#[test]
fn entries_expire_after_their_ttl() {
    let (upstream, proxy) = cached("ttl = \"1s\"");
    let client = RustClient::http1();
    assert_eq!(x_cache(&client.get(&proxy.url("/t"), &[])), "MISS");
    assert_eq!(x_cache(&client.get(&proxy.url("/t"), &[])), "HIT");
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(x_cache(&client.get(&proxy.url("/t"), &[])), "MISS");
    assert_eq!(upstream.hits_on("/t"), 2);
    // The response's max-age wins over the route's default ttl.
    upstream.set_headers_on("/long", &[("cache-control", "max-age=60")]);
    client.get(&proxy.url("/long"), &[]);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(x_cache(&client.get(&proxy.url("/long"), &[])), "HIT");
    assert_eq!(upstream.hits_on("/long"), 1);
}

#[test]
fn conditional_requests_are_answered_with_304_from_the_cache() {
    let (upstream, proxy) = cached("ttl = \"30s\"");
    let modified = "Sun, 06 Nov 1994 08:49:37 GMT";
    upstream.set_headers_on(
        "/r",
        &[
            ("etag", "\"v1\""),
            ("last-modified", modified),
            ("cache-control", "max-age=60"),
        ],
    );
    let client = RustClient::http1();
    // Cold and conditional: the full response is fetched and stored, the client gets 304.
    let cold = client.get(&proxy.url("/r"), &[("if-none-match", "\"v1\"")]);
    assert_eq!((cold.status, x_cache(&cold)), (304, "MISS"));
    assert!(cold.body.is_empty());
    let full = client.get(&proxy.url("/r"), &[]);
    assert_eq!((full.status, x_cache(&full)), (200, "HIT"));
    let etag = client.get(&proxy.url("/r"), &[("if-none-match", "W/\"v1\"")]);
    assert_eq!((etag.status, x_cache(&etag)), (304, "HIT"));
    assert_eq!(etag.header("etag"), "\"v1\"");
    assert_eq!(etag.header("cache-control"), "max-age=60");
    let changed = client.get(&proxy.url("/r"), &[("if-none-match", "\"v2\"")]);
    assert_eq!(changed.status, 200);
    let since = client.get(&proxy.url("/r"), &[("if-modified-since", modified)]);
    assert_eq!((since.status, x_cache(&since)), (304, "HIT"));
    let before = client.get(
        &proxy.url("/r"),
        &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")],
    );
    assert_eq!(before.status, 200);
    assert_eq!(upstream.hits_on("/r"), 1);
}

#[test]
fn a_hundred_concurrent_cold_requests_reach_the_upstream_once() {
    let (upstream, proxy) = cached("ttl = \"30s\"");
    upstream.set_delay_on("/cold", Duration::from_millis(300));
    let url: hyper::Uri = proxy.url("/cold").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let replies: Vec<(u16, String)> = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let response = client.get(url).await.expect("a response");
                    let status = response.status().as_u16();
                    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
                    use http_body_util::BodyExt as _;
                    response.into_body().collect().await.expect("a body");
                    (status, x_cache)
                })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            let reply = tokio::time::timeout(IO_TIMEOUT, task)
                .await
                .expect("an answer in time")
                .expect("the task ran");
            replies.push(reply);
        }
        replies
    });
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "{replies:?}"
    );
    assert_eq!(
        replies.iter().filter(|(_, cache)| cache == "MISS").count(),
        1,
        "one leader fetched, the others were served its response: {replies:?}"
    );
    assert_eq!(upstream.hits_on("/cold"), 1);
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let (upstream, proxy) = cached("ttl = \"30s\"");
    upstream.set_headers_on(
        "/swr",
        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
    );
    let client = RustClient::http1();
    let first = client.get(&proxy.url("/swr"), &[]);
    assert_eq!(x_cache(&first), "MISS");
    std::thread::sleep(Duration::from_millis(1300));
    let stale = client.get(&proxy.url("/swr"), &[]);
    assert_eq!((stale.status, x_cache(&stale)), (200, "STALE"));
    assert_eq!(stale.body, first.body);
    wait_until("the background refresh", || upstream.hits_on("/swr") == 2);
    // The refreshed entry is stored as soon as the upstream answered (bounded wait).
    let mut fresh = client.get(&proxy.url("/swr"), &[]);
    let deadline = Instant::now() + IO_TIMEOUT;
    while x_cache(&fresh) != "HIT" || fresh.body == first.body {
        assert!(Instant::now() < deadline, "no refreshed hit: {fresh:?}");
        std::thread::sleep(Duration::from_millis(50));
        fresh = client.get(&proxy.url("/swr"), &[]);
    }
    assert_eq!(upstream.hits_on("/swr"), 2);
    // The refresh went upstream like any request: forwarding fields and all.
    assert_eq!(fresh.json()["headers"]["x-forwarded-proto"], "http");
    assert!(fresh.json()["headers"]["x-request-id"].is_string());
}

#[test]
fn stale_if_error_serves_the_stale_entry_while_the_upstream_is_down() {
    let (upstream, proxy) = cached("ttl = \"1s\", stale_if_error = \"60s\"");
    let client = RustClient::http1();
    let first = client.get(&proxy.url("/sie"), &[]);
    assert_eq!(x_cache(&first), "MISS");
    let address = upstream.stop();
    std::thread::sleep(Duration::from_millis(1300));
    let stale = client.get(&proxy.url("/sie"), &[]);
    assert_eq!((stale.status, x_cache(&stale)), (200, "STALE"), "{stale:?}");
    assert_eq!(stale.body, first.body);
    // Nothing stored for this one: the failure shows.
    let uncached = client.get(&proxy.url("/never-fetched"), &[]);
    assert_eq!(uncached.status, 502);
    // A failing upstream (5xx) counts as an error too.
    let upstream = Upstream::restart("api", address);
    upstream.set_status_on("/sie", 503);
    let stale = client.get(&proxy.url("/sie"), &[]);
    assert_eq!((stale.status, x_cache(&stale)), (200, "STALE"));
    assert_eq!(upstream.hits_on("/sie"), 1);
    // Back to health: the next request refreshes the entry.
    upstream.set_status_on("/sie", 200);
    let fresh = client.get(&proxy.url("/sie"), &[]);
    assert_eq!((fresh.status, x_cache(&fresh)), (200, "MISS"));
    assert_eq!(x_cache(&client.get(&proxy.url("/sie"), &[])), "HIT");
}

#[test]
fn purge_by_key_and_by_prefix_through_the_cli() {
    let (upstream, proxy) = cached("ttl = \"60s\"");
    let client = RustClient::http1();
    for path in ["/v1/users/1", "/v1/users/2?full=1", "/v1/orders/1"] {
        assert_eq!(x_cache(&client.get(&proxy.url(path), &[])), "MISS");
        assert_eq!(x_cache(&client.get(&proxy.url(path), &[])), "HIT");
    }
    let output = proxy
        .gateway
        .cli(&["cache", "purge", "--key", "GET 127.0.0.1/v1/users/1"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("purged 1 cached responses"),
        "{output:?}"
    );
    assert_eq!(x_cache(&client.get(&proxy.url("/v1/users/1"), &[])), "MISS");
    assert_eq!(
        x_cache(&client.get(&proxy.url("/v1/users/2?full=1"), &[])),
        "HIT"
    );
    let output = proxy
        .gateway
        .cli(&["cache", "purge", "--prefix", "/v1/users"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("purged 2 cached responses"),
        "{output:?}"
    );
    assert_eq!(
        x_cache(&client.get(&proxy.url("/v1/users/2?full=1"), &[])),
        "MISS"
    );
    assert_eq!(x_cache(&client.get(&proxy.url("/v1/orders/1"), &[])), "HIT");
    assert_eq!(upstream.hits_on("/v1/users/1"), 2);
    assert_eq!(upstream.hits_on("/v1/orders/1"), 1);
    // Neither, or both: refused.
    let output = proxy.gateway.cli(&["cache", "purge"]);
    assert!(!output.status.success());
}

#[test]
fn credentials_bypass_a_cache_that_does_not_key_by_identity() {
    let (upstream, proxy) = cached("ttl = \"60s\"");
    let client = RustClient::http1();
    // Alice's response must never reach Bob, nor anyone else.
    for (name, value) in [("authorization", "Bearer alice"), ("cookie", "session=bob")] {
        for _ in 0..2 {
            let reply = client.get(&proxy.url("/me"), &[(name, value)]);
            assert_eq!(x_cache(&reply), "BYPASS", "{name}");
        }
    }
    assert_eq!(upstream.hits_on("/me"), 4);
    let anonymous = client.get(&proxy.url("/me"), &[]);
    assert_eq!(
        x_cache(&anonymous),
        "MISS",
        "nothing was stored for the callers"
    );
}

#[test]
fn check_config_rejects_a_shared_cache_on_authenticated_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let route = |cache: &str| {
        format!(
            "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\ntargets = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[routes]]\nname = \"me\"\nupstream = \"u\"\n\
             match = {{ path = \"/me\", headers = {{ authorization = \"Bearer shared-token\" }} }}\n\
             cache = {{ {cache} }}\n"
        )
    };
    std::fs::write(&path, route("ttl = \"60s\"")).unwrap();
    let output = gateway_cmd(&["check-config", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("routes[0].cache.key_by_identity: the route's traffic is authenticated"),
        "{stderr}"
    );
    std::fs::write(&path, route("ttl = \"60s\", key_by_identity = true")).unwrap();
    let output = gateway_cmd(&["check-config", path.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn lookups_are_counted_by_route_and_result() {
    let upstream = Upstream::start("api");
    let metrics = format!("127.0.0.1:{}", proxy_support::free_port());
    let proxy = Proxy::start(&format!(
        "[metrics]\naddress = \"{metrics}\"\n{}[[routes]]\nname = \"api\"\nupstream = \"api\"\n\
         cache = {{ ttl = \"60s\" }}\n",
        upstream_toml("api", &[(upstream.address(), 1)], "")
    ));
    let client = RustClient::http1();
    client.get(&proxy.url("/m"), &[]);
    client.get(&proxy.url("/m"), &[]);
    client.get(&proxy.url("/m"), &[]);
    client.get(&proxy.url("/m"), &[("cookie", "a=b")]);
    upstream.set_headers_on("/rv", &[("etag", "\"1\""), ("cache-control", "no-cache")]);
    client.get(&proxy.url("/rv"), &[]);
    client.get(&proxy.url("/rv"), &[]);
    let key =
        |result: &str| format!("gateway_cache_requests_total{{result=\"{result}\",route=\"api\"}}");
    let mut values = Default::default();
    wait_until("the cache counters", || {
        let scraped = proxy_support::curl(&[&format!("http://{metrics}/metrics")]);
        values = gateway_tests::scrape::samples(&scraped.body);
        values.get(&key("hit")) == Some(&2.0)
    });
    assert_eq!(values[&key("miss")], 2.0, "{values:#?}");
    assert_eq!(values[&key("bypass")], 1.0, "{values:#?}");
    assert_eq!(values[&key("revalidated")], 1.0, "{values:#?}");
    assert_eq!(values[&key("stale")], 0.0, "{values:#?}");
    assert_eq!(upstream.hits_on("/m"), 2);
}

#[test]
fn responses_over_max_entry_size_stream_through_uncached() {
    // The echo's JSON is a few hundred bytes: over a 64-byte cap.
    let (upstream, proxy) = cached("ttl = \"60s\", max_entry_size = 64");
    let client = RustClient::http1();
    for _ in 0..2 {
        let reply = client.get(&proxy.url("/big"), &[]);
        assert_eq!((reply.status, x_cache(&reply)), (200, "MISS"));
        assert_eq!(reply.json()["path"], "/big", "the whole body arrived");
    }
    assert_eq!(upstream.hits_on("/big"), 2);
}

#[test]
fn stale_and_no_cache_entries_are_revalidated_with_the_upstream() {
    let (upstream, proxy) = cached("ttl = \"60s\"");
    upstream.set_headers_on("/rv", &[("etag", "\"v1\""), ("cache-control", "max-age=1")]);
    let client = RustClient::http1();
    let first = client.get(&proxy.url("/rv"), &[]);
    assert_eq!(x_cache(&first), "MISS");
    std::thread::sleep(Duration::from_millis(1300));
    // Stale, with a validator: the upstream is asked If-None-Match and answers 304, so the
    // stored body is served and the entry is fresh again.
    let revalidated = client.get(&proxy.url("/rv"), &[]);
    assert_eq!(
        (revalidated.status, x_cache(&revalidated)),
        (200, "REVALIDATED")
    );
    assert_eq!(revalidated.body, first.body);
    assert_eq!(upstream.hits_on("/rv"), 2);
    assert_eq!(x_cache(&client.get(&proxy.url("/rv"), &[])), "HIT");
    assert_eq!(upstream.hits_on("/rv"), 2);
    // The client's own conditional is answered from the revalidated entry.
    std::thread::sleep(Duration::from_millis(1300));
    let conditional = client.get(&proxy.url("/rv"), &[("if-none-match", "\"v1\"")]);
    assert_eq!(
        (conditional.status, x_cache(&conditional)),
        (304, "REVALIDATED")
    );

    // no-cache with a validator: stored, but every use asks the upstream first.
    upstream.set_headers_on("/nc", &[("etag", "\"n1\""), ("cache-control", "no-cache")]);
    let first = client.get(&proxy.url("/nc"), &[]);
    assert_eq!(x_cache(&first), "MISS");
    for round in 2..=3 {
        let reply = client.get(&proxy.url("/nc"), &[]);
        assert_eq!((reply.status, x_cache(&reply)), (200, "REVALIDATED"));
        assert_eq!(reply.body, first.body);
        assert_eq!(upstream.hits_on("/nc"), round);
    }
    // A changed representation (new ETag): the 200 replaces the entry.
    upstream.set_headers_on("/nc", &[("etag", "\"n2\""), ("cache-control", "no-cache")]);
    let changed = client.get(&proxy.url("/nc"), &[]);
    assert_eq!((changed.status, x_cache(&changed)), (200, "MISS"));
    assert_ne!(changed.body, first.body);
    assert_eq!(changed.header("etag"), "\"n2\"");
}

/// `sha256:<hex>`, the form consumers' API keys take in the config.
fn key_hash(key: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

#[test]
fn an_authenticated_route_caches_per_caller_and_never_across_callers() {
    let upstream = Upstream::start("api");
    let proxy = Proxy::start(&format!(
        "{}[[consumers]]\nname = \"alice\"\napi_keys = [\"{}\"]\n\
         [[consumers]]\nname = \"bob\"\napi_keys = [\"{}\"]\n\
         [[routes]]\nname = \"me\"\nupstream = \"api\"\n\
         auth = {{ api_key = {{ header = \"x-api-key\" }}, strip_credential = true }}\n\
         cache = {{ ttl = \"60s\", key_by_identity = true }}\n",
        upstream_toml("api", &[(upstream.address(), 1)], ""),
        key_hash("alice-key"),
        key_hash("bob-key"),
    ));
    let client = RustClient::http1();
    let as_alice = [("x-api-key", "alice-key")];
    let as_bob = [("x-api-key", "bob-key")];
    let first = client.get(&proxy.url("/me"), &as_alice);
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    let again = client.get(&proxy.url("/me"), &as_alice);
    assert_eq!((again.status, x_cache(&again)), (200, "HIT"));
    // Bob never gets Alice's entry: his own miss, then his own hit.
    let bob = client.get(&proxy.url("/me"), &as_bob);
    assert_eq!((bob.status, x_cache(&bob)), (200, "MISS"));
    assert_eq!(x_cache(&client.get(&proxy.url("/me"), &as_bob)), "HIT");
    // No credential, or a wrong one: refused before the cache is looked at.
    assert_eq!(client.get(&proxy.url("/me"), &[]).status, 401);
    assert_eq!(
        client
            .get(&proxy.url("/me"), &[("x-api-key", "nope")])
            .status,
        401
    );
    assert_eq!(
        upstream.hits_on("/me"),
        2,
        "one upstream request per caller"
    );
}
