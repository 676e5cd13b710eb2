//! Prometheus metrics and health endpoints: known traffic in, exact counters out, parsed with a
//! Prometheus text-format parser.

use std::{collections::HashMap, net::IpAddr};

use gateway_tests::lab::*;

const METRICS: &str = "127.0.0.1:9100";

/// Scrapes `path` from inside the server namespace (the metrics listener is on its loopback).
fn get(lab: &Lab, path: &str) -> (String, String) {
    let output = lab.server.exec(&[
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        &format!("http://{METRICS}{path}"),
    ]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("curl printed the status");
    (body.to_owned(), status.to_owned())
}

/// `name{labels}` -> value, for every sample of a scrape.
fn samples(lab: &Lab) -> HashMap<String, f64> {
    let (body, status) = get(lab, "/metrics");
    assert_eq!(status, "200", "{body}");
    gateway_tests::scrape::samples(&body)
}

#[test]
fn metrics_count_exactly_what_the_kernel_did() {
    let Some(mut lab) = Lab::new("metrics") else {
        return;
    };
    lab.start(&format!(
        "deny = [\"{DENIED_V4}\"]\n[metrics]\naddress = \"{METRICS}\""
    ));
    assert_eq!(get(&lab, "/healthz"), ("ok\n".to_owned(), "200".to_owned()));
    assert_eq!(
        get(&lab, "/readyz"),
        ("ready\n".to_owned(), "200".to_owned())
    );

    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 3), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );
    let metrics = samples(&lab);
    let deny = "reason=\"dropped-deny\",verdict=\"drop\"";
    assert_eq!(
        metrics[&format!("gateway_xdp_packets_total{{{deny}}}")],
        3.0,
        "{metrics:#?}"
    );
    assert_eq!(
        metrics[&format!("gateway_xdp_bytes_total{{{deny}}}")],
        3.0 * udp_frame_len(false, 8) as f64
    );
    // The same, on the one interface the program is attached to.
    let per_interface: Vec<(&String, &f64)> = metrics
        .iter()
        .filter(|(key, _)| {
            key.starts_with("gateway_xdp_interface_packets_total{") && key.contains(deny)
        })
        .collect();
    assert_eq!(per_interface.len(), 1, "{per_interface:?}");
    assert_eq!(*per_interface[0].1, 3.0, "{per_interface:?}");
    assert!(
        per_interface[0].0.contains("interface=\""),
        "{per_interface:?}"
    );
    assert_eq!(metrics["gateway_firewall_rules{origin=\"config\"}"], 1.0);
    assert_eq!(metrics["gateway_firewall_rules{origin=\"operator\"}"], 0.0);
    assert_eq!(metrics["gateway_bans_active{}"], 0.0);
    assert_eq!(metrics["gateway_xdp_attached_interfaces{}"], 1.0);
    // Every reason is exported, and no label carries an address or a path.
    let reasons = metrics
        .keys()
        .filter(|key| key.starts_with("gateway_xdp_packets_total"))
        .count();
    assert_eq!(reasons, 11);
    assert!(
        !metrics.keys().any(|key| key.contains("10.99.")),
        "{metrics:#?}"
    );

    assert!(lab.gateway().cli(&["ban", ALLOWED_V4]).status.success());
    assert!(
        lab.gateway()
            .cli(&["firewall", "deny", "192.0.2.0/24"])
            .status
            .success()
    );
    let config_path = lab.gateway().dir().join("gateway.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace(DENIED_V4, "10.99.0.300")).unwrap();
    assert!(!lab.gateway().cli(&["reload"]).status.success());
    std::fs::write(&config_path, &config).unwrap();
    assert!(lab.gateway().cli(&["reload"]).status.success());

    let metrics = samples(&lab);
    assert_eq!(metrics["gateway_bans_active{}"], 1.0);
    assert_eq!(metrics["gateway_firewall_rules{origin=\"operator\"}"], 1.0);
    assert_eq!(
        metrics["gateway_config_reloads_total{result=\"failure\"}"], 1.0,
        "{metrics:#?}"
    );
    assert_eq!(
        metrics["gateway_config_reloads_total{result=\"success\"}"],
        1.0
    );
    assert_eq!(get(&lab, "/nowhere").1, "404");
}

/// Every metric the Grafana dashboard in config/ queries is one the gateway exports.
#[test]
fn the_dashboard_only_queries_exported_metrics() {
    let Some(mut lab) = Lab::new("dashboard") else {
        return;
    };
    // One proxied request through a route whose upstream is down, so every proxy series
    // exists; a rule and a ban for the firewall series.
    lab.start(&format!(
        "deny = [\"{DENIED_V4}\"]\n[metrics]\naddress = \"{METRICS}\"\n\
         [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\
         [[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:8443\"\nprotocol = \"https\"\n\
         [[listeners.tls.certificates]]\nself_signed = true\nnames = [\"localhost\"]\n\
         [[upstreams]]\nname = \"down\"\ntargets = [{{ address = \"127.0.0.1:1\" }}]\n\
         [[routes]]\nname = \"r\"\nupstream = \"down\"\nmatch = {{ path_prefix = \"/\" }}"
    ));
    let reply = lab.server.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://127.0.0.1:8080/x",
    ]);
    assert_eq!(String::from_utf8_lossy(&reply.stdout), "502");
    // Plain HTTP to the TLS listener: a failed handshake.
    lab.server
        .exec(&["curl", "-s", "--max-time", "5", "http://127.0.0.1:8443/"]);
    assert!(lab.gateway().cli(&["reload"]).status.success());
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let (scrape, _) = get(&lab, "/metrics");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("gateway_"))
            {
                let family = name.trim_end_matches("_bucket");
                assert!(
                    scrape.contains(&format!("\n{family}")),
                    "{family} (panel {:?}) is not exported",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 13, "{queried}");
}
