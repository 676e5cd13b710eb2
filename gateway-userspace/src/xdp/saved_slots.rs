//! What the rule tries hold, saved by a daemon that stops cleanly and leaves its pinned maps
//! filtering, so the next daemon that adopts those maps writes only what changed instead of
//! a million entries (and keeps the rules' hit counts).
//!
//! Trusted only when it names the very maps adopted (kernel map ids, unique until reboot),
//! and used once: it is deleted when read, before any map write, so after a crash the next
//! start finds none and rewrites everything. A file that does not parse is ignored the same
//! way.

use std::{
    collections::HashMap,
    io::{BufWriter, Read as _, Write as _},
    net::Ipv6Addr,
    path::Path,
};

use ipnet::IpNet;

use super::rules::{Entry, RuleSlots};
use crate::config::Action;

const MAGIC: &[u8; 8] = b"GWSLOTS1";

/// The kernel ids of the maps the saved slots describe: RULES_V4, RULES_V6, RULE_HITS.
pub(super) type MapIds = [u32; 3];

/// Saves `slots` for the maps `ids` to `path` (whole or not at all: a temporary file,
/// synced, then renamed).
pub(super) fn save(path: &Path, ids: MapIds, slots: &RuleSlots) -> std::io::Result<()> {
    let (entries, free, next_id) = slots.parts();
    let partial = path.with_extension("partial");
    let mut out = BufWriter::new(std::fs::File::create(&partial)?);
    out.write_all(MAGIC)?;
    for id in ids {
        out.write_all(&id.to_le_bytes())?;
    }
    out.write_all(&next_id.to_le_bytes())?;
    out.write_all(&(free.len() as u64).to_le_bytes())?;
    for id in free {
        out.write_all(&id.to_le_bytes())?;
    }
    out.write_all(&(entries.len() as u64).to_le_bytes())?;
    for (net, entry) in entries {
        let (family, addr) = match net {
            IpNet::V4(net) => (4u8, net.addr().to_ipv6_mapped().octets()),
            IpNet::V6(net) => (6u8, net.addr().octets()),
        };
        out.write_all(&[family])?;
        out.write_all(&addr)?;
        out.write_all(&[
            net.prefix_len(),
            u8::from(entry.action == Action::Deny),
            u8::from(entry.shadow),
            entry.fallback,
        ])?;
        out.write_all(&entry.id.to_le_bytes())?;
    }
    out.write_all(MAGIC)?;
    out.into_inner()
        .map_err(|error| error.into_error())?
        .sync_all()?;
    std::fs::rename(&partial, path)
}

/// The slots saved for the maps `ids`, if `path` holds them; the file is deleted either way.
pub(super) fn take(path: &Path, ids: MapIds) -> Option<RuleSlots> {
    let bytes = std::fs::read(path).ok();
    let _ = std::fs::remove_file(path);
    let slots = parse(&bytes?, ids);
    if slots.is_none() {
        tracing::info!(file = %path.display(), "saved rule slots are not for these maps: every rule is written again");
    }
    slots
}

fn parse(bytes: &[u8], ids: MapIds) -> Option<RuleSlots> {
    let mut input = bytes;
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).ok()?;
    if &magic != MAGIC {
        return None;
    }
    let mut saved_ids = [0u32; 3];
    for id in &mut saved_ids {
        *id = read_u32(&mut input)?;
    }
    if saved_ids != ids {
        return None;
    }
    let next_id = read_u32(&mut input)?;
    let free_count = usize::try_from(read_u64(&mut input)?).ok()?;
    // Each free id is 4 bytes: a count larger than the file is damage, not an allocation.
    if free_count > input.len() / 4 {
        return None;
    }
    let free = (0..free_count)
        .map(|_| read_u32(&mut input))
        .collect::<Option<Vec<u32>>>()?;
    let count = usize::try_from(read_u64(&mut input)?).ok()?;
    if count > input.len() / 25 {
        return None;
    }
    let mut entries = HashMap::with_capacity(count);
    for _ in 0..count {
        let mut record = [0u8; 25];
        input.read_exact(&mut record).ok()?;
        let addr: [u8; 16] = record[1..17].try_into().ok()?;
        let [prefix, deny, shadow, fallback] = record[17..21].try_into().ok()?;
        let net = match record[0] {
            4 => IpNet::new(Ipv6Addr::from(addr).to_ipv4_mapped()?.into(), prefix).ok()?,
            6 => IpNet::new(Ipv6Addr::from(addr).into(), prefix).ok()?,
            _ => return None,
        };
        let entry = Entry {
            action: if deny == 1 {
                Action::Deny
            } else {
                Action::Allow
            },
            shadow: shadow == 1,
            id: u32::from_le_bytes(record[21..25].try_into().ok()?),
            fallback,
        };
        entries.insert(net, entry);
    }
    input.read_exact(&mut magic).ok()?;
    if &magic != MAGIC || !input.is_empty() {
        return None;
    }
    Some(RuleSlots::from_parts(entries, free, next_id))
}

fn read_u32(input: &mut &[u8]) -> Option<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes).ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn read_u64(input: &mut &[u8]) -> Option<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes).ok()?;
    Some(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> RuleSlots {
        let mut slots = RuleSlots::default();
        slots.reconcile(&[
            ("10.0.0.0/8".parse().unwrap(), Action::Deny, false),
            ("10.1.0.0/16".parse().unwrap(), Action::Deny, true),
            ("2001:db8::/32".parse().unwrap(), Action::Allow, false),
            ("192.0.2.7/32".parse().unwrap(), Action::Deny, false),
        ]);
        slots.set("192.0.2.7/32".parse().unwrap(), None);
        slots
    }

    #[test]
    fn saved_slots_come_back_for_the_same_maps_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rule-slots");
        let saved = slots();
        save(&path, [7, 8, 9], &saved).unwrap();
        let taken = take(&path, [7, 8, 9]).expect("the same maps");
        assert_eq!(taken.parts().0, saved.parts().0);
        assert_eq!(taken.parts().1, saved.parts().1);
        assert_eq!(taken.parts().2, saved.parts().2);
        assert!(taken.synced);
        assert!(take(&path, [7, 8, 9]).is_none(), "used once");
    }

    #[test]
    fn other_maps_or_damage_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rule-slots");
        save(&path, [7, 8, 9], &slots()).unwrap();
        let pristine = std::fs::read(&path).unwrap();
        for ids in [[7, 8, 10], [1, 8, 9], [0, 0, 0]] {
            std::fs::write(&path, &pristine).unwrap();
            assert!(take(&path, ids).is_none(), "{ids:?}");
            assert!(!path.exists(), "deleted when read");
        }
        // Cut anywhere, or a byte of the magic, the map ids or the trailer changed.
        for cut in 0..pristine.len() {
            assert!(parse(&pristine[..cut], [7, 8, 9]).is_none(), "cut at {cut}");
        }
        let mut longer = pristine.clone();
        longer.push(0);
        assert!(parse(&longer, [7, 8, 9]).is_none());
        for at in (0..20).chain(pristine.len() - 8..pristine.len()) {
            let mut bytes = pristine.clone();
            bytes[at] ^= 0xff;
            assert!(parse(&bytes, [7, 8, 9]).is_none(), "byte {at} changed");
        }
    }
}
