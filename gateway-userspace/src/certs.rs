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

impl Validity {
    /// A warning when the certificate is expired or not valid yet, naming when.
    pub fn problem(&self) -> Option<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as i64);
        if now > self.not_after.0 {
            Some(format!(
                "expired on {}: clients will refuse it",
                self.not_after.1
            ))
        } else if now < self.not_before.0 {
            Some(format!(
                "not valid before {}: clients will refuse it until then",
                self.not_before.1
            ))
        } else {
            None
        }
    }
}

/// Reads the validity period of an X.509 certificate (DER). `None` if it cannot be found.
fn validity(cert: &[u8]) -> Option<Validity> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE, validity SEQUENCE, ... } }
    let (tag, certificate, _) = der_item(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_item(certificate)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, rest) = der_item(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // the explicit version
    }
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, rest) = der_item(tbs)?;
        if tag != expected {
            return None;
        }
        tbs = rest;
    }
    let (tag, validity, _) = der_item(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, not_before, rest) = der_item(validity)?;
    let not_before = der_time(tag, not_before)?;
    let (tag, not_after, _) = der_item(rest)?;
    let not_after = der_time(tag, not_after)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

/// One DER item: its tag, its contents, and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte))
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn der_time(tag: u8, contents: &[u8]) -> Option<(i64, String)> {
    let text = std::str::from_utf8(contents).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let year: i64 = digits[..2].parse().ok()?;
            (
                if year < 50 { 2000 + year } else { 1900 + year },
                &digits[2..],
            )
        }
        0x18 if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| rest[at..at + 2].parse::<i64>().ok();
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let printed = format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC");
    Some((seconds, printed))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_convert_to_unix_seconds() {
        assert_eq!(der_time(0x17, b"700101000000Z").unwrap().0, 0);
        assert_eq!(
            der_time(0x17, b"240229123456Z").unwrap(),
            (1_709_210_096, "2024-02-29 12:34:56 UTC".to_owned())
        );
        assert_eq!(der_time(0x18, b"20500101000000Z").unwrap().0, 2_524_608_000);
        assert_eq!(der_time(0x17, b"2402291234Z"), None);
        assert_eq!(der_time(0x17, b"241329123456Z"), None);
    }

    #[test]
    fn der_items_need_their_full_length() {
        assert_eq!(der_item(&[0x30, 0x02, 1, 2, 3]).unwrap().1, &[1, 2]);
        assert_eq!(der_item(&[0x30, 0x81, 0x01, 9]).unwrap().1, &[9]);
        assert!(der_item(&[0x30, 0x05, 1]).is_none());
        assert!(der_item(&[0x30, 0x80]).is_none());
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
