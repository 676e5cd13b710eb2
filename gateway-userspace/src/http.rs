//! HTTP facts that several layers share (config validates against them, proxy applies
//! them): a leaf, importing nothing from the crate.

/// Hop-by-hop fields (RFC 9110 7.6.1), besides those `Connection` names.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];
