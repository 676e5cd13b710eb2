//! TLS to upstream targets: the connector of an upstream's pool (hyper-rustls over the plain
//! connector, with the upstream's compiled `tls` settings), and what a TLS failure was
//! (unknown issuer, name mismatch, expired...), for the 502's log line and health checks.

use std::sync::{Arc, LazyLock};

use hyper::http::uri::Scheme;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{CertificateError, ClientConfig};

use crate::config::{Alpn, UpstreamConfig, UpstreamTls};

/// `https` for an upstream with `tls`, else `http`.
pub fn scheme(config: &UpstreamConfig) -> Scheme {
    match config.tls {
        Some(_) => Scheme::HTTPS,
        None => Scheme::HTTP,
    }
}

/// The connector over `http`: TLS only (https URIs) when the upstream has `tls`, else plain.
/// `h2_only`: offer only `h2` (a client that speaks HTTP/2 whatever the upstream's `alpn`).
pub fn connector(
    mut http: HttpConnector,
    tls: Option<&UpstreamTls>,
    h2_only: bool,
) -> HttpsConnector<HttpConnector> {
    // HttpsConnector checks the scheme; HttpConnector would refuse https URIs.
    http.enforce_http(false);
    let Some(tls) = tls else {
        // Never used for TLS: plain upstreams' URIs are http.
        static PLAIN: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
            Arc::new(crate::tls_client::client_config(
                crate::tls_client::ClientTls {
                    roots: rustls::RootCertStore::empty(),
                    verify: true,
                    client_cert: None,
                    tls13_only: false,
                },
            ))
        });
        return HttpsConnector::from((http, PLAIN.clone()));
    };
    let mut builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.client).clone())
        .https_only();
    if let Some(name) = &tls.server_name {
        builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()));
    }
    let (h2, http1) = (
        tls.alpn.contains(&Alpn::H2),
        tls.alpn.contains(&Alpn::Http11),
    );
    match (h2 || h2_only, http1 && !h2_only) {
        (true, true) => builder.enable_all_versions().wrap_connector(http),
        (true, false) => builder.enable_http2().wrap_connector(http),
        // hyper-rustls offers no ALPN for HTTP/1.1 alone: servers take that as HTTP/1.1.
        (false, _) => builder.enable_http1().wrap_connector(http),
    }
}

/// Why TLS with an upstream failed, when `error` (or what caused it) is a TLS error:
/// "unknown issuer", "name mismatch", "expired"... then rustls's own words.
pub fn failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let tls = causes(error).find_map(|cause| cause.downcast_ref::<rustls::Error>())?;
    let what = match tls {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => "unknown issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name mismatch"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not valid yet"
            }
            CertificateError::Revoked => "revoked",
            _ => "bad certificate",
        },
        rustls::Error::AlertReceived(_) => "refused by the upstream",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not TLS",
        _ => "handshake failed",
    };
    Some(format!("TLS {what}: {tls}"))
}

/// `error` and its causes, looking inside `io::Error`s too (tokio-rustls and hyper-rustls
/// wrap rustls errors in them, and `io::Error::source` skips the wrapped error).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| {
        match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        }
    })
    .take(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_reasons_are_found_inside_io_errors() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "TLS unknown issuer",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "TLS name mismatch",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "TLS expired",
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
                "TLS refused by the upstream",
            ),
        ];
        for (tls, expected) in cases {
            // As hyper-rustls hands it over: io::Error(io::Error(rustls::Error)).
            let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
            let outer = std::io::Error::other(inner);
            let reason = failure(&outer).unwrap();
            assert!(reason.starts_with(expected), "{reason}");
        }
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(failure(&plain), None);
    }
}
