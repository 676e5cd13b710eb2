//! Aggregate routes through the real binary: three real upstreams called concurrently, one of
//! them slow past its call timeout, under both partial-failure policies; templates filled from
//! the path's named captures and the query; selected headers forwarded; bounded bodies.

use std::time::{Duration, Instant};

use crate::proxy_support::{Proxy, RustClient, upstream_toml};
use gateway_tests::upstream::Upstream;

/// The slow upstream's delay: far past the call timeout, well within the client's patience.
const SLOW: Duration = Duration::from_secs(8);

struct Setup {
    users: Upstream,
    orders: Upstream,
    recs: Upstream,
    proxy: Proxy,
}

fn start(aggregate: &str) -> Setup {
    let users = Upstream::start("users");
    let orders = Upstream::start("orders");
    let recs = Upstream::start("recs");
    recs.set_delay_on("/recs/42", SLOW);
    let mut toml: String = [&users, &orders, &recs]
        .iter()
        .map(|server| upstream_toml(server.name(), &[(server.address(), 1)], ""))
        .collect();
    toml.push_str(&format!(
        r#"
[[routes]]
name = "profile"
match = {{ path_regex = "/profile/(?P<id>[0-9]+)" }}
aggregate = {{ {aggregate}, timeout = "500ms", forward_headers = ["accept-language"], calls = [
  {{ name = "user", upstream = "users", path = "/users/{{id}}" }},
  {{ name = "orders", upstream = "orders", path = "/orders?user={{id}}&limit={{query.limit}}" }},
  {{ name = "recs", upstream = "recs", path = "/recs/{{id}}" }},
] }}
"#
    ));
    let proxy = Proxy::start(&toml);
    Setup {
        users,
        orders,
        recs,
        proxy,
    }
}

#[test]
fn partial_policy_returns_what_arrived_and_lists_what_did_not() {
    let setup = start("merge = \"keys\", on_error = \"partial\"");
    let client = RustClient::http1();
    let started = Instant::now();
    let reply = client.get(
        &setup.proxy.url("/profile/42?limit=5"),
        &[("accept-language", "fr"), ("x-secret", "not forwarded")],
    );
    assert!(
        started.elapsed() < SLOW,
        "the slow call was cut at its timeout"
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), "application/json");
    let body = reply.json();
    assert_eq!(body["user"]["upstream"], "users");
    assert_eq!(body["user"]["path"], "/users/42");
    assert_eq!(body["user"]["method"], "GET");
    assert_eq!(body["orders"]["path"], "/orders?user=42&limit=5");
    assert_eq!(body["user"]["headers"]["accept-language"], "fr");
    assert!(body["user"]["headers"]["x-request-id"].is_string());
    assert!(body["user"]["headers"].get("x-secret").is_none());
    assert!(body.get("recs").is_none());
    assert_eq!(
        body["errors"],
        serde_json::json!([{ "call": "recs", "error": "timed out after 500ms" }])
    );
    assert_eq!(setup.users.hits(), 1);
    assert_eq!(setup.orders.hits(), 1);
    assert_eq!(setup.recs.hits(), 1);
}

#[test]
fn fail_policy_answers_502_when_a_call_fails() {
    let setup = start("merge = \"keys\", on_error = \"fail\"");
    let client = RustClient::http1();
    let reply = client.get(&setup.proxy.url("/profile/42"), &[]);
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "upstream_failed");
    // With the slow one fast again, the whole merge arrives.
    setup.recs.set_delay_on("/recs/42", Duration::ZERO);
    let reply = client.get(&setup.proxy.url("/profile/42"), &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    for (call, upstream) in [("user", "users"), ("orders", "orders"), ("recs", "recs")] {
        assert_eq!(body[call]["upstream"], upstream, "{body}");
    }
    assert!(body.get("errors").is_none());
    // A 5xx from a call fails it as well.
    setup.orders.set_status(500);
    let reply = client.get(&setup.proxy.url("/profile/42"), &[]);
    assert_eq!(reply.status, 502, "{reply:?}");
}

#[test]
fn root_merge_and_bounded_bodies() {
    let setup = start("merge = \"root\", on_error = \"partial\", max_body = \"2KiB\"");
    let client = RustClient::http1();
    let reply = client.get(&setup.proxy.url("/profile/7"), &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    // Members of every body at the root; later calls win: "recs" is the last call, and
    // /recs/7 is not slow, so all three arrived.
    assert_eq!(body["upstream"], "recs");
    assert_eq!(body["path"], "/recs/7");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(
        (setup.users.hits(), setup.orders.hits(), setup.recs.hits()),
        (1, 1, 1)
    );
    // A body over max_body is a failed call, not a truncated one.
    let long = "x".repeat(4096);
    let reply = client.get(
        &setup.proxy.url("/profile/7"),
        &[("accept-language", &long)],
    );
    let body = reply.json();
    let errors = body["errors"].as_array().expect("errors listed");
    assert_eq!(errors.len(), 3, "{body}");
    assert!(
        errors
            .iter()
            .all(|error| error["error"] == "the body is over 2048 bytes"),
        "{body}"
    );
    // Only GET and HEAD reach an aggregate route.
    let post = client.send(
        "POST",
        &setup.proxy.url("/profile/7"),
        &[],
        Default::default(),
    );
    assert_eq!(post.status, 404);
}
