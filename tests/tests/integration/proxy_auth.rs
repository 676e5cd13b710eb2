//! Authentication and authorization through the real binary: JWTs signed by a standard
//! library (jsonwebtoken) with keys made by openssl, a JWKS served over HTTP and rotated
//! during the test, API keys, scopes, claims, groups and source CIDRs.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::proxy_support::{
    IO_TIMEOUT, Proxy, Reply, RustClient, config, curl, free_port, upstream_toml,
};
use gateway_tests::{
    Gateway, gateway_cmd,
    jwks::{JwksServer, KeyKind, TestKey, b64url, jwks, now, sign_hmac},
    upstream::Upstream,
};
use jsonwebtoken::Algorithm;
use serde_json::json;

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";
const ISSUER: &str = "https://id.example.com";

/// A gateway with extra environment variables (the HMAC secret).
fn start(proxy_toml: &str, env: &[(&str, &str)]) -> Proxy {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = Gateway::start_with_env(None, &config(address, proxy_toml), env);
    Proxy { gateway, address }
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iss": ISSUER, "aud": "orders-api", "exp": now() + 600 })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A 401 in the shared error shape with an RFC 6750 challenge.
fn assert_invalid_token(reply: &Reply, why: &str) {
    assert_eq!(reply.status, 401, "{why}: {reply:?}");
    let challenge = reply.header("www-authenticate");
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{why}: {challenge}"
    );
    assert_eq!(reply.json()["error"]["code"], "invalid_token", "{why}");
    assert_eq!(reply.json()["error"]["status"], 401, "{why}");
}

#[test]
fn every_algorithm_family_is_verified_and_claims_are_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("app");
    let keys = [
        TestKey::generate(dir.path(), KeyKind::Rsa, Algorithm::RS256, "rs256"),
        TestKey::generate(dir.path(), KeyKind::Rsa, Algorithm::PS384, "ps384"),
        TestKey::generate(dir.path(), KeyKind::P256, Algorithm::ES256, "es256"),
        TestKey::generate(dir.path(), KeyKind::P384, Algorithm::ES384, "es384"),
        TestKey::generate(dir.path(), KeyKind::Ed25519, Algorithm::EdDSA, "eddsa"),
    ];
    let mut toml = upstream_toml("app", &[(upstream.address(), 1)], "");
    for key in &keys {
        toml.push_str(&format!(
            "[[auth.jwt]]\nname = \"{kid}\"\nissuer = \"{ISSUER}\"\naudiences = [\"orders-api\"]\n\
             public_key = \"{pem}\"\nforward_claims = {{ sub = \"x-user-id\", email = \"x-user-email\" }}\n\
             [[routes]]\nname = \"{kid}\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/{kid}\" }}\n\
             auth = {{ jwt = \"{kid}\" }}\n",
            kid = key.kid,
            pem = key.public_pem.display()
        ));
    }
    toml.push_str(&format!(
        "[[auth.jwt]]\nname = \"hmac\"\nissuer = \"{ISSUER}\"\naudiences = [\"orders-api\"]\n\
         secret_env = \"TEST_JWT_SECRET\"\nforward_claims = {{ sub = \"x-user-id\" }}\n\
         [[routes]]\nname = \"hmac\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/hmac\" }}\n\
         auth = {{ jwt = \"hmac\" }}\n"
    ));
    let proxy = start(&toml, &[("TEST_JWT_SECRET", SECRET)]);
    let client = RustClient::http1();
    for key in &keys {
        let mut body = claims(&format!("user-{}", key.kid));
        body["email"] = json!("someone@example.com");
        let token = key.sign(&body);
        // A spoofed claim header from the client must be replaced, never passed on.
        let reply = client.get(
            &proxy.url(&format!("/{}/orders", key.kid)),
            &[("authorization", &bearer(&token)), ("x-user-id", "spoofed")],
        );
        assert_eq!(reply.status, 200, "{}: {reply:?}", key.kid);
        let seen = &reply.json()["headers"];
        assert_eq!(
            seen["x-user-id"],
            format!("user-{}", key.kid),
            "{}",
            key.kid
        );
        assert_eq!(seen["x-user-email"], "someone@example.com", "{}", key.kid);
        assert_eq!(
            seen["authorization"],
            bearer(&token),
            "not stripped unless asked"
        );
        // The cached verification answers the same way.
        let again = client.get(
            &proxy.url(&format!("/{}/orders", key.kid)),
            &[("authorization", &bearer(&token))],
        );
        assert_eq!(again.status, 200, "{}: {again:?}", key.kid);
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = sign_hmac(alg, SECRET.as_bytes(), &claims("hmac-user"));
        let reply = client.get(&proxy.url("/hmac/x"), &[("authorization", &bearer(&token))]);
        assert_eq!(reply.status, 200, "{alg:?}: {reply:?}");
        assert_eq!(reply.json()["headers"]["x-user-id"], "hmac-user");
    }
    // Each route takes only its own provider's keys.
    let token = keys[0].sign(&claims("x"));
    let reply = client.get(
        &proxy.url("/es256/x"),
        &[("authorization", &bearer(&token))],
    );
    assert_invalid_token(&reply, "an RS256 token on the ES256 route");
}

#[test]
fn bad_tokens_are_refused_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("app");
    let rsa = TestKey::generate(dir.path(), KeyKind::Rsa, Algorithm::RS256, "main");
    let other = TestKey::generate(dir.path(), KeyKind::Rsa, Algorithm::RS256, "main-other");
    let toml = format!(
        "{}[[auth.jwt]]\nname = \"rsa\"\nissuer = \"{ISSUER}\"\naudiences = [\"orders-api\"]\n\
         public_key = \"{}\"\nleeway = \"5s\"\nmax_token_bytes = 2048\n\
         [[auth.jwt]]\nname = \"hmac\"\nsecret_env = \"TEST_JWT_SECRET\"\n\
         [[routes]]\nname = \"rsa\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/rsa\" }}\n\
         auth = {{ jwt = \"rsa\" }}\n\
         [[routes]]\nname = \"hmac\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/hmac\" }}\n\
         auth = {{ jwt = \"hmac\" }}\n",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        rsa.public_pem.display()
    );
    let proxy = start(&toml, &[("TEST_JWT_SECRET", SECRET)]);
    let client = RustClient::http1();
    let good = claims("alice");
    assert_eq!(
        client
            .get(
                &proxy.url("/rsa"),
                &[("authorization", &bearer(&rsa.sign(&good)))]
            )
            .status,
        200
    );
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut body = good.clone();
        edit(&mut body);
        rsa.sign(&body)
    };
    let b64 = |text: &str| b64url(text.as_bytes());
    let payload = b64(&good.to_string());
    let alg_none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    // HS256 "signed" with the RSA public key as the secret: the classic confusion attack.
    let public_pem = std::fs::read(&rsa.public_pem).unwrap();
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let mut huge = good.clone();
    huge["padding"] = json!("x".repeat(3000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 60)),
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 300)),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("billing-api")),
            "wrong_audience",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "missing_claim",
        ),
        ("bad signature", other.sign(&good), "bad_signature"),
        ("alg none", alg_none, "malformed_token"),
        ("HS/RS confusion", confused, "bad_algorithm"),
        ("oversized", rsa.sign(&huge), "token_too_large"),
        ("garbage", "not.a.jwt".to_owned(), "malformed_token"),
    ];
    for (why, token, reason) in &cases {
        let reply = client.get(&proxy.url("/rsa/x"), &[("authorization", &bearer(token))]);
        assert_invalid_token(&reply, why);
        assert!(
            reply.header("www-authenticate").contains(reason),
            "{why}: {reply:?}"
        );
    }
    // Within the leeway an expired token still passes.
    let lenient = with(&|c| c["exp"] = json!(now() - 2));
    assert_eq!(
        client
            .get(&proxy.url("/rsa"), &[("authorization", &bearer(&lenient))])
            .status,
        200
    );
    // No credential at all: 401 with a bare challenge (RFC 6750 3.1).
    let reply = client.get(&proxy.url("/rsa"), &[]);
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), "Bearer realm=\"gateway\"");
    let reply = client.get(&proxy.url("/rsa"), &[("authorization", "Basic YTpi")]);
    assert_eq!(reply.status, 401);
    // An RSA-signed token on the HMAC route: the algorithm does not fit the key.
    let reply = client.get(
        &proxy.url("/hmac"),
        &[("authorization", &bearer(&rsa.sign(&good)))],
    );
    assert_invalid_token(&reply, "RS256 on an HMAC provider");
    assert_eq!(
        upstream.hits(),
        2,
        "only the two good tokens reached the upstream"
    );
    // gRPC clients get UNAUTHENTICATED.
    let reply = curl(&[
        "-H",
        "content-type: application/grpc",
        &proxy.url("/rsa/svc.Orders/List"),
    ]);
    assert_eq!(reply.header("grpc-status"), "16", "{reply:?}");
}

#[test]
fn jwks_url_is_refetched_on_unknown_kid_and_the_last_good_set_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("app");
    let first = TestKey::generate(dir.path(), KeyKind::Rsa, Algorithm::RS256, "2024-a");
    let second = TestKey::generate(dir.path(), KeyKind::P256, Algorithm::ES256, "2024-b");
    let third = TestKey::generate(dir.path(), KeyKind::Ed25519, Algorithm::EdDSA, "2024-c");
    let server = JwksServer::start(&jwks(&[&first]));
    let toml = format!(
        "{}[[auth.jwt]]\nname = \"idp\"\nissuer = \"{ISSUER}\"\njwks_url = \"{}\"\n\
         refresh = \"1h\"\nrefetch_cooldown = \"300ms\"\n\
         [[routes]]\nname = \"api\"\nupstream = \"app\"\nauth = {{ jwt = \"idp\" }}\n",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        server.url()
    );
    let proxy = start(&toml, &[]);
    let client = RustClient::http1();
    let reply = client.get(
        &proxy.url("/"),
        &[("authorization", &bearer(&first.sign(&claims("a"))))],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    // A kid nobody published: one (rate-limited) refetch, then 401.
    let reply = client.get(
        &proxy.url("/"),
        &[("authorization", &bearer(&second.sign(&claims("b"))))],
    );
    assert_invalid_token(&reply, "unknown kid");
    assert!(reply.header("www-authenticate").contains("unknown_kid"));
    // A burst of unknown kids within the cooldown does not fetch again per request.
    let (before, started) = (server.hits(), Instant::now());
    for _ in 0..10 {
        let reply = client.get(
            &proxy.url("/"),
            &[("authorization", &bearer(&second.sign(&claims("b"))))],
        );
        assert_eq!(reply.status, 401);
    }
    let allowed = (started.elapsed().as_millis() / 300) as usize + 1;
    let fetches = server.hits() - before;
    assert!(
        fetches <= allowed && fetches < 10,
        "{fetches} fetches for 10 unknown kids"
    );
    // Rotation: the identity provider publishes the new key (and drops the old one).
    server.set(&jwks(&[&second, &third]));
    std::thread::sleep(Duration::from_millis(400));
    let reply = client.get(
        &proxy.url("/"),
        &[("authorization", &bearer(&second.sign(&claims("b"))))],
    );
    assert_eq!(reply.status, 200, "the rotated key: {reply:?}");
    let reply = client.get(
        &proxy.url("/"),
        &[("authorization", &bearer(&third.sign(&claims("c"))))],
    );
    assert_eq!(reply.status, 200, "an Ed25519 JWK: {reply:?}");
    // The identity provider fails: the last good set (the second key) stays in use.
    server.set_status(500);
    std::thread::sleep(Duration::from_millis(400));
    let fresh = second.sign(&json!({ "sub": "c", "iss": ISSUER, "exp": now() + 300 }));
    let unknown = first.sign(&claims("old"));
    let reply = client.get(&proxy.url("/"), &[("authorization", &bearer(&unknown))]);
    assert_eq!(reply.status, 401, "the retired key is refused: {reply:?}");
    let reply = client.get(&proxy.url("/"), &[("authorization", &bearer(&fresh))]);
    assert_eq!(reply.status, 200, "kept the last good set: {reply:?}");
    assert!(
        proxy
            .gateway
            .log()
            .contains("keeping the last good key set")
    );
    // A reload (same provider, the identity provider still down) keeps the fetched keys.
    proxy.reload(&toml);
    proxy.wait_for_log("proxy routes reloaded");
    let after_reload = second.sign(&json!({ "sub": "d", "iss": ISSUER, "exp": now() + 300 }));
    let reply = client.get(
        &proxy.url("/"),
        &[("authorization", &bearer(&after_reload))],
    );
    assert_eq!(
        reply.status, 200,
        "the key set survived the reload: {reply:?}"
    );
}

#[test]
fn api_keys_and_groups() {
    let upstream = Upstream::start("app");
    let hash = |key: &str| {
        use sha2::Digest as _;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(key.as_bytes()))
        )
    };
    let toml = format!(
        "{}[[consumers]]\nname = \"mobile-app\"\ngroups = [\"partners\"]\napi_keys = [\"{}\"]\n\
         [[consumers]]\nname = \"intern-tool\"\ngroups = [\"staff\"]\napi_keys = [\"{}\"]\n\
         [[routes]]\nname = \"open\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/open\" }}\n\
         auth = {{ api_key = {{ header = \"x-api-key\" }}, strip_credential = true }}\n\
         [[routes]]\nname = \"partners\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/partners\" }}\n\
         auth = {{ api_key = {{}} }}\nauthorize = {{ groups = [\"partners\"] }}\n",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        hash("key-mobile-1234"),
        hash("key-intern-5678"),
    );
    let proxy = start(&toml, &[]);
    let client = RustClient::http1();
    let reply = client.get(&proxy.url("/open/x"), &[("x-api-key", "key-mobile-1234")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.json()["headers"].get("x-api-key").is_none(),
        "the key is stripped: {reply:?}"
    );
    let reply = client.get(&proxy.url("/open/x"), &[("x-api-key", "key-wrong")]);
    assert_invalid_token(&reply, "an unknown API key");
    let reply = client.get(&proxy.url("/open/x"), &[]);
    assert_eq!(reply.status, 401);
    // Groups: a partner may, a staff tool may not.
    let reply = client.get(&proxy.url("/partners"), &[("x-api-key", "key-mobile-1234")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["headers"]["x-api-key"], "key-mobile-1234");
    let reply = client.get(&proxy.url("/partners"), &[("x-api-key", "key-intern-5678")]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "insufficient_scope");
    // The identity reaches the access log.
    let deadline = Instant::now() + IO_TIMEOUT;
    while !proxy.gateway.log().contains("mobile-app") {
        assert!(Instant::now() < deadline, "{}", proxy.gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scopes_claims_and_sources_are_enforced() {
    let upstream = Upstream::start("app");
    let toml = format!(
        "{}[[auth.jwt]]\nname = \"hmac\"\nsecret_env = \"TEST_JWT_SECRET\"\n\
         token = {{ cookie = \"session\" }}\n\
         [[routes]]\nname = \"orders\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/orders\" }}\n\
         auth = {{ jwt = \"hmac\", strip_credential = true }}\n\
         authorize = {{ scopes = [\"orders:read\"], claims = {{ tenant = \"acme\" }} }}\n\
         [[auth.jwt]]\nname = \"grouped\"\nsecret_env = \"TEST_JWT_SECRET\"\ngroups_claim = \"groups\"\n\
         [[routes]]\nname = \"staff\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/staff\" }}\n\
         auth = {{ jwt = \"grouped\" }}\nauthorize = {{ groups = [\"staff\"] }}\n\
         [[routes]]\nname = \"admin\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/admin\" }}\n\
         authorize = {{ sources = {{ allow = [\"10.0.0.0/8\"] }} }}\n\
         [[routes]]\nname = \"local\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/local\" }}\n\
         authorize = {{ sources = {{ allow = [\"127.0.0.0/8\"], deny = [\"127.0.0.2/32\"] }} }}\n\
         [[routes]]\nname = \"blocked\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/blocked\" }}\n\
         authorize = {{ sources = {{ deny = [\"127.0.0.1\"] }} }}\n",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
    );
    let proxy = start(&toml, &[("TEST_JWT_SECRET", SECRET)]);
    let client = RustClient::http1();
    let token = |scope: serde_json::Value, tenant: &str| {
        let cookie = sign_hmac(
            Algorithm::HS256,
            SECRET.as_bytes(),
            &json!({ "sub": "bob", "exp": now() + 600, "scope": scope, "tenant": tenant }),
        );
        format!("theme=dark; session={cookie}")
    };
    let reply = client.get(
        &proxy.url("/orders"),
        &[("cookie", &token(json!("profile orders:read"), "acme"))],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["headers"]["cookie"],
        "theme=dark",
        "the session cookie is stripped, others kept"
    );
    // `scp` as an array counts too.
    let reply = client.get(
        &proxy.url("/orders"),
        &[("cookie", &token(json!(["orders:read"]), "acme"))],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = client.get(
        &proxy.url("/orders"),
        &[("cookie", &token(json!("orders:write"), "acme"))],
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "insufficient_scope");
    let challenge = reply.header("www-authenticate");
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("orders:read"),
        "{challenge}"
    );
    let reply = client.get(
        &proxy.url("/orders"),
        &[("cookie", &token(json!("orders:read"), "globex"))],
    );
    assert_eq!(reply.status, 403, "wrong tenant: {reply:?}");
    // Groups from the token's groups claim.
    let grouped = |groups: serde_json::Value| {
        let token = sign_hmac(
            Algorithm::HS256,
            SECRET.as_bytes(),
            &json!({ "sub": "erin", "exp": now() + 600, "groups": groups }),
        );
        client
            .get(&proxy.url("/staff"), &[("authorization", &bearer(&token))])
            .status
    };
    assert_eq!(grouped(json!(["staff", "x"])), 200);
    assert_eq!(grouped(json!("x staff")), 200);
    assert_eq!(grouped(json!(["partners"])), 403);
    let reply = client.get(&proxy.url("/admin"), &[]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "source_denied");
    assert_eq!(client.get(&proxy.url("/local"), &[]).status, 200);
    assert_eq!(client.get(&proxy.url("/blocked"), &[]).status, 403);
}

#[test]
fn auth_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n\
         [[auth.jwt]]\nname = \"env\"\nsecret_env = \"GATEWAY_TEST_UNSET_SECRET\"\n\
         [[auth.jwt]]\nname = \"pem\"\npublic_key = \"/nonexistent/key.pem\"\n\
         [[consumers]]\nname = \"c\"\napi_keys = [\"plaintext-key\"]\n\
         [[routes]]\nname = \"r\"\nupstream = \"u\"\nauth = { jwt = \"x\" }\n\
         rate_limits = [{ key = \"ip\", rate = \"10 per sec\" }]\n",
    )
    .unwrap();
    let output = gateway_cmd(&["check-config", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "auth.jwt[0].secret_env: the environment variable $GATEWAY_TEST_UNSET_SECRET is not set",
        "auth.jwt[1].public_key: cannot read /nonexistent/key.pem",
        "consumers[0].api_keys[0]: must be \"sha256:",
        "routes[0].auth.jwt: unknown provider \"x\"",
        "routes[0].rate_limits[0].rate: \"10 per sec\" is not a rate",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    // `gateway hash-key` prints what api_keys takes.
    let mut child = std::process::Command::new(gateway_tests::gateway_bin())
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn tokens_from_a_header_or_the_query_with_keys_from_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("app");
    let key = TestKey::generate(dir.path(), KeyKind::P384, Algorithm::ES384, "file-key");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&key])).unwrap();
    let toml = format!(
        "{}[[auth.jwt]]\nname = \"by-header\"\njwks_file = \"{file}\"\ntoken = {{ header = \"x-token\" }}\n\
         [[auth.jwt]]\nname = \"by-query\"\njwks_file = \"{file}\"\ntoken = {{ query = \"access_token\" }}\n\
         algorithms = [\"ES384\"]\n\
         [[routes]]\nname = \"header\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/h\" }}\n\
         auth = {{ jwt = \"by-header\", strip_credential = true }}\n\
         [[routes]]\nname = \"query\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/q\" }}\n\
         auth = {{ jwt = \"by-query\", strip_credential = true }}\n",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        file = jwks_file.display()
    );
    let proxy = start(&toml, &[]);
    let client = RustClient::http1();
    let token = key.sign(&claims("carol"));
    let reply = client.get(&proxy.url("/h/x"), &[("x-token", &token)]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.json()["headers"].get("x-token").is_none(), "stripped");
    // A Bearer token is not where this provider looks.
    let reply = client.get(&proxy.url("/h/x"), &[("authorization", &bearer(&token))]);
    assert_eq!(reply.status, 401);
    let reply = client.get(
        &proxy.url(&format!("/q/x?a=1&access_token={token}&b=2")),
        &[],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["path"],
        "/q/x?a=1&b=2",
        "the token left the query"
    );
    let reply = client.get(&proxy.url(&format!("/q/x?access_token={token}")), &[]);
    assert_eq!(reply.json()["path"], "/q/x");
    let reply = client.get(&proxy.url("/q/x?access_token="), &[]);
    assert_eq!(reply.status, 401);
}

use gateway_tests::openssl_in;

/// `openssl s_server -WWW` serving `dir` over TLS; killed on drop.
struct HttpsFiles(std::process::Child);

impl Drop for HttpsFiles {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn jwks_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    openssl_in(
        path,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=JWKS Test CA",
        ],
    );
    std::fs::write(
        path.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl_in(
        path,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl_in(
        path,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
    let key = TestKey::generate(path, KeyKind::Rsa, Algorithm::RS256, "tls-key");
    std::fs::write(path.join("jwks.json"), jwks(&[&key])).unwrap();
    let port = free_port();
    let server = HttpsFiles(
        std::process::Command::new("openssl")
            .args([
                "s_server", "-WWW", "-quiet", "-cert", "leaf.pem", "-key", "leaf.key",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting openssl s_server"),
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let upstream = Upstream::start("app");
    let provider = |name: &str, ca: &str| {
        format!(
            "[[auth.jwt]]\nname = \"{name}\"\njwks_url = \"https://127.0.0.1:{port}/jwks.json\"\n{ca}\n\
             [[routes]]\nname = \"{name}\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/{name}\" }}\n\
             auth = {{ jwt = \"{name}\" }}\n"
        )
    };
    let toml = format!(
        "{}{}{}",
        upstream_toml("app", &[(upstream.address(), 1)], ""),
        provider(
            "private-ca",
            &format!("jwks_ca = \"{}\"", path.join("ca.pem").display())
        ),
        // Without the CA the server's certificate is not trusted: no keys, every token 401.
        provider("system-roots", ""),
    );
    let proxy = start(&toml, &[]);
    let client = RustClient::http1();
    let token = key.sign(&claims("dave"));
    let reply = client.get(
        &proxy.url("/private-ca"),
        &[("authorization", &bearer(&token))],
    );
    assert_eq!(reply.status, 200, "{reply:?}\n{}", proxy.gateway.log());
    let reply = client.get(
        &proxy.url("/system-roots"),
        &[("authorization", &bearer(&token))],
    );
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(proxy.gateway.log().contains("JWKS fetch failed"));
    drop(server);
}
