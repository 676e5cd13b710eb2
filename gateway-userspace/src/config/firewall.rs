//! `[firewall]`: the source-CIDR policy that the XDP program (or, with XDP off, userspace)
//! enforces. Compiles rules into one list where the most specific prefix wins, and explains
//! overlaps so an operator can see what each rule really does.

use std::{collections::HashMap, net::IpAddr, ops::RangeInclusive};

use gateway_common::{PORT_TCP, PORT_UDP};
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    Problems, XdpConfig,
    rate_limit::{RateLimitConfig, RawRateLimit},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Pass sources unless a deny rule matches.
    #[default]
    DenyList,
    /// Drop sources unless an allow rule matches.
    AllowList,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    fn list(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// One source-CIDR rule and where it came from (for messages and listings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRule {
    pub net: IpNet,
    pub action: Action,
    /// The config key that declared it, e.g. `firewall.deny[3]`.
    pub origin: String,
    /// A dry-run deny: counted (in its hit counter), never dropping.
    pub shadow: bool,
}

/// Destination ports subject to policy. Empty means every packet is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedPorts(Vec<(RangeInclusive<u16>, u8)>);

impl ProtectedPorts {
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    /// Protocol bits (`PORT_TCP | PORT_UDP`) protected on `port`.
    pub fn protocols(&self, port: u16) -> u8 {
        self.0
            .iter()
            .filter(|(range, _)| range.contains(&port))
            .fold(0, |bits, (_, protocols)| bits | protocols)
    }

    /// `(port, protocol bits)` for every protected port.
    pub fn entries(&self) -> impl Iterator<Item = (u16, u8)> + '_ {
        self.0
            .iter()
            .flat_map(|(range, bits)| range.clone().map(move |port| (port, *bits)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct FirewallConfig {
    pub policy: Policy,
    pub protected_ports: ProtectedPorts,
    /// Allow and deny rules together; a network appears at most once.
    pub rules: Vec<CidrRule>,
    /// Per-source limits; `None` when `[firewall.rate_limit]` is absent.
    pub rate_limit: Option<RateLimitConfig>,
}

impl FirewallConfig {
    pub fn rules_v4(&self) -> impl Iterator<Item = &CidrRule> {
        self.rules.iter().filter(|rule| rule.net.addr().is_ipv4())
    }

    pub fn rules_v6(&self) -> impl Iterator<Item = &CidrRule> {
        self.rules.iter().filter(|rule| rule.net.addr().is_ipv6())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirewall {
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    protected_ports: Vec<PortSpec>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    rate_limit: Option<RawRateLimit>,
}

/// `443` (TCP and UDP), `"443/tcp"`, `"8000-8100/udp"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortSpec {
    Number(u16),
    Text(String),
}

/// Overlap explanations beyond this many are summarised, so 100k-rule files stay readable.
const MAX_OVERLAP_NOTES: usize = 20;

impl RawFirewall {
    pub(super) fn compile(
        self,
        xdp: &XdpConfig,
        problems: &mut Problems,
        warnings: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) -> FirewallConfig {
        let protected_ports = compile_ports(&self.protected_ports, problems);
        let mut rules: Vec<CidrRule> = Vec::with_capacity(self.deny.len() + self.allow.len());
        let mut seen: HashMap<IpNet, usize> = HashMap::new();
        let lists = [(Action::Deny, &self.deny), (Action::Allow, &self.allow)];
        for (action, list) in lists {
            for (index, text) in list.iter().enumerate() {
                let origin = format!("firewall.{}[{index}]", action.list());
                let Some(net) = parse_cidr(text, &origin, problems) else {
                    continue;
                };
                match seen.get(&net).map(|&at| &rules[at]) {
                    Some(earlier) if earlier.action == action => {
                        warnings.push(format!("{origin}: {net} repeats {}", earlier.origin));
                    }
                    Some(earlier) => problems.add(
                        origin,
                        format!(
                            "{net} is also in {}: a source cannot be both allowed and denied; \
                             remove one of them",
                            earlier.origin
                        ),
                    ),
                    None => {
                        seen.insert(net, rules.len());
                        rules.push(CidrRule {
                            net,
                            action,
                            origin,
                            shadow: false,
                        });
                    }
                }
            }
        }

        let v4 = rules
            .iter()
            .filter(|rule| rule.net.addr().is_ipv4())
            .count();
        let v6 = rules.len() - v4;
        for (family, count, key, max) in [
            ("IPv4", v4, "xdp.max_rules_v4", xdp.max_rules_v4),
            ("IPv6", v6, "xdp.max_rules_v6", xdp.max_rules_v6),
        ] {
            if count > max as usize {
                problems.add(
                    "firewall",
                    format!("{count} {family} rules exceed {key} = {max}: raise {key}"),
                );
            }
        }

        if self.policy == Policy::AllowList && self.allow.is_empty() {
            warnings.push(format!(
                "firewall.policy = \"allow-list\" with no allow rules drops every source{}",
                if protected_ports.is_all() {
                    ", on every port (SSH included): add your management network to firewall.allow"
                } else {
                    " on the protected ports"
                }
            ));
        }
        explain_overlaps(self.policy, &rules, &seen, warnings, notes);

        FirewallConfig {
            policy: self.policy,
            protected_ports,
            rules,
            rate_limit: self.rate_limit.map(|raw| raw.compile(problems)),
        }
    }
}

pub(super) fn parse_cidr(text: &str, origin: &str, problems: &mut Problems) -> Option<IpNet> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                problems.add(
                    origin,
                    format!(
                        "{text:?} is not an IP address or CIDR (e.g. \"192.0.2.0/24\", \"2001:db8::/32\")"
                    ),
                );
                return None;
            }
        },
    };
    if net.trunc() != net {
        problems.add(
            origin,
            format!(
                "{text:?} has host bits set: write \"{}\" for the network, or \"{}\" for one address",
                net.trunc(),
                IpNet::from(net.addr())
            ),
        );
        return None;
    }
    if let IpAddr::V6(addr) = net.addr()
        && let Some(v4) = addr.to_ipv4_mapped()
    {
        problems.add(
            origin,
            format!(
                "{text:?} is an IPv4-mapped IPv6 network, which never matches IPv4 packets: \
                 write it as IPv4 ({v4}/{})",
                net.prefix_len().saturating_sub(96)
            ),
        );
        return None;
    }
    Some(net)
}

fn compile_ports(specs: &[PortSpec], problems: &mut Problems) -> ProtectedPorts {
    let mut ranges = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let key = format!("firewall.protected_ports[{index}]");
        match parse_port_spec(spec) {
            Ok(entry) => ranges.push(entry),
            Err(reason) => problems.add(key, reason),
        }
    }
    ProtectedPorts(ranges)
}

fn parse_port_spec(spec: &PortSpec) -> Result<(RangeInclusive<u16>, u8), String> {
    const HELP: &str =
        "expected a port (443), \"443/tcp\", \"443/udp\" or a range \"8000-8100/tcp\"";
    let text = match spec {
        PortSpec::Number(0) => return Err(format!("port 0 cannot be protected; {HELP}")),
        PortSpec::Number(port) => return Ok((*port..=*port, PORT_TCP | PORT_UDP)),
        PortSpec::Text(text) => text,
    };
    let (ports, protocols) = match text.split_once('/') {
        None => (text.as_str(), PORT_TCP | PORT_UDP),
        Some((ports, "tcp")) => (ports, PORT_TCP),
        Some((ports, "udp")) => (ports, PORT_UDP),
        Some(_) => return Err(format!("{text:?}: unknown protocol; {HELP}")),
    };
    let port = |part: &str| match part.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?}: {part:?} is not a port 1-65535; {HELP}")),
        Ok(port) => Ok(port),
    };
    let range = match ports.split_once('-') {
        Some((low, high)) => port(low)?..=port(high)?,
        None => port(ports)?..=port(ports)?,
    };
    if range.is_empty() {
        return Err(format!("{text:?}: the range is empty (low > high)"));
    }
    Ok((range, protocols))
}

/// Explains rules whose effect differs from what their list suggests. The most specific
/// prefix wins, so an allow inside a deny is an exception (and the reverse): a note. A rule
/// the policy makes redundant is a warning.
fn explain_overlaps(
    policy: Policy,
    rules: &[CidrRule],
    by_net: &HashMap<IpNet, usize>,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let (mut redundant, mut nested) = (Vec::new(), Vec::new());
    for rule in rules {
        let enclosing = enclosing_rule(rule.net, rules, by_net);
        let (list, text) = match (rule.action, enclosing, policy) {
            (Action::Allow, Some(outer), _) if outer.action == Action::Deny => (
                &mut nested,
                format!(
                    "{}: {} is an exception inside {} ({}): the more specific rule wins, so it is allowed",
                    rule.origin, rule.net, outer.origin, outer.net
                ),
            ),
            (Action::Deny, Some(outer), _) if outer.action == Action::Allow => (
                &mut nested,
                format!(
                    "{}: {} is carved out of {} ({}): the more specific rule wins, so it is denied",
                    rule.origin, rule.net, outer.origin, outer.net
                ),
            ),
            (Action::Allow, None, Policy::DenyList) => (
                &mut redundant,
                format!(
                    "{}: {} has no effect under policy \"deny-list\" (sources pass unless denied); \
                 allow rules only carve exceptions out of deny ranges",
                    rule.origin, rule.net
                ),
            ),
            (Action::Deny, None, Policy::AllowList) => (
                &mut redundant,
                format!(
                    "{}: {} is dropped by policy \"allow-list\" anyway; the rule only makes its \
                 drops count as dropped-deny",
                    rule.origin, rule.net
                ),
            ),
            _ => continue,
        };
        list.push(text);
    }
    summarise_into(warnings, redundant);
    summarise_into(notes, nested);
}

/// Appends the first [`MAX_OVERLAP_NOTES`] lines and a count of the rest.
fn summarise_into(out: &mut Vec<String>, lines: Vec<String>) {
    let extra = lines.len().saturating_sub(MAX_OVERLAP_NOTES);
    out.extend(lines.into_iter().take(MAX_OVERLAP_NOTES));
    if extra > 0 {
        out.push(format!("... and {extra} more like it"));
    }
}

/// The most specific other rule whose network contains `net`.
fn enclosing_rule<'a>(
    net: IpNet,
    rules: &'a [CidrRule],
    by_net: &HashMap<IpNet, usize>,
) -> Option<&'a CidrRule> {
    let mut candidate = net.supernet();
    while let Some(outer) = candidate {
        if let Some(&index) = by_net.get(&outer) {
            return Some(&rules[index]);
        }
        candidate = outer.supernet();
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    fn parse(firewall: &str) -> Result<Config, Vec<String>> {
        let text = format!("[xdp]\nmode = \"off\"\n[firewall]\n{firewall}");
        Config::parse(&text).map_err(|error| match error {
            ParseError::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
            ParseError::Syntax(error) => vec![error.to_string()],
        })
    }

    #[test]
    fn bad_cidrs_name_key_and_value() {
        let errors =
            parse(r#"deny = ["10.0.0.300/8", "10.1.2.3/8", "::ffff:10.0.0.0/104"]"#).unwrap_err();
        assert_eq!(
            errors,
            [
                "firewall.deny[0]: \"10.0.0.300/8\" is not an IP address or CIDR (e.g. \"192.0.2.0/24\", \"2001:db8::/32\")",
                "firewall.deny[1]: \"10.1.2.3/8\" has host bits set: write \"10.0.0.0/8\" for the network, or \"10.1.2.3/32\" for one address",
                "firewall.deny[2]: \"::ffff:10.0.0.0/104\" is an IPv4-mapped IPv6 network, which never matches IPv4 packets: write it as IPv4 (10.0.0.0/8)",
            ]
        );
    }

    #[test]
    fn same_network_in_both_lists_is_an_error() {
        let errors = parse(
            r#"deny = ["10.0.0.0/8"]
allow = ["10.0.0.0/8"]"#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "firewall.allow[0]: 10.0.0.0/8 is also in firewall.deny[0]: a source cannot be both allowed and denied; remove one of them"
            ]
        );
    }

    #[test]
    fn overlaps_are_explained() {
        let config = parse(
            r#"deny = ["10.0.0.0/8", "2001:db8::/32", "10.0.0.0/8", "192.0.2.7"]
allow = ["10.1.0.0/16", "2001:db8:1::/48", "198.51.100.0/24"]"#,
        )
        .unwrap();
        assert_eq!(
            config.warnings,
            [
                "firewall.deny[2]: 10.0.0.0/8 repeats firewall.deny[0]",
                "firewall.allow[2]: 198.51.100.0/24 has no effect under policy \"deny-list\" (sources pass unless denied); allow rules only carve exceptions out of deny ranges",
            ]
        );
        assert_eq!(
            config.notes,
            [
                "firewall.allow[0]: 10.1.0.0/16 is an exception inside firewall.deny[0] (10.0.0.0/8): the more specific rule wins, so it is allowed",
                "firewall.allow[1]: 2001:db8:1::/48 is an exception inside firewall.deny[1] (2001:db8::/32): the more specific rule wins, so it is allowed",
            ]
        );
        assert_eq!(config.firewall.rules.len(), 6);
        assert_eq!(config.firewall.rules_v4().count(), 4);
        assert_eq!(config.firewall.rules[2].net.to_string(), "192.0.2.7/32");
    }

    #[test]
    fn allow_list_overlaps_are_explained() {
        let config = parse(
            r#"policy = "allow-list"
allow = ["10.0.0.0/8"]
deny = ["10.9.0.0/16", "203.0.113.0/24"]"#,
        )
        .unwrap();
        assert_eq!(
            config.notes,
            [
                "firewall.deny[0]: 10.9.0.0/16 is carved out of firewall.allow[0] (10.0.0.0/8): the more specific rule wins, so it is denied"
            ]
        );
        assert_eq!(
            config.warnings,
            [
                "firewall.deny[1]: 203.0.113.0/24 is dropped by policy \"allow-list\" anyway; the rule only makes its drops count as dropped-deny"
            ]
        );
    }

    #[test]
    fn empty_allow_list_warns_about_lockout() {
        let config = parse(r#"policy = "allow-list""#).unwrap();
        assert_eq!(
            config.warnings,
            [
                "firewall.policy = \"allow-list\" with no allow rules drops every source, on every port (SSH included): add your management network to firewall.allow"
            ]
        );
    }

    #[test]
    fn protected_ports_forms() {
        let config = parse(r#"protected_ports = [80, "443/tcp", "8000-8002/udp", "53"]"#).unwrap();
        let ports = &config.firewall.protected_ports;
        assert_eq!(ports.protocols(80), 3);
        assert_eq!(ports.protocols(443), 1);
        assert_eq!(ports.protocols(8001), 2);
        assert_eq!(ports.protocols(53), 3);
        assert_eq!(ports.protocols(22), 0);
        assert_eq!(ports.entries().count(), 6);

        let errors =
            parse(r#"protected_ports = [0, "80/sctp", "9-8", "x/tcp", 70000]"#).unwrap_err();
        assert_eq!(errors.len(), 1, "70000 fails to deserialize: {errors:?}");
        let errors = parse(r#"protected_ports = [0, "80/sctp", "9-8", "x/tcp"]"#).unwrap_err();
        assert_eq!(
            errors,
            [
                "firewall.protected_ports[0]: port 0 cannot be protected; expected a port (443), \"443/tcp\", \"443/udp\" or a range \"8000-8100/tcp\"",
                "firewall.protected_ports[1]: \"80/sctp\": unknown protocol; expected a port (443), \"443/tcp\", \"443/udp\" or a range \"8000-8100/tcp\"",
                "firewall.protected_ports[2]: \"9-8\": the range is empty (low > high)",
                "firewall.protected_ports[3]: \"x/tcp\": \"x\" is not a port 1-65535; expected a port (443), \"443/tcp\", \"443/udp\" or a range \"8000-8100/tcp\"",
            ]
        );
    }

    #[test]
    fn rule_counts_are_bounded_by_map_sizes() {
        let text = "[xdp]\nmode = \"off\"\nmax_rules_v4 = 1\n[firewall]\ndeny = [\"10.0.0.0/8\", \"11.0.0.0/8\"]";
        let Err(ParseError::Invalid(problems)) = Config::parse(text) else {
            panic!("expected a problem");
        };
        assert_eq!(
            problems[0].to_string(),
            "firewall: 2 IPv4 rules exceed xdp.max_rules_v4 = 1: raise xdp.max_rules_v4"
        );
    }
}
