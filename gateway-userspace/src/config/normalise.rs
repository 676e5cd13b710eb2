//! `[normalise]` and a route's `escaped_slashes`: how request paths are made canonical
//! before routing (proxy/normalise.rs does it).

use serde::Deserialize;

/// What a route does with an encoded slash or backslash (`%2F`, `%5C`) in the path, as
/// Envoy's `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EscapedSlashes {
    /// 400: the upstream might decode it into a separator the gateway did not route on.
    #[default]
    Reject,
    /// Forwarded as `%2F` / `%5C`, data inside a segment: for upstreams that need them
    /// (object keys, encoded identifiers) and never decode them before routing.
    Keep,
}

/// `[normalise]`, the same for every route (paths are normalised before routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormaliseConfig {
    /// Collapse repeated slashes (`//`) before resolving dot segments, as nginx does.
    pub merge_slashes: bool,
}

impl Default for NormaliseConfig {
    fn default() -> NormaliseConfig {
        NormaliseConfig {
            merge_slashes: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNormalise {
    merge_slashes: Option<bool>,
}

impl RawNormalise {
    pub(super) fn compile(self) -> NormaliseConfig {
        NormaliseConfig {
            merge_slashes: self
                .merge_slashes
                .unwrap_or(NormaliseConfig::default().merge_slashes),
        }
    }
}
