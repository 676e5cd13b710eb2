//! Proxy metrics and metering: known requests in, exact counts out of a parsed scrape and the
//! admin API; metering survives a reload.

mod proxy_support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use gateway_tests::upstream::Upstream;
use proxy_support::{Proxy, curl, free_port, upstream_toml};

/// `name{labels}` -> value; a histogram's value is its observation count.
fn scrape(address: &str) -> HashMap<String, f64> {
    gateway_tests::scrape::samples(&curl(&[&format!("http://{address}/metrics")]).body)
}

/// Scrapes until `key` reaches `value` (responses are counted as their bodies finish).
fn wait_for(address: &str, key: &str, value: f64) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(address);
        if metrics.get(key) == Some(&value) || Instant::now() >= deadline {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn requests_latency_and_metering_are_counted_exactly() {
    let upstream = Upstream::start("api");
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[metrics]\naddress = \"{metrics}\"\n[access_log]\nenabled = false\n{}\n\
         [[routes]]\nname = \"api\"\nupstream = \"api\"\nmatch = {{ path_prefix = \"/api\" }}\n",
        upstream_toml("api", &[(upstream.address(), 1)], "")
    );
    let proxy = Proxy::start(&config);
    assert_eq!(curl(&[&proxy.url("/api/a")]).status, 200);
    assert_eq!(curl(&[&proxy.url("/api/b?secret=1")]).status, 200);
    assert_eq!(curl(&[&proxy.url("/nowhere/7")]).status, 404);
    assert_eq!(
        curl(&[&proxy.url("/api/c"), "--data-binary", "0123456789"]).status,
        200
    );

    let metered = "gateway_metered_requests_total{consumer=\"anonymous\",route=\"api\"}";
    let values = wait_for(&metrics, metered, 3.0);
    assert_eq!(values[metered], 3.0, "{values:#?}");
    let get = "gateway_http_requests_total{method=\"GET\",route=\"api\",status_class=\"2xx\"}";
    assert_eq!(values[get], 2.0);
    assert_eq!(
        values["gateway_http_requests_total{method=\"POST\",route=\"api\",status_class=\"2xx\"}"],
        1.0
    );
    assert_eq!(
        values["gateway_http_requests_total{method=\"GET\",route=\"none\",status_class=\"4xx\"}"],
        1.0
    );
    assert_eq!(
        values["gateway_http_request_duration_seconds{route=\"api\"}"],
        3.0
    );
    assert_eq!(
        values["gateway_upstream_response_seconds{upstream=\"api\"}"],
        3.0
    );
    assert_eq!(
        values["gateway_metered_bytes_in_total{consumer=\"anonymous\",route=\"api\"}"],
        10.0
    );
    // Bounded labels: no paths, no queries, no client addresses.
    assert!(
        !values
            .keys()
            .any(|key| key.contains("/api") || key.contains("secret") || key.contains("127.0.0.1"))
    );

    // The admin API and the CLI see the same metering, and it survives a reload.
    let consumers = proxy.gateway.cli(&["stats", "--consumers", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&consumers.stdout).unwrap();
    let api_row = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["route"] == "api")
        .unwrap()
        .clone();
    assert_eq!(api_row["requests"], 3);
    assert_eq!(api_row["bytes_in"], 10);
    proxy.reload(&config);
    proxy.wait_for_log("firewall rules reloaded");
    assert_eq!(curl(&[&proxy.url("/api/d")]).status, 200);
    let values = wait_for(&metrics, metered, 4.0);
    assert_eq!(values[metered], 4.0, "metering survives a reload");
    let table =
        String::from_utf8_lossy(&proxy.gateway.cli(&["stats", "--consumers"]).stdout).into_owned();
    assert!(
        table.contains("anonymous") && table.contains("api"),
        "{table}"
    );
}
