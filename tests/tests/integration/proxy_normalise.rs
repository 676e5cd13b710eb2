//! Path confusion and ambiguous credentials (issue 13), tried as an attacker would: many
//! spellings of the same path over HTTP/1.1, h2c and HTTP/2 over TLS (real curl with
//! `--path-as-is`, so the bytes reach the gateway unchanged), each checked by its status
//! and by what the recording upstream received.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::proxy_support::{Proxy, Reply, config, curl, free_port, upstream_toml};
use gateway_tests::{
    Gateway,
    jwks::{now, sign_hmac},
    upstream::Upstream,
};
use jsonwebtoken::Algorithm;
use sha2::Digest as _;

const KEY: &str = "the-api-key-0123456789";
const OTHER_KEY: &str = "another-api-key-987654";
const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

#[derive(Debug, Clone, Copy)]
enum Client {
    Http1,
    H2c,
    H2Tls,
}

const CLIENTS: [Client; 3] = [Client::Http1, Client::H2c, Client::H2Tls];

/// A gateway with an http and an https listener in front of one recording upstream; each
/// route tags the request with `x-route` so the echo says which one matched.
struct Lab {
    proxy: Proxy,
    tls_port: u16,
    upstream: Upstream,
    access_log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn route(name: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"{prefix}\" }}\n\
         request_headers = {{ set = {{ x-route = \"{name}\" }} }}\n{extra}\n"
    )
}

fn hash(key: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

fn lab() -> Lab {
    let upstream = Upstream::start("app");
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let tls_port = free_port();
    let toml = format!(
        "[[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{tls_port}\"\nprotocol = \"https\"\n\
         [listeners.tls]\n[[listeners.tls.certificates]]\nself_signed = true\nnames = [\"localhost\"]\n\
         [access_log]\npath = \"{}\"\n\
         {}\
         [[consumers]]\nname = \"alice\"\napi_keys = [\"{}\", \"{}\"]\n\
         [[auth.jwt]]\nname = \"hmac\"\nsecret_env = \"TEST_JWT_SECRET\"\n\
         [[auth.jwt]]\nname = \"cookie\"\nsecret_env = \"TEST_JWT_SECRET\"\ntoken = {{ cookie = \"session\" }}\n\
         {}{}{}{}{}{}{}{}{}",
        access_log.display(),
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        hash(KEY),
        hash(OTHER_KEY),
        route("root", "/", ""),
        route("open", "/open", ""),
        route(
            "admin",
            "/admin",
            "auth = { api_key = { header = \"x-api-key\" } }"
        ),
        route("files", "/files", "escaped_slashes = \"keep\""),
        route("cached", "/cached", "cache = { ttl = \"30s\" }"),
        route(
            "either",
            "/either",
            "auth = { jwt = \"hmac\", api_key = { query = \"api_key\" } }"
        ),
        route(
            "stripped",
            "/stripped",
            "auth = { api_key = { header = \"x-api-key\" }, strip_credential = true }"
        ),
        route(
            "query",
            "/query",
            "auth = { api_key = { query = \"api_key\" } }"
        ),
        route("session", "/session", "auth = { jwt = \"cookie\" }"),
    );
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = Gateway::start_with_env(
        None,
        &config(address, &toml),
        &[("TEST_JWT_SECRET", SECRET)],
    );
    Lab {
        proxy: Proxy { gateway, address },
        tls_port,
        upstream,
        access_log,
        _dir: dir,
    }
}

impl Lab {
    /// `path` exactly as written (curl `--path-as-is`), with `headers`.
    fn send(&self, client: Client, path: &str, headers: &[&str]) -> Reply {
        let mut args: Vec<String> = vec!["--path-as-is".into()];
        for header in headers {
            args.push("-H".into());
            args.push((*header).into());
        }
        match client {
            Client::Http1 => {
                args.push("--http1.1".into());
                args.push(self.proxy.url(path));
            }
            Client::H2c => {
                args.push("--http2-prior-knowledge".into());
                args.push(self.proxy.url(path));
            }
            Client::H2Tls => {
                args.extend(["-k".into(), "--http2".into(), "--resolve".into()]);
                args.push(format!("localhost:{}:127.0.0.1", self.tls_port));
                args.push(format!("https://localhost:{}{path}", self.tls_port));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    }

    /// Sends and checks: the status, and for a 200 the route and the path upstream; for
    /// anything else, that the upstream was not reached.
    fn expect(&self, client: Client, path: &str, headers: &[&str], want: Want<'_>) -> Reply {
        let hits = self.upstream.hits();
        let reply = self.send(client, path, headers);
        let why = format!("{client:?} {path:?} {headers:?}: {reply:?}");
        match want {
            Want::Upstream(route, upstream_path) => {
                assert_eq!(reply.status, 200, "{why}");
                let echo = reply.json();
                assert_eq!(echo["headers"]["x-route"], route, "{why}");
                assert_eq!(echo["path"], upstream_path, "{why}");
            }
            Want::Refused(status) => {
                assert_eq!(reply.status, status, "{why}");
                assert_eq!(
                    self.upstream.hits(),
                    hits,
                    "the upstream was reached: {why}"
                );
            }
        }
        reply
    }
}

#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    /// 200 from this route, with this path (and query) upstream.
    Upstream(&'a str, &'a str),
    /// This status from the gateway; the upstream not reached.
    Refused(u16),
}

use Want::{Refused, Upstream as Up};

/// Every spelling of "the open prefix, then up into the protected one" and friends.
const PATHS: &[(&str, Want<'static>)] = &[
    ("/open/x", Up("open", "/open/x")),
    ("/admin", Refused(401)),
    // Dot segments, plain and encoded in every case mix: the protected route is reached.
    ("/open/../admin", Refused(401)),
    ("/open/%2e%2e/admin", Refused(401)),
    ("/open/%2E%2E/admin", Refused(401)),
    ("/open/%2E%2e/admin", Refused(401)),
    ("/open/.%2e/admin", Refused(401)),
    ("/open/%2e./admin", Refused(401)),
    ("/open/./../admin", Refused(401)),
    ("/open/x/../../admin/y", Refused(401)),
    ("/./admin", Refused(401)),
    ("/%2e/admin", Refused(401)),
    ("/%61dmin", Refused(401)),
    ("/%61%64%6D%69%6E", Refused(401)),
    // Repeated slashes are merged before dots are resolved (nginx's order).
    ("//admin", Refused(401)),
    ("///admin//", Refused(401)),
    ("/open//../admin", Refused(401)),
    ("/open/x//..//../admin", Refused(401)),
    // Encoded slashes and backslashes: 400 outside routes that keep them.
    ("/open%2f..%2fadmin", Refused(400)),
    ("/open%2F..%2Fadmin", Refused(400)),
    ("/open/..%2fadmin", Refused(400)),
    ("/open/..%2Fadmin", Refused(400)),
    ("/open/..%5cadmin", Refused(400)),
    ("/open/..%5Cadmin", Refused(400)),
    ("/open/..\\admin", Refused(400)),
    ("/open\\..\\admin", Refused(400)),
    ("/admin%2f", Refused(400)),
    // Path parameters: servlet containers read `..;x` as `..` and `/admin;x` as `/admin`.
    ("/open;x/../admin", Refused(400)),
    ("/open/..;/admin", Refused(400)),
    ("/admin;jsessionid=1", Refused(400)),
    ("/open/x;y", Refused(400)),
    // Above the root.
    ("/..", Refused(400)),
    ("/../admin", Refused(400)),
    ("/%2e%2e/admin", Refused(400)),
    ("/open/../../admin", Refused(400)),
    ("/open/%2e%2e/%2E%2E/admin", Refused(400)),
    // Encodings upstreams may read as dots or slashes: refused.
    ("/open/%252e%252e/admin", Refused(400)),
    ("/open/%25%32%65%25%32%65/admin", Refused(400)),
    ("/open/%c0%ae%c0%ae/admin", Refused(400)),
    ("/open/%ef%bc%8e%ef%bc%8e/admin", Refused(400)),
    ("/open/%ef%bc%8fadmin", Refused(400)),
    ("/open/a%00.json", Refused(400)),
    ("/open/%0d%0aX:1", Refused(400)),
    ("/open/%zz", Refused(400)),
    ("/open/%", Refused(400)),
    ("/open/%ff", Refused(400)),
    // Legitimate paths reach the upstream in their one canonical form.
    ("/open/./x", Up("open", "/open/x")),
    ("/open/x/.", Up("open", "/open/x/")),
    ("/open/x/..", Up("open", "/open/")),
    ("/open/x/%2e", Up("open", "/open/x/")),
    ("/open/x/...", Up("open", "/open/x/...")),
    ("/open/x.", Up("open", "/open/x.")),
    ("/open/%7eme%41", Up("open", "/open/~meA")),
    ("/open/a%21b%3ac", Up("open", "/open/a!b:c")),
    ("/open/a%3fb%23c%3bd", Up("open", "/open/a%3Fb%23c%3Bd")),
    ("/open/%c3%a9t%C3%A9", Up("open", "/open/%C3%A9t%C3%A9")),
    ("/open/a%20b", Up("open", "/open/a%20b")),
    ("/open//x", Up("open", "/open/x")),
    (
        "/open/x?q=%2e%2e/..&r=%2f",
        Up("open", "/open/x?q=%2e%2e/..&r=%2f"),
    ),
    ("/admin/../open/y", Up("open", "/open/y")),
    ("/admin/%2e%2e/open", Up("open", "/open")),
    ("/openx/../open", Up("open", "/open")),
    ("/x/..", Up("root", "/")),
    // A route that keeps escaped slashes gets them as data, in uppercase hex; dots still
    // resolve, so the keep route cannot be left through them.
    ("/files/a%2fb", Up("files", "/files/a%2Fb")),
    ("/files/a%5Cb", Up("files", "/files/a%5Cb")),
    (
        "/files/..%2f..%2fadmin",
        Up("files", "/files/..%2F..%2Fadmin"),
    ),
    ("/files/../admin", Refused(401)),
    ("/files/%2e%2e/admin%2fx", Refused(400)),
];

#[test]
fn every_spelling_of_a_path_is_judged_as_the_upstream_reads_it() {
    let lab = lab();
    for client in CLIENTS {
        for &(path, want) in PATHS {
            lab.expect(client, path, &[], want);
        }
    }
    // With the key, the normalised path reaches the protected route as it was routed.
    for client in CLIENTS {
        let key = format!("x-api-key: {KEY}");
        for (path, upstream_path) in [
            ("/open/../admin", "/admin"),
            ("/open/%2e%2e/admin/./x", "/admin/x"),
            ("//admin//y", "/admin/y"),
            ("/%61dmin", "/admin"),
        ] {
            lab.expect(client, path, &[&key], Up("admin", upstream_path));
        }
    }
}

#[test]
fn the_cache_and_the_access_log_see_the_normalised_path() {
    let lab = lab();
    let first = lab.send(Client::Http1, "/cached/a", &[]);
    assert_eq!(first.header("x-cache"), "MISS", "{first:?}");
    // One host (the key names it): the plain listener, over HTTP/1.1 and h2c.
    for spelling in [
        "/cached/./a",
        "/cached/x/../a",
        "//cached/%61",
        "/cached/%2e/a",
    ] {
        for client in [Client::Http1, Client::H2c] {
            let reply = lab.send(client, spelling, &[]);
            assert_eq!(
                reply.header("x-cache"),
                "HIT",
                "{client:?} {spelling}: {reply:?}"
            );
        }
    }
    assert_eq!(lab.upstream.hits_on("/cached/a"), 1);

    lab.send(Client::H2c, "/open/%2e%2e/open/%7Elogged", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&lab.access_log).unwrap_or_default();
        let paths: Vec<String> = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|line| line["path"].as_str().map(str::to_owned))
            .collect();
        if paths.iter().any(|path| path == "/open/~logged") {
            assert!(
                !paths
                    .iter()
                    .any(|path| path.contains("%2e") || path.contains("..")),
                "raw paths logged: {paths:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not logged normalised: {paths:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token(sub: &str) -> String {
    sign_hmac(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &serde_json::json!({ "sub": sub, "exp": now() + 600 }),
    )
}

#[test]
fn exactly_one_credential_or_400_before_verifying() {
    let lab = lab();
    let good = token("alice");
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    let bearer = format!("Authorization: Bearer {good}");
    let bearer_forged = format!("Authorization: Bearer {forged}");
    let key = format!("x-api-key: {KEY}");
    let other_key = format!("x-api-key: {OTHER_KEY}");
    let session = format!("Cookie: session={good}");
    // (path, header fields): more than one value of the route's credential, in every way.
    let ambiguous: Vec<(String, Vec<String>)> = vec![
        ("/admin".into(), vec![key.clone(), key.clone()]),
        ("/admin".into(), vec![key.clone(), other_key.clone()]),
        (
            "/admin".into(),
            vec![key.clone(), "x-api-key: forged".into()],
        ),
        (
            "/admin".into(),
            vec![key.clone(), format!("x_api_key: {OTHER_KEY}")],
        ),
        // curl sends an empty field for "name;".
        ("/admin".into(), vec![key.clone(), "x-api-key;".into()]),
        (
            "/stripped".into(),
            vec![key.clone(), "x_api_key: forged".into()],
        ),
        (
            "/either".into(),
            vec![bearer.clone(), bearer_forged.clone()],
        ),
        ("/either".into(), vec![bearer.clone(), bearer.clone()]),
        (
            "/either".into(),
            vec![bearer.clone(), "Authorization: Basic YTpi".into()],
        ),
        (format!("/either?api_key={KEY}"), vec![bearer.clone()]),
        (format!("/either?api_key={KEY}&api_key={OTHER_KEY}"), vec![]),
        (format!("/query?api_key={KEY}&api_key=forged"), vec![]),
        (format!("/query?api_key={KEY}&api%5Fkey=forged"), vec![]),
        (format!("/query?api_key={KEY}&api_key"), vec![]),
        (format!("/query?x=1;api_key={KEY}"), vec![]),
        (format!("/query?api_key={KEY};api_key=forged"), vec![]),
        (
            "/session".into(),
            vec![format!("Cookie: session={good}; session={forged}")],
        ),
        (
            "/session".into(),
            vec![session.clone(), format!("Cookie: session={forged}")],
        ),
    ];
    for client in CLIENTS {
        for (path, fields) in &ambiguous {
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            lab.expect(client, path, &fields, Refused(400));
        }
    }

    // One credential: verified, and the upstream gets exactly that one (or none, stripped).
    for client in CLIENTS {
        let reply = lab.expect(client, "/admin/x", &[&key], Up("admin", "/admin/x"));
        assert_eq!(reply.json()["headers"]["x-api-key"], KEY);
        let reply = lab.expect(client, "/either", &[&bearer], Up("either", "/either"));
        assert_eq!(
            reply.json()["headers"]["authorization"],
            format!("Bearer {good}")
        );
        // A query key is form-decoded, as the upstream decodes it.
        let encoded: String = KEY.bytes().map(|byte| format!("%{byte:02x}")).collect();
        let path = format!("/query?a=1&api%5fkey={encoded}");
        lab.expect(client, &path, &[], Up("query", &path));
        let reply = lab.expect(client, "/stripped", &[&key], Up("stripped", "/stripped"));
        assert!(
            reply.json()["headers"].get("x-api-key").is_none(),
            "{reply:?}"
        );
        let reply = lab.expect(
            client,
            "/session/s",
            &[&session],
            Up("session", "/session/s"),
        );
        assert_eq!(reply.json()["headers"]["cookie"], format!("session={good}"));
        // A forged token alone is still a 401, not a 400.
        lab.expect(client, "/either", &[&bearer_forged], Refused(401));
    }
}

#[test]
fn check_config_explains_the_opt_outs_and_warns_about_routes_that_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let toml = format!(
        "[xdp]\nmode = \"off\"\n[normalise]\nmerge_slashes = false\n\
         [[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:{}\"\n{}{}{}{}",
        free_port(),
        upstream_toml("app", &[("127.0.0.1:9".parse().unwrap(), 1)], ""),
        route("files", "/files", "escaped_slashes = \"keep\""),
        route("dotted", "/api/./v1", ""),
        route("params", "/app;v=1", ""),
    );
    std::fs::write(&path, toml).unwrap();
    let output = gateway_tests::daemon::gateway_cmd(&["check-config", path.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("repeated slashes kept (normalise.merge_slashes = false)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route \"files\" (routes[0]): escaped_slashes = \"keep\""),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "match.path_prefix: \"/api/./v1\" never matches as written: requests are normalised to \"/api/v1\""
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"/app;v=1\" never matches as written: such a request path is refused"),
        "{stderr}"
    );
}
