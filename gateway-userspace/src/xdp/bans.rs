//! Bans (source or prefix -> expiry on the monotonic clock the program reads with
//! `bpf_ktime_get_ns`) and the per-source drop table behind "top sources".

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use gateway_common::{BAN_PERMANENT, maps as map_names};
use ipnet::IpNet;

use super::{XdpError, maps::map_mut};

/// The monotonic clock `bpf_ktime_get_ns` reads (CLOCK_MONOTONIC), as a duration since boot.
pub fn now() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

fn expiry_ns(expires: Option<Duration>) -> u64 {
    expires.map_or(BAN_PERMANENT, |at| {
        at.as_nanos().min(u128::from(BAN_PERMANENT - 1)) as u64
    })
}

pub(super) fn insert(
    ebpf: &mut Ebpf,
    net: IpNet,
    expires: Option<Duration>,
) -> Result<(), XdpError> {
    let value = expiry_ns(expires);
    match net {
        IpNet::V4(net) => {
            let mut trie: LpmTrie<&mut MapData, [u8; 4], u64> = map_mut(ebpf, map_names::BANS_V4)?;
            trie.insert(
                &Key::new(u32::from(net.prefix_len()), net.addr().octets()),
                value,
                0,
            )
            .map_err(|error| XdpError::map(map_names::BANS_V4, error))
        }
        IpNet::V6(net) => {
            let mut trie: LpmTrie<&mut MapData, [u8; 16], u64> = map_mut(ebpf, map_names::BANS_V6)?;
            trie.insert(
                &Key::new(u32::from(net.prefix_len()), net.addr().octets()),
                value,
                0,
            )
            .map_err(|error| XdpError::map(map_names::BANS_V6, error))
        }
    }
}

/// Inserts every ban of `bans`, a batch of entries per syscall.
pub(super) fn insert_all(
    ebpf: &mut Ebpf,
    bans: &[(IpNet, Option<Duration>)],
) -> Result<(), XdpError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for &(net, expires) in bans {
        let value = expiry_ns(expires);
        let prefix_len = u32::from(net.prefix_len());
        match net {
            IpNet::V4(net) => v4.push((Key::new(prefix_len, net.addr().octets()), value)),
            IpNet::V6(net) => v6.push((Key::new(prefix_len, net.addr().octets()), value)),
        }
    }
    super::batch::update_trie(ebpf, map_names::BANS_V4, &v4)?;
    super::batch::update_trie(ebpf, map_names::BANS_V6, &v6)
}

pub(super) fn remove(ebpf: &mut Ebpf, net: IpNet) -> Result<bool, XdpError> {
    let (name, result) = match net {
        IpNet::V4(net) => {
            let mut trie: LpmTrie<&mut MapData, [u8; 4], u64> = map_mut(ebpf, map_names::BANS_V4)?;
            let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
            (map_names::BANS_V4, trie.remove(&key))
        }
        IpNet::V6(net) => {
            let mut trie: LpmTrie<&mut MapData, [u8; 16], u64> = map_mut(ebpf, map_names::BANS_V6)?;
            let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
            (map_names::BANS_V6, trie.remove(&key))
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(error) => Err(XdpError::map(name, error)),
    }
}

/// Whether either ban trie holds an entry: its first key, not a walk over all of them.
pub(super) fn any(ebpf: &Ebpf) -> Result<bool, XdpError> {
    let map = ebpf
        .map(map_names::BANS_V4)
        .ok_or(XdpError::MissingMap(map_names::BANS_V4))?;
    let v4: LpmTrie<&MapData, [u8; 4], u64> =
        LpmTrie::try_from(map).map_err(|error| XdpError::map(map_names::BANS_V4, error))?;
    if let Some(first) = v4.keys().next() {
        first.map_err(|error| XdpError::map(map_names::BANS_V4, error))?;
        return Ok(true);
    }
    let map = ebpf
        .map(map_names::BANS_V6)
        .ok_or(XdpError::MissingMap(map_names::BANS_V6))?;
    let v6: LpmTrie<&MapData, [u8; 16], u64> =
        LpmTrie::try_from(map).map_err(|error| XdpError::map(map_names::BANS_V6, error))?;
    match v6.keys().next() {
        Some(first) => first
            .map(|_| true)
            .map_err(|error| XdpError::map(map_names::BANS_V6, error)),
        None => Ok(false),
    }
}

/// Every entry of both ban tries, expired or not.
pub(super) fn entries(ebpf: &Ebpf) -> Result<Vec<(IpNet, u64)>, XdpError> {
    let mut out = Vec::new();
    let map = ebpf
        .map(map_names::BANS_V4)
        .ok_or(XdpError::MissingMap(map_names::BANS_V4))?;
    let v4: LpmTrie<&MapData, [u8; 4], u64> =
        LpmTrie::try_from(map).map_err(|error| XdpError::map(map_names::BANS_V4, error))?;
    for entry in v4.iter() {
        let (key, expiry) = entry.map_err(|error| XdpError::map(map_names::BANS_V4, error))?;
        let net = IpNet::new(Ipv4Addr::from(key.data()).into(), key.prefix_len() as u8);
        out.extend(net.ok().map(|net| (net, expiry)));
    }
    let map = ebpf
        .map(map_names::BANS_V6)
        .ok_or(XdpError::MissingMap(map_names::BANS_V6))?;
    let v6: LpmTrie<&MapData, [u8; 16], u64> =
        LpmTrie::try_from(map).map_err(|error| XdpError::map(map_names::BANS_V6, error))?;
    for entry in v6.iter() {
        let (key, expiry) = entry.map_err(|error| XdpError::map(map_names::BANS_V6, error))?;
        let net = IpNet::new(Ipv6Addr::from(key.data()).into(), key.prefix_len() as u8);
        out.extend(net.ok().map(|net| (net, expiry)));
    }
    Ok(out)
}

pub(super) fn list(ebpf: &Ebpf) -> Result<Vec<(IpNet, Option<Duration>)>, XdpError> {
    let now = now().as_nanos() as u64;
    Ok(entries(ebpf)?
        .into_iter()
        .filter(|&(_, expiry)| expiry > now)
        .map(|(net, expiry)| {
            (
                net,
                (expiry != BAN_PERMANENT).then(|| Duration::from_nanos(expiry)),
            )
        })
        .collect())
}

pub(super) fn sweep(ebpf: &mut Ebpf) -> Result<Vec<IpNet>, XdpError> {
    let now = now().as_nanos() as u64;
    let expired: Vec<IpNet> = entries(ebpf)?
        .into_iter()
        .filter(|&(_, expiry)| expiry <= now)
        .map(|(net, _)| net)
        .collect();
    for net in &expired {
        remove(ebpf, *net)?;
    }
    Ok(expired)
}

pub(super) fn top_dropped_sources(
    ebpf: &Ebpf,
    limit: usize,
) -> Result<Vec<(IpAddr, u64)>, XdpError> {
    let name = map_names::DROPS_BY_SOURCE;
    let map = ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
    let drops: HashMap<&MapData, [u8; 16], u64> =
        HashMap::try_from(map).map_err(|error| XdpError::map(name, error))?;
    let mut sources: Vec<(IpAddr, u64)> = drops
        .iter()
        .filter_map(Result::ok)
        .map(|(key, drops)| {
            let addr = Ipv6Addr::from(key);
            (
                addr.to_ipv4_mapped().map_or(IpAddr::V6(addr), IpAddr::V4),
                // The table holds samples: see DROP_SAMPLE_ONE_IN for the accuracy.
                drops.saturating_mul(u64::from(gateway_common::DROP_SAMPLE_ONE_IN)),
            )
        })
        .collect();
    sources.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sources.truncate(limit);
    Ok(sources)
}
