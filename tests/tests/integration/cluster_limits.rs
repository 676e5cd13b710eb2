//! Cluster-wide L7 rate limits through the proxy: two gateways (loopback, `xdp.mode = "off"`)
//! sharing a real redis-server hold one client to one quota however its requests are spread;
//! with Redis gone `on_redis_down = "deny"` answers 503, and the limit works again when Redis
//! is back. Every wait is bounded.

use std::time::{Duration, Instant};

use crate::proxy_support::{Proxy, curl, free_port, upstream_toml};
use gateway_tests::{
    redis::{RedisServer, redis_available},
    upstream::Upstream,
};

/// Waits (bounded) until the node's metrics say its Redis link is up.
fn wait_for_redis(metrics: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape =
            gateway_tests::scrape::samples(&curl(&[&format!("http://{metrics}/metrics")]).body);
        if scrape.get("gateway_cluster_redis_up{}") == Some(&1.0) {
            return;
        }
        assert!(Instant::now() < deadline, "Redis never up: {scrape:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_spreading_over_two_nodes_gets_one_cluster_wide_quota() {
    if !redis_available("a_client_spreading_over_two_nodes_gets_one_cluster_wide_quota") {
        return;
    }
    let mut redis = RedisServer::on_loopback();
    let upstream = Upstream::start("api");
    let prefix = format!("gwtl{}", std::process::id());
    let node = |name: &str, metrics: &str| {
        format!(
            "[metrics]\naddress = \"{metrics}\"\n[access_log]\nenabled = false\n\
             [cluster]\nredis = \"{}\"\nnode = \"{name}\"\nkey_prefix = \"{prefix}\"\n\
             on_redis_down = \"deny\"\n{}\n\
             [[routes]]\nname = \"api\"\nupstream = \"api\"\n\
             rate_limits = [{{ key = \"ip\", rate = \"6/min\", burst = 6, cluster = true }}]\n",
            redis.url(),
            upstream_toml("api", &[(upstream.address(), 1)], "")
        )
    };
    let (metrics_a, metrics_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let a = Proxy::start(&node("node-a", &metrics_a));
    let b = Proxy::start(&node("node-b", &metrics_b));
    wait_for_redis(&metrics_a);
    wait_for_redis(&metrics_b);

    // 20 requests, alternating nodes: 6 pass in all (a burst of 6 leases one token at a
    // time, so the count is exact), the rest are 429s from whichever node they reach.
    let mut passed = [0, 0];
    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        let reply = curl(&[&node.url("/x")]);
        match reply.status {
            200 => passed[i % 2] += 1,
            429 => {
                assert!(reply.headers.contains_key("retry-after"), "{reply:?}");
                assert_eq!(reply.header("ratelimit-remaining"), "0");
            }
            other => panic!("request {i}: status {other}: {reply:?}"),
        }
    }
    assert_eq!(
        passed[0] + passed[1],
        6,
        "one quota across both nodes: {passed:?}"
    );
    assert!(passed[0] > 0 && passed[1] > 0, "{passed:?}");

    // Redis gone: fail closed, as configured.
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = curl(&[&a.url("/x")]);
        if reply.status == 503 {
            assert_eq!(reply.json()["error"]["code"], "rate_limit_unavailable");
            break;
        }
        assert!(Instant::now() < deadline, "no 503 without Redis: {reply:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back (empty, so the quota starts afresh): limits are answered again, by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = curl(&[&b.url("/x")]).status;
        if status == 200 || status == 429 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after Redis returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_cluster_limit_without_a_cluster_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9\" }]\n\
         [[routes]]\nname = \"r\"\nupstream = \"u\"\n\
         rate_limits = [{ key = \"ip\", rate = \"10/s\", cluster = true }]\n",
    )
    .unwrap();
    let output = gateway_tests::gateway_cmd(&["check-config", &file.to_string_lossy()]);
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        text.contains("routes[0].rate_limits[0].cluster: a cluster-wide limit needs a [cluster]"),
        "{text}"
    );
}
