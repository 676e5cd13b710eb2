//! TLS termination on `https` listeners, with certificates made by the real `openssl` CLI and
//! real `curl` clients: the certificate chosen by SNI (exact, wildcard, default), ALPN h2 and
//! http/1.1, TLS 1.2 and 1.3, `X-Forwarded-Proto: https`, certificate reload (and a broken
//! one kept out), startup errors naming the key and the file, and the handshake timeout.
//! Loopback only; no kernel features needed.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use crate::proxy_support::{
    IO_TIMEOUT, check_config, free_port,
    pki::{self, CertDir},
    read_until_close,
};
use gateway_tests::{Gateway, daemon::run_expect_failure, upstream::Upstream};

/// A private key as one of the PEM forms the gateway accepts.
#[derive(Clone, Copy)]
enum KeyKind {
    /// RSA 2048, PKCS#8 (`BEGIN PRIVATE KEY`).
    Rsa,
    /// RSA 2048, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1,
    /// EC P-256, PKCS#8.
    EcPkcs8,
    /// EC P-256, SEC1 (`BEGIN EC PRIVATE KEY`).
    EcSec1,
}

pki::cert_dir_newtype! {
    /// A test CA and the leaf certificates it signs, in a temporary directory.
    Pki
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki(CertDir::new("gwtls-"));
        pki.self_signed_ca("ca", pki::RSA_2048, "/CN=Gateway Test CA");
        pki
    }

    /// Writes `<stem>.pem` (the leaf, then the CA: a chain) and `<stem>.key`, for `subject`
    /// with `names` as DNS subject alternative names, valid for `days` (0: expires at once).
    fn leaf(&self, stem: &str, subject: &str, names: &[&str], key: KeyKind, days: i32) {
        let key_file = format!("{stem}.key");
        match key {
            KeyKind::Rsa | KeyKind::RsaPkcs1 => self.openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key_file,
            ]),
            KeyKind::EcPkcs8 | KeyKind::EcSec1 => self.ec_p256_key(&key_file),
        }
        let traditional = format!("{stem}.traditional");
        match key {
            KeyKind::EcSec1 => {
                self.openssl(&["ec", "-in", &key_file, "-out", &traditional]);
            }
            KeyKind::RsaPkcs1 => self.openssl(&[
                "rsa",
                "-traditional",
                "-in",
                &key_file,
                "-out",
                &traditional,
            ]),
            KeyKind::Rsa | KeyKind::EcPkcs8 => {}
        }
        if let KeyKind::EcSec1 | KeyKind::RsaPkcs1 = key {
            std::fs::rename(self.path(&traditional), self.path(&key_file)).unwrap();
            let pem = std::fs::read_to_string(self.path(&key_file)).unwrap();
            assert!(
                pem.starts_with("-----BEGIN EC PRIVATE KEY-----")
                    || pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
                "{pem}"
            );
        }
        let sans: Vec<String> = names.iter().map(|name| format!("DNS:{name}")).collect();
        let ext = self.extensions(stem, &sans.join(","), None);
        let csr = format!("{stem}.csr");
        let leaf = format!("{stem}.leaf");
        self.openssl(&[
            "req", "-new", "-key", &key_file, "-subj", subject, "-out", &csr,
        ]);
        self.sign(&csr, "ca", &ext, days, &leaf);
        let chain = std::fs::read_to_string(self.path(&leaf)).unwrap()
            + &std::fs::read_to_string(self.path("ca.pem")).unwrap();
        std::fs::write(self.path(&format!("{stem}.pem")), chain).unwrap();
    }

    /// The three certificates most tests serve: two names and a wildcard.
    fn standard() -> Pki {
        let pki = Pki::new();
        pki.leaf(
            "api",
            "/CN=api.example.com",
            &["api.example.com"],
            KeyKind::Rsa,
            30,
        );
        pki.leaf(
            "www",
            "/CN=www.example.com",
            &["www.example.com"],
            KeyKind::EcSec1,
            30,
        );
        pki.leaf(
            "star",
            "/CN=star.example.com",
            &["*.example.com"],
            KeyKind::EcPkcs8,
            30,
        );
        pki
    }

    /// A `[[listeners]]` certificate entry.
    fn entry(&self, cert: &str, key: &str, names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
        format!(
            "[[listeners.tls.certificates]]\ncert = {:?}\nkey = {:?}\nnames = [{}]\n",
            self.path_str(cert),
            self.path_str(key),
            names.join(", ")
        )
    }

    fn standard_entries(&self) -> String {
        self.entry("api.pem", "api.key", &["api.example.com"])
            + &self.entry("www.pem", "www.key", &["www.example.com"])
            + &self.entry("star.pem", "star.key", &["*.example.com"])
    }
}

/// A gateway config with one https listener on `port`; `tls_entries` are the
/// `[[listeners.tls.certificates]]` tables and `rest` the upstreams and routes.
fn https_config(port: u16, default: Option<&str>, tls_entries: &str, rest: &str) -> String {
    let default = default.map_or(String::new(), |name| format!("default = {name:?}\n"));
    format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\n[xdp]\nmode = \"off\"\n\
         [limits]\ntls_handshake_timeout = \"1s\"\n\
         [[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"https\"\n\
         [listeners.tls]\n{default}{tls_entries}{rest}"
    )
}

fn echo_routes(upstream: &Upstream) -> String {
    format!(
        "[[upstreams]]\nname = \"echo\"\ntargets = [{{ address = \"{}\" }}]\n\
         [[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        upstream.address()
    )
}

/// A gateway serving the standard certificates (default: api.example.com) in front of an echo.
struct Lab {
    pki: Pki,
    _upstream: Upstream,
    gateway: Gateway,
    port: u16,
}

impl Lab {
    fn start() -> Lab {
        let pki = Pki::standard();
        let upstream = Upstream::start("echo");
        let port = free_port();
        let config = https_config(
            port,
            Some("api.example.com"),
            &pki.standard_entries(),
            &echo_routes(&upstream),
        );
        let gateway = Gateway::start(None, &config);
        Lab {
            pki,
            _upstream: upstream,
            gateway,
            port,
        }
    }

    /// curl to `https://<name>:<port>/tls` resolving `name` to loopback (so SNI is `name`),
    /// verifying against the test CA.
    fn fetch(&self, name: &str, extra: &[&str]) -> Fetch {
        let resolve = format!("{name}:{}:127.0.0.1", self.port);
        let url = format!("https://{name}:{}/tls", self.port);
        let cacert = self.pki.path_str("ca.pem");
        let mut args = vec!["--cacert", &cacert, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        fetch(&args)
    }

    /// `gateway reload`: its exit status and what it printed.
    fn reload(&self) -> (bool, String) {
        let output = self.gateway.cli(&["reload"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    }
}

/// What one curl run got: `http_version http_code`, the body, and its `-v` log.
struct Fetch {
    version_status: String,
    body: String,
    log: String,
}

impl Fetch {
    /// The server certificate's subject, as curl printed it.
    fn subject(&self) -> &str {
        self.log
            .lines()
            .find_map(|line| {
                line.trim_start_matches(['*', ' '])
                    .strip_prefix("subject: ")
            })
            .unwrap_or_else(|| panic!("no certificate subject in curl's log:\n{}", self.log))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.body, self.log))
    }
}

fn fetch(args: &[&str]) -> Fetch {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let output = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "20",
            "-w",
            "%{http_version} %{http_code}",
            "-o",
        ])
        .arg(&body)
        .args(args)
        .output()
        .expect("running curl");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "curl {args:?} failed:\n{log}");
    Fetch {
        version_status: String::from_utf8_lossy(&output.stdout).into_owned(),
        body: std::fs::read_to_string(body).unwrap_or_default(),
        log,
    }
}

#[test]
fn sni_chooses_the_certificate_and_alpn_the_http_version() {
    let lab = Lab::start();

    let api = lab.fetch("api.example.com", &["--http2"]);
    assert_eq!(api.version_status, "2 200", "{}", api.log);
    assert!(api.subject().contains("CN=api.example.com"), "{}", api.log);
    assert!(api.log.contains("ALPN: server accepted h2"), "{}", api.log);
    // Proxied to the real upstream, which saw the request came over TLS.
    let echo = api.json();
    assert_eq!(echo["upstream"], "echo");
    assert_eq!(echo["path"], "/tls");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
    let forwarded = echo["headers"]["forwarded"].as_str().unwrap();
    assert!(forwarded.contains("proto=https"), "{forwarded}");

    // An EC (SEC1) key, over HTTP/1.1 by ALPN.
    let www = lab.fetch("www.example.com", &["--http1.1"]);
    assert_eq!(www.version_status, "1.1 200", "{}", www.log);
    assert!(www.subject().contains("CN=www.example.com"), "{}", www.log);
    assert!(
        www.log.contains("ALPN: server accepted http/1.1"),
        "{}",
        www.log
    );
    assert_eq!(www.json()["headers"]["x-forwarded-proto"], "https");

    // The wildcard (an EC PKCS#8 key) for any one label under example.com; curl verifies
    // the name against the certificate, so the right one was served.
    for name in ["shop.example.com", "EDGE.example.com"] {
        let star = lab.fetch(name, &["--http2"]);
        assert_eq!(star.version_status, "2 200", "{}", star.log);
        assert!(
            star.subject().contains("CN=star.example.com"),
            "{}",
            star.log
        );
    }
}

#[test]
fn the_default_certificate_serves_clients_without_sni_or_with_unknown_names() {
    let lab = Lab::start();
    // curl sends no SNI for an IP address; the default certificate does not name it: -k.
    let url = format!("https://127.0.0.1:{}/", lab.port);
    let bare = fetch(&["-k", "--http2", &url]);
    assert_eq!(bare.version_status, "2 200", "{}", bare.log);
    assert!(
        bare.subject().contains("CN=api.example.com"),
        "{}",
        bare.log
    );
    // A name no certificate lists, and two labels under the wildcard.
    for name in ["other.test", "a.b.example.com"] {
        let unknown = lab.fetch(name, &["-k"]);
        assert_eq!(unknown.version_status, "2 200", "{}", unknown.log);
        assert!(
            unknown.subject().contains("CN=api.example.com"),
            "{name}: {}",
            unknown.log
        );
    }
}

#[test]
fn tls_1_2_and_1_3_are_both_served() {
    let lab = Lab::start();
    let tls12 = lab.fetch(
        "api.example.com",
        &["--tlsv1.2", "--tls-max", "1.2", "--http2"],
    );
    assert_eq!(tls12.version_status, "2 200", "{}", tls12.log);
    assert!(
        tls12.log.contains("SSL connection using TLSv1.2"),
        "{}",
        tls12.log
    );
    let tls12 = lab.fetch(
        "www.example.com",
        &["--tlsv1.2", "--tls-max", "1.2", "--http1.1"],
    );
    assert_eq!(tls12.version_status, "1.1 200", "{}", tls12.log);
    assert!(
        tls12.log.contains("SSL connection using TLSv1.2"),
        "{}",
        tls12.log
    );

    let tls13 = lab.fetch("api.example.com", &["--tlsv1.3"]);
    assert_eq!(tls13.version_status, "2 200", "{}", tls13.log);
    assert!(
        tls13.log.contains("SSL connection using TLSv1.3"),
        "{}",
        tls13.log
    );
}

#[test]
fn reload_swaps_certificates_and_a_broken_one_is_kept_out() {
    let lab = Lab::start();
    assert!(
        lab.fetch("api.example.com", &[])
            .subject()
            .contains("CN=api.example.com")
    );

    // Renewed: same files, new certificate and key (now RSA, PKCS#1).
    lab.pki.leaf(
        "api",
        "/O=Renewed/CN=api.example.com",
        &["api.example.com"],
        KeyKind::RsaPkcs1,
        30,
    );
    let (ok, said) = lab.reload();
    assert!(ok, "reload failed: {said}\n{}", lab.gateway.log());
    let renewed = lab.fetch("api.example.com", &["--http2"]);
    assert!(renewed.subject().contains("Renewed"), "{}", renewed.log);
    assert_eq!(renewed.version_status, "2 200");

    // Broken: the key file now holds another certificate's key. Refused, the running
    // certificates keep serving.
    std::fs::copy(lab.pki.path("www.key"), lab.pki.path("api.key")).unwrap();
    let (ok, said) = lab.reload();
    assert!(!ok, "a mismatched key was accepted: {said}");
    assert!(
        said.contains("listeners[0].tls.certificates[0].key") && said.contains("api.key"),
        "{said}"
    );
    let kept = lab.fetch("api.example.com", &[]);
    assert!(kept.subject().contains("Renewed"), "{}", kept.log);
    assert_eq!(kept.version_status, "2 200");
    assert!(
        lab.gateway.log().contains("reload rejected"),
        "{}",
        lab.gateway.log()
    );
}

#[test]
fn missing_and_mismatched_keys_fail_startup_and_check_config_naming_key_and_file() {
    let pki = Pki::standard();
    let port = free_port();

    let missing = https_config(
        port,
        None,
        &pki.entry("api.pem", "absent.key", &["api.example.com"]),
        "",
    );
    let log = run_expect_failure(None, &missing);
    assert!(
        log.contains("listeners[0].tls.certificates[0].key") && log.contains("absent.key"),
        "{log}"
    );
    let (ok, said) = check_config(pki.dir(), &missing);
    assert!(
        !ok && said.contains("listeners[0].tls.certificates[0].key"),
        "{said}"
    );
    assert!(said.contains("absent.key"), "{said}");

    let missing_cert = https_config(port, None, &pki.entry("absent.pem", "api.key", &[]), "");
    let (ok, said) = check_config(pki.dir(), &missing_cert);
    assert!(
        !ok && said.contains("listeners[0].tls.certificates[0].cert"),
        "{said}"
    );
    assert!(said.contains("absent.pem"), "{said}");

    // The second certificate's key belongs to the first one.
    let mismatched = https_config(
        port,
        None,
        &(pki.entry("api.pem", "api.key", &["api.example.com"])
            + &pki.entry("www.pem", "api.key", &["www.example.com"])),
        "",
    );
    let log = run_expect_failure(None, &mismatched);
    assert!(
        log.contains("listeners[0].tls.certificates[1].key")
            && log.contains("does not match")
            && log.contains("www.pem"),
        "{log}"
    );
    let (ok, said) = check_config(pki.dir(), &mismatched);
    assert!(!ok && said.contains("does not match"), "{said}");

    // A name the certificate does not cover is legal but warned about.
    let uncovered = https_config(
        port,
        None,
        &pki.entry(
            "api.pem",
            "api.key",
            &["api.example.com", "shop.example.com"],
        ),
        "",
    );
    let (ok, said) = check_config(pki.dir(), &uncovered);
    assert!(ok, "{said}");
    assert!(
        said.contains("warning: listeners[0].tls.certificates[0].names[1]")
            && said.contains("api.pem")
            && said.contains("not valid for \"shop.example.com\""),
        "{said}"
    );
    assert!(!said.contains("names[0]"), "{said}");

    // An expired certificate is legal but an error-level line, naming the key and the file.
    pki.leaf(
        "old",
        "/CN=old.example.com",
        &["old.example.com"],
        KeyKind::EcPkcs8,
        0,
    );
    std::thread::sleep(Duration::from_millis(1100));
    let expired = https_config(port, None, &pki.entry("old.pem", "old.key", &[]), "");
    let (ok, said) = check_config(pki.dir(), &expired);
    assert!(ok, "{said}");
    assert!(
        said.contains("error: listeners[0].tls.certificates[0].cert")
            && said.contains("old.pem")
            && said.contains("expired on"),
        "{said}"
    );
}

#[test]
fn a_client_that_never_starts_the_handshake_is_closed_after_the_timeout() {
    let lab = Lab::start();
    let address: SocketAddr = format!("127.0.0.1:{}", lab.port).parse().unwrap();
    let mut silent = TcpStream::connect_timeout(&address, IO_TIMEOUT).unwrap();
    // tls_handshake_timeout is 1s: closed well within this bound.
    let (got, closed) = read_until_close(&mut silent, Duration::from_secs(10));
    assert!(closed, "still open after 10s; read {got:?}");
    assert!(got.is_empty(), "{got:?}");
    // The listener still serves.
    assert_eq!(lab.fetch("api.example.com", &[]).version_status, "2 200");
}

#[test]
fn a_self_signed_certificate_serves_https_with_no_files() {
    let upstream = Upstream::start("echo");
    let port = free_port();
    let entry = "[[listeners.tls.certificates]]\nself_signed = true\nnames = [\"localhost\"]\n";
    let _gateway = Gateway::start(
        None,
        &https_config(port, None, entry, &echo_routes(&upstream)),
    );
    let url = format!("https://localhost:{port}/tls");
    let resolve = format!("localhost:{port}:127.0.0.1");
    // Trusted only when the client is told to: without -k curl refuses it (exit 60).
    let refused = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve", &resolve, &url])
        .output()
        .expect("running curl");
    assert_eq!(refused.status.code(), Some(60), "{refused:?}");
    let fetched = fetch(&["-k", "--http2", "--resolve", &resolve, &url]);
    assert_eq!(fetched.version_status, "2 200");
    assert_eq!(fetched.subject(), "CN=rcgen self signed cert");
    assert_eq!(fetched.json()["path"], "/tls");
}

#[test]
fn self_signed_is_instead_of_files_and_needs_names() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "self_signed = true\ncert = \"/etc/a.pem\"\nkey = \"/etc/a.key\"\nnames = [\"a.test\"]\n",
            "listeners[0].tls.certificates[0].self_signed: give either cert and key, or self_signed = true, not both",
        ),
        (
            "self_signed = true\n",
            "listeners[0].tls.certificates[0].names: a self_signed certificate needs the names it is for",
        ),
        (
            "cert = \"/etc/a.pem\"\nnames = [\"a.test\"]\n",
            "listeners[0].tls.certificates[0].key: missing: give cert and key (PEM files), or self_signed = true",
        ),
    ];
    for (entry, expected) in cases {
        let entry = format!("[[listeners.tls.certificates]]\n{entry}");
        let (ok, text) = check_config(dir.path(), &https_config(free_port(), None, &entry, ""));
        assert!(!ok, "{entry} was accepted:\n{text}");
        assert!(
            text.contains(expected),
            "{entry}: wanted {expected:?} in\n{text}"
        );
    }
}
