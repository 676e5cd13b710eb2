//! A route's `authorize`: scopes, claims and source addresses that must hold.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::Deserialize;

use super::{AuthConfig, RouteAuth};
use crate::config::{Problems, firewall::parse_cidr};

/// A route's `authorize`: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Authorize {
    /// All of these must be in the token's `scope` (space separated) or `scp` claim.
    pub scopes: Vec<String>,
    /// Claim name -> required value (a string claim equal to it, or an array holding it).
    pub claims: Vec<(String, String)>,
    /// The caller must be in at least one of these consumer groups.
    pub groups: Vec<String>,
    /// The client certificate's identity must be one of these (empty: any verified one).
    pub client_certs: Vec<String>,
    /// Empty: any source not denied.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawAuthorize {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: HashMap<String, String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    client_certs: Vec<String>,
    #[serde(default)]
    sources: RawSources,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

pub(in crate::config) fn compile_authorize(
    raw: RawAuthorize,
    key: &str,
    route_auth: Option<&RouteAuth>,
    auth: &AuthConfig,
    problems: &mut Problems,
) -> Authorize {
    let needs_identity = !raw.scopes.is_empty() || !raw.claims.is_empty();
    if needs_identity && route_auth.is_none_or(|a| a.jwt.is_none()) {
        problems.add(
            key,
            "scopes and claims need a token: set auth.jwt on this route",
        );
    }
    if !raw.groups.is_empty() && route_auth.is_none() {
        problems.add(
            format!("{key}.groups"),
            "groups need an authenticated caller: set auth on this route",
        );
    }
    if !raw.client_certs.is_empty() && route_auth.is_none_or(|a| !a.client_cert) {
        problems.add(
            format!("{key}.client_certs"),
            "needs a client certificate: set auth = { client_cert = true } on this route",
        );
    }
    // Groups can come from a token's groups claim; otherwise only consumers have them.
    let token_groups = route_auth
        .and_then(|a| a.jwt)
        .is_some_and(|index| auth.providers[index].groups_claim.is_some());
    for (index, group) in raw.groups.iter().enumerate() {
        if !token_groups && !auth.consumers.iter().any(|c| c.groups.contains(group)) {
            problems.add(
                format!("{key}.groups[{index}]"),
                format!("no consumer is in group {group:?}"),
            );
        }
    }
    let cidrs = |list: &[String], name: &str, problems: &mut Problems| -> Vec<IpNet> {
        list.iter()
            .enumerate()
            .filter_map(|(index, text)| {
                parse_cidr(text, &format!("{key}.sources.{name}[{index}]"), problems)
            })
            .collect()
    };
    let mut claims: Vec<_> = raw.claims.into_iter().collect();
    claims.sort();
    Authorize {
        scopes: raw.scopes,
        claims,
        groups: raw.groups,
        client_certs: raw.client_certs,
        allow: cidrs(&raw.sources.allow, "allow", problems),
        deny: cidrs(&raw.sources.deny, "deny", problems),
    }
}
