//! Certificate material from files: PEM certificate chains and keys (checked to match), a
//! self-signed certificate for trying HTTPS out, and the leaf's validity dates. A leaf:
//! config loads certificates through it while validating, proxy serves what config loaded.

use std::{
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};

/// A certificate file and its key file, loaded and checked against each other.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's validity, when it could be read.
    pub validity: Option<Validity>,
}

impl Loaded {
    /// Whether the leaf certificate is valid for the DNS name `name` (its subject alternative
    /// names, as clients check them). `true` when that cannot be checked.
    pub fn covers(&self, name: &str) -> bool {
        let (Ok(server_name), Some(leaf)) = (ServerName::try_from(name), self.key.cert.first())
        else {
            return true;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
    }
}

/// Where a [`load`] failed: the file to blame and why.
#[derive(Debug)]
pub enum LoadError {
    /// Reading or parsing the certificate file.
    Cert(String),
    /// Reading or parsing the key file, or a key that does not match the certificate.
    Key(String),
}

/// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, or PKCS#1 RSA,
/// or SEC1 EC), and checks that the key is the private half of the leaf's public key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Loaded, LoadError> {
    let cert_pem = std::fs::read(cert_path).map_err(|error| {
        LoadError::Cert(format!("cannot read {}: {error}", cert_path.display()))
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            LoadError::Cert(format!(
                "{}: not a PEM certificate chain: {error}",
                cert_path.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(LoadError::Cert(format!(
            "{}: no certificate (\"-----BEGIN CERTIFICATE-----\") in the file",
            cert_path.display()
        )));
    }
    let key_pem = std::fs::read(key_path)
        .map_err(|error| LoadError::Key(format!("cannot read {}: {error}", key_path.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        LoadError::Key(format!(
            "{}: no usable PEM private key (PKCS#8, RSA or EC): {error}",
            key_path.display()
        ))
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|error| {
        LoadError::Key(format!(
            "{}: unsupported private key: {error}",
            key_path.display()
        ))
    })?;
    let validity = validity(&chain[0]);
    let key = CertifiedKey::new(chain, signing_key);
    key.keys_match().map_err(|error| {
        let why = match error {
            rustls::Error::InconsistentKeys(_) => {
                "it is not the private key of the certificate's public key".to_owned()
            }
            other => format!("cannot check it against the certificate: {other}"),
        };
        LoadError::Key(format!(
            "{} does not match {}: {why}",
            key_path.display(),
            cert_path.display()
        ))
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        validity,
    })
}

/// A self-signed certificate for `names`, made in memory (a fresh key at every load): lets
/// an operator try HTTPS without files. Clients trust it only when told to.
pub fn self_signed(names: &[String]) -> Result<Loaded, LoadError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|error| {
        LoadError::Cert(format!(
            "cannot make a self-signed certificate for {names:?}: {error}"
        ))
    })?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|error| LoadError::Key(format!("self-signed key: {error}")))?;
    let chain = vec![generated.cert.der().clone()];
    Ok(Loaded {
        validity: validity(&chain[0]),
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
    })
}

/// A certificate's `notBefore` and `notAfter`, as Unix seconds and as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub not_before: (i64, String),
    pub not_after: (i64, String),
}

/// Under this long before `notAfter`, a certificate is about to expire.
pub const EXPIRY_WARNING_SECONDS: i64 = 14 * 24 * 3600;

/// A certificate at or near the end of its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Past `notAfter`: clients refuse it.
    Expired,
    /// Within [`EXPIRY_WARNING_SECONDS`] of `notAfter`: this many seconds left.
    Soon(i64),
}

impl Validity {
    /// A warning when the certificate is not valid yet, naming when.
    pub fn problem(&self) -> Option<String> {
        (unix_now() < self.not_before.0).then(|| {
            format!(
                "not valid before {}: clients will refuse it until then",
                self.not_before.1
            )
        })
    }

    /// Whether the certificate has expired or soon will, at `now` (Unix seconds).
    pub fn expiry(&self, now: i64) -> Option<Expiry> {
        let left = self.not_after.0 - now;
        if left < 0 {
            Some(Expiry::Expired)
        } else if left < EXPIRY_WARNING_SECONDS {
            Some(Expiry::Soon(left))
        } else {
            None
        }
    }

    /// What to tell an operator about [`Validity::expiry`] for the certificate in `file`.
    pub fn expiry_message(&self, file: &str, now: i64) -> Option<(Expiry, String)> {
        let expiry = self.expiry(now)?;
        let message = match &expiry {
            Expiry::Expired => format!(
                "the certificate in {file} expired on {}: clients will refuse it",
                self.not_after.1
            ),
            Expiry::Soon(left) => format!(
                "the certificate in {file} expires on {}, in {} days {} hours: renew it",
                self.not_after.1,
                left / 86_400,
                left % 86_400 / 3600
            ),
        };
        Some((expiry, message))
    }
}

/// Now, as Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Reads the validity period of an X.509 certificate (DER). `None` if it cannot be parsed.
fn validity(cert: &[u8]) -> Option<Validity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let validity = parsed.validity();
    Some(Validity {
        not_before: seconds_and_text(&validity.not_before),
        not_after: seconds_and_text(&validity.not_after),
    })
}

/// A certificate time as Unix seconds, and printed as `2024-02-29 12:34:56 UTC`.
fn seconds_and_text(time: &x509_parser::time::ASN1Time) -> (i64, String) {
    let utc = time.to_datetime();
    let printed = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    );
    (time.timestamp(), printed)
}

/// A verifier of client certificates (mTLS): chained to one of `cas` and not revoked by
/// `crls` (every CA in a chain needs its CRL there once any is given). `optional`: a client
/// may also send none. The error says what webpki refused.
pub fn client_verifier(
    cas: &[CertificateDer<'static>],
    crls: &[rustls_pki_types::CertificateRevocationListDer<'static>],
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for (index, ca) in cas.iter().enumerate() {
        roots
            .add(ca.clone())
            .map_err(|error| format!("certificate {index} is not a usable CA: {error}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls.iter().cloned());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_read_from_the_certificate() {
        // rcgen writes UTCTime before 2050 and GeneralizedTime from 2050 on (RFC 5280
        // 4.1.2.5): both forms, and the epoch.
        // ((year, month, day, hour, minute, second), Unix seconds, as printed)
        type Case = ((i32, u8, u8, u64, u64, u64), i64, &'static str);
        let cases: [Case; 4] = [
            ((1970, 1, 1, 0, 0, 0), 0, "1970-01-01 00:00:00 UTC"),
            (
                (2024, 2, 29, 12, 34, 56),
                1_709_210_096,
                "2024-02-29 12:34:56 UTC",
            ),
            (
                (2049, 12, 31, 23, 59, 59),
                2_524_607_999,
                "2049-12-31 23:59:59 UTC",
            ),
            (
                (2050, 1, 1, 0, 0, 0),
                2_524_608_000,
                "2050-01-01 00:00:00 UTC",
            ),
        ];
        for ((year, month, day, hour, minute, second), seconds, printed) in cases {
            let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
            params.not_before = rcgen::date_time_ymd(1969, 12, 31);
            let time: u64 = hour * 3600 + minute * 60 + second;
            params.not_after =
                rcgen::date_time_ymd(year, month, day) + std::time::Duration::from_secs(time);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let validity = validity(cert.der()).unwrap();
            assert_eq!(validity.not_after, (seconds, printed.to_owned()));
            assert_eq!(validity.not_before.0, -86_400);
        }
    }

    #[test]
    fn expiry_is_warned_under_fourteen_days_and_an_error_once_past() {
        let validity = Validity {
            not_before: (0, "1970-01-01 00:00:00 UTC".to_owned()),
            not_after: (1_000_000_000, "2001-09-09 01:46:40 UTC".to_owned()),
        };
        let day = 86_400;
        let cases = [
            (1_000_000_000 - 400 * day, None),
            (1_000_000_000 - 14 * day, None),
            (
                1_000_000_000 - 14 * day + 1,
                Some(Expiry::Soon(14 * day - 1)),
            ),
            (1_000_000_000 - 3 * day, Some(Expiry::Soon(3 * day))),
            (1_000_000_000, Some(Expiry::Soon(0))),
            (1_000_000_001, Some(Expiry::Expired)),
            (2_000_000_000, Some(Expiry::Expired)),
        ];
        for (now, expected) in cases {
            assert_eq!(validity.expiry(now), expected, "at {now}");
        }
        let (_, message) = validity
            .expiry_message("a.pem", 1_000_000_000 - 3 * day - 7200)
            .unwrap();
        assert_eq!(
            message,
            "the certificate in a.pem expires on 2001-09-09 01:46:40 UTC, in 3 days 2 hours: renew it"
        );
    }

    #[test]
    fn validity_of_what_is_not_a_certificate_is_none() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 1],
            &[0x30, 0x80],
            b"not der at all",
        ] {
            assert_eq!(validity(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn missing_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("none.pem");
        match load(&cert, &dir.path().join("none.key")) {
            Err(LoadError::Cert(message)) => {
                assert!(message.contains("none.pem"), "{message}")
            }
            _ => panic!("expected a certificate error"),
        }
        std::fs::write(&cert, "not pem").unwrap();
        match load(&cert, &dir.path().join("none.key")) {
            Err(LoadError::Cert(message)) => {
                assert!(message.contains("no certificate"), "{message}")
            }
            _ => panic!("expected a certificate error"),
        }
    }
}
