//! Reading and writing the program's maps. Layouts come from gateway-common.

use std::collections::HashSet;

use aya::{
    Ebpf, Pod,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use gateway_common::{
    COUNTER_SLOTS, Counter, INTERFACE_INDEXES, POLICY_ALLOW_LIST, POLICY_DENY_LIST, RateClass,
    Reason, Rule, Settings, maps as map_names,
};
use ipnet::IpNet;

use super::XdpError;
use crate::config::{FirewallConfig, Limits, Policy, ProtectedPorts};

/// The settings entry for `firewall`; `rate_generation` makes every source pick its rate
/// class again, `bans` says whether the ban tries may hold entries.
pub(super) fn settings_for(
    firewall: &FirewallConfig,
    rate_generation: u32,
    bans: bool,
) -> Settings {
    Settings {
        policy: match firewall.policy {
            Policy::DenyList => POLICY_DENY_LIST,
            Policy::AllowList => POLICY_ALLOW_LIST,
        },
        port_filter: u8::from(!firewall.protected_ports.is_all()),
        rate_limit: u8::from(firewall.rate_limit.is_some()),
        bans: u8::from(bans),
        rate_generation,
        under_attack: 0,
        _pad: [0; 3],
    }
}

pub(super) fn write_settings(ebpf: &mut Ebpf, value: Settings) -> Result<(), XdpError> {
    let mut settings: Array<&mut MapData, Settings> = map_mut(ebpf, map_names::SETTINGS)?;
    settings
        .set(0, value, 0)
        .map_err(|error| XdpError::map(map_names::SETTINGS, error))
}

pub(super) fn read_settings(ebpf: &Ebpf) -> Result<Settings, XdpError> {
    let map = ebpf
        .map(map_names::SETTINGS)
        .ok_or(XdpError::MissingMap(map_names::SETTINGS))?;
    let settings: Array<&MapData, Settings> =
        Array::try_from(map).map_err(|error| XdpError::map(map_names::SETTINGS, error))?;
    settings
        .get(&0, 0)
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

/// The trie key of `net`: (prefix length, address bytes) per family.
enum TrieKey {
    V4(Key<[u8; 4]>),
    V6(Key<[u8; 16]>),
}

fn trie_key(net: &IpNet) -> TrieKey {
    match net {
        IpNet::V4(net) => TrieKey::V4(Key::new(u32::from(net.prefix_len()), net.addr().octets())),
        IpNet::V6(net) => TrieKey::V6(Key::new(u32::from(net.prefix_len()), net.addr().octets())),
    }
}

/// Writes each rule's trie entry (inserted or replaced in place: no moment without it), a
/// batch of entries per syscall.
pub(super) fn put_rules(ebpf: &mut Ebpf, rules: &[(IpNet, Rule)]) -> Result<(), XdpError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (net, rule) in rules {
        match trie_key(net) {
            TrieKey::V4(key) => v4.push((key, *rule)),
            TrieKey::V6(key) => v6.push((key, *rule)),
        }
    }
    super::batch::update_trie(ebpf, map_names::RULES_V4, &v4)?;
    super::batch::update_trie(ebpf, map_names::RULES_V6, &v6)
}

/// Deletes the trie entries of `nets`; one already gone is fine.
pub(super) fn remove_rules(ebpf: &mut Ebpf, nets: &[IpNet]) -> Result<(), XdpError> {
    let gone = |result: Result<(), MapError>, name: &'static str| match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(error) => Err(XdpError::map(name, error)),
    };
    for net in nets {
        match trie_key(net) {
            TrieKey::V4(key) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], Rule> =
                    map_mut(ebpf, map_names::RULES_V4)?;
                gone(trie.remove(&key), map_names::RULES_V4)?;
            }
            TrieKey::V6(key) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], Rule> =
                    map_mut(ebpf, map_names::RULES_V6)?;
                gone(trie.remove(&key), map_names::RULES_V6)?;
            }
        }
    }
    Ok(())
}

/// Deletes every trie entry that is not one of `rules` (all the rules there are): a walk
/// over the tries, done only when what they hold is not known.
pub(super) fn remove_stale_rules(ebpf: &mut Ebpf, rules: &[(IpNet, Rule)]) -> Result<(), XdpError> {
    let v4 = rules.iter().filter_map(|(net, rule)| match net {
        IpNet::V4(net) => Some((net.prefix_len(), net.addr().octets(), *rule)),
        IpNet::V6(_) => None,
    });
    remove_stale::<4, Rule>(ebpf, map_names::RULES_V4, v4)?;
    let v6 = rules.iter().filter_map(|(net, rule)| match net {
        IpNet::V6(net) => Some((net.prefix_len(), net.addr().octets(), *rule)),
        IpNet::V4(_) => None,
    });
    remove_stale::<16, Rule>(ebpf, map_names::RULES_V6, v6)
}

/// Zeroes the hit counters of rule ids `ids` (whose rule changed), on every CPU.
pub(super) fn reset_rule_hits(
    ebpf: &mut Ebpf,
    ids: impl Iterator<Item = u32>,
) -> Result<(), XdpError> {
    let mut hits: PerCpuArray<&mut MapData, u64> = map_mut(ebpf, map_names::RULE_HITS)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, error)| XdpError::Rejected {
        reason: format!("counting CPUs: {error}"),
        log: String::new(),
    })?;
    for id in ids {
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|error| XdpError::map(map_names::RULE_HITS, MapError::from(error)))?;
        hits.set(id, zeros, 0)
            .map_err(|error| XdpError::map(map_names::RULE_HITS, error))?;
    }
    Ok(())
}

/// Packets matched by each rule id of `ids`, summed over CPUs.
pub(super) fn read_rule_hits(
    ebpf: &Ebpf,
    ids: impl Iterator<Item = u32>,
) -> Result<Vec<u64>, XdpError> {
    let map = ebpf
        .map(map_names::RULE_HITS)
        .ok_or(XdpError::MissingMap(map_names::RULE_HITS))?;
    let hits: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(|error| XdpError::map(map_names::RULE_HITS, error))?;
    ids.map(|id| {
        hits.get(&id, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .map_err(|error| XdpError::map(map_names::RULE_HITS, error))
    })
    .collect()
}

/// Writes the rate classes (0 = default) and the prefixes that pick them.
pub(super) fn write_rate_limits(
    ebpf: &mut Ebpf,
    firewall: &FirewallConfig,
) -> Result<(), XdpError> {
    let (default, classes) = match &firewall.rate_limit {
        Some(rate) => (rate.default, rate.classes.as_slice()),
        None => (Limits::default(), &[][..]),
    };
    let mut table: Array<&mut MapData, RateClass> = map_mut(ebpf, map_names::RATE_CLASSES)?;
    let all = std::iter::once(default).chain(classes.iter().map(|class| class.limits));
    for (index, limits) in all.enumerate() {
        table
            .set(index as u32, rate_class(&limits), 0)
            .map_err(|error| XdpError::map(map_names::RATE_CLASSES, error))?;
    }
    let prefixes = || {
        classes
            .iter()
            .enumerate()
            .flat_map(|(index, class)| class.cidrs.iter().map(move |net| (*net, index as u32 + 1)))
    };
    let v4 = prefixes().filter_map(|(net, class)| match net {
        IpNet::V4(net) => Some((net.prefix_len(), net.addr().octets(), class)),
        IpNet::V6(_) => None,
    });
    sync_trie(ebpf, map_names::RATE_PREFIXES_V4, v4)?;
    let v6 = prefixes().filter_map(|(net, class)| match net {
        IpNet::V6(net) => Some((net.prefix_len(), net.addr().octets(), class)),
        IpNet::V4(_) => None,
    });
    sync_trie(ebpf, map_names::RATE_PREFIXES_V6, v6)
}

/// GCRA parameters: see `gateway_common::RateClass`.
fn rate_class(limits: &Limits) -> RateClass {
    const NS: u64 = 1_000_000_000;
    let gcra = |limit: Option<(u64, u64)>, scale: u64| match limit {
        Some((rate, burst)) => {
            let interval = (NS * scale / rate).max(1);
            (interval, interval.saturating_mul(burst))
        }
        None => (0, 0),
    };
    let (packet_interval_ns, packet_burst_ns) = gcra(limits.packets, 1);
    let (byte_interval_fp, byte_burst_fp) = gcra(limits.bytes, 16);
    let (syn_interval_ns, syn_burst_ns) = gcra(limits.syns, 1);
    RateClass {
        packet_interval_ns,
        packet_burst_ns,
        byte_interval_fp,
        byte_burst_fp,
        syn_interval_ns,
        syn_burst_ns,
    }
}

pub(super) fn sync_trie<const N: usize, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    rules: impl Iterator<Item = (u8, [u8; N], V)>,
) -> Result<(), XdpError>
where
    [u8; N]: Pod,
{
    let mut trie: LpmTrie<&mut MapData, [u8; N], V> = map_mut(ebpf, name)?;
    let mut wanted = Vec::new();
    for (prefix_len, data, rule) in rules {
        let key = Key::new(u32::from(prefix_len), data);
        trie.insert(&key, rule, 0)
            .map_err(|error| XdpError::map(name, error))?;
        wanted.push((prefix_len, data, rule));
    }
    remove_stale::<N, V>(ebpf, name, wanted.into_iter())
}

/// Deletes the entries of trie `name` that are not in `keep`.
fn remove_stale<const N: usize, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    keep: impl Iterator<Item = (u8, [u8; N], V)>,
) -> Result<(), XdpError>
where
    [u8; N]: Pod,
{
    let wanted: HashSet<(u32, [u8; N])> = keep
        .map(|(prefix_len, data, _)| (u32::from(prefix_len), data))
        .collect();
    let mut trie: LpmTrie<&mut MapData, [u8; N], V> = map_mut(ebpf, name)?;
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

/// Packets and bytes per reason, summed over CPUs, for the counter `blocks` given (every
/// block: the totals; one block: one interface's).
pub(super) fn read_counters(
    ebpf: &Ebpf,
    blocks: std::ops::Range<u32>,
) -> Result<Vec<(Reason, Counter)>, XdpError> {
    let map = ebpf
        .map(map_names::COUNTERS)
        .ok_or(XdpError::MissingMap(map_names::COUNTERS))?;
    let counters: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(map).map_err(|error| XdpError::map(map_names::COUNTERS, error))?;
    Reason::ALL
        .iter()
        .map(|&reason| {
            let mut total = Counter::default();
            for block in blocks.clone() {
                let per_cpu = counters
                    .get(&(block * COUNTER_SLOTS + reason as u32), 0)
                    .map_err(|error| XdpError::map(map_names::COUNTERS, error))?;
                for cpu in per_cpu.iter() {
                    total.packets += cpu.packets;
                    total.bytes += cpu.bytes;
                }
            }
            Ok((reason, total))
        })
        .collect()
}

/// Counts `if_index`'s packets in its own block of counters.
pub(super) fn set_interface_block(
    ebpf: &mut Ebpf,
    if_index: u32,
    block: u32,
) -> Result<(), XdpError> {
    if if_index >= INTERFACE_INDEXES {
        tracing::warn!(
            if_index,
            "interface index too high for its own counters: counted in the totals only"
        );
        return Ok(());
    }
    let mut interfaces: Array<&mut MapData, u32> = map_mut(ebpf, map_names::INTERFACES)?;
    interfaces
        .set(if_index, block, 0)
        .map_err(|error| XdpError::map(map_names::INTERFACES, error))
}

pub(super) fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(XdpError::MissingMap(name))?;
    T::try_from(map).map_err(|error| XdpError::map(name, error))
}
