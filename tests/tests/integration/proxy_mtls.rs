//! Client certificates at `https` listeners (`client_auth`), with a PKI made by the real
//! `openssl` CLI (`openssl ca`, a CRL from `openssl ca -gencrl`) and real `curl` clients:
//! `required` refuses a missing, foreign, revoked or expired certificate in the handshake;
//! `optional` lets clients without one through to routes that do not need one (401
//! `client_cert_required` on those that do); the identity reaches `authorize`, rate limits
//! and the access log; `X-Forwarded-Client-Cert` reaches the upstream in Envoy's format and a
//! client's own copy never does, in any spelling, on any listener. Loopback only.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::proxy_support::{
    RustClient, free_port,
    pki::{self, CertDir},
    raw_exchange, raw_status,
};
use gateway_tests::{Gateway, daemon::run_expect_failure, upstream::Upstream};
use sha2::Digest as _;

pki::cert_dir_newtype! {
    /// A CA run by `openssl ca` (with a database, so it can revoke and make CRLs), a second
    /// unrelated CA, and the certificates they sign, in a temporary directory.
    Pki
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki(CertDir::new("gwmtls-"));
        for ca in ["ca", "other"] {
            std::fs::create_dir_all(pki.path(&format!("{ca}.db/new"))).unwrap();
            std::fs::write(pki.path(&format!("{ca}.db/index.txt")), "").unwrap();
            std::fs::write(pki.path(&format!("{ca}.db/serial")), "1000\n").unwrap();
            std::fs::write(pki.path(&format!("{ca}.db/crlnumber")), "1000\n").unwrap();
            std::fs::write(pki.path(&format!("{ca}.cnf")), pki.ca_config(ca)).unwrap();
            pki.self_signed_ca(
                ca,
                pki::RSA_2048,
                &format!("/O=Gateway Test/CN=mTLS {ca} CA"),
            );
        }
        // The listener's own certificate, signed by the same CA as the good clients.
        pki.issue(
            "ca",
            "server",
            "/CN=mtls.test",
            "DNS:mtls.test",
            "serverAuth",
            None,
        );
        pki.issue(
            "ca",
            "alice",
            "/O=Example/CN=alice",
            "DNS:alice.example.com,URI:spiffe://example.com/alice,email:alice@example.com",
            "clientAuth",
            None,
        );
        pki.issue(
            "ca",
            "bob",
            "/O=Example/CN=bob",
            "DNS:bob.example.com,URI:spiffe://example.com/bob",
            "clientAuth",
            None,
        );
        pki.issue(
            "ca",
            "revoked",
            "/O=Example/CN=revoked",
            "DNS:revoked.example.com",
            "clientAuth",
            None,
        );
        pki.issue(
            "ca",
            "expired",
            "/O=Example/CN=expired",
            "DNS:expired.example.com",
            "clientAuth",
            Some(("20200101000000Z", "20200102000000Z")),
        );
        pki.issue(
            "other",
            "stranger",
            "/O=Example/CN=alice",
            "DNS:alice.example.com",
            "clientAuth",
            None,
        );
        pki.revoke("revoked");
        pki
    }

    fn ca_config(&self, ca: &str) -> String {
        let db = self.path(&format!("{ca}.db"));
        format!(
            "[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = {db}/index.txt\n\
             new_certs_dir = {db}/new\ncertificate = {dir}/{ca}.pem\nprivate_key = {dir}/{ca}.key\n\
             serial = {db}/serial\ncrlnumber = {db}/crlnumber\ndefault_md = sha256\n\
             default_days = 30\ndefault_crl_days = 30\npolicy = any\nunique_subject = no\n\
             [any]\norganizationName = optional\ncommonName = supplied\n",
            db = db.display(),
            dir = self.dir().display(),
        )
    }

    /// `<stem>.pem` and `<stem>.key`, signed by `ca` with these SANs and extended key
    /// usage; `dates` (start, end) instead of 30 days from now.
    fn issue(
        &self,
        ca: &str,
        stem: &str,
        subject: &str,
        sans: &str,
        usage: &str,
        dates: Option<(&str, &str)>,
    ) {
        self.key_and_csr(stem, pki::RSA_2048, subject);
        let (csr, ext) = (
            format!("{stem}.csr"),
            self.extensions(stem, sans, Some(usage)),
        );
        let config = format!("{ca}.cnf");
        let out = format!("{stem}.pem");
        let mut args = vec![
            "ca", "-batch", "-notext", "-config", &config, "-in", &csr, "-out", &out, "-extfile",
            &ext,
        ];
        if let Some((start, end)) = dates {
            args.extend(["-startdate", start, "-enddate", end]);
        }
        self.openssl(&args);
    }

    /// Revokes `<stem>.pem` and writes the CA's CRL again (`crl.pem`).
    fn revoke(&self, stem: &str) {
        self.openssl(&["ca", "-config", "ca.cnf", "-revoke", &format!("{stem}.pem")]);
        self.openssl(&["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"]);
    }

    /// What `X-Forwarded-Client-Cert` must say for `<stem>.pem`: the SHA-256 of its DER and
    /// its subject as openssl prints it in RFC 2253 form.
    fn hash_and_subject(&self, stem: &str) -> (String, String) {
        let pem = std::fs::read_to_string(self.path(&format!("{stem}.pem"))).unwrap();
        let base64: String = pem
            .lines()
            .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE"))
            .skip(1)
            .take_while(|line| !line.starts_with("-----END"))
            .collect();
        let der = decode_base64(&base64);
        let subject = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(self.path(&format!("{stem}.pem")))
            .output()
            .unwrap();
        let subject = String::from_utf8(subject.stdout).unwrap();
        let subject = subject.trim().trim_start_matches("subject=").to_owned();
        (hex::encode(sha2::Sha256::digest(&der)), subject)
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        let value = ALPHABET.iter().position(|c| *c == byte).unwrap() as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// A gateway with one https listener (`client_auth` as given) and, for the spoofing test,
/// a plain one, in front of an echo upstream.
struct Lab {
    pki: Pki,
    upstream: Upstream,
    gateway: Gateway,
    port: u16,
    plain: SocketAddr,
    access_log: PathBuf,
}

impl Lab {
    /// A fresh PKI, `client_auth` in `mode` with the CA's CRL, and [`ROUTES`].
    fn with_crl(mode: &str) -> Lab {
        let pki = Pki::new();
        let crl = pki.path_str("crl.pem");
        Lab::start(pki, &format!("mode = {mode:?}, crl_file = {crl:?}"), ROUTES)
    }

    fn start(pki: Pki, client_auth: &str, routes: &str) -> Lab {
        let upstream = Upstream::start("echo");
        let (port, plain_port) = (free_port(), free_port());
        let access_log = pki.path("access.log");
        let config = lab_config(
            &pki,
            port,
            plain_port,
            &access_log,
            client_auth,
            routes,
            &upstream,
        );
        let gateway = Gateway::start(None, &config);
        Lab {
            pki,
            upstream,
            gateway,
            port,
            plain: format!("127.0.0.1:{plain_port}").parse().unwrap(),
            access_log,
        }
    }

    /// curl `https://mtls.test:<port><path>` with the client certificate `cert` (a stem)
    /// and `extra` arguments. `Err` with curl's log when the connection failed.
    fn fetch(&self, cert: Option<&str>, path: &str, extra: &[&str]) -> Result<Fetched, String> {
        let resolve = format!("mtls.test:{}:127.0.0.1", self.port);
        let url = format!("https://mtls.test:{}{path}", self.port);
        let cacert = self.pki.path_str("ca.pem");
        let mut args: Vec<String> = vec!["--cacert".into(), cacert, "--resolve".into(), resolve];
        if let Some(stem) = cert {
            args.extend([
                "--cert".into(),
                self.pki.path_str(&format!("{stem}.pem")),
                "--key".into(),
                self.pki.path_str(&format!("{stem}.key")),
            ]);
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args.push(url);
        run_curl(&args)
    }

    /// The access log's lines so far, parsed (bounded wait for `count` of them).
    fn log_lines(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            if lines.len() >= count || std::time::Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `gateway reload`, which must succeed.
    fn reload(&self) {
        let output = self.gateway.cli(&["reload"]);
        assert!(
            output.status.success(),
            "reload: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn lab_config(
    pki: &Pki,
    port: u16,
    plain_port: u16,
    access_log: &Path,
    client_auth: &str,
    routes: &str,
    upstream: &Upstream,
) -> String {
    format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\n[xdp]\nmode = \"off\"\n\
         [access_log]\npath = {log:?}\n\
         [[listeners]]\nname = \"plain\"\naddress = \"127.0.0.1:{plain_port}\"\n\
         [[listeners]]\nname = \"mtls\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"https\"\n\
         client_auth = {{ ca_file = {ca:?}, {client_auth} }}\n\
         [[listeners.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\nnames = [\"mtls.test\"]\n\
         [[upstreams]]\nname = \"echo\"\ntargets = [{{ address = \"{upstream}\" }}]\n{routes}",
        log = access_log.display().to_string(),
        ca = pki.path_str("ca.pem"),
        cert = pki.path_str("server.pem"),
        key = pki.path_str("server.key"),
        upstream = upstream.address(),
    )
}

/// What curl got: the status and the body.
#[derive(Debug)]
struct Fetched {
    status: u16,
    body: String,
}

impl Fetched {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The echo upstream's view of one request header (`None`: it did not get it).
    fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

fn run_curl(args: &[String]) -> Result<Fetched, String> {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "%{http_code}", "-o"])
        .arg(&body)
        .args(args)
        .output()
        .expect("running curl");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(Fetched {
        status: String::from_utf8_lossy(&output.stdout).parse().unwrap(),
        body: std::fs::read_to_string(body).unwrap_or_default(),
    })
}

const ROUTES: &str = "[[routes]]\nname = \"open\"\nupstream = \"echo\"\nmatch = { path_prefix = \"/open\" }\n\
     [[routes]]\nname = \"cert\"\nupstream = \"echo\"\nmatch = { path_prefix = \"/cert\" }\n\
     auth = { client_cert = true }\n\
     [[routes]]\nname = \"alice-only\"\nupstream = \"echo\"\nmatch = { path_prefix = \"/alice\" }\n\
     auth = { client_cert = true }\nauthorize = { client_certs = [\"CN=alice,O=Example\"] }\n";

/// Clients a `required` listener must refuse during the handshake.
const REFUSED: [(Option<&str>, &str); 4] = [
    (None, "no certificate"),
    (
        Some("stranger"),
        "a certificate from another CA (same subject as alice)",
    ),
    (Some("revoked"), "a certificate on the CRL"),
    (Some("expired"), "an expired certificate"),
];

#[test]
fn required_mode_admits_valid_certificates_and_refuses_the_rest_in_the_handshake() {
    let lab = Lab::with_crl("required");
    for version in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
        let good = lab.fetch(Some("alice"), "/open", version).unwrap();
        assert_eq!(good.status, 200, "{version:?}: {good:?}");
        let (hash, subject) = lab.pki.hash_and_subject("alice");
        assert_eq!(subject, "CN=alice,O=Example");
        assert_eq!(
            good.upstream_header("x-forwarded-client-cert").as_deref(),
            Some(
                format!(
                    "Hash={hash};Subject=\"{subject}\";URI=spiffe://example.com/alice;\
                     DNS=alice.example.com"
                )
                .as_str()
            ),
            "{version:?}"
        );
        let hits = lab.upstream.hits();
        for (cert, why) in REFUSED {
            let refused = lab.fetch(cert, "/open", version);
            assert!(
                refused.is_err(),
                "{why} ({version:?}) got through: {refused:?}"
            );
        }
        assert_eq!(
            lab.upstream.hits(),
            hits,
            "{version:?}: a refused client was proxied"
        );
    }
}

#[test]
fn optional_mode_lets_clients_without_a_certificate_reach_only_routes_that_need_none() {
    let lab = Lab::with_crl("optional");
    // (certificate, path) -> status and, for errors, the code.
    let table: [(Option<&str>, &str, u16, Option<&str>); 9] = [
        (None, "/open", 200, None),
        (None, "/cert", 401, Some("client_cert_required")),
        (None, "/alice", 401, Some("client_cert_required")),
        (Some("alice"), "/open", 200, None),
        (Some("alice"), "/cert", 200, None),
        (Some("alice"), "/alice", 200, None),
        (Some("bob"), "/open", 200, None),
        (Some("bob"), "/cert", 200, None),
        (Some("bob"), "/alice", 403, Some("client_cert_not_allowed")),
    ];
    for (cert, path, status, code) in table {
        let got = lab.fetch(cert, path, &[]).unwrap();
        assert_eq!(got.status, status, "{cert:?} {path}: {got:?}");
        match code {
            Some(code) => assert_eq!(got.json()["error"]["code"], code, "{cert:?} {path}"),
            None => {
                // Whoever showed a certificate is named upstream; nobody else is.
                let xfcc = got.upstream_header("x-forwarded-client-cert");
                assert_eq!(xfcc.is_some(), cert.is_some(), "{cert:?} {path}: {xfcc:?}");
            }
        }
    }
    // Optional is not lax: a certificate that is sent must be valid.
    for (cert, why) in &REFUSED[1..] {
        let refused = lab.fetch(*cert, "/open", &[]);
        assert!(refused.is_err(), "{why} got through: {refused:?}");
    }
    // The identity is in the access log, beside the caller it became.
    let lines = lab.log_lines(table.len());
    let alice = lines
        .iter()
        .find(|line| line["path"] == "/alice" && line["status"] == 200)
        .unwrap_or_else(|| panic!("no /alice line: {lines:#?}"));
    assert_eq!(alice["client_cert"], "CN=alice,O=Example", "{alice}");
    assert_eq!(alice["identity"], "CN=alice,O=Example", "{alice}");
    let anonymous = lines
        .iter()
        .find(|line| line["path"] == "/cert" && line["status"] == 401)
        .unwrap_or_else(|| panic!("no 401 line: {lines:#?}"));
    assert!(
        anonymous.get("client_cert").is_none_or(|v| v.is_null()),
        "{anonymous}"
    );
    assert_eq!(anonymous["error"], "client_cert_required");
}

#[test]
fn a_chosen_san_is_the_identity_for_authorize_and_rate_limits() {
    let pki = Pki::new();
    let routes = "[[routes]]\nname = \"spiffe\"\nupstream = \"echo\"\n\
         auth = { client_cert = true }\n\
         authorize = { client_certs = [\"spiffe://example.com/alice\", \"spiffe://example.com/bob\"] }\n\
         rate_limits = [{ key = \"client_cert\", rate = \"2/hour\" }]\n";
    let lab = Lab::start(pki, "mode = \"required\", identity = \"san:uri\"", routes);
    // Two per certificate per hour: each certificate has its own bucket.
    for cert in ["alice", "bob"] {
        for _ in 0..2 {
            let got = lab.fetch(Some(cert), "/", &[]).unwrap();
            assert_eq!(got.status, 200, "{cert}: {got:?}");
        }
        let limited = lab.fetch(Some(cert), "/", &[]).unwrap();
        assert_eq!(limited.status, 429, "{cert}: {limited:?}");
    }
    let lines = lab.log_lines(6);
    assert!(
        lines
            .iter()
            .any(|line| line["client_cert"] == "spiffe://example.com/bob"),
        "{lines:#?}"
    );
}

#[test]
fn a_new_crl_takes_effect_on_reload() {
    let lab = Lab::with_crl("required");
    assert_eq!(lab.fetch(Some("bob"), "/open", &[]).unwrap().status, 200);
    lab.pki.revoke("bob");
    // Before the reload the running CRL holds; after it, bob is refused and alice is not.
    assert_eq!(lab.fetch(Some("bob"), "/open", &[]).unwrap().status, 200);
    lab.reload();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab.fetch(Some("bob"), "/open", &[]).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "bob still admitted after the reload; log:\n{}",
            lab.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.fetch(Some("alice"), "/open", &[]).unwrap().status, 200);
}

/// Whether `name` is the XFCC field to an upstream (which may map `_` to `-`).
fn is_xfcc(name: &str) -> bool {
    name.to_ascii_lowercase().replace('_', "-") == "x-forwarded-client-cert"
}

#[test]
fn a_client_sent_xfcc_never_reaches_the_upstream() {
    let pki = Pki::new();
    let lab = Lab::start(pki, "mode = \"optional\"", ROUTES);
    // Raw requests on the plain listener: every spelling and framing trick.
    let spoofs: &[&str] = &[
        "X-Forwarded-Client-Cert: Hash=evil;Subject=\"CN=admin\"\r\n",
        "x-forwarded-client-cert: Hash=evil\r\n",
        "X-FORWARDED-CLIENT-CERT: Hash=evil\r\n",
        "X-Forwarded-Client-Cert: Hash=evil\r\nX-Forwarded-Client-Cert: Subject=\"CN=admin\"\r\n",
        "X-Forwarded-Client-Cert: Hash=evil\r\nx-forwarded-client-cert: Hash=evil2\r\n",
        "X_Forwarded_Client_Cert: Hash=evil\r\n",
        "x_forwarded-client_cert: Hash=evil\r\n",
        "X-Forwarded-Client-Cert:\r\n",
        "X-Forwarded-Client-Cert: Hash=evil,Hash=evil2\r\n",
        // obs-fold: a continuation line (RFC 9112 section 5.2 lets a server refuse it).
        "X-Forwarded-Client-Cert: Hash=evil\r\n Subject=\"CN=admin\"\r\n",
        "X-Other: a\r\n\tX-Forwarded-Client-Cert: Hash=evil\r\n",
        // Whitespace before the colon is not a field name hyper accepts.
        "X-Forwarded-Client-Cert : Hash=evil\r\n",
    ];
    for spoof in spoofs {
        let request =
            format!("GET /open HTTP/1.1\r\nHost: mtls.test\r\n{spoof}Connection: close\r\n\r\n");
        let (raw, _) = raw_exchange(lab.plain, request.as_bytes(), Duration::from_secs(20));
        let status = raw_status(&raw);
        match status {
            Some(200) => {
                let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
                let echo: serde_json::Value = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("{spoof:?}: not JSON ({e}): {raw}"));
                let headers = echo["headers"].as_object().unwrap();
                assert!(
                    !headers.keys().any(|name| is_xfcc(name)),
                    "{spoof:?} reached the upstream: {headers:?}"
                );
                assert!(!body.contains("evil"), "{spoof:?}: {body}");
            }
            Some(400) => {}
            other => panic!("{spoof:?}: {other:?}\n{raw}"),
        }
    }
    // HTTP/1.1 and HTTP/2 (h2c) through a client library, fields repeated and respelled.
    let url = format!("http://{}/open", lab.plain);
    for client in [RustClient::http1(), RustClient::http2()] {
        let got = client.get(
            &url,
            &[
                ("x-forwarded-client-cert", "Hash=evil"),
                ("x-forwarded-client-cert", "Subject=\"CN=admin\""),
                ("x_forwarded_client_cert", "Hash=evil2"),
            ],
        );
        assert_eq!(got.status, 200, "{got:?}");
        let echo = got.json();
        let headers = echo["headers"].as_object().unwrap();
        assert!(!headers.keys().any(|name| is_xfcc(name)), "{headers:?}");
    }
    // Over TLS, HTTP/1.1 and HTTP/2, with and without a certificate: the upstream gets the
    // gateway's XFCC (or none), never the client's.
    let (hash, _) = lab.pki.hash_and_subject("alice");
    let spoof_args = [
        "-H",
        "X-Forwarded-Client-Cert: Hash=evil;Subject=\"CN=admin\"",
        "-H",
        "x_forwarded_client_cert: Hash=evil2",
        "-H",
        "X-FORWARDED-CLIENT-CERT: Hash=evil3",
    ];
    for version in ["--http1.1", "--http2"] {
        for cert in [None, Some("alice")] {
            let mut args = spoof_args.to_vec();
            args.push(version);
            let got = lab.fetch(cert, "/open", &args).unwrap();
            assert_eq!(got.status, 200, "{version} {cert:?}: {got:?}");
            assert!(
                !got.body.contains("evil"),
                "{version} {cert:?}: {}",
                got.body
            );
            let headers = got.json()["headers"].as_object().unwrap().clone();
            let xfcc: Vec<_> = headers.iter().filter(|(name, _)| is_xfcc(name)).collect();
            match cert {
                None => assert!(xfcc.is_empty(), "{version}: {xfcc:?}"),
                Some(_) => {
                    assert_eq!(xfcc.len(), 1, "{version}: {xfcc:?}");
                    let value = xfcc[0].1.as_str().unwrap();
                    assert!(value.starts_with(&format!("Hash={hash};")), "{value}");
                }
            }
        }
    }
}

#[test]
fn client_auth_errors_name_the_key() {
    let pki = Pki::new();
    let upstream = Upstream::start("echo");
    let not_pem = pki.path("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let access_log = pki.path("access.log");
    let ca = pki.path_str("ca.pem");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!(
                "mode = \"required\", crl_file = {:?}",
                pki.path_str("missing.crl")
            ),
            "",
            "listeners[1].client_auth.crl_file: cannot read",
        ),
        (
            format!(
                "mode = \"required\", crl_file = {:?}",
                not_pem.display().to_string()
            ),
            "",
            "listeners[1].client_auth.crl_file",
        ),
        (
            format!("mode = \"required\", crl_file = {ca:?}"),
            "",
            "listeners[1].client_auth.crl_file",
        ),
        ("mode = \"sometimes\"".into(), "", "mode"),
        (
            "mode = \"required\", identity = \"cn\"".into(),
            "",
            "identity",
        ),
        ("mode = \"required\", verify = false".into(), "", "verify"),
        (
            "mode = \"required\"".into(),
            "[[routes]]\nname = \"r\"\nupstream = \"echo\"\nauthorize = { client_certs = [\"CN=a\"] }\n",
            "routes[0].authorize.client_certs: needs a client certificate",
        ),
        (
            "mode = \"required\"".into(),
            "[[routes]]\nname = \"r\"\nupstream = \"echo\"\nrate_limits = [{ key = \"cert\", rate = \"1/s\" }]\n",
            "routes[0].rate_limits[0].key",
        ),
    ];
    for (client_auth, routes, expected) in &cases {
        let config = lab_config(
            &pki,
            free_port(),
            free_port(),
            &access_log,
            client_auth,
            routes,
            &upstream,
        );
        let output = run_expect_failure(None, &config);
        assert!(
            output.contains(expected),
            "{client_auth}: {expected:?} not in:\n{output}"
        );
    }
    // The CA file itself: missing, and not PEM.
    for (ca_file, expected) in [
        (
            pki.path_str("missing.pem"),
            "listeners[1].client_auth.ca_file: cannot read",
        ),
        (
            not_pem.display().to_string(),
            "listeners[1].client_auth.ca_file",
        ),
    ] {
        let config = lab_config(
            &pki,
            free_port(),
            free_port(),
            &access_log,
            "mode = \"required\"",
            "",
            &upstream,
        )
        .replace(
            &format!("ca_file = {ca:?}"),
            &format!("ca_file = {ca_file:?}"),
        );
        let output = run_expect_failure(None, &config);
        assert!(output.contains(expected), "{expected:?} not in:\n{output}");
    }
    // client_auth on a plain listener.
    let config = format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\n[xdp]\nmode = \"off\"\n\
         [[listeners]]\nname = \"plain\"\naddress = \"127.0.0.1:{}\"\n\
         client_auth = {{ ca_file = {ca:?}, mode = \"required\" }}\n",
        free_port()
    );
    let output = run_expect_failure(None, &config);
    assert!(
        output.contains("listeners[0].client_auth: only used with protocol = \"https\""),
        "{output}"
    );
}
