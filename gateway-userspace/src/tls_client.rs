//! rustls client configs for the gateway's outgoing TLS (upstreams, JWKS URLs): whom to
//! trust (a CA file, or the system's roots), which versions, an optional client certificate,
//! and `verify = false`. A leaf: config builds them while validating, proxy connects with them.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};

/// Reads the PEM certificates of a CA file; an error names the file and says why.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Only `ca` when given, else the system's root certificates (which may be none: the
/// caller says what to do about that).
pub fn roots(ca: Option<&[CertificateDer<'static>]>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            roots.add_parsable_certificates(ca.iter().cloned());
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    roots
}

/// What a client config is made of.
pub struct ClientTls {
    pub roots: RootCertStore,
    /// `false`: accept any server certificate (`verify = false`; a warning in check-config).
    pub verify: bool,
    /// Presented when the server asks for one (mTLS).
    pub client_cert: Option<Arc<CertifiedKey>>,
    /// TLS 1.3 only, or 1.2 and 1.3.
    pub tls13_only: bool,
}

/// A ring-based client config without ALPN (hyper-rustls sets it from the HTTP versions).
pub fn client_config(tls: ClientTls) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match tls.verify {
        true => builder.with_root_certificates(tls.roots),
        false => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
    };
    match tls.client_cert {
        Some(key) => builder.with_client_cert_resolver(Arc::new(OneClientCert(key))),
        None => builder.with_no_client_auth(),
    }
}

/// Always the same client certificate, whatever the server asks.
#[derive(Debug)]
struct OneClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for OneClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify = false`: any certificate and name; the handshake signatures are still checked,
/// so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
