//! `[[upstreams]] tls = { ... }`: TLS from the gateway to an upstream's targets, checked once
//! and compiled into a rustls client config. Files are read at every load, so a reload
//! (SIGHUP) picks up renewed certificates, keys and CAs.

use std::{path::PathBuf, sync::Arc};

use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

use super::{Problems, upstreams::UpstreamProtocol};
use crate::{certs, tls_client};

/// An HTTP version offered in the TLS handshake (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

#[derive(Clone)]
pub struct UpstreamTls {
    /// The name sent (SNI) and checked in the certificate; `None`: each target's host.
    pub server_name: Option<ServerName<'static>>,
    pub verify: bool,
    /// What the handshake offers; HTTP/2 is used when the target picks `h2`.
    pub alpn: Vec<Alpn>,
    pub tls13_only: bool,
    /// Without ALPN (hyper-rustls sets it per client).
    pub client: Arc<ClientConfig>,
    /// What the config was made from, to tell two loads apart (a renewed file differs).
    ca: Option<Vec<CertificateDer<'static>>>,
    client_chain: Option<Vec<CertificateDer<'static>>>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.verify == other.verify
            && self.alpn == other.alpn
            && self.tls13_only == other.tls13_only
            && self.ca == other.ca
            && self.client_chain == other.client_chain
    }
}

impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .field("alpn", &self.alpn)
            .field("tls13_only", &self.tls13_only)
            .field("client_cert", &self.client_chain.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    server_name: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_verify")]
    verify: bool,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    min_version: Option<String>,
    alpn: Option<Vec<String>>,
}

fn default_verify() -> bool {
    true
}

/// Checks `raw` (under `{key}.tls`) and builds its client config; `None` after a problem.
pub(super) fn compile_tls(
    raw: RawUpstreamTls,
    protocol: UpstreamProtocol,
    key: &str,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<UpstreamTls> {
    let key = format!("{key}.tls");
    let before = problems.0.len();
    let server_name = raw.server_name.as_ref().and_then(|name| {
        ServerName::try_from(name.clone())
            .map_err(|_| {
                problems.add(
                    format!("{key}.server_name"),
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })
            .ok()
    });
    let tls13_only = match raw.min_version.as_deref() {
        None | Some("1.2") => false,
        Some("1.3") => true,
        Some(other) => {
            problems.add(
                format!("{key}.min_version"),
                format!("{other:?} is not a TLS version the gateway speaks: \"1.2\" or \"1.3\""),
            );
            false
        }
    };
    let alpn = alpn(raw.alpn, protocol, &key, problems);
    if protocol == UpstreamProtocol::H2c {
        problems.add(
            &key,
            "protocol \"h2c\" is cleartext HTTP/2: over TLS use protocol = \"h2\"",
        );
    }
    let ca = raw.ca_file.as_ref().and_then(|path| {
        tls_client::read_ca(path)
            .map_err(|why| problems.add(format!("{key}.ca_file"), why))
            .ok()
    });
    let roots = tls_client::roots(ca.as_deref());
    if raw.verify && roots.is_empty() {
        let why = match raw.ca_file {
            Some(_) => "holds no usable CA certificate",
            None => "not set, and no system root certificates were found: set it",
        };
        problems.add(format!("{key}.ca_file"), why);
    }
    if !raw.verify {
        warnings.push(format!(
            "{key}.verify = false: any certificate is accepted from these targets, so anyone \
             on the path can read and change the traffic"
        ));
    }
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            problems.add(format!("{key}.client_key"), "needed with client_cert");
            None
        }
        (None, Some(_)) => {
            problems.add(format!("{key}.client_cert"), "needed with client_key");
            None
        }
        (Some(cert), Some(private)) => match certs::load(cert, private) {
            Ok(loaded) => {
                if let Some(problem) = loaded.validity.as_ref().and_then(|v| v.problem()) {
                    warnings.push(format!("{key}.client_cert: {problem}"));
                }
                Some(loaded.key)
            }
            Err(certs::LoadError::Cert(why)) => {
                problems.add(format!("{key}.client_cert"), why);
                None
            }
            Err(certs::LoadError::Key(why)) => {
                problems.add(format!("{key}.client_key"), why);
                None
            }
        },
    };
    if problems.0.len() > before {
        return None;
    }
    let client_chain = client_cert.as_ref().map(|key| key.cert.clone());
    let client = tls_client::client_config(tls_client::ClientTls {
        roots,
        verify: raw.verify,
        client_cert,
        tls13_only,
    });
    Some(UpstreamTls {
        server_name,
        verify: raw.verify,
        alpn,
        tls13_only,
        client: Arc::new(client),
        ca,
        client_chain,
    })
}

/// `alpn`: "h2" and/or "http/1.1", each once; by default what `protocol` speaks.
fn alpn(
    raw: Option<Vec<String>>,
    protocol: UpstreamProtocol,
    key: &str,
    problems: &mut Problems,
) -> Vec<Alpn> {
    let Some(raw) = raw else {
        return match protocol {
            UpstreamProtocol::Http1 => vec![Alpn::Http11],
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => vec![Alpn::H2],
        };
    };
    let mut alpn = Vec::new();
    for (at, value) in raw.iter().enumerate() {
        let parsed = match value.as_str() {
            "h2" => Alpn::H2,
            "http/1.1" => Alpn::Http11,
            other => {
                problems.add(
                    format!("{key}.alpn[{at}]"),
                    format!("{other:?} is not an HTTP version the gateway speaks: \"h2\" or \"http/1.1\""),
                );
                continue;
            }
        };
        if alpn.contains(&parsed) {
            problems.add(
                format!("{key}.alpn[{at}]"),
                format!("{value:?} is listed twice"),
            );
        }
        alpn.push(parsed);
    }
    if raw.is_empty() {
        problems.add(
            format!("{key}.alpn"),
            "empty: list \"h2\", \"http/1.1\" or both",
        );
    } else if protocol == UpstreamProtocol::H2 && !alpn.contains(&Alpn::H2) {
        problems.add(
            format!("{key}.alpn"),
            "protocol \"h2\" needs \"h2\" in the list",
        );
    }
    alpn
}
