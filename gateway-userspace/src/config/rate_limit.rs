//! `[firewall.rate_limit]`: coarse per-source limits enforced in the kernel. A default class,
//! and named classes that give CIDR ranges (partners, monitoring) other limits.

use std::collections::HashMap;

use ipnet::IpNet;
use serde::Deserialize;

use super::{Problems, firewall::parse_cidr};

/// Classes besides the default that fit in the kernel's class table.
pub const MAX_RATE_CLASSES: usize = gateway_common::RATE_CLASS_SLOTS as usize - 1;

/// Limits of one class. `None` means that limit is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// (packets per second, burst packets)
    pub packets: Option<(u64, u64)>,
    /// (bytes per second, burst bytes)
    pub bytes: Option<(u64, u64)>,
    /// (TCP SYNs per second, burst SYNs)
    pub syns: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateClassConfig {
    pub name: String,
    pub limits: Limits,
    pub cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Limits for sources no class names.
    pub default: Limits,
    /// Index + 1 is the class's number in the kernel (0 is the default).
    pub classes: Vec<RateClassConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    #[serde(flatten)]
    limits: RawLimits,
    #[serde(default)]
    classes: Vec<RawClass>,
}

/// One class's limits as written in the config (and in the admin API). Absent: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_burst: Option<u64>,
}

impl From<Limits> for RawLimits {
    fn from(limits: Limits) -> RawLimits {
        RawLimits {
            packets_per_second: limits.packets.map(|(rate, _)| rate),
            burst: limits.packets.map(|(_, burst)| burst),
            bytes_per_second: limits.bytes.map(|(rate, _)| rate),
            burst_bytes: limits.bytes.map(|(_, burst)| burst),
            syn_per_second: limits.syns.map(|(rate, _)| rate),
            syn_burst: limits.syns.map(|(_, burst)| burst),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: String,
    cidrs: Vec<String>,
    #[serde(flatten)]
    limits: RawLimits,
}

impl RawRateLimit {
    pub(super) fn compile(self, problems: &mut Problems) -> RateLimitConfig {
        let key = "firewall.rate_limit";
        let default = self.limits.compile(key, problems);
        if self.classes.len() > MAX_RATE_CLASSES {
            problems.add(
                format!("{key}.classes"),
                format!(
                    "{} classes, at most {MAX_RATE_CLASSES} fit",
                    self.classes.len()
                ),
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut owners: HashMap<IpNet, String> = HashMap::new();
        let mut classes = Vec::with_capacity(self.classes.len());
        for (index, class) in self.classes.into_iter().enumerate() {
            let key = format!("{key}.classes[{index}]");
            if let Some(earlier) = names.insert(class.name.clone(), index) {
                problems.add(
                    format!("{key}.name"),
                    format!("{:?} is also the name of classes[{earlier}]", class.name),
                );
            }
            let limits = class.limits.compile(&key, problems);
            let mut cidrs = Vec::with_capacity(class.cidrs.len());
            for (i, text) in class.cidrs.iter().enumerate() {
                let cidr_key = format!("{key}.cidrs[{i}]");
                let Some(net) = parse_cidr(text, &cidr_key, problems) else {
                    continue;
                };
                if let Some(owner) = owners.insert(net, cidr_key.clone()) {
                    problems.add(cidr_key, format!("{net} is already in {owner}"));
                    continue;
                }
                cidrs.push(net);
            }
            classes.push(RateClassConfig {
                name: class.name,
                limits,
                cidrs,
            });
        }
        RateLimitConfig { default, classes }
    }
}

impl RawLimits {
    /// Validates limits given at run time (admin API); problems name `key`'s fields.
    pub fn validate(&self, key: &str) -> Result<Limits, Vec<super::Problem>> {
        let mut problems = Problems::default();
        let limits = self.compile(key, &mut problems);
        if problems.0.is_empty() {
            Ok(limits)
        } else {
            Err(problems.0)
        }
    }

    fn compile(&self, key: &str, problems: &mut Problems) -> Limits {
        let mut pair = |rate: Option<u64>, burst: Option<u64>, names: (&str, &str)| {
            match (rate, burst) {
                (None, None) => None,
                (None, Some(_)) => {
                    problems.add(
                        format!("{key}.{}", names.1),
                        format!("needs {} as well", names.0),
                    );
                    None
                }
                (Some(0), _) => {
                    problems.add(
                        format!("{key}.{}", names.0),
                        "must be at least 1 (leave it out for no limit)",
                    );
                    None
                }
                (Some(_), Some(0)) => {
                    problems.add(format!("{key}.{}", names.1), "must be at least 1");
                    None
                }
                // Without a burst, one second's worth.
                (Some(rate), burst) => Some((rate, burst.unwrap_or(rate))),
            }
        };
        Limits {
            packets: pair(
                self.packets_per_second,
                self.burst,
                ("packets_per_second", "burst"),
            ),
            bytes: pair(
                self.bytes_per_second,
                self.burst_bytes,
                ("bytes_per_second", "burst_bytes"),
            ),
            syns: pair(
                self.syn_per_second,
                self.syn_burst,
                ("syn_per_second", "syn_burst"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    fn parse(rate_limit: &str) -> Result<Config, Vec<String>> {
        let text = format!("[xdp]\nmode = \"off\"\n[firewall.rate_limit]\n{rate_limit}");
        Config::parse(&text).map_err(|error| match error {
            ParseError::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
            ParseError::Syntax(error) => vec![error.to_string()],
        })
    }

    #[test]
    fn defaults_and_classes() {
        let config = parse(
            "packets_per_second = 100\nsyn_per_second = 10\nsyn_burst = 20\n\
             [[firewall.rate_limit.classes]]\nname = \"partner\"\ncidrs = [\"198.51.100.0/24\"]\n\
             packets_per_second = 10000\nburst = 20000",
        )
        .unwrap();
        let rate = config.firewall.rate_limit.unwrap();
        assert_eq!(rate.default.packets, Some((100, 100)));
        assert_eq!(rate.default.syns, Some((10, 20)));
        assert_eq!(rate.default.bytes, None);
        assert_eq!(rate.classes[0].name, "partner");
        assert_eq!(rate.classes[0].limits.packets, Some((10000, 20000)));
        assert_eq!(rate.classes[0].cidrs[0].to_string(), "198.51.100.0/24");
    }

    #[test]
    fn problems_name_the_key() {
        let errors = parse(
            "packets_per_second = 0\nburst_bytes = 10\n\
             [[firewall.rate_limit.classes]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\n\
             [[firewall.rate_limit.classes]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\", \"x\"]",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "firewall.rate_limit.packets_per_second: must be at least 1 (leave it out for no limit)",
                "firewall.rate_limit.burst_bytes: needs bytes_per_second as well",
                "firewall.rate_limit.classes[1].name: \"a\" is also the name of classes[0]",
                "firewall.rate_limit.classes[1].cidrs[0]: 10.0.0.0/8 is already in firewall.rate_limit.classes[0].cidrs[0]",
                "firewall.rate_limit.classes[1].cidrs[1]: \"x\" is not an IP address or CIDR (e.g. \"192.0.2.0/24\", \"2001:db8::/32\")",
            ]
        );
    }
}
