//! The proxy's routing, versioning, header handling and balancing, through the real binary
//! with real upstreams and real clients (curl, including HTTP/2 prior knowledge, and hyper).

use crate::proxy_support;

use crate::proxy_support::{Proxy, RustClient, curl, upstream_toml};
use gateway_tests::{gateway_cmd, upstream::Upstream};

/// One upstream per name, each its own pool.
fn upstreams(names: &[&str]) -> (Vec<Upstream>, String) {
    let servers: Vec<Upstream> = names.iter().map(|name| Upstream::start(name)).collect();
    let toml = servers
        .iter()
        .map(|server| upstream_toml(server.name(), &[(server.address(), 1)], ""))
        .collect();
    (servers, toml)
}

#[test]
fn routes_by_precedence_most_specific_first() {
    let (_servers, mut toml) = upstreams(&[
        "any",
        "wildcard",
        "host",
        "exact",
        "prefix",
        "long-prefix",
        "regex",
        "post",
        "header",
    ]);
    // Declared broadest first: precedence, not file order, must decide.
    toml.push_str(
        r#"
[[routes]]
name = "any"
upstream = "any"
[[routes]]
name = "regex"
upstream = "regex"
match = { path_regex = "/r/[0-9]+" }
[[routes]]
name = "prefix"
upstream = "prefix"
match = { path_prefix = "/items" }
[[routes]]
name = "long-prefix"
upstream = "long-prefix"
match = { path_prefix = "/items/special" }
[[routes]]
name = "exact"
upstream = "exact"
match = { path = "/items/42" }
[[routes]]
name = "post"
upstream = "post"
match = { path_prefix = "/items", methods = ["POST"] }
[[routes]]
name = "header"
upstream = "header"
match = { path_prefix = "/items", headers = { x-beta = "1" } }
[[routes]]
name = "wildcard"
upstream = "wildcard"
match = { host = "*.example.com" }
[[routes]]
name = "host"
upstream = "host"
match = { host = "api.example.com" }
"#,
    );
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    let url = |path: &str| proxy.url(path);
    // (method, path, headers, the upstream that must answer)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 13] = [
        ("GET", "/r/5", &[], "regex"),
        ("GET", "/r/x", &[], "any"),
        ("GET", "/", &[], "any"),
        ("GET", "/items/42", &[], "exact"),
        ("GET", "/items/7", &[], "prefix"),
        ("GET", "/itemsx/7", &[], "any"), // prefixes match whole segments
        ("GET", "/items/special/1", &[], "long-prefix"),
        ("POST", "/items/7", &[], "post"),
        ("GET", "/items/7", &[("x-beta", "1")], "header"),
        ("GET", "/items/7", &[("host", "a.example.com")], "wildcard"),
        (
            "GET",
            "/items/42",
            &[("host", "API.Example.com:8080")],
            "host",
        ),
        ("GET", "/items/42", &[("host", "example.com")], "exact"),
        (
            "GET",
            "/nothing",
            &[("host", "x.y.example.com")],
            "wildcard",
        ),
    ];
    for (method, path, headers, expected) in cases {
        let reply = client.send(method, &url(path), headers, Default::default());
        assert_eq!(reply.upstream(), expected, "{method} {path} {headers:?}");
    }
}

#[test]
fn versions_by_path_prefix_and_by_header() {
    let (servers, mut toml) = upstreams(&["users-v1", "users-v2", "legacy"]);
    toml.push_str(
        r#"
[[routes]]
name = "v1"
upstream = "users-v1"
match = { path_prefix = "/v1" }
strip_prefix = true
[[routes]]
name = "v2"
upstream = "users-v2"
match = { path_prefix = "/v2" }
rewrite_prefix = "/api/2"
[[routes]]
name = "users-by-header-v2"
upstream = "users-v2"
match = { path_prefix = "/users", headers = { Accept-Version = "2" } }
[[routes]]
name = "users"
upstream = "users-v1"
match = { path_prefix = "/users" }
[[routes]]
name = "legacy"
upstream = "legacy"
match = { path_prefix = "/" }
"#,
    );
    let proxy = Proxy::start(&toml);
    let reply = curl(&[&proxy.url("/v1/users/7?full=1")]);
    assert_eq!(reply.upstream(), "users-v1");
    assert_eq!(reply.json()["path"], "/users/7?full=1");
    let reply = curl(&[&proxy.url("/v1")]);
    assert_eq!(reply.json()["path"], "/");
    let reply = curl(&[&proxy.url("/v2/users/7")]);
    assert_eq!(reply.upstream(), "users-v2");
    assert_eq!(reply.json()["path"], "/api/2/users/7");
    let reply = curl(&["-H", "Accept-Version: 2", &proxy.url("/users/7")]);
    assert_eq!(reply.upstream(), "users-v2");
    assert_eq!(reply.json()["path"], "/users/7");
    let reply = curl(&["-H", "Accept-Version: 1", &proxy.url("/users/7")]);
    assert_eq!(reply.upstream(), "users-v1");
    let reply = curl(&[&proxy.url("/v10/users")]);
    assert_eq!(reply.upstream(), "legacy");
    assert_eq!(reply.json()["path"], "/v10/users");
    assert_eq!(servers[0].hits(), 3);
}

#[test]
fn forwarding_headers_request_id_and_route_edits() {
    let (_servers, mut toml) = upstreams(&["echo"]);
    toml.push_str(
        r#"
[[routes]]
name = "echo"
upstream = "echo"
request_headers = { remove = ["x-secret"], set = { x-env = "test" }, add = { x-added = "yes" } }
response_headers = { remove = ["x-upstream"], set = { cache-control = "no-store" }, add = { x-served-by = "gateway" } }
"#,
    );
    let proxy = Proxy::start(&toml);
    let reply = curl(&[
        "-H",
        "X-Forwarded-For: 192.0.2.1",
        "-H",
        "Connection: keep-alive, x-hop",
        "-H",
        "X-Hop: private",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "X-Secret: 1",
        "-H",
        "X-Env: prod",
        "-H",
        "Host: shop.example.com",
        &proxy.url("/a"),
    ]);
    let json = reply.json();
    let seen = &json["headers"];
    assert_eq!(seen["x-forwarded-for"], "192.0.2.1, 127.0.0.1", "{json}");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example.com");
    assert_eq!(seen["host"], "shop.example.com");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.1;proto=http;host=\"shop.example.com\""
    );
    for hop in ["x-hop", "keep-alive", "x-secret"] {
        assert!(
            seen.get(hop).is_none(),
            "{hop} reached the upstream: {json}"
        );
    }
    assert_eq!(seen["x-env"], "test");
    assert_eq!(seen["x-added"], "yes");
    // A generated request id, sent upstream and returned.
    let id = reply.header("x-request-id");
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(seen["x-request-id"], id);
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(reply.header("x-served-by"), "gateway");
    assert!(!reply.headers.contains_key("x-upstream"));

    // A client's request id is kept end to end.
    let reply = curl(&["-H", "X-Request-Id: trace-42", &proxy.url("/b")]);
    assert_eq!(reply.header("x-request-id"), "trace-42");
    assert_eq!(reply.json()["headers"]["x-request-id"], "trace-42");
    // Two requests without one get different ids.
    let (a, b) = (curl(&[&proxy.url("/")]), curl(&[&proxy.url("/")]));
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[test]
fn no_route_is_a_json_404_with_the_request_id() {
    let (_servers, mut toml) = upstreams(&["only"]);
    toml.push_str(
        "[[routes]]\nname = \"only\"\nupstream = \"only\"\nmatch = { path = \"/only\" }\n",
    );
    let proxy = Proxy::start(&toml);
    for reply in [
        curl(&[&proxy.url("/elsewhere")]),
        curl(&["--http2-prior-knowledge", &proxy.url("/elsewhere")]),
    ] {
        assert_eq!(reply.status, 404, "{reply:?}");
        assert_eq!(reply.header("content-type"), "application/json");
        let id = reply.header("x-request-id").to_owned();
        assert_eq!(
            reply.json(),
            serde_json::json!({"error": {
                "status": 404,
                "code": "no_route",
                "message": "no route matches this request",
                "request_id": id,
            }})
        );
    }
}

#[test]
fn http2_prior_knowledge_clients_are_proxied() {
    let (servers, mut toml) = upstreams(&["h2"]);
    toml.push_str(
        "[[routes]]\nname = \"h2\"\nupstream = \"h2\"\nmatch = { host = \"h2.example.com\" }\n",
    );
    let proxy = Proxy::start(&toml);
    let reply = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: h2.example.com",
        &proxy.url("/x?y=1"),
    ]);
    assert_eq!(reply.upstream(), "h2");
    let json = reply.json();
    // Upstreams get HTTP/1.1 with a Host field made from :authority.
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["headers"]["host"], "h2.example.com");
    assert_eq!(json["path"], "/x?y=1");

    let client = RustClient::http2();
    let reply = client.get(&proxy.url("/z"), &[("host", "h2.example.com")]);
    // Routed on one, forwarded with the other? Neither: malformed (RFC 9113 8.3.1).
    assert_eq!(
        reply.status, 400,
        "a Host differing from :authority is refused for h2: {reply:?}"
    );
    assert_eq!(servers[0].hits(), 1);
}

#[test]
fn smooth_weighted_round_robin_gives_exact_shares() {
    let servers: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let toml = upstream_toml(
        "pool",
        &[
            (servers[0].address(), 5),
            (servers[1].address(), 2),
            (servers[2].address(), 1),
        ],
        "",
    ) + "[[routes]]\nname = \"pool\"\nupstream = \"pool\"\n";
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    let order: Vec<String> = (0..80)
        .map(|_| client.get(&proxy.url("/"), &[]).upstream())
        .collect();
    let hits: Vec<usize> = servers.iter().map(Upstream::hits).collect();
    assert_eq!(hits, [50, 20, 10]);
    // Smooth: each cycle interleaves rather than sending five in a row to "a".
    assert_eq!(order[..8], ["a", "b", "a", "a", "c", "a", "b", "a"]);
    assert_eq!(order[8..16], order[..8]);
}

#[test]
fn upstream_failures_map_to_502_503_504() {
    let slow = Upstream::start("slow");
    // A port nobody listens on: bound, then released.
    let refused = format!("127.0.0.1:{}", proxy_support::free_port());
    let toml = format!(
        "{}{}{}\
         [[routes]]\nname = \"refused\"\nupstream = \"refused\"\nmatch = {{ path = \"/refused\" }}\n\
         [[routes]]\nname = \"slow\"\nupstream = \"slow\"\nmatch = {{ path = \"/slow\" }}\n\
         [[routes]]\nname = \"empty\"\nupstream = \"empty\"\nmatch = {{ path = \"/empty\" }}\n",
        upstream_toml("refused", &[(refused.parse().unwrap(), 1)], ""),
        upstream_toml(
            "slow",
            &[(slow.address(), 1)],
            "request_timeout = \"300ms\""
        ),
        "[[upstreams]]\nname = \"empty\"\ntargets = [{ address = \"127.0.0.1:9\", weight = 0 }]\n",
    );
    let proxy = Proxy::start(&toml);
    let cases = [
        ("/refused", 502, "upstream_failed"),
        ("/empty", 503, "no_upstream_target"),
    ];
    for (path, status, code) in cases {
        let reply = curl(&[&proxy.url(path)]);
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        assert_eq!(reply.json()["error"]["code"], code, "{path}");
    }
    slow.set_delay(std::time::Duration::from_secs(3));
    let reply = curl(&[&proxy.url("/slow")]);
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    // An upstream's own error statuses pass through untouched.
    slow.set_delay(std::time::Duration::ZERO);
    let reply = curl(&["-H", "x-upstream-status: 503", &proxy.url("/slow")]);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["upstream"], "slow");
}

/// A listening socket whose accept queue is full: the kernel drops further SYNs, so a
/// connect to it hangs until the client gives up.
fn unresponsive_address() -> (Vec<std::net::TcpStream>, i32, std::net::SocketAddr) {
    // SAFETY: plain socket calls on a descriptor this function owns; sockaddr_in is
    // zero-initialised and filled for 127.0.0.1:0.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut bound_len = len;
        libc::getsockname(
            fd,
            &mut bound as *mut _ as *mut libc::sockaddr,
            &mut bound_len,
        );
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], u16::from_be(bound.sin_port)));
        // Fill the queue (backlog 0 still queues one) with connections nobody accepts.
        let mut fillers = Vec::new();
        for _ in 0..3 {
            if let Ok(stream) = std::net::TcpStream::connect_timeout(
                &address,
                std::time::Duration::from_millis(200),
            ) {
                fillers.push(stream);
            }
        }
        (fillers, fd, address)
    }
}

#[test]
fn an_upstream_connect_timeout_is_504() {
    let (_fillers, fd, address) = unresponsive_address();
    let toml = upstream_toml("hung", &[(address, 1)], "connect_timeout = \"300ms\"")
        + "[[routes]]\nname = \"hung\"\nupstream = \"hung\"\n";
    let proxy = Proxy::start(&toml);
    let reply = curl(&[&proxy.url("/")]);
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    // SAFETY: closing the descriptor unresponsive_address opened.
    unsafe { libc::close(fd) };
}

#[test]
fn check_config_reports_routes_that_can_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        r#"
[xdp]
mode = "off"
[[listeners]]
name = "web"
address = "127.0.0.1:8080"
[[upstreams]]
name = "u"
targets = [{ address = "127.0.0.1:9000" }]
[[routes]]
name = "reads"
upstream = "u"
match = { path_prefix = "/api", methods = ["GET", "HEAD"] }
[[routes]]
name = "gets"
upstream = "u"
match = { path_prefix = "/api/", methods = ["GET"] }
[[routes]]
name = "same"
upstream = "u"
match = { path_prefix = "/api", methods = ["HEAD", "GET"] }
"#,
    )
    .unwrap();
    let output = gateway_cmd(&["check-config", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("routes[2] (\"same\") can never match: every request it matches goes to routes[0] (\"reads\")"),
        "{text}"
    );
    assert!(!text.contains("routes[1] (\"gets\") can never"), "{text}");
}

#[test]
fn the_example_config_shows_versioning() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/gateway.toml");
    let output = gateway_cmd(&["check-config", path]);
    assert!(output.status.success(), "{output:?}");
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains("path_prefix = \"/v1\""),
        "versioning by prefix"
    );
    assert!(text.contains("Accept-Version"), "versioning by header");
}
