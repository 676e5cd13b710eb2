//! A listener's `client_auth`: client certificates (mTLS) checked against a CA and CRLs, and
//! which part of a verified certificate names the caller. The files are read and the rustls
//! verifier built here, so a bad CA or CRL is a config error naming the key; a reload reads
//! them again (a new CRL takes effect like a new listener certificate).

use std::{path::PathBuf, sync::Arc};

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, pem::PemObject};
use serde::Deserialize;

use super::Problems;

/// Whether a client must show a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMode {
    /// No valid certificate, no handshake.
    Required,
    /// A certificate, if sent, must be valid; routes with `auth = { client_cert = true }`
    /// answer 401 to clients without one.
    Optional,
}

/// Which part of a verified certificate is the caller's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ClientIdentity {
    /// The subject, as RFC 4514 writes it (`CN=alice,O=Example`).
    #[default]
    #[serde(rename = "subject")]
    Subject,
    /// The first DNS subject alternative name.
    #[serde(rename = "san:dns")]
    SanDns,
    /// The first URI SAN (a SPIFFE ID, say).
    #[serde(rename = "san:uri")]
    SanUri,
    /// The first email SAN.
    #[serde(rename = "san:email")]
    SanEmail,
}

/// `client_auth`, loaded: the CA and CRLs, and the verifier built from them.
#[derive(Clone)]
pub struct ClientAuth {
    pub ca_file: PathBuf,
    pub crl_file: Option<PathBuf>,
    pub mode: ClientAuthMode,
    pub identity: ClientIdentity,
    pub cas: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

impl PartialEq for ClientAuth {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.ca_file,
            &self.crl_file,
            self.mode,
            self.identity,
            &self.cas,
            &self.crls,
        ) == (
            &other.ca_file,
            &other.crl_file,
            other.mode,
            other.identity,
            &other.cas,
            &other.crls,
        )
    }
}

impl Eq for ClientAuth {}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("ca_file", &self.ca_file)
            .field("crl_file", &self.crl_file)
            .field("mode", &self.mode)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAuth {
    ca_file: PathBuf,
    mode: ClientAuthMode,
    crl_file: Option<PathBuf>,
    #[serde(default)]
    identity: ClientIdentity,
}

/// Reads the CA and CRL files and builds the verifier; each problem names its key.
pub(super) fn compile_client_auth(
    raw: RawClientAuth,
    key: &str,
    problems: &mut Problems,
) -> Option<ClientAuth> {
    let cas = read_pem(&raw.ca_file, "certificate")
        .map_err(|reason| problems.add(format!("{key}.ca_file"), reason))
        .ok();
    let crls = match &raw.crl_file {
        None => Some(Vec::new()),
        Some(file) => read_pem(file, "CRL")
            .map_err(|reason| problems.add(format!("{key}.crl_file"), reason))
            .ok(),
    };
    let (cas, crls) = (cas?, crls?);
    let optional = raw.mode == ClientAuthMode::Optional;
    let verifier = crate::certs::client_verifier(&cas, &crls, optional)
        .map_err(|reason| {
            // webpki parses CRLs while building; a CA it refuses fails in `verifier` too.
            let which = if reason.contains("CRL") || reason.contains("revocation") {
                "crl_file"
            } else {
                "ca_file"
            };
            problems.add(format!("{key}.{which}"), reason);
        })
        .ok()?;
    Some(ClientAuth {
        ca_file: raw.ca_file,
        crl_file: raw.crl_file,
        mode: raw.mode,
        identity: raw.identity,
        cas,
        crls,
        verifier,
    })
}

/// Every `what` in a PEM file; an error (naming the file) when it has none.
fn read_pem<T: PemObject>(file: &std::path::Path, what: &str) -> Result<Vec<T>, String> {
    let pem =
        std::fs::read(file).map_err(|error| format!("cannot read {}: {error}", file.display()))?;
    let items = T::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: not PEM: {error}", file.display()))?;
    if items.is_empty() {
        return Err(format!(
            "{}: no {what} (\"-----BEGIN {}-----\") in the file",
            file.display(),
            if what == "CRL" {
                "X509 CRL"
            } else {
                "CERTIFICATE"
            }
        ));
    }
    Ok(items)
}
