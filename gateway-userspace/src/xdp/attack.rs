//! Under-attack mode's maps: known-good sources (source -> expiry on the clock the program
//! reads) and the new-source budget.

use std::{net::IpAddr, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError},
};
use gateway_common::{NewSourceBudget, maps as map_names};

use super::{XdpError, maps::map_mut};

/// How many unknown sources pass per second under attack, and for how long one that passed
/// stays admitted (its probation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewSources {
    pub per_second: u32,
    pub burst: u32,
    pub probation: Duration,
}

pub(super) fn key(source: IpAddr) -> [u8; 16] {
    match source {
        IpAddr::V4(addr) => addr.to_ipv6_mapped().octets(),
        IpAddr::V6(addr) => addr
            .to_ipv4_mapped()
            .map_or(addr.octets(), |v4| v4.to_ipv6_mapped().octets()),
    }
}

pub(super) fn write_budget(ebpf: &mut Ebpf, budget: &NewSources) -> Result<(), XdpError> {
    let interval_ns = match budget.per_second {
        0 => 0,
        rate => (1_000_000_000 / u64::from(rate)).max(1),
    };
    let value = NewSourceBudget {
        // A fresh budget: the burst is available at once.
        tat: 0,
        interval_ns,
        burst_ns: interval_ns.saturating_mul(u64::from(budget.burst.max(1))),
        probation_ns: budget.probation.as_nanos().min(u128::from(u64::MAX / 2)) as u64,
    };
    let mut array: Array<&mut MapData, NewSourceBudget> = map_mut(ebpf, map_names::NEW_SOURCES)?;
    array
        .set(0, value, 0)
        .map_err(|error| XdpError::map(map_names::NEW_SOURCES, error))
}

pub(super) fn mark(ebpf: &mut Ebpf, source: IpAddr, expires: Duration) -> Result<(), XdpError> {
    let mut map: HashMap<&mut MapData, [u8; 16], u64> = map_mut(ebpf, map_names::KNOWN_GOOD)?;
    let expiry = expires.as_nanos().min(u128::from(u64::MAX)) as u64;
    map.insert(key(source), expiry, 0)
        .map_err(|error| XdpError::map(map_names::KNOWN_GOOD, error))
}

pub(super) fn known_good(ebpf: &Ebpf, source: IpAddr) -> Result<Option<Duration>, XdpError> {
    let name = map_names::KNOWN_GOOD;
    let map = ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
    let map: HashMap<&MapData, [u8; 16], u64> =
        HashMap::try_from(map).map_err(|error| XdpError::map(name, error))?;
    match map.get(&key(source), 0) {
        Ok(expiry) if expiry > super::now().as_nanos() as u64 => {
            Ok(Some(Duration::from_nanos(expiry)))
        }
        Ok(_) | Err(MapError::KeyNotFound) => Ok(None),
        Err(error) => Err(XdpError::map(name, error)),
    }
}
