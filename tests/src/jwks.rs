//! Real keys and tokens for the auth tests, and a JWKS server.
//!
//! Keys are made by the `openssl` CLI (RSA 2048, EC P-256/P-384, Ed25519) and tokens are
//! signed by the `jsonwebtoken` crate, a standard JWT library. [`JwksServer`] serves a JWK set
//! over HTTP on 127.0.0.1; a test swaps the set (key rotation) or makes it fail, and counts
//! fetches. It runs on its own thread and stops when dropped.

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    thread,
};

use http_body_util::Full;
use hyper::{Response, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use tokio::sync::oneshot;

/// The kinds of key pair a test can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// A key pair: the private half signs, the public half is a PEM file and a JWK.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    /// SPKI PEM of the public key.
    pub public_pem: PathBuf,
    pub jwk: Jwk,
}

impl TestKey {
    /// Generates a key pair of `kind` in `dir` for signing with `alg`.
    pub fn generate(dir: &Path, kind: KeyKind, alg: Algorithm, kid: &str) -> TestKey {
        let private = dir.join(format!("{kid}.key.pem"));
        let public_pem = dir.join(format!("{kid}.pub.pem"));
        let options: &[&str] = match kind {
            KeyKind::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            KeyKind::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::P384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            KeyKind::Ed25519 => &["-algorithm", "ed25519"],
        };
        openssl(
            Command::new("openssl")
                .arg("genpkey")
                .args(options)
                .arg("-out")
                .arg(&private),
        );
        openssl(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public_pem),
        );
        let pem = std::fs::read(&private).unwrap();
        let encoding = match kind {
            KeyKind::Rsa => EncodingKey::from_rsa_pem(&pem),
            KeyKind::P256 | KeyKind::P384 => EncodingKey::from_ec_pem(&pem),
            KeyKind::Ed25519 => EncodingKey::from_ed_pem(&pem),
        }
        .expect("openssl's key parses");
        let jwk = match kind {
            // jsonwebtoken cannot derive an Ed25519 JWK: the raw key ends the SPKI DER.
            KeyKind::Ed25519 => {
                let der = Command::new("openssl")
                    .args(["pkey", "-pubin", "-outform", "DER", "-in"])
                    .arg(&public_pem)
                    .output()
                    .expect("running openssl")
                    .stdout;
                let raw = &der[der.len() - 32..];
                serde_json::from_value(serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": kid, "alg": "EdDSA"
                }))
                .expect("an Ed25519 JWK")
            }
            _ => {
                let mut jwk =
                    Jwk::from_encoding_key(&encoding, alg).expect("a JWK of the public key");
                jwk.common.key_id = Some(kid.to_owned());
                jwk
            }
        };
        TestKey {
            alg,
            kid: kid.to_owned(),
            encoding,
            public_pem,
            jwk,
        }
    }

    /// A token over `claims`, with this key's `alg` and `kid` in the header.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }
}

fn openssl(command: &mut Command) {
    let output = command.output().expect("running openssl");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An HMAC token (the secret is shared with the gateway through an environment variable).
pub fn sign_hmac(alg: Algorithm, secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .expect("signing")
}

/// base64url without padding (RFC 7515 section 2), written out here so a test can build
/// tokens the JWT library would refuse to make (`alg: none`).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A JWK set document holding `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    let keys: Vec<_> = keys.iter().map(|key| &key.jwk).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

struct State {
    body: Mutex<String>,
    status: AtomicU16,
    hits: AtomicUsize,
}

/// Serves one JWK set at any path.
pub struct JwksServer {
    address: std::net::SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl JwksServer {
    pub fn start(body: &str) -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(State {
            body: Mutex::new(body.to_owned()),
            status: AtomicU16::new(200),
            hits: AtomicUsize::new(0),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = {
            let state = state.clone();
            thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    tokio::pin!(stopped);
                    loop {
                        let stream = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => stream,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        let state = state.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |_req| {
                                let state = state.clone();
                                async move {
                                    state.hits.fetch_add(1, Ordering::SeqCst);
                                    let body = state.body.lock().unwrap().clone();
                                    let mut response = Response::new(Full::new(Bytes::from(body)));
                                    *response.status_mut() = hyper::StatusCode::from_u16(
                                        state.status.load(Ordering::SeqCst),
                                    )
                                    .unwrap();
                                    Ok::<_, Infallible>(response)
                                }
                            });
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                        });
                    }
                });
            })
        };
        JwksServer {
            address,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.address)
    }

    /// Serves another key set from now on (a key rotation).
    pub fn set(&self, body: &str) {
        *self.state.body.lock().unwrap() = body.to_owned();
    }

    /// Answers with this status from now on (500: the identity provider is down).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Fetches so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
