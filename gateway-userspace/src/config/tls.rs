//! A listener's `tls`: its certificates (loaded and checked here, through `crate::certs`),
//! the SNI names each serves, and the default one.

use std::{path::PathBuf, sync::Arc};

use serde::Deserialize;

use super::{
    Problems,
    resumption::{RawSessionCache, RawTickets, ResumptionConfig, compile_resumption},
    routes::{HostMatch, compile_host},
};

/// An `https` listener's certificates, loaded and checked when the config is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certificates: Vec<TlsCertificate>,
    /// Index into `certificates`: served without SNI or for a name no certificate lists.
    pub default: usize,
    /// `session_tickets` and `session_cache`.
    pub resumption: ResumptionConfig,
}

#[derive(Clone)]
pub struct TlsCertificate {
    /// The PEM files; `None` for a `self_signed` certificate (made in memory at load).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// SNI names served with it: exact, or `*.example.com` (one label, as in certificates).
    pub names: Vec<HostMatch>,
    /// The chain (leaf first) and its private key, checked to match.
    pub certified: Arc<rustls::sign::CertifiedKey>,
    /// The leaf's validity dates, when they could be read.
    pub validity: Option<crate::certs::Validity>,
}

impl PartialEq for TlsCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.names == other.names
            && self.certified.cert == other.certified.cert
    }
}

impl Eq for TlsCertificate {}

impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    certificates: Vec<RawCertificate>,
    /// A name listed by one of the certificates; without it, the first certificate.
    default: Option<String>,
    session_tickets: Option<RawTickets>,
    session_cache: Option<RawSessionCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// Instead of cert and key: a certificate for `names` made at load, for trying HTTPS.
    #[serde(default)]
    self_signed: bool,
    #[serde(default)]
    names: Vec<String>,
}

/// Loads every certificate and key (each problem names the key and the file), checks the
/// SNI names, and picks the default certificate.
pub(super) fn compile_tls(
    raw: RawTls,
    key: &str,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<TlsConfig> {
    if raw.certificates.is_empty() {
        problems.add(
            format!("{key}.certificates"),
            "needs at least one { cert = \"chain.pem\", key = \"key.pem\" }",
        );
        return None;
    }
    let mut certificates: Vec<TlsCertificate> = Vec::new();
    let mut complete = true;
    for (index, certificate) in raw.certificates.into_iter().enumerate() {
        let entry = format!("{key}.certificates[{index}]");
        let mut names = Vec::new();
        for (at, name) in certificate.names.iter().enumerate() {
            let name_key = format!("{entry}.names[{at}]");
            let host = compile_host(name, &name_key, problems);
            let earlier = certificates
                .iter()
                .position(|other| other.names.contains(&host))
                .map(|other| format!("{key}.certificates[{other}]"))
                .or_else(|| names.contains(&host).then(|| entry.clone()));
            if let Some(earlier) = earlier {
                problems.add(name_key, format!("{name:?} is also a name of {earlier}"));
            }
            names.push(host);
        }
        let loaded = match (&certificate.cert, &certificate.key, certificate.self_signed) {
            (Some(cert), Some(key), false) => crate::certs::load(cert, key),
            (None, None, true) if names.is_empty() => {
                problems.add(
                    format!("{entry}.names"),
                    "a self_signed certificate needs the names it is for, e.g. [\"localhost\"]",
                );
                complete = false;
                continue;
            }
            (None, None, true) => {
                warnings.push(format!(
                    "{entry}: a self-signed certificate for {:?}: clients will not trust it \
                     unless told to (curl -k); for trying HTTPS out, not for production",
                    certificate.names
                ));
                crate::certs::self_signed(&certificate.names)
            }
            (_, _, true) => {
                problems.add(
                    format!("{entry}.self_signed"),
                    "give either cert and key, or self_signed = true, not both",
                );
                complete = false;
                continue;
            }
            (cert, _, false) => {
                let missing = if cert.is_none() { "cert" } else { "key" };
                problems.add(
                    format!("{entry}.{missing}"),
                    "missing: give cert and key (PEM files), or self_signed = true",
                );
                complete = false;
                continue;
            }
        };
        let file = certificate.cert.as_ref().map_or_else(
            || "(self-signed)".to_owned(),
            |cert| cert.display().to_string(),
        );
        match loaded {
            Ok(loaded) => {
                // Expiry is checked where it is reported: check-config and the proxy.
                if let Some(problem) = loaded
                    .validity
                    .as_ref()
                    .and_then(|validity| validity.problem())
                {
                    warnings.push(format!("{entry}.cert: the certificate in {file} {problem}"));
                }
                for (at, (name, host)) in certificate.names.iter().zip(&names).enumerate() {
                    if !sni_probe(host).is_none_or(|probe| loaded.covers(&probe)) {
                        warnings.push(format!(
                            "{entry}.names[{at}]: the certificate in {file} is not valid for \
                             {name:?} (see its subject alternative names): clients will refuse it"
                        ));
                    }
                }
                certificates.push(TlsCertificate {
                    cert: certificate.cert,
                    key: certificate.key,
                    names,
                    certified: loaded.key,
                    validity: loaded.validity,
                });
            }
            Err(crate::certs::LoadError::Cert(reason)) => {
                problems.add(format!("{entry}.cert"), reason);
                complete = false;
            }
            Err(crate::certs::LoadError::Key(reason)) => {
                problems.add(format!("{entry}.key"), reason);
                complete = false;
            }
        }
    }
    let resumption = compile_resumption(raw.session_tickets, raw.session_cache, key, problems);
    if !complete {
        return None;
    }
    let default = match raw.default {
        None => 0,
        Some(name) => {
            let wanted = name.to_ascii_lowercase();
            let found = certificates.iter().position(|certificate| {
                certificate.names.iter().any(|host| match host {
                    HostMatch::Exact(exact) => *exact == wanted,
                    HostMatch::Suffix(suffix) => wanted.strip_prefix('*') == Some(suffix),
                    HostMatch::Any => false,
                })
            });
            let Some(found) = found else {
                problems.add(
                    format!("{key}.default"),
                    format!("{name:?} is not among the certificates' names"),
                );
                return None;
            };
            found
        }
    };
    for (index, certificate) in certificates.iter().enumerate() {
        if index != default && certificate.names.is_empty() {
            warnings.push(format!(
                "{key}.certificates[{index}]: no names and not the default: it is never served"
            ));
        }
    }
    Some(TlsConfig {
        certificates,
        default,
        resumption,
    })
}

impl TlsConfig {
    /// Certificates that have expired or expire within 14 days at `now`, each named by its
    /// key under `key` (the listener's `tls`).
    pub fn expiry(&self, key: &str, now: i64) -> Vec<(crate::certs::Expiry, String)> {
        let mut found = Vec::new();
        for (index, certificate) in self.certificates.iter().enumerate() {
            let file = certificate.cert.as_ref().map_or_else(
                || "(self-signed)".to_owned(),
                |cert| cert.display().to_string(),
            );
            let message = certificate
                .validity
                .as_ref()
                .and_then(|validity| validity.expiry_message(&file, now));
            if let Some((expiry, message)) = message {
                found.push((
                    expiry,
                    format!("{key}.certificates[{index}].cert: {message}"),
                ));
            }
        }
        found
    }
}

/// The name a certificate must be valid for to serve `host`: the name itself, or for a
/// wildcard a name one label under it. `None` (anything goes) for `HostMatch::Any`.
fn sni_probe(host: &HostMatch) -> Option<String> {
    match host {
        HostMatch::Exact(name) => Some(name.clone()),
        HostMatch::Suffix(suffix) => Some(format!("sni-probe{suffix}")),
        HostMatch::Any => None,
    }
}
