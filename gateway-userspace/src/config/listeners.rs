//! `[[listeners]]`: where the proxy accepts connections, and what it speaks there.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{
    Problems,
    client_auth::{ClientAuth, RawClientAuth, compile_client_auth},
    proxy::check_name,
    tls::{RawTls, TlsConfig, compile_tls},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Certificates of an `https` listener (`None` for `http`).
    pub tls: Option<TlsConfig>,
    /// Client certificates (mTLS) of an `https` listener; `None`: none asked for.
    pub client_auth: Option<ClientAuth>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerProtocol {
    /// HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    #[default]
    Http,
    /// TLS 1.2/1.3 with the listener's `tls` certificates; HTTP/2 or HTTP/1.1 by ALPN.
    Https,
}

impl ListenerProtocol {
    /// The scheme clients used, for `X-Forwarded-Proto` and `Forwarded: proto=`.
    pub fn scheme(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    name: String,
    address: String,
    #[serde(default)]
    protocol: ListenerProtocol,
    tls: Option<RawTls>,
    client_auth: Option<RawClientAuth>,
}

pub(super) fn compile_listeners(
    raw: Vec<RawListener>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Vec<ListenerConfig> {
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (index, listener) in raw.into_iter().enumerate() {
        let key = format!("listeners[{index}]");
        check_name(&listener.name, &format!("{key}.name"), problems);
        if listeners.iter().any(|other| other.name == listener.name) {
            problems.add(
                format!("{key}.name"),
                format!("{:?} is used twice", listener.name),
            );
        }
        let Ok(address) = listener.address.parse::<SocketAddr>() else {
            problems.add(
                format!("{key}.address"),
                format!(
                    "{:?} is not an IP:port address (e.g. \"0.0.0.0:8080\", \"[::]:8080\")",
                    listener.address
                ),
            );
            continue;
        };
        if let Some(other) = listeners.iter().find(|other| other.address == address) {
            problems.add(
                format!("{key}.address"),
                format!("{address} is also the address of listener {:?}", other.name),
            );
        }
        let tls = match (listener.protocol, listener.tls) {
            (ListenerProtocol::Https, Some(tls)) => {
                compile_tls(tls, &format!("{key}.tls"), problems, warnings)
            }
            (ListenerProtocol::Https, None) => {
                problems.add(
                    format!("{key}.tls"),
                    "protocol = \"https\" needs tls = { certificates = [{ cert = \"...\", key = \"...\" }] }",
                );
                None
            }
            (ListenerProtocol::Http, Some(_)) => {
                problems.add(format!("{key}.tls"), "only used with protocol = \"https\"");
                None
            }
            (ListenerProtocol::Http, None) => None,
        };
        let client_auth = listener.client_auth.and_then(|raw| {
            let key = format!("{key}.client_auth");
            if listener.protocol != ListenerProtocol::Https {
                problems.add(key, "only used with protocol = \"https\"");
                return None;
            }
            compile_client_auth(raw, &key, problems)
        });
        listeners.push(ListenerConfig {
            name: listener.name,
            address,
            protocol: listener.protocol,
            tls,
            client_auth,
        });
    }
    listeners
}
