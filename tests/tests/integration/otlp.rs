//! OTLP trace export: a real OTLP/HTTP receiver (a hyper server the test starts, standing in
//! for an OpenTelemetry collector) gets one server span per sampled request, with the ids of
//! the `traceparent` the upstream got.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::proxy_support::{Proxy, Reply, curl, upstream_toml};
use gateway_tests::upstream::Upstream;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Bytes, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

/// What the receiver got: (path, content type, JSON body) per export request.
type Exports = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// An OTLP/HTTP receiver on loopback, on its own thread for the test's lifetime.
fn receiver() -> (SocketAddr, Exports) {
    let exports = Exports::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let kept = exports.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let exports = kept.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let exports = exports.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let kind = req
                            .headers()
                            .get("content-type")
                            .map(|value| value.to_str().unwrap_or("").to_owned())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        exports.lock().unwrap().push((path, kind, json));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
    });
    (address, exports)
}

/// Every exported span, waiting (bounded) until there are at least `count`.
fn spans(exports: &Exports, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans: Vec<serde_json::Value> = exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, _, json)| {
                json["resourceSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|resource| {
                resource["scopeSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|scope| scope["spans"].as_array().cloned().unwrap_or_default())
            .collect();
        if spans.len() >= count || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `traceparent` fields the upstream got.
fn upstream_traceparent(reply: &Reply) -> Vec<String> {
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let value = echo["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    value.split('-').map(str::to_owned).collect()
}

fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|attribute| attribute["key"] == key)
        .map(|attribute| &attribute["value"])
        .unwrap_or_else(|| panic!("no attribute {key} in {span}"))
}

#[test]
fn each_sampled_request_is_exported_as_a_span_joining_the_callers_trace() {
    let (collector, exports) = receiver();
    let upstream = Upstream::start("api");
    let proxy = Proxy::start(&format!(
        "[otlp]\nendpoint = \"http://{collector}/v1/traces\"\nprotocol = \"http/json\"\n\
         service_name = \"edge-test\"\n{}\n[[routes]]\nname = \"api\"\nupstream = \"api\"\n",
        upstream_toml("api", &[(upstream.address(), 1)], "")
    ));
    let caller = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = curl(&[
        &proxy.url("/orders/7"),
        "-H",
        &format!("traceparent: 00-{caller}-00f067aa0ba902b7-01"),
    ]);
    let unsampled = curl(&[
        &proxy.url("/quiet"),
        "-H",
        "traceparent: 00-11111111111111111111111111111111-2222222222222222-00",
    ]);
    let started = curl(&[&proxy.url("/fresh")]);
    assert_eq!(
        (sampled.status, unsampled.status, started.status),
        (200, 200, 200)
    );

    let spans = spans(&exports, 2);
    assert_eq!(
        spans.len(),
        2,
        "the unsampled request is not exported: {spans:#?}"
    );
    let sent = upstream_traceparent(&sampled);
    let span = spans
        .iter()
        .find(|span| span["traceId"] == caller)
        .unwrap_or_else(|| panic!("no span in the caller's trace: {spans:#?}"));
    assert_eq!(
        span["spanId"],
        sent[2].as_str(),
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["name"], "GET api");
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(span, "url.path")["stringValue"], "/orders/7");
    assert_eq!(attribute(span, "http.route")["stringValue"], "api");
    assert_eq!(
        attribute(span, "http.response.status_code")["intValue"],
        "200"
    );

    let fresh = upstream_traceparent(&started);
    let root = spans
        .iter()
        .find(|span| span["traceId"] == fresh[1].as_str())
        .unwrap_or_else(|| panic!("no span for the new trace {fresh:?}: {spans:#?}"));
    assert_eq!(root["spanId"], fresh[2].as_str());
    assert!(
        root["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "{root}"
    );

    let exported = exports.lock().unwrap();
    let (path, kind, json) = &exported[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(kind, "application/json");
    let resource = &json["resourceSpans"][0]["resource"]["attributes"];
    assert!(
        resource.as_array().unwrap().iter().any(|attribute| {
            attribute["key"] == "service.name" && attribute["value"]["stringValue"] == "edge-test"
        }),
        "{resource}"
    );
}

#[test]
fn an_https_or_malformed_endpoint_is_refused_naming_the_key() {
    for (endpoint, expected) in [
        ("https://collector:4318/v1/traces", "https is not supported"),
        ("collector:4318", "is not an http:// URL"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, format!("[otlp]\nendpoint = \"{endpoint}\"\n")).unwrap();
        let output = gateway_tests::gateway_cmd(&["check-config", &file.to_string_lossy()]);
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{endpoint} accepted");
        assert!(
            text.contains("otlp.endpoint") && text.contains(expected),
            "{text}"
        );
    }
}
