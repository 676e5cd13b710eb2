//! Proxy metrics and metering: known requests in, exact counts out of a parsed scrape and the
//! admin API; metering survives a reload.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::proxy_support::{Proxy, curl, free_port, upstream_toml};
use gateway_tests::upstream::Upstream;

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
    // Bounded labels: no paths, no queries, no client addresses (target addresses come from
    // the config).
    assert!(!values.keys().any(|key| {
        key.contains("/api")
            || key.contains("secret")
            || (key.contains("127.0.0.1") && !key.contains("target="))
    }));

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

#[test]
fn target_health_in_flight_requests_connections_and_tls_failures_are_exported() {
    use std::io::Write as _;
    let live = Upstream::start("live");
    let dead = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let tls = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[metrics]\naddress = \"{metrics}\"\n[access_log]\nenabled = false\n\
         [[listeners]]\nname = \"tls\"\naddress = \"{tls}\"\nprotocol = \"https\"\n\
         [[listeners.tls.certificates]]\nself_signed = true\nnames = [\"localhost\"]\n\
         [[upstreams]]\nname = \"api\"\nconsecutive_failures = 1\nejection_time = \"5m\"\n\
         targets = [{{ address = \"{}\" }}, {{ address = \"{dead}\" }}]\n\
         [[routes]]\nname = \"api\"\nupstream = \"api\"\n",
        live.address()
    );
    let proxy = Proxy::start(&config);
    // Round robin: one of two requests meets the dead target, which is ejected at once.
    let statuses: Vec<u16> = (0..2).map(|_| curl(&[&proxy.url("/")]).status).collect();
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );
    let up = |target: &str| {
        format!("gateway_upstream_target_up{{target=\"{target}\",upstream=\"api\"}}")
    };
    let values = wait_for(&metrics, &up(&dead), 0.0);
    assert_eq!(values[&up(&dead)], 0.0, "{values:#?}");
    assert_eq!(values[&up(&live.address().to_string())], 1.0);

    // A slow request in flight, and an idle connection: two open client connections.
    let slow_url = proxy.url("/slow");
    let slow = std::thread::spawn(move || curl(&["-H", "x-upstream-delay-ms: 3000", &slow_url]));
    let idle = std::net::TcpStream::connect(proxy.address).unwrap();
    let outstanding = format!(
        "gateway_upstream_target_outstanding{{target=\"{}\",upstream=\"api\"}}",
        live.address()
    );
    let values = wait_for(&metrics, &outstanding, 1.0);
    assert_eq!(values[&outstanding], 1.0, "{values:#?}");
    let values = wait_for(&metrics, "gateway_proxy_connections{}", 2.0);
    assert_eq!(values["gateway_proxy_connections{}"], 2.0);
    assert_eq!(slow.join().unwrap().status, 200);
    drop(idle);
    let values = wait_for(&metrics, &outstanding, 0.0);
    assert_eq!(values[&outstanding], 0.0);

    // Not TLS at all: a failed handshake, counted by listener and reason.
    let mut garbage = std::net::TcpStream::connect(&tls).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let failures = "gateway_tls_handshake_failures_total{listener=\"tls\",reason=\"error\"}";
    let values = wait_for(&metrics, failures, 1.0);
    assert_eq!(values[failures], 1.0, "{values:#?}");
}

/// Every family the daemon exports, with its type, is pinned: each service registers its own
/// metrics now, and an operator's dashboards and alerts depend on the names staying put.
#[test]
fn every_service_still_exports_its_families() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&format!(
        "[metrics]\naddress = \"{metrics}\"\n[access_log]\nenabled = false\n"
    ));
    let body = curl(&[&format!("http://{metrics}/metrics")]).body;
    let exported: Vec<(String, String)> = body
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|line| {
            let (name, kind) = line.split_once(' ').expect("# TYPE name kind");
            (name.to_owned(), kind.to_owned())
        })
        .collect();
    let mut sorted = exported.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        exported.len(),
        "a family is exported twice: {body}"
    );
    let mut expected: Vec<(String, String)> = [
        // the daemon
        ("gateway_config_reloads", "counter"),
        // the proxy
        ("gateway_auth_failures", "counter"),
        ("gateway_cache_requests", "counter"),
        ("gateway_http_request_duration_seconds", "histogram"),
        ("gateway_http_requests", "counter"),
        ("gateway_metered_bytes_in", "counter"),
        ("gateway_metered_bytes_out", "counter"),
        ("gateway_metered_requests", "counter"),
        ("gateway_proxy_connections", "gauge"),
        ("gateway_rate_limited", "counter"),
        ("gateway_request_errors", "counter"),
        ("gateway_tls_handshake_failures", "counter"),
        ("gateway_upstream_response_seconds", "histogram"),
        ("gateway_upstream_target_outstanding", "gauge"),
        ("gateway_upstream_target_up", "gauge"),
        // the firewall (XDP off: no kernel counters)
        ("gateway_bans_active", "gauge"),
        ("gateway_firewall_rules", "gauge"),
        ("gateway_xdp_under_attack", "gauge"),
        // the defender
        ("gateway_defend_auto_bans", "counter"),
        ("gateway_defend_refused_connections", "counter"),
        ("gateway_defend_reports_dropped", "counter"),
        ("gateway_defend_tracked_sources", "gauge"),
    ]
    .iter()
    .map(|(name, kind)| (name.to_string(), kind.to_string()))
    .collect();
    expected.sort();
    assert_eq!(sorted, expected, "{body}");
    drop(proxy);
}
