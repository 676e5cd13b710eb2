//! `gateway_tls_certificate_expiry_seconds{listener,name}`: seconds until each served
//! certificate's `notAfter` (negative once expired), computed at scrape time from the
//! certificates loaded now (a reload replaces them). `name` is the certificate file as
//! configured (`self-signed` for one made at load).

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, gauge::ConstGauge},
};

use crate::config::ListenerConfig;

/// One served certificate: its listener, its name, its `notAfter` (Unix seconds).
struct Expiry {
    listener: String,
    name: String,
    not_after: i64,
}

/// The served certificates' expiry dates, as of the last start or reload.
#[derive(Default)]
pub struct CertificateExpiry(ArcSwap<Vec<Expiry>>);

impl CertificateExpiry {
    /// Takes the certificates of `listeners` (those whose dates could be read).
    pub fn set(&self, listeners: &[ListenerConfig]) {
        let mut expiries = Vec::new();
        for listener in listeners {
            let Some(tls) = &listener.tls else { continue };
            for certificate in &tls.certificates {
                let Some(validity) = &certificate.validity else {
                    continue;
                };
                let name = certificate.cert.as_ref().map_or_else(
                    || "self-signed".to_owned(),
                    |file| file.display().to_string(),
                );
                expiries.push(Expiry {
                    listener: listener.name.clone(),
                    name,
                    not_after: validity.not_after.0,
                });
            }
            let now = crate::certs::unix_now();
            for (_, message) in tls.expiry(&format!("listener {:?}: tls", listener.name), now) {
                tracing::warn!("{message}");
            }
        }
        self.0.store(Arc::new(expiries));
    }
}

/// Reads [`CertificateExpiry`] at scrape time.
pub struct ExpiryCollector(pub Arc<CertificateExpiry>);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let expiries = self.0.0.load();
        if expiries.is_empty() {
            return Ok(());
        }
        let now = crate::certs::unix_now();
        let mut family = encoder.encode_descriptor(
            "gateway_tls_certificate_expiry_seconds",
            "Seconds until the certificate's notAfter (negative once expired), by listener \
             and certificate file",
            None,
            MetricType::Gauge,
        )?;
        for expiry in expiries.iter() {
            let labels = [
                ("listener", expiry.listener.as_str()),
                ("name", expiry.name.as_str()),
            ];
            ConstGauge::new(expiry.not_after - now).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
