//! CORS through the real binary (curl as the client): preflights answered by the gateway
//! before authentication, refused for origins, methods and headers the policy does not
//! allow, and the allow headers on actual responses, errors included.

use crate::proxy_support::{Proxy, curl, upstream_toml};
use gateway_tests::upstream::Upstream;

const APP: &str = "https://app.example.com";

fn start(upstream: &Upstream) -> Proxy {
    Proxy::start(&format!(
        "{}[[consumers]]\nname = \"web\"\napi_keys = [\"sha256:{}\"]\n\
         [[routes]]\nname = \"orders\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/orders\", methods = [\"GET\", \"PUT\", \"DELETE\"] }}\n\
         auth = {{ api_key = {{}} }}\n\
         cors = {{ origins = [\"{APP}\"], methods = [\"GET\", \"PUT\"], headers = [\"x-api-key\", \"content-type\"], \
         expose = [\"x-request-id\"], credentials = true, max_age = \"10m\" }}\n\
         [[routes]]\nname = \"public\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/public\" }}\n\
         cors = {{ origins = [\"*\"] }}\n",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        // sha256("web-key")
        "fe372517ad18bd4ef08c931b6f58a73a1e10ad754cc729a8ccd705be55c47fbd"
    ))
}

#[test]
fn preflight_is_answered_before_authentication() {
    let upstream = Upstream::start("app");
    let proxy = start(&upstream);
    let url = proxy.url("/orders/7");
    let reply = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        &format!("origin: {APP}"),
        "-H",
        "access-control-request-method: PUT",
        "-H",
        "access-control-request-headers: X-Api-Key, Content-Type",
        &url,
    ]);
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), APP);
    assert_eq!(reply.header("access-control-allow-methods"), "GET, PUT");
    assert_eq!(
        reply.header("access-control-allow-headers"),
        "x-api-key, content-type"
    );
    assert_eq!(reply.header("access-control-allow-credentials"), "true");
    assert_eq!(reply.header("access-control-max-age"), "600");
    assert!(reply.header("vary").contains("origin"));
    assert_eq!(
        upstream.hits(),
        0,
        "the preflight never reaches the upstream"
    );
    // Refused: an unknown origin, a method or a header the policy does not list.
    for (origin, method, headers) in [
        ("https://evil.example.com", "PUT", "x-api-key"),
        (APP, "DELETE", "x-api-key"),
        (APP, "PUT", "x-secret"),
    ] {
        let reply = curl(&[
            "-X",
            "OPTIONS",
            "-H",
            &format!("origin: {origin}"),
            "-H",
            &format!("access-control-request-method: {method}"),
            "-H",
            &format!("access-control-request-headers: {headers}"),
            &url,
        ]);
        assert_eq!(reply.status, 403, "{origin} {method} {headers}: {reply:?}");
        assert_eq!(reply.json()["error"]["code"], "cors_rejected");
        assert!(!reply.headers.contains_key("access-control-allow-origin"));
    }
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn actual_requests_get_the_allow_headers() {
    let upstream = Upstream::start("app");
    let proxy = start(&upstream);
    let url = proxy.url("/orders/7");
    let reply = curl(&[
        "-H",
        &format!("origin: {APP}"),
        "-H",
        "x-api-key: web-key",
        &url,
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), APP);
    assert_eq!(reply.header("access-control-allow-credentials"), "true");
    assert_eq!(
        reply.header("access-control-expose-headers"),
        "x-request-id"
    );
    assert!(reply.header("vary").to_ascii_lowercase().contains("origin"));
    // An error answer carries them too, so the browser app can read the 401.
    let reply = curl(&["-H", &format!("origin: {APP}"), &url]);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), APP);
    // Another origin gets no allow headers (the browser then blocks the response).
    let reply = curl(&[
        "-H",
        "origin: https://evil.example.com",
        "-H",
        "x-api-key: web-key",
        &url,
    ]);
    assert_eq!(reply.status, 200);
    assert!(!reply.headers.contains_key("access-control-allow-origin"));
    // Any origin: "*".
    let reply = curl(&["-H", "origin: https://x.example", &proxy.url("/public")]);
    assert_eq!(reply.header("access-control-allow-origin"), "*");
    // A plain OPTIONS (no preflight) on a route without that method is not answered by CORS.
    let reply = curl(&["-X", "OPTIONS", &url]);
    assert_eq!(reply.status, 404, "{reply:?}");
}
