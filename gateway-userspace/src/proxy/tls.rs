//! The `tls` stage's material: choosing a certificate by SNI, and the per-listener rustls
//! config that a reload swaps. Certificates are loaded by `crate::certs` while config is
//! validated.
//!
//! The handshake itself runs in listener.rs, bounded by `limits.tls_handshake_timeout`
//! (rustls has no timeout of its own).

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::resumption::Resumption;
use crate::config::{HostMatch, ListenerConfig};

use super::client_cert;

/// ALPN protocol ids offered to clients, preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS listener's current rustls config: each new connection takes the one loaded at
/// accept time, and a reload stores a new one (connections already open keep theirs).
pub type Current = Arc<ArcSwap<ServerConfig>>;

/// Builds a listener's rustls config: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, the
/// certificate chosen by SNI, the listener's session resumption. `Ok(None)` for a listener
/// without TLS.
pub fn server_config(
    listener: &ListenerConfig,
    resumption: &Resumption,
) -> Result<Option<Arc<ServerConfig>>, rustls::Error> {
    let Some(resolver) = SniResolver::new(listener) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_cert::verifier_of(listener.client_auth.as_ref()))
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    resumption.apply(listener, &mut config);
    Ok(Some(Arc::new(config)))
}

/// Picks the certificate for the name the client sent: an exact name first, then a
/// `*.example.com` wildcard (one label, as certificates match), then the default (also for
/// clients that send no SNI).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(listener: &ListenerConfig) -> Option<SniResolver> {
        let tls = listener.tls.as_ref()?;
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for certificate in &tls.certificates {
            for name in &certificate.names {
                match name {
                    HostMatch::Exact(name) => {
                        exact.insert(name.clone(), certificate.certified.clone());
                    }
                    HostMatch::Suffix(suffix) => {
                        let parent = suffix.trim_start_matches('.').to_owned();
                        wildcard.insert(parent, certificate.certified.clone());
                    }
                    HostMatch::Any => {}
                }
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default: tls.certificates[tls.default].certified.clone(),
        })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()))
    }
}
