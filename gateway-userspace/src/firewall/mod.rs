//! The firewall as a domain of its own: the rules from the config file, the rules and bans an
//! operator added at run time (kept in the [`store`], restored at start), and the XDP program
//! they are written into. The admin API (`control`) is a thin HTTP adapter over it; the
//! defender and the cluster reach it through the narrow traits they define
//! (`defend::Enforcer`, `cluster::Replica`), injected by the daemon.
//!
//! Every change is committed to the store before it reaches the kernel, so nothing
//! acknowledged is lost; a failed step leaves memory, store and kernel as they were.
//!
//! - [`rules`]: operator rules, rate limits
//! - [`import`]: rules in bulk, streamed
//! - [`bans`]: bans, auto-bans, expiry
//! - [`replicate`]: other nodes' bans and rules, a batch at a time
//! - [`explain`]: what the kernel would do with a packet, and why
//! - [`kernel`]: counters and under-attack mode, read and switched in XDP
//! - [`store`], [`records`], [`migrate`]: persistence
//! - [`error`]: what can go wrong, in the domain's words

mod bans;
pub mod error;
mod explain;
mod import;
mod kernel;
mod listener;
mod metrics;
pub mod migrate;
mod operator_rules;
mod replicate;
mod rules;
pub mod store;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use operator_rules::OperatorRules;

use ipnet::IpNet;

pub use crate::api::records;
pub use error::{FirewallError, FirewallResult};
pub use import::Import;
pub use listener::ChangeListener;
use records::{OperatorBan, is_expired, unix_now};

use crate::api::replication::Change;
use store::{Op, Store};

use crate::{
    config::{AdminConfig, CidrRule, FirewallConfig, RawLimits, XdpConfig},
    guard::AcceptGuard,
    xdp::{self, XdpFirewall},
};

/// The running daemon's firewall, shared by the admin API, the signal handler, the sweeper,
/// the defender and the cluster.
pub struct Firewall {
    inner: Mutex<Inner>,
    /// Cluster mode: told of every operator change made on this node.
    listener: std::sync::OnceLock<Box<dyn ChangeListener>>,
}

/// What the operator added, in memory; the store holds the same.
#[derive(Debug, Default)]
struct Operator {
    /// In order of addition (the kernel numbers rules in this order), indexed by network.
    rules: OperatorRules,
    bans: BTreeMap<IpNet, OperatorBan>,
    /// Default-class rate limits set through the admin API; replace the config's.
    rate_limit_default: Option<RawLimits>,
    /// Order number of the next rule added.
    next_seq: u64,
    /// No rule or ban expires before this (Unix seconds), so the sweep can skip its scan.
    next_expiry: f64,
    /// When the sweep last scanned everything.
    last_scan: f64,
}

impl Operator {
    /// A rule or ban that expires at `at` was added.
    fn note_expiry(&mut self, at: Option<f64>) {
        if let Some(at) = at {
            self.next_expiry = self.next_expiry.min(at);
        }
    }
}

struct Inner {
    xdp: Option<XdpFirewall>,
    /// From the config file; replaced on reload.
    firewall: FirewallConfig,
    /// Rule capacity the maps were sized with.
    capacity: (usize, usize),
    /// Bans per address family the maps hold (`xdp.max_bans`; also the cap with XDP off).
    max_bans: usize,
    operator: Operator,
    store: Store,
    /// Where the bans go when XDP is off: the proxy's accept stage reads them.
    guard: Arc<AcceptGuard>,
}

impl Firewall {
    /// Opens the store (moving an old state file into it once), drops what expired while
    /// the daemon was down, and writes everything into `xdp`. A store that cannot be read
    /// is an error: starting without the operator's rules and bans would open holes.
    pub fn start(
        xdp: Option<XdpFirewall>,
        firewall: FirewallConfig,
        limits: &XdpConfig,
        admin: &AdminConfig,
    ) -> anyhow::Result<Firewall> {
        Self::open(xdp, firewall, limits, &admin.store, &admin.state_file)
    }

    fn open(
        xdp: Option<XdpFirewall>,
        firewall: FirewallConfig,
        limits: &XdpConfig,
        store_path: &std::path::Path,
        state_file: &std::path::Path,
    ) -> anyhow::Result<Firewall> {
        let max_bans = limits.max_bans as usize;
        let store = Store::open(store_path)?;
        let now = unix_now();
        let mut contents = store.load(now, max_bans)?;
        let next_seq = contents.rules.last().map_or(1, |rule| rule.seq + 1);
        if migrate::migrate(state_file, &store, next_seq, now)?.is_some() {
            contents = store.load(now, max_bans)?;
        }
        // What expired while the daemon was down goes, from the store too.
        let expired: Vec<Op> = contents
            .rules
            .iter()
            .filter(|rule| is_expired(rule.expires_at, now))
            .map(|rule| Op::DeleteRule(rule.cidr))
            .chain(
                contents
                    .bans
                    .iter()
                    .filter(|ban| is_expired(ban.expires_at, now))
                    .map(|ban| Op::DeleteBan(ban.cidr)),
            )
            .collect();
        if !expired.is_empty() {
            store.commit(expired)?;
        }
        let rules = OperatorRules::new(
            contents
                .rules
                .into_iter()
                .filter(|rule| !is_expired(rule.expires_at, now))
                .collect(),
        );
        let operator = Operator {
            next_seq: rules.last_seq().map_or(1, |seq| seq + 1),
            rules,
            bans: contents
                .bans
                .into_iter()
                .filter(|ban| !is_expired(ban.expires_at, now))
                .map(|ban| (ban.cidr, ban))
                .collect(),
            rate_limit_default: contents.rate_limit_default,
            // The first sweep scans everything and sets the real hint.
            next_expiry: f64::NEG_INFINITY,
            last_scan: now,
        };
        let mut xdp = xdp;
        if let Some(xdp) = xdp.as_mut() {
            xdp.restore_rule_slots(&saved_slots_path(store_path));
        }
        let mut inner = Inner {
            xdp,
            firewall,
            capacity: (limits.max_rules_v4 as usize, limits.max_rules_v6 as usize),
            max_bans,
            operator,
            store,
            guard: Arc::default(),
        };
        inner.apply()?;
        inner.restore_bans();
        inner.publish_bans();
        let (rules, bans) = (inner.operator.rules.len(), inner.operator.bans.len());
        if rules + bans > 0 {
            tracing::info!(rules, bans, store = %inner.store.path().display(), "operator rules and bans restored");
        }
        Ok(Firewall {
            inner: Mutex::new(inner),
            listener: Default::default(),
        })
    }

    /// The bans to enforce at accept (the proxy's guard when XDP is off), kept current.
    pub fn accept_guard(&self) -> Arc<AcceptGuard> {
        self.lock().guard.clone()
    }

    /// Cluster mode: from now on, bans and operator rule changes are also told to `listener`.
    pub fn set_change_listener(&self, listener: Box<dyn ChangeListener>) {
        let _ = self.listener.set(listener);
    }

    /// Whether anyone hears of changes (an import skips building them otherwise).
    fn publishes(&self) -> bool {
        self.listener.get().is_some()
    }

    fn publish(&self, change: Change) {
        if let Some(listener) = self.listener.get() {
            listener.changed(change);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches the (already filled) XDP program to `interface`.
    pub fn attach(
        &self,
        interface: &str,
        mode: crate::config::XdpMode,
    ) -> Result<xdp::AttachMode, xdp::XdpError> {
        match self.lock().xdp.as_mut() {
            Some(xdp) => xdp.attach(interface, mode),
            None => Err(xdp::XdpError::Off),
        }
    }

    /// Takes the XDP program out (to detach it on shutdown), after saving what its rule
    /// tries hold for the next start (used only if it adopts these very maps).
    pub fn take_xdp(&self) -> Option<XdpFirewall> {
        let mut inner = self.lock();
        let xdp = inner.xdp.take()?;
        xdp.save_rule_slots(&saved_slots_path(inner.store.path()));
        Some(xdp)
    }

    /// Replaces the config file's rules (SIGHUP). On failure the running rules stay.
    pub fn reload(&self, firewall: FirewallConfig) -> FirewallResult<usize> {
        let mut inner = self.lock();
        let previous = std::mem::replace(&mut inner.firewall, firewall);
        if let Err(failure) = inner.apply() {
            inner.firewall = previous;
            return Err(failure);
        }
        Ok(inner.firewall.rules.len())
    }

    /// (rules from the config, operator rules, bans in force), for metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        let now = unix_now();
        let bans = inner
            .operator
            .bans
            .values()
            .filter(|ban| !is_expired(ban.expires_at, now))
            .count();
        (inner.firewall.rules.len(), inner.operator.rules.len(), bans)
    }
}

/// Beside the store: what the pinned rule tries hold, saved at a clean stop.
fn saved_slots_path(store: &std::path::Path) -> std::path::PathBuf {
    store.with_extension("xdp-slots")
}

impl Inner {
    /// Config rules plus the operator's (a network in both keeps the config's).
    fn effective(&self) -> FirewallConfig {
        let mut firewall = self.firewall.clone();
        // Validated when set; a store edited by hand is checked again here.
        if let Some(limits) = self
            .operator
            .rate_limit_default
            .as_ref()
            .and_then(|spec| spec.validate("rate_limit_default").ok())
        {
            firewall
                .rate_limit
                .get_or_insert_with(Default::default)
                .default = limits;
        }
        let configured: HashSet<IpNet> = firewall.rules.iter().map(|rule| rule.net).collect();
        firewall.rules.extend(
            self.operator
                .rules
                .iter()
                .filter(|rule| !configured.contains(&rule.cidr))
                .map(|rule| CidrRule {
                    net: rule.cidr,
                    action: rule.action.into(),
                    origin: "operator".to_owned(),
                    shadow: rule.shadow,
                }),
        );
        firewall
    }

    /// Refuses `v4` and `v6` more rules if the maps cannot hold them: checked before any
    /// work is done. Costs the config file's rules, not the operator's (they are counted).
    fn check_capacity(&self, v4: usize, v6: usize) -> FirewallResult<()> {
        let (mut have_v4, mut have_v6) = self.operator.rules.counts();
        // A network in both is one trie entry: the operator's copy is already counted.
        for net in self.firewall.rules.iter().map(|rule| rule.net) {
            if !self.operator.rules.contains(&net) {
                match net {
                    IpNet::V4(_) => have_v4 += 1,
                    IpNet::V6(_) => have_v6 += 1,
                }
            }
        }
        let (v4, v6) = (have_v4 + v4, have_v6 + v6);
        if v4 > self.capacity.0 || v6 > self.capacity.1 {
            return Err(FirewallError::Full(format!(
                "{v4} IPv4 and {v6} IPv6 rules do not fit the maps ({} and {}): raise \
                 xdp.max_rules_v4/v6 and restart",
                self.capacity.0, self.capacity.1
            )));
        }
        Ok(())
    }

    /// Writes the effective rules into the maps.
    fn apply(&mut self) -> FirewallResult<()> {
        self.check_capacity(0, 0)?;
        if self.xdp.is_some() {
            let effective = self.effective();
            if let Some(xdp) = self.xdp.as_mut() {
                xdp.apply(&effective)?;
            }
        }
        Ok(())
    }

    /// Commits `ops`, then `edit`s the rules in memory and writes them into the kernel:
    /// the rules for `only`, or all of them. If the kernel refuses, `unedit` puts memory
    /// back, `undo` is committed and the kernel rewritten: nothing changed.
    fn change_rules(
        &mut self,
        (ops, undo): (Vec<Op>, Vec<Op>),
        edit: impl FnOnce(&mut Operator),
        unedit: impl FnOnce(&mut Operator),
        only: Option<&[IpNet]>,
    ) -> FirewallResult<()> {
        self.store.commit(ops)?;
        edit(&mut self.operator);
        let written = match only {
            Some(nets) => self.write_rules(nets),
            None => self.apply(),
        };
        if let Err(failure) = written {
            unedit(&mut self.operator);
            if let Err(error) = self.store.commit(undo) {
                tracing::error!(%error, "undoing a refused change in the store failed");
            }
            if let Err(error) = self.apply() {
                tracing::error!(%error, "rewriting the rules after a refused change failed");
            }
            return Err(failure);
        }
        Ok(())
    }

    /// Writes the rules for `nets` alone into the kernel: the operator's, or none. A rule
    /// of the config file for the same network wins, and stays.
    fn write_rules(&mut self, nets: &[IpNet]) -> FirewallResult<()> {
        if self.xdp.is_none() || nets.is_empty() {
            return Ok(());
        }
        let configured: HashSet<IpNet> = self.firewall.rules.iter().map(|rule| rule.net).collect();
        let rules: Vec<_> = nets
            .iter()
            .filter(|net| !configured.contains(net))
            .map(|&net| {
                let rule = self.operator.rules.get(&net);
                (net, rule.map(|rule| (rule.action.into(), rule.shadow)))
            })
            .collect();
        if let Some(xdp) = self.xdp.as_mut() {
            xdp.set_rules(&rules)?;
        }
        Ok(())
    }
}
