//! Client certificates at `https` listeners (`client_auth`): the listener's verifier (built
//! from its CA roots and CRLs by `crate::certs` while config loads), the identity a verified certificate gives (its subject or
//! a chosen SAN), and the `X-Forwarded-Client-Cert` field sent upstream in Envoy's format:
//!
//! `Hash=<SHA-256 of the DER, hex>;Subject="<RFC 4514 subject>";URI=<uri SAN>;DNS=<dns SAN>`
//!
//! with one `URI=`/`DNS=` per name. A client's own copy of the field is always removed.

use std::{fmt::Write as _, sync::Arc};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::server::{WebPkiClientVerifier, danger::ClientCertVerifier};
use rustls_pki_types::CertificateDer;
use sha2::Digest as _;
use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _, x509::X509Name,
};

use crate::config::{ClientAuth, ClientIdentity};

/// The field upstreams read the verified client certificate from.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What the handshake verified, kept with the connection for every request on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject or SAN the listener's `client_auth.identity` names; `None` when the
    /// certificate has no such SAN.
    pub identity: Option<Box<str>>,
    /// The `X-Forwarded-Client-Cert` value for upstreams.
    pub xfcc: HeaderValue,
}

/// The verifier a listener's rustls config uses: its `client_auth`, or none.
pub fn verifier_of(client_auth: Option<&ClientAuth>) -> Arc<dyn ClientCertVerifier> {
    match client_auth {
        Some(client_auth) => client_auth.verifier.clone(),
        None => WebPkiClientVerifier::no_client_auth(),
    }
}

/// The identity and XFCC of a verified leaf certificate. `None` only if it cannot be
/// parsed (rustls already verified it, so in practice never).
pub fn describe(leaf: &CertificateDer<'_>, identity: ClientIdentity) -> Option<ClientCert> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let subject = rfc4514(cert.subject());
    let (mut dns, mut uris, mut emails) = (Vec::new(), Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(name) => dns.push(clean(name)),
                GeneralName::URI(uri) => uris.push(clean(uri)),
                GeneralName::RFC822Name(email) => emails.push(clean(email)),
                _ => {}
            }
        }
    }
    let chosen = match identity {
        ClientIdentity::Subject => Some(subject.as_str()),
        ClientIdentity::SanDns => dns.first().map(String::as_str),
        ClientIdentity::SanUri => uris.first().map(String::as_str),
        ClientIdentity::SanEmail => emails.first().map(String::as_str),
    };
    let mut xfcc = format!("Hash={}", hex::encode(sha2::Sha256::digest(leaf)));
    xfcc.push_str(";Subject=");
    quoted(&mut xfcc, &subject);
    for (key, values) in [("URI", &uris), ("DNS", &dns)] {
        for value in values {
            let _ = write!(xfcc, ";{key}=");
            quote_if_needed(&mut xfcc, value);
        }
    }
    Some(ClientCert {
        identity: chosen.map(Into::into),
        xfcc: HeaderValue::from_str(&xfcc).ok()?,
    })
}

/// The identity of the certificate the request's connection showed, if any.
pub fn identity(ctx: &super::RequestCtx) -> Option<&str> {
    ctx.connection.client_cert.as_ref()?.identity.as_deref()
}

/// Removes every client-sent `X-Forwarded-Client-Cert`, however spelled (case, `_` for
/// `-`, repeated): only the gateway may say which certificate the client showed.
pub fn remove_spoofed(headers: &mut HeaderMap) {
    super::credential::remove_field(headers, &XFCC);
}

/// The subject as RFC 4514 writes it (as `openssl x509 -nameopt RFC2253` prints it): last
/// RDN first, `,` between RDNs, `+` inside one.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (index, rdn) in rdns.iter().rev().enumerate() {
        if index > 0 {
            out.push(',');
        }
        for (at, attribute) in rdn.iter().enumerate() {
            if at > 0 {
                out.push('+');
            }
            let oid = attribute.attr_type().to_id_string();
            out.push_str(short_name(&oid).unwrap_or(&oid));
            out.push('=');
            match attribute.as_str() {
                Ok(value) => escape_value(&mut out, value),
                // Not a string type: `#` and the DER in hex (RFC 4514 section 2.4).
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex::encode(attribute.attr_value().data));
                }
            }
        }
    }
    out
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "2.5.4.5" => "serialNumber",
        _ => return None,
    })
}

/// RFC 4514 section 2.4: `\` before `"+,;<>\`, a leading `#` or space, a trailing space;
/// anything but printable ASCII as `\xx` per UTF-8 byte (so it fits a header field, and two
/// names never print the same).
fn escape_value(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (index == 0 && matches!(c, '#' | ' '))
            || (index == last && c == ' ');
        if special {
            out.push('\\');
        }
        push_printable(out, c);
    }
}

/// `c`, or `\xx` for each of its UTF-8 bytes when it is not printable ASCII.
fn push_printable(out: &mut String, c: char) {
    if (' '..='~').contains(&c) {
        out.push(c);
        return;
    }
    let mut bytes = [0u8; 4];
    for byte in c.encode_utf8(&mut bytes).bytes() {
        let _ = write!(out, "\\{byte:02x}");
    }
}

/// `"value"` with `"` and `\` escaped, as Envoy writes `Subject`.
fn quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Quoted when it holds a character XFCC uses as syntax (`,;="` or whitespace).
fn quote_if_needed(out: &mut String, value: &str) {
    if value
        .chars()
        .any(|c| matches!(c, ',' | ';' | '=' | '"' | '\\') || c.is_whitespace())
    {
        quoted(out, value);
    } else {
        out.push_str(value);
    }
}

/// A SAN as printable ASCII: `\` and anything unprintable as `\xx` (they cannot go into a
/// header field, and two names must never print the same).
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\5c"),
            c => push_printable(&mut out, c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn params(
        subject: &[(rcgen::DnType, &str)],
        sans: Vec<rcgen::SanType>,
    ) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = sans;
        params
    }

    #[test]
    fn identity_and_xfcc_from_the_subject_and_sans() {
        use rcgen::{DnType, SanType};
        let der = cert(params(
            &[
                (DnType::OrganizationName, "Example, Inc"),
                (DnType::CommonName, "alice"),
            ],
            vec![
                SanType::DnsName("a.example.com".try_into().unwrap()),
                SanType::DnsName("b.example.com".try_into().unwrap()),
                SanType::URI("spiffe://example.com/ns/a".try_into().unwrap()),
                SanType::Rfc822Name("alice@example.com".try_into().unwrap()),
            ],
        ));
        let hash = hex::encode(sha2::Sha256::digest(&der));
        let cases = [
            (ClientIdentity::Subject, "CN=alice,O=Example\\, Inc"),
            (ClientIdentity::SanDns, "a.example.com"),
            (ClientIdentity::SanUri, "spiffe://example.com/ns/a"),
            (ClientIdentity::SanEmail, "alice@example.com"),
        ];
        for (kind, expected) in cases {
            let described = describe(&der, kind).unwrap();
            assert_eq!(described.identity.as_deref(), Some(expected), "{kind:?}");
            assert_eq!(
                described.xfcc.to_str().unwrap(),
                format!(
                    "Hash={hash};Subject=\"CN=alice,O=Example\\\\, Inc\";\
                     URI=spiffe://example.com/ns/a;DNS=a.example.com;DNS=b.example.com"
                )
            );
        }
    }

    #[test]
    fn a_missing_san_gives_no_identity_and_odd_subjects_stay_one_safe_field() {
        use rcgen::DnType;
        let cases = [
            ("plain", "CN=plain"),
            ("quote\"d", "CN=quote\\\"d"),
            ("semi;colon", "CN=semi\\;colon"),
            (" leading", "CN=\\ leading"),
            ("#hash", "CN=\\#hash"),
            ("trailing ", "CN=trailing\\ "),
            ("plus+sign", "CN=plus\\+sign"),
            ("new\nline", "CN=new\\0aline"),
            ("ünï", "CN=\\c3\\bcn\\c3\\af"),
        ];
        for (common_name, expected) in cases {
            let der = cert(params(&[(DnType::CommonName, common_name)], Vec::new()));
            let described = describe(&der, ClientIdentity::Subject).unwrap();
            let identity = described.identity.as_deref().unwrap();
            assert!(
                identity.bytes().all(|b| (b' '..=b'~').contains(&b)),
                "{identity:?}"
            );
            assert_eq!(identity, expected, "{common_name:?}");
            // The subject is one quoted token: XFCC's `;` and `,` inside it do not split it.
            let xfcc = described.xfcc.to_str().unwrap();
            assert!(xfcc.contains(";Subject=\""), "{xfcc}");
            assert!(!xfcc.contains(";DNS=") && !xfcc.contains(";URI="), "{xfcc}");
            for kind in [
                ClientIdentity::SanDns,
                ClientIdentity::SanUri,
                ClientIdentity::SanEmail,
            ] {
                assert_eq!(describe(&der, kind).unwrap().identity, None, "{kind:?}");
            }
        }
    }

    #[test]
    fn spoofed_fields_are_removed_in_every_spelling() {
        let spellings = [
            "x-forwarded-client-cert",
            "X-Forwarded-Client-Cert",
            "X-FORWARDED-CLIENT-CERT",
            "x_forwarded_client_cert",
            "X_Forwarded-Client_Cert",
        ];
        for spelling in spellings {
            let mut headers = HeaderMap::new();
            let name = HeaderName::from_bytes(spelling.as_bytes()).unwrap();
            headers.append(name.clone(), HeaderValue::from_static("Hash=evil"));
            headers.append(name, HeaderValue::from_static("Subject=\"CN=admin\""));
            headers.append("x-other", HeaderValue::from_static("kept"));
            remove_spoofed(&mut headers);
            assert_eq!(headers.len(), 1, "{spelling}: {headers:?}");
            assert!(headers.contains_key("x-other"));
        }
    }
}
