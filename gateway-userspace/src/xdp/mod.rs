//! The kernel half: load the XDP program, size and fill its maps, attach it to interfaces,
//! read its counters. Userspace owns the maps; the program only reads rules and counts.

mod attack;
mod bans;
mod batch;
mod error;
mod maps;
pub mod pin;
mod rules;
mod saved_slots;

use std::{
    ffi::CString,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use gateway_common::{
    Counter, INTERFACE_BLOCKS, PROGRAM_NAME, Reason, Settings, maps as map_names,
};

pub use attack::NewSources;
pub use error::XdpError;

use crate::config::{FirewallConfig, XdpConfig, XdpMode};
pub use bans::now;

/// The compiled XDP program, embedded at build time (see build.rs).
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));

pub use crate::api::AttachMode;

#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    link: XdpLinkId,
    /// The link's pin in bpffs, when pinned: it stays attached after the daemon is gone.
    pinned: Option<PathBuf>,
}

/// The loaded program and its maps. Dropping it detaches the program everywhere.
pub struct XdpFirewall {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// Last value written per port, so re-applying only touches what changed.
    ports: Vec<u8>,
    /// Rules as written, each with its hit-counter slot.
    rules: rules::RuleSlots,
    /// The settings entry as last written.
    settings: Settings,
    /// Where the maps and links are pinned (`None`: not pinned, detached when dropped).
    pins: Option<Pins>,
}

struct Pins {
    /// `<pin_dir>/<instance>`: `gateway xdp detach` clears it.
    instance: PathBuf,
    /// `<instance>/layout-<hash>`: the maps and links of this build.
    dir: PathBuf,
    /// True when the maps were already pinned: their counters, bans and known-good sources
    /// were kept.
    adopted: bool,
}

/// Every map of the program, pinned by name.
const MAP_NAMES: [&str; 16] = [
    map_names::RULES_V4,
    map_names::RULES_V6,
    map_names::PORTS,
    map_names::SETTINGS,
    map_names::COUNTERS,
    map_names::INTERFACES,
    map_names::BANS_V4,
    map_names::BANS_V6,
    map_names::RATE_PREFIXES_V4,
    map_names::RATE_PREFIXES_V6,
    map_names::RATE_CLASSES,
    map_names::RATE_STATE,
    map_names::DROPS_BY_SOURCE,
    map_names::RULE_HITS,
    map_names::KNOWN_GOOD,
    map_names::NEW_SOURCES,
];

/// How many sources the "top dropped sources" table tracks (least recent forgotten first).
const TRACKED_DROP_SOURCES: u32 = 65_536;
/// Rate-class prefixes across all classes.
const MAX_RATE_PREFIXES: u32 = 4096;

impl XdpFirewall {
    /// Loads the program into the kernel with maps sized from `config`. Nothing is attached
    /// yet: fill the maps with [`apply`](Self::apply) first, so the first packet already
    /// meets the full rule set.
    pub fn load(config: &XdpConfig) -> Result<Self, XdpError> {
        Self::load_with(config, None)
    }

    /// Like [`load`](Self::load), with the maps pinned under `pin_dir` (see [`pin`]): when a
    /// previous daemon's pins are there, its maps are adopted with everything in them, and
    /// [`attach`](Self::attach) takes over its pinned links.
    pub fn load_pinned(config: &XdpConfig, pin_dir: &Path) -> Result<Self, XdpError> {
        error::check_privileges()?;
        let instance = pin::instance_dir(pin_dir, &config.interfaces);
        pin::prepare(pin_dir, &instance)?;
        let layout = pin::layout(PROGRAM_OBJECT, config);
        let others = pin::other_layouts(&instance, &layout);
        if !others.is_empty() {
            return Err(XdpError::Pin(format!(
                "{} holds pins of another build or other xdp.max_* limits, and its program is                  still filtering: to replace it, run `gateway xdp detach --config FILE` (the                  firewall is open until this daemon starts), or start the previous build",
                instance.display()
            )));
        }
        let dir = pin::layout_dir(&instance, &layout);
        std::fs::create_dir_all(&dir).map_err(|error| {
            XdpError::Pin(format!("creating {} failed: {error}", dir.display()))
        })?;
        let adopted = pin::map_path(&dir, map_names::COUNTERS).exists();
        Self::load_with(
            config,
            Some(Pins {
                instance,
                dir,
                adopted,
            }),
        )
    }

    /// True when the maps were adopted from a previous daemon's pins.
    pub fn adopted(&self) -> bool {
        self.pins.as_ref().is_some_and(|pins| pins.adopted)
    }

    /// The pin directory of this instance, if pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|pins| pins.instance.as_path())
    }

    fn load_with(config: &XdpConfig, pins: Option<Pins>) -> Result<Self, XdpError> {
        error::check_privileges()?;
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            for name in MAP_NAMES {
                loader.map_pin_path(name, pin::map_path(&pins.dir, name));
            }
        }
        let mut ebpf = loader
            .map_max_entries(map_names::RULES_V4, config.max_rules_v4)
            .map_max_entries(map_names::RULES_V6, config.max_rules_v6)
            .map_max_entries(
                map_names::RULE_HITS,
                config.max_rules_v4 + config.max_rules_v6 + 1,
            )
            .map_max_entries(map_names::BANS_V4, config.max_bans)
            .map_max_entries(map_names::BANS_V6, config.max_bans)
            .map_max_entries(map_names::RATE_STATE, config.max_sources)
            .map_max_entries(map_names::RATE_PREFIXES_V4, MAX_RATE_PREFIXES)
            .map_max_entries(map_names::RATE_PREFIXES_V6, MAX_RATE_PREFIXES)
            .map_max_entries(map_names::DROPS_BY_SOURCE, TRACKED_DROP_SOURCES)
            .map_max_entries(map_names::KNOWN_GOOD, config.max_sources)
            .load(PROGRAM_OBJECT)
            .map_err(XdpError::from_load)?;
        let program: &mut Xdp = program_mut(&mut ebpf)?;
        program.load().map_err(XdpError::from_program_load)?;
        let adopted = pins.as_ref().is_some_and(|pins| pins.adopted);
        let settings = if adopted {
            // Keep what is in force (bans present, under-attack mode) until rewritten.
            maps::read_settings(&ebpf)?
        } else {
            Settings::default()
        };
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            // Adopted ports may hold anything: an impossible value makes `apply` write all.
            ports: vec![if adopted { u8::MAX } else { 0 }; gateway_common::PORT_SLOTS as usize],
            // Fresh maps: no counter slot has counted yet, so none needs zeroing when first
            // given out. Adopted ones may hold the last daemon's counts.
            rules: rules::RuleSlots::new(!adopted),
            settings,
            pins,
        })
    }

    /// Writes policy, protected ports and rules into the maps; stale rules are removed.
    /// Takes effect for the next packet, without reloading the program. Only rules that
    /// differ from what was written are touched.
    pub fn apply(&mut self, firewall: &FirewallConfig) -> Result<(), XdpError> {
        let wanted: Vec<rules::KernelRule> = firewall
            .rules
            .iter()
            .map(|rule| (rule.net, rule.action, rule.shadow))
            .collect();
        maps::write_rate_limits(&mut self.ebpf, firewall)?;
        maps::write_ports(&mut self.ebpf, &mut self.ports, &firewall.protected_ports)?;
        let full = !self.rules.synced;
        let writes = self.rules.reconcile(&wanted);
        self.write_rules(&writes)?;
        if full {
            // Whatever else the tries hold (adopted maps, a failed write) goes.
            maps::remove_stale_rules(&mut self.ebpf, &writes.put)?;
            self.rules.synced = true;
        }
        // Last: sources pick their rate class again against the new prefixes.
        let generation = self.settings.rate_generation.wrapping_add(1);
        self.write_settings(Settings {
            under_attack: self.settings.under_attack,
            ..maps::settings_for(firewall, generation, self.settings.bans != 0)
        })
    }

    /// The kernel ids of the rule tries and their hit counters.
    fn rule_map_ids(&self) -> Result<saved_slots::MapIds, XdpError> {
        let id = |name: &'static str| -> Result<u32, XdpError> {
            let map = self.ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
            let info = match map {
                aya::maps::Map::LpmTrie(data) | aya::maps::Map::PerCpuArray(data) => data.info(),
                _ => return Err(XdpError::MissingMap(name)),
            };
            Ok(info.map_err(|error| XdpError::map(name, error))?.id())
        };
        Ok([
            id(map_names::RULES_V4)?,
            id(map_names::RULES_V6)?,
            id(map_names::RULE_HITS)?,
        ])
    }

    /// Adopted maps: takes what the daemon that stopped before saved of them in `path`, so
    /// [`apply`](Self::apply) writes only what changed. The file is used once, whatever it
    /// holds; without it (or for fresh maps) every rule is written.
    pub fn restore_rule_slots(&mut self, path: &Path) {
        if !self.adopted() {
            let _ = std::fs::remove_file(path);
            return;
        }
        let Ok(ids) = self.rule_map_ids() else {
            let _ = std::fs::remove_file(path);
            return;
        };
        if let Some(slots) = saved_slots::take(path, ids) {
            tracing::info!(file = %path.display(), "the adopted rule tries are as the last daemon left them: only changes are written");
            self.rules = slots;
        }
    }

    /// Saves what the rule tries hold to `path` for the next daemon, when they stay pinned
    /// and this daemon is sure of them; called last, after the last map write.
    pub fn save_rule_slots(&self, path: &Path) {
        if self.pins.is_none() || !self.rules.synced {
            return;
        }
        let saved = self.rule_map_ids().and_then(|ids| {
            saved_slots::save(path, ids, &self.rules)
                .map_err(|error| XdpError::Pin(format!("saving {}: {error}", path.display())))
        });
        if let Err(error) = saved {
            tracing::warn!(%error, "the next start writes every rule again");
        }
    }

    /// Switches under-attack mode: only known-good sources and `budget` new ones pass.
    pub fn set_under_attack(&mut self, on: bool, budget: &NewSources) -> Result<(), XdpError> {
        if on {
            // The budget first, so the first packet under attack meets it.
            attack::write_budget(&mut self.ebpf, budget)?;
        }
        let settings = Settings {
            under_attack: u8::from(on),
            ..self.settings
        };
        self.write_settings(settings)
    }

    pub fn under_attack(&self) -> bool {
        self.settings.under_attack != 0
    }

    /// Marks `source` known-good until `expires` (monotonic clock, as [`now`]).
    pub fn mark_known_good(&mut self, source: IpAddr, expires: Duration) -> Result<(), XdpError> {
        attack::mark(&mut self.ebpf, source, expires)
    }

    /// Until when `source` is known-good (monotonic clock), if it is.
    pub fn known_good(&self, source: IpAddr) -> Result<Option<Duration>, XdpError> {
        attack::known_good(&self.ebpf, source)
    }

    fn write_settings(&mut self, settings: Settings) -> Result<(), XdpError> {
        maps::write_settings(&mut self.ebpf, settings)?;
        self.settings = settings;
        Ok(())
    }

    /// Turns the program's ban lookup on or off (it is skipped while no ban exists).
    fn set_bans_present(&mut self, present: bool) -> Result<(), XdpError> {
        if (self.settings.bans != 0) == present {
            return Ok(());
        }
        let settings = Settings {
            bans: u8::from(present),
            ..self.settings
        };
        self.write_settings(settings)
    }

    /// Adds, changes (`Some`) or removes (`None`) the rules for `rules`' networks (each
    /// once): one trie entry each (and the shadow rules inside), not a rewrite of every
    /// rule. The caller makes sure no network is also a rule of the config file.
    pub fn set_rules(
        &mut self,
        rules: &[(IpNet, Option<(crate::config::Action, bool)>)],
    ) -> Result<(), XdpError> {
        let writes = rules
            .iter()
            .map(|&(net, rule)| self.rules.set(net, rule))
            .collect();
        self.write_rules(&rules::Writes::merge(writes))
    }

    /// Deletes, zeroes and writes as told; on failure the next `apply` writes everything.
    fn write_rules(&mut self, writes: &rules::Writes) -> Result<(), XdpError> {
        let result = maps::remove_rules(&mut self.ebpf, &writes.delete)
            .and_then(|()| maps::reset_rule_hits(&mut self.ebpf, writes.reset.iter().copied()))
            .and_then(|()| maps::put_rules(&mut self.ebpf, &writes.put));
        if result.is_err() {
            self.rules.synced = false;
        }
        result
    }

    /// Packets matched per rule (in no particular order).
    pub fn rule_hits(&self) -> Result<Vec<(IpNet, u64)>, XdpError> {
        let (nets, ids): (Vec<IpNet>, Vec<u32>) = self.rules.ids().unzip();
        let hits = maps::read_rule_hits(&self.ebpf, ids.into_iter())?;
        Ok(nets.into_iter().zip(hits).collect())
    }

    /// Packets matched by the rules for `nets` (one page of a listing): one map read each.
    pub fn rule_hits_of(
        &self,
        nets: &std::collections::HashSet<IpNet>,
    ) -> Result<Vec<(IpNet, u64)>, XdpError> {
        let (wanted, ids): (Vec<IpNet>, Vec<u32>) = nets
            .iter()
            .filter_map(|net| Some((*net, self.rules.id(net)?)))
            .unzip();
        let hits = maps::read_rule_hits(&self.ebpf, ids.into_iter())?;
        Ok(wanted.into_iter().zip(hits).collect())
    }

    /// Bans `net` until `expires` (monotonic clock, as [`now`]; `None`: until unbanned).
    pub fn ban(&mut self, net: IpNet, expires: Option<Duration>) -> Result<(), XdpError> {
        // Lookups first, so the ban holds from the moment it is in the map.
        self.set_bans_present(true)?;
        bans::insert(&mut self.ebpf, net, expires)
    }

    /// Bans every `(net, expires)` of `bans` (as [`ban`](Self::ban)), in batches.
    pub fn ban_all(&mut self, bans: &[(IpNet, Option<Duration>)]) -> Result<(), XdpError> {
        if bans.is_empty() {
            return Ok(());
        }
        self.set_bans_present(true)?;
        bans::insert_all(&mut self.ebpf, bans)
    }

    /// Lifts a ban; `false` if there was none.
    pub fn unban(&mut self, net: IpNet) -> Result<bool, XdpError> {
        let lifted = bans::remove(&mut self.ebpf, net)?;
        let any_left = bans::any(&self.ebpf)?;
        self.set_bans_present(any_left)?;
        Ok(lifted)
    }

    /// Current bans with their expiry (monotonic clock; `None`: permanent). Expired ones
    /// still in the map (not swept yet) are left out: they no longer match.
    pub fn bans(&self) -> Result<Vec<(IpNet, Option<Duration>)>, XdpError> {
        bans::list(&self.ebpf)
    }

    /// Deletes expired bans from the maps; returns them.
    pub fn sweep_expired_bans(&mut self) -> Result<Vec<IpNet>, XdpError> {
        let expired = bans::sweep(&mut self.ebpf)?;
        if !expired.is_empty() {
            let any_left = bans::any(&self.ebpf)?;
            self.set_bans_present(any_left)?;
        }
        Ok(expired)
    }

    /// The source's rate-limit state, if the program has seen it since it was last evicted.
    pub fn rate_bucket(&self, source: IpAddr) -> Result<Option<gateway_common::Bucket>, XdpError> {
        let name = map_names::RATE_STATE;
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
        let state: aya::maps::HashMap<&aya::maps::MapData, [u8; 16], gateway_common::Bucket> =
            aya::maps::HashMap::try_from(map).map_err(|error| XdpError::map(name, error))?;
        let key = match source {
            IpAddr::V4(addr) => addr.to_ipv6_mapped().octets(),
            IpAddr::V6(addr) => addr.octets(),
        };
        match state.get(&key, 0) {
            Ok(bucket) => Ok(Some(bucket)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(XdpError::map(name, error)),
        }
    }

    /// The `limit` sources with the most dropped packets, most first.
    pub fn top_dropped_sources(&self, limit: usize) -> Result<Vec<(IpAddr, u64)>, XdpError> {
        bans::top_dropped_sources(&self.ebpf, limit)
    }

    /// Attaches to `interface`. `Auto` tries native (driver) mode, then generic (skb).
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachMode, XdpError> {
        let if_index = interface_index(interface)?;
        // Its own block of counters (in attach order, the same across restarts); beyond the
        // blocks there are, it counts with "other interfaces" in block 0.
        let block = self.attachments.len() as u32 + 1;
        if block < INTERFACE_BLOCKS {
            maps::set_interface_block(&mut self.ebpf, if_index, block)?;
        } else {
            tracing::warn!(
                interface,
                "more interfaces than counter blocks: its verdicts are counted in the totals only"
            );
        }
        if let Some(dir) = self.pins.as_ref().map(|pins| pins.dir.clone())
            && let Some((path, pinned_mode)) = pin::find_link(&dir, interface)
        {
            match self.adopt_link(&path) {
                Ok(link) => {
                    tracing::info!(interface, mode = ?pinned_mode, "adopted the pinned XDP link: the new program replaced the old one atomically");
                    self.attachments.push(Attachment {
                        interface: interface.to_owned(),
                        mode: pinned_mode,
                        link,
                        pinned: Some(path),
                    });
                    return Ok(pinned_mode);
                }
                Err(error) => {
                    // E.g. the interface was deleted and made again: the old link is dead.
                    tracing::warn!(interface, %error, "the pinned XDP link cannot be adopted; attaching afresh");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let attempts: &[AttachMode] = match mode {
            XdpMode::Native => &[AttachMode::Native],
            XdpMode::Skb => &[AttachMode::Skb],
            XdpMode::Auto => &[AttachMode::Native, AttachMode::Skb],
            XdpMode::Off => return Err(XdpError::Off),
        };
        let program = program_mut(&mut self.ebpf)?;
        let mut last_error = None;
        for &attempt in attempts {
            let aya_mode = match attempt {
                AttachMode::Native => AyaXdpMode::Driver,
                AttachMode::Skb => AyaXdpMode::Skb,
            };
            match program.attach_to_if_index(if_index, aya_mode) {
                Ok(link) => {
                    let (link, pinned) = match self.pins.as_ref().map(|pins| pins.dir.clone()) {
                        Some(dir) => {
                            let path = pin::link_path(&dir, interface, attempt);
                            (self.pin_link(link, &path)?, Some(path))
                        }
                        None => (link, None),
                    };
                    self.attachments.push(Attachment {
                        interface: interface.to_owned(),
                        mode: attempt,
                        link,
                        pinned,
                    });
                    return Ok(attempt);
                }
                Err(error) => {
                    if mode == XdpMode::Auto {
                        tracing::info!(interface, ?attempt, %error, "XDP attach failed, trying the next mode");
                    }
                    last_error = Some(XdpError::attach(interface, attempt, mode, error));
                }
            }
        }
        Err(last_error.expect("at least one attach attempt"))
    }

    /// Pins the link at `path` and hands it back to the program (which owns its links).
    fn pin_link(&mut self, link: XdpLinkId, path: &Path) -> Result<XdpLinkId, XdpError> {
        let program = program_mut(&mut self.ebpf)?;
        let pin_failed = |error: String| {
            XdpError::Pin(format!(
                "pinning the XDP link at {} failed ({error}): pinning needs a bpf_link XDP \
                 attachment (Linux 5.9+); set xdp.pin = false to run without it",
                path.display()
            ))
        };
        let taken = program
            .take_link(link)
            .map_err(|error| pin_failed(error.to_string()))?;
        let fd = FdLink::try_from(taken).map_err(|error| pin_failed(error.to_string()))?;
        let pinned = fd
            .pin(path)
            .map_err(|error| pin_failed(error.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|error| pin_failed(error.to_string()))?;
        program
            .attach_to_link(link)
            .map_err(|error| pin_failed(error.to_string()))
    }

    /// Opens the link pinned at `path` and swaps this program into it, in one step.
    fn adopt_link(&mut self, path: &Path) -> Result<XdpLinkId, String> {
        let pinned = PinnedLink::from_pin(path).map_err(|error| error.to_string())?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|error| error.to_string())?;
        let program = program_mut(&mut self.ebpf).map_err(|error| error.to_string())?;
        program
            .attach_to_link(link)
            .map_err(|error| error.to_string())
    }

    /// Leaves the pinned program attached and the maps pinned when this daemon goes: the
    /// kernel keeps filtering with them. Without pins, the same as [`detach_all`](Self::detach_all).
    pub fn release(&mut self) {
        if self.pins.is_none() {
            self.detach_all();
            return;
        }
        for attachment in self.attachments.drain(..) {
            tracing::info!(interface = %attachment.interface, "XDP program stays attached (pinned)");
        }
    }

    /// Detaches from every interface and removes every pin, so nothing is left filtering
    /// (the program stays loaded until dropped).
    pub fn detach_all(&mut self) {
        for attachment in &self.attachments {
            if let Some(path) = &attachment.pinned {
                // The pin holds the link too: gone first, so the detach below really detaches.
                let _ = std::fs::remove_file(path);
            }
        }
        if let Some(pins) = &self.pins {
            pin::clear(&pins.instance);
        }
        let Ok(program) = program_mut(&mut self.ebpf) else {
            return;
        };
        for attachment in self.attachments.drain(..) {
            match program.detach(attachment.link) {
                Ok(()) => tracing::info!(interface = %attachment.interface, "XDP program detached"),
                Err(error) => {
                    tracing::warn!(interface = %attachment.interface, %error, "XDP detach failed")
                }
            }
        }
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Packets and bytes per reason, summed over CPUs and interfaces, in [`Reason::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Reason, Counter)>, XdpError> {
        maps::read_counters(&self.ebpf, 0..INTERFACE_BLOCKS)
    }

    /// The same for frames from no attached interface (block 0): e.g. `BPF_PROG_TEST_RUN`'s,
    /// read in one block instead of all.
    pub fn unattached_counters(&self) -> Result<Vec<(Reason, Counter)>, XdpError> {
        maps::read_counters(&self.ebpf, 0..1)
    }

    /// The same for the `index`-th attached interface (in [`attachments`](Self::attachments)
    /// order): its packets only.
    pub fn interface_counters(&self, index: usize) -> Result<Vec<(Reason, Counter)>, XdpError> {
        let block = (index as u32 + 1).min(INTERFACE_BLOCKS);
        maps::read_counters(&self.ebpf, block..(block + 1).min(INTERFACE_BLOCKS))
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn program_mut(&mut self) -> &mut Xdp {
        program_mut(&mut self.ebpf).expect("the program was loaded")
    }
}

impl Drop for XdpFirewall {
    /// Without pins the program is detached; pinned, it stays (see [`XdpFirewall::release`]).
    fn drop(&mut self) {
        self.release();
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(XdpError::MissingProgram)?
        .try_into()
        .map_err(|_| XdpError::MissingProgram)
}

/// The interface's index, or an error naming it.
pub fn interface_index(interface: &str) -> Result<u32, XdpError> {
    let unknown = || XdpError::UnknownInterface(interface.to_owned());
    let name = CString::new(interface).map_err(|_| unknown())?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so big rule maps load there.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels with memcg accounting");
    }
}
