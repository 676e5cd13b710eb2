//! Where the operator's rules and bans live between runs: a redb file (an embedded,
//! copy-on-write B-tree store with ACID transactions). A change is one transaction, synced to
//! disk before it returns, so its cost does not grow with what is stored, and a crash at any
//! moment leaves the last committed state. The file is checked whole when it is opened: a
//! damaged file is refused with a message that says how to recover, never half-trusted.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::records::{OperatorBan, OperatorRule};
use crate::config::RawLimits;

/// One record per rule and per ban, keyed by network ([`key`]), the value its JSON.
const RULES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rules");
const BANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bans");
/// Settings made through the API (the default rate limits).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RATE_LIMIT_DEFAULT: &str = "rate_limit_default";
/// The progress redb's repair reports before falling back to the previous commit.
const FALL_BACK_PROGRESS: f64 = 0.3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the firewall store {path} is damaged ({reason}); it holds the operator's rules and \
         bans, so the daemon does not start without it: restore the file from a backup, or move \
         it away to start with none (and import the rules again)"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "the firewall store {path} is open in another process (another gateway running?): \
         stop it first"
    )]
    InUse { path: PathBuf },
    #[error("opening the firewall store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("writing the firewall store {path} failed, nothing changed: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("reading the firewall store {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

/// One change inside a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    PutRule(OperatorRule),
    DeleteRule(IpNet),
    PutBan(OperatorBan),
    DeleteBan(IpNet),
    SetRateLimits(Option<RawLimits>),
}

impl Op {
    /// Table, then the record's key as [`key`] orders it (no allocation: it is compared often).
    fn order(&self) -> (u8, u8, [u8; 16], u8) {
        let (table, net) = match self {
            Op::PutRule(rule) => (0, rule.cidr),
            Op::DeleteRule(net) => (0, *net),
            Op::PutBan(ban) => (1, ban.cidr),
            Op::DeleteBan(net) => (1, *net),
            Op::SetRateLimits(_) => return (2, 0, [0; 16], 0),
        };
        let mut address = [0; 16];
        let family = match net {
            IpNet::V4(net) => {
                address[..4].copy_from_slice(&net.addr().octets());
                4
            }
            IpNet::V6(net) => {
                address = net.addr().octets();
                6
            }
        };
        (table, family, address, net.prefix_len())
    }
}

/// What the store holds, each record checked; records that fail the check are skipped (with
/// a warning that shows them).
#[derive(Debug, Default, PartialEq)]
pub struct Contents {
    /// In the order they were added.
    pub rules: Vec<OperatorRule>,
    pub bans: Vec<OperatorBan>,
    pub rate_limit_default: Option<RawLimits>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

/// `net` as a key that sorts IPv4 before IPv6, then by address, then by prefix length.
pub fn key(net: IpNet) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    match net {
        IpNet::V4(net) => {
            key.push(4);
            key.extend_from_slice(&net.addr().octets());
        }
        IpNet::V6(net) => {
            key.push(6);
            key.extend_from_slice(&net.addr().octets());
        }
    }
    key.push(net.prefix_len());
    key
}

impl Store {
    /// Opens (or creates) the store at `path`, checking the whole file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let opening = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|error| opening(format!("creating {}: {error}", dir.display())))?;
        }
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            // redb's repair asks at 0.3 only when the newest commit fails its checksums, before
            // falling back to the commit before it: that would drop an acknowledged change
            // without a word, so the open is refused instead.
            .set_repair_callback(|session| {
                if (session.progress() - FALL_BACK_PROGRESS).abs() < 1e-6 {
                    session.abort();
                }
            })
            .create(path)
            .map_err(|error| match error {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.to_owned(),
                },
                // Not a redb file at all (or cut short) is damage too; other I/O is not.
                redb::DatabaseError::Storage(redb::StorageError::Io(error))
                    if !matches!(
                        error.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    opening(error.to_string())
                }
                redb::DatabaseError::RepairAborted => StoreError::Damaged {
                    path: path.to_owned(),
                    reason: "its newest commit fails its checksums".to_owned(),
                },
                other => StoreError::Damaged {
                    path: path.to_owned(),
                    reason: other.to_string(),
                },
            })?;
        let store = Store {
            db,
            path: path.to_owned(),
        };
        // The tables exist from the first open on, so readers never meet a missing one.
        store.commit(Vec::new())?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `ops` in one transaction, durable on disk when this returns Ok. On error
    /// nothing of it is stored.
    pub fn commit(&self, mut ops: Vec<Op>) -> Result<(), StoreError> {
        // In key order, a batch read from Redis (hash order) touches each B-tree leaf once
        // instead of a random leaf per entry. Stable: changes to one key keep their order.
        if !ops.is_sorted_by_key(Op::order) {
            ops.sort_by_key(Op::order);
        }
        let failed = |reason: String| StoreError::Write {
            path: self.path.clone(),
            reason,
        };
        let write = || -> Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            // The newest commit is only made primary once it is on disk: a damaged primary is
            // then damage, refused at open, never a silent fall back to the commit before.
            txn.set_two_phase_commit(true);
            {
                let mut rules = txn.open_table(RULES)?;
                let mut bans = txn.open_table(BANS)?;
                let mut meta = txn.open_table(META)?;
                for op in ops {
                    match op {
                        Op::PutRule(rule) => {
                            rules.insert(key(rule.cidr).as_slice(), json(&rule).as_slice())?;
                        }
                        Op::DeleteRule(net) => {
                            rules.remove(key(net).as_slice())?;
                        }
                        Op::PutBan(ban) => {
                            bans.insert(key(ban.cidr).as_slice(), json(&ban).as_slice())?;
                        }
                        Op::DeleteBan(net) => {
                            bans.remove(key(net).as_slice())?;
                        }
                        Op::SetRateLimits(Some(limits)) => {
                            meta.insert(RATE_LIMIT_DEFAULT, json(&limits).as_slice())?;
                        }
                        Op::SetRateLimits(None) => {
                            meta.remove(RATE_LIMIT_DEFAULT)?;
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(|error| failed(error.to_string()))
    }

    /// Reads everything, checking each record against the API's ranges (`now`: Unix
    /// seconds) and keeping at most `max_bans` bans per address family.
    pub fn load(&self, now: f64, max_bans: usize) -> Result<Contents, StoreError> {
        let read = || -> Result<Contents, redb::Error> {
            let txn = self.db.begin_read()?;
            let mut contents = Contents::default();
            for entry in txn.open_table(RULES)?.iter()? {
                let (_, value) = entry?;
                match parse::<OperatorRule>(value.value())
                    .and_then(|rule| rule.check(now).map(|()| rule))
                {
                    Ok(rule) => contents.rules.push(rule),
                    Err(reason) => self.skip("rule", value.value(), &reason),
                }
            }
            contents.rules.sort_by_key(|rule| rule.seq);
            let (mut v4, mut v6) = (0, 0);
            for entry in txn.open_table(BANS)?.iter()? {
                let (_, value) = entry?;
                match parse::<OperatorBan>(value.value())
                    .and_then(|ban| ban.check(now).map(|()| ban))
                {
                    Ok(ban) => {
                        let count = if ban.cidr.addr().is_ipv4() {
                            &mut v4
                        } else {
                            &mut v6
                        };
                        if *count >= max_bans {
                            self.skip("ban", value.value(), "more bans than xdp.max_bans");
                        } else {
                            *count += 1;
                            contents.bans.push(ban);
                        }
                    }
                    Err(reason) => self.skip("ban", value.value(), &reason),
                }
            }
            if let Some(value) = txn.open_table(META)?.get(RATE_LIMIT_DEFAULT)? {
                match parse::<RawLimits>(value.value()).and_then(|limits| {
                    limits
                        .validate("rate_limit_default")
                        .map(|_| limits)
                        .map_err(|problems| {
                            let reasons: Vec<String> =
                                problems.iter().map(ToString::to_string).collect();
                            reasons.join("; ")
                        })
                }) {
                    Ok(limits) => contents.rate_limit_default = Some(limits),
                    Err(reason) => self.skip("rate_limit_default", value.value(), &reason),
                }
            }
            Ok(contents)
        };
        read().map_err(|error| match error {
            redb::Error::Corrupted(reason) => StoreError::Damaged {
                path: self.path.clone(),
                reason,
            },
            other => StoreError::Read {
                path: self.path.clone(),
                reason: other.to_string(),
            },
        })
    }

    fn skip(&self, what: &str, value: &[u8], reason: &str) {
        tracing::warn!(
            file = %self.path.display(),
            entry = %String::from_utf8_lossy(value),
            "saved {what} skipped: {reason}"
        );
    }
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RuleAction;

    fn rule(cidr: &str, seq: u64) -> OperatorRule {
        OperatorRule {
            cidr: cidr.parse().unwrap(),
            action: RuleAction::Deny,
            comment: Some("scanner".into()),
            expires_at: Some((super::super::records::unix_now() + 3600.0).round()),
            shadow: seq.is_multiple_of(2),
            seq,
        }
    }

    fn ban(cidr: &str) -> OperatorBan {
        OperatorBan {
            cidr: cidr.parse().unwrap(),
            expires_at: None,
            comment: Some("auto: trap /.env".into()),
        }
    }

    #[test]
    fn a_batch_in_any_order_keeps_the_order_of_changes_to_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("firewall.redb")).unwrap();
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        // Keys out of order, and each key changed more than once: the last change wins.
        let ops = vec![
            Op::PutRule(rule("2001:db8::/48", 1)),
            Op::PutRule(rule("10.0.0.9/32", 2)),
            Op::DeleteRule(net("2001:db8::/48")),
            Op::PutBan(ban("192.0.2.7/32")),
            Op::PutRule(rule("10.0.0.1/32", 3)),
            Op::DeleteBan(net("192.0.2.7/32")),
            Op::PutBan(ban("192.0.2.7/32")),
            Op::DeleteRule(net("10.0.0.9/32")),
            Op::PutRule(rule("2001:db8::/48", 4)),
            Op::PutBan(ban("::1/128")),
            Op::DeleteBan(net("::1/128")),
        ];
        store.commit(ops).unwrap();
        let contents = store.load(super::super::records::unix_now(), 10).unwrap();
        let rules: Vec<String> = contents.rules.iter().map(|r| r.cidr.to_string()).collect();
        assert_eq!(rules, ["10.0.0.1/32", "2001:db8::/48"]);
        let bans: Vec<String> = contents.bans.iter().map(|b| b.cidr.to_string()).collect();
        assert_eq!(bans, ["192.0.2.7/32"]);
    }

    #[test]
    fn op_order_is_the_key_order() {
        let nets = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.0.0.0/9",
            "10.0.0.1/32",
            "192.0.2.0/24",
            "255.255.255.255/32",
            "::/0",
            "::1/128",
            "2001:db8::/32",
            "2001:db8::/48",
            "ffff::/16",
        ];
        for a in nets {
            for b in nets {
                let (a, b): (IpNet, IpNet) = (a.parse().unwrap(), b.parse().unwrap());
                assert_eq!(
                    Op::DeleteRule(a).order().cmp(&Op::DeleteRule(b).order()),
                    key(a).cmp(&key(b)),
                    "{a} against {b}"
                );
            }
        }
    }

    #[test]
    fn changes_round_trip_in_order_of_addition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.redb");
        let store = Store::open(&path).unwrap();
        let now = super::super::records::unix_now();
        assert_eq!(store.load(now, 10).unwrap(), Contents::default());
        let limits = RawLimits {
            packets_per_second: Some(10),
            ..RawLimits::default()
        };
        store
            .commit(vec![
                Op::PutRule(rule("203.0.113.0/24", 2)),
                Op::PutRule(rule("192.0.2.0/24", 4)),
                Op::PutRule(rule("2001:db8::/32", 3)),
                Op::PutBan(ban("2001:db8::/64")),
                Op::PutBan(ban("192.0.2.7/32")),
                Op::SetRateLimits(Some(limits.clone())),
            ])
            .unwrap();
        store
            .commit(vec![
                Op::DeleteRule("192.0.2.0/24".parse().unwrap()),
                Op::DeleteBan("192.0.2.7/32".parse().unwrap()),
            ])
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let contents = store.load(now, 10).unwrap();
        let nets: Vec<String> = contents
            .rules
            .iter()
            .map(|rule| rule.cidr.to_string())
            .collect();
        assert_eq!(nets, ["203.0.113.0/24", "2001:db8::/32"]);
        assert_eq!(contents.bans, [ban("2001:db8::/64")]);
        assert_eq!(contents.rate_limit_default, Some(limits));
    }

    #[test]
    fn keys_sort_v4_first_then_by_address_then_prefix() {
        let nets = [
            "9.0.0.0/8",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "::/0",
            "2001:db8::/32",
        ];
        let keys: Vec<Vec<u8>> = nets.iter().map(|net| key(net.parse().unwrap())).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn a_damaged_file_is_refused_naming_it_and_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.redb");
        let store = Store::open(&path).unwrap();
        let rules = (0..2000u32)
            .map(|index| {
                let net = format!("10.{}.{}.0/24", index / 256, index % 256);
                Op::PutRule(rule(&net, u64::from(index) + 1))
            })
            .collect();
        store.commit(rules).unwrap();
        drop(store);
        let pristine = std::fs::read(&path).unwrap();
        // Damage at the head, in the middle and near the end of the file.
        for at in [0, 64, pristine.len() / 2, pristine.len() - 4096] {
            let mut bytes = pristine.clone();
            for byte in &mut bytes[at..at + 512] {
                *byte ^= 0x5a;
            }
            std::fs::write(&path, &bytes).unwrap();
            let now = super::super::records::unix_now();
            let outcome = Store::open(&path).and_then(|store| store.load(now, 10));
            match outcome {
                Err(StoreError::Damaged { path: named, .. }) => assert_eq!(named, path),
                Err(other) => panic!("at {at}: {other}"),
                // Bytes redb never reads (free pages) may change without harm.
                Ok(contents) => assert_eq!(contents.rules.len(), 2000, "at {at}"),
            }
            let message = Store::open(&path).err().map(|error| error.to_string());
            if let Some(message) = message {
                assert!(message.contains("move it away"), "{message}");
            }
        }
    }
}
