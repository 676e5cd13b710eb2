//! Cluster mode on the proxy side: two gateways (loopback, `xdp.mode = "off"`) sharing a real
//! redis-server add up their metering (`gateway stats --consumers --cluster`) and export the
//! Redis link's state as a metric.

use std::time::{Duration, Instant};

use crate::proxy_support::{Proxy, curl, free_port, upstream_toml};
use gateway_tests::{
    redis::{RedisServer, redis_available},
    upstream::Upstream,
};

fn cluster_rows(proxy: &Proxy) -> serde_json::Value {
    let output = proxy
        .gateway
        .cli(&["stats", "--consumers", "--cluster", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn api_requests(rows: &serde_json::Value) -> u64 {
    rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["route"] == "api" && row["consumer"] == "anonymous")
        .and_then(|row| row["requests"].as_u64())
        .unwrap_or(0)
}

#[test]
fn metering_totals_add_up_across_nodes() {
    if !redis_available("metering_totals_add_up_across_nodes") {
        return;
    }
    let redis = RedisServer::on_loopback();
    let upstream = Upstream::start("api");
    let prefix = format!("gwtm{}", std::process::id());
    let node = |name: &str, metrics: &str| {
        format!(
            "[metrics]\naddress = \"{metrics}\"\n[access_log]\nenabled = false\n\
             [cluster]\nredis = \"{}\"\nnode = \"{name}\"\nkey_prefix = \"{prefix}\"\n\
             metering_interval = \"200ms\"\n{}\n\
             [[routes]]\nname = \"api\"\nupstream = \"api\"\nmatch = {{ path_prefix = \"/api\" }}\n",
            redis.url(),
            upstream_toml("api", &[(upstream.address(), 1)], "")
        )
    };
    let metrics_a = format!("127.0.0.1:{}", free_port());
    let a = Proxy::start(&node("node-a", &metrics_a));
    let b = Proxy::start(&node("node-b", &format!("127.0.0.1:{}", free_port())));
    for _ in 0..3 {
        assert_eq!(curl(&[&a.url("/api/x")]).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(curl(&[&b.url("/api/y")]).status, 200);
    }
    // Each node alone knows its own; the cluster totals (read on either node) are the sum.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = api_requests(&cluster_rows(&a));
        if seen == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, 5, "cluster totals; A's log:\n{}", a.gateway.log());
    assert_eq!(api_requests(&cluster_rows(&b)), 5);
    let local: serde_json::Value =
        serde_json::from_slice(&a.gateway.cli(&["stats", "--consumers", "--json"]).stdout).unwrap();
    assert_eq!(api_requests(&local), 3);
    // Pushed deltas, not totals: more time passing adds nothing.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(api_requests(&cluster_rows(&a)), 5);

    let scrape =
        gateway_tests::scrape::samples(&curl(&[&format!("http://{metrics_a}/metrics")]).body);
    assert_eq!(
        scrape.get("gateway_cluster_redis_up{}"),
        Some(&1.0),
        "{scrape:#?}"
    );
    assert_eq!(scrape.get("gateway_cluster_fallbacks_total{}"), Some(&0.0));
}

#[test]
fn cluster_metering_without_cluster_mode_says_so() {
    let proxy = Proxy::start("[access_log]\nenabled = false\n");
    let output = proxy.gateway.cli(&["stats", "--consumers", "--cluster"]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("cluster mode is off"), "{text}");
}
