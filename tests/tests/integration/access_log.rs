//! The access log: one JSON line per request with the documented fields, an off switch and
//! sampling, written off the request path.

use crate::proxy_support;

use std::time::{Duration, Instant};

use crate::proxy_support::{Proxy, curl, upstream_toml};
use gateway_tests::upstream::Upstream;

/// Reads the access-log file until it holds `count` lines (bounded wait), parsed as JSON.
fn lines(path: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        if lines.len() >= count || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_json_line_per_request_with_the_documented_fields() {
    let upstream = Upstream::start("api");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "[access_log]\npath = \"{}\"\n{}\n[[routes]]\nname = \"api\"\nupstream = \"api\"\nmatch = {{ path_prefix = \"/api\" }}\n",
        log.display(),
        upstream_toml("api", &[(upstream.address(), 1)], "")
    ));
    let ok = curl(&[
        &proxy.url("/api/items?page=2"),
        "-H",
        "X-Request-Id: trace-me-1",
    ]);
    assert_eq!(ok.status, 200);
    let missing = curl(&[&proxy.url("/nowhere")]);
    assert_eq!(missing.status, 404);
    let posted = curl(&[&proxy.url("/api/items"), "--data-binary", "0123456789"]);
    assert_eq!(posted.status, 200);

    let lines = lines(&log, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let first = &lines[0];
    assert_eq!(first["request_id"], "trace-me-1");
    assert_eq!(first["method"], "GET");
    assert_eq!(
        first["path"], "/api/items",
        "the query stays out of the log"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "api");
    assert_eq!(first["upstream_target"], upstream.address().to_string());
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["bytes_out"], ok.body.len());
    assert_eq!(first["complete"], true);
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert!(first["timestamp"].is_string());

    let second = &lines[1];
    assert_eq!(second["status"], 404);
    assert!(
        second["route"].is_null() && second["upstream_target"].is_null(),
        "{second}"
    );
    assert_eq!(second["request_id"], missing.header("x-request-id"));
    assert_eq!(lines[2]["method"], "POST");
    assert_eq!(lines[2]["bytes_in"], 10);
}

#[test]
fn the_access_log_can_be_off_or_sampled() {
    let upstream = Upstream::start("api");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let routes = format!(
        "{}\n[[routes]]\nname = \"api\"\nupstream = \"api\"\nmatch = {{ path_prefix = \"/\" }}\n",
        upstream_toml("api", &[(upstream.address(), 1)], "")
    );
    let off = format!(
        "[access_log]\nenabled = false\npath = \"{}\"\n{routes}",
        log.display()
    );
    let proxy = Proxy::start(&off);
    for _ in 0..5 {
        assert_eq!(curl(&[&proxy.url("/")]).status, 200);
    }
    // Turned on by a reload, sampling none: still nothing. Then everything.
    proxy.reload(&format!(
        "[access_log]\nsample = 0.0\npath = \"{}\"\n{routes}",
        log.display()
    ));
    proxy.wait_for_log("firewall rules reloaded");
    for _ in 0..5 {
        assert_eq!(curl(&[&proxy.url("/")]).status, 200);
    }
    proxy.reload(&format!(
        "[access_log]\nsample = 1.0\npath = \"{}\"\n{routes}",
        log.display()
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&[&proxy.url("/")]).status, 200);
    let lines = lines(&log, 1);
    assert_eq!(
        lines.len(),
        1,
        "only the last request is logged: {lines:#?}"
    );
    assert_eq!(upstream.hits(), 11);
}

/// `traceparent` as the upstream got it: (trace id, parent id, flags).
fn upstream_traceparent(reply: &proxy_support::Reply) -> (String, String, String) {
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let value = echo["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {echo}"));
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(fields.len(), 4, "{value}");
    assert_eq!(fields[0], "00", "{value}");
    assert!(fields[1].len() == 32 && fields[2].len() == 16, "{value}");
    (fields[1].into(), fields[2].into(), fields[3].into())
}

#[test]
fn traceparent_is_continued_or_started_and_logged() {
    let upstream = Upstream::start("api");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = Proxy::start(&format!(
        "[access_log]\npath = \"{}\"\n{}\n[[routes]]\nname = \"api\"\nupstream = \"api\"\n",
        log.display(),
        upstream_toml("api", &[(upstream.address(), 1)], "")
    ));
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let continued = curl(&[
        &proxy.url("/a"),
        "-H",
        &format!("traceparent: {caller}"),
        "-H",
        "tracestate: vendor=opaque",
    ]);
    let fresh = curl(&[&proxy.url("/b"), "-H", "traceparent: not-a-traceparent"]);
    assert_eq!((continued.status, fresh.status), (200, 200));

    // The caller's trace goes on, with the gateway's span as the upstream's parent.
    let (trace, parent, flags) = upstream_traceparent(&continued);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parent, "00f067aa0ba902b7");
    assert_eq!(flags, "00", "the caller's sampling decision stands");
    let echo: serde_json::Value = serde_json::from_str(&continued.body).unwrap();
    assert_eq!(echo["headers"]["tracestate"], "vendor=opaque");
    // An invalid one starts a new, sampled trace.
    let (new_trace, _, new_flags) = upstream_traceparent(&fresh);
    assert_ne!(new_trace, trace);
    assert_eq!(new_flags, "01");

    let lines = lines(&log, 2);
    assert_eq!(lines[0]["trace_id"], trace.as_str());
    assert_eq!(lines[1]["trace_id"], new_trace.as_str());
}
