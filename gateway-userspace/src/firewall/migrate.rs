//! The JSON state file of earlier versions (`admin.state_file`), moved into the store once:
//! its entries are checked as the store's are (one bad entry is skipped, not the file),
//! written in one transaction, and the file is renamed to `<name>.migrated` so it is never
//! read again. A crash before the rename migrates it again at the next start, which puts the
//! same records again: nothing is lost or doubled.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use super::{
    records::{OperatorBan, OperatorRule},
    store::{Op, Store},
};
use crate::config::RawLimits;

/// The state file as written, its entries not yet checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    #[serde(default)]
    #[allow(dead_code)]
    version: u32,
    #[serde(default)]
    rules: Vec<serde_json::Value>,
    #[serde(default)]
    bans: Vec<serde_json::Value>,
    #[serde(default)]
    rate_limit_default: Option<serde_json::Value>,
}

/// Where a migrated state file is moved.
pub fn migrated_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".migrated");
    PathBuf::from(name)
}

/// Moves `state_file` (if it exists) into `store`; rules get order numbers from `next_seq`
/// on. Returns how many rules and bans were moved.
pub fn migrate(
    state_file: &Path,
    store: &Store,
    next_seq: u64,
    now: f64,
) -> anyhow::Result<Option<(usize, usize)>> {
    let text = match std::fs::read_to_string(state_file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("reading the state file {}", state_file.display()));
        }
    };
    let saved: SavedState = serde_json::from_str(&text).with_context(|| {
        format!(
            "the state file {} (to be moved into the store {}) is not valid: fix it or move it \
             away (it holds the operator's rules and bans)",
            state_file.display(),
            store.path().display()
        )
    })?;
    let skip = |what: &str, entry: &serde_json::Value, reason: &str| {
        tracing::warn!(file = %state_file.display(), %entry, "saved {what} skipped: {reason}");
    };
    let mut ops = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut rules = 0;
    for entry in saved.rules {
        match serde_json::from_value::<OperatorRule>(entry.clone())
            .map_err(|error| error.to_string())
            .and_then(|rule| rule.check(now).map(|()| rule))
        {
            Ok(rule) if !seen.insert(rule.cidr) => {
                skip("rule", &entry, "an earlier rule has the same network")
            }
            Ok(rule) => {
                ops.push(Op::PutRule(OperatorRule {
                    seq: next_seq + rules as u64,
                    ..rule
                }));
                rules += 1;
            }
            Err(reason) => skip("rule", &entry, &reason),
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut bans = 0;
    for entry in saved.bans {
        match serde_json::from_value::<OperatorBan>(entry.clone())
            .map_err(|error| error.to_string())
            .and_then(|ban| ban.check(now).map(|()| ban))
        {
            Ok(ban) if !seen.insert(ban.cidr) => {
                skip("ban", &entry, "an earlier ban has the same network")
            }
            Ok(ban) => {
                ops.push(Op::PutBan(ban));
                bans += 1;
            }
            Err(reason) => skip("ban", &entry, &reason),
        }
    }
    if let Some(entry) = saved.rate_limit_default {
        // Checked again when the store is loaded.
        match serde_json::from_value::<RawLimits>(entry.clone()) {
            Ok(limits) => ops.push(Op::SetRateLimits(Some(limits))),
            Err(error) => skip("rate_limit_default", &entry, &error.to_string()),
        }
    }
    store.commit(ops)?;
    let moved = migrated_path(state_file);
    std::fs::rename(state_file, &moved).with_context(|| {
        format!(
            "renaming the migrated state file {} to {}",
            state_file.display(),
            moved.display()
        )
    })?;
    tracing::info!(
        rules,
        bans,
        from = %state_file.display(),
        to = %store.path().display(),
        renamed = %moved.display(),
        "state file migrated into the firewall store"
    );
    Ok(Some((rules, bans)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::valid;

    #[test]
    fn entries_out_of_range_are_skipped_the_rest_moves_and_the_file_is_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = super::super::records::unix_now();
        let max = valid::MAX_DURATION.as_secs_f64();
        let text = serde_json::json!({
            "version": 1,
            "rules": [
                {"cidr": "192.0.2.0/24", "action": "deny", "expires_at": now + 3600.0},
                {"cidr": "192.0.2.0/24", "action": "allow"},
                {"cidr": "198.51.100.0/24", "action": "deny", "expires_at": 1e20},
                {"cidr": "198.51.100.7/24", "action": "deny"},
                {"cidr": "203.0.113.0/24", "action": "allow", "shadow": true},
                {"cidr": "203.0.113.0/24", "action": "block"},
                {"cidr": "203.0.113.0/24", "action": "deny", "expires_at": "soon"},
                {"cidr": "203.0.113.0/24", "action": "deny", "ttl": 5},
                "192.0.2.9",
                {"cidr": "2001:db8::/32", "action": "allow", "expires_at": now + max},
            ],
            "bans": [
                {"cidr": "192.0.2.7/32", "expires_at": 1.0000000000179665e20},
                {"cidr": "192.0.2.8/32", "expires_at": f64::MAX},
                {"cidr": "192.0.2.9/32", "expires_at": -1e300},
                {"cidr": "not an address"},
                {"cidr": "192.0.2.10/32", "comment": "kept"},
                {"cidr": "192.0.2.11/32"},
                {"cidr": "2001:db8::7/128", "expires_at": now + 60.0},
                null,
                [],
            ],
            "rate_limit_default": {"packets_per_second": 0},
        });
        std::fs::write(&path, text.to_string()).unwrap();
        let store = Store::open(&dir.path().join("firewall.redb")).unwrap();
        assert_eq!(migrate(&path, &store, 1, now).unwrap(), Some((2, 4)));
        assert!(!path.exists());
        assert!(migrated_path(&path).exists());
        // Once: the renamed file is not read again.
        assert_eq!(migrate(&path, &store, 1, now).unwrap(), None);
        // Two bans of one family at most.
        let contents = store.load(now, 2).unwrap();
        let nets =
            |list: Vec<ipnet::IpNet>| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            nets(contents.rules.iter().map(|rule| rule.cidr).collect()),
            ["192.0.2.0/24", "2001:db8::/32"]
        );
        assert_eq!(
            nets(contents.bans.iter().map(|ban| ban.cidr).collect()),
            ["192.0.2.9/32", "192.0.2.10/32", "2001:db8::7/128"]
        );
        assert_eq!(contents.rate_limit_default, None);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_and_stays_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\"version\": 1, \"rules\": [").unwrap();
        let store = Store::open(&dir.path().join("firewall.redb")).unwrap();
        let error = format!("{:#}", migrate(&path, &store, 1, 0.0).unwrap_err());
        assert!(
            error.contains("is not valid: fix it or move it away"),
            "{error}"
        );
        assert!(path.exists());
    }
}
