//! TLS from the gateway to upstreams (`[[upstreams]] tls = {...}`), against real TLS
//! upstreams (rustls, and nginx for client certificates) with a PKI the real `openssl` CLI
//! makes per test: the right CA and name pass; the wrong CA, the wrong name, an expired
//! certificate and a plain-HTTP target are each a 502 `upstream_tls_failed` whose log line
//! names the upstream and the reason; `verify = false`; HTTP/2 and gRPC chosen by ALPN;
//! health checks over TLS; client certificates; a CA renewed on reload; config errors.
//! Loopback only.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use crate::proxy_support::{
    Proxy, RustClient, free_port,
    pki::{self, CertDir},
    upstream_toml, wait_until,
};
use gateway_tests::upstream::Upstream;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

pki::cert_dir_newtype! {
    /// A test PKI in a temporary directory: `ca` (trusted by the gateway), `other-ca` (not), and
    /// the leaves they sign.
    Pki
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki(CertDir::new("gwutls-"));
        for ca in ["ca", "other-ca"] {
            pki.self_signed_ca(ca, pki::EC_P256, &format!("/CN=Upstream Test {ca}"));
        }
        // The upstream as it should be: its name and its address.
        pki.leaf(
            "good",
            "ca",
            "DNS:upstream.test,IP:127.0.0.1",
            "serverAuth",
            30,
        );
        pki.leaf("wrong-name", "ca", "DNS:elsewhere.test", "serverAuth", 30);
        // Valid until a day before it was made.
        pki.leaf(
            "expired",
            "ca",
            "DNS:upstream.test,IP:127.0.0.1",
            "serverAuth",
            -1,
        );
        pki.leaf(
            "stranger",
            "other-ca",
            "DNS:upstream.test,IP:127.0.0.1",
            "serverAuth",
            30,
        );
        pki.leaf("client", "ca", "DNS:gateway.test", "clientAuth", 30);
        pki.leaf(
            "stranger-client",
            "other-ca",
            "DNS:gateway.test",
            "clientAuth",
            30,
        );
        pki
    }

    /// `{stem}.pem` and `{stem}.key` (EC P-256, PKCS#8), signed by `ca`, with `sans`
    /// (openssl's syntax), valid for `days` from now (negative: expired already).
    fn leaf(&self, stem: &str, ca: &str, sans: &str, usage: &str, days: i32) {
        let ext = self.extensions(stem, sans, Some(usage));
        self.key_and_csr(stem, pki::EC_P256, &format!("/CN={stem}"));
        self.sign(
            &format!("{stem}.csr"),
            ca,
            &ext,
            days,
            &format!("{stem}.pem"),
        );
    }

    /// A rustls server config serving `{stem}.pem`, offering `alpn`, and requiring a client
    /// certificate signed by `client_ca` when given.
    fn server(
        &self,
        stem: &str,
        alpn: &[&str],
        client_ca: Option<&str>,
    ) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.path(&format!("{stem}.pem")))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{stem}.key"))).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(self.path(&format!("{ca}.pem"))).unwrap()
                {
                    roots.add(cert.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// A `tls = { ... }` line: `settings` (TOML key/value pairs) with file names made paths.
    fn tls(&self, settings: &[(&str, &str)]) -> String {
        let pairs: Vec<String> = settings
            .iter()
            .map(|(key, value)| match *key {
                "ca_file" | "client_cert" | "client_key" => {
                    format!("{key} = {:?}", self.path(value).to_string_lossy())
                }
                _ => format!("{key} = {value}"),
            })
            .collect();
        format!("tls = {{ {} }}", pairs.join(", "))
    }
}

/// One `[[upstreams]]` named `name` with one target and a route for `/{name}` to it.
fn routed(name: &str, target: SocketAddr, extra: &str) -> String {
    format!(
        "{}[[routes]]\nname = \"{name}\"\nupstream = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\n",
        upstream_toml(name, &[(target, 1)], extra)
    )
}

/// `gateway check-config` on a config with `proxy_toml`: (success, stdout + stderr).
fn check_config(dir: &Path, proxy_toml: &str) -> (bool, String) {
    let config = crate::proxy_support::config("127.0.0.1:1".parse().unwrap(), proxy_toml);
    crate::proxy_support::check_config(dir, &config)
}

#[test]
fn the_right_ca_and_name_get_through() {
    let pki = Pki::new();
    let upstream = Upstream::start_tls("secure", pki.server("good", &["http/1.1"], None));
    let ca = ("ca_file", "ca.pem");
    // The name in the certificate, given; or the target's IP address, checked as is.
    let cases = [
        (
            "named",
            pki.tls(&[ca, ("server_name", "\"upstream.test\"")]),
        ),
        ("address", pki.tls(&[ca])),
        ("tls13", pki.tls(&[ca, ("min_version", "\"1.3\"")])),
    ];
    let toml: String = cases
        .iter()
        .map(|(name, tls)| routed(name, upstream.address(), tls))
        .collect();
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    for (name, _) in &cases {
        for _ in 0..3 {
            let reply = client.get(&proxy.url(&format!("/{name}")), &[]);
            assert_eq!(reply.upstream(), "secure", "{name}: {reply:?}");
            assert_eq!(reply.json()["version"], "HTTP/1.1", "{name}");
        }
    }
    assert_eq!(upstream.hits(), 3 * cases.len());
}

#[test]
fn bad_upstream_certificates_are_a_502_with_their_own_code_and_reason() {
    let pki = Pki::new();
    let servers = [
        ("stranger", "stranger"),
        ("wrongname", "wrong-name"),
        ("expired", "expired"),
        ("sysroots", "good"),
    ];
    let upstreams: Vec<Upstream> = servers
        .iter()
        .map(|(name, stem)| Upstream::start_tls(name, pki.server(stem, &[], None)))
        .collect();
    let plain = Upstream::start("plain");
    let ca = ("ca_file", "ca.pem");
    let named = ("server_name", "\"upstream.test\"");
    // (route, target, tls settings, reason in the log)
    let cases = [
        (
            "stranger",
            upstreams[0].address(),
            vec![ca, named],
            "unknown issuer",
        ),
        (
            "wrongname",
            upstreams[1].address(),
            vec![ca, named],
            "name mismatch",
        ),
        // Without server_name the IP address is checked, and the certificate has none.
        ("wrongip", upstreams[1].address(), vec![ca], "name mismatch"),
        (
            "expired",
            upstreams[2].address(),
            vec![ca, named],
            "expired",
        ),
        // The system's roots do not know the test CA.
        (
            "sysroots",
            upstreams[3].address(),
            vec![named],
            "unknown issuer",
        ),
        ("plain", plain.address(), vec![ca], "not TLS"),
    ];
    let eject = "consecutive_failures = 2\nejection_time = \"60s\"\n";
    let toml: String = cases
        .iter()
        .map(|(name, target, tls, _)| routed(name, *target, &format!("{}\n{eject}", pki.tls(tls))))
        .collect();
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    for (name, target, _, reason) in &cases {
        for _ in 0..2 {
            let reply = client.get(&proxy.url(&format!("/{name}")), &[]);
            assert_eq!(reply.status, 502, "{name}: {reply:?}");
            assert_eq!(
                reply.json()["error"]["code"],
                "upstream_tls_failed",
                "{name}"
            );
        }
        // The log names the upstream, the target and the reason.
        let log = proxy.wait_for_log(&format!("TLS {reason}"));
        let line = log
            .lines()
            .find(|line| line.contains(&format!("{target} ({name})")) && line.contains("TLS "))
            .unwrap_or_else(|| panic!("{name}: no TLS failure logged for {target}:\n{log}"));
        assert!(line.contains(&format!("TLS {reason}")), "{name}: {line}");
        // It counts against the target: two in a row eject it, then no target is left.
        let reply = client.get(&proxy.url(&format!("/{name}")), &[]);
        assert_eq!(reply.status, 503, "{name}: {reply:?}");
        assert_eq!(
            reply.json()["error"]["code"],
            "no_upstream_target",
            "{name}"
        );
    }
    // Nothing reached the upstreams' HTTP layer.
    assert!(upstreams.iter().all(|upstream| upstream.hits() == 0));
}

#[test]
fn verify_false_accepts_any_certificate_and_check_config_warns() {
    let pki = Pki::new();
    let upstreams: Vec<Upstream> = ["stranger", "wrong-name", "expired"]
        .iter()
        .map(|stem| Upstream::start_tls(stem, pki.server(stem, &[], None)))
        .collect();
    let toml: String = upstreams
        .iter()
        .enumerate()
        .map(|(at, upstream)| {
            routed(
                &format!("u{at}"),
                upstream.address(),
                &pki.tls(&[("verify", "false")]),
            )
        })
        .collect();
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    for (at, upstream) in upstreams.iter().enumerate() {
        let reply = client.get(&proxy.url(&format!("/u{at}")), &[]);
        assert_eq!(reply.upstream(), upstream.name());
    }
    let (ok, said) = check_config(pki.dir(), &toml);
    assert!(ok, "{said}");
    for at in 0..upstreams.len() {
        assert!(
            said.contains(&format!("upstreams[{at}].tls.verify = false")),
            "{said}"
        );
    }
}

#[test]
fn http2_is_chosen_by_alpn_and_grpc_goes_over_tls() {
    let pki = Pki::new();
    let both = Upstream::start_tls("both", pki.server("good", &["h2", "http/1.1"], None));
    let ca = ("ca_file", "ca.pem");
    // (route, extra settings, HTTP version the upstream sees)
    let cases = [
        (
            "offer",
            pki.tls(&[ca, ("alpn", "[\"h2\", \"http/1.1\"]")]),
            "HTTP/2.0",
        ),
        ("offerh2", pki.tls(&[ca, ("alpn", "[\"h2\"]")]), "HTTP/2.0"),
        ("default", pki.tls(&[ca]), "HTTP/1.1"),
        (
            "only",
            pki.tls(&[ca, ("alpn", "[\"http/1.1\"]")]),
            "HTTP/1.1",
        ),
        (
            "h2",
            format!("protocol = \"h2\"\n{}", pki.tls(&[ca])),
            "HTTP/2.0",
        ),
    ];
    let toml: String = cases
        .iter()
        .map(|(name, tls, _)| routed(name, both.address(), tls))
        .collect();
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    for (name, _, version) in &cases {
        for _ in 0..3 {
            let reply = client.get(&proxy.url(&format!("/{name}")), &[]);
            assert_eq!(reply.json()["version"], *version, "{name}: {reply:?}");
        }
    }
    // gRPC from an HTTP/2 client goes on over HTTP/2, here h2 over TLS, even to an
    // upstream whose other requests use HTTP/1.1.
    let grpc = RustClient::http2().send(
        "POST",
        &proxy.url("/default/pkg.Service/Call"),
        &[("content-type", "application/grpc"), ("te", "trailers")],
        hyper::body::Bytes::from_static(b"\0\0\0\0\0"),
    );
    assert_eq!(grpc.json()["version"], "HTTP/2.0", "{grpc:?}");
}

#[test]
fn health_checks_speak_tls_and_take_a_target_out_and_back() {
    let pki = Pki::new();
    let secure = Upstream::start_tls("secure", pki.server("good", &[], None));
    let stranger = Upstream::start_tls("stranger", pki.server("stranger", &[], None));
    let check = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", \
                 healthy_threshold = 2, unhealthy_threshold = 2 }";
    let tls = pki.tls(&[("ca_file", "ca.pem"), ("server_name", "\"upstream.test\"")]);
    let toml = routed("secure", secure.address(), &format!("{tls}\n{check}"))
        + &routed("stranger", stranger.address(), &format!("{tls}\n{check}"));
    let proxy = Proxy::start(&toml);
    // Probes reach the TLS upstream's HTTP layer (a plain probe would not).
    wait_until("health probes over TLS", || secure.hits_on("/healthz") >= 3);
    let client = RustClient::http1();
    assert_eq!(client.get(&proxy.url("/secure"), &[]).upstream(), "secure");
    secure.set_status_on("/healthz", 500);
    proxy.wait_for_log("target unhealthy");
    wait_until("the target out of rotation", || {
        client.get(&proxy.url("/secure"), &[]).status == 503
    });
    secure.set_status_on("/healthz", 200);
    proxy.wait_for_log("target healthy again");
    assert_eq!(client.get(&proxy.url("/secure"), &[]).upstream(), "secure");
    // A target whose certificate fails is unhealthy, and the log says why.
    let reason = format!("{}/healthz: TLS unknown issuer", stranger.address());
    let log = proxy.wait_for_log(&reason);
    let line = log.lines().find(|line| line.contains(&reason)).unwrap();
    assert!(
        line.contains("target unhealthy") && line.contains("stranger"),
        "{line}"
    );
    assert_eq!(stranger.hits(), 0);
}

#[test]
fn client_certificates_reach_a_rustls_upstream_that_requires_them() {
    let pki = Pki::new();
    let upstream = Upstream::start_tls("mtls", pki.server("good", &[], Some("ca")));
    let ca = ("ca_file", "ca.pem");
    let cases = [
        (
            "with",
            pki.tls(&[
                ca,
                ("client_cert", "client.pem"),
                ("client_key", "client.key"),
            ]),
            200,
        ),
        ("without", pki.tls(&[ca]), 502),
        (
            "stranger",
            pki.tls(&[
                ca,
                ("client_cert", "stranger-client.pem"),
                ("client_key", "stranger-client.key"),
            ]),
            502,
        ),
    ];
    let toml: String = cases
        .iter()
        .map(|(name, tls, _)| routed(name, upstream.address(), tls))
        .collect();
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    for (name, _, status) in &cases {
        let reply = client.get(&proxy.url(&format!("/{name}")), &[]);
        assert_eq!(reply.status, *status, "{name}: {reply:?}");
        if *status == 502 {
            assert_eq!(
                reply.json()["error"]["code"],
                "upstream_tls_failed",
                "{name}"
            );
        }
    }
    proxy.wait_for_log("TLS refused by the upstream");
    assert_eq!(upstream.hits(), 1);
}

/// nginx (without its service) serving HTTPS on a free port, requiring a client certificate
/// signed by the test CA (`ssl_verify_client on`); killed when dropped.
struct Nginx {
    child: Child,
    address: SocketAddr,
}

impl Nginx {
    fn start(pki: &Pki) -> Nginx {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = pki.dir();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir};\n proxy_temp_path {dir};\n\
             fastcgi_temp_path {dir};\n uwsgi_temp_path {dir};\n scgi_temp_path {dir};\n\
             server {{\n  listen {address} ssl;\n  ssl_certificate {dir}/good.pem;\n\
             ssl_certificate_key {dir}/good.key;\n  ssl_client_certificate {dir}/ca.pem;\n\
             ssl_verify_client on;\n\
             location / {{ return 200 \"nginx $ssl_client_s_dn\\n\"; }}\n }}\n}}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running nginx");
        wait_until("nginx listening", || {
            std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
        });
        Nginx { child, address }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn client_certificates_reach_nginx_with_ssl_verify_client() {
    let pki = Pki::new();
    let nginx = Nginx::start(&pki);
    let ca = ("ca_file", "ca.pem");
    let named = ("server_name", "\"upstream.test\"");
    let with = pki.tls(&[
        ca,
        named,
        ("client_cert", "client.pem"),
        ("client_key", "client.key"),
    ]);
    let without = pki.tls(&[ca, named]);
    let stranger = pki.tls(&[
        ca,
        named,
        ("client_cert", "stranger-client.pem"),
        ("client_key", "stranger-client.key"),
    ]);
    let toml = routed("with", nginx.address, &with)
        + &routed("without", nginx.address, &without)
        + &routed("stranger", nginx.address, &stranger);
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    let reply = client.get(&proxy.url("/with"), &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("nginx CN=client"), "{reply:?}");
    // nginx finishes the handshake and answers 400 itself: the gateway passes its answer on.
    let reply = client.get(&proxy.url("/without"), &[]);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.body.contains("No required SSL certificate was sent"),
        "{reply:?}"
    );
    let reply = client.get(&proxy.url("/stranger"), &[]);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.body.contains("The SSL certificate error"),
        "{reply:?}"
    );
}

#[test]
fn a_renewed_ca_file_is_read_on_reload() {
    let pki = Pki::new();
    let upstream = Upstream::start_tls("secure", pki.server("good", &[], None));
    std::fs::copy(pki.path("other-ca.pem"), pki.path("trust.pem")).unwrap();
    let toml = routed(
        "secure",
        upstream.address(),
        &pki.tls(&[("ca_file", "trust.pem")]),
    );
    let proxy = Proxy::start(&toml);
    let client = RustClient::http1();
    let reply = client.get(&proxy.url("/secure"), &[]);
    assert_eq!(
        reply.json()["error"]["code"],
        "upstream_tls_failed",
        "{reply:?}"
    );
    // The same config, the file renewed: a reload reads it.
    std::fs::copy(pki.path("ca.pem"), pki.path("trust.pem")).unwrap();
    proxy.reload(&toml);
    wait_until("the renewed CA in use", || {
        client.get(&proxy.url("/secure"), &[]).status == 200
    });
    assert_eq!(client.get(&proxy.url("/secure"), &[]).upstream(), "secure");
}

#[test]
fn tls_config_errors_name_the_key_and_the_reason() {
    let pki = Pki::new();
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let ca = ("ca_file", "ca.pem");
    // (settings, key named, reason)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            pki.tls(&[("ca_file", "absent.pem")]),
            "tls.ca_file",
            "absent.pem",
        ),
        (
            pki.tls(&[("ca_file", "client.key")]),
            "tls.ca_file",
            "holds no PEM certificate",
        ),
        (
            pki.tls(&[
                ca,
                ("client_cert", "client.pem"),
                ("client_key", "absent.key"),
            ]),
            "tls.client_key",
            "absent.key",
        ),
        (
            pki.tls(&[
                ca,
                ("client_cert", "absent.pem"),
                ("client_key", "client.key"),
            ]),
            "tls.client_cert",
            "absent.pem",
        ),
        (
            pki.tls(&[
                ca,
                ("client_cert", "client.pem"),
                ("client_key", "good.key"),
            ]),
            "tls.client_key",
            "does not match",
        ),
        (
            pki.tls(&[ca, ("client_cert", "client.pem")]),
            "tls.client_key",
            "needed with client_cert",
        ),
        (
            pki.tls(&[ca, ("client_key", "client.key")]),
            "tls.client_cert",
            "needed with client_key",
        ),
        (
            pki.tls(&[ca, ("min_version", "\"1.1\"")]),
            "tls.min_version",
            "\"1.1\"",
        ),
        (
            pki.tls(&[ca, ("min_version", "\"TLSv1.3\"")]),
            "tls.min_version",
            "\"TLSv1.3\"",
        ),
        (
            pki.tls(&[ca, ("min_version", "\"\"")]),
            "tls.min_version",
            "not a TLS version",
        ),
        (
            pki.tls(&[ca, ("alpn", "[\"h3\"]")]),
            "tls.alpn[0]",
            "\"h3\"",
        ),
        (
            pki.tls(&[ca, ("alpn", "[\"h2\", \"HTTP/1.1\"]")]),
            "tls.alpn[1]",
            "\"HTTP/1.1\"",
        ),
        (
            pki.tls(&[ca, ("alpn", "[\"http/1.0\"]")]),
            "tls.alpn[0]",
            "not an HTTP version",
        ),
        (
            pki.tls(&[ca, ("alpn", "[\"h2\", \"h2\"]")]),
            "tls.alpn[1]",
            "listed twice",
        ),
        (pki.tls(&[ca, ("alpn", "[]")]), "tls.alpn", "empty"),
        (
            pki.tls(&[ca, ("server_name", "\"not a name\"")]),
            "tls.server_name",
            "not a DNS name",
        ),
        (
            pki.tls(&[ca, ("sni", "\"a.test\"")]),
            "sni",
            "unknown field",
        ),
        (
            format!(
                "protocol = \"h2\"\n{}",
                pki.tls(&[ca, ("alpn", "[\"http/1.1\"]")])
            ),
            "tls.alpn",
            "needs \"h2\"",
        ),
        (
            format!("protocol = \"h2c\"\n{}", pki.tls(&[ca])),
            "upstreams[0].tls",
            "h2c",
        ),
        (
            "protocol = \"h2\"".to_owned(),
            "upstreams[0].protocol",
            "needs tls",
        ),
    ];
    for (settings, key, reason) in &cases {
        let (ok, said) = check_config(pki.dir(), &routed("u", target, settings));
        assert!(!ok, "{settings}: accepted:\n{said}");
        assert!(
            said.contains(key) && said.contains(reason),
            "{settings}: {said}"
        );
    }
    // And the daemon refuses to start with one.
    let log = gateway_tests::daemon::run_expect_failure(
        None,
        &crate::proxy_support::config(
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            &routed("u", target, &cases[0].0),
        ),
    );
    assert!(log.contains("upstreams[0].tls.ca_file"), "{log}");
}
