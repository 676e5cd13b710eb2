//! Reading and writing the program's maps. Layouts come from gateway-common.

use std::collections::HashSet;

use aya::{
    Ebpf, Pod,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
};
use gateway_common::{
    ACTION_ALLOW, ACTION_DENY, Counter, POLICY_ALLOW_LIST, POLICY_DENY_LIST, Reason, Rule,
    Settings, maps as map_names,
};
use ipnet::IpNet;

use super::XdpError;
use crate::config::{Action, FirewallConfig, Policy, ProtectedPorts};

pub(super) fn write_settings(ebpf: &mut Ebpf, firewall: &FirewallConfig) -> Result<(), XdpError> {
    let mut settings: Array<&mut MapData, Settings> = map_mut(ebpf, map_names::SETTINGS)?;
    let value = Settings {
        policy: match firewall.policy {
            Policy::DenyList => POLICY_DENY_LIST,
            Policy::AllowList => POLICY_ALLOW_LIST,
        },
        port_filter: u8::from(!firewall.protected_ports.is_all()),
        _pad: [0; 6],
    };
    settings
        .set(0, value, 0)
        .map_err(|error| XdpError::map(map_names::SETTINGS, error))
}

pub(super) fn write_ports(
    ebpf: &mut Ebpf,
    applied: &mut [u8],
    protected: &ProtectedPorts,
) -> Result<(), XdpError> {
    let mut wanted = vec![0u8; applied.len()];
    for (port, protocols) in protected.entries() {
        wanted[usize::from(port)] |= protocols;
    }
    let mut ports: Array<&mut MapData, u8> = map_mut(ebpf, map_names::PORTS)?;
    for (port, (&want, have)) in wanted.iter().zip(applied.iter_mut()).enumerate() {
        if want != *have {
            ports
                .set(port as u32, want, 0)
                .map_err(|error| XdpError::map(map_names::PORTS, error))?;
            *have = want;
        }
    }
    Ok(())
}

/// Makes both tries hold exactly the configured rules.
pub(super) fn sync_rules(ebpf: &mut Ebpf, firewall: &FirewallConfig) -> Result<(), XdpError> {
    let v4 = firewall
        .rules_v4()
        .enumerate()
        .map(|(id, rule)| match rule.net {
            IpNet::V4(net) => (
                net.prefix_len(),
                net.addr().octets(),
                rule_value(rule.action, id),
            ),
            IpNet::V6(_) => unreachable!("rules_v4 yields IPv4 rules"),
        });
    sync_trie(ebpf, map_names::RULES_V4, v4)?;
    let v6 = firewall
        .rules_v6()
        .enumerate()
        .map(|(id, rule)| match rule.net {
            IpNet::V6(net) => (
                net.prefix_len(),
                net.addr().octets(),
                rule_value(rule.action, id),
            ),
            IpNet::V4(_) => unreachable!("rules_v6 yields IPv6 rules"),
        });
    sync_trie(ebpf, map_names::RULES_V6, v6)
}

fn rule_value(action: Action, index: usize) -> Rule {
    Rule {
        action: match action {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
        },
        _pad: [0; 3],
        id: u32::try_from(index + 1).unwrap_or(u32::MAX),
    }
}

fn sync_trie<const N: usize>(
    ebpf: &mut Ebpf,
    name: &'static str,
    rules: impl Iterator<Item = (u8, [u8; N], Rule)>,
) -> Result<(), XdpError>
where
    [u8; N]: Pod,
{
    let mut trie: LpmTrie<&mut MapData, [u8; N], Rule> = map_mut(ebpf, name)?;
    let mut wanted = HashSet::new();
    for (prefix_len, data, rule) in rules {
        let key = Key::new(u32::from(prefix_len), data);
        trie.insert(&key, rule, 0)
            .map_err(|error| XdpError::map(name, error))?;
        wanted.insert((u32::from(prefix_len), data));
    }
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains(&(key.prefix_len(), key.data())))
        .collect();
    for key in stale {
        trie.remove(&key)
            .map_err(|error| XdpError::map(name, error))?;
    }
    Ok(())
}

pub(super) fn read_counters(ebpf: &Ebpf) -> Result<Vec<(Reason, Counter)>, XdpError> {
    let map = ebpf
        .map(map_names::COUNTERS)
        .ok_or(XdpError::MissingMap(map_names::COUNTERS))?;
    let counters: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(map).map_err(|error| XdpError::map(map_names::COUNTERS, error))?;
    Reason::ALL
        .iter()
        .map(|&reason| {
            let per_cpu = counters
                .get(&(reason as u32), 0)
                .map_err(|error| XdpError::map(map_names::COUNTERS, error))?;
            let total = per_cpu.iter().fold(Counter::default(), |sum, cpu| Counter {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
            });
            Ok((reason, total))
        })
        .collect()
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?;
    T::try_from(map).map_err(|error| XdpError::map(name, error))
}
